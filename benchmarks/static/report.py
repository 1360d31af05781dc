"""The static model's tables: markdown, CSV and JSON, and model against measurement.

``static_model.md``    the goals (``goals.py``) against the H100 estimates; per GPU: one line per
                       case (estimated time, floor, % of floor, what binds),
                       then one line per launch (table entry, grid, registers, spills, shared
                       memory, CTAs/SM, waves, pipelining, instruction mix, bytes and FLOPs).
``static_model.csv``   the launch lines, every column.
``static_model.json``  the model's constants and the case lines.

:func:`compare` puts the model beside a benchmark run's ``results.json`` (``benchmarks/report.py``
writes it on a GPU): the rows of the ``vqvae_fast`` providers matched by op, shape, dtype, layout
and mode (``forward+backward``: the model's forward plus backward).
"""

from __future__ import annotations

import csv
import json
import os

from .. import formulas
from .estimate import LaunchEstimate
from .goals import goal_rows
from .hardware import GPUS
from .model import CaseEstimate

LABEL = "estimate (static model, no GPU ran it)"


def describe(case) -> str:
    """The shape as the benchmark suite writes it (``benchmarks/definitions.py``)."""
    if case.op == "codebook_argmin":
        n, k, d = case.dims
        return f"N={n} K={k} D={d}"
    return "x".join(map(str, case.dims))


def case_row(est: CaseEstimate) -> dict:
    c = est.case
    floor = formulas.FORMULAS[c.op](c.dims, c.dtype, c.mode)
    return {
        "gpu": est.gpu.name, "arch": est.gpu.key, "op": c.op, "shape": describe(c), "dtype": c.dtype,
        "format": c.format, "mode": c.mode, "provider": c.provider, "launches": len(est.launches),
        "est_us": round(est.seconds * 1e6, 2) if not est.error else None,
        "floor_us": round(est.floor_seconds * 1e6, 2), "floor_bound": est.floor_bound,
        "est_pct_floor": round(est.pct_floor, 1) if not est.error else None,
        "binds": est.binds,
        # what the launches move and execute, against the floor's count (formulas.py)
        "hbm_mb": round(sum(l.work.dram_bytes for l in est.launches) / 1e6, 2),
        "floor_mb": round(floor.bytes / 1e6, 2) if floor.bytes else None,
        "gflop": round(sum(l.work.tensor_flops + l.work.fma_flops for l in est.launches) / 1e9, 2),
        "floor_gflop": round(floor.flops / 1e9, 2) if floor.flops else None,
        "error": est.error or "",
    }


def launch_row(est: CaseEstimate, le: LaunchEstimate) -> dict:
    w, f = le.work, le.facts
    keys = ("arch", "op", "shape", "dtype", "format", "mode", "provider")
    row = {k: v for k, v in case_row(est).items() if k in keys}
    sass = f.sass if f else None
    row.update({
        "launch": w.label, "entry": w.config.name if w.config else "(PyTorch)", "grid": w.grid,
        "registers": f.registers if f else None, "spills": (f.local + f.stack) if f else None,
        "shared": f.shared if f else None, "warps": f.num_warps if f else None,
        "stages": f.num_stages if f else None, "stages_in_effect": le.stages if f else None,
        "ctas_per_sm": le.ctas_per_sm if f else None, "waves": le.waves if f else None,
        "wave_eff": round(le.wave_efficiency, 3) if f else None,
        "hgmma": sass.total.hgmma if f else None, "hmma": sass.total.hmma if f else None,
        "ffma": sass.total.ffma if f else None, "bar": sass.total.bar if f else None,
        "depbar": sass.total.depbar if f else None, "wgdepbar": sass.total.wgdepbar if f else None,
        "ldg": sass.total.ldg if f else None, "ldg_128": sass.total.ldg_128 if f else None,
        "ldgsts": sass.total.ldgsts if f else None, "tma": sass.total.tma if f else None,
        "stg": sass.total.stg if f else None, "loop_instructions": sass.loop.instructions if f else None,
        "loop_mma": sass.loop.tensor if f else None, "loop_bar": sass.loop.bar if f else None,
        "dram_mb": round(w.dram_bytes / 1e6, 3), "l2_mb": round(w.l2_bytes / 1e6, 3),
        "tensor_gflop": round(w.tensor_flops / 1e9, 3), "fma_gflop": round(w.fma_flops / 1e9, 3),
        "est_us": round(le.seconds * 1e6, 2), "binds": le.binds,
        **{f"t_{k}_us": round(v * 1e6, 3) for k, v in le.terms.items()},
        "notes": "; ".join(w.notes),
    })
    return row


