"""What one launch of a case does: the per-op accounting modules (``work_<op>.py``) fill these in.

A :class:`StaticCase` is one row of the benchmark matrix the model estimates (op, dims, dtype,
layout, mode, and the precision for argmin's fp32 inputs). Its launches, in order, are
:class:`LaunchWork`: the table entry (or ``None`` for a PyTorch op the launcher runs, such as a
copy or a ``torch.full``), the grid, and the work that launch really does -- counted from the
kernel's code and the planner's tiles, including whatever it does beyond the op's floor
(recomputation, re-reads from L2, partial sums, padding).

The per-CTA loop structure (``trips``, ``trip_load_bytes``, ``trip_tensor_flops``,
``trip_fma_flops``) drives the latency terms of the estimate (``estimate.py``); the totals
(``dram_bytes``, ``l2_bytes``, ``tensor_flops``, ``fma_flops``) drive its throughput terms.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch

TORCH_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
BYTES = {"fp32": 4, "fp16": 2, "bf16": 2, "i64": 8, "tf32": 4}


@dataclass(frozen=True)
class StaticCase:
    op: str
    dims: tuple
    dtype: str
    format: str  # "nchw" / "channels_last" (group norm), "bcn" (attention), "rows" (argmin)
    mode: str  # "forward" or "backward" (forward+backward is the sum of the two)
    provider: str = "vqvae_fast"  # "vqvae_fast-fast": argmin's TF32 precision

    @property
    def shape(self) -> str:
        return "x".join(map(str, self.dims))


@dataclass
class LaunchWork:
    """One launch and the work it does (bytes, FLOPs: totals over its whole grid)."""

    label: str  # what it does, e.g. "forward", "partial statistics", "torch.full best"
    table: str | None  # the table's module, e.g. "vqvae_fast.kernels.group_norm_silu_table"
    config: object | None  # the table entry (kernels/_table.Config); None for a PyTorch op
    grid: int  # CTAs
    dram_bytes: float = 0.0  # HBM traffic, reads + writes (each byte once: L2 catches re-reads)
    l2_bytes: float = 0.0  # bytes the CTAs load from global memory (>= the HBM reads)
    store_bytes: float = 0.0  # of dram_bytes, those written
    #: of dram_bytes, reads of data an earlier launch of the same call read or wrote: they hit L2
    #: instead when they fit in half of it (``estimate.py``)
    reread_bytes: float = 0.0
    tensor_flops: float = 0.0
    tensor_operand: str = "bf16"  # "bf16", "fp16", "tf32"
    fma_flops: float = 0.0  # fp32 work on the CUDA cores (2 per multiply-add)
    trips: int = 1  # main-loop trips per CTA (1: a kernel without a loop)
    trip_load_bytes: float = 0.0  # bytes one CTA loads per trip (waited on before use)
    prologue_load_bytes: float = 0.0  # bytes one CTA loads once, before its loop
    #: trips of a loop around the main loop (``trips`` counts main-loop trips in all); each
    #: restarts the main loop's pipeline (its first loads are not ahead) and runs the outer
    #: loop's own instructions (``sass.outer_instructions``); 0: the main loop is not nested
    outer_trips: int = 0
    torch_efficiency: float = 1.0  # a PyTorch op: the fraction of the peak its library reaches
    notes: list = field(default_factory=list)

    @property
    def load_bytes_per_cta(self) -> float:
        return self.prologue_load_bytes + self.trips * self.trip_load_bytes


# ----------------------------------------------------------------------------------------------
# Recording what a launcher plans, on meta tensors


def meta(shape, dtype: str | torch.dtype, memory_format=torch.contiguous_format) -> torch.Tensor:
    dtype = TORCH_DTYPES.get(dtype, dtype)
    return torch.empty(shape, dtype=dtype, device="meta", memory_format=memory_format)


@contextlib.contextmanager
def recorded(module, capability: int, sms: int):
    """Launches of the launcher ``module`` recorded instead of run, planned for a device of
    ``capability`` with ``sms`` multiprocessors (patches the module's device queries)."""
    log = []
    saved = {}
    patches = {"run": log.extend, "capability": lambda device: capability, "sm_count": lambda device: sms,
               "device_facts": lambda device: (capability, sms)}
    for name, value in patches.items():
        if hasattr(module, name):
            saved[name] = getattr(module, name)
            setattr(module, name, value)
    try:
        yield log
    finally:
        for name, value in saved.items():
            setattr(module, name, value)


def cdiv(a: int, b: int) -> int:
    return -(-a // b)
