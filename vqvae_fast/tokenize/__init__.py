"""Dataset tokenization: images and video frames to codes, on one device or many (``torchrun``).

``vqvae_fast.tokenize(INPUT, OUT, model=...)`` (the package is callable; the same function is
``vqvae_fast.tokenize.tokenize``) or ``vqvae-fast tokenize INPUT OUT --model M``. Read the codes
back with ``load_codes(OUT)``, decode some with ``detokenize(OUT, DEST)``. The output format,
resuming and scale-out are described in ``docs/tokenize.md``.

Modules, one job each: ``inputs`` (finding the inputs), ``preprocess`` (decode + resize one
image), ``video`` (optional frames), ``dataset`` (DataLoader side), ``model_kinds`` (the model
registry), ``shards`` (atomic shard files), ``manifest`` (header + manifest), ``distributed``
(torchrun), ``job`` (the driver), ``loader`` (``load_codes``), ``detokenize``, ``cli``.
"""

import sys
import types

from .detokenize import detokenize
from .job import Summary, tokenize
from .loader import Codes, load_codes
from .model_kinds import (
    MODEL_KINDS,
    CodeModel,
    ModelKind,
    ModelSource,
    ModelUnavailableError,
    register_model_kind,
)
from .shards import codes_dtype


class _CallableModule(types.ModuleType):
    """Lets ``vqvae_fast.tokenize(...)`` call :func:`tokenize` while the package keeps its names."""

    def __call__(self, *args, **kwargs):
        return tokenize(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule

__all__ = [
    "MODEL_KINDS",
    "CodeModel",
    "Codes",
    "ModelKind",
    "ModelSource",
    "ModelUnavailableError",
    "Summary",
    "codes_dtype",
    "detokenize",
    "load_codes",
    "register_model_kind",
    "tokenize",
]
