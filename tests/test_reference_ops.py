"""The reference ops and blocks against independent formulations of the same math."""

import pytest
import torch
import torch.nn.functional as F

from vqvae_fast import reference
from vqvae_fast.reference import ops

DTYPES = [torch.float32, torch.float64]


def tol(dtype):
    return dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("groups", [1, 4, 16])
@pytest.mark.parametrize("activation", ["silu", None])
def test_group_norm_silu_matches_explicit_statistics(dtype, groups, activation):
    x = torch.randn(3, 16, 5, 7, dtype=dtype) * 3 + 2
    w = torch.randn(16, dtype=dtype)
    b = torch.randn(16, dtype=dtype)
    xg = x.reshape(3, groups, -1)  # (N, G, C/G * H * W)
    mean = xg.mean(-1, keepdim=True)
    var = ((xg - mean) ** 2).mean(-1, keepdim=True)
    xhat = ((xg - mean) / torch.sqrt(var + 1e-6)).reshape_as(x) * w[:, None, None] + b[:, None, None]
    expected = xhat * torch.sigmoid(xhat) if activation == "silu" else xhat
    got = ops.group_norm_silu(x, groups, w, b, 1e-6, activation)
    torch.testing.assert_close(got, expected, **tol(dtype))


def test_group_norm_silu_rejects_unknown_activation():
    with pytest.raises(ValueError, match="activation"):
        ops.group_norm_silu(torch.randn(1, 4, 2, 2), 2, activation="relu")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(2, 8, 3, 5), (1, 16, 7)])
def test_spatial_attention_matches_einsum(dtype, shape):
    q, k, v = (torch.randn(shape, dtype=dtype) for _ in range(3))
    c = shape[1]
    qf, kf, vf = (t.reshape(shape[0], c, -1) for t in (q, k, v))
    weights = torch.einsum("bci,bcj->bij", qf, kf).mul(c**-0.5).softmax(-1)
    expected = torch.einsum("bij,bcj->bci", weights, vf).reshape(shape)
    torch.testing.assert_close(ops.spatial_attention(q, k, v), expected, **tol(dtype))
    # an explicit scale replaces C ** -0.5
    weights = torch.einsum("bci,bcj->bij", qf, kf).mul(0.3).softmax(-1)
    expected = torch.einsum("bij,bcj->bci", weights, vf).reshape(shape)
    torch.testing.assert_close(ops.spatial_attention(q, k, v, scale=0.3), expected, **tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_attn_block_matches_einsum_formulation(dtype):
    block = reference.AttnBlock(32).to(dtype)
    x = torch.randn(2, 32, 4, 6, dtype=dtype)
    h = F.group_norm(x, 32, block.norm.weight, block.norm.bias, 1e-6)
    q, k, v = (torch.einsum("oc,bchw->bohw", conv.weight[:, :, 0, 0], h) + conv.bias[None, :, None, None]
               for conv in (block.q, block.k, block.v))
    logits = torch.einsum("bchw,bcyx->bhwyx", q, k) / 32**0.5
    weights = logits.reshape(2, 24, 24).softmax(-1).reshape(2, 4, 6, 4, 6)
    attended = torch.einsum("bhwyx,bcyx->bchw", weights, v)
    out = x + torch.einsum("oc,bchw->bohw", block.proj_out.weight[:, :, 0, 0], attended) \
        + block.proj_out.bias[None, :, None, None]
    torch.testing.assert_close(block(x), out, **tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ["flat", "nchw"])
def test_codebook_argmin_matches_loop_over_codes(dtype, layout):
    codebook = torch.randn(37, 6, dtype=dtype)
    z = torch.randn(2, 6, 3, 4, dtype=dtype) if layout == "nchw" else torch.randn(11, 6, dtype=dtype)
    flat = z.permute(0, 2, 3, 1).reshape(-1, 6) if layout == "nchw" else z
    best = torch.full((flat.shape[0],), float("inf"), dtype=dtype)
    best_index = torch.zeros(flat.shape[0], dtype=torch.long)
    for k in range(codebook.shape[0]):
        d = ((flat - codebook[k]) ** 2).sum(1)
        better = d < best
        best = torch.where(better, d, best)
        best_index = torch.where(better, torch.full_like(best_index, k), best_index)
    idx, dist = ops.codebook_argmin(z, codebook, return_distance=True)
    assert idx.dtype == torch.int64
    assert idx.shape == ((2, 3, 4) if layout == "nchw" else (11,))
    assert torch.equal(idx.reshape(-1), best_index)
    torch.testing.assert_close(dist.reshape(-1), best, **tol(dtype))


def test_codebook_argmin_ties_go_to_lowest_index():
    codebook = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    z = torch.tensor([[2.0, 0.0], [0.0, 3.0]])
    assert ops.codebook_argmin(z, codebook).tolist() == [0, 1]


@pytest.mark.parametrize("padding", [(0, 1, 0, 1), (2, 0, 1, 3), (0, 0, 0, 0)])
@pytest.mark.parametrize("stride", [1, 2])
def test_padded_conv2d_matches_zero_embedding(padding, stride):
    x = torch.randn(2, 3, 7, 6, dtype=torch.float64)
    w = torch.randn(4, 3, 3, 3, dtype=torch.float64)
    b = torch.randn(4, dtype=torch.float64)
    left, right, top, bottom = padding
    canvas = torch.zeros(2, 3, 7 + top + bottom, 6 + left + right, dtype=torch.float64)
    canvas[:, :, top:top + 7, left:left + 6] = x
    expected = F.conv2d(canvas, w, b, stride=stride)
    torch.testing.assert_close(ops.padded_conv2d(x, w, b, stride=stride, padding=padding), expected)


def test_downsample_halves_even_and_rounds_odd_sizes():
    down = reference.Downsample(8, with_conv=True)
    assert down(torch.randn(1, 8, 16, 10)).shape == (1, 8, 8, 5)
    assert down(torch.randn(1, 8, 7, 9)).shape == (1, 8, 3, 4)
    pool = reference.Downsample(8, with_conv=False)
    assert pool(torch.randn(1, 8, 16, 10)).shape == (1, 8, 8, 5)
    assert not any(True for _ in pool.parameters())


def test_resnet_block_shortcuts_and_temb():
    x = torch.randn(2, 32, 4, 4)
    same = reference.ResnetBlock(in_channels=32, out_channels=32, temb_channels=0)
    assert not hasattr(same, "nin_shortcut") and not hasattr(same, "temb_proj")
    nin = reference.ResnetBlock(in_channels=32, out_channels=64, temb_channels=0)
    assert nin.nin_shortcut.kernel_size == (1, 1)
    conv = reference.ResnetBlock(in_channels=32, out_channels=64, conv_shortcut=True, temb_channels=0)
    assert conv.conv_shortcut.kernel_size == (3, 3)
    assert nin(x).shape == conv(x).shape == (2, 64, 4, 4)
    with_temb = reference.ResnetBlock(in_channels=32, temb_channels=16)
    temb = torch.randn(2, 16)
    delta = with_temb.temb_proj(temb * torch.sigmoid(temb))[:, :, None, None]
    manual = with_temb.conv1(ops.group_norm_silu(x, 32, with_temb.norm1.weight, with_temb.norm1.bias))
    manual = with_temb.conv2(ops.group_norm_silu(manual + delta, 32, with_temb.norm2.weight, with_temb.norm2.bias))
    torch.testing.assert_close(with_temb(x, temb), x + manual)
