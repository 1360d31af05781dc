"""Every configuration the ``group_norm_silu`` launcher can pick: :data:`TABLE`.

The dimensions (``docs/architecture.md`` explains the format):

* dtypes: ``x`` (and ``y``, ``dy``, ``dx``) in fp32, fp16 or bf16; ``weight``/``bias`` in ``x``'s
  dtype or fp32 (:data:`DTYPE_PAIRS`). Kernels that never read the parameters have no parameter
  dimension: the split forward's elementwise kernel reads per-channel fp32 constants that the
  combine kernel folded the parameters into. A norm without affine parameters runs with ones and
  zeros (exact), so there is no weight/bias flag;
* ``CHANNELS_LAST`` (which axis has unit stride). SiLU is a runtime argument (a uniform branch per
  tile), not a doubling of the table;
* tiles ``(BLOCK_C, BLOCK_S, warps)``: :data:`FUSED_TILES` hold ``BLOCK_C`` channels of whole
  groups (the launcher takes the one that wastes the fewest lanes); :data:`SPLIT_TILES` (forward)
  and :data:`SPLIT_BACKWARD_TILES` stream one channel (NCHW) or 64 channels (channels-last) over
  long runs of positions, and a squarer tile where the positions are few, on small CTAs. Each
  tile carries its warps; one pipeline stage (the loops keep a tile of loads in flight per warp
  and many CTAs per SM).

``_OCCUPANCY`` states the CTAs per SM each kernel and tile reaches on sm_80 and sm_90a (the least
the compile gate measures over dtypes and layouts; the launcher sizes grids from it).
"""

from __future__ import annotations

from ._table import Config, Table

DTYPE_PAIRS = (("fp32", "fp32"), ("fp16", "fp16"), ("fp16", "fp32"), ("bf16", "bf16"), ("bf16", "fp32"))
X_TYPES = ("fp32", "fp16", "bf16")
PARAM_TYPES = ("fp32", "fp16", "bf16")

#: fused tiles per layout (CHANNELS_LAST -> tiles): 4096 values on 8 warps, and (NCHW) 8192 on 16
#: warps (twice the loads in flight per CTA where few programs may be resident: big groups); the
#: backward holds x and dy, which 16 warps' 128 registers per thread cannot. Channels-last
#: tiles are at least 16 channels wide: each row is at least one 32-byte sector. (A 64x64 NCHW
#: tile and a 16-warp channels-last tile spill at fp32: not listed; wider groups take the split path)
FUSED_TILES = {
    False: ((4, 1024, 8), (16, 256, 8), (4, 2048, 16), (16, 512, 16)),
    True: ((16, 256, 8), (64, 64, 8)),
}
FUSED_BACKWARD_TILES = {layout: tuple(t for t in tiles if t[2] == 8) for layout, tiles in FUSED_TILES.items()}
#: split tiles per layout, 4 warps each: the first for many positions (NCHW) or channels
#: (channels-last), the second for few. Small CTAs: the registers a thread needs per value in
#: flight bound what an SM holds, and with more, smaller CTAs resident the others cover one's
#: exposed load latency (Little's law over the CTAs, not within one). The forward keeps 16 values
#: per thread; the backward, which holds x and dy and more per-channel constants, 8
SPLIT_TILES = {False: ((1, 2048, 4), (16, 128, 4)), True: ((64, 32, 4), (16, 128, 4))}
SPLIT_BACKWARD_TILES = {False: ((1, 1024, 4), (16, 64, 4)), True: ((64, 16, 4), (16, 64, 4))}
#: the split backward's streaming kernels, which read ``dy`` in either layout (``DY_CHANNELS_LAST``)
SPLIT_BACKWARD_KERNELS = ("_gn_bwd_partial_kernel", "_gn_bwd_dx_kernel")
COMBINE_BLOCK = 256
GROUP_TILE = (16, 32)  # (BLOCK_C, BLOCK_K) of the backward per-group kernel
AFFINE_TILE = (16, 128)  # (BLOCK_N, BLOCK_C) of the weight / bias gradient kernel
SMALL_KERNEL_WARPS = 4

