"""``vqvae-fast tokenize`` and ``vqvae-fast detokenize`` (argument parsing only)."""

from __future__ import annotations

import argparse
import os
import sys

TOKENIZE_EPILOG = """\
examples:
  vqvae-fast tokenize images/ codes/ --model last.ckpt --config model.yaml --size 256
  vqvae-fast tokenize shards/ codes/ --model vq_f8 --checkpoint model.ckpt --batch-size 128
  vqvae-fast tokenize paths.txt codes/ --model diffusers:path/to/vqmodel --dtype fp16
  torchrun --nproc-per-node 8 -m vqvae_fast tokenize images/ codes/ --model last.ckpt --config model.yaml

Rerunning the same command resumes; see docs/tokenize.md for the output format."""


def add_parsers(sub) -> None:
    from .model_kinds import MODEL_KINDS, PLANNED_KINDS

    kinds = "; ".join(f"{k.name}: {k.summary}" for k in MODEL_KINDS.values())
    kinds += "".join(f"; {name}: not available yet" for name in PLANNED_KINDS if name not in MODEL_KINDS)
    p = sub.add_parser("tokenize", help="turn an image / video dataset into codes (resumable, torchrun-ready)",
                       description="Encode every image (and video frame) under INPUT with a VQ model and write "
                                   "sharded codes, a manifest and a header to OUT.",
                       epilog=TOKENIZE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("input", help="a folder (recursive), a webdataset .tar shard, a text file of paths, or a file")
    p.add_argument("out", help="output folder; rerunning into it resumes")
    add_model_arguments(p, kinds, required=True)
    p.add_argument("--level", type=int, default=None, help="hierarchy level (icetk models)")
    p.add_argument("--size", default=None, help="N or HxW after preprocessing (default: the model's resolution)")
    p.add_argument("--crop", choices=("center", "stretch"), default="center",
                   help="center: keep the aspect ratio and crop the middle (default); stretch: resize to the size")
    p.add_argument("--batch-size", type=int, default=64, help="images per model call (default 64)")
    p.add_argument("--workers", type=int, default=None, help="DataLoader worker processes (default: CPUs per rank - 1, at most 8)")
    p.add_argument("--prefetch", type=int, default=4, help="batches each worker reads ahead (default 4)")
    p.add_argument("--shard-size", type=int, default=4096, help="inputs per committed shard (default 4096)")
    p.add_argument("--fps", type=float, default=1.0, help="frames per second sampled from videos (default 1)")
    p.add_argument("--retry-failed", action="store_true", help="retry inputs an earlier run recorded as failed")
    p.add_argument("--dry-run", action="store_true", help="print what would be done and exit; writes nothing")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_tokenize)

    d = sub.add_parser("detokenize", help="decode stored codes back to PNG images (spot checks)",
                       description="Decode the first --count rows of a tokenize output (or --source ones) to PNGs.")
    d.add_argument("out", help="a tokenize output folder")
    d.add_argument("dest", help="folder for the PNG files")
    d.add_argument("--count", type=int, default=16, help="rows to decode (default 16)")
    d.add_argument("--source", action="append", default=None, help="decode this input's codes (repeatable)")
    add_model_arguments(d, "default: the model recorded in OUT's header", required=False)
    d.add_argument("--batch-size", type=int, default=8)
    d.set_defaults(func=cmd_detokenize)


def add_model_arguments(p, model_help: str, required: bool) -> None:
    p.add_argument("--model", required=required, help=f"KIND:PATH or a path / name ({model_help})")
    p.add_argument("--config", default=None, help="taming: the model's yaml / JSON config or a vqvae_fast.configs name")
    p.add_argument("--checkpoint", default=None, help="weights for a vqvae_fast.configs model")
    p.add_argument("--dtype", choices=("auto", "fp32", "bf16", "fp16"), default="auto",
                   help="compute dtype (default auto: bf16 on CUDA, fp32 on CPU)")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda:LOCAL_RANK when available)")


def fail(command: str, err: Exception) -> int:
    print(f"vqvae-fast {command}: error: {err}", file=sys.stderr)
    return 2


def cmd_tokenize(args) -> int:
    from .distributed import RankError
    from .job import tokenize

    try:
        summary = tokenize(args.input, args.out, args.model, config=args.config, checkpoint=args.checkpoint,
                           level=args.level, size=args.size, crop=args.crop, dtype=args.dtype,
                           batch_size=args.batch_size, workers=args.workers, prefetch=args.prefetch,
                           shard_size=args.shard_size, device=args.device, fps=args.fps,
                           retry_failed=args.retry_failed, dry_run=args.dry_run, progress=not args.no_progress)
    except (ValueError, TypeError, ImportError, RankError) as err:
        return fail("tokenize", err)
    if int(os.environ.get("RANK", 0)) == 0:
        print(f"vqvae-fast tokenize: {summary}")
        if summary.manifest:
            print(f"vqvae-fast tokenize: wrote {summary.manifest}")
    return 0


def cmd_detokenize(args) -> int:
    from .detokenize import detokenize

    try:
        paths = detokenize(args.out, args.dest, count=args.count, sources=args.source, model=args.model,
                           config=args.config, checkpoint=args.checkpoint, device=args.device, dtype=args.dtype,
                           batch_size=args.batch_size)
    except (ValueError, TypeError, ImportError) as err:
        return fail("detokenize", err)
    print(f"vqvae-fast detokenize: wrote {len(paths)} images to {args.dest}")
    return 0
