"""The static model over a set of cases: plan, compile (cached), estimate; rows for the report.

:func:`cases` turns a benchmark shape set (``benchmarks/shapes.py``: its shapes crossed with the
set's dtypes, layouts and modes) into :class:`~.work.StaticCase` rows; :func:`run` estimates
each on each GPU of ``hardware.GPUS`` and returns :class:`CaseEstimate` objects.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .. import formulas
from ..shapes import MATRIX, shapes_for
from . import work_codebook_argmin, work_group_norm_silu, work_spatial_attention
from .compiled import compile_many
from .estimate import LaunchEstimate, estimate_launch
from .hardware import GPUS, Gpu
from .work import StaticCase

#: op -> its accounting module (``launches(case, capability, sms)``)
OPS = {
    "group_norm_silu": work_group_norm_silu,
    "spatial_attention": work_spatial_attention,
    "codebook_argmin": work_codebook_argmin,
}
CAPABILITY = {"sm_90a": 90, "sm_80": 80}


@dataclass
class CaseEstimate:
    case: StaticCase
    gpu: Gpu
    launches: list = field(default_factory=list)  # LaunchEstimate
    floor_seconds: float = 0.0
    floor_bound: str = ""  # "memory" or "compute (<rate>)"
    error: str | None = None

    @property
    def seconds(self) -> float:
        return sum(l.seconds for l in self.launches)

    @property
    def pct_floor(self) -> float:
        return 100.0 * self.floor_seconds / self.seconds if self.seconds else 0.0

    @property
    def binds(self) -> str:
        """What binds the launch that takes the most time, with its label."""
        if not self.launches:
            return ""
        top = max(self.launches, key=lambda l: l.seconds)
        return f"{top.binds} ({top.work.label})"


def cases(set_name: str, ops=tuple(OPS), dtypes=None, modes=("forward", "backward"), shapes=None) -> list[StaticCase]:
    """The cases of a benchmark set (``shapes`` overrides: ``{op: [dims, ...]}``); forward and
    backward are separate cases (forward+backward is their sum)."""
    out = []
    for op in ops:
        matrix = MATRIX[set_name][op]
        op_shapes = shapes.get(op, []) if shapes is not None else [s.dims for s in shapes_for(op, set_name)]
        only = {s.dims: s.only_modes for s in shapes_for(op, set_name)}
        for dims in op_shapes:
            for dtype in dtypes or matrix.dtypes:
                for fmt in matrix.formats:
                    for mode in modes:
                        if op == "codebook_argmin" and mode != "forward":
                            continue
                        if only.get(tuple(dims)) and mode not in only[tuple(dims)]:
                            continue
                        providers = ("vqvae_fast", "vqvae_fast-fast") if op == "codebook_argmin" and dtype == "fp32" \
                            else ("vqvae_fast",)
                        for provider in providers:
                            out.append(StaticCase(op, tuple(dims), dtype, fmt, mode, provider))
    return out


def floor(case: StaticCase, gpu: Gpu) -> tuple[float, str]:
    """The op's floor on ``gpu`` (``benchmarks/formulas.py``), as the benchmark computes it."""
    work = formulas.FORMULAS[case.op](case.dims, case.dtype, case.mode)
    rate, rate_name = None, None
    if work.flops:
        if case.dtype == "fp32":
            rate_name = "tf32" if case.provider == "vqvae_fast-fast" else "fp32"
        else:
            rate_name = case.dtype
        rate = gpu.fma if rate_name == "fp32" else gpu.tensor_rate(rate_name)
    seconds, bound = formulas.floor_seconds(work, gpu.bandwidth, rate)
    return seconds, ("memory" if bound == "memory" else f"compute {rate_name}")


def run(case_list, gpus=tuple(GPUS.values()), cache: str | None = None,
        workers: int | None = None) -> list[CaseEstimate]:
    planned = []
    for gpu in gpus:
        for case in case_list:
            estimate = CaseEstimate(case, gpu)
            estimate.floor_seconds, estimate.floor_bound = floor(case, gpu)
            try:
                works = OPS[case.op].launches(case, CAPABILITY[gpu.key], gpu.sms)
            except Exception as err:  # a case the launcher refuses: reported in the table
                estimate.error = f"planning failed: {type(err).__name__}: {err}"
                works = []
            planned.append((estimate, works))
    jobs = [(w.table, w.config, est.gpu.key) for est, works in planned for w in works if w.config is not None]
    facts = compile_many(jobs, cache, workers)
    for estimate, works in planned:
        for w in works:
            f = facts.get((w.table, w.config.name, estimate.gpu.key)) if w.config is not None else None
            try:
                estimate.launches.append(estimate_launch(w, f, estimate.gpu))
            except ValueError as err:
                estimate.error = str(err)
    return [est for est, _ in planned]


def launch_estimates(estimates) -> list[tuple[CaseEstimate, LaunchEstimate]]:
    return [(est, launch) for est in estimates for launch in est.launches]
