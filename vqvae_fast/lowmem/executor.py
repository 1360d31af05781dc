"""Runs a program under a plan: layer-synchronous sweeps over tiles, exact by construction.

Each pass is one sweep. A pass whose output is one tile runs the plain ops on whole tensors
(``group_norm_silu``, the convolution, the folded upsampling): what the fast blocks run. A pass
cut into tiles runs, per output tile in raster order:

1. the input window (the tile's rows and columns plus the convolution's halo, clipped to the
   image), gathered from the input's tiles and normalised on the way with the input's merged
   statistics (``stats.py``) when the pass starts with a group norm;
2. the convolution with the zero padding of the image border only (``geometry.conv_window``),
   or nearest x2 upsampling + 3x3 convolution on the window then the tile's rows kept
   (``geometry.upsample_window``);
3. the residual sum (in place over the input tile when the input is dead), scale, pointwise;
4. this tile's statistics merged into the output's, when a later tiled pass normalises it;
5. the tile stored (``storage.py``): kept on the device, or copied to host memory while the
   next tile computes.

No tile starts a pass before every tile has finished the previous one, so each group norm sees
the statistics of the whole tensor and each convolution reads finished neighbours: the result
is the untiled one up to floating-point summation order. Nothing reads a value back to the host.
"""

from __future__ import annotations

import torch

from .. import _backend
from ..nn.upsample import upsample_then_conv
from ..ops import group_norm_silu
from . import geometry
from .planner import Plan
from .program import ConvPass, Program, WholePass
from .stats import GroupMoments
from .storage import DeviceStore, HostStore


def _memory_format(x: torch.Tensor) -> torch.memory_format:
    if not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


