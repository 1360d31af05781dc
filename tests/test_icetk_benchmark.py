"""The icetk case of the benchmark suite: its shapes, its providers (icetk's own code where it
loads) and its FLOP count."""

from __future__ import annotations

import torch

from vqvae_fast.benchmarks import icetk_model, runner, shapes
from vqvae_fast.icetk import original


def test_icetk_shapes_in_every_set():
    def icetk_shapes(set_name):
        return {(s.dims, s.param["stage"]) for s in shapes.SHAPES if s.op == "icetk" and set_name in s.sets}

    assert {((16, 160), "encode"), ((16, 160), "decode"), ((16, 160), "quantize")} <= icetk_shapes("quick")
    full = {((b, r), stage) for b in (1, 16) for r in (160, 256) for stage in ("encode", "decode")}
    assert full <= icetk_shapes("full")
    assert {stage for _, stage in icetk_shapes("cpu")} == {"encode", "decode", "quantize"}
    argmin = {s.dims for s in shapes.SHAPES if s.op == "codebook_argmin"}
    assert {(6400, 20000, 256), (400, 20000, 256)} <= argmin


def test_tiny_icetk_rows():
    settings = runner.Settings(torch.device("cpu"), shapes="tiny", ops=("icetk",),
                               providers=("reference", "vqvae_fast", "icetk"), target_s=0.01)
    rows = runner.Suite(settings, progress=False).run().rows
    assert {r["mode"] for r in rows} == {"forward"}
    for r in rows:
        if r["provider"] == "icetk" and original.icetk_vqvae() is None:
            assert r["status"] == "unavailable" and "icetk" in r["error"]
            continue
        assert r["status"] == "ok", r["error"]
        assert r["rel_err"] < 1e-4 and r["flops"] > 0 and r["peak_mem_mb"] is not None


def test_quantize_stage_counts_the_distance_gemm():
    n = 2 * 4 * 4  # 2 frames of 32² at level 1 of the tiny config: 4x4 codes each
    flops = icetk_model.count_flops("tiny", "quantize", 2, 32, 1)
    assert flops >= 2 * n * 96 * 32  # the (N, K) distance product
