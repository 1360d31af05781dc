"""The launchers stay inside their configuration tables (docs/architecture.md).

Each launcher plans a sweep of shapes, dtypes, layouts and flags on ``meta`` tensors (nothing is
allocated or run; ``meta`` stands in for an H100, and the capability is patched to reach the sm_80
tiles too). Every planned launch must be an entry of its op's table for that architecture, and
its actual arguments must be what the entry was compiled for: the pointer element types, and 1
in every stride the entry specialises as 1. A launch outside the table would raise
``OutsideTableError`` in the planner; these tests would name it. The other way round, the sweep
reaches every entry of every table on every architecture it lists: the table holds nothing the
launchers never pick.
"""

from __future__ import annotations

import contextlib
import itertools

import pytest
import torch

pytest.importorskip("triton")

from vqvae_fast.kernels import codebook_argmin as argmin  # noqa: E402
from vqvae_fast.kernels import group_norm_silu as gn  # noqa: E402
from vqvae_fast.kernels import spatial_attention as attention  # noqa: E402
from vqvae_fast.kernels import spatial_attention_backward as attention_backward  # noqa: E402
from vqvae_fast.kernels._table import arch_for  # noqa: E402

TYPES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16", torch.int64: "i64"}
CAPABILITIES = (90, 80)


def meta(shape, dtype=torch.float16, memory_format=torch.contiguous_format):
    return torch.empty(shape, dtype=dtype, device="meta", memory_format=memory_format)


def assert_in_table(table, launches, capability, seen):
    """Every launch is its table's entry for this architecture, with the arguments it promises;
    ``seen`` collects ``(arch, entry name)``."""
    arch = arch_for(capability)
    assert launches
    for launch in launches:
        seen.add((arch, launch.config.name))
        entry = launch.config
        assert table.contains(arch, entry.key), entry.name
        args = dict(zip(launch.kernel.arg_names, launch.args))
        for name, triton_type in entry.pointers:
            assert TYPES[args[name].dtype] == triton_type, (entry.name, name)
        for name in entry.ones:
            assert args[name] == 1, (entry.name, name, args[name])
        assert len(launch.args) + len(entry.constexprs) == len(launch.kernel.arg_names), entry.name


def assert_every_entry_reached(table, seen):
    unreached = sorted({(arch, e.name) for e in table for arch in e.archs} - seen)
    assert not unreached, f"{len(unreached)} entries no launch reaches:\n" + "\n".join(map(str, unreached))


@contextlib.contextmanager
def recorded(module, capability):
    """Launches of ``module``'s launcher recorded instead of run, planned for ``capability``."""
    log = []
    patch = pytest.MonkeyPatch()
    patch.setattr(module, "run", log.extend)
    if hasattr(module, "capability"):
        patch.setattr(module, "capability", lambda device: capability)
    if hasattr(module, "device_facts"):
        patch.setattr(module, "device_facts", lambda device: (capability, 132))
    try:
        yield log
    finally:
        patch.undo()


# ----------------------------------------------------------------------------------------------
# group_norm_silu

GN_SHAPES = [  # (N, C, spatial), every shape with G = 32 (or C) and G = 1
    (1, 32, (1, 1)), (2, 64, (7, 7)), (1, 128, (16, 16)), (8, 512, (16, 16)), (1, 512, (32, 32)),
    (1, 128, (256, 256)), (1, 256, (64, 64)), (2, 96, (40, 24)), (3, 1024, (8,)), (4, 32, ()),
    (1, 64, (3, 4, 5)), (1, 512, (64, 64)), (16, 32, (2, 2)), (1, 8, (129, 3)), (2, 128, (64, 64)),
]
GN_DTYPES = [(torch.float32, torch.float32), (torch.float16, torch.float16), (torch.float16, torch.float32),
             (torch.bfloat16, torch.bfloat16), (torch.bfloat16, torch.float32)]


def _group_norm_plans(x, groups, w, b, silu, capability, seen, **choices):
    """Plan the forward and the backward with ``choices``; record and check their launches.
    False where the choices do not apply (a fused tile narrower than a group)."""
    dtype, layout = x.dtype, x.stride(1) == 1
    forward_tiles = {"fused_tile": gn.T.FUSED_TILES[layout], "split_tile": gn.T.SPLIT_TILES[layout]}
    backward_tiles = {"fused_tile": gn.T.FUSED_BACKWARD_TILES[layout], "split_tile": gn.T.SPLIT_BACKWARD_TILES[layout]}

    def direction(tiles):  # a tile of the other direction only: this one chooses its own
        return {k: v for k, v in choices.items() if k not in tiles or v in tiles[k]}

    with recorded(gn, capability):
        try:
            (_, mean, rstd), forward = gn.plan_forward(x, groups, w, b, 1e-6, silu, **direction(forward_tiles))
        except ValueError:
            return False
        assert_in_table(gn.T.TABLE, forward, capability, seen)
        # dy NCHW (read in place by a channels-last split backward, or copied) and in x's layout
        for dy in {meta(x.shape, dtype), torch.empty_like(x)}:
            _, backward = gn.plan_backward(dy, x, mean, rstd, w, b, groups, silu, **direction(backward_tiles))
            assert_in_table(gn.T.TABLE, backward, capability, seen)
    return True


