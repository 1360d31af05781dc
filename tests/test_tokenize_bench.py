"""The ``tokenize`` benchmark case: its three providers run, agree on the codes and report images/s."""

from __future__ import annotations

import csv

import pytest

from vqvae_fast.benchmarks import cli

pytest.importorskip("PIL")


def test_tokenize_case_runs_every_provider(tmp_path, capsys):
    args = ["--ops", "tokenize", "--shapes", "tiny", "--device", "cpu", "--out", str(tmp_path), "--repeat-time",
            "0.01", "--quiet", "--no-plots", "--providers", "reference,model-only,vqvae_fast"]
    assert cli.main(args) == 0
    with open(tmp_path / "results.csv", newline="") as f:
        rows = {r["provider"]: r for r in csv.DictReader(f)}
    assert set(rows) == {"reference", "model-only", "vqvae_fast"}
    for row in rows.values():
        assert row["status"] == "ok", row["error"]
        assert float(row["rel_err"]) == 0.0  # every provider produced the model's codes
        assert float(row["tflops"]) > 0
    printed = capsys.readouterr().out
    assert "images/s reference" in printed and "of model-only" in printed and "the batch-1 loop" in printed
