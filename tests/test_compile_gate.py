"""The configuration tables and the ahead-of-time compile gate (docs/architecture.md).

The gate tests compile every entry of each op's table for its architectures with no GPU and hold
it to its promises (``compile_gate.check_results``); they print the count and the time. The other
tests check the table machinery itself on CPU: the occupancy formula, the pick that refuses a
configuration outside the table, the gate's specialisation and its rules.
"""

from __future__ import annotations

import importlib
import sys

import pytest

from vqvae_fast.kernels._table import ARCHS, Config, OutsideTableError, Table, ctas_per_sm

import compile_gate

OPS = ("group_norm_silu", "spatial_attention", "codebook_argmin")


@pytest.fixture(scope="module")
def gate_available():
    pytest.importorskip("triton")
    try:
        compile_gate._cuobjdump()
    except FileNotFoundError as err:
        pytest.skip(str(err))


@pytest.mark.parametrize("op", OPS)
def test_every_table_entry_compiles_within_its_promises(op, gate_available, capsys):
    module = f"vqvae_fast.kernels.{op}_table"
    results, seconds = compile_gate.run_gate(module)
    with capsys.disabled():
        print("\n" + compile_gate.summary(module, results, seconds))
    problems = compile_gate.check_results(results)
    assert not problems, "\n".join(problems)
    table = importlib.import_module(module).TABLE
    compiled = sorted((r["name"], r["arch"]) for r in results)
    assert compiled == sorted((e.name, arch) for e in table for arch in e.archs)  # all of it, once
    assert {r["arch"] for r in results} == set(ARCHS)
    if op == "codebook_argmin":  # the fp32 default's three TF32 products run on tensor cores
        three = [r for r in results if "DOT=tf32x3" in r["name"]]
        assert three and all(r["tensor_core_ops"] for r in three)


# ----------------------------------------------------------------------------------------------
# The table machinery (CPU, no compilation)


def _entry(kernel="k", warps=4, **claims):
    return Config.make(kernel, {"x_ptr": "fp16"}, {"BLOCK": 64}, warps, 1, claims or {"sm_90a": 1})


def test_occupancy_formula():
    h100, a100 = ARCHS["sm_90a"], ARCHS["sm_80"]
    # registers bind: 255 -> 256 per thread, 256 threads: one CTA
    assert ctas_per_sm(h100, 255, 256, 0) == 1
    # 32 registers, 128 threads: threads bind at 2048 / 128 = 16
    assert ctas_per_sm(h100, 32, 128, 0) == 16
    # 33 registers round up to 40: 65536 // (40 * 128) = 12
    assert ctas_per_sm(h100, 33, 128, 0) == 12
    # shared memory binds: 100 KB + 1 KB reserved per CTA; 228 KB per SM on sm_90, 164 KB on sm_80
    assert ctas_per_sm(h100, 32, 128, 100 * 1024) == 2
    assert ctas_per_sm(a100, 32, 128, 100 * 1024) == 1
    # the CTA limit: tiny CTAs stop at 32
    assert ctas_per_sm(h100, 16, 32, 0) == 32


def test_pick_returns_the_entry_and_refuses_anything_else():
    table = Table("op", ("m",), (_entry(sm_90a=2), _entry(warps=8, sm_80=1)))
    entry = table.pick("sm_90a", "k", {"x_ptr": "fp16"}, {"BLOCK": 64}, 4, 1)
    assert entry.launch_options == {"BLOCK": 64, "num_warps": 4, "num_stages": 1}
    with pytest.raises(OutsideTableError, match="no entry"):
        table.pick("sm_90a", "k", {"x_ptr": "fp16"}, {"BLOCK": 128}, 4, 1)
    with pytest.raises(OutsideTableError, match="only for sm_80"):
        table.pick("sm_90a", "k", {"x_ptr": "fp16"}, {"BLOCK": 64}, 8, 1)
    with pytest.raises(OutsideTableError):  # the unit strides are part of the configuration
        table.pick("sm_90a", "k", {"x_ptr": "fp16"}, {"BLOCK": 64}, 4, 1, ones=("stride_x",))


def test_one_configuration_on_two_architectures_is_one_entry():
    table = Table("op", ("m",), (_entry(sm_90a=2), _entry(sm_80=3)))
    assert len(table) == 1 and dict(table.entries[0].occupancy) == {"sm_80": 3, "sm_90a": 2}
    with pytest.raises(ValueError, match="twice"):
        Table("op", ("m",), (_entry(sm_90a=2), _entry(sm_90a=1)))


@pytest.mark.parametrize("op", OPS)
def test_tables_are_well_formed(op):
    """Every entry names a kernel of its modules with arguments it has, on known architectures,
    and states its occupancy there."""
    table = importlib.import_module(f"vqvae_fast.kernels.{op}_table").TABLE
    assert len(table) > 0
    for entry in table:
        assert entry.archs and set(entry.archs) <= set(ARCHS), entry.name
        assert all(claim >= 1 for _, claim in entry.occupancy), entry.name
        assert entry.num_warps in (1, 2, 4, 8, 16, 32) and entry.num_stages >= 1, entry.name
    if "triton" in sys.modules or importlib.util.find_spec("triton") is not None:
        for entry in table:
            fn = table.jit_function(entry.kernel)
            args = set(fn.arg_names)
            named = set(dict(entry.pointers)) | set(dict(entry.constexprs)) | set(entry.ones) | set(entry.floats)
            assert named <= args, (entry.name, named - args)
            pointers = {a for a in fn.arg_names if a not in dict(entry.constexprs)} - set(entry.ones)
            assert set(dict(entry.pointers)) <= pointers


def test_gate_signature_specialises_like_the_runtime():
    class Fn:
        arg_names = ["x_ptr", "N", "stride_n", "stride_c", "eps", "BLOCK"]

    cfg = Config.make("k", {"x_ptr": "fp16"}, {"BLOCK": 64}, 4, 1, {"sm_90a": 1}, ones=("stride_c",),
                      unaligned=("N",), floats=("eps",))
    sig, constexprs, attrs = compile_gate.signature(Fn, cfg)
    assert sig == {"x_ptr": "*fp16", "N": "i32", "stride_n": "i32", "stride_c": "constexpr", "eps": "fp32",
                   "BLOCK": "constexpr"}
    assert constexprs == {"BLOCK": 64, "stride_c": 1}
    assert set(attrs) == {(0,), (2,)}  # the pointer and the aligned stride: 16-divisible


def test_gate_rules_name_every_broken_promise():
    ok = dict(name="k", arch="sm_90a", registers=64, local=0, stack=0, shared=1024, shared_limit=227 * 1024,
              threads=256, ctas_per_sm=4, claimed_ctas_per_sm=4, tensor_core_ops=8, wide_loads=2,
              wants_tensor_cores=True, wants_wide_loads=True)
    assert compile_gate.check_results([ok]) == []
    broken = [
        dict(ok, stack=8), dict(ok, ctas_per_sm=3), dict(ok, shared=228 * 1024), dict(ok, tensor_core_ops=0),
        dict(ok, wide_loads=0), dict(ok, registers=256), dict(name="k", arch="sm_80", error="boom"),
    ]
    problems = compile_gate.check_results(broken)
    assert len(problems) == len(broken)
    for word, line in zip(("spills", "CTAs per SM", "shared memory", "tensor-core", "128-bit", "registers",
                           "does not compile"), problems):
        assert word in line
