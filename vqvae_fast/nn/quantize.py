"""Fast drop-in for taming's ``VectorQuantizer2``: nearest codes without the ``N x K`` matrix."""

from __future__ import annotations

import torch
import torch.nn as nn

from .. import _validation as V
from ..ops.codebook_argmin import PRECISIONS, code_norms, codebook_argmin
from ..reference import quantize as reference
from ._derived import DerivedWeightsMixin, cacheable, derived


# What forward and the index remapping read from a quantizer, under taming's names.
REQUIRED_ATTRIBUTES = ("embedding", "n_e", "e_dim", "beta", "legacy", "remap", "sane_index_shape", "re_embed")


class VectorQuantizer(DerivedWeightsMixin, reference.VectorQuantizer):
    r"""Replace each latent vector by its nearest codebook entry, as taming's ``VectorQuantizer2``.

    Same arguments, ``state_dict`` (``embedding.weight``, plus ``used`` with ``remap``), outputs,
    loss and straight-through gradient as :class:`vqvae_fast.reference.VectorQuantizer`; the
    nearest codes come from :func:`vqvae_fast.codebook_argmin` (no ``(N, K)`` distance matrix),
    the codes are gathered once, and ``remap`` uses an ``n_e``-entry lookup table instead of a
    ``(B, L, len(used))`` comparison. The codebook norms are cached while the codebook is
    unchanged (on a GPU only where caching applies: not under autograd or ``torch.compile``). Nothing in the forward synchronises with the device (no boolean masks, no
    ``.item()``), so it can be captured in a CUDA graph.

    For ``z`` of shape ``(B, e_dim, H, W)``: ``i = argmin_k ||z - e_k||^2`` per position,
    ``z_q = e_i`` and

    .. math::
        \mathcal{L} = \lVert \mathrm{sg}(z_q) - z \rVert^2 + \beta \lVert z_q - \mathrm{sg}(z) \rVert^2
        \quad (\texttt{legacy=True}),

    weights swapped for ``legacy=False``; the output is ``z + sg(z_q - z)``.

    Args:
        n_e, e_dim, beta, remap, unknown_index, sane_index_shape, legacy: as the reference.
        precision: ``"ieee"`` or ``"fast"``, passed to :func:`vqvae_fast.codebook_argmin`
            (see there for what each guarantees).
        compute_usage: also return the codebook perplexity
            ``exp(-sum_k p_k log(p_k + 1e-10))`` with ``p_k`` the fraction of positions using
            code ``k`` (counted with a scatter-add, never a one-hot ``(N, K)`` matrix), and keep
            the per-code counts of the last forward in ``code_counts`` (int64 ``(n_e,)``).

    Shape:
        - ``z``: ``(B, e_dim, H, W)``, NCHW or channels_last (the output keeps the format).
        - returns ``(z_q, loss, (perplexity, None, indices))``: ``perplexity`` is ``None``
          unless ``compute_usage``; ``indices`` as the reference (``(B*H*W,)``, ``(B, H, W)``
          with ``sane_index_shape``, ``(B*H*W, 1)`` with ``remap``).

    Example::

        >>> vq = VectorQuantizer(1024, 64, beta=0.25, compute_usage=True)
        >>> z_q, loss, (perplexity, _, indices) = vq(torch.randn(2, 64, 16, 16))
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
        *,
        precision: str = "ieee",
        compute_usage: bool = False,
    ):
        super().__init__(n_e, e_dim, beta=beta, remap=remap, unknown_index=unknown_index,
                         sane_index_shape=sane_index_shape, legacy=legacy)
        self._set_options(precision, compute_usage)

    def _set_options(self, precision: str, compute_usage: bool) -> None:
        V.check_choice("precision", precision, PRECISIONS)
        if not isinstance(compute_usage, bool):
            raise TypeError(f"compute_usage must be a bool, got {type(compute_usage).__name__}")
        self.precision = precision
        self.compute_usage = compute_usage
        self.code_counts: torch.Tensor | None = None

    @classmethod
    def from_reference(
        cls, quantizer: nn.Module, *, precision: str = "ieee", compute_usage: bool = False
    ) -> "VectorQuantizer":
        """A fast quantizer sharing ``quantizer``'s embedding (same Parameter) and buffers.

        ``quantizer`` is a reference quantizer or any module with taming ``VectorQuantizer2``'s
        attributes (taming's own, LDM's or CogView's copies). Nothing is copied: training either
        module trains both, and their state_dicts have the same keys and tensors.
        """
        if not isinstance(quantizer, nn.Module):
            raise TypeError(f"quantizer must be an nn.Module, got {type(quantizer).__name__}")
        missing = [a for a in REQUIRED_ATTRIBUTES if not hasattr(quantizer, a)]
        if missing or not isinstance(quantizer.embedding, nn.Embedding):
            raise ValueError(
                f"quantizer must have taming VectorQuantizer2's attributes (an nn.Embedding "
                f"'embedding', {', '.join(REQUIRED_ATTRIBUTES[1:])}); missing: {missing or ['embedding']}"
            )
        fast = cls.__new__(cls)
        nn.Module.__init__(fast)
        for name, value in vars(quantizer).items():  # plain attributes: n_e, beta, remap, training...
            if not name.startswith("_"):
                fast.__dict__[name] = value
        for name, param in quantizer._parameters.items():
            fast.register_parameter(name, param)
        for name, buffer in quantizer._buffers.items():
            fast.register_buffer(name, buffer, persistent=name not in quantizer._non_persistent_buffers_set)
        for name, module in quantizer._modules.items():
            fast.add_module(name, module)  # the embedding module itself: same Parameter
        fast._set_options(precision, compute_usage)
        return fast

    # -- index remapping --------------------------------------------------------------------

    def remap_to_used(self, inds: torch.Tensor) -> torch.Tensor:
        """Code indices ``(B, ...)`` to positions in ``used`` (first occurrence), via a lookup table.

        Unknown codes get ``unknown_index``, or with ``"random"`` a uniform draw from
        ``[0, re_embed)``: one draw per position, the ``j``-th unknown position taking the
        ``j``-th draw (on CPU the very numbers the reference draws), without reading the count of
        unknown codes back to the host."""
        ishape = inds.shape
        inds = inds.reshape(ishape[0], -1)  # (B, L)
        table = derived(self, "remap_table", lambda used: _remap_table(used, self.n_e), self.used)
        table = table.to(inds)  # (n_e,) code -> position in used
        known_code = (inds >= 0) & (inds < self.n_e)
        new = torch.where(known_code, table[inds.clamp(0, self.n_e - 1)], -1)
        unknown = new < 0
        if self.unknown_index == "random":
            flat_unknown = unknown.reshape(-1)
            draws = torch.randint(0, self.re_embed, flat_unknown.shape, device=new.device, dtype=new.dtype)
            rank = (flat_unknown.cumsum(0) - 1).clamp_(min=0)  # j for the j-th unknown position
            new = torch.where(unknown, draws[rank].view(new.shape), new)
        else:
            new = torch.where(unknown, self.unknown_index, new)
        return new.reshape(ishape)

    def unmap_to_all(self, inds: torch.Tensor) -> torch.Tensor:
        """Positions in ``used`` ``(B, ...)`` back to code indices; the extra index maps to code 0's slot."""
        ishape = inds.shape
        inds = inds.reshape(ishape[0], -1)  # (B, L)
        used = self.used.to(inds)
        if self.re_embed > self.used.shape[0]:  # the "extra" unknown index
            inds = torch.where(inds >= self.used.shape[0], 0, inds)
        return used[inds].reshape(ishape)

    # -- forward ----------------------------------------------------------------------------

    def nearest_codes(self, z: torch.Tensor) -> torch.Tensor:
        """Indices ``(B, H, W)`` of the nearest codes of ``z`` ``(B, e_dim, H, W)``, read in place."""
        codebook = self.embedding.weight.detach()
        norms = None
        if codebook.device.type == "cpu" or cacheable(codebook):  # on a GPU only worth it when cached
            norms = derived(self, "code_norms", code_norms, codebook)
        return codebook_argmin(z.detach(), codebook, precision=self.precision, code_norms=norms)

    def usage(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(perplexity, counts)`` of code indices (any shape): counts by scatter-add, no one-hot."""
        flat = indices.reshape(-1)
        counts = torch.zeros(self.n_e, dtype=torch.int64, device=flat.device)
        counts.scatter_add_(0, flat, torch.ones_like(flat))  # static shape, unlike bincount
        probs = counts.to(torch.float32) / max(flat.numel(), 1)
        perplexity = torch.exp(-torch.sum(probs * torch.log(probs + 1e-10)))
        return perplexity, counts

    def forward(self, z: torch.Tensor, temp=None, rescale_logits: bool = False, return_logits: bool = False):
        if temp not in (None, 1.0) or rescale_logits or return_logits:
            raise ValueError(
                "temp, rescale_logits and return_logits exist only for interface compatibility "
                "with the Gumbel quantizer and must keep their defaults"
            )
        self.check_input(z)
        indices = self.nearest_codes(z)  # (B, H, W)
        z_q = self.embedding(indices).permute(0, 3, 1, 2)  # (B, H, W, D) viewed as (B, D, H, W)
        loss = self.codebook_loss(z_q, z)
        # straight-through estimator; elementwise ops follow z's memory format (no permute copy)
        z_q = z + (z_q - z).detach()
        channels_last = z.is_contiguous(memory_format=torch.channels_last) and not z.is_contiguous()
        z_q = z_q.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)

        perplexity = None
        if self.compute_usage:
            with torch.no_grad():
                perplexity, self.code_counts = self.usage(indices)

        if self.remap is not None:
            indices = self.remap_to_used(indices.reshape(z.shape[0], -1)).reshape(-1, 1)
        if self.sane_index_shape:
            indices = indices.reshape(z.shape[0], z.shape[2], z.shape[3])
        elif self.remap is None:
            indices = indices.reshape(-1)
        return z_q, loss, (perplexity, None, indices)


def _remap_table(used: torch.Tensor, n_e: int) -> torch.Tensor:
    """``(n_e,)`` int64: ``table[code]`` is the first position of ``code`` in ``used``, -1 where
    absent. Entries of ``used`` outside ``[0, n_e)`` land in a spare slot that is cut off."""
    count = used.shape[0]
    slots = torch.where((used >= 0) & (used < n_e), used, n_e).long()
    table = torch.full((n_e + 1,), count, dtype=torch.int64, device=used.device)  # count: "absent"
    positions = torch.arange(count, dtype=torch.int64, device=used.device)
    table.scatter_reduce_(0, slots, positions, reduce="amin", include_self=True)
    return torch.where(table[:n_e] == count, -1, table[:n_e])


VectorQuantizer2 = VectorQuantizer
