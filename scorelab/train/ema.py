"""Exponential moving average of parameters (Polyak & Juditsky 1992; used by Song & Ermon 2020, technique 5)."""

from __future__ import annotations

import copy

import torch
from torch import nn

from ..errors import ScorelabError
from .flat import FlatParameters


class EMA:
    """decay_t = min(decay, (1 + t) / (10 + t)) (TensorFlow's ExponentialMovingAverage with num_updates): early
    averages do not remember the random initialisation. The average is a copy of the model whose parameters are one
    flat buffer, updated from the model's FlatParameters by one lerp."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.params = FlatParameters(self.model, grads=False)

    def decay_at(self, step: int) -> float:
        return min(self.decay, (1 + step) / (10 + step))

    @torch.no_grad()
    def update(self, source: FlatParameters, step: int) -> None:
        if source.layout != self.params.layout:
            raise ScorelabError("the EMA's model and the trained model must have the same parameters and layouts")
        self.params.flat.lerp_(source.flat, 1 - self.decay_at(step))
        for e, b in zip(self.model.buffers(), source.module.buffers(), strict=True):
            e.copy_(b)
