"""codebook_argmin: Triton kernels (interpreter on CPU) and the chunked CPU path vs the fp64 reference.

Indices are compared as docs/testing.md says: the chosen code's fp64 distance must be within
fp32 rounding of the best one, and the index must be the reference's wherever the best and the
second best distance differ by more than that rounding.
"""

import re
import sys

import pytest
import torch

import vqvae_fast
from vqvae_fast import reference
from vqvae_fast.ops.codebook_argmin import CPU_BLOCK_BYTES, cpu_codebook_argmin

from helpers import kernel_launches

EPS32 = torch.finfo(torch.float32).eps


def make_latents(N, D, dtype, layout, device="cpu"):
    """``N`` latent vectors of dimension ``D`` as (N, D) "rows", or (B, D, H, W) "nchw" / "channels_last"."""
    if layout == "rows":
        return torch.randn(N, D, device=device).to(dtype)
    B, H, W = {1: (1, 1, 1), 5: (1, 1, 5), 300: (3, 10, 10), 512: (2, 16, 16), 4096: (4, 32, 32)}[N]
    z = torch.randn(B, D, H, W, device=device).to(dtype)
    return z.contiguous(memory_format=torch.channels_last) if layout == "channels_last" else z


def exact_distances(z, codebook):
    """fp64 ``(N, K)`` squared distances of the (exactly upcast) inputs."""
    flat = reference.ops.flatten_latents(z).double().cpu()
    return torch.cdist(flat, codebook.double().cpu()).pow(2)


def rounding_tolerance(z, codebook):
    """Per row: how far the fp32 evaluation of ``||e||^2 - 2 z.e`` can be off."""
    flat = reference.ops.flatten_latents(z).double().cpu()
    D = flat.shape[1]
    scale = flat.pow(2).sum(1) + codebook.double().cpu().pow(2).sum(1).max()
    return (D + 4) * EPS32 * scale


def assert_argmin_matches(z, codebook, indices, distances=None):
    """docs/testing.md's argmin rule, plus the distances of the chosen codes."""
    exact = exact_distances(z, codebook)  # (N, K)
    flat_idx = indices.reshape(-1).cpu()
    assert indices.dtype == torch.int64
    assert flat_idx.min() >= 0 and flat_idx.max() < codebook.shape[0]
    best, order = exact.topk(min(2, exact.shape[1]), dim=1, largest=False)
    chosen = exact.gather(1, flat_idx[:, None]).squeeze(1)
    tol = rounding_tolerance(z, codebook)
    excess = chosen - best[:, 0]
    assert (excess <= tol).all(), f"chosen codes up to {float(excess.max()):.3e} worse than the best"
    if exact.shape[1] > 1:
        clear = (best[:, 1] - best[:, 0]) > tol
    else:
        clear = torch.ones_like(chosen, dtype=torch.bool)
    mismatch = clear & (flat_idx != order[:, 0])
    assert not mismatch.any(), f"{int(mismatch.sum())} rows with a clear winner got another index"
    if distances is not None:
        assert distances.shape == indices.shape and distances.dtype == torch.float32
        torch.testing.assert_close(distances.reshape(-1).double().cpu(), chosen,
                                   rtol=1e-5, atol=float(tol.max()))


def expected_launches(z_dtype, e_dtype, D, precision):
    """The kernels a call with these dtypes, code dimension and precision launches."""
    native = z_dtype == e_dtype and z_dtype in (torch.float16, torch.bfloat16)
    if native:
        return ["_code_norms_kernel", "_resident_kernel" if D <= 256 else "_chunked_kernel", "_finalize_kernel"]
    exact = precision == "ieee" or D < 16  # three TF32 products: the exact pass over non-finite values
    return ["_code_norms_kernel", "_chunked_kernel", "_finalize_kernel"] + ["_nonfinite_kernel"] * exact


