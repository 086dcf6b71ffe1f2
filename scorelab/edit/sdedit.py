"""SDEdit (Meng et al. 2022, 'SDEdit: Guided Image Synthesis and Editing with Stochastic Differential Equations').

The guide image is perturbed to an intermediate noise level sigma_0 and the reverse process is run from there
(Algorithm 1; in sigma-space the VE and VP forms coincide: x(t_0) = x_guide + sigma_0 z is the VP
sqrt(ab) x_guide + sqrt(1 - ab) z divided by sqrt(ab)). Low strength stays faithful to the guide; high strength gives
the model more room (realism), the paper's trade-off in t_0.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from decimal import ROUND_HALF_UP, Decimal

import torch

from ..errors import ScorelabError
from ..sampling.common import check_sigmas, randn_like


def sdedit_sigmas(sigmas: torch.Tensor, strength: float) -> torch.Tensor:
    """The part of a schedule (N steps, N + 1 entries ending in 0) that SDEdit runs at `strength` in (0, 1]: its last
    k = round(strength * N) steps (rounded half up; at least one), so strength 1 is the whole schedule. This is the
    fraction of the sampler's steps, as in diffusers' img2img, not of the model's training time."""
    sigmas = check_sigmas(sigmas)
    if isinstance(strength, bool) or not isinstance(strength, numbers.Real) or not 0 < strength <= 1:
        raise ScorelabError(f"strength must be a number in (0, 1], got {strength!r}")
    n = sigmas.numel() - 1
    k = int((Decimal(repr(float(strength))) * n).quantize(Decimal(1), ROUND_HALF_UP))
    if k < 1:
        raise ScorelabError(
            f"strength {strength} runs no step of a {n}-step schedule (round(strength x steps) = 0); "
            f"give a strength of at least {0.5 / n:.3g}, or a schedule of more steps"
        )
    return sigmas[n - k :]


def sdedit(
    denoiser,
    image: torch.Tensor,
    sigmas: torch.Tensor,
    sampler: Callable,
    *,
    strength: float,
    generator: torch.Generator | None = None,
    **kwargs,
) -> torch.Tensor:
    """An SDEdit of `image` (B, ...): x = image + sigma_0 z at the first sigma of sdedit_sigmas(sigmas, strength)
    (Meng et al. 2022, Algorithm 1), then `sampler` (any of scorelab.sampling) over the rest of that schedule, with
    `kwargs` (cond, callback, progress, a sampler's own options) passed on. A stochastic sampler (ddpm, or ddim with
    eta > 0) draws from p(x_0 | x(t_0)) as the paper's reverse SDE does; a deterministic one maps x(t_0) along the
    probability-flow ODE, which stays closer to the guide."""
    if not torch.is_floating_point(image):
        raise ScorelabError(f"image must be a floating-point tensor, got {image.dtype}")
    tail = sdedit_sigmas(sigmas, strength)
    sigma0 = float(tail[0])
    if not math.isfinite(sigma0):
        raise ScorelabError(f"the schedule's first sigma must be finite, got {sigma0}")
    x = image + sigma0 * randn_like(image, generator)  # SDEdit, Algorithm 1: x(t_0) ~ N(x_guide, sigma(t_0)^2 I)
    return sampler(denoiser, x, tail, generator=generator, **kwargs)
