"""spatial_attention: Triton kernels (interpreter on CPU) and the chunked cpu backend against the
reference, gradients, layouts, fp16 overflow, custom-op registrations, memory bound (the compile gate
is tests/test_compile_gate.py)."""

from __future__ import annotations

import importlib

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import vqvae_fast
from vqvae_fast.reference import ops as reference
from helpers import DispatchedOps, assert_matches_reference, kernel_launches

attention_ops = importlib.import_module("vqvae_fast.ops.spatial_attention")


def random_qkv(shape, dtype, device, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=gen, dtype=torch.float64).to(device=device, dtype=dtype) for _ in range(3)]


def reference_with_grads(q, k, v, grad):
    """Reference output and its gradients (autograd of the reference) in the inputs' dtype."""
    q, k, v = (t.detach().clone().requires_grad_() for t in (q, k, v))
    out = reference.spatial_attention(q, k, v)
    dq, dk, dv = torch.autograd.grad(out, (q, k, v), grad)
    return out, dq, dk, dv


def fast_with_grads(q, k, v, grad):
    q, k, v = (t.detach().clone().requires_grad_() for t in (q, k, v))
    out = vqvae_fast.spatial_attention(q, k, v)
    dq, dk, dv = torch.autograd.grad(out, (q, k, v), grad)
    return out, dq, dk, dv


# One rounding of the largest output in the dtype, on top of docs/testing.md's "2x the same-dtype
# reference's error": a kernel that keeps more in fp32 still rounds its outputs once.
ROUNDING = {torch.float16: 1e-3, torch.bfloat16: 8e-3, torch.float32: 2e-5, torch.float64: 1e-12}


