"""A module's parameters as views into one flat buffer, so that the optimiser step, gradient clipping and the EMA
each run as one kernel over one tensor instead of one (or several) per parameter.

On CPU every per-tensor kernel costs a launch and a thread synchronisation: for the 185-tensor digits U-Net,
clipping and fused Adam one tensor at a time took 2.9 and 5.3 ms a step, diffusers' per-tensor EMA 4.7 ms, and the
three 0.9, 1.0 and 1.2 ms over one buffer of the same 1.08M values; the whole training step ran 1.04x faster, the
2D toy MLP's 1.10x (benchmarks/bench_optimizer.py).
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ScorelabError


def _dense(p: torch.Tensor) -> bool:
    return p.is_contiguous() or (p.ndim == 4 and p.is_contiguous(memory_format=torch.channels_last))


class FlatParameters:
    """Moves every parameter of `module` into one buffer `flat` (an nn.Parameter, for the optimiser), keeping each
    parameter's object, shape, memory layout (channels-last stays channels-last) and values, and gives each one a
    gradient that is its view of `flat.grad`. Backward then accumulates into the buffer in place, so clear gradients
    with `zero_grad()`, never with set_to_none (that detaches a parameter from the buffer). Build it after the
    module is on its device: moving the module afterwards gives the parameters new memory."""

    def __init__(self, module: nn.Module, *, grads: bool = True):
        self.module = module
        self.params = list(module.parameters())
        if not self.params:
            raise ScorelabError("the model has no parameters to train")
        first = self.params[0]
        if any(p.dtype != first.dtype or p.device != first.device or not _dense(p) for p in self.params):
            raise ScorelabError("flat parameters need one dtype and device, and dense (contiguous) parameters")
        self.layout = [(tuple(p.shape), p.stride()) for p in self.params]
        self.offsets, total = [], 0
        for p in self.params:
            self.offsets.append(total)
            total += p.numel()
        self.flat = nn.Parameter(torch.empty(total, dtype=first.dtype, device=first.device), requires_grad=grads)
        for p, view in zip(self.params, self.views(self.flat.detach()), strict=True):
            view.copy_(p.detach())
            p.data = view
        self._data = [p.data_ptr() for p in self.params]
        self._grads: list[torch.Tensor] = []
        if grads:
            self.flat.grad = torch.zeros_like(self.flat)
            self._grads = self.views(self.flat.grad)
            for p, view in zip(self.params, self._grads, strict=True):
                p.grad = view

    def views(self, buffer: torch.Tensor) -> list[torch.Tensor]:
        """Each parameter's part of a buffer shaped like `flat` (its gradient, an optimiser moment), in the
        parameter's shape and memory layout."""
        return [
            buffer.as_strided(shape, stride, buffer.storage_offset() + offset)
            for (shape, stride), offset in zip(self.layout, self.offsets, strict=True)
        ]

    def zero_grad(self) -> None:
        self.flat.grad.zero_()

    def check(self) -> None:
        """Raise ScorelabError if a parameter or its gradient no longer lives in the buffer (module.zero_grad(),
        which sets gradients to None, a .to() or load_state_dict(assign=True) do that): the optimiser would then
        update a buffer that the model no longer reads, and training would silently stop learning."""
        for p, ptr, g in zip(self.params, self._data, self._grads or [None] * len(self.params), strict=True):
            if p.data_ptr() != ptr or (g is not None and p.grad is not g):
                raise ScorelabError(
                    "a parameter or its gradient was moved out of the flat training buffer (by module.zero_grad(), "
                    ".to() or load_state_dict(assign=True)?); clear gradients with FlatParameters.zero_grad()"
                )
