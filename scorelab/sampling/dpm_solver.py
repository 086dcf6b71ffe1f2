"""DPM-Solver++ multistep, second and third order (Lu et al. 2022, 'DPM-Solver++', Sec. 4 and Algorithm 2).

In sigma-space alpha = 1 and the half-log-SNR is lambda = -log sigma, so the data-prediction exponential
integrator reads x_next = (sigma_next / sigma) x - expm1(-h) * (Taylor terms of D in lambda), h = lambda_next - lambda.
Earlier denoiser outputs are reused, so each step costs one evaluation. The first steps use the orders their
history allows; the last step to sigma = 0 (h = infinity) is first order, x = D (the higher-order corrections'
coefficients diverge there), as k-diffusion does.
"""

from __future__ import annotations

import math

import torch

from .common import Callback, check_order, denoise, steps


@torch.no_grad()
def dpmpp_multistep(
    denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    order: int = 2,
    cond=None,
    generator=None,
    callback: Callback | None = None,
    progress: bool = False,
) -> torch.Tensor:
    check_order(order)
    history: list[tuple[float, torch.Tensor]] = []  # (lambda, D) at earlier steps, newest last
    for i, (s, s_next) in steps(sigmas, f"dpm++{order}m", progress):
        d0 = denoise(denoiser, x, s, cond)
        lam = -math.log(s)
        if s_next == 0:
            x_new = d0
        else:
            h = -math.log(s_next) - lam
            phi1 = math.expm1(-h)
            k = min(order, len(history) + 1)
            if k == 1:
                d_eff = -phi1 * d0  # first order = DDIM (DPM-Solver++ eq. 9)
            elif k == 2:
                lam1, d1 = history[-1]
                r0 = (lam - lam1) / h
                # DPM-Solver++(2M), Lu et al. 2022, Algorithm 2: D = (1 + 1/(2 r)) D_i - 1/(2 r) D_{i-1}
                d_eff = -phi1 * ((1 + 0.5 / r0) * d0 - (0.5 / r0) * d1)
            else:
                (lam2, d2), (lam1, d1) = history[-2], history[-1]
                r0, r1 = (lam - lam1) / h, (lam1 - lam2) / h
                # third order: the Taylor expansion of D in lambda up to D'' (DPM-Solver++, Lu et al. 2022,
                # Sec. 4.1), with h D' and h^2 D'' from divided differences over the last three points; the
                # integrals of e^(u - h) u^n / n! over [0, h] are -phi1, h phi2 and -h^2 phi3 for n = 0, 1, 2
                dd0, dd1 = (d0 - d1) / r0, (d1 - d2) / r1
                first = dd0 + r0 / (r0 + r1) * (dd0 - dd1)  # h D'
                # h^2 D''. The multistep 3M of diffusers, k-diffusion and the DPM-Solver code takes half of this
                # (no factor 2), which makes that method second order (tests/test_samplers.py)
                second = 2 * (dd0 - dd1) / (r0 + r1)
                phi2 = phi1 / h + 1
                phi3 = phi2 / h - 0.5
                d_eff = -phi1 * d0 + phi2 * first - phi3 * second
            x_new = (s_next / s) * x + d_eff
        history = (history + [(lam, d0)])[-2:]
        x = x_new
        if callback is not None:
            callback(i, x, d0)
    return x


def dpmpp_2m(denoiser, x, sigmas, **kwargs) -> torch.Tensor:
    """DPM-Solver++(2M)."""
    return dpmpp_multistep(denoiser, x, sigmas, order=2, **kwargs)


def dpmpp_3m(denoiser, x, sigmas, **kwargs) -> torch.Tensor:
    """DPM-Solver++(3M): third-order multistep, one evaluation per step like 2M."""
    return dpmpp_multistep(denoiser, x, sigmas, order=3, **kwargs)
