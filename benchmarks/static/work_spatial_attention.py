"""``spatial_attention``: the launches of a case and the work each does (``work.py`` explains the fields).

The launchers (``kernels/spatial_attention.py``, ``spatial_attention_backward.py``) plan on
``meta`` tensors ``(B, C, N)``; each launch's constexprs and arguments give its tiles. Padded
head ``H`` (``C`` rounded up to a table head), ``s`` bytes per element:

* forward kernel, grid ``(cdiv(N, BLOCK_M), B * H / BLOCK_CO, splits)``: a CTA loads its
  ``BLOCK_M x H`` queries, then per key block ``H x BLOCK_N`` keys and ``BLOCK_N x BLOCK_CO``
  values, and computes ``2 BLOCK_M BLOCK_N (H + BLOCK_CO)`` FLOPs: with ``BLOCK_CO < H`` every
  output-channel block recomputes the logits (head 512: ``1.5x`` the floor's FLOPs).
  Masked rows and keys past ``N`` are computed too. With split keys, fp32 partial outputs and a
  combine pass.
* backward: ``Delta`` (reads ``out``, ``dO``), ``dK/dV`` (per key block: stream ``q``, ``dO``;
  four products), ``dQ`` (per query block: stream ``k``, ``v``; three products): ``S`` and
  ``dP`` are computed twice, ``3.5x`` the forward's FLOPs where the floor counts ``2.5x``.
* where the table has no kernel (head 512 backward, heads above 128 on sm_80) the op runs the
  chunked PyTorch path of ``vqvae_fast/ops/spatial_attention.py``: its GEMMs and elementwise
  passes over fp32 ``(B, rows, N)`` blocks are listed one by one (GEMMs at 80% of the tensor
  rate, elementwise at 90% of the bandwidth, each from HBM -- the blocks are 32-64 MB).
"""

from __future__ import annotations

import math

from vqvae_fast.kernels import spatial_attention as launcher
from vqvae_fast.kernels import spatial_attention_backward as backward_launcher
from vqvae_fast.ops.spatial_attention import CHUNK_BYTES, chunk_rows

from .work import BYTES, LaunchWork, StaticCase, cdiv, meta, recorded

TABLE = "vqvae_fast.kernels.spatial_attention_table"
GEMM_EFFICIENCY = 0.8
ELEMENTWISE_EFFICIENCY = 0.9
#: fp32 operations per logit of the online softmax (scale, max, exp2, sum, rescale)
SOFTMAX_FLOPS = 6


def launches(case: StaticCase, capability: int, sms: int) -> list[LaunchWork]:
    b, c, n = case.dims
    head = launcher.head_size(c)
    q, k, v, out = (meta((b, c, n), case.dtype) for _ in range(4))
    lse = meta((b, n), "fp32")
    scale = c ** -0.5
    triton_dtype = launcher.supported_dtype(q.dtype)  # fp32 runs the chunked path (cuBLAS)
    if case.mode == "forward":
        if not triton_dtype or not launcher.forward_configs(head, capability):
            return chunked_forward(case)
        with recorded(launcher, capability, sms) as log:
            launcher.forward(q, k, v, out, lse, scale)
        return [_work(case, launch) for launch in log]
    if not triton_dtype or launcher.backward_configs(head, capability) is None:
        return chunked_backward(case)
    grads = [meta((b, c, n), case.dtype) for _ in range(3)]
    with recorded(backward_launcher, capability, sms) as log:
        backward_launcher.backward(out, q, k, v, out, lse, *grads, scale)
    works = [_work(case, launch) for launch in log]
    dq = next(w for w in works if w.config.kernel == "_dq_kernel")
    splits = dict(dq.config.pointers)["dQ"] == "fp32"
    if splits:  # the launcher adds the fp32 partial sums, then rounds into dq
        n_splits = dq.grid // (cdiv(n, dict(dq.config.constexprs)["BLOCK_M"]) * b)
        part = n_splits * b * head * n * 4
        works += [_torch("torch sum of dQ partials", part, b * head * n * 4, reread=part),
                  _torch("torch copy dQ to the input dtype", b * head * n * 4, b * c * n * BYTES[case.dtype])]
    return works


