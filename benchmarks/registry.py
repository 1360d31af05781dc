"""Every benchmark definition by name: the four ops and the end-to-end model."""

from __future__ import annotations

from .definitions import CodebookArgmin, GroupNormSiLU, OpBench, PaddedConv2d, SpatialAttention
from .end_to_end import VQModelBench


def all_benches() -> dict[str, OpBench]:
    benches = [GroupNormSiLU(), SpatialAttention(), CodebookArgmin(), PaddedConv2d(), VQModelBench()]
    return {b.name: b for b in benches}
