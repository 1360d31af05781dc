"""What ``accelerate`` did to a model: blocks replaced, blocks left alone and why."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch.nn as nn


@dataclass(frozen=True)
class Replacement:
    name: str  # qualified module name in the model ("" for the model itself)
    original: str  # class of the slow block, with its module path
    fast: str  # class it was replaced by
    op: str  # the vqvae_fast op the new block is built on


@dataclass(frozen=True)
class LeftAlone:
    name: str
    cls: str
    reason: str


@dataclass
class AccelerationReport:
    """The outcome of :func:`vqvae_fast.accelerate`.

    ``model`` is the accelerated model: the object passed in (``inplace=True``) or its copy,
    except when the model itself was a block that got replaced.
    """

    model: nn.Module
    replaced: list[Replacement] = field(default_factory=list)
    left_alone: list[LeftAlone] = field(default_factory=list)
    already_fast: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"accelerated {len(self.replaced)} blocks"
                 f" ({len(self.already_fast)} already fast, {len(self.left_alone)} left alone)"]
        for r in self.replaced:
            lines.append(f"  replaced {r.name or '<model>'}: {r.original} -> {r.fast} [{r.op}]")
        for a in self.left_alone:
            lines.append(f"  left     {a.name or '<model>'} ({a.cls}): {a.reason}")
        return "\n".join(lines)


def class_path(module: nn.Module) -> str:
    cls = type(module)
    return f"{cls.__module__}.{cls.__qualname__}"
