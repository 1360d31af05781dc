"""Block adapters: how a module is described as layers (``layers.py``), one function per block type.

The low-memory executor never calls a block's ``forward`` (except :class:`~.layers.Whole`
blocks, run as they are): it runs the block's layers. An adapter is registered for a class
*name* (blocks are recognised by name and structure, never by importing the library that defined
them, as ``vqvae_fast.accelerate`` does) and returns the layers, ``None`` when the structure is
not the one it knows (the next adapter for that name is tried), or raises
:class:`~.layers.Unsupported` with the reason. Containers (an Encoder, a Decoder, a diffusers
up block) are adapters too: they describe their children with ``walk``.

Adding a block type is one adapter::

    from vqvae_fast.lowmem import adapters, layers

    def my_block(block, walk):
        return [layers.Save(), layers.Norm(block.norm, silu=True),
                layers.Conv(block.conv, layers.symmetric_padding(block.conv)), layers.Residual()]

    adapters.register(("MyBlock",), my_block)

The taming / LDM / vqvae_fast blocks are in ``adapters_taming.py``, diffusers' in
``adapters_diffusers.py``; ``docs/low-memory.md`` lists the layer kinds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn

from .layers import Unsupported


@dataclass(frozen=True)
class Adapter:
    describe: Callable  # (module, walk) -> list of layers, or None: not this structure
    before: Callable | None = None  # (module, x) -> None: the container's input checks
    container: bool = False  # a whole encoder / decoder: what memory_budget() configures


_ADAPTERS: dict[str, list[Adapter]] = {}
_LOADED = False


def register(class_names, describe: Callable, before: Callable | None = None, container: bool = False) -> None:
    """Register ``describe(module, walk)`` for modules whose class is named in ``class_names``;
    adapters registered later are tried first. ``container=True`` marks a whole encoder or
    decoder (what :func:`vqvae_fast.memory_budget` looks for in a model); ``before(module, x)``
    then runs the checks (and bookkeeping) its own ``forward`` does on the input first."""
    if isinstance(class_names, str):
        class_names = (class_names,)
    for name in class_names:
        _ADAPTERS.setdefault(name, []).insert(0, Adapter(describe, before, container))


def _load_builtin() -> None:
    global _LOADED
    if not _LOADED:
        _LOADED = True
        from . import adapters_diffusers, adapters_taming  # noqa: F401  (they register on import)


def _class_path(module) -> str:
    cls = type(module)
    return f"{cls.__module__}.{cls.__qualname__}"


def find(module: nn.Module, path: str = "", containers_only: bool = False) -> tuple[Adapter, list] | None:
    """The first adapter whose structure ``module`` has, with its layers, or ``None``; raises
    :class:`Unsupported` (naming ``path``) when that adapter cannot describe it."""
    _load_builtin()
    for adapter in _ADAPTERS.get(type(module).__name__, ()):
        if containers_only and not adapter.container:
            continue
        try:
            layers = adapter.describe(module, _walker(path))
        except Unsupported as err:
            message = str(err)
            raise Unsupported(message if message.startswith("low-memory:") else
                              f"low-memory: {path or 'the model'} ({_class_path(module)}): {message}") from None
        if layers is not None:
            return adapter, layers
    return None


def describe(module: nn.Module, path: str = "") -> list:
    """The layers of ``module`` (named ``path`` in error messages); raises :class:`Unsupported`."""
    found = find(module, path)
    if found is not None:
        return found[1]
    where = path or "the model"
    raise Unsupported(f"low-memory: {where} is a {_class_path(module)}, for which no low-memory adapter is "
                      "registered (vqvae_fast.lowmem.adapters.register; see docs/low-memory.md)")


def _walker(path: str):
    def walk(module: nn.Module, name: str) -> list:
        return describe(module, f"{path}.{name}" if path else name)

    return walk


# -- checks shared by the adapters ---------------------------------------------------------------


def norm_like(module, name: str):
    """``module`` if it has a group norm's ``num_groups``, ``eps``, ``weight``, ``bias``."""
    if not all(hasattr(module, a) for a in ("num_groups", "eps", "weight", "bias")):
        raise Unsupported(f"{name} is a {type(module).__name__}, not a GroupNorm")
    return module


def conv2d(module, name: str) -> nn.Conv2d:
    if not isinstance(module, nn.Conv2d):
        raise Unsupported(f"{name} is a {type(module).__name__}, not a Conv2d")
    return module


def no_dropout(dropout, name: str) -> None:
    """Dropout that is active (training mode, p > 0) makes the result random: not supported."""
    if isinstance(dropout, nn.Dropout) and dropout.training and dropout.p > 0:
        raise Unsupported(f"{name} is active (training mode, p={dropout.p}); call eval() first")


def attention_memory(fast: bool) -> Callable[[int, int, int], int]:
    """Bytes an attention block allocates beyond its input and output: the normalised input,
    q/k/v and the attention output (about five inputs' worth), and a block of fp32 logits (the
    chunked implementation's 64 MiB, or all ``B N^2`` of them for a block that is not ours)."""
    def memory(input_bytes: int, batch: int, positions: int) -> int:
        logits = 64 * 2**20 if fast else batch * positions * positions * 4
        return 5 * input_bytes + min(logits, batch * positions * positions * 4)

    return memory


def run_whole(block: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda x: block(x)
