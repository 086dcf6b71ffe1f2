"""Noise schedules as materialised tensors (float64 maths, cast at the end)."""

from __future__ import annotations

import math
import numbers

import numpy as np
import torch

from .errors import ScorelabError, show_values


def _check_range(sigma_min, sigma_max) -> None:
    if not (0 < sigma_min < sigma_max < math.inf):
        raise ScorelabError(f"need 0 < sigma_min < sigma_max < inf, got sigma_min={sigma_min}, sigma_max={sigma_max}")


def _check_count(n, least: int, what: str = "n") -> None:
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < least:
        raise ScorelabError(f"need an integer {what} >= {least}, got {n!r}")


def geometric_sigmas(sigma_max: float, sigma_min: float, n: int, *, dtype=torch.float32) -> torch.Tensor:
    """sigma_1 > ... > sigma_L with constant ratio sigma_{i+1}/sigma_i (Song & Ermon 2019, Sec. 4.2)."""
    _check_range(sigma_min, sigma_max)
    _check_count(n, 2, "n (noise levels)")
    s = torch.logspace(
        torch.log10(torch.tensor(sigma_max, dtype=torch.float64)).item(),
        torch.log10(torch.tensor(sigma_min, dtype=torch.float64)).item(),
        n,
        dtype=torch.float64,
    )
    return s.to(dtype)


def append_zero(sigmas: torch.Tensor) -> torch.Tensor:
    """Samplers step over consecutive pairs of a schedule that ends in 0."""
    sigmas = torch.as_tensor(sigmas)
    return torch.cat([sigmas, sigmas.new_zeros(1)])


# --- VP / DDPM schedules (materialised; maths in float64) ---------------------------------------------------------

BETA_SCHEDULES = ("linear", "scaled_linear", "cosine")
SPACINGS = ("leading", "trailing", "linspace")


def beta_schedule(
    name: str, T: int = 1000, *, beta_start: float | None = None, beta_end: float | None = None
) -> torch.Tensor:
    """beta_1..beta_T (float64).

    linear: Ho et al. 2020 sec. 4, 1e-4 .. 0.02.  scaled_linear: linear in sqrt(beta) (Stable Diffusion,
    0.00085 .. 0.012).  cosine: Nichol & Dhariwal 2021 eq. 17 with s = 0.008, beta capped at 0.999.
    """
    _check_count(T, 1, "T")
    if name == "cosine" and (beta_start is not None or beta_end is not None):
        raise ScorelabError(
            f"beta_start and beta_end set the linear and scaled_linear schedules; cosine takes neither, "
            f"got beta_start={beta_start}, beta_end={beta_end}"
        )
    if name in ("linear", "scaled_linear"):
        default = (1e-4, 0.02) if name == "linear" else (0.00085, 0.012)
        b0 = default[0] if beta_start is None else beta_start
        b1 = default[1] if beta_end is None else beta_end
        if not 0 < b0 <= b1 < 1:
            raise ScorelabError(f"need 0 < beta_start <= beta_end < 1, got {b0}, {b1}")
        if name == "linear":
            return torch.linspace(b0, b1, T, dtype=torch.float64)
        return torch.linspace(b0**0.5, b1**0.5, T, dtype=torch.float64) ** 2
    if name == "cosine":
        s = 0.008
        t = torch.arange(T + 1, dtype=torch.float64) / T
        f = torch.cos((t + s) / (1 + s) * torch.pi / 2) ** 2  # Nichol & Dhariwal 2021 eq. 17
        return (1 - f[1:] / f[:-1]).clamp(max=0.999)
    raise ScorelabError(f"beta schedule must be one of {BETA_SCHEDULES}, got {name!r}")


def alphas_cumprod(betas: torch.Tensor) -> torch.Tensor:
    """alpha_bar_t = prod_{s<=t} (1 - beta_s) (Ho et al. 2020, sec. 2)."""
    return torch.cumprod(1 - betas.to(torch.float64), 0)


def sigma_from_alpha_bar(alpha_bar: torch.Tensor) -> torch.Tensor:
    """VP -> VE: x_vp = sqrt(ab) (x0 + sigma eps) with sigma = sqrt((1 - ab) / ab) (Song et al. 2021, App. B)."""
    ab = torch.as_tensor(alpha_bar, dtype=torch.float64)
    return ((1 - ab) / ab).sqrt()


def alpha_bar_from_sigma(sigma: torch.Tensor) -> torch.Tensor:
    """VE -> VP: alpha_bar = 1 / (1 + sigma^2)."""
    return 1 / (1 + torch.as_tensor(sigma, dtype=torch.float64) ** 2)


def karras_sigmas(sigma_min: float, sigma_max: float, n: int, rho: float = 7.0, *, dtype=torch.float32):
    """n sigmas from sigma_max to sigma_min, uniform in sigma^(1/rho) (Karras et al. 2022, eq. 5); no trailing 0."""
    _check_range(sigma_min, sigma_max)
    _check_count(n, 1)
    if not (math.isfinite(rho) and rho != 0):
        raise ScorelabError(f"rho must be a finite nonzero number (Karras et al. use 7), got {rho}")
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return ((hi + ramp * (lo - hi)) ** rho).to(dtype)


def loglinear_sigmas(sigma_min: float, sigma_max: float, n: int, *, dtype=torch.float32):
    """n sigmas uniform in log sigma, i.e. uniform in half-log-SNR lambda (Lu et al. 2022, 'time uniform' in lambda)."""
    _check_range(sigma_min, sigma_max)
    _check_count(n, 1)
    return geometric_sigmas(sigma_max, sigma_min, n, dtype=dtype) if n > 1 else torch.tensor([sigma_max], dtype=dtype)


