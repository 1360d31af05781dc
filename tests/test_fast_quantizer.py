"""The fast VectorQuantizer against the reference one: outputs, loss, gradients, remap, usage."""

import numpy as np
import pytest
import torch

import vqvae_fast
from vqvae_fast import reference
from vqvae_fast.nn import VectorQuantizer, VectorQuantizer2


def make_pair(n_e=50, e_dim=8, device="cpu", dtype=torch.float32, precision="ieee", **kwargs):
    """A reference quantizer with a spread-out codebook and a fast one loaded from its state_dict."""
    ref = reference.VectorQuantizer(n_e, e_dim, **kwargs).to(device=device, dtype=dtype)
    with torch.no_grad():
        ref.embedding.weight.normal_()
    fast = VectorQuantizer(n_e, e_dim, precision=precision, **kwargs).to(device=device, dtype=dtype)
    fast.load_state_dict(ref.state_dict())
    return ref, fast


def forward_backward(vq, z, grad_out, seed=0):
    """Outputs, loss, indices and the gradients of z and of the codebook."""
    z = z.detach().clone().requires_grad_(True)
    vq.zero_grad()
    torch.manual_seed(seed)  # remap's "random" unknown index draws from the global generator
    z_q, loss, (perplexity, encodings, indices) = vq(z)
    ((z_q * grad_out).sum() + loss).backward()
    return z_q, loss, indices, z.grad, vq.embedding.weight.grad


def assert_same_as_reference(ref, fast, z):
    grad_out = torch.randn_like(z)
    expected = forward_backward(ref, z, grad_out)
    actual = forward_backward(fast, z, grad_out)
    for name, got, want in zip(("z_q", "loss", "indices", "z.grad", "codebook.grad"), actual, expected):
        assert got.shape == want.shape, name
        if name == "indices":
            assert torch.equal(got, want), name
        else:
            torch.testing.assert_close(got, want, msg=lambda m: f"{name}: {m}")
    return actual


@pytest.mark.parametrize("legacy", [True, False])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("sane_index_shape", [False, True])
def test_matches_reference(device, legacy, channels_last, sane_index_shape):
    ref, fast = make_pair(device=device, beta=0.3, legacy=legacy, sane_index_shape=sane_index_shape)
    z = torch.randn(2, 8, 5, 6, device=device)
    if channels_last:
        z = z.contiguous(memory_format=torch.channels_last)
    z_q, *_ = assert_same_as_reference(ref, fast, z)
    # the output keeps the input's memory format (the reference always returns NCHW)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    assert z_q.is_contiguous(memory_format=fmt)


@pytest.mark.parametrize("precision", ["ieee", "fast"])
def test_matches_reference_through_the_triton_kernel(triton_device, precision):
    ref, fast = make_pair(n_e=300, e_dim=24, device=triton_device, precision=precision, sane_index_shape=True)
    z = torch.randn(2, 24, 7, 9, device=triton_device)
    assert_same_as_reference(ref, fast, z)


def test_fp64_runs_the_cpu_backend_exactly():
    ref, fast = make_pair(dtype=torch.float64)
    assert_same_as_reference(ref, fast, torch.randn(3, 8, 4, 4, dtype=torch.float64))


@pytest.mark.parametrize("unknown_index", ["extra", 0, "random"])
def test_remap_matches_reference(tmp_path, unknown_index):
    used = np.array([3, 7, 1, 9, 20, 7, 41])  # 7 twice: the first position counts
    path = tmp_path / "used.npy"
    np.save(path, used)
    ref, fast = make_pair(remap=str(path), unknown_index=unknown_index)
    assert sorted(fast.state_dict()) == sorted(ref.state_dict()) == ["embedding.weight", "used"]
    z = torch.randn(2, 8, 6, 5)
    *_, indices, _, _ = assert_same_as_reference(ref, fast, z)
    assert indices.shape == (60, 1)
    shape = (2, 6, 5, 8)
    torch.testing.assert_close(fast.get_codebook_entry(indices, shape), ref.get_codebook_entry(indices, shape))


