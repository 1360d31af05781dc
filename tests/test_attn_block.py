"""The fast AttnBlock against the reference AttnBlock: state_dict, NCHW and channels-last,
dtypes, autocast, gradients, shared parameters, torch.compile, bad input."""

from __future__ import annotations

import pytest
import torch

import vqvae_fast
from vqvae_fast.nn import AttnBlock
from vqvae_fast.reference.blocks import AttnBlock as ReferenceAttnBlock
from helpers import assert_matches_reference, kernel_launches

ROUNDING = {torch.float16: 2e-3, torch.bfloat16: 1.6e-2, torch.float32: 1e-5, torch.float64: 1e-12}
FORMATS = {"nchw": torch.contiguous_format, "channels_last": torch.channels_last}


def reference_block(channels: int, seed: int = 0) -> ReferenceAttnBlock:
    """A reference block with non-trivial parameters (biases and norm affine included)."""
    torch.manual_seed(seed)
    block = ReferenceAttnBlock(channels)
    with torch.no_grad():
        for p in block.parameters():
            p.normal_(0.0, 0.15).add_(1.0 if p.dim() == 1 and p is block.norm.weight else 0.0)
    return block


def run_block(block_fn, x, state, dtype, memory_format):
    """``block(x)`` for a block of the fast or the reference class loaded with ``state``."""
    block = block_fn().to(dtype)
    block.load_state_dict(state)
    return block(x.to(dtype).contiguous(memory_format=memory_format))


def test_state_dict_keys_match_reference():
    ref = reference_block(32)
    fast = AttnBlock(32)
    assert list(fast.state_dict()) == list(ref.state_dict())
    fast.load_state_dict(ref.state_dict())
    for key, value in ref.state_dict().items():
        assert torch.equal(fast.state_dict()[key], value)


@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_matches_reference(triton_device, fmt, dtype):
    channels = 64
    state = reference_block(channels).state_dict()
    x = torch.randn(2, channels, 5, 6, dtype=torch.float64).to(triton_device)
    memory_format = FORMATS[fmt]

    def reference(x_):
        return run_block(lambda: ReferenceAttnBlock(channels), x_, state, x_.dtype, memory_format)

    with kernel_launches() as launched:
        y = run_block(lambda: AttnBlock(channels), x, state, dtype, memory_format).detach()
    assert y.dtype == dtype and y.is_contiguous(memory_format=memory_format)
    assert "_gn_fwd_fused_kernel" in launched  # fp32 attention takes cuBLAS, 16-bit the kernels
    assert ("_forward_kernel" in launched) == (dtype != torch.float32)
    assert_matches_reference(y, lambda x_: reference(x_).detach(), (x,), dtype=dtype, atol=ROUNDING[dtype])


@pytest.mark.parametrize("height,width", [(4, 8), (5, 6)], ids=["N=32", "N=30"])
def test_nchw_projection_layouts(triton_device, height, width):
    """NCHW with H W a multiple of 16 (q, k, v positions innermost) and not (channels innermost)."""
    channels = 32
    state = reference_block(channels).state_dict()
    x = torch.randn(2, channels, height, width, dtype=torch.float64).to(triton_device)
    with kernel_launches() as launched:
        y = run_block(lambda: AttnBlock(channels), x, state, torch.bfloat16, torch.contiguous_format).detach()
    assert y.is_contiguous() and "_forward_kernel" in launched

    def reference(x_):
        return run_block(lambda: ReferenceAttnBlock(channels), x_, state, x_.dtype, torch.contiguous_format).detach()

    assert_matches_reference(y, reference, (x,), dtype=torch.bfloat16, atol=ROUNDING[torch.bfloat16])


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_cpu_backend_fp64_exact_and_gradients(fmt):
    """fp64 on the cpu backend: output and every parameter's gradient as the reference's."""
    ref = reference_block(32).double()
    fast = AttnBlock(32).double()
    fast.load_state_dict(ref.state_dict())
    x = torch.randn(2, 32, 4, 3, dtype=torch.float64).contiguous(memory_format=FORMATS[fmt])
    x_fast, x_ref = x.clone().requires_grad_(), x.clone().requires_grad_()
    grad = torch.randn(2, 32, 4, 3, dtype=torch.float64)
    for op in ("group_norm_silu", "spatial_attention"):  # CPU tensors: the cpu backend, no kernel
        assert vqvae_fast._backend.op_backends(op).select(x.device, x.dtype).name == "cpu"
    with kernel_launches() as launched:
        y_fast = fast(x_fast)
    assert not launched
    y_ref = ref(x_ref)
    torch.testing.assert_close(y_fast, y_ref, rtol=1e-10, atol=1e-12)
    y_fast.backward(grad)
    y_ref.backward(grad)
    torch.testing.assert_close(x_fast.grad, x_ref.grad, rtol=1e-9, atol=1e-11)
    for (name, p_fast), p_ref in zip(fast.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p_fast.grad, p_ref.grad, rtol=1e-9, atol=1e-11, msg=name)


