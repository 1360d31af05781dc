"""The kernels' speed goals, read against the static model's estimates (``static_model.md``).

Each goal names one case of the ``full`` set on the H100 model, the share of a floor it must
reach, and that floor: the op's ideal floor (``benchmarks/formulas.py``) or a *practical* one
that counts the passes the op cannot avoid. Group norm's practical floor is ``3*E*s`` forward
(read ``x`` for the statistics, read it again and write ``y``: a group of a large image does not
stay on chip) and ``5*E*s`` backward (``x`` and ``dy`` read twice, ``dx`` written), against the
ideal ``2*E*s`` and ``3*E*s``; so the practical share is the ideal one times ``3/2`` or ``5/3``.

Where an estimate misses its goal the table prints ``why``: what binds and why the design cannot
do better, from the launches' accounting (``work_<op>.py``).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Goal:
    op: str
    dims: tuple
    dtype: str
    format: str
    mode: str
    pct: float  # the share of the floor to reach, in %
    floor: str = "ideal"  # or "practical: <passes>"
    practical_factor: float = 1.0  # ideal floor time / practical floor time
    provider: str = "vqvae_fast"
    why: str = ""  # what binds, printed when the estimate misses the goal


GN_SHAPE = (8, 128, 256, 256)
ATTN_SHAPE = (1, 512, 4096)
ARGMIN_SHAPE = (65536, 16384, 256)

GOALS = [
    *(Goal("group_norm_silu", GN_SHAPE, "bf16", fmt, "forward", 85.0, "practical: 3*E*s", 1.5)
      for fmt in ("nchw", "channels_last")),
    Goal("group_norm_silu", GN_SHAPE, "bf16", "nchw", "backward", 85.0, "practical: 5*E*s", 5 / 3),
    Goal("group_norm_silu", GN_SHAPE, "bf16", "channels_last", "backward", 85.0, "practical: 5*E*s", 5 / 3,
         why="the partial-sum kernel holds 8 channels x 4 per-channel constants per thread (96 registers): "
             "5 CTAs/SM leave too few bytes in flight to cover HBM latency"),
    Goal("spatial_attention", ATTN_SHAPE, "bf16", "bcn", "forward", 55.0,
         why="two L2-fed kernels: the logits (a 128x256 tile does 85 FLOP per byte it loads; 790 TFLOP/s "
             "over 7 TB/s of L2 needs 113) and P V (its 512x4096 output is 128 tiles of 128x128, one per "
             "SM, each re-reading the 32 MB P from HBM); more needs P shared by the CTAs of a cluster "
             "(TMA multicast) or one fused FlashAttention-3 kernel, which Triton 3.6-3.9 cannot express"),
    Goal("spatial_attention", ATTN_SHAPE, "bf16", "bcn", "backward", 40.0,
         why="the score-gradient kernel and the three products are L2-fed as the forward's are"),
    Goal("codebook_argmin", ARGMIN_SHAPE, "bf16", "rows", "forward", 60.0),
    Goal("codebook_argmin", ARGMIN_SHAPE, "fp32", "rows", "forward", 45.0,
         why="the fp32 default is three TF32 products (3x the floor's FLOPs: at most 33%) because one "
             "TF32 product with an fp32 re-rank agrees with fp64 less often than PyTorch's fp32 does on "
             "near-tie codebooks (tests/test_codebook_argmin_accuracy.py); it is the opt-in 'fast' "
             "precision. Below 33%: the in-register split of z serialises the MMAs, and z is re-read "
             "from L2 for every 64-code tile"),
]


def _key(op, dims, dtype, fmt, mode, provider):
    return (op, tuple(dims), dtype, fmt, mode, provider)


def goal_rows(estimates, arch: str = "sm_90a") -> list[dict]:
    """One row per goal: the estimate against it (``None`` when the case was not estimated)."""
    found = {_key(e.case.op, e.case.dims, e.case.dtype, e.case.format, e.case.mode, e.case.provider): e
             for e in estimates if e.gpu.key == arch and not e.error}
    rows = []
    for g in GOALS:
        est = found.get(_key(g.op, g.dims, g.dtype, g.format, g.mode, g.provider))
        pct = None if est is None else round(est.pct_floor * g.practical_factor, 1)
        met = None if pct is None else pct >= g.pct
        rows.append({
            "op": g.op, "shape": "x".join(map(str, g.dims)), "dtype": g.dtype, "format": g.format, "mode": g.mode,
            "goal_pct": g.pct, "floor": g.floor, "est_pct": pct,
            "met": {None: "not estimated", True: "met", False: "missed"}[met],
            "binds": "" if est is None else est.binds,
            "why": g.why if met is False else "",
        })
    return rows
