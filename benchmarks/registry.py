"""Every benchmark definition by name: the four ops, the end-to-end model and the tokenize job."""

from __future__ import annotations

from .definitions import CodebookArgmin, GroupNormSiLU, OpBench, PaddedConv2d, SpatialAttention
from .end_to_end import VQModelBench
from .tokenize_pipeline import TokenizeBench


def all_benches() -> dict[str, OpBench]:
    benches = [GroupNormSiLU(), SpatialAttention(), CodebookArgmin(), PaddedConv2d(), VQModelBench(), TokenizeBench()]
    return {b.name: b for b in benches}