def timesteps(T: int, n: int, spacing: str = "trailing", *, offset: int = 0) -> torch.Tensor:
    """n of the T discrete timesteps 0..T-1 (0-based as diffusers stores them), descending.

    leading:  arange(n) * (T // n) + offset;  trailing: round(arange(T, 0, -T/n)) - 1;
    linspace: round(linspace(0, T-1, n))  (Lin et al. 2024, 'Common Diffusion Noise Schedules ...', Table 2).
    """
    _check_count(T, 1, "T")
    _check_count(n, 1)
    if n > T:
        raise ScorelabError(f"need 1 <= n <= T, got n={n}, T={T}")
    if offset != 0 and spacing != "leading":
        raise ScorelabError(f"offset applies to leading spacing only, got offset={offset} with spacing {spacing!r}")
    if spacing == "leading":
        top = T - 1 - (n - 1) * (T // n)  # the largest offset that keeps every timestep <= T - 1
        if not 0 <= offset <= top:
            raise ScorelabError(f"leading offset must be in [0, {top}] for T={T}, n={n}, got {offset}")
        t = torch.arange(n, dtype=torch.float64) * (T // n) + offset
    elif spacing == "trailing":
        # numpy's arange and linspace, as diffusers computes them: their round-off decides the ties at .5 (T=1000,
        # n=48: 936, not 937). arange over a float step can also pick up one extra entry (n=61 ends ..., 15, -1)
        t = torch.from_numpy(np.round(np.arange(T, 0, -T / n)) - 1)[:n]
    elif spacing == "linspace":
        t = torch.from_numpy(np.round(np.linspace(0, T - 1, n)))
    else:
        raise ScorelabError(f"timestep spacing must be one of {SPACINGS}, got {spacing!r}")
    return t.long().sort(descending=True).values


def discrete_sigmas(alpha_bar: torch.Tensor, steps: torch.Tensor, *, dtype=torch.float32) -> torch.Tensor:
    """The sigma schedule a sampler steps over for the given discrete timesteps, ending in 0."""
    return append_zero(sigma_from_alpha_bar(check_alpha_bar(alpha_bar)[steps])).to(dtype)


def check_alpha_bar(alpha_bar) -> torch.Tensor:
    """A VP schedule alpha_bar_1..alpha_bar_T: 1-D, in (0, 1), strictly decreasing (as alphas_cumprod gives it)."""
    ab = torch.as_tensor(alpha_bar)
    if ab.ndim != 1 or ab.numel() == 0:
        raise ScorelabError(f"alpha_bar must be a non-empty 1-D schedule (alphas_cumprod), got shape {tuple(ab.shape)}")
    if not (((ab > 0) & (ab < 1)).all() and (ab[1:] < ab[:-1]).all()):
        raise ScorelabError(
            f"alpha_bar must lie in (0, 1) and strictly decrease (alphas_cumprod(betas), not the betas), "
            f"got {show_values(ab)}"
        )
    return ab


def _ndtr(z: torch.Tensor) -> torch.Tensor:
    """The standard normal CDF, through its logarithm in the lower tail, where torch's ndtr is 0 from z = -9.5."""
    return torch.where(z < -5, torch.special.log_ndtr(z).exp(), torch.special.ndtr(z))


def lognormal_sigmas(
    sigma_min: float, sigma_max: float, n: int, *, centre: float, width: float = 2.0, dtype=torch.float32
) -> torch.Tensor:
    """n sigmas from sigma_max to sigma_min at equally spaced quantiles of a log-normal density
    ln sigma ~ N(ln centre, width^2) truncated to [sigma_min, sigma_max]; no trailing 0.

    Steps go where the density is high, the way EDM's training distribution concentrates on the noise levels
    that matter (Karras et al. 2022, sec. 5). scorelab recommends centre = sigma_data / 4, width = 2 (chosen by
    the sampler-accuracy sweep; see `scorelab reproduce sampler-accuracy`).
    """
    _check_range(sigma_min, sigma_max)
    _check_count(n, 2)
    if not (0 < centre < math.inf and 0 < width < math.inf):
        raise ScorelabError(f"need finite centre > 0 and width > 0, got centre={centre}, width={width}")
    c = torch.tensor(centre, dtype=torch.float64).log()
    z_min = (torch.tensor(sigma_min, dtype=torch.float64).log() - c) / width
    z_max = (torch.tensor(sigma_max, dtype=torch.float64).log() - c) / width
    # Phi(z_i) = Phi(z_max) + u_i (Phi(z_min) - Phi(z_max)); when the range lies above the centre, the same
    # quantiles through the upper tail, Phi(-z_i) = Phi(-z_max) + u_i (Phi(-z_min) - Phi(-z_max)), which keeps the
    # precision that 1 - Phi(z) loses there
    flip = -1.0 if z_min > 0 else 1.0
    lo, hi = _ndtr(flip * z_min), _ndtr(flip * z_max)
    if not (lo - hi).abs() > 0:
        raise ScorelabError(
            f"centre={centre}, width={width} put no representable probability in [{sigma_min}, {sigma_max}] "
            f"({abs(float(z_min)):.3g} to {abs(float(z_max)):.3g} widths away); choose a centre nearer the range "
            "or a larger width"
        )
    u = torch.linspace(0, 1, n, dtype=torch.float64)
    s = torch.exp(c + flip * width * torch.special.ndtri(hi + u * (lo - hi)))
    s[0], s[-1] = sigma_max, sigma_min
    return s.to(dtype)
