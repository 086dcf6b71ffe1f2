"""The oracles against closed forms, finite differences and Monte Carlo."""

import math

import pytest
import torch

from scorelab.analytic import FiniteDataset, GaussianMixture
from scorelab.denoisers import score_from_denoised
from scorelab.errors import ScorelabError


def _mixture():
    return GaussianMixture(
        [0.5, 0.3, 0.2],
        [[0.0, 1.0, -1.0], [2.0, -1.0, 0.5], [-2.0, 0.0, 1.0]],
        [[0.5, 0.7, 0.4], [1.0, 0.3, 0.6], [0.8, 0.8, 0.8]],
    )


def test_single_gaussian_denoiser_is_linear_shrinkage():
    # N(mu, s0^2 I): E[x0|x] = mu + s0^2/(s0^2+sigma^2) (x - mu)
    mu, s0, sigma = torch.tensor([1.0, -2.0]), 0.7, 1.3
    gm = GaussianMixture([1.0], mu[None], [s0])
    x = torch.randn(10, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    expect = mu + s0**2 / (s0**2 + sigma**2) * (x - mu)
    torch.testing.assert_close(gm(x, torch.tensor(sigma)), expect)


def test_score_is_gradient_of_log_density():
    gm = _mixture()
    x = torch.randn(6, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0)).requires_grad_()
    for sigma in (0.0, 0.3, 2.0):
        (grad,) = torch.autograd.grad(gm.log_prob(x, sigma).sum(), x)
        torch.testing.assert_close(gm.score(x.detach(), sigma), grad)


