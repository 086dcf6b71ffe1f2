"""DDPM ancestral sampling and DDIM, written in sigma-space over any schedule that ends in 0.

With alpha_bar = 1 / (1 + sigma^2) a VP state is x_vp = x / sqrt(1 + sigma^2), so each VP update below is
converted exactly; consecutive schedule entries play the role of (t, t-1), skipped steps included.
"""

from __future__ import annotations

import math

import torch

from ..errors import ScorelabError
from ..vp import _posterior
from .common import Callback, denoise, randn_like, steps


def _ab(sigma: float) -> float:
    return 1.0 / (1.0 + sigma * sigma)


@torch.no_grad()
def ddim(
    denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    eta: float = 0.0,
    cond=None,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """DDIM (Song et al. 2021, eq. 12): x_s = sqrt(ab_s) x0 + sqrt(1 - ab_s - c^2) eps + c z with
    c^2 = eta^2 (1 - ab_s)/(1 - ab_t) (1 - ab_t/ab_s) (eq. 16). In sigma-space:
    x_s = x0 + sqrt(sigma_s^2 - c^2/ab_s) eps + (c / sqrt(ab_s)) z. eta = 0 is deterministic (and equals Euler on
    the probability-flow ODE in sigma); eta = 1 is DDPM ancestral with the fixed-small variance. In sigma-space
    (c / sqrt(ab_s))^2 = sigma_s^2 (sigma_t^2 - sigma_s^2) / sigma_t^2, k-diffusion's sigma_up, so eta = 1 is also
    its Euler ancestral step."""
    if not 0 <= eta <= 1:  # above 1 the noise added would exceed the next noise level
        raise ScorelabError(f"eta must be in [0, 1], got {eta}")
    for i, (s, s_next) in steps(sigmas, "ddim", progress):
        d = denoise(denoiser, x, s, cond)
        a, a_next = _ab(s), _ab(s_next)
        c2 = eta**2 * (1 - a_next) / (1 - a) * (1 - a / a_next)
        up = math.sqrt(c2 / a_next)
        down = math.sqrt(max(s_next**2 - up**2, 0.0))
        x = torch.lerp(x, d.to(x.dtype), 1 - down / s)  # d + down * eps with eps = (x - d) / s, in one pass
        if up > 0:
            x = x + up * randn_like(x, generator)
        if callback is not None:
            callback(i, x, d)
    return x


def check_variance(variance: str) -> str:
    if variance not in ("small", "large"):
        raise ScorelabError(f"variance must be 'small' or 'large', got {variance!r}")
    return variance


def ddpm_step(denoiser, x, s: float, s_next: float, cond, generator, variance: str = "small"):
    """One DDPM ancestral step from sigma s to s_next < s: (x_next, the denoiser's output at s). To s_next = 0 it adds
    no noise (Algorithm 2, z = 0 at t = 1)."""
    d = denoise(denoiser, x, s, cond)
    a, a_next = _ab(s), _ab(s_next)
    c_x0, c_xt, var_small, var_large = (
        float(v) for v in _posterior(torch.tensor(a, dtype=torch.float64), torch.tensor(a_next, dtype=torch.float64))
    )
    x_vp = c_x0 * d + c_xt * (x * math.sqrt(a))
    if s_next > 0:
        var = var_small if variance == "small" else var_large
        x_vp = x_vp + math.sqrt(var) * randn_like(x, generator)
    return x_vp / math.sqrt(a_next), d


@torch.no_grad()
def ddpm(
    denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    variance: str = "small",
    cond=None,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """DDPM ancestral sampling (Ho et al. 2020, Algorithm 2): x_s ~ N(mu~(x_t, x0_hat), var) with the fixed-small
    (beta~) or fixed-large (beta) variance; the last step, to sigma = 0, adds no noise (Algorithm 2, z = 0 at t = 1)."""
    check_variance(variance)
    for i, (s, s_next) in steps(sigmas, "ddpm", progress):
        x, d = ddpm_step(denoiser, x, s, s_next, cond, generator, variance)
        if callback is not None:
            callback(i, x, d)
    return x
