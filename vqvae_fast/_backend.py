"""Which implementation of an op runs, for one input: the backend layer shared by every op.

Backends, in order of preference:

``triton``     Triton kernels (``vqvae_fast.kernels``) on CUDA tensors; on CPU tensors too when
               ``TRITON_INTERPRET=1`` was set before triton was imported (interpreter, for tests)
               and the backend is forced.
``cuda``       the CUDA code of the compiled extension ``vqvae_fast._C``.
``cpu``        CPU implementations: the extension's C++ kernels, or the fastest correct PyTorch.
``reference``  the plain PyTorch reference (``vqvae_fast.reference``), any device and dtype.

Each op owns an :class:`OpBackends` table that says which backends it has and what each needs.
Without a forced backend the first one that can run on the input's device and dtype is chosen.
``use_backend(name)`` or ``VQVAE_FAST_BACKEND=name`` force a backend for the ops that have it
(ops without it keep their automatic choice); forcing one that cannot run on the input raises
:class:`BackendUnavailableError` with the reason.

The hot path
------------
A public call validates its arguments, calls :meth:`OpBackends.select` once and runs what it
returns; nothing below it selects again (the custom ops take the chosen backend's name as an
argument). ``select`` is a dictionary lookup: each table caches its answer per
``(device type, dtype)``, and the cache belongs to one *forcing state*, the pair

    (how many times ``use_backend`` was entered or left, the value of ``VQVAE_FAST_BACKEND``)

read on every call (one integer and one dictionary lookup in ``os.environ``'s own mapping). When the pair differs from the one
the cache was filled under, the cache is emptied first, so entering or leaving ``use_backend``
and changing the environment variable take effect on the next call. Failures
(:class:`BackendUnavailableError`) are not cached. Inside ``torch.compile`` the selection runs
uncached (it happens once, at trace time, and must not mutate Python state there).

When the custom op runs: :func:`custom_op_needed` is the one rule every op applies (see its
docstring); the ops' module docstrings say how each applies it.

Nothing here initialises CUDA or imports triton at import time.
"""

from __future__ import annotations

import contextlib
import functools
import os
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import torch

from ._device import interpreting

BACKENDS = ("triton", "cuda", "cpu", "reference")
ENV_VAR = "VQVAE_FAST_BACKEND"


class BackendUnavailableError(RuntimeError):
    """A forced backend cannot run this op on this input."""


# Stack of (backend name, op names or None for all ops) pushed by use_backend().
_forced: list[tuple[str, frozenset | None]] = []
# Bumped whenever use_backend() is entered or left: part of the selection caches' key.
_forcing_generation = 0


def _forcing_changed() -> None:
    global _forcing_generation
    _forcing_generation += 1


@contextlib.contextmanager
def use_backend(name: str, ops: str | Sequence[str] | None = None) -> Iterator[None]:
    """Force backend ``name`` inside the block, for all ops or only those named in ``ops``.

    Example::

        with vqvae_fast.use_backend("reference"):
            y = vqvae_fast.group_norm_silu(x, 32)        # runs the PyTorch reference
    """
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {list(BACKENDS)}, got {name!r}")
    if isinstance(ops, str):
        ops = [ops]
    if ops is not None:
        unknown = sorted(set(ops) - set(_REGISTRY))
        if unknown:
            raise ValueError(f"ops must name known ops {sorted(_REGISTRY)}, got unknown {unknown}")
    _forced.append((name, None if ops is None else frozenset(ops)))
    _forcing_changed()
    try:
        yield
    finally:
        _forced.pop()
        _forcing_changed()


# The raw environment mapping and our key in it, read on every selection (~50 ns, against ~1 us
# for os.environ.get); os.environ.get where the interpreter's os.environ has no such mapping.
_ENVIRON_DATA = getattr(os.environ, "_data", None)
try:
    _ENVIRON_KEY = os.environ.encodekey(ENV_VAR)  # type: ignore[attr-defined]
except AttributeError:
    _ENVIRON_DATA = None


def _environment_token():
    """The environment setting as stored (bytes or str), only compared for changes."""
    if _ENVIRON_DATA is None:
        return os.environ.get(ENV_VAR)
    return _ENVIRON_DATA.get(_ENVIRON_KEY)


def _environment_backend(env: str | None) -> str | None:
    env = (env or "").strip()
    if not env:
        return None
    if env not in BACKENDS:
        raise ValueError(f"{ENV_VAR} must be one of {list(BACKENDS)}, got {env!r}")
    return env


def forced_backend(op: str) -> str | None:
    """The backend forced for ``op`` by ``use_backend`` (innermost first) or the environment."""
    for name, ops in reversed(_forced):
        if ops is None or op in ops:
            return name
    return _environment_backend(os.environ.get(ENV_VAR))


def custom_op_needed(*tensors: torch.Tensor | None) -> bool:
    """Whether a call must go through the op's custom op rather than run its implementation.

    The custom op (``torch.ops.vqvae_fast.<op>``) is what ``torch.compile`` / ``torch.export``
    keep as one opaque node and what carries the op's autograd formula; its Python dispatch
    costs tens of microseconds, more than a small kernel. So, the same rule for every op:

    * traced by ``torch.compile`` / ``torch.export``: the custom op;
    * eager, grad mode on and some input requires grad: the custom op (autograd records it),
      unless the backend's eager implementation is itself made of differentiable ATen ops,
      which autograd then differentiates directly (the op modules say where);
    * eager otherwise (inference, ``torch.no_grad``, inputs that need no gradient): the
      implementation the custom op would run, called directly.
    """
    if torch.compiler.is_compiling():
        return True
    if not torch.is_grad_enabled():
        return False
    for t in tensors:
        if t is not None and t.requires_grad:
            return True
    return False


