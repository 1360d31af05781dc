"""``vqvae_fast.accelerate(model)``: make an existing autoencoder fast in place.

Walks the model and replaces every block it recognises (taming / LDM / CogView copies of
taming's modules, vqvae_fast's reference, diffusers' autoencoder blocks, icetk's HVQVAE) by a
fast block that shares the same parameter tensors: the state_dict, its keys and any optimiser
keep working.
"""

from __future__ import annotations

import copy
from typing import Iterable

import torch.nn as nn

from .report import AccelerationReport, LeftAlone, Replacement, class_path
from .rules import Rule

#: Categories a caller can select with ``ops=``: the four ops and the folded upsampling conv.
OPS = ("group_norm_silu", "spatial_attention", "codebook_argmin", "padded_conv2d", "upsample_conv")


def _rules() -> tuple[Rule, ...]:
    from . import diffusers, icetk, taming

    return taming.RULES + diffusers.RULES + icetk.RULES


def _is_fast(module: nn.Module) -> bool:
    """Blocks this package created (accelerating twice leaves them alone)."""
    cls = type(module)
    return cls.__module__.startswith("vqvae_fast.") and not cls.__module__.startswith("vqvae_fast.reference")


def _selected_ops(ops) -> frozenset[str]:
    if ops == "all":
        return frozenset(OPS)
    if isinstance(ops, str):
        ops = [ops]
    if not isinstance(ops, Iterable):
        raise TypeError(f"ops must be 'all' or a list of names from {list(OPS)}, got {ops!r}")
    ops = list(ops)
    unknown = [o for o in ops if o not in OPS]
    if unknown:
        raise ValueError(f"ops must name entries of {list(OPS)}, got unknown {unknown}")
    return frozenset(ops)


def accelerate(model: nn.Module, *, ops="all", inplace: bool = True) -> AccelerationReport:
    """Replace the slow blocks of ``model`` by fast blocks sharing their parameters.

    Args:
        model: any ``nn.Module`` holding taming / LDM / vqvae_fast-reference, diffusers or
            icetk autoencoder blocks (or such a block itself).
        ops: ``"all"`` or the categories to accelerate, from :data:`OPS`: ``group_norm_silu``
            (resnet blocks and the encoder/decoder output heads), ``spatial_attention``
            (attention blocks), ``codebook_argmin`` (vector quantizers), ``padded_conv2d``
            (downsampling), ``upsample_conv`` (upsampling).
        inplace: modify ``model`` (default) or a deep copy of it.

    Returns an :class:`AccelerationReport` with the accelerated model (``report.model``), each
    replaced block, and each recognised block left alone with the reason (an option the fast
    block does not implement). Results match the original within the ops' tolerances;
    accelerating an accelerated model changes nothing.

    Example::

        report = vqvae_fast.accelerate(vae)
        print(report)
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(inplace, bool):
        raise TypeError(f"inplace must be a bool, got {type(inplace).__name__}")
    selected = _selected_ops(ops)
    if not inplace:
        model = copy.deepcopy(model)
    report = AccelerationReport(model=model)
    rules = _rules()

    def visit(module: nn.Module, name: str) -> nn.Module:
        """Convert ``module`` if a rule applies; return what should sit at ``name``."""
        result, descend = module, True
        named_rules = [r for r in rules if r.named(module)]
        matching = [r for r in named_rules if not r.missing(module)]
        if _is_fast(module) or (matching and matching[0].already_fast(module)):
            report.already_fast.append(name)
            descend = type(module).__module__ == "vqvae_fast.models" or (
                bool(matching) and matching[0].descend
            )
        elif matching:
            rule = matching[0]
            reason = rule.unsupported(module)
            if reason is None and rule.op not in selected:
                reason = f"{rule.op} is not among the selected ops"
            if reason is None:
                result = rule.convert(module)
                report.replaced.append(Replacement(name, class_path(module), class_path(result), rule.op))
                descend = rule.descend
            else:
                report.left_alone.append(LeftAlone(name, class_path(module), reason))
        elif named_rules:
            missing = ", ".join(named_rules[0].missing(module))
            report.left_alone.append(
                LeftAlone(name, class_path(module), f"named like a {named_rules[0].kind} but lacks {missing}")
            )
        if descend:
            for child_name, child in list(result.named_children()):
                new_child = visit(child, f"{name}.{child_name}" if name else child_name)
                if new_child is not child:
                    setattr(result, child_name, new_child)
        return result

    report.model = visit(model, "")
    return report


__all__ = ["OPS", "AccelerationReport", "accelerate"]
