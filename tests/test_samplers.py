"""Diffusion samplers against closed forms: convergence order on the Gaussian probability-flow ODE, DDIM/DDPM
identities, moments of ancestral sampling with the exact denoiser, determinism, schedule checks."""

import math

import pytest
import torch

from scorelab.analytic import GaussianMixture
from scorelab.errors import ScorelabError
from scorelab.sampling import ddim, ddpm, dpmpp_2m, dpmpp_3m, euler, evaluations, heun, unipc
from scorelab.sampling.common import initial_noise
from scorelab.schedules import append_zero, loglinear_sigmas
from scorelab.vp import posterior

S, MU = 0.7, 0.3  # data N(MU, S^2) in 1-D
GAUSS = GaussianMixture([1.0], [[MU]], S)
SMAX, SMIN = 10.0, 0.5


def _solve_to_smin(sampler, n_steps: int) -> float:
    """Max error at SMIN of the sampler's ODE solution against the closed form
    x(sigma) = MU + (x(SMAX) - MU) sqrt((S^2 + sigma^2) / (S^2 + SMAX^2)) (Song et al. 2021, PF-ODE of a Gaussian)."""
    x0 = torch.linspace(-30, 30, 7, dtype=torch.float64)[:, None]
    sig = torch.cat([loglinear_sigmas(SMIN, SMAX, n_steps, dtype=torch.float64), torch.tensor([1e-3, 0.0])])
    seen = {}
    sampler(GAUSS, x0.clone(), sig, callback=lambda i, x, d: seen.__setitem__(i, x))
    exact = MU + (x0 - MU) * math.sqrt((S**2 + SMIN**2) / (S**2 + SMAX**2))
    return (seen[n_steps - 2] - exact).abs().max().item()


@pytest.mark.parametrize(
    "sampler, order",
    [
        (euler, 1),
        (ddim, 1),
        (heun, 2),
        (dpmpp_2m, 2),
        (lambda *a, **k: unipc(*a, order=2, **k), 3),  # UniC raises the order by one
        (unipc, 3),
    ],
)
def test_convergence_order(sampler, order):
    e1, e2 = _solve_to_smin(sampler, 32), _solve_to_smin(sampler, 64)
    observed = math.log2(e1 / e2)
    # the observed order from halving the step tends to the method's order; 0.2 allows the pre-asymptotic drift
    assert observed > order - 0.2, observed


@pytest.mark.parametrize("uneven", [False, True])
def test_dpmpp_3m_is_exact_when_the_denoiser_is_quadratic_in_lambda(uneven):
    """With D a polynomial in lambda = -log sigma (and independent of x), the sigma-space ODE dx/dsigma = (x - D)/sigma
    has the exact step x' = (s'/s) x + s' [F(lambda')- F(lambda)], F = e^lambda (p - p' + p'') an antiderivative of
    e^lambda p. A third-order exponential integrator (Taylor terms up to D'') is exact on a quadratic once it has three
    points of history. Half the second-difference term, as the multistep 3M of diffusers, k-diffusion and the
    DPM-Solver code has it, leaves h^3 D'' / 12 per step: 1.6e-3 on the uniform grid."""
    coef = (0.3, 0.7, 0.5)

    def p(lam, k=0):  # the k-th derivative of the polynomial at lam
        return sum(math.perm(n, k) * c * lam ** (n - k) for n, c in enumerate(coef) if n >= k)

    def antiderivative(lam):
        return math.exp(lam) * (p(lam) - p(lam, 1) + p(lam, 2))

    def quadratic_denoiser(x, sigma, cond=None):
        return torch.full_like(x, p(-math.log(float(sigma.flatten()[0]))))

    n = 12
    # lambda from -2 to 1: uniform (h = 3 / 11), or with steps growing from 0.04 to 0.45, so that the step ratios
    # r0 != r1 weigh the divided differences
    u = torch.linspace(0, 1, n, dtype=torch.float64)
    lam = -2 + 3 * (u**2 if uneven else u)
    sig = append_zero(torch.exp(-lam))
    seen = {}
    x = torch.zeros(3, 1, dtype=torch.float64)
    dpmpp_3m(quadratic_denoiser, x.clone(), sig, callback=lambda i, xi, d: seen.__setitem__(i, xi.clone()))
    for i in range(n - 1):
        s, s_next = float(sig[i]), float(sig[i + 1])
        exact = (s_next / s) * x + s_next * (antiderivative(-math.log(s_next)) - antiderivative(-math.log(s)))
        error = (seen[i] - exact).abs().max().item()
        if i >= 2:  # the first two steps are the first- and second-order warm-up
            assert error < 1e-12, (i, error)
        x = seen[i]


