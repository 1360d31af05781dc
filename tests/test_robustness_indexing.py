"""Index arithmetic at 2^31+ elements, checked without allocating them.

Three checks, each proving something different:

* **The compiled kernels' integer arithmetic never wraps** (``test_kernel_index_arithmetic``).
  For each problem below (2^31+ elements, or sizes at the launchers' limits) the launchers plan
  their launches on ``meta`` tensors (nothing is allocated, nothing runs); each launch is compiled
  to TTIR the way the JIT would specialise it (integer arguments i32 or i64 by value, 16-divisible
  ones marked, ones equal to 1 folded, pointers 16-byte aligned); an interval analysis then walks
  the TTIR with the launch's actual scalar arguments and grid, giving every integer the range of
  values it takes over all programs and loop iterations. A finding is an ``addi``/``subi``/
  ``muli`` whose exact result range leaves its type (i32 or i64), a ``trunci`` that drops bits,
  or a loop whose induction variable would step past its type. The test also asserts that the
  problem reaches the regime it is about (some pointer gets offsets beyond 2^31) and that every
  address the kernels form has a known range (the analysis did not lose track). This covers the
  GPU code (not the interpreter), for the launches listed; it proves nothing about bounds (masks
  do that) nor about other sizes. Intervals over-approximate, so a finding may be spurious
  (correlated values), but arithmetic on known ranges is never passed unjudged; values the
  analysis cannot bound (loaded data, reductions, bit patterns) are left unbounded and not judged.
  A canary kernel that forms ``pid * BLOCK`` in 32 bits shows the analysis does find a wrap.
* **The launchers refuse what their kernels cannot index** (``refused`` problems): a ValueError
  before any launch instead of silently wrapped addresses.
* **The kernels read the right elements beyond 2^31** (``test_*_beyond_2_31_``, run in a
  subprocess: a wrapped address crashes it): tensors whose strides address elements past 2^31
  of an 8 GB (or 4 GB) buffer that is reserved but never touched -- the OS maps only the pages
  written -- run through the Triton kernels in the
  interpreter (whose numpy int32 arithmetic wraps as the GPU's does) and through the C++ border
  kernels of ``padded_conv2d`` (shared with the CUDA ones: ``csrc/border_indexing.h``), compared
  with the reference on the same elements. The other CPU paths are ATen/PyTorch (64-bit indexing).

Run by hand: ``python tests/test_robustness_indexing.py`` prints the analysis as JSON.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
import torch

import vqvae_fast
from vqvae_fast.reference import ops as R

INT32_LIMIT = 2**31

# ----------------------------------------------------------------------------------------------
# Problems: launches planned on meta tensors (run in the analysis subprocess only)


def _meta(shape, dtype=torch.float16, memory_format=torch.contiguous_format):
    return torch.empty(shape, dtype=dtype, device="meta", memory_format=memory_format)


def _meta_view(shape, stride, dtype=torch.float16):
    return torch.empty((1,), dtype=dtype, device="meta").as_strided(shape, stride)


class _Recorder:
    """Stands in for a kernel in its module: records ``kernel[grid](*args, **kwargs)``."""

    def __init__(self, kernel, log):
        self.kernel, self.log = kernel, log

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.log.append((self.kernel, tuple(grid), args, kwargs))


def _capture(module, names, call):
    """The launches ``call()`` makes of ``module``'s kernels ``names``, recorded instead of run."""
    return _capture_all([(module, names)], call)


def _capture_all(kernels, call):
    """The launches ``call()`` makes of the kernels ``names`` of each ``(module, names)`` in
    ``kernels``, recorded in order instead of run."""
    log, saved = [], [(module, name, getattr(module, name)) for module, names in kernels for name in names]
    for module, name, kernel in saved:
        setattr(module, name, _Recorder(kernel, log))
    try:
        call()
    finally:
        for module, name, kernel in saved:
            setattr(module, name, kernel)
    return log


def _group_norm(shape, groups, memory_format=torch.contiguous_format, dy_format=None, **choices):
    def launches():
        from vqvae_fast.kernels import group_norm_silu as K

        x = _meta(shape, memory_format=memory_format)
        w = _meta(shape[1:2])
        dy = torch.empty_like(x) if dy_format is None else _meta(shape, memory_format=dy_format)
        (_, mean, rstd), plan = K.plan_forward(x, groups, w, w, 1e-6, True, num_sms=132, **choices)
        plan += K.plan_backward(dy, x, mean, rstd, w, w, groups, True, num_sms=132, **choices)[1]
        return [(launch.kernel, launch.grid, launch.args, dict(launch.config.launch_options)) for launch in plan]

    return launches


