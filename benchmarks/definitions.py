"""One benchmark definition per op: inputs, providers, the fp64 reference and the error measure.

Providers (the same names in every table and plot):

``reference``     the tests' reference, ``vqvae_fast.reference.ops.<op>``, eager.
``compiled``      ``torch.compile`` of that same reference function (static shapes).
``pytorch-best``  the fastest plain-PyTorch formulation we know of: ``F.group_norm`` then in-place
                  ``F.silu``; SDPA on ``(B, 1, N, C)`` copies of q, k, v made before timing, with
                  the fastest SDPA backend that runs (tried one by one); ``cdist`` + ``argmin``;
                  ``F.pad`` + ``F.conv2d`` with ``cudnn.benchmark`` on, weights in the input's
                  layout.
``vqvae_fast``    the public op ``vqvae_fast.<op>``, which picks its own backend (the ``backend``
                  column says which ran).

Every provider's forward returns its output in the reference's layout (views are free), so one
``grad_out`` and one fp64 reference serve all of them.
"""

from __future__ import annotations

import contextlib
import os
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, ContextManager

import torch
import torch.nn.functional as F

from . import formulas
from .device import TORCH_DTYPES
from .shapes import MODES, Case, Shape

PROVIDERS = ("reference", "compiled", "pytorch-best", "vqvae_fast")
# Providers of one op each: argmin's "fast" precision; padded_conv2d's second CUDA algorithm
# (the default vqvae_fast row runs cuDNN's graph API there), so a GPU run records both; the
# overhead benchmark's direct call of the registered op (overhead.py); icetk's own modules
# (icetk_model.py).
EXTRA_PROVIDERS = ("vqvae_fast-fast", "vqvae_fast-decomposed", "torch.ops", "icetk")


class ProviderUnavailable(Exception):
    """This provider does not exist here (not a failure: the row says ``unavailable``)."""


@dataclass
class Inputs:
    tensors: dict[str, torch.Tensor]
    grad_names: tuple[str, ...] = ()  # tensors the backward differentiates with respect to
    extra: dict = field(default_factory=dict)


@dataclass
class Runner:
    """A provider set up on one case's inputs."""

    fn: Callable[[], Any]  # the forward; returns the output in the reference's layout
    grad_tensors: list  # leaves of the backward, in the order of ``Inputs.grad_names``
    backend: str
    grads_to_common: Callable[[list], list] = lambda grads: grads
    scope: Callable[[], ContextManager] = contextlib.nullcontext  # entered around every call
    # A provider that measures itself (in a process of its own, lowmem.py): returns a dict with
    # "times_s" (timed runs), "first_call_s", "peak_bytes", "output" and "note"; fn is not called.
    measured: Callable[[], dict] | None = None


def make_generator(device: torch.device, seed: int) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def randn(shape, dtype, device, gen, scale: float = 1.0) -> torch.Tensor:
    out = torch.randn(shape, dtype=torch.float32, device=device, generator=gen)
    if scale != 1.0:
        out.mul_(scale)
    return out.to(dtype)


def to_format(t: torch.Tensor, fmt: str) -> torch.Tensor:
    if fmt == "channels_last" and t.dim() == 4:
        return t.contiguous(memory_format=torch.channels_last)
    return t


def upcast(t: torch.Tensor, requires_grad: bool) -> torch.Tensor:
    """A contiguous fp64 leaf copy of ``t`` (the layout changes no value, and fp64 kernels are
    surest in the default one)."""
    return t.detach().to(torch.float64, memory_format=torch.contiguous_format).requires_grad_(requires_grad)


def compare(actual, expected) -> tuple[float, float]:
    """``(max |a - e|, ||a - e|| / ||e||)`` over one tensor or a list of tensors, in fp64."""
    actual = [actual] if isinstance(actual, torch.Tensor) else list(actual)
    expected = [expected] if isinstance(expected, torch.Tensor) else list(expected)
    if len(actual) != len(expected):
        raise ValueError(f"{len(actual)} outputs, expected {len(expected)}")
    max_err, diff_sq, ref_sq = 0.0, 0.0, 0.0
    for a, e in zip(actual, expected):
        if a is None or e is None:
            continue
        if a.shape != e.shape:
            raise ValueError(f"output shape {tuple(a.shape)}, expected {tuple(e.shape)}")
        diff = a.detach().to(torch.float64) - e.detach().to(torch.float64)
        if diff.numel():
            max_err = max(max_err, float(diff.abs().max()))
        diff_sq += float(diff.pow(2).sum())
        ref_sq += float(e.detach().to(torch.float64).pow(2).sum())
    return max_err, (diff_sq**0.5 / ref_sq**0.5 if ref_sq > 0 else diff_sq**0.5)