# (N, K, D, dtype, layout, precision): every N, K, D, dtype, layout and precision appears, with
# small D padded to the dot size, tails in every dimension, several codebook tiles, every padded D
# of the resident kernel (64, 128, 256) and D > 256 (chunked); the last three have 16-aligned
# shapes and strides (the chunked kernel's "aligned" tile configurations).
CASES = [
    (1, 1, 3, torch.float32, "rows", "ieee"),
    (5, 2, 4, torch.float16, "nchw", "ieee"),
    (300, 17, 8, torch.bfloat16, "channels_last", "fast"),
    (300, 1024, 16, torch.float32, "nchw", "fast"),
    (4096, 17, 64, torch.float32, "channels_last", "ieee"),
    (300, 1024, 64, torch.bfloat16, "rows", "ieee"),
    (5, 1024, 256, torch.float32, "rows", "fast"),
    (300, 2, 256, torch.float16, "channels_last", "fast"),
    (4096, 2, 3, torch.float32, "nchw", "fast"),
    (1, 1024, 4, torch.bfloat16, "nchw", "ieee"),
    (5, 17, 256, torch.float32, "channels_last", "ieee"),
    (300, 200, 100, torch.float16, "nchw", "ieee"),
    (5, 140, 300, torch.bfloat16, "rows", "fast"),
    (512, 256, 272, torch.float16, "nchw", "ieee"),
    (512, 256, 48, torch.float32, "nchw", "fast"),
    (4096, 1024, 16, torch.float32, "nchw", "ieee"),
    (512, 256, 32, torch.float32, "channels_last", "fast"),
    (512, 256, 64, torch.float16, "channels_last", "fast"),
]


def _case_id(case):
    N, K, D, dtype, layout, precision = case
    return f"N{N}-K{K}-D{D}-{str(dtype)[6:]}-{layout}-{precision}"


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_triton_matches_fp64_reference(triton_device, case):
    N, K, D, dtype, layout, precision = case
    z = make_latents(N, D, dtype, layout, triton_device)
    codebook = torch.randn(K, D, device=triton_device).to(dtype)
    with kernel_launches() as launched:
        indices, distances = vqvae_fast.codebook_argmin(z, codebook, precision, return_distance=True)
    assert launched == expected_launches(dtype, dtype, D, precision)
    expected_shape = (z.shape[0], z.shape[2], z.shape[3]) if z.dim() == 4 else (N,)
    assert indices.shape == expected_shape
    assert_argmin_matches(z, codebook, indices, distances)


def test_launcher_picks_aligned_tiles_only_for_aligned_addressing():
    from vqvae_fast.kernels import codebook_argmin as kernels

    def aligned(z, codebook):
        return kernels.latent_rows(z, codebook)[2]

    z = make_latents(512, 32, torch.float32, "channels_last")
    assert aligned(z, torch.randn(256, 32))
    assert aligned(make_latents(4096, 16, torch.float32, "nchw"), torch.randn(1024, 16))
    assert not aligned(z, torch.randn(17, 32))  # K
    assert not aligned(make_latents(300, 32, torch.float32, "nchw"), torch.randn(256, 32))  # H * W
    assert not aligned(make_latents(512, 8, torch.float32, "channels_last"), torch.randn(256, 8))  # D stride
    assert not aligned(torch.randn(512 * 32 + 1)[1:].view(512, 32), torch.randn(256, 32))  # pointer offset by 4 B
    assert aligned(z[:, :, :, 1:], torch.randn(256, 32))  # rows crossing batch items: copied, then aligned


@pytest.mark.parametrize("precision", ["ieee", "fast"])
def test_unusual_strides(triton_device, precision):
    base = torch.randn(3, 32, 10, 14, device=triton_device)
    codebook = torch.randn(40, 16, device=triton_device)
    for z in (
        base[:, :16, :, 2:9],  # W = 7 inside rows of 14: (h, w) cannot merge into one stride
        base[:, ::2, :, ::3],  # no unit stride at all
    ):
        for e in (codebook, codebook.t().contiguous().t()):  # a column-major codebook is copied
            indices, distances = vqvae_fast.codebook_argmin(z, e, precision, return_distance=True)
            assert_argmin_matches(z, e, indices, distances)