def _torch(label, read, write, flops=0.0, operand="bf16", notes=(), reread=0.0) -> LaunchWork:
    efficiency = GEMM_EFFICIENCY if flops else ELEMENTWISE_EFFICIENCY
    fma = operand == "fp32"  # an fp32 GEMM without TF32 runs on the CUDA cores
    return LaunchWork(label, None, None, 1, dram_bytes=read + write, l2_bytes=read, store_bytes=write,
                      reread_bytes=reread, tensor_flops=0.0 if fma else flops, fma_flops=flops if fma else 0.0,
                      tensor_operand="bf16" if fma else operand, torch_efficiency=efficiency, notes=list(notes))


def _work(case: StaticCase, launch) -> LaunchWork:
    cfg = launch.config
    args = dict(zip(launch.kernel.arg_names, launch.args))
    t = dict(cfg.constexprs)
    b, c, n = case.dims
    s = BYTES[case.dtype]
    grid = math.prod(launch.grid)
    kernel = cfg.kernel
    lw = LaunchWork(kernel.strip("_").replace("_kernel", ""), TABLE, cfg, grid, tensor_operand=case.dtype)
    if kernel == "_forward_kernel":
        head, bm, bn, bco = t["HEAD"], t["BLOCK_M"], t["BLOCK_N"], t["BLOCK_CO"]
        splits = launch.grid[2]
        lw.prologue_load_bytes = bm * head * s
        lw.trips = cdiv(min(args["keys_per_split"], n), bn)
        lw.trip_load_bytes = (head * bn + bn * bco) * s
        lw.tensor_flops = grid * lw.trips * 2 * bm * bn * (head + bco)
        lw.fma_flops = grid * lw.trips * bm * bn * SOFTMAX_FLOPS
        out_bytes = splits * b * head * n * 4 + splits * b * n * 4 if t["SPLIT"] else b * head * n * s + b * n * 4
        lw.store_bytes = out_bytes
        lw.dram_bytes = 3 * b * head * n * s + out_bytes
        lw.l2_bytes = grid * lw.load_bytes_per_cta
        if bco < head:
            lw.notes.append(f"logits recomputed for each of {head // bco} output-channel blocks "
                            f"({(head + bco) * head // bco / (2 * head):.2f}x the floor's FLOPs)")
        if splits > 1:
            lw.notes.append(f"keys split {splits} ways: fp32 partial outputs")
    elif kernel == "_combine_kernel":
        splits, head = args["SPLITS"], args["C"]
        lw.trips = cdiv(head, t["BLOCK_C"]) * splits
        lw.trip_load_bytes = t["BLOCK_C"] * t["BLOCK_P"] * 4
        reads = splits * b * head * n * 4 + splits * b * n * 4
        lw.store_bytes = b * head * n * s + b * n * 4
        lw.dram_bytes, lw.l2_bytes, lw.reread_bytes = reads + lw.store_bytes, reads, reads
    elif kernel == "_delta_kernel":
        head = args["C"]
        lw.trips = cdiv(head, t["BLOCK_C"])
        lw.trip_load_bytes = 2 * t["BLOCK_C"] * t["BLOCK_P"] * s
        lw.store_bytes = b * n * 4
        lw.l2_bytes = 2 * b * head * n * s
        lw.dram_bytes = lw.l2_bytes + lw.store_bytes
    elif kernel in ("_dkdv_kernel", "_dq_kernel"):
        head, bm, bn = t["HEAD"], t["BLOCK_M"], t["BLOCK_N"]
        if kernel == "_dkdv_kernel":  # fixed keys, streamed queries: S, dV, dP, dK
            lw.prologue_load_bytes = 2 * head * bn * s
            lw.trips = cdiv(n, bm)
            lw.trip_load_bytes = 2 * head * bm * s + 2 * bm * 4
            products = 4
            lw.store_bytes = 2 * b * head * n * s
        else:  # fixed queries, streamed keys: S, dP, dQ
            lw.prologue_load_bytes = 2 * head * bm * s + 2 * bm * 4
            lw.trips = cdiv(min(args["keys_per_split"], n), bn)
            lw.trip_load_bytes = 2 * head * bn * s
            products = 3
            split = dict(cfg.pointers)["dQ"] == "fp32"
            lw.store_bytes = (launch.grid[2] * b * head * n * 4) if split else b * head * n * s
        lw.tensor_flops = grid * lw.trips * products * 2 * bm * bn * head
        lw.fma_flops = grid * lw.trips * bm * bn * SOFTMAX_FLOPS
        lw.l2_bytes = grid * lw.load_bytes_per_cta
        lw.dram_bytes = 4 * b * head * n * s + 2 * b * n * 4 + lw.store_bytes
        lw.reread_bytes = 4 * b * head * n * s + 2 * b * n * 4  # Delta's kernel read out and dO just before
        lw.notes.append("S and dP recomputed in both the dK/dV and the dQ kernel")
    else:
        raise NotImplementedError(f"spatial_attention static model: no accounting for {kernel}")
    return lw


