"""What a run leaves behind: the terminal table, CSV, JSON, PNG plots and a per-op summary.

Files in the output folder:

``results.csv``   one row per (case, provider), every column; written row by row while the suite
                  runs, so a run that is stopped keeps what it measured.
``results.json``  environment (device, versions), measured ceilings, settings, rows, summary.
``table.txt``     the table printed on the terminal, then the summary.
``speedup.png``   speedup over the reference per op and case (log scale).
``floor.png``     percent of the roofline floor per op and case.

``python -m vqvae_fast.benchmarks.report DIR`` rebuilds JSON, table and plots from ``DIR/results.csv``
(and the environment saved at the start in ``DIR/results.json``), e.g. after a run was cut short.
"""

from __future__ import annotations

import csv
import json
import math
import os
import sys
from collections import defaultdict

from .runner import COLUMNS

NUMERIC = {
    "time_p50_us", "time_p20_us", "time_p80_us", "reps", "first_call_ms", "gbps", "tflops", "floor_us",
    "pct_floor", "speedup", "peak_mem_mb", "max_err", "rel_err", "flops", "bytes",
}
MAX_PLOTTED_CASES = 24
PLOT_ORDER = ("reference", "compiled", "pytorch-best", "vqvae_fast", "vqvae_fast-fast", "vqvae_fast-decomposed")


# -- CSV / JSON


class CsvWriter:
    """Appends rows to ``results.csv`` as they come (header first)."""

    def __init__(self, path: str):
        self.file = open(path, "w", newline="")
        self.writer = csv.DictWriter(self.file, fieldnames=COLUMNS, extrasaction="ignore")
        self.writer.writeheader()
        self.file.flush()

    def __call__(self, row: dict) -> None:
        self.writer.writerow({k: format_csv_value(row.get(k)) for k in COLUMNS})
        self.file.flush()

    def close(self) -> None:
        self.file.close()


def format_csv_value(value):
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return value


def load_csv(path: str) -> list[dict]:
    rows = []
    with open(path, newline="") as f:
        for raw in csv.DictReader(f):
            row = {}
            for key in COLUMNS:
                value = raw.get(key, "")
                if key in NUMERIC:
                    row[key] = float(value) if value not in ("", None) else None
                else:
                    row[key] = value if value is not None else ""
            rows.append(row)
    return rows


def write_json(path: str, payload: dict) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=1, default=str)
    os.replace(tmp, path)


# -- text


def fmt_time(us) -> str:
    if us is None:
        return "-"
    if us < 1e3:
        return f"{us:.1f} us"
    if us < 1e6:
        return f"{us / 1e3:.2f} ms"
    return f"{us / 1e6:.2f} s"


