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
    block_co: int | None = None  # output channels per program; None: the whole head


@dataclass(frozen=True)
class BackwardConfig:
    block_m: int  # queries per step (dK/dV kernel) or per program (dQ kernel)
    block_n: int  # keys per program (dK/dV kernel) or per step (dQ kernel)
    num_warps: int
    num_stages: int


HEADS = (64, 128, 256, 512)
DTYPES = ("fp16", "bf16")
LAYOUTS = ("n", "c")
REDUCE_TILE = dict(BLOCK_P=64, BLOCK_C=32)  # the combine and Delta kernels, 4 warps

#: arch -> head -> tiles, best first (the launcher takes the next where the device refuses one's
#: shared memory). Shared memory holds ``q`` (BLOCK_M x HEAD) and ``num_stages`` buffers of a key
#: block (HEAD x BLOCK_N) and a value block (BLOCK_N x BLOCK_CO); registers hold the fp32
#: accumulator (BLOCK_M x BLOCK_CO) -- on sm_80, whose MMAs read their operands from registers,
#: also ``q`` itself, which is why heads above 128 have no sm_80 tile.
#:
#: Head 512 on sm_90 splits the output channels over two programs (``BLOCK_CO = 256``, each
#: recomputing the logits): a 128 x 512 fp32 accumulator does not fit in registers, and the
#: alternative, 64 queries per program with the full head, makes both warpgroups compute the same
#: logits (each warpgroup's MMA covers 64 rows and needs all of them for its half of ``P V``)
#: with narrower key blocks. Its first tile uses 224 of the 227 KB of shared memory; the second,
#: 200 KB.
FORWARD_TILES = {
    "sm_90a": {
        64: (ForwardConfig(128, 64, 4, 3),),
        128: (ForwardConfig(128, 64, 8, 3),),
        256: (ForwardConfig(128, 64, 8, 2),),
        512: (ForwardConfig(128, 32, 8, 2, block_co=256), ForwardConfig(128, 16, 8, 3, block_co=256)),
    },
    "sm_80": {64: (ForwardConfig(128, 64, 8, 3),), 128: (ForwardConfig(128, 64, 8, 3),)},
}

#: arch -> head -> (dK/dV tile, dQ tile). Head 512 has none: the dK/dV program needs ``dKᵀ`` and
#: ``dVᵀ`` in registers (``2 x 512 x BLOCK_N`` fp32, so ``BLOCK_N <= 32``) and streams ``q`` and
#: ``dO`` blocks (``2 x 512 x BLOCK_M`` 16-bit values per stage, so ``BLOCK_M <= 32`` in 227 KB
#: with two stages); a 32 x 32 logits tile is below the 64 rows of a warpgroup MMA, and the
#: register-operand MMA it falls back to spills at ``K = 512``.
#:
#: ``BLOCK_M`` is the row count of the logits tiles ``S`` and ``dP``; Triton gives each warp 16 of
#: those rows, so 8 warps want ``BLOCK_M = 128``: at 64 both warpgroups compute the same logits.
#: Head 256 dK/dV accepts that (128 queries per step of ``q`` and ``dO`` would need 256 KB of
#: shared memory for two stages).
BACKWARD_TILES = {
    "sm_90a": {
        64: (BackwardConfig(64, 64, 4, 3), BackwardConfig(64, 64, 4, 3)),
        128: (BackwardConfig(128, 64, 8, 2), BackwardConfig(128, 64, 8, 3)),
        256: (BackwardConfig(64, 32, 8, 2), BackwardConfig(128, 32, 8, 2)),
    },
    "sm_80": {
        64: (BackwardConfig(64, 32, 4, 3), BackwardConfig(64, 64, 4, 3)),
        128: (BackwardConfig(128, 16, 8, 3), BackwardConfig(128, 32, 8, 3)),
    },
}

#: (kernel, HEAD) -> {arch: CTAs per SM} its entries promise (what the compile gate measures): the
#: tensor-core kernels trade occupancy for large tiles, one or two CTAs of 4-8 warps per SM
_OCCUPANCY = {
    ("_combine_kernel", None): {"sm_80": 7, "sm_90a": 7},
    ("_delta_kernel", None): {"sm_80": 10, "sm_90a": 12},
    ("_forward_kernel", 64): {"sm_80": 1, "sm_90a": 2},
    ("_forward_kernel", 128): {"sm_80": 1, "sm_90a": 1},
    ("_forward_kernel", 256): {"sm_90a": 1},
    ("_forward_kernel", 512): {"sm_90a": 1},
    ("_dkdv_kernel", 64): {"sm_80": 2, "sm_90a": 2},
    ("_dkdv_kernel", 128): {"sm_80": 1, "sm_90a": 1},
    ("_dkdv_kernel", 256): {"sm_90a": 1},
    ("_dq_kernel", 64): {"sm_80": 2, "sm_90a": 3},
    ("_dq_kernel", 128): {"sm_80": 1, "sm_90a": 1},
    ("_dq_kernel", 256): {"sm_90a": 1},
}


def arch_name(capability: int) -> str | None:
    """The table architecture of a device (``major * 10 + minor``); ``None`` below sm_80."""
    return "sm_90a" if capability >= 90 else "sm_80" if capability >= 80 else None


def forward_configs(head: int, capability: int) -> tuple:
    """Forward tiles for padded head size ``head`` on ``capability``, best first; none where
    nothing fits (the caller then takes the chunked PyTorch path)."""
    return FORWARD_TILES.get(arch_name(capability), {}).get(head, ())


def backward_configs(head: int, capability: int) -> tuple | None:
    """``(dK/dV tile, dQ tile)`` for ``head`` on ``capability``, or None where none fits."""
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
        dict(HEAD=head, BLOCK_M=tile.block_m, BLOCK_N=tile.block_n, BLOCK_CO=tile.block_co or head, SPLIT=split),
        tile.num_warps, tile.num_stages, _claim("_forward_kernel", arch, head),
        ones=_unit(("q", "k", "v", "o"), layout, ("o",) if split else ()), unaligned=("N",) if layout == "c" else (),
        floats=("qk_scale",), tensor_cores=True,
    )


def combine_entry(arch, dtype, layout) -> Config:
    return Config.make(
        "_combine_kernel", dict(Part="fp32", PartLse="fp32", Out=dtype, Lse="fp32"), REDUCE_TILE, 4, 1,
        _claim("_combine_kernel", arch), ones=("stride_pc",) + _unit(("o",), layout),
        unaligned=("SPLITS", "N") if layout == "c" else ("SPLITS",), wide_loads=True,
    )


def delta_entry(arch, dtype, layout) -> Config:
    return Config.make(
        "_delta_kernel", dict(Out=dtype, dOut=dtype, Delta="fp32"), REDUCE_TILE, 4, 1,
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
                for head, tiles in FORWARD_TILES[arch].items():
                    for tile in tiles:
                        for split in (False, True):
                            yield forward_entry(arch, head, tile, dtype, layout, split)
                for head, (kv_tile, q_tile) in BACKWARD_TILES[arch].items():
                    yield dkdv_entry(arch, head, kv_tile, dtype, layout)
                    for split in (False, True):
                        yield dq_entry(arch, head, q_tile, dtype, layout, split)


TABLE = Table("spatial_attention", ("vqvae_fast.kernels.spatial_attention_jit",
                                    "vqvae_fast.kernels.spatial_attention_backward_jit"), tuple(_entries()))
