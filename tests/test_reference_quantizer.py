"""The reference VectorQuantizer: nearest codes, loss formula, straight-through gradient, remap."""

import numpy as np
import pytest
import torch

from vqvae_fast import reference


def brute_force_nearest(z, codebook):
    """Nearest code of every vector of ``z`` (B, D, H, W) by a loop over codes, in fp64."""
    flat = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1]).double()
    dists = torch.stack([((flat - code.double()) ** 2).sum(1) for code in codebook], dim=1)
    return dists.argmin(1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_indices_and_quantized_vectors_match_loop_over_codes(dtype):
    vq = reference.VectorQuantizer(50, 8, beta=0.25).to(dtype)
    with torch.no_grad():
        vq.embedding.weight.normal_()
    z = torch.randn(2, 8, 3, 5, dtype=dtype)
    z_q, loss, (_, _, indices) = vq(z)
    expected = brute_force_nearest(z, vq.embedding.weight)
    assert torch.equal(indices, expected)
    codes = vq.embedding.weight[expected].reshape(2, 3, 5, 8).permute(0, 3, 1, 2)
    torch.testing.assert_close(z_q, codes)
    assert z_q.is_contiguous()


@pytest.mark.parametrize("legacy", [True, False])
def test_loss_formula_and_gradients(legacy):
    beta = 0.3
    vq = reference.VectorQuantizer(20, 4, beta=beta, legacy=legacy).double()
    with torch.no_grad():
        vq.embedding.weight.normal_()
    z = torch.randn(2, 4, 3, 3, dtype=torch.float64, requires_grad=True)
    z_q, loss, (_, _, indices) = vq(z)
    codes = vq.embedding.weight[indices].reshape(2, 3, 3, 4).permute(0, 3, 1, 2)
    mse = ((codes - z) ** 2).mean()
    torch.testing.assert_close(loss, (1 + beta) * mse)

    # d loss / d z is the commitment term's gradient, d loss / d e the codebook term's
    commitment_weight, codebook_weight = (1.0, beta) if legacy else (beta, 1.0)
    (z_q.sum() + loss).backward()
    n = z.numel()
    expected_z = 1.0 + commitment_weight * 2 * (z - codes).detach() / n  # straight-through + loss
    torch.testing.assert_close(z.grad, expected_z)
    expected_e = torch.zeros_like(vq.embedding.weight)
    diff = (codes - z).detach().permute(0, 2, 3, 1).reshape(-1, 4)
    expected_e.index_add_(0, indices, codebook_weight * 2 * diff / n)
    torch.testing.assert_close(vq.embedding.weight.grad, expected_e)


def test_straight_through_passes_gradient_unchanged():
    vq = reference.VectorQuantizer(10, 3)
    z = torch.randn(1, 3, 2, 2, requires_grad=True)
    z_q, _, _ = vq(z)
    grad = torch.randn_like(z_q)
    z_q.backward(grad)
    torch.testing.assert_close(z.grad, grad)


def test_sane_index_shape():
    vq = reference.VectorQuantizer(10, 3, sane_index_shape=True)
    _, _, (_, _, indices) = vq(torch.randn(2, 3, 4, 5))
    assert indices.shape == (2, 4, 5)


@pytest.mark.parametrize("unknown_index", ["extra", 0, "random"])
def test_remap_round_trip(tmp_path, unknown_index):
    used = np.array([3, 7, 1, 9])
    path = tmp_path / "used.npy"
    np.save(path, used)
    vq = reference.VectorQuantizer(12, 4, remap=str(path), unknown_index=unknown_index, sane_index_shape=True)
    with torch.no_grad():
        vq.embedding.weight.copy_(torch.arange(12.0)[:, None].repeat(1, 4))
    # latents sitting exactly on codes 7, 1, 9 and 5 (5 is not in the used table)
    z = torch.tensor([7.0, 1.0, 9.0, 5.0]).reshape(1, 1, 2, 2).repeat(1, 4, 1, 1)  # (1, 4, 2, 2)
    _, _, (_, _, indices) = vq(z)
    flat = indices.reshape(-1).tolist()
    assert flat[:3] == [1, 2, 3]  # positions in the used table
    if unknown_index == "extra":
        assert flat[3] == 4 and vq.re_embed == 5
    elif unknown_index == 0:
        assert flat[3] == 0
    else:
        assert 0 <= flat[3] < 4
    back = vq.get_codebook_entry(indices, (1, 2, 2, 4))
    assert back[0, 0].reshape(-1)[:3].tolist() == [7.0, 1.0, 9.0]
    before = indices.clone()
    vq.get_codebook_entry(indices, (1, 2, 2, 4))
    assert torch.equal(indices, before), "get_codebook_entry must not modify its input"


def test_remap_from_array_and_non_sane_shape():
    vq = reference.VectorQuantizer(6, 2, remap=torch.tensor([0, 2, 4]), unknown_index="extra")
    _, _, (_, _, indices) = vq(torch.randn(2, 2, 3, 3))
    assert indices.shape == (18, 1)


def test_get_codebook_entry_without_shape():
    vq = reference.VectorQuantizer(6, 2)
    entries = vq.get_codebook_entry(torch.tensor([0, 5, 2]))
    torch.testing.assert_close(entries, vq.embedding.weight[[0, 5, 2]])


def test_bad_arguments():
    vq = reference.VectorQuantizer(6, 2)
    with pytest.raises(ValueError, match="z must have 2 channels"):
        vq(torch.randn(1, 3, 2, 2))
    with pytest.raises(ValueError, match="shape must be"):
        vq.get_codebook_entry(torch.tensor([0]), (1, 1, 1, 3))
    with pytest.raises(ValueError, match="temp"):
        vq(torch.randn(1, 2, 2, 2), temp=0.5)
    with pytest.raises(ValueError, match="n_e must be >= 1"):
        reference.VectorQuantizer(0, 2)
    with pytest.raises(ValueError, match="remap"):
        reference.VectorQuantizer(6, 2, remap=np.zeros((2, 2), dtype=np.int64))