CONV_IMPL_VAR = "VQVAE_FAST_PADDED_CONV2D_IMPL"  # the extension reads it on every CUDA call


@contextlib.contextmanager
def environment_variable(name: str, value: str):
    """``os.environ[name] = value`` for the duration of the block, then what it was."""
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


def compile_fn(fn: Callable, mode: str | None = None) -> Callable:
    return torch.compile(fn, dynamic=False, mode=mode)


def with_cudnn_benchmark(fn: Callable) -> Callable:
    """``fn`` run with ``torch.backends.cudnn.benchmark`` on (cuDNN times its algorithms: what a
    user tuning plain PyTorch turns on), the caller's setting restored after each call."""

    def run():
        old = torch.backends.cudnn.benchmark
        torch.backends.cudnn.benchmark = True
        try:
            return fn()
        finally:
            torch.backends.cudnn.benchmark = old

    return run


def public_backend(op: str, device: torch.device, dtype: torch.dtype) -> str:
    """The backend ``vqvae_fast.<op>`` picks for this device and dtype."""
    from vqvae_fast._backend import op_backends

    return op_backends(op).select(device, dtype).name


class OpBench:
    """The benchmark definition of one op; subclasses fill in inputs and providers."""

    name: str = ""
    providers: tuple[str, ...] = PROVIDERS
    has_backward: bool = True
    has_flops: bool = True  # False where the floor is the bytes alone
    tf32_flag: str = "matmul"  # which TF32 switch governs fp32 work: "matmul" or "cudnn"
    baseline_provider: str = "reference"  # the row the speedup column divides

    def providers_on(self, device: torch.device) -> tuple[str, ...]:
        """The providers that can run on this device (all of them unless an op says otherwise)."""
        return self.providers

    def modes_for(self, shape: Shape) -> tuple[str, ...]:
        return MODES if self.has_backward else ("forward",)

    def describe(self, shape: Shape) -> str:
        return "x".join(str(d) for d in shape.dims)

    def work(self, case: Case) -> formulas.Work:
        return formulas.FORMULAS[self.name](case.shape.dims, case.dtype, case.mode)

    def peak_dtype(self, case: Case, provider: str, device: torch.device) -> str:
        """Which measured FLOP rate bounds this row (fp32 work may run as TF32)."""
        if case.dtype != "fp32" or device.type != "cuda":
            return case.dtype
        flag = torch.backends.cudnn.allow_tf32 if self.tf32_flag == "cudnn" else torch.backends.cuda.matmul.allow_tf32
        return "tf32" if flag else "fp32"

    # -- to be provided per op
    def make_inputs(self, case: Case, device: torch.device, requires_grad: bool, gen: torch.Generator) -> Inputs:
        raise NotImplementedError

    def build(self, provider: str, inputs: Inputs, case: Case, device: torch.device) -> Runner:
        raise NotImplementedError

    # -- backward plumbing shared by the ops
    def backward_target(self, out, grad_out):
        """``(outputs, grad_outputs)`` for ``torch.autograd.grad``."""
        return out, grad_out

    def make_grad_out(self, out, gen: torch.Generator):
        """The upstream gradient, in the output's memory format: in a channels_last network the
        gradient reaching a layer's output is channels_last too (the next convolution's backward
        writes it so). Same values in either layout, so the fp64 check is unaffected."""
        grad = randn(out.shape, out.dtype, out.device, gen)
        if grad.dim() == 4 and not out.is_contiguous() and out.is_contiguous(memory_format=torch.channels_last):
            grad = grad.contiguous(memory_format=torch.channels_last)
        return grad

    def output_for_error(self, out):
        return out

    def upcast_inputs(self, inputs: Inputs, requires_grad: bool) -> Inputs:
        tensors = {
            name: upcast(t, requires_grad and name in inputs.grad_names) if t.is_floating_point() else t
            for name, t in inputs.tensors.items()
        }
        return Inputs(tensors, inputs.grad_names, dict(inputs.extra))

    def expected(self, case: Case, inputs: Inputs, device: torch.device, grad_out):
        """The fp64 reference: the forward output, or the gradients in backward modes."""
        backward = case.mode != "forward"
        inputs64 = self.upcast_inputs(inputs, backward)
        runner = self.build("reference", inputs64, case, device)
        if not backward:
            with torch.no_grad():
                return self.output_for_error(runner.fn())
        out = runner.fn()
        grad64 = None if grad_out is None else grad_out.to(torch.float64)
        target, gout = self.backward_target(out, grad64)
        grads = torch.autograd.grad(target, runner.grad_tensors, gout, allow_unused=True)
        return list(grads)

    def error(self, actual, expected) -> tuple[float, float]:
        return compare(actual, expected)