def fmt_num(value, spec: str = ".1f", suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


TABLE_COLUMNS = (
    ("provider", 15), ("backend", 18), ("mode", 8), ("shape", 24), ("dtype", 5), ("format", 7),
    ("p50", 9), ("p20-p80", 17), ("GB/s", 7), ("TFLOP/s", 7), ("%floor", 6), ("speedup", 7),
    ("mem MB", 8), ("max_err", 8), ("rel_err", 8),
)
MODE_SHORT = {"forward": "fwd", "backward": "bwd", "forward+backward": "fwd+bwd"}
FORMAT_SHORT = {"nchw": "nchw", "channels_last": "cl", "bcn": "bcn", "rows": "rows"}


def table_cells(row: dict) -> list[str]:
    base = [row["provider"], row["backend"] or "-", MODE_SHORT.get(row["mode"], row["mode"]), row["shape"],
            row["dtype"], FORMAT_SHORT.get(row["format"], row["format"])]
    if row["status"] != "ok":
        return base + [f"{row['status']}: {row['error']}"]
    return base + [
        fmt_time(row["time_p50_us"]),
        f"{fmt_time(row['time_p20_us'])}-{fmt_time(row['time_p80_us']).replace(' ', '')}",
        fmt_num(row["gbps"], ".0f"), fmt_num(row["tflops"], ".2f"), fmt_num(row["pct_floor"], ".1f"),
        fmt_num(row["speedup"], ".2f", "x"), fmt_num(row["peak_mem_mb"], ".1f"),
        fmt_num(row["max_err"], ".1e"), fmt_num(row["rel_err"], ".1e"),
    ]


def format_table(rows: list[dict]) -> str:
    """Rows grouped by op; skipped rows are counted, not listed."""
    lines = []
    header = " ".join(name.ljust(width) for name, width in TABLE_COLUMNS)
    by_op = defaultdict(list)
    for row in rows:
        by_op[row["op"]].append(row)
    for op, op_rows in by_op.items():
        shown = [r for r in op_rows if r["status"] != "skipped"]
        skipped = len(op_rows) - len(shown)
        lines.append(f"== {op}" + (f"  ({skipped} rows skipped)" if skipped else ""))
        if shown:
            lines.append(header)
        for row in shown:
            cells = table_cells(row)
            widths = [w for _, w in TABLE_COLUMNS]
            text = " ".join(cell[:w].ljust(w) if i < len(cells) - 1 or len(cells) == len(widths) else cell
                            for i, (cell, w) in enumerate(zip(cells, widths)))
            lines.append(text.rstrip())
        lines.append("")
    return "\n".join(lines)


def geomean(values: list[float]) -> float | None:
    values = [v for v in values if v is not None and v > 0]
    if not values:
        return None
    return math.exp(sum(math.log(v) for v in values) / len(values))


def case_key(row: dict) -> tuple:
    return (row["op"], row["shape"], row["dtype"], row["format"], row["mode"])


def summarize(rows: list[dict], provider: str = "vqvae_fast") -> list[dict]:
    """Per op: row counts by status, the backends ``provider`` used, and its geometric-mean
    speedup over each other provider on the cases where both ran."""
    by_case = defaultdict(dict)
    for row in rows:
        if row["status"] == "ok":
            by_case[case_key(row)][row["provider"]] = row
    out = []
    for op in dict.fromkeys(r["op"] for r in rows):
        op_rows = [r for r in rows if r["op"] == op]
        counts = defaultdict(int)
        for r in op_rows:
            counts[r["status"]] += 1
        mine = [r for r in op_rows if r["provider"] == provider and r["status"] == "ok"]
        ratios = defaultdict(list)
        for key, providers in by_case.items():
            if key[0] != op or provider not in providers:
                continue
            for other, other_row in providers.items():
                if other != provider:
                    ratios[other].append(other_row["time_p50_us"] / providers[provider]["time_p50_us"])
        floors = [r["pct_floor"] for r in mine if r["pct_floor"] is not None]
        errors = [r["rel_err"] for r in mine if r["rel_err"] is not None]
        out.append({
            "op": op,
            "ok": counts["ok"], "error": counts["error"], "unavailable": counts["unavailable"],
            "skipped": counts["skipped"],
            "backends": sorted({r["backend"] for r in mine}),
            "speedup_vs": {other: geomean(v) for other, v in sorted(ratios.items())},
            "cases_vs": {other: len(v) for other, v in sorted(ratios.items())},
            "best_pct_floor": max(floors) if floors else None,
            "median_pct_floor": sorted(floors)[len(floors) // 2] if floors else None,
            "worst_rel_err": max(errors) if errors else None,
        })
    return out


def format_summary(summary: list[dict], provider: str = "vqvae_fast") -> str:
    lines = [f"summary: {provider} per op (geometric-mean speedup over each provider, on the cases both ran)"]
    header = (f"{'op':<18} {'ok/err/unav/skip':<17} {'backend':<22} {'vs reference':>12} {'vs compiled':>12} "
              f"{'vs pt-best':>11} {'%floor med/best':>16} {'worst rel_err':>13}")
    lines.append(header)
    for s in summary:
        def vs(name):
            value = s["speedup_vs"].get(name)
            return "-" if value is None else f"{value:.2f}x ({s['cases_vs'][name]})"

        floor = "-" if s["best_pct_floor"] is None else f"{s['median_pct_floor']:.0f}/{s['best_pct_floor']:.0f}%"
        err = "-" if s["worst_rel_err"] is None else f"{s['worst_rel_err']:.1e}"
        counts = f"{s['ok']}/{s['error']}/{s['unavailable']}/{s['skipped']}"
        backend = ",".join(s["backends"]) or "-"
        lines.append(f"{s['op']:<18} {counts:<17} {backend[:22]:<22} {vs('reference'):>12} {vs('compiled'):>12} "
                     f"{vs('pytorch-best'):>11} {floor:>16} {err:>13}")
    return "\n".join(lines)


def format_environment(env: dict, peaks: dict) -> str:
    lines = [f"device {env.get('device', '?')} | torch {env.get('torch', '?')} | triton {env.get('triton', '?')} | "
             f"CUDA {env.get('cuda', '?')} | vqvae_fast {env.get('vqvae_fast', '?')}"]
    bw = peaks.get("bandwidth_gbps")
    if bw is not None:
        tflops = ", ".join(f"{k} {v:.2f}" for k, v in peaks.get("tflops", {}).items()) or "-"
        lines.append(f"measured ceilings: copy {bw:.1f} GB/s (read + write); matmul TFLOP/s: {tflops}")
    return "\n".join(lines)


# -- plots


def plot(rows: list[dict], out_dir: str) -> list[str]:
    """``speedup.png`` and ``floor.png``; returns the files written ([] without matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib import ticker
    except ImportError:
        return []
    ok = [r for r in rows if r["status"] == "ok"]
    if not ok:
        return []
    written = []
    for filename, column, title, log in (
        ("speedup.png", "speedup", "speedup over the reference (p50)", True),
        ("floor.png", "pct_floor", "% of the roofline floor (p50)", False),
    ):
        ops = list(dict.fromkeys(r["op"] for r in ok if r[column] is not None))
        if not ops:
            continue
        providers = list(dict.fromkeys(r["provider"] for r in ok))
        if column == "speedup":
            providers = [p for p in providers if p != "reference"] or providers
        colours = {p: plt.cm.tab10(i % 10) for i, p in enumerate(PLOT_ORDER)}  # one colour per provider
        colours.update({p: "grey" for p in providers if p not in colours})
        panels = []
        for op in ops:
            cases = list(dict.fromkeys(case_key(r) for r in ok if r["op"] == op and r[column] is not None))
            panels.append((op, cases[:MAX_PLOTTED_CASES], len(cases)))
        heights = [max(1.5, 0.22 * len(cases) * max(1, len(providers)) * 0.5 + 0.8) for _, cases, _ in panels]
        fig, axes = plt.subplots(len(panels), 1, figsize=(11, sum(heights) + 0.8),
                                 gridspec_kw={"height_ratios": heights}, squeeze=False)
        for ax, (op, cases, total) in zip(axes[:, 0], panels):
            index = {key: i for i, key in enumerate(cases)}
            values = [r[column] for r in ok if case_key(r) in index and r[column] is not None]
            width = 0.8 / max(1, len(providers))
            for j, provider in enumerate(providers):
                ys, xs = [], []
                for r in ok:
                    key = case_key(r)
                    if r["provider"] == provider and key in index and r[column] is not None:
                        ys.append(index[key] + (j - (len(providers) - 1) / 2) * width)
                        xs.append(r[column])
                if xs:
                    # speedup bars grow from 1x (right: faster, left: slower); floor bars from 0
                    base = 1.0 if log else 0.0
                    ax.barh(ys, [x - base for x in xs], left=base, height=width, color=colours[provider],
                            label=provider)
            ax.set_yticks(range(len(cases)))
            ax.set_yticklabels([f"{k[1]} {k[2]} {FORMAT_SHORT.get(k[3], k[3])} {MODE_SHORT.get(k[4], k[4])}"
                                for k in cases], fontsize=7)
            ax.invert_yaxis()
            if log:
                ax.set_xscale("log")
                ax.xaxis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
                ax.xaxis.set_minor_locator(ticker.NullLocator())
                ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}x"))
                ax.axvline(1.0, color="black", linewidth=0.8)
                ax.set_xlim(min(0.5, min(values) / 1.3), max(2.0, max(values) * 1.3))  # 0.5x, 1x, 2x at least
            else:
                ax.axvline(100.0, color="black", linewidth=0.8)
            shown = f" (first {len(cases)} of {total} cases)" if total > len(cases) else ""
            ax.set_title(f"{op}: {title}{shown}", fontsize=9)
            ax.tick_params(axis="x", labelsize=7)
            ax.legend(fontsize=7, loc="best")
        device = ok[0].get("device", "")
        fig.suptitle(f"vqvae_fast benchmarks on {device}", fontsize=10)
        fig.tight_layout()
        path = os.path.join(out_dir, filename)
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(path)
    return written


# -- everything at once


def write_outputs(out_dir: str, rows: list[dict], environment: dict, peaks: dict, settings: dict,
                  wall_s: float | None = None, notes=(), plots: bool = True) -> dict:
    """JSON, table.txt and plots from the rows (results.csv is written while running)."""
    summary = summarize(rows)
    write_json(os.path.join(out_dir, "results.json"), {
        "environment": environment, "peaks": peaks, "settings": settings, "wall_s": wall_s,
        "notes": list(notes), "columns": list(COLUMNS), "summary": summary, "rows": rows,
    })
    from .overhead import summarize_overhead

    overhead = summarize_overhead(rows)
    text = "\n".join([format_environment(environment, peaks), "", format_table(rows), format_summary(summary)]
                     + ([""] + [overhead] if overhead else []) + list(notes))
    with open(os.path.join(out_dir, "table.txt"), "w") as f:
        f.write(text + "\n")
    written = plot(rows, out_dir) if plots else []
    return {"summary": summary, "text": text, "plots": written,
            "plot_note": None if written or not plots else "plots skipped: matplotlib is not installed (or no rows ran)"}


def regenerate(out_dir: str, plots: bool = True) -> dict:
    """Rebuild JSON, table and plots from ``results.csv`` (after an interrupted run)."""
    rows = load_csv(os.path.join(out_dir, "results.csv"))
    meta = {}
    json_path = os.path.join(out_dir, "results.json")
    if os.path.exists(json_path):
        with open(json_path) as f:
            meta = json.load(f)
    return write_outputs(out_dir, rows, meta.get("environment", {}), meta.get("peaks", {}),
                         meta.get("settings", {}), meta.get("wall_s"),
                         list(meta.get("notes", [])) + ["rebuilt from results.csv"], plots)


def main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m vqvae_fast.benchmarks.report",
                                     description="rebuild results.json, table.txt and plots from results.csv")
    parser.add_argument("out_dir")
    parser.add_argument("--summary-only", action="store_true",
                        help="only print the per-op summary of results.csv; write nothing")
    args = parser.parse_args(argv)
    if not os.path.exists(os.path.join(args.out_dir, "results.csv")):
        print(f"no results.csv in {args.out_dir}", file=sys.stderr)
        return 1
    if args.summary_only:
        print(format_summary(summarize(load_csv(os.path.join(args.out_dir, "results.csv")))))
        return 0
    result = regenerate(args.out_dir)
    print(result["text"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
