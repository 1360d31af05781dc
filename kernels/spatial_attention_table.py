"""Every configuration the ``spatial_attention`` launchers can pick: :data:`TABLE`.

The dimensions (``docs/architecture.md`` explains the format):

* architecture: sm_90a and sm_80 have their own tiles (:data:`FORWARD_TILES`,
  :data:`BACKWARD_TILES`); a device of another capability launches its nearest table
  architecture's tiles (``kernels/_table.arch_for``), or none (the chunked PyTorch path);
* head size ``HEAD``: 64, 128, 256, 512 (:data:`HEADS`; a head of ``C`` channels runs at the
  next of them, its channels zero-padded by the launcher), with the tiles of that head;
* dtype: fp16 or bf16 (fp32 attention takes cuBLAS in ``vqvae_fast.ops.spatial_attention``);
* layout: ``"n"`` (positions innermost: NCHW, the attention block's projection; ``N`` 16-divisible)
  or ``"c"`` (channels innermost: channels-last, token-major projections, and every copy the
  launcher makes; any ``N``), the stride equal to 1 in each operand;
* split keys: ``SPLIT`` in the forward (fp32 partial outputs merged by ``_combine_kernel``) and,
  in the backward, a ``dQ`` of fp32 partial sums.
"""

from __future__ import annotations

from dataclasses import dataclass

from ._table import Config, Table


@dataclass(frozen=True)
class ForwardConfig:
    block_m: int
    block_n: int
    num_warps: int
    num_stages: int


@dataclass(frozen=True)
class BackwardConfig:
    block_m: int  # queries per step (dK/dV kernel) or per program (dQ kernel)
    block_n: int  # keys per program (dK/dV kernel) or per step (dQ kernel)
    num_warps: int
    num_stages: int


@dataclass(frozen=True)
class FlashBackward:
    """A flash-style backward (``spatial_attention_backward_jit``): ``kv`` the dK/dV kernel's
    tile, ``q`` the dQ kernel's."""

    kv: BackwardConfig
    q: BackwardConfig


@dataclass(frozen=True)
class RowsConfig:
    block_m: int
    block_n: int
    block_k: int
    num_warps: int
    num_stages: int


@dataclass(frozen=True)
class RowsForward:
    """The forward by blocks of query rows (``spatial_attention_rows_jit``): ``scores`` the tile
    of the kernel that writes ``P~`` (rows, keys, channels per step), ``attend`` that of the
    product (channels, rows, keys per step: a divisor of a key tile of ``scores``);
    ``small_scores`` replaces ``scores`` where its grid would hold less than one CTA per SM."""

    scores: RowsConfig
    attend: RowsConfig
    small_scores: RowsConfig | None = None

    def score_tiles(self) -> tuple:
        return (self.scores,) if self.small_scores is None else (self.scores, self.small_scores)


@dataclass(frozen=True)
class RowsBackward:
    """The backward by blocks of query rows (``spatial_attention_rows_jit``): ``scores`` the tile
    of the kernel that writes ``P`` and ``dS``, ``products`` that of the batched products."""

    scores: RowsConfig
    products: RowsConfig


HEADS = (64, 128, 256, 512)
DTYPES = ("fp16", "bf16")
LAYOUTS = ("n", "c")
#: the combine and Delta kernels, 8 warps: every channel (up to the largest head) of 16 positions
REDUCE_TILE = dict(BLOCK_P=16, BLOCK_C=512)

