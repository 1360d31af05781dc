"""taming's ``VectorQuantizer2``: nearest-codebook quantisation with a straight-through gradient."""

from __future__ import annotations

import os

import numpy as np
import torch
import torch.nn as nn

from .. import _validation as V
from . import ops

UNKNOWN_INDEX_MODES = ("random", "extra")


def load_remap(remap) -> torch.Tensor:
    """The used-code table of ``remap``: a ``.npy`` path, an array or a 1-D integer tensor."""
    if isinstance(remap, (str, os.PathLike)):
        remap = np.load(remap)
    used = torch.as_tensor(np.asarray(remap) if not isinstance(remap, torch.Tensor) else remap)
    if used.dim() != 1 or used.dtype.is_floating_point or used.dtype.is_complex or used.numel() == 0:
        raise ValueError(f"remap must hold a non-empty 1-D array of code indices, got {tuple(used.shape)} {used.dtype}")
    return used.long()


class VectorQuantizer(nn.Module):
    r"""Replace each latent vector by its nearest codebook entry (taming ``VectorQuantizer2``).

    For ``z`` of shape ``(B, e_dim, H, W)``: ``i = argmin_k ||z - e_k||^2`` per position,
    ``z_q = e_i``, and

    .. math::
        \mathcal{L} = \lVert \mathrm{sg}(z_q) - z \rVert^2 + \beta \lVert z_q - \mathrm{sg}(z) \rVert^2
        \quad (\texttt{legacy=True}),

    with the two weights swapped for ``legacy=False`` (``beta`` on the commitment term), both
    means over all elements. The output is ``z + sg(z_q - z)`` so gradients pass straight
    through to ``z``.

    Args:
        n_e: number of codes ``K``.
        e_dim: code dimension ``D`` (the latent channels).
        beta: weight of the loss term above.
        remap: optional table of used codes (path to ``.npy``, array or tensor); indices are
            then returned as positions in that table.
        unknown_index: index for codes not in ``remap``: ``"random"``, ``"extra"`` (one past
            the table) or an int.
        sane_index_shape: return indices as ``(B, H, W)`` instead of flat.
        legacy: which loss term ``beta`` weighs (see above).

    Returns ``(z_q, loss, (perplexity, min_encodings, indices))`` with ``perplexity`` and
    ``min_encodings`` ``None``, as taming's does.
    """

    def __init__(
        self,
        n_e: int,
        e_dim: int,
        beta: float = 0.25,
        remap=None,
        unknown_index="random",
        sane_index_shape: bool = False,
        legacy: bool = True,
    ):
        super().__init__()
        V.check_int("n_e", n_e, min_value=1)
        V.check_int("e_dim", e_dim, min_value=1)
        self.n_e = n_e
        self.e_dim = e_dim
        self.beta = V.check_float("beta", beta)
        self.legacy = legacy
        self.embedding = nn.Embedding(self.n_e, self.e_dim)
        self.embedding.weight.data.uniform_(-1.0 / self.n_e, 1.0 / self.n_e)

        self.remap = remap
        if remap is not None:
            self.register_buffer("used", load_remap(remap))
            self.re_embed = self.used.shape[0]
            if unknown_index == "extra":
                unknown_index = self.re_embed
                self.re_embed += 1
            elif unknown_index != "random":
                V.check_int("unknown_index", unknown_index, min_value=0)
            self.unknown_index = unknown_index
        else:
            self.re_embed = n_e
            self.unknown_index = unknown_index
        self.sane_index_shape = sane_index_shape

    # -- index remapping --------------------------------------------------------------------

    def remap_to_used(self, inds: torch.Tensor) -> torch.Tensor:
        """Code indices ``(B, ...)`` to positions in ``used``; unknown codes per ``unknown_index``."""
        ishape = inds.shape
        inds = inds.reshape(ishape[0], -1)  # (B, L)
        used = self.used.to(inds)
        match = (inds[:, :, None] == used[None, None, :]).long()  # (B, L, U)
        new = match.argmax(-1)
        unknown = match.sum(2) < 1
        if self.unknown_index == "random":
            new[unknown] = torch.randint(0, self.re_embed, size=new[unknown].shape, device=new.device)
        else:
            new[unknown] = self.unknown_index
        return new.reshape(ishape)

    def unmap_to_all(self, inds: torch.Tensor) -> torch.Tensor:
        """Positions in ``used`` ``(B, ...)`` back to code indices; the extra index maps to code 0's slot."""
        ishape = inds.shape
        inds = inds.reshape(ishape[0], -1).clone()  # (B, L); never modify the caller's tensor
        used = self.used.to(inds)
        if self.re_embed > self.used.shape[0]:  # the "extra" unknown index
            inds[inds >= self.used.shape[0]] = 0
        back = used[inds]  # (B, L)
        return back.reshape(ishape)

    # -- forward ----------------------------------------------------------------------------

    def check_input(self, z: torch.Tensor) -> None:
        V.check_tensor("z", z, ndim=4)
        if z.shape[1] != self.e_dim:
            raise ValueError(f"z must have {self.e_dim} channels (e_dim), got shape {tuple(z.shape)}")

    def nearest_codes(self, z: torch.Tensor) -> torch.Tensor:
        """Indices ``(B, H, W)`` of the nearest codes of ``z`` ``(B, e_dim, H, W)``."""
        return ops.codebook_argmin(z.detach(), self.embedding.weight.detach())

    def codebook_loss(self, z_q: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        commitment = torch.mean((z_q.detach() - z) ** 2)
        codebook = torch.mean((z_q - z.detach()) ** 2)
        if self.legacy:
            return commitment + self.beta * codebook
        return self.beta * commitment + codebook

    def forward(self, z: torch.Tensor, temp=None, rescale_logits: bool = False, return_logits: bool = False):
        if temp not in (None, 1.0) or rescale_logits or return_logits:
            raise ValueError(
                "temp, rescale_logits and return_logits exist only for interface compatibility "
                "with the Gumbel quantizer and must keep their defaults"
            )
        self.check_input(z)
        indices = self.nearest_codes(z)  # (B, H, W)
        z_q = self.embedding(indices).permute(0, 3, 1, 2)  # (B, H, W, D) -> (B, D, H, W)
        loss = self.codebook_loss(z_q, z)
        z_q = z + (z_q - z).detach()  # straight-through estimator
        z_q = z_q.contiguous()

        if self.remap is not None:
            indices = self.remap_to_used(indices.reshape(z.shape[0], -1)).reshape(-1, 1)
        if self.sane_index_shape:
            indices = indices.reshape(z.shape[0], z.shape[2], z.shape[3])
        elif self.remap is None:
            indices = indices.reshape(-1)
        return z_q, loss, (None, None, indices)

    def get_codebook_entry(self, indices: torch.Tensor, shape=None) -> torch.Tensor:
        """Code vectors of ``indices``; with ``shape = (B, H, W, D)`` returned as ``(B, D, H, W)``."""
        V.check_tensor("indices", indices, dtypes=V.INDEX_DTYPES)
        if shape is not None:
            shape = tuple(shape)
            if len(shape) != 4 or shape[3] not in (self.e_dim, -1):
                raise ValueError(f"shape must be (batch, height, width, {self.e_dim}), got {shape}")
        if self.remap is not None:
            if shape is None:
                raise ValueError("shape is required with remap (it gives the batch size)")
            indices = self.unmap_to_all(indices.reshape(shape[0], -1)).reshape(-1)
        limit = self.n_e
        if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= limit):
            raise ValueError(f"indices must lie in [0, {limit}), got values in "
                             f"[{int(indices.min())}, {int(indices.max())}]")
        z_q = self.embedding(indices.long())
        if shape is not None:
            z_q = z_q.view(shape).permute(0, 3, 1, 2).contiguous()  # (B, H, W, D) -> (B, D, H, W)
        return z_q


VectorQuantizer2 = VectorQuantizer
