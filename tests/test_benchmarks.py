"""The benchmark suite: formulas against hand counts, the shape table, and end-to-end runs.

The end-to-end runs use the ``tiny`` set and short timings; they check that every file and
column is produced, not how fast anything is.
"""

import csv
import json
import os
import subprocess

import pytest
import torch

import vqvae_fast
from vqvae_fast import cli
from vqvae_fast.benchmarks import definitions, formulas, report, runner, shapes, timing
from vqvae_fast.benchmarks.end_to_end import count_flops

FAST_PROVIDERS = ("reference", "pytorch-best", "vqvae_fast")


# -- formulas -------------------------------------------------------------------------------------


def test_group_norm_bytes_by_hand():
    e = 1 * 128 * 256 * 256  # 8388608 elements
    assert formulas.group_norm_silu((1, 128, 256, 256), "bf16", "forward") == formulas.Work(None, 2 * e * 2)
    assert formulas.group_norm_silu((1, 128, 256, 256), "bf16", "forward").bytes == 33554432
    assert formulas.group_norm_silu((1, 128, 256, 256), "fp32", "backward").bytes == 3 * e * 4
    assert formulas.group_norm_silu((1, 128, 256, 256), "fp16", "forward+backward").bytes == 83886080


def test_attention_flops_and_bytes_by_hand():
    work = formulas.spatial_attention((8, 512, 256), "fp16", "forward")
    assert work.flops == 4 * 8 * 256 * 256 * 512 == 1073741824
    assert work.bytes == 4 * 8 * 512 * 256 * 2 == 8388608
    backward = formulas.spatial_attention((8, 512, 256), "fp16", "backward")
    assert backward.flops == 2684354560 and backward.bytes == 16777216
    both = formulas.spatial_attention((8, 512, 256), "fp16", "forward+backward")
    assert both.flops == 1073741824 + 2684354560 and both.bytes == 8388608 + 16777216


def test_argmin_flops_and_bytes_by_hand():
    work = formulas.codebook_argmin((2048, 16384, 256), "fp32", "forward")
    assert work.flops == 2 * 2048 * 16384 * 256 == 17179869184
    assert work.bytes == (2048 + 16384) * 256 * 4 + 8 * 2048 == 18890752
    with pytest.raises(ValueError, match="no backward"):
        formulas.codebook_argmin((4, 4, 4), "fp32", "backward")


def test_conv_flops_and_bytes_by_hand():
    # 256 + 0 + 1 padding - 3 kernel = 254, // 2 + 1 = 128 output rows and columns
    work = formulas.padded_conv2d((8, 128, 256, 256, 128), "fp16", "forward")
    assert work.flops == 2 * 8 * 128 * 128 * 128 * 128 * 9 == 38654705664
    x, w, b, y = 8 * 128 * 256 * 256, 128 * 128 * 9, 128, 8 * 128 * 128 * 128
    assert work.bytes == (x + w + b + y) * 2 == 168067328
    # one 3x3 window, one channel: 9 multiply-adds
    tiny = formulas.padded_conv2d((1, 1, 3, 3, 1), "fp32", "forward")
    assert tiny.flops == 18 and tiny.bytes == (9 + 9 + 1 + 1) * 4
    backward = formulas.padded_conv2d((1, 1, 3, 3, 1), "fp32", "backward")
    assert backward.flops == 36 and backward.bytes == (1 + 9 + 9 + 9 + 9 + 1) * 4


def test_formulas_agree_with_torch_flop_counter():
    """The FLOP formulas equal what torch's flop counter sees in the reference ops."""
    from torch.utils.flop_counter import FlopCounterMode

    from vqvae_fast.reference import ops

    q = torch.randn(2, 32, 40)
    with FlopCounterMode(display=False) as counter:
        ops.spatial_attention(q, q, q)
    assert counter.get_total_flops() == formulas.spatial_attention((2, 32, 40), "fp32", "forward").flops

    x, w = torch.randn(2, 8, 9, 7), torch.randn(12, 8, 3, 3)
    with FlopCounterMode(display=False) as counter:
        ops.padded_conv2d(x, w, None, 2, (0, 1, 0, 1))
    assert counter.get_total_flops() == formulas.padded_conv2d((2, 8, 9, 7, 12), "fp32", "forward").flops


