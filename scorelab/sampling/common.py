"""What every diffusion sampler shares: schedule checks, noise draws, the initial state, the step loop."""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable

import torch
from tqdm.auto import tqdm

from ..errors import ScorelabError, show_values

Callback = Callable[[int, torch.Tensor, torch.Tensor], None]  # (step, x after the step, denoised at the step)


def randn_like(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Draw on CPU in float32 so the same seed gives the same result on every device."""
    return torch.randn(x.shape, generator=generator, dtype=torch.float32).to(x.device, x.dtype)


def check_sigmas(sigmas: torch.Tensor) -> torch.Tensor:
    """A schedule is a 1-D tensor, strictly decreasing, ending in 0."""
    sigmas = torch.as_tensor(sigmas)
    if sigmas.ndim != 1 or sigmas.numel() < 2:
        raise ScorelabError(f"sigmas must be a 1-D schedule of at least 2 entries, got shape {tuple(sigmas.shape)}")
    if not torch.isfinite(sigmas).all():
        raise ScorelabError(f"sigmas must be finite, got {show_values(sigmas)}")
    if sigmas[-1] != 0:
        raise ScorelabError(
            f"sigmas must be a schedule ending in 0, got {show_values(sigmas)}; append_zero(sigmas) adds the 0"
        )
    if (sigmas[:-1] <= 0).any():
        raise ScorelabError(f"sigmas must be positive before the final 0, got {show_values(sigmas)}")
    if (sigmas[1:] >= sigmas[:-1]).any():
        raise ScorelabError(f"sigmas must be strictly decreasing (sigma_max down to 0), got {show_values(sigmas)}")
    return sigmas


def check_order(order) -> int:
    """A multistep solver's order: the integer 1, 2 or 3."""
    if isinstance(order, bool) or not isinstance(order, numbers.Integral) or order not in (1, 2, 3):
        raise ScorelabError(f"order must be 1, 2 or 3, got {order!r}")
    return order


def initial_noise(shape, sigma_max: float, *, vp_prior: bool = False, generator=None, device=None, dtype=None):
    """x at the first sigma: sigma_max * z, or sqrt(1 + sigma_max^2) * z for the VP prior x_T ~ N(0, I)
    (a DDPM sample x_T in sigma-space is x_T / sqrt(alpha_bar_T))."""
    if not 0 < sigma_max < math.inf:
        raise ScorelabError(f"sigma_max must be positive and finite, got {sigma_max}")
    scale = (1 + sigma_max**2) ** 0.5 if vp_prior else sigma_max
    z = torch.randn(shape, generator=generator, dtype=torch.float32)
    return (scale * z).to(device=device, dtype=dtype or torch.float32)


def steps(sigmas: torch.Tensor, desc: str, progress: bool):
    """Consecutive (i, sigma, sigma_next) pairs of the schedule, as Python floats, with an optional progress bar."""
    sig = check_sigmas(sigmas).tolist()
    pairs = list(zip(sig[:-1], sig[1:], strict=True))
    return tqdm(list(enumerate(pairs)), desc=desc, disable=not progress, leave=False)


def denoise(denoiser, x: torch.Tensor, sigma: float, cond) -> torch.Tensor:
    if not torch.is_floating_point(x):  # an integer state would be truncated, or fail deep inside an update
        raise ScorelabError(f"x must be a floating-point tensor (the sampler's state), got {x.dtype}")
    return denoiser(x, torch.full((x.shape[0],), sigma, dtype=x.dtype, device=x.device), cond)
