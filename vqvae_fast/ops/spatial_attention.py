"""``spatial_attention``: single-head attention over H*W positions with head size C.

Backends: ``triton`` (the kernels of ``vqvae_fast.kernels.spatial_attention`` for fp16/bf16 CUDA
tensors: flash attention up to head 128, blocks of query rows at heads 256 and 512, forward and
backward; docs/spatial-attention.md), ``cpu`` (the chunked PyTorch implementation below), ``reference``
(materialises the ``N x N`` matrix). The fast backends run behind the custom op
``vqvae_fast::spatial_attention`` (forward, returning the output and the row log-sum-exp) and
``vqvae_fast::spatial_attention_backward``, with fake and autograd registrations, so that
``torch.compile`` traces through without a graph break.

The chunked implementation processes the queries in blocks of rows sized so that one block of
fp32 logits ``(B, rows, N)`` stays within :data:`CHUNK_BYTES`; nothing ``N x N`` is allocated,
forward or backward. It also serves CUDA inputs the kernels do not take: fp32 (cuBLAS GEMMs,
following ``torch.backends.cuda.matmul`` precision settings) and head sizes or GPUs without a
kernel configuration (heads above 512, GPUs before sm_80).

When the custom op runs (the rule of :func:`vqvae_fast._backend.custom_op_needed`): under
``torch.compile``, and in eager mode when autograd must record the call; an eager call that
needs no gradient runs the implementation (``triton_forward`` / ``chunked_forward``) directly.
The cpu backend's small problems run the plain formulation, whose ATen ops autograd
differentiates itself (see ``_cpu``). The custom ops take the backend the public call selected as
their last argument (``"auto"`` selects, for direct ``torch.ops`` callers).
"""

from __future__ import annotations

import functools

import torch

from .. import _backend
from ._autocast import autocast_inputs, autocast_off
from .. import _validation as V
from .._backend import custom_op_needed, op_backends
from ..reference import ops as reference

BACKENDS = op_backends("spatial_attention")

#: Budget for one block of fp32 logits ``(B, rows, N)`` in the chunked implementation.
CHUNK_BYTES = 64 * 2**20


def check_args(q, k, v, scale) -> None:
    """Raise on bad arguments: a few comparisons for the common case, the detailed checks (which
    name the argument) for anything else."""
    V.check_tensor("q", q, ndim=(3, 4))
    V.check_tensor("k", k, ndim=(3, 4))
    V.check_tensor("v", v, ndim=(3, 4))
    for name, t in (("k", k), ("v", v)):
        if t.shape != q.shape:
            raise ValueError(f"{name} must have q's shape {tuple(q.shape)}, got {tuple(t.shape)}")
    if not (q.dtype == k.dtype == v.dtype):
        V.check_same_dtype(q=q, k=k, v=v)
    device = q.device
    if k.device != device or v.device != device:
        V.check_same_device(q=q, k=k, v=v)
    if q.shape[1] == 0:
        raise ValueError(f"q must have at least one channel (the head size C), got shape {tuple(q.shape)}")
    if scale is not None and not (type(scale) is float and 0.0 < scale < float("inf")):
        V.check_float("scale", scale, positive=True, finite=True)


# ----------------------------------------------------------------------------------------------
# Output layouts (shared by the real implementations and the fake ones)


def output_like(t: torch.Tensor) -> torch.Tensor:
    """An empty ``(B, C, N)`` tensor with ``t``'s innermost dimension: positions innermost, or,
    when ``t`` keeps its channels innermost (channels-last, a slice of a ``(B, N, 3C)``
    projection), ``(B, N, C)`` storage seen as ``(B, C, N)``."""
    batch, channels, n = t.shape
    if t.stride(1) < t.stride(2):
        return t.new_empty((batch, n, channels)).transpose(1, 2)
    return t.new_empty((batch, channels, n))


