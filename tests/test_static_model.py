"""The static performance model (``vqvae_fast.benchmarks.static``, docs/performance.md).

The parts on synthetic input: the SASS reader (loops, pipelining waits, MMA costs), the estimate
(occupancy, waves, the partial last wave, what binds), the comparison with a GPU run's
``results.json``. Then the model end to end on a few shapes per op, one dtype, both GPUs: every
planned launch is its table's entry, compiled (from the disk cache that the compile gate fills,
else a handful of compilations), and the tables hold their invariants.
"""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest

from vqvae_fast.benchmarks.static import report, sass
from vqvae_fast.benchmarks.static.compiled import CompiledFacts
from vqvae_fast.benchmarks.static.estimate import estimate_launch
from vqvae_fast.benchmarks.static.hardware import A100, H100
from vqvae_fast.benchmarks.static.work import LaunchWork, StaticCase
from vqvae_fast.kernels._table import Config

SASS = """
        /*0000*/                   LDG.E.128 R8, desc[UR16][R32.64] ;
        /*0010*/                   LDGSTS.E.BYPASS.128 [R203+0x20000], desc[UR16][R12.64], !P1 ;
        /*0020*/                   LDGDEPBAR ;
        /*0030*/                   DEPBAR.LE SB0, 0x2 ;
        /*0040*/                   BAR.SYNC.DEFER_BLOCKING 0x0 ;
        /*0050*/                   WARPGROUP.ARRIVE ;
        /*0060*/                   HGMMA.64x32x16.F32.BF16 R152, gdesc[UR12].tnspA.tnspB, RZ, !UPT ;
        /*0070*/                   HGMMA.64x256x16.F32.BF16 R24, R172, gdesc[UR8], R24, gsb0 ;
        /*0080*/                   WARPGROUP.DEPBAR.LE gsb0, 0x0 ;
        /*0090*/                   MUFU.EX2 R1, R2 ;
        /*00a0*/                   FFMA R1, R2, R3, R4 ;
        /*00b0*/                   LDGSTS.E.BYPASS.128 [R157+0x20000], desc[UR16][R10.64], !P1 ;
        /*00c0*/                   LDGDEPBAR ;
        /*00d0*/              @!P1 BRA 0x30 ;
        /*00e0*/                   STG.E.128 desc[UR16][R2.64], R4 ;
        /*00f0*/                   EXIT ;
"""


def test_sass_reader_finds_the_hot_loop_its_pipelining_and_mma_costs():
    facts = sass.analyse(SASS)
    assert facts.total.instructions == 16 and facts.total.ldg_128 == 1 and facts.total.stg == 1
    assert facts.loops == 1 and facts.loop_depth == 1
    loop = facts.loop
    assert (loop.hgmma, loop.ldgsts, loop.bar, loop.wgdepbar, loop.mufu) == (2, 1, 1, 1, 1)
    assert facts.loop.ffma == 1 and facts.loop.ldg == 0  # the LDG before the loop is not in it
    # one group per trip, at most 2 in flight at the wait: loads run 2 trips ahead
    assert facts.ldgdepbar_per_trip == 1 and facts.depbar_min_pending == 2 and facts.stages_in_effect == 3
    assert facts.loop_mma_flops == 2 * 64 * 32 * 16 + 2 * 64 * 256 * 16
    # shared operands: A and B of the first (descriptors), B only of the second (A in registers)
    assert facts.loop_mma_shared_bytes == (64 * 16 + 32 * 16) * 2 + 256 * 16 * 2
    waited = sass.analyse(SASS.replace("SB0, 0x2", "SB0, 0x0"))
    assert waited.stages_in_effect == 1  # the next block's loads are waited on before use
    tma = sass.analyse(SASS.replace("LDGSTS.E.BYPASS.128 [R157+0x20000], desc[UR16][R10.64], !P1",
                                    "UTMALDG.2D [UR8], [UR4]").replace(
        "LDGSTS.E.BYPASS.128 [R203+0x20000], desc[UR16][R12.64], !P1", "UTMALDG.2D [UR8], [UR6]"))
    assert tma.loop.tma == 1 and tma.stages_in_effect is None  # mbarrier waits: the entry's stages
    assert sass.SassFacts.from_dict(json.loads(json.dumps(facts.as_dict()))) == facts