# ----------------------------------------------------------------------------------------------
# What each backend needs


# True when Triton runs kernels in its CPU interpreter (one definition, shared with kernels/)
triton_interpreting = interpreting


@functools.lru_cache(maxsize=None)
def triton_status() -> str | None:
    """None when triton imports, else why not. Called only when a triton backend is considered."""
    try:
        import triton  # noqa: F401
    except Exception as err:  # not installed, or broken for this platform
        return f"triton is not usable ({type(err).__name__}: {err})"
    return None


def triton_version() -> str | None:
    if triton_status() is not None:
        return None
    import triton

    return triton.__version__


def extension_status(need_cuda: bool = False) -> str | None:
    """None when the compiled extension (with CUDA code if ``need_cuda``) is loaded, else why not."""
    from . import _extension

    return _extension.status(need_cuda=need_cuda)


@dataclass(frozen=True)
class Backend:
    """One implementation of an op and what it needs to run.

    ``fn`` runs when the backend is forced; ``auto_fn``, when given, runs instead when the
    backend was chosen automatically (a backend whose own kernel loses to a native path at some
    sizes picks per call there, while forcing it always runs its kernel, e.g. for tests).
    """

    name: str
    fn: Callable
    devices: tuple[str, ...] | None  # device types it runs on automatically; None: any
    dtypes: tuple[torch.dtype, ...]
    requires: Callable[[], str | None] = lambda: None  # None if usable, else a reason
    auto_fn: Callable | None = None

    def reason_not_runnable(self, device: torch.device, dtype: torch.dtype, forced: bool) -> str | None:
        devices = self.devices
        if forced and self.name == "triton" and triton_interpreting():
            devices = devices + ("cpu",)
        if devices is not None and device.type not in devices:
            extra = "" if self.name != "triton" else " (CPU tensors need TRITON_INTERPRET=1)"
            return f"it runs on {', '.join(devices)} tensors, not {device.type}{extra}"
        if dtype not in self.dtypes:
            names = ", ".join(str(d).replace("torch.", "") for d in self.dtypes)
            return f"it supports dtypes ({names}), not {str(dtype).replace('torch.', '')}"
        return self.requires()


@dataclass
class OpBackends:
    """The backends of one op, tried in ``BACKENDS`` order; selections cached (module docstring)."""

    op: str
    backends: dict[str, Backend] = field(default_factory=dict)
    _cache: dict = field(default_factory=dict, repr=False)
    _cache_state: tuple | None = field(default=None, repr=False)

    def register(
        self,
        name: str,
        *,
        devices: Sequence[str] | None,
        dtypes: Sequence[torch.dtype],
        requires: Callable[[], str | None] | None = None,
        auto: Callable | None = None,
    ) -> Callable[[Callable], Callable]:
        """Decorator: register ``fn`` as backend ``name`` of this op (``auto``: see :class:`Backend`)."""
        if name not in BACKENDS:
            raise ValueError(f"unknown backend {name!r}")

        def decorate(fn: Callable) -> Callable:
            self.backends[name] = Backend(
                name, fn, None if devices is None else tuple(devices), tuple(dtypes),
                requires or (lambda: None), auto,
            )
            self._cache.clear()
            return fn

        return decorate

    def select(self, device: torch.device, dtype: torch.dtype) -> Backend:
        """The backend that runs this op for an input on ``device`` with ``dtype``; its ``fn``
        is what to call (the automatic variant where the backend was not forced)."""
        if torch.compiler.is_compiling():
            return self._select(device, dtype)
        state = (_forcing_generation, _environment_token())
        if state != self._cache_state:
            self._cache.clear()
            self._cache_state = state
        key = (device.type, dtype)
        backend = self._cache.get(key)
        if backend is None:
            backend = self._cache[key] = self._select(device, dtype)
        return backend

    def _select(self, device: torch.device, dtype: torch.dtype) -> Backend:
        forced = forced_backend(self.op)
        if forced is not None and forced in self.backends:
            backend = self.backends[forced]
            reason = backend.reason_not_runnable(device, dtype, forced=True)
            if reason is not None:
                raise BackendUnavailableError(
                    f"backend {forced!r} was forced for {self.op} but cannot run: {reason}"
                )
            return backend
        for name in BACKENDS:
            backend = self.backends.get(name)
            if backend is not None and backend.reason_not_runnable(device, dtype, forced=False) is None:
                if backend.auto_fn is not None:
                    backend = Backend(backend.name, backend.auto_fn, backend.devices, backend.dtypes,
                                      backend.requires)
                return backend
        raise BackendUnavailableError(f"no backend of {self.op} runs on {device} with {dtype}")

    def describe(self, device: torch.device, dtype: torch.dtype) -> dict:
        """For ``info()``: the chosen backend and why each better one was passed over."""
        try:
            chosen = self.select(device, dtype).name
        except BackendUnavailableError as err:
            chosen = f"error: {err}"
        skipped = {}
        for name in BACKENDS:
            backend = self.backends.get(name)
            if backend is None or name == chosen:
                continue
            reason = backend.reason_not_runnable(device, dtype, forced=False)
            if reason is not None:
                skipped[name] = reason
        return {"backend": chosen, "not_used": skipped}


_REGISTRY: dict[str, OpBackends] = {}


def op_backends(op: str) -> OpBackends:
    """The backend table of ``op``, created on first use."""
    if op not in _REGISTRY:
        _REGISTRY[op] = OpBackends(op)
    return _REGISTRY[op]


def registered_ops() -> dict[str, OpBackends]:
    return dict(_REGISTRY)
