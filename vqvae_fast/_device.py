"""Device facts shared by the functional ops (``vqvae_fast.ops``) and the Triton kernels
(``vqvae_fast.kernels``): multiprocessor count, compute capability, whether Triton interprets,
the guard that launches on a tensor's own GPU, and the memory format of an op's result.

Nothing here initialises CUDA at import; a device is queried once, the first time a launch is
planned on it, and remembered. Without CUDA (CPU tensors in Triton's interpreter, ``meta``
tensors in planning tests) the answers are an H100's, so plans made there are the plans an
H100 would get.
"""

from __future__ import annotations

import contextlib
import os

import torch

#: What a non-CUDA device stands in for: an H100 SXM (sm_90, 132 multiprocessors).
STAND_IN_CAPABILITY = 90
STAND_IN_SM_COUNT = 132

_PROPERTIES: dict[int, tuple[int, int]] = {}  # CUDA device index -> (capability, SM count)
_NO_GUARD = contextlib.nullcontext()


def interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET`` set before
    triton was imported)."""
    return os.environ.get("TRITON_INTERPRET", "0").strip() not in ("", "0")


def _cuda_properties(device: torch.device) -> tuple[int, int]:
    index = device.index if device.index is not None else torch.cuda.current_device()
    facts = _PROPERTIES.get(index)
    if facts is None:
        props = torch.cuda.get_device_properties(index)
        facts = _PROPERTIES[index] = (props.major * 10 + props.minor, props.multi_processor_count)
    return facts


def capability(device: torch.device) -> int:
    """Compute capability as ``major * 10 + minor`` (90 for an H100); the stand-in off CUDA."""
    if device.type != "cuda":
        return STAND_IN_CAPABILITY
    return _cuda_properties(device)[0]


def sm_count(device: torch.device) -> int:
    """Streaming multiprocessors of ``device``; the stand-in off CUDA."""
    if device.type != "cuda":
        return STAND_IN_SM_COUNT
    return _cuda_properties(device)[1]


def device_guard(t: torch.Tensor):
    """A context in which launches go to ``t``'s GPU.

    Triton launches on the *current* CUDA device; for a tensor on another GPU this switches to
    its device for the block (``torch.cuda.device``). For a tensor on the current device, or not
    on CUDA, it is a shared no-op context (nothing is queried beyond the current device index).
    """
    device = t.device
    if device.type == "cuda" and device.index is not None and device.index != torch.cuda.current_device():
        return torch.cuda.device(device.index)
    return _NO_GUARD


_CHANNELS_LAST_BY_RANK = {4: torch.channels_last, 5: torch.channels_last_3d}


def output_memory_format(x: torch.Tensor) -> torch.memory_format:
    """The memory format of an elementwise op's result for input ``x``: channels-last when ``x``
    is channels-last (4-D and 5-D) and not also contiguous, contiguous otherwise. Every backend
    and the fake (meta) implementations agree on it."""
    fmt = _CHANNELS_LAST_BY_RANK.get(x.dim())
    if fmt is not None and not x.is_contiguous() and x.is_contiguous(memory_format=fmt):
        return fmt
    return torch.contiguous_format
