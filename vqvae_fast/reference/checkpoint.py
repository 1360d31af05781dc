"""Loading taming / LDM checkpoints: plain state_dicts or Lightning files."""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import torch
import torch.nn as nn


@dataclass
class CheckpointReport:
    """What ``load_checkpoint`` did: the keys it loaded and those it ignored."""

    loaded: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        text = f"loaded {len(self.loaded)} tensors"
        if self.ignored:
            shown = ", ".join(self.ignored[:8]) + (", ..." if len(self.ignored) > 8 else "")
            text += f"; ignored {len(self.ignored)} keys the model does not own: {shown}"
        return text


def read_state_dict(path_or_dict, *, weights_only: bool = True) -> Mapping[str, torch.Tensor]:
    """The state_dict inside ``path_or_dict``: a path, a state_dict, or a Lightning checkpoint."""
    if isinstance(path_or_dict, (str, os.PathLike)):
        try:
            checkpoint = torch.load(path_or_dict, map_location="cpu", weights_only=weights_only)
        except pickle.UnpicklingError as err:
            raise ValueError(
                f"path_or_dict {os.fspath(path_or_dict)!r} holds Python objects besides tensors "
                "(old Lightning checkpoints do); if you trust the file, pass weights_only=False"
            ) from err
    elif isinstance(path_or_dict, Mapping):
        checkpoint = path_or_dict
    else:
        raise TypeError(
            f"path_or_dict must be a path or a dict, got {type(path_or_dict).__name__}"
        )
    state = checkpoint.get("state_dict", checkpoint)
    if not isinstance(state, Mapping):
        raise ValueError("path_or_dict['state_dict'] must be a dict of tensors")
    return state


def load_checkpoint(
    model: nn.Module,
    path_or_dict,
    *,
    ignore_keys: Sequence[str] = (),
    weights_only: bool = True,
) -> CheckpointReport:
    """Load a checkpoint into ``model`` after checking it covers every key the model owns.

    Args:
        model: the module to load into (its parameters are updated in place).
        path_or_dict: a file saved by ``torch.save``, a state_dict, or a Lightning checkpoint
            (a dict whose ``"state_dict"`` also holds ``loss.*`` and other foreign keys).
        ignore_keys: key prefixes to drop from the checkpoint first (taming's ``ignore_keys``).
        weights_only: passed to ``torch.load`` for paths.

    Raises ``ValueError`` naming the first keys that are missing or have the wrong shape;
    nothing is loaded then. Keys the model does not own are ignored and listed in the report.
    """
    state = read_state_dict(path_or_dict, weights_only=weights_only)
    state = {k: v for k, v in state.items() if not any(k.startswith(p) for p in ignore_keys)}
    own = model.state_dict()

    missing = [k for k in own if k not in state]
    if missing:
        shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
        raise ValueError(f"checkpoint is missing {len(missing)} keys of the model: {shown}")
    for key, value in own.items():
        found = state[key]
        if not isinstance(found, torch.Tensor):
            raise ValueError(f"checkpoint key {key!r} is a {type(found).__name__}, not a tensor")
        if found.shape != value.shape:
            raise ValueError(
                f"checkpoint key {key!r} has shape {tuple(found.shape)}, the model expects {tuple(value.shape)}"
            )

    model.load_state_dict({k: state[k] for k in own}, strict=True)
    return CheckpointReport(loaded=list(own), ignored=sorted(k for k in state if k not in own))


class CheckpointMixin:
    """Adds ``model.load_checkpoint(path_or_dict)`` to a module."""

    def load_checkpoint(self, path_or_dict, *, ignore_keys: Sequence[str] = (), weights_only: bool = True):
        return load_checkpoint(self, path_or_dict, ignore_keys=ignore_keys, weights_only=weights_only)
