"""The work each op must do: FLOPs and the fewest bytes it must move (docs/performance.md).

``E`` elements, ``s`` bytes per element. A count is ``None`` where it says nothing useful (group
norm's arithmetic is negligible; the end-to-end model's bytes depend on every layer). Backward
counts follow the usual conventions: attention backward is 2.5x the forward FLOPs (recompute
``QᵀK``, then ``dV``, ``dP``, ``dQ``, ``dK``: five products), convolution backward is 2x (data
gradient and weight gradient). Bytes count each input read once and each output written once.

=================  =========================  ===========================================
op                 FLOPs (forward)            bytes (forward)
=================  =========================  ===========================================
group_norm_silu    --                         2·E·s (read x, write y)
spatial_attention  4·B·N²·C                   4·B·C·N·s (read q, k, v, write out)
codebook_argmin    2·N·K·D                    (N + K)·D·s + 8·N (int64 indices)
padded_conv2d      2·N·P·Q·C_out·C_in·kH·kW   (x + weight + bias + y)·s
=================  =========================  ===========================================

backward: group norm reads x and dy and writes dx (3·E·s); attention reads q, k, v, out, dout and
writes dq, dk, dv (8·B·C·N·s); conv reads dy, x, weight and writes dx, dweight, dbias.
forward+backward is the sum of the two.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import prod

ELEMENT_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2, "fp64": 8}


@dataclass(frozen=True)
class Work:
    flops: float | None
    bytes: float | None

    def __add__(self, other: "Work") -> "Work":
        def add(a, b):
            return None if a is None or b is None else a + b

        return Work(add(self.flops, other.flops), add(self.bytes, other.bytes))


def _by_mode(mode: str, forward: Work, backward: Work) -> Work:
    if mode == "forward":
        return forward
    if mode == "backward":
        return backward
    if mode == "forward+backward":
        return forward + backward
    raise ValueError(f"mode must be forward, backward or forward+backward, got {mode!r}")


def group_norm_silu(dims, dtype: str, mode: str) -> Work:
    """``dims = (N, C, H, W)``: one read and one write forward, two reads and a write backward."""
    s = ELEMENT_BYTES[dtype]
    e = prod(dims)
    return _by_mode(mode, Work(None, 2 * e * s), Work(None, 3 * e * s))


def spatial_attention(dims, dtype: str, mode: str) -> Work:
    """``dims = (B, C, N)``: ``4·B·N²·C`` FLOPs forward (two products of ``2·B·N²·C``)."""
    s = ELEMENT_BYTES[dtype]
    b, c, n = dims
    forward = Work(4 * b * n * n * c, 4 * b * c * n * s)
    backward = Work(10 * b * n * n * c, 8 * b * c * n * s)
    return _by_mode(mode, forward, backward)


def codebook_argmin(dims, dtype: str, mode: str) -> Work:
    """``dims = (N, K, D)``: ``2·N·K·D`` FLOPs; reads z and the codebook, writes int64 indices."""
    if mode != "forward":
        raise ValueError("codebook_argmin has no backward")
    s = ELEMENT_BYTES[dtype]
    n, k, d = dims
    return Work(2 * n * k * d, (n + k) * d * s + 8 * n)


def conv_output_size(size: int, pad_before: int, pad_after: int, kernel: int, stride: int) -> int:
    return (size + pad_before + pad_after - kernel) // stride + 1


def padded_conv2d(dims, dtype: str, mode: str, kernel=(3, 3), stride=(2, 2), padding=(0, 1, 0, 1)) -> Work:
    """``dims = (N, C_in, H, W, C_out)``; ``padding = (left, right, top, bottom)``; with bias."""
    s = ELEMENT_BYTES[dtype]
    n, c_in, h, w, c_out = dims
    kh, kw = kernel
    left, right, top, bottom = padding
    p = conv_output_size(h, top, bottom, kh, stride[0])
    q = conv_output_size(w, left, right, kw, stride[1])
    x_elems, w_elems, y_elems = n * c_in * h * w, c_out * c_in * kh * kw, n * c_out * p * q
    flops = 2 * n * p * q * c_out * c_in * kh * kw
    forward = Work(flops, (x_elems + w_elems + c_out + y_elems) * s)
    backward = Work(2 * flops, (y_elems + x_elems + w_elems + x_elems + w_elems + c_out) * s)
    return _by_mode(mode, forward, backward)


FORMULAS = {
    "group_norm_silu": group_norm_silu,
    "spatial_attention": spatial_attention,
    "codebook_argmin": codebook_argmin,
    "padded_conv2d": padded_conv2d,
}


def floor_seconds(work: Work, bandwidth: float | None, flop_rate: float | None) -> tuple[float | None, str | None]:
    """The roofline floor ``max(bytes / bandwidth, flops / flop_rate)`` and which term bounds it.

    ``bandwidth`` in bytes/s and ``flop_rate`` in FLOP/s, both measured on the device.
    """
    memory = work.bytes / bandwidth if work.bytes is not None and bandwidth else None
    compute = work.flops / flop_rate if work.flops is not None and flop_rate else None
    if memory is None and compute is None:
        return None, None
    if compute is None or (memory is not None and memory >= compute):
        return memory, "memory"
    return compute, "compute"