#: arch -> head -> flash tiles (best first: the launcher takes the next where the device refuses
#: one's shared memory) or :class:`RowsForward`. Flash: shared memory holds ``q`` (BLOCK_M x HEAD)
#: and ``num_stages`` buffers of a key block (HEAD x BLOCK_N) and a value block (BLOCK_N x HEAD);
#: registers hold the fp32 accumulator (BLOCK_M x HEAD) -- on sm_80, whose MMAs read their
#: operands from registers, also ``q`` itself.
#:
#: Heads 256 and 512 run by rows: a flash program's accumulator leaves room for 64 (head 512) or
#: 128 (head 256) queries, so every program streams all keys and values from L2 for that many
#: queries, in small key blocks (a 64 x 512 accumulator beside 64-row logits leaves shared
#: memory for 16-32 keys per stage), and the logits tile is split over warpgroups or computed
#: twice. By rows (docs/spatial-attention.md has the estimates that chose this), on sm_90a the
#: logits run on 128 x 256 tiles (199 registers, one CTA per SM: 85 FLOP per byte loaded from L2
#: where 128 x 128 gives 64) and the product on 128 x 128 tiles in 64-key steps, each four
#: stages deep so that the loads run three steps ahead (the product's 128-key steps fit three
#: stages only: loads one step ahead). Where 128 x 256 score tiles would leave SMs idle (fewer
#: tiles than SMs: (1, 512, 1024), (8, 512, 256)) the scores run on 128 x 128 tiles. sm_80 takes
#: the same steps four stages deep on its 128 x 128 tiles.
FORWARD_TILES = {
    "sm_90a": {
        64: (ForwardConfig(128, 64, 4, 3),),
        128: (ForwardConfig(128, 64, 8, 3), ForwardConfig(128, 64, 8, 2)),
        256: RowsForward(RowsConfig(128, 256, 64, 8, 4), RowsConfig(128, 128, 64, 8, 4),
                         small_scores=RowsConfig(128, 128, 64, 8, 4)),
        512: RowsForward(RowsConfig(128, 256, 64, 8, 4), RowsConfig(128, 128, 64, 8, 4),
                         small_scores=RowsConfig(128, 128, 64, 8, 4)),
    },
    "sm_80": {
        64: (ForwardConfig(128, 64, 8, 3),),
        128: (ForwardConfig(128, 64, 8, 3),),
        256: RowsForward(RowsConfig(128, 128, 32, 8, 4), RowsConfig(128, 128, 64, 8, 4)),
        512: RowsForward(RowsConfig(128, 128, 32, 8, 4), RowsConfig(128, 128, 64, 8, 4)),
    },
}

#: arch -> head -> :class:`FlashBackward` or :class:`RowsBackward`.
#:
#: Flash: ``BLOCK_M`` is the row count of the logits tiles ``S`` and ``dP``; Triton gives each warp
#: 16 of those rows, so 8 warps want ``BLOCK_M = 128``: at 64 both warpgroups compute the same
#: logits.
#:
#: By rows, heads 256 and 512: a flash dK/dV program holds ``2 x HEAD x BLOCK_N`` fp32
#: accumulators in registers (at head 512 ``BLOCK_N <= 32`` over 8 warps) beside 64-query steps
#: of ``q`` and ``dO`` (128 KB each at head 512: one stage, staged through registers, which
#: spills), so every program streams all queries from L2 for a few keys; on sm_80 the
#: register-operand MMAs spill the flash kernels from head 256 on. By rows, ``P`` and ``dS`` are
#: formed in 128 x 128 tiles (on sm_90a in 32-channel steps, four stages deep) and the three
#: products run as batched matrix products on 128 x 128 tiles (docs/spatial-attention.md).
BACKWARD_TILES = {
    "sm_90a": {
        64: FlashBackward(BackwardConfig(64, 64, 4, 3), BackwardConfig(64, 64, 4, 3)),
        128: FlashBackward(BackwardConfig(128, 64, 8, 2), BackwardConfig(128, 64, 8, 3)),
        256: RowsBackward(RowsConfig(128, 128, 32, 16, 4), RowsConfig(128, 128, 64, 8, 4)),
        512: RowsBackward(RowsConfig(128, 128, 32, 16, 4), RowsConfig(128, 128, 64, 8, 4)),
    },
    "sm_80": {
        64: FlashBackward(BackwardConfig(64, 32, 4, 3), BackwardConfig(64, 64, 4, 3)),
        128: FlashBackward(BackwardConfig(128, 16, 8, 3), BackwardConfig(128, 32, 8, 3)),
        256: RowsBackward(RowsConfig(128, 64, 32, 8, 4), RowsConfig(128, 128, 32, 8, 4)),
        512: RowsBackward(RowsConfig(128, 64, 32, 8, 4), RowsConfig(128, 128, 32, 8, 4)),
    },
}