def _codebook_argmin(z_shape, codebook_shape, precision, dtype=torch.float32):
    def launches():
        from vqvae_fast.kernels import codebook_argmin as K

        z, codebook = _meta(z_shape, dtype), _meta(codebook_shape, dtype)
        run = lambda: K.codebook_argmin(z, codebook, precision, True)  # noqa: E731
        log = []
        log += _capture(K.fin, ["_code_norms_kernel", "_finalize_kernel", "_nonfinite_kernel"],
                        lambda: log.extend(_capture(K.jit, ["_resident_kernel", "_chunked_kernel"], run)))
        return log

    return launches


def _attention(make_qkv, capability=90):
    def launches():
        import importlib

        F = importlib.import_module("vqvae_fast.kernels.spatial_attention")
        B = importlib.import_module("vqvae_fast.kernels.spatial_attention_backward")
        R = importlib.import_module("vqvae_fast.kernels.spatial_attention_rows_jit")
        q, k, v = make_qkv()
        batch, channels, n = q.shape
        out = q.new_empty((batch, channels, n))
        lse = torch.empty((batch, n), device="meta", dtype=torch.float32)
        grads = [q.new_empty((batch, channels, n)) for _ in range(3)]
        facts = F.device_facts
        F.device_facts = B.device_facts = lambda device: (capability, 132)
        kernels = [(F.jit, ["_forward_kernel", "_combine_kernel"]),
                   (B.jit, ["_delta_kernel", "_dkdv_kernel", "_dq_kernel"]),
                   (R, ["_scores_kernel", "_attend_kernel", "_score_grads_kernel", "_bmm_kernel"])]

        def both():
            F.forward(q, k, v, out, lse, channels**-0.5)
            B.backward(out, q, k, v, out, lse, *grads, channels**-0.5)

        try:
            return _first_and_last(_capture_all(kernels, both))
        finally:
            F.device_facts = B.device_facts = facts

    return launches


def _first_and_last(log):
    """The first and last launch of each kernel and launch options: the blocks of query rows of
    the large heads repeat one launch per block (thousands at 2^18 positions), the first with
    the most rows, the last with the largest offsets."""
    groups = {}
    for launch in log:
        kernel, _, _, kwargs = launch
        groups.setdefault((kernel, tuple(sorted(kwargs.items()))), []).append(launch)
    return [launch for group in groups.values() for launch in (group[:1] + group[1:][-1:])]


def _qkv(make):
    """``make`` called three times: q, k and v alike."""
    return lambda: (make(), make(), make())


GN_SPLIT = {"_gn_fwd_partial_stats_kernel", "_gn_fwd_combine_kernel", "_gn_fwd_apply_kernel",
            "_gn_bwd_partial_kernel", "_gn_bwd_group_kernel", "_gn_bwd_dx_kernel", "_gn_bwd_affine_kernel"}
GN_FUSED = {"_gn_fwd_fused_kernel", "_gn_bwd_fused_kernel", "_gn_bwd_affine_kernel"}
ARGMIN = {"_code_norms_kernel", "_chunked_kernel", "_finalize_kernel"}  # fp32 latents
ARGMIN_16_BIT = {"_code_norms_kernel", "_resident_kernel", "_finalize_kernel"}  # fp16 / bf16, D <= 256
ATTENTION = {"_forward_kernel", "_delta_kernel", "_dkdv_kernel", "_dq_kernel"}
ATTENTION_ROWS = {"_scores_kernel", "_attend_kernel", "_delta_kernel", "_score_grads_kernel", "_bmm_kernel"}
CL = torch.channels_last

