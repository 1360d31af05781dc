"""codebook_argmin on adversarial near-tie codebooks: at least as often right as fp32 PyTorch.

The default precision runs fp32 inputs on tensor cores (three TF32 products per term, the best two
candidates re-ranked by their fp32 distance). Its contract (``vqvae_fast.codebook_argmin``'s
docstring) is that its indices agree with an fp64 computation at least as often as an fp32
PyTorch computation of taming's distances (``|z|^2 + |e|^2 - 2 z.e``) does, on inputs built to
break it: clusters of codes that differ by tiny amounts, exact duplicates, large norms with small
differences, ``D`` not a multiple of 16 and small ``D`` (4, 8: padded dots). (Families whose
differences lie below fp32's resolution of the distances -- large norms spread by 1e-5 of their
size -- are left out: there every fp32 computation, this one and PyTorch's, picks at chance.)

Two tests per family:

* the kernels (``test_kernel_*``): on a GPU this is the real tensor-core arithmetic; in Triton's
  interpreter the dots are exact, so on CPU it checks the split, the re-rank and the tie rule;
* a model of the kernels' arithmetic in PyTorch (``test_model_*``: TF32 rounding of each part,
  products exact in fp32, fp32 sums, the re-rank), which shows on any machine that the chosen
  arithmetic meets the contract -- and where a single TF32 product (``"fast"``) does not.
"""

from __future__ import annotations

import math

import pytest
import torch

import vqvae_fast
from vqvae_fast import reference

from test_codebook_argmin import assert_argmin_matches

#: (name, D, builder) of the adversarial families; each builder returns (z (N, D), codebook (K, D))
N, K = 128, 64


def _cluster(D, size, spread, scale=1.0):
    """``size`` codes within ``spread * scale`` of one code, latents around it."""
    def build(g):
        codebook = scale * torch.randn(K, D, generator=g, dtype=torch.float64)
        centre = codebook[0].clone()
        members = torch.randperm(K, generator=g)[:size]
        codebook[members] = centre + spread * scale * torch.randn(size, D, generator=g, dtype=torch.float64)
        z = centre + scale * torch.randn(N, D, generator=g, dtype=torch.float64) / math.sqrt(D)
        return z.float(), codebook.float()
    return build


