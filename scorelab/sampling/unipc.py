"""UniPC: a unified predictor-corrector multistep solver (Zhao et al. 2023, 'UniPC', Algorithms 1-2, B(h) = e^h - 1
('bh2'), data prediction). Chosen as the higher-order solver because its corrector (UniC) raises the order by one
while reusing the evaluation the next predictor step needs anyway, so it costs no extra model calls.

In sigma-space alpha = 1 and lambda = -log sigma, as for DPM-Solver++. The step to sigma = 0 returns the denoiser at
the last positive sigma, evaluated at the predictor's point (no corrector there, so the evaluation count equals the
number of positive sigmas).
"""

from __future__ import annotations

import math

import torch

from .common import Callback, check_order, denoise, steps


def _coefficients(rks: list[float], h: float) -> tuple[torch.Tensor, torch.Tensor]:
    """R[i, k] = r_k^i and b_i = i! phi_{i+1}(h) / B(h) of UniPC eq. (8)-(9) for data prediction."""
    hh = -h
    h_phi_k = math.expm1(hh) / hh - 1
    b_h = math.expm1(hh)
    r = torch.tensor(rks, dtype=torch.float64)
    rows, b, factorial = [], [], 1.0
    for i in range(1, len(rks) + 1):
        rows.append(r ** (i - 1))
        b.append(h_phi_k * factorial / b_h)
        factorial *= i + 1
        h_phi_k = h_phi_k / hh - 1 / factorial
    return torch.stack(rows), torch.tensor(b, dtype=torch.float64)


@torch.no_grad()
def unipc(
    denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    order: int = 3,
    cond=None,
    generator=None,
    callback: Callback | None = None,
    progress: bool = False,
) -> torch.Tensor:
    check_order(order)
    pairs = steps(sigmas, f"unipc{order}", progress)  # iterated step by step, so the progress bar follows
    n_steps, s_max = len(pairs), float(sigmas[0])
    d = denoise(denoiser, x, s_max, cond)
    history: list[tuple[float, torch.Tensor]] = [(-math.log(s_max), d)]  # (lambda, D), newest last
    for i, (s, s_next) in pairs:
        lam0, m0 = history[-1]
        if s_next == 0:
            x = m0
            if callback is not None:
                callback(i, x, m0)
            break
        h = -math.log(s_next) - lam0
        k = min(order, len(history))
        rks, diffs = [], []
        for j in range(1, k):
            lam_j, m_j = history[-(j + 1)]
            rk = (lam_j - lam0) / h
            rks.append(rk)
            diffs.append((m_j - m0) / rk)
        rks.append(1.0)
        big_r, b = _coefficients(rks, h)
        b_h = math.expm1(-h)
        x_base = (s_next / s) * x - math.expm1(-h) * m0
        x_pred = x_base
        if diffs:
            rhos_p = [0.5] if k == 2 else torch.linalg.solve(big_r[:-1, :-1], b[:-1]).tolist()
            x_pred = x_base - b_h * sum(r * dd for r, dd in zip(rhos_p, diffs, strict=True))
        m_next = denoise(denoiser, x_pred, s_next, cond)
        last_positive = i + 1 == n_steps - 1  # the step before the final 0 (the schedule ends in 0)
        if last_positive:
            x = x_pred
        else:
            # UniC corrector: the same update with the new evaluation as the highest-order difference
            rhos_c = [0.5] if k == 1 else torch.linalg.solve(big_r, b).tolist()
            corr = sum(r * dd for r, dd in zip(rhos_c[:-1], diffs, strict=True)) if diffs else 0.0
            x = x_base - b_h * (corr + rhos_c[-1] * (m_next - m0))
        history = (history + [(-math.log(s_next), m_next)])[-3:]
        if callback is not None:
            callback(i, x, m0)
    return x