#: per kernel: the tensors it tiles (x's dtype), its fp32 pointers, whether it reads w and b
_TILED = {
    "_gn_fwd_fused_kernel": (("x", "y"), ("mean", "rstd"), True),
    "_gn_fwd_partial_stats_kernel": (("x",), ("pmean", "pm2"), False),
    "_gn_fwd_apply_kernel": (("x", "y"), ("cmean", "cscale", "cshift"), False),
    "_gn_bwd_fused_kernel": (("x", "dy", "dx"), ("mean", "rstd", "sum_dz", "sum_dz_xhat"), True),
    "_gn_bwd_partial_kernel": (("x", "dy"), ("mean", "rstd", "pa", "pb"), True),
    "_gn_bwd_dx_kernel": (("x", "dy", "dx"), ("mean", "rstd", "c1", "c2"), True),
}
_SMALL = {
    "_gn_fwd_combine_kernel": ("pmean", "pm2", "mean", "rstd", "cmean", "cscale", "cshift"),
    "_gn_bwd_group_kernel": ("pa", "pb", "sum_dz", "sum_dz_xhat", "c1", "c2"),
    "_gn_bwd_affine_kernel": ("sum_dz", "sum_dz_xhat"),
}
_PARAMS = {"_gn_fwd_combine_kernel": ("w", "b"), "_gn_bwd_group_kernel": ("w",),
           "_gn_bwd_affine_kernel": ("dw", "db")}
#: integer arguments the gate compiles as not 16-divisible (group and chunk counts, the flag)
_UNALIGNED = ("CPG", "NUM_GB", "NUM_UNITS", "NUM_CB", "NUM_CHUNKS", "SILU")

#: (kernel, tile, layout) -> CTAs per SM its entries promise (layout: CHANNELS_LAST, or
#: ``"dy_nchw"``, :func:`layout_key`), ((sm_80, sm_90a) with an fp32
#: ``x``, (sm_80, sm_90a) with an fp16/bf16 ``x``): the least the compile gate measures over the
#: parameter dtypes (``tests/compile_gate.py``); the launcher sizes whole waves with it.
#: Memory-bound kernels want many loads in flight: 16-64 KB per SM
_OCCUPANCY = {
    ("_gn_bwd_dx_kernel", (1, 1024, 4), False): ((9, 10), (9, 12)),
    ("_gn_bwd_dx_kernel", (16, 64, 4), False): ((7, 7), (9, 10)),
    ("_gn_bwd_dx_kernel", (16, 64, 4), True): ((5, 6), (5, 5)),
    ("_gn_bwd_dx_kernel", (64, 16, 4), True): ((5, 6), (5, 5)),
    ("_gn_bwd_fused_kernel", (16, 256, 8), False): ((1, 1), (1, 1)),
    ("_gn_bwd_fused_kernel", (16, 256, 8), True): ((1, 1), (1, 1)),
    ("_gn_bwd_fused_kernel", (4, 1024, 8), False): ((1, 1), (1, 1)),
    ("_gn_bwd_fused_kernel", (64, 64, 8), True): ((1, 1), (1, 1)),
    ("_gn_bwd_partial_kernel", (1, 1024, 4), False): ((8, 9), (8, 8)),
    ("_gn_bwd_partial_kernel", (16, 64, 4), False): ((7, 7), (8, 8)),
    ("_gn_bwd_partial_kernel", (16, 64, 4), True): ((5, 6), (5, 5)),
    ("_gn_bwd_partial_kernel", (64, 16, 4), True): ((5, 5), (5, 5)),
    ("_gn_fwd_apply_kernel", (1, 2048, 4), False): ((9, 10), (9, 10)),
    ("_gn_fwd_apply_kernel", (16, 128, 4), False): ((6, 6), (9, 9)),
    ("_gn_fwd_apply_kernel", (16, 128, 4), True): ((5, 6), (7, 7)),
    ("_gn_fwd_apply_kernel", (64, 32, 4), True): ((6, 6), (7, 7)),
    ("_gn_fwd_fused_kernel", (16, 256, 8), False): ((2, 2), (2, 2)),
    ("_gn_fwd_fused_kernel", (16, 256, 8), True): ((1, 1), (1, 2)),
    ("_gn_fwd_fused_kernel", (16, 512, 16), False): ((1, 1), (1, 1)),
    ("_gn_fwd_fused_kernel", (4, 1024, 8), False): ((2, 2), (2, 2)),
    ("_gn_fwd_fused_kernel", (4, 2048, 16), False): ((1, 1), (1, 1)),
    ("_gn_fwd_fused_kernel", (64, 64, 8), True): ((1, 1), (1, 1)),
    ("_gn_fwd_partial_stats_kernel", (1, 2048, 4), False): ((7, 7), (8, 8)),
    ("_gn_fwd_partial_stats_kernel", (16, 128, 4), False): ((6, 6), (8, 8)),
    ("_gn_fwd_partial_stats_kernel", (16, 128, 4), True): ((6, 7), (6, 6)),
    ("_gn_fwd_partial_stats_kernel", (64, 32, 4), True): ((6, 5), (6, 6)),
    ("_gn_bwd_partial_kernel", (64, 16, 4), "dy_nchw"): ((4, 5), (5, 5)),
    ("_gn_bwd_dx_kernel", (64, 16, 4), "dy_nchw"): ((4, 4), (3, 4)),
    ("_gn_bwd_partial_kernel", (16, 64, 4), "dy_nchw"): ((4, 5), (5, 5)),
    ("_gn_bwd_dx_kernel", (16, 64, 4), "dy_nchw"): ((4, 5), (3, 4)),
    ("_gn_bwd_affine_kernel", (16, 128), None): ((8, 9), (8, 9)),
    ("_gn_bwd_group_kernel", (16, 32), None): ((9, 10), (9, 10)),
    ("_gn_fwd_combine_kernel", (256,), None): ((12, 12), (12, 12)),
}


