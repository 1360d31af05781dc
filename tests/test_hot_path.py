"""The hot path: one backend selection per public call, the custom-op rule, the selection cache's
invalidation, and no host synchronisation in any accelerated model's forward (on CPU under a
dispatch mode; on CUDA by capturing a CUDA graph and by ``torch.compile(mode="reduce-overhead")``),
icetk's HVQVAE included.
Derived weights and the folded attention projection: tests/test_derived_weights.py."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import vqvae_fast
from vqvae_fast import _backend, _extension, configs, reference

import peers
from test_accelerate import tiny_reference

HAS_CUDA = torch.cuda.is_available()

# Ops that read a tensor's value back to the host (or whose output shape depends on values).
SYNCING_OPS = {
    "aten::_local_scalar_dense", "aten::item", "aten::is_nonzero", "aten::equal", "aten::allclose",
    "aten::nonzero", "aten::nonzero_numpy", "aten::argwhere", "aten::masked_select",
    "aten::_unique", "aten::_unique2", "aten::unique_dim", "aten::unique_consecutive",
    "aten::unique_dim_consecutive", "aten::bincount", "aten::histc", "aten::_assert_async",
}
INDEXING_OPS = {"aten::index", "aten::index_put", "aten::index_put_", "aten::_index_put_impl_"}


def _bool_index(indices) -> bool:
    return any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in indices or ())


class HostSyncDetector(TorchDispatchMode):
    """Records every op that would synchronise the host with the device.

    vqvae_fast's custom ops are re-dispatched to their CPU implementation with the mode still
    active, so the ops inside them are checked too."""

    def __init__(self):
        super().__init__()
        self.syncs: list[str] = []
        self.ops: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func._schema.name
        self.ops.add(name)
        if name in SYNCING_OPS:
            self.syncs.append(name)
        elif name in INDEXING_OPS and _bool_index(args[1] if len(args) > 1 else kwargs.get("indices")):
            self.syncs.append(f"{name} with a boolean mask")
        elif name == "aten::repeat_interleave" and kwargs.get("output_size") is None and isinstance(args[0], torch.Tensor):
            self.syncs.append(f"{name} without output_size")
        if func.namespace == "vqvae_fast":
            with self:
                return func.redispatch(torch._C.DispatchKeySet(torch._C.DispatchKey.CPU), *args, **kwargs)
        return func(*args, **kwargs)


def _tiny_cfg():
    return configs.get_config("tiny")


def _vq_model(remap=False):
    cfg = _tiny_cfg()
    kwargs = dict(remap=torch.tensor([3, 1, 4, 9, 20]), sane_index_shape=True) if remap else {}
    model = vqvae_fast.VQModel(cfg["ddconfig"], n_embed=cfg["n_embed"], embed_dim=cfg["embed_dim"], **kwargs)
    model.quantize.unknown_index = "random"
    return peers.randomize_norms(model), lambda m, x: m(x, return_pred_indices=True)


def _kl_model():
    cfg = _tiny_cfg()
    model = vqvae_fast.AutoencoderKL(dict(cfg["ddconfig"], double_z=True), embed_dim=4)
    return peers.randomize_norms(model), lambda m, x: m(x, sample_posterior=True)


def _encoder():
    return peers.randomize_norms(vqvae_fast.Encoder(**_tiny_cfg()["ddconfig"])), lambda m, x: m(x)


def _decoder():
    cfg = _tiny_cfg()["ddconfig"]
    model = peers.randomize_norms(vqvae_fast.Decoder(**cfg))
    return model, lambda m, x: m(torch.randn(x.shape[0], cfg["z_channels"], 8, 8))


def _accelerated_reference():
    return vqvae_fast.accelerate(tiny_reference()).model, lambda m, x: m(x)


def _accelerated_taming():
    if not peers.have("taming"):
        pytest.skip("taming-transformers is not installed")
    return vqvae_fast.accelerate(peers.randomize_norms(peers.TamingVQ())).model, lambda m, x: m(x)


def _accelerated_diffusers(kind):
    if not peers.have("diffusers"):
        pytest.skip("diffusers is not installed")
    model = peers.diffusers_vq_model() if kind == "vq" else peers.diffusers_autoencoder_kl()
    return vqvae_fast.accelerate(peers.randomize_norms(model)).model, lambda m, x: m(x).sample


def _icetk_model():
    from vqvae_fast import icetk
    from vqvae_fast.reference.icetk import tiny_config

    return peers.randomize_norms(icetk.HVQVAE.from_config(tiny_config())), lambda m, x: m(x)


def _accelerated_icetk():
    from vqvae_fast.icetk import original
    from vqvae_fast.reference.icetk import tiny_config

    hierarchical = original.icetk_submodule("vqvae_hierarchical")
    if hierarchical is None:
        pytest.skip(original.UNAVAILABLE)
    model = hierarchical.HVQVAE(**tiny_config()["params"])
    return vqvae_fast.accelerate(peers.randomize_norms(model)).model, lambda m, x: m(x)


MODELS = {
    "VQModel": _vq_model,
    "VQModel-remap": lambda: _vq_model(remap=True),
    "AutoencoderKL": _kl_model,
    "Encoder": _encoder,
    "Decoder": _decoder,
    "accelerated-reference": _accelerated_reference,
    "accelerated-taming": _accelerated_taming,
    "diffusers-VQModel": lambda: _accelerated_diffusers("vq"),
    "diffusers-AutoencoderKL": lambda: _accelerated_diffusers("kl"),
    "icetk-HVQVAE": _icetk_model,
    "accelerated-icetk": _accelerated_icetk,
}


@pytest.mark.parametrize("grad", [False, True], ids=["no_grad", "grad"])
@pytest.mark.parametrize("backend", [None, "cpu"], ids=["auto", "cpu-forced"])
@pytest.mark.parametrize("name", list(MODELS))
def test_accelerated_forward_never_syncs_the_host(name, backend, grad):
    """Every op of the forward (inside vqvae_fast's custom ops too) runs without reading a value
    back: no .item(), nonzero, boolean masks or data-dependent shapes. Forcing ``cpu`` runs the
    extension's padded conv and the custom ops' implementations."""
    torch.manual_seed(0)
    model, run = MODELS[name]()
    model.eval().requires_grad_(grad)
    x = torch.randn(2, 3, 32, 32, requires_grad=grad)
    forced = vqvae_fast.use_backend(backend) if backend else _nothing()
    with forced, torch.set_grad_enabled(grad), HostSyncDetector() as detector:
        run(model, x)
    assert not detector.syncs, f"{name}: host-syncing ops in the forward: {sorted(set(detector.syncs))}"
    assert "aten::convolution" in detector.ops  # the mode saw the model run


def test_detector_catches_syncing_ops():
    x = torch.randn(8)
    with HostSyncDetector() as detector:
        x[x > 0] = 0.0
        x.nonzero()
        float(x.sum())
    assert {"aten::index_put_ with a boolean mask", "aten::nonzero", "aten::_local_scalar_dense"} <= set(detector.syncs)


class _nothing:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


# ----------------------------------------------------------------------------------------------
# One selection per public call; the custom op only where the rule says


def _op_calls():
    """Each public op on tiny CPU inputs: name -> (call, differentiable inputs)."""
    x = torch.randn(2, 32, 5, 5)
    weight, bias = torch.rand(32) + 0.5, torch.randn(32)
    q, k, v = (torch.randn(2, 16, 12, dtype=torch.bfloat16) for _ in range(3))  # bf16: the chunked op on CPU
    z, codebook = torch.randn(20, 8), torch.randn(30, 8)
    w_conv = torch.randn(8, 32, 3, 3)
    return {
        "group_norm_silu": (lambda: vqvae_fast.group_norm_silu(x, 8, None, bias), [x, bias]),
        "spatial_attention": (lambda: vqvae_fast.spatial_attention(q, k, v), [q, k, v]),
        "codebook_argmin": (lambda: vqvae_fast.codebook_argmin(z, codebook), []),
        "padded_conv2d": (lambda: vqvae_fast.padded_conv2d(x, w_conv, None, 2, (0, 1, 0, 1)), [x, w_conv]),
    }


needs_extension = pytest.mark.skipif(_extension.status() is not None, reason=f"{_extension.status()}")


@needs_extension
@pytest.mark.parametrize("grad", [False, True], ids=["no_grad", "grad"])
@pytest.mark.parametrize("op", ["group_norm_silu", "spatial_attention", "codebook_argmin", "padded_conv2d"])
def test_one_selection_per_call_and_the_custom_op_rule(op, grad, monkeypatch):
    """Forced ``cpu`` (every op's custom-op path exists there): eager calls without autograd run
    the implementation directly, autograd calls go through the custom op, and either way the
    backend is selected exactly once (not again inside the op, nor in its backward).
    padded_conv2d's op is its C++ kernel: without autograd it is called below the autograd key,
    which a dispatch mode (below that key) cannot tell apart, so there the output's grad_fn says."""
    selections = []
    select = _backend.OpBackends.select

    def counting_select(self, device, dtype):
        selections.append(self.op)
        return select(self, device, dtype)

    monkeypatch.setattr(_backend.OpBackends, "select", counting_select)
    call, inputs = _op_calls()[op]
    differentiable = grad and bool(inputs)
    for t in inputs:
        t.requires_grad_(differentiable)
    with vqvae_fast.use_backend("cpu"), HostSyncDetector() as detector:
        out = call()
    assert selections == [op]
    if op == "padded_conv2d":
        assert "vqvae_fast::padded_conv2d" in detector.ops
        assert (out.grad_fn is not None) == differentiable
    else:
        assert (f"vqvae_fast::{op}" in detector.ops) == differentiable
    if differentiable:
        out.float().sum().backward()
        assert selections == [op]  # the backward reuses the forward's choice


def test_selection_follows_use_backend_and_the_environment(monkeypatch):
    """The cached selection is dropped when use_backend is entered or left and when the
    environment setting changes; a call afterwards sees the new state."""
    monkeypatch.delenv(_backend.ENV_VAR, raising=False)
    table = _backend.op_backends("group_norm_silu")
    cpu, f32 = torch.device("cpu"), torch.float32
    assert table.select(cpu, f32).name == "cpu"
    with vqvae_fast.use_backend("reference"):
        assert table.select(cpu, f32).name == "reference"
        with vqvae_fast.use_backend("cpu", ops="group_norm_silu"):
            assert table.select(cpu, f32).name == "cpu"
        assert table.select(cpu, f32).name == "reference"
    assert table.select(cpu, f32).name == "cpu"
    monkeypatch.setenv(_backend.ENV_VAR, "reference")
    assert table.select(cpu, f32).name == "reference"
    monkeypatch.setenv(_backend.ENV_VAR, "cpu")
    assert table.select(cpu, f32).name == "cpu"
    monkeypatch.delenv(_backend.ENV_VAR)
    assert table.select(cpu, f32).name == "cpu"


@needs_extension
def test_public_call_runs_what_the_environment_forces(monkeypatch):
    """padded_conv2d on CPU runs pad + conv2d unless the cpu backend is forced, then the
    extension: the environment variable flips it between two calls, and back."""
    x, w = torch.randn(1, 4, 6, 6), torch.randn(4, 4, 3, 3)
    expected = reference.padded_conv2d(x, w, None, 2, (0, 1, 0, 1))

    def ops_of_one_call():
        with HostSyncDetector() as detector:
            torch.testing.assert_close(vqvae_fast.padded_conv2d(x, w, None, 2, (0, 1, 0, 1)), expected)
        return detector.ops

    monkeypatch.delenv(_backend.ENV_VAR, raising=False)
    assert "vqvae_fast::padded_conv2d" not in ops_of_one_call()
    monkeypatch.setenv(_backend.ENV_VAR, "cpu")
    assert "vqvae_fast::padded_conv2d" in ops_of_one_call()
    monkeypatch.setenv(_backend.ENV_VAR, "reference")
    assert "vqvae_fast::padded_conv2d" not in ops_of_one_call()
    monkeypatch.delenv(_backend.ENV_VAR)
    with vqvae_fast.use_backend("cpu"):
        assert "vqvae_fast::padded_conv2d" in ops_of_one_call()
    assert "vqvae_fast::padded_conv2d" not in ops_of_one_call()


def test_auto_variant_never_replaces_a_forced_backend():
    table = _backend.OpBackends("demo")
    table.register("cpu", devices=("cpu",), dtypes=(torch.float32,), auto=lambda: "auto")(lambda: "forced")
    table.register("reference", devices=None, dtypes=(torch.float32,))(lambda: "reference")
    assert table.select(torch.device("cpu"), torch.float32).fn() == "auto"
    with vqvae_fast.use_backend("cpu"):
        assert table.select(torch.device("cpu"), torch.float32).fn() == "forced"
    assert table.select(torch.device("cpu"), torch.float32).fn() == "auto"


# ----------------------------------------------------------------------------------------------
# CUDA: graph capture and reduce-overhead compile of accelerated models


cuda_only = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")


def _cuda_models():
    vq, _ = _vq_model()
    kl, _ = _kl_model()
    icetk, _ = _icetk_model()
    return {
        "VQModel": (vq, lambda m, x: m(x)[0]),
        "AutoencoderKL": (kl, lambda m, x: m(x, sample_posterior=False)[0]),
        "icetk-HVQVAE": (icetk, lambda m, x: m(x)[0][-1]),  # one decoder's image
    }


@cuda_only
@pytest.mark.parametrize("name", ["VQModel", "AutoencoderKL", "icetk-HVQVAE"])
def test_cuda_graph_capture_replays_the_forward(name):
    model, run = _cuda_models()[name]
    model = model.cuda().eval()
    static_x = torch.randn(2, 3, 32, 32, device="cuda")
    with torch.no_grad():
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up: kernels compiled, derived weights cached
            for _ in range(3):
                run(model, static_x)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = run(model, static_x)
        for _ in range(2):
            fresh = torch.randn_like(static_x)
            static_x.copy_(fresh)
            graph.replay()
            torch.cuda.synchronize()
            torch.testing.assert_close(static_out, run(model, fresh), rtol=1e-4, atol=1e-4)


@cuda_only
@pytest.mark.parametrize("name", ["VQModel", "AutoencoderKL", "icetk-HVQVAE"])
def test_torch_compile_reduce_overhead(name):
    model, run = _cuda_models()[name]
    model = model.cuda().eval()
    torch._dynamo.reset()
    compiled = torch.compile(lambda x: run(model, x), mode="reduce-overhead")
    with torch.no_grad():
        for _ in range(3):  # the first calls record, later ones replay the CUDA graph
            x = torch.randn(2, 3, 32, 32, device="cuda")
            out = compiled(x).clone()
            torch.testing.assert_close(out, run(model, x), rtol=1e-3, atol=1e-3)