def test_end_to_end_flops_counted_on_meta():
    forward = count_flops("tiny", "forward", 1, 32, False)
    both = count_flops("tiny", "forward", 1, 32, True)
    assert forward > 0
    assert 2.5 < both / forward < 3.5  # backward of convolutions and products is about twice the forward


def test_floor_takes_the_larger_term():
    work = formulas.Work(flops=1e12, bytes=1e9)
    assert formulas.floor_seconds(work, bandwidth=1e12, flop_rate=1e14) == (pytest.approx(1e-2), "compute")
    assert formulas.floor_seconds(work, bandwidth=1e10, flop_rate=1e14) == (pytest.approx(1e-1), "memory")
    assert formulas.floor_seconds(formulas.Work(None, 1e9), 1e12, None) == (pytest.approx(1e-3), "memory")
    assert formulas.floor_seconds(formulas.Work(None, None), 1e12, 1e12) == (None, None)


def test_percentiles_match_numpy_linear():
    values = [5.0, 1.0, 4.0, 2.0, 3.0]
    assert timing.percentile(values, 50) == 3.0
    assert timing.percentile(values, 20) == pytest.approx(1.8)
    assert timing.percentile(values, 80) == pytest.approx(4.2)
    assert timing.time_cpu(lambda: None, target_s=0.0).reps >= 3


# -- the shape table ------------------------------------------------------------------------------


ISSUE_SHAPES = {
    "group_norm_silu": [(1, 128, 256, 256), (8, 128, 256, 256), (8, 256, 128, 128), (8, 512, 64, 64),
                        (8, 512, 16, 16)],
    "spatial_attention": [(8, 512, 256), (1, 512, 1024), (1, 512, 4096), (1, 512, 16384), (4, 256, 4096)],
    "codebook_argmin": [(2048, 16384, 256), (65536, 16384, 256), (262144, 8192, 4), (65536, 1024, 64)],
    "padded_conv2d": [(8, 128, 256, 256, 128), (8, 256, 64, 64, 256), (8, 512, 32, 32, 512)],
}


def test_full_set_holds_every_shape_of_the_op_issues():
    full = {(s.op, s.dims) for s in shapes.SHAPES if "full" in s.sets}
    for op, dims in ISSUE_SHAPES.items():
        for d in dims:
            assert (op, d) in full, (op, d)
    # issue 8: the default config at 256x256 batch 8 in every stage, and 1024x1024 decodes with
    # an f16 and an f8 config
    models = {(s.param["config"], s.dims, s.param["stage"]) for s in shapes.SHAPES if s.op == "vqmodel" and "full" in s.sets}
    f16 = "vqgan_imagenet_f16_16384"
    assert {(f16, (8, 256), stage) for stage in ("encode", "decode", "forward")} <= models
    assert {(f16, (1, 1024), "decode"), ("vq_f8", (1, 1024), "decode")} <= models


def test_quick_cases_come_first_and_are_in_full():
    cases = shapes.build_cases("full")
    quick = {(c.shape, c.dtype, c.format, c.mode) for c in shapes.build_cases("quick")}
    first = cases[: len(quick)]
    assert {(c.shape, c.dtype, c.format, c.mode) for c in first} == quick
    ops_in_quick = [c.op for c in first]
    assert set(ops_in_quick) == set(shapes.OPS)


def test_ops_without_backward_run_forward_only():
    planned = runner.plan(runner.Settings(torch.device("cpu"), shapes="full", ops=("codebook_argmin", "vqmodel")))
    for case, _ in planned:
        if case.op == "codebook_argmin" or case.shape.param.get("stage") != "forward":
            assert case.mode == "forward"


def test_decomposed_conv_provider_only_where_cuda_has_two_algorithms():
    def providers(device):
        settings = runner.Settings(torch.device(device), shapes="tiny", ops=("padded_conv2d",))
        return {p for _, ps in runner.plan(settings) for p in ps}

    assert "vqvae_fast-decomposed" not in providers("cpu")
    assert {"vqvae_fast", "vqvae_fast-decomposed"} <= providers("cuda")  # planning needs no GPU


