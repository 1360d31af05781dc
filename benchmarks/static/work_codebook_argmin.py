"""``codebook_argmin``: the launches of a case and the work each does (``work.py`` explains the fields).

The launcher (``kernels/codebook_argmin.py``) plans on ``meta`` tensors: ``z`` as ``(N, D)``
rows, the codebook ``(K, D)`` in the same dtype (the benchmark's inputs); ``precision`` "ieee"
(the default) or "fast" (the ``vqvae_fast-fast`` provider). Per call:

* ``torch.full`` of the int64 best slots (and, for fp32 inputs, the runner-up slots): ``8 N``;
* code norms: read the codebook once (fp32 default: twice, and write its two TF32 parts);
* the search, grid ``row blocks x splits``:

  - ``_resident_kernel`` (fp16 / bf16, ``D <= 256``): a CTA loads its ``BLOCK_N x BLOCK_D`` latent
    tile once (the prologue), then per codebook tile (the main loop) ``BLOCK_K x BLOCK_D`` of the
    codebook and ``BLOCK_K`` norms: ``2 BLOCK_N BLOCK_K BLOCK_D`` tensor FLOPs (``D`` padded to
    ``BLOCK_D``), one FFMA per distance in the argmin (the rest of it is in the loop's SASS);
  - ``_chunked_kernel`` (fp32, and 16-bit ``D > 256``): per step of its one loop (a ``BLOCK_D``
    chunk of a codebook tile) ``BLOCK_N x BLOCK_D`` of ``z`` -- re-read from L2 for every tile --
    and ``BLOCK_D x BLOCK_K`` of the codebook (two parts for "tf32x3", which runs three
    TF32 products); the argmin on a tile's last step, a block the other steps branch
    over (``guarded_every``);
* finalize: the packed slots back to indices (fp32: re-rank two candidates, reading their rows
  of ``z`` and the codebook);
* fp32 default: the pass over non-finite rows and codes, which for finite inputs reads each row
  of ``z`` and its chosen code once.
"""

from __future__ import annotations

import math

from vqvae_fast.kernels import codebook_argmin as launcher

from .work import BYTES, LaunchWork, StaticCase, cdiv, meta, recorded

TABLE = "vqvae_fast.kernels.codebook_argmin_table"
#: FMA-unit FLOPs per distance in the argmin: the FFMA of ``||e||^2 - 2 z.e`` (its other
#: instructions -- max, min, compare, select -- are counted from the SASS as issue)
EPILOGUE_FLOPS = 2


def precision(case: StaticCase) -> str:
    return "fast" if case.provider == "vqvae_fast-fast" else "ieee"


def peak_dtype(case: StaticCase) -> str:
    """The rate of the floor (as ``benchmarks/definitions.py``'s ``peak_dtype``): fp32 inputs run
    their products on tensor cores in both precisions (TF32 parts), so their floor is TF32's."""
    return "tf32" if case.dtype == "fp32" else case.dtype


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
        lw.l2_bytes, lw.store_bytes, lw.fma_flops = e, 4 * k, 2 * k * d
        if t["PREPARE"]:  # a second read, and the parts (and a flag per code) written
            parts = 2 * 4 * k * args["stride_pk"]
            lw.trips += cdiv(args["stride_pk"], t["BLOCK_D"])
            lw.l2_bytes += e
            lw.store_bytes += parts + 8 * k
            lw.notes.append("codebook read twice; its TF32 parts written (8 K D bytes)")
        lw.dram_bytes = e + lw.store_bytes
    elif kernel == "_resident_kernel":
        bn, bk, bd = t["BLOCK_N"], t["BLOCK_K"], t["BLOCK_D"]
        s = BYTES[pointers["z_ptr"]]
        tiles = args["tiles_per_split"]
        lw.trips = tiles
        lw.prologue_load_bytes = bn * bd * s
        lw.trip_load_bytes = bk * bd * s + 4 * bk
        lw.tensor_flops = grid * tiles * 2 * bn * bk * bd
        lw.tensor_operand = pointers["z_ptr"]
        lw.fma_flops = grid * tiles * bn * bk * EPILOGUE_FLOPS
        lw.l2_bytes = grid * lw.load_bytes_per_cta
        lw.store_bytes = 8 * n
        lw.dram_bytes = n * d * s + k * d * s + 4 * k + 2 * lw.store_bytes  # atomics: read and write
        lw.notes.append("latent tile loaded once; one product over the whole D per codebook tile, "
                        "the next tile's issued before this one's argmin")
        _common_notes(lw, args, d, bd)
    elif kernel == "_chunked_kernel":
        bn, bk, bd = t["BLOCK_N"], t["BLOCK_K"], t["BLOCK_D"]
        zs, es = BYTES[pointers["z_ptr"]], BYTES[pointers["e_ptr"]]
        parts = 2 if t["DOT"] == "tf32x3" else 1  # the codebook's big and small TF32 parts
        products = 3 if t["DOT"] == "tf32x3" else 1
        tiles = args["tiles_per_split"]
        chunks = cdiv(d, bd)
        lw.guarded_every = chunks  # the argmin runs on each tile's last step
        lw.trips = tiles * chunks
        lw.trip_load_bytes = bn * bd * zs + parts * bd * bk * es
        lw.tensor_flops = grid * tiles * 2 * bn * bk * chunks * bd * products
        lw.tensor_operand = pointers["z_ptr"] if t["DOT"] == "native" else "tf32"
        lw.fma_flops = grid * tiles * bn * bk * EPILOGUE_FLOPS
        lw.l2_bytes = grid * lw.trips * lw.trip_load_bytes + grid * tiles * bk * 4
        lw.store_bytes = 8 * n * (2 if t["TRACK_SECOND"] else 1)
        lw.dram_bytes = n * d * zs + parts * k * d * es + 4 * k + 2 * lw.store_bytes
        lw.notes.append(f"z re-read from L2 for each of {tiles} codebook tiles; one loop over (tile, chunk) steps")
        if products > 1:
            lw.notes.append("three TF32 products (the fp32 default's accuracy): 3x the TF32 floor's FLOPs")
        _common_notes(lw, args, d, chunks * bd)
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
    elif kernel == "_nonfinite_kernel":  # finite inputs: one pass over each row and its code
        lw.l2_bytes = 8 * n + 2 * n * d * BYTES[pointers["z_ptr"]] + 8 * k
        lw.trips = cdiv(d, t["BLOCK_D"])
        lw.trip_load_bytes = 2 * t["BLOCK_N"] * t["BLOCK_D"] * BYTES[pointers["z_ptr"]]
        lw.fma_flops = 4 * n * d
        lw.dram_bytes = lw.reread_bytes = lw.l2_bytes
    else:
        raise NotImplementedError(f"codebook_argmin static model: no accounting for {kernel}")
    return lw


def _common_notes(lw: LaunchWork, args: dict, d: int, padded: int) -> None:
    if args["num_splits"] > 1:
        lw.notes.append(f"codebook split over {args['num_splits']} programs per row block")
    if padded > d:
        lw.notes.append(f"D padded from {d} to {padded}")