#: name -> (launch planner, kernels it must reach, or None where the launcher must refuse)
PROBLEMS = {
    "group_norm split 2x64x8192x8192": (_group_norm((2, 64, 8192, 8192), 32), GN_SPLIT),
    "group_norm split 2x64x8192x8192 channels_last": (_group_norm((2, 64, 8192, 8192), 32, CL), GN_SPLIT),
    "group_norm split 2x64x8192x8192 channels_last, NCHW dy": (
        _group_norm((2, 64, 8192, 8192), 32, CL, torch.contiguous_format), GN_SPLIT),
    "group_norm fused 2^20x64x8x8": (_group_norm((2**20, 64, 8, 8), 32, path="fused"), GN_FUSED),
    "group_norm fused 2^20x64x8x8 channels_last": (_group_norm((2**20, 64, 8, 8), 32, CL, path="fused"), GN_FUSED),
    "group_norm S = 2^30 - 1": (_group_norm((2, 1, 2**30 - 1), 1), GN_SPLIT),
    "group_norm C = 2^30 - 1": (_group_norm((2, 2**30 - 1, 1), 1), GN_SPLIT),
    "group_norm N = 2^30 - 1": (_group_norm((2**30 - 1, 2), 1, path="fused"), GN_FUSED),
    "group_norm S = 2^30 (refused)": (_group_norm((1, 1, 2**30), 1), None),
    "group_norm N * G = 2^31 (refused)": (_group_norm((2**26, 32), 32), None),
    "codebook_argmin nchw fp16 16x256x1024x1024, codebook 2^24x256":
        (_codebook_argmin((16, 256, 1024, 1024), (2**24, 256), "ieee", torch.float16), ARGMIN_16_BIT),
    "codebook_argmin 2^31 + 1000 rows, fast": (_codebook_argmin((2**31 + 1000, 2), (1000, 2), "fast"), ARGMIN),
    "codebook_argmin 2x4x2^15x(2^15+3) across items, fast":
        (_codebook_argmin((2, 4, 2**15, 2**15 + 3), (512, 4), "fast"), ARGMIN),
    "codebook_argmin bf16 rows 2^24x256":
        (_codebook_argmin((2**24, 256), (4096, 256), "ieee", torch.bfloat16), ARGMIN_16_BIT),
    "spatial_attention 32x512x2^18 (head 512)":
        (_attention(_qkv(lambda: _meta((32, 512, 2**18)))), ATTENTION_ROWS),
    "spatial_attention bf16 64x256x2^18":
        (_attention(_qkv(lambda: _meta((64, 256, 2**18), torch.bfloat16))), ATTENTION_ROWS),
    "spatial_attention sm_80 64x128x2^18": (_attention(_qkv(lambda: _meta((64, 128, 2**18))), 80), ATTENTION),
    "spatial_attention channels innermost 1024x80x(2^15+5)":
        (_attention(_qkv(lambda: _meta((1024, 2**15 + 5, 80)).transpose(1, 2))), ATTENTION),
    "spatial_attention batch stride 2^31 + 16, split keys":
        (_attention(_qkv(lambda: _meta_view((2, 64, 1024), (2**31 + 16, 1024, 1)))),
         ATTENTION | {"_combine_kernel"}),
    "spatial_attention one image just below 2^31, 1x256x(2^23 - 512)":
        (_attention(_qkv(lambda: _meta((1, 256, 2**23 - 512)))), ATTENTION_ROWS),
    "spatial_attention one image of 1x512x(2^22 + 64) (refused)":
        (_attention(_qkv(lambda: _meta((1, 512, 2**22 + 64)))), None),
}

# ----------------------------------------------------------------------------------------------
# TTIR of a launch, as the JIT would compile it

_LAUNCH_OPTIONS = ("num_warps", "num_stages", "num_ctas", "maxnreg")
_TRITON_TYPES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16", torch.float64: "fp64",
                 torch.int64: "i64", torch.int32: "i32"}


def _source(kernel, args, kwargs):
    """``(ASTSource, scalar argument values)`` with the runtime's specialisation of the arguments."""
    from triton.compiler import ASTSource

    values = dict(zip(kernel.arg_names, args))
    values.update({k: v for k, v in kwargs.items() if k not in _LAUNCH_OPTIONS})
    signature, constexprs, aligned, scalars = {}, {}, [], {}
    for param in kernel.params:
        name, value = param.name, values[param.name]
        if param.is_constexpr or value is None:
            signature[name], constexprs[name] = "constexpr", value
        elif isinstance(value, torch.Tensor):
            signature[name] = "*" + _TRITON_TYPES[value.dtype]
            aligned.append(name)
            scalars[name] = "pointer"
        elif isinstance(value, bool):
            signature[name], scalars[name] = "u1", int(value)
        elif isinstance(value, int):
            if value == 1 and not param.do_not_specialize:
                signature[name], constexprs[name] = "constexpr", 1
                continue
            signature[name] = "i32" if -INT32_LIMIT <= value < INT32_LIMIT else "i64"
            scalars[name] = value
            if value % 16 == 0 and not param.do_not_specialize:
                aligned.append(name)
        else:
            signature[name], scalars[name] = "fp32", value
    attrs = {(kernel.arg_names.index(a),): [["tt.divisibility", 16]] for a in aligned}
    return ASTSource(fn=kernel, signature=signature, constexprs=constexprs, attrs=attrs), scalars


def _ttir(src, num_warps: int, num_stages: int) -> str:
    """The TTIR stage only (no PTX); the full compile where this Triton's internals differ."""
    import triton
    from triton.backends.compiler import GPUTarget

    target = GPUTarget("cuda", 90, 32)
    options = {"num_warps": num_warps, "num_stages": num_stages}
    try:
        from triton._C.libtriton import ir
        from triton.compiler.compiler import make_backend

        backend = make_backend(target)
        opts = backend.parse_options(dict(options, **src.parse_options()))
        context = ir.context()
        ir.load_dialects(context)
        backend.load_dialects(context)
        module = src.make_ir(target, opts, backend.get_codegen_implementation(opts), backend.get_module_map(), context)
        stages = {}
        backend.add_stages(stages, opts, src.language)
        return str(stages["ttir"](module, {}))
    except (TypeError, AttributeError, ImportError):
        return triton.compile(src, target=target, options=options).asm["ttir"]


# ----------------------------------------------------------------------------------------------
# Interval analysis of TTIR integer arithmetic