def test_gradients_through_triton(triton_device):
    """fp16 gradients of input and parameters against the reference's autograd in fp64."""
    channels = 32
    state = reference_block(channels).state_dict()
    x = torch.randn(1, channels, 4, 4, dtype=torch.float64).to(triton_device)
    grad = torch.randn(1, channels, 4, 4, dtype=torch.float64).to(triton_device)

    def grads(block_cls, x_, grad_):
        block = block_cls(channels).to(device=x_.device, dtype=x_.dtype)
        block.load_state_dict(state)
        x_ = x_.detach().clone().requires_grad_()
        block(x_).backward(grad_)
        params = block.state_dict(keep_vars=True)
        return [x_.grad] + [params[key].grad for key in ("q.weight", "k.weight", "v.weight", "proj_out.weight", "norm.weight")]

    with kernel_launches() as launched:
        actual = grads(AttnBlock, x.half(), grad.half())
    assert {"_forward_kernel", "_dkdv_kernel", "_dq_kernel", "_gn_bwd_fused_kernel"} <= set(launched)
    assert_matches_reference(
        actual, lambda x_, g_: grads(ReferenceAttnBlock, x_, g_), (x, grad), dtype=torch.float16,
        atol=ROUNDING[torch.float16],
    )


def test_from_reference_shares_parameters():
    ref = reference_block(32)
    fast = AttnBlock.from_reference(ref)
    for (name, p_fast), (ref_name, p_ref) in zip(fast.named_parameters(), ref.named_parameters()):
        assert name == ref_name and p_fast is p_ref
    assert fast.training == ref.training
    x = torch.randn(1, 32, 3, 3)
    fast(x).sum().backward()
    assert ref.q.weight.grad is not None and ref.proj_out.bias.grad is not None
    torch.testing.assert_close(fast(x), ref(x), rtol=1e-5, atol=1e-5)


def test_autocast_matches_reference():
    """CPU autocast to bf16: GEMMs in bf16, the residual kept in fp32 like the reference's."""
    ref = reference_block(32)
    fast = AttnBlock.from_reference(ref)
    x = torch.randn(2, 32, 4, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = fast(x)
        expected = ref(x)
    assert y.dtype == expected.dtype == torch.float32
    exact = ref.double()(x.double())
    error, baseline = (y.double() - exact).abs().max(), (expected.double() - exact).abs().max()
    assert error <= 2 * baseline + 1e-3, (error, baseline)


def test_torch_compile_fullgraph():
    fast = AttnBlock.from_reference(reference_block(32))
    compiled = torch.compile(fast, fullgraph=True, backend="aot_eager")
    torch._dynamo.reset()
    x = torch.randn(1, 32, 3, 4).contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(compiled(x), fast(x), rtol=1e-5, atol=1e-6)


def test_bad_input():
    block = AttnBlock(32)
    with pytest.raises(ValueError, match="x must have 32 channels"):
        block(torch.randn(1, 64, 2, 2))
    with pytest.raises(ValueError, match="x must have 4 dimensions"):
        block(torch.randn(1, 32, 4))
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        block([1.0])
