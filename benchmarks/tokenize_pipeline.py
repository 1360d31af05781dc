"""The ``tokenize`` benchmark: the dataset tokenizer end to end against the model alone.

One case is a folder of generated JPEGs (``images`` files of ``jpeg`` pixels, smooth colour
gradients plus noise) and a random-weight model from ``vqvae_fast.configs``, saved as a
checkpoint and loaded the way ``vqvae-fast tokenize`` loads it. Providers, on the same images:

``reference``   the naive loop of the public extract-codes scripts: per image, in the main
                process, decode + resize, encode a batch of 1, ``np.save`` one file per image.
                It uses the same accelerated model, so the ratio is the pipeline's alone.
``model-only``  the model alone on the same preprocessed batches, already on the device: the
                ceiling the pipeline can reach.
``vqvae_fast``  the tokenize pipeline: DataLoader workers decoding and resizing, pinned memory,
                the encode of batch i+1 queued before batch i is read back, shards committed
                with fsync (the job's one-time set-up, discovery, model loading and manifest,
                is not timed: it does not grow with the dataset).

The time is for all ``images``; images/s = images / time and the pipeline's fraction of
model-only are written as run notes. The error columns compare codes with model-only's:
``max_err`` the number of differing codes, ``rel_err`` their fraction (0 when the pipeline
computes exactly what the model computes on those pixels).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import weakref

import numpy as np
import torch

from . import formulas
from .definitions import Inputs, OpBench, ProviderUnavailable, Runner
from .device import TORCH_DTYPES
from .end_to_end import SHORT_CONFIG, count_flops

PROVIDERS = ("reference", "model-only", "vqvae_fast")


def write_images(folder: str, count: int, size: tuple[int, int], seed: int = 0) -> list[str]:
    """``count`` JPEGs of ``size`` (height, width), photo-like enough for realistic decode times."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    h, w = size
    ramp = np.linspace(0, 1, w)[None, :, None] * np.linspace(0.5, 1, h)[:, None, None]
    paths = []
    for i in range(count):
        pixels = 255 * ramp * rng.uniform(0.3, 1.0, (1, 1, 3)) + rng.normal(0, 12, (h, w, 3))
        path = os.path.join(folder, f"{i:06d}.jpg")
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, quality=90)
        paths.append(path)
    return paths


