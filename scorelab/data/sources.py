"""Training batches for a config's data set, drawn with one torch.Generator (its state is the data order)."""

from __future__ import annotations

import torch

from .digits import load_digits_split
from .toys import sample_toy


class BatchSource:
    """Fresh samples for a 2D toy; shuffled epochs without replacement for a finite data set."""

    def __init__(self, name: str, batch_size: int):
        self.name, self.batch_size = name, batch_size
        self.data, self.labels = load_digits_split("train") if name == "digits" else (None, None)
        self._order: torch.Tensor | None = None
        self._pos = 0

    def next(self, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(batch, labels or None)."""
        if self.data is None:
            return sample_toy(self.name, self.batch_size, generator), None
        idx = []
        while len(idx) < self.batch_size:
            if self._order is None or self._pos >= len(self._order):
                self._order, self._pos = torch.randperm(len(self.data), generator=generator), 0
            take = self._order[self._pos : self._pos + self.batch_size - len(idx)]
            self._pos += len(take)
            idx.extend(take.tolist())
        idx = torch.tensor(idx)
        return self.data[idx], self.labels[idx]

    def state(self) -> dict[str, torch.Tensor]:
        if self._order is None:
            return {}
        return {"data.order": self._order, "data.pos": torch.tensor(self._pos)}

    def load_state(self, tensors: dict[str, torch.Tensor]) -> None:
        if "data.order" in tensors:
            self._order, self._pos = tensors["data.order"], int(tensors["data.pos"])