_VALUE = re.compile(r"%[\w$.\-]+(?:#\d+)?")
_PASS_THROUGH = ("tt.splat", "tt.broadcast", "tt.expand_dims", "tt.reshape", "tt.trans",
                 "ttg.convert_layout", "arith.extsi")


def _strip_locations(text: str) -> str:
    """TTIR without its ``loc(...)`` annotations (nested parentheses included)."""
    out, i = [], 0
    while (j := text.find("loc(", i)) >= 0:
        out.append(text[i:j])
        depth, k = 0, j + 3
        while k < len(text):
            depth += {"(": 1, ")": -1}.get(text[k], 0)
            if depth == 0:
                break
            k += 1
        i = k + 1
    out.append(text[i:])
    return "".join(out)


def _top_level(text: str, sep: str = ",") -> list[str]:
    """``text`` split at ``sep`` outside brackets."""
    parts, depth, start = [], 0, 0
    for k, ch in enumerate(text):
        depth += 1 if ch in "<({[" else -1 if ch in ">)}]" else 0
        if ch == sep and depth == 0:
            parts.append(text[start:k])
            start = k + 1
    parts.append(text[start:])
    return [p.strip() for p in parts if p.strip()]


def _last_top_level(text: str, token: str) -> int:
    depth, found = 0, -1
    for k, ch in enumerate(text):
        depth += 1 if ch in "<({[" else -1 if ch in ">)}]" else 0
        if depth == 0 and text.startswith(token, k):
            found = k
    return found


def _result_width(rest: str) -> int | None:
    """Bits of the integer result type of an op line (None: not an integer)."""
    rest = rest.rstrip(" {")
    k = _last_top_level(rest, " : ")
    if k < 0:
        return None
    tail = rest[k + 3:]
    for token in (" -> ", " to "):
        j = _last_top_level(tail, token)
        if j >= 0:
            tail = tail[j + len(token):]
    parts = _top_level(tail)
    return _type_width(parts[-1]) if parts else None


def _type_width(type_text: str) -> int | None:
    m = re.search(r"i(\d+)>?$", type_text.strip())
    return int(m.group(1)) if m and "!tt.ptr" not in type_text else None


def _union(a, b):
    if a is None or b is None:
        return None
    if a[0] == "pointer" or b[0] == "pointer":
        if a[0] == b[0] == "pointer" and a[1] == b[1] and a[2] is not None and b[2] is not None:
            return ("pointer", a[1], min(a[2], b[2]), max(a[3], b[3]))
        return ("pointer", a[1] if a[0] == "pointer" else b[1], None, None)
    return (min(a[0], b[0]), max(a[1], b[1]))


def _div(a: int, b: int) -> int:
    """Integer division rounding toward zero, as ``arith.divsi``."""
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b > 0) else -q