class Executor:
    def __init__(self, program: Program, plan: Plan, x: torch.Tensor):
        self.program, self.plan = program, plan
        self.device, self.dtype = x.device, x.dtype
        self.memory_format = _memory_format(x)
        # one backend selection per call: the asymmetric-padding convolution of the tiles
        from ..ops import padded_conv2d as _padded  # noqa: F401  (registers its backends)

        self.padded = _backend.op_backends("padded_conv2d").select(x.device, x.dtype).fn
        self.copy_stream = None
        if x.device.type == "cuda" and "host" in plan.tiers:
            self.copy_stream = torch.cuda.Stream(x.device)

    # -- the whole input -----------------------------------------------------------------------
    def run(self, x: torch.Tensor) -> torch.Tensor:
        total, step = x.shape[0], self.plan.batch
        if step >= total:
            out = self.run_sweep(x)
        else:
            out = None
            for start in range(0, total, step):
                part = self.run_sweep(x[start:start + step])
                if out is None:
                    out = torch.empty((total,) + tuple(part.shape[1:]), dtype=part.dtype, device=part.device,
                                      memory_format=_memory_format(part))
                out[start:start + step].copy_(part)
        if self.copy_stream is not None:
            torch.cuda.current_stream().wait_stream(self.copy_stream)
        if self.memory_format == torch.channels_last:
            out = out.contiguous(memory_format=torch.channels_last)
        return out

    def run_sweep(self, x: torch.Tensor) -> torch.Tensor:
        program, plan = self.program, self.plan
        self.batch = x.shape[0]
        stores: list = [None] * (len(program.passes) + 1)
        stores[0] = DeviceStore.holding(x)
        moments: dict[int, GroupMoments] = {}
        self.record_stats(0, moments, x)
        for index, p in enumerate(program.passes):
            if isinstance(p, WholePass):
                self.whole_pass(p, stores, moments)
            elif plan.grids[p.dst].count == 1:
                self.conv_pass_whole(index, p, stores, moments)
            else:
                self.conv_pass_tiled(index, p, stores, moments)
            for v in {p.src, getattr(p, "skip", None)} - {None}:
                if program.last_use[v] == index:
                    if v != 0 and stores[v] is not None and stores[v] is not stores[p.dst]:
                        stores[v].free()
                    stores[v] = None
                    moments.pop(v, None)
        out = stores[program.output].whole()
        stores[program.output] = None
        return out

    # -- stores ----------------------------------------------------------------------------------
    def new_store(self, v: int):
        channels = self.plan.shapes[v][0]
        grid = self.plan.grids[v]
        if self.plan.tiers[v] == "host":
            return HostStore(grid, self.batch, channels, self.dtype, self.device, self.copy_stream)
        return DeviceStore(grid, self.batch, channels, self.dtype, self.device, self.memory_format)

    def output_store(self, index: int, p: ConvPass, stores):
        """The residual sum goes over the dead input in host memory (same rows, same shape)."""
        skip = p.skip
        if (skip not in (None, 0, p.src) and p.residual.shortcut is None and self.program.last_use[skip] == index
                and self.plan.tiers[skip] == "host" and self.plan.tiers[p.dst] == "host"):
            return stores[skip].reuse(self.plan.grids[p.dst], self.plan.shapes[p.dst][0])
        return self.new_store(p.dst)

    def record_stats(self, v: int, moments, tile: torch.Tensor) -> None:
        if self.plan.stats[v]:
            moments.setdefault(v, GroupMoments(self.plan.stats[v])).add(tile)

    # -- convolutions ------------------------------------------------------------------------------
    def conv(self, x: torch.Tensor, module, stride, pads) -> torch.Tensor:
        left, right, top, bottom = pads
        if left == right and top == bottom:
            return torch.conv2d(x, module.weight, module.bias, stride, (top, left))
        return self.padded(x, module.weight, module.bias, tuple(stride), tuple(pads))

    def in_place(self, index: int, p: ConvPass, skip_store, grid) -> bool:
        """Whether the residual sum may go over the skip tile: the skip is an identity, dead
        after this pass, not the caller's input nor this pass's convolution input, and stored
        on the device in this pass's tiles."""
        return (p.residual.shortcut is None and p.skip not in (0, p.src) and self.program.last_use[p.skip] == index
                and isinstance(skip_store, DeviceStore) and skip_store.grid == grid)

    def finish_tile(self, p: ConvPass, y: torch.Tensor, skip_window, skip_pads, in_place: bool) -> torch.Tensor:
        """Residual, scale and pointwise functions of one output tile."""
        residual = p.residual
        if residual is not None:
            if residual.shortcut is not None:
                y.add_(self.conv(skip_window, residual.shortcut, (1, 1), skip_pads))
            elif in_place:
                y = skip_window.add_(y)
            else:
                y.add_(skip_window)
            if residual.scale != 1.0:
                y.div_(residual.scale)
        for layer in p.pointwise:
            y = layer.fn(y)
        return y

    def conv_pass_whole(self, index: int, p: ConvPass, stores, moments) -> None:
        """One output tile: the plain ops on whole tensors (the statistics are the norm's own)."""
        x = stores[p.src].whole()
        if p.norm is not None:
            norm = p.norm.module
            x = group_norm_silu(x, norm.num_groups, norm.weight, norm.bias, float(norm.eps),
                                "silu" if p.norm.silu else None)
        conv = p.conv
        if conv.upsample:
            y = upsample_then_conv(x, conv.module.weight, conv.module.bias, conv.owner)
        else:
            y = self.conv(x, conv.module, conv.stride, conv.padding)
        del x
        skip_window, in_place = None, False
        if p.residual is not None:
            skip_store = stores[p.skip]
            skip_window = skip_store.whole()
            in_place = self.in_place(index, p, skip_store, self.plan.grids[p.dst])
        y = self.finish_tile(p, y, skip_window, p.residual and p.residual.padding, in_place)
        self.record_stats(p.dst, moments, y)
        dst = self.output_store(index, p, stores)
        dst.put(0, 0, y)
        stores[p.dst] = dst

    def conv_pass_tiled(self, index: int, p: ConvPass, stores, moments) -> None:
        plan = self.plan
        src, grid = stores[p.src], plan.grids[p.dst]
        _, h_in, w_in = plan.shapes[p.src]
        norm = None
        if p.norm is not None:
            scale, shift = moments[p.src].scale_shift(p.norm.module, self.dtype)
            norm = (scale, shift, p.norm.silu)
        conv = p.conv
        (kh, kw), (sh, sw) = conv.kernel, conv.stride
        left, _, top, _ = conv.padding

        def window(i, j):
            r0, r1, c0, c1 = grid.region(i, j)
            if conv.upsample:
                return geometry.upsample_window(r0, r1, h_in) + geometry.upsample_window(c0, c1, w_in), None
            a, b, pt, pb = geometry.conv_window(r0, r1, h_in, kh, sh, top)
            ca, cb, pl, pr = geometry.conv_window(c0, c1, w_in, kw, sw, left)
            return (a, b, ca, cb), (pl, pr, pt, pb)

        skip_store, skip_window_of, in_place = None, None, False
        if p.residual is not None:
            skip_store = stores[p.skip]
            shortcut = p.residual.shortcut
            size = 1 if shortcut is None else shortcut.kernel_size[0]
            pad = p.residual.padding
            _, h_out, w_out = plan.shapes[p.dst]

            def skip_window_of(i, j):
                r0, r1, c0, c1 = grid.region(i, j)
                a, b, pt, pb = geometry.conv_window(r0, r1, h_out, size, 1, pad[2])
                ca, cb, pl, pr = geometry.conv_window(c0, c1, w_out, size, 1, pad[0])
                return (a, b, ca, cb), (pl, pr, pt, pb)

            in_place = self.in_place(index, p, skip_store, grid)
        dst = self.output_store(index, p, stores)
        stores[p.dst] = dst
        tiles = list(grid.tiles())

        def fetch(t):
            region, pads = window(*t)
            skip = None
            if skip_store is not None:
                skip = skip_store.fetch(*skip_window_of(*t)[0])
            return src.fetch(*region, pads=pads if pads and src.folds(pads) else None), skip

        pending = fetch(tiles[0])
        for number, (i, j) in enumerate(tiles):
            following = fetch(tiles[number + 1]) if number + 1 < len(tiles) else None
            x = pending[0].get(norm)
            region, pads = window(i, j)
            if conv.upsample:
                y = upsample_then_conv(x, conv.module.weight, conv.module.bias, conv.owner)
                r0, r1, c0, c1 = grid.region(i, j)
                a, ca = region[0], region[2]
                if (r0 - 2 * a, c0 - 2 * ca, r1 - r0, c1 - c0) != (0, 0) + tuple(y.shape[2:]):
                    y = y[:, :, r0 - 2 * a:r1 - 2 * a, c0 - 2 * ca:c1 - 2 * ca].contiguous(
                        memory_format=_memory_format(x))
            else:
                y = self.conv(x, conv.module, conv.stride, (0, 0, 0, 0) if src.folds(pads) else pads)
            del x
            skip_window = skip_pads = None
            if pending[1] is not None:
                skip_window, skip_pads = pending[1].get(None), skip_window_of(i, j)[1]
            y = self.finish_tile(p, y, skip_window, skip_pads, in_place)
            self.record_stats(p.dst, moments, y)
            dst.put(i, j, y)
            if in_place:
                skip_store.release(i, j)
            pending = following

    def whole_pass(self, p: WholePass, stores, moments) -> None:
        y = p.layer.fn(stores[p.src].whole())
        for layer in p.pointwise:
            y = layer.fn(y)
        self.record_stats(p.dst, moments, y)
        dst = self.new_store(p.dst)
        grid = self.plan.grids[p.dst]
        for i, j in grid.tiles():
            r0, r1, c0, c1 = grid.region(i, j)
            dst.put(i, j, y if grid.count == 1 else y[:, :, r0:r1, c0:c1])
        stores[p.dst] = dst
