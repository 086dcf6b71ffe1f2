"""The DDPM (variance-preserving) process written against sigma-space.

A VP state x_vp at alpha_bar is x_vp = sqrt(alpha_bar) * x with x = x0 + sigma * eps and
sigma = sqrt((1 - alpha_bar) / alpha_bar), so every VP formula below takes and returns alpha_bar values
and leaves the model in sigma-space. Index convention: alpha_bar[i] is the value at timestep t = i + 1
(Ho et al. 2020 count t = 1..T); alpha_bar at t = 0 is 1.
"""

from __future__ import annotations

import torch


def q_sample(x0: torch.Tensor, alpha_bar_t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """x_t = sqrt(ab_t) x0 + sqrt(1 - ab_t) eps (Ho et al. 2020, eq. 4); alpha_bar_t shaped to broadcast."""
    return alpha_bar_t.sqrt() * x0 + (1 - alpha_bar_t).sqrt() * noise


def posterior(alpha_bar_t: torch.Tensor, alpha_bar_s: torch.Tensor):
    """q(x_s | x_t, x0) for s < t: coefficients (c_x0, c_xt) of its mean, and the fixed-small and fixed-large
    variances (Ho et al. 2020, eqs. 6-7, with beta_t generalised to 1 - ab_t / ab_s for skipped steps).

    mean = c_x0 * x0 + c_xt * x_t;  small = (1 - ab_s) / (1 - ab_t) * beta_{t|s};  large = beta_{t|s}.
    """
    ab_t, ab_s = alpha_bar_t.to(torch.float64), alpha_bar_s.to(torch.float64)
    alpha_ts = ab_t / ab_s
    beta_ts = 1 - alpha_ts
    c_x0 = ab_s.sqrt() * beta_ts / (1 - ab_t)
    c_xt = alpha_ts.sqrt() * (1 - ab_s) / (1 - ab_t)
    var_small = (1 - ab_s) / (1 - ab_t) * beta_ts
    return c_x0, c_xt, var_small, beta_ts