def _duplicates(D):
    """A quarter of the codes copied over others; latents next to random codes."""
    def build(g):
        codebook = torch.randn(K, D, generator=g)
        codebook[torch.randint(0, K, (K // 4,), generator=g)] = codebook[torch.randint(0, K, (K // 4,), generator=g)]
        z = codebook[torch.randint(0, K, (N,), generator=g)] + 1e-3 * torch.randn(N, D, generator=g)
        return z, codebook
    return build


def _large_norms(D, spread):
    """Codes and latents near one point of norm ~1000 sqrt(D): cancellation in |e|^2 - 2 z.e."""
    def build(g):
        centre = 1000 * torch.randn(D, generator=g, dtype=torch.float64)
        codebook = centre + spread * 1000 * torch.randn(K, D, generator=g, dtype=torch.float64)
        z = centre + spread * 1000 * torch.randn(N, D, generator=g, dtype=torch.float64)
        return z.float(), codebook.float()
    return build


FAMILIES = [
    *((f"cluster{size}-D{D}-{spread:g}", _cluster(D, size, spread))
      for D in (4, 8, 20, 64) for size in (2, 8) for spread in (1e-4, 1e-6)),
    *((f"duplicates-D{D}", _duplicates(D)) for D in (4, 20, 64)),
    *((f"large-norms-D{D}-{spread:g}", _large_norms(D, spread)) for D in (4, 8, 20, 64) for spread in (1e-2, 1e-3)),
]
SEEDS = 3


def _problems(build):
    for seed in range(SEEDS):
        yield build(torch.Generator().manual_seed(seed))


def exact_indices(z, codebook):
    """argmin of the fp64 distances of the (fp32) inputs; ties to the lowest index."""
    return (z.double()[:, None, :] - codebook.double()[None]).pow(2).sum(-1).argmin(1)


def pytorch_fp32_indices(z, codebook):
    """The fp32 PyTorch computation the contract compares with: the reference in fp32."""
    return reference.ops.codebook_argmin(z.float(), codebook.float())


def agreement(indices, expected):
    return int((indices.reshape(-1).cpu() == expected).sum())


# ----------------------------------------------------------------------------------------------
# The kernels


@pytest.mark.parametrize("name,build", FAMILIES, ids=[f[0] for f in FAMILIES])
def test_kernel_default_precision_is_as_accurate_as_pytorch_fp32(triton_device, name, build):
    ours = theirs = 0
    for z, codebook in _problems(build):
        expected = exact_indices(z, codebook)
        got = vqvae_fast.codebook_argmin(z.to(triton_device), codebook.to(triton_device), "ieee")
        ours += agreement(got, expected)
        theirs += agreement(pytorch_fp32_indices(z.to(triton_device), codebook.to(triton_device)), expected)
    assert ours >= theirs, f"{name}: {ours} rows agree with fp64, fp32 PyTorch {theirs}"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_kernel_16_bit_inputs_match_on_every_clear_winner(triton_device, dtype):
    """fp16 / bf16 latents and codebook: exact 16-bit products on tensor cores summed in fp32 --
    PyTorch's fp32 arithmetic without its ``|z|^2`` term -- so the index is the fp64 one wherever
    the best two distances differ by more than fp32 rounding (docs/testing.md's rule)."""
    for D in (4, 20, 64):
        for spread in (1e-2, 1e-3):
            for z, codebook in _problems(_cluster(D, 8, spread)):
                z, codebook = z.to(dtype).to(triton_device), codebook.to(dtype).to(triton_device)
                indices, distances = vqvae_fast.codebook_argmin(z, codebook, return_distance=True)
                assert_argmin_matches(z, codebook, indices, distances)


# ----------------------------------------------------------------------------------------------
# A model of the kernels' arithmetic


def round_tf32(x):
    """The nearest TF32 value (ties away from zero), as the kernels round."""
    return ((x.view(torch.int32) + 0x1000) & -8192).view(torch.float32)


def truncate_tf32(x):
    """What the tensor cores read of an fp32 operand: its top 19 bits."""
    return (x.view(torch.int32) & -8192).view(torch.float32)


def model_three_products(z, codebook):
    """``z.e`` as the ``"tf32x3"`` search forms it: TF32 parts, products exact in fp32."""
    z_big, e_big = round_tf32(z), round_tf32(codebook)
    z_small, e_small = truncate_tf32(z - z_big), round_tf32(codebook - e_big)
    return z_small @ e_big.t() + z_big @ e_small.t() + z_big @ e_big.t()


def model_one_product(z, codebook):
    """``z.e`` as the ``"tf32"`` search forms it."""
    return truncate_tf32(z) @ truncate_tf32(codebook).t()


def model_search(z, codebook, products):
    """The best two of ``||e||^2 - 2 z.e`` (ties to the lower index), re-ranked by their fp32
    ``sum_d (z_d - e_d)^2``."""
    scores = codebook.pow(2).sum(1) - 2 * products(z, codebook)
    first, second = torch.sort(scores, dim=1, stable=True).indices[:, :2].unbind(1)
    d_first = (z - codebook[first]).pow(2).sum(1)
    d_second = (z - codebook[second]).pow(2).sum(1)
    switch = (d_second < d_first) | ((d_second == d_first) & (second < first))
    return torch.where(switch, second, first)


def test_model_three_tf32_products_are_as_accurate_as_pytorch_fp32():
    for name, build in FAMILIES:
        ours = theirs = 0
        for z, codebook in _problems(build):
            expected = exact_indices(z, codebook)
            ours += agreement(model_search(z, codebook, model_three_products), expected)
            theirs += agreement(pytorch_fp32_indices(z, codebook), expected)
        assert ours >= theirs, f"{name}: {ours} rows agree with fp64, fp32 PyTorch {theirs}"


def test_model_one_tf32_product_is_not():
    """Why the default is not one TF32 product with the re-rank: on clusters of more than two
    near-equal codes the best is often not among the TF32 best two."""
    ours = theirs = 0
    for name, build in FAMILIES:
        if name.startswith("cluster8"):
            for z, codebook in _problems(build):
                expected = exact_indices(z, codebook)
                ours += agreement(model_search(z, codebook, model_one_product), expected)
                theirs += agreement(pytorch_fp32_indices(z, codebook), expected)
    assert ours < 0.9 * theirs
