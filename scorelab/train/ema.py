"""Exponential moving average of parameters (Polyak & Juditsky 1992; used by Song & Ermon 2020, technique 5)."""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """decay_t = min(decay, (1 + t) / (10 + t)) (TensorFlow's ExponentialMovingAverage with num_updates): early
    averages do not remember the random initialisation."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    def decay_at(self, step: int) -> float:
        return min(self.decay, (1 + step) / (10 + step))

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        d = self.decay_at(step)
        for e, p in zip(self.model.parameters(), model.parameters(), strict=True):
            e.lerp_(p.detach(), 1 - d)
        for e, b in zip(self.model.buffers(), model.buffers(), strict=True):
            e.copy_(b)
