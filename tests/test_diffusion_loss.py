"""DDPM training pieces: the VP network sees the DDPM state, each parameterisation recovers x0 from its exact
target, and the eps-loss of the exact denoiser matches its closed form."""

import math

import pytest
import torch

from scorelab.analytic import GaussianMixture
from scorelab.denoisers import Preconditioned
from scorelab.errors import ScorelabError
from scorelab.objectives.diffusion import ddpm_loss, snr_weight
from scorelab.schedules import alphas_cumprod, beta_schedule


class Recorder(torch.nn.Module):
    """A 'network' returning a fixed target and recording its input."""

    def __init__(self, target):
        super().__init__()
        self.target, self.seen = target, None

    def forward(self, x_in, c_noise, cond=None):
        self.seen = x_in
        return self.target


@pytest.mark.parametrize("param", ["eps", "x0", "v"])
def test_parameterisations_recover_x0_from_their_targets(param):
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(4, 3, generator=g, dtype=torch.float64), torch.randn(4, 3, generator=g, dtype=torch.float64)
    sigma = torch.tensor([0.1, 1.0, 3.0, 20.0], dtype=torch.float64)
    s = sigma[:, None]
    alpha, sigma_vp = 1 / (1 + s**2).sqrt(), s / (1 + s**2).sqrt()
    # exact targets: eps; x0; v = alpha eps - sigma_vp x0 (Salimans & Ho 2022, sec. 4)
    target = {"eps": eps, "x0": x0, "v": alpha * eps - sigma_vp * x0}[param]
    net = Recorder(target)
    d = Preconditioned(net, param, sigma_data=1.0)(x0 + s * eps, sigma)
    torch.testing.assert_close(d, x0)
    # with sigma_data = 1 the network input is the DDPM state sqrt(ab) x0 + sqrt(1 - ab) eps
    torch.testing.assert_close(net.seen, alpha * x0 + sigma_vp * eps)


def test_snr_weights_turn_the_eps_error_into_each_parameterisation_error():
    """For any estimate x0_hat at x = x0 + sigma eps, the weighted eps error equals the error measured directly in
    x0 (weight 1/SNR), in v = alpha eps - sigma_vp x0 (Salimans & Ho 2022, sec. 4) and, for min-SNR, the x0 error
    weighted by min(SNR, gamma) (Hang et al. 2023, eq. 8)."""
    g = torch.Generator().manual_seed(3)
    x0, eps = torch.randn(3, 5, generator=g, dtype=torch.float64), torch.randn(3, 5, generator=g, dtype=torch.float64)
    sigma = torch.tensor([0.1, 1.0, 10.0], dtype=torch.float64)
    s = sigma[:, None]
    x = x0 + s * eps
    x0_hat = 0.5 * x + torch.randn(3, 5, generator=g, dtype=torch.float64)  # any estimate, far from exact
    eps_hat = (x - x0_hat) / s
    eps_err = ((eps - eps_hat) ** 2).sum(1)
    x0_err = ((x0 - x0_hat) ** 2).sum(1)
    alpha, sigma_vp = 1 / (1 + s**2).sqrt(), s / (1 + s**2).sqrt()
    v_err = (((alpha * eps - sigma_vp * x0) - (alpha * eps_hat - sigma_vp * x0_hat)) ** 2).sum(1)
    torch.testing.assert_close(snr_weight(sigma, "eps") * eps_err, eps_err)
    torch.testing.assert_close(snr_weight(sigma, "x0") * eps_err, x0_err)
    torch.testing.assert_close(snr_weight(sigma, "v") * eps_err, v_err)
    torch.testing.assert_close(snr_weight(sigma, "min_snr", gamma=5.0) * eps_err, (s[:, 0] ** -2).clamp(max=5) * x0_err)
    with pytest.raises(ScorelabError, match="weighting must be one of"):
        snr_weight(sigma, "p2")


