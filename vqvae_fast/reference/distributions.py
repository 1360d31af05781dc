"""Diagonal Gaussian posterior of the KL autoencoder (``double_z=True``), as in LDM."""

from __future__ import annotations

import math

import torch

LOGVAR_RANGE = (-30.0, 20.0)  # clamp of the log-variance, as LDM


class DiagonalGaussianDistribution:
    r"""``N(mean, diag(exp(logvar)))`` from ``parameters = cat([mean, logvar], dim=1)``.

    Shapes: ``parameters`` ``(B, 2C, H, W)``; ``mean``, ``logvar``, ``std``, ``var`` and samples
    ``(B, C, H, W)``; ``kl()`` and ``nll()`` ``(B,)`` (sums over ``C, H, W``).
    ``deterministic=True`` makes the distribution a point mass at ``mean``.
    """

    def __init__(self, parameters: torch.Tensor, deterministic: bool = False):
        if parameters.dim() < 2 or parameters.shape[1] % 2:
            raise ValueError(
                f"parameters must have an even number of channels (mean and logvar), got shape {tuple(parameters.shape)}"
            )
        self.parameters = parameters
        self.mean, self.logvar = torch.chunk(parameters, 2, dim=1)
        self.logvar = torch.clamp(self.logvar, *LOGVAR_RANGE)
        self.deterministic = deterministic
        self.std = torch.exp(0.5 * self.logvar)
        self.var = torch.exp(self.logvar)
        if deterministic:
            self.var = self.std = torch.zeros_like(self.mean)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """``mean + std * eps`` with ``eps ~ N(0, I)`` (reparameterised: differentiable)."""
        eps = torch.randn(self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype)
        return self.mean + self.std * eps

    def mode(self) -> torch.Tensor:
        return self.mean

    def kl(self, other: "DiagonalGaussianDistribution | None" = None) -> torch.Tensor:
        r"""``KL(self || other)`` summed over ``C, H, W``; ``other`` defaults to ``N(0, I)``."""
        if self.deterministic:
            return torch.zeros(self.mean.shape[0], device=self.mean.device, dtype=self.mean.dtype)
        dims = list(range(1, self.mean.dim()))
        if other is None:
            return 0.5 * torch.sum(self.mean.pow(2) + self.var - 1.0 - self.logvar, dim=dims)
        return 0.5 * torch.sum(
            (self.mean - other.mean).pow(2) / other.var + self.var / other.var - 1.0 - self.logvar + other.logvar,
            dim=dims,
        )

    def nll(self, sample: torch.Tensor, dims=(1, 2, 3)) -> torch.Tensor:
        r"""Negative log-likelihood of ``sample``, summed over ``dims``."""
        if self.deterministic:
            return torch.zeros(self.mean.shape[0], device=self.mean.device, dtype=self.mean.dtype)
        log_two_pi = math.log(2.0 * math.pi)
        return 0.5 * torch.sum(log_two_pi + self.logvar + (sample - self.mean).pow(2) / self.var, dim=list(dims))
