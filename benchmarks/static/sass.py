"""What the SASS of one compiled kernel says about its speed: the instruction mix and the hot loop.

Input: the text of ``cuobjdump -sass`` on a cubin. Output: :class:`SassFacts`, counts of the
instructions that matter for a performance estimate, over the whole kernel (``total``) and over
its *hot loop* (``loop``): the innermost loop (a backward branch) that holds the most
tensor-core instructions, or, in a kernel without them, the most global loads. Static counts:
an instruction inside a loop is counted once, not once per trip.

Categories (the opcode's first word, modifiers aside):

=============  ====================================================================
``hgmma``      ``HGMMA`` warpgroup MMA (sm_90a; operands from shared memory)
``hmma``       ``HMMA`` warp MMA (sm_80, or sm_90 without warpgroup MMAs)
``ffma``       ``FFMA`` fp32 fused multiply-add (CUDA cores)
``fp32_other`` ``FMUL``, ``FADD``, ``FMNMX``, ``MUFU``; ``mufu``: of them the ``MUFU``
               (exp2, rcp, ...: a quarter of the issue rate)
``ldg``        ``LDG`` global load into registers (``ldg_128``: of them, 128-bit)
``ldgsts``     ``LDGSTS`` asynchronous global -> shared copy (``cp.async``)
``tma``        ``UTMALDG`` / ``UBLKCP`` tensor-memory-accelerator copies (sm_90)
``stg``        ``STG`` global store; ``atom``: ``ATOM``/``RED`` global atomics
``bar``        ``BAR.SYNC`` / ``BAR.RED``: CTA-wide barriers
``depbar``     ``DEPBAR`` waits for ``cp.async`` groups; ``wgdepbar``: ``WARPGROUP.DEPBAR``
               waits for warpgroup MMAs; ``syncs``: ``SYNCS`` mbarrier waits (TMA)
=============  ====================================================================

Software pipelining (``cp.async_stages``): in a loop that copies with ``LDGSTS``, each
``LDGDEPBAR`` closes a group of copies and ``DEPBAR.LE SB0, n`` waits until at most ``n``
groups are still in flight. The smallest ``n`` the loop waits for, over the groups it issues per
trip, is how many trips ahead its loads run: ``stages_in_effect = 1 + n // groups_per_trip``.
``1`` means the loads of the next block are waited on before the block is used -- load latency
is exposed every trip, whatever ``num_stages`` the configuration asked for. A loop that copies
with TMA (``UTMALDG``) waits on mbarriers instead; there the entry's ``num_stages`` is taken.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

_LINE = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(@!?U?P[T0-9]+\s+)?([A-Z][A-Z0-9_]*)((?:\.[A-Z0-9_x]+)*)\s*([^;]*);")
_BRANCH_TARGET = re.compile(r"0x([0-9a-f]+)")
_DEPBAR_LE = re.compile(r"SB0\s*,\s*0x([0-9a-f]+)")

CATEGORIES = ("hgmma", "hmma", "ffma", "fp32_other", "mufu", "ldg", "ldg_128", "ldgsts", "tma", "stg", "atom", "bar",
              "depbar", "wgdepbar", "syncs", "lds", "sts", "instructions")


@dataclass
class Counts:
    hgmma: int = 0
    hmma: int = 0
    ffma: int = 0
    fp32_other: int = 0
    mufu: int = 0
    ldg: int = 0
    ldg_128: int = 0
    ldgsts: int = 0
    tma: int = 0
    stg: int = 0
    atom: int = 0
    bar: int = 0
    depbar: int = 0
    wgdepbar: int = 0
    syncs: int = 0
    lds: int = 0
    sts: int = 0
    instructions: int = 0

    @property
    def tensor(self) -> int:
        return self.hgmma + self.hmma


@dataclass
class SassFacts:
    total: Counts = field(default_factory=Counts)
    loop: Counts = field(default_factory=Counts)  # the hot loop; all zero when there is none
    loops: int = 0  # backward branches
    loop_depth: int = 0  # how many loops enclose the hot loop's body (1: not nested)
    ldgdepbar_per_trip: int = 0  # cp.async groups the hot loop closes per trip
    depbar_min_pending: int | None = None  # smallest n of "DEPBAR.LE SB0, n" in the hot loop
    mma_shapes: tuple = ()  # distinct HGMMA/HMMA shapes, e.g. "64x256x16.F32.BF16"
    #: per trip of the hot loop, summed over its MMA instructions as one issuer (a warpgroup for
    #: HGMMA, a warp for HMMA) executes them: FLOPs, and bytes of operands read from shared memory
    #: by HGMMA (its B operand always, A when it is a descriptor rather than registers)
    loop_mma_flops: int = 0
    #: instructions of the loop that encloses the hot loop, outside the hot loop (per outer trip:
    #: a nested loop's epilogue, e.g. argmin's per-tile minimum); 0 when the hot loop is outermost
    outer_instructions: int = 0
    loop_mma_shared_bytes: int = 0

    @property
    def stages_in_effect(self) -> int | None:
        """Trips of the hot loop whose loads are in flight at once (1: none ahead); ``None`` for
        a loop that copies with TMA, whose mbarrier waits do not say it (take the entry's
        ``num_stages``)."""
        if self.loop.tma and not self.loop.ldgsts:
            return None
        if not self.loop.ldgsts or self.depbar_min_pending is None or not self.ldgdepbar_per_trip:
            return 1
        return 1 + self.depbar_min_pending // self.ldgdepbar_per_trip

    def as_dict(self) -> dict:
        d = asdict(self)
        d["mma_shapes"] = list(self.mma_shapes)
        return d

    @staticmethod
    def from_dict(d: dict) -> "SassFacts":
        d = dict(d)
        d["total"], d["loop"] = Counts(**d["total"]), Counts(**d["loop"])
        d["mma_shapes"] = tuple(d.get("mma_shapes", ()))
        return SassFacts(**d)


_MMA_SHAPE = re.compile(r"\.(\d+)x(\d+)x(\d+)")
_OPERAND_BYTES = {"BF16": 2, "F16": 2, "TF32": 4, "E4M3": 1, "E5M2": 1, "S8": 1, "U8": 1}


def _mma_cost(i: "_Instr") -> tuple[int, int]:
    """``(FLOPs, shared-memory operand bytes)`` of one MMA instruction for its issuer."""
    if i.op == "HMMA" and i.mods.startswith(".16816"):
        m, n, k = 16, 8, 16
    elif i.op == "HMMA" and i.mods.startswith(".1688"):
        m, n, k = 16, 8, 8
    else:
        shape = _MMA_SHAPE.match(i.mods)
        if not shape:
            return 0, 0
        m, n, k = map(int, shape.groups())
    size = next((b for t, b in _OPERAND_BYTES.items() if f".{t}" in i.mods.split(".F32", 1)[-1]), 2)
    shared = 0
    if i.op == "HGMMA":
        a_operand = i.operands.split(",")[1].strip() if "," in i.operands else ""
        shared = n * k * size + (0 if a_operand.startswith("R") else m * k * size)
    return 2 * m * n * k, shared


def _category(op: str, mods: str, operands: str) -> tuple[str, ...]:
    if op == "HGMMA":
        return ("hgmma",)
    if op == "HMMA":
        return ("hmma",)
    if op == "FFMA":
        return ("ffma",)
    if op == "MUFU":
        return ("fp32_other", "mufu")
    if op in ("FMUL", "FADD", "FMNMX"):
        return ("fp32_other",)
    if op == "LDG":
        return ("ldg", "ldg_128") if ".128" in mods else ("ldg",)
    if op == "LDGSTS":
        return ("ldgsts",)
    if op in ("UTMALDG", "UBLKCP", "UTMAPF"):
        return ("tma",)
    if op == "STG":
        return ("stg",)
    if op in ("ATOM", "ATOMG", "RED", "REDG"):
        return ("atom",)
    if op == "BAR" and (mods.startswith(".SYNC") or mods.startswith(".RED")):
        return ("bar",)
    if op == "DEPBAR":
        return ("depbar",)
    if op == "WARPGROUP" and mods.startswith(".DEPBAR"):
        return ("wgdepbar",)
    if op == "SYNCS":
        return ("syncs",)
    if op in ("LDS", "LDSM"):
        return ("lds",)
    if op in ("STS", "STSM"):
        return ("sts",)
    return ()


@dataclass(frozen=True)
class _Instr:
    addr: int
    op: str
    mods: str
    operands: str


def parse(sass: str) -> list[_Instr]:
    """The instructions of the first function in ``sass``, in address order."""
    out = []
    for m in _LINE.finditer(sass):
        out.append(_Instr(int(m.group(1), 16), m.group(3), m.group(4), m.group(5)))
    return out


def _count(instrs) -> Counts:
    c = Counts()
    for i in instrs:
        c.instructions += 1
        for cat in _category(i.op, i.mods, i.operands):
            setattr(c, cat, getattr(c, cat) + 1)
    return c


def analyse(sass: str) -> SassFacts:
    instrs = parse(sass)
    facts = SassFacts(total=_count(instrs))
    shapes = sorted({(i.op + i.mods).split(".", 1)[1] for i in instrs if i.op in ("HGMMA", "HMMA") and i.mods})
    facts.mma_shapes = tuple(shapes)
    loops = []  # (start, end) addresses of backward branches
    for i in instrs:
        if i.op == "BRA":
            target = _BRANCH_TARGET.search(i.operands)
            if target and int(target.group(1), 16) <= i.addr:
                loops.append((int(target.group(1), 16), i.addr))
    facts.loops = len(loops)
    if not loops:
        return facts
    bodies = {span: [i for i in instrs if span[0] <= i.addr <= span[1]] for span in loops}
    counts = {span: _count(body) for span, body in bodies.items()}

    def innermost(span):  # no other loop strictly inside
        return not any(o != span and span[0] <= o[0] and o[1] <= span[1] for o in loops)

    # the most MMAs; of loops with as many (an outer loop holds its inner loop's), the innermost
    hot = max(loops, key=lambda s: (counts[s].tensor, innermost(s), counts[s].ldg + counts[s].ldgsts + counts[s].tma,
                                    -(s[1] - s[0])))
    facts.loop = counts[hot]
    facts.loop_depth = sum(1 for o in loops if o[0] <= hot[0] and hot[1] <= o[1])
    body = bodies[hot]
    enclosing = [o for o in loops if o != hot and o[0] <= hot[0] and hot[1] <= o[1]]
    if enclosing:
        parent = min(enclosing, key=lambda o: o[1] - o[0])
        facts.outer_instructions = counts[parent].instructions - counts[hot].instructions
    facts.ldgdepbar_per_trip = sum(1 for i in body if i.op == "LDGDEPBAR")
    pending = [int(m.group(1), 16) for i in body if i.op == "DEPBAR" for m in [_DEPBAR_LE.search(i.operands)] if m]
    facts.depbar_min_pending = min(pending) if pending else None
    for i in body:
        if i.op in ("HGMMA", "HMMA"):
            flops, shared = _mma_cost(i)
            facts.loop_mma_flops += flops
            facts.loop_mma_shared_bytes += shared
    return facts
