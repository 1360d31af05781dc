"""Which tokenizer to run: a small registry of model kinds, each a loader of a :class:`CodeModel`.

A ``--model`` value names a kind explicitly (``KIND:SPEC``) or is recognised by what it is:

==============  ======================================================  ==========================
kind            ``--model``                                             also needs
==============  ======================================================  ==========================
``taming``      a taming / LDM checkpoint file (``last.ckpt``, ``.pt``)  ``--config``: the model's
                                                                        yaml (``model.params``),
                                                                        a JSON file or a name of
                                                                        ``vqvae_fast.configs``
``config``      a name of ``vqvae_fast.configs`` (``vq_f8``, ...)        ``--checkpoint``
``diffusers``   a folder saved by diffusers' ``VQModel.save_pretrained``  -
``icetk``       ``icetk:CKPT``: CogView2 / CogVideo's HVQVAE checkpoint  ``--level`` (default 1);
                (``ice_image.pt``)                                      ``--config``: optional
                                                                        icetk JSON config
==============  ======================================================  ==========================

Every kind runs accelerated: taming / config models are built as ``vqvae_fast.VQModel`` (the
fast blocks) and loaded with the checkpoint; diffusers models go through
``vqvae_fast.accelerate``; icetk models are built as ``vqvae_fast.icetk.HVQVAE``
(:mod:`vqvae_fast.tokenize.icetk_kind`, which normalises with icetk's own mean and std inside
``encode_to_codes``: our pipeline hands every model uint8 pixels).

Adding a kind: write ``load(source, device, dtype) -> CodeModel`` and ``fingerprint(source) ->
dict``, then ``register_model_kind(ModelKind(NAME, ...))``. ``source.level`` carries
``--level``. Registering a kind named in :data:`PLANNED_KINDS` replaces its "not available yet"
message.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from typing import Callable, Protocol

import torch

from .. import configs as named_configs


class ModelUnavailableError(ValueError):
    """The model kind exists in the plan but not in this version."""


class CodeModel(Protocol):
    """What the tokenize job needs from a model.

    ``encode_to_codes(images)``: uint8 pixels ``(B, 3, H, W)`` on the model's device to int64
    codes ``(B, h, w)`` and the grid ``(h, w)``; ``decode_codes(codes)``: codes ``(B, h, w)`` to
    uint8 pixels ``(B, 3, H, W)``. ``codebook_size`` bounds the codes; ``downsampling`` is
    ``H / h``; ``native_size`` the training resolution; ``description`` goes into the header.
    """

    codebook_size: int
    downsampling: int
    native_size: int
    description: dict

    def encode_to_codes(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]: ...

    def decode_codes(self, codes: torch.Tensor) -> torch.Tensor: ...


@dataclass(frozen=True)
class ModelSource:
    """A resolved ``--model`` (with ``--config`` / ``--checkpoint`` / ``--level``)."""

    kind: str
    path: str  # checkpoint file, model folder or config name
    config: str | None = None
    checkpoint: str | None = None
    level: int | None = None

    def as_dict(self) -> dict:
        return {"kind": self.kind, "path": self.path, "config": self.config, "checkpoint": self.checkpoint,
                "level": self.level}


@dataclass(frozen=True)
class ModelKind:
    name: str
    summary: str
    load: Callable[[ModelSource, torch.device, torch.dtype], CodeModel]
    fingerprint: Callable[[ModelSource], dict]  # what identifies the weights and config (for the header)
    recognises: Callable[[str], bool] = field(default=lambda spec: False)  # a bare --model of this kind


MODEL_KINDS: dict[str, ModelKind] = {}

#: Kinds announced but not implemented here yet: name -> what to tell the user.
PLANNED_KINDS: dict[str, str] = {}


def register_model_kind(kind: ModelKind, *, replace: bool = False) -> None:
    if not isinstance(kind, ModelKind):
        raise TypeError(f"kind must be a ModelKind, got {type(kind).__name__}")
    if kind.name in MODEL_KINDS and not replace:
        raise ValueError(f"a model kind named {kind.name!r} is already registered (pass replace=True)")
    MODEL_KINDS[kind.name] = kind


def resolve_model_source(model: str, *, config: str | None = None, checkpoint: str | None = None,
                         level: int | None = None) -> ModelSource:
    """Turn the ``--model`` value (``KIND:SPEC`` or a path / name) into a :class:`ModelSource`."""
    if not isinstance(model, str) or not model:
        raise TypeError(f"model must be a non-empty string, got {model!r}")
    kind, sep, spec = model.partition(":")
    if not sep or len(kind) < 2:  # no kind given ("C:\\..." is a path, not a kind)
        kind, spec = None, model
    if kind is not None and kind not in MODEL_KINDS and kind not in PLANNED_KINDS:
        kind, spec = None, model  # a path that happens to hold ':'
    if kind is None:
        found = [k.name for k in MODEL_KINDS.values() if k.recognises(spec)]
        if not found:
            raise ValueError(
                f"model {model!r} is neither a checkpoint file, a diffusers model folder nor a name of "
                f"vqvae_fast.configs ({', '.join(sorted(named_configs.CONFIGS))}); name the kind as KIND:PATH "
                f"with KIND one of {', '.join(sorted(set(MODEL_KINDS) | set(PLANNED_KINDS)))}")
        kind = found[0]
    if kind in PLANNED_KINDS and kind not in MODEL_KINDS:
        raise ModelUnavailableError(f"model {model!r}: {PLANNED_KINDS[kind]}")
    if level is not None and kind != "icetk":
        raise ValueError(f"level applies to icetk models only, not to a {kind} model")
    return ModelSource(kind, spec, config, checkpoint, level)


def load_model(source: ModelSource, device: torch.device, dtype: torch.dtype) -> CodeModel:
    return MODEL_KINDS[source.kind].load(source, device, dtype)


def fingerprint(source: ModelSource) -> dict:
    """What identifies this model's codes: kind, config and the hash of the weights."""
    return {"kind": source.kind, **MODEL_KINDS[source.kind].fingerprint(source)}


