"""Inpainting: fill the unknown pixels of an image so that they agree with the known ones.

`Inpainting` is a Denoiser wrapper that returns the known pixels as they are and the model's estimate elsewhere, so
any sampler keeps the known region on its own noisy path to the known image, and its last step (to sigma = 0, where
the sampler returns the denoiser's output) gives the known pixels back. This is the replacement method (Song et al.
2021, 'Score-Based Generative Modeling through SDEs', Appendix I.2; RePaint without resampling): the unknown region
sees the known one only through the noisy state, so it under-uses it, and the fills drift from the exact conditional
(tests/test_edit.py measures this against an exact mixture). RePaint's resampling (Lugmayr et al. 2022) reduces that
drift by going back up and down each part of the schedule several times.
"""

from __future__ import annotations

import math
import numbers

import torch
from tqdm.auto import tqdm

from ..errors import ScorelabError
from ..sampling.ancestral import check_variance, ddpm_step
from ..sampling.common import Callback, check_sigmas, randn_like


class Inpainting:
    """D'(x, sigma) = keep * image + (1 - keep) * D(x, sigma): the known pixels (keep = True) of `image` are taken as
    denoised. `keep` is a bool tensor that broadcasts to image, e.g. (B or 1, 1, H, W) for images (B, C, H, W)."""

    def __init__(self, denoiser, image: torch.Tensor, keep: torch.Tensor):
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
        self.denoiser, self.image, self.keep = denoiser, image, keep.to(image.device)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, cond=None) -> torch.Tensor:
        try:
            fits = torch.broadcast_shapes(x.shape, self.image.shape, self.keep.shape) == x.shape
        except RuntimeError:
            fits = False
        if not fits:
            raise ScorelabError(
                f"the state's shape {tuple(x.shape)} does not match the inpainted image's {tuple(self.image.shape)}"
            )
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
    resample: int = 10,
    jump: int = 1,
    variance: str = "small",
    cond=None,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """RePaint (Lugmayr et al. 2022, Algorithm 1 with the jumps of Sec. 4.2) over a sigma schedule: DDPM ancestral
    steps taken in blocks of `jump` steps; each block is run `resample` times, and between runs its end state is noised
    back to the block's start by the forward process, x_i = x_{i+j} + sqrt(sigma_i^2 - sigma_{i+j}^2) z (q(x_t | x_s)
    in sigma-space). resample = 1 is plain DDPM ancestral sampling. Meant for an `Inpainting` denoiser; `callback`
    (step index, x, denoised) is called after every step taken, repeats included."""
    sig = check_sigmas(sigmas).tolist()
    resample, jump = _count(resample, "resample"), _count(jump, "jump")
    check_variance(variance)
    n = len(sig) - 1
    bar = tqdm(total=n * resample, desc="repaint", disable=not progress, leave=False)
    start = 0
    while start < n:
        end = min(start + jump, n)
        for r in range(resample):
            if r > 0:  # back up to the block's start: the forward process from sigma_end to sigma_start
                x = x + math.sqrt(sig[start] ** 2 - sig[end] ** 2) * randn_like(x, generator)
            for i in range(start, end):
                x, d = ddpm_step(denoiser, x, sig[i], sig[i + 1], cond, generator, variance)
                bar.update()
                if callback is not None:
                    callback(i, x, d)
        start = end
    bar.close()
    return x
