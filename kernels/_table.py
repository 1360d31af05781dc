"""Configuration tables: everything a kernel can launch, read by its launcher and the compile gate.

Each op's ``*_table.py`` lists every configuration its launcher may pick as :class:`Config`
entries of one :class:`Table` (flash-attention's generated instantiation list is the model: the
compiled set is the dispatch table). The launcher plans a launch, then asks the table for the
entry (:meth:`Table.pick`); an entry that is not there is a bug and raises
:class:`OutsideTableError`. The ahead-of-time compile gate (``tests/compile_gate.py``) compiles
every entry for each of its architectures and checks what the entry promises: no spills, at
most 255 registers, the occupancy it states (:func:`ctas_per_sm`), shared memory within the
architecture's limit, tensor-core instructions where it multiplies matrices, 128-bit loads where
it streams. Plain data: importing this imports no triton.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field, replace


@dataclass(frozen=True)
class Arch:
    """What bounds occupancy on one GPU architecture."""

    name: str
    capability: int
    shared_per_block: int  # bytes one CTA may use
    shared_per_sm: int  # bytes all CTAs of one SM share (each also reserves 1 KB)
    registers_per_sm: int = 65536
    threads_per_sm: int = 2048
    max_ctas_per_sm: int = 32


ARCHS = {
    "sm_80": Arch("sm_80", 80, 163 * 1024, 164 * 1024),
    "sm_90a": Arch("sm_90a", 90, 227 * 1024, 228 * 1024),
}


def arch_for(capability: int) -> str:
    """The table architecture whose entries a device of ``capability`` launches (``major * 10 +
    minor``): sm_90a from Hopper on, sm_80 below (older GPUs run the sm_80 entries ungated)."""
    return "sm_90a" if capability >= 90 else "sm_80"


def ctas_per_sm(arch: Arch, registers: int, threads: int, shared: int) -> int:
    """Resident CTAs per SM: ``min(65536 // (r * t), smem_per_sm // (m + 1024), 2048 // t, 32)``
    with ``r`` registers per thread rounded up to the allocation unit (256 per warp: 8 per
    thread), ``t`` threads per CTA and ``m`` bytes of shared memory per CTA."""
    rounded = -(-max(registers, 1) // 8) * 8
    return min(
        arch.registers_per_sm // (rounded * threads),
        arch.shared_per_sm // (shared + 1024),
        arch.threads_per_sm // threads,
        arch.max_ctas_per_sm,
    )


class OutsideTableError(RuntimeError):
    """A launcher planned a configuration its table does not list (a bug: the gate never
    compiled it)."""


def _items(d: dict) -> tuple:
    return tuple(sorted(d.items()))


@dataclass(frozen=True)
class Config:
    """One configuration of one kernel: what the launcher chooses that changes the compiled code.

    ``pointers`` gives the Triton element type of every pointer argument (``"fp16"``, ``"fp32"``,
    ``"i64"``), ``constexprs`` the compile-time arguments (flags, tile sizes, split modes, head
    size). ``occupancy`` maps each architecture the launcher picks the entry on to the CTAs per
    SM it promises. The rest tells the gate how the runtime specialises the launch at aligned
    shapes (``ones``: integer arguments the launcher always passes as 1, which the JIT turns into
    constants; ``unaligned``: integer arguments compiled as not 16-divisible; ``floats``: fp32
    scalars; every other integer and pointer is 16-divisible) and what the SASS must show.
    """

    kernel: str
    pointers: tuple
    constexprs: tuple
    num_warps: int
    num_stages: int
    occupancy: tuple = ()
    ones: tuple = ()  # sorted
    unaligned: tuple = ()
    floats: tuple = ()
    tensor_cores: bool = False
    wide_loads: bool = False

    @staticmethod
    def make(kernel: str, pointers: dict, constexprs: dict, num_warps: int, num_stages: int,
             occupancy: dict, **gate) -> "Config":
        if "ones" in gate:
            gate["ones"] = tuple(sorted(gate["ones"]))
        return Config(kernel, _items(pointers), _items(constexprs), num_warps, num_stages,
                      _items(occupancy), **gate)

    @property
    def key(self) -> tuple:
        return key(self.kernel, self.pointers, self.constexprs, self.ones, self.num_warps, self.num_stages)

    @property
    def archs(self) -> tuple:
        return tuple(arch for arch, _ in self.occupancy)

    @functools.cached_property
    def launch_options(self) -> dict:
        """Keyword arguments of ``kernel[grid](...)``: the constexprs, warps and stages."""
        return dict(self.constexprs, num_warps=self.num_warps, num_stages=self.num_stages)

    @property
    def name(self) -> str:
        """Readable and unique: pointer types (in argument-name order), constexprs, unit strides."""
        flags = ",".join(f"{k}={int(v) if isinstance(v, bool) else v}" for k, v in self.constexprs)
        types = "/".join(t for _, t in self.pointers)
        return f"{self.kernel}[{types}|{flags}|1={','.join(self.ones)}|w{self.num_warps}s{self.num_stages}]"


def key(kernel: str, pointers, constexprs, ones, num_warps: int, num_stages: int) -> tuple:
    """What identifies a configuration: everything that changes the compiled code (mappings as
    dicts or sorted item tuples; ``ones``: the unit strides, which select the layout)."""
    if isinstance(pointers, dict):
        pointers = _items(pointers)
    if isinstance(constexprs, dict):
        constexprs = _items(constexprs)
    return (kernel, pointers, constexprs, tuple(sorted(ones)), num_warps, num_stages)


@dataclass
class Table:
    """The configurations of one op's kernels; ``modules`` name the modules whose ``@triton.jit``
    functions the entries name."""

    op: str
    modules: tuple
    entries: tuple
    _by_key: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        # one entry per key: the same configuration listed for two architectures is merged
        for entry in self.entries:
            known = self._by_key.get(entry.key)
            if known is not None:
                if set(known.archs) & set(entry.archs):
                    raise ValueError(f"{self.op} table lists {entry.name} twice for one architecture")
                entry = replace(known, occupancy=tuple(sorted(known.occupancy + entry.occupancy)))
            self._by_key[entry.key] = entry
        self.entries = tuple(self._by_key.values())

    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self):
        return iter(self.entries)

    def pick(self, arch: str, kernel: str, pointers: dict, constexprs: dict, num_warps: int,
             num_stages: int, ones=()) -> Config:
        """The entry for this launch on ``arch``; :class:`OutsideTableError` if the table has none."""
        entry = self._by_key.get(key(kernel, pointers, constexprs, ones, num_warps, num_stages))
        if entry is None or arch not in entry.archs:
            where = "no entry" if entry is None else f"an entry only for {', '.join(entry.archs)}"
            raise OutsideTableError(
                f"{self.op}: {kernel} with {pointers}, {constexprs}, unit strides {tuple(ones)}, "
                f"{num_warps} warps, {num_stages} stages on {arch}: the table has {where} (a launcher "
                "bug: add it to the table, where the compile gate checks it, or plan inside the table)"
            )
        return entry

    def find(self, arch: str, candidate: Config) -> Config:
        """The table's entry with ``candidate``'s key (a configuration a planner described with
        the table module's own constructors); raises as :meth:`pick`."""
        return self.pick(arch, candidate.kernel, candidate.pointers, candidate.constexprs, candidate.num_warps,
                         candidate.num_stages, candidate.ones)

    def jit_function(self, kernel: str):
        """The ``@triton.jit`` function an entry names (imports its module, hence triton)."""
        import importlib

        for module in self.modules:
            fn = getattr(importlib.import_module(module), kernel, None)
            if fn is not None:
                return fn
        raise LookupError(f"{self.op}: no kernel {kernel!r} in {', '.join(self.modules)}")

    def contains(self, arch: str, entry_key: tuple) -> bool:
        entry = self._by_key.get(entry_key)
        return entry is not None and arch in entry.archs


@dataclass
class Launch:
    """One planned kernel launch: a table entry, the ``@triton.jit`` function, grid, arguments."""

    config: Config
    kernel: object
    grid: tuple
    args: tuple

    def __call__(self) -> None:
        self.kernel[self.grid](*self.args, **self.config.launch_options)


def launch_strides(t) -> tuple[int, ...]:
    """A tensor's strides for a launch; 0 for a dimension of size 1 (never stepped along), so that
    a batch of one keeps the other arguments' 16-divisibility, which the compiled code relies on."""
    return tuple(0 if size == 1 else stride for size, stride in zip(t.shape, t.stride()))


def run(launches) -> None:
    for launch in launches:
        launch()
