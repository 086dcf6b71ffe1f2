"""The DDPM variational bound L = L_T + sum_{t>1} L_{t-1} + L_0 (Ho et al. 2020, eq. 5) for any sigma-space Denoiser.

Reverse step p(x_{t-1} | x_t) = N(mu~(x_t, x0_hat), var_t) with x0_hat = D(x_t / sqrt(ab_t), sigma_t) and var_t
fixed-large (beta_t) or fixed-small (beta~_t) (Ho et al. 2020, sec. 3.2). The decoder L_0 = -log p(x0 | x1) uses
mean x0_hat and variance beta_1 for both variance choices (beta~_1 = 0; the public code of Ho et al. and of Nichol &
Dhariwal takes the log-variance beta~_2 there instead, so bits/dim are not exactly comparable with theirs), either
discretised onto `levels` evenly spaced values in [-1, 1] (eq. 13) or a continuous Gaussian density. All terms are
in nats per sample (summed over dimensions), computed in float64.
"""

from __future__ import annotations

import math
import numbers

import torch
from tqdm.auto import tqdm

from ..denoisers import Denoiser
from ..errors import ScorelabError
from ..schedules import check_alpha_bar, sigma_from_alpha_bar
from ..vp import _posterior, q_sample
from .score_matching import _check_x

VARIANCES = ("large", "small")
DECODERS = ("discretized", "gaussian")


def normal_kl(mean1, var1, mean2, var2) -> torch.Tensor:
    """KL(N(mean1, var1) || N(mean2, var2)) elementwise: 0.5 (log(var2/var1) + (var1 + (m1 - m2)^2) / var2 - 1), the
    closed form for univariate Gaussians (Kullback 1959; the form Ho et al. 2020 use for every L_{t-1})."""
    return 0.5 * (torch.log(var2 / var1) + (var1 + (mean1 - mean2) ** 2) / var2 - 1)


def _log1mexp(a: torch.Tensor) -> torch.Tensor:
    # log(1 - exp(a)) for a < 0, stable on both sides of -ln 2 (Maechler 2012); each branch sees only arguments
    # it is finite on, so that torch.where's unselected branch cannot put inf * 0 = NaN into the gradient; a bin
    # whose mass underflows (a = 0) gets log(tiny) rather than -inf
    a = a.clamp(max=-torch.finfo(a.dtype).tiny)
    near = a > -math.log(2)
    return torch.where(near, torch.log(-torch.expm1(torch.where(near, a, -1.0))), torch.log1p(-torch.exp(a)))


def discretized_gaussian_log_likelihood(x, mean, var, levels: int) -> torch.Tensor:
    """log P(x) for x on `levels` evenly spaced values in [-1, 1]: the N(mean, var) mass of x's bin, with the
    outermost bins extended to +-infinity (Ho et al. 2020, eq. 13). Elementwise."""
    half = 1.0 / (levels - 1)
    std = var.sqrt()
    lo, hi = (x - half - mean) / std, (x + half - mean) / std
    log_cdf_hi, log_cdf_lo = torch.special.log_ndtr(hi), torch.special.log_ndtr(lo)
    log_sf_lo, log_sf_hi = torch.special.log_ndtr(-lo), torch.special.log_ndtr(-hi)
    # log(Phi(hi) - Phi(lo)), written with survival functions when both are near 1
    # (the branch not taken gets a harmless argument: where's unselected branch still reaches the gradient)
    upper = lo > 0
    mid = torch.where(
        upper,
        log_sf_lo + _log1mexp(torch.where(upper, log_sf_hi - log_sf_lo, -1.0)),
        log_cdf_hi + _log1mexp(torch.where(upper, -1.0, log_cdf_lo - log_cdf_hi)),
    )
    edge = 1 - half / 2
    return torch.where(x < -edge, log_cdf_hi, torch.where(x > edge, log_sf_lo, mid))


def gaussian_log_density(x, mean, var) -> torch.Tensor:
    """log N(x; mean, var) elementwise: -0.5 (log(2 pi var) + (x - mean)^2 / var)."""
    return -0.5 * (torch.log(2 * math.pi * var) + (x - mean) ** 2 / var)