def test_sass_reader_counts_what_issues_under_the_warpgroup_mma():
    """Instructions between an HGMMA and the WARPGROUP.DEPBAR waiting for it run while the tensor
    cores work (a software-pipelined epilogue); FFMAs and MMAs are not counted (the MMA term)."""
    assert sass.analyse(SASS).loop_overlapped == 0  # waited on right after the MMAs
    epilogue = "FMNMX R5, R6, R7, PT ;\n        /*0078*/                   SHFL.BFLY PT, R1, R2, 0x1, 0x1f ;"
    overlapped = sass.analyse(SASS.replace(
        "/*0070*/                   HGMMA.64x256x16.F32.BF16 R24, R172, gdesc[UR8], R24, gsb0 ;",
        "/*0070*/                   HGMMA.64x256x16.F32.BF16 R24, R172, gdesc[UR8], R24, gsb0 ;\n"
        "        /*0074*/                   " + epilogue))
    assert overlapped.loop_overlapped == 2


def test_estimate_overlaps_what_issues_under_the_mma():
    """One CTA's chain per trip: the MMA and the instructions issued under it overlap, the rest
    follows; with nothing under the MMA, both in series."""
    work = _work(1, trips=100, tensor_flops=100 * 2 * 64 * 256 * 16 * 200, tensor_operand="bf16")
    loop = sass.Counts(hgmma=2, instructions=402)
    serial = _facts(instructions=402)
    serial.sass = sass.SassFacts(total=loop, loop=loop, loops=1, loop_overlapped=0)
    overlapped = _facts(instructions=402)
    overlapped.sass = sass.SassFacts(total=loop, loop=loop, loops=1, loop_overlapped=300)
    a, b = estimate_launch(work, serial, H100), estimate_launch(work, overlapped, H100)
    t_mma, clock = a.terms["trip_mma"], H100.clock
    assert a.terms["trip_issue"] == pytest.approx(400 / clock)  # 4 warps: one per scheduler
    # the same latency and load terms in both: the difference is the overlap alone
    saved = (t_mma + 400 / clock) - (max(t_mma, 300 / clock) + 100 / clock)
    assert saved > 0 and a.terms["trip_latency"] - b.terms["trip_latency"] == pytest.approx(saved)


def test_sass_reader_counts_blocks_the_loop_branches_over():
    """A forward branch to a target inside the loop skips a block on some trips (e.g. a tile's
    epilogue on its last step only): those instructions, less MMAs and FFMAs, are loop_guarded."""
    assert sass.analyse(SASS).loop_guarded == 0
    guarded = sass.analyse(SASS.replace(
        "/*0090*/                   MUFU.EX2 R1, R2 ;",
        "/*0090*/              @P2 BRA 0xb0 ;").replace(
        "/*00a0*/                   FFMA R1, R2, R3, R4 ;",
        "/*00a0*/                   FMNMX R1, R2, R3, PT ;"))
    assert guarded.loop_guarded == 1


def test_estimate_counts_guarded_blocks_once_per_guarded_every_trips():
    work = _work(1, trips=64, tensor_flops=64 * 2 * 64 * 256 * 16 * 200, tensor_operand="bf16")
    loop = sass.Counts(hgmma=2, instructions=802)
    facts = _facts(instructions=802)
    facts.sass = sass.SassFacts(total=loop, loop=loop, loops=1, loop_guarded=640)
    every_trip = estimate_launch(work, facts, H100)
    work.guarded_every = 8
    eighth = estimate_launch(work, facts, H100)
    clock = H100.clock
    assert every_trip.terms["trip_issue"] == pytest.approx(800 / clock)
    assert eighth.terms["trip_issue"] == pytest.approx((800 - 640 + 80) / clock)


def _facts(registers=128, warps=4, shared=0, instructions=100) -> CompiledFacts:
    return CompiledFacts("k", "sm_90a", registers=registers, shared=shared, threads=32 * warps, num_warps=warps,
                         num_stages=1, sass=sass.SassFacts(total=sass.Counts(instructions=instructions)))


def _work(grid, **kw) -> LaunchWork:
    cfg = Config.make("k", {"x": "bf16"}, {}, 4, 1, {"sm_90a": 1})
    return LaunchWork("k", "t", cfg, grid, **kw)


def test_estimate_counts_waves_and_charges_the_partial_last_wave():
    # 128 registers x 128 threads: 4 CTAs per SM; 132 SMs -> 528 per wave
    facts = _facts()
    e = estimate_launch(_work(528 * 2 + 1, dram_bytes=1e6, trip_load_bytes=1024), facts, H100)
    assert e.ctas_per_sm == 4 and e.waves == 3
    assert e.wave_efficiency == pytest.approx((528 * 2 + 1) / (3 * 528))
    full = estimate_launch(_work(528 * 2, dram_bytes=1e6, trip_load_bytes=1024), facts, H100)
    assert e.terms["schedule"] > full.terms["schedule"]  # one more CTA costs a whole (short) wave
    # shared memory binds on A100: 100 KB + 1 KB reserved, 164 KB per SM
    assert estimate_launch(_work(10), _facts(shared=100 * 1024), A100).ctas_per_sm == 1