# ----------------------------------------------------------------------------------------------


class GroupNormSiLU(OpBench):
    name = "group_norm_silu"
    has_flops = False
    groups, eps = 32, 1e-6

    def make_inputs(self, case, device, requires_grad, gen):
        n, c, h, w = case.shape.dims
        dtype = TORCH_DTYPES[case.dtype]
        x = to_format(randn((n, c, h, w), dtype, device, gen), case.format)
        weight = 1 + randn((c,), dtype, device, gen, 0.1)
        bias = randn((c,), dtype, device, gen, 0.1)
        tensors = {"x": x, "weight": weight, "bias": bias}
        for t in tensors.values():
            t.requires_grad_(requires_grad)
        return Inputs(tensors, ("x", "weight", "bias"))

    def build(self, provider, inputs, case, device):
        from vqvae_fast.reference import ops as ref

        x, w, b = (inputs.tensors[k] for k in ("x", "weight", "bias"))
        g, eps = self.groups, self.eps
        if provider == "reference":
            return Runner(lambda: ref.group_norm_silu(x, g, w, b, eps), [x, w, b], "eager")
        if provider == "compiled":
            fn = compile_fn(ref.group_norm_silu)
            return Runner(lambda: fn(x, g, w, b, eps), [x, w, b], "inductor")
        if provider == "pytorch-best":
            return Runner(lambda: F.silu(F.group_norm(x, g, w, b, eps), inplace=True), [x, w, b], "group_norm+silu_")
        if provider == "vqvae_fast":
            import vqvae_fast

            backend = public_backend(self.name, x.device, x.dtype)
            return Runner(lambda: vqvae_fast.group_norm_silu(x, g, w, b, eps), [x, w, b], backend)
        raise ProviderUnavailable(f"no provider {provider!r} for {self.name}")


