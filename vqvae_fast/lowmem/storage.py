"""Where a value's tiles live between passes: on the compute device, or in (pinned) host memory.

Both stores take finished tiles (``put``) and hand out *windows* (a rectangle of the value,
halo included, on the compute device) in two steps, so that the host store can copy the next
window while the current tile computes: ``fetch(rows, cols)`` starts getting it, ``get(norm)``
returns it, normalised on the way when ``norm = (scale, shift, silu)`` is given (the group norm
applied while loading, with the merged statistics).

:class:`DeviceStore` keeps each tile as the tensor that produced it (no copy); a window is the
tile itself when it is one whole tile and no norm is applied, else the pieces are copied (and
normalised) into one new buffer.

:class:`HostStore` keeps the value as one ``(N, H, W, C)`` host tensor (pinned on CUDA), so that
any band of rows is one contiguous block per sample: copies in and out are plain
``cudaMemcpyAsync`` calls on a copy stream of their own, ordered against the compute stream by
events (the compute stream waits for a window's copy, the copy stream for a tile's compute).
Windows arrive channels-last. On CPU the same code runs with plain host tensors and no streams.
"""

from __future__ import annotations

import torch

from .geometry import Grid
from .stats import normalize_into, silu_


def _apply_norm(x: torch.Tensor, norm) -> torch.Tensor:
    """Normalise ``x`` in place (it must be a private buffer)."""
    if norm is not None:
        scale, shift, silu = norm
        normalize_into(x, x, scale, shift)
        if silu:
            silu_(x)
    return x


class DeviceStore:
    tier = "device"

    def __init__(self, grid: Grid, batch: int, channels: int, dtype: torch.dtype, device: torch.device,
                 memory_format: torch.memory_format = torch.contiguous_format):
        self.grid, self.batch, self.channels = grid, batch, channels
        self.dtype, self.device, self.memory_format = dtype, device, memory_format
        self.tiles: dict[tuple[int, int], torch.Tensor] = {}

    @classmethod
    def holding(cls, x: torch.Tensor) -> "DeviceStore":
        """A one-tile store of ``x`` (the caller's input: read, never written)."""
        store = cls(Grid((0, x.shape[2]), (0, x.shape[3])), x.shape[0], x.shape[1], x.dtype, x.device)
        store.tiles[(0, 0)] = x
        return store

    def put(self, i: int, j: int, tile: torch.Tensor) -> None:
        self.tiles[(i, j)] = tile

    def tile(self, i: int, j: int) -> torch.Tensor:
        return self.tiles[(i, j)]

    def release(self, i: int, j: int) -> None:
        self.tiles.pop((i, j), None)

    def free(self) -> None:
        self.tiles.clear()

    @staticmethod
    def folds(pads) -> bool:
        """Whether a window gathered with ``pads`` comes with that zero padding built in (an
        asymmetric padding, which the convolution would otherwise copy the window for)."""
        return pads[0] != pads[1] or pads[2] != pads[3]

    def fetch(self, r0: int, r1: int, c0: int, c1: int, pads=None) -> "_Lazy":
        return _Lazy(self, (r0, r1, c0, c1), pads)

    def gather(self, r0: int, r1: int, c0: int, c1: int, norm=None, pads=None) -> torch.Tensor:
        """The window ``[r0, r1) x [c0, c1)``, normalised with ``norm``, surrounded by ``pads =
        (left, right, top, bottom)`` zeros when given (zeros after normalisation, as the
        convolution's own padding would be)."""
        pieces = list(self.grid.overlapping(r0, r1, c0, c1))
        if norm is None and pads is None and len(pieces) == 1:
            i, j, (a0, a1, b0, b1) = pieces[0]
            t0, _, u0, _ = self.grid.region(i, j)
            return self.tiles[(i, j)][:, :, a0 - t0:a1 - t0, b0 - u0:b1 - u0]  # a view, no copy
        left, right, top, bottom = pads or (0, 0, 0, 0)
        out = torch.empty((self.batch, self.channels, top + r1 - r0 + bottom, left + c1 - c0 + right),
                          dtype=self.dtype, device=self.device, memory_format=self.memory_format)
        for strip in (out[:, :, :top], out[:, :, out.shape[2] - bottom:], out[:, :, :, :left],
                      out[:, :, :, out.shape[3] - right:]):
            if strip.numel():
                strip.zero_()
        for i, j, (a0, a1, b0, b1) in pieces:
            t0, _, u0, _ = self.grid.region(i, j)
            src = self.tiles[(i, j)][:, :, a0 - t0:a1 - t0, b0 - u0:b1 - u0]
            dst = out[:, :, top + a0 - r0:top + a1 - r0, left + b0 - c0:left + b1 - c0]
            if norm is None:
                dst.copy_(src)
            else:
                normalize_into(dst, src, norm[0], norm[1])
        if norm is not None and norm[2]:
            silu_(out)  # silu(0) = 0: the padding stays zero
        return out

    def whole(self) -> torch.Tensor:
        height, width = self.grid.size
        return self.gather(0, height, 0, width)