def test_estimate_says_what_binds():
    facts = _facts()
    streaming = estimate_launch(_work(528 * 40, dram_bytes=2e9, l2_bytes=1e9, store_bytes=1e9,
                                      trip_load_bytes=16384), facts, H100)
    assert streaming.binds == "dram"
    assert streaming.seconds == pytest.approx(2e9 / H100.bandwidth + H100.launch_overhead, rel=1e-6)
    compute = estimate_launch(_work(528 * 40, tensor_flops=4e14, tensor_operand="bf16"), facts, H100)
    assert compute.binds == "tensor"
    # one CTA that waits for each trip's loads: latency
    chain = estimate_launch(_work(1, trips=100, trip_load_bytes=1024, l2_bytes=102400, dram_bytes=102400),
                            facts, H100)
    assert chain.binds == "latency" and chain.terms["schedule"] > 100 * H100.dram_latency
    tiny = estimate_launch(_work(1, dram_bytes=64), facts, H100)
    assert tiny.binds == "launch"
    with pytest.raises(ValueError, match="0 CTAs per SM"):
        estimate_launch(_work(1), _facts(shared=300 * 1024), H100)


def test_model_beside_a_measured_run():
    from vqvae_fast.benchmarks.static.model import CaseEstimate

    def est(mode, us):
        e = CaseEstimate(StaticCase("group_norm_silu", (1, 128, 64, 64), "bf16", "nchw", mode), H100)
        e.launches = [SimpleNamespace(seconds=us * 1e-6, binds="dram", work=SimpleNamespace(label="k"))]
        return e

    estimates = [est("forward", 10.0), est("backward", 30.0)]
    row = dict(op="group_norm_silu", shape="1x128x64x64", dtype="bf16", format="nchw", status="ok",
               provider="vqvae_fast")
    results = {"environment": {"device": "NVIDIA H100 80GB HBM3"}, "rows": [
        dict(row, mode="forward", time_p50_us=15.0), dict(row, mode="forward+backward", time_p50_us=60.0),
        dict(row, mode="forward", provider="reference", time_p50_us=99.0),
        dict(row, mode="backward", status="error", time_p50_us=None)]}
    rows = report.compare(estimates, results)
    assert [(r["mode"], r["model_us"], r["measured_us"], r["measured_over_model"]) for r in rows] == [
        ("forward", 10.0, 15.0, 1.5), ("forward+backward", 40.0, 60.0, 1.5)]
    assert "measured / model" in report.comparison_text(rows)
    assert report.compare(estimates, dict(results, environment={"device": "AMD EPYC"})) == []  # no model GPU
    assert report.gpu_arch("NVIDIA A100-SXM4-80GB") == "sm_80"


SMALL = {  # a few shapes per op: the fused and split group norm, attention with and without the
    # combine pass, argmin with and without a split codebook
    "group_norm_silu": [(2, 64, 16, 16), (1, 128, 256, 256)],
    "spatial_attention": [(1, 512, 4096), (1, 64, 1024)],
    "codebook_argmin": [(2048, 16384, 256)],
}


@pytest.fixture(scope="module")
def small_model(tmp_path_factory):
    pytest.importorskip("triton")
    from vqvae_fast.benchmarks.static import compiled, model

    try:
        compiled.cuobjdump()
    except FileNotFoundError as err:
        pytest.skip(str(err))
    cases = model.cases("quick", tuple(SMALL), ("bf16",), shapes=SMALL)
    return model.run(cases), tmp_path_factory.mktemp("static")


def test_small_model_holds_its_invariants(small_model):
    from vqvae_fast.benchmarks.static.model import OPS

    estimates, _ = small_model
    assert {(e.case.op, e.gpu.key) for e in estimates} == {(op, g) for op in SMALL for g in ("sm_90a", "sm_80")}
    for e in estimates:
        where = f"{e.gpu.key} {e.case}"
        assert not e.error, where
        assert e.launches and 0 < e.pct_floor <= 100, (where, e.pct_floor)
        for le in e.launches:
            w = le.work
            assert w.dram_bytes > 0 and le.seconds > 0, where
            if w.config is None:  # a PyTorch op of the launcher or of the chunked fallback
                continue
            table = __import__(w.table, fromlist=["TABLE"]).TABLE
            assert table.contains(e.gpu.key, w.config.key), (where, w.config.name)
            assert le.facts is not None and not le.facts.error and le.facts.name == w.config.name
            assert le.ctas_per_sm >= 1, (where, w.label)
            assert le.waves == math.ceil(w.grid / (e.gpu.sms * le.ctas_per_sm)), (where, w.label)
            assert 0 < le.wave_efficiency <= 1
            assert le.binds in ("dram", "l2", "tensor", "fma", "waves", "latency", "issue", "smem", "bandwidth",
                                "epilogue", "launch"), le.binds
    # the headline: attention at head 512 on H100 runs by blocks of query rows, the logits formed
    # once: the floor's FLOPs on tensor cores, no more
    attention = next(e for e in estimates if e.gpu.key == "sm_90a" and e.case.dims == (1, 512, 4096)
                     and e.case.mode == "forward")
    assert [l.work.label for l in attention.launches] == ["scores", "attend"]
    assert all(l.facts.sass.total.hgmma > 0 for l in attention.launches)
    flops = sum(l.work.tensor_flops for l in attention.launches)
    assert 4 * 4096 ** 2 * 512 <= flops <= 1.01 * 4 * 4096 ** 2 * 512
    assert set(OPS) == set(SMALL)