#: (kernel, HEAD) -> {arch: CTAs per SM} its entries promise (what the compile gate measures): the
#: tensor-core kernels trade occupancy for large tiles, one or two CTAs of 4-8 warps per SM
_OCCUPANCY = {
    ("_combine_kernel", None): {"sm_80": 2, "sm_90a": 2},
    ("_delta_kernel", None): {"sm_80": 5, "sm_90a": 5},
    ("_forward_kernel", 64): {"sm_80": 1, "sm_90a": 2},
    ("_forward_kernel", 128): {"sm_80": 1, "sm_90a": 1},
    ("_dkdv_kernel", 64): {"sm_80": 2, "sm_90a": 2},
    ("_dkdv_kernel", 128): {"sm_80": 1, "sm_90a": 1},
    ("_scores_kernel", None): {"sm_80": 1, "sm_90a": 1},
    ("_attend_kernel", None): {"sm_80": 1, "sm_90a": 1},
    ("_score_grads_kernel", None): {"sm_80": 1, "sm_90a": 1},
    ("_bmm_kernel", None): {"sm_80": 1, "sm_90a": 1},
    ("_dq_kernel", 64): {"sm_80": 2, "sm_90a": 3},
    ("_dq_kernel", 128): {"sm_80": 1, "sm_90a": 1},
}


def arch_name(capability: int) -> str | None:
    """The table architecture of a device (``major * 10 + minor``); ``None`` below sm_80."""
    return "sm_90a" if capability >= 90 else "sm_80" if capability >= 80 else None


def forward_configs(head: int, capability: int) -> tuple:
    """Forward tiles for padded head size ``head`` on ``capability``, best first; none where
    nothing fits (the caller then takes the chunked PyTorch path)."""
    return FORWARD_TILES.get(arch_name(capability), {}).get(head, ())


def backward_configs(head: int, capability: int) -> FlashBackward | RowsBackward | None:
    """The backward's tiles for ``head`` on ``capability``, or None where none fits."""
    return BACKWARD_TILES.get(arch_name(capability), {}).get(head)


def _unit(names, layout, split_names=()):
    """The stride arguments equal to 1: ``stride_<t><layout>`` of each name; fp32 split buffers
    (``split_names``) are always channels innermost."""
    return tuple(f"stride_{t}{'c' if t in split_names else layout}" for t in names)


def _claim(kernel, arch, head=None) -> dict:
    return {arch: _OCCUPANCY[(kernel, head)][arch]}


def forward_entry(arch, head, tile, dtype, layout, split) -> Config:
    return Config.make(
        "_forward_kernel", dict(Q=dtype, K=dtype, V=dtype, Out="fp32" if split else dtype, Lse="fp32"),
        dict(HEAD=head, BLOCK_M=tile.block_m, BLOCK_N=tile.block_n, SPLIT=split),
        tile.num_warps, tile.num_stages, _claim("_forward_kernel", arch, head),
        ones=_unit(("q", "k", "v", "o"), layout, ("o",) if split else ()), unaligned=("N",) if layout == "c" else (),
        floats=("qk_scale",), tensor_cores=True,
    )


def combine_entry(arch, dtype, layout) -> Config:
    return Config.make(
        "_combine_kernel", dict(Part="fp32", PartLse="fp32", Out=dtype, Lse="fp32"), REDUCE_TILE, 8, 1,
        _claim("_combine_kernel", arch), ones=("stride_pc",) + _unit(("o",), layout),
        unaligned=("SPLITS", "N") if layout == "c" else ("SPLITS",), wide_loads=True,
    )


