"""Reference functional ops: the plainest correct PyTorch for each op that has a fast path.

These are the ground truth. The reference model calls exactly these functions, every fast
backend is tested against them, and the benchmark suite times them as the ``reference``
provider. They favour obviousness over speed or memory: ``spatial_attention`` materialises the
N x N attention matrix and ``codebook_argmin`` the N x K distance matrix, as taming does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

ACTIVATIONS = ("silu", None)


def group_norm_silu(
    x: torch.Tensor,
    num_groups: int,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    eps: float = 1e-6,
    activation: str | None = "silu",
) -> torch.Tensor:
    r"""Group norm followed by SiLU (or nothing, for ``activation=None``).

    .. math::
        \hat x = \frac{x - \mathrm{E}_g[x]}{\sqrt{\mathrm{Var}_g[x] + \epsilon}} \gamma_c + \beta_c,
        \qquad y = \hat x \cdot \sigma(\hat x)

    where the mean and (biased) variance run over the ``C / num_groups`` channels of a group and
    all spatial positions. Shape: ``x`` is ``(N, C, *)``, ``weight`` and ``bias`` are ``(C,)``.
    """
    if weight is None and bias is not None:
        # the shift added on its own: some torch versions (2.11) cannot differentiate group
        # norm's bias without a weight
        y = F.group_norm(x, num_groups, None, None, eps) + bias.view(-1, *([1] * (x.dim() - 2)))
    else:
        y = F.group_norm(x, num_groups, weight, bias, eps)
    if activation == "silu":
        y = y * torch.sigmoid(y)
    elif activation is not None:
        raise ValueError(f"activation must be one of {list(ACTIVATIONS)}, got {activation!r}")
    return y


def spatial_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None
) -> torch.Tensor:
    r"""Single-head attention over spatial positions, channels as the head dimension.

    With ``q, k, v`` of shape ``(B, C, N)`` (or ``(B, C, H, W)``, flattened to ``N = H * W``):

    .. math::
        A = \mathrm{softmax}_j\big((s\,q)^\top k\big) \in \mathbb{R}^{B \times N \times N},
        \qquad \mathrm{out} = v A^\top \in \mathbb{R}^{B \times C \times N}

    with ``s = C ** -0.5`` unless ``scale`` is given. ``q`` is scaled before the product so that
    fp16 logits do not overflow. Returns a tensor of ``q``'s shape.
    """
    shape = q.shape
    batch, channels = shape[0], shape[1]
    positions = 1
    for size in shape[2:]:
        positions *= size  # N (explicit: a -1 cannot be inferred when B or C is 0)
    q = q.reshape(batch, channels, positions)  # (B, C, N)
    k = k.reshape(batch, channels, positions)  # (B, C, N)
    v = v.reshape(batch, channels, positions)  # (B, C, N)
    if scale is None:
        scale = channels**-0.5
    logits = torch.bmm(q.transpose(1, 2) * scale, k)  # (B, N_q, N_k)
    weights = torch.softmax(logits, dim=2)  # (B, N_q, N_k)
    out = torch.bmm(v, weights.transpose(1, 2))  # (B, C, N_q)
    return out.reshape(shape)


def flatten_latents(z: torch.Tensor) -> torch.Tensor:
    """``(B, D, H, W) -> (B*H*W, D)`` in taming's order (b, h, w); ``(N, D)`` unchanged."""
    if z.dim() == 4:
        return z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])  # (B*H*W, D)
    return z


def codebook_argmin(
    z: torch.Tensor, codebook: torch.Tensor, return_distance: bool = False
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    r"""Index of the nearest codebook entry for every latent vector.

    .. math::
        d_{nk} = \lVert z_n \rVert^2 + \lVert e_k \rVert^2 - 2\, z_n \cdot e_k, \qquad
        i_n = \arg\min_k d_{nk}

    with ties going to the lowest index (``torch.argmin``). ``z`` is ``(N, D)`` or the model's
    ``(B, D, H, W)``; ``codebook`` is ``(K, D)``. Returns int64 indices of shape ``(N,)`` or
    ``(B, H, W)``, and with ``return_distance`` also the minimum distances ``d_{n i_n}`` of that
    shape. Builds the full ``(N, K)`` distance matrix, as taming does.
    """
    dtype = torch.promote_types(z.dtype, codebook.dtype)
    flat = flatten_latents(z).to(dtype)  # (N, D)
    codebook = codebook.to(dtype)  # (K, D)
    distances = (
        flat.pow(2).sum(1, keepdim=True)  # (N, 1)
        + codebook.pow(2).sum(1)  # (K,)
        - 2 * flat @ codebook.t()  # (N, K)
    )
    indices = distances.argmin(dim=1)  # (N,)
    out_shape = (z.shape[0], z.shape[2], z.shape[3]) if z.dim() == 4 else (flat.shape[0],)
    if not return_distance:
        return indices.reshape(out_shape)
    best = distances.gather(1, indices[:, None]).squeeze(1)  # (N,)
    return indices.reshape(out_shape), best.reshape(out_shape)


def padded_conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: int | tuple[int, int] = 1,
    padding: tuple[int, int, int, int] = (0, 0, 0, 0),
) -> torch.Tensor:
    """2-D convolution of ``x`` zero-padded by ``padding = (left, right, top, bottom)``.

    ``F.pad`` (which materialises the padded input) then ``F.conv2d`` without padding. Shapes:
    ``x`` ``(N, C_in, H, W)``, ``weight`` ``(C_out, C_in, kH, kW)``, ``bias`` ``(C_out,)``;
    output ``(N, C_out, (H + top + bottom - kH) // sH + 1, (W + left + right - kW) // sW + 1)``.
    taming's ``Downsample`` is ``padding=(0, 1, 0, 1)``, ``stride=2`` with a 3x3 kernel.
    """
    return F.conv2d(F.pad(x, tuple(padding)), weight, bias, stride=stride)
