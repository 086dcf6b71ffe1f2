"""Embeddings of the noise level (c_noise = ln(sigma)/4) and of class labels."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..errors import ScorelabError


class FourierEmbedding(nn.Module):
    """Sinusoidal embedding of a scalar (Vaswani et al. 2017, Sec. 3.5; used for time in Ho et al. 2020)."""

    def __init__(self, dim: int, max_period: float = 1000.0, scale: float = 64.0):
        super().__init__()
        if dim % 2:
            raise ScorelabError(f"embedding dim must be even, got {dim}")
        freqs = torch.exp(-math.log(max_period) * torch.arange(dim // 2, dtype=torch.float64) / (dim // 2))
        self.register_buffer("freqs", freqs.float(), persistent=False)
        self.scale = scale  # c_noise = ln(sigma)/4 lies in about [-1.5, 1]: frequencies 0.064 ... 64 per unit

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        arg = (self.scale * t.to(self.freqs.dtype))[:, None] * self.freqs[None]
        return torch.cat([arg.cos(), arg.sin()], dim=1)


class NoiseEmbedding(nn.Module):
    """Fourier features of c_noise followed by a two-layer MLP."""

    def __init__(self, dim: int, out_dim: int):
        super().__init__()
        self.fourier = FourierEmbedding(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, out_dim), nn.SiLU(), nn.Linear(out_dim, out_dim))

    def forward(self, c_noise: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.fourier(c_noise))