def fastest_sdpa_backend(q, k, v, device: torch.device) -> tuple[Any, str]:
    """The SDPA backend (flash, cuDNN, efficient, math) that runs these inputs fastest."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from .timing import synchronize

    candidates = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
    if hasattr(SDPBackend, "CUDNN_ATTENTION") and device.type == "cuda":
        candidates.insert(1, SDPBackend.CUDNN_ATTENTION)
    best, best_time, reasons = None, float("inf"), []
    for backend in candidates:
        try:
            with warnings.catch_warnings(), sdpa_kernel([backend]), torch.no_grad():
                warnings.simplefilter("ignore")
                F.scaled_dot_product_attention(q, k, v)  # warm-up, or raises if it cannot run
                synchronize(device)
                start = time.perf_counter()
                for _ in range(3):
                    F.scaled_dot_product_attention(q, k, v)
                synchronize(device)
                elapsed = time.perf_counter() - start
        except RuntimeError as err:
            reasons.append(f"{backend.name}: {str(err).splitlines()[0][:80]}")
            continue
        if elapsed < best_time:
            best, best_time = backend, elapsed
    if best is None:
        raise RuntimeError("no SDPA backend runs: " + "; ".join(reasons))
    return best, best.name.lower().replace("_attention", "")


class SpatialAttention(OpBench):
    name = "spatial_attention"

    def make_inputs(self, case, device, requires_grad, gen):
        b, c, n = case.shape.dims
        dtype = TORCH_DTYPES[case.dtype]
        tensors = {k: randn((b, c, n), dtype, device, gen).requires_grad_(requires_grad) for k in ("q", "k", "v")}
        return Inputs(tensors, ("q", "k", "v"))

    def build(self, provider, inputs, case, device):
        from vqvae_fast.reference import ops as ref

        q, k, v = (inputs.tensors[n] for n in ("q", "k", "v"))
        if provider == "reference":
            return Runner(lambda: ref.spatial_attention(q, k, v), [q, k, v], "eager")
        if provider == "compiled":
            fn = compile_fn(ref.spatial_attention)
            return Runner(lambda: fn(q, k, v), [q, k, v], "inductor")
        if provider == "pytorch-best":
            from torch.nn.attention import sdpa_kernel

            # (B, C, N) -> (B, 1, N, C): one head of size C; copies made here, outside the timing
            qs, ks, vs = (t.detach().transpose(1, 2).unsqueeze(1).contiguous().requires_grad_(t.requires_grad)
                          for t in (q, k, v))
            backend, label = fastest_sdpa_backend(qs, ks, vs, device)

            def run():
                with sdpa_kernel([backend]):
                    out = F.scaled_dot_product_attention(qs, ks, vs)  # (B, 1, N, C)
                return out.squeeze(1).transpose(1, 2)  # (B, C, N) view

            return Runner(run, [qs, ks, vs], f"sdpa:{label}",
                          grads_to_common=lambda gs: [None if g is None else g.squeeze(1).transpose(1, 2) for g in gs])
        if provider == "vqvae_fast":
            import vqvae_fast

            backend = public_backend(self.name, q.device, q.dtype)
            return Runner(lambda: vqvae_fast.spatial_attention(q, k, v), [q, k, v], backend)
        raise ProviderUnavailable(f"no provider {provider!r} for {self.name}")


class CodebookArgmin(OpBench):
    """Indices are compared through fp64 distances: ``max_err`` is the largest excess distance
    ``d(z, e_chosen) - min_k d(z, e_k)`` (0 when every chosen code is a nearest one) and
    ``rel_err`` the fraction of indices that differ from the fp64 argmin."""

    name = "codebook_argmin"
    providers = PROVIDERS + ("vqvae_fast-fast",)
    has_backward = False
    chunk_bytes = 256 * 2**20  # fp64 distance rows per chunk of the reference

    def describe(self, shape):
        n, k, d = shape.dims
        return f"N={n} K={k} D={d}"

    def peak_dtype(self, case, provider, device):
        if provider.startswith("vqvae_fast") and case.dtype == "fp32" and device.type == "cuda":
            return "tf32"  # both precisions run their fp32 products on tensor cores (TF32 parts)
        return super().peak_dtype(case, provider, device)

    def make_inputs(self, case, device, requires_grad, gen):
        n, k, d = case.shape.dims
        dtype = TORCH_DTYPES[case.dtype]
        return Inputs({"z": randn((n, d), dtype, device, gen), "codebook": randn((k, d), dtype, device, gen)})

    def build(self, provider, inputs, case, device):
        from vqvae_fast.reference import ops as ref

        z, e = inputs.tensors["z"], inputs.tensors["codebook"]
        if provider == "reference":
            return Runner(lambda: ref.codebook_argmin(z, e), [], "eager")
        if provider == "compiled":
            fn = compile_fn(ref.codebook_argmin)
            return Runner(lambda: fn(z, e), [], "inductor")
        if provider == "pytorch-best":
            return Runner(lambda: torch.cdist(z, e).argmin(dim=1), [], "cdist+argmin")
        if provider in ("vqvae_fast", "vqvae_fast-fast"):
            import vqvae_fast

            precision = "fast" if provider == "vqvae_fast-fast" else "ieee"
            dtype = torch.promote_types(z.dtype, e.dtype)
            backend = public_backend(self.name, z.device, dtype)
            return Runner(lambda: vqvae_fast.codebook_argmin(z, e, precision=precision), [], f"{backend}:{precision}")
        raise ProviderUnavailable(f"no provider {provider!r} for {self.name}")

    def expected(self, case, inputs, device, grad_out):
        """fp64 nearest distances and indices, in row chunks (never the whole N x K in fp64)."""
        z = inputs.tensors["z"].to(torch.float64)
        e = inputs.tensors["codebook"].to(torch.float64)
        rows = max(1, self.chunk_bytes // (8 * e.shape[0]))
        best, indices = [], []
        for start in range(0, z.shape[0], rows):
            chunk = z[start:start + rows]
            d = (chunk.pow(2).sum(1, keepdim=True) + e.pow(2).sum(1) - 2 * chunk @ e.t())  # (rows, K)
            value, index = d.min(dim=1)
            best.append(value)
            indices.append(index)
        return {"z": z, "codebook": e, "best": torch.cat(best), "indices": torch.cat(indices)}

    def error(self, actual, expected):
        chosen = actual.reshape(-1).to(torch.long)
        d_chosen = (expected["z"] - expected["codebook"][chosen]).pow(2).sum(1)  # (N,)
        excess = (d_chosen - expected["best"]).clamp_min(0)
        mismatch = (chosen != expected["indices"]).double().mean()
        return float(excess.max()) if excess.numel() else 0.0, float(mismatch)


class PaddedConv2d(OpBench):
    """taming's Downsample: 3x3 kernel, stride 2, zero padding (left, right, top, bottom) = (0, 1, 0, 1)."""

    name = "padded_conv2d"
    providers = PROVIDERS + ("vqvae_fast-decomposed",)
    tf32_flag = "cudnn"
    stride, padding = 2, (0, 1, 0, 1)

    def providers_on(self, device):
        # On a CPU the extension only has the decomposed algorithm: the row would repeat vqvae_fast's.
        return self.providers if device.type == "cuda" else PROVIDERS

    def describe(self, shape):
        n, c_in, h, w, c_out = shape.dims
        return f"{n}x{c_in}x{h}x{w}->{c_out} s2"

    def make_inputs(self, case, device, requires_grad, gen):
        n, c_in, h, w, c_out = case.shape.dims
        dtype = TORCH_DTYPES[case.dtype]
        x = to_format(randn((n, c_in, h, w), dtype, device, gen), case.format)
        weight = to_format(randn((c_out, c_in, 3, 3), dtype, device, gen, (9 * c_in) ** -0.5), case.format)
        bias = randn((c_out,), dtype, device, gen, 0.1)
        tensors = {"x": x, "weight": weight, "bias": bias}
        for t in tensors.values():
            t.requires_grad_(requires_grad)
        return Inputs(tensors, ("x", "weight", "bias"))

    def build(self, provider, inputs, case, device):
        from vqvae_fast.reference import ops as ref

        x, w, b = (inputs.tensors[k] for k in ("x", "weight", "bias"))
        stride, padding = self.stride, self.padding
        if provider == "reference":
            return Runner(lambda: ref.padded_conv2d(x, w, b, stride, padding), [x, w, b], "eager")
        if provider == "compiled":
            fn = compile_fn(ref.padded_conv2d)
            return Runner(lambda: fn(x, w, b, stride, padding), [x, w, b], "inductor")
        if provider == "pytorch-best":
            run = with_cudnn_benchmark(lambda: F.conv2d(F.pad(x, padding), w, b, stride=stride))
            label = "pad+cudnn.benchmark" if device.type == "cuda" else "pad+conv2d"
            return Runner(run, [x, w, b], label)
        if provider == "vqvae_fast":
            import vqvae_fast

            backend = public_backend(self.name, x.device, x.dtype)
            return Runner(lambda: vqvae_fast.padded_conv2d(x, w, b, stride, padding), [x, w, b], backend)
        if provider == "vqvae_fast-decomposed":
            import vqvae_fast

            backend = public_backend(self.name, x.device, x.dtype)
            if backend != "cuda":
                raise ProviderUnavailable(f"the decomposed CUDA algorithm needs the cuda backend, not {backend}")
            return Runner(lambda: vqvae_fast.padded_conv2d(x, w, b, stride, padding), [x, w, b],
                          "cuda:decomposed", scope=lambda: environment_variable(CONV_IMPL_VAR, "decomposed"))
        raise ProviderUnavailable(f"no provider {provider!r} for {self.name}")