def _md_table(rows: list[dict], columns: list[tuple[str, str]]) -> list[str]:
    lines = ["| " + " | ".join(title for _, title in columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        cells = []
        for key, _ in columns:
            v = r.get(key)
            cells.append("-" if v is None or v == "" else (f"{v:.4g}" if isinstance(v, float) else str(v)))
        lines.append("| " + " | ".join(cells).replace("\n", " ") + " |")
    return lines


CASE_COLUMNS = [("op", "op"), ("shape", "shape"), ("dtype", "dtype"), ("format", "layout"), ("mode", "mode"),
                ("provider", "provider"), ("launches", "launches"), ("est_us", "est. us"),
                ("floor_us", "floor us"), ("floor_bound", "floor"), ("est_pct_floor", "est. % floor"),
                ("binds", "binds"), ("hbm_mb", "HBM MB"), ("floor_mb", "floor MB"), ("gflop", "GFLOP"),
                ("floor_gflop", "floor GFLOP"), ("error", "error")]
GOAL_COLUMNS = [("op", "op"), ("shape", "shape"), ("dtype", "dtype"), ("format", "layout"), ("mode", "mode"),
                ("goal_pct", "goal %"), ("floor", "of floor"), ("est_pct", "est. %"), ("met", "met"),
                ("binds", "binds"), ("why", "why not")]
LAUNCH_COLUMNS = [("op", "op"), ("shape", "shape"), ("dtype", "dtype"), ("format", "layout"), ("mode", "mode"),
                  ("launch", "launch"), ("grid", "grid"), ("registers", "regs"), ("spills", "spills"),
                  ("shared", "smem B"), ("warps", "warps"), ("ctas_per_sm", "CTAs/SM"), ("waves", "waves"),
                  ("wave_eff", "wave eff."), ("stages", "stages"), ("stages_in_effect", "in effect"),
                  ("hgmma", "HGMMA"), ("hmma", "HMMA"), ("ffma", "FFMA"), ("bar", "BAR"), ("depbar", "DEPBAR"),
                  ("wgdepbar", "WG.DEPBAR"), ("ldg", "LDG"), ("ldgsts", "LDGSTS"), ("tma", "TMA"), ("stg", "STG"),
                  ("dram_mb", "HBM MB"), ("l2_mb", "L2 MB"), ("tensor_gflop", "TC GFLOP"),
                  ("fma_gflop", "FMA GFLOP"), ("est_us", "est. us"), ("binds", "binds"), ("notes", "notes")]


def launch_rows(est: CaseEstimate) -> list[dict]:
    """One row per launch; a PyTorch fallback of more than 4 ops (the chunked attention) as one
    row that sums them."""
    torch_ops = [l for l in est.launches if l.facts is None]
    if len(torch_ops) <= 4:
        return [launch_row(est, l) for l in est.launches]
    first = launch_row(est, torch_ops[0])
    first.update(launch=f"{len(torch_ops)} PyTorch ops", grid=None, binds="",
                 dram_mb=round(sum(l.work.dram_bytes for l in torch_ops) / 1e6, 3),
                 l2_mb=round(sum(l.work.l2_bytes for l in torch_ops) / 1e6, 3),
                 tensor_gflop=round(sum(l.work.tensor_flops for l in torch_ops) / 1e9, 3),
                 fma_gflop=round(sum(l.work.fma_flops for l in torch_ops) / 1e9, 3),
                 est_us=round(sum(l.seconds for l in torch_ops) * 1e6, 2),
                 **{k: None for k in first if k.startswith("t_")})
    return [first] + [launch_row(est, l) for l in est.launches if l.facts is not None]


def markdown(estimates: list[CaseEstimate], constants: dict) -> str:
    out = ["# Static performance model: estimates", "",
           "Every time and percentage here is an **estimate** of the static model "
           "(`vqvae-fast bench --static`, docs/performance.md): no GPU ran these kernels. "
           "PyTorch launches (entry `(PyTorch)`) are estimated from their bytes and FLOPs.", ""]
    goals = [g for g in goal_rows(estimates) if g["met"] != "not estimated"]
    if goals:
        out += ["## Goals (H100)", ""] + _md_table(goals, GOAL_COLUMNS) + [""]
    for arch, gpu in GPUS.items():
        mine = [e for e in estimates if e.gpu.key == arch]
        if not mine:
            continue
        out += [f"## {gpu.name} ({arch}, {gpu.sms} SMs)", "", "Rates: " + constants[arch], "", "### Cases", ""]
        out += _md_table([case_row(e) for e in mine], CASE_COLUMNS)
        out += ["", "### Launches", ""]
        out += _md_table([row for e in mine for row in launch_rows(e)], LAUNCH_COLUMNS)
        out.append("")
    return "\n".join(out)


def constants() -> dict:
    return {arch: (f"HBM {g.bandwidth / 1e12:.1f} TB/s, L2 {g.l2_bandwidth / 1e12:.1f} TB/s ({g.l2_size >> 20} MB), "
                   f"tensor bf16/fp16 {g.tensor['bf16'] / 1e12:.0f} TFLOP/s, TF32 {g.tensor['tf32'] / 1e12:.0f}, "
                   f"fp32 FMA {g.fma / 1e12:.1f}; latency HBM {g.dram_latency * 1e9:.0f} ns, L2 "
                   f"{g.l2_latency * 1e9:.0f} ns; {g.launch_overhead * 1e6:.1f} us per launch; clock "
                   f"{g.clock / 1e9:.3f} GHz")
            for arch, g in GPUS.items()}


def write(estimates: list[CaseEstimate], folder: str) -> dict:
    """Write the markdown, CSV and JSON tables into ``folder``; returns their paths."""
    os.makedirs(folder, exist_ok=True)
    consts = constants()
    launches = [row for e in estimates for row in launch_rows(e)]
    paths = {k: os.path.join(folder, f"static_model.{k}") for k in ("md", "csv", "json")}
    with open(paths["md"], "w") as f:
        f.write(markdown(estimates, consts))
    columns = list(dict.fromkeys(k for r in launches for k in r))
    with open(paths["csv"], "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(launches)
    with open(paths["json"], "w") as f:
        json.dump({"label": LABEL, "constants": consts, "goals": goal_rows(estimates),
                   "cases": [case_row(e) for e in estimates]}, f, indent=1)
    return paths


# ----------------------------------------------------------------------------------------------
# Model against measurement


def gpu_arch(device_name: str) -> str | None:
    """The model GPU a measured device compares with (Hopper: H100; Ampere data-centre: A100)."""
    name = device_name.upper()
    if any(k in name for k in ("H100", "H200", "H800", "GH200")):
        return "sm_90a"
    if any(k in name for k in ("A100", "A800")):
        return "sm_80"
    return None


def compare(estimates: list[CaseEstimate], results: dict) -> list[dict]:
    """Rows ``(op, shape, dtype, format, mode, provider, model us, measured us, measured/model)``
    for every measured ``vqvae_fast`` row of ``results`` (a ``results.json``) the model has."""
    arch = gpu_arch(str(results.get("environment", {}).get("device", "")))
    if arch is None:
        return []
    model = {}
    for e in estimates:
        if e.gpu.key == arch and not e.error:
            c = e.case
            model[(c.op, describe(c), c.dtype, c.format, c.mode, c.provider)] = e
    out = []
    for r in results.get("rows", []):
        if not str(r.get("provider", "")).startswith("vqvae_fast") or r.get("status") != "ok":
            continue
        key = (r["op"], r["shape"], r["dtype"], r["format"])
        modes = ("forward", "backward") if r["mode"] == "forward+backward" else (r["mode"],)
        parts = [model.get(key + (m, r["provider"])) for m in modes]
        if not all(parts) or not r.get("time_p50_us"):
            continue
        est_us = sum(p.seconds for p in parts) * 1e6
        out.append({"op": r["op"], "shape": r["shape"], "dtype": r["dtype"], "format": r["format"],
                    "mode": r["mode"], "provider": r["provider"], "model_us": round(est_us, 2),
                    "measured_us": round(r["time_p50_us"], 2),
                    "measured_over_model": round(r["time_p50_us"] / est_us, 2),
                    "model_binds": " + ".join(p.binds for p in parts), "device": results["environment"]["device"]})
    return out


def comparison_text(rows: list[dict]) -> str:
    if not rows:
        return ""
    columns = [("op", "op"), ("shape", "shape"), ("dtype", "dtype"), ("format", "layout"), ("mode", "mode"),
               ("provider", "provider"), ("model_us", "model us (est.)"), ("measured_us", "measured us"),
               ("measured_over_model", "measured / model"), ("model_binds", "model: binds")]
    return "\n".join([f"Model vs measurement on {rows[0]['device']}", ""] + _md_table(rows, columns))