def check_against_reference(q, k, v, dtype):
    grad = torch.randn(q.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(q.device, dtype)
    actual = fast_with_grads(q, k, v, grad)
    for got, like in zip(actual, (q, k, v, v)):
        assert got.dtype == dtype and got.shape == like.shape
    assert_matches_reference(actual, reference_with_grads, (q, k, v, grad), dtype=dtype, atol=ROUNDING[dtype])


# A covering subset of N in {1, 7, 64, 256, 1000}, C in {32, 64, 128, 256, 512}, batch 1-3 and
# the three dtypes (the interpreter is slow at large C, so N is small there). C = 48 and 300 pad
# the head; fp32 on the triton backend takes the chunked path. Heads 256 and 512 run by blocks of
# query rows (tiles of 128 queries and keys): N = 20, 33, 40 and 64 leave most of a tile masked,
# N = 300 (test_by_rows_in_blocks) spans three.
KERNEL_CASES = [
    (1, 32, 1, torch.float16),
    (3, 32, 7, torch.bfloat16),
    (2, 64, 64, torch.float16),
    (1, 48, 100, torch.bfloat16),
    (1, 128, 256, torch.bfloat16),
    (1, 32, 1000, torch.float16),
    (2, 256, 64, torch.float16),
    (2, 512, 40, torch.bfloat16),
    (1, 512, 20, torch.float16),
    (1, 512, 64, torch.bfloat16),
    (1, 300, 33, torch.float16),
    (2, 64, 70, torch.float32),
]


FLASH_KERNELS = {"_forward_kernel", "_dkdv_kernel", "_dq_kernel"}
ROWS_KERNELS = {"_scores_kernel", "_attend_kernel", "_score_grads_kernel", "_bmm_kernel"}  # by blocks of query rows


@pytest.mark.parametrize("batch,channels,n,dtype", KERNEL_CASES)
def test_triton_matches_reference(triton_device, batch, channels, n, dtype):
    q, k, v = random_qkv((batch, channels, n), dtype, triton_device)
    with kernel_launches() as launched:
        check_against_reference(q, k, v, dtype)
    if dtype == torch.float32:  # fp32 takes the chunked PyTorch path on the triton backend
        assert not launched
    else:
        kernels = ROWS_KERNELS if channels > 128 else FLASH_KERNELS
        assert {"_delta_kernel"} | kernels == set(launched) - {"_combine_kernel"}


def sdpa(q, k, v, scale=None):
    """Attention of ``(B, C, N)`` tensors by ``F.scaled_dot_product_attention``: an implementation
    independent of the reference's (for the cases where the fast path is the reference's own
    formulation)."""
    out = torch.nn.functional.scaled_dot_product_attention(
        *(t.transpose(1, 2)[:, None] for t in (q, k, v)), scale=scale)
    return out[:, 0].transpose(1, 2)


CPU_CASES = [(2, 32, 7, torch.float32), (1, 64, 256, torch.bfloat16), (3, 16, 33, torch.float16),
             (2, 8, 5, torch.float64)]


@pytest.mark.parametrize(
    "batch,channels,n,dtype,chunk_bytes",
    # the default budget: 16-bit inputs (small fp32/fp64 ones take test_cpu_backend_plain_path's
    # formulation); 128 bytes: every dtype, in chunks of a few rows
    [case + (None,) for case in CPU_CASES if case[3] in (torch.float16, torch.bfloat16)]
    + [case + (128,) for case in CPU_CASES],
)
def test_cpu_backend_chunked_matches_reference(batch, channels, n, dtype, chunk_bytes, monkeypatch):
    """The op's chunked implementation against the reference."""
    if chunk_bytes is not None:
        monkeypatch.setattr(attention_ops, "CHUNK_BYTES", chunk_bytes)
    q, k, v = random_qkv((batch, channels, n), dtype, "cpu")
    with vqvae_fast.use_backend("cpu"), DispatchedOps() as ops:
        check_against_reference(q, k, v, dtype)
    assert "vqvae_fast.spatial_attention.default" in ops.names
    assert "vqvae_fast.spatial_attention_backward.default" in ops.names


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cpu_backend_plain_path(dtype):
    """Small fp32/fp64 problems run the plain formulation (one GEMM, softmax, one GEMM: the
    reference's own ops, without the custom op); checked against SDPA, values and gradients."""
    q, k, v = (t.requires_grad_() for t in random_qkv((2, 32, 7), dtype, "cpu"))
    grad = torch.randn(q.shape, dtype=dtype)
    with vqvae_fast.use_backend("cpu"), DispatchedOps() as ops:
        out = vqvae_fast.spatial_attention(q, k, v)
        grads = torch.autograd.grad(out, (q, k, v), grad)
    assert not any(name.startswith("vqvae_fast.") for name in ops.names)
    leaves = [t.detach().double().requires_grad_() for t in (q, k, v)]
    expected = sdpa(*leaves, scale=32**-0.5)
    expected_grads = torch.autograd.grad(expected, leaves, grad.double())
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-12)
    for got, want in zip((out, *grads), (expected, *expected_grads)):
        assert got.dtype == dtype
        torch.testing.assert_close(got.double(), want, **tol)


def test_cpu_backend_gradcheck_fp64(monkeypatch):
    """The chunked implementation's backward (chunks of a few rows) by finite differences."""
    monkeypatch.setattr(attention_ops, "CHUNK_BYTES", 128)
    q, k, v = (t.requires_grad_() for t in random_qkv((2, 4, 5), torch.float64, "cpu"))
    with vqvae_fast.use_backend("cpu"), DispatchedOps() as ops:
        assert torch.autograd.gradcheck(lambda a, b, c: vqvae_fast.spatial_attention(a, b, c, 0.7), (q, k, v))
    assert "vqvae_fast.spatial_attention_backward.default" in ops.names


def test_four_dimensional_inputs_and_scale(triton_device):
    q, k, v = random_qkv((2, 32, 3, 5), torch.float16, triton_device)
    out = vqvae_fast.spatial_attention(q, k, v, scale=0.3)
    assert out.shape == (2, 32, 3, 5)
    assert_matches_reference(
        out, lambda a, b, c: reference.spatial_attention(a, b, c, 0.3), (q, k, v), dtype=torch.float16,
        atol=ROUNDING[torch.float16],
    )


