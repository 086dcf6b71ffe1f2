"""The DDPM variational bound: closed-form terms against Monte Carlo, the whole bound against a Monte-Carlo
estimate over the chain, and the bound against the true NLL of Gaussian data with the exact denoiser."""

import math

import pytest
import torch

from scorelab.analytic import GaussianMixture
from scorelab.errors import ScorelabError
from scorelab.objectives.elbo import VariationalBound, discretized_gaussian_log_likelihood, normal_kl
from scorelab.schedules import alphas_cumprod, beta_schedule
from scorelab.vp import posterior


def _log_normal(x, mean, var):
    return -0.5 * (torch.log(2 * math.pi * var) + (x - mean) ** 2 / var)


def test_posterior_is_the_gaussian_conditional():
    # given x0, (x_s, x_t) is jointly Gaussian: Var x_s = 1 - ab_s, Var x_t = 1 - ab_t, Cov = sqrt(ab_t/ab_s)(1 - ab_s)
    ab = alphas_cumprod(beta_schedule("cosine", 50))
    for t, s in [(10, 9), (30, 12), (49, 0)]:
        ab_t, ab_s = ab[t], ab[s]
        cov = (ab_t / ab_s).sqrt() * (1 - ab_s)
        c_x0, c_xt, small, _ = posterior(ab_t, ab_s)
        torch.testing.assert_close(c_xt, cov / (1 - ab_t))
        torch.testing.assert_close(small, (1 - ab_s) - cov**2 / (1 - ab_t))
        # the conditional mean must be sqrt(ab_s) x0 + c_xt (x_t - sqrt(ab_t) x0)
        torch.testing.assert_close(c_x0, ab_s.sqrt() - c_xt * ab_t.sqrt())


def test_normal_kl_matches_monte_carlo():
    g = torch.Generator().manual_seed(0)
    m1, v1, m2, v2 = torch.tensor(0.3), torch.tensor(0.5), torch.tensor(-0.4), torch.tensor(0.8)
    x = m1 + v1.sqrt() * torch.randn(200_000, generator=g, dtype=torch.float64)
    ratio = _log_normal(x, m1, v1) - _log_normal(x, m2, v2)
    se = ratio.std() / math.sqrt(len(x))
    assert abs(ratio.mean() - normal_kl(m1, v1, m2, v2)) < 3 * se


def test_each_kl_term_matches_monte_carlo():
    """L_{t-1} = KL(q(x_{t-1}|x_t,x0) || p(x_{t-1}|x_t)) against E_q[log q - log p] for a fixed x_t."""
    g = torch.Generator().manual_seed(1)
    model = GaussianMixture([0.5, 0.5], [[0.5, 0.5], [-0.5, 0.0]], 0.3)
    ab = alphas_cumprod(beta_schedule("linear", 20, beta_start=1e-3, beta_end=0.2))
    x0 = torch.tensor([[0.25, -0.5]], dtype=torch.float64)
    for variance in ("large", "small"):
        vb = VariationalBound(ab, variance=variance)
        for i in (1, 7, 19):
            noise = torch.randn(1, 2, generator=g, dtype=torch.float64)
            closed = vb.term(model, x0, i, noise).item()
            x_t = ab[i].sqrt() * x0 + (1 - ab[i]).sqrt() * noise
            x0_hat = model(x_t / ab[i].sqrt(), torch.full((1,), math.sqrt((1 - ab[i]) / ab[i]), dtype=torch.float64))
            c_x0, c_xt, small, large = posterior(ab[i], ab[i - 1])
            var_p = large if variance == "large" else small
            mq, mp = c_x0 * x0 + c_xt * x_t, c_x0 * x0_hat + c_xt * x_t
            y = mq + small.sqrt() * torch.randn(100_000, 2, generator=g, dtype=torch.float64)
            ratio = (_log_normal(y, mq, small) - _log_normal(y, mp, var_p)).sum(1)
            se = ratio.std() / math.sqrt(len(ratio))
            assert abs(ratio.mean().item() - closed) < 3 * se, (variance, i)


def test_discretized_decoder_is_a_distribution():
    levels = 17
    grid = torch.linspace(-1, 1, levels, dtype=torch.float64)
    for mean, var in [(0.1, 0.01), (-0.93, 0.2), (1.4, 1e-4), (0.0, 4.0)]:
        p = discretized_gaussian_log_likelihood(grid, torch.tensor(mean), torch.tensor(var), levels).exp()
        assert p.sum().item() == pytest.approx(1.0, abs=1e-12)
    # far in the tail the log-likelihood stays finite (no log(0))
    ll = discretized_gaussian_log_likelihood(torch.tensor(-1.0), torch.tensor(1.0), torch.tensor(1e-4), levels)
    assert torch.isfinite(ll)


