"""Exact low-memory execution of autoencoders: bounded memory, the plain forward's result.

``vqvae_fast.memory_budget(model, budget)`` makes every encoder and decoder in ``model`` run as
layer-synchronous tiles: each convolution over tiles with halos wide enough to be exact, each
group norm with statistics merged over all tiles before any tile goes on, attention whole at
its (small) resolution, tiles kept on the device or in pinned host memory as the budget says.
``model.decode(z)`` and ``model.encode(x)`` are unchanged. ``docs/low-memory.md`` explains the
execution, the memory model and how to add a block type.

Modules: ``layers`` (the layer kinds blocks are described by), ``adapters`` (one function per
block type; ``adapters_taming``, ``adapters_diffusers``), ``program`` (layers to passes),
``geometry`` (tiles and windows), ``stats`` (group-norm statistics merged across tiles),
``storage`` (device and host tiles), ``executor``, ``planner`` (memory model, budget search),
``budget`` (``"auto"``), ``install`` (``memory_budget``), ``switches`` (``enable_tiling``).
"""

from __future__ import annotations

from .install import LowMemoryConfig, LowMemoryModule, last_plan, memory_budget, minimum_budget, plan
from .layers import Unsupported
from .planner import Plan
from .switches import TilingSwitches

__all__ = ["LowMemoryConfig", "LowMemoryModule", "Plan", "TilingSwitches", "Unsupported", "last_plan",
           "memory_budget", "minimum_budget", "plan"]