# -- hashing ----------------------------------------------------------------------------------


def sha256_file(path: str, chunk: int = 8 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def sha256_folder(folder: str, suffixes=(".json", ".safetensors", ".bin")) -> str:
    """One hash over the folder's weight and config files (names and contents, sorted)."""
    digest = hashlib.sha256()
    for name in sorted(os.listdir(folder)):
        if name.endswith(suffixes) and os.path.isfile(os.path.join(folder, name)):
            digest.update(name.encode() + b"\0" + sha256_file(os.path.join(folder, name)).encode())
    return digest.hexdigest()


def require_file(name: str, path: str | None) -> str:
    if not path:
        raise ValueError(f"{name} is required for this model")
    if not os.path.isfile(path):
        raise ValueError(f"{name} {path!r} is not a file")
    return path


# -- taming / LDM VQGAN and vqvae_fast.configs --------------------------------------------------


def read_config_file(path: str) -> dict:
    """A yaml (when PyYAML is installed) or JSON config file."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if path.endswith((".yaml", ".yml")):
        try:
            import yaml
        except ImportError as err:
            raise ValueError(f"config {path!r} is yaml but PyYAML is not installed: pip install pyyaml, "
                             "or give the same config as JSON") from err
        return yaml.safe_load(text)
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"config {path!r} is not valid JSON ({err}); yaml configs need a .yaml name") from err


def vq_params(config: str | None) -> dict:
    """``{"ddconfig", "n_embed", "embed_dim", ...}`` from a config name, a taming yaml or JSON."""
    if not config:
        raise ValueError("config is required: the model's yaml / JSON file or a name of vqvae_fast.configs "
                         f"({', '.join(sorted(named_configs.CONFIGS))})")
    if config in named_configs.CONFIGS:
        params = named_configs.get_config(config)
    elif os.path.isfile(config):
        params = read_config_file(config)
    else:
        raise ValueError(f"config {config!r} is neither a file nor a name of vqvae_fast.configs")
    if isinstance(params, dict) and isinstance(params.get("model"), dict):  # taming / LDM yaml
        params = params["model"].get("params", {})
    if not isinstance(params, dict) or "ddconfig" not in params:
        raise ValueError(f"config {config!r} has no ddconfig (expected model.params.ddconfig or ddconfig)")
    if "n_embed" not in params or "embed_dim" not in params:
        raise ValueError(f"config {config!r} has no n_embed / embed_dim: tokenizing needs a vector-quantised "
                         "model (a KL autoencoder has no codes)")
    return params


class VQGANCodes:
    """A taming-style ``VQModel`` (fast blocks) as a :class:`CodeModel`; pixels scaled to [-1, 1]."""

    def __init__(self, model, description: dict, native_size: int):
        self.model = model
        self.codebook_size = int(model.quantize.n_e)
        self.downsampling = int(model.encoder.downsampling_factor)
        self.native_size = native_size
        self.description = description
        self.dtype = next(model.parameters()).dtype

    def pixels_to_input(self, images: torch.Tensor) -> torch.Tensor:
        return (images.to(torch.float32) / 127.5 - 1.0).to(self.dtype)

    def latents(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.quant_conv(self.model.encoder(x))

    @torch.no_grad()
    def encode_to_codes(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        codes = self.model.quantize.nearest_codes(self.latents(self.pixels_to_input(images)))  # (B, h, w)
        return codes, (codes.shape[1], codes.shape[2])

    def codes_to_quant(self, codes: torch.Tensor) -> torch.Tensor:
        b, h, w = codes.shape
        embedding = self.model.quantize.embedding.weight
        return embedding[codes.reshape(-1).long()].view(b, h, w, -1).permute(0, 3, 1, 2).contiguous()

    def decode_quant(self, quant: torch.Tensor) -> torch.Tensor:
        return self.model.decode(quant)

    @torch.no_grad()
    def decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        x = self.decode_quant(self.codes_to_quant(codes))
        return ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def _config_of(source: ModelSource) -> str | None:
    return source.path if source.kind == "config" else source.config


def _checkpoint_of(source: ModelSource) -> str:
    if source.kind == "config":
        return require_file("checkpoint", source.checkpoint)
    return require_file("model checkpoint", source.path)


def load_vqgan(source: ModelSource, device: torch.device, dtype: torch.dtype) -> VQGANCodes:
    import vqvae_fast

    params = vq_params(_config_of(source))
    model = vqvae_fast.VQModel(**{k: v for k, v in params.items() if k not in ("ckpt_path", "lossconfig")})
    model.load_checkpoint(_checkpoint_of(source))
    model = model.to(device=device, dtype=dtype).eval().requires_grad_(False)
    description = {"class": "vqvae_fast.VQModel", "n_embed": params["n_embed"], "embed_dim": params["embed_dim"]}
    return VQGANCodes(model, description, int(params["ddconfig"]["resolution"]))


def vqgan_fingerprint(source: ModelSource) -> dict:
    params = vq_params(_config_of(source))
    checkpoint = _checkpoint_of(source)
    keep = {k: params[k] for k in ("ddconfig", "n_embed", "embed_dim") if k in params}
    return {"config": keep, "checkpoint_sha256": sha256_file(checkpoint), "checkpoint": os.path.abspath(checkpoint)}


CHECKPOINT_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".safetensors")

register_model_kind(ModelKind(
    "taming", "taming / LDM VQGAN checkpoint file, with --config (yaml, JSON or a vqvae_fast.configs name)",
    load_vqgan, vqgan_fingerprint, recognises=lambda spec: os.path.isfile(spec) and spec.endswith(CHECKPOINT_SUFFIXES)))
register_model_kind(ModelKind(
    "config", "a name of vqvae_fast.configs, with --checkpoint", load_vqgan, vqgan_fingerprint,
    recognises=lambda spec: spec in named_configs.CONFIGS))


# -- diffusers VQModel --------------------------------------------------------------------------


class DiffusersCodes(VQGANCodes):
    """diffusers' ``VQModel`` after ``vqvae_fast.accelerate``; pixels scaled to [-1, 1]."""

    def __init__(self, model, description: dict, native_size: int):
        self.model = model
        self.codebook_size = int(model.quantize.n_e)
        self.downsampling = 2 ** (len(model.config.block_out_channels) - 1)
        self.native_size = native_size
        self.description = description
        self.dtype = next(model.parameters()).dtype

    def latents(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.encode(x).latents

    def decode_quant(self, quant: torch.Tensor) -> torch.Tensor:
        return self.model.decode(quant, force_not_quantize=True).sample


def is_diffusers_vq_folder(path: str) -> bool:
    config = os.path.join(path, "config.json")
    if not os.path.isfile(config):
        return False
    try:
        with open(config, encoding="utf-8") as f:
            return json.load(f).get("_class_name") == "VQModel"
    except (OSError, ValueError):
        return False


def load_diffusers(source: ModelSource, device: torch.device, dtype: torch.dtype) -> DiffusersCodes:
    if not is_diffusers_vq_folder(source.path):
        raise ValueError(f"model {source.path!r} is not a folder holding a diffusers VQModel (config.json with "
                         "_class_name VQModel)")
    try:
        from diffusers import VQModel
    except ImportError as err:
        raise ValueError("diffusers models need the diffusers package: pip install diffusers") from err
    import vqvae_fast

    model = VQModel.from_pretrained(source.path, local_files_only=True, low_cpu_mem_usage=False, torch_dtype=dtype)
    vqvae_fast.accelerate(model)
    if not hasattr(model.quantize, "nearest_codes"):
        raise ValueError(f"model {source.path!r}: its quantizer could not be accelerated")
    model = model.to(device=device).eval().requires_grad_(False)
    cfg = model.config
    description = {"class": "diffusers.VQModel (vqvae_fast.accelerate)", "n_embed": cfg.num_vq_embeddings,
                   "embed_dim": cfg.vq_embed_dim or cfg.latent_channels}
    return DiffusersCodes(model, description, int(cfg.sample_size))


def diffusers_fingerprint(source: ModelSource) -> dict:
    if not is_diffusers_vq_folder(source.path):
        raise ValueError(f"model {source.path!r} is not a folder holding a diffusers VQModel")
    with open(os.path.join(source.path, "config.json"), encoding="utf-8") as f:
        config = {k: v for k, v in json.load(f).items() if not k.startswith("_")}
    return {"config": config, "checkpoint_sha256": sha256_folder(source.path),
            "checkpoint": os.path.abspath(source.path)}


register_model_kind(ModelKind(
    "diffusers", "a folder saved by diffusers' VQModel.save_pretrained", load_diffusers, diffusers_fingerprint,
    recognises=is_diffusers_vq_folder))

from . import icetk_kind  # noqa: E402,F401 - registers the "icetk" kind
