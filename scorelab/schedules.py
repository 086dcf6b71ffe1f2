"""Noise schedules as materialised tensors (float64 maths, cast at the end)."""

from __future__ import annotations

import torch


def geometric_sigmas(sigma_max: float, sigma_min: float, n: int, *, dtype=torch.float32) -> torch.Tensor:
    """sigma_1 > ... > sigma_L with constant ratio sigma_{i+1}/sigma_i (Song & Ermon 2019, Sec. 4.2)."""
    if not (sigma_max > sigma_min > 0):
        raise ValueError(f"need sigma_max > sigma_min > 0, got sigma_max={sigma_max}, sigma_min={sigma_min}")
    if n < 2:
        raise ValueError(f"need at least 2 noise levels, got {n}")
    s = torch.logspace(
        torch.log10(torch.tensor(sigma_max, dtype=torch.float64)).item(),
        torch.log10(torch.tensor(sigma_min, dtype=torch.float64)).item(),
        n,
        dtype=torch.float64,
    )
    return s.to(dtype)


def append_zero(sigmas: torch.Tensor) -> torch.Tensor:
    """Samplers step over consecutive pairs of a schedule that ends in 0."""
    return torch.cat([sigmas, sigmas.new_zeros(1)])
