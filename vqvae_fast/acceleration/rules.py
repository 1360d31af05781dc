"""How a block is recognised and converted: one :class:`Rule` per kind of slow block.

Blocks are recognised by class name and structure (the attributes the fast forward reads), never
by importing the library that defined them, so copies of taming's modules (LDM, CogView, ...)
are recognised too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch.nn as nn


@dataclass(frozen=True)
class Rule:
    """One kind of slow block and how to make it fast.

    ``unsupported(block)`` returns why this particular block cannot be converted (an option
    the fast block does not implement) or ``None``; ``convert(block)`` returns the fast block,
    sharing the slow block's parameters; ``already_fast(block)`` recognises a block an earlier
    conversion modified in place. ``descend`` says whether the walk continues into the
    converted block's children (containers such as an Encoder) or stops (leaf blocks).
    """

    kind: str
    op: str
    class_names: tuple[str, ...]
    attributes: tuple[str, ...]
    convert: Callable[[nn.Module], nn.Module]
    unsupported: Callable[[nn.Module], str | None] = lambda block: None
    descend: bool = False
    already_fast: Callable[[nn.Module], bool] = lambda block: False

    def named(self, block: nn.Module) -> bool:
        return type(block).__name__ in self.class_names

    def missing(self, block: nn.Module) -> list[str]:
        return [a for a in self.attributes if not hasattr(block, a)]


# -- structure checks shared by the rule sets ---------------------------------------------------


def group_norm_problem(norm, name: str) -> str | None:
    if not isinstance(norm, nn.GroupNorm):
        return f"{name} is a {type(norm).__name__}, not a GroupNorm"
    return None


def conv_problem(conv, name: str, *, kernel: int, stride: int = 1, padding: int | None = None) -> str | None:
    if not isinstance(conv, nn.Conv2d):
        return f"{name} is a {type(conv).__name__}, not a Conv2d"
    if conv.kernel_size != (kernel, kernel) or conv.stride != (stride, stride):
        return f"{name} is a {conv.kernel_size} conv with stride {conv.stride}, expected {kernel}x{kernel} stride {stride}"
    if padding is not None and conv.padding != (padding, padding):
        return f"{name} has padding {conv.padding}, expected {padding}"
    if conv.groups != 1 or conv.dilation != (1, 1) or conv.padding_mode != "zeros":
        return f"{name} uses groups/dilation/padding_mode the fast block does not implement"
    return None


def first_problem(*problems: str | None) -> str | None:
    for p in problems:
        if p is not None:
            return p
    return None
