"""Training batches for a config's data set, drawn with one torch.Generator (its state is the data order)."""

from __future__ import annotations

import torch

from .image_sets import ImageSet, digits_set, to_signed
from .toys import sample_toy


class BatchSource:
    """Fresh samples for a 2D toy; shuffled epochs without replacement over the training split of an ImageSet
    (`images`, the digits' by default for 'digits'), each image mirrored left-right with probability 1/2 when
    `flip`."""

    def __init__(self, name: str, batch_size: int, *, images: ImageSet | None = None, flip: bool = False):
        self.name, self.batch_size, self.flip = name, batch_size, flip
        self.images = digits_set() if images is None and name == "digits" else images
        # positions of the training images in the set: batches index the set's pixels, no copy of them is kept
        self.train = None if self.images is None else torch.nonzero(~self.images.held_out).squeeze(1)
        self._order: torch.Tensor | None = None
        self._pos = 0

    def next(self, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(batch, labels or None)."""
        if self.images is None:
            return sample_toy(self.name, self.batch_size, generator), None
        idx = []
        while len(idx) < self.batch_size:
            if self._order is None or self._pos >= len(self._order):
                self._order, self._pos = torch.randperm(len(self.train), generator=generator), 0
            take = self._order[self._pos : self._pos + self.batch_size - len(idx)]
            self._pos += len(take)
            idx.extend(take.tolist())
        idx = self.train[torch.tensor(idx)]
        x = to_signed(self.images.pixels[idx], self.images.levels)
        if self.flip:  # horizontal flips, as in Ho et al. 2020 (App. B) for CIFAR-10
            mirror = torch.rand(len(idx), generator=generator) < 0.5
            x = torch.where(mirror[:, None, None, None], x.flip(-1), x)
        return x, None if self.images.labels is None else self.images.labels[idx]

    def state(self) -> dict[str, torch.Tensor]:
        if self._order is None:
            return {}
        return {"data.order": self._order, "data.pos": torch.tensor(self._pos)}

    def load_state(self, tensors: dict[str, torch.Tensor]) -> None:
        if "data.order" in tensors:
            self._order, self._pos = tensors["data.order"], int(tensors["data.pos"])
