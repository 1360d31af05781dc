"""The estimate: a launch's time from its work (``work.py``) and its compiled facts (``compiled.py``).

All of it is a model, for ranking designs until a GPU measures them; every number it gives is an
estimate. For one launch on a GPU (``hardware.py``) with ``P`` SMs:

1. **Occupancy.** ``c = min(65536 // (r * t), smem_per_sm // (m + 1024), 2048 // t, 32)`` CTAs
   per SM from registers ``r`` (rounded up to 8: 256 per warp), threads ``t`` and shared memory
   ``m`` (``kernels/_table.ctas_per_sm``). Waves ``W = ceil(grid / (P * c))``; the last wave
   holds the rest, spread one CTA per SM first.
2. **Throughput terms** over the whole launch: ``dram_bytes / BW``, ``l2_bytes / L2_BW``,
   ``tensor_flops / tensor_rate`` (bf16/fp16 or TF32) and ``fma_flops / fma_rate``.
3. **Per-SM schedule**, wave by wave. A wave with ``A`` CTAs on an SM takes
   ``prologue + trips * T``, where for one trip of the main loop
   ``T = max(A * t_mma, A * t_issue, A * b / bw_sm, chain)``:

   * ``t_mma`` -- the CTA's tensor (or FMA) FLOPs per trip at ``1/P`` of the GPU's rate, or the
     time its warpgroup MMAs take to read their shared-memory operands at 128 B/clock, if longer;
   * ``t_issue`` -- the CTA's other instructions per trip (the SASS of the hot loop, times its
     warps; not the MMAs, not the FFMAs of ``t_mma``) at one instruction per clock on each of the
     SM's 4 schedulers, ``MUFU`` (exp2, reciprocal) at 8 clocks each (16 lanes per clock);
   * ``b / bw_sm`` -- the bytes a CTA loads per trip at the SM's share of the bandwidth (HBM for
     first reads, L2 for re-reads, in the launch's proportion; at most 64 B/clock per SM);
   * ``chain`` -- one CTA's own critical path: with its next loads issued ``S - 1`` trips ahead
     (``S`` = the pipelining in effect, read from the SASS's ``cp.async`` waits, see
     ``sass.py``; the entry's ``num_stages`` for TMA copies),
     ``max(t_mma + t_issue, (L + b / bw_sm) / (S - 1))``; with ``S = 1`` (loads
     waited on before use, or plain loads) ``t_mma + t_issue + L + b / bw_sm``, ``L`` the
     memory latency. Other resident CTAs hide this only when ``A`` of them are there: Little's
     law, in the ``max``.

   ``prologue`` is the latency and transfer of what a CTA loads before its loop. The partial last
   wave costs its whole duration, however few CTAs it holds.
4. **The launch** takes ``max(throughput terms, schedule) + launch_overhead``. A PyTorch op (no
   table entry) takes its throughput terms divided by the efficiency its library is assumed to
   reach, plus the overhead.
5. **What binds** is the largest term: ``dram``, ``l2``, ``tensor``, ``fma`` (throughput), or,
   when the schedule is longer than every throughput term, ``waves`` (the throughput over full
   waves would fit), ``latency`` (``chain`` dominates: exposed load latency, serialised MMAs and
   softmax), ``issue`` or ``smem`` (shared-memory operand reads); ``launch`` when the overhead is
   more than half the time.

The case's time is the sum of its launches (one stream, each waits for the previous); its % of
floor is the op's floor (``benchmarks/formulas.py``: bytes / 3.0 TB/s or FLOPs / tensor rate)
over that time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from vqvae_fast.kernels._table import ctas_per_sm

from .compiled import CompiledFacts
from .hardware import Gpu
from .work import LaunchWork

#: bytes per clock an SM moves between L2 and its shared memory / registers
SM_BYTES_PER_CLOCK = 64
#: bytes per clock an SM's shared memory delivers to warpgroup MMAs
SMEM_BYTES_PER_CLOCK = 128
SCHEDULERS = 4
MUFU_ISSUE = 8  # clocks a scheduler spends on one warp's MUFU (16 lanes per clock per SM)


@dataclass
class LaunchEstimate:
    work: LaunchWork
    facts: CompiledFacts | None
    ctas_per_sm: int
    waves: int
    wave_efficiency: float  # grid / (waves * P * c)
    terms: dict  # seconds: dram, l2, tensor, fma, schedule (and its parts)
    seconds: float
    binds: str
    stages: int


def _l2_hits(work: LaunchWork, gpu: Gpu) -> LaunchWork:
    """``work`` with its re-reads served by L2 when they fit in half of it."""
    if work.reread_bytes and work.reread_bytes <= gpu.l2_size / 2:
        work = replace(work, dram_bytes=work.dram_bytes - work.reread_bytes, reread_bytes=0.0)
    return work


def _executed_mma(work: LaunchWork, facts: CompiledFacts) -> LaunchWork:
    """``work`` with the MMA FLOPs its SASS executes per trip where they exceed the accounting
    (e.g. two warpgroups computing the same 64-row logits). A SASS trip that copies ``k`` trips'
    worth of ``cp.async`` bytes is ``k`` trips unrolled, not duplicated work."""
    sass = facts.sass
    if not (work.tensor_flops and sass.loops and sass.loop_mma_flops and work.trips):
        return work
    issuers = facts.num_warps // 4 if sass.loop.hgmma else facts.num_warps
    per_trip = work.tensor_flops / max(work.grid, 1) / work.trips
    executed = sass.loop_mma_flops * issuers / unrolled(work, facts)
    if executed <= per_trip * 1.01:
        return work
    ratio = executed / per_trip
    return replace(work, tensor_flops=work.tensor_flops * ratio, notes=work.notes + [
        f"its SASS executes {ratio:.2f}x these MMA FLOPs per trip (work repeated across warpgroups or warps)"])


def unrolled(work: LaunchWork, facts: CompiledFacts) -> int:
    """Trips of the accounting's main loop that one trip of the SASS hot loop covers: the bytes
    its ``cp.async`` copies (16 each per thread), or else its 128-bit loads, bring in, over the
    bytes a trip loads (1 when neither says)."""
    loop = facts.sass.loop
    if not (facts.sass.loops and work.trip_load_bytes):
        return 1
    copied = (loop.ldgsts or loop.ldg_128) * 16 * facts.threads
    return max(1, round(copied / work.trip_load_bytes))


def _throughput(work: LaunchWork, gpu: Gpu) -> dict:
    return {
        "dram": work.dram_bytes / gpu.bandwidth,
        "l2": work.l2_bytes / gpu.l2_bandwidth,
        "tensor": work.tensor_flops / gpu.tensor_rate(work.tensor_operand) if work.tensor_flops else 0.0,
        "fma": work.fma_flops / gpu.fma,
    }


def _per_cta_trip(work: LaunchWork, facts: CompiledFacts, gpu: Gpu) -> tuple[float, float, float]:
    """``(t_mma, t_issue, t_smem)`` of one CTA's trip on one SM."""
    grid = max(work.grid, 1)
    trips = max(work.trips, 1)
    tensor = work.tensor_flops / grid / trips
    fma = work.fma_flops / grid / trips
    t_mma = tensor / (gpu.tensor_rate(work.tensor_operand) / gpu.sms) + fma / (gpu.fma / gpu.sms)
    sass = facts.sass
    warps = facts.num_warps
    counts = sass.loop if sass.loops else sass.total  # no loop: the whole kernel is the one trip
    per = unrolled(work, facts)  # an unrolled SASS loop: its counts cover `per` trips
    t_smem = 0.0
    if sass.loops:
        issuers = warps // 4 if sass.loop.hgmma else warps
        t_smem = sass.loop_mma_shared_bytes * issuers / (SMEM_BYTES_PER_CLOCK * gpu.clock) / per
    # FFMAs are the FMA FLOPs of t_mma; the rest issue one per clock per scheduler, MUFU slower
    other = counts.instructions - counts.tensor - counts.ffma - counts.mufu
    t_issue = _issue_time(other + MUFU_ISSUE * counts.mufu, warps, gpu) / per
    return t_mma, t_issue, t_smem


