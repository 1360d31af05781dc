"""From a list of layers to passes: what the executor runs, one full sweep over the tiles each.

A pass reads one tensor (a *value*) and writes the next:

* :class:`ConvPass`: ``[norm (+ SiLU) while loading] -> [nearest x2] -> convolution ->
  [+ shortcut(saved), / scale] -> [pointwise]``. Every group norm is fused into the
  convolution that follows it, and every residual into the convolution before it, so a
  ResnetBlock is two passes, each reading its input once.
* :class:`WholePass`: a non-local block (attention) on the whole tensor.

Value 0 is the caller's input (never written); value ``n`` is the output of pass ``n - 1``.
``last_use[v]`` is the last pass that reads ``v``: after it, ``v``'s storage is released (or
reused by a residual sum written in place).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from . import geometry
from .layers import Conv, Norm, Pointwise, Residual, Save, Unsupported, Whole


@dataclass(eq=False)
class ConvPass:
    src: int
    dst: int
    conv: Conv
    norm: Norm | None = None
    skip: int | None = None
    residual: Residual | None = None
    pointwise: list = field(default_factory=list)


@dataclass(eq=False)
class WholePass:
    src: int
    dst: int
    layer: Whole
    pointwise: list = field(default_factory=list)


Pass = ConvPass | WholePass


@dataclass
class Program:
    passes: list
    last_use: list[int]  # per value

    @property
    def output(self) -> int:
        return len(self.passes)

    def consumers(self, value: int) -> list[Pass]:
        return [p for p in self.passes if p.src == value or (isinstance(p, ConvPass) and p.skip == value)]

    def shapes(self, input_shape: tuple[int, int, int]) -> list[tuple[int, int, int]]:
        """``(C, H, W)`` of every value for an input of ``(C, H, W)``; raises ``ValueError``
        (naming the input's shape) where a layer cannot take what it is given."""
        try:
            return self._shapes(tuple(input_shape))
        except ValueError as err:
            raise ValueError(f"input of shape (N, {', '.join(map(str, input_shape))}): {err}") from None

    def _shapes(self, input_shape: tuple[int, int, int]) -> list[tuple[int, int, int]]:
        shapes = [tuple(input_shape)]
        for p in self.passes:
            channels, height, width = shapes[p.src]
            if isinstance(p, WholePass):
                shapes.append((channels, height, width))
                continue
            weight = p.conv.module.weight
            if weight.shape[1] != channels:
                raise ValueError(f"a convolution expects {weight.shape[1]} input channels, got {channels}")
            if p.conv.upsample:
                height, width = 2 * height, 2 * width
            (kh, kw), (sh, sw) = p.conv.kernel, p.conv.stride
            left, right, top, bottom = p.conv.padding
            out = (weight.shape[0], geometry.conv_output_size(height, kh, sh, top, bottom),
                   geometry.conv_output_size(width, kw, sw, left, right))
            if out[1] < 1 or out[2] < 1:
                raise ValueError(f"the input is too small: a {kh}x{kw} convolution gets {height}x{width}")
            if p.skip is not None:
                skip_shape = shapes[p.skip]
                if p.residual.shortcut is None and skip_shape != out:
                    raise ValueError(f"a residual adds {skip_shape} to {out}")
                if skip_shape[1:] != out[1:]:
                    raise ValueError(f"a residual adds a {skip_shape[1:]} tensor to a {out[1:]} one")
            shapes.append(out)
        return shapes


def compile_layers(layers: list) -> Program:
    """Fuse norms into the following convolution and residuals / pointwise functions into the
    preceding one; raise :class:`Unsupported` for sequences that cannot be fused."""
    passes: list[Pass] = []
    saved: dict[str, int] = {}
    current, pending = 0, None
    for layer in layers:
        if isinstance(layer, Save):
            saved[layer.name] = current
        elif isinstance(layer, Norm):
            if pending is not None:
                raise Unsupported("two group norms in a row (a norm must be followed by a convolution)")
            pending = layer
        elif isinstance(layer, Conv):
            passes.append(ConvPass(current, len(passes) + 1, layer, pending))
            current, pending = len(passes), None
        elif isinstance(layer, Whole):
            if pending is not None:
                raise Unsupported(f"a group norm before {layer.name} (a norm must be followed by a convolution)")
            passes.append(WholePass(current, len(passes) + 1, layer))
            current = len(passes)
        elif isinstance(layer, Residual):
            last = passes[-1] if passes else None
            if not isinstance(last, ConvPass) or last.dst != current or last.skip is not None \
                    or last.pointwise or pending is not None:
                raise Unsupported("a residual sum that does not directly follow a convolution")
            if layer.name not in saved:
                raise Unsupported(f"a residual of {layer.name!r}, which was never saved")
            last.skip, last.residual = saved.pop(layer.name), layer
        elif isinstance(layer, Pointwise):
            if not passes or passes[-1].dst != current or pending is not None:
                raise Unsupported(f"{layer.name} on a tensor no pass produces")
            passes[-1].pointwise.append(layer)
        else:
            raise TypeError(f"unknown layer {layer!r}")
    if pending is not None:
        raise Unsupported("a group norm at the end (a norm must be followed by a convolution)")
    if not passes:
        raise Unsupported("no layer to run")
    last_use = [-1] * (len(passes) + 1)
    for index, p in enumerate(passes):
        last_use[p.src] = index
        if isinstance(p, ConvPass) and p.skip is not None:
            last_use[p.skip] = index
    return Program(passes, last_use)