@pytest.mark.parametrize("tokens", [False, True], ids=["positions-innermost", "channels-innermost"])
def test_reads_fused_projection_in_place(triton_device, tokens, monkeypatch):
    """q, k, v as channel slices of one (B, 3C, N) tensor, in both layouts: read in place (no
    copy, forward, or backward with a gradient laid out like the output), the output keeps the
    input's innermost dimension, and no input is modified."""
    kernels = importlib.import_module("vqvae_fast.kernels.spatial_attention")
    copies = []
    real_empty = kernels.kernel_empty
    monkeypatch.setattr(kernels, "kernel_empty", lambda *a: copies.append(a) or real_empty(*a))
    batch, channels, n = 2, 64, 48 if tokens else 64  # in place: C a head size; positions innermost: N % 16 == 0
    if tokens:
        fused = torch.randn(batch, n, 3 * channels, dtype=torch.float64).to(triton_device, torch.bfloat16).transpose(1, 2)
    else:
        fused = torch.randn(batch, 3 * channels, n, dtype=torch.float64).to(triton_device, torch.bfloat16)
    before = fused.clone()
    q, k, v = fused.split(channels, dim=1)
    check_against_reference(q, k, v, torch.bfloat16)
    copies.clear()  # the reference check's gradient is NCHW whatever the layout: one copy there
    out = vqvae_fast.spatial_attention(*(t.detach().requires_grad_() for t in (q, k, v)))
    out.backward(torch.randn_like(out))  # randn_like keeps out's strides
    assert (out.stride(1) == 1) == tokens
    assert torch.equal(fused, before)
    assert not copies


def test_ragged_layouts_are_copied_once(triton_device, monkeypatch):
    """Positions innermost with N % 16 != 0, or C % 16 != 0: one explicit copy per operand."""
    kernels = importlib.import_module("vqvae_fast.kernels.spatial_attention")
    copies = []
    real_empty = kernels.kernel_empty
    monkeypatch.setattr(kernels, "kernel_empty", lambda *a: copies.append(a) or real_empty(*a))
    q, k, v = random_qkv((1, 40, 30), torch.float16, triton_device)
    out = vqvae_fast.spatial_attention(q, k, v)
    assert len(copies) == 4  # q, k, v and the output
    assert_matches_reference(out, reference.spatial_attention, (q, k, v), dtype=torch.float16, atol=ROUNDING[torch.float16])


def test_channels_last_in_channels_last_out(triton_device):
    q, k, v = (t.to(memory_format=torch.channels_last) for t in random_qkv((1, 32, 4, 6), torch.float16, triton_device))
    out = vqvae_fast.spatial_attention(q, k, v)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert_matches_reference(out, reference.spatial_attention, (q, k, v), dtype=torch.float16, atol=ROUNDING[torch.float16])


@pytest.mark.parametrize("channels,splits", [(64, 2), (64, 3), (100, 2)])
def test_split_keys_combine(triton_device, channels, splits):
    """Key ranges split across programs and merged by the combine kernel (the launcher does this
    by itself when the queries alone cannot fill the GPU); C = 100 pads the head to 128."""
    kernels = importlib.import_module("vqvae_fast.kernels.spatial_attention")
    n = 150
    q, k, v = random_qkv((2, channels, n), torch.float16, triton_device)
    out = torch.empty_like(q)
    lse = torch.empty((2, n), device=triton_device, dtype=torch.float32)
    kernels.forward(q, k, v, out, lse, channels**-0.5, splits=splits)
    assert_matches_reference(out, reference.spatial_attention, (q, k, v), dtype=torch.float16, atol=ROUNDING[torch.float16])
    logits = torch.bmm(q.double().transpose(1, 2), k.double()) * channels**-0.5
    torch.testing.assert_close(lse.double(), torch.logsumexp(logits, 2), rtol=1e-4, atol=1e-4)


