"""A judge for class-conditional samples of a model trained on a folder of images: a small CNN classifier trained on
the folder's own training split, the way the digits classifier judges digits (metrics/digits.py), except that it is
trained where it is needed (1,000 steps of 64: about 22 s at 16x16 greyscale, 85 s at 32x32 RGB on 2 cores) instead of
shipped. Its accuracy on the held-out split is the ceiling the samples' conditional accuracy is read against.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from ..errors import ScorelabError

MAX_SIDE = 32  # images are average-pooled to at most 32x32 first: the class shows at that size, and cost is bounded
STEPS, BATCH, LR, WEIGHT_DECAY = 1000, 64, 2e-3, 1e-4
_CACHE: dict[tuple, tuple[nn.Module, float | None]] = {}


class Judge(nn.Module):
    """conv3x3(w) - conv3x3(2w) - pool - conv3x3(2w) - pool - conv3x3(4w) - global average - linear, ReLU between;
    any input side (fit_side)."""

    def __init__(self, channels: int, n_classes: int, width: int = 32):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(2 * width, 4 * width, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(4 * width, n_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(fit_side(x))


def fit_side(x: torch.Tensor) -> torch.Tensor:
    """Images average-pooled to MAX_SIDE when larger, and enlarged (nearest) to 4 when smaller, which the two
    poolings need."""
    if x.shape[-1] > MAX_SIDE:
        return F.adaptive_avg_pool2d(x, MAX_SIDE)
    if x.shape[-1] < 4:
        return F.interpolate(x, size=4, mode="nearest")
    return x


def train_judge(images, *, mirrored: bool = False, seed: int = 0, progress: bool = False):
    """(judge, its accuracy on the held-out split or None without one), trained on the ImageSet's training split:
    Adam with a cosine decay to 0 over STEPS batches of BATCH drawn with replacement, cross-entropy, and random
    left-right flips when the model was trained with them (`mirrored`). Deterministic for a seed on the CPU; the
    caller's random state is left alone. Kept for the process, per data fingerprint."""
    if images.labels is None or len(images.classes) < 2:
        raise ScorelabError("a judge needs an image set of two or more classes")
    key = (images.fingerprint, mirrored, seed)
    if key in _CACHE:
        return _CACHE[key]
    x, y = images.split("train")
    x = fit_side(x)  # once, not per batch: a batch of large images would otherwise be copied at full size
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Judge(x.shape[1], len(images.classes))
    opt = torch.optim.Adam(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    decay = torch.optim.lr_scheduler.CosineAnnealingLR(opt, STEPS)  # Loshchilov & Hutter 2017, eq. 5, one cycle
    model.train()
    with torch.inference_mode(False), torch.enable_grad():  # also when the caller measures under no_grad
        _fit(model, opt, decay, x, y, g, mirrored, progress)
    model.eval().requires_grad_(False)
    held, held_labels = images.split("test")
    accuracy = (predict(model, held) == held_labels).double().mean().item() if len(held) else None
    _CACHE.clear()
    _CACHE[key] = (model, accuracy)
    return model, accuracy


def _fit(model, opt, decay, x, y, g, mirrored: bool, progress: bool) -> None:
    for _ in tqdm(range(STEPS), desc="train judge", disable=not progress, leave=False):
        idx = torch.randint(0, len(x), (BATCH,), generator=g)
        batch = x[idx]
        if mirrored:
            flip = torch.rand(BATCH, generator=g) < 0.5
            batch = torch.where(flip[:, None, None, None], batch.flip(-1), batch)
        loss = F.cross_entropy(model(batch), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        decay.step()


PREDICT_BATCH = 256


def judge_bytes(side: int, channels: int, n_train: int = 0) -> int:
    """Upper bound on what training the judge and judging hold at once beyond the images: its float32 copy of the
    n_train training images and that copy at the judge's side, and either two layers' activations of a PREDICT_BATCH
    batch or everything autograd keeps of a BATCH batch (the four convolutions' inputs and outputs, twice for the
    gradients), at the judge's side."""
    s = min(max(side, 4), MAX_SIDE)
    predict = PREDICT_BATCH * 2 * 4 * 32 * s * s * 4
    train = BATCH * 2 * (channels + 8 * 32) * s * s * 4 * 2
    return n_train * channels * (side * side + s * s) * 4 + max(predict, train) + 2**20


@torch.no_grad()
def predict(judge: nn.Module, x: torch.Tensor, batch: int = PREDICT_BATCH) -> torch.Tensor:
    """The judge's class for each image of x (N, C, H, W) in [-1, 1]."""
    if len(x) == 0:
        return torch.zeros(0, dtype=torch.long)
    return torch.cat([judge(x[i : i + batch].float()).argmax(1) for i in range(0, len(x), batch)])


def judge_report(
    samples: torch.Tensor, labels: torch.Tensor, images, *, mirrored: bool = False, progress: bool = False
) -> dict:
    """The share of samples the judge (train_judge) puts in the class they were drawn for, beside the judge's own
    accuracy on the held-out images (the ceiling; null without a held-out split)."""
    judge, accuracy = train_judge(images, mirrored=mirrored, progress=progress)
    return {
        "conditional_accuracy": (predict(judge, samples) == labels).double().mean().item(),
        "judge_held_out_accuracy": accuracy,
    }
