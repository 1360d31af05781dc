"""``memory_budget(model, ...)``: route an encoder's / decoder's ``forward`` through the executor.

The configuration is stored on each encoder / decoder module found in the model. vqvae_fast's
own ``Encoder`` / ``Decoder`` check for it in ``forward`` (:class:`LowMemoryModule`); any other
class (diffusers', taming's before ``accelerate``) gets an instance attribute ``forward`` that
does the same and falls back to the class's own. So ``model.decode(z)`` is unchanged.

The executor runs only where it computes what the plain forward computes: a 4-D floating input,
no autograd recording (grad mode off, or neither the input nor a parameter requires grad), no
autocast, not under ``torch.compile``, and a model whose blocks are in a state the adapters
accept (dropout inactive). Otherwise the plain ``forward`` runs: training keeps working as it did.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
import torch.nn as nn

from .. import _validation as V
from . import adapters
from . import budget as budgets
from .executor import Executor
from .layers import Unsupported
from .planner import Plan, make_plan
from .program import ConvPass, compile_layers

CONFIG = "_vqvae_fast_low_memory"
PLANS = "_vqvae_fast_low_memory_plans"
LAST_PLAN = "_vqvae_fast_low_memory_last_plan"
STORAGE = ("auto", "device", "host")


@dataclass(frozen=True)
class LowMemoryConfig:
    """``budget``: bytes, ``"auto"`` or ``"lean"``; ``tiles``: ``(rows, cols)`` cut of every
    level or ``None`` (the planner's); ``storage``: ``"auto"``, ``"device"`` or ``"host"``;
    ``batch``: samples per sweep or ``None`` (the planner's)."""

    budget: int | str = "lean"
    tiles: tuple[int, int] | None = None
    storage: str = "auto"
    batch: int | None = None


def make_config(budget, tiles=None, storage="auto", batch=None) -> LowMemoryConfig:
    """A checked :class:`LowMemoryConfig` (errors name the argument)."""
    parsed = budgets.parse(budget)
    if parsed is None:
        raise ValueError("budget must be a byte count, 'auto' or 'lean' here")
    if tiles is not None:
        tiles = V.check_int_tuple("tiles", tiles, 2, min_value=1)
    V.check_choice("storage", storage, STORAGE)
    if batch is not None:
        V.check_int("batch", batch, min_value=1)
    return LowMemoryConfig(parsed, tiles, storage, batch)


# -- finding and configuring the encoders / decoders ------------------------------------------


def targets(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The outermost modules of ``model`` that a container adapter describes (raises
    :class:`~.layers.Unsupported` naming the block an adapter cannot take)."""
    found = []

    def visit(module: nn.Module, name: str) -> None:
        if adapters.find(module, name, containers_only=True) is not None:
            found.append((name, module))
            return
        for child_name, child in module.named_children():
            visit(child, f"{name}.{child_name}" if name else child_name)

    visit(model, "")
    return found


def memory_budget(model: nn.Module, budget, *, tiles=None, storage: str = "auto", batch: int | None = None) -> list[str]:
    r"""Run ``model``'s encoders and decoders exactly, within ``budget`` bytes of device memory.

    ``budget``: bytes (``int``, or a string such as ``"12GB"`` / ``"12GiB"``); ``"auto"``: what
    the device has free at each call (:mod:`.budget`); ``"lean"``: no fixed budget, the
    temporaries kept small (about two of the largest activations in all); ``None``: back to
    the plain ``forward``. ``tiles=(rows, cols)`` (or ``n`` for ``n x n``) fixes how every
    resolution is cut instead of the planner; ``storage="host"`` keeps every intermediate in
    (pinned) host memory, ``"device"`` never, ``"auto"`` only when the budget needs it (CUDA);
    ``batch`` fixes the samples per sweep (``1``: one at a time).

    The result equals the plain forward up to floating-point summation order: every group norm
    uses statistics merged over all tiles, every convolution reads a halo wide enough to be
    exact (``docs/low-memory.md``). A budget too small for one tile raises ``ValueError`` at the
    call that needs it. Returns the names of the configured modules (``""``: ``model`` itself).

    Example::

        vqvae_fast.accelerate(vae)
        vqvae_fast.memory_budget(vae, "auto")
        image = vae.decode(z)            # as before, within the free memory
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if budgets.parse(budget) is None:
        names = []
        for name, module in model.named_modules():
            if CONFIG in module.__dict__:
                uninstall(module)
                names.append(name)
        return names
    config = make_config(budget, tiles, storage, batch)
    found = targets(model)
    if not found:
        raise ValueError(f"model ({type(model).__name__}) holds no encoder or decoder the low-memory executor "
                         "knows (taming / LDM / vqvae_fast Encoder and Decoder, diffusers Encoder and Decoder)")
    for _, module in found:
        install(module, config)
    return [name for name, _ in found]


def install(module: nn.Module, config: LowMemoryConfig) -> None:
    module.__dict__[CONFIG] = config
    module.__dict__.pop(PLANS, None)
    if not isinstance(module, LowMemoryModule) and "forward" not in module.__dict__:
        module.__dict__["forward"] = _LowMemoryForward(module)


def uninstall(module: nn.Module) -> None:
    for key in (CONFIG, PLANS, LAST_PLAN):
        module.__dict__.pop(key, None)
    if isinstance(module.__dict__.get("forward"), _LowMemoryForward):
        del module.__dict__["forward"]


def last_plan(module: nn.Module) -> Plan | None:
    """The plan of ``module``'s last low-memory call (``print(plan.describe())``)."""
    return module.__dict__.get(LAST_PLAN)


class _LowMemoryForward:
    """The ``forward`` of a configured module whose class is not ours."""

    def __init__(self, module: nn.Module):
        self.module = module

    def __call__(self, *args, **kwargs):
        module = self.module
        return run_module(module, lambda *a, **k: type(module).forward(module, *a, **k), *args, **kwargs)


class LowMemoryModule:
    """Mixin of vqvae_fast's ``Encoder`` / ``Decoder``: ``forward`` through the executor when
    configured (``memory_budget``, ``enable_tiling``, ``enable_slicing``)."""

    def forward(self, x, *args, **kwargs):
        if CONFIG in self.__dict__:
            return run_module(self, super().forward, x, *args, **kwargs)
        return super().forward(x, *args, **kwargs)


# -- running --------------------------------------------------------------------------------------


def _applicable(module: nn.Module, x) -> bool:
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or not x.is_floating_point():
        return False
    if torch.compiler.is_compiling() or torch.is_autocast_enabled(x.device.type):
        return False
    if torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in module.parameters())):
        warnings.warn("a module configured by vqvae_fast.memory_budget runs its plain forward while autograd "
                      "records (call it under torch.no_grad() or torch.inference_mode() for bounded memory)",
                      stacklevel=4)
        return False
    return True


def run_module(module: nn.Module, plain, *args, **kwargs):
    config = module.__dict__.get(CONFIG)
    extra = args[1:] or any(v is not None for v in kwargs.values())
    if config is None or not args or extra or not _applicable(module, args[0]):
        return plain(*args, **kwargs)
    x = args[0]
    try:
        found = adapters.find(module, containers_only=True)
    except Unsupported:  # a state the adapters refuse now (e.g. dropout back in training mode)
        found = None
    if found is None:
        return plain(*args, **kwargs)
    adapter, layers = found
    if adapter.before is not None:
        adapter.before(module, x)
    program = compile_layers(layers)
    plan = _cached_plan(module, program, x, config)
    with torch.no_grad():
        out = Executor(program, plan, x).run(x)
    module.__dict__[LAST_PLAN] = plan
    return out


def _signature(program) -> tuple:
    out = []
    for p in program.passes:
        if isinstance(p, ConvPass):
            shortcut = p.residual and p.residual.shortcut
            out.append((p.src, p.skip, tuple(p.conv.module.weight.shape), p.conv.stride, p.conv.padding,
                        p.conv.upsample, None if p.norm is None else p.norm.module.num_groups,
                        None if not shortcut else tuple(shortcut.weight.shape)))
        else:
            out.append((p.src, "whole", p.layer.name))
    return tuple(out)


def _cached_plan(module, program, x: torch.Tensor, config: LowMemoryConfig) -> Plan:
    budget = budgets.resolve(config.budget, x.device)
    key = (tuple(x.shape), x.dtype, x.device.type, budget, config, _signature(program))
    plans = module.__dict__.setdefault(PLANS, {})
    plan = plans.get(key)
    if plan is None:
        shapes = program.shapes(tuple(x.shape[1:]))
        plan = make_plan(program, shapes, x.element_size(), x.device.type, x.shape[0], budget=budget,
                         tiles=config.tiles, storage=config.storage, batch=config.batch)
        if len(plans) > 16:
            plans.clear()
        plans[key] = plan
    return plan


def _describe_for_plan(module: nn.Module, shape):
    found = adapters.find(module, containers_only=True)
    if found is None:
        raise ValueError(f"module ({type(module).__name__}) is not an encoder or decoder the executor knows")
    program = compile_layers(found[1])
    shape = V.check_int_tuple("shape", tuple(shape), 4, min_value=1)
    return program, shape, program.shapes(shape[1:])


def minimum_budget(module: nn.Module, shape, *, dtype: torch.dtype = torch.float32, device="cpu",
                   storage: str = "auto", tiles=None, batch: int | None = None) -> int:
    """The least memory (bytes, modelled) with which ``module`` can run an input of ``shape``
    on ``device``: the smallest tiles, one sample per sweep, and on CUDA every large activation
    in host memory. Slow; a lower bound for :func:`memory_budget`."""
    make_config("lean", tiles, storage, batch)
    program, shape, shapes = _describe_for_plan(module, shape)
    itemsize = torch.empty((), dtype=dtype).element_size()
    return make_plan(program, shapes, itemsize, torch.device(device).type, shape[0], budget=0,
                     tiles=tiles, storage=storage, batch=batch).estimate


def plan(module: nn.Module, shape, *, budget="lean", tiles=None, storage: str = "auto", batch: int | None = None,
         dtype: torch.dtype = torch.float32, device="cpu") -> Plan:
    """The plan an encoder / decoder would run for an input of ``shape`` (nothing runs).

    Example (what decoding 4096x4096 with the f16 VQGAN takes on a 16 GB GPU)::

        p = vqvae_fast.lowmem.plan(model.decoder, (1, 256, 256, 256), budget="15GB",
                                   dtype=torch.float16, device="cuda")
        print(p.describe())
    """
    config = make_config(budget, tiles, storage, batch)
    device = torch.device(device)
    program, shape, shapes = _describe_for_plan(module, shape)
    itemsize = torch.empty((), dtype=dtype).element_size()
    resolved = config.budget if config.budget != budgets.AUTO else budgets.available(device)
    return make_plan(program, shapes, itemsize, device.type, shape[0],
                     budget=None if resolved == budgets.LEAN else resolved,
                     tiles=config.tiles, storage=config.storage, batch=config.batch)