def delta_entry(arch, dtype, layout) -> Config:
    return Config.make(
        "_delta_kernel", dict(Out=dtype, dOut=dtype, Delta="fp32"), REDUCE_TILE, 8, 1,
        _claim("_delta_kernel", arch), ones=_unit(("o", "d"), layout),
        unaligned=("N",) if layout == "c" else (), wide_loads=True,
    )


def dkdv_entry(arch, head, tile, dtype, layout) -> Config:
    pointers = dict(Q=dtype, K=dtype, V=dtype, dOut=dtype, Lse="fp32", Delta="fp32", dK=dtype, dV=dtype)
    return Config.make(
        "_dkdv_kernel", pointers, dict(HEAD=head, BLOCK_M=tile.block_m, BLOCK_N=tile.block_n),
        tile.num_warps, tile.num_stages, _claim("_dkdv_kernel", arch, head),
        ones=_unit(("q", "k", "v", "d", "dk", "dv"), layout), unaligned=("N",) if layout == "c" else (),
        floats=("scale", "qk_scale"), tensor_cores=True,
    )


def scores_entry(arch, tile, dtype, layout) -> Config:
    return Config.make(
        "_scores_kernel", dict(Q=dtype, K=dtype, P=dtype, Stats="fp32"),
        dict(BLOCK_M=tile.block_m, BLOCK_N=tile.block_n, BLOCK_K=tile.block_k), tile.num_warps, tile.num_stages,
        _claim("_scores_kernel", arch), ones=_unit(("q", "k"), layout) + ("stride_pn",),
        unaligned=("N", "rows") if layout == "c" else (), floats=("qk_scale",), tensor_cores=True,
    )


def attend_entry(arch, tile, dtype, layout, stats_tile) -> Config:
    """``stats_tile``: the keys of one tile of the scores kernel (its ``BLOCK_N``)."""
    return Config.make(
        "_attend_kernel", dict(V=dtype, P=dtype, Stats="fp32", Out=dtype, Lse="fp32"),
        dict(BLOCK_M=tile.block_m, BLOCK_N=tile.block_n, KEY_TILE=tile.block_k, STATS_TILE=stats_tile),
        tile.num_warps, tile.num_stages,
        _claim("_attend_kernel", arch), ones=_unit(("v", "o"), layout) + ("stride_pn",),
        unaligned=("N", "rows", "tiles") if layout == "c" else ("tiles",), tensor_cores=True,
    )


def rows_forward_entries(arch, scores, attend, dtype, layout) -> tuple:
    """The scores kernel's entry with tile ``scores``, and the product's with tile ``attend``."""
    return scores_entry(arch, scores, dtype, layout), attend_entry(arch, attend, dtype, layout, scores.block_n)


def score_grads_entry(arch, tile, dtype, layout) -> Config:
    pointers = dict(Q=dtype, K=dtype, V=dtype, dOut=dtype, Lse="fp32", Delta="fp32", P=dtype, dS=dtype)
    return Config.make(
        "_score_grads_kernel", pointers, dict(BLOCK_M=tile.block_m, BLOCK_N=tile.block_n, BLOCK_K=tile.block_k),
        tile.num_warps, tile.num_stages, _claim("_score_grads_kernel", arch),
        ones=_unit(("q", "k", "v", "d"), layout) + ("stride_pn",),
        unaligned=("N", "rows") if layout == "c" else (), floats=("qk_scale",), tensor_cores=True,
    )