def test_falls_back_when_shared_memory_is_refused(triton_device, monkeypatch):
    """A device that refuses the first head-128 configuration's shared memory gets the second."""
    from triton.runtime.errors import OutOfResources

    if triton_device == "cuda" and torch.cuda.get_device_capability()[0] < 9:
        pytest.skip("the sm_90 configurations need an sm_90 device")
    kernels = importlib.import_module("vqvae_fast.kernels.spatial_attention")
    first, second = kernels.forward_configs(128, 90)
    real_launch = kernels._launch_forward
    tried = []

    def launch(cfg, *args):
        tried.append(cfg)
        if cfg == first:
            raise OutOfResources(131072, 100000, "shared memory")
        return real_launch(cfg, *args)

    monkeypatch.setattr(kernels, "_launch_forward", launch)
    monkeypatch.setattr(kernels, "device_facts", lambda device: (90, 132))
    monkeypatch.setattr(kernels, "_FIRST_WORKING", {})
    q, k, v = random_qkv((1, 128, 20), torch.float16, triton_device)
    out, lse = torch.empty_like(q), torch.empty((1, 20), device=triton_device)
    kernels.forward(q, k, v, out, lse, 128**-0.5)
    kernels.forward(q, k, v, out, lse, 128**-0.5)
    assert tried == [first, second, second]
    assert_matches_reference(out, reference.spatial_attention, (q, k, v), dtype=torch.float16, atol=ROUNDING[torch.float16])


def test_split_choice_fills_the_gpu():
    kernels = importlib.import_module("vqvae_fast.kernels.spatial_attention")
    assert kernels.choose_splits(programs=64, key_blocks=256, processors=132) == 2  # (1, 512, 4096)
    assert kernels.choose_splits(programs=256, key_blocks=64, processors=132) == 1
    assert kernels.choose_splits(programs=128, key_blocks=64, processors=132) == 1  # (4, 256, 4096)
    assert kernels.choose_splits(programs=32, key_blocks=8, processors=132) == 2  # (8, 512, 256): 4 blocks each
    assert kernels.choose_splits(programs=32, key_blocks=7, processors=132) == 1


@pytest.mark.parametrize("channels,n", [(128, 90), (256, 40)])
def test_sm80_configuration(triton_device, monkeypatch, channels, n):
    """The sm_80 tile table (other block sizes) through the interpreter: head 128 flash, head 256
    by rows."""
    if triton_device != "cpu":
        pytest.skip("the device's own capability decides on a GPU")
    for name in ("spatial_attention", "spatial_attention_backward"):
        monkeypatch.setattr(importlib.import_module(f"vqvae_fast.kernels.{name}"), "device_facts",
                            lambda device: (80, 108))
    q, k, v = random_qkv((1, channels, n), torch.bfloat16, triton_device)
    with kernel_launches() as launched:
        check_against_reference(q, k, v, torch.bfloat16)
    assert {"_delta_kernel"} | (FLASH_KERNELS if channels <= 128 else ROWS_KERNELS) == set(launched)


@pytest.mark.parametrize("tokens", [False, True], ids=["positions-innermost", "channels-innermost"])
def test_backward_by_rows_in_blocks(triton_device, tokens, monkeypatch):
    """Head 512 by rows, forward and backward, with a scratch buffer of one 128-row block (three
    blocks at N = 300: the forward's scores and product per block; the backward's fp32 partial
    sums started, added to, and rounded into the result with the ragged last block) against the
    reference, in both layouts, batch 2."""
    if triton_device != "cpu":
        pytest.skip("the block size follows the device's memory on a GPU")
    rows = importlib.import_module("vqvae_fast.kernels.spatial_attention_rows")
    n = 300 if tokens else 288  # positions innermost: N % 16 == 0
    monkeypatch.setattr(rows, "SCRATCH_BYTES", 2 * 4 * 128 * 384)  # batch 2, keys padded to 384
    for name in ("spatial_attention", "spatial_attention_backward"):  # 8 SMs: one 128-row block fills them
        monkeypatch.setattr(importlib.import_module(f"vqvae_fast.kernels.{name}"), "device_facts",
                            lambda device: (90, 8))
    rows.rows_plan.cache_clear()
    rows.forward_plan.cache_clear()
    q, k, v = random_qkv((2, n, 512) if tokens else (2, 512, n), torch.float16, triton_device)
    if tokens:
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
    with kernel_launches() as launched:
        check_against_reference(q, k, v, torch.float16)
    rows.rows_plan.cache_clear()
    rows.forward_plan.cache_clear()
    # the forward's scratch pads keys to its 256-key score tiles on sm_90a: 128 rows a block too
    assert launched.count("_score_grads_kernel") == 3 and launched.count("_scores_kernel") == 3