def test_group_norm_silu_plans_stay_in_the_table():
    seen = set()
    for capability, (n, c, spatial), (dtype, param_dtype), channels_last in itertools.product(
        CAPABILITIES, GN_SHAPES, GN_DTYPES, (0, 1)
    ):
        fmt = {2: torch.channels_last, 3: torch.channels_last_3d}.get(len(spatial), torch.contiguous_format)
        x = meta((n, c, *spatial), dtype, fmt if channels_last else torch.contiguous_format)
        for groups, affine in itertools.product({1, min(32, c)}, ("both", "weight", None)):
            w = meta((c,), param_dtype) if affine else None
            b = meta((c,), param_dtype) if affine == "both" else None
            for path in (None, "split", "fused"):  # SiLU is a runtime flag: both values
                _group_norm_plans(x, groups, w, b, affine != "weight", capability, seen, path=path)
    # every tile of the table, forced, on a shape all of them hold
    for capability, (dtype, param_dtype), fmt in itertools.product(
        CAPABILITIES, GN_DTYPES, (torch.contiguous_format, torch.channels_last)
    ):
        x = meta((2, 64, 20, 20), dtype, fmt)
        w = meta((64,), param_dtype)
        layout = fmt == torch.channels_last
        for tile in gn.T.FUSED_TILES[layout]:
            assert _group_norm_plans(x, 32, w, w, True, capability, seen, path="fused", fused_tile=tile)
        for tile in gn.T.SPLIT_TILES[layout] + gn.T.SPLIT_BACKWARD_TILES[layout]:
            assert _group_norm_plans(x, 32, w, w, True, capability, seen, path="split", split_tile=tile)
    assert_every_entry_reached(gn.T.TABLE, seen)


def test_group_norm_silu_overrides_must_name_table_tiles():
    x = meta((1, 64, 16, 16))
    with pytest.raises(ValueError, match="split_tile must be one of"):
        gn.plan_forward(x, 32, None, None, 1e-6, True, path="split", split_tile=(8, 8))
    with pytest.raises(ValueError, match="no fused tile"):  # 128 channels per group: wider than every tile
        gn.plan_forward(meta((1, 128, 16, 16)), 1, None, None, 1e-6, True, path="fused")


def test_group_norm_silu_plans_are_cached():
    gn.forward_plan.cache_clear()
    x = meta((1, 128, 64, 64))
    for _ in range(3):
        gn.plan_forward(x, 32, None, None, 1e-6, True)
    info = gn.forward_plan.cache_info()
    assert info.misses == 1 and info.hits == 2


# ----------------------------------------------------------------------------------------------
# spatial_attention


def attention_operands(batch, channels, n, dtype, layout):
    if layout == "n":
        return [meta((batch, channels, n), dtype) for _ in range(3)]
    if layout == "c":
        return [meta((batch, n, channels), dtype).transpose(1, 2) for _ in range(3)]
    fused = meta((batch, n, 3 * channels), dtype).transpose(1, 2)  # slices of one token-major projection
    return list(fused.split(channels, dim=1))


def test_spatial_attention_plans_stay_in_the_table():
    seen = set()
    for capability, batch, channels, n, dtype, layout in itertools.product(
        CAPABILITIES, (1, 2, 16), (8, 48, 64, 128, 200, 256, 320, 512), (1, 30, 64, 256, 1024, 4096),
        (torch.float16, torch.bfloat16),
        ("n", "c", "projection"),
    ):
        head = attention.head_size(channels)
        q, k, v = attention_operands(batch, channels, n, dtype, layout)
        out = meta((batch, channels, n), dtype)
        lse = meta((batch, n), torch.float32)
        configs = attention.forward_configs(head, capability)
        with recorded(attention, capability) as log:
            attention.forward(q, k, v, out, lse, channels**-0.5)
            if isinstance(configs, tuple):  # flash tiles
                attention.forward(q, k, v, out, lse, channels**-0.5, splits=3)
                # the last tile, which the launcher takes when the device refuses the others' shared memory
                with pytest.MonkeyPatch.context() as patch:
                    patch.setattr(attention, "_FIRST_WORKING", {(head, capability): len(configs) - 1})
                    attention.forward(q, k, v, out, lse, channels**-0.5)
        assert_in_table(attention.T.TABLE, log, capability, seen)
        if attention.backward_configs(head, capability) is not None:
            grads = [meta((batch, channels, n), dtype) for _ in range(3)]
            with recorded(attention_backward, capability) as log:
                attention_backward.backward(out, q, k, v, out, lse, *grads, channels**-0.5)
            assert_in_table(attention.T.TABLE, log, capability, seen)
    assert_every_entry_reached(attention.T.TABLE, seen)


# ----------------------------------------------------------------------------------------------
# codebook_argmin


def latents(shape, dtype, layout):
    if layout == "rows":
        return meta(shape[:2], dtype)
    if layout == "channels_last":
        return meta(shape, dtype, torch.channels_last)
    if layout == "strided":  # no unit stride: the launcher copies it into rows
        return meta((shape[0], 2 * shape[1], shape[2], shape[3]), dtype)[:, ::2]
    return meta(shape, dtype)


def test_codebook_argmin_plans_stay_in_the_table():
    seen = set()
    dtypes = (torch.float32, torch.float16, torch.bfloat16)
    for capability, shape, K, z_dtype, e_dtype, layout, precision, distance in itertools.product(
        CAPABILITIES,
        ((1, 256, 16, 16), (4, 4, 20, 20), (2, 3, 1, 5), (8, 32, 32, 32), (1, 8, 1, 1), (1, 8, 16, 16),
         (2, 48, 16, 16), (4, 24, 20, 20), (1, 1, 16, 16), (1, 100, 16, 16), (2, 272, 16, 16)),
        (17, 1024), dtypes, dtypes, ("nchw", "channels_last", "rows", "strided"), ("ieee", "fast"),
        (False, True),
    ):
        z = latents(shape, z_dtype, layout)
        codebook = meta((K, z.shape[1]), e_dtype)
        with recorded(argmin, capability) as log:
            argmin.codebook_argmin(z, codebook, precision, distance)
        assert_in_table(argmin.T.TABLE, log, capability, seen)
    assert_every_entry_reached(argmin.T.TABLE, seen)
