"""The icetk benchmark: CogView2 / CogVideo's image tokenizer (icetk's HVQVAE) end to end.

Stages (``stage`` in the shape's params), each at hierarchy level ``level`` (1: CogVideo's, 8
pixels per code, a 160x160 frame to 20x20 codes):

``encode``    ``single_encode(frames, level)``: encoder, down-samplers, quantizer; the error
              compares the quantised latent ``(B, h, w, 256)``.
``decode``    ``single_decode_code(codes, level)`` of random codes: the image.
``quantize``  the quantizer alone (``VectorQuantizeEMA``, 20000 codes of dim 256) on the
              level's features ``(B, 256, h, w)``: icetk finds codes from ``(N, 20000)``
              distance matrices and builds an ``(N, 20000)`` one-hot it never uses; compare
              ``peak_mem_mb``.

Providers: ``reference`` (``vqvae_fast.reference.icetk.HVQVAE``: icetk's computation without its
unused one-hot matrix, eager), ``icetk`` (icetk's own modules, the code CogVideo runs, where
icetk can be loaded: see ``vqvae_fast.icetk.original``; else ``unavailable``),
``compiled`` (``torch.compile`` of the same stage; opt in with ``--providers``, whole-model
compiles take minutes), ``pytorch-best`` (the reference in channels_last with
``cudnn.benchmark``), ``vqvae_fast`` (``vqvae_fast.icetk.HVQVAE`` loaded with the reference's
weights). Weights are random (seed 0) with the codebook spread like the features (std 0.2), so
that codes are decided by the features and not by rounding; ``rel_err`` of ``encode`` and
``quantize`` is then mostly codes that differ from the fp64 model's.
"""

from __future__ import annotations

import copy
import functools

import torch

from . import formulas
from .definitions import PROVIDERS, Inputs, OpBench, ProviderUnavailable, Runner, compile_fn, randn, to_format, \
    with_cudnn_benchmark
from .device import TORCH_DTYPES
from .end_to_end import model_backends
from .shapes import Case, Shape

CODEBOOK_STD = 0.2  # the std of the projected features of a random-weight model


def build_model(config_name: str):
    from vqvae_fast.reference import icetk

    config = icetk.tiny_config() if config_name == "tiny" else icetk.default_config()
    model = icetk.HVQVAE.from_config(config)
    with torch.no_grad():
        model.quantize.embed.weight.normal_(0.0, CODEBOOK_STD)
    return model, config


def feature_shape(model, batch: int, resolution: int, level: int) -> tuple[int, int, int, int]:
    """Shape of the features level ``level`` quantizes, for frames of ``resolution``²."""
    side = resolution // (model.enc.downsampling_factor * 2**level)
    return batch, model.quantize.hidden_dim, side, side


def stage_input(model, stage: str, batch: int, resolution: int, level: int, dtype, device, gen, fmt):
    if stage == "encode":
        return to_format(randn((batch, 3, resolution, resolution), dtype, device, gen), fmt)
    b, _, h, w = feature_shape(model, batch, resolution, level)
    if stage == "decode":
        return torch.randint(0, model.quantize.n_embed, (b, h, w), device=device, generator=gen)
    return to_format(randn(feature_shape(model, batch, resolution, level), dtype, device, gen, 0.35), fmt)


def run_stage(model, stage: str, x, level: int):
    if stage == "encode":
        return model.single_encode(x, level)
    if stage == "decode":
        return model.single_decode_code(x, level)
    return model.quantize(x)


@functools.lru_cache(maxsize=None)
def count_flops(config_name: str, stage: str, batch: int, resolution: int, level: int) -> float:
    """FLOPs of one stage counted on a meta-device model (the quantizer's distance GEMM included)."""
    from torch.utils.flop_counter import FlopCounterMode

    meta = torch.device("meta")
    with meta:
        model, _ = build_model(config_name)
    x = stage_input(model, stage, batch, resolution, level, torch.float32, meta, None, "nchw")
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        run_stage(model, stage, x, level)
    return float(counter.get_total_flops())


class IcetkBench(OpBench):
    name = "icetk"
    providers = PROVIDERS + ("icetk",)
    has_backward = False
    tf32_flag = "cudnn"  # convolutions dominate
    opt_in_providers = ("compiled",)

    def describe(self, shape: Shape) -> str:
        batch, res = shape.dims
        p = shape.param
        return f"icetk{'-tiny' if p['config'] == 'tiny' else ''} {batch}x3x{res}x{res} l{p['level']} {p['stage']}"

    def work(self, case: Case) -> formulas.Work:
        batch, res = case.shape.dims
        p = case.shape.param
        return formulas.Work(count_flops(p["config"], p["stage"], batch, res, p["level"]), None)

    def make_inputs(self, case, device, requires_grad, gen):
        batch, res = case.shape.dims
        p = case.shape.param
        dtype = TORCH_DTYPES[case.dtype]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)  # the same weights in every run
            model, config = build_model(p["config"])
        model = model.to(device=device, dtype=dtype).eval().requires_grad_(False)
        x = stage_input(model, p["stage"], batch, res, p["level"], dtype, device, gen, case.format)
        return Inputs({"x": x}, (), {"model": model, "config": config, "stage": p["stage"], "level": p["level"]})

    def upcast_inputs(self, inputs, requires_grad):
        model = copy.deepcopy(inputs.extra["model"]).double()
        x = inputs.tensors["x"]
        x = x.detach().to(torch.float64, memory_format=torch.contiguous_format) if x.is_floating_point() else x
        return Inputs({"x": x}, (), {**inputs.extra, "model": model})

    def build(self, provider, inputs, case, device):
        model, x = inputs.extra["model"], inputs.tensors["x"]
        stage, level = inputs.extra["stage"], inputs.extra["level"]
        if provider == "reference":
            return Runner(lambda: run_stage(model, stage, x, level), [], "eager")
        if provider == "icetk":
            from vqvae_fast.icetk import original

            hierarchical = original.icetk_submodule("vqvae_hierarchical")
            if hierarchical is None:
                raise ProviderUnavailable(original.UNAVAILABLE)
            theirs = hierarchical.HVQVAE(**inputs.extra["config"]["params"])
            theirs.load_state_dict(model.state_dict())
            param = next(model.parameters())
            theirs = theirs.to(device=device, dtype=param.dtype).eval().requires_grad_(False)
            return Runner(lambda: run_stage(theirs, stage, x, level), [], "eager")
        if provider == "compiled":
            mode = "max-autotune-no-cudagraphs" if device.type == "cuda" else None
            fn = compile_fn(lambda inp: run_stage(model, stage, inp, level), mode=mode)
            return Runner(lambda: fn(x), [], "inductor")
        if provider == "pytorch-best":
            best = copy.deepcopy(model).to(memory_format=torch.channels_last)
            x_best = x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x

            run = with_cudnn_benchmark(lambda: run_stage(best, stage, x_best, level))
            return Runner(run, [], "channels_last+cudnn.benchmark")
        if provider == "vqvae_fast":
            from vqvae_fast import icetk

            fast = icetk.HVQVAE.from_config(inputs.extra["config"])
            fast.load_state_dict(model.state_dict())
            param = next(model.parameters())
            fast = fast.to(device=device, dtype=param.dtype).eval().requires_grad_(False)
            return Runner(lambda: run_stage(fast, stage, x, level), [], model_backends(device, param.dtype))
        raise ProviderUnavailable(f"no provider {provider!r} for {self.name}")

    def output_for_error(self, out):
        return out[0] if isinstance(out, tuple) else out  # the quantised latent, or the image