class IndexAnalysis:
    """Integer ranges of one kernel's TTIR over a whole launch; see the module docstring.

    Values are ``(lo, hi)`` ranges, ``None`` (unbounded) or ``("pointer", argument, lo, hi)``
    (element offsets from that pointer argument, ``lo = None`` when unknown).
    """

    def __init__(self, ttir: str, scalars: dict, grid: tuple):
        lines = (line.strip() for line in _strip_locations(ttir).splitlines())
        self.lines = [line for line in lines if line and not line.startswith("#")]
        self.scalars = scalars
        self.grid = tuple(grid) + (1,) * (3 - len(grid))
        self.findings: list[str] = []
        self.addresses: dict[str, list] = {}  # pointer argument -> [(offset range or None, line)]

    def run(self) -> "IndexAnalysis":
        start = next(i for i, line in enumerate(self.lines) if line.startswith("tt.func"))
        header = self.lines[start]
        end = header.rindex(") attributes") if ") attributes" in header else header.rindex(")")
        env, names = {}, [n for n in self.scalars]
        for position, piece in enumerate(_top_level(header[header.index("(") + 1:end])):
            ssa = piece.split(":", 1)[0].strip()
            name = ssa[1:] if ssa[1:] in self.scalars else names[position]
            value = self.scalars[name]
            if "!tt.ptr" in piece:
                env[ssa] = ("pointer", name, 0, 0)
            elif isinstance(value, int):
                env[ssa] = (value, value)
        self._block(start + 1, env)
        return self

    # -- regions ---------------------------------------------------------------------------
    def _block(self, i: int, env: dict) -> tuple[int, list]:
        """Evaluate up to the brace closing this region: ``(its line index, scf.yield values)``."""
        yielded: list = []
        while i < len(self.lines):
            line = self.lines[i]
            if line.startswith("}"):
                return i, yielded
            if line.startswith("scf.yield"):
                yielded = [env.get(v) for v in _VALUE.findall(line)]
                i += 1
            else:
                i = self._op(i, env)
        return i, yielded

    def _skip_region(self, i: int) -> int:
        depth = 0
        while i < len(self.lines):
            depth += self.lines[i].count("{") - self.lines[i].count("}")
            i += 1
            if depth <= 0:
                break
        return i

    def _finding(self, what: str, lo: int, hi: int, width: int, line: str):
        limit = 1 << (width - 1)
        if lo < -limit or hi > limit - 1:
            self.findings.append(f"{what} i{width}: range [{lo}, {hi}] in `{line}`")
            return None
        return (lo, hi)

    def _loop(self, i: int, env: dict, rest: str) -> tuple[int, list]:
        m = re.match(r"scf\.for (%\S+) = (%\S+) to (%\S+) step (%\S+)(.*)$", rest)
        iv, lb, ub, step, tail = m.groups()
        lb, ub, step = env.get(lb), env.get(ub), env.get(step)
        carried = []
        if "iter_args(" in tail:
            carried = re.findall(r"(%[\w$.\-]+) = (%[\w$.\-#]+)", tail.split("iter_args(", 1)[1])
        width = _result_width(rest) or 32
        iv_range = None
        if lb is not None and ub is not None and ub[1] > lb[0]:
            last = ub[1] - 1
            if lb[0] == lb[1] and step is not None and step[0] == step[1] > 0:
                last = lb[0] + (ub[1] - 1 - lb[0]) // step[0] * step[0]  # the last value it takes
            iv_range = (lb[0], last)
            if step is not None and last + step[1] > (1 << (width - 1)) - 1:
                self.findings.append(
                    f"loop induction variable steps past i{width}: {last} + {step[1]} in `{rest[:100]}`")
        state = [env.get(init) for _, init in carried]
        if lb is not None and ub is not None and ub[1] <= lb[0]:  # never runs: its body is dead code
            found, used = len(self.findings), {name: len(uses) for name, uses in self.addresses.items()}
            end, _ = self._block(i + 1, dict(env, **{iv: lb}, **{name: s for (name, _), s in zip(carried, state)}))
            del self.findings[found:]
            for name in list(self.addresses):
                del self.addresses[name][used.get(name, 0):]
            return end, state
        for _ in range(8):  # iterate the loop-carried ranges to a fixed point
            inner = dict(env, **{iv: iv_range}, **{name: s for (name, _), s in zip(carried, state)})
            found = len(self.findings)
            end, yielded = self._block(i + 1, inner)
            grown = [_union(s, y) for s, y in zip(state, yielded)]
            if grown == state:
                return end, state
            del self.findings[found:]  # only the fixed point's findings count
            state = grown
        state = [None] * len(state)  # still growing: unbounded
        inner = dict(env, **{iv: iv_range}, **{name: None for name, _ in carried})
        end, _ = self._block(i + 1, inner)
        return end, state

    def _branch(self, i: int, env: dict) -> tuple[int, list]:
        end, values = self._block(i + 1, dict(env))
        if self.lines[end].startswith("} else {"):
            end, other = self._block(end + 1, dict(env))
            values = [_union(a, b) for a, b in zip(values, other)]
        return end, values

    # -- operations ------------------------------------------------------------------------
    def _op(self, i: int, env: dict) -> int:
        line = self.lines[i]
        m = re.match(r"^(%[\w$.\-]+)(?::(\d+))?\s*=\s*(.*)$", line)
        result, count, rest = (m.group(1), int(m.group(2) or 1), m.group(3)) if m else (None, 0, line)
        opname = rest[1:rest.index('"', 1)] if rest.startswith('"') else rest.split(None, 1)[0]
        if opname in ("scf.for", "scf.if"):
            end, values = self._loop(i, env, rest) if opname == "scf.for" else self._branch(i, env)
            for k in range(count):
                env[result if count == 1 else f"{result}#{k}"] = values[k] if k < len(values) else None
            return end + 1
        if rest.endswith("{"):  # a region we do not interpret (reductions, scans): unbounded
            for k in range(count):
                env[result if count == 1 else f"{result}#{k}"] = None
            return self._skip_region(i)
        value = self._evaluate(opname, rest, [env.get(v) for v in _VALUE.findall(rest)], line)
        for k in range(count):
            env[result if count == 1 else f"{result}#{k}"] = value
        return i + 1

    def _evaluate(self, opname: str, rest: str, args: list, line: str):
        width = _result_width(rest)
        a = args[0] if args else None
        b = args[1] if len(args) > 1 else None
        if opname == "arith.constant":
            m = re.search(r"(?:dense<)?(-?\d+|true|false)>?\s*:\s*(?:tensor<[\dx]*)?i\d+", rest)
            if m:
                v = {"true": 1, "false": 0}.get(m.group(1))
                v = int(m.group(1)) if v is None else v
                return (v, v)
            return None
        if opname in ("tt.get_program_id", "tt.get_num_programs"):
            n = self.grid["xyz".index(rest.split()[1])]
            return (0, n - 1) if opname == "tt.get_program_id" else (n, n)
        if opname == "tt.make_range":
            start = int(re.search(r"start = (-?\d+)", rest).group(1))
            return (start, int(re.search(r"end = (-?\d+)", rest).group(1)) - 1)
        if opname in _PASS_THROUGH:
            return a
        if opname == "arith.extui":
            return a if a is not None and a[0] >= 0 else None
        if opname == "tt.addptr":
            return self._address(a, b, line)
        if opname == "arith.andi":  # a non-negative mask bounds the result, whatever the other side
            masks = [v for v in (a, b) if v is not None and v[0] >= 0]
            return (0, min(v[1] for v in masks)) if masks else None
        if a is None or (b is None and len(args) > 1 and opname != "arith.select"):
            return (0, 1) if opname in ("arith.cmpi", "arith.cmpf") else None
        if opname == "arith.trunci":
            return self._finding("truncation drops bits of", a[0], a[1], width, line) if width else None
        if opname in ("arith.addi", "arith.subi", "arith.muli") and width:
            if opname == "arith.addi":
                lo, hi = a[0] + b[0], a[1] + b[1]
            elif opname == "arith.subi":
                lo, hi = a[0] - b[1], a[1] - b[0]
            else:
                corners = [x * y for x in a for y in b]
                lo, hi = min(corners), max(corners)
            return self._finding("arithmetic leaves", lo, hi, width, line)
        if opname in ("arith.divsi", "arith.divui") and b[0] > 0:
            corners = [_div(x, y) for x in a for y in b]
            return (min(corners), max(corners))
        if opname in ("arith.remsi", "arith.remui") and b[0] > 0:
            return (0, min(a[1], b[1] - 1)) if a[0] >= 0 else (-(b[1] - 1), b[1] - 1)
        if opname in ("arith.minsi", "arith.maxsi"):
            pick = min if opname == "arith.minsi" else max
            return (pick(a[0], b[0]), pick(a[1], b[1]))
        if opname == "arith.select":
            return _union(args[1], args[2])
        if opname in ("arith.cmpi", "arith.cmpf"):
            return (0, 1)
        if opname in ("arith.ori", "arith.xori") and a[0] >= 0 and b[0] >= 0:
            return (0, (1 << max(a[1], b[1]).bit_length()) - 1)
        if opname in ("arith.shrsi", "arith.shrui") and a[0] >= 0 and b[0] >= 0:
            return (a[0] >> b[1], a[1] >> b[0])
        return None  # floats, loads, bit casts, shifts left (packing), anything else: unbounded

    def _address(self, pointer, offset, line):
        if pointer is None or pointer[0] != "pointer":
            return None
        if offset is not None and pointer[2] is not None:
            value = ("pointer", pointer[1], pointer[2] + offset[0], pointer[3] + offset[1])
        else:
            value = ("pointer", pointer[1], None, None)
        self.addresses.setdefault(pointer[1], []).append((None if value[2] is None else value[2:], line))
        return value

    def summary(self) -> dict:
        pointers = {}
        for name, uses in self.addresses.items():
            known = [r for r, _ in uses if r is not None]
            pointers[name] = {
                "largest_offset": max((max(abs(lo), abs(hi)) for lo, hi in known), default=0),
                "unknown": [line for r, line in uses if r is None],
            }
        return {"findings": self.findings, "pointers": pointers}


