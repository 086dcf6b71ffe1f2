"""Langevin and annealed Langevin dynamics (Song & Ermon 2019, Algorithm 1)."""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable

import torch
from tqdm.auto import tqdm

from ..denoisers import Denoiser, score_from_denoised
from ..errors import ScorelabError, show_values
from .common import randn_like


def _is_int(n) -> bool:
    return isinstance(n, numbers.Integral) and not isinstance(n, bool)


def langevin(
    score: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    *,
    step_size: float,
    n_steps: int,
    generator: torch.Generator | None = None,
    callback: Callable[[int, torch.Tensor], None] | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Unadjusted Langevin dynamics x <- x + (eps/2) s(x) + sqrt(eps) z (Song & Ermon 2019, eq. 2)."""
    if not (math.isfinite(step_size) and step_size > 0) or not _is_int(n_steps) or n_steps < 0:
        raise ScorelabError(f"need a finite step_size > 0 and an integer n_steps >= 0, got {step_size}, {n_steps!r}")
    noise_scale = step_size**0.5
    for i in tqdm(range(n_steps), desc="langevin", disable=not progress, leave=False):
        x = x + 0.5 * step_size * score(x) + noise_scale * randn_like(x, generator)
        if callback is not None:
            callback(i, x)
    return x


@torch.no_grad()
def annealed_langevin(
    denoiser: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    step_size: float,
    steps_per_level: int,
    cond=None,
    generator: torch.Generator | None = None,
    callback: Callable[[int, torch.Tensor], None] | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Annealed Langevin dynamics over sigma_1 > ... > sigma_L (Song & Ermon 2019, Algorithm 1).

    At level i the step is alpha_i = eps * sigma_i^2 / sigma_L^2 (Algorithm 1, line 3). If the schedule
    ends in 0 a final denoising step x <- x + sigma_L^2 s(x, sigma_L) = D(x, sigma_L) follows
    (Tweedie's formula; Song & Ermon 2020, Sec. 3 "denoising").
    """
    sigmas = torch.as_tensor(sigmas)
    if sigmas.ndim != 1 or sigmas.numel() == 0:
        raise ScorelabError(f"sigmas must be a non-empty 1-D schedule, got shape {tuple(sigmas.shape)}")
    final_denoise = bool(sigmas[-1] == 0)
    levels = sigmas[:-1] if final_denoise else sigmas
    if (
        levels.numel() == 0
        or not torch.isfinite(levels).all()
        or (levels <= 0).any()
        or (levels[1:] > levels[:-1]).any()
    ):
        raise ScorelabError(
            "sigmas must be finite, positive and non-increasing, optionally followed by a single 0, "
            f"got {show_values(sigmas)}"
        )
    if not (math.isfinite(step_size) and step_size > 0) or not _is_int(steps_per_level) or steps_per_level < 1:
        raise ScorelabError(
            f"need a finite step_size > 0 and an integer steps_per_level >= 1, got {step_size}, {steps_per_level!r}"
        )
    sigma_last = float(levels[-1])
    k = 0
    bar = tqdm(total=len(levels) * steps_per_level, desc="annealed langevin", disable=not progress, leave=False)
    for sigma in levels.tolist():
        alpha = step_size * sigma**2 / sigma_last**2
        sig = torch.full((x.shape[0],), sigma, dtype=x.dtype, device=x.device)
        for _ in range(steps_per_level):
            s = score_from_denoised(x, denoiser(x, sig, cond), sig)
            x = x + 0.5 * alpha * s + alpha**0.5 * randn_like(x, generator)
            if callback is not None:
                callback(k, x)
            k += 1
            bar.update()
    bar.close()
    if final_denoise:
        sig = torch.full((x.shape[0],), sigma_last, dtype=x.dtype, device=x.device)
        x = denoiser(x, sig, cond)
    return x
