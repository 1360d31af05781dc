"""Fast ResnetBlock and Upsample against the reference blocks with the same weights."""

import pytest
import torch
import torch.nn.functional as F

from vqvae_fast import nn as fast
from vqvae_fast import reference
from vqvae_fast.nn.upsample import fold_upsample_weight, upsample_conv

from helpers import assert_matches_reference
import peers


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("out_channels, conv_shortcut", [(32, False), (64, False), (64, True)])
def test_resnet_block(dtype, channels_last, out_channels, conv_shortcut):
    slow = peers.randomize_norms(reference.ResnetBlock(
        in_channels=32, out_channels=out_channels, conv_shortcut=conv_shortcut, temb_channels=0
    )).to(dtype)
    block = fast.ResnetBlock.from_reference(slow)
    assert block.state_dict().keys() == slow.state_dict().keys()
    x = torch.randn(2, 32, 5, 7, dtype=dtype, requires_grad=True)
    xin = x.to(memory_format=torch.channels_last) if channels_last else x
    out = block(xin)
    expected = slow(x)
    torch.testing.assert_close(out, expected)
    grad = torch.randn_like(expected)
    (gx_fast,) = torch.autograd.grad(out, x, grad)
    (gx_slow,) = torch.autograd.grad(expected, x, grad)
    torch.testing.assert_close(gx_fast, gx_slow)


def test_resnet_block_with_temb_matches_reference():
    slow = peers.randomize_norms(reference.ResnetBlock(in_channels=32, out_channels=32, temb_channels=8))
    block = fast.ResnetBlock(in_channels=32, out_channels=32, temb_channels=8)
    block.load_state_dict(slow.state_dict())
    x, temb = torch.randn(2, 32, 4, 4), torch.randn(2, 8)
    torch.testing.assert_close(block(x, temb), slow(x, temb))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("size", [(1, 1), (5, 7), (8, 8)])
def test_upsample_conv_matches_interpolate_then_conv(dtype, size):
    x = torch.randn(2, 6, *size)
    w = torch.randn(5, 6, 3, 3)
    b = torch.randn(5)

    def ref(x, w, b):
        return F.conv2d(F.interpolate(x, scale_factor=2.0, mode="nearest"), w, b, padding=1)

    out = upsample_conv(x.to(dtype), w.to(dtype), b.to(dtype))
    assert out.dtype == dtype and out.shape == (2, 5, 2 * size[0], 2 * size[1])
    assert_matches_reference(out, ref, (x, w, b), dtype=dtype, atol=1e-4)


def test_folded_weight_is_linear_in_the_taps():
    w = torch.zeros(1, 1, 3, 3, dtype=torch.float64)
    w[0, 0, 1, 1] = 1.0  # the centre tap reaches the two middle taps of each 4-tap axis
    folded = fold_upsample_weight(w)[0, 0]
    expected = torch.zeros(4, 4, dtype=torch.float64)
    expected[1:3, 1:3] = 1.0
    torch.testing.assert_close(folded, expected)


@pytest.mark.parametrize("with_conv", [True, False])
def test_upsample_block_loads_reference_state_and_matches(with_conv):
    slow = reference.Upsample(8, with_conv=with_conv).double()
    block = fast.Upsample(8, with_conv=with_conv).double()
    block.load_state_dict(slow.state_dict())
    x = torch.randn(1, 8, 3, 5, dtype=torch.float64, requires_grad=True)
    out = block(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(out, slow(x))
    if with_conv:
        (g_fast,) = torch.autograd.grad(out.sum(), block.conv.weight)
        (g_slow,) = torch.autograd.grad(slow(x).sum(), slow.conv.weight)
        torch.testing.assert_close(g_fast, g_slow)
