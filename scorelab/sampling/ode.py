"""Euler and Heun on the probability-flow ODE dx/dsigma = (x - D(x, sigma)) / sigma (Karras et al. 2022, eq. 4
with sigma(t) = t, s(t) = 1)."""

from __future__ import annotations

import torch

from .common import Callback, denoise, steps


@torch.no_grad()
def euler(denoiser, x, sigmas, *, cond=None, generator=None, callback: Callback | None = None, progress=False):
    """First-order: x <- x + (sigma' - sigma) d with d = (x - D) / sigma. One evaluation per step."""
    for i, (s, s_next) in steps(sigmas, "euler", progress):
        d_x0 = denoise(denoiser, x, s, cond)
        # the Euler step above, as x + (1 - sigma'/sigma) (D - x): one fused pass over x; to sigma' = 0 it is D itself
        x = torch.lerp(x, d_x0.to(x.dtype), 1 - s_next / s) if s_next > 0 else d_x0.to(x.dtype)
        if callback is not None:
            callback(i, x, d_x0)
    return x


@torch.no_grad()
def heun(denoiser, x, sigmas, *, cond=None, generator=None, callback: Callback | None = None, progress=False):
    """Heun's second-order method (Karras et al. 2022, Algorithm 1, i.e. Algorithm 2 with S_churn = 0): trapezoidal
    correction on every step except the last one to sigma = 0, which is an Euler step. 2 evaluations per step, 1 on
    the last."""
    for i, (s, s_next) in steps(sigmas, "heun", progress):
        d_x0 = denoise(denoiser, x, s, cond)
        if s_next > 0:
            d = (x - d_x0) / s
            x_euler = x + (s_next - s) * d
            d_next = (x_euler - denoise(denoiser, x_euler, s_next, cond)) / s_next
            x = x + (s_next - s) * 0.5 * (d + d_next)
        else:
            x = d_x0.to(x.dtype)  # the Euler step to sigma = 0, x + (0 - s) (x - D) / s = D, without its rounding
        if callback is not None:
            callback(i, x, d_x0)
    return x
