"""Every configuration the ``codebook_argmin`` launcher can pick: :data:`TABLE`.

The dimensions (``docs/architecture.md`` explains the format):

* search kernel and dot kind (:data:`KIND_TYPES`): ``_resident_kernel`` for fp16 / bf16 latents
  and codebook alike with ``D <= 256`` (one entry per padded ``D`` of :data:`RESIDENT_TILES`);
  ``_chunked_kernel`` for the rest: ``"native"`` (16-bit, ``D > 256``), ``"tf32x3"`` and
  ``"tf32"`` for every other dtype pair, the codebook in fp32 (the launcher upcasts a 16-bit
  codebook, exactly, when the dtypes differ);
* tiles per architecture (:data:`RESIDENT_TILES`, :data:`CHUNKED_TILES`): sm_80 has 163 KB of
  shared memory per block, sm_90a 227 KB;
* addressing, for the chunked kernel, which re-reads latent chunks per codebook tile:
  ``"aligned"`` (16-divisible sizes and strides, 16-byte-aligned pointers: vector loads, the wide
  tiles) or ``"general"``, and the latent's unit stride (``"w"``: NCHW; ``"d"``: ``(N, D)`` rows,
  channels-last, and the rows the launcher copies other latents into). The resident kernel
  reads its latent tile once, in any strides: one entry per padded ``D``, compiled and gated
  with a 16-divisible ``D`` and codebook row stride (other codebooks run Triton's
  specialisation of the same configuration, with narrower loads);
* the code-norm kernel: per codebook dtype, and ``PREPARE`` (the ``"tf32x3"`` codebook parts);
  the finalize kernel: re-rank (TF32 kinds) and/or distances, or neither (then it reads only
  the packed slots); after ``"tf32x3"`` the exact pass over non-finite rows and codes, with or
  without distances.
"""

from __future__ import annotations

from ._table import Config, Table

#: padded D -> {arch: (BLOCK_N, BLOCK_K, num_warps, num_stages)} of the resident kernel. The
#: latent tile stays in shared memory; the codebook tiles take the rest, three or more stages
#: deep (two would issue the next tile's loads after the current tile's product waits).
RESIDENT_TILES = {
    64: {"sm_80": (128, 128, 8, 3), "sm_90a": (128, 128, 8, 3)},
    128: {"sm_80": (128, 128, 8, 3), "sm_90a": (128, 128, 8, 3)},
    256: {"sm_80": (128, 64, 8, 3), "sm_90a": (128, 64, 8, 4)},
}
#: dot kind -> addressing -> {arch: (BLOCK_N, BLOCK_K, BLOCK_D, num_warps, num_stages)} of the
#: chunked kernel; the general tiles are narrower (per-element addresses take registers), and
#: sm_80's three-product chunks thinner (its mma.sync operands live in registers)
CHUNKED_TILES = {
    "native": {"aligned": {"sm_80": (128, 128, 64, 8, 3), "sm_90a": (128, 128, 64, 8, 3)},
               "general": {"sm_80": (128, 64, 32, 8, 3), "sm_90a": (128, 64, 64, 8, 3)}},
    "tf32": {"aligned": {"sm_80": (128, 128, 32, 8, 3), "sm_90a": (128, 128, 32, 8, 4)},
             "general": {"sm_80": (128, 64, 32, 8, 3), "sm_90a": (128, 64, 32, 8, 3)}},
    "tf32x3": {"aligned": {"sm_80": (128, 64, 16, 8, 4), "sm_90a": (128, 64, 32, 8, 3)},
               "general": {"sm_80": (128, 64, 16, 8, 3), "sm_90a": (128, 64, 16, 8, 3)}},
}
#: the largest D the resident kernel takes
RESIDENT_MAX_D = max(RESIDENT_TILES)
#: dot kind -> (latent dtype, codebook dtype) pairs
KIND_TYPES = {
    "native": (("fp16", "fp16"), ("bf16", "bf16")),
    "tf32x3": (("fp32", "fp32"), ("fp16", "fp32"), ("bf16", "fp32")),
    "tf32": (("fp32", "fp32"), ("fp16", "fp32"), ("bf16", "fp32")),
}
ADDRESSING = {"aligned": ("w", "d"), "general": ("d",)}  # addressing -> latent unit strides (chunked)
#: PREPARE -> tile of the code-norm kernel (preparing the TF32 parts takes narrower chunks)
NORMS_TILES = {False: dict(BLOCK_K=32, BLOCK_D=128), True: dict(BLOCK_K=32, BLOCK_D=32)}
FINALIZE_TILE = dict(BLOCK_N=64, BLOCK_D=32)
NONFINITE_TILE = dict(BLOCK_N=32, BLOCK_D=32, BLOCK_C=32)
#: column padding of the "tf32x3" codebook parts: the chunked kernel's BLOCK_D
PARTS_ALIGN = 32
SMALL_KERNEL_WARPS = 4
ARCHS = ("sm_80", "sm_90a")
_LATENT_INTS = ("N", "item_blocks", "stride_zb", "stride_zw", "stride_zd")
_ALL_INTS = _LATENT_INTS + ("K", "D", "stride_ek", "num_splits", "tiles_per_split")

