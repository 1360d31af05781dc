"""Every configuration the ``codebook_argmin`` launcher can pick: :data:`TABLE`.

The dimensions (``docs/architecture.md`` explains the format):

* dot kind and dtypes (:data:`KIND_TYPES`): ``"native"`` for fp16 or bf16 latents and codebook
  alike; ``"ieee"`` and ``"tf32"`` for every other pair, with the codebook in fp32 (the launcher
  upcasts a 16-bit codebook, exactly, when the dtypes differ);
* addressing: ``"aligned"`` (16-divisible sizes and strides, 16-byte-aligned pointers: vector
  loads, the large tiles) or ``"general"`` (per-element addresses: smaller tiles, or the
  registers spill), with the unit stride on the latent's positions (``"w"``: NCHW) or its
  channels (``"d"``: ``(N, D)`` rows, channels-last, and the rows the launcher copies a latent
  into when it has neither or its row blocks would cross batch items);
* ``EVEN_D``: ``D`` a multiple of ``BLOCK_D`` (no mask along ``D``);
* the finalize kernel: re-rank (``tf32``) and/or distances, or neither (then it reads only the
  packed slots); the code-norm kernel: one per codebook dtype.
"""

from __future__ import annotations

from ._table import Config, Table

#: (BLOCK_N, BLOCK_K, BLOCK_D, num_warps, num_stages) of the main kernel per dot kind and addressing
MAIN_TILES = {
    "ieee": {"aligned": (128, 128, 16, 8, 2), "general": (128, 64, 16, 8, 1)},
    "tf32": {"aligned": (128, 128, 16, 8, 3), "general": (128, 64, 16, 8, 3)},
    "native": {"aligned": (128, 128, 32, 8, 3), "general": (128, 64, 32, 8, 3)},
}
#: dot kind -> (latent dtype, codebook dtype) pairs
KIND_TYPES = {
    "native": (("fp16", "fp16"), ("bf16", "bf16")),
    "ieee": (("fp32", "fp32"), ("fp16", "fp32"), ("bf16", "fp32")),
    "tf32": (("fp32", "fp32"), ("fp16", "fp32"), ("bf16", "fp32")),
}
ADDRESSING = {"aligned": ("w", "d"), "general": ("d",)}  # addressing -> unit strides it serves
NORMS_TILE = dict(BLOCK_K=64, BLOCK_D=32)
FINALIZE_TILE = dict(BLOCK_N=64, BLOCK_D=32)
SMALL_KERNEL_WARPS = 4
_INTS = ("N", "K", "D", "HW", "stride_zb", "stride_zw", "stride_zd", "stride_ek", "num_splits", "tiles_per_split")

#: (kernel, dot kind or "rerank", addressing) -> {arch: CTAs per SM} its entries promise (what the
#: compile gate measures): the main kernel holds a 128 x 128 fp32 tile of distances, one CTA of
#: 8 warps per SM
_OCCUPANCY = {
    ("_code_norms_kernel", None, None): {"sm_80": 10, "sm_90a": 12},
    ("_finalize_kernel", None, None): {"sm_80": 5, "sm_90a": 7},
    ("_finalize_kernel", "rerank", None): {"sm_80": 4, "sm_90a": 4},
    **{("_codebook_argmin_kernel", kind, addressing): {"sm_80": 1, "sm_90a": 1}
       for kind in ("ieee", "tf32", "native") for addressing in ("aligned", "general")},
}


def _claim(kernel, kind=None, addressing=None) -> dict:
    return _OCCUPANCY[(kernel, kind, addressing)]


def main_entry(kind, z_type, e_type, addressing, unit, even_d) -> Config:
    block_n, block_k, block_d, warps, stages = MAIN_TILES[kind][addressing]
    pointers = dict(z_ptr=z_type, e_ptr=e_type, enorm_ptr="fp32", best_ptr="i64", second_ptr="i64")
    constexprs = dict(BLOCK_N=block_n, BLOCK_K=block_k, BLOCK_D=block_d, DOT=kind, EVEN_D=even_d,
                      TRACK_SECOND=kind == "tf32")
    if addressing == "general":
        unaligned = _INTS
    else:  # D: 16-divisible when it divides into BLOCK_D-wide chunks, small otherwise
        unaligned = ("num_splits", "tiles_per_split") + (() if even_d else ("D",))
    return Config.make("_codebook_argmin_kernel", pointers, constexprs, warps, stages, _claim(
        "_codebook_argmin_kernel", kind, addressing), ones=(f"stride_z{unit}", "stride_ed"), unaligned=unaligned,
        tensor_cores=kind != "ieee")


def norms_entry(e_type) -> Config:
    return Config.make("_code_norms_kernel", dict(e_ptr=e_type, out_ptr="fp32"), NORMS_TILE, SMALL_KERNEL_WARPS, 1,
                       _claim("_code_norms_kernel"), ones=("stride_ed",), unaligned=("D",))


def finalize_entry(z_type, e_type, unit, rerank, with_distance) -> Config:
    """With neither re-rank nor distances the launcher passes the slots for ``z`` and ``e`` (never
    read) and no unit stride: one entry serves every latent."""
    reads = rerank or with_distance
    pointers = dict(z_ptr=z_type if reads else "i64", e_ptr=e_type if reads else "i64", best_ptr="i64",
                    second_ptr="i64", dist_ptr="fp32")
    return Config.make("_finalize_kernel", pointers, dict(FINALIZE_TILE, RERANK=rerank, WITH_DISTANCE=with_distance),
                       SMALL_KERNEL_WARPS, 1, _claim("_finalize_kernel", "rerank" if rerank else None),
                       ones=(f"stride_z{unit}", "stride_ed") if reads else (), unaligned=("D",) if reads else ())


def _entries():
    for kind, pairs in KIND_TYPES.items():
        for z_type, e_type in pairs:
            for addressing, units in ADDRESSING.items():
                for unit in units:
                    for even_d in (True, False):
                        # aligned codebooks have a 16-divisible row stride D: EVEN_D where BLOCK_D is 16
                        if addressing == "aligned" and not even_d and kind != "native":
                            continue
                        yield main_entry(kind, z_type, e_type, addressing, unit, even_d)
            for unit in ("w", "d"):  # re-rank (tf32) with or without distances; distances alone
                for with_distance in (True, False) if kind == "tf32" else (True,):
                    yield finalize_entry(z_type, e_type, unit, kind == "tf32", with_distance)
    for e_type in ("fp32", "fp16", "bf16"):
        yield norms_entry(e_type)
    yield finalize_entry(None, None, None, False, False)


TABLE = Table("codebook_argmin", ("vqvae_fast.kernels.codebook_argmin_jit",), tuple(_entries()))
