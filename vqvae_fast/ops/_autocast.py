"""``torch.autocast`` for ops PyTorch runs in lower precision (convolutions, matmuls).

Custom ops are invisible to autocast, so the public functions of the ops that autocast would
run in fp16/bf16 (as it does ``conv2d`` and ``scaled_dot_product_attention``) cast their
floating inputs here, before their checks and backend choice.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch

# One call answering "is autocast on for any device?", so that the common case costs ~0.1 us.
_any_autocast = getattr(torch._C, "_is_any_autocast_enabled", lambda: True)


def autocast_inputs(device: torch.device, *tensors: torch.Tensor | None) -> tuple:
    """``tensors`` cast to the autocast dtype when autocast is on for ``device``, else as given."""
    if not _any_autocast():
        return tensors
    device_type = device.type
    if device_type not in ("cuda", "cpu") or not torch.is_autocast_enabled(device_type):
        return tensors
    dtype = torch.get_autocast_dtype(device_type)
    return tuple(
        t.to(dtype) if isinstance(t, torch.Tensor) and t.is_floating_point() and t.dtype != torch.float64 else t
        for t in tensors
    )


def autocast_off(device_type: str):
    """A context with autocast disabled for ``device_type``; a no-op context (cheap: constructing
    ``torch.autocast`` costs microseconds) when autocast is not on anywhere."""
    if not _any_autocast() or device_type not in ("cuda", "cpu"):
        return nullcontext()
    return torch.autocast(device_type, enabled=False)
