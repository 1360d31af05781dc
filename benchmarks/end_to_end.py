"""The end-to-end benchmark: the reference ``VQModel`` encoding, decoding, or both (``forward``).

Providers:

``reference``     ``vqvae_fast.reference.VQModel`` built from a named config, eager.
``compiled``      ``torch.compile`` of the same stage, mode ``max-autotune-no-cudagraphs`` on CUDA
                  (opt in with ``--providers``: compiling the whole model takes minutes, more
                  than a default run should spend).
``pytorch-best``  the same model in channels_last with ``cudnn.benchmark`` on.
``vqvae_fast``    ``vqvae_fast.VQModel`` loaded with the reference's state_dict, once that class
                  exists; until then its rows say ``unavailable``.

``forward+backward`` (``forward`` stage only) differentiates ``mean(dec²) + codebook_loss`` with
respect to every parameter: a training step without the optimiser. FLOPs are counted by
``torch.utils.flop_counter`` on a meta-device copy (no bytes formula: the floor is the FLOP one).
The error compares the stage's image (or, for ``encode``, the quantised latent) with the fp64
model; in fp16/bf16 a few latents pick a different code than in fp64, so the maximum error of
``forward`` is large by nature and ``rel_err`` is the number to read.
"""

from __future__ import annotations

import copy
import functools

import torch

from . import formulas
from .definitions import (
    PROVIDERS,
    Inputs,
    OpBench,
    ProviderUnavailable,
    Runner,
    compile_fn,
    public_backend,
    randn,
    to_format,
    upcast,
    with_cudnn_benchmark,
)
from .device import TORCH_DTYPES
from .shapes import MODES, Case, Shape

SHORT_CONFIG = {"vqgan_imagenet_f16_16384": "f16", "vq_f8": "vq_f8", "kl_f8": "kl_f8", "tiny": "tiny"}
OP_SHORT = {"group_norm_silu": "gn", "spatial_attention": "attn", "codebook_argmin": "argmin", "padded_conv2d": "conv"}


def model_backends(device: torch.device, dtype: torch.dtype) -> str:
    """The backends a fast model's ops pick, e.g. ``"gn:triton attn:triton argmin:triton conv:cuda"``."""
    return " ".join(f"{short}:{public_backend(op, device, dtype)}" for op, short in OP_SHORT.items())


def build_model(config_name: str):
    from vqvae_fast import configs, reference

    cfg = configs.get_config(config_name)
    return reference.VQModel(cfg["ddconfig"], n_embed=cfg["n_embed"], embed_dim=cfg["embed_dim"]), cfg


def stage_input_shape(model, stage: str, batch: int, resolution: int) -> tuple[int, ...]:
    if stage == "decode":
        f = model.encoder.downsampling_factor
        return (batch, model.embed_dim, resolution // f, resolution // f)
    return (batch, model.encoder.in_channels, resolution, resolution)


def run_stage(model, stage: str, x):
    if stage == "encode":
        return model.encode(x)[0]  # quantised latent (B, embed_dim, h, w)
    if stage == "decode":
        return model.decode(x)  # image (B, 3, H, W)
    return model(x)  # (reconstruction, codebook loss)


def training_loss(out):
    dec, codebook_loss = out
    return dec.float().pow(2).mean() + codebook_loss.float()


@functools.lru_cache(maxsize=None)
def count_flops(config_name: str, stage: str, batch: int, resolution: int, with_backward: bool) -> float:
    """FLOPs of one stage (and its backward) counted on a meta-device model."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        model, _ = build_model(config_name)
        x = torch.empty(stage_input_shape(model, stage, batch, resolution))
    with FlopCounterMode(display=False) as counter:
        if with_backward:
            loss = training_loss(run_stage(model, stage, x))
            torch.autograd.grad(loss, list(model.parameters()), allow_unused=True)
        else:
            with torch.no_grad():
                run_stage(model, stage, x)
    return float(counter.get_total_flops())


class VQModelBench(OpBench):
    name = "vqmodel"
    providers = PROVIDERS
    tf32_flag = "cudnn"  # convolutions dominate
    opt_in_providers = ("compiled",)

    def modes_for(self, shape: Shape) -> tuple[str, ...]:
        return MODES if shape.param["stage"] == "forward" else ("forward",)

    def describe(self, shape: Shape) -> str:
        batch, res = shape.dims
        p = shape.param
        return f"{SHORT_CONFIG.get(p['config'], p['config'])} {batch}x3x{res}x{res} {p['stage']}"

    def work(self, case: Case) -> formulas.Work:
        batch, res = case.shape.dims
        p = case.shape.param
        forward = count_flops(p["config"], p["stage"], batch, res, False)
        if case.mode == "forward":
            return formulas.Work(forward, None)
        both = count_flops(p["config"], p["stage"], batch, res, True)
        return formulas.Work(both if case.mode == "forward+backward" else both - forward, None)

    def make_inputs(self, case, device, requires_grad, gen):
        batch, res = case.shape.dims
        p = case.shape.param
        dtype = TORCH_DTYPES[case.dtype]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)  # the same weights in every run
            model, cfg = build_model(p["config"])
        model = model.to(device=device, dtype=dtype).eval().requires_grad_(requires_grad)
        x = to_format(randn(stage_input_shape(model, p["stage"], batch, res), dtype, device, gen), case.format)
        return Inputs({"x": x}, (), {"model": model, "config": cfg, "stage": p["stage"]})

    def upcast_inputs(self, inputs, requires_grad):
        model = copy.deepcopy(inputs.extra["model"]).double().requires_grad_(requires_grad)
        return Inputs({"x": upcast(inputs.tensors["x"], False)}, (), {**inputs.extra, "model": model})

    def build(self, provider, inputs, case, device):
        model, x = inputs.extra["model"], inputs.tensors["x"]
        stage = inputs.extra["stage"]
        if provider == "reference":
            return Runner(lambda: run_stage(model, stage, x), list(model.parameters()), "eager")
        if provider == "compiled":
            mode = "max-autotune-no-cudagraphs" if device.type == "cuda" else None
            fn = compile_fn(lambda inp: run_stage(model, stage, inp), mode=mode)
            return Runner(lambda: fn(x), list(model.parameters()), "inductor")
        if provider == "pytorch-best":
            best = copy.deepcopy(model).to(memory_format=torch.channels_last)
            x_cl = x.contiguous(memory_format=torch.channels_last)

            run = with_cudnn_benchmark(lambda: run_stage(best, stage, x_cl))
            return Runner(run, list(best.parameters()), "channels_last+cudnn.benchmark")
        if provider == "vqvae_fast":
            import vqvae_fast

            if not hasattr(vqvae_fast, "VQModel"):
                raise ProviderUnavailable("vqvae_fast.VQModel does not exist yet")
            cfg = inputs.extra["config"]
            fast = vqvae_fast.VQModel(cfg["ddconfig"], n_embed=cfg["n_embed"], embed_dim=cfg["embed_dim"])
            fast.load_state_dict(model.state_dict())
            param = next(model.parameters())
            fast = fast.to(device=device, dtype=param.dtype).eval().requires_grad_(param.requires_grad)
            backends = model_backends(device, param.dtype)
            return Runner(lambda: run_stage(fast, stage, x), list(fast.parameters()), backends)
        raise ProviderUnavailable(f"no provider {provider!r} for {self.name}")

    def backward_target(self, out, grad_out):
        return training_loss(out), None

    def make_grad_out(self, out, gen):
        return None

    def output_for_error(self, out):
        return out[0] if isinstance(out, tuple) else out