@pytest.mark.parametrize("z_dtype,e_dtype", [(torch.float32, torch.bfloat16), (torch.float16, torch.bfloat16)])
def test_mixed_dtypes_compute_in_the_promoted_dtype(triton_device, z_dtype, e_dtype):
    z = make_latents(300, 24, z_dtype, "nchw", triton_device)
    codebook = torch.randn(40, 24, device=triton_device).to(e_dtype)
    indices, distances = vqvae_fast.codebook_argmin(z, codebook, return_distance=True)
    assert_argmin_matches(z, codebook, indices, distances)


@pytest.mark.parametrize("precision", ["ieee", "fast"])
@pytest.mark.parametrize("num_splits", [1, 3])
def test_duplicate_codes_resolve_to_the_lowest_index(triton_device, precision, num_splits):
    from vqvae_fast.kernels import codebook_argmin as kernels

    K, D = 300, 32  # three 128-code tiles: duplicates inside a tile, across tiles and splits
    codebook = torch.randn(K, D, device=triton_device)
    for first, copies in ((7, (9, 150)), (140, (290,)), (299, ())):
        for c in copies:
            codebook[c] = codebook[first]
    z = torch.cat([codebook[[150, 9, 7, 290, 140, 299]], codebook[[150, 290]] + 1e-3])  # (8, D)
    indices, _ = kernels.codebook_argmin(z, codebook, precision, num_splits=num_splits)
    assert indices.tolist() == [7, 7, 7, 140, 140, 299, 7, 140]


def test_codebook_splits_give_identical_results(triton_device):
    from vqvae_fast.kernels import codebook_argmin as kernels

    z = make_latents(300, 40, torch.float32, "nchw", triton_device)
    codebook = torch.randn(700, 40, device=triton_device)
    results = [kernels.codebook_argmin(z, codebook, "ieee", True, num_splits=s) for s in (1, 2, 6)]
    for indices, distances in results[1:]:
        assert torch.equal(indices, results[0][0])
        assert torch.equal(distances, results[0][1])
    assert_argmin_matches(z, codebook, *results[0])


def test_rerank_picks_the_closer_of_its_two_candidates(triton_device):
    """The interpreter's TF32 is exact, so drive the re-rank directly: slots naming a worse
    best and a better runner-up must come out as the better code (and ties as the lower one)."""
    from vqvae_fast.kernels import codebook_argmin as kernels

    codebook = torch.tensor([[0.0, 0.0], [1.0, 0.0], [3.0, 0.0], [1.0, 0.0]], device=triton_device)
    z = torch.tensor([[0.9, 0.0], [2.9, 0.0], [1.0, 0.0], [0.2, 0.0]], device=triton_device)  # (4, 2)
    key = 5 << 32  # any key: the re-rank uses exact distances only
    best = torch.tensor([key | 0, key | 1, key | 3, key | 0], device=triton_device)
    second = torch.tensor([key | 1, key | 2, key | 1, key | 9], device=triton_device)  # 9: padding code
    distances = torch.empty(4, device=triton_device)
    kernels.fin._finalize_kernel[(1,)](
        z, codebook, best, second, distances, 4, 4, 2, 1, 0, z.stride(0), z.stride(1),
        codebook.stride(0), codebook.stride(1), RERANK=True, WITH_DISTANCE=True, BLOCK_N=16, BLOCK_D=16,
    )
    assert best.tolist() == [1, 2, 1, 0]
    torch.testing.assert_close(distances, torch.tensor([0.01, 0.01, 0.0, 0.04], device=triton_device))


