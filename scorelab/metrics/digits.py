"""Sample quality for the 8x8 digits: a small CNN classifier shipped with the package; the Frechet distance.

The classifier is trained once by the project (`python -m scorelab.metrics.digits --out scorelab/assets`) on
the 1,500 training digits and shipped as `scorelab/assets/digits_classifier.safetensors`; the JSON beside it
records the architecture, the command, the seed and the held-out figures. It is a measuring instrument, so
`digits_report` always prints the same figures for the real held-out digits next to the samples' figures.

Inputs are digits as in `scorelab.data.digits`: float tensors (N, 1, 8, 8) in [-1, 1]. Samples outside that
range are passed through unclipped; clamp them first if the sampler does not.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import math
import platform
import shlex
import sys
import time
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from ..data.digits import load_digits_split
from ..errors import ScorelabError

ASSETS = Path(__file__).resolve().parent.parent / "assets"
WEIGHTS_NAME = "digits_classifier.safetensors"
RECORD_NAME = "digits_classifier.json"
CONFIDENT = 0.9  # a digit counts as "confidently classified" when its max class probability exceeds this
N_CLASSES = 10
_BATCH = 1024  # evaluation batch size


class DigitsShapeError(ScorelabError):
    """Digits of the wrong shape."""


class MissingClassifierError(ScorelabError, FileNotFoundError):
    """The shipped classifier weights are not where the package expects them."""


def _check_digits(x, name: str = "digits") -> torch.Tensor:
    t = torch.as_tensor(x)
    if t.ndim != 4 or tuple(t.shape[1:]) != (1, 8, 8) or t.shape[0] < 1:
        shape = tuple(t.shape)
        raise DigitsShapeError(f"{name} must have shape (N, 1, 8, 8) (values in [-1, 1]), got {shape}")
    return t.detach().to("cpu", torch.float32)  # the classifier runs on the CPU


class DigitsClassifier(nn.Module):
    """conv3x3(w) - conv3x3(2w) - pool - conv3x3(2w) - pool - linear(features) - linear(10), ReLU between.

    8x8 -> 4x4 -> 2x2 spatially; `features` returns the penultimate (post-ReLU) layer.
    """

    def __init__(self, width: int = 32, features: int = 64, n_classes: int = N_CLASSES, dropout: float = 0.2):
        super().__init__()
        self.conv1 = nn.Conv2d(1, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1)
        self.conv3 = nn.Conv2d(2 * width, 2 * width, 3, padding=1)
        self.fc = nn.Linear(2 * width * 2 * 2, features)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(features, n_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.conv1(x))
        h = F.max_pool2d(F.relu(self.conv2(h)), 2)
        h = F.max_pool2d(F.relu(self.conv3(h)), 2)
        return F.relu(self.fc(h.flatten(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.drop(self.features(x)))


# --------------------------------------------------------------------------------------------- training


def shift_augment(x: torch.Tensor, generator: torch.Generator, max_shift: int = 1) -> torch.Tensor:
    """Translate each image by an independent integer (dy, dx) in [-max_shift, max_shift]^2, filling with -1.

    -1 is the background value of the digits, so the shifted-in border is blank paper, not wrapped ink.
    """
    b = x.shape[0]
    p = max_shift
    padded = F.pad(x, (p, p, p, p), value=-1.0)
    shifts = torch.randint(-p, p + 1, (b, 2), generator=generator)
    out = torch.empty_like(x)
    for dy in range(-p, p + 1):
        for dx in range(-p, p + 1):
            sel = (shifts[:, 0] == dy) & (shifts[:, 1] == dx)
            if sel.any():
                out[sel] = padded[sel, :, p - dy : p - dy + 8, p - dx : p - dx + 8]
    return out


@torch.no_grad()
def _evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict:
    model.eval()
    probs = torch.cat([F.softmax(model(x[i : i + _BATCH]), dim=1) for i in range(0, len(x), _BATCH)])
    return {
        "accuracy": (probs.argmax(1) == y).double().mean().item(),
        "confident_share": (probs.max(1).values > CONFIDENT).double().mean().item(),
        "n": len(x),
    }


def train_classifier(
    out_dir,
    *,
    seed: int = 0,
    epochs: int = 40,
    batch_size: int = 64,
    lr: float = 2e-3,
    weight_decay: float = 1e-4,
    width: int = 32,
    features: int = 64,
    dropout: float = 0.2,
    max_shift: int = 1,
    command: str | None = None,
    log=print,
) -> dict:
    """Train the digits classifier on load_digits_split("train") and write the weights and their record.

    Adam with a cosine learning-rate decay to 0, cross-entropy, random +-`max_shift` pixel translations.
    Deterministic given `seed` on a given machine and thread count: initialisation, batch order and
    augmentation all come from generators seeded with `seed`; the global RNG is left as it was.
    Returns the record written to `digits_classifier.json`.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    x_train, y_train = load_digits_split("train")
    x_test, y_test = load_digits_split("test")
    config = {"width": width, "features": features, "n_classes": N_CLASSES, "dropout": dropout}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # module init and dropout use the global RNG; the fork keeps that local
        model = DigitsClassifier(**config)
        g = torch.Generator().manual_seed(seed)
        steps_per_epoch = -(-len(x_train) // batch_size)
        opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * steps_per_epoch)
        start = time.perf_counter()
        for epoch in range(epochs):
            model.train()
            perm = torch.randperm(len(x_train), generator=g)
            total = 0.0
            for i in range(0, len(x_train), batch_size):
                idx = perm[i : i + batch_size]
                xb = shift_augment(x_train[idx], g, max_shift) if max_shift > 0 else x_train[idx]
                loss = F.cross_entropy(model(xb), y_train[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                total += loss.item() * len(idx)
            if log is not None and (epoch + 1) % 10 == 0:
                log(f"epoch {epoch + 1}/{epochs}  train loss {total / len(x_train):.4f}")
        seconds = time.perf_counter() - start
    model.eval()
    held_out = _evaluate(model, x_test, y_test)
    train = _evaluate(model, x_train, y_train)

    from safetensors.torch import save_file

    weights_path = out_dir / WEIGHTS_NAME
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(weights_path), metadata={"format": "pt"})  # one key: byte-stable header
    from ..outputs import as_umask_allows

    as_umask_allows(weights_path)
    record = {
        "model": "scorelab.metrics.digits.DigitsClassifier",
        "config": config,
        "training": {
            "data": 'scorelab.data.digits.load_digits_split("train")',
            "seed": seed,
            "epochs": epochs,
            "batch_size": batch_size,
            "lr": lr,
            "weight_decay": weight_decay,
            "optimizer": "Adam, cosine decay to 0 over all steps",
            "loss": "cross-entropy",
            "augmentation": f"random integer shifts in [-{max_shift}, {max_shift}]^2 pixels, filled with -1",
            "seconds": round(seconds, 1),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "machine": platform.machine(),
        },
        "command": command
        or (
            f"train_classifier({str(out_dir)!r}, seed={seed}, epochs={epochs}, batch_size={batch_size}, "
            f"lr={lr}, weight_decay={weight_decay}, width={width}, features={features}, dropout={dropout}, "
            f"max_shift={max_shift})"
        ),
        "held_out": {"split": 'load_digits_split("test")', **held_out},
        "train": {"split": 'load_digits_split("train"), no augmentation', **train},
        "confident_threshold": CONFIDENT,
        "weights_sha256": hashlib.sha256(weights_path.read_bytes()).hexdigest(),
    }
    (out_dir / RECORD_NAME).write_text(json.dumps(record, indent=2) + "\n")
    return record


# --------------------------------------------------------------------------------------------- loading / use


@functools.lru_cache(maxsize=8)
def _load(device: str) -> DigitsClassifier:
    weights, record_path = ASSETS / WEIGHTS_NAME, ASSETS / RECORD_NAME
    if not weights.is_file() or not record_path.is_file():
        raise MissingClassifierError(
            f"digits classifier not found at {weights} (+ {RECORD_NAME}); "
            "build it with `python -m scorelab.metrics.digits --out scorelab/assets`"
        )
    from safetensors.torch import load_file

    record = json.loads(record_path.read_text())
    model = DigitsClassifier(**record["config"])
    model.load_state_dict(load_file(str(weights)))
    return model.to(device).eval().requires_grad_(False)


def load_classifier(device: str | torch.device = "cpu") -> DigitsClassifier:
    """The shipped classifier in eval mode with frozen weights; cached per device (do not modify it)."""
    return _load(str(torch.device(device)))


def classifier_record() -> dict:
    """The JSON record shipped beside the weights (config, command, seed, held-out accuracy)."""
    path = ASSETS / RECORD_NAME
    if not path.is_file():
        raise MissingClassifierError(f"digits classifier record not found at {path}")
    return json.loads(path.read_text())


@torch.no_grad()
def _logits_and_features(x) -> tuple[torch.Tensor, torch.Tensor]:
    x = _check_digits(x)
    model = load_classifier(x.device)
    logits, feats = [], []
    for i in range(0, x.shape[0], _BATCH):
        f = model.features(x[i : i + _BATCH])
        feats.append(f)
        logits.append(model.head(f))
    return torch.cat(logits), torch.cat(feats)


def classifier_features(x) -> torch.Tensor:
    """Penultimate-layer features (N, F) of digits (N, 1, 8, 8) in [-1, 1], on the CPU (where the classifier runs)."""
    return _logits_and_features(x)[1]


def classifier_probs(x) -> torch.Tensor:
    """Class probabilities (N, 10) of digits (N, 1, 8, 8) in [-1, 1], on the CPU (where the classifier runs)."""
    return F.softmax(_logits_and_features(x)[0], dim=1)


# ------------------------------------------------------------------------------------------- Frechet distance


def _psd_sqrt(a: torch.Tensor) -> torch.Tensor:
    """Square root of a symmetric PSD matrix by eigen-decomposition; rounding-negative eigenvalues -> 0."""
    w, v = torch.linalg.eigh((a + a.T) / 2)
    return (v * w.clamp_min(0).sqrt()) @ v.T


def _check_covariance(name: str, c: torch.Tensor) -> None:
    """A covariance is symmetric positive semi-definite, up to rounding (relative 1e-6). Non-finite ones pass: NaN
    features (a diverged sampler) give a NaN distance, as before."""
    scale = c.abs().max().item() if c.numel() else 0.0
    if not math.isfinite(scale):
        return
    eig = torch.linalg.eigvalsh((c + c.T) / 2)
    asym = (c - c.T).abs().max().item()
    if not (asym <= 1e-6 * scale and eig.min().item() >= -1e-6 * scale):
        raise ScorelabError(
            f"{name} must be a symmetric positive semi-definite covariance, got smallest eigenvalue "
            f"{eig.min().item():.4g} and asymmetry {asym:.4g} (largest entry {scale:.4g})"
        )


def gaussian_stats(feats) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean (F,) and covariance (F, F) (ddof = 1) of features (N, F), in float64."""
    f = torch.as_tensor(feats).to(torch.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ScorelabError(f"features must have shape (N, F) with N >= 2, got {tuple(f.shape)}")
    return f.mean(0), torch.cov(f.T, correction=1).reshape(f.shape[1], f.shape[1])


def frechet_from_stats(mu_a, cov_a, mu_b, cov_b) -> float:
    """Frechet distance between N(mu_a, cov_a) and N(mu_b, cov_b), computed in float64.

    tr((cov_a cov_b)^(1/2)) is taken as tr((S cov_b S)^(1/2)) with S = cov_a^(1/2): cov_a cov_b is similar to
    the symmetric PSD matrix S cov_b S, so both have the same (non-negative) eigenvalues, and the symmetric
    one has a stable eigen-decomposition. The distance is >= 0; rounding (square roots of eigenvalues that
    should be 0 come out ~1e-7) can push it a hair below 0 for equal inputs, so the result is clamped at 0.
    """
    mu_a, mu_b = (torch.as_tensor(m).to(torch.float64).reshape(-1) for m in (mu_a, mu_b))
    cov_a, cov_b = (torch.as_tensor(c).to(torch.float64) for c in (cov_a, cov_b))
    d = mu_a.shape[0]
    if mu_b.shape[0] != d or cov_a.shape != (d, d) or cov_b.shape != (d, d):
        raise ScorelabError(
            f"Frechet distance needs means (F,) and covariances (F, F) of one F, got {d}, "
            f"{mu_b.shape[0]}, {tuple(cov_a.shape)}, {tuple(cov_b.shape)}"
        )
    for name, c in (("cov_a", cov_a), ("cov_b", cov_b)):
        _check_covariance(name, c)
    s = _psd_sqrt(cov_a)
    m = s @ cov_b @ s
    tr_sqrt = torch.linalg.eigvalsh((m + m.T) / 2).clamp_min(0).sqrt().sum()
    # Frechet distance of two Gaussians (Dowson & Landau 1982), as FID uses it (Heusel et al. 2017):
    # |mu_a - mu_b|^2 + tr(Sa + Sb - 2 (Sa Sb)^(1/2))
    fd = (mu_a - mu_b).square().sum() + torch.trace(cov_a) + torch.trace(cov_b) - 2 * tr_sqrt
    return max(fd.item(), 0.0)


def frechet_distance(feats_a, feats_b) -> float:
    """Frechet distance between Gaussians fitted (mean, ddof-1 covariance) to features (N, F) and (M, F).

    Like FID, the estimate is biased upwards at finite N and M; compare figures at equal set sizes only.
    """
    fa, fb = torch.as_tensor(feats_a), torch.as_tensor(feats_b)
    if fa.ndim != 2 or fb.ndim != 2 or fa.shape[1] != fb.shape[1]:
        raise ScorelabError(f"features must be (N, F) and (M, F) with one F, got {tuple(fa.shape)}, {tuple(fb.shape)}")
    return frechet_from_stats(*gaussian_stats(fa.cpu()), *gaussian_stats(fb.cpu()))


# --------------------------------------------------------------------------------------------- report


@functools.lru_cache(maxsize=1)
def _held_out_baseline() -> dict:
    x, y = load_digits_split("test")
    logits, feats = _logits_and_features(x)
    probs = F.softmax(logits, dim=1)
    return {
        "features": feats,
        "labels": y,
        "accuracy": (probs.argmax(1) == y).double().mean().item(),
        "confident_share": (probs.max(1).values > CONFIDENT).double().mean().item(),
        "n": x.shape[0],
    }


@functools.lru_cache(maxsize=1)
def _train_features() -> tuple[torch.Tensor, torch.Tensor]:
    """Features and labels of the 1,500 training digits in a fixed shuffled order (seed 0)."""
    x, y = load_digits_split("train")
    order = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(0))
    return classifier_features(x[order]), y[order]


def digits_report(samples, *, reference=None, label: int | None = None) -> dict:
    """Classifier figures for generated digits (N, 1, 8, 8) in [-1, 1], beside the real held-out digits'.

    confident_share          share of samples whose max class probability exceeds 0.9
    class_histogram          share of samples per argmax class (10 numbers summing to 1)
    min/max_class_share      the smallest / largest entry of class_histogram (uniform = 0.1)
    frechet                  Frechet distance of the samples' penultimate features to those of the
                             `reference` digits (N', 1, 8, 8); default: the 297 held-out digits,
                             load_digits_split("test"), or with `label` (samples all asked for that
                             class) the held-out digits of that class only: about 30, fewer than the
                             64 features, so the figure is noisy (two disjoint sets of 30 real training
                             7s scored 67.4 and 16.7); the floor then has at most the class's ~150
                             training digits
    held_out_confident_share, classifier_held_out_accuracy: the same classifier on the real held-out digits
    frechet_real_same_n      the Frechet distance that real digits get: min(N, 1500) real training digits
                             (a fixed subset; of class `label` only, with `label`) against the same
                             reference. The Frechet estimate is biased upwards at small N (64 features),
                             so read `frechet` against this floor at (nearly) the same N, not against 0.
                             It is one draw: at N = 297, three different subsets gave 7.5, 10.7 and 18.8.
                             (The classifier was trained on these digits; the reference digits it never
                             saw.)
    frechet_real_n           the number of real training digits behind frechet_real_same_n
    reference                what `frechet` compares with, in words
    """
    x = _check_digits(samples, "samples").cpu()
    if label is not None and (isinstance(label, bool) or label not in range(N_CLASSES)):
        raise ScorelabError(f"label must be a class 0-{N_CLASSES - 1}, got {label!r}")
    if label is not None and reference is not None:
        raise ScorelabError("give a label (its class's held-out digits are the reference) or a reference, not both")
    logits, feats = _logits_and_features(x)
    probs = F.softmax(logits, dim=1)
    hist = torch.bincount(probs.argmax(1), minlength=N_CLASSES).double() / x.shape[0]
    base = _held_out_baseline()
    real, real_labels = _train_features()
    if label is not None:
        ref_feats, real = base["features"][base["labels"] == label], real[real_labels == label]
        n_ref, described = ref_feats.shape[0], f"the held-out digits of class {label}"
    elif reference is None:
        ref_feats, n_ref, described = base["features"], base["n"], "the held-out digits"
    else:
        ref = _check_digits(reference, "reference").cpu()
        ref_feats, n_ref, described = classifier_features(ref), ref.shape[0], "the given reference"
    real = real[: x.shape[0]]
    return {
        "n_samples": x.shape[0],
        "confident_share": (probs.max(1).values > CONFIDENT).double().mean().item(),
        "class_histogram": hist.tolist(),
        "min_class_share": hist.min().item(),
        "max_class_share": hist.max().item(),
        "frechet": frechet_distance(feats, ref_feats),
        "n_reference": n_ref,
        "held_out_confident_share": base["confident_share"],
        "classifier_held_out_accuracy": base["accuracy"],
        "frechet_real_same_n": frechet_distance(real, ref_feats),
        "frechet_real_n": real.shape[0],
        "reference": described,
    }


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    p = argparse.ArgumentParser(
        prog="python -m scorelab.metrics.digits",
        description="Train the shipped 8x8-digits classifier and write its weights.",
    )
    p.add_argument("--out", default=str(ASSETS), help="output folder (default: the package's assets)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=40)
    args = p.parse_args(argv)
    command = shlex.join(["python", "-m", "scorelab.metrics.digits", *argv])
    record = train_classifier(args.out, seed=args.seed, epochs=args.epochs, command=command)
    h = record["held_out"]
    print(
        f"held-out accuracy {h['accuracy']:.4f}, confident share {h['confident_share']:.4f} "
        f"(n = {h['n']}); wrote {Path(args.out) / WEIGHTS_NAME}"
    )
    return record


def conditional_report(samples, labels) -> dict:
    """For class-conditional samples: the share the classifier assigns to the requested class, and the diversity
    within each class (mean pairwise pixel distance between samples of one class, averaged over classes) beside
    the same figure for the held-out digits (guidance trades diversity for accuracy)."""
    x, y = _check_digits(samples), torch.as_tensor(labels).long().cpu()
    if y.shape != (x.shape[0],):
        raise ScorelabError(f"labels must have shape ({x.shape[0]},), one per sample, got {tuple(y.shape)}")
    pred = classifier_probs(x).argmax(1)

    def diversity(images, classes) -> float:
        per_class = []
        for c in classes.unique():
            f = images[classes == c].flatten(1).double()
            m = f.shape[0]
            if m >= 2:  # in row blocks: one class can hold every sample (--label), and m x m would not fit
                rows = max(1, 2**22 // m)
                total = sum(torch.cdist(f[i : i + rows], f).sum().item() for i in range(0, m, rows))
                per_class.append(total / (m * (m - 1)))
        return sum(per_class) / len(per_class) if per_class else float("nan")

    real_x, real_y = load_digits_split("test")
    return {
        "conditional_accuracy": (pred == y).double().mean().item(),
        "within_class_diversity": diversity(x, y),
        "held_out_within_class_diversity": diversity(real_x, real_y),
    }


if __name__ == "__main__":
    main()
