"""The one table of benchmark shapes, taken from real configurations, and the sets built from it.

Every shape says where it comes from (``vqvae_fast.configs``: taming's ImageNet f16 VQGAN
``vqgan_imagenet_f16_16384``, LDM's ``vq_f8`` / ``kl_f8``, a 1024x1024 decode) and which sets
hold it. A set is the shapes it holds crossed with that set's dtypes, memory formats and modes for
the op (``MATRIX``):

``quick``  the headline shapes of each op issue, one dtype, GPU-sized (a minute or two on an H100).
``full``   every shape named in the op issues (3, 4, 6, 7) and the end-to-end model, all dtypes,
           layouts and modes. More than a few minutes of GPU time: the runner orders cases so that
           the quick ones come first and a ``--time-budget`` cuts the tail.
``cpu``    CPU-sized shapes from the same layers (smaller images), fp32; the default on CPU.
``tiny``   a few seconds in all; for the tests and smoke runs.

Dims per op:
``group_norm_silu``  ``(N, C, H, W)``, 32 groups, affine, eps 1e-6, SiLU.
``spatial_attention`` ``(B, C, N)`` with ``N = H * W``.
``codebook_argmin``  ``(N, K, D)``: N vectors, K codes of dimension D.
``padded_conv2d``    ``(N, C_in, H, W, C_out)``; 3x3 kernel, stride 2, padding (0, 1, 0, 1)
                     (taming's ``Downsample``).
``vqmodel``          ``(batch, resolution)`` plus ``config`` and ``stage`` (encode, decode,
                     forward) in ``params``: the reference ``VQModel`` end to end.
``icetk``            ``(batch, resolution)`` plus ``config`` (``default``: icetk's model, 20000
                     codes; ``tiny``), ``stage`` (encode, decode, quantize) and ``level``:
                     CogVideo's image tokenizer end to end (``icetk_model.py``).
``tokenize``         ``(images, resolution, batch, workers)`` plus ``config`` and the JPEGs'
                     size ``jpeg`` (height, width): the dataset tokenizer end to end.
``overhead``         the dims of the op named by ``target`` in ``params``, tiny: the cost of a
                     call beyond its work (``overhead.py``); in every set.
``lowmem``           ``(batch, resolution)`` plus ``config``: a decode's peak memory and time,
                     plain and within memory budgets, each provider in a process of its own
                     (``lowmem.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

OPS = ("group_norm_silu", "spatial_attention", "codebook_argmin", "padded_conv2d", "vqmodel", "icetk", "tokenize",
       "overhead", "lowmem")
SETS = ("quick", "full", "cpu", "tiny")
DTYPES = ("fp32", "fp16", "bf16")
MODES = ("forward", "backward", "forward+backward")

F16 = "vqgan_imagenet_f16_16384"
ALL_MODES = MODES
FWD_FWDBWD = ("forward", "forward+backward")
FORWARD = ("forward",)
IMAGE_FORMATS = ("nchw", "channels_last")


@dataclass(frozen=True)
class Shape:
    op: str
    dims: tuple[int, ...]
    source: str  # the configuration and layer this shape comes from
    sets: frozenset
    params: tuple = ()  # extra (key, value) pairs, e.g. the vqmodel config and stage
    only_modes: tuple = ()  # when set, the modes this shape runs in (within its set's matrix)

    @property
    def param(self) -> dict:
        return dict(self.params)


def _s(op, dims, source, *sets, only_modes=(), **params) -> Shape:
    unknown = set(sets) - set(SETS)
    assert not unknown, unknown
    return Shape(op, tuple(dims), source, frozenset(sets), tuple(sorted(params.items())), tuple(only_modes))


SHAPES: tuple[Shape, ...] = (
    # group_norm_silu (issue 4): (N, C, H, W)
    _s("group_norm_silu", (1, 128, 256, 256), "f16 encoder level 0 / decoder top level, 256² image", "quick", "full"),
    _s("group_norm_silu", (8, 128, 256, 256), "f16 encoder level 0 / decoder top level, 256² image, batch 8", "full"),
    _s("group_norm_silu", (1, 256, 128, 128), "vq_f8 level 1, 256² image", "full"),
    _s("group_norm_silu", (8, 256, 128, 128), "vq_f8 level 1, 256² image, batch 8", "full"),
    _s("group_norm_silu", (1, 512, 64, 64), "f16 decoder mid block, 1024² decode", "full"),
    _s("group_norm_silu", (8, 512, 64, 64), "vq_f8 level 3, 512² image, batch 8", "full"),
    _s("group_norm_silu", (8, 512, 16, 16), "f16 bottleneck (mid block), 256² image, batch 8", "quick", "full"),
    _s("group_norm_silu", (1, 128, 64, 64), "f16 encoder level 0, 64² image", "cpu"),
    _s("group_norm_silu", (1, 512, 16, 16), "f16 bottleneck (mid block), 256² image", "cpu", only_modes=FORWARD),
    _s("group_norm_silu", (2, 64, 6, 5), "tiny", "tiny"),
    # spatial_attention (issue 7): (B, C, N)
    _s("spatial_attention", (8, 512, 256), "f16 bottleneck attention (16²), 256² image, batch 8", "quick", "full"),
    _s("spatial_attention", (1, 512, 1024), "f16 bottleneck attention (32²), 512² image", "full"),
    _s("spatial_attention", (1, 512, 4096), "f16 bottleneck attention (64²), 1024² decode", "quick", "full"),
    _s("spatial_attention", (1, 512, 16384), "vq_f8 bottleneck attention (128²), 1024² image", "full"),
    _s("spatial_attention", (4, 256, 4096), "head size 256 at 64², batch 4", "full"),
    _s("spatial_attention", (1, 512, 256), "f16 bottleneck attention (16²), 256² image", "cpu"),
    _s("spatial_attention", (1, 512, 1024), "f16 bottleneck attention (32²), 512² image", "cpu", only_modes=FORWARD),
    _s("spatial_attention", (1, 32, 40), "tiny", "tiny"),
    # codebook_argmin (issue 6): (N, K, D)
    _s("codebook_argmin", (2048, 16384, 256), "f16 codebook 16384x256, 16² latents, batch 8", "quick", "full"),
    _s("codebook_argmin", (65536, 16384, 256), "f16 codebook 16384x256, 64² latents, batch 16", "full"),
    _s("codebook_argmin", (262144, 8192, 4), "D=4 codebook (vq_f8 style), 128² latents, batch 16", "full"),
    _s("codebook_argmin", (65536, 1024, 64), "1024 codes of dim 64, 65536 vectors", "full"),
    _s("codebook_argmin", (256, 16384, 256), "f16 codebook 16384x256, 16² latents", "cpu"),
    _s("codebook_argmin", (16384, 1024, 4), "D=4 codebook (vq_f8 style), 128² latents", "cpu"),
    _s("codebook_argmin", (6400, 20000, 256), "icetk codebook 20000x256, 16 frames of 160² at level 1 (20² codes)",
       "quick", "full"),
    _s("codebook_argmin", (400, 20000, 256), "icetk codebook 20000x256, one 160² frame at level 1 (20² codes)",
       "cpu"),
    _s("codebook_argmin", (50, 70, 8), "tiny", "tiny"),
    # padded_conv2d (issue 3): (N, C_in, H, W, C_out), 3x3, stride 2, padding (0, 1, 0, 1)
    _s("padded_conv2d", (8, 128, 256, 256, 128), "f16/vq_f8 Downsample at level 0, 256² image, batch 8", "quick", "full"),
    _s("padded_conv2d", (8, 256, 64, 64, 256), "f16 Downsample at level 2, 256² image, batch 8", "full"),
    _s("padded_conv2d", (8, 512, 32, 32, 512), "kl_f8 Downsample at level 2, 128² image, batch 8", "full"),
    _s("padded_conv2d", (1, 128, 64, 64, 128), "f16 Downsample at level 0, 64² image", "cpu"),
    _s("padded_conv2d", (1, 256, 32, 32, 256), "f16 Downsample at level 2, 128² image", "cpu", only_modes=FORWARD),
    _s("padded_conv2d", (8, 256, 64, 64, 256), "f16 Downsample at level 2, 256² image, batch 8 (CPU target: "
       ">= 1.0x the reference)", "cpu", only_modes=FORWARD),
    _s("padded_conv2d", (1, 8, 9, 7, 12), "tiny", "tiny"),
    # vqmodel, end to end: (batch, resolution)
    _s("vqmodel", (1, 256), "f16 VQGAN encode, 256² image", "quick", "full", config=F16, stage="encode"),
    _s("vqmodel", (1, 256), "f16 VQGAN decode to 256²", "quick", "full", config=F16, stage="decode"),
    _s("vqmodel", (1, 256), "f16 VQGAN forward (encode, quantise, decode), 256²", "full", config=F16, stage="forward"),
    _s("vqmodel", (8, 256), "f16 VQGAN forward, 256², batch 8", "full", config=F16, stage="forward"),
    _s("vqmodel", (8, 256), "f16 VQGAN encode, 256², batch 8", "full", config=F16, stage="encode"),
    _s("vqmodel", (8, 256), "f16 VQGAN decode to 256², batch 8", "full", config=F16, stage="decode"),
    _s("vqmodel", (1, 1024), "f16 VQGAN decode to 1024²", "full", config=F16, stage="decode"),
    _s("vqmodel", (1, 1024), "vq_f8 decode to 1024²", "full", config="vq_f8", stage="decode"),
    _s("vqmodel", (1, 256), "vq_f8 forward, 256²", "full", config="vq_f8", stage="forward"),
    _s("vqmodel", (1, 64), "f16 VQGAN encode, 64² image", "cpu", config=F16, stage="encode"),
    _s("vqmodel", (1, 64), "f16 VQGAN decode to 64²", "cpu", config=F16, stage="decode"),
    _s("vqmodel", (1, 64), "f16 VQGAN forward, 64²", "cpu", config=F16, stage="forward"),
    _s("vqmodel", (1, 32), "tiny config forward, 32²", "tiny", config="tiny", stage="forward"),
    # icetk: CogVideo's image tokenizer, (batch, resolution) at level 1 (8 pixels per code)
    *(_s("icetk", dims, f"icetk {stage}, {dims[0]} frame{'s' if dims[0] > 1 else ''} of {dims[1]}², level 1",
         *sets, config="default", stage=stage, level=1)
      for dims, sets in (((16, 160), ("quick", "full")), ((1, 160), ("full",)), ((1, 256), ("full",)),
                         ((16, 256), ("full",)), ((1, 64), ("cpu",)), ((4, 64), ("cpu",)))
      for stage in ("encode", "decode")),
    _s("icetk", (16, 160), "icetk quantizer (20000 codes), 16 frames of 160², level 1", "quick", "full",
       config="default", stage="quantize", level=1),
    _s("icetk", (1, 160), "icetk quantizer (20000 codes), one 160² frame, level 1", "cpu",
       config="default", stage="quantize", level=1),
    _s("icetk", (4, 256), "icetk quantizer (20000 codes), 4 frames of 256², level 1", "cpu",
       config="default", stage="quantize", level=1),
    _s("icetk", (1, 32), "tiny icetk config, 32² frame, level 1", "tiny", config="tiny", stage="encode", level=1),
    _s("icetk", (1, 32), "tiny icetk config, 32² frame, level 1", "tiny", config="tiny", stage="decode", level=1),
    # tokenize, the dataset job: (images, resolution, batch, DataLoader workers)
    # (512 in the quick set: the batch-1 loop takes ~7 ms an image and runs 9 times per case)
    _s("tokenize", (512, 256, 64, 8), "f16 VQGAN tokenizing 512 JPEGs of 384x320 to 256², batch 64, 8 workers",
       "quick", "full", config=F16, jpeg=(320, 384)),
    _s("tokenize", (2048, 256, 128, 16), "f16 VQGAN tokenizing 2048 JPEGs of 384x320, batch 128, 16 workers", "full",
       config=F16, jpeg=(320, 384)),
    _s("tokenize", (48, 32, 8, 1), "tiny config tokenizing 48 JPEGs of 48x40 to 32², batch 8, 1 worker", "cpu",
       config="tiny", jpeg=(40, 48)),
    _s("tokenize", (8, 32, 4, 1), "tiny config tokenizing 8 JPEGs", "tiny", config="tiny", jpeg=(40, 48)),
    # lowmem: a decode's peak memory and time, plain and within memory budgets
    _s("lowmem", (1, 1024), "f16 VQGAN decode to 1024²: peak memory", "quick", "full", config=F16, stage="decode"),
    _s("lowmem", (1, 1024), "vq_f8 decode to 1024²: peak memory", "quick", "full", config="vq_f8", stage="decode"),
    _s("lowmem", (1, 2048), "f16 VQGAN decode to 2048²: peak memory", "full", config=F16, stage="decode"),
    _s("lowmem", (1, 2048), "vq_f8 decode to 2048²: peak memory", "full", config="vq_f8", stage="decode"),
    _s("lowmem", (1, 256), "f16 VQGAN decode to 256²: peak memory (CPU-sized)", "cpu", config=F16, stage="decode"),
    _s("lowmem", (1, 192), "vq_f8 decode to 192²: peak memory (CPU-sized)", "cpu", config="vq_f8", stage="decode"),
    _s("lowmem", (1, 32), "tiny config decode to 32²: peak memory", "tiny", config="tiny", stage="decode"),
    # overhead: one tiny call of each public op (the work is negligible)
    _s("overhead", (2, 32, 5, 5), "group_norm_silu, 8 groups: per-call overhead", *SETS, target="group_norm_silu"),
    _s("overhead", (1, 32, 16), "spatial_attention: per-call overhead", *SETS, target="spatial_attention"),
    _s("overhead", (16, 32, 8), "codebook_argmin N=16 K=32 D=8: per-call overhead", *SETS, target="codebook_argmin"),
    _s("overhead", (1, 8, 8, 8, 8), "padded_conv2d 3x3 s2: per-call overhead", *SETS, target="padded_conv2d"),
)


@dataclass(frozen=True)
class Matrix:
    """What a set runs for each of its shapes of one op."""

    dtypes: tuple[str, ...]
    formats: tuple[str, ...]
    modes: tuple[str, ...]



MATRIX: dict[str, dict[str, Matrix]] = {
    "quick": {
        "group_norm_silu": Matrix(("bf16",), IMAGE_FORMATS, FWD_FWDBWD),
        "spatial_attention": Matrix(("bf16",), ("bcn",), FWD_FWDBWD),
        "codebook_argmin": Matrix(("fp32",), ("rows",), FORWARD),
        "padded_conv2d": Matrix(("bf16",), IMAGE_FORMATS, FWD_FWDBWD),
        "vqmodel": Matrix(("bf16",), ("nchw",), FORWARD),
        "icetk": Matrix(("fp16",), ("nchw",), FORWARD),
        "tokenize": Matrix(("bf16",), ("nchw",), FORWARD),
        "overhead": Matrix(("fp32",), ("any",), FWD_FWDBWD),
        "lowmem": Matrix(("bf16",), ("nchw",), FORWARD),
    },
    "full": {
        "group_norm_silu": Matrix(("bf16", "fp16", "fp32"), IMAGE_FORMATS, ALL_MODES),
        "spatial_attention": Matrix(("bf16", "fp16"), ("bcn",), ALL_MODES),
        "codebook_argmin": Matrix(("fp32", "bf16"), ("rows",), FORWARD),
        "padded_conv2d": Matrix(("bf16", "fp16", "fp32"), IMAGE_FORMATS, ALL_MODES),
        "vqmodel": Matrix(("bf16", "fp32"), ("nchw",), FWD_FWDBWD),
        "icetk": Matrix(("fp16", "bf16", "fp32"), ("nchw",), FORWARD),
        "tokenize": Matrix(("bf16",), ("nchw",), FORWARD),
        "overhead": Matrix(("fp32",), ("any",), FWD_FWDBWD),
        "lowmem": Matrix(("bf16", "fp32"), ("nchw",), FORWARD),
    },
    "cpu": {
        "group_norm_silu": Matrix(("fp32",), ("nchw",), FWD_FWDBWD),
        "spatial_attention": Matrix(("fp32",), ("bcn",), FWD_FWDBWD),
        "codebook_argmin": Matrix(("fp32",), ("rows",), FORWARD),
        "padded_conv2d": Matrix(("fp32",), ("nchw",), FWD_FWDBWD),
        "vqmodel": Matrix(("fp32",), ("nchw",), FORWARD),
        "icetk": Matrix(("fp32",), ("nchw",), FORWARD),
        "tokenize": Matrix(("fp32",), ("nchw",), FORWARD),
        "overhead": Matrix(("fp32",), ("any",), FWD_FWDBWD),
        "lowmem": Matrix(("fp32",), ("nchw",), FORWARD),
    },
    "tiny": {
        "group_norm_silu": Matrix(("fp32",), IMAGE_FORMATS, ALL_MODES),
        "spatial_attention": Matrix(("fp32",), ("bcn",), ALL_MODES),
        "codebook_argmin": Matrix(("fp32",), ("rows",), FORWARD),
        "padded_conv2d": Matrix(("fp32",), ("nchw",), ALL_MODES),
        "vqmodel": Matrix(("fp32",), ("nchw",), FWD_FWDBWD),
        "icetk": Matrix(("fp32",), ("nchw",), FORWARD),
        "tokenize": Matrix(("fp32",), ("nchw",), FORWARD),
        "overhead": Matrix(("fp32",), ("any",), FWD_FWDBWD),
        "lowmem": Matrix(("fp32",), ("nchw",), FORWARD),
    },
}


@dataclass(frozen=True)
class Case:
    """One measured configuration: every provider runs on the same inputs."""

    shape: Shape
    dtype: str
    format: str
    mode: str
    priority: tuple = field(default=(), compare=False)

    @property
    def op(self) -> str:
        return self.shape.op


def shapes_for(op: str, set_name: str) -> list[Shape]:
    return [s for s in SHAPES if s.op == op and set_name in s.sets]


def build_cases(
    set_name: str,
    ops=OPS,
    dtypes=None,
    formats=None,
    modes=None,
    allowed_modes=None,
) -> list[Case]:
    """The cases of ``set_name`` for ``ops``, most important first.

    ``dtypes`` / ``formats`` / ``modes`` (lists of names) replace the set's own choices when given
    (``formats`` applies to the image ops; attention and argmin keep their one layout). ``allowed_modes(shape)`` says which
    modes a shape supports (the op definitions know: codebook_argmin has no backward). Order:
    cases also in the quick set first, then by dtype, mode, format and shape rank, ops interleaved,
    so that a time budget cuts the least important tail.
    """
    if set_name not in SETS:
        raise ValueError(f"shapes must be one of {list(SETS)}, got {set_name!r}")
    quick = {(s.op, s.dims, s.params) for s in SHAPES if "quick" in s.sets}
    cases = []
    for op_rank, op in enumerate(ops):
        matrix = MATRIX[set_name][op]
        quick_matrix = MATRIX["quick"][op]
        op_dtypes = tuple(dtypes) if dtypes else matrix.dtypes
        op_formats = matrix.formats
        if formats and set(op_formats) <= set(IMAGE_FORMATS):  # attention/argmin keep theirs
            op_formats = tuple(f for f in formats if f in IMAGE_FORMATS)
        op_modes = tuple(modes) if modes else matrix.modes
        for shape_rank, shape in enumerate(shapes_for(op, set_name)):
            supported = allowed_modes(shape) if allowed_modes else MODES
            if shape.only_modes:
                supported = tuple(m for m in supported if m in shape.only_modes)
            for d_rank, dtype in enumerate(op_dtypes):
                for f_rank, fmt in enumerate(op_formats):
                    for m_rank, mode in enumerate(op_modes):
                        if mode not in supported:
                            continue
                        in_quick = (
                            (shape.op, shape.dims, shape.params) in quick
                            and dtype in quick_matrix.dtypes
                            and fmt in quick_matrix.formats
                            and mode in quick_matrix.modes
                        )
                        priority = (0 if in_quick else 1, d_rank, m_rank, f_rank, shape_rank, op_rank)
                        cases.append(Case(shape, dtype, fmt, mode, priority))
    return sorted(cases, key=lambda c: c.priority)

