"""SDEdit (Meng et al. 2022, 'SDEdit: Guided Image Synthesis and Editing with Stochastic Differential Equations').

The guide image is perturbed to an intermediate noise level sigma_0 = sigma(t_0) and the reverse process is run from
there (Algorithm 1; in sigma-space the VE and VP forms coincide: x(t_0) = x_guide + sigma_0 z is the VP
sqrt(ab) x_guide + sqrt(1 - ab) z divided by sqrt(ab)). A low t_0 stays faithful to the guide; a high one gives the
model more room (realism): the paper's trade-off in t_0. scorelab.pipelines.edit.strength_sigma maps a run's t_0 to
sigma_0.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ..errors import ScorelabError
from ..sampling.common import check_sigmas, randn_like


def sdedit_sigmas(sigmas: torch.Tensor, sigma_start: float) -> torch.Tensor:
    """The schedule SDEdit runs from sigma_start: sigma_start, then the entries of `sigmas` (a schedule ending in 0)
    below it."""
    sigmas = check_sigmas(sigmas)
    try:  # a number: Python's, NumPy's or a one-element tensor; not a bool or a string
        start = None if isinstance(sigma_start, (bool, str)) else float(sigma_start)
    except (TypeError, ValueError, RuntimeError):
        start = None
    if start is None or not 0 < start < math.inf:
        raise ScorelabError(f"sigma_start must be a positive finite number, got {sigma_start!r}")
    below = sigmas[sigmas < start]
    return torch.cat([torch.tensor([start], dtype=sigmas.dtype), below])


def sdedit(
    denoiser,
    image: torch.Tensor,
    sigmas: torch.Tensor,
    sampler: Callable,
    *,
    sigma_start: float,
    generator: torch.Generator | None = None,
    **kwargs,
) -> torch.Tensor:
    """An SDEdit of `image` (B, ...): x = image + sigma_start z (Meng et al. 2022, Algorithm 1), then `sampler` (any of
    scorelab.sampling) over sdedit_sigmas(sigmas, sigma_start), with `kwargs` (cond, callback, progress, a sampler's
    own options) passed on. A stochastic sampler (ddpm, or ddim with eta = 1, the same update) draws from
    p(x_0 | x(t_0)) as the paper's reverse SDE does; a deterministic one maps x(t_0) along the probability-flow ODE,
    which stays closer to the guide (tests/test_edit.py checks both laws for Gaussian data)."""
    if not torch.is_floating_point(image):
        raise ScorelabError(f"image must be a floating-point tensor, got {image.dtype}")
    tail = sdedit_sigmas(sigmas, sigma_start)
    x = image + float(tail[0]) * randn_like(image, generator)  # SDEdit, Algorithm 1: x(t_0) ~ N(x_guide, sigma_0^2 I)
    return sampler(denoiser, x, tail, generator=generator, **kwargs)