#: (kernel, tile key) -> {arch: CTAs per SM} the entries promise (what the compile gate measures):
#: the search kernels hold one or two 128-row tiles of fp32 distances, one CTA of 8 warps per SM;
#: on sm_90a the three-product tiles are 64 codes wide, two CTAs per SM, so that one CTA's
#: serialised register-operand MMAs and operand split overlap the other's
_OCCUPANCY = {
    ("_code_norms_kernel", False): {"sm_80": 7, "sm_90a": 7},
    ("_code_norms_kernel", True): {"sm_80": 7, "sm_90a": 8},
    ("_finalize_kernel", "plain"): {"sm_80": 16, "sm_90a": 16},
    ("_finalize_kernel", "distance"): {"sm_80": 8, "sm_90a": 9},
    ("_finalize_kernel", "rerank"): {"sm_80": 6, "sm_90a": 7},
    ("_nonfinite_kernel", None): {"sm_80": 4, "sm_90a": 4},
    **{("_resident_kernel", d): {"sm_80": 1, "sm_90a": 1} for d in RESIDENT_TILES},
    **{("_chunked_kernel", kind): {"sm_80": 1, "sm_90a": 2 if kind == "tf32x3" else 1} for kind in CHUNKED_TILES},
}


def padded_d(D: int) -> int:
    """The resident kernel's ``BLOCK_D`` for ``D <= RESIDENT_MAX_D``."""
    return next(p for p in sorted(RESIDENT_TILES) if D <= p)


def resident_entry(arch, z_type, block_d) -> Config:
    block_n, block_k, warps, stages = RESIDENT_TILES[block_d][arch]
    pointers = dict(z_ptr=z_type, e_ptr=z_type, enorm_ptr="fp32", best_ptr="i64")
    constexprs = dict(BLOCK_N=block_n, BLOCK_K=block_k, BLOCK_D=block_d)
    return Config.make("_resident_kernel", pointers, constexprs, warps, stages,
                       {arch: _OCCUPANCY[("_resident_kernel", block_d)][arch]},
                       unaligned=_LATENT_INTS + ("K", "num_splits", "tiles_per_split"), tensor_cores=True)


def chunked_entry(arch, kind, z_type, e_type, addressing, unit) -> Config:
    block_n, block_k, block_d, warps, stages = CHUNKED_TILES[kind][addressing][arch]
    pointers = dict(z_ptr=z_type, e_ptr=e_type, es_ptr=e_type, enorm_ptr="fp32", best_ptr="i64", second_ptr="i64")
    constexprs = dict(BLOCK_N=block_n, BLOCK_K=block_k, BLOCK_D=block_d, DOT=kind, TRACK_SECOND=kind != "native")
    unaligned = _ALL_INTS if addressing == "general" else ("item_blocks", "num_splits", "tiles_per_split")
    return Config.make("_chunked_kernel", pointers, constexprs, warps, stages,
                       {arch: _OCCUPANCY[("_chunked_kernel", kind)][arch]}, ones=(f"stride_z{unit}",),
                       unaligned=unaligned, tensor_cores=True)


