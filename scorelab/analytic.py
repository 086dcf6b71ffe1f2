"""Exact denoisers: the test oracles. Same interface as any learned Denoiser."""

from __future__ import annotations

import math
import numbers

import torch

from .denoisers import expand_sigma
from .errors import ScorelabError, show_values


def _flatten(x: torch.Tensor, dim: int, what: str) -> torch.Tensor:
    """x (B, ...) as (B, dim), or a one-line error when a sample does not hold `dim` values."""
    if not isinstance(x, torch.Tensor) or x.ndim == 0 or math.prod(x.shape[1:]) != dim:
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ScorelabError(
            f"x must hold {dim} values per sample like the {what}: shape (B, {dim}) or (B, ...), got {got}"
        )
    return x.reshape(x.shape[0], dim)


def _nonnegative(sigma: torch.Tensor) -> torch.Tensor:
    """The oracles square sigma: a negative one would pass as its absolute value, a NaN would give NaN silently."""
    if not sigma.is_meta and not (torch.isfinite(sigma) & (sigma >= 0)).all():  # meta tensors hold no values
        raise ScorelabError(f"sigma must be finite and >= 0, got {show_values(sigma)}")
    return sigma


class GaussianMixture:
    """p(x0) = sum_k w_k N(mu_k, diag(std_k^2)); exact posterior mean under x = x0 + sigma * noise.

    Convolving with N(0, sigma^2 I) gives components N(mu_k, std_k^2 + sigma^2) (Bishop 2006, eq. 2.115).
    The denoiser is the responsibility-weighted per-component posterior mean (eq. 2.116):
      E[x0 | x, k] = mu_k + std_k^2 / (std_k^2 + sigma^2) * (x - mu_k).
    Works for any number of components and dimensions; computed in float64.
    """

    def __init__(self, weights, means, stds):
        w = torch.as_tensor(weights, dtype=torch.float64)
        mu = torch.as_tensor(means, dtype=torch.float64)
        std = torch.as_tensor(stds, dtype=torch.float64)
        if mu.ndim != 2:
            raise ScorelabError(f"means must have shape (K, D), got {tuple(mu.shape)}")
        if not torch.isfinite(mu).all():
            raise ScorelabError("means must be finite")
        k, d = mu.shape
        if w.shape != (k,):
            raise ScorelabError(f"weights must have shape ({k},), got {tuple(w.shape)}")
        if (w < 0).any() or not math.isclose(float(w.sum()), 1.0, abs_tol=1e-6):
            raise ScorelabError(f"weights must be non-negative and sum to 1 (within 1e-6), got sum {float(w.sum())}")
        w = w / w.sum()  # float32 weights sum to 1 only within their rounding
        if std.ndim == 0:  # one std for every component and dimension
            std = std.expand(k, d)
        elif std.ndim == 1:  # one std per component: isotropic components
            std = std[:, None].expand(k, d)
        if std.shape != (k, d):
            raise ScorelabError(f"stds must be a scalar or have shape ({k},) or ({k}, {d}), got {tuple(std.shape)}")
        if not ((std > 0) & torch.isfinite(std)).all():
            raise ScorelabError(f"stds must be positive and finite, got {show_values(std)}")
        self.weights, self.means, self.stds = w, mu, std.clone()

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def _flat(self, x: torch.Tensor) -> torch.Tensor:
        return _flatten(x, self.dim, "mixture").to(torch.float64)

    def _sigma2(self, sigma, xf: torch.Tensor) -> torch.Tensor:
        """sigma^2 shaped (B or 1, 1, 1) for a scalar sigma or one per sample (B,)."""
        s2 = _nonnegative(torch.as_tensor(sigma, dtype=torch.float64, device=xf.device)).reshape(-1, 1, 1) ** 2
        if s2.shape[0] not in (1, xf.shape[0]):
            got = tuple(torch.as_tensor(sigma).shape)
            raise ScorelabError(f"sigma must be a scalar or have shape ({xf.shape[0]},), got {got}")
        return s2

    def _log_joint(self, x: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
        # log N(x; mu_k, var_k) + log w_k, (B, K); x (B, D), var (B or 1, K, D)
        diff = x[:, None, :] - self.means.to(x.device)[None]
        return -0.5 * ((diff**2) / var + torch.log(2 * math.pi * var)).sum(-1) + torch.log(self.weights.to(x.device))

    def _responsibilities(self, x: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self._log_joint(x, var), dim=1)

    def __call__(self, x: torch.Tensor, sigma, cond=None) -> torch.Tensor:
        shape, dtype = x.shape, x.dtype
        xf = self._flat(x)
        s2 = _nonnegative(expand_sigma(sigma, xf).to(torch.float64)) ** 2  # (B, 1)
        var0 = self.stds.to(xf.device)[None] ** 2  # (1, K, D)
        var = var0 + s2[:, :, None]
        means = self.means.to(xf.device)
        r = self._responsibilities(xf, var)
        post = means[None] + var0 / var * (xf[:, None, :] - means[None])
        return (r[:, :, None] * post).sum(1).to(dtype).reshape(shape)

    def score(self, x: torch.Tensor, sigma=0.0) -> torch.Tensor:
        """Exact grad log p_sigma(x) = sum_k r_k(x) * (mu_k - x) / (std_k^2 + sigma^2); valid at sigma = 0."""
        shape, dtype = x.shape, x.dtype
        xf = self._flat(x)
        var = self.stds.to(xf.device)[None] ** 2 + self._sigma2(sigma, xf)
        r = self._responsibilities(xf, var)
        per = (self.means.to(xf.device)[None] - xf[:, None, :]) / var
        return (r[:, :, None] * per).sum(1).to(dtype).reshape(shape)

    def log_prob(self, x: torch.Tensor, sigma=0.0) -> torch.Tensor:
        """log p_sigma(x) for a scalar sigma or one per sample (B,)."""
        xf = self._flat(x)
        var = self.stds.to(xf.device)[None] ** 2 + self._sigma2(sigma, xf)
        return torch.logsumexp(self._log_joint(xf, var), dim=1).to(x.dtype)

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        k = torch.multinomial(self.weights.float(), n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float32)
        return (self.means[k] + self.stds[k] * z.double()).float()


class FiniteDataset:
    """Empirical data distribution: D(x, sigma) = softmax_i(-|x - x_i|^2 / 2 sigma^2) weighted mean of x_i.

    The exact posterior mean when p(x0) is uniform over the data set (Karras et al. 2022, eq. 57).
    """

    def __init__(self, data: torch.Tensor, chunk: int = 4096):
        data = torch.as_tensor(data)
        if data.ndim == 0 or data.shape[0] == 0 or data[0].numel() == 0:
            raise ScorelabError(
                f"data must hold at least one sample, shape (N, ...) with N >= 1, got {tuple(data.shape)}"
            )
        if not torch.isfinite(data).all():
            raise ScorelabError("data must be finite")
        if isinstance(chunk, bool) or not isinstance(chunk, numbers.Integral) or chunk < 1:
            raise ScorelabError(f"chunk must be an integer >= 1, got {chunk!r}")
        self.data = data.reshape(data.shape[0], -1).to(torch.float64)
        self.item_shape = data.shape[1:]
        self.chunk = chunk

    def __call__(self, x: torch.Tensor, sigma, cond=None) -> torch.Tensor:
        shape, dtype = x.shape, x.dtype
        xf = _flatten(x, self.data.shape[1], "data").to(torch.float64)
        s2 = _nonnegative(expand_sigma(sigma, xf).to(torch.float64)) ** 2
        data = self.data.to(xf.device)
        out = []
        for i in range(0, xf.shape[0], self.chunk):
            xi = xf[i : i + self.chunk]
            d2 = torch.cdist(xi, data) ** 2
            w = torch.softmax(-d2 / (2 * s2[i : i + self.chunk]), dim=1)
            out.append(w @ data)
        return torch.cat(out).to(dtype).reshape(shape) if out else x.clone()  # x.clone(): an empty batch