def test_rows_per_block_fill_the_gpu_within_the_scratch_bounds():
    """Blocks of query rows (planning only): what the 64 MiB scratch holds, or more where the
    products of a block would leave multiprocessors idle (within 512 MiB), blocks evened out."""
    rows = importlib.import_module("vqvae_fast.kernels.spatial_attention_rows")
    plans = [rows.forward_plan, rows.rows_plan]
    # (1, 512, 4096): every row at once, forward (32 MiB) and backward (64 MiB)
    assert [plan(1, 4096, 512, "bf16", "n", "sm_90a", 132).rows for plan in plans] == [4096, 4096]
    # (1, 512, 16384): 64 MiB holds 2048 (forward) or 1024 rows, whose products have 64 or 32
    # tiles of 128 x 128; blocks of 4096 rows give them 128
    assert [plan(1, 16384, 512, "bf16", "n", "sm_90a", 132).rows for plan in plans] == [4096, 4096]
    assert rows.rows_plan(1, 16384, 512, "bf16", "n", "sm_90a", 132).blocks == 4
    # a batch whose one row of tiles fills the GPU: the budget, at least one tile
    assert rows.rows_plan(64, 4096, 512, "bf16", "n", "sm_90a", 132).rows == 128
    # one huge image: filling the GPU would take 8 GiB of scratch; one tile instead
    assert rows.rows_plan(1, 2**22, 512, "bf16", "n", "sm_90a", 132).rows == 128
    # evened out: 5000 rows in two blocks of 2560, not 4224 + 776
    assert rows.rows_plan(1, 5000, 512, "bf16", "c", "sm_90a", 132).rows == 2560
    # the forward's scores on 128 x 256 tiles, or 128 x 128 where those leave SMs idle
    score_keys = [dict(rows.forward_plan(*key, "bf16", "n", "sm_90a", 132).scores.constexprs)["BLOCK_N"]
                  for key in ((1, 4096, 512), (1, 1024, 512), (8, 256, 512))]  # 512, 32, 16 tiles of 128 x 256
    assert score_keys == [256, 128, 128]


