"""The layer kinds a block is described by, for the low-memory executor.

A block adapter (``adapters``) turns a module into a list of these; the executor only ever sees
the list. Every kind but :class:`Whole` is local (a convolution reads a fixed neighbourhood) or a
global reduction the executor knows how to split (:class:`Norm`: per-tile statistics merged
before use), which is what lets the image be cut into tiles with an exact result.

Parameters are read from the modules at run time (never copied here), so a description stays
valid while the weights are trained, loaded or moved.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn


@dataclass(frozen=True, eq=False)
class Norm:
    r"""Group norm of the current tensor over all its positions, then SiLU when ``silu``:
    ``silu(group_norm(x, module.num_groups, module.weight, module.bias, module.eps))``.

    ``module`` is an ``nn.GroupNorm`` or anything with those four attributes. It must be followed
    by a :class:`Conv`, which reads its input through it (normalised while loading).
    """

    module: nn.Module
    silu: bool


@dataclass(frozen=True, eq=False)
class Conv:
    """A convolution of the current tensor with zero padding ``(left, right, top, bottom)``;
    ``upsample=True`` repeats every pixel 2x2 (nearest) first. ``owner`` is the block whose
    derived-weight cache holds the folded upsampling kernel (``vqvae_fast.nn.upsample``)."""

    module: nn.Conv2d
    padding: tuple[int, int, int, int]
    upsample: bool = False
    owner: nn.Module | None = None

    @property
    def kernel(self) -> tuple[int, int]:
        return tuple(self.module.weight.shape[2:])

    @property
    def stride(self) -> tuple[int, int]:
        return tuple(self.module.stride)


@dataclass(frozen=True, eq=False)
class Save:
    """Keep the current tensor under ``name`` for a later :class:`Residual`."""

    name: str = "skip"


@dataclass(frozen=True, eq=False)
class Residual:
    """``(shortcut(saved) + x) / scale``: ``shortcut`` is ``None`` (identity) or a convolution
    (1x1, or kxk with ``padding``) applied to the tensor saved under ``name``."""

    name: str = "skip"
    shortcut: nn.Conv2d | None = None
    padding: tuple[int, int, int, int] = (0, 0, 0, 0)
    scale: float = 1.0


@dataclass(frozen=True, eq=False)
class Whole:
    """A non-local block (attention) run on the whole tensor, which it maps to the same shape.

    ``memory(input_bytes, batch, positions)`` estimates the bytes it allocates beyond its input
    and output; the planner keeps that within the budget.
    """

    fn: Callable[[torch.Tensor], torch.Tensor]
    name: str
    memory: Callable[[int, int, int], int]


@dataclass(frozen=True, eq=False)
class Pointwise:
    """An elementwise function of the current tensor (``torch.tanh``), applied tile by tile."""

    fn: Callable[[torch.Tensor], torch.Tensor]
    name: str


Layer = Norm | Conv | Save | Residual | Whole | Pointwise


class Unsupported(ValueError):
    """This module (or its current state) cannot run in the low-memory executor; the message
    names the module and the reason."""


def symmetric_padding(conv: nn.Conv2d) -> tuple[int, int, int, int]:
    """``conv``'s own padding as ``(left, right, top, bottom)``; raises for what it cannot be."""
    if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
        raise Unsupported(f"a convolution with padding {conv.padding!r} / padding_mode {conv.padding_mode!r}")
    if conv.groups != 1 or tuple(conv.dilation) != (1, 1):
        raise Unsupported("a grouped or dilated convolution")
    ph, pw = conv.padding
    return (pw, pw, ph, ph)
