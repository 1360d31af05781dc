"""``vqvae_fast.info()``: what this installation has and which backend each op will use.

Besides versions and devices it reports what the compiled extension was built against (the
wheel's ``_build_info.json``), whether that fits the installed torch, and which wheel does.
"""

from __future__ import annotations

import platform

import torch

from . import _backend, _extension
from ._version import __version__

REPORT_DTYPES = {"cpu": torch.float32, "cuda": torch.float16}


def gpu_report() -> list[dict]:
    """GPUs torch sees, read without creating a CUDA context where torch allows it."""
    if not torch.cuda.is_available():
        return []
    gpus = []
    for i in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(i)
        gpus.append({
            "name": props.name,
            "capability": f"{props.major}.{props.minor}",
            "memory_gib": round(props.total_memory / 2**30, 1),
            "sms": props.multi_processor_count,
        })
    return gpus


def info() -> dict:
    """A report of versions, devices, the compiled extension and each op's backend per device."""
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    ops = {}
    for name, table in sorted(_backend.registered_ops().items()):
        ops[name] = {
            dev: table.describe(torch.device(dev), REPORT_DTYPES[dev]) for dev in devices
        }
    ext_reason = _extension.status()
    return {
        "vqvae_fast": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "triton": _backend.triton_version() or f"unavailable ({_backend.triton_status()})",
        "triton_interpret": _backend.triton_interpreting(),
        "cuda_available": torch.cuda.is_available(),
        "gpus": gpu_report(),
        "extension": {
            "loaded": ext_reason is None,
            "reason": ext_reason,
            "cuda_code": ext_reason is None and _extension.status(need_cuda=True) is None,
            # versions in which the build differs from the installed torch ([] when it fits)
            "mismatch": _extension.mismatch(),
            "wheel_for_this_torch": _extension.wheel_for_installed_torch(),
        },
        # what the compiled extension was built against (_build_info.json; None if never built)
        "build": _extension.build_info(),
        "forced_backend": _backend.forced_backend("*"),
        "ops": ops,
    }


def format_info(report: dict) -> str:
    """``info()`` as readable text."""
    lines = [f"vqvae_fast {report['vqvae_fast']}  (python {report['python']})"]
    lines.append(f"torch      {report['torch']}  (CUDA {report['torch_cuda'] or 'none'})")
    lines.append(f"triton     {report['triton']}" + ("  [TRITON_INTERPRET=1]" if report["triton_interpret"] else ""))
    if report["gpus"]:
        for i, gpu in enumerate(report["gpus"]):
            lines.append(f"gpu {i}      {gpu['name']}  sm_{gpu['capability'].replace('.', '')}, "
                         f"{gpu['memory_gib']} GiB, {gpu['sms']} SMs")
    else:
        lines.append("gpu        none visible to torch")
    build = report["build"]
    if build and "error" not in build:
        archs = ";".join(build.get("cuda_archs") or []) or "-"
        cuda = f"CUDA {build['cuda']} (archs {archs})" if build.get("cuda") else "no CUDA code"
        lines.append(f"build      {build.get('version')} for torch {build.get('torch')}, {cuda}, "
                     f"commit {build.get('git_commit') or 'unknown'}, {build.get('build_date')}")
    elif build:
        lines.append(f"build      record unreadable: {build['error']}")
    ext = report["extension"]
    for problem in ext["mismatch"]:
        lines.append(f"mismatch   {problem}")
    if ext["mismatch"] or (ext["loaded"] and not ext["cuda_code"] and report["torch_cuda"]):
        lines.append(f"wheel      the one for this torch: vqvae_fast=={ext['wheel_for_this_torch']}")
    if ext["loaded"]:
        lines.append("extension  vqvae_fast._C loaded" + (" with CUDA code" if ext["cuda_code"] else " (CPU only)"))
    else:
        lines.append(f"extension  not loaded: {ext['reason']}")
    if report["forced_backend"]:
        lines.append(f"forced     backend {report['forced_backend']!r} (VQVAE_FAST_BACKEND)")
    lines.append("backends (default choice per device; dtype fp32 on cpu, fp16 on cuda):")
    for op, per_device in report["ops"].items():
        for dev, choice in per_device.items():
            lines.append(f"  {op:<18} {dev:<5} -> {choice['backend']}")
            for name, why in choice["not_used"].items():
                lines.append(f"  {'':<18} {'':<5}    not {name}: {why}")
    return "\n".join(lines)
