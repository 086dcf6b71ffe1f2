"""The non-finite step rule shared by every optimisation loop (training, 3D fitting, and score distillation later).

A step whose loss or gradients are not finite is skipped (no parameter update), logged and counted; after
MAX_BAD_STEPS consecutive skipped steps the loop stops with a one-line error, leaving whatever was last saved intact.
"""

from __future__ import annotations

import torch

from ..errors import ScorelabError

MAX_BAD_STEPS = 20


def all_finite(loss: torch.Tensor, params) -> bool:
    """True when the loss and every existing gradient of `params` are finite."""
    if not bool(torch.isfinite(loss).all()):
        return False
    return all(p.grad is None or bool(torch.isfinite(p.grad).all()) for p in params)


class NonFiniteGuard:
    def __init__(self, what: str, *, log=print, max_bad: int = MAX_BAD_STEPS, after: str = ""):
        self.what, self.log, self.max_bad, self.after = what, log, max_bad, after
        self.skipped = 0
        self.in_a_row = 0

    def good(self) -> None:
        self.in_a_row = 0

    def bad(self, step: int) -> None:
        """Count a skipped step; raise ScorelabError after max_bad in a row."""
        self.skipped += 1
        self.in_a_row += 1
        self.log(f"warning: {self.what}: non-finite loss or gradient at step {step}; step skipped")
        if self.in_a_row >= self.max_bad:
            raise ScorelabError(
                f"{self.what}: {self.max_bad} consecutive non-finite steps at step {step}; stopping{self.after}"
            )