def pointer_types(kernel: str, x_type: str, param_type: str) -> dict:
    """Element type of every pointer argument of ``kernel`` for these dtypes."""
    if kernel in _TILED:
        tiled, fp32, params = _TILED[kernel]
        types = {f"{t}_ptr": x_type for t in tiled}
        names = ("w", "b") if params else ()
    else:
        types, fp32, names = {}, _SMALL[kernel], _PARAMS[kernel]
    types.update({f"{t}_ptr": "fp32" for t in fp32})
    types.update({f"{t}_ptr": param_type for t in names})
    return types


def reads_params(kernel: str) -> bool:
    """Whether ``kernel``'s code depends on the parameters' dtype."""
    return _TILED[kernel][2] if kernel in _TILED else True


def unit_strides(kernel: str, channels_last: bool, dy_channels_last: bool | None = None) -> tuple:
    """The stride arguments of ``kernel`` that equal 1: the spatial axis of every tiled tensor
    (NCHW) or its channel axis (channels-last); ``dy``'s as ``dy_channels_last`` says, if given."""
    tiled = _TILED[kernel][0] if kernel in _TILED else ()
    layouts = {t: dy_channels_last if t == "dy" and dy_channels_last is not None else channels_last for t in tiled}
    return tuple(f"stride_{t}{'c' if layouts[t] else 's'}" for t in tiled)


def layout_key(channels_last: bool | None, dy_channels_last: bool | None = None):
    """The layout part of an :data:`_OCCUPANCY` key: ``CHANNELS_LAST``, or ``"dy_nchw"`` for a
    channels-last backward kernel reading an NCHW ``dy``."""
    return "dy_nchw" if channels_last and dy_channels_last is False else channels_last


