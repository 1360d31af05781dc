"""Every configuration the ``group_norm_silu`` launcher can pick: :data:`TABLE`.

The dimensions (``docs/architecture.md`` explains the format):

* dtypes: ``x`` (and ``y``, ``dy``, ``dx``) in fp32, fp16 or bf16, ``weight``/``bias`` in ``x``'s
  dtype or fp32 (:data:`DTYPE_PAIRS`). A norm without affine parameters runs with ones and
  zeros of ``x``'s dtype (exact), so there is no ``HAS_WEIGHT``/``HAS_BIAS`` flag to multiply by;
* flags: ``CHANNELS_LAST`` (which axis has unit stride) and ``SILU``;
* tiles: the fused kernels hold one group in a ``(BLOCK_C, BLOCK_S)`` tile of
  :data:`FUSED_FORWARD_TILES` / :data:`FUSED_BACKWARD_TILES` (the smallest that covers the
  group; a group no tile covers takes the split path); the split kernels stream
  :data:`SPLIT_TILES` tiles, one pair per layout; the small reduction kernels have one tile each.
  Each tile carries its warps; one pipeline stage (nothing is pipelined).

``_OCCUPANCY`` states the CTAs per SM each kernel and tile reaches on sm_80 and sm_90a
(the compile gate checks every entry against it; ``tests/compile_gate.py --occupancy`` prints
what the compiler gives).
"""

from __future__ import annotations

from ._table import Config, Table

DTYPE_PAIRS = (("fp32", "fp32"), ("fp16", "fp16"), ("fp16", "fp32"), ("bf16", "bf16"), ("bf16", "fp32"))

#: (BLOCK_C, BLOCK_S, warps) of the fused kernels: 16-32 fp32 values per thread and tile held
#: (the backward holds x and dy: more warps, or its 4096-element tile spills on sm_80)
FUSED_FORWARD_TILES = ((64, 16, 4), (4, 256, 4), (16, 256, 8), (16, 1024, 16), (4, 4096, 16))
FUSED_BACKWARD_TILES = ((64, 16, 4), (4, 256, 4), (16, 256, 16), (4, 1024, 16))
#: split-path tiles per layout (CHANNELS_LAST -> tiles), the first for large S (NCHW) or C (channels-last)
SPLIT_TILES = {False: ((4, 1024, 8), (64, 64, 8)), True: ((256, 16, 8), (32, 128, 8))}
COMBINE_BLOCKS = (256, 1024)
GROUP_TILE = (16, 32)  # (BLOCK_C, BLOCK_K) of the backward per-group kernel
AFFINE_TILE = (16, 128)  # (BLOCK_N, BLOCK_C) of the weight / bias gradient kernel
SMALL_KERNEL_WARPS = 4

#: the tensors each streaming kernel tiles, and its other pointers (per-group or per-chunk fp32)
_TILED = {
    "_gn_fwd_fused_kernel": ("x", "y"),
    "_gn_fwd_partial_stats_kernel": ("x",),
    "_gn_fwd_apply_kernel": ("x", "y"),
    "_gn_bwd_fused_kernel": ("x", "dy", "dx"),
    "_gn_bwd_partial_kernel": ("x", "dy"),
    "_gn_bwd_dx_kernel": ("x", "dy", "dx"),
}
_FP32 = {
    "_gn_fwd_fused_kernel": ("mean", "rstd"),
    "_gn_fwd_partial_stats_kernel": ("pmean", "pm2"),
    "_gn_fwd_apply_kernel": ("mean", "rstd"),
    "_gn_bwd_fused_kernel": ("mean", "rstd", "sum_dz", "sum_dz_xhat"),
    "_gn_bwd_partial_kernel": ("mean", "rstd", "pa", "pb"),
    "_gn_bwd_dx_kernel": ("mean", "rstd", "c1", "c2"),
}

