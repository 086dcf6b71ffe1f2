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


def copy_figures(x: torch.Tensor, train: torch.Tensor) -> dict:
    """Median distance of x to its nearest training image, as a root-mean-square per value (in the [-1, 1] units of
    the images), and the share of x that are copies: nearer to their nearest training image than a third of the
    distance to the second nearest."""
    d, _ = nearest_distances(x, train, 2)
    rms = d[:, 0] / math.sqrt(x[0].numel())
    return {
        "nearest_train_rms": rms.median().item(),
        "copy_share": (d[:, 0] < MEMORISED_RATIO * d[:, 1]).double().mean().item(),
    }


def image_report(samples: torch.Tensor, train: torch.Tensor, held_out: torch.Tensor) -> dict:
    """The samples' copy figures (copy_figures), the held-out images' (real images the model never saw: what a model
    that does not copy should score; null without a held-out split), and the mean and standard deviation of each
    channel for the samples and for the training images."""
    out = copy_figures(samples, train)
    real = copy_figures(held_out, train) if len(held_out) else {k: None for k in out}
    out.update({f"held_out_{k}": v for k, v in real.items()})
    dims = (0, 2, 3)
    out["channel_mean"] = samples.double().mean(dims).tolist()
    out["channel_std"] = samples.double().std(dims).tolist()
    out["train_channel_mean"] = train.double().mean(dims).tolist()
    out["train_channel_std"] = train.double().std(dims).tolist()
    return out


def image_metrics_bytes(n: int, n_train: int, n_held_out: int, dim: int) -> int:
    """Upper bound on what image_report holds at once beyond its inputs: float64 copies of the queries (the samples,
    or the held-out images) and of the training images, three float64 distance blocks of BLOCK x n_train, and two
    float64 copies of the samples for their channel statistics."""
    return (max(n, n_held_out) + n_train) * dim * 8 + 3 * BLOCK * n_train * 8 + 2 * n * dim * 8