# ----------------------------------------------------------------------------------------------
# The chunked PyTorch path (vqvae_fast/ops/spatial_attention.py), op by op


def _operand(case: StaticCase) -> str:
    """The GEMMs' operand type: fp32 inputs run full fp32 GEMMs (PyTorch's default, no TF32)."""
    return case.dtype


def chunked_forward(case: StaticCase) -> list[LaunchWork]:
    b, c, n = case.dims
    s = BYTES[case.dtype]
    rows = chunk_rows(b, n)
    works = []
    note = ["no Triton forward for this head size on this GPU: chunked PyTorch"]
    for r0 in range(0, n, rows):
        r = min(rows, n - r0)
        block = b * r * n * 4  # one fp32 (B, r, N) block of logits
        works += [
            _torch("torch bmm q^T k (fp32 out)", b * c * (r + n) * s, block, 2 * b * r * n * c, _operand(case), note),
            _torch("torch logits *= scale", block, block),
            _torch("torch amax", block, b * r * 4),
            _torch("torch sub_ max", block, block),
            _torch("torch exp_", block, block),
            _torch("torch sum", block, b * r * 4),
            _torch("torch div_ sum", block, block),
            _torch("torch p.to(dtype)", block, block // 4 * s),
            _torch("torch bmm v p^T", b * c * n * s + block // 4 * s, b * c * r * s, 2 * b * c * n * r, _operand(case)),
            _torch("torch copy into out", b * c * r * s, b * c * r * s),
        ]
        note = []
    return works


def chunked_backward(case: StaticCase) -> list[LaunchWork]:
    b, c, n = case.dims
    s = BYTES[case.dtype]
    cn4 = b * c * n * 4
    rows = chunk_rows(b, n, CHUNK_BYTES // 2)
    works = [_torch("torch zeros dK, dV accumulators", 0, 2 * cn4,
                    notes=["no Triton backward for this head size on this GPU: chunked PyTorch"])]
    for r0 in range(0, n, rows):
        r = min(rows, n - r0)
        block, block16, cr4 = b * r * n * 4, b * r * n * s, b * c * r * 4
        works += [
            _torch("torch dO chunk to fp32", b * c * r * s, cr4),
            _torch("torch out chunk to fp32", b * c * r * s, cr4),
            _torch("torch Delta = sum(out * dO)", 2 * cr4, cr4 + b * r * 4),
            _torch("torch bmm q^T k (fp32 out)", b * c * (r + n) * s, block, 2 * b * r * n * c, _operand(case)),
            _torch("torch logits *= scale", block, block),
            _torch("torch sub_ lse", block, block),
            _torch("torch exp_", block, block),
            _torch("torch row sums", block, b * r * 4),
            _torch("torch p.to(dtype)", block, block16),
            _torch("torch bmm dO p (dV, fp32 out)", b * c * r * s + block16, cn4, 2 * b * c * r * n, _operand(case)),
            _torch("torch dV += ", 2 * cn4, cn4),
            _torch("torch bmm dO^T v (dP, fp32 out)", b * c * (r + n) * s, block, 2 * b * r * n * c, _operand(case)),
            _torch("torch dP -= Delta", block, block),
            _torch("torch dS = dP * p", 2 * block, block),
            _torch("torch dS.to(dtype)", block, block16),
            _torch("torch bmm k dS^T (dQ, fp32 out)", b * c * n * s + block16, cr4, 2 * b * c * n * r, _operand(case)),
            _torch("torch dQ *= scale / l", cr4, cr4),
            _torch("torch dQ chunk into dq", cr4, b * c * r * s),
            _torch("torch bmm q dS (dK, fp32 out)", b * c * r * s + block16, cn4, 2 * b * c * r * n, _operand(case)),
            _torch("torch dK += ", 2 * cn4, cn4),
        ]
    works += [_torch("torch dK *= scale", cn4, cn4), _torch("torch dK copy", cn4, b * c * n * s),
              _torch("torch dV copy", cn4, b * c * n * s)]
    return works
