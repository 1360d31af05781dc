"""Fast drop-ins for icetk's ``VectorQuantize`` and ``VectorQuantizeEMA``.

Same arguments, state_dict (``proj``, ``embed``; ``cluster_size`` and ``embed_avg`` for the EMA
class), outputs and gradients as icetk's (:mod:`vqvae_fast.reference.icetk.quantize`): the
nearest codes come from :func:`vqvae_fast.codebook_argmin`, which never builds icetk's
``(N, n_embed)`` distance matrices nor its one-hot ``(N, n_embed)`` matrix; on CPU the code norms
are cached while the codebook is unchanged. Without autograd the loss and the straight-through
output share one ``z_q - z_e``. Nothing in the forward reads a value back to the host.

icetk's ``VectorQuantizeEMA`` never updates its EMA buffers nor its codebook in its forward (in
training either): this one does not either, so training through it is training through icetk's.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .. import _validation as V
from ..ops.codebook_argmin import PRECISIONS, code_norms, codebook_argmin
from ..reference.icetk import quantize as reference
from ._adopt import adopt
from ._derived import DerivedWeightsMixin, derived


class _FastNearestCode(DerivedWeightsMixin):
    """The fast forward shared by both quantizers (mixed in before the reference class)."""

    precision: str = "ieee"

    def _set_precision(self, precision: str) -> None:
        V.check_choice("precision", precision, PRECISIONS)
        self.precision = precision

    @classmethod
    def from_reference(cls, quantizer: nn.Module, *, precision: str = "ieee"):
        """A fast quantizer sharing ``quantizer``'s ``proj``, ``embed`` and buffers (icetk's own
        or the reference's): nothing is copied, the state_dicts have the same keys and tensors."""
        if not isinstance(getattr(quantizer, "embed", None), nn.Embedding):
            raise ValueError(f"quantizer must hold its codebook as an nn.Embedding 'embed', got "
                             f"{type(getattr(quantizer, 'embed', None)).__name__}")
        fast = adopt(quantizer, cls)
        fast._set_precision(precision)
        return fast

    def nearest_codes(self, z_e: torch.Tensor) -> torch.Tensor:
        """Ids ``(B, H, W)`` of the nearest codes of ``z_e`` ``(B, D, H, W)``, read in place."""
        codebook = self.embed.weight.detach()
        norms = None
        if codebook.device.type == "cpu":  # the CPU backend takes them; the GPU kernels make their own
            norms = derived(self, "code_norms", code_norms, codebook)
        return codebook_argmin(z_e.detach(), codebook, precision=self.precision, code_norms=norms)

    def forward(self, z: torch.Tensor):
        self.check_input(z)
        V.check_matches_module("z", z, self)
        z_e = self.project(z)  # (B, D, H, W)
        ids = self.nearest_codes(z_e)  # (B, H, W)
        z_e = z_e.permute(0, 2, 3, 1)  # (B, H, W, D) view
        z_q = self.embed_code(ids)  # (B, H, W, D)
        if torch.is_grad_enabled() and (z_e.requires_grad or z_q.requires_grad):
            return z_e + (z_q - z_e).detach(), self.codebook_loss(z_q, z_e), ids
        # no autograd: both loss terms are the mean of (z_q - z_e)^2, and the output z_e + that
        # same difference (bit for bit what the reference computes)
        delta = z_q - z_e
        return z_e + delta, self.loss_of_difference(delta.pow(2).mean()), ids


class VectorQuantize(_FastNearestCode, reference.VectorQuantize):
    """icetk's ``VectorQuantize`` (see :class:`vqvae_fast.reference.icetk.VectorQuantize`) on
    :func:`vqvae_fast.codebook_argmin`.

    Args:
        hidden_dim, embedding_dim, n_embed, commitment_cost: as icetk's.
        precision: ``"ieee"`` or ``"fast"``, passed to :func:`vqvae_fast.codebook_argmin`.
    """

    def __init__(self, hidden_dim: int, embedding_dim: int, n_embed: int, commitment_cost: float = 1, *,
                 precision: str = "ieee"):
        super().__init__(hidden_dim, embedding_dim, n_embed, commitment_cost)
        self._set_precision(precision)

    def loss_of_difference(self, mean_square: torch.Tensor) -> torch.Tensor:
        return self.commitment_cost * mean_square + mean_square


class VectorQuantizeEMA(_FastNearestCode, reference.VectorQuantizeEMA):
    """icetk's ``VectorQuantizeEMA`` (see :class:`vqvae_fast.reference.icetk.VectorQuantizeEMA`)
    on :func:`vqvae_fast.codebook_argmin`; ``cluster_size`` and ``embed_avg`` are never written.

    Args:
        hidden_dim, embedding_dim, n_embed, commitment_cost, decay, eps, pre_proj,
        training_loc: as icetk's.
        precision: ``"ieee"`` or ``"fast"``, passed to :func:`vqvae_fast.codebook_argmin`.
    """

    def __init__(self, hidden_dim: int, embedding_dim: int, n_embed: int, commitment_cost: float = 1,
                 decay: float = 0.99, eps: float = 1e-5, pre_proj: bool = True, training_loc: bool = True, *,
                 precision: str = "ieee"):
        super().__init__(hidden_dim, embedding_dim, n_embed, commitment_cost, decay, eps, pre_proj, training_loc)
        self._set_precision(precision)

    def loss_of_difference(self, mean_square: torch.Tensor) -> torch.Tensor:
        return self.commitment_cost * mean_square
