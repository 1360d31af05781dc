"""Command line: ``vqvae-fast info``, ``run``, ``bench``, ``tokenize`` and ``detokenize`` (also
``python -m vqvae_fast``)."""

from __future__ import annotations

import argparse
import json
import sys
import time


def cmd_info(args) -> int:
    from .info import format_info, info

    report = info()
    print(json.dumps(report, indent=2, default=str) if args.json else format_info(report))
    return 0


def cmd_run(args) -> int:
    """Encode, quantise and decode a random batch with a named config; print shapes and time."""
    import torch

    from . import configs, reference

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cfg = configs.get_config(args.config)
    torch.manual_seed(0)
    model = reference.VQModel(cfg["ddconfig"], n_embed=cfg["n_embed"], embed_dim=cfg["embed_dim"]).to(device).eval()
    res = args.resolution or cfg["ddconfig"]["resolution"]
    x = torch.randn(args.batch, cfg["ddconfig"]["in_channels"], res, res, device=device)
    params = sum(p.numel() for p in model.parameters())
    print(f"reference VQModel '{args.config}' ({params / 1e6:.1f} M parameters) on {device}, "
          f"input {tuple(x.shape)}")
    with torch.no_grad():
        start = time.perf_counter()
        quant, loss, (_, _, indices) = model.encode(x)
        if device.type == "cuda":
            torch.cuda.synchronize()
        encoded = time.perf_counter()
        dec = model.decode(quant)
        if device.type == "cuda":
            torch.cuda.synchronize()
        done = time.perf_counter()
    print(f"  encode  -> latent {tuple(quant.shape)}, {indices.numel()} codes, "
          f"{indices.unique().numel()} distinct, loss {loss.item():.4g}: {encoded - start:.2f} s")
    print(f"  decode  -> image {tuple(dec.shape)}: {done - encoded:.2f} s")
    return 0


def cmd_bench(args) -> int:
    from .benchmarks.cli import run

    return run(args)


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    from .benchmarks.cli import add_arguments

    add_arguments(parser)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vqvae-fast", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p_info = sub.add_parser("info", help="versions, devices, extension and backend per op")
    p_info.add_argument("--json", action="store_true", help="print the report as JSON")
    p_info.set_defaults(func=cmd_info)

    p_run = sub.add_parser("run", help="run the reference model once on a random batch")
    p_run.add_argument("--config", default="vqgan_imagenet_f16_16384")
    p_run.add_argument("--batch", type=int, default=1)
    p_run.add_argument("--resolution", type=int, default=None)
    p_run.add_argument("--device", default=None)
    p_run.set_defaults(func=cmd_run)

    # The main job: the benchmark suite against the reference (vqvae_fast.benchmarks).
    p_bench = sub.add_parser(
        "bench", help="benchmark every op and the model against the reference",
        description="Time each op (and the VQModel end to end) for every provider - reference, "
                    "torch.compile, the best plain PyTorch, vqvae_fast - and write a table, CSV, JSON "
                    "and plots. See benchmarks/README.md for the columns.",
    )
    add_bench_arguments(p_bench)
    p_bench.set_defaults(func=cmd_bench)

    from .tokenize.cli import add_parsers as add_tokenize_parsers  # tokenize, detokenize

    add_tokenize_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