class TokenizeBench(OpBench):
    name = "tokenize"
    providers = PROVIDERS
    has_backward = False
    tf32_flag = "cudnn"

    def describe(self, shape):
        images, res, batch, workers = shape.dims
        p = shape.param
        return f"{SHORT_CONFIG.get(p['config'], p['config'])} {images}x{res}² b{batch} w{workers}"

    def work(self, case):
        images, res, _, _ = case.shape.dims
        return formulas.Work(count_flops(case.shape.param["config"], "encode", 1, res, False) * images, None)

    def make_inputs(self, case, device, requires_grad, gen):
        from vqvae_fast import configs, reference
        from vqvae_fast.tokenize.dataset import loader_batch_size, make_loader
        from vqvae_fast.tokenize.inputs import discover
        from vqvae_fast.tokenize.model_kinds import load_model, resolve_model_source
        from vqvae_fast.tokenize.preprocess import Preprocess

        images, res, batch, workers = case.shape.dims
        p = case.shape.param
        folder = tempfile.mkdtemp(prefix="vqvae-fast-bench-tokenize-")
        os.makedirs(os.path.join(folder, "images"))
        write_images(os.path.join(folder, "images"), images, tuple(p["jpeg"]))
        cfg = configs.get_config(p["config"])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            ref = reference.VQModel(cfg["ddconfig"], n_embed=cfg["n_embed"], embed_dim=cfg["embed_dim"])
        checkpoint = os.path.join(folder, "model.ckpt")
        torch.save({"state_dict": ref.state_dict()}, checkpoint)
        del ref
        model = load_model(resolve_model_source(p["config"], checkpoint=checkpoint), device, TORCH_DTYPES[case.dtype])
        items = discover(os.path.join(folder, "images"))
        pre = Preprocess((res, res))
        loader = make_loader(items, pre, batch_size=loader_batch_size(batch, workers), workers=workers, prefetch=4,
                             pin_memory=device.type == "cuda", persistent_workers=True)
        batches = [b.pixels.to(device) for b in make_loader(items, pre, batch_size=batch, workers=0, prefetch=1,
                                                             pin_memory=False)]
        extra = {"folder": folder, "model": model, "items": items, "pre": pre, "loader": loader, "batches": batches,
                 "runs": {}}
        weakref.finalize(loader, shutil.rmtree, folder, ignore_errors=True)  # with the inputs, the files go
        return Inputs({"pixels": torch.cat(batches)}, (), extra)

    def build(self, provider, inputs, case, device):
        e = inputs.extra
        model, batch = e["model"], case.shape.dims[2]
        if provider == "model-only":
            def run():
                return torch.cat([model.encode_to_codes(x)[0] for x in e["batches"]])

            return Runner(run, [], f"{case.dtype} model on device batches")
        if provider == "vqvae_fast":
            label = f"{device.type}:{case.shape.dims[3]} workers"
            return Runner(lambda: self.pipeline(e, model, device, batch), [], label)
        if provider == "reference":
            return Runner(lambda: self.naive_loop(e, model, device), [], "batch-1 loop, npy per image")
        raise ProviderUnavailable(f"no provider {provider!r} for {self.name}")

    @staticmethod
    def fresh_folder(extra: dict, name: str) -> str:
        """An empty output folder per call (the previous call's is deleted first)."""
        runs = extra["runs"][name] = extra["runs"].get(name, 0) + 1
        shutil.rmtree(os.path.join(extra["folder"], f"{name}-{runs - 1}"), ignore_errors=True)
        out = os.path.join(extra["folder"], f"{name}-{runs}")
        os.makedirs(out)
        return out

    def pipeline(self, extra: dict, model, device, batch: int) -> torch.Tensor:
        from vqvae_fast.tokenize.job import encode_batches
        from vqvae_fast.tokenize.shards import ShardWriter, codes_dtype, shard_dir

        out = self.fresh_folder(extra, "pipeline")
        os.makedirs(shard_dir(out))
        grid = tuple(s // model.downsampling for s in extra["pre"].size)
        writer = ShardWriter(out, 0, codes_dtype(model.codebook_size), grid, 4096, 0)
        encode_batches(extra["loader"], extra["items"], model, writer, device, chunk=batch)
        return out

    def naive_loop(self, extra: dict, model, device) -> list[str]:
        from vqvae_fast.tokenize.preprocess import open_image

        out = self.fresh_folder(extra, "naive")
        paths = []
        for item in extra["items"]:
            with open_image(item.path) as image:
                x = extra["pre"](image)[None].to(device)
            codes = model.encode_to_codes(x)[0].cpu().numpy()
            paths.append(os.path.join(out, os.path.basename(item.path) + ".npy"))
            np.save(paths[-1], codes[0])
        return paths

    def output_for_error(self, out):
        if isinstance(out, torch.Tensor):
            return out.cpu().numpy()
        if isinstance(out, list):
            return np.stack([np.load(p) for p in out])
        from vqvae_fast.tokenize.shards import shard_dir

        shards = sorted(n for n in os.listdir(shard_dir(out)) if n.endswith(".npy"))
        return np.concatenate([np.load(os.path.join(shard_dir(out), n)) for n in shards])

    def expected(self, case, inputs, device, grad_out):
        """The model's codes on the preprocessed batches (what every provider must reproduce)."""
        runner = self.build("model-only", inputs, case, device)
        with torch.no_grad():
            return self.output_for_error(runner.fn())

    def error(self, actual, expected):
        differ = int((np.asarray(actual).astype(np.int64) != expected.astype(np.int64)).sum())
        return float(differ), differ / max(expected.size, 1)


def throughput_notes(rows: list[dict]) -> list[str]:
    """Images/s per provider and the pipeline's fraction of model-only, per tokenize case."""
    notes = []
    cases = {}
    for row in rows:
        if row["op"] == TokenizeBench.name and row["status"] == "ok":
            cases.setdefault((row["shape"], row["dtype"]), {})[row["provider"]] = row["time_p50_us"]
    for (shape, dtype), times in cases.items():
        images = int(shape.split()[1].split("x")[0])
        rates = {p: images / (t * 1e-6) for p, t in times.items()}
        text = ", ".join(f"{p} {r:.1f}" for p, r in rates.items())
        ratio = ""
        if "vqvae_fast" in rates and "model-only" in rates:
            ratio = f"; pipeline = {rates['vqvae_fast'] / rates['model-only']:.2f} of model-only"
        if "vqvae_fast" in rates and "reference" in rates:
            ratio += f", {rates['vqvae_fast'] / rates['reference']:.1f}x the batch-1 loop"
        notes.append(f"tokenize {shape} {dtype}: images/s {text}{ratio}")
    return notes
