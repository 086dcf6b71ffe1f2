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


def reference_images(train: torch.Tensor, mirrored: bool = False) -> torch.Tensor:
    """The distinct training images (an image stored twice is one: its copies are still copies), with their mirror
    images when the model was trained with flips (a mirrored copy is a copy too)."""
    ref = torch.cat([train, train.flip(-1)]) if mirrored else train
    return torch.unique(ref.reshape(len(ref), -1), dim=0).reshape(-1, *train.shape[1:])


def copy_figures(x: torch.Tensor, reference: torch.Tensor) -> dict:
    """Median distance of x to its nearest reference image (reference_images), as a root-mean-square per value (in
    the [-1, 1] units of the images), and the share of x that are copies: nearer to their nearest reference image
    than a third of the distance to the second nearest."""
    d, _ = nearest_distances(x, reference, 2)
    rms = d[:, 0] / math.sqrt(x[0].numel())
    return {
        "nearest_train_rms": rms.median().item(),
        "copy_share": (d[:, 0] < MEMORISED_RATIO * d[:, 1]).double().mean().item(),
    }


def image_report(samples: torch.Tensor, images, labels: torch.Tensor | None = None, *, mirrored: bool = False) -> dict:
    """Figures of samples of a model trained on the ImageSet `images`:
    - copy figures (copy_figures) against every training image, and their mirror images when `mirrored`, beside the
      same for the held-out images (real images the model never saw: what a model that does not copy scores; null
      without them);
    - for samples drawn with class labels from a labelled set: the share the judge (metrics/judge.py, a classifier
      trained on the training split) puts in their class, beside the judge's accuracy on the held-out images;
    - each channel's mean and standard deviation, for the samples and for the training images.
    Samples all of one class are set beside that class's held-out and training images (and `label`, `label_class`
    say which)."""
    one = None
    if images.labels is not None and labels is not None and labels.numel() and bool((labels == labels[0]).all()):
        one = int(labels[0])
    train, _ = images.split("train")
    reference = reference_images(train, mirrored)
    out = copy_figures(samples, reference)
    held, _ = images.split("test", one)
    real = copy_figures(held, reference) if len(held) else {k: None for k in out}
    out.update({f"held_out_{k}": v for k, v in real.items()})
    if images.labels is not None and labels is not None:
        from .judge import judge_report

        out.update(judge_report(samples, labels, images, mirrored=mirrored))
    for name, x in (("", samples), ("train_", train if one is None else images.split("train", one)[0])):
        std, mean = torch.std_mean(x, dim=(0, 2, 3))
        out[f"{name}channel_mean"], out[f"{name}channel_std"] = mean.tolist(), std.tolist()
    if one is not None:
        out.update(label=one, label_class=images.classes[one])
    return out


def image_metrics_bytes(
    n: int, n_train: int, n_held_out: int, shape: tuple[int, int, int], mirrored: bool = False, judged: bool = False
) -> int:
    """Upper bound on what measuring n samples of `shape` holds at once: the float32 training and held-out images
    (twice: all classes and one class), the reference set (the training images and their mirror images,
    concatenated and sorted for unique: 4 copies), float64 copies of the queries and of the reference set, three
    float64 distance blocks of BLOCK x (reference images), and the judge's training and judging (`judged`)."""
    from .judge import judge_bytes

    dim = math.prod(shape)
    n_ref = n_train * (2 if mirrored else 1)
    return (
        2 * (n_train + n_held_out) * dim * 4
        + 4 * n_ref * dim * 4
        + (max(n, n_held_out) + n_ref) * dim * 8
        + 3 * BLOCK * n_ref * 8
        + (judge_bytes(shape[-1], shape[0]) if judged else 0)
    )
