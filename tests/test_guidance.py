"""Guidance and clamping wrappers: the written convention, one batched call, consistency of clamped samplers."""

import math

import pytest
import torch

from scorelab.analytic import GaussianMixture
from scorelab.errors import ScorelabError
from scorelab.guidance import Clamped, ClassifierFreeGuidance, DynamicThreshold
from scorelab.sampling import ddim, dpmpp_2m, unipc
from scorelab.sampling.common import initial_noise
from scorelab.schedules import append_zero, loglinear_sigmas

# class c in {0, 1} selects a component; label -1 is the unconditional mixture
COMPONENTS = [GaussianMixture([1.0], [[1.0, 0.5]], 0.3), GaussianMixture([1.0], [[-1.0, 0.0]], 0.3)]
MIXTURE = GaussianMixture([0.5, 0.5], [[1.0, 0.5], [-1.0, 0.0]], 0.3)


class LabelledOracle:
    def __init__(self):
        self.calls = []

    def __call__(self, x, sigma, cond=None):
        self.calls.append(x.shape[0])
        out = torch.empty_like(x)
        for label, model in [(-1, MIXTURE), (0, COMPONENTS[0]), (1, COMPONENTS[1])]:
            m = cond == label
            if m.any():
                out[m] = model(x[m], sigma[m])
        return out


def test_cfg_convention_and_single_batched_call():
    oracle = LabelledOracle()
    x = torch.randn(6, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    sigma = torch.full((6,), 0.8, dtype=torch.float64)
    cond = torch.tensor([0, 1, 0, 1, 1, 0])
    d_c = oracle(x, sigma, cond)
    d_u = oracle(x, sigma, torch.full_like(cond, -1))
    for scale in (0.0, 1.0, 3.0):
        oracle.calls.clear()
        out = ClassifierFreeGuidance(oracle, scale, null_cond=-1)(x, sigma, cond)
        torch.testing.assert_close(out, d_u + scale * (d_c - d_u))
        assert oracle.calls == ([12] if scale not in (0.0, 1.0) else [6])  # cond and uncond in one forward pass


def test_cfg_score_is_the_tilted_score():
    # D_u + s (D_c - D_u) means score_u + s (score_c - score_u) = grad log p(x) p(c|x)^s (Ho & Salimans 2022, eq. 6)
    x = torch.randn(5, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1)).requires_grad_()
    sigma = 0.5
    cfg = ClassifierFreeGuidance(LabelledOracle(), 2.5, null_cond=-1)
    d = cfg(x.detach(), torch.full((5,), sigma, dtype=torch.float64), torch.zeros(5, dtype=torch.long))
    log_p = MIXTURE.log_prob(x, sigma)
    log_post = COMPONENTS[0].log_prob(x, sigma) + math.log(0.5) - log_p  # log p(c = 0 | x)
    grad = torch.autograd.grad((log_p + 2.5 * log_post).sum(), x)[0]
    torch.testing.assert_close((d - x.detach()) / sigma**2, grad)


def test_clamped_sampler_uses_eps_of_the_clamped_estimate():
    """A DDIM step with a clamped denoiser must use eps recomputed from the clamped x0_hat: x' = c + s' (x - c) / s
    with c = clamp(D). Keeping the unclamped eps would give x' = c + s' (x - D) / s instead."""
    far = GaussianMixture([1.0], [[3.0, -3.0]], 0.1)  # data outside [-1, 1], so the clamp is active
    x = torch.randn(8, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2)) * 2
    sig = torch.tensor([2.0, 0.5, 0.0], dtype=torch.float64)
    out = {}
    ddim(Clamped(far), x, sig, callback=lambda i, xi, d: out.__setitem__(i, (xi, d)))
    c = far(x, torch.full((8,), 2.0, dtype=torch.float64)).clamp(-1, 1)
    torch.testing.assert_close(out[0][1], c)
    torch.testing.assert_close(out[0][0], c + 0.5 * (x - c) / 2.0)