#: (kernel, tile) -> {arch: CTAs per SM} its entries promise (the least the compile gate measures
#: over their dtypes, flags and layouts): memory-bound kernels want many resident warps -- the
#: streaming kernels keep 16-48 of the 64 warps an SM holds
_OCCUPANCY = {
    ("_gn_bwd_affine_kernel", (16, 128)): {"sm_80": 8, "sm_90a": 9},
    ("_gn_bwd_dx_kernel", (256, 16, 8)): {"sm_80": 3, "sm_90a": 3},
    ("_gn_bwd_dx_kernel", (32, 128, 8)): {"sm_80": 3, "sm_90a": 3},
    ("_gn_bwd_dx_kernel", (4, 1024, 8)): {"sm_80": 4, "sm_90a": 4},
    ("_gn_bwd_dx_kernel", (64, 64, 8)): {"sm_80": 3, "sm_90a": 4},
    ("_gn_bwd_fused_kernel", (16, 256, 16)): {"sm_80": 2, "sm_90a": 2},
    ("_gn_bwd_fused_kernel", (4, 1024, 16)): {"sm_80": 2, "sm_90a": 2},
    ("_gn_bwd_fused_kernel", (4, 256, 4)): {"sm_80": 9, "sm_90a": 10},
    ("_gn_bwd_fused_kernel", (64, 16, 4)): {"sm_80": 8, "sm_90a": 8},
    ("_gn_bwd_group_kernel", (16, 32)): {"sm_80": 9, "sm_90a": 10},
    ("_gn_bwd_partial_kernel", (256, 16, 8)): {"sm_80": 2, "sm_90a": 2},
    ("_gn_bwd_partial_kernel", (32, 128, 8)): {"sm_80": 2, "sm_90a": 2},
    ("_gn_bwd_partial_kernel", (4, 1024, 8)): {"sm_80": 2, "sm_90a": 2},
    ("_gn_bwd_partial_kernel", (64, 64, 8)): {"sm_80": 2, "sm_90a": 2},
    ("_gn_fwd_apply_kernel", (256, 16, 8)): {"sm_80": 5, "sm_90a": 6},
    ("_gn_fwd_apply_kernel", (32, 128, 8)): {"sm_80": 5, "sm_90a": 5},
    ("_gn_fwd_apply_kernel", (4, 1024, 8)): {"sm_80": 6, "sm_90a": 5},
    ("_gn_fwd_apply_kernel", (64, 64, 8)): {"sm_80": 6, "sm_90a": 6},
    ("_gn_fwd_combine_kernel", (1024,)): {"sm_80": 10, "sm_90a": 9},
    ("_gn_fwd_combine_kernel", (256,)): {"sm_80": 16, "sm_90a": 16},
    ("_gn_fwd_fused_kernel", (16, 1024, 16)): {"sm_80": 1, "sm_90a": 1},
    ("_gn_fwd_fused_kernel", (16, 256, 8)): {"sm_80": 4, "sm_90a": 5},
    ("_gn_fwd_fused_kernel", (4, 256, 4)): {"sm_80": 12, "sm_90a": 12},
    ("_gn_fwd_fused_kernel", (4, 4096, 16)): {"sm_80": 1, "sm_90a": 1},
    ("_gn_fwd_fused_kernel", (64, 16, 4)): {"sm_80": 12, "sm_90a": 12},
    ("_gn_fwd_partial_stats_kernel", (256, 16, 8)): {"sm_80": 3, "sm_90a": 3},
    ("_gn_fwd_partial_stats_kernel", (32, 128, 8)): {"sm_80": 3, "sm_90a": 3},
    ("_gn_fwd_partial_stats_kernel", (4, 1024, 8)): {"sm_80": 5, "sm_90a": 5},
    ("_gn_fwd_partial_stats_kernel", (64, 64, 8)): {"sm_80": 4, "sm_90a": 4},
}


def pointer_types(kernel: str, x_type: str, param_type: str) -> dict:
    """Element type of every pointer argument of ``kernel`` for these dtypes."""
    types = {f"{t}_ptr": x_type for t in _TILED.get(kernel, ())}
    types.update({f"{t}_ptr": "fp32" for t in _FP32.get(kernel, ())})
    if kernel in _TILED and kernel != "_gn_fwd_partial_stats_kernel":
        types.update(w_ptr=param_type, b_ptr=param_type)
    if kernel == "_gn_fwd_combine_kernel":
        types.update({p: "fp32" for p in ("pmean_ptr", "pm2_ptr", "mean_ptr", "rstd_ptr")})
    elif kernel == "_gn_bwd_group_kernel":
        types.update({p: "fp32" for p in ("pa_ptr", "pb_ptr", "sum_dz_ptr", "sum_dz_xhat_ptr", "c1_ptr", "c2_ptr")})
        types["w_ptr"] = param_type
    elif kernel == "_gn_bwd_affine_kernel":
        types.update(sum_dz_ptr="fp32", sum_dz_xhat_ptr="fp32", dw_ptr=param_type, db_ptr=param_type)
    return types