def analyse_launch(kernel, grid, args, kwargs) -> dict:
    src, scalars = _source(kernel, args, kwargs)
    ttir = _ttir(src, kwargs.get("num_warps", 4), kwargs.get("num_stages", 3))
    return dict(kernel=kernel.__name__, grid=list(grid), **IndexAnalysis(ttir, scalars, grid).run().summary())


def _canary_kernels():
    """``pid * BLOCK`` in 32 and in 64 bits: the first wraps past 2^31 elements."""
    import triton
    import triton.language as tl

    @triton.jit
    def narrow_kernel(x_ptr, N, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        tl.store(x_ptr + offs, 0.0, mask=offs < N)

    @triton.jit
    def wide_kernel(x_ptr, N, BLOCK: tl.constexpr):
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        tl.store(x_ptr + offs, 0.0, mask=offs < N)

    return narrow_kernel, wide_kernel


def analyse_all() -> dict:
    """Every problem (and the canaries): ``{name: {"refused": message or None, "launches": [...]}}``."""
    report = {}
    for name, (plan, _) in PROBLEMS.items():
        try:
            launches = plan()
        except ValueError as err:
            report[name] = {"refused": str(err), "launches": []}
            continue
        report[name] = {"refused": None, "launches": [analyse_launch(*launch) for launch in launches]}
    x, n = _meta((2**32,), torch.float32), 2**32
    for kernel in _canary_kernels():
        report[f"canary {kernel.__name__}"] = {
            "refused": None, "launches": [analyse_launch(kernel, (n // 128,), (x, n), {"BLOCK": 128})]}
    return report


# ----------------------------------------------------------------------------------------------
# Tests of the analysis results (computed once, in a subprocess without TRITON_INTERPRET)


@pytest.fixture(scope="module")
def analysis():
    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, os.path.abspath(__file__)], capture_output=True, text=True,
                          env=env, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"index analysis failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_the_analysis_finds_a_32_bit_wrap(analysis):
    narrow = analysis["canary narrow_kernel"]["launches"][0]
    assert any("muli" in f and "i32" in f for f in narrow["findings"]), narrow
    wide = analysis["canary wide_kernel"]["launches"][0]
    assert not wide["findings"] and not wide["pointers"]["x_ptr"]["unknown"]
    assert wide["pointers"]["x_ptr"]["largest_offset"] == 2**32 - 1


@pytest.mark.parametrize("problem", [name for name, (_, kernels) in PROBLEMS.items() if kernels is not None])
def test_kernel_index_arithmetic(analysis, problem):
    result = analysis[problem]
    assert result["refused"] is None, result["refused"]
    launches = result["launches"]
    assert {launch["kernel"] for launch in launches} >= PROBLEMS[problem][1]
    problems = [f"{launch['kernel']}: {finding}" for launch in launches for finding in launch["findings"]]
    problems += [f"{launch['kernel']}: offset of {name} not tracked in `{line}`"
                 for launch in launches for name, p in launch["pointers"].items() for line in p["unknown"]]
    assert not problems, "\n".join(problems)
    largest = max(p["largest_offset"] for launch in launches for p in launch["pointers"].values())
    assert largest >= INT32_LIMIT - 2**20, f"the problem never addresses near 2^31 (largest offset {largest})"


@pytest.mark.parametrize("problem", [name for name, (_, kernels) in PROBLEMS.items() if kernels is None])
def test_launcher_refuses_what_its_kernels_cannot_index(analysis, problem):
    message = analysis[problem]["refused"]
    assert message is not None and ("32-bit" in message or "32 bits" in message), message


# ----------------------------------------------------------------------------------------------
# Real runs beyond 2^31 on a reserved, untouched buffer. A wrapped address would read before the
# buffer and crash the process, so these run in a pytest subprocess of their own.

_IN_SUBPROCESS = os.environ.get("VQVAE_FAST_FAR_ADDRESSES") == "1"
far = pytest.mark.skipif(not _IN_SUBPROCESS, reason="run by test_addresses_beyond_2_31, in a subprocess")


def _far_tests_expected() -> int:
    """How many of the ``beyond_2_31_`` tests can run here: the three Triton ones where Triton's
    interpreter runs, the ``padded_conv2d`` one where the extension is built."""
    from vqvae_fast import _backend, _extension

    triton = _backend.triton_status() is None and _backend.triton_interpreting()
    return 3 * triton + (_extension.status() is None)


def test_addresses_beyond_2_31():
    expected = _far_tests_expected()
    if expected == 0:
        pytest.skip("neither Triton's interpreter nor the extension is available here")
    env = dict(os.environ, VQVAE_FAST_FAR_ADDRESSES="1")
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", os.path.abspath(__file__),
         "-k", "beyond_2_31_"],
        capture_output=True, text=True, env=env, timeout=600, cwd=os.path.dirname(os.path.abspath(__file__)),
    )
    lines = (proc.stdout + proc.stderr).splitlines()
    # a crash (wrapped address) shows as a fatal error naming the test's line, not as a failure
    here = os.path.basename(__file__) + '", line'
    key = [line for line in lines if "Fatal Python error" in line or "FAILED" in line or here in line]
    assert proc.returncode == 0, "\n".join(key + lines[-40:])
    # a pass that ran nothing proves nothing: every test that can run here must have run
    passed = re.search(r"(\d+) passed", proc.stdout)
    assert passed and int(passed.group(1)) == expected, "\n".join(lines[-20:])


@pytest.fixture(scope="module")
def far_buffer():
    """A 1-D fp16 buffer of 2^32 + 2^21 elements (8 GB, else 2^31 + 2^21): reserved, not
    touched, so the OS maps only the pages a test writes or reads."""
    for numel in (2**32 + 2**21, 2**31 + 2**21):
        try:
            return torch.empty(numel, dtype=torch.float16)
        except RuntimeError:
            continue
    pytest.skip("cannot reserve a buffer of 2^31+ elements here")


def _far_view(buffer, shape, stride):
    """A view of ``buffer`` with ``stride``, its few elements filled with random values."""
    view = buffer.as_strided(shape, stride)
    assert sum((size - 1) * s for size, s in zip(shape, stride)) >= INT32_LIMIT  # really beyond 2^31
    view.copy_(torch.randn(shape).half())
    return view


@pytest.fixture
def interpreted_triton():
    from vqvae_fast import _backend

    if _backend.triton_status() is not None or not _backend.triton_interpreting():
        pytest.skip("needs Triton's interpreter (TRITON_INTERPRET=1, no GPU)")
    with vqvae_fast.use_backend("triton"):
        yield


@far
def test_group_norm_reads_beyond_2_31_(far_buffer, interpreted_triton):
    # 32-bit channel stride times channel index: the product passes 2^31 inside one sample
    step = (far_buffer.numel() - 64) // 3
    step -= step % 16
    for shape, stride in [((1, 4, 2, 3), (4 * step, step, 3, 1)),  # channels 3*step apart
                          ((2, 8, 3, 2), (2 * step, 6, 2, 1))]:  # sample 1 at 2*step
        x = _far_view(far_buffer, shape, stride).requires_grad_()
        y = vqvae_fast.group_norm_silu(x, 2)
        dy = torch.randn_like(y)
        (dx,) = torch.autograd.grad(y, x, dy)
        xd = x.detach().double().requires_grad_()
        expected = R.group_norm_silu(xd, 2)
        (expected_dx,) = torch.autograd.grad(expected, xd, dy.double())
        torch.testing.assert_close(y.double(), expected, atol=2e-3, rtol=2e-3)
        torch.testing.assert_close(dx.double(), expected_dx, atol=2e-3, rtol=2e-3)


@far
def test_codebook_argmin_reads_beyond_2_31_(far_buffer, interpreted_triton):
    step = (far_buffer.numel() - 64) // 2
    step -= step % 16
    for shape, stride in [((3, 3), (step, 1)),  # (N, D) rows step apart
                          ((1, 3, 2, 2), (3 * step, step, 2, 1))]:  # NCHW, dims step apart
        z = _far_view(far_buffer, shape, stride)
        for codebook, precision in [(torch.randn(40, 3).half(), "ieee"), (torch.randn(40, 3), "fast")]:
            indices, distances = vqvae_fast.codebook_argmin(z, codebook, precision, return_distance=True)
            expected, expected_distances = R.codebook_argmin(z.double(), codebook.double(), return_distance=True)
            assert torch.equal(indices, expected)
            torch.testing.assert_close(distances.double(), expected_distances, atol=1e-3, rtol=1e-3)


@far
def test_spatial_attention_reads_beyond_2_31_(far_buffer, interpreted_triton):
    step = far_buffer.numel() - 16 * 48
    step -= step % 16
    # image 1 of q starts at `step`: read in place, its 64-bit offset in the kernels' base pointer
    q = _far_view(far_buffer, (2, 16, 48), (step, 48, 1)).requires_grad_()
    k, v = (torch.randn(2, 16, 48).half().requires_grad_() for _ in range(2))
    dy = torch.randn(2, 16, 48).half()
    out = vqvae_fast.spatial_attention(q, k, v)
    grads = torch.autograd.grad(out, (q, k, v), dy)
    leaves = [t.detach().double().requires_grad_() for t in (q, k, v)]
    expected = R.spatial_attention(*leaves)
    expected_grads = torch.autograd.grad(expected, leaves, dy.double())
    for got, want in zip((out, *grads), (expected, *expected_grads)):
        torch.testing.assert_close(got.double(), want, atol=2e-3, rtol=2e-3)


@far
def test_padded_conv2d_reads_beyond_2_31_(far_buffer):
    """All of the output comes from the border strips (the kernel is taller than the padded-top
    input), so the C++ im2col (forward) and the weight gradient's GEMM read x at w = sW * q,
    beyond 2^31 for the last columns."""
    from vqvae_fast import _extension

    if _extension.status() is not None:
        pytest.skip(_extension.status())
    sw = 2**21
    width = far_buffer.numel()
    x = far_buffer.view(1, 1, 1, width)
    columns = torch.arange(0, width, sw)
    far_buffer[columns] = torch.randn(len(columns)).half()  # only the elements the conv reads
    weight = torch.randn(1, 1, 2, 1).half().requires_grad_()
    bias = torch.randn(1).half()
    with vqvae_fast.use_backend("cpu", ops="padded_conv2d"):
        y = vqvae_fast.padded_conv2d(x, weight, bias, stride=(1, sw), padding=(0, 0, 0, 1))
        (grad_w,) = torch.autograd.grad(y, weight, torch.ones_like(y))
    read = x[..., ::sw].float()
    assert (len(columns) - 1) * sw >= INT32_LIMIT
    expected = R.padded_conv2d(read, weight.detach().float(), bias.float(), stride=1, padding=(0, 0, 0, 1))
    torch.testing.assert_close(y.float(), expected, atol=1e-2, rtol=1e-2)
    expected_grad_w = torch.stack([read.sum(), torch.zeros(())])  # the bottom tap reads only padding
    torch.testing.assert_close(grad_w[0, 0, :, 0].float(), expected_grad_w, atol=0.5, rtol=1e-2)


if __name__ == "__main__":
    print(json.dumps(analyse_all()))
