"""Every non-reference CUDA backend of every op once, on small odd shapes: the compute-sanitizer run.

``benchmarks/gpu_check.sh`` runs::

    PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool memcheck \\
        python -m vqvae_fast.benchmarks.sanitize

(no caching allocator, so that an out-of-bounds access cannot land silently in a neighbouring
cached block). Each backend that can run on CUDA tensors (``triton``, the extension's ``cuda``,
...) is forced with ``use_backend``, forward and, where the op has one, backward, in fp32, fp16 and
bf16, NCHW and channels_last; one line per run. Exit status 1 if a run raised, 2 without CUDA.
Correctness is the test suite's job; this only has to touch every kernel configuration the
small shapes reach.
"""

from __future__ import annotations

import os
import sys

import torch

import vqvae_fast
from vqvae_fast._backend import op_backends

from .definitions import CONV_IMPL_VAR

GRAD_OPS = ("group_norm_silu", "spatial_attention", "padded_conv2d")


def cases(device, dtype):
    """(op, label, fn(requires_grad) -> (output, inputs needing grad)).

    The shapes are chosen to reach every kernel path: group norm's fused and split paths; attention
    read in place (N a multiple of 16) and through its explicit copy (ragged N), head sizes 64 to
    512, split keys and split dQ (batch 1, long N), q/k/v as slices of one fused projection;
    argmin's small-D, aligned-tile and 4-D latent paths, with and without distances; the padded
    convolution through cuDNN and through the decomposed border kernels.
    """
    def randn(*shape, cl=False):
        t = torch.randn(*shape, device=device, dtype=dtype)
        return t.contiguous(memory_format=torch.channels_last) if cl else t

    for cl in (False, True):
        fmt = "channels_last" if cl else "nchw"
        # 2x64x7x9: one program per group (fused); 1x64x130x130: groups of 33800 values (split)
        for shape in ((2, 64, 7, 9), (1, 64, 130, 130)):
            def gn(grad, cl=cl, shape=shape):
                x, w, b = randn(*shape, cl=cl), randn(shape[1]), randn(shape[1])
                for t in (x, w, b):
                    t.requires_grad_(grad)
                return vqvae_fast.group_norm_silu(x, 32, w, b), [x, w, b]

            yield "group_norm_silu", f"{'x'.join(map(str, shape))} {fmt}", gn

        for impl in ("cudnn", "decomposed"):
            def conv(grad, cl=cl, impl=impl):
                os.environ[CONV_IMPL_VAR] = impl
                x, w, b = randn(2, 16, 9, 7, cl=cl), randn(24, 16, 3, 3, cl=cl) * 0.1, randn(24)
                for t in (x, w, b):
                    t.requires_grad_(grad)
                return vqvae_fast.padded_conv2d(x, w, b, stride=2, padding=(0, 1, 0, 1)), [x, w, b]

            yield "padded_conv2d", f"2x16x9x7->24 {fmt} {impl}", conv

    for b, c, n in ((2, 64, 77), (2, 128, 256), (1, 256, 128), (1, 512, 40), (1, 64, 1024)):
        def attn(grad, b=b, c=c, n=n):
            q, k, v = (randn(b, c, n).requires_grad_(grad) for _ in range(3))
            return vqvae_fast.spatial_attention(q, k, v), [q, k, v]

        yield "spatial_attention", f"{b}x{c}x{n}", attn

    def fused_attn(grad):
        qkv = randn(2, 3 * 64, 256).requires_grad_(grad)  # one projection, read as three slices
        q, k, v = qkv.split(64, dim=1)
        return vqvae_fast.spatial_attention(q, k, v), [qkv]

    yield "spatial_attention", "2x(3x64)x256 fused slices", fused_attn

    for n, k, d in ((300, 17, 8), (70, 1024, 64), (33, 5, 3), (256, 512, 64)):
        for precision in ("ieee", "fast"):
            def argmin(grad, n=n, k=k, d=d, precision=precision):
                return vqvae_fast.codebook_argmin(randn(n, d), randn(k, d), precision=precision), []

            yield "codebook_argmin", f"N={n} K={k} D={d} {precision}", argmin

    for cl in (False, True):
        def argmin_4d(grad, cl=cl):
            z = randn(2, 16, 9, 11, cl=cl)
            idx, dist = vqvae_fast.codebook_argmin(z, randn(40, 16), return_distance=True)
            return idx, []

        yield "codebook_argmin", f"2x16x9x11 {'channels_last' if cl else 'nchw'} +distance", argmin_4d


def main() -> int:
    if not torch.cuda.is_available():
        print("sanitize: no CUDA device")
        return 2
    device = torch.device("cuda")
    torch.manual_seed(0)
    failures = runs = 0
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        for op, label, fn in cases(device, dtype):
            table = op_backends(op)
            names = [name for name, backend in table.backends.items()
                     if name != "reference" and backend.reason_not_runnable(device, dtype, forced=True) is None]
            if not names:
                print(f"sanitize: {op:<18} {label:<28} {dtype}: no CUDA backend besides the reference")
                continue
            for name in names:
                runs += 1
                try:
                    with vqvae_fast.use_backend(name, ops=op):
                        grad = op in GRAD_OPS
                        out, leaves = fn(grad)
                        if grad:
                            torch.autograd.grad(out, leaves, torch.randn_like(out))
                    torch.cuda.synchronize()
                    status = "ok"
                except Exception as err:  # noqa: BLE001 - report every failure, keep going
                    failures += 1
                    status = f"FAILED {type(err).__name__}: {str(err).splitlines()[0][:160] if str(err) else ''}"
                print(f"sanitize: {op:<18} {label:<28} {str(dtype):<14} {name:<8} {status}", flush=True)
    os.environ.pop(CONV_IMPL_VAR, None)
    print(f"sanitize: {runs} runs, {failures} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