def test_fast_equals_ieee_without_near_ties(triton_device):
    # (The interpreter's TF32 is exact: on CPU this checks the plumbing, on a GPU the TF32 path.)
    N = 4096 if triton_device == "cuda" else 300
    z = make_latents(N, 64, torch.float32, "nchw", triton_device)
    codebook = torch.randn(1024, 64, device=triton_device)
    ieee = vqvae_fast.codebook_argmin(z, codebook, "ieee").reshape(-1)
    fast = vqvae_fast.codebook_argmin(z, codebook, "fast").reshape(-1)
    exact = exact_distances(z, codebook)
    best2 = exact.topk(2, dim=1, largest=False).values
    # away from TF32-level near-ties (2^-9 of the magnitudes involved) the two must agree
    flat = reference.ops.flatten_latents(z).double().cpu()
    band = 2.0**-9 * (flat.pow(2).sum(1) + codebook.double().cpu().pow(2).sum(1).max())
    clear = (best2[:, 1] - best2[:, 0]) > band
    assert clear.float().mean() > 0.5
    assert torch.equal(ieee.cpu()[clear], fast.cpu()[clear])


@pytest.mark.parametrize("dtype,precision", [(torch.bfloat16, "ieee"), (torch.float32, "fast"), (torch.float32, "ieee")])
def test_given_code_norms_skip_the_norm_launch(triton_device, dtype, precision):
    """Norms the caller keeps (as a quantizer does) replace the norm launch, except where the
    launch also prepares the codebook's TF32 parts (fp32 at the default precision) or ``K`` needs
    the +inf padding of the norms (not a multiple of 128: then they are computed as usual)."""
    from vqvae_fast.ops.codebook_argmin import code_norms

    z = make_latents(300, 32, dtype, "nchw", triton_device)
    codebook = torch.randn(256, 32, device=triton_device).to(dtype)  # K a multiple of NORMS_PAD
    with kernel_launches() as launched:
        indices, distances = vqvae_fast.codebook_argmin(z, codebook, precision, return_distance=True,
                                                        code_norms=code_norms(codebook))
    prepares = dtype == torch.float32 and precision == "ieee"
    expected = expected_launches(dtype, dtype, 32, precision)
    assert launched == (expected if prepares else expected[1:])
    assert_argmin_matches(z, codebook, indices, distances)


@pytest.mark.parametrize("shape", [(0, 8), (0, 8, 4, 4), (2, 8, 0, 3)])
def test_empty_latents_give_empty_results(triton_device, shape):
    z = torch.randn(shape, device=triton_device)
    codebook = torch.randn(5, 8, device=triton_device)
    indices, distances = vqvae_fast.codebook_argmin(z, codebook, return_distance=True)
    expected = (shape[0],) if len(shape) == 2 else (shape[0], shape[2], shape[3])
    assert indices.shape == expected and distances.shape == expected
    assert indices.dtype == torch.int64


def test_inputs_are_not_modified(triton_device):
    z = make_latents(300, 32, torch.float32, "channels_last", triton_device)
    codebook = torch.randn(50, 32, device=triton_device)
    z0, e0 = z.clone(), codebook.clone()
    vqvae_fast.codebook_argmin(z, codebook, "fast", return_distance=True)
    assert torch.equal(z, z0) and torch.equal(codebook, e0)
    assert z.is_contiguous(memory_format=torch.channels_last)


# ----------------------------------------------------------------------------------------------
# CPU backend


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("layout", ["rows", "nchw", "channels_last", "sliced"])
def test_cpu_backend_matches_reference(dtype, layout):
    if layout == "sliced":  # strides that cannot merge (H, W): a per-item copy
        z = torch.randn(3, 16, 10, 14)[:, :, :, ::2].to(dtype)
    else:
        z = make_latents(300, 16, dtype, layout)
    codebook = torch.randn(70, 16).to(dtype)
    with vqvae_fast.use_backend("cpu"):
        indices, distances = vqvae_fast.codebook_argmin(z, codebook, return_distance=True)
    if dtype == torch.float64:
        expected, expected_dist = reference.ops.codebook_argmin(z, codebook, return_distance=True)
        assert torch.equal(indices, expected)
        torch.testing.assert_close(distances, expected_dist)
    else:
        assert_argmin_matches(z, codebook, indices, distances)


