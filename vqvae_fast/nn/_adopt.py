"""Turn an existing module into an instance of a fast class that shares its parameters."""

from __future__ import annotations

import copy

import torch.nn as nn

# Module internals that must be per-instance containers (the tensors inside stay shared).
_CONTAINERS = ("_parameters", "_buffers", "_modules", "_non_persistent_buffers_set")


def adopt(module: nn.Module, cls: type) -> nn.Module:
    """A new ``cls`` instance with ``module``'s attributes, submodules, parameters and buffers.

    The parameter and buffer tensors and the submodules are the same objects as ``module``'s
    (no copies: optimisers, ``state_dict`` keys and weight tying keep working); the containers
    holding them are new, so registering something on one module does not change the other.
    ``cls`` must read the attributes its ``forward`` needs under the names ``module`` has.
    """
    fast = copy.copy(module)  # shallow: same attribute values, new object
    for name in _CONTAINERS:
        if name in module.__dict__:
            fast.__dict__[name] = copy.copy(module.__dict__[name])
    # an instance-level forward (vqvae_fast.memory_budget's, on a class not ours) is bound to
    # `module`; the new object runs its class's forward, which honours the same configuration
    fast.__dict__.pop("forward", None)
    fast.__class__ = cls
    return fast
