"""A noise-conditional MLP for low-dimensional data, called as F(x_in, c_noise, cond)."""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ScorelabError
from .embeddings import NoiseEmbedding


class ResidualMLPBlock(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, width)
        self.fc2 = nn.Linear(width, width)
        self.emb = nn.Linear(width, width)

    def forward(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        y = self.fc1(torch.nn.functional.silu(self.norm(h))) + self.emb(emb)
        return h + self.fc2(torch.nn.functional.silu(y))


class MLP(nn.Module):
    def __init__(self, dim: int = 2, width: int = 128, depth: int = 3, emb_dim: int = 64):
        super().__init__()
        self.dim = dim
        self.embed = NoiseEmbedding(emb_dim, width)
        self.inp = nn.Linear(dim, width)
        self.blocks = nn.ModuleList(ResidualMLPBlock(width) for _ in range(depth))
        self.out = nn.Sequential(nn.LayerNorm(width), nn.SiLU(), nn.Linear(width, dim))

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor, cond=None) -> torch.Tensor:
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ScorelabError(f"MLP expects inputs of shape (B, {self.dim}), got {tuple(x.shape)}")
        if cond is not None:  # silently ignoring labels would make guidance around this model a no-op
            raise ScorelabError("this MLP takes no condition (no class labels or context); cond must be None")
        emb = self.embed(c_noise)
        h = self.inp(x)
        for block in self.blocks:
            h = block(h, emb)
        return self.out(h)