def test_eps_loss_of_exact_denoiser_matches_closed_form():
    """For data N(0, s^2 I) the exact eps-prediction leaves E||eps - eps_hat||^2 / D = s^2 / (s^2 + sigma^2), the
    posterior variance of eps; averaged over the T timesteps. Checked within 3 standard errors."""
    s = 0.6
    data = GaussianMixture([1.0], [[0.0, 0.0]], s)
    ab = alphas_cumprod(beta_schedule("cosine", 50))
    sig2 = (1 - ab) / ab
    expected = (s**2 / (s**2 + sig2)).mean().item()
    g = torch.Generator().manual_seed(1)
    losses = torch.tensor([ddpm_loss(data, data.sample(500, g).double(), ab, generator=g).item() for _ in range(200)])
    se = losses.std() / math.sqrt(len(losses))
    assert abs(losses.mean().item() - expected) < 3 * se


@pytest.mark.parametrize("weighting", ["eps", "x0", "v", "min_snr"])
def test_ddpm_loss_applies_its_weighting(weighting):
    """With D = 0 and x0 = c everywhere, eps_hat - eps = c / sigma: the eps-MSE is c^2 SNR for each sample, so the
    weighted losses are c^2 SNR (eps), c^2 (x0), c^2 (SNR + 1) (v) and c^2 min(SNR, 5) (min-SNR with Hang et al.
    2023's default gamma = 5), averaged over the sigmas the loss drew."""
    seen = []

    def zero(x, sigma, cond=None):
        seen.append(sigma.clone())
        return torch.zeros_like(x)

    c = 0.3
    ab = alphas_cumprod(beta_schedule("cosine", 50))
    x0 = torch.full((64, 3), c, dtype=torch.float64)
    loss = ddpm_loss(zero, x0, ab, weighting=weighting, generator=torch.Generator().manual_seed(0))
    snr = seen[0] ** -2
    w = {"eps": snr, "x0": torch.ones_like(snr), "v": snr + 1, "min_snr": snr.clamp(max=5.0)}[weighting]
    assert loss.item() == pytest.approx(c**2 * w.mean().item(), rel=1e-9)
    assert len(seen[0].unique()) > 10  # the draws cover many timesteps


def test_min_snr_caps_the_weight_at_its_gamma():
    # Hang et al. 2023, eq. 8 for eps-prediction: weight min(SNR, gamma) / SNR, so the loss of D = 0 is c^2 min(SNR, g)
    seen = []

    def zero(x, sigma, cond=None):
        seen.append(sigma.clone())
        return torch.zeros_like(x)

    ab = alphas_cumprod(beta_schedule("cosine", 50))
    x0 = torch.full((64, 3), 0.3, dtype=torch.float64)
    for gamma in (0.5, 2.0):
        loss = ddpm_loss(zero, x0, ab, weighting="min_snr", gamma=gamma, generator=torch.Generator().manual_seed(0))
        snr = seen[-1] ** -2
        assert (snr < gamma).any() and (snr > gamma).any()
        assert loss.item() == pytest.approx(0.09 * snr.clamp(max=gamma).mean().item(), rel=1e-9)


def test_ddpm_loss_refuses_betas_for_alpha_bar_and_a_non_positive_min_snr_cap():
    data = GaussianMixture([1.0], [[0.0, 0.0]], 0.6)
    betas = beta_schedule("linear", 100)
    x0 = torch.zeros(8, 2)
    with pytest.raises(
        ValueError, match=r"alpha_bar must lie in \(0, 1\) and strictly decrease .*not the betas.*got \[0\.0001"
    ):
        ddpm_loss(data, x0, betas)  # used to train silently at sigma 7..100
    for gamma in (0.0, -1.0):  # the loss was 0, or negative
        with pytest.raises(ScorelabError, match=r"gamma \(min_snr's SNR cap\) must be a finite number > 0, got "):
            ddpm_loss(data, x0, alphas_cumprod(betas), weighting="min_snr", gamma=gamma)
    with pytest.raises(
        ValueError, match=r"x0 must be a tensor of shape \(B, D\) or \(B, \.\.\.\) with B >= 1, got \(8,\)"
    ):
        ddpm_loss(data, torch.zeros(8), alphas_cumprod(betas))
