"""Procedural 2D toy distributions. Each sampler takes n and a torch.Generator and returns (n, 2) float32."""

from __future__ import annotations

import math

import torch

from ..analytic import GaussianMixture
from ..errors import ScorelabError

RING_RADIUS = 2.0
RING_STD = 0.1


def ring8_mixture() -> GaussianMixture:
    """Eight equal-weight isotropic Gaussians (std 0.1) on a circle of radius 2."""
    angles = torch.arange(8, dtype=torch.float64) * (2 * math.pi / 8)
    means = RING_RADIUS * torch.stack([angles.cos(), angles.sin()], dim=1)
    return GaussianMixture(torch.full((8,), 1 / 8, dtype=torch.float64), means, torch.full((8,), RING_STD))


def ring8(n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    return ring8_mixture().sample(n, generator)


def moons(n: int, generator: torch.Generator | None = None, noise: float = 0.05) -> torch.Tensor:
    """Two interleaved half circles (unit radius), centred and scaled by 1.5, plus Gaussian noise."""
    upper = torch.rand(n, generator=generator) < 0.5
    t = torch.rand(n, generator=generator) * math.pi
    x = torch.where(upper, t.cos(), 1 - t.cos())
    y = torch.where(upper, t.sin(), 0.5 - t.sin())
    pts = torch.stack([x - 0.5, y - 0.25], 1) * 1.5
    return pts + noise * 1.5 * torch.randn(n, 2, generator=generator)


def swissroll(n: int, generator: torch.Generator | None = None, noise: float = 0.05) -> torch.Tensor:
    """A 2D spiral r = t, t in [1.5 pi, 4.5 pi], scaled to about [-2, 2]^2, plus Gaussian noise."""
    t = 1.5 * math.pi * (1 + 2 * torch.rand(n, generator=generator))
    pts = torch.stack([t * t.cos(), t * t.sin()], 1) / (4.5 * math.pi) * 2
    return pts + noise * torch.randn(n, 2, generator=generator)


def rings(n: int, generator: torch.Generator | None = None, noise: float = 0.04) -> torch.Tensor:
    """Two concentric circles of radius 1 and 2 (equal numbers of points), plus Gaussian noise."""
    r = torch.where(torch.rand(n, generator=generator) < 0.5, 1.0, 2.0)
    t = torch.rand(n, generator=generator) * 2 * math.pi
    return torch.stack([r * t.cos(), r * t.sin()], 1) + noise * torch.randn(n, 2, generator=generator)


def checkerboard(n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Uniform on the 8 black squares of a 4x4 checkerboard covering [-2, 2]^2."""
    cell = torch.randint(0, 8, (n,), generator=generator)
    row = cell // 2
    col = 2 * (cell % 2) + (row % 2)
    u = torch.rand(n, 2, generator=generator)
    return torch.stack([col + u[:, 0], row + u[:, 1]], 1) - 2.0


TOYS = {"ring8": ring8, "moons": moons, "swissroll": swissroll, "rings": rings, "checkerboard": checkerboard}


def sample_toy(name: str, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    if name not in TOYS:
        raise ScorelabError(f"unknown 2D toy {name!r}; allowed: {', '.join(TOYS)}")
    return TOYS[name](n, generator).float()
