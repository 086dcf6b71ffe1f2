"""Distances between point sets: sliced Wasserstein-2, kernel MMD, and per-mode statistics.

All three take samples as (N, D) tensors (anything `torch.as_tensor` accepts), compute in float64 on the
input's device, and return plain Python numbers / lists so the results can go straight into JSON.
"""

from __future__ import annotations

import math
import numbers

import torch

from ..errors import ScorelabError

BLOCK_ELEMENTS = 2**22  # pairwise-kernel values held in memory at once (32 MB in float64), whatever the set sizes


def _as_points(x, name: str) -> torch.Tensor:
    t = torch.as_tensor(x)
    if t.ndim != 2 or t.shape[0] < 1 or t.shape[1] < 1:
        raise ScorelabError(f"{name} must be a point set of shape (N, D), got {tuple(t.shape)}")
    return t.to(torch.float64)


def _check_pair(x, y) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = _as_points(x, "x"), _as_points(y, "y")
    if x.shape[1] != y.shape[1]:
        raise ScorelabError(f"x and y must have the same dimension D, got {x.shape[1]} and {y.shape[1]}")
    return x, y.to(x.device)


def projections(dim: int, n_projections: int = 1000, *, seed: int = 0) -> torch.Tensor:
    """(n_projections, dim) unit vectors, uniform on the sphere; the same seed gives the same directions.

    Drawn on CPU in float32 from a generator seeded with `seed` (so independent of any global RNG state),
    then normalised in float64.
    """
    for name, n in (("dim", dim), ("n_projections", n_projections)):
        if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
            raise ScorelabError(f"{name} must be an integer >= 1, got {n!r}")
    g = torch.Generator().manual_seed(seed)
    theta = torch.randn(n_projections, dim, generator=g).to(torch.float64)
    return theta / theta.norm(dim=1, keepdim=True)


def _w2_sq_1d(px: torch.Tensor, py: torch.Tensor) -> torch.Tensor:
    """Exact W2^2 between 1-D empirical measures, per row of px (P, N) and py (P, M), both sorted along dim 1.

    W2^2 = integral over u in (0, 1) of (F^-1(u) - G^-1(u))^2 with F^-1, G^-1 the (step) quantile functions.
    For N == M this is the mean squared difference of the sorted values. For N != M the steps of both
    quantile functions break (0, 1) at the levels i/N and j/M; on each piece both are constant, so the
    integral is a finite weighted sum (at most N + M pieces), done in exact integer arithmetic on the
    common denominator N*M.
    """
    n, m = px.shape[1], py.shape[1]
    if n == m:
        return ((px - py) ** 2).mean(dim=1)
    dev = px.device  # levels i/N and j/M as integers over the denominator N*M; unique() also sorts them
    levels_x, levels_y = torch.arange(1, n + 1, device=dev) * m, torch.arange(1, m + 1, device=dev) * n
    cuts = torch.cat([levels_x, levels_y]).unique()
    prev = torch.cat([cuts.new_zeros(1), cuts[:-1]])
    weight = (cuts - prev).to(torch.float64) / (n * m)  # piece lengths, summing to 1
    ix = (prev + cuts) // (2 * m)  # floor(midpoint * N): the order statistic of x on this piece
    iy = (prev + cuts) // (2 * n)
    return (px[:, ix] - py[:, iy]) ** 2 @ weight


class SlicedW2Reference:
    """A reference set with its projections sorted once, for many sliced W2 distances to the same set."""

    def __init__(self, y, *, n_projections: int = 1000, seed: int = 0):
        y = _as_points(y, "y")
        self.theta = projections(y.shape[1], n_projections, seed=seed).to(y.device)
        # Bonneel, Rabin, Peyre & Pfister 2015, "Sliced and Radon Wasserstein barycenters of measures" (SW2).
        # Projections are laid out one per row (P, M): sorting along contiguous rows is about 2x faster.
        self.sorted = (self.theta @ y.T).sort(dim=1).values

    def distance(self, x) -> float:
        x = _as_points(x, "x")
        if x.shape[1] != self.theta.shape[1]:
            raise ScorelabError(f"x must have dimension {self.theta.shape[1]} like the reference, got {x.shape[1]}")
        px = (self.theta @ x.to(self.theta.device).T).sort(dim=1).values  # (P, N)
        return math.sqrt(_w2_sq_1d(px, self.sorted).mean().item())


def sliced_wasserstein2(x, y, *, n_projections: int = 1000, seed: int = 0) -> float:
    """Sliced Wasserstein-2 distance between the empirical measures of x (N, D) and y (M, D).

    SW2 = sqrt( mean over projections theta of W2^2(theta . x, theta . y) ), with fixed directions
    (`projections(D, n_projections, seed=seed)`), so every call with the same seed measures along the same
    directions and results are comparable across calls.

    Each 1-D W2^2 is exact for the two empirical measures (`_w2_sq_1d`): for N == M the mean squared
    difference of the sorted projections; for N != M the integral of the squared difference of the two
    step quantile functions over the merged grid of levels i/N and j/M (so a set and the same set repeated
    twice are at distance 0).
    """
    x, y = _check_pair(x, y)
    return SlicedW2Reference(y, n_projections=n_projections, seed=seed).distance(x)


