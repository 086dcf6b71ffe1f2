"""Langevin samplers: determinism, stationary law on a Gaussian, and annealing against the exact oracle."""

import pytest
import torch

from scorelab.analytic import GaussianMixture
from scorelab.errors import ScorelabError
from scorelab.sampling.langevin import annealed_langevin, langevin
from scorelab.schedules import append_zero, geometric_sigmas


def test_langevin_is_deterministic_given_generator():
    score = lambda x: -x  # noqa: E731
    a = langevin(score, torch.zeros(10, 2), step_size=0.1, n_steps=20, generator=torch.Generator().manual_seed(3))
    b = langevin(score, torch.zeros(10, 2), step_size=0.1, n_steps=20, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def test_langevin_stationary_variance_on_gaussian():
    # ULA on N(0, v) with step e is an AR(1) chain x' = (1 - e/(2v)) x + sqrt(e) z whose stationary variance is
    # e / (1 - (1 - e/(2v))^2) = v / (1 - e/(4v)) exactly.
    v, e, n = 2.0, 0.1, 20_000
    g = torch.Generator().manual_seed(0)
    x = langevin(lambda x: -x / v, torch.zeros(n, 1, dtype=torch.float64), step_size=e, n_steps=400, generator=g)
    expect = v / (1 - e / (4 * v))
    se = expect * (2 / (n - 1)) ** 0.5  # standard error of a sample variance of n Gaussian draws
    assert abs(x.var().item() - expect) < 3 * se


def _annealed_moments(mu, s0, x_mean, x_var, sigmas, step_size, steps):
    # On N(mu, s0^2 I) every update is linear: with v_i = s0^2 + sigma_i^2 and a = 1 - alpha_i / (2 v_i),
    # x' = a x + (1 - a) mu + sqrt(alpha_i) z, so mean' = a mean + (1 - a) mu and var' = a^2 var + alpha_i.
    m, v = x_mean, x_var
    for sigma in sigmas:
        alpha = step_size * sigma**2 / sigmas[-1] ** 2
        a = 1 - alpha / (2 * (s0**2 + sigma**2))
        for _ in range(steps):
            m, v = a * m + (1 - a) * mu, a * a * v + alpha
    return m, v


def test_annealed_langevin_matches_exact_moment_recursion():
    mu, s0, n = 1.0, 0.5, 40_000
    gm = GaussianMixture([1.0], [[mu, mu]], [s0])
    sig = geometric_sigmas(5.0, 0.05, 20)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 2, generator=g, dtype=torch.float64) * 5
    out = annealed_langevin(gm, x, sig, step_size=2e-4, steps_per_level=30, generator=g)
    m, v = _annealed_moments(mu, s0, 0.0, 25.0, sig.double().tolist(), 2e-4, 30)
    # the chain is Gaussian at every step, so sample moments have standard errors sqrt(v/n), v sqrt(2/(n-1))
    assert ((out.mean(0) - m).abs() < 4 * (v / n) ** 0.5).all()
    assert ((out.var(0) - v).abs() < 4 * v * (2 / (n - 1)) ** 0.5).all()
    # the final denoising step maps x to E[x0|x] = mu + s0^2/(s0^2 + sigma_L^2) (x - mu)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 2, generator=g, dtype=torch.float64) * 5
    den = annealed_langevin(gm, x, append_zero(sig), step_size=2e-4, steps_per_level=30, generator=g)
    k = s0**2 / (s0**2 + 0.05**2)
    torch.testing.assert_close(den, mu + k * (out - mu))


def test_annealed_langevin_callback_and_validation():
    gm = GaussianMixture([1.0], [[0.0]], [1.0])
    seen = []
    annealed_langevin(
        gm,
        torch.zeros(3, 1),
        geometric_sigmas(2.0, 1.0, 3),
        step_size=0.1,
        steps_per_level=2,
        callback=lambda i, x: seen.append(i),
    )
    assert seen == list(range(6))
    with pytest.raises(ScorelabError):
        annealed_langevin(gm, torch.zeros(3, 1), torch.tensor([1.0, 2.0]), step_size=0.1, steps_per_level=2)
    with pytest.raises(ScorelabError):
        annealed_langevin(gm, torch.zeros(3, 1), torch.tensor([2.0, 1.0]), step_size=0.0, steps_per_level=2)


@pytest.mark.parametrize(
    "sigmas, message",
    [
        ([1.0, float("nan"), 0.1], r"sigmas must be finite, positive and non-increasing.*got \[1, nan, 0\.1\]"),
        ([float("inf"), 1.0], r"sigmas must be finite, positive and non-increasing.*got \[inf, 1\]"),
        ([[1.0, 0.5]], r"sigmas must be a non-empty 1-D schedule, got shape \(1, 2\)"),
    ],
)
def test_annealed_langevin_rejects_non_finite_or_misshapen_schedules(sigmas, message):
    gm = GaussianMixture([1.0], [[0.0]], 1.0)
    with pytest.raises(ScorelabError, match=message):  # NaN and inf used to run and return NaN
        annealed_langevin(gm, torch.zeros(3, 1), torch.tensor(sigmas), step_size=0.1, steps_per_level=2)


def test_langevin_step_size_must_be_finite_and_step_counts_whole():
    gm = GaussianMixture([1.0], [[0.0]], 1.0)
    with pytest.raises(ScorelabError, match=r"need a finite step_size > 0 and an integer n_steps >= 0, got nan, 3"):
        langevin(gm.score, torch.zeros(3, 1), step_size=float("nan"), n_steps=3)
    with pytest.raises(ScorelabError, match=r"an integer steps_per_level >= 1, got 0\.1, 2\.5"):
        annealed_langevin(gm, torch.zeros(3, 1), torch.tensor([1.0, 0.5]), step_size=0.1, steps_per_level=2.5)