def test_whole_bound_matches_chain_monte_carlo():
    """On a T = 20 chain: the bound's mean equals E_q[-log p(x_{0:T}) + log q(x_{1:T}|x0)] within 3 SE."""
    g = torch.Generator().manual_seed(2)
    levels, T, n = 17, 20, 20_000
    model = GaussianMixture([0.6, 0.4], [[0.5, 0.25], [-0.5, -0.5]], 0.35)
    betas = beta_schedule("linear", T, beta_start=1e-3, beta_end=0.3)
    ab = alphas_cumprod(betas)
    grid = torch.linspace(-1, 1, levels, dtype=torch.float64)
    x0 = grid[torch.randint(0, levels, (n, 2), generator=g)]
    vb = VariationalBound(ab, variance="large", decoder="discretized", levels=levels)
    bound = vb.per_sample(model, x0, generator=g)

    # independent estimate: run the forward chain, score it under p and q (Ho et al. 2020, eqs. 1-3)
    xs = [x0]
    log_q = torch.zeros(n, dtype=torch.float64)
    for t in range(T):
        mean = (1 - betas[t]).sqrt() * xs[-1]
        xs.append(mean + betas[t].sqrt() * torch.randn(n, 2, generator=g, dtype=torch.float64))
        log_q += _log_normal(xs[-1], mean, betas[t]).sum(1)
    log_p = _log_normal(xs[T], torch.zeros(()), torch.ones(())).sum(1)
    for t in range(T, 0, -1):  # p(x_{t-1} | x_t), t = T..1 (1-based)
        a_t = ab[t - 1]
        x0_hat = model(xs[t] / a_t.sqrt(), torch.full((n,), ((1 - a_t) / a_t).sqrt().item(), dtype=torch.float64))
        if t == 1:
            log_p += discretized_gaussian_log_likelihood(x0, x0_hat, betas[0], levels).sum(1)
        else:
            a_prev = ab[t - 2]
            mean = (
                a_prev.sqrt() * betas[t - 1] / (1 - a_t) * x0_hat
                + (1 - betas[t - 1]).sqrt() * (1 - a_prev) / (1 - a_t) * xs[t]
            )  # Ho et al. 2020 eq. 7
            log_p += _log_normal(xs[t - 1], mean, betas[t - 1]).sum(1)
    chain = log_q - log_p
    se = math.sqrt(bound.var() / n + chain.var() / n)
    assert abs(bound.mean() - chain.mean()) < 3 * se


@pytest.mark.slow
def test_bound_above_true_nll_and_approaches_it():
    """Gaussian data, exact denoiser, continuous decoder: E[bound] >= H(data) (cross-entropy >= entropy) and the gap
    shrinks as T grows (cosine schedule, fixed-large variance)."""
    s, n = 0.5, 4000
    data = GaussianMixture([1.0], [[0.3, -0.2]], s)
    entropy = 2 * 0.5 * math.log(2 * math.pi * math.e * s * s)
    x0 = data.sample(n, torch.Generator().manual_seed(3)).double()
    means, bounds = {}, {}
    for T in (10, 1000):
        vb = VariationalBound(alphas_cumprod(beta_schedule("cosine", T)), variance="large", decoder="gaussian")
        bounds[T] = vb.per_sample(data, x0, generator=torch.Generator().manual_seed(4))
        means[T] = bounds[T].mean().item()
        assert means[T] > entropy - 3 * bounds[T].std().item() / math.sqrt(n)
    paired = bounds[10] - bounds[1000]  # the same x0 under both: the paired difference has the smaller SE
    assert paired.mean() > 3 * paired.std() / math.sqrt(n)
    # the gap at T = 1000 measured 0.04 nats (SE 0.03); it must be far below the T = 10 gap of 0.13
    assert means[1000] - entropy < 0.5 * (means[10] - entropy)


