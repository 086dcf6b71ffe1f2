"""Guidance and output constraints as wrappers: a Denoiser in, a Denoiser out, so every sampler works unchanged.

Because samplers only ever consume D(x, sigma), a wrapper that changes D also changes the implied noise
eps = (x - D) / sigma and score consistently: clipping x0_hat can never leave a stale, unclipped eps behind.
"""

from __future__ import annotations

import math

import torch

from .denoisers import Denoiser, expand_sigma
from .errors import ScorelabError


class ClassifierFreeGuidance:
    """D = D_u + scale * (D_c - D_u) (Ho & Salimans 2022, eq. 6, written on denoisers).

    Convention: scale = 1 is the plain conditional model, scale = 0 the unconditional one, scale > 1 guides.
    (Ho & Salimans write (1 + w) eps_c - w eps_u, so their w is scale - 1.) The conditional and unconditional
    passes go through the network as one batch of 2B. `null_cond` is what the network was trained with when the
    condition was dropped (for scorelab's U-Net, label -1).
    """

    def __init__(self, denoiser: Denoiser, scale: float, null_cond):
        try:
            value = math.nan if isinstance(scale, str) else float(scale)
        except (TypeError, ValueError, RuntimeError):  # None, a tensor of several scales, ...
            value = math.nan
        if not math.isfinite(value) or value < 0:
            raise ScorelabError(f"guidance scale must be finite and >= 0 (one number), got {scale!r}")
        if null_cond is None:
            raise ScorelabError(
                "null_cond must be the condition the network was trained with for 'no condition' "
                "(label -1 for scorelab's U-Net), got None"
            )
        self.denoiser, self.scale, self.null_cond = denoiser, value, null_cond

    def _null_like(self, cond):
        null = torch.as_tensor(self.null_cond, device=cond.device, dtype=cond.dtype)
        return null.expand_as(cond)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, cond=None) -> torch.Tensor:
        if cond is None:
            raise ScorelabError("classifier-free guidance needs a condition")
        if not isinstance(cond, torch.Tensor) or cond.ndim == 0 or cond.shape[0] != x.shape[0]:
            got = tuple(cond.shape) if isinstance(cond, torch.Tensor) else type(cond).__name__
            raise ScorelabError(
                f"classifier-free guidance needs cond as a tensor with one entry per sample "
                f"(labels ({x.shape[0]},) or a context ({x.shape[0]}, L, C)), got {got}"
            )
        if self.scale == 1.0:
            return self.denoiser(x, sigma, cond)
        null = self._null_like(cond)
        if self.scale == 0.0:
            return self.denoiser(x, sigma, null)
        sigma = expand_sigma(sigma, x).reshape(-1)  # a scalar sigma is allowed, as for any Denoiser
        both = self.denoiser(torch.cat([x, x]), torch.cat([sigma, sigma]), torch.cat([cond, null]))
        d_c, d_u = both.chunk(2)
        return d_u + self.scale * (d_c - d_u)


class Clamped:
    """x0_hat clamped to [low, high] (the data range), e.g. [-1, 1] for images."""

    def __init__(self, denoiser: Denoiser, low: float = -1.0, high: float = 1.0):
        if not (torch.as_tensor(low) < torch.as_tensor(high)).all():  # low > high would clamp everything to high
            raise ScorelabError(f"Clamped needs low < high, got low={low}, high={high}")
        self.denoiser, self.low, self.high = denoiser, low, high

    def __call__(self, x, sigma, cond=None):
        return self.denoiser(x, sigma, cond).clamp(self.low, self.high)


class DynamicThreshold:
    """Dynamic thresholding (Saharia et al. 2022, 'Imagen', sec. 2.3): per sample, s = max(1, the `percentile`
    quantile of |x0_hat|); x0_hat <- clamp(x0_hat, -s, s) / s."""

    def __init__(self, denoiser: Denoiser, percentile: float = 0.995):
        if not 0 < percentile <= 1:
            raise ScorelabError(f"percentile must be in (0, 1], got {percentile}")
        self.denoiser, self.percentile = denoiser, percentile

    def __call__(self, x, sigma, cond=None):
        d = self.denoiser(x, sigma, cond)
        s = torch.quantile(d.flatten(1).abs().float(), self.percentile, dim=1).clamp(min=1.0).to(d.dtype)
        s = s.reshape(-1, *([1] * (d.ndim - 1)))
        return d.clamp(-s, s) / s
