"""How to run a program within a memory budget: tile grids, where each value lives, samples per sweep.

The memory model (bytes on the compute device, beyond the weights and the caller's input):

* **storage** during pass ``p``: every value kept on the device that is alive (produced before
  ``p``, read by ``p`` or later), plus ``p``'s output; a residual sum written over its dead
  input shares that input's storage.
* **working set** of ``p`` for one output tile of ``th x tw``: the input window (halo included;
  normalised into a new buffer while loading), the 2x2-upsampled window where upsampling is
  interpolation (CPU), one more input window for padding copies, layout reorders and the
  convolution's workspace, the output tile twice (the tile, and the copy its statistics, a
  reorder or a crop make), a shortcut convolution's window and output, and, with host
  storage, the next window arriving while this one computes and the last tile leaving. A pass
  whose output is one tile runs the plain ops on whole tensors (the same terms, whole-sized).
* a :class:`~.layers.Whole` pass (attention) adds what its adapter says it allocates.

The peak is the maximum over passes of storage + working set. Each pass gets the coarsest grid
(row bands first, then columns, halving down to :data:`MIN_TILE`) whose working set fits what
the budget leaves beside that pass's storage, and the values of one resolution share the finest
grid any of them got. With no fixed budget ("lean") the budget is the heaviest pass's storage
plus 1/3 of the largest value (at least 16 MiB): about two of the largest activations (a
ResnetBlock's input and its first convolution's output) plus small tiles. With a budget, the
first plan that fits is chosen, trying in order: all values on the device with the whole batch;
fewer samples per sweep; then (CUDA) the largest values kept in pinned host memory, one more at a
time. A budget nothing fits raises ``ValueError`` with the least the input needs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .geometry import Grid
from .layers import Unsupported
from .program import ConvPass, Program, WholePass

MIN_TILE = 8  # rows / columns below which the planner does not cut (users may, with tiles=)
LEAN_FRACTION = 3
LEAN_FLOOR = 16 * 2**20
MiB = 2**20


@dataclass
class Plan:
    batch: int  # samples per sweep
    grids: list[Grid]  # per value
    tiers: list[str]  # per value: "device" or "host"
    stats: list[int]  # per value: groups of the statistics its producer merges (0: none)
    estimate: int  # modelled peak bytes on the compute device
    budget: int | None
    shapes: list[tuple[int, int, int]]
    itemsize: int
    host_traffic: int = 0  # bytes copied between host and device per sweep

    def describe(self) -> str:
        """One line per resolution: size, channels, tiles, where it lives."""
        levels: dict[tuple[int, int], list[int]] = {}
        for v, (c, h, w) in enumerate(self.shapes[1:], start=1):
            levels.setdefault((h, w), []).append(v)
        budget = "lean (no fixed budget)" if self.budget is None else f"{self.budget / MiB:.0f} MiB"
        lines = [f"budget {budget}; modelled peak {self.estimate / MiB:.0f} MiB; {self.batch} sample(s) per sweep"]
        if self.host_traffic:
            lines[0] += f"; {self.host_traffic / MiB:.0f} MiB copied to and from host memory per sweep"
        for (h, w), values in sorted(levels.items(), key=lambda kv: -kv[0][0] * kv[0][1]):
            grids = {self.grids[v].shape for v in values}
            tiers = {self.tiers[v] for v in values}
            largest = max(self.shapes[v][0] for v in values)
            tile = " / ".join(f"{r}x{c}" for r, c in sorted(grids))
            lines.append(f"  {h}x{w}: up to {largest} channels, tiles {tile}, on {'+'.join(sorted(tiers))}")
        return "\n".join(lines)


class MemoryModel:
    def __init__(self, program: Program, shapes, itemsize: int, device_type: str):
        self.program, self.shapes, self.itemsize = program, shapes, itemsize
        self.cpu = device_type != "cuda"

    def value_bytes(self, v: int, batch: int) -> int:
        c, h, w = self.shapes[v]
        return batch * c * h * w * self.itemsize

    def conv_working_set(self, p: ConvPass, th: int, tw: int, batch: int, grids, tiers) -> int:
        c_in, h_in, w_in = self.shapes[p.src]
        c_out = self.shapes[p.dst][0]
        whole = (th, tw) == self.shapes[p.dst][1:]
        if p.conv.upsample:
            wh, ww = min(th // 2 + 2, h_in), min(tw // 2 + 2, w_in)
            conv_in = 4 * wh * ww
        else:
            (kh, kw), (sh, sw) = p.conv.kernel, p.conv.stride
            wh, ww = min((th - 1) * sh + kh, h_in), min((tw - 1) * sw + kw, w_in)
            conv_in = wh * ww
        unit = batch * self.itemsize
        window = unit * c_in * wh * ww
        src_tiles = grids[p.src].count if p.src < len(grids) and grids[p.src] is not None else 1
        if whole:  # plain ops: the gathered input (unless one tile), then the normalised copy
            window = (window if src_tiles > 1 else 0) + (window if p.norm is not None else 0)
        upsampled = unit * c_in * conv_in if p.conv.upsample and self.cpu else 0
        scratch = unit * c_in * conv_in
        out = unit * c_out * th * tw
        total = window + upsampled + scratch + 2 * out  # the tile, and its statistics' (or crop's) copy
        if p.residual is not None and p.residual.shortcut is not None:
            k = p.residual.shortcut.kernel_size[0]
            total += out + unit * self.shapes[p.skip][0] * (th + k - 1) * (tw + k - 1)
        if tiers[p.src] == "host":
            total += window
        if tiers[p.dst] == "host":
            total += out
        return total

    def whole_working_set(self, p: WholePass, batch: int, grids) -> int:
        c, h, w = self.shapes[p.src]
        size = self.value_bytes(p.src, batch)
        gathered = size if grids[p.src] is not None and grids[p.src].count > 1 else 0
        return gathered + p.layer.memory(size, batch, h * w)

    def in_place(self, index: int, p, grids, tiers) -> bool:
        """Whether pass ``index`` writes its residual sum over its dead input."""
        return (isinstance(p, ConvPass) and p.skip not in (None, 0, p.src) and p.residual.shortcut is None
                and self.program.last_use[p.skip] == index and tiers[p.skip] == tiers[p.dst]
                and (tiers[p.dst] == "host" or grids[p.skip] == grids[p.dst]))

    def storage(self, index: int, p, batch: int, grids, tiers) -> int:
        """Bytes of the values on the device while pass ``index`` runs (its output included)."""
        program = self.program
        live = sum(self.value_bytes(v, batch) for v in range(1, p.dst)
                   if program.last_use[v] >= index and tiers[v] == "device")
        if tiers[p.dst] == "device" and not self.in_place(index, p, grids, tiers):
            live += self.value_bytes(p.dst, batch)
        return live

    def host_traffic(self, batch: int, tiers) -> int:
        """Bytes each sweep copies between host and device: every pass reads its host inputs in
        and writes its host output out once (halos aside)."""
        total = 0
        for p in self.program.passes:
            reads = [p.src] + ([p.skip] if isinstance(p, ConvPass) and p.skip is not None else [])
            total += sum(self.value_bytes(v, batch) for v in reads if tiers[v] == "host")
            total += self.value_bytes(p.dst, batch) if tiers[p.dst] == "host" else 0
        return total

    def peak(self, batch: int, grids, tiers) -> int:
        peak = 0
        for index, p in enumerate(self.program.passes):
            if isinstance(p, WholePass):
                work = self.whole_working_set(p, batch, grids)
            else:
                th, tw = grids[p.dst].largest_tile
                work = self.conv_working_set(p, th, tw, batch, grids, tiers)
            peak = max(peak, self.storage(index, p, batch, grids, tiers) + work)
        return peak


def _grid(model: MemoryModel, p, target: int | None, batch: int, grids, tiers, bands_only: bool) -> Grid | None:
    """The coarsest grid (row bands first, halving) whose working set is within ``target``;
    ``target=None``: the finest the planner cuts (tiles of :data:`MIN_TILE`)."""
    _, height, width = model.shapes[p.dst]
    if isinstance(p, WholePass):
        return Grid.even(height, width)
    rows = cols = 1
    while True:
        th, tw = math.ceil(height / rows), math.ceil(width / cols)
        if target is not None and model.conv_working_set(p, th, tw, batch, grids, tiers) <= target:
            return Grid.even(height, width, rows, cols)
        if th > MIN_TILE and rows < height:
            rows = min(rows * 2, height)
        elif not bands_only and tw > MIN_TILE and cols < width:
            cols = min(cols * 2, width)
        else:
            return Grid.even(height, width, rows, cols) if target is None else None


def grids_for(model: MemoryModel, budget: int | None, batch: int, tiers, fixed=None) -> list[Grid] | None:
    """A grid per value: ``fixed = (rows, cols)`` cuts every value so; else each pass gets the
    coarsest grid whose working set fits what ``budget`` leaves beside the storage of that pass
    (``budget=None``: the smallest tiles). None if some pass does not fit even so.

    The values of one resolution then share the finest grid any of them got, so that a residual
    sum can be written over its input tile by tile (which the storage above counts on)."""
    unified = [None] * len(model.shapes)  # what in-place writing needs: equal grids per resolution
    grids: list[Grid | None] = [None] * len(model.shapes)
    grids[0] = Grid.even(*model.shapes[0][1:])
    cuts: dict[tuple[int, int], tuple[int, int]] = {}
    for index, p in enumerate(model.program.passes):
        _, h, w = model.shapes[p.dst]
        if isinstance(p, WholePass):
            grid = Grid.even(h, w)
        elif fixed is not None:
            grid = Grid.even(h, w, *fixed)
        else:
            allowance = None if budget is None else budget - model.storage(index, p, batch, unified, tiers)
            if allowance is not None and allowance <= 0:
                return None
            grid = _grid(model, p, allowance, batch, grids, tiers, bands_only=tiers[p.dst] == "host")
            if grid is None:
                return None
        grids[p.dst] = grid
        if not isinstance(p, WholePass):
            rows, cols = cuts.get((h, w), (1, 1))
            cuts[(h, w)] = (max(rows, grid.shape[0]), max(cols, grid.shape[1]))
    for p in model.program.passes:
        _, h, w = model.shapes[p.dst]
        if not isinstance(p, WholePass) and grids[p.dst].shape != cuts[(h, w)]:
            grids[p.dst] = Grid.even(h, w, *cuts[(h, w)])
    return grids


def needs_stats(program: Program, grids) -> list[int]:
    """A value needs merged statistics (for the groups of its norm) when a pass normalising it
    is cut into tiles."""
    stats = [0] * (len(program.passes) + 1)
    for p in program.passes:
        if isinstance(p, ConvPass) and p.norm is not None and grids[p.dst].count > 1:
            if stats[p.src] not in (0, p.norm.module.num_groups):
                raise Unsupported("a tensor normalised by two group norms with different group counts")
            stats[p.src] = p.norm.module.num_groups
    return stats


def _tier_options(model: MemoryModel, storage: str, cuda: bool) -> list[list[str]]:
    """Tier assignments to try, in order: all on the device, then (CUDA) the largest values in
    host memory, one more at a time (each costs a copy out and one in per reader). The input
    and the output stay on the device."""
    n = len(model.shapes)
    output = n - 1
    if storage == "host":
        return [["device" if v in (0, output) else "host" for v in range(n)]]
    options = [["device"] * n]
    if storage == "device" or not cuda:
        return options
    by_size = sorted(range(1, output), key=lambda v: -model.value_bytes(v, 1))
    tiers = ["device"] * n
    for v in by_size:
        tiers = list(tiers)
        tiers[v] = "host"
        options.append(tiers)
    return options


def make_plan(program: Program, shapes, itemsize: int, device_type: str, total_batch: int, *,
              budget: int | None, tiles=None, storage: str = "auto", batch: int | None = None) -> Plan:
    """The plan for ``total_batch`` samples of ``shapes[0]``; see the module docstring.
    ``budget=0`` returns the smallest plan there is (the least memory, not the fastest)."""
    model = MemoryModel(program, shapes, itemsize, device_type)
    largest = max(model.value_bytes(v, 1) for v in range(1, len(shapes)))
    batches = [batch] if batch is not None else _halvings(total_batch)

    def finish(b, grids, tiers) -> Plan:
        estimate = model.peak(b, grids, tiers)
        if b < total_batch:
            estimate += model.value_bytes(program.output, total_batch)
        return Plan(b, grids, tiers, needs_stats(program, grids), estimate, budget, shapes, itemsize,
                    model.host_traffic(b, tiers))

    options = _tier_options(model, storage, device_type == "cuda")
    if budget is None:  # lean: the storage of the heaviest pass plus small temporaries
        b = batches[0]
        tiers = options[0]
        lean = max(model.storage(i, p, b, [None] * len(shapes), tiers) for i, p in enumerate(program.passes))
        lean += max(largest * b // LEAN_FRACTION, LEAN_FLOOR)
        grids = grids_for(model, lean, b, tiers, tiles) or grids_for(model, None, b, tiers, tiles)
        return finish(b, grids, tiers)
    smallest = None
    for tiers in options:
        for b in batches:
            grids = grids_for(model, budget, b, tiers, tiles)
            plan = finish(b, grids, tiers) if grids is not None else None
            if plan is not None and plan.estimate <= budget:
                return plan
            floor = finish(b, grids_for(model, None, b, tiers, tiles), tiers)  # the smallest tiles
            if floor.estimate <= budget:
                return floor
            if smallest is None or floor.estimate < smallest.estimate:
                smallest = floor
    if budget == 0:
        return smallest
    tiles_text = f"tiles of {tiles[0]}x{tiles[1]} per resolution" if tiles else f"tiles down to {MIN_TILE} pixels"
    raise ValueError(
        f"budget of {budget} bytes ({budget / MiB:.1f} MiB) is too small to hold one tile of this input "
        f"({total_batch}x{shapes[0][0]}x{shapes[0][1]}x{shapes[0][2]}, {itemsize}-byte elements) on {device_type}; "
        f"the smallest plan needs about {smallest.estimate / MiB:.1f} MiB ({smallest.batch} sample(s) per sweep, "
        f"{tiles_text}{', the largest activations in host memory' if 'host' in smallest.tiers else ''})")


def _halvings(n: int) -> list[int]:
    out = [n]
    while out[-1] > 1:
        out.append(math.ceil(out[-1] / 2))
    return out
