"""``codebook_argmin``: the launches of a case and the work each does (``work.py`` explains the fields).

The launcher (``kernels/codebook_argmin.py``) plans on ``meta`` tensors: ``z`` as ``(N, D)``
rows, the codebook ``(K, D)`` in the same dtype (the benchmark's inputs); ``precision`` "ieee"
(the default) or "fast" (the ``vqvae_fast-fast`` provider; TF32 for fp32 inputs). Per call:

* ``torch.full`` of the int64 best slots (and, for TF32, the runner-up slots): ``8 N`` bytes each;
* code norms: read the codebook once;
* the main kernel, grid ``row blocks x splits``: per codebook tile (the outer loop, ``BLOCK_K``
  codes) and per ``BLOCK_D`` chunk of ``D`` (the main loop) a CTA loads ``BLOCK_N x BLOCK_D``
  of ``z`` and ``BLOCK_D x BLOCK_K`` of the codebook: ``z`` is re-read from L2 for every tile.
  ``2 BLOCK_N BLOCK_K D_padded`` FLOPs per tile, on tensor cores (native, TF32) or FMA units
  ("ieee"); per tile an epilogue (distances, row minimum and its index) outside the main loop;
* finalize: the packed slots back to indices (TF32: also re-rank two candidates, reading their
  rows of ``z`` and the codebook).
"""

from __future__ import annotations

import math

from vqvae_fast.kernels import codebook_argmin as launcher

from .work import BYTES, LaunchWork, StaticCase, cdiv, meta, recorded

TABLE = "vqvae_fast.kernels.codebook_argmin_table"
#: fp32 operations per distance in the epilogue (norm - 2 dot, NaN test, min, index compare)
EPILOGUE_FLOPS = 5


def precision(case: StaticCase) -> str:
    return "fast" if case.provider == "vqvae_fast-fast" else "ieee"


def launches(case: StaticCase, capability: int, sms: int) -> list[LaunchWork]:
    n, k, d = case.dims
    z, codebook = meta((n, d), case.dtype), meta((k, d), case.dtype)
    with recorded(launcher, capability, sms) as log:
        launcher.codebook_argmin(z, codebook, precision(case))
    works = [LaunchWork("torch.full best slots", None, None, 1, dram_bytes=8 * n, store_bytes=8 * n,
                        torch_efficiency=0.9)]
    if any(dict(l.config.constexprs).get("TRACK_SECOND") for l in log):
        works.append(LaunchWork("torch.full runner-up slots", None, None, 1, dram_bytes=8 * n, store_bytes=8 * n,
                                torch_efficiency=0.9))
    return works + [_work(case, launch) for launch in log]


def _work(case: StaticCase, launch) -> LaunchWork:
    cfg = launch.config
    args = dict(zip(launch.kernel.arg_names, launch.args))
    t = dict(cfg.constexprs)
    pointers = dict(cfg.pointers)
    n, k, d = case.dims
    grid = math.prod(launch.grid)
    kernel = cfg.kernel
    lw = LaunchWork(kernel.strip("_").replace("_kernel", ""), TABLE, cfg, grid)
    if kernel == "_code_norms_kernel":
        e = k * d * BYTES[pointers["e_ptr"]]
        lw.trips = cdiv(d, t["BLOCK_D"])
        lw.trip_load_bytes = t["BLOCK_K"] * t["BLOCK_D"] * BYTES[pointers["e_ptr"]]
        lw.l2_bytes, lw.store_bytes, lw.dram_bytes = e, 4 * k, e + 4 * k
        lw.fma_flops = 2 * k * d
    elif kernel == "_codebook_argmin_kernel":
        bn, bk, bd = t["BLOCK_N"], t["BLOCK_K"], t["BLOCK_D"]
        zs, es = BYTES[pointers["z_ptr"]], BYTES[pointers["e_ptr"]]
        tiles = args["tiles_per_split"]
        chunks = cdiv(d, bd)
        lw.outer_trips = tiles
        lw.trips = tiles * chunks
        lw.trip_load_bytes = bn * bd * zs + bd * bk * es
        flops = grid * tiles * 2 * bn * bk * chunks * bd
        if t["DOT"] == "ieee":
            lw.fma_flops = flops
        else:
            lw.tensor_flops = flops
            lw.tensor_operand = "tf32" if t["DOT"] == "tf32" else pointers["z_ptr"]
        lw.fma_flops += grid * tiles * bn * bk * EPILOGUE_FLOPS * (2 if t["TRACK_SECOND"] else 1)
        lw.l2_bytes = grid * lw.trips * lw.trip_load_bytes + grid * tiles * bk * 4
        lw.store_bytes = 8 * n * (2 if t["TRACK_SECOND"] else 1)
        lw.dram_bytes = n * d * zs + k * d * es + 4 * k + 2 * lw.store_bytes  # atomics: read and write
        lw.notes.append(f"z re-read from L2 for each of {tiles} codebook tiles; the loop over D restarts per tile")
        if args["num_splits"] > 1:
            lw.notes.append(f"codebook split over {args['num_splits']} programs per row block")
        if chunks * bd > d:
            lw.notes.append(f"D padded from {d} to {chunks * bd}")
    elif kernel == "_finalize_kernel":
        lw.l2_bytes = 8 * n * (2 if t["RERANK"] else 1)
        if t["RERANK"] or t["WITH_DISTANCE"]:
            rows = 3 if t["RERANK"] else 2  # z row, chosen code (and runner-up)
            lw.l2_bytes += rows * n * d * BYTES[pointers["z_ptr"]]
            lw.trips = cdiv(d, t["BLOCK_D"])
            lw.trip_load_bytes = rows * t["BLOCK_N"] * t["BLOCK_D"] * BYTES[pointers["z_ptr"]]
            lw.fma_flops = rows * 2 * n * d
        else:
            lw.trip_load_bytes = 8 * t["BLOCK_N"]
        lw.store_bytes = 8 * n + (4 * n if t["WITH_DISTANCE"] else 0)
        lw.dram_bytes = lw.l2_bytes + lw.store_bytes
        lw.reread_bytes = lw.l2_bytes
    else:
        raise NotImplementedError(f"codebook_argmin static model: no accounting for {kernel}")
    return lw