def occupancy(kernel: str, tile, arch: str, channels_last: bool | None = None, x_type: str = "fp32",
              dy_channels_last: bool | None = None) -> int:
    """The CTAs per SM ``kernel`` with ``tile`` promises on ``arch`` (what the launcher sizes
    whole waves with)."""
    return _claims(kernel, tile, layout_key(channels_last, dy_channels_last), x_type)[arch]


def _claims(kernel, tile, channels_last, x_type) -> dict:
    return dict(zip(("sm_80", "sm_90a"), _OCCUPANCY[(kernel, tuple(tile), channels_last)][x_type != "fp32"]))


def _streaming(kernel, tile, channels_last, x_type, param_type, dy_channels_last=None) -> Config:
    block_c, block_s, num_warps = tile
    unit_extent = block_c if channels_last else block_s
    constexprs = dict(CHANNELS_LAST=channels_last, BLOCK_C=block_c, BLOCK_S=block_s)
    if kernel in SPLIT_BACKWARD_KERNELS:
        dy_channels_last = channels_last if dy_channels_last is None else dy_channels_last
        constexprs["DY_CHANNELS_LAST"] = dy_channels_last
    return Config.make(
        kernel, pointer_types(kernel, x_type, param_type), constexprs, num_warps, 1,
        _claims(kernel, tile, layout_key(channels_last, dy_channels_last), x_type),
        ones=unit_strides(kernel, channels_last, dy_channels_last),
        # a fused unit's channel count is 16-divisible where the tile is channels-last (aligned rows)
        unaligned=_UNALIGNED + (() if channels_last else ("UNIT_C",)),
        floats=("eps",) if kernel == "_gn_fwd_fused_kernel" else (),
        wide_loads=x_type != "fp32" and unit_extent >= 8,
    )


def _small(kernel, constexprs, param_type, **gate) -> Config:
    tile = tuple(constexprs.values())
    return Config.make(kernel, pointer_types(kernel, "fp32", param_type), constexprs, SMALL_KERNEL_WARPS, 1,
                       _claims(kernel, tile, None, "fp32"), **gate)


def _entries():
    for channels_last in (False, True):
        for x_type, param_type in DTYPE_PAIRS:
            for tile in FUSED_TILES[channels_last]:
                yield _streaming("_gn_fwd_fused_kernel", tile, channels_last, x_type, param_type)
            for tile in FUSED_BACKWARD_TILES[channels_last]:
                yield _streaming("_gn_bwd_fused_kernel", tile, channels_last, x_type, param_type)
            for tile in SPLIT_BACKWARD_TILES[channels_last]:
                for kernel in SPLIT_BACKWARD_KERNELS:
                    yield _streaming(kernel, tile, channels_last, x_type, param_type)
                    if channels_last:  # dy as autograd may hand it: NCHW, read in place
                        yield _streaming(kernel, tile, channels_last, x_type, param_type, dy_channels_last=False)
        for x_type in X_TYPES:  # kernels that never read the parameters
            for tile in SPLIT_TILES[channels_last]:
                for kernel in ("_gn_fwd_partial_stats_kernel", "_gn_fwd_apply_kernel"):
                    yield _streaming(kernel, tile, channels_last, x_type, x_type)
    for param_type in PARAM_TYPES:
        yield _small("_gn_fwd_combine_kernel", dict(BLOCK=COMBINE_BLOCK), param_type,
                     unaligned=("CPG", "NUM_CHUNKS"), floats=("eps",))
        yield _small("_gn_bwd_group_kernel", dict(BLOCK_C=GROUP_TILE[0], BLOCK_K=GROUP_TILE[1]), param_type,
                     unaligned=("CPG", "NUM_CHUNKS"))
        yield _small("_gn_bwd_affine_kernel", dict(BLOCK_N=AFFINE_TILE[0], BLOCK_C=AFFINE_TILE[1]), param_type,
                     unaligned=("N",))


TABLE = Table("group_norm_silu", ("vqvae_fast.kernels.group_norm_silu_jit",
                                  "vqvae_fast.kernels.group_norm_silu_backward_jit"), tuple(_entries()))
