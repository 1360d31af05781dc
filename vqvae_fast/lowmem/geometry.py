"""Tile grids and the input window each output tile needs: integer geometry, no tensors.

A :class:`Grid` cuts an ``H x W`` plane into row bands and column bands (``rows``, ``cols`` are
the boundaries, ``0 = r_0 < r_1 < ... < r_n = H``); tile ``(i, j)`` owns
``[r_i, r_{i+1}) x [c_j, c_{j+1})``. Every value of the program lives on one grid, and tiles of
one value never overlap: a halo is read from the neighbours when a window is gathered, never
stored twice.

Windows, along one axis (columns are the same):

* a convolution with kernel ``k``, stride ``s`` and zero padding ``p_lo`` before the first row
  computes output row ``o`` from input rows ``[o s - p_lo, o s - p_lo + k)``; the output rows
  ``[o_0, o_1)`` need ``[o_0 s - p_lo, (o_1 - 1) s - p_lo + k)``. The part outside ``[0, H)`` is
  the zero padding, given to the convolution as its own padding, so a tile's result is exactly
  the rows the whole convolution would produce there.
* nearest x2 upsampling then a ``3x3`` convolution with padding 1: output rows ``[o_0, o_1)``
  (at ``2H``) read upsampled rows ``[o_0 - 1, o_1 + 1)``, i.e. input rows
  ``[floor((o_0 - 1) / 2), floor(o_1 / 2) + 1)`` (clipped): :func:`upsample_window`.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass


def even_splits(size: int, parts: int) -> tuple[int, ...]:
    """Boundaries cutting ``size`` into ``min(parts, size)`` bands whose sizes differ by at most 1."""
    parts = max(1, min(parts, size))
    return tuple((i * size) // parts for i in range(parts + 1))


@dataclass(frozen=True)
class Grid:
    rows: tuple[int, ...]
    cols: tuple[int, ...]

    @classmethod
    def even(cls, height: int, width: int, row_parts: int = 1, col_parts: int = 1) -> "Grid":
        return cls(even_splits(height, row_parts), even_splits(width, col_parts))

    @property
    def size(self) -> tuple[int, int]:
        return self.rows[-1], self.cols[-1]

    @property
    def shape(self) -> tuple[int, int]:
        """``(row bands, column bands)``."""
        return len(self.rows) - 1, len(self.cols) - 1

    @property
    def count(self) -> int:
        return (len(self.rows) - 1) * (len(self.cols) - 1)

    @property
    def largest_tile(self) -> tuple[int, int]:
        return (max(b - a for a, b in zip(self.rows, self.rows[1:])),
                max(b - a for a, b in zip(self.cols, self.cols[1:])))

    def tiles(self):
        """``(i, j)`` in raster order."""
        for i in range(len(self.rows) - 1):
            for j in range(len(self.cols) - 1):
                yield i, j

    def region(self, i: int, j: int) -> tuple[int, int, int, int]:
        """``(row0, row1, col0, col1)`` owned by tile ``(i, j)``."""
        return self.rows[i], self.rows[i + 1], self.cols[j], self.cols[j + 1]

    def overlapping(self, r0: int, r1: int, c0: int, c1: int):
        """The tiles meeting ``[r0, r1) x [c0, c1)`` (non-empty, inside the plane), with the
        intersection: ``(i, j, (a0, a1, b0, b1))``."""
        i_first = bisect.bisect_right(self.rows, r0) - 1
        j_first = bisect.bisect_right(self.cols, c0) - 1
        i = i_first
        while i < len(self.rows) - 1 and self.rows[i] < r1:
            j = j_first
            while j < len(self.cols) - 1 and self.cols[j] < c1:
                yield i, j, (max(r0, self.rows[i]), min(r1, self.rows[i + 1]),
                             max(c0, self.cols[j]), min(c1, self.cols[j + 1]))
                j += 1
            i += 1


def conv_output_size(size: int, kernel: int, stride: int, pad_lo: int, pad_hi: int) -> int:
    return (size + pad_lo + pad_hi - kernel) // stride + 1


def conv_window(out0: int, out1: int, size: int, kernel: int, stride: int, pad_lo: int) -> tuple[int, int, int, int]:
    """Input rows ``[a, b)`` (inside ``[0, size)``) and the zero padding ``(lo, hi)`` that make a
    convolution produce exactly output rows ``[out0, out1)``: ``(a, b, lo, hi)``."""
    start = out0 * stride - pad_lo
    stop = (out1 - 1) * stride - pad_lo + kernel
    a, b = max(start, 0), min(stop, size)
    return a, b, a - start, stop - b


def upsample_window(out0: int, out1: int, size: int) -> tuple[int, int]:
    """Input rows ``[a, b)`` that nearest x2 upsampling then a 3x3 / padding-1 convolution needs
    for output rows ``[out0, out1)`` (output size ``2 size``). Computing the whole window with
    the convolution's padding of 1 gives output rows ``[2a, 2b)``, of which only the first and
    the last may see the window's edge instead of the image's: both lie outside ``[out0, out1)``
    unless the window edge is the image's, where the padding is the true one."""
    return max((out0 - 1) // 2, 0), min(out1 // 2 + 1, size)


def halo(kernel: int, stride: int, pad_lo: int) -> int:
    """How far beyond its own rows a tile aligned with its consumer's output is read: before the
    first row ``pad_lo``, after the last ``kernel - stride - pad_lo``."""
    return max(pad_lo, kernel - stride - pad_lo, 0)