def test_dpmpp_3m_is_more_accurate_than_2m_at_every_step_count():
    """On the Gaussian PF-ODE. 3M's warm-up steps are first and second order, so its global error is asymptotically
    O(h^2) like 2M's, only with a smaller constant; halving the step shows orders 2.8-3.8 from 8 to 64 steps before the
    warm-up's error takes over. Measured: 2.4x (8 steps) to 150x (128 steps) below 2M."""
    for n in (8, 16, 32, 64, 128):
        assert _solve_to_smin(dpmpp_3m, n) < _solve_to_smin(dpmpp_2m, n), n


def _ddim_case():
    """The DDIM identity tests' case: a 2-D mixture's exact denoiser, 12 log-linear steps and the initial noise."""
    mix = GaussianMixture([0.3, 0.7], [[1.0, -1.0], [-0.5, 0.5]], 0.4)
    sig = append_zero(loglinear_sigmas(0.05, 20.0, 12, dtype=torch.float64))
    x = initial_noise((64, 2), 20.0, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return mix, sig, x


def test_ddim_eta0_is_euler_and_eta1_is_ddpm_small():
    mix, sig, x = _ddim_case()
    torch.testing.assert_close(ddim(mix, x, sig), euler(mix, x, sig))
    a = ddim(mix, x, sig, eta=1.0, generator=torch.Generator().manual_seed(1))
    b = ddpm(mix, x, sig, variance="small", generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(a, b)


def test_ddim_eta1_is_k_diffusion_euler_ancestral():
    """Euler ancestral written from its formulas (Karras et al. 2022 / k-diffusion):
    sigma_up^2 = s'^2 (s^2 - s'^2) / s^2, sigma_down^2 = s'^2 - sigma_up^2, x <- x + (sigma_down - s) (x - D) / s
    + sigma_up z."""
    mix, sig, x = _ddim_case()
    g = torch.Generator().manual_seed(3)
    want = x.clone()
    for s, s_next in zip(sig[:-1].tolist(), sig[1:].tolist(), strict=True):
        d = mix(want, torch.full((64,), s, dtype=torch.float64))
        up = math.sqrt(s_next**2 * (s**2 - s_next**2) / s**2)
        down = math.sqrt(s_next**2 - up**2)
        want = want + (down - s) * (want - d) / s
        if up > 0:
            want = want + up * torch.randn(want.shape, generator=g, dtype=torch.float32).double()
    torch.testing.assert_close(ddim(mix, x, sig, eta=1.0, generator=torch.Generator().manual_seed(3)), want)


@pytest.mark.parametrize("eta", [0.0, 0.3, 0.5])
def test_ddim_is_song_et_al_eq_12_in_vp_space(eta):
    """DDIM written in VP space from Song et al. 2021, eq. 12 with eq. 16's sigma_t(eta), on x_vp = x sqrt(ab):
    x_vp' = sqrt(ab') x0 + sqrt(1 - ab' - c^2) eps + c z, eps = (x_vp - sqrt(ab) x0) / sqrt(1 - ab),
    c^2 = eta^2 (1 - ab') / (1 - ab) (1 - ab / ab'). At 0 < eta < 1 this tells eta^2 from eta."""
    mix, sig, x = _ddim_case()
    g = torch.Generator().manual_seed(4)
    want = x.clone()
    for s, s_next in zip(sig[:-1].tolist(), sig[1:].tolist(), strict=True):
        x0 = mix(want, torch.full((64,), s, dtype=torch.float64))
        ab, ab_next = 1 / (1 + s**2), 1 / (1 + s_next**2)
        x_vp = want * math.sqrt(ab)
        eps = (x_vp - math.sqrt(ab) * x0) / math.sqrt(1 - ab)
        c2 = eta**2 * (1 - ab_next) / (1 - ab) * (1 - ab / ab_next)
        x_vp = math.sqrt(ab_next) * x0 + math.sqrt(1 - ab_next - c2) * eps
        if c2 > 0:
            x_vp = x_vp + math.sqrt(c2) * torch.randn(want.shape, generator=g, dtype=torch.float32).double()
        want = x_vp / math.sqrt(ab_next)
    got = ddim(mix, x, sig, eta=eta, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("sampler", [ddim, euler, ddpm, heun, dpmpp_2m, dpmpp_3m, unipc])
def test_a_denoiser_of_another_dtype_still_samples_in_the_caller_dtype(sampler):
    def float64_denoiser(x, sigma, cond=None):  # an analytic oracle in double precision, say
        return GAUSS(x.double(), sigma.double())

    sig = append_zero(loglinear_sigmas(0.05, 10.0, 6))
    x = initial_noise((8, 1), 10.0, generator=torch.Generator().manual_seed(0))
    out = sampler(float64_denoiser, x, sig, generator=torch.Generator().manual_seed(1))
    want = sampler(GAUSS, x, sig, generator=torch.Generator().manual_seed(1))
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("variance", ["small", "large"])
def test_ancestral_moments_with_exact_denoiser(variance):
    """DDPM ancestral sampling with the exact denoiser of N(MU, S^2) over many steps: sample mean and std match the
    data within 4 standard errors (plus the discretisation bias, below 1% at 500 steps)."""
    n = 20_000
    sig = append_zero(loglinear_sigmas(0.01, 100.0, 500, dtype=torch.float64))
    g = torch.Generator().manual_seed(2)
    x = initial_noise((n, 1), 100.0, vp_prior=True, generator=g, dtype=torch.float64)
    out = ddpm(GAUSS, x, sig, variance=variance, generator=g)
    assert abs(out.mean().item() - MU) < 4 * S / math.sqrt(n) + 0.01 * S
    assert abs(out.std().item() / S - 1) < 4 * math.sqrt(1 / (2 * (n - 1))) + 0.01


@pytest.mark.parametrize("variance", ["small", "large"])
def test_ancestral_moments_over_a_few_steps_in_closed_form(variance):
    """With the exact denoiser of N(MU, S^2) each DDPM step is affine in x plus Gaussian noise, so the output's mean
    and variance after 10 steps are exact: x_s = A x_t + b + sqrt(var / ab_s) z with D = MU + k (x_t - MU),
    k = S^2 / (S^2 + s^2), A = (c0 k + c1 sqrt(ab_t)) / sqrt(ab_s), b = c0 MU (1 - k) / sqrt(ab_s) (Ho et al. 2020,
    eqs. 6-7, in sigma-space), and no noise on the last step. Fixed-small and fixed-large differ by far more than
    the sampling error here, so each variance is tested, not only the limit both share."""
    sig = append_zero(loglinear_sigmas(0.01, 100.0, 10, dtype=torch.float64))
    mean, var = 0.0, 1 + sig[0].item() ** 2  # the VP prior x_T ~ N(0, I) in sigma-space
    for s, s_next in zip(sig[:-1].tolist(), sig[1:].tolist(), strict=True):
        ab, ab_next = torch.tensor(1 / (1 + s * s), dtype=torch.float64), torch.tensor(1 / (1 + s_next**2))
        c0, c1, v_small, v_large = (float(t) for t in posterior(ab, ab_next.double()))
        k = S**2 / (S**2 + s * s)
        a = (c0 * k + c1 * math.sqrt(ab)) / math.sqrt(ab_next)
        b = c0 * MU * (1 - k) / math.sqrt(ab_next)
        noise = (v_small if variance == "small" else v_large) / ab_next.item() if s_next > 0 else 0.0
        mean, var = a * mean + b, a * a * var + noise
    n = 200_000
    g = torch.Generator().manual_seed(3)
    x = initial_noise((n, 1), sig[0].item(), vp_prior=True, generator=g, dtype=torch.float64)
    out = ddpm(GAUSS, x, sig, variance=variance, generator=g)
    std = math.sqrt(var)
    assert abs(out.mean().item() - mean) < 4 * std / math.sqrt(n)
    assert abs(out.std().item() / std - 1) < 4 * math.sqrt(1 / (2 * (n - 1)))
    assert abs(std / S - (0.65 if variance == "small" else 1.12)) < 0.01  # far apart: 0.65 S against 1.12 S


@pytest.mark.parametrize("sampler", [ddpm, ddim, euler, heun, dpmpp_2m, dpmpp_3m, unipc])
def test_deterministic_given_generator_and_counts_evaluations(sampler):
    mix = GaussianMixture([0.5, 0.5], [[1.0], [-1.0]], 0.3)
    calls = []

    def counted(x, s, cond=None):
        calls.append(1)
        return mix(x, s, cond)

    sig = append_zero(loglinear_sigmas(0.02, 10.0, 8))
    x = initial_noise((16, 1), 10.0, generator=torch.Generator().manual_seed(0))
    a = sampler(counted, x, sig, generator=torch.Generator().manual_seed(5))
    name = sampler.__name__
    assert len(calls) == evaluations(name, 8)
    b = sampler(mix, x, sig, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert a.dtype == x.dtype and torch.isfinite(a).all()


@pytest.mark.parametrize(
    "bad",
    [
        torch.tensor([1.0, 0.5]),
        torch.tensor([1.0, 2.0, 0.0]),
        torch.tensor([0.0]),
        torch.tensor([math.nan, 0.5, 0.0]),
        torch.tensor([math.inf, 1.0, 0.0]),
    ],
)
def test_bad_schedules_rejected(bad):
    with pytest.raises(ScorelabError, match="sigmas must be"):
        euler(GAUSS, torch.zeros(2, 1), bad)


def test_bad_sampler_options_rejected():
    sig = append_zero(loglinear_sigmas(0.1, 10.0, 4))
    for eta in (-0.1, 1.5, math.nan):
        with pytest.raises(ScorelabError, match=r"eta must be in \[0, 1\]"):
            ddim(GAUSS, torch.zeros(2, 1), sig, eta=eta)
    with pytest.raises(ScorelabError, match="sampler must be one of ddpm, ddim"):
        evaluations("Heun", 8)


@pytest.mark.parametrize("variance", ["small", "large"])
def test_ddpm_last_step_to_zero_is_the_denoiser_without_noise(variance):
    # Ho et al. 2020, Algorithm 2: z = 0 at t = 1. With ab_s = 1 the posterior mean is x0_hat (c_x0 = 1, c_xt = 0),
    # so the step to sigma = 0 returns D(x, sigma) exactly, also for fixed-large, whose beta_{t|s} = 1 - ab_t is not 0
    mix, _, x = _ddim_case()
    out = ddpm(mix, x, torch.tensor([1.5, 0.0], dtype=torch.float64), variance=variance,
               generator=torch.Generator().manual_seed(0))  # fmt: skip
    torch.testing.assert_close(out, mix(x, torch.full((64,), 1.5, dtype=torch.float64)))


def test_vp_prior_initial_noise_is_unit_variance_in_vp_space():
    # x_T ~ N(0, I) (Ho et al. 2020, Algorithm 2) is x_T / sqrt(ab_T) = sqrt(1 + sigma_T^2) z in sigma-space
    z = torch.randn(5, 3, generator=torch.Generator().manual_seed(0))
    x = initial_noise((5, 3), 0.8, vp_prior=True, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(x, math.sqrt(1 + 0.8**2) * z)
    torch.testing.assert_close(initial_noise((5, 3), 0.8, generator=torch.Generator().manual_seed(0)), 0.8 * z)


@pytest.mark.parametrize("order", [2, 3])
def test_unipc_is_exact_when_the_denoiser_is_a_polynomial_of_its_order_in_lambda(order):
    """UniC-p (Zhao et al. 2023, sec. 3.2) matches the Taylor expansion of D in lambda up to D^(p) from p - 1 earlier
    points and the new evaluation, so with D a polynomial of degree p in lambda (independent of x) every corrected
    step is exact once p points of history exist: x' = (s'/s) x + s' [F(lambda') - F(lambda)] with F = e^lambda
    sum_k (-1)^k p^(k). Order 3 run as order 2 (two points of history) is off by 1.6e-5 at its third step."""
    coef = (0.3, 0.7, 0.5, -0.4)[: order + 1]

    def p(lam, k=0):  # the k-th derivative of the polynomial at lam
        return sum(math.perm(n, k) * c * lam ** (n - k) for n, c in enumerate(coef) if n >= k)

    def antiderivative(lam):
        return math.exp(lam) * sum((-1) ** k * p(lam, k) for k in range(order + 1))

    def poly_denoiser(x, sigma, cond=None):
        return torch.full_like(x, p(-math.log(float(sigma.flatten()[0]))))

    n = 12
    u = torch.linspace(0, 1, n, dtype=torch.float64)
    sig = append_zero(torch.exp(-(-2 + 3 * u**2)))  # uneven steps in lambda, from 0.04 to 0.45
    seen = {}
    x = torch.zeros(3, 1, dtype=torch.float64)
    unipc(poly_denoiser, x.clone(), sig, order=order, callback=lambda i, xi, d: seen.__setitem__(i, xi.clone()))
    for i in range(n - 2):  # the step to the last positive sigma is the predictor alone
        s, s_next = float(sig[i]), float(sig[i + 1])
        exact = (s_next / s) * x + s_next * (antiderivative(-math.log(s_next)) - antiderivative(-math.log(s)))
        if i >= order - 1:  # the first steps have less history
            assert (seen[i] - exact).abs().max().item() < 1e-12, i
        x = seen[i]


def test_unipc_first_two_steps_written_out():
    """UniPC's first two steps (Zhao et al. 2023, Algorithms 1-2, data prediction, B(h) = e^h - 1, as the authors' code
    'bh2' runs it: rho = 1/2 for the order-1 corrector and the order-2 predictor), on the Gaussian's exact denoiser.
    In sigma-space with lambda = -log sigma: x_base = (s'/s) x - expm1(-h) m0, x = x_base - expm1(-h) sum rho_k D_k."""
    x = torch.linspace(-3, 3, 7, dtype=torch.float64)[:, None]
    sig = torch.tensor([10.0, 4.0, 1.5, 0.5, 0.0], dtype=torch.float64)
    seen = {}
    unipc(GAUSS, x.clone(), sig, callback=lambda i, xi, d: seen.__setitem__(i, xi.clone()))

    def den(y, s):
        return GAUSS(y, torch.full((y.shape[0],), s, dtype=torch.float64))

    s0, s1, s2 = sig[:3].tolist()
    lam0, lam1, lam2 = -math.log(s0), -math.log(s1), -math.log(s2)
    # step 1: first-order predictor, UniC-1 with rho = 1/2 on m1 - m0
    m0 = den(x, s0)
    h = lam1 - lam0
    base = (s1 / s0) * x - math.expm1(-h) * m0
    m1 = den(base, s1)
    x1 = base - math.expm1(-h) * 0.5 * (m1 - m0)
    torch.testing.assert_close(seen[0], x1, rtol=1e-12, atol=1e-12)
    # step 2: r = (lambda_0 - lambda_1) / h, D = (m0 - m1) / r; predictor rho = 1/2; corrector solves
    # [[1, 1], [r, 1]] rho = [phi_1, 2 phi_2] / B(h) with phi_1 = (e^-h - 1)/(-h) - 1, phi_2 = phi_1/(-h) - 1/2
    h = lam2 - lam1
    r = (lam0 - lam1) / h
    diff = (m0 - m1) / r
    base = (s2 / s1) * x1 - math.expm1(-h) * m1
    m2 = den(base - math.expm1(-h) * 0.5 * diff, s2)
    phi1 = math.expm1(-h) / -h - 1
    phi2 = phi1 / -h - 0.5
    rho = torch.linalg.solve(torch.tensor([[1.0, 1.0], [r, 1.0]], dtype=torch.float64),
                             torch.tensor([phi1, 2 * phi2], dtype=torch.float64) / math.expm1(-h))  # fmt: skip
    x2 = base - math.expm1(-h) * (rho[0].item() * diff + rho[1].item() * (m2 - m1))
    torch.testing.assert_close(seen[1], x2, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    "bad, message",
    [
        ([1.0, 0.5], r"sigmas must be a schedule ending in 0, got \[1, 0\.5\]; append_zero"),
        ([0.5, 1.0, 0.0], r"sigmas must be strictly decreasing \(sigma_max down to 0\), got \[0\.5, 1, 0\]"),
        ([1.0, -1.0, 0.0], r"sigmas must be positive before the final 0, got \[1, -1, 0\]"),
        ([1.0, math.nan, 0.0], r"sigmas must be finite, got \[1, nan, 0\]"),
    ],
)
def test_bad_schedule_errors_say_what_is_wrong_and_show_the_schedule(bad, message):
    with pytest.raises(ScorelabError, match=message):
        euler(GAUSS, torch.zeros(2, 1), bad)


def test_solver_order_must_be_the_integer_1_2_or_3():
    from scorelab.sampling.dpm_solver import dpmpp_multistep

    sig = append_zero(loglinear_sigmas(0.1, 10.0, 4))
    with pytest.raises(ScorelabError, match=r"order must be 1, 2 or 3, got '2'"):  # was 'got 2', which is allowed
        dpmpp_multistep(GAUSS, torch.zeros(2, 1), sig, order="2")
    for bad in (2.0, True):  # 2.0 used to fail inside range(); True ran as order 1
        with pytest.raises(ScorelabError, match=rf"order must be 1, 2 or 3, got {bad!r}"):
            unipc(GAUSS, torch.zeros(2, 1), sig, order=bad)


def test_sampling_a_mixture_of_another_dimension_names_the_shapes():
    sig = append_zero(loglinear_sigmas(0.1, 10.0, 4))
    with pytest.raises(
        ValueError,
        match=r"x must hold 1 values per sample like the mixture: shape \(B, 1\) or \(B, \.\.\.\), got \(2, 3\)",
    ):
        euler(GAUSS, torch.zeros(2, 3), sig)
    assert euler(GAUSS, torch.zeros(0, 1), sig).shape == (0, 1)  # an empty batch is an empty result


@pytest.mark.parametrize("name", ["ddpm", "ddim", "euler", "heun", "dpmpp_2m", "dpmpp_3m", "unipc"])
def test_the_progress_bar_follows_the_model_evaluations(name, monkeypatch):
    """At each model call the bar has counted the steps already taken, not all of them (UniPC once ran the whole bar
    before its first evaluation)."""
    import scorelab.sampling.common as common
    from scorelab.sampling import SAMPLERS

    class Bar:
        def __init__(self, items, **kw):
            self.items, self.n = items, 0

        def __len__(self):
            return len(self.items)

        def __iter__(self):
            for item in self.items:
                yield item
                self.n += 1

    bars = []
    monkeypatch.setattr(common, "tqdm", lambda items, **kw: bars.append(Bar(items, **kw)) or bars[-1])
    seen = []
    mix = GaussianMixture([1.0], [[0.0, 0.0]], 1.0)

    def model(x, sigma, cond=None):
        seen.append(bars[-1].n)
        return mix(x, sigma)

    sigmas = append_zero(loglinear_sigmas(0.1, 10.0, 6))
    SAMPLERS[name](model, torch.zeros(3, 2), sigmas, generator=torch.Generator().manual_seed(0), progress=True)
    assert len(seen) == evaluations(name, 6)
    # the step each call belongs to; UniPC evaluates at the end of each step, and its last step (to 0) needs none
    assert seen == sorted(seen) and seen[0] == 0 and seen[-1] == (4 if name == "unipc" else 5)


def test_an_integer_state_or_a_bad_starting_sigma_is_one_line():
    """ddim and euler failed inside lerp on an integer x ('not implemented for Long'), an exact mixture truncated its
    output to integers; initial_noise took a negative or NaN sigma_max."""
    sig = append_zero(loglinear_sigmas(0.1, 10.0, 4))
    for sampler in (ddim, euler, dpmpp_2m, unipc):
        with pytest.raises(
            ScorelabError, match="x must be a floating-point tensor .the sampler's state., got torch.int64"
        ):
            sampler(GAUSS, torch.zeros(2, 1, dtype=torch.long), sig)
    for bad in (-1.0, float("nan"), float("inf"), 0.0):
        with pytest.raises(ScorelabError, match="sigma_max must be positive and finite"):
            initial_noise((2, 1), bad)
    for bad in (-0.5, float("nan")):
        with pytest.raises(ScorelabError, match="sigma must be finite and >= 0"):
            GAUSS(torch.zeros(2, 1), torch.full((2,), bad))
        with pytest.raises(ScorelabError, match="sigma must be finite and >= 0"):
            GAUSS.score(torch.zeros(2, 1), bad)
