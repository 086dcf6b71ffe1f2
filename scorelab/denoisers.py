"""The one interface: a Denoiser D(x, sigma, cond=None) -> E[x0 | x = x0 + sigma * noise].

Every conversion between a denoiser, a score and a noise prediction lives here, and so does the
single preconditioning wrapper that turns any network into a Denoiser.
"""

from __future__ import annotations

import math
from typing import Protocol

import torch
from torch import nn

from .errors import ScorelabError


class Denoiser(Protocol):
    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, cond=None) -> torch.Tensor: ...


def expand_sigma(sigma: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
    """Broadcast a scalar or per-sample sigma of shape (B,) to x's shape (B, 1, ..., 1)."""
    sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
    if sigma.ndim == 0:
        sigma = sigma.expand(x.shape[0])
    if sigma.shape != (x.shape[0],):
        raise ScorelabError(f"sigma must be a scalar or have shape ({x.shape[0]},), got {tuple(sigma.shape)}")
    return sigma.reshape(-1, *([1] * (x.ndim - 1)))


def score_from_denoised(x: torch.Tensor, denoised: torch.Tensor, sigma) -> torch.Tensor:
    # Tweedie's formula (Efron 2011, eq. 1.4): grad log p_sigma(x) = (E[x0|x] - x) / sigma^2
    s = expand_sigma(sigma, x)
    return (denoised - x) / s**2


def eps_from_denoised(x: torch.Tensor, denoised: torch.Tensor, sigma) -> torch.Tensor:
    # x = x0 + sigma * eps  =>  eps_hat = (x - D) / sigma
    return (x - denoised) / expand_sigma(sigma, x)


def denoised_from_score(x: torch.Tensor, score: torch.Tensor, sigma) -> torch.Tensor:
    # inverse of Tweedie's formula: D = x + sigma^2 * score
    return x + expand_sigma(sigma, x) ** 2 * score


def denoised_from_eps(x: torch.Tensor, eps: torch.Tensor, sigma) -> torch.Tensor:
    return x - expand_sigma(sigma, x) * eps


PARAMETERISATIONS = ("eps", "x0", "v", "edm")


class Preconditioned(nn.Module):
    """D(x, sigma) = c_skip * x + c_out * F(c_in * x, c_noise), Karras et al. 2022 (EDM) eq. 7.

    parameterisation:
      - 'eps': F predicts the noise (NCSN's s = -F/sigma, Song & Ermon 2020 technique 3):
               c_skip = 1, c_out = -sigma.
      - 'x0':  F predicts x0: c_skip = 0, c_out = 1.
      - 'v':   F predicts v = alpha eps - sigma_vp x0 (Salimans & Ho 2022, sec. 4) generalised to sigma_data:
               c_skip = sd^2/(s^2+sd^2), c_out = -s*sd/sqrt(s^2+sd^2) (with sd = 1 exactly the VP v-network).
      - 'edm': EDM Table 1: c_skip = sd^2/(s^2+sd^2), c_out = s*sd/sqrt(s^2+sd^2).
    All use c_in = 1/sqrt(sigma^2 + sigma_data^2) and c_noise = ln(sigma)/4 (EDM Table 1). With sigma_data = 1,
    c_in * x is exactly the DDPM state x_t = sqrt(alpha_bar) x0 + sqrt(1 - alpha_bar) eps, so 'eps' with
    sigma_data = 1 is Ho et al.'s eps-network and 'v' the v-network.
    The network is called as F(x_in, c_noise, cond).
    """

    def __init__(self, net: nn.Module, parameterisation: str = "edm", sigma_data: float = 0.5):
        super().__init__()
        if parameterisation not in PARAMETERISATIONS:
            raise ScorelabError(f"parameterisation must be one of {PARAMETERISATIONS}, got {parameterisation!r}")
        if not 0 < float(sigma_data) < math.inf:  # 0 makes 'edm' and 'v' output 0, a negative one flips c_out
            raise ScorelabError(
                f"sigma_data must be a finite number > 0 (the data standard deviation), got {sigma_data}"
            )
        self.net = net
        self.parameterisation = parameterisation
        self.sigma_data = float(sigma_data)

    def coefficients(self, sigma: torch.Tensor):
        sd = self.sigma_data
        c_in = 1.0 / torch.sqrt(sigma**2 + sd**2)
        if self.parameterisation == "eps":
            c_skip, c_out = torch.ones_like(sigma), -sigma
        elif self.parameterisation == "x0":
            c_skip, c_out = torch.zeros_like(sigma), torch.ones_like(sigma)
        elif self.parameterisation == "v":
            c_skip = sd**2 / (sigma**2 + sd**2)
            c_out = -sigma * sd / torch.sqrt(sigma**2 + sd**2)
        else:
            c_skip = sd**2 / (sigma**2 + sd**2)
            c_out = sigma * sd / torch.sqrt(sigma**2 + sd**2)
        return c_skip, c_out, c_in

    def forward(self, x: torch.Tensor, sigma, cond=None) -> torch.Tensor:
        s = expand_sigma(sigma, x)
        clean = s == 0  # no noise: D(x, 0) = x, where log(0) would make c_noise -inf and the output NaN
        s = torch.where(clean, torch.finfo(s.dtype).tiny, s)
        c_skip, c_out, c_in = self.coefficients(s)
        c_noise = torch.log(s.reshape(-1)) / 4
        out = c_skip * x + c_out * self.net(c_in * x, c_noise, cond)
        return torch.where(clean, x, out)