def _issue_time(instructions: int, warps: int, gpu: Gpu) -> float:
    """Seconds for ``warps`` warps of one CTA to issue ``instructions`` each on one SM's 4
    schedulers, one instruction per clock each (independent instructions: no dependency stalls)."""
    return instructions * max(warps / SCHEDULERS, 1) / gpu.clock


def _source(work: LaunchWork, gpu: Gpu, active_sms: int) -> tuple[float, float]:
    """``(latency, bytes/s per SM)`` of a CTA's loads: HBM for first reads, L2 for re-reads."""
    loads = max(work.l2_bytes, 1.0)
    from_dram = min(1.0, max(0.0, (work.dram_bytes - work.store_bytes) / loads))
    latency = from_dram * gpu.dram_latency + (1 - from_dram) * gpu.l2_latency
    per_sm_cap = SM_BYTES_PER_CLOCK * gpu.clock
    dram_share = min(per_sm_cap, gpu.bandwidth / active_sms)
    l2_share = min(per_sm_cap, gpu.l2_bandwidth / active_sms)
    seconds_per_byte = from_dram / dram_share + (1 - from_dram) / l2_share
    return latency, 1.0 / seconds_per_byte


def _wave(work, facts, gpu, resident: int, active_sms: int, stages: int) -> tuple[float, dict]:
    """Time of one wave with ``resident`` CTAs per SM on ``active_sms`` SMs, and its parts."""
    t_mma, t_issue, t_smem = _per_cta_trip(work, facts, gpu)
    latency, bw_sm = _source(work, gpu, active_sms)
    b = work.trip_load_bytes
    t_load = b / bw_sm
    compute = max(t_mma, t_smem)
    if stages > 1:
        chain = max(compute + t_issue, (latency + t_load) / (stages - 1))
    else:
        chain = compute + t_issue + latency + t_load
    parts = {"mma": resident * t_mma, "smem": resident * t_smem, "issue": resident * t_issue,
             "transfer": resident * t_load, "latency": chain}
    trip = max(parts.values())
    prologue = (latency + resident * work.prologue_load_bytes / bw_sm) if work.prologue_load_bytes else 0.0
    outer = 0.0
    if work.outer_trips:
        # each outer trip: its own instructions, and a refill of the main loop's pipeline (the
        # loads of its first S - 1 trips), hidden only behind other resident CTAs' work
        t_outer = _issue_time(facts.sass.outer_instructions, facts.num_warps, gpu)
        refill = latency + max(stages - 1, 1) * t_load
        outer = work.outer_trips * max(resident * t_outer, t_outer + refill - (resident - 1) * trip)
        parts["outer"] = outer / max(work.trips, 1)
    return prologue + max(work.trips, 1) * trip + outer, parts


