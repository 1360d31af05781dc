"""The ``lowmem`` benchmark: peak memory and time of a large decode, each provider in a process of its own.

Providers (``memory_probe.py`` runs each once per case, so that every peak belongs to that case):

``reference``          ``vqvae_fast.reference.VQModel``, eager.
``vqvae_fast``         the fast model, plain.
``vqvae_fast-lean``    the fast model with ``memory_budget(model, "lean")``: exact tiles, no fixed
                       budget (goal: a peak of at most ~2.5 of the largest activations).
``vqvae_fast-budget``  the fast model within 1/8 of the reference's measured peak (goal: at most
                       1.3x the time of ``vqvae_fast``). On a CPU the host is the device, so no
                       activation can move out of the budget: when 1/8 cannot hold the two
                       activations a ResnetBlock needs, the row is an error that gives the least
                       memory the decode can run in.

Peak memory: ``torch.cuda.max_memory_allocated`` on CUDA; the process's peak resident set beyond
what it held before the call on CPU (glibc returning large blocks on free during that call). Time:
the median of the runs after the measured one (the measured one is ``first_call_ms``). The error is
against the fp64 reference model, computed in this process; the note adds each peak in units of
the largest activation of the decode (``C x H x W`` of the largest tensor the decoder holds).
"""

from __future__ import annotations

import copy
import json
import os
import statistics
import subprocess
import sys
import tempfile
import weakref

import torch

from .definitions import Inputs, ProviderUnavailable, Runner
from .end_to_end import SHORT_CONFIG, VQModelBench, model_backends

PROVIDERS = ("reference", "vqvae_fast", "vqvae_fast-lean", "vqvae_fast-budget")
BUDGET_FRACTION = 8
PROBE_TIMEOUT_S = 3600
MiB = 2**20