def unit_strides(kernel: str, channels_last: bool) -> tuple:
    """The stride arguments of ``kernel`` that equal 1: the spatial axis of every tiled tensor
    (NCHW) or its channel axis (channels-last)."""
    return tuple(f"stride_{t}{'c' if channels_last else 's'}" for t in _TILED.get(kernel, ()))


def _occupancy(kernel: str, tile) -> dict:
    return _OCCUPANCY[(kernel, tuple(tile))]


def _streaming(kernel, tile, channels_last, silu, x_type, param_type) -> Config:
    """A kernel that tiles ``x``: unit stride on the spatial axis (NCHW) or the channel axis."""
    block_c, block_s, num_warps = tile
    fused = kernel in ("_gn_fwd_fused_kernel", "_gn_bwd_fused_kernel")
    # what the runtime sees at the sizes the tile serves: a fused tile narrower than 16 channels
    # serves groups of fewer channels (C/G not 16-divisible), one of 16 positions small images
    unaligned = ["CPG"] if block_c < 16 or not fused else []
    if fused and block_s < 16:
        unaligned.append("S")
        if not channels_last:
            unaligned += [f"stride_{t}{a}" for t in _TILED[kernel] for a in "nc"]
    unit_extent = block_c if channels_last else block_s
    unit_aligned = (block_c >= 16 or not fused) if channels_last else not (fused and block_s < 16)
    constexprs = dict(CHANNELS_LAST=channels_last, BLOCK_C=block_c, BLOCK_S=block_s)
    if kernel != "_gn_fwd_partial_stats_kernel":
        constexprs["SILU"] = silu
    return Config.make(
        kernel, pointer_types(kernel, x_type, param_type), constexprs, num_warps, 1, _occupancy(kernel, tile),
        ones=unit_strides(kernel, channels_last), unaligned=tuple(unaligned),
        floats=("eps",) if kernel == "_gn_fwd_fused_kernel" else (),
        wide_loads=x_type != "fp32" and unit_aligned and unit_extent >= 8,
    )


def _small(kernel, constexprs, param_type="fp32", unaligned=(), floats=()) -> Config:
    tile = tuple(constexprs.values())
    return Config.make(kernel, pointer_types(kernel, "fp32", param_type), constexprs, SMALL_KERNEL_WARPS, 1,
                       _occupancy(kernel, tile), unaligned=unaligned, floats=floats)


def _entries():
    for channels_last in (False, True):
        for x_type, param_type in DTYPE_PAIRS:
            for silu in (False, True):
                for tile in FUSED_FORWARD_TILES:
                    yield _streaming("_gn_fwd_fused_kernel", tile, channels_last, silu, x_type, param_type)
                for tile in FUSED_BACKWARD_TILES:
                    yield _streaming("_gn_bwd_fused_kernel", tile, channels_last, silu, x_type, param_type)
                for tile in SPLIT_TILES[channels_last]:
                    for kernel in ("_gn_fwd_apply_kernel", "_gn_bwd_partial_kernel", "_gn_bwd_dx_kernel"):
                        yield _streaming(kernel, tile, channels_last, silu, x_type, param_type)
            if param_type == x_type:  # the partial statistics read x alone
                for tile in SPLIT_TILES[channels_last]:
                    yield _streaming("_gn_fwd_partial_stats_kernel", tile, channels_last, False, x_type, x_type)
    for block in COMBINE_BLOCKS:
        yield _small("_gn_fwd_combine_kernel", dict(BLOCK=block), unaligned=("CPG", "NUM_CHUNKS"), floats=("eps",))
    for param_type in ("fp32", "fp16", "bf16"):
        yield _small("_gn_bwd_group_kernel", dict(BLOCK_C=GROUP_TILE[0], BLOCK_K=GROUP_TILE[1]), param_type,
                     unaligned=("CPG", "NUM_CHUNKS"))
        yield _small("_gn_bwd_affine_kernel", dict(BLOCK_N=AFFINE_TILE[0], BLOCK_C=AFFINE_TILE[1]), param_type,
                     unaligned=("N",))


TABLE = Table("group_norm_silu", ("vqvae_fast.kernels.group_norm_silu_jit",), tuple(_entries()))