def estimate_launch(work: LaunchWork, facts: CompiledFacts | None, gpu: Gpu) -> LaunchEstimate:
    work = _l2_hits(work, gpu)
    terms = _throughput(work, gpu)
    if work.config is None:  # a PyTorch op: its library at the assumed efficiency
        seconds = max(terms.values()) / work.torch_efficiency
        binds = max(terms, key=terms.get)
        total = seconds + gpu.launch_overhead
        return LaunchEstimate(work, None, 0, 1, 1.0, terms, total,
                              "launch" if gpu.launch_overhead > total / 2 else binds, 1)
    if facts is None or facts.error:
        raise ValueError(f"{work.label}: no compiled facts for {work.config.name} on {gpu.key}"
                         + (f" ({facts.error})" if facts is not None and facts.error else ""))
    work = _executed_mma(work, facts)
    terms = _throughput(work, gpu)
    c = ctas_per_sm(gpu.arch, facts.registers, facts.threads, facts.shared)
    if c < 1:
        raise ValueError(f"{work.config.name} cannot launch on {gpu.key}: 0 CTAs per SM")
    slots = gpu.sms * c
    waves = math.ceil(work.grid / slots)
    stages = facts.sass.stages_in_effect or facts.num_stages
    full_waves, rest = divmod(work.grid, slots)
    schedule, parts = 0.0, {}
    if full_waves:
        t, parts = _wave(work, facts, gpu, c, gpu.sms, stages)
        schedule += full_waves * t
    if rest:
        resident = math.ceil(rest / gpu.sms)
        t, last_parts = _wave(work, facts, gpu, resident, min(rest, gpu.sms), stages)
        schedule += t
        parts = parts or last_parts
    terms["schedule"] = schedule
    throughput = max(terms[k] for k in ("dram", "l2", "tensor", "fma"))
    seconds = max(throughput, schedule)
    efficiency = work.grid / (waves * slots)
    if seconds == throughput:
        binds = max(("dram", "l2", "tensor", "fma"), key=terms.get)
    else:
        binds = {"mma": "tensor" if work.tensor_flops else "fma", "smem": "smem", "issue": "issue",
                 "transfer": "bandwidth", "latency": "latency", "outer": "epilogue"}[max(parts, key=parts.get)]
        if binds in ("tensor", "fma", "bandwidth") and efficiency < 0.9:
            binds = "waves"  # the SM's units are busy, but only part of the last wave's SMs
    total = seconds + gpu.launch_overhead
    if gpu.launch_overhead > total / 2:
        binds = "launch"
    terms.update({f"trip_{k}": v for k, v in parts.items()})
    return LaunchEstimate(work, facts, c, waves, efficiency, terms, total, binds, stages)
