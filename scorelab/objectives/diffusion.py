"""Diffusion training losses over a discrete DDPM schedule, for any Denoiser in sigma-space."""

from __future__ import annotations

import math

import torch

from ..denoisers import Denoiser, expand_sigma
from ..errors import ScorelabError
from ..schedules import check_alpha_bar, sigma_from_alpha_bar
from .score_matching import _check_x

WEIGHTINGS = ("eps", "x0", "v", "min_snr")


def snr_weight(sigma: torch.Tensor, weighting: str, gamma: float = 5.0) -> torch.Tensor:
    """Weight on the eps-MSE that gives each loss; SNR = alpha_bar / (1 - alpha_bar) = 1 / sigma^2.

    eps: 1 (Ho et al. 2020, L_simple eq. 14);  x0: 1/SNR since x0 - x0_hat = -sigma (eps - eps_hat);
    v: 1 + 1/SNR since v - v_hat = sqrt(1 + sigma^2) (eps - eps_hat) (Salimans & Ho 2022, eq. 10);
    min_snr: min(SNR, gamma) / SNR (Hang et al. 2023, 'Min-SNR weighting', eq. 8 for eps-prediction).
    """
    if weighting == "min_snr" and not 0 < gamma < math.inf:  # gamma <= 0 zeroes or flips every weight
        raise ScorelabError(f"gamma (min_snr's SNR cap) must be a finite number > 0, got {gamma}")
    snr = sigma.to(torch.float64) ** -2
    if weighting == "eps":
        w = torch.ones_like(snr)
    elif weighting == "x0":
        w = 1 / snr
    elif weighting == "v":
        w = 1 + 1 / snr
    elif weighting == "min_snr":
        w = snr.clamp(max=gamma) / snr
    else:
        raise ScorelabError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
    return w.to(sigma.dtype)


def ddpm_loss(
    denoiser: Denoiser,
    x0: torch.Tensor,
    alpha_bar: torch.Tensor,
    *,
    weighting: str = "eps",
    gamma: float = 5.0,
    cond=None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """E_{t ~ U{1..T}, eps} w(t) ||eps - eps_hat(x_t, t)||^2 / dim (Ho et al. 2020, Algorithm 1).

    The Denoiser sees the sigma-space state x0 + sigma_t eps; its eps-prediction is (x - D) / sigma_t. w is
    snr_weight(sigma_t, weighting, gamma); gamma is min_snr's cap.
    """
    _check_x(x0, "x0")
    alpha_bar = check_alpha_bar(alpha_bar)
    b = x0.shape[0]
    t = torch.randint(0, alpha_bar.shape[0], (b,), generator=generator)
    sigma = sigma_from_alpha_bar(alpha_bar[t]).to(x0.device, x0.dtype)
    eps = torch.randn(x0.shape, generator=generator, dtype=torch.float32).to(x0.device, x0.dtype)
    s = expand_sigma(sigma, x0)
    x = x0 + s * eps
    eps_hat = (x - denoiser(x, sigma, cond)) / s
    per_sample = ((eps_hat - eps) ** 2).flatten(1).mean(1)
    return (snr_weight(sigma, weighting, gamma) * per_sample).mean()
