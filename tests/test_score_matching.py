"""Score-matching objectives against closed forms, with tolerances from the estimators' standard errors.

Data: x ~ N(mu, Sigma) in D = 3 dimensions with a non-diagonal Sigma. Its score is -P (x - mu), P = Sigma^-1,
so a linear model s(x) = A x + b can represent it exactly: A* = -P, b* = P mu. Every test uses float64
tensors (the noise itself is drawn in float32 by the objectives, as the package convention says).

How the tolerances on fitted parameters are derived (all minimiser tests use `_sandwich_se`):
  Write W = [A | b] (D x (D+1)) and u = (x, 1), so s = W u. Each objective is an average over n i.i.d.
  data points of a per-point loss l_i(W) that is quadratic in W (the sliced and denoising ones with
  their projections / noise draws held fixed, which the tests do by reseeding the generator at every
  evaluation). The minimiser W_hat of such an M-estimator satisfies, to first order,
      W_hat - W* = -H^-1 (1/n) sum_i grad l_i(W*),   H = E[hessian l_i]
  so W_hat is asymptotically normal with covariance H^-1 V H^-1 / n, V = Cov[grad l_i(W*)] (the
  "sandwich"; van der Vaart 1998, Thm 5.23). grad l_i includes the projection / noise randomness of
  point i, so the tolerance accounts for data AND Monte-Carlo sample size together. For every
  objective here H = I_D (x) E[u u^T] (E[v v^T] = I for the projections). V is estimated from the
  per-point gradient formulas written out below, evaluated at W* with the test's own draws.
  Every one of the 12 entries must then lie within 4 standard errors of W*: under the normal
  approximation P(max_k |z_k| > 4) <= 12 * 6.3e-5 < 1e-3, so a correct implementation passes and the
  seed is not a tuning knob. The asymptotic bias of these estimators is O(1/n) (e.g. the sample
  covariance inverse has relative bias (D+1)/n ~ 1e-3), far below the O(1/sqrt(n)) standard errors.
  Each test also asserts the design has power: 4 SE is below a quarter of every entry of W*.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from scorelab.analytic import GaussianMixture
from scorelab.errors import ScorelabError
from scorelab.objectives.score_matching import (
    denoising_score_matching,
    exact_score_matching,
    ncsn_loss,
    sliced_score_matching,
)

D = 3
MU = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
SIGMA = torch.tensor([[2.0, 0.8, -0.5], [0.8, 1.0, 0.3], [-0.5, 0.3, 1.5]], dtype=torch.float64)
P = torch.linalg.inv(SIGMA)
Z_MAX = 4.0


def gaussian_data(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    chol = torch.linalg.cholesky(SIGMA)
    return MU + torch.randn(n, D, generator=g, dtype=torch.float64) @ chol.T


class LinearScore(nn.Module):
    def __init__(self, dim: int = D):
        super().__init__()
        self.A = nn.Parameter(torch.zeros(dim, dim, dtype=torch.float64))
        self.b = nn.Parameter(torch.zeros(dim, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.A.T + self.b

    def W(self) -> torch.Tensor:
        return torch.cat([self.A, self.b[:, None]], 1).detach()


def fit(model: nn.Module, loss_fn) -> float:
    """Minimise a convex quadratic objective with L-BFGS; returns the gradient's 2-norm at the end.

    A line search on float64 values stalls once the loss decrease g^2/(2h) drops below the rounding of
    the loss (~1e-15), i.e. at |g| ~ 1e-8; `CONVERGED` leaves a margin above that.
    """
    opt = torch.optim.LBFGS(
        model.parameters(),
        lr=1.0,
        max_iter=200,
        tolerance_grad=1e-12,
        tolerance_change=1e-15,
        history_size=20,
        line_search_fn="strong_wolfe",
    )

    def closure():
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        return loss

    for _ in range(3):
        opt.step(closure)
    opt.zero_grad()
    loss_fn().backward()
    return torch.cat([p.grad.reshape(-1) for p in model.parameters()]).norm().item()


CONVERGED = 1e-6


def closed_form_atol(grad_norm: float, design: torch.Tensor) -> float:
    # for a quadratic with Hessian H = I (x) E[u u^T]: |W_hat - W_min| <= |grad| / lambda_min(H)
    return grad_norm / torch.linalg.eigvalsh(design.T @ design / design.shape[0])[0].item() + 1e-12


def with_one(x: torch.Tensor) -> torch.Tensor:
    return torch.cat([x, torch.ones(x.shape[0], 1, dtype=x.dtype)], 1)


def sandwich_se(per_point_grads: torch.Tensor, design: torch.Tensor) -> torch.Tensor:
    """Standard errors of the entries of W_hat: sqrt(diag(H^-1 V H^-1 / n)), see the module docstring.

    per_point_grads: (n, D, D+1), gradient of each data point's loss at W*.
    design: (N, D+1) rows u over which E[u u^T] (hence H = I (x) E[u u^T]) is averaged.
    """
    n = per_point_grads.shape[0]
    v = torch.cov(per_point_grads.reshape(n, -1).T)
    h = torch.kron(torch.eye(D, dtype=torch.float64), design.T @ design / design.shape[0])
    h_inv = torch.linalg.inv(h)
    return (h_inv @ v @ h_inv / n).diagonal().sqrt().reshape(D, D + 1)


def assert_within_se(w_hat: torch.Tensor, w_star: torch.Tensor, se: torch.Tensor) -> float:
    z = ((w_hat - w_star) / se).abs()
    assert z.max() < Z_MAX, f"max |z| = {z.max():.2f}\nW_hat - W* =\n{w_hat - w_star}\nSE =\n{se}"
    # power: the 4-SE tolerance is below a quarter of every entry of W*, so real errors would show
    assert (Z_MAX * se < 0.25 * w_star.abs()).all(), f"test has no power: SE =\n{se}"
    return z.max().item()


W_POP = torch.cat([-P, (P @ MU)[:, None]], 1)  # the population score -P (x - mu)


# ------------------------------------------------------------------------------------------- exact SM


def test_exact_sm_matches_jacobian_trace_of_a_nonlinear_model():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(D, 16), nn.Tanh(), nn.Linear(16, D)).double()
    x = gaussian_data(64, seed=1)
    jac = torch.func.vmap(torch.func.jacrev(net))(x)  # (B, D, D)
    s = net(x)
    expected = (jac.diagonal(dim1=1, dim2=2).sum(1) + 0.5 * s.pow(2).sum(1)).mean()
    torch.testing.assert_close(exact_score_matching(net, x), expected, rtol=1e-12, atol=1e-12)


def test_exact_sm_gradient_reaches_parameters_through_the_trace():
    # J(A, b) = tr A + 1/2 mean |A x + b|^2, so dJ/dA = I + mean (Ax+b) x^T and dJ/db = mean (Ax+b)
    model = LinearScore()
    with torch.no_grad():
        model.A.copy_(torch.tensor([[0.3, -1.0, 0.2], [0.5, 0.1, 0.0], [-0.4, 0.7, -0.9]]))
        model.b.copy_(torch.tensor([0.1, -0.2, 0.3]))
    x = gaussian_data(50, seed=2)
    loss = exact_score_matching(model, x)
    loss.backward()
    r = model(x).detach()
    torch.testing.assert_close(model.A.grad, torch.eye(D, dtype=torch.float64) + r.T @ x / len(x))
    torch.testing.assert_close(model.b.grad, r.mean(0))


def test_exact_sm_accepts_image_shaped_input():
    x = gaussian_data(40, seed=3).repeat(1, 4)[:, :8].reshape(40, 2, 2, 2)
    c = 1.7
    # s(y) = -c y: tr = -c * 8 per sample, 1/2 |s|^2 = c^2/2 |y|^2
    expected = -c * 8 + 0.5 * c**2 * x.pow(2).reshape(40, -1).sum(1).mean()
    torch.testing.assert_close(exact_score_matching(lambda y: -c * y, x), expected)


def test_exact_sm_minimiser_is_the_gaussian_score():
    n = 4000
    x = gaussian_data(n, seed=10)
    model = LinearScore()
    gnorm = fit(model, lambda: exact_score_matching(model, x))
    assert gnorm < CONVERGED
    w_hat = model.W()
    u = with_one(x)
    # tight: for a linear model the sample objective is minimised by -inv(S) (x - xbar), S the 1/n covariance
    xbar = x.mean(0)
    s_inv = torch.linalg.inv((x - xbar).T @ (x - xbar) / n)
    w_min = torch.cat([-s_inv, (s_inv @ xbar)[:, None]], 1)
    torch.testing.assert_close(w_hat, w_min, rtol=0, atol=closed_form_atol(gnorm, u))
    # population: per-point gradient of tr A + 1/2 |W u|^2 is [I | 0] + (W u) u^T
    grads = torch.cat([torch.eye(D, dtype=torch.float64), torch.zeros(D, 1, dtype=torch.float64)], 1)
    grads = grads + (u @ W_POP.T)[:, :, None] * u[:, None, :]
    assert_within_se(w_hat, W_POP, sandwich_se(grads, u))


# ------------------------------------------------------------------------------------------ sliced SM


@pytest.mark.parametrize("projection", ["gaussian", "rademacher"])
@pytest.mark.parametrize("variance_reduced", [False, True])
def test_sliced_sm_minimiser_is_the_gaussian_score(projection, variance_reduced):
    n, m, seed = 4000, 4, 11
    x = gaussian_data(n, seed=20)
    model = LinearScore()

    def loss():  # reseeded generator: the same projections at every evaluation, so a fixed quadratic
        g = torch.Generator().manual_seed(seed)
        return sliced_score_matching(
            model, x, n_projections=m, projection=projection, variance_reduced=variance_reduced, generator=g
        )

    assert fit(model, loss) < CONVERGED
    # per-point gradient, averaged over the point's m projections (test's own draws, same law):
    #   d/dW [v^T A v] = [v v^T | 0];  d/dW 1/2 (v^T W u)^2 = (v^T W u) v u^T;  d/dW 1/2 |W u|^2 = (W u) u^T
    g = torch.Generator().manual_seed(1234)
    if projection == "gaussian":
        v = torch.randn(m, n, D, generator=g, dtype=torch.float64)
    else:
        v = torch.randint(0, 2, (m, n, D), generator=g).double() * 2 - 1
    u = with_one(x)
    wu = u @ W_POP.T  # (n, D)
    vvt = torch.cat([v[..., :, None] * v[..., None, :], torch.zeros(m, n, D, 1, dtype=torch.float64)], -1)
    if variance_reduced:
        quad = wu[:, :, None] * u[:, None, :]
    else:
        quad = ((v * wu).sum(-1)[..., None, None] * v[..., :, None] * u[:, None, :]).mean(0)
    grads = vvt.mean(0) + quad
    assert_within_se(model.W(), W_POP, sandwich_se(grads, u))


def _mlp(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(D, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, D)).double()


@pytest.mark.parametrize("projection", ["gaussian", "rademacher"])
@pytest.mark.parametrize("variance_reduced", [False, True])
def test_sliced_sm_is_unbiased_for_exact_sm(projection, variance_reduced):
    # Conditional on the data, E_v[v^T J v] = tr J and E_v[(v^T s)^2] = |s|^2 whenever E[v v^T] = I, so
    # the sliced objective is an unbiased estimate of the exact one on the same data. R independent
    # evaluations (one generator, consecutive draws) are i.i.d. given x; their mean must be within
    # 3 SE = 3 * std / sqrt(R) of the exact value (two-sided 0.27% false-alarm rate).
    net = _mlp(5)
    x = gaussian_data(256, seed=6)
    exact = exact_score_matching(net, x).item()
    g = torch.Generator().manual_seed(7)
    reps = 300
    vals = torch.tensor(
        [
            sliced_score_matching(net, x, projection=projection, variance_reduced=variance_reduced, generator=g).item()
            for _ in range(reps)
        ],
        dtype=torch.float64,
    )
    se = vals.std().item() / math.sqrt(reps)
    assert abs(vals.mean().item() - exact) < 3 * se, (vals.mean().item(), exact, se)
    # power: 3 SE is far below the size of either term, so dropping or doubling one would be caught
    half_norm = 0.5 * net(x).pow(2).sum(1).mean().item()
    assert 3 * se < 0.1 * half_norm, (se, half_norm)


def test_sliced_rademacher_vr_is_exact_for_an_isotropic_linear_score():
    # s(y) = -c y: v^T (-c I) v = -c |v|^2 = -c D exactly for v in {-1, 1}^D, so SSM-VR equals exact SM
    x = torch.randn(16, 2, 3, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    c = 0.8
    sliced = sliced_score_matching(lambda y: -c * y, x, n_projections=3, projection="rademacher", variance_reduced=True)
    torch.testing.assert_close(sliced, exact_score_matching(lambda y: -c * y, x))


def test_sliced_sm_same_seed_same_value_and_trainable():
    net = _mlp(8)
    x = gaussian_data(32, seed=9)
    a = sliced_score_matching(net, x, n_projections=2, generator=torch.Generator().manual_seed(3))
    b = sliced_score_matching(net, x, n_projections=2, generator=torch.Generator().manual_seed(3))
    assert a.item() == b.item()
    a.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())


# ----------------------------------------------------------------------------------------------- DSM


def test_dsm_minimiser_is_the_noised_gaussian_score():
    # Minimiser over linear models: the score of q_sigma = N(mu, Sigma + sigma^2 I), i.e.
    # A* = -(Sigma + sigma^2 I)^-1, b* = -A* mu. Each data point is repeated K times to average more
    # noise draws; the sandwich groups a point's K draws, so it counts data and noise together.
    n, k, sigma, seed = 2000, 8, 0.5, 12
    x = gaussian_data(n, seed=30)
    xr = x.repeat(k, 1)  # row j*n + i holds point i
    model = LinearScore()

    def loss():
        return denoising_score_matching(model, xr, sigma, generator=torch.Generator().manual_seed(seed))

    gnorm = fit(model, loss)
    assert gnorm < CONVERGED
    w_hat = model.W()
    # tight: with the noise held fixed, the objective is least squares of -z/sigma on u~ = (x + sigma z, 1).
    # The noise is reproduced from the documented convention: one float32 N(0, I) draw of x's shape.
    z = torch.randn(xr.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float32).double()
    u_noisy = with_one(xr + sigma * z)
    w_ols = -((z / sigma).T @ u_noisy) @ torch.linalg.inv(u_noisy.T @ u_noisy)
    torch.testing.assert_close(w_hat, w_ols, rtol=0, atol=closed_form_atol(gnorm, u_noisy))
    # population, with the per-point gradient (1/K) sum_k (W u~_k + z_k / sigma) u~_k^T at W*
    p_sigma = torch.linalg.inv(SIGMA + sigma**2 * torch.eye(D, dtype=torch.float64))
    w_star = torch.cat([-p_sigma, (p_sigma @ MU)[:, None]], 1)
    z2 = torch.randn(k, n, D, generator=torch.Generator().manual_seed(4321), dtype=torch.float64)
    u2 = with_one((x + sigma * z2).reshape(k * n, D)).reshape(k, n, D + 1)
    resid = u2 @ w_star.T + z2 / sigma
    grads = (resid[..., :, None] * u2[..., None, :]).mean(0)
    assert_within_se(w_hat, w_star, sandwich_se(grads, u2.reshape(k * n, D + 1)))


def test_dsm_accepts_image_shaped_input_and_is_reproducible():
    x = torch.randn(8, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    a = denoising_score_matching(lambda y: -y, x, 0.3, generator=torch.Generator().manual_seed(1))
    b = denoising_score_matching(lambda y: -y, x, 0.3, generator=torch.Generator().manual_seed(1))
    assert a.ndim == 0 and a.item() == b.item()


# ---------------------------------------------------------------------------------------------- NCSN

S0 = 0.7
NCSN_MU = torch.tensor([0.5, -1.0, 2.0, 0.0], dtype=torch.float64)


def ncsn_oracle() -> GaussianMixture:
    return GaussianMixture([1.0], NCSN_MU[None], S0)


def ncsn_data(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return NCSN_MU + S0 * torch.randn(n, 4, generator=g, dtype=torch.float64)


# For x0 ~ N(mu, s0^2 I) in d dims and the exact denoiser D* = E[x0 | x~]:
#   sigma s + (x~ - x0)/sigma = (D* - x~)/sigma + (x~ - x0)/sigma = (D* - x0)/sigma,
#   and D* - x0 ~ N(0, v I), v = s0^2 sigma^2/(s0^2 + sigma^2) (posterior variance, Bishop 2006 eq. 2.116).
#   So the per-sample loss is Y = 1/2 c chi^2_d with c = s0^2/(s0^2 + sigma^2): E Y = d c/2, Var Y = d c^2/2.
#   With a uniformly drawn level I: E Y = mean_i(d c_i/2), Var Y = mean_i(d c_i^2/2) + Var_i(d c_i/2).
#   The batch mean over n samples has SE sqrt(Var Y / n); we require |loss - E Y| < 3 SE.


@pytest.mark.parametrize("sigmas, shape", [([0.5], (4,)), ([0.1, 0.5, 2.0], (4,)), ([0.2, 1.0, 5.0, 20.0], (1, 2, 2))])
def test_ncsn_loss_of_the_exact_denoiser_matches_closed_form(sigmas, shape):
    n, d = 20000, 4
    x = ncsn_data(n, seed=40).reshape(n, *shape)
    sig = torch.tensor(sigmas, dtype=torch.float64)
    loss = ncsn_loss(ncsn_oracle(), x, sig, generator=torch.Generator().manual_seed(41))
    c = S0**2 / (S0**2 + sig**2)
    mean = (d * c / 2).mean()
    var = (d * c**2 / 2).mean() + (d * c / 2).var(unbiased=False)
    se = math.sqrt(var / n)
    assert loss.ndim == 0
    assert abs(loss.item() - mean.item()) < 3 * se, (loss.item(), mean.item(), se)


def test_ncsn_loss_is_larger_for_a_wrong_denoiser():
    # D' = D* + delta with the same draws (same seed): per-sample difference
    #   delta^T (D* - x0)/sigma^2 + |delta|^2 / (2 sigma^2), mean |delta|^2/(2 sigma^2),
    #   variance |delta|^2 v / sigma^4 = |delta|^2 c / sigma^2 (v, c as above); 3 SE again.
    n, sigma = 20000, 0.5
    delta = torch.tensor([0.05, -0.05, 0.0, 0.05], dtype=torch.float64)
    oracle = ncsn_oracle()
    x = ncsn_data(n, seed=50)
    sig = torch.tensor([sigma], dtype=torch.float64)
    good = ncsn_loss(oracle, x, sig, generator=torch.Generator().manual_seed(51))
    bad = ncsn_loss(lambda y, s, cond=None: oracle(y, s) + delta, x, sig, generator=torch.Generator().manual_seed(51))
    diff = (bad - good).item()
    c = S0**2 / (S0**2 + sigma**2)
    d2 = delta.pow(2).sum().item()
    expected, se = d2 / (2 * sigma**2), math.sqrt(d2 * c / sigma**2 / n)
    assert diff > 0
    assert abs(diff - expected) < 3 * se, (diff, expected, se)


def test_ncsn_loss_calls_the_denoiser_with_per_sample_sigma_and_cond():
    seen = {}

    def denoiser(y, sigma, cond=None):
        seen.update(sigma=sigma, cond=cond, shape=y.shape)
        return torch.zeros_like(y)

    sigmas = torch.tensor([0.1, 1.0, 10.0])
    x = torch.zeros(300, 2)
    a = ncsn_loss(denoiser, x, sigmas, cond="label", generator=torch.Generator().manual_seed(0))
    assert seen["sigma"].shape == (300,) and seen["sigma"].dtype == x.dtype
    assert seen["cond"] == "label" and seen["shape"] == x.shape
    assert set(seen["sigma"].tolist()) == set(sigmas.tolist())  # every level used, no other values
    b = ncsn_loss(denoiser, x, sigmas, cond="label", generator=torch.Generator().manual_seed(0))
    assert a.item() == b.item()


# ---------------------------------------------------------------------------------------- validation


def _x():
    return torch.zeros(4, 2)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: sliced_score_matching(lambda y: y, _x(), n_projections=0), "n_projections"),
        (lambda: sliced_score_matching(lambda y: y, _x(), n_projections=1.5), "n_projections"),
        (lambda: sliced_score_matching(lambda y: y, _x(), n_projections=True), "n_projections"),
        (lambda: sliced_score_matching(lambda y: y, _x(), projection="uniform"), "projection"),
        (lambda: sliced_score_matching(lambda y: y, _x(), variance_reduced="yes"), "variance_reduced"),
        (lambda: sliced_score_matching(lambda y: y[:, :1], _x()), "score"),
        (lambda: exact_score_matching(lambda y: y, torch.zeros(4)), "x"),
        (lambda: exact_score_matching(lambda y: y.sum(1), _x()), "score"),
        (lambda: denoising_score_matching(lambda y: y, _x(), 0.0), "sigma"),
        (lambda: denoising_score_matching(lambda y: y, _x(), float("nan")), "sigma"),
        (lambda: denoising_score_matching(lambda y: y, _x(), "big"), "sigma"),
        (lambda: ncsn_loss(lambda y, s, c=None: y, _x(), torch.tensor([[1.0]])), "sigmas"),
        (lambda: ncsn_loss(lambda y, s, c=None: y, _x(), torch.tensor([])), "sigmas"),
        (lambda: ncsn_loss(lambda y, s, c=None: y, _x(), torch.tensor([1.0, -0.1])), "sigmas"),
    ],
)
def test_invalid_arguments_raise_value_error(call, match):
    with pytest.raises(ScorelabError, match=match):
        call()
