"""Argument checks shared by every public op and module.

Each check raises ``TypeError`` (wrong kind of object or dtype) or ``ValueError`` (wrong shape or
value) with a message that names the argument and says what was expected, so that a bad call
fails before any kernel runs. Checks only read tensor metadata: they never synchronise a device
and are traceable by ``torch.compile``.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import torch

#: dtypes the fast kernels compute in (fp64 runs through the CPU / reference backends).
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
#: dtypes the GPU kernels (Triton, CUDA) take.
KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
INDEX_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)


def _dtype_names(dtypes: Iterable[torch.dtype]) -> str:
    return ", ".join(str(d).replace("torch.", "") for d in dtypes)


def check_tensor(
    name: str,
    value,
    *,
    ndim: int | Sequence[int] | None = None,
    min_ndim: int | None = None,
    dtypes: Sequence[torch.dtype] | None = FLOAT_DTYPES,
) -> torch.Tensor:
    """Check that ``value`` is a tensor of an allowed dtype and rank; return it."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if dtypes is not None and value.dtype not in dtypes:
        raise TypeError(f"{name} must have dtype in ({_dtype_names(dtypes)}), got {value.dtype}")
    if ndim is not None:
        rank = value.dim()
        if rank != ndim if type(ndim) is int else rank not in ndim:
            allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
            want = " or ".join(str(n) for n in allowed)
            raise ValueError(f"{name} must have {want} dimensions, got shape {tuple(value.shape)}")
    if min_ndim is not None and value.dim() < min_ndim:
        raise ValueError(
            f"{name} must have at least {min_ndim} dimensions, got shape {tuple(value.shape)}"
        )
    return value


def check_optional_tensor(name: str, value, **kwargs) -> torch.Tensor | None:
    """``check_tensor`` that also accepts ``None``."""
    return None if value is None else check_tensor(name, value, **kwargs)


def check_shape(name: str, value: torch.Tensor, shape: Sequence[int]) -> None:
    if tuple(value.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(value.shape)}")


def check_same_device(**tensors: torch.Tensor | None) -> None:
    """All given tensors (``None`` skipped) live on one device; the first one named sets it."""
    items = [(n, t) for n, t in tensors.items() if t is not None]
    if not items:
        return
    first_name, first = items[0]
    for name, t in items[1:]:
        if t.device != first.device:
            raise ValueError(
                f"{name} is on {t.device} but {first_name} is on {first.device}; "
                "all tensors must be on the same device"
            )


def check_same_dtype(**tensors: torch.Tensor | None) -> None:
    """All given tensors (``None`` skipped) share one dtype; the first one named sets it."""
    items = [(n, t) for n, t in tensors.items() if t is not None]
    if not items:
        return
    first_name, first = items[0]
    for name, t in items[1:]:
        if t.dtype != first.dtype:
            raise TypeError(
                f"{name} has dtype {t.dtype} but {first_name} has dtype {first.dtype}; "
                "they must match"
            )


def check_int(name: str, value, *, min_value: int | None = None) -> int:
    """A Python int (bools rejected) at least ``min_value``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if min_value is not None and value < min_value:
        raise ValueError(f"{name} must be >= {min_value}, got {value}")
    return value


def check_int_tuple(name: str, value, length: int, *, min_value: int | None = None) -> tuple[int, ...]:
    """An int or a sequence of ``length`` ints; an int is repeated ``length`` times."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value,) * length
    if not isinstance(value, (tuple, list)) or len(value) != length:
        raise ValueError(f"{name} must be an int or a sequence of {length} ints, got {value!r}")
    for i, v in enumerate(value):
        check_int(f"{name}[{i}]", v, min_value=min_value)
    return tuple(value)


def check_float(name: str, value, *, positive: bool = False, finite: bool = False) -> float:
    """A real number (Python or 0-dim tensor not accepted: kernels take it by value); never NaN,
    ``> 0`` if ``positive``, not infinite if ``finite``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a float, got {type(value).__name__}")
    value = float(value)
    if value != value:
        raise ValueError(f"{name} must not be NaN")
    if positive and not value > 0:
        raise ValueError(f"{name} must be > 0, got {value}")
    if finite and value in (float("inf"), float("-inf")):
        raise ValueError(f"{name} must be finite, got {value}")
    return value


def check_choice(name: str, value, choices: Sequence) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")


def check_divisible(name: str, value: int, divisor_name: str, divisor: int) -> None:
    if divisor <= 0 or value % divisor != 0:
        raise ValueError(f"{name} ({value}) must be divisible by {divisor_name} ({divisor})")


def check_no_grad(name: str, value: torch.Tensor, op: str) -> None:
    """For outputs that are not differentiable (indices): refuse inputs that ask for a gradient
    only where the caller would otherwise silently get none."""
    if value.requires_grad and torch.is_grad_enabled():
        raise ValueError(
            f"{name} requires grad, but {op} is not differentiable; "
            f"pass {name}.detach() or run under torch.no_grad()"
        )


def _autocast_on(device_type: str) -> bool:
    try:
        return torch.is_autocast_enabled(device_type)
    except RuntimeError:  # a device type autocast does not know (meta)
        return False


def check_matches_module(name: str, value: torch.Tensor, module: torch.nn.Module, *, dtype: bool = True) -> None:
    """``value`` is on the device of ``module``'s parameters and, with ``dtype``, has their dtype
    unless autocast is on for its device. PyTorch's layers need both but would report a layer's
    weight in a ``RuntimeError``; this names the argument. A module without parameters passes."""
    param = _first_parameter(module)
    if param is None:
        return
    owner = type(module).__name__
    if value.device != param.device:
        raise ValueError(
            f"{name} is on {value.device} but the {owner}'s parameters are on {param.device}; "
            "move one to the other's device"
        )
    if dtype and value.dtype != param.dtype and not _autocast_on(value.device.type):
        raise TypeError(
            f"{name} has dtype {value.dtype} but the {owner}'s parameters have dtype {param.dtype}; "
            "convert one to the other's dtype, or run under torch.autocast"
        )


def _first_parameter(module: torch.nn.Module) -> torch.Tensor | None:
    """``next(module.parameters(), None)`` (the same pre-order) without building generators:
    this runs in every fast block's forward."""
    for param in module._parameters.values():
        if param is not None:
            return param
    for child in module._modules.values():
        if child is not None:
            param = _first_parameter(child)
            if param is not None:
                return param
    return None