def _sq_dists(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    d = (a * a).sum(1, keepdim=True) + (b * b).sum(1) - 2 * a @ b.T
    return d.clamp_min(0)


def median_bandwidth(x, y=None, *, max_points: int = 2000, seed: int = 0) -> float:
    """Median heuristic (Gretton et al. 2012, sec. 8): the median Euclidean distance between distinct points of the
    pooled set x (+ y).

    For pooled sets larger than `max_points` the median is taken over a fixed random subset of
    `max_points` points (drawn with a generator seeded with `seed`) to keep memory at O(max_points^2).
    """
    pooled = _as_points(x, "x") if y is None else torch.cat(_check_pair(x, y))
    if pooled.shape[0] < 2:
        raise ScorelabError("the median heuristic needs at least two points")
    if pooled.shape[0] > max_points:
        g = torch.Generator().manual_seed(seed)
        pooled = pooled[torch.randperm(pooled.shape[0], generator=g)[:max_points].to(pooled.device)]
    d2 = _sq_dists(pooled, pooled)
    iu = torch.triu_indices(*d2.shape, offset=1, device=d2.device)
    h = d2[iu[0], iu[1]].median().sqrt().item()
    if h == 0:
        raise ScorelabError("median heuristic bandwidth is 0 (most pooled pairs coincide); pass bandwidths")
    return h


def _kernel_sum(a: torch.Tensor, b: torch.Tensor, inv_two_h2: torch.Tensor, *, drop_diagonal: bool) -> float:
    """Sum over pairs of sum_h exp(-|a_i - b_j|^2 / (2 h^2)), in row blocks; optionally without i == j."""
    total = torch.zeros((), dtype=torch.float64, device=a.device)
    rows = max(1, BLOCK_ELEMENTS // (b.shape[0] * inv_two_h2.numel()))
    for start in range(0, a.shape[0], rows):
        d2 = _sq_dists(a[start : start + rows], b)
        k = torch.exp(-d2.unsqueeze(-1) * inv_two_h2).sum(-1)
        total = total + k.sum()
    if drop_diagonal:  # k(a_i, a_i) = 1 for every bandwidth
        total = total - a.shape[0] * inv_two_h2.numel()
    return total.item()


def mmd_rbf(x, y, *, bandwidths=None) -> float:
    """Unbiased estimate of the squared MMD between x (N, D) and y (M, D) with a Gaussian RBF kernel.

    k(a, b) = sum over h in bandwidths of exp(-|a - b|^2 / (2 h^2)) (a sum of RBF kernels is a
    characteristic kernel too). Default bandwidths: the single median-heuristic bandwidth h = median
    Euclidean distance between distinct points of the pooled set x + y (`median_bandwidth`).

    Being unbiased, the estimate can be slightly negative when x and y come from the same distribution.
    Needs N >= 2 and M >= 2.
    """
    x, y = _check_pair(x, y)
    n, m = x.shape[0], y.shape[0]
    if n < 2 or m < 2:
        raise ScorelabError(f"unbiased MMD needs at least two points in each set, got {n} and {m}")
    if bandwidths is None:
        h = torch.tensor([median_bandwidth(x, y)], dtype=torch.float64, device=x.device)  # NaN for NaN samples
    else:
        h = torch.as_tensor(bandwidths, dtype=torch.float64, device=x.device).reshape(-1)
        if h.numel() == 0 or not bool(((h > 0) & torch.isfinite(h)).all()):
            raise ScorelabError(f"bandwidths must be a non-empty list of positive finite numbers, got {bandwidths!r}")
    inv_two_h2 = 1.0 / (2.0 * h * h)
    # Gretton et al. 2012, "A kernel two-sample test", JMLR, eq. (3): unbiased MMD_u^2.
    kxx = _kernel_sum(x, x, inv_two_h2, drop_diagonal=True) / (n * (n - 1))
    kyy = _kernel_sum(y, y, inv_two_h2, drop_diagonal=True) / (m * (m - 1))
    kxy = _kernel_sum(x, y, inv_two_h2, drop_diagonal=False) / (n * m)
    return kxx + kyy - 2.0 * kxy


def component_stats(samples, means) -> dict:
    """Assign each sample to its nearest mean and summarise each component.

    Returns a dict of JSON-friendly lists, one entry per component k (in the order of `means`):
      count:  number of samples assigned to k
      weight: count / N
      mean:   the assigned samples' mean, (D,)
      std:    the assigned samples' per-coordinate standard deviation (ddof = 1), (D,)
    An empty component has mean and std NaN, as does the std of a component with one sample.

    Nearest-mean assignment truncates each component's tails where components overlap, so the stds are
    biased low unless the components are well separated (as in the ring of 8 Gaussians, std 0.1 at
    distance ~1.5 apart).
    """
    x = _as_points(samples, "samples")
    mu = _as_points(means, "means").to(x.device)
    if mu.shape[1] != x.shape[1]:
        raise ScorelabError(f"samples and means must have the same dimension D, got {x.shape[1]}, {mu.shape[1]}")
    assign = _sq_dists(x, mu).argmin(dim=1)
    n, d = x.shape
    out: dict[str, list] = {"count": [], "weight": [], "mean": [], "std": []}
    for k in range(mu.shape[0]):
        xk = x[assign == k]
        c = xk.shape[0]
        out["count"].append(c)
        out["weight"].append(c / n)
        out["mean"].append(xk.mean(0).tolist() if c > 0 else [math.nan] * d)
        out["std"].append(xk.std(0, correction=1).tolist() if c > 1 else [math.nan] * d)
    return out
