"""Tensors derived from parameters, cached on the module and recomputed when a source changes.

The fast blocks run on tensors computed from their parameters: the concatenated q/k/v weights,
the value projection folded into the output projection, the folded upsampling kernel, the
codebook norms. Recomputing them on every forward costs a copy (or a GEMM) per block per call;
:func:`derived` computes one once and keeps it until a source changes.

A cached value remembers, per source tensor, ``(_version, data_ptr, dtype, device)`` and the
global :data:`generation` at which it was computed, and is recomputed when any of them differs:

* in-place changes through ATen ops bump ``_version`` (``optimizer.step()`` of the for-loop and
  foreach implementations, ``load_state_dict``, ``with torch.no_grad(): p.mul_(...)``);
* replacing a tensor (``module.to(...)``, ``param.data = ...``, a new ``Parameter``) changes its
  data pointer, dtype or device;
* what the version counter does not see starts a new generation: every optimizer step (a global
  step hook, registered on first use: fused optimizers such as ``Adam(fused=True)`` update in
  place without bumping the counter), ``train()`` / ``eval()`` on a fast module, and
  :func:`refresh_derived_weights` (``vqvae_fast.nn.refresh_derived_weights()``): call it after
  writing through ``param.data`` (``param.data.copy_(...)``, as EMA utilities do), which neither
  the counter nor a hook can see.

Nothing is cached where that would be wrong or pointless: under ``torch.compile`` (the graph
computes it), and when autograd must reach the parameters through the derived tensor (grad mode
on and a source requires grad: training), where it is computed on every call with autograd, so
gradients flow to the original parameters. Cached values are computed without autograd or
autocast and as normal tensors even inside ``torch.inference_mode``; a deep copy or pickle of
a module starts with an empty cache.
"""

from __future__ import annotations

from typing import Callable

import torch

from ..ops._autocast import autocast_off

#: Bumped by every optimizer step, fast-module mode change and :func:`refresh_derived_weights`.
generation = 0
_hook_registered = False

_CACHE_ATTRIBUTE = "_vqvae_fast_derived"


def refresh_derived_weights() -> None:
    """Recompute every cached derived tensor on its next use (after ``param.data`` writes)."""
    global generation
    generation += 1


def _after_optimizer_step(optimizer, args, kwargs) -> None:
    refresh_derived_weights()


def _register_hook() -> None:
    global _hook_registered
    if not _hook_registered:
        from torch.optim.optimizer import register_optimizer_step_post_hook

        register_optimizer_step_post_hook(_after_optimizer_step)
        _hook_registered = True


def cacheable(*sources: torch.Tensor | None) -> bool:
    """Whether a value derived from ``sources`` may be cached (and so also folded) right now."""
    if torch.compiler.is_compiling():
        return False
    if torch.is_grad_enabled():
        for t in sources:
            if t is not None and t.requires_grad:
                return False
    return True


class DerivedTensors:
    """name -> (stamp, value) for one module; empty again after a deep copy or pickling."""

    __slots__ = ("entries",)

    def __init__(self) -> None:
        self.entries: dict[str, tuple] = {}

    def __deepcopy__(self, memo) -> "DerivedTensors":
        return DerivedTensors()

    def __getstate__(self) -> dict:
        return {}

    def __setstate__(self, state) -> None:
        self.entries = {}


def _stamp(sources) -> tuple:
    return (generation,) + tuple(
        None if t is None else (t._version, t.data_ptr(), t.dtype, t.device) for t in sources
    )


def derived(module: torch.nn.Module, name: str, compute: Callable, *sources: torch.Tensor | None):
    """``compute(*sources)``, cached on ``module`` under ``name`` while :func:`cacheable`.

    ``compute`` must depend on nothing but ``sources`` (tensors or ``None``).
    """
    if not cacheable(*sources):
        return compute(*sources)
    try:
        stamp = _stamp(sources)
    except RuntimeError:  # inference tensors carry no version counter: nothing to key on
        return compute(*sources)
    cache = module.__dict__.get(_CACHE_ATTRIBUTE)
    if cache is None:
        cache = module.__dict__[_CACHE_ATTRIBUTE] = DerivedTensors()
    entry = cache.entries.get(name)
    if entry is not None and entry[0] == stamp:
        return entry[1]
    _register_hook()
    device_type = next((t.device.type for t in sources if t is not None), "cpu")
    with torch.inference_mode(False), torch.no_grad(), autocast_off(device_type):
        value = compute(*sources)
    cache.entries[name] = (stamp, value)
    return value


class DerivedWeightsMixin:
    """For fast modules holding derived tensors: ``train()`` / ``eval()`` start a new
    generation (weights are often swapped around mode changes, e.g. for EMA evaluation)."""

    def train(self, mode: bool = True):
        refresh_derived_weights()
        return super().train(mode)
