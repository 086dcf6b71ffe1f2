"""Moment z-scores of samples against a Gaussian mixture: is a sampler distinguishable from exact sampling?"""

from __future__ import annotations

import math

import torch

from ..analytic import GaussianMixture
from ..errors import ScorelabError
from .samples import _as_points, component_stats


def moment_z_scores(samples: torch.Tensor, mixture: GaussianMixture) -> dict:
    """Assign each sample to its nearest component mean; per component compare weight, per-coordinate mean and
    per-coordinate std with the exact values as z-scores under sampling error at this n:
    weight sqrt(w (1 - w) / n), mean s / sqrt(n_k), std ratio - 1 sqrt(1 / (2 (n_k - 1))) (normal-theory SE of a
    sample std). Returns {'max_z', 'weight_z', 'mean_z', 'std_z', 'weights'}; a component with weight that fewer
    than two samples reach gives max_z = inf.
    """
    x = _as_points(samples, "samples").detach().cpu()
    if x.shape[1] != mixture.dim:
        raise ScorelabError(f"samples must have the mixture's dimension D = {mixture.dim}, got shape {tuple(x.shape)}")
    n = x.shape[0]
    means, stds, w = mixture.means.cpu().double(), mixture.stds.cpu().double(), mixture.weights.cpu()
    if not torch.isfinite(x).all():
        return {"max_z": math.inf, "weights": [math.nan] * len(w)}
    stats = component_stats(x, means)
    weight_z, mean_z, std_z = [], [], []
    for k, (nk, mk, sk) in enumerate(zip(stats["count"], stats["mean"], stats["std"], strict=True)):
        wk = w[k].item()
        if 0 < wk < 1:
            weight_z.append((nk / n - wk) / math.sqrt(wk * (1 - wk) / n))
        else:  # a certain or impossible component: any deviation is infinitely unlikely
            weight_z.append(0.0 if nk / n == wk else math.inf)
        if wk == 0:
            continue
        if nk < 2:  # a component with weight that (almost) no sample reached
            mean_z.append(math.inf)
            std_z.append(math.inf)
            continue
        mean_z += ((torch.tensor(mk, dtype=torch.float64) - means[k]) / (stds[k] / math.sqrt(nk))).tolist()
        std_z += ((torch.tensor(sk, dtype=torch.float64) / stds[k] - 1) / math.sqrt(1 / (2 * (nk - 1)))).tolist()
    every = [abs(v) for v in weight_z + mean_z + std_z]
    return {"max_z": max(every), "weight_z": weight_z, "mean_z": mean_z, "std_z": std_z, "weights": stats["weight"]}
