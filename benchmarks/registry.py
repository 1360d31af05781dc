"""Every benchmark definition by name: the four ops, the end-to-end model and the per-call overhead."""

from __future__ import annotations

from .definitions import CodebookArgmin, GroupNormSiLU, OpBench, PaddedConv2d, SpatialAttention
from .end_to_end import VQModelBench
from .overhead import OverheadBench


def all_benches() -> dict[str, OpBench]:
    benches = [GroupNormSiLU(), SpatialAttention(), CodebookArgmin(), PaddedConv2d(), VQModelBench(), OverheadBench()]
    return {b.name: b for b in benches}