def test_remap_lookup_table_equals_reference_comparison():
    used = torch.tensor([5, 2, 2, 11, 40, 0])  # a duplicate and an entry beyond n_e
    ref, fast = make_pair(n_e=12, remap=used, unknown_index="extra")
    inds = torch.randint(0, 12, (3, 20))
    assert torch.equal(fast.remap_to_used(inds), ref.remap_to_used(inds))
    assert torch.equal(fast.remap_to_used(torch.tensor([[2, 5, 13]])), torch.tensor([[1, 0, 6]]))


def test_get_codebook_entry_matches_reference():
    ref, fast = make_pair()
    indices = torch.randint(0, 50, (2 * 3 * 4,))
    torch.testing.assert_close(fast.get_codebook_entry(indices, (2, 3, 4, 8)),
                               ref.get_codebook_entry(indices, (2, 3, 4, 8)))
    torch.testing.assert_close(fast.get_codebook_entry(indices), ref.get_codebook_entry(indices))


def test_usage_statistics_without_one_hot(device):
    _, fast = make_pair(device=device)
    fast.compute_usage = True
    z = torch.randn(2, 8, 6, 6, device=device)
    _, _, (perplexity, encodings, indices) = fast(z)
    assert encodings is None
    one_hot = torch.nn.functional.one_hot(indices, 50).float()  # the formula taming uses
    e_mean = one_hot.mean(0)
    expected = torch.exp(-torch.sum(e_mean * torch.log(e_mean + 1e-10)))
    torch.testing.assert_close(perplexity, expected)
    assert torch.equal(fast.code_counts, torch.bincount(indices, minlength=50))
    _, _, (perplexity, _, _) = make_pair(device=device)[1](z)
    assert perplexity is None  # off by default, as the reference


def test_from_reference_shares_parameters_and_buffers():
    ref = reference.VectorQuantizer(30, 4, beta=0.5, remap=torch.tensor([1, 4, 9]), sane_index_shape=True)
    fast = VectorQuantizer.from_reference(ref, precision="fast", compute_usage=True)
    assert fast.embedding.weight is ref.embedding.weight
    assert fast.used is ref.used
    assert (fast.beta, fast.n_e, fast.re_embed, fast.sane_index_shape) == (0.5, 30, 3, True)
    assert (fast.precision, fast.compute_usage) == ("fast", True)
    ref_state, fast_state = ref.state_dict(), fast.state_dict()
    assert list(fast_state) == list(ref_state)
    assert all(fast_state[k].data_ptr() == ref_state[k].data_ptr() for k in ref_state)
    assert [p for p in fast.parameters()] == [p for p in ref.parameters()]
    z = torch.randn(1, 4, 3, 3)
    torch.manual_seed(0)
    expected = ref(z)
    torch.manual_seed(0)
    actual = fast(z)
    torch.testing.assert_close(actual[0], expected[0])
    assert torch.equal(actual[2][2], expected[2][2])
    with pytest.raises(ValueError, match="quantizer must have taming VectorQuantizer2's attributes"):
        VectorQuantizer.from_reference(torch.nn.Linear(2, 2))
    with pytest.raises(TypeError, match="quantizer must be an nn.Module"):
        VectorQuantizer.from_reference("quantizer")


def test_is_a_drop_in():
    assert VectorQuantizer2 is VectorQuantizer
    assert vqvae_fast.nn.VectorQuantizer is VectorQuantizer
    assert issubclass(VectorQuantizer, reference.VectorQuantizer)
    ref, fast = make_pair()
    assert list(fast.state_dict()) == list(ref.state_dict()) == ["embedding.weight"]


def test_inputs_are_not_modified():
    _, fast = make_pair()
    z = torch.randn(2, 8, 3, 3)
    z0 = z.clone()
    fast(z)
    assert torch.equal(z, z0)


def test_bad_arguments():
    with pytest.raises(ValueError, match="precision must be one of"):
        VectorQuantizer(10, 4, precision="tf32")
    with pytest.raises(TypeError, match="compute_usage must be a bool"):
        VectorQuantizer(10, 4, compute_usage=1)
    with pytest.raises(ValueError, match="z must have 4 channels"):
        VectorQuantizer(10, 4)(torch.randn(1, 3, 2, 2))
    with pytest.raises(ValueError, match="n_e must be >= 1"):
        VectorQuantizer(0, 4)