def largest_activation(config: str, batch: int, resolution: int, itemsize: int) -> int:
    """Bytes of the largest tensor the decoder holds for this decode (from its plan's shapes)."""
    from vqvae_fast import configs, lowmem, models

    ddconfig = configs.get_config(config)["ddconfig"]
    with torch.device("meta"):
        decoder = models.Decoder(**ddconfig)
    f = 2 ** (decoder.num_resolutions - 1)
    plan = lowmem.plan(decoder, (batch, decoder.z_channels, resolution // f, resolution // f))
    return max(c * h * w for c, h, w in plan.shapes[1:]) * batch * itemsize


class LowMemBench(VQModelBench):
    name = "lowmem"
    providers = PROVIDERS
    opt_in_providers = ()

    def modes_for(self, shape):
        return ("forward",)

    def describe(self, shape):
        batch, res = shape.dims
        return f"{SHORT_CONFIG.get(shape.param['config'], shape.param['config'])} {batch}x3x{res}x{res} decode"

    def make_inputs(self, case, device, requires_grad, gen):
        inputs = super().make_inputs(case, device, False, gen)
        folder = tempfile.mkdtemp(prefix="vqvae-fast-bench-lowmem-")
        path = os.path.join(folder, "input.pt")
        torch.save(inputs.tensors["x"].cpu(), path)
        batch, res = case.shape.dims
        itemsize = inputs.tensors["x"].element_size()
        extra = dict(inputs.extra, folder=folder, input_path=path,
                     activation=largest_activation(case.shape.param["config"], batch, res, itemsize))
        inputs = Inputs(inputs.tensors, (), extra)
        weakref.finalize(inputs, _remove_folder, folder)
        return inputs

    def expected(self, case, inputs, device, grad_out):
        model = copy.deepcopy(inputs.extra["model"]).double()
        with torch.no_grad():
            out = model.decode(inputs.tensors["x"].double())
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()  # the probes that follow get the whole device
        return out

    def build(self, provider, inputs, case, device):
        if provider not in PROVIDERS:
            raise ProviderUnavailable(f"no provider {provider!r} for {self.name}")
        extra = inputs.extra

        def measured():
            budget = None
            if provider == "vqvae_fast-budget":
                if "reference_peak" not in extra:
                    extra["reference_peak"] = self.probe("reference", case, device, extra, None, output=False)[
                        "peak_bytes"]
                budget = int(extra["reference_peak"] // BUDGET_FRACTION)
            result = self.probe(provider, case, device, extra, budget)
            if provider == "reference":
                extra["reference_peak"] = result["peak_bytes"]
            result["note"] = self.note(result, extra, budget)
            return result

        dtype = inputs.tensors["x"].dtype
        backend = "eager" if provider == "reference" else model_backends(device, dtype)
        return Runner(lambda: None, [], f"{backend}, own process", measured=measured)

    @staticmethod
    def note(result: dict, extra: dict, budget) -> str:
        """``peak P largest activations (A MiB each); cpu time T s`` and, for a planned run, its
        plan's first line (budget, modelled peak, samples per sweep, host copies)."""
        activation = extra["activation"]
        parts = []
        if result.get("peak_bytes") is not None:
            parts.append(f"peak {result['peak_bytes'] / activation:.2f} largest activations "
                         f"({activation / MiB:.0f} MiB each)")
        cpu = result.get("cpu_times_s") or []
        if len(cpu) > 1:  # CPU time of the timed calls: steadier than the wall clock on a busy CPU
            parts.append(f"cpu time {statistics.median(cpu[1:]):.3g} s")
        if result.get("plan"):
            parts.append(result["plan"]["describe"].splitlines()[0])
        return "; ".join(parts)

    def probe(self, provider, case, device, extra, budget, output: bool = True) -> dict:
        """One run of ``memory_probe`` for ``provider``; raises with its error message."""
        batch, res = case.shape.dims
        out_path = os.path.join(extra["folder"], f"{provider}.pt")
        args = [sys.executable, "-m", "vqvae_fast.benchmarks.memory_probe", "--config", case.shape.param["config"],
                "--resolution", str(res), "--batch", str(batch), "--stage", "decode", "--provider", provider,
                "--dtype", case.dtype, "--device", str(device), "--repeat", "2" if device.type == "cpu" else "4",
                "--threads", str(torch.get_num_threads()), "--input", extra["input_path"]]
        if budget is not None:
            args += ["--budget", str(budget)]
        if output:
            args += ["--output", out_path]
        done = subprocess.run(args, capture_output=True, text=True, timeout=PROBE_TIMEOUT_S)
        if done.returncode != 0:
            lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
            raise RuntimeError(lines[-1] if lines else f"memory probe exited with {done.returncode}")
        result = json.loads(done.stdout.strip().splitlines()[-1])
        times = result["times_s"]
        result["first_call_s"], result["times_s"] = times[0], times[1:] or times
        if output:
            result["output"] = torch.load(out_path).to(device)
            os.remove(out_path)
        return result

    def output_for_error(self, out):
        return out


def _remove_folder(folder: str) -> None:
    import shutil

    shutil.rmtree(folder, ignore_errors=True)


def _note_number(note: str, before: str, after: str) -> float | None:
    """The number between ``before`` and ``after`` in a row's note (written by ``note``)."""
    start = note.find(before)
    if start < 0:
        return None
    start += len(before)
    end = note.find(after, start)
    try:
        return float(note[start:end])
    except ValueError:
        return None


def memory_notes(rows: list[dict]) -> list[str]:
    """Per lowmem case: each provider's peak in largest activations, and the time of the lean and
    budgeted runs over the plain fast one (wall clock, and CPU time on a CPU)."""
    notes = []
    cases: dict = {}
    for row in rows:
        if row["op"] == LowMemBench.name:
            cases.setdefault((row["shape"], row["dtype"]), {})[row["provider"]] = row
    for (shape, dtype), by_provider in cases.items():
        parts = []
        for provider, row in by_provider.items():
            peak = _note_number(row.get("note") or "", "peak ", " largest")
            parts.append(f"{provider} {peak:.2f}" if row["status"] == "ok" and peak is not None
                         else f"{provider} {row['status']}")
        text = f"lowmem {shape} {dtype}: peak in largest activations: " + ", ".join(parts)
        plain = by_provider.get("vqvae_fast")
        for name in ("vqvae_fast-lean", "vqvae_fast-budget"):
            other = by_provider.get(name)
            if not (plain and other and plain["status"] == other["status"] == "ok"):
                continue
            text += f"; {name} time / plain = {float(other['time_p50_us']) / float(plain['time_p50_us']):.2f}"
            cpu, cpu_plain = (_note_number(r.get("note") or "", "cpu time ", " s") for r in (other, plain))
            if cpu and cpu_plain:
                text += f" (cpu time {cpu / cpu_plain:.2f})"
        notes.append(text + " (goals: lean <= 2.5 activations, budget time <= 1.3x plain)")
    return notes
