"""Figures for samples of a model trained on a folder of images, where no judge (like the digits classifier) exists:
how close each sample lies to the training images (does the model copy them?), set beside the same figures for
held-out real images, and the per-channel statistics of the samples against the data's."""

from __future__ import annotations

import math

import torch

from ..errors import ScorelabError

BLOCK = 256  # query images per distance block: the block's distance matrix is BLOCK x (training images) float64
MEMORISED_RATIO = 1 / 3  # Gu et al. 2023 ("On Memorization in Diffusion Models", Sec. 3): copy if d1 < d2 / 3


def nearest_distances(x: torch.Tensor, ref: torch.Tensor, k: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """(distances (n, k), indices (n, k)): the Euclidean distances from each of x (n, ...) to its k nearest images
    in ref (m, ...), nearest first, computed in float64 blocks of BLOCK queries."""
    if x.shape[1:] != ref.shape[1:]:
        raise ScorelabError(f"images of shape {tuple(x.shape[1:])} cannot be compared with {tuple(ref.shape[1:])}")
    if ref.shape[0] < k:
        raise ScorelabError(f"the {k} nearest images need at least {k} reference images, got {ref.shape[0]}")
    a, b = x.reshape(len(x), -1).double(), ref.reshape(len(ref), -1).double()
    b2 = (b * b).sum(1)
    dists, index = [], []
    for start in range(0, len(a), BLOCK):
        q = a[start : start + BLOCK]
        # |q - b|^2 = |q|^2 + |b|^2 - 2 q.b, in float64, so that a copy of a reference image is at distance ~1e-7
        sq = ((q * q).sum(1, keepdim=True) + b2[None] - 2 * q @ b.T).clamp_(min=0)
        d, i = sq.topk(k, dim=1, largest=False)
        dists.append(d.sqrt())
        index.append(i)
    return torch.cat(dists), torch.cat(index)


def reference_images(
    train: torch.Tensor, mirrored: bool = False, labels: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(images, labels or None): the distinct training images (an image stored twice is one: its copies are still
    copies), with their mirror images when the model was trained with flips (a mirrored copy is a copy too); an
    image stored under two classes keeps one of them."""
    ref = torch.cat([train, train.flip(-1)]) if mirrored else train
    flat, inverse = torch.unique(ref.reshape(len(ref), -1), dim=0, return_inverse=True)
    out_labels = None
    if labels is not None:
        ref_labels = torch.cat([labels, labels]) if mirrored else labels
        out_labels = torch.empty(len(flat), dtype=ref_labels.dtype).scatter_(0, inverse, ref_labels)
    return flat.reshape(-1, *train.shape[1:]), out_labels


def copy_figures(
    x: torch.Tensor,
    reference: torch.Tensor,
    x_labels: torch.Tensor | None = None,
    reference_labels: torch.Tensor | None = None,
) -> dict:
    """Median distance of x to its nearest reference image (reference_images), as a root-mean-square per value (in
    the [-1, 1] units of the images); the share of x that are copies: nearer to their nearest reference image than
    a third of the distance to the second nearest; and, given labels for both, the share of x whose nearest
    reference image has x's label (a nearest-neighbour classifier in pixel space: a weak judge, so compare it with
    the held-out images' figure)."""
    d, index = nearest_distances(x, reference, 2)
    rms = d[:, 0] / math.sqrt(x[0].numel())
    out = {
        "nearest_train_rms": rms.median().item(),
        "copy_share": (d[:, 0] < MEMORISED_RATIO * d[:, 1]).double().mean().item(),
    }
    if x_labels is not None and reference_labels is not None:
        out["nearest_class_agreement"] = (reference_labels[index[:, 0]] == x_labels).double().mean().item()
    return out


def image_report(samples: torch.Tensor, images, labels: torch.Tensor | None = None, *, mirrored: bool = False) -> dict:
    """Figures of samples of a model trained on the ImageSet `images`:
    - copy figures (copy_figures) against every training image, and their mirror images when `mirrored`;
    - for samples drawn with class labels: the nearest training image's class agreement (copy_figures);
    - the same for the held-out images (real images the model never saw: what a model that does not copy scores;
      null without them);
    - each channel's mean and standard deviation, for the samples and for the training images.
    Samples all of one class are set beside that class's held-out and training images (and `label`, `label_class`
    say which)."""
    one = None
    if images.labels is not None and labels is not None and labels.numel() and bool((labels == labels[0]).all()):
        one = int(labels[0])
    train, train_labels = images.split("train")
    reference, reference_labels = reference_images(train, mirrored, train_labels)
    out = copy_figures(samples, reference, labels if images.labels is not None else None, reference_labels)
    held, held_labels = images.split("test", one)
    real = copy_figures(held, reference, held_labels, reference_labels) if len(held) else {k: None for k in out}
    out.update({f"held_out_{k}": v for k, v in real.items()})
    for name, x in (("", samples), ("train_", train if one is None else images.split("train", one)[0])):
        std, mean = torch.std_mean(x, dim=(0, 2, 3))
        out[f"{name}channel_mean"], out[f"{name}channel_std"] = mean.tolist(), std.tolist()
    if one is not None:
        out.update(label=one, label_class=images.classes[one])
    return out


def image_metrics_bytes(n: int, n_train: int, n_held_out: int, dim: int, mirrored: bool = False) -> int:
    """Upper bound on what measuring n samples holds at once: the float32 training and held-out images (twice: all
    classes and one class), the reference set (the training images and their mirror images, concatenated and sorted
    for unique: 4 copies), float64 copies of the queries and of the reference set, and three float64 distance blocks
    of BLOCK x (reference images)."""
    n_ref = n_train * (2 if mirrored else 1)
    return (
        2 * (n_train + n_held_out) * dim * 4
        + 4 * n_ref * dim * 4
        + (max(n, n_held_out) + n_ref) * dim * 8
        + 3 * BLOCK * n_ref * 8
    )