def norms_entry(e_type, prepare) -> Config:
    pointers = dict(e_ptr=e_type, out_ptr="fp32", eb_ptr="fp32", es_ptr="fp32", flags_ptr="i64", any_ptr="i64")
    constexprs = dict(NORMS_TILES[prepare], PREPARE=prepare)
    return Config.make("_code_norms_kernel", pointers, constexprs, SMALL_KERNEL_WARPS, 1,
                       _OCCUPANCY[("_code_norms_kernel", prepare)], ones=("stride_ed",),
                       unaligned=("D", "stride_pk") if prepare else ("D",))


def finalize_entry(z_type, e_type, unit, rerank, with_distance) -> Config:
    """With neither re-rank nor distances the launcher passes the slots for ``z`` and ``e`` (never
    read) and no unit stride: one entry serves every latent."""
    reads = rerank or with_distance
    pointers = dict(z_ptr=z_type if reads else "i64", e_ptr=e_type if reads else "i64", best_ptr="i64",
                    second_ptr="i64", dist_ptr="fp32")
    constexprs = dict(FINALIZE_TILE, RERANK=rerank, WITH_DISTANCE=with_distance)
    claim = "rerank" if rerank else "distance" if with_distance else "plain"
    return Config.make("_finalize_kernel", pointers, constexprs, SMALL_KERNEL_WARPS, 1,
                       _OCCUPANCY[("_finalize_kernel", claim)],
                       ones=(f"stride_z{unit}", "stride_ed") if reads else (),
                       unaligned=("D", "item_blocks") if reads else ())


def nonfinite_entry(z_type, unit, with_distance) -> Config:
    pointers = dict(z_ptr=z_type, e_ptr="fp32", index_ptr="i64", dist_ptr="fp32", flags_ptr="i64", any_ptr="i64")
    return Config.make("_nonfinite_kernel", pointers, dict(NONFINITE_TILE, WITH_DISTANCE=with_distance),
                       SMALL_KERNEL_WARPS, 1, _OCCUPANCY[("_nonfinite_kernel", None)],
                       ones=(f"stride_z{unit}", "stride_ed"), unaligned=("D", "item_blocks"))


def _entries():
    for arch in ARCHS:
        for z_type, _ in KIND_TYPES["native"]:
            for block_d in RESIDENT_TILES:
                yield resident_entry(arch, z_type, block_d)
        for kind, pairs in KIND_TYPES.items():
            for z_type, e_type in pairs:
                for addressing, units in ADDRESSING.items():
                    for unit in units:
                        yield chunked_entry(arch, kind, z_type, e_type, addressing, unit)
    finalizes = set()  # the TF32 kinds share theirs: re-rank with or without distances
    for kind, pairs in KIND_TYPES.items():
        rerank = kind != "native"
        for z_type, e_type in pairs:
            for unit in ("w", "d"):
                for with_distance in (True, False) if rerank else (True,):  # 16-bit: distances alone
                    finalizes.add((z_type, e_type, unit, rerank, with_distance))
                    if kind == "tf32x3":
                        yield nonfinite_entry(z_type, unit, with_distance)
    for args in sorted(finalizes):
        yield finalize_entry(*args)
    for e_type, prepare in (("fp16", False), ("bf16", False), ("fp32", False), ("fp32", True)):
        yield norms_entry(e_type, prepare)
    yield finalize_entry(None, None, None, False, False)


TABLE = Table("codebook_argmin", ("vqvae_fast.kernels.codebook_argmin_jit",
                                  "vqvae_fast.kernels.codebook_argmin_finalize_jit"), tuple(_entries()))