def lse_dtype(dtype: torch.dtype) -> torch.dtype:
    """The log-sum-exp is fp32, or fp64 for fp64 inputs (whose gradients need it exact)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


# ----------------------------------------------------------------------------------------------
# Chunked PyTorch implementation (the cpu backend, and the CUDA fallback)


def chunk_rows(batch: int, n: int, budget: int | None = None) -> int:
    """Query rows per chunk: one fp32 ``(batch, rows, n)`` block of logits fits in ``budget``
    bytes (:data:`CHUNK_BYTES` by default), at least one row, at most ``n``."""
    budget = CHUNK_BYTES if budget is None else budget
    return max(1, min(n, budget // max(1, batch * n * 4)))


def _compute_dtypes(t: torch.Tensor) -> tuple[torch.dtype, torch.dtype]:
    """(GEMM operand dtype, accumulation dtype). CUDA fp16/bf16 keep their dtype in the GEMMs
    (tensor cores) with fp32 logits; elsewhere everything is fp32 (fp64 for fp64)."""
    acc = lse_dtype(t.dtype)
    if t.is_cuda and t.dtype in (torch.float16, torch.bfloat16):
        return t.dtype, acc
    return acc, acc


def _bmm(a: torch.Tensor, b: torch.Tensor, acc: torch.dtype) -> torch.Tensor:
    """``a @ b`` with an ``acc``-typed result (fp32 output of a 16-bit GEMM where supported)."""
    if a.dtype == acc:
        return torch.bmm(a, b)
    if a.is_cuda and hasattr(torch.ops.aten.bmm, "dtype"):
        return torch.ops.aten.bmm.dtype(a, b, acc)
    return torch.bmm(a, b).to(acc)


def _softmax_(s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Softmax of logits ``s`` ``(B, r, N)`` over the last axis, in place: ``(p, max, sum)``."""
    m = s.amax(dim=2, keepdim=True)  # (B, r, 1)
    p = s.sub_(m).exp_()  # exactly 1 at the maximum
    l = p.sum(dim=2, keepdim=True)  # (B, r, 1)
    return p.div_(l), m, l


