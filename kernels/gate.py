"""What the ahead-of-time compile gate compiles: one :class:`GateConfig` per kernel configuration.

Each kernel module's ``gate_configs()`` returns these for every configuration its launcher can
choose; ``tests/compile_gate.py`` compiles them for sm_80 and sm_90a without a GPU and checks
registers, spills, shared memory and instructions. Plain data: importing this imports no triton.
"""

from __future__ import annotations

from dataclasses import dataclass, field

#: arch name -> (compute capability, shared memory per block in bytes)
TARGETS = {"sm_80": (80, 163 * 1024), "sm_90a": (90, 227 * 1024)}


@dataclass
class GateConfig:
    """One compilation of one kernel: what the launcher would pass at run time.

    ``signature`` maps every argument name to its Triton type (``"*fp16"``, ``"i32"``,
    ``"fp32"``, ``"constexpr"``); ``constexprs`` gives the constexpr values; ``aligned`` names the
    pointer and integer arguments the runtime would mark 16-divisible at aligned shapes.
    ``tensor_cores`` / ``wide_loads`` say what the SASS must contain.
    """

    name: str
    kernel: object
    signature: dict
    constexprs: dict = field(default_factory=dict)
    aligned: tuple = ()
    num_warps: int = 4
    num_stages: int = 3
    tensor_cores: bool = False
    wide_loads: bool = False
    archs: tuple = tuple(TARGETS)