def test_decoder_gradient_is_finite_far_from_the_mean_and_matches_finite_differences():
    # torch.where evaluates both branches: the unselected one must not turn inf * 0 into a NaN gradient
    levels = 256
    grid = torch.linspace(-1, 1, levels, dtype=torch.float64)
    mean = torch.zeros((), dtype=torch.float64, requires_grad=True)
    ll = discretized_gaussian_log_likelihood(grid, mean, torch.tensor(1e-4, dtype=torch.float64), levels)
    (grad,) = torch.autograd.grad(ll.sum(), mean)
    assert torch.isfinite(grad)
    x, m, var, h = torch.tensor(0.25, dtype=torch.float64), 0.3, torch.tensor(0.01, dtype=torch.float64), 1e-6
    mean = torch.tensor(m, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(discretized_gaussian_log_likelihood(x, mean, var, levels), mean)

    def f(v):
        return discretized_gaussian_log_likelihood(x, torch.tensor(v, dtype=torch.float64), var, levels).item()

    assert grad.item() == pytest.approx((f(m + h) - f(m - h)) / (2 * h), rel=1e-6)


def test_prior_term_matches_monte_carlo():
    ab = torch.tensor([0.9, 0.5], dtype=torch.float64)  # alpha_bar_T = 0.5: a prior term far from zero
    x0 = torch.tensor([[0.6, -0.2, 1.0]], dtype=torch.float64)
    exact = VariationalBound(ab).prior_term(x0)
    g = torch.Generator().manual_seed(0)
    n = 200_000
    xt = ab[-1].sqrt() * x0 + (1 - ab[-1]).sqrt() * torch.randn(n, 3, generator=g, dtype=torch.float64)
    log_ratio = (_log_normal(xt, ab[-1].sqrt() * x0, 1 - ab[-1]) - _log_normal(xt, 0.0, torch.tensor(1.0))).sum(1)
    se = log_ratio.std() / math.sqrt(n)
    assert abs(exact.item() - log_ratio.mean().item()) < 3 * se
    assert exact.item() > 10 * se  # the test can tell the term from zero


def test_bits_per_dim_of_a_one_step_chain_with_a_perfect_denoiser_in_closed_form():
    # T = 1: the bound is L_T + L_0, and a denoiser that returns x0 exactly puts the decoder's mean on the data, so
    # L_0 is minus the log mass of a N(x0, beta_1) bin of half-width 1/(L-1) around x0 (edge bins open)
    levels, ab = 17, 0.99
    x0 = torch.tensor([[-1.0, -0.5, 0.25, 1.0]], dtype=torch.float64)

    def oracle(x, sigma, cond=None):
        return x0.to(x.dtype)

    std, half = math.sqrt(1 - ab), 1 / (levels - 1)
    phi = 0.5 * (1 + math.erf(half / std / math.sqrt(2)))
    log_mass = [math.log(phi) if abs(v) == 1 else math.log(2 * phi - 1) for v in x0[0].tolist()]
    prior = sum(0.5 * (-math.log(1 - ab) + (1 - ab) + ab * v * v - 1) for v in x0[0].tolist())
    expected = (prior - sum(log_mass)) / (4 * math.log(2))
    bpd = VariationalBound(torch.tensor([ab], dtype=torch.float64), levels=levels).bits_per_dim(oracle, x0)
    assert bpd.item() == pytest.approx(expected, rel=1e-9)


def test_bound_refuses_betas_data_outside_the_decoder_range_and_fractional_levels():
    betas = beta_schedule("linear", 20)
    with pytest.raises(ScorelabError, match=r"alpha_bar must lie in \(0, 1\) and strictly decrease .*not the betas"):
        VariationalBound(betas)
    with pytest.raises(ScorelabError, match=r"levels must be an integer >= 2, got 2\.5"):
        VariationalBound(alphas_cumprod(betas), levels=2.5)
    vb = VariationalBound(alphas_cumprod(betas))
    data = GaussianMixture([1.0], [[0.0]], 0.5)
    x0 = torch.tensor([[0.0], [255.0]])  # 8-bit values instead of [-1, 1]: used to give a finite, meaningless bound
    with pytest.raises(
        ValueError, match=r"x0 must lie in \[-1, 1\] for the discretized decoder .*got values in \[0, 255\]"
    ):
        vb.per_sample(data, x0)
    with pytest.raises(
        ValueError, match=r"x0 must be a tensor of shape \(B, D\) or \(B, \.\.\.\) with B >= 1, got \(0, 1\)"
    ):
        vb.bits_per_dim(data, torch.zeros(0, 1))


def test_posterior_needs_t_later_than_s():
    ab = alphas_cumprod(beta_schedule("linear", 20))
    with pytest.raises(
        ValueError, match=r"posterior needs 0 < alpha_bar_t < alpha_bar_s <= 1 .*got alpha_bar_t=\[0\.9"
    ):
        posterior(ab[0], ab[10])  # swapped: the variances came out negative
    c_x0, c_xt, small, large = posterior(0.5, 0.9)  # plain numbers are taken
    assert 0 < small < large
