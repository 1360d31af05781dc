"""Memory budgets: parsing ``"12GB"`` / ``"auto"`` / bytes, and what ``"auto"`` finds free.

``"auto"`` is 90 % of what the device could still give this process: on CUDA the driver's free
memory (``torch.cuda.mem_get_info``) plus what PyTorch's caching allocator holds unused; on CPU
80 % of the memory the kernel reports available (``psutil.virtual_memory().available`` when
psutil is installed, else ``MemAvailable`` in ``/proc/meminfo``, else the free physical pages).
It is read again at every call, rounded down to 64 MiB so that plans can be reused.
"""

from __future__ import annotations

import os
import re

import torch

AUTO, LEAN = "auto", "lean"
_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40, "k": 2**10, "m": 2**20, "g": 2**30}
_ROUND = 64 * 2**20


def parse(budget) -> int | str | None:
    """``None``, ``"auto"``, ``"lean"`` or a byte count from an int or a string with a unit
    (``"12GB"`` = 12e9, ``"12GiB"`` = 12 * 2**30); raises naming ``budget``."""
    if budget is None:
        return None
    if isinstance(budget, bool):
        raise TypeError(f"budget must be a byte count, 'auto', 'lean' or None, got {budget!r}")
    if isinstance(budget, str):
        text = budget.strip().lower()
        if text in (AUTO, LEAN):
            return text
        match = re.fullmatch(r"([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([a-z]*)", text)
        if match is None or match.group(2) not in _UNITS:
            raise ValueError(f"budget must be a byte count such as '12GB' or '512MiB', 'auto' or 'lean', got {budget!r}")
        budget = float(match.group(1)) * _UNITS[match.group(2)]
    if isinstance(budget, float) and budget.is_integer():
        budget = int(budget)
    if not isinstance(budget, int):
        raise TypeError(f"budget must be a byte count, 'auto', 'lean' or None, got {type(budget).__name__}")
    if budget <= 0:
        raise ValueError(f"budget must be positive, got {budget}")
    return budget


def available(device: torch.device) -> int:
    """What ``"auto"`` allows on ``device`` (module docstring), in bytes."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        unused = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        amount = 0.9 * (free + unused)
    else:
        amount = 0.8 * _host_available()
    return max(int(amount) // _ROUND * _ROUND, _ROUND)


def _host_available() -> int:
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        pass
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def resolve(budget, device: torch.device) -> int | None:
    """Bytes for a parsed budget (``None`` for ``"lean"``)."""
    if budget == LEAN:
        return None
    if budget == AUTO:
        return available(device)
    return budget