def bmm_entry(arch, tile, dtype, layout, a_unit, b_unit, out, out_unit, add) -> Config:
    """``Out = alpha A B (+ Acc)``: ``a_unit``, ``b_unit``, ``out_unit`` name the unit stride of
    each operand (``"m"``, ``"k"``, ``"n"``), ``out`` the output's type. With positions innermost
    (``layout == "n"``) every size is a multiple of 16, which keeps the masked copies 16 bytes wide."""
    return Config.make(
        "_bmm_kernel", dict(A=dtype, B=dtype, Acc="fp32", Out=out),
        dict(ADD=add, BLOCK_M=tile.block_m, BLOCK_N=tile.block_n, BLOCK_K=tile.block_k), tile.num_warps,
        tile.num_stages, _claim("_bmm_kernel", arch),
        ones=(f"stride_a{a_unit}", f"stride_b{b_unit}", "stride_cn", f"stride_o{out_unit}"),
        unaligned=("N", "K") if layout == "c" else (), floats=("alpha",), tensor_cores=True,
    )


def rows_entries(arch, tiles, dtype, layout) -> tuple:
    """Every entry of the backward by rows in one layout: the score gradients; ``dV``, ``dK``
    (``dO_r P_r``, ``Q_r dS_r``) into an fp32 partial sum or the result, with or without adding
    the previous one; ``dQ_r = K dS_rᵀ``."""
    position = "k" if layout == "n" else "m"  # the unit stride of a (channels, positions) operand
    result = "n" if layout == "n" else "m"
    products = tiles.products
    return (
        score_grads_entry(arch, tiles.scores, dtype, layout),
        *(bmm_entry(arch, products, dtype, layout, position, "n", out, "n" if out == "fp32" else result, add)
          for out in ("fp32", dtype) for add in (False, True)),
        bmm_entry(arch, products, dtype, layout, position, "k", dtype, result, False),
    )


def dq_entry(arch, head, tile, dtype, layout, split) -> Config:
    pointers = dict(Q=dtype, K=dtype, V=dtype, dOut=dtype, Lse="fp32", Delta="fp32", dQ="fp32" if split else dtype)
    return Config.make(
        "_dq_kernel", pointers, dict(HEAD=head, BLOCK_M=tile.block_m, BLOCK_N=tile.block_n),
        tile.num_warps, tile.num_stages, _claim("_dq_kernel", arch, head),
        ones=_unit(("q", "k", "v", "d", "dq"), layout, ("dq",) if split else ()),
        unaligned=("N",) if layout == "c" else (), floats=("scale", "qk_scale"), tensor_cores=True,
    )


def _entries():
    for arch in FORWARD_TILES:
        for dtype in DTYPES:
            for layout in LAYOUTS:
                yield combine_entry(arch, dtype, layout)
                yield delta_entry(arch, dtype, layout)
                rows = {tiles for tiles in FORWARD_TILES[arch].values() if isinstance(tiles, RowsForward)}
                for tiles in rows:  # their entries do not depend on the head
                    for scores in tiles.score_tiles():
                        yield from rows_forward_entries(arch, scores, tiles.attend, dtype, layout)
                for head, tiles in FORWARD_TILES[arch].items():
                    for tile in () if tiles in rows else tiles:
                        for split in (False, True):
                            yield forward_entry(arch, head, tile, dtype, layout, split)
                rows = {tiles for tiles in BACKWARD_TILES[arch].values() if isinstance(tiles, RowsBackward)}
                for tiles in rows:  # their entries do not depend on the head
                    yield from rows_entries(arch, tiles, dtype, layout)
                for head, tiles in BACKWARD_TILES[arch].items():
                    if tiles in rows:
                        continue
                    yield dkdv_entry(arch, head, tiles.kv, dtype, layout)
                    for split in (False, True):
                        yield dq_entry(arch, head, tiles.q, dtype, layout, split)


TABLE = Table("spatial_attention", ("vqvae_fast.kernels.spatial_attention_jit",
                                    "vqvae_fast.kernels.spatial_attention_backward_jit",
                                    "vqvae_fast.kernels.spatial_attention_rows_jit"), tuple(_entries()))