@pytest.mark.parametrize("z_shape", [(50, 12), (7, 12, 3, 2), (2, 12, 9, 11)])
def test_cpu_blocks_cover_every_row(z_shape):
    """Blocks of a few rows: inside one item, spanning items, and row tails."""
    z = torch.randn(z_shape, dtype=torch.float64)
    codebook = torch.randn(33, 12, dtype=torch.float64)
    indices, distances = cpu_codebook_argmin(z, codebook, True, block_bytes=33 * 8 * 4)
    expected, expected_dist = reference.ops.codebook_argmin(z, codebook, return_distance=True)
    assert torch.equal(indices, expected)
    torch.testing.assert_close(distances, expected_dist)


def _rss(field):
    with open("/proc/self/status") as f:
        return int(re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.M).group(1)) * 1024


def _peak_extra_bytes(fn):
    """Peak resident memory added while ``fn`` runs (Linux: reset VmHWM, read it afterwards)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = _rss("VmRSS")
    fn()
    return _rss("VmHWM") - before


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_cpu_peak_memory_is_a_fraction_of_the_reference():
    # The reference's peak grows with N * K (measured here at 2048^2, where it holds several
    # (N, K) matrices); at N = K = 16384 it is at least its one fp32 (N, K) matrix, 1 GiB.
    small = torch.randn(2048, 4), torch.randn(2048, 4)
    reference_small = _peak_extra_bytes(lambda: reference.ops.codebook_argmin(*small))
    assert reference_small >= 2048 * 2048 * 4
    N = K = 16384
    z, codebook = torch.randn(N, 4), torch.randn(K, 4)
    reference_floor = N * K * 4
    ours = _peak_extra_bytes(lambda: cpu_codebook_argmin(z, codebook, False))
    assert ours < 0.1 * reference_floor, f"CPU path peaked at {ours / 2**20:.1f} MiB"
    assert CPU_BLOCK_BYTES < 0.1 * reference_floor


# ----------------------------------------------------------------------------------------------
# The op, errors


def test_custom_op_registration():
    z = torch.randn(2, 8, 3, 3)
    codebook = torch.randn(10, 8)
    for return_distance in (False, True):
        torch.library.opcheck(torch.ops.vqvae_fast.codebook_argmin.default, (z, codebook, "ieee", return_distance))


def test_compiles_without_graph_break():
    z = torch.randn(2, 8, 3, 3)
    codebook = torch.randn(10, 8)

    def quantize(z, codebook):
        return codebook[vqvae_fast.codebook_argmin(z, codebook)]

    compiled = torch.compile(quantize, fullgraph=True, backend="aot_eager")
    assert torch.equal(compiled(z, codebook), quantize(z, codebook))


@pytest.mark.parametrize(
    "z, codebook, kwargs, error, match",
    [
        (torch.randn(4, 8), torch.randn(5, 7), {}, ValueError, "code dimension 7 but z has 8"),
        (torch.randn(2, 8, 3, 3), torch.randn(5, 4), {}, ValueError, "dimension 1 of z"),
        (torch.randn(4, 8), torch.randn(0, 8), {}, ValueError, "at least one code"),
        (torch.randint(0, 5, (4, 8)), torch.randn(5, 8), {}, TypeError, "z must have dtype"),
        (torch.randn(4, 8), torch.randint(0, 5, (5, 8)), {}, TypeError, "codebook must have dtype"),
        (torch.randn(4, 8, 2), torch.randn(5, 8), {}, ValueError, "z must have 2 or 4 dimensions"),
        (torch.randn(4, 8), torch.randn(5, 8), {"precision": "tf32"}, ValueError, "precision must be one of"),
        (torch.randn(4, 8), torch.randn(5, 8), {"return_distance": 1}, TypeError, "return_distance"),
        (torch.randn(4, 8, requires_grad=True), torch.randn(5, 8), {}, ValueError, "not differentiable"),
        ([[1.0] * 8], torch.randn(5, 8), {}, TypeError, "z must be a torch.Tensor"),
    ],
)
def test_bad_input_gives_clear_errors(z, codebook, kwargs, error, match):
    with pytest.raises(error, match=match):
        vqvae_fast.codebook_argmin(z, codebook, **kwargs)
