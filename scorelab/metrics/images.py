"""Figures for samples of a model trained on a folder of images, where no judge (like the digits classifier) exists:
how close each sample lies to the training images (does the model copy them?), set beside the same figures for
held-out real images, and the per-channel statistics of the samples against the data's."""

from __future__ import annotations

import math

import torch

from ..errors import ScorelabError

BLOCK = 256  # query images per distance block: the block's distance matrix is BLOCK x (training images) float64
MEMORISED_RATIO = 1 / 3  # Gu et al. 2023 ("On Memorization in Diffusion Models", Sec. 3): copy if d1 < d2 / 3


def nearest_distances(
    x: torch.Tensor, ref: torch.Tensor, k: int = 2, *, mirrored: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """(distances (n, k), indices (n, k)): the Euclidean distances from each of x (n, C, H, W) to its k nearest images
    in ref (m, C, H, W), nearest first, computed in float64 blocks of BLOCK queries. mirrored: the distance to a
    reference image is the smaller of the distances to it and to its mirror image (left-right)."""
    if x.shape[1:] != ref.shape[1:]:
        raise ScorelabError(f"images of shape {tuple(x.shape[1:])} cannot be compared with {tuple(ref.shape[1:])}")
    if ref.shape[0] < k:
        raise ScorelabError(f"the {k} nearest images need at least {k} reference images, got {ref.shape[0]}")
    b = ref.reshape(len(ref), -1).double()
    b2 = (b * b).sum(1)
    dists, index = [], []
    for start in range(0, len(x), BLOCK):
        block = x[start : start + BLOCK]
        sq = None
        # d(q, flip(r)) = d(flip(q), r): the query's mirror image against the references
        for q in (block, block.flip(-1)) if mirrored else (block,):
            q = q.reshape(len(q), -1).double()
            # |q - b|^2 = |q|^2 + |b|^2 - 2 q.b, in float64, so that a copy of a reference image is at distance ~1e-7
            d2 = ((q * q).sum(1, keepdim=True) + b2[None] - 2 * q @ b.T).clamp_(min=0)
            sq = d2 if sq is None else torch.minimum(sq, d2)
        d, i = sq.topk(k, dim=1, largest=False)
        dists.append(d.sqrt())
        index.append(i)
    return torch.cat(dists), torch.cat(index)


def reference_images(train: torch.Tensor, mirrored: bool = False) -> torch.Tensor:
    """The distinct training images: an image stored twice is one, and so, when the model was trained with flips
    (`mirrored`), are an image and its mirror image (each pair is kept as whichever of the two comes first in
    lexicographic order), so that a copy of either is still found to be a copy."""
    flat = train.reshape(len(train), -1)
    if mirrored:
        flipped = train.flip(-1).reshape(len(train), -1)
        differ = flat != flipped
        first = differ.int().argmax(1)  # the first value where the image and its mirror differ (0 if none)
        rows = torch.arange(len(flat))
        flat = torch.where((flipped[rows, first] < flat[rows, first])[:, None], flipped, flat)
    return torch.unique(flat, dim=0).reshape(-1, *train.shape[1:])


def copy_figures(x: torch.Tensor, reference: torch.Tensor, *, mirrored: bool = False) -> dict:
    """Median distance of x to its nearest reference image (reference_images; or its mirror image, when `mirrored`),
    as a root-mean-square per value (in the [-1, 1] units of the images), and the share of x that are copies: nearer
    to their nearest reference image than a third of the distance to the second nearest (null with a single
    reference image, where a second nearest does not exist)."""
    d, _ = nearest_distances(x, reference, min(2, len(reference)), mirrored=mirrored)
    rms = d[:, 0] / math.sqrt(x[0].numel())
    copies = (d[:, 0] < MEMORISED_RATIO * d[:, 1]).double().mean().item() if d.shape[1] == 2 else None
    return {"nearest_train_rms": rms.median().item(), "copy_share": copies}


def image_report(
    samples: torch.Tensor,
    images,
    labels: torch.Tensor | None = None,
    *,
    mirrored: bool = False,
    progress: bool = False,
) -> dict:
    """Figures of samples of a model trained on the ImageSet `images`:
    - copy figures (copy_figures) against every training image, and their mirror images when `mirrored`, beside the
      same for the held-out images (real images the model never saw: what a model that does not copy scores; null
      without them);
    - for samples drawn with class labels from a set of two or more classes: the share the judge (metrics/judge.py,
      a classifier trained on the training split) puts in their class, beside its accuracy on the held-out images;
    - each channel's mean and standard deviation, for the samples and for the training images.
    Samples all of one class are set beside that class's held-out and training images (and `label`, `label_class`
    say which)."""
    one = None
    if images.labels is not None and labels is not None and labels.numel() and bool((labels == labels[0]).all()):
        one = int(labels[0])
    train, _ = images.split("train")
    reference = reference_images(train, mirrored)
    out = copy_figures(samples, reference, mirrored=mirrored)
    held, _ = images.split("test", one)
    real = copy_figures(held, reference, mirrored=mirrored) if len(held) else {k: None for k in out}
    out.update({f"held_out_{k}": v for k, v in real.items()})
    if images.labels is not None and labels is not None and len(images.classes) > 1:
        from .judge import judge_report

        out.update(judge_report(samples, labels, images, mirrored=mirrored, progress=progress))
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
    (twice: all classes and one class), the reference set (the training images, their mirror images and the
    chosen ones, sorted for unique: 5 copies), a float64 copy of the reference set, a block of float64 queries (and
    their mirror images), four float64 distance blocks of BLOCK x (training images), and the judge's training and
    judging (`judged`)."""
    from .judge import judge_bytes

    dim = math.prod(shape)
    return (
        2 * (n_train + n_held_out) * dim * 4
        + 5 * n_train * dim * 4
        + n_train * dim * 8
        + 2 * min(BLOCK, max(n, n_held_out)) * dim * 8
        + 4 * BLOCK * n_train * 8
        + 4 * n * 8
        + (judge_bytes(shape[-1], shape[0], n_train) if judged else 0)
    )