class VariationalBound:
    """Terms of the DDPM bound over a schedule alpha_bar (T,), alpha_bar[i] at t = i + 1."""

    def __init__(self, alpha_bar: torch.Tensor, *, variance="large", decoder="discretized", levels: int = 256):
        if variance not in VARIANCES:
            raise ScorelabError(f"variance must be one of {VARIANCES}, got {variance!r}")
        if decoder not in DECODERS:
            raise ScorelabError(f"decoder must be one of {DECODERS}, got {decoder!r}")
        if isinstance(levels, bool) or not isinstance(levels, numbers.Integral) or levels < 2:
            raise ScorelabError(f"levels must be an integer >= 2, got {levels!r}")
        self.alpha_bar = check_alpha_bar(alpha_bar).to(torch.float64)
        self.variance, self.decoder, self.levels = variance, decoder, levels

    @property
    def T(self) -> int:
        return self.alpha_bar.shape[0]

    def prior_term(self, x0: torch.Tensor) -> torch.Tensor:
        """L_T = KL(q(x_T | x0) || N(0, I)), per sample."""
        _check_x(x0, "x0")
        ab = self.alpha_bar[-1]
        x0 = x0.to(torch.float64)
        kl = normal_kl(ab.sqrt() * x0, 1 - ab, torch.zeros_like(x0), torch.ones_like(x0))
        return kl.flatten(1).sum(1)

    def _denoise(self, denoiser: Denoiser, x_vp: torch.Tensor, i: int, dtype, cond) -> torch.Tensor:
        ab = self.alpha_bar[i]
        sigma = sigma_from_alpha_bar(ab)
        x = (x_vp / ab.sqrt()).to(dtype)
        sig = torch.full((x.shape[0],), float(sigma), dtype=dtype, device=x.device)
        return denoiser(x, sig, cond).to(torch.float64)

    def term(self, denoiser: Denoiser, x0: torch.Tensor, i: int, noise: torch.Tensor, cond=None) -> torch.Tensor:
        """L_{t-1} for t = i + 1 at x_t = q_sample(x0, noise), per sample; i = 0 is the decoder term L_0."""
        _check_x(x0, "x0")
        if i == 0 and self.decoder == "discretized" and not ((x0 >= -1) & (x0 <= 1)).all():
            raise ScorelabError(
                f"x0 must lie in [-1, 1] for the discretized decoder ({self.levels} levels from -1 to 1), "
                f"got values in [{x0.min().item():.4g}, {x0.max().item():.4g}]; rescale it or use decoder='gaussian'"
            )
        x0_64 = x0.to(torch.float64)
        ab_t = self.alpha_bar[i]
        x_vp = q_sample(x0_64, ab_t, noise.to(torch.float64))
        x0_hat = self._denoise(denoiser, x_vp, i, x0.dtype, cond)
        if i == 0:
            var = 1 - ab_t  # beta_1
            if self.decoder == "discretized":
                ll = discretized_gaussian_log_likelihood(x0_64, x0_hat, var, self.levels)
            else:
                ll = gaussian_log_density(x0_64, x0_hat, var)
            return -ll.flatten(1).sum(1)
        c_x0, c_xt, var_small, var_large = _posterior(ab_t, self.alpha_bar[i - 1])
        var_p = var_large if self.variance == "large" else var_small
        # KL(q(x_{t-1}|x_t,x0) || p(x_{t-1}|x_t)): the means differ by c_x0 (x0 - x0_hat) (Ho et al. 2020, eq. 8)
        kl = normal_kl(c_x0 * x0_64 + c_xt * x_vp, var_small, c_x0 * x0_hat + c_xt * x_vp, var_p)
        return kl.flatten(1).sum(1)

    @torch.no_grad()
    def per_sample(
        self, denoiser: Denoiser, x0: torch.Tensor, *, cond=None, generator=None, progress=False
    ) -> torch.Tensor:
        """The whole bound for each sample (nats), every term evaluated at one draw of x_t."""
        total = self.prior_term(x0)
        for i in tqdm(range(self.T), desc="bound", disable=not progress, leave=False):
            noise = torch.randn(x0.shape, generator=generator, dtype=torch.float32).to(x0.device)
            total = total + self.term(denoiser, x0, i, noise, cond)
        return total

    def bits_per_dim(self, denoiser: Denoiser, x0: torch.Tensor, **kwargs) -> torch.Tensor:
        """Mean bound over the batch in bits per dimension: nats / (D ln 2)."""
        total = self.per_sample(denoiser, x0, **kwargs)  # checks x0 first
        return total.mean() / (x0[0].numel() * math.log(2))