def test_denoiser_and_score_agree_through_tweedie():
    gm = _mixture()
    x = torch.randn(8, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 2
    for sigma in (0.1, 1.0, 5.0):
        s = torch.tensor(sigma, dtype=torch.float64)
        torch.testing.assert_close(score_from_denoised(x, gm(x, s), s), gm.score(x, sigma))


def test_denoiser_equals_monte_carlo_posterior_mean():
    # E[x0 | x] by self-normalised importance sampling with the prior as proposal
    gm = _mixture()
    g = torch.Generator().manual_seed(0)
    x0 = gm.sample(400_000, g).double()
    sigma = 0.8
    x = torch.tensor([[0.5, 0.0, 0.0], [1.5, -0.5, 0.5]], dtype=torch.float64)
    for xi, di in zip(x, gm(x, torch.tensor(sigma)), strict=True):
        logw = -((xi - x0) ** 2).sum(1) / (2 * sigma**2)
        w = torch.softmax(logw, 0)
        mc = (w[:, None] * x0).sum(0)
        ess = 1 / (w**2).sum()
        post_sd = torch.sqrt((w[:, None] * (x0 - mc) ** 2).sum(0))
        assert ((mc - di).abs() <= 4 * post_sd / ess.sqrt()).all()


def test_log_prob_normalised_in_1d():
    gm = GaussianMixture([0.3, 0.7], [[-1.0], [2.0]], [0.5, 1.0])
    grid = torch.linspace(-10, 12, 20001, dtype=torch.float64)[:, None]
    mass = torch.trapezoid(gm.log_prob(grid, 0.5).exp(), grid[:, 0])
    assert math.isclose(mass.item(), 1.0, abs_tol=1e-8)


def test_finite_dataset_limits():
    data = torch.randn(20, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    fd = FiniteDataset(data)
    # tiny sigma: the nearest data point; huge sigma: the data mean
    x = data[:5] + 1e-4
    torch.testing.assert_close(fd(x, torch.tensor(1e-3)), data[:5])
    torch.testing.assert_close(
        fd(torch.zeros(1, 2, dtype=torch.float64), torch.tensor(1e4)), data.mean(0, keepdim=True), atol=1e-6, rtol=0
    )


def test_log_prob_takes_one_sigma_per_sample():
    gm = _mixture()
    x = torch.randn(2, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    sigma = torch.tensor([0.1, 3.0], dtype=torch.float64)
    rows = torch.cat([gm.log_prob(x[i : i + 1], sigma[i]) for i in range(2)])
    torch.testing.assert_close(gm.log_prob(x, sigma), rows)
    with pytest.raises(ScorelabError, match="sigma must be a scalar or have shape"):
        gm.log_prob(x, torch.ones(3))


def test_a_call_on_another_device_leaves_the_mixture_usable_on_the_cpu():
    gm = _mixture()
    gm(torch.zeros(2, 3, device="meta"), torch.ones(2, device="meta"))  # the meta device stands in for a GPU
    x = torch.zeros(2, 3, dtype=torch.float64)
    assert torch.isfinite(gm.log_prob(x)).all() and gm.sample(4).shape == (4, 3)


def test_float32_weights_are_accepted_and_renormalised():
    gm = GaussianMixture(torch.softmax(torch.tensor([0.3, -1.2, 2.0, 0.1, 0.7]), 0), torch.zeros(5, 1), 1.0)
    assert math.isclose(gm.weights.sum().item(), 1.0, abs_tol=1e-15)


def test_bad_mixture_arguments():
    with pytest.raises(ScorelabError, match="weights"):
        GaussianMixture([0.5, 0.6], [[0.0], [1.0]], 1.0)
    with pytest.raises(ScorelabError, match="stds"):
        GaussianMixture([1.0], [[0.0]], [-1.0])
    with pytest.raises(ScorelabError, match="means"):
        GaussianMixture([1.0], [0.0], 1.0)


def test_finite_dataset_of_two_points_is_tanh():
    # data {-1, +1}: p(x0 = +-1 | x) is proportional to exp(+-x / sigma^2), so E[x0 | x] = tanh(x / sigma^2)
    fd = FiniteDataset(torch.tensor([[-1.0], [1.0]], dtype=torch.float64))
    x = torch.linspace(-2, 2, 9, dtype=torch.float64)[:, None]
    for sigma in (0.5, 1.0, 2.0):
        torch.testing.assert_close(fd(x, torch.tensor(sigma)), torch.tanh(x / sigma**2))


def test_mixture_inputs_of_the_wrong_dimension_get_one_line_errors():
    gm = GaussianMixture([0.5, 0.5], [[-1.0, 0.0], [1.0, 0.0]], 0.3)
    message = r"x must hold 2 values per sample like the mixture: shape \(B, 2\) or \(B, \.\.\.\), got \(4, 3\)"
    for call in (lambda x: gm(x, torch.ones(4)), gm.score, gm.log_prob):  # were broadcasting errors from torch
        with pytest.raises(ScorelabError, match=message):
            call(torch.zeros(4, 3))
    with pytest.raises(ScorelabError, match=r"sigma must be a scalar or have shape \(4,\), got \(3,\)"):
        gm.score(torch.zeros(4, 2), torch.ones(3))
    with pytest.raises(ScorelabError, match=r"stds must be positive and finite, got \[nan, nan\]"):  # was accepted
        GaussianMixture([0.5, 0.5], [[0.0], [1.0]], math.nan)
    with pytest.raises(ScorelabError, match="means must be finite"):
        GaussianMixture([1.0], [[math.inf]], 1.0)


def test_finite_dataset_checks_its_data_and_inputs():
    with pytest.raises(
        ValueError, match=r"data must hold at least one sample, shape \(N, \.\.\.\) with N >= 1, got \(0, 2\)"
    ):
        FiniteDataset(torch.zeros(0, 2))
    with pytest.raises(ScorelabError, match=r"chunk must be an integer >= 1, got 0"):
        FiniteDataset(torch.zeros(3, 2), chunk=0)
    fd = FiniteDataset([[0.0, 1.0], [1.0, 0.0]])  # anything torch.as_tensor takes
    with pytest.raises(ScorelabError, match=r"x must hold 2 values per sample like the data: shape \(B, 2\)"):
        fd(torch.zeros(4, 3), torch.ones(4))
    assert fd(torch.zeros(0, 2), torch.ones(0)).shape == (0, 2)
