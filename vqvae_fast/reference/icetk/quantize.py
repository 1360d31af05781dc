"""icetk's quantizers: ``VectorQuantize``, ``VectorQuantizeEMA`` and ``GumbelQuantize``.

All three map a feature map ``z`` ``(B, hidden_dim, H, W)`` to ``(z_q, diff, ids)`` with ``z_q``
``(B, H, W, embedding_dim)`` (channels last, unlike taming), a scalar loss ``diff`` and code ids
``(B, H, W)``; ``embed_code(ids)`` looks codes up. Nearest codes are found as icetk finds them,
from the full ``(N, K)`` matrix ``||z||^2 - 2 z.e + ||e||^2`` (summed in that order, so that the
ids are icetk's bit for bit); icetk's unused one-hot ``(N, K)`` matrix is not built.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ... import _validation as V


def nearest_code_ids(z_e: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Ids ``(B, H, W)`` of the nearest codes of ``z_e`` ``(B, H, W, D)``: the first minimum of
    ``||z||^2 - 2 z.e + ||e||^2`` over the full ``(N, K)`` matrix, as icetk computes it."""
    B, H, W, D = z_e.shape
    flat = z_e.detach().reshape(-1, D)  # (N, D)
    codebook = codebook.detach()
    distances = flat.pow(2).sum(1, keepdim=True) - 2 * flat @ codebook.t() + codebook.pow(2).sum(1, keepdim=True).t()
    return distances.argmin(dim=1).view(B, H, W)  # the first minimum, as icetk's max of -dist


class _NearestCodeQuantizer(nn.Module):
    r"""What ``VectorQuantize`` and ``VectorQuantizeEMA`` share: project, find the nearest code,
    look it up, return it with a straight-through gradient.

    For ``z_e = proj(z)`` (channels last) and ``i = argmin_k ||z_e - e_k||^2`` per position,
    ``z_q = e_i`` and the output is ``z_e + sg(z_q - z_e)``; ``diff`` is the class's
    :meth:`codebook_loss`.
    """

    embedding_dim: int
    pre_proj: bool = True

    def _init_codebook(self, n_embed: int, embedding_dim: int) -> None:
        self.embed = nn.Embedding(n_embed, embedding_dim)
        self.embed.weight.data.uniform_(-1.0 / n_embed, 1.0 / n_embed)

    def check_input(self, z: torch.Tensor) -> None:
        V.check_tensor("z", z, ndim=4)
        channels = self.hidden_dim if self.pre_proj else self.embedding_dim
        if z.shape[1] != channels:
            raise ValueError(f"z must have {channels} channels, got shape {tuple(z.shape)}")

    def project(self, z: torch.Tensor) -> torch.Tensor:
        """``proj(z)`` ``(B, embedding_dim, H, W)`` (``z`` itself without ``pre_proj``)."""
        return self.proj(z) if self.pre_proj else z

    def nearest_codes(self, z_e: torch.Tensor) -> torch.Tensor:
        """Ids ``(B, H, W)`` of the nearest codes of the projected ``z_e`` ``(B, D, H, W)``."""
        return nearest_code_ids(z_e.permute(0, 2, 3, 1), self.embed.weight)

    def codebook_loss(self, z_q: torch.Tensor, z_e: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, z: torch.Tensor):
        self.check_input(z)
        z_e = self.project(z)  # (B, D, H, W)
        ids = self.nearest_codes(z_e)  # (B, H, W)
        z_e = z_e.permute(0, 2, 3, 1)  # (B, H, W, D) view
        z_q = self.embed_code(ids)  # (B, H, W, D)
        diff = self.codebook_loss(z_q, z_e)
        return z_e + (z_q - z_e).detach(), diff, ids  # straight-through estimator

    def embed_code(self, embed_id: torch.Tensor) -> torch.Tensor:
        """Codes ``(..., D)`` of the ids ``embed_id`` ``(...)``."""
        return F.embedding(embed_id, self.embed.weight)


class VectorQuantize(_NearestCodeQuantizer):
    r"""icetk's ``VectorQuantize``: a 1x1 ``proj`` to ``embedding_dim``, then the nearest of
    ``n_embed`` codes (``embed``, initialised uniform in ``±1 / n_embed``).

    .. math::
        \mathrm{diff} = \beta\, \overline{(\mathrm{sg}(z_q) - z_e)^2} + \overline{(z_q - \mathrm{sg}(z_e))^2}

    with ``β = commitment_cost`` and means over all elements: the codebook learns by gradient.
    Shape: ``z`` ``(B, hidden_dim, H, W)`` -> ``z_q`` ``(B, H, W, embedding_dim)``, ``ids`` ``(B, H, W)``.
    """

    def __init__(self, hidden_dim: int, embedding_dim: int, n_embed: int, commitment_cost: float = 1):
        super().__init__()
        self.hidden_dim = hidden_dim
        self.embedding_dim = embedding_dim
        self.n_embed = n_embed
        self.commitment_cost = commitment_cost
        self.proj = nn.Conv2d(hidden_dim, embedding_dim, 1)
        self._init_codebook(n_embed, embedding_dim)

    def codebook_loss(self, z_q: torch.Tensor, z_e: torch.Tensor) -> torch.Tensor:
        return self.commitment_cost * (z_q.detach() - z_e).pow(2).mean() + (z_q - z_e.detach()).pow(2).mean()


