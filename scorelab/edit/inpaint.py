"""Inpainting: fill the unknown pixels of an image so that they agree with the known ones.

Two ways, both checked against exact mixture conditionals (tests/test_edit.py, `scorelab reproduce repaint`):
- `repaint`, RePaint (Lugmayr et al. 2022, Algorithm 1): DDPM ancestral steps whose known part is drawn afresh from
  the forward process q(x_s | x0) after every step, with resampling (each stretch of steps run several times, the
  forward process taking it back up in between). Without resampling this is the replacement method (Song et al.
  2021, 'Score-Based Generative Modeling through SDEs', Appendix I.2), whose fills drift from the conditional: the
  unknown part sees the known part only through the noisy state. Resampling reduces the drift.
- `Inpainting`, a Denoiser wrapper that returns the known pixels as they are and the model's estimate elsewhere, so
  any sampler (deterministic ones included) inpaints: the known part then follows the sampler's own noisy path to the
  known image instead of fresh draws, and has no resampling (it drifts like replacement, or more).
Either way the last step (to sigma = 0) gives the known pixels back exactly.
"""

from __future__ import annotations

import math
import numbers

import torch
from tqdm.auto import tqdm

from ..errors import ScorelabError
from ..sampling.ancestral import check_variance, ddpm_step
from ..sampling.common import Callback, check_sigmas, randn_like


def check_known(image: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """`keep` as a bool tensor on the image's device, after checking that it broadcasts to the floating-point image and
    leaves something to fill."""
    if not torch.is_floating_point(image):
        raise ScorelabError(f"image must be a floating-point tensor, got {image.dtype}")
    keep = torch.as_tensor(keep)
    if keep.dtype != torch.bool:
        raise ScorelabError(f"keep must be a bool tensor (True where the pixel is known), got {keep.dtype}")
    try:
        torch.broadcast_shapes(keep.shape, image.shape)
    except RuntimeError:
        raise ScorelabError(
            f"keep of shape {tuple(keep.shape)} does not broadcast to the image's {tuple(image.shape)}"
        ) from None
    if keep.all():
        raise ScorelabError("keep marks every pixel as known, so there is nothing to fill")
    return keep.to(image.device)


def _check_state(x: torch.Tensor, image: torch.Tensor, keep: torch.Tensor) -> None:
    try:
        fits = torch.broadcast_shapes(x.shape, image.shape, keep.shape) == x.shape
    except RuntimeError:
        fits = False
    if not fits:
        raise ScorelabError(
            f"the state's shape {tuple(x.shape)} does not match the inpainted image's {tuple(image.shape)}"
        )


class Inpainting:
    """D'(x, sigma) = keep * image + (1 - keep) * D(x, sigma): the known pixels (keep = True) of `image` are taken as
    denoised. `keep` is a bool tensor that broadcasts to image, e.g. (B or 1, 1, H, W) for images (B, C, H, W)."""

    def __init__(self, denoiser, image: torch.Tensor, keep: torch.Tensor):
        self.denoiser, self.image, self.keep = denoiser, image, check_known(image, keep)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, cond=None) -> torch.Tensor:
        _check_state(x, self.image, self.keep)
        d = self.denoiser(x, sigma, cond)
        return torch.where(self.keep, self.image.to(d.dtype), d)


def _count(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ScorelabError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


@torch.no_grad()
def repaint(
    denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    image: torch.Tensor,
    keep: torch.Tensor,
    resample: int = 10,
    jump: int = 1,
    variance: str = "small",
    cond=None,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """RePaint (Lugmayr et al. 2022, Algorithm 1, with its jumps) over a sigma schedule, filling the pixels of `image`
    where `keep` is False. After every DDPM ancestral step to sigma_s the known pixels are set to a fresh draw of the
    forward process, image + sigma_s z (q(x_s | x0) in sigma-space). The steps go in stretches of `jump` steps; each
    stretch is run `resample` times, its end noised back to its start by the forward process in between,
    x_i = x_{i+j} + sqrt(sigma_i^2 - sigma_{i+j}^2) z. resample = 1 is the replacement method. The paper ran 250 steps
    with jump 10 and resample 10. Unlike the paper's schedule (and diffusers' RePaintScheduler), the first stretch and
    the last one (down to sigma = 0) are resampled too: 2,500 evaluations there instead of 2,410.
    `callback` (step index, x, denoised) is called after every step taken, repeats included."""
    sig = check_sigmas(sigmas).tolist()
    resample, jump = _count(resample, "resample"), _count(jump, "jump")
    check_variance(variance)
    keep = check_known(image, keep)
    _check_state(x, image, keep)
    image = image.to(x.dtype)  # once, not per step
    n = len(sig) - 1
    bar = tqdm(total=n * resample, desc="repaint", disable=not progress, leave=False)
    start = 0
    while start < n:
        end = min(start + jump, n)
        for r in range(resample):
            if r > 0:  # back up to the stretch's start: the forward process from sigma_end to sigma_start
                x = x + math.sqrt(sig[start] ** 2 - sig[end] ** 2) * randn_like(x, generator)
            for i in range(start, end):
                x, d = ddpm_step(denoiser, x, sig[i], sig[i + 1], cond, generator, variance)
                known = image + sig[i + 1] * randn_like(x, generator) if sig[i + 1] > 0 else image
                x = torch.where(keep, known, x)  # RePaint, Algorithm 1: x_known ~ q(x_{t-1} | x0)
                bar.update()
                if callback is not None:
                    callback(i, x, d)
        start = end
    bar.close()
    return x