@pytest.mark.parametrize("backend", ["cpu", "triton"])
def test_fp16_logits_that_overflow_without_prescale(backend):
    """|q . k| far beyond fp16's 65504 (q = k), but s q . k fits: finite, matches fp32."""
    if backend == "triton" and not vqvae_fast._backend.triton_interpreting():
        pytest.skip("CPU tensors reach Triton only in the interpreter")
    channels = 64
    base = torch.randn(1, channels, 40, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    q = (40 * base).half()
    k = q.clone()
    v = torch.randn(1, channels, 40, dtype=torch.float64).half()
    assert torch.isinf(torch.bmm(q.transpose(1, 2), k)).any()  # the unscaled logits overflow
    with vqvae_fast.use_backend(backend):
        out = vqvae_fast.spatial_attention(q, k, v)
    assert torch.isfinite(out).all()
    expected = reference.spatial_attention(q.double(), k.double(), v.double())
    torch.testing.assert_close(out.double(), expected, rtol=0, atol=2e-3)


def test_empty_inputs(triton_device):
    for shape in [(0, 32, 10), (2, 32, 0), (2, 32, 0, 4)]:
        q, k, v = (torch.zeros(shape, device=triton_device, dtype=torch.float16, requires_grad=True) for _ in range(3))
        out = vqvae_fast.spatial_attention(q, k, v)
        assert out.shape == shape
        out.sum().backward()
        assert q.grad.shape == shape


def test_bad_inputs():
    q = torch.randn(2, 8, 10)
    with pytest.raises(ValueError, match="k must have q's shape"):
        vqvae_fast.spatial_attention(q, torch.randn(2, 8, 11), q)
    with pytest.raises(ValueError, match="v must have q's shape"):
        vqvae_fast.spatial_attention(q, q, torch.randn(2, 4, 10))
    with pytest.raises(TypeError, match="k has dtype"):
        vqvae_fast.spatial_attention(q, q.half(), q)
    with pytest.raises(ValueError, match="at least one channel"):
        z = torch.randn(2, 0, 10)
        vqvae_fast.spatial_attention(z, z, z)
    with pytest.raises(ValueError, match="q must have 3 or 4 dimensions"):
        vqvae_fast.spatial_attention(q[0], q[0], q[0])
    with pytest.raises(TypeError, match="q must have dtype"):
        i = torch.ones(2, 8, 10, dtype=torch.int32)
        vqvae_fast.spatial_attention(i, i, i)
    with pytest.raises(ValueError, match="scale must be > 0"):
        vqvae_fast.spatial_attention(q, q, q, scale=0.0)
    with pytest.raises(ValueError, match="k is on meta"):
        vqvae_fast.spatial_attention(q, q.to("meta"), q)


class _LargestAllocation(TorchDispatchMode):
    """Records the largest tensor any aten op produces."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        for t in result if isinstance(result, (tuple, list)) else [result]:
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return result


def test_chunked_backend_never_allocates_n_by_n(monkeypatch):
    """The cpu backend's largest tensor, forward and backward, is one chunk of logits, not N x N;
    and at 128 x 128 positions the default chunk is far below N x N."""
    n = 16384
    rows = attention_ops.chunk_rows(1, n)
    assert rows * n * 4 <= attention_ops.CHUNK_BYTES and rows <= n // 16
    monkeypatch.setattr(attention_ops, "CHUNK_BYTES", 64 * 1024)
    n = 512
    q, k, v = (t.requires_grad_() for t in random_qkv((1, 8, n), torch.float32, "cpu"))
    with vqvae_fast.use_backend("cpu"), _LargestAllocation() as mode:
        out = vqvae_fast.spatial_attention(q, k, v)
        out.backward(torch.ones_like(out))
    assert mode.largest <= n * n // 8, mode.largest
    expected = reference.spatial_attention(q.detach().double(), k.detach().double(), v.detach().double())
    torch.testing.assert_close(out.detach().double(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("tokens", [False, True], ids=["positions-innermost", "channels-innermost"])
def test_opcheck(tokens):
    q, k, v = random_qkv((2, 16, 12), torch.float32, "cpu")
    if tokens:  # outputs in (B, N, C) storage: the fake implementation must give the same strides
        q, k, v = (t.transpose(1, 2).contiguous().transpose(1, 2) for t in (q, k, v))
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    with vqvae_fast.use_backend("cpu"):
        torch.library.opcheck(torch.ops.vqvae_fast.spatial_attention.default, (q, k, v, 0.25))
        out, lse = torch.ops.vqvae_fast.spatial_attention(q, k, v, 0.25)
        assert (out.stride(1) == 1) == tokens
        args = (torch.randn_like(out), q.detach(), k.detach(), v.detach(), out.detach(), lse)
        torch.library.opcheck(torch.ops.vqvae_fast.spatial_attention_backward.default, args + (0.25,))


def test_torch_compile_fullgraph():
    q, k, v = (t.requires_grad_() for t in random_qkv((2, 16, 3, 4), torch.float32, "cpu"))

    @torch.compile(fullgraph=True, backend="aot_eager")
    def attend(a, b, c):
        return vqvae_fast.spatial_attention(a * 1.0, b, c).sum()

    torch._dynamo.reset()
    loss = attend(q, k, v)
    loss.backward()
    expected_q = q.detach().clone().requires_grad_()
    reference.spatial_attention(expected_q, k.detach(), v.detach()).sum().backward()
    torch.testing.assert_close(q.grad, expected_q.grad, rtol=1e-4, atol=1e-5)


def test_default_backends():
    """cpu by default on CPU tensors; the forced reference backend runs the reference (no custom
    op), which agrees with SDPA."""
    table = attention_ops.BACKENDS
    assert table.select(torch.device("cpu"), torch.float32).name == "cpu"
    assert table.select(torch.device("cpu"), torch.float64).name == "cpu"
    q, k, v = random_qkv((1, 8, 6), torch.float32, "cpu")
    with vqvae_fast.use_backend("reference"), DispatchedOps() as ops:
        assert table.select(torch.device("cpu"), torch.float32).name == "reference"
        out = vqvae_fast.spatial_attention(q, k, v)
    assert not any(name.startswith("vqvae_fast.") for name in ops.names)
    torch.testing.assert_close(out, sdpa(q, k, v), rtol=1e-5, atol=1e-6)
