"""The 1,797 handwritten 8x8 digits that ship with scikit-learn, scaled to [-1, 1].

Kept at their native 8x8: resizing would invent detail by interpolation and padding would
spend most of the compute on constant border pixels; the U-Net downsamples 8 -> 4 -> 2.
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import ScorelabError

HELD_OUT = 297  # fixed held-out split: 1,500 train / 297 held-out, stratified by class
SPLIT_SEED = 0


def _load() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    return d.images.astype(np.float32), d.target.astype(np.int64)


def digits_levels() -> tuple[torch.Tensor, torch.Tensor]:
    """(pixel values 0..16 as uint8 (1797, 1, 8, 8), labels (1797,)), in scikit-learn's order."""
    images, labels = _load()
    return torch.from_numpy(images.astype(np.uint8)).unsqueeze(1), torch.from_numpy(labels)


def digits_test_mask(labels: torch.Tensor) -> torch.Tensor:
    """The fixed held-out split of the digits with these labels (bool (1797,)): a fixed permutation within each
    class, the first ~16.5% held out."""
    labels = labels.numpy()
    rng = np.random.default_rng(SPLIT_SEED)
    test_idx = []
    for c in range(10):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        test_idx.append(idx[: round(len(idx) * HELD_OUT / len(labels))])
    test_mask = np.zeros(len(labels), dtype=bool)
    test_mask[np.concatenate(test_idx)] = True
    return torch.from_numpy(test_mask)


def load_digits_split(split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """Return (images (N, 1, 8, 8) in [-1, 1], labels (N,)) for split 'train', 'test' or 'all' (the digits' ImageSet,
    scorelab.data.image_sets.digits_set, as float)."""
    from .image_sets import digits_set, to_signed

    if split not in ("train", "test", "all"):
        raise ScorelabError(f"digits split must be 'train', 'test' or 'all', got {split!r}")
    digits = digits_set()
    if split == "all":
        return to_signed(digits.pixels, digits.levels), digits.labels
    return digits.split(split)
