"""Comparison helpers (the tolerances of docs/testing.md, in one place), the device a forced
backend runs on, and what ran: the Triton kernels launched, the ops dispatched."""

from __future__ import annotations

import contextlib
from typing import Callable, Sequence
from unittest import mock

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

LOW_PRECISION = (torch.float16, torch.bfloat16)


def device_for_backend(backend: str) -> str:
    """The device on which a test runs ``backend`` forced: CPU, except Triton without its
    interpreter, which needs CUDA; skips the test where Triton cannot run at all."""
    if backend != "triton":
        return "cpu"
    from vqvae_fast import _backend

    if _backend.triton_status() is not None:
        pytest.skip(_backend.triton_status())
    if _backend.triton_interpreting():
        return "cpu"
    if not torch.cuda.is_available():
        pytest.skip("Triton needs a GPU or its interpreter (TRITON_INTERPRET=1)")
    return "cuda"


@contextlib.contextmanager
def kernel_launches():
    """The names of the Triton kernels launched inside the block (every launcher runs its table
    entries through ``vqvae_fast.kernels._table.Launch``)."""
    from vqvae_fast.kernels import _table

    names = []
    launch = _table.Launch.__call__

    def record(self):
        names.append(self.config.kernel)
        launch(self)

    with mock.patch.object(_table.Launch, "__call__", record):
        yield names


class DispatchedOps(TorchDispatchMode):
    """Records the name of every op dispatched inside the block (``vqvae_fast.<op>.default`` for
    the custom ops, ``aten.<op>.<overload>`` for the rest)."""

    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(str(func))
        return func(*args, **(kwargs or {}))


def to_dtype(args: Sequence, dtype: torch.dtype) -> list:
    """Floating tensors among ``args`` cast to ``dtype`` (others unchanged)."""
    return [a.to(dtype) if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args]


def max_abs_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    diff = (actual.detach().double() - expected.detach().double()).abs()
    return float(diff.max()) if diff.numel() else 0.0


def assert_matches_reference(
    actual: torch.Tensor | Sequence[torch.Tensor],
    reference: Callable,
    args: Sequence,
    *,
    dtype: torch.dtype,
    atol: float = 1e-5,
    rtol_fp32: float = 1e-4,
) -> None:
    """Check a fast result against the reference run on ``args`` (docs/testing.md).

    fp32 / fp64: within ``rtol_fp32`` relative and ``atol`` absolute of the reference in fp64.
    fp16 / bf16: the error against the fp64 reference is at most twice the error of the
    reference computed in ``dtype`` itself, plus ``atol`` and one rounding unit of ``dtype``,
    both scaled by the output magnitude (a single random draw can leave the reference's own
    error well under one unit).
    ``reference(*args)`` may return a tensor or a tuple; ``actual`` must match that structure.
    """
    expected64 = reference(*to_dtype(args, torch.float64))
    actual_list = [actual] if isinstance(actual, torch.Tensor) else list(actual)
    expected_list = [expected64] if isinstance(expected64, torch.Tensor) else list(expected64)
    if dtype in LOW_PRECISION:
        same_dtype = reference(*to_dtype(args, dtype))
        same_list = [same_dtype] if isinstance(same_dtype, torch.Tensor) else list(same_dtype)
    for i, (got, want) in enumerate(zip(actual_list, expected_list)):
        assert got.shape == want.shape, f"output {i}: shape {tuple(got.shape)} != {tuple(want.shape)}"
        if dtype in LOW_PRECISION:
            scale = float(want.detach().abs().max()) if want.numel() else 1.0
            err = max_abs_error(got, want)
            baseline = max_abs_error(same_list[i], want)
            bound = 2 * baseline + (atol + torch.finfo(dtype).eps) * max(scale, 1.0)
            assert err <= bound, (
                f"output {i}: error {err:.3e} vs fp64 exceeds 2 x the {dtype} reference's "
                f"{baseline:.3e} + atol (bound {bound:.3e})"
            )
        else:
            torch.testing.assert_close(
                got.double(), want.double(), rtol=rtol_fp32, atol=atol, msg=lambda m: f"output {i}: {m}"
            )