def test_small_model_writes_its_tables(small_model):
    from vqvae_fast.benchmarks.static import model

    estimates, folder = small_model
    paths = report.write(estimates, str(folder))
    data = json.loads(open(paths["json"]).read())
    assert len(data["cases"]) == len(estimates)
    assert "estimate" in data["label"] and set(data["constants"]) == {"sm_90a", "sm_80"}
    rows = [row for e in estimates for row in report.launch_rows(e)]
    assert len(rows) == sum(len(e.launches) for e in estimates)  # Triton launches: one row each
    # fp32 attention runs the chunked PyTorch path (nothing to compile): its chain is one summed row
    chunked = model.run(model.cases("quick", ("spatial_attention",), ("fp32",), ("forward",),
                                    shapes={"spatial_attention": [(1, 512, 4096)]}))
    assert all(len(report.launch_rows(e)) == 1 < len(e.launches) for e in chunked)
    text = open(paths["md"]).read()
    assert "H100 SXM" in text and "A100 SXM" in text and "**estimate**" in text
    with open(paths["csv"]) as f:
        assert len(f.read().strip().splitlines()) == len(rows) + 1


def test_bench_static_command_writes_tables_and_prints_model_beside_measurement(tmp_path, capsys):
    pytest.importorskip("triton")
    from vqvae_fast import cli

    measured = tmp_path / "results.json"
    row = dict(op="group_norm_silu", shape="2x64x6x5", dtype="fp32", format="nchw", status="ok",
               provider="vqvae_fast", mode="forward+backward", time_p50_us=17.5)
    measured.write_text(json.dumps({"environment": {"device": "NVIDIA H100 80GB HBM3"}, "rows": [row]}))
    out = tmp_path / "out"
    args = ["bench", "--static", "--shapes", "tiny", "--ops", "group_norm_silu", "--gpus", "sm_90a",
            "--out", str(out), "--measured", str(measured)]
    assert cli.main(args) == 0
    printed = capsys.readouterr().out
    assert "2x64x6x5" in printed and "% of floor" in printed
    assert "Model vs measurement on NVIDIA H100" in printed
    line = next(l for l in printed.splitlines() if l.startswith("| group_norm_silu | 2x64x6x5 | fp32 | nchw"))
    assert "forward+backward" in line and "17.5" in line
    assert sorted(p.name for p in out.iterdir()) == ["static_model.csv", "static_model.json", "static_model.md"]


def test_goals_read_the_practical_floor_and_say_why_when_missed():
    from vqvae_fast.benchmarks.static import goals

    def estimate(goal, pct, arch="sm_90a"):
        case = StaticCase(goal.op, goal.dims, goal.dtype, goal.format, goal.mode, goal.provider)
        return SimpleNamespace(case=case, gpu=SimpleNamespace(key=arch), error=None, pct_floor=pct,
                               binds="dram (x)")

    gn_bwd = next(g for g in goals.GOALS if g.op == "group_norm_silu" and g.mode == "backward"
                  and g.format == "channels_last")
    attn_fwd = next(g for g in goals.GOALS if g.op == "spatial_attention" and g.mode == "forward")
    rows = goals.goal_rows([estimate(gn_bwd, 51.3), estimate(attn_fwd, 50.0), estimate(attn_fwd, 90.0, "sm_80")])
    by_case = {(r["op"], r["mode"], r["format"]): r for r in rows}
    gn = by_case[("group_norm_silu", "backward", "channels_last")]
    assert gn["est_pct"] == pytest.approx(51.3 * 5 / 3, abs=0.05) and gn["met"] == "met" and gn["why"] == ""
    attn = by_case[("spatial_attention", "forward", "bcn")]  # the A100 estimate is not the H100 goal's
    assert attn["est_pct"] == 50.0 and attn["met"] == "missed" and "L2" in attn["why"]
    assert sum(r["met"] == "not estimated" for r in rows) == len(goals.GOALS) - 2
    table = "\n".join(report._md_table(rows, report.GOAL_COLUMNS))
    assert "| missed |" in table and "practical: 5*E*s" in table