class VectorQuantizeEMA(_NearestCodeQuantizer):
    r"""icetk's ``VectorQuantizeEMA``: ``proj`` (unless ``pre_proj=False``), then the nearest code.

    .. math::
        \mathrm{diff} = \beta\, \overline{(\mathrm{sg}(z_q) - z_e)^2}

    only: the codebook gets no gradient. Buffers ``cluster_size`` ``(n_embed,)`` and
    ``embed_avg`` ``(n_embed, embedding_dim)`` are kept for checkpoints, but icetk 0.0.7's forward
    never updates them (nor the codebook), in training or not; neither does this one.
    ``decay``, ``eps`` and ``training_loc`` are stored, unused, as in icetk.
    """

    def __init__(self, hidden_dim: int, embedding_dim: int, n_embed: int, commitment_cost: float = 1,
                 decay: float = 0.99, eps: float = 1e-5, pre_proj: bool = True, training_loc: bool = True):
        super().__init__()
        self.hidden_dim = hidden_dim
        self.embedding_dim = embedding_dim
        self.n_embed = n_embed
        self.commitment_cost = commitment_cost
        self.training_loc = training_loc
        self.pre_proj = pre_proj
        if pre_proj:
            self.proj = nn.Conv2d(hidden_dim, embedding_dim, 1)
        self._init_codebook(n_embed, embedding_dim)
        self.register_buffer("cluster_size", torch.zeros(n_embed))
        self.register_buffer("embed_avg", self.embed.weight.data.clone())
        self.decay = decay
        self.eps = eps

    def codebook_loss(self, z_q: torch.Tensor, z_e: torch.Tensor) -> torch.Tensor:
        return self.commitment_cost * (z_q.detach() - z_e).pow(2).mean()


class GumbelQuantize(nn.Module):
    r"""icetk's ``GumbelQuantize``: a 1x1 ``proj`` to ``n_embed`` logits, a Gumbel-softmax sample
    over them (hard, straight-through in training unless ``straight_through=False``; always hard
    in eval) mixing the codes, and a KL term to the uniform prior:

    .. math::
        \mathrm{diff} = \lambda \cdot \overline{\textstyle\sum_k q_k \log(K q_k + \epsilon)},
        \quad q = \mathrm{softmax}(\text{logits})

    with ``λ = kl_weight``. The sample is random in eval mode too (icetk's behaviour).
    Shape: ``z`` ``(B, hidden_dim, H, W)`` -> ``z_q`` ``(B, H, W, embedding_dim)``, ``ids`` ``(B, H, W)``.
    """

    def __init__(self, hidden_dim: int, embedding_dim: int, n_embed: int, commitment_cost: float = 1,
                 straight_through: bool = True, kl_weight: float = 5e-4, temp_init: float = 1.0, eps: float = 1e-5):
        super().__init__()
        self.hidden_dim = hidden_dim
        self.embedding_dim = embedding_dim
        self.n_embed = n_embed
        self.commitment_cost = commitment_cost
        self.kl_weight = kl_weight
        self.temperature = temp_init
        self.eps = eps
        self.proj = nn.Conv2d(hidden_dim, n_embed, 1)
        self.embed = nn.Embedding(n_embed, embedding_dim)
        self.embed.weight.data.uniform_(-1.0 / n_embed, 1.0 / n_embed)
        self.straight_through = straight_through

    def forward(self, z: torch.Tensor, temp: float | None = None):
        V.check_tensor("z", z, ndim=4)
        hard = self.straight_through if self.training else True
        temp = self.temperature if temp is None else temp
        logits = self.proj(z)  # (B, K, H, W)
        soft_one_hot = F.gumbel_softmax(logits, tau=temp, dim=1, hard=hard)
        z_q = torch.einsum("bkhw,kd->bhwd", soft_one_hot, self.embed.weight)  # (B, H, W, D)
        q = F.softmax(logits, dim=1)
        diff = self.kl_weight * torch.sum(q * torch.log(q * self.n_embed + self.eps), dim=1).mean()
        return z_q, diff, soft_one_hot.argmax(dim=1)

    def embed_code(self, embed_id: torch.Tensor) -> torch.Tensor:
        return F.embedding(embed_id, self.embed.weight)
