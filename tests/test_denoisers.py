import pytest
import torch

from scorelab.denoisers import (
    Preconditioned,
    denoised_from_eps,
    denoised_from_score,
    eps_from_denoised,
    expand_sigma,
    score_from_denoised,
)
from scorelab.errors import ScorelabError
from scorelab.schedules import append_zero, geometric_sigmas


def test_conversions_round_trip():
    x, d = torch.randn(4, 3, 2, 2), torch.randn(4, 3, 2, 2)
    sigma = torch.tensor([0.1, 0.5, 1.0, 3.0])
    torch.testing.assert_close(denoised_from_score(x, score_from_denoised(x, d, sigma), sigma), d)
    torch.testing.assert_close(denoised_from_eps(x, eps_from_denoised(x, d, sigma), sigma), d)
    # score = -eps / sigma
    torch.testing.assert_close(
        score_from_denoised(x, d, sigma), -eps_from_denoised(x, d, sigma) / sigma[:, None, None, None]
    )


def test_expand_sigma_rejects_wrong_shape():
    with pytest.raises(ScorelabError, match="sigma"):
        expand_sigma(torch.ones(3), torch.zeros(4, 2))


class Constant(torch.nn.Module):
    def forward(self, x, c_noise, cond=None):
        return torch.full_like(x, 2.0)


@pytest.mark.parametrize("param", ["eps", "x0", "edm"])
def test_preconditioning_coefficients(param):
    d = Preconditioned(Constant(), param, sigma_data=0.5)
    x, sigma = torch.randn(3, 2), torch.tensor([0.1, 1.0, 10.0])
    s = sigma[:, None]
    out = d(x, sigma)
    if param == "eps":
        expect = x - s * 2.0
    elif param == "x0":
        expect = torch.full_like(x, 2.0)
    else:  # Karras et al. 2022, Table 1
        expect = 0.25 / (s**2 + 0.25) * x + s * 0.5 / torch.sqrt(s**2 + 0.25) * 2.0
    torch.testing.assert_close(out, expect)


def test_geometric_sigmas_constant_ratio():
    s = geometric_sigmas(20.0, 1.0, 10).double()
    ratios = s[1:] / s[:-1]
    torch.testing.assert_close(ratios, torch.full_like(ratios, (1 / 20) ** (1 / 9)), rtol=1e-6, atol=0)
    assert s[0].item() == pytest.approx(20.0) and s[-1].item() == pytest.approx(1.0)
    assert append_zero(s)[-1] == 0
    with pytest.raises(ScorelabError):
        geometric_sigmas(1.0, 2.0, 10)


class Recorder(torch.nn.Module):
    """A 'network' returning a fixed target and recording its inputs."""

    def __init__(self, target):
        super().__init__()
        self.target, self.seen = target, None

    def forward(self, x_in, c_noise, cond=None):
        self.seen = (x_in, c_noise)
        return self.target


@pytest.mark.parametrize("param", ["eps", "x0", "v", "edm"])
def test_network_inputs_are_c_in_x_and_ln_sigma_over_4(param):
    # Karras et al. 2022, Table 1: c_in = 1 / sqrt(sigma^2 + sigma_data^2), c_noise = ln(sigma) / 4, for every
    # parameterisation, at sigma_data != 1 (where c_in is not the VP scaling)
    net = Recorder(torch.zeros(3, 2, dtype=torch.float64))
    x = torch.randn(3, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    sigma = torch.tensor([0.02, 0.5, 30.0], dtype=torch.float64)
    Preconditioned(net, param, sigma_data=0.5)(x, sigma)
    torch.testing.assert_close(net.seen[0], x / (sigma[:, None] ** 2 + 0.25).sqrt())
    torch.testing.assert_close(net.seen[1], sigma.log() / 4)


@pytest.mark.parametrize("sd", [0.5, 2.0])
def test_v_parameterisation_with_sigma_data_recovers_x0_from_its_target(sd):
    # v of Salimans & Ho 2022 (sec. 4) for data x0 / sd: v = alpha eps - sigma_vp x0 / sd with alpha = sd / sqrt(s^2 +
    # sd^2), sigma_vp = s / sqrt(s^2 + sd^2); a unit-variance target, the negative of EDM's (Karras et al. 2022, eq. 8)
    g = torch.Generator().manual_seed(1)
    x0, eps = torch.randn(4, 3, generator=g, dtype=torch.float64), torch.randn(4, 3, generator=g, dtype=torch.float64)
    sigma = torch.tensor([0.1, 1.0, 3.0, 20.0], dtype=torch.float64)
    s = sigma[:, None]
    alpha, sigma_vp = sd / (s**2 + sd**2).sqrt(), s / (s**2 + sd**2).sqrt()
    target = alpha * eps - sigma_vp * x0 / sd
    torch.testing.assert_close(Preconditioned(Recorder(target), "v", sigma_data=sd)(x0 + s * eps, sigma), x0)
    torch.testing.assert_close(Preconditioned(Recorder(-target), "edm", sigma_data=sd)(x0 + s * eps, sigma), x0)


@pytest.mark.parametrize("sigma_data", [0.0, -0.5, float("nan"), float("inf")])
def test_preconditioning_needs_a_positive_finite_sigma_data(sigma_data):
    # 0 made the 'edm' and 'v' denoisers return 0 for every input; a negative one flipped the sign of c_out
    with pytest.raises(
        ValueError, match=r"sigma_data must be a finite number > 0 \(the data standard deviation\), got "
    ):
        Preconditioned(Constant(), "edm", sigma_data=sigma_data)