class _Lazy:
    """A device window, gathered when asked for (nothing to overlap on one device)."""

    __slots__ = ("store", "region", "pads")

    def __init__(self, store: DeviceStore, region, pads):
        self.store, self.region, self.pads = store, region, pads

    def get(self, norm=None) -> torch.Tensor:
        return self.store.gather(*self.region, norm=norm, pads=self.pads)


class HostStore:
    tier = "host"

    def __init__(self, grid: Grid, batch: int, channels: int, dtype: torch.dtype, device: torch.device,
                 copy_stream=None, rows: torch.Tensor | None = None):
        self.grid, self.batch, self.channels = grid, batch, channels
        self.dtype, self.device, self.copy_stream = dtype, device, copy_stream
        height, width = grid.size
        if rows is None:
            rows = torch.empty((batch, height, width, channels), dtype=dtype, pin_memory=device.type == "cuda")
        self.rows = rows  # (N, H, W, C) on the host

    def reuse(self, grid: Grid, channels: int) -> "HostStore":
        """A store for a value of the same shape in this store's host memory: a tile may be
        written over rows this store no longer needs (the residual sum over a dead input)."""
        return HostStore(grid, self.batch, channels, self.dtype, self.device, self.copy_stream, self.rows)

    # -- copies ------------------------------------------------------------------------------
    def _on_copy_stream(self):
        return torch.cuda.stream(self.copy_stream) if self.copy_stream is not None else _NoStream()

    def put(self, i: int, j: int, tile: torch.Tensor) -> None:
        r0, r1, c0, c1 = self.grid.region(i, j)
        nhwc = tile.permute(0, 2, 3, 1)
        if not nhwc.is_contiguous():
            nhwc = nhwc.contiguous()
        cuda = self.copy_stream is not None
        if cuda:
            ready = torch.cuda.Event()
            ready.record()  # on the compute stream, after the tile was computed
        with self._on_copy_stream():
            if cuda:
                self.copy_stream.wait_event(ready)
            full_width = c0 == 0 and c1 == self.rows.shape[2]
            for n in range(self.batch):
                if full_width:  # one contiguous block per sample
                    self.rows[n, r0:r1].copy_(nhwc[n], non_blocking=cuda)
                else:
                    for r in range(r0, r1):
                        self.rows[n, r, c0:c1].copy_(nhwc[n, r - r0], non_blocking=cuda)
            if cuda:
                nhwc.record_stream(self.copy_stream)  # kept until the copy is done

    def release(self, i: int, j: int) -> None:
        pass

    def free(self) -> None:
        self.rows = None

    @staticmethod
    def folds(pads) -> bool:
        return False  # the convolution pads (without a copy on CUDA: padded_conv2d)

    def fetch(self, r0: int, r1: int, c0: int, c1: int, pads=None) -> "_Pending":
        """Start copying rows ``[r0, r1)`` (all columns) to the device; columns are cut there."""
        cuda = self.copy_stream is not None
        with self._on_copy_stream():
            buffer = torch.empty((self.batch, r1 - r0, self.rows.shape[2], self.channels), dtype=self.dtype,
                                 device=self.device)
            for n in range(self.batch):
                buffer[n].copy_(self.rows[n, r0:r1], non_blocking=cuda)
            done = None
            if cuda:
                done = torch.cuda.Event()
                done.record()
        return _Pending(buffer, done, c0, c1)

    def gather(self, r0: int, r1: int, c0: int, c1: int, norm=None) -> torch.Tensor:
        return self.fetch(r0, r1, c0, c1).get(norm)

    def whole(self) -> torch.Tensor:
        height, width = self.grid.size
        return self.gather(0, height, 0, width)


class _Pending:
    """A window on its way to the device."""

    __slots__ = ("buffer", "done", "c0", "c1")

    def __init__(self, buffer, done, c0, c1):
        self.buffer, self.done, self.c0, self.c1 = buffer, done, c0, c1

    def get(self, norm=None) -> torch.Tensor:
        if self.done is not None:
            torch.cuda.current_stream().wait_event(self.done)
            self.buffer.record_stream(torch.cuda.current_stream())  # used on the compute stream now
        x = self.buffer.permute(0, 3, 1, 2)  # (N, C, h, W), channels-last
        if self.c0 != 0 or self.c1 != x.shape[3]:
            x = x[:, :, :, self.c0:self.c1]
            if norm is not None:
                x = x.contiguous(memory_format=torch.channels_last)
        return _apply_norm(x, norm)


class _NoStream:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