@pytest.mark.parametrize("sampler", [ddim, dpmpp_2m, unipc])
def test_high_guidance_stays_in_range_and_finite(sampler):
    oracle = LabelledOracle()
    model = Clamped(ClassifierFreeGuidance(oracle, 8.0, null_cond=-1))
    sig = append_zero(loglinear_sigmas(0.01, 40.0, 15, dtype=torch.float64))
    x = initial_noise((200, 2), 40.0, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    labels = torch.arange(200) % 2
    states = {}
    out = sampler(model, x, sig, cond=labels, callback=lambda i, xi, d: states.__setitem__(i, xi))
    assert torch.isfinite(out).all() and torch.isfinite(states[len(sig) - 3]).all()  # the state before the last step
    # guidance pulls every sample to its own class's component
    nearest = torch.cdist(out, torch.stack([c.means[0] for c in COMPONENTS])).argmin(1)
    assert (nearest == labels).float().mean() > 0.99


def test_cfg_takes_a_scalar_sigma_and_rejects_a_bad_scale():
    x = torch.randn(4, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    cond = torch.tensor([0, 1, 1, 0])
    cfg = ClassifierFreeGuidance(LabelledOracle(), 3.0, null_cond=-1)
    torch.testing.assert_close(
        cfg(x, torch.tensor(0.7), cond), cfg(x, torch.full((4,), 0.7, dtype=torch.float64), cond)
    )
    for bad in (-1.0, math.nan, math.inf):
        with pytest.raises(ScorelabError, match="guidance scale must be finite and >= 0"):
            ClassifierFreeGuidance(LabelledOracle(), bad, null_cond=-1)


def test_dynamic_threshold():
    class Fixed:
        def __call__(self, x, sigma, cond=None):
            return x

    x = torch.tensor([[0.5, -0.2, 0.1, 0.0], [3.0, -2.0, 0.5, 1.0]])
    out = DynamicThreshold(Fixed(), percentile=1.0)(x, torch.ones(2))
    torch.testing.assert_close(out[0], x[0])  # s = max(1, max|x|) = 1: unchanged
    torch.testing.assert_close(out[1], x[1] / 3.0)


def test_dynamic_threshold_clips_at_the_percentile_of_the_absolute_values():
    # Imagen (Saharia et al. 2022, sec. 2.3): s = the 90th percentile of |x0_hat| (= 9 for |x0_hat| = 0..10, linear
    # interpolation), then x0_hat <- clip(x0_hat, -s, s) / s; signs alternate so a signed percentile would give 8
    x = torch.tensor([[0.0, -1, 2, -3, 4, -5, 6, -7, 8, -9, 10]], dtype=torch.float64)
    out = DynamicThreshold(lambda x, sigma, cond=None: x, percentile=0.9)(x, torch.ones(1))
    torch.testing.assert_close(out, x.clamp(-9, 9) / 9)


def test_cfg_rejects_a_scale_that_is_not_one_number_and_a_missing_null_condition():
    for bad in ("2", None, torch.tensor([1.0, 2.0])):
        with pytest.raises(ScorelabError, match=r"guidance scale must be finite and >= 0 \(one number\), got "):
            ClassifierFreeGuidance(LabelledOracle(), bad, null_cond=-1)
    with pytest.raises(ScorelabError, match=r"null_cond must be the condition .*label -1 .*got None"):
        ClassifierFreeGuidance(LabelledOracle(), 2.0, null_cond=None)


def test_cfg_condition_must_have_one_entry_per_sample():
    cfg = ClassifierFreeGuidance(LabelledOracle(), 3.0, null_cond=-1)
    x = torch.zeros(4, 2, dtype=torch.float64)
    for bad, got in ((torch.tensor([1]), r"\(1,\)"), (1, "int"), ([0, 1, 1, 0], "list")):
        with pytest.raises(
            ValueError, match=rf"needs cond as a tensor with one entry per sample \(labels \(4,\).*got {got}"
        ):
            cfg(x, torch.tensor(0.7), bad)


def test_clamped_needs_low_below_high():
    with pytest.raises(
        ValueError, match=r"Clamped needs low < high, got low=1\.0, high=-1\.0"
    ):  # clamp gave -1 everywhere
        Clamped(LabelledOracle(), low=1.0, high=-1.0)
