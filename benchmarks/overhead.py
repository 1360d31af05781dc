"""The ``overhead`` benchmark: what a public call costs beyond the work, per op, on tiny inputs.

A VQGAN decoder calls the ops ~60 times per forward; at batch 1 on a GPU the kernels take tens of
microseconds, so the Python before each launch decides the speed. Each case is one public op on
inputs small enough that the work is negligible, timed three ways:

``pytorch-best``  the plain-PyTorch equivalent a user would write, the fastest at these sizes:
               ``F.silu(F.group_norm(x))``; ``bmm(v, softmax(bmm(qᵀ s, k))ᵀ)`` (SDPA's CPU and
               GPU kernels cost more at this size); ``torch.cdist(z, e).argmin(1)``;
               ``F.conv2d(F.pad(x))``. The ``speedup`` column is relative to this row.
``vqvae_fast`` the public call ``vqvae_fast.<op>``: argument checks, backend selection, launch.
``torch.ops``  the registered op ``torch.ops.vqvae_fast.<op>`` called directly (what
               ``torch.compile`` and autograd run), without the public function's checks.

The error column compares with the fp64 reference (``vqvae_fast.reference.ops``) as everywhere.

Modes: ``forward`` (under ``torch.no_grad``) and ``forward+backward`` (inputs that require grad:
the autograd path; ``codebook_argmin`` has none). Times are host wall-clock per call, averaged
over a loop of calls with one device synchronisation per loop (on CUDA that is the
launch-bound regime tiny kernels live in), median over loops. The goal: ``vqvae_fast`` within
5 us of ``pytorch-best`` without autograd and 10 us with it; the summary prints the differences.
Measure on CPU with ``--threads 1`` so that the op's own threading does not blur microseconds.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import formulas
from .definitions import Inputs, OpBench, ProviderUnavailable, Runner, public_backend, randn
from .shapes import Case, Shape

PROVIDERS = ("pytorch-best", "vqvae_fast", "torch.ops")
#: The goal in microseconds over ``pytorch-best``, per mode.
GOAL_US = {"forward": 5.0, "forward+backward": 10.0}


class OverheadBench(OpBench):
    name = "overhead"
    providers = PROVIDERS
    has_flops = False
    host_loop = True  # timed as a loop of calls on the host (runner.py)
    baseline_provider = "pytorch-best"  # what the speedup column divides

    def modes_for(self, shape: Shape) -> tuple[str, ...]:
        if shape.param["target"] == "codebook_argmin":
            return ("forward",)
        return ("forward", "forward+backward")

    def describe(self, shape: Shape) -> str:
        return f"{shape.param['target']} " + "x".join(str(d) for d in shape.dims)

    def work(self, case: Case) -> formulas.Work:
        return formulas.Work(None, None)

    def make_inputs(self, case, device, requires_grad, gen):
        target = case.shape.param["target"]
        dims = case.shape.dims
        dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[case.dtype]

        def leaf(shape, scale=1.0):
            return randn(shape, dtype, device, gen, scale).requires_grad_(requires_grad)

        if target == "group_norm_silu":
            n, c, h, w = dims
            tensors = {"x": leaf((n, c, h, w)), "weight": leaf((c,), 0.1), "bias": leaf((c,), 0.1)}
            with torch.no_grad():
                tensors["weight"] += 1
        elif target == "spatial_attention":
            tensors = {name: leaf(dims) for name in ("q", "k", "v")}
        elif target == "codebook_argmin":
            n, k, d = dims
            tensors = {"z": randn((n, d), dtype, device, gen), "codebook": randn((k, d), dtype, device, gen)}
        else:  # padded_conv2d: (N, C_in, H, W, C_out), 3x3, stride 2, padding (0, 1, 0, 1)
            n, c_in, h, w, c_out = dims
            tensors = {"x": leaf((n, c_in, h, w)), "weight": leaf((c_out, c_in, 3, 3), (9 * c_in) ** -0.5),
                       "bias": leaf((c_out,), 0.1)}
        grads = () if target == "codebook_argmin" else tuple(tensors)
        return Inputs(tensors, grads, {"target": target})

    def build(self, provider, inputs, case, device):
        import vqvae_fast
        from vqvae_fast.reference import ops as ref

        target = inputs.extra["target"]
        t = inputs.tensors
        leaves = [t[name] for name in inputs.grad_names]
        args = _ARGS[target](t)
        if provider == "reference":  # the fp64 expected values (OpBench.expected)
            fn = getattr(ref, target)
            return Runner(lambda: fn(*args), leaves, "eager")
        if provider == "pytorch-best":
            fn = _PLAIN[target]
            return Runner(lambda: fn(*args), leaves, "plain pytorch")
        if provider == "vqvae_fast":
            fn = getattr(vqvae_fast, target)
            dtype = next(iter(t.values())).dtype
            return Runner(lambda: fn(*args), leaves, public_backend(target, device, dtype))
        if provider == "torch.ops":
            op_args = _OP_ARGS[target](t)
            if target == "padded_conv2d":
                from vqvae_fast import _extension

                if not _extension.load():
                    raise ProviderUnavailable(f"the compiled extension is not loaded: {_extension.status()}")
            op = getattr(torch.ops.vqvae_fast, target)
            first = target != "padded_conv2d"  # the Python custom ops return a tuple
            return Runner((lambda: op(*op_args)[0]) if first else (lambda: op(*op_args)), leaves, "custom op")
        raise ProviderUnavailable(f"no provider {provider!r} for {self.name}")


# Arguments of the public op (and of the reference, which has the same signature).
_ARGS = {
    "group_norm_silu": lambda t: (t["x"], 8, t["weight"], t["bias"], 1e-6),
    "spatial_attention": lambda t: (t["q"], t["k"], t["v"]),
    "codebook_argmin": lambda t: (t["z"], t["codebook"]),
    "padded_conv2d": lambda t: (t["x"], t["weight"], t["bias"], 2, (0, 1, 0, 1)),
}
# The plain-PyTorch equivalent of each op, on the public op's arguments.
_PLAIN = {
    "group_norm_silu": lambda x, g, w, b, eps: F.silu(F.group_norm(x, g, w, b, eps)),
    "spatial_attention": lambda q, k, v: torch.bmm(
        v, torch.softmax(torch.bmm(q.transpose(1, 2) * q.shape[1] ** -0.5, k), dim=2).transpose(1, 2)
    ),
    "codebook_argmin": lambda z, e: torch.cdist(z, e).argmin(dim=1),
    "padded_conv2d": lambda x, w, b, stride, padding: F.conv2d(F.pad(x, padding), w, b, stride=stride),
}
# Arguments of torch.ops.vqvae_fast.<op> (its schema).
_OP_ARGS = {
    "group_norm_silu": lambda t: (t["x"], 8, t["weight"], t["bias"], 1e-6, True),
    "spatial_attention": lambda t: (t["q"], t["k"], t["v"], t["q"].shape[1] ** -0.5),
    "codebook_argmin": lambda t: (t["z"], t["codebook"], "ieee", False),
    "padded_conv2d": lambda t: (t["x"], t["weight"], t["bias"], [2, 2], [0, 1, 0, 1]),
}


def summarize_overhead(rows: list[dict]) -> str:
    """Per target op and mode: microseconds over ``pytorch-best`` of the public call and the op."""
    times = {}
    for row in rows:
        if row["op"] == "overhead" and row["status"] == "ok":
            times[(row["shape"], row["mode"], row["provider"])] = row["time_p50_us"]
    cases = list(dict.fromkeys((shape, mode) for shape, mode, _ in times))
    if not cases:
        return ""
    lines = ["overhead: microseconds per call over the plain-PyTorch equivalent (pytorch-best row); "
             f"goal {GOAL_US['forward']:g} us without autograd, {GOAL_US['forward+backward']:g} us with it",
             f"{'case':<34} {'mode':<17} {'pytorch-best':>12} {'vqvae_fast':>11} {'torch.ops':>10}  goal"]
    for shape, mode in cases:
        plain = times.get((shape, mode, "pytorch-best"))

        def over(provider):
            value = times.get((shape, mode, provider))
            return "-" if value is None or plain is None else f"{value - plain:+.1f}"

        public = times.get((shape, mode, "vqvae_fast"))
        met = "-" if public is None or plain is None else ("met" if public - plain <= GOAL_US[mode] else "MISSED")
        lines.append(f"{shape:<34} {mode:<17} {plain if plain is None else round(plain, 1)!s:>12} "
                     f"{over('vqvae_fast'):>11} {over('torch.ops'):>10}  {met}")
    return "\n".join(lines)
