"""The DDPM (variance-preserving) process written against sigma-space.

A VP state x_vp at alpha_bar is x_vp = sqrt(alpha_bar) * x with x = x0 + sigma * eps and
sigma = sqrt((1 - alpha_bar) / alpha_bar), so every VP formula below takes and returns alpha_bar values
and leaves the model in sigma-space. Index convention: alpha_bar[i] is the value at timestep t = i + 1
(Ho et al. 2020 count t = 1..T); alpha_bar at t = 0 is 1.
"""

from __future__ import annotations

import torch

from .errors import ScorelabError, show_values


def q_sample(x0: torch.Tensor, alpha_bar_t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """x_t = sqrt(ab_t) x0 + sqrt(1 - ab_t) eps (Ho et al. 2020, eq. 4); alpha_bar_t a number or shaped to broadcast."""
    alpha_bar_t = torch.as_tensor(alpha_bar_t)
    return alpha_bar_t.sqrt() * x0 + (1 - alpha_bar_t).sqrt() * noise


def posterior(alpha_bar_t, alpha_bar_s):
    """q(x_s | x_t, x0) for s < t: coefficients (c_x0, c_xt) of its mean, and the fixed-small and fixed-large
    variances (Ho et al. 2020, eqs. 6-7, with beta_t generalised to 1 - ab_t / ab_s for skipped steps).

    mean = c_x0 * x0 + c_xt * x_t;  small = (1 - ab_s) / (1 - ab_t) * beta_{t|s};  large = beta_{t|s}.
    Needs 0 < alpha_bar_t < alpha_bar_s <= 1 (numbers or tensors that broadcast).
    """
    ab_t = torch.as_tensor(alpha_bar_t, dtype=torch.float64)
    ab_s = torch.as_tensor(alpha_bar_s, dtype=torch.float64)
    if not ((0 < ab_t) & (ab_t < ab_s) & (ab_s <= 1)).all():
        raise ScorelabError(
            "posterior needs 0 < alpha_bar_t < alpha_bar_s <= 1 (t the later, noisier step), "
            f"got alpha_bar_t={show_values(ab_t)}, alpha_bar_s={show_values(ab_s)}"
        )
    return _posterior(ab_t, ab_s)


def _posterior(alpha_bar_t: torch.Tensor, alpha_bar_s: torch.Tensor):
    """posterior without the checks, for the samplers' and the bound's loops over schedules checked once."""
    ab_t, ab_s = alpha_bar_t.to(torch.float64), alpha_bar_s.to(torch.float64)
    alpha_ts = ab_t / ab_s
    beta_ts = 1 - alpha_ts
    c_x0 = ab_s.sqrt() * beta_ts / (1 - ab_t)
    c_xt = alpha_ts.sqrt() * (1 - ab_s) / (1 - ab_t)
    var_small = (1 - ab_s) / (1 - ab_t) * beta_ts
    return c_x0, c_xt, var_small, beta_ts