def chunked_forward(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, budget: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(out, lse)`` for ``(B, C, N)`` inputs, queries in chunks of :func:`chunk_rows` rows.

    Per chunk ``r``: ``s = s_scale q_rᵀ k`` ``(B, r, N)`` in fp32, ``m_r = max_j s``,
    ``l_r = sum_j exp(s - m_r)``, ``out_r = v (exp(s - m_r) / l_r)ᵀ``, ``lse_r = m_r + log l_r``.
    Normalising by ``l_r`` rather than subtracting ``lse_r`` keeps the probabilities accurate to
    fp32 rounding whatever the logits' magnitude (``exp(s - lse)`` is off by ``|lse| * 2^-24``
    relative: 3e-3 at logits of 6e4).
    """
    batch, channels, n = q.shape
    out = output_like(q)
    lse = torch.empty((batch, n), device=q.device, dtype=lse_dtype(q.dtype))
    if out.numel() == 0:
        lse.fill_(float("-inf"))
        return out, lse
    gemm, acc = _compute_dtypes(q)
    k = k.to(gemm)
    v = v.to(gemm)
    rows = chunk_rows(batch, n, budget)
    for r0 in range(0, n, rows):
        q_r = q[:, :, r0:r0 + rows].to(gemm)  # (B, C, r)
        s = _bmm(q_r.transpose(1, 2), k, acc).mul_(scale)  # (B, r, N) fp32 logits
        p, m, l = _softmax_(s)  # (B, r, N) probabilities in place of s; (B, r, 1) max and sum
        out_r = out[:, :, r0:r0 + rows]  # (B, C, r)
        if p.dtype == gemm == out.dtype and out_r.is_contiguous():  # one chunk: straight into out
            torch.bmm(v, p.transpose(1, 2), out=out_r)
        else:
            out_r.copy_(torch.bmm(v, p.to(gemm).transpose(1, 2)))
        lse[:, r0:r0 + rows] = (m + l.log()).squeeze(2)
    return out, lse


def chunked_backward(
    grad_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
    out: torch.Tensor, lse: torch.Tensor, scale: float, budget: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(dq, dk, dv)`` recomputing the probabilities chunk by chunk from ``lse``.

    With ``P_r = exp(s q_rᵀ k - lse_r)`` ``(B, r, N)``, ``Delta_r = sum_c out_r grad_r``:
    ``dv += grad_r P_r``, ``dS_r = P_r * (grad_rᵀ v - Delta_r)``, ``dq_r = s k dS_rᵀ``,
    ``dk += s q_r dS_r``. ``P_r`` is divided by its row sums (folded into the ``(C, r)``
    operands): an fp32 ``lse`` is off by ``|lse| * 2^-24``, which would scale a whole row of
    ``P`` by as much (3e-3 at logits of 6e4) and leave it summing to something other than 1.
    """
    batch, channels, n = q.shape
    dq, dk, dv = output_like(q), output_like(k), output_like(v)
    if dq.numel() == 0:
        return dq, dk, dv
    gemm, acc = _compute_dtypes(q)
    k_g, v_g = k.to(gemm), v.to(gemm)
    dk_acc = torch.zeros((batch, channels, n), device=q.device, dtype=acc)
    dv_acc = torch.zeros((batch, channels, n), device=q.device, dtype=acc)
    rows = chunk_rows(batch, n, budget // 2 if budget else CHUNK_BYTES // 2)  # two (B, r, N) blocks live
    for r0 in range(0, n, rows):
        sl = slice(r0, r0 + rows)
        q_r = q[:, :, sl].to(gemm)  # (B, C, r)
        g_r = grad_out[:, :, sl].to(acc)  # (B, C, r)
        delta_r = (out[:, :, sl].to(acc) * g_r).sum(1)  # (B, r)
        p = _bmm(q_r.transpose(1, 2), k_g, acc).mul_(scale)  # (B, r, N) logits
        p = p.sub_(lse[:, sl, None].to(acc)).exp_()  # probabilities, up to a factor per row:
        inv_l = p.sum(2).reciprocal_()[:, None, :]  # (B, 1, r) 1 / row sums, folded into the GEMMs
        dv_acc += _bmm((g_r * inv_l).to(gemm), p.to(gemm), acc)  # (B, C, N)
        ds = _bmm(g_r.to(gemm).transpose(1, 2), v_g, acc)  # (B, r, N): dP
        ds = ds.sub_(delta_r[:, :, None]).mul_(p).to(gemm)  # dS times the row sum
        dq[:, :, sl] = _bmm(k_g, ds.transpose(1, 2), acc).mul_(inv_l * scale)  # (B, C, r)
        dk_acc += _bmm((q_r.to(acc) * inv_l).to(gemm), ds, acc)  # (B, C, N)
    dk.copy_(dk_acc.mul_(scale))
    dv.copy_(dv_acc)
    return dq, dk, dv


# ----------------------------------------------------------------------------------------------
# Triton kernels (CUDA, or CPU tensors under TRITON_INTERPRET=1)


@functools.lru_cache(maxsize=None)
def _kernels():
    """The forward and backward kernel modules, imported (with triton) on first use only."""
    from ..kernels import spatial_attention, spatial_attention_backward

    return spatial_attention, spatial_attention_backward


def triton_forward(q, k, v, scale):
    fwd, _ = _kernels()
    capability, _ = fwd.device_facts(q.device)
    if not fwd.supported_dtype(q.dtype) or not fwd.forward_configs(fwd.head_size(q.shape[1]), capability):
        return chunked_forward(q, k, v, scale)
    out = output_like(q)
    lse = torch.empty((q.shape[0], q.shape[2]), device=q.device, dtype=torch.float32)
    fwd.forward(q, k, v, out, lse, scale)
    return out, lse


def triton_backward(grad_out, q, k, v, out, lse, scale):
    fwd, bwd = _kernels()
    capability, _ = fwd.device_facts(q.device)
    if not fwd.supported_dtype(q.dtype) or bwd.backward_configs(fwd.head_size(q.shape[1]), capability) is None:
        return chunked_backward(grad_out, q, k, v, out, lse, scale)
    dq, dk, dv = output_like(q), output_like(k), output_like(v)
    bwd.backward(grad_out, q, k, v, out, lse, dq, dk, dv, scale)
    return dq, dk, dv


_IMPLEMENTATIONS = {
    "triton": (triton_forward, triton_backward),
    "cpu": (chunked_forward, chunked_backward),
}


def _implementation(backend: str, t: torch.Tensor):
    """The (forward, backward) pair of ``backend`` (chunked PyTorch for a backend without one,
    e.g. ``reference`` forced while a compiled graph runs); ``"auto"`` selects for ``t``."""
    if backend == "auto":
        backend = BACKENDS.select(t.device, t.dtype).name
    return _IMPLEMENTATIONS.get(backend, _IMPLEMENTATIONS["cpu"])


# ----------------------------------------------------------------------------------------------
# Custom ops


@torch.library.custom_op("vqvae_fast::spatial_attention", mutates_args=())
def _attention_op(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, backend: str = "auto"
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(out, lse)`` for ``(B, C, N)`` tensors; ``lse`` ``(B, N)`` is the natural log-sum-exp."""
    forward, _ = _implementation(backend, q)
    with autocast_off(q.device.type):  # the inputs' dtype decides, not autocast
        return forward(q, k, v, scale)


@_attention_op.register_fake
def _(q, k, v, scale, backend="auto"):
    return output_like(q), q.new_empty((q.shape[0], q.shape[2]), dtype=lse_dtype(q.dtype))


@torch.library.custom_op("vqvae_fast::spatial_attention_backward", mutates_args=())
def _attention_backward_op(
    grad_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
    out: torch.Tensor, lse: torch.Tensor, scale: float, backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(dq, dk, dv)`` given the output's gradient and the forward's ``out`` and ``lse``."""
    _, backward = _implementation(backend, q)
    with autocast_off(q.device.type):
        return backward(grad_out, q, k, v, out, lse, scale)


@_attention_backward_op.register_fake
def _(grad_out, q, k, v, out, lse, scale, backend="auto"):
    return output_like(q), output_like(k), output_like(v)


def _setup_context(ctx, inputs, output):
    q, k, v, scale, backend = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse)
    ctx.scale, ctx.backend = scale, backend
    ctx.mark_non_differentiable(lse)


def _backward(ctx, grad_out, grad_lse):
    q, k, v, out, lse = ctx.saved_tensors
    if grad_out is None:
        return None, None, None, None, None
    dq, dk, dv = torch.ops.vqvae_fast.spatial_attention_backward(
        grad_out, q, k, v, out, lse, ctx.scale, ctx.backend
    )
    return dq, dk, dv, None, None


_attention_op.register_autograd(_backward, setup_context=_setup_context)


def _through_custom_op(q, k, v, scale, backend: str):
    """``backend``'s implementation on ``(B, C, N)`` views of ``(B, C, N)`` or ``(B, C, H, W)``
    inputs: through the custom op where :func:`custom_op_needed` says so, else directly."""
    shape = q.shape
    batch, channels = shape[0], shape[1]
    scale = channels**-0.5 if scale is None else float(scale)
    n = 1
    for size in shape[2:]:
        n *= size
    q3, k3, v3 = (t.reshape(batch, channels, n) for t in (q, k, v))  # (B, C, N), views if possible
    if custom_op_needed(q3, k3, v3):
        out, _ = torch.ops.vqvae_fast.spatial_attention(q3, k3, v3, scale, backend)
    else:
        forward, _ = _IMPLEMENTATIONS.get(backend, _IMPLEMENTATIONS["cpu"])
        with autocast_off(q3.device.type):  # the inputs' dtype decides, as in the op
            out, _ = forward(q3, k3, v3, scale)
    return out.reshape(shape)  # a view: (B, N, C) storage gives channels-last (B, C, H, W)


@BACKENDS.register("triton", devices=("cuda",), dtypes=V.KERNEL_DTYPES, requires=_backend.triton_status)
def _triton(q, k, v, scale):
    return _through_custom_op(q, k, v, scale, "triton")


@BACKENDS.register("cpu", devices=("cpu",), dtypes=V.FLOAT_DTYPES)
def _cpu(q, k, v, scale):
    """CPU tensors. An eager call whose whole ``(B, N, N)`` block of fp32 logits fits in
    :data:`CHUNK_BYTES` (the chunked implementation would make it one chunk) runs the plain
    formulation (:func:`_plain`), with autograd saving the probabilities: the fastest PyTorch has
    on a CPU (measured against SDPA's CPU kernels, one thread), and its backward needs no
    recomputation. Larger ``N`` and traced calls go through :func:`_through_custom_op`
    (chunked, ``O(N)`` memory per row block)."""
    if _plain_is_faster(q) and not torch.compiler.is_compiling():
        with autocast_off("cpu"):  # the inputs' dtype decides, as in the op
            return _plain(q, k, v, scale)
    return _through_custom_op(q, k, v, scale, "cpu")


# baddbmm's ignored (beta = 0) input, broadcast to the logits: the scale rides in the GEMM.
_ZERO = {dtype: torch.zeros((), dtype=dtype) for dtype in (torch.float32, torch.float64)}


def _plain(q, k, v, scale):
    """``v softmax(s qᵀ k)ᵀ`` in three ATen ops on ``(B, C, N)`` views (positions innermost)."""
    shape = q.shape
    if len(shape) == 4:
        q, k, v = (t.view(shape[0], shape[1], -1) for t in (q, k, v))  # (B, C, N)
    scale = shape[1] ** -0.5 if scale is None else scale
    logits = torch.baddbmm(_ZERO[q.dtype], q.transpose(1, 2), k, beta=0, alpha=scale)  # (B, N, N)
    out = torch.bmm(v, torch.softmax(logits, dim=2).transpose(1, 2))  # (B, C, N)
    return out.view(shape) if len(shape) == 4 else out


def _plain_is_faster(q: torch.Tensor) -> bool:
    """fp32/fp64 (16-bit CPU inputs compute in fp32 only in the op), non-empty, positions
    innermost (the plain formulation's output layout is the op's then) and a ``(B, N, N)``
    block within :data:`CHUNK_BYTES`."""
    if q.dtype not in (torch.float32, torch.float64):
        return False
    shape = q.shape
    batch, n = shape[0], shape[2] * (shape[3] if len(shape) == 4 else 1)
    if batch * shape[1] * n == 0:
        return False
    positions_innermost = q.stride(-1) == 1 and (len(shape) == 3 or q.stride(2) == shape[3])
    return positions_innermost and batch * n * n * 4 <= CHUNK_BYTES


@BACKENDS.register("reference", devices=None, dtypes=V.FLOAT_DTYPES)
def _reference(q, k, v, scale):
    if q.numel() == 0:  # the reference cannot reshape a zero batch to (B, C, -1): the op's own path
        return _through_custom_op(q, k, v, scale, "cpu")
    return reference.spatial_attention(q, k, v, scale)


def spatial_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None
) -> torch.Tensor:
    r"""``out = v softmax(s qᵀ k)ᵀ`` for one head of size ``C`` over ``N`` positions.

    .. math::
        \mathrm{out}_{b,:,i} = \sum_j \frac{\exp(s\, q_{b,:,i} \cdot k_{b,:,j})}
        {\sum_{j'} \exp(s\, q_{b,:,i} \cdot k_{b,:,j'})}\, v_{b,:,j}, \qquad s = C^{-1/2}

    Args:
        q, k, v: ``(B, C, N)`` or ``(B, C, H, W)``, one shape, dtype and device for all three
            (the layout the 1x1 convolutions of an attention block produce), any strides:
            channel slices of one fused ``(B, 3C, N)`` projection are read in place.
        scale: ``s``; default ``C ** -0.5``.

    Returns ``(B, C, N)`` or ``(B, C, H, W)`` like ``q``, with ``q``'s innermost dimension
    (channels-last in, channels-last out). Differentiable in ``q``, ``k``, ``v``; no ``N x N``
    memory on the fast backends. Under ``torch.autocast`` the inputs are cast to the autocast
    dtype first, as for ``F.scaled_dot_product_attention``.
    """
    if isinstance(q, torch.Tensor):
        q, k, v = autocast_inputs(q.device, q, k, v)
    check_args(q, k, v, scale)
    return BACKENDS.select(q.device, q.dtype).fn(q, k, v, scale)
