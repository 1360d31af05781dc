"""Every benchmark definition by name: the four ops, the end-to-end models (taming VQModel, icetk), the
tokenize job, the per-call overhead and the memory of large decodes."""

from __future__ import annotations

from .definitions import CodebookArgmin, GroupNormSiLU, OpBench, PaddedConv2d, SpatialAttention
from .end_to_end import VQModelBench
from .icetk_model import IcetkBench
from .lowmem import LowMemBench
from .overhead import OverheadBench
from .tokenize_pipeline import TokenizeBench


def all_benches() -> dict[str, OpBench]:
    benches = [
        GroupNormSiLU(), SpatialAttention(), CodebookArgmin(), PaddedConv2d(), VQModelBench(), IcetkBench(),
        TokenizeBench(), OverheadBench(), LowMemBench(),
    ]
    return {b.name: b for b in benches}