def test_provider_scope_is_entered_around_the_timed_calls(monkeypatch):
    """The decomposed provider's environment variable is set while its calls run, then restored."""
    seen = []
    build = definitions.PaddedConv2d.build

    def scoped(self, provider, inputs, case, device):
        runner_ = build(self, provider, inputs, case, device)
        if provider == "vqvae_fast":
            fn = runner_.fn

            def recording():
                seen.append(os.environ.get(definitions.CONV_IMPL_VAR))
                return fn()

            runner_.fn = recording
            runner_.scope = lambda: definitions.environment_variable(definitions.CONV_IMPL_VAR, "decomposed")
        return runner_

    monkeypatch.delenv(definitions.CONV_IMPL_VAR, raising=False)
    monkeypatch.setattr(definitions.PaddedConv2d, "build", scoped)
    settings = runner.Settings(torch.device("cpu"), shapes="tiny", ops=("padded_conv2d",), modes=("forward",),
                               formats=("nchw",), dtypes=("fp32",), providers=("reference", "vqvae_fast"),
                               target_s=0.01)
    rows = runner.Suite(settings, progress=False).run().rows
    assert rows and all(r["status"] == "ok" for r in rows)
    assert seen and set(seen) == {"decomposed"}
    assert definitions.CONV_IMPL_VAR not in os.environ


def test_cli_lists_cases(capsys):
    assert cli.main(["bench", "--list", "--shapes", "full", "--device", "cpu", "--ops", "padded_conv2d"]) == 0
    out = capsys.readouterr().out
    assert "8x128x256x256->128 s2" in out and "channels_last" in out and "cases" in out


# -- end to end -----------------------------------------------------------------------------------


def run_tiny(out_dir, device, *extra):
    args = ["bench", "--shapes", "tiny", "--device", device, "--out", str(out_dir), "--repeat-time", "0.01",
            "--quiet", "--providers", ",".join(FAST_PROVIDERS), *extra]
    return cli.main(args)


