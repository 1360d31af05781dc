"""One decode or encode in a process of its own, reporting its peak memory and its time.

Run by the ``lowmem`` benchmark once per (case, provider) so that each peak belongs to one case:
``python -m vqvae_fast.benchmarks.memory_probe --config vqgan_imagenet_f16_16384 --resolution 512
--stage decode --provider vqvae_fast-budget --budget 123456789`` prints one JSON line (the input
may come from a file, ``--input``, and the first result go to one, ``--output``).

Peak memory: on CUDA ``torch.cuda.max_memory_allocated`` minus what was allocated before the
call; on CPU the process's peak resident set (``VmHWM``, reset through ``/proc/self/clear_refs``
after the model and input exist) minus its resident set then. Until that call ends glibc's malloc
is told to return every block over 128 KiB to the system on free (``mallopt(M_MMAP_THRESHOLD)``,
from the start of the process), so the resident set follows what is live; the timed calls after it run with the 32 MiB threshold glibc
settles at by itself (blocks below it are reused without new page faults, as in a long run). The first call at the case's size is the measured one (a
small call before it loads the kernels); the later ones are timed.

Providers: ``reference`` (``vqvae_fast.reference.VQModel``), ``vqvae_fast`` (the fast model),
``vqvae_fast-lean`` (the fast model with ``memory_budget(model, "lean")``), ``vqvae_fast-budget``
(the fast model within ``--budget`` bytes, or ``--budget min``: the smallest plan the planner
finds for this input on this device).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

PROVIDERS = ("reference", "vqvae_fast", "vqvae_fast-lean", "vqvae_fast-budget")


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


_M_MMAP_THRESHOLD = -3


def _mmap_threshold(size: int) -> bool:
    """Set glibc's mmap threshold (blocks above it go back to the system on free); False where
    there is no glibc."""
    try:
        import ctypes

        return bool(ctypes.CDLL("libc.so.6").mallopt(_M_MMAP_THRESHOLD, size))
    except (OSError, AttributeError):
        return False


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def build(config: str, provider: str, device, dtype):
    """The model of ``provider`` with the seeded random weights every provider shares."""
    import torch

    import vqvae_fast
    from vqvae_fast import configs, reference

    cfg = configs.get_config(config)
    torch.manual_seed(0)
    ref = reference.VQModel(cfg["ddconfig"], n_embed=cfg["n_embed"], embed_dim=cfg["embed_dim"])
    if provider == "reference":
        model = ref
    else:
        model = vqvae_fast.VQModel(cfg["ddconfig"], n_embed=cfg["n_embed"], embed_dim=cfg["embed_dim"])
        model.load_state_dict(ref.state_dict())
        del ref
    return model.to(device=device, dtype=dtype).eval().requires_grad_(False)


def set_budget(model, provider: str, budget, stage: str, x) -> None:
    """``memory_budget`` as the provider says: lean, the given bytes, or the smallest plan."""
    import vqvae_fast

    if provider == "vqvae_fast-lean":
        vqvae_fast.memory_budget(model, "lean")
    elif provider == "vqvae_fast-budget" and budget == "min":
        if stage == "decode":  # the decoder's input is post_quant_conv's output
            coder, shape = model.decoder, (x.shape[0], model.decoder.z_channels, *x.shape[2:])
        else:
            coder, shape = model.encoder, tuple(x.shape)
        vqvae_fast.memory_budget(model, vqvae_fast.lowmem.minimum_budget(coder, shape, dtype=x.dtype,
                                                                         device=x.device))
    elif provider == "vqvae_fast-budget":
        vqvae_fast.memory_budget(model, int(budget))


def stage_input(model, stage: str, batch: int, resolution: int):
    if stage == "decode":
        f = model.encoder.downsampling_factor
        return (batch, model.embed_dim, resolution // f, resolution // f)
    return (batch, model.encoder.in_channels, resolution, resolution)


def run(model, stage: str, x):
    return model.decode(x) if stage == "decode" else model.encode(x)[0]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--resolution", type=int, required=True)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--stage", choices=("decode", "encode"), default="decode")
    parser.add_argument("--provider", choices=PROVIDERS, required=True)
    parser.add_argument("--budget", default=None, help="bytes, or 'min'")
    parser.add_argument("--input", default=None, help="the input tensor (torch.save), else a seeded normal one")
    parser.add_argument("--dtype", default="fp32")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--output", default=None, help="save the (first) result here (torch.save)")
    args = parser.parse_args(argv)

    import torch

    from .device import TORCH_DTYPES

    if args.threads:
        torch.set_num_threads(args.threads)
    exact = args.device == "cpu" and _mmap_threshold(128 * 2**10)  # from the start: no freed heap to reuse
    device, dtype = torch.device(args.device), TORCH_DTYPES[args.dtype]
    model = build(args.config, args.provider, device, dtype)
    gen = torch.Generator(device=device).manual_seed(0)
    shape = stage_input(model, args.stage, args.batch, args.resolution)
    if args.input:
        x = torch.load(args.input).to(device=device, dtype=dtype)
    else:
        x = torch.randn(shape, generator=gen, device=device, dtype=torch.float32).to(dtype)
    small = torch.randn(stage_input(model, args.stage, 1, min(64, args.resolution)), device=device,
                        dtype=torch.float32).to(dtype)
    with torch.no_grad():
        run(model, args.stage, small)  # loads kernels and libraries: not the case's memory
        set_budget(model, args.provider, args.budget, args.stage, x)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            before = torch.cuda.memory_allocated(device)
        else:
            reset = _reset_peak() and exact
            before = _status_kib("VmRSS")
        start, cpu_start = time.perf_counter(), time.process_time()
        out = run(model, args.stage, x)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            peak = torch.cuda.max_memory_allocated(device) - before
        else:
            hwm = _status_kib("VmHWM")
            peak = None if before is None or hwm is None or not reset else (hwm - before) * 1024
        times, cpu_times = [time.perf_counter() - start], [time.process_time() - cpu_start]
        if device.type != "cuda":
            _mmap_threshold(32 * 2**20)
        if args.output:
            torch.save(out.cpu(), args.output)
        del out
        for _ in range(args.repeat - 1):
            start, cpu_start = time.perf_counter(), time.process_time()
            run(model, args.stage, x)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - start)
            cpu_times.append(time.process_time() - cpu_start)
    plan = None
    if args.provider in ("vqvae_fast-lean", "vqvae_fast-budget"):
        from vqvae_fast.lowmem import last_plan

        found = last_plan(model.decoder if args.stage == "decode" else model.encoder)
        plan = None if found is None else {"describe": found.describe(), "estimate": found.estimate,
                                           "budget": found.budget}
    timed = times[1:] or times
    json.dump({"peak_bytes": peak, "times_s": times, "cpu_times_s": cpu_times, "median_s": statistics.median(timed),
               "plan": plan}, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