def test_suite_writes_every_file_and_column(tmp_path, device):
    assert run_tiny(tmp_path, device) == 0
    for name in ("results.csv", "results.json", "table.txt", "speedup.png", "floor.png"):
        assert (tmp_path / name).stat().st_size > 0, name

    with open(tmp_path / "results.csv", newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == runner.COLUMNS
        rows = list(reader)
    assert {r["op"] for r in rows} == set(shapes.OPS)
    assert {r["provider"] for r in rows} == set(FAST_PROVIDERS)
    modes = {(r["op"], r["mode"]) for r in rows}
    assert ("group_norm_silu", "backward") in modes and ("padded_conv2d", "forward+backward") in modes

    ok = [r for r in rows if r["status"] == "ok"]
    assert len(ok) >= len(rows) - 2  # only the fast VQModel may be missing
    for r in ok:
        no_work = r["op"] == "overhead"  # per-call overhead: no work, so no floor, GB/s or FLOP/s
        for column in ("time_p50_us", "time_p20_us", "time_p80_us", "reps", "speedup", "floor_us",
                       "pct_floor", "peak_mem_mb", "max_err", "rel_err", "device", "torch", "vqvae_fast"):
            if no_work and column in ("floor_us", "pct_floor"):
                continue
            assert r[column] != "", (column, r["op"], r["provider"], r["mode"])
        assert float(r["time_p20_us"]) <= float(r["time_p50_us"]) <= float(r["time_p80_us"])
        # fp32 everywhere in the tiny set; cuDNN runs fp32 convolutions in TF32 by default
        assert float(r["rel_err"]) < (1e-4 if device == "cpu" else 1e-2)
        assert no_work or r["gbps"] != "" or r["tflops"] != ""
    for r in rows:
        if r["op"] == "vqmodel" and r["provider"] == "vqvae_fast":
            assert r["status"] == ("ok" if hasattr(vqvae_fast, "VQModel") else "unavailable")
        if r["provider"] == "vqvae_fast" and r["status"] == "ok" and r["op"] not in ("vqmodel", "icetk", "lowmem"):
            assert r["backend"] in ("triton", "cuda", "cpu", "reference") or r["backend"].split(":")[0] in (
                "triton", "cuda", "cpu", "reference")
        if r["provider"] == "reference" and r["status"] == "ok":
            assert float(r["speedup"]) == 1.0

    payload = json.loads((tmp_path / "results.json").read_text())
    assert payload["columns"] == list(runner.COLUMNS)
    assert len(payload["rows"]) == len(rows)
    for key in ("device", "torch", "triton", "cuda", "cudnn", "vqvae_fast", "python"):
        assert payload["environment"][key], key
    assert payload["peaks"]["bandwidth_gbps"] > 0
    assert payload["peaks"]["tflops"]["fp32"] > 0
    assert {s["op"] for s in payload["summary"]} == set(shapes.OPS)

    text = (tmp_path / "table.txt").read_text()
    assert "== group_norm_silu" in text and "summary:" in text and "measured ceilings" in text

    # rebuilt from the CSV alone, as after a run that was cut short
    os.remove(tmp_path / "speedup.png")
    rebuilt = report.regenerate(str(tmp_path))
    assert (tmp_path / "speedup.png").exists() and len(rebuilt["summary"]) == len(shapes.OPS)


def test_a_failing_provider_gives_an_error_row(monkeypatch):
    build = definitions.GroupNormSiLU.build

    def broken(self, provider, inputs, case, device):
        if provider == "vqvae_fast":
            raise RuntimeError("backend exploded")
        return build(self, provider, inputs, case, device)

    monkeypatch.setattr(definitions.GroupNormSiLU, "build", broken)
    settings = runner.Settings(torch.device("cpu"), shapes="tiny", ops=("group_norm_silu",), modes=("forward",),
                               formats=("nchw",), providers=FAST_PROVIDERS, target_s=0.01)
    rows = runner.Suite(settings, progress=False).run().rows
    by_provider = {r["provider"]: r for r in rows}
    assert by_provider["vqvae_fast"]["status"] == "error"
    assert "RuntimeError: backend exploded" in by_provider["vqvae_fast"]["error"]
    assert by_provider["reference"]["status"] == by_provider["pytorch-best"]["status"] == "ok"
    assert "backend exploded" in report.format_table(rows)


def test_compiled_provider_runs_or_reports_its_error():
    settings = runner.Settings(torch.device("cpu"), shapes="tiny", ops=("group_norm_silu",), modes=("forward",),
                               formats=("nchw",), providers=("reference", "compiled"), target_s=0.01)
    rows = runner.Suite(settings, progress=False).run().rows
    compiled = next(r for r in rows if r["provider"] == "compiled")
    assert compiled["status"] in ("ok", "error")
    if compiled["status"] == "ok":
        assert compiled["backend"] == "inductor" and compiled["rel_err"] < 1e-4
    else:
        assert compiled["error"]


def test_fast_model_provider_uses_vqvae_fast_vqmodel(monkeypatch):
    from vqvae_fast import reference

    settings = runner.Settings(torch.device("cpu"), shapes="tiny", ops=("vqmodel",), modes=("forward",),
                               providers=("reference", "vqvae_fast"), target_s=0.01)
    # a build without the fast model: neither imported nor importable on first use
    monkeypatch.delattr(vqvae_fast, "VQModel", raising=False)
    monkeypatch.delitem(vqvae_fast._LAZY, "VQModel")
    rows = runner.Suite(settings, progress=False).run().rows
    assert [r["status"] for r in rows] == ["ok", "unavailable"]

    monkeypatch.setattr(vqvae_fast, "VQModel", reference.VQModel, raising=False)  # a stand-in fast model
    rows = runner.Suite(settings, progress=False).run().rows
    fast = rows[1]
    assert fast["status"] == "ok" and fast["max_err"] < 1e-4
    assert "gn:" in fast["backend"] and "conv:" in fast["backend"]


def test_time_budget_skips_the_rest():
    settings = runner.Settings(torch.device("cpu"), shapes="tiny", ops=("group_norm_silu", "padded_conv2d"),
                               providers=FAST_PROVIDERS, target_s=0.01, time_budget=1e-9)
    result = runner.Suite(settings, progress=False).run()
    assert {r["status"] for r in result.rows} == {"skipped"}
    assert "time budget" in result.notes[0]


def test_gpu_check_script_parses():
    script = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "gpu_check.sh")
    subprocess.run(["bash", "-n", script], check=True)
    assert os.access(script, os.X_OK)


def test_upstream_gradient_follows_the_output_layout():
    """A channels_last network hands each layer a channels_last gradient: the backward rows see
    that layout (the same values either way)."""
    bench = definitions.GroupNormSiLU()
    out = torch.empty(2, 8, 5, 3).contiguous(memory_format=torch.channels_last)
    grad = bench.make_grad_out(out, torch.Generator().manual_seed(0))
    assert grad.is_contiguous(memory_format=torch.channels_last) and not grad.is_contiguous()
    plain = bench.make_grad_out(out.contiguous(), torch.Generator().manual_seed(0))
    assert plain.is_contiguous() and torch.equal(grad, plain)
