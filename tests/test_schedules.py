import math

import pytest
import torch

from scorelab.errors import ScorelabError
from scorelab.schedules import (
    alpha_bar_from_sigma,
    alphas_cumprod,
    beta_schedule,
    discrete_sigmas,
    karras_sigmas,
    loglinear_sigmas,
    lognormal_sigmas,
    sigma_from_alpha_bar,
    timesteps,
)
from scorelab.vp import posterior


def test_spacings_match_closed_form_lists():
    # Lin et al. 2024, Table 2 (T = 1000, 10 steps)
    assert timesteps(1000, 10, "leading").tolist() == [900, 800, 700, 600, 500, 400, 300, 200, 100, 0]
    assert timesteps(1000, 10, "trailing").tolist() == [999, 899, 799, 699, 599, 499, 399, 299, 199, 99]
    assert timesteps(1000, 10, "linspace").tolist() == [999, 888, 777, 666, 555, 444, 333, 222, 111, 0]
    assert timesteps(1000, 10, "leading", offset=1).tolist()[0] == 901
    with pytest.raises(ScorelabError):
        timesteps(1000, 0, "trailing")
    with pytest.raises(ScorelabError):
        timesteps(1000, 10, "sideways")


def test_spacings_round_ties_as_diffusers_does():
    """Where the exact value is a tie at .5, numpy's float arithmetic, and so diffusers, lands below it; the lists
    below are diffusers 0.42.1's DDIMScheduler.set_timesteps (T = 1000). Exact half-to-even rounding would give
    500 in the first list and 937, 687, 437, 312, 187, 62 in the second. Checked against diffusers for every n at
    T = 37, 50 and 1000: equal, except that diffusers' trailing list has an extra entry, -1, for 64 of those n."""
    assert timesteps(1000, 27, "linspace").tolist() == [
        999, 961, 922, 884, 845, 807, 768, 730, 692, 653, 615, 576, 538, 499,
        461, 423, 384, 346, 307, 269, 231, 192, 154, 115, 77, 38, 0,
    ]  # fmt: skip
    assert timesteps(1000, 48, "trailing").tolist() == [
        999, 978, 957, 936, 916, 895, 874, 853, 832, 811, 791, 770, 749, 728, 707, 686, 666, 645, 624, 603, 582, 561,
        541, 520, 499, 478, 457, 436, 416, 395, 374, 353, 332, 311, 291, 270, 249, 228, 207, 186, 166, 145, 124, 103,
        82, 61, 41, 20,
    ]  # fmt: skip


def _alpha_bar_by_hand(t: int) -> float:
    prod = 1.0
    for i in range(t + 1):
        prod *= 1 - (1e-4 + (0.02 - 1e-4) * i / 999)
    return prod


@pytest.mark.parametrize("t", [1, 487, 999])
def test_ddpm_posterior_variance_by_hand(t):
    ab_t, ab_prev = _alpha_bar_by_hand(t), _alpha_bar_by_hand(t - 1)
    beta = 1e-4 + (0.02 - 1e-4) * t / 999
    expected = (1 - ab_prev) / (1 - ab_t) * beta  # Ho et al. 2020 eq. 7
    ab = alphas_cumprod(beta_schedule("linear"))
    _, _, small, large = posterior(ab[t], ab[t - 1])
    assert small.item() == pytest.approx(expected, rel=1e-10)
    assert large.item() == pytest.approx(beta, rel=1e-10)
    if t == 487:
        assert small.item() == pytest.approx(0.00979, abs=1e-5)
    if t == 999:
        assert small.item() == pytest.approx(0.02, abs=1e-6)


def test_beta_schedules():
    lin = beta_schedule("linear")
    assert lin[0].item() == pytest.approx(1e-4) and lin[-1].item() == pytest.approx(0.02)
    sl = beta_schedule("scaled_linear")
    assert sl[0].item() == pytest.approx(0.00085) and sl[-1].item() == pytest.approx(0.012)
    assert torch.allclose(sl.sqrt().diff(), sl.sqrt().diff()[0].expand(999))
    cos = beta_schedule("cosine")
    assert cos.max().item() == pytest.approx(0.999)

    def f(t):
        return math.cos((t / 1000 + 0.008) / 1.008 * math.pi / 2) ** 2  # Nichol & Dhariwal eq. 17

    ab = alphas_cumprod(cos)
    assert ab[499].item() == pytest.approx(f(500) / f(0), rel=1e-9)
    with pytest.raises(ScorelabError):
        beta_schedule("quadratic")


def test_vp_sigma_round_trip():
    ab = alphas_cumprod(beta_schedule("linear"))
    sig = sigma_from_alpha_bar(ab)
    torch.testing.assert_close(alpha_bar_from_sigma(sig), ab)
    assert ab[-1].sqrt().item() == pytest.approx(0.0064, abs=5e-5)
    s = discrete_sigmas(ab, timesteps(1000, 10, "trailing"), dtype=torch.float64)
    assert s[-1] == 0 and s[0].item() == pytest.approx(sig[999].item())


def test_karras_and_lognormal():
    s = karras_sigmas(0.002, 80.0, 10, rho=7.0, dtype=torch.float64)
    assert s[0].item() == pytest.approx(80.0) and s[-1].item() == pytest.approx(0.002)
    # uniform in sigma^(1/rho) (Karras et al. 2022 eq. 5)
    root = s ** (1 / 7)
    torch.testing.assert_close(root.diff(), root.diff()[0].expand(9))
    ln = lognormal_sigmas(0.02, 500.0, 20, centre=0.7, width=2.0, dtype=torch.float64)
    assert ln[0].item() == 500.0 and ln[-1].item() == pytest.approx(0.02)
    assert (ln.diff() < 0).all()
    # equal quantile steps: the normal CDF of the standardised log sigmas is evenly spaced
    u = torch.special.ndtr((ln.log() - math.log(0.7)) / 2.0)
    torch.testing.assert_close(u.diff(), u.diff()[0].expand(19))


@pytest.mark.parametrize("T", [37, 50, 1000])
@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
def test_every_step_count_gives_n_distinct_timesteps_in_range(T, spacing):
    # float round-off in arange once gave trailing spacing an extra entry, -1 (T = 1000, n = 61)
    for n in range(1, T + 1):
        t = timesteps(T, n, spacing)
        assert len(t) == n and len(t.unique()) == n and t.min() >= 0 and t.max() <= T - 1, n
        if spacing == "trailing":
            assert t[0] == T - 1


def test_bad_schedule_arguments_rejected():
    with pytest.raises(ScorelabError, match="leading offset must be in"):
        timesteps(1000, 1000, "leading", offset=1)
    with pytest.raises(ScorelabError, match="leading offset must be in"):
        timesteps(1000, 10, "leading", offset=-1)
    with pytest.raises(ScorelabError, match="n >= 1"):
        loglinear_sigmas(0.1, 10.0, 0)
    with pytest.raises(ScorelabError, match="beta_start <= beta_end"):
        beta_schedule("linear", 10, beta_start=0.0)
    assert beta_schedule("linear", 3, beta_start=1e-3, beta_end=1e-3).tolist() == [1e-3] * 3


def test_karras_default_rho_is_seven():
    # Karras et al. 2022, eq. 5 with their rho = 7: sigma_i = (smax^(1/7) + i/(n-1) (smin^(1/7) - smax^(1/7)))^7
    hi, lo = 80.0 ** (1 / 7), 0.002 ** (1 / 7)
    expect = [(hi + i / 4 * (lo - hi)) ** 7 for i in range(5)]
    assert karras_sigmas(0.002, 80.0, 5, dtype=torch.float64).tolist() == pytest.approx(expect, rel=1e-12)


def test_sigma_ranges_are_checked_by_name_in_every_schedule():
    from scorelab.schedules import geometric_sigmas

    message = r"need 0 < sigma_min < sigma_max < inf, got sigma_min=80, sigma_max=0\.002"
    with pytest.raises(ScorelabError, match=message):  # karras takes (sigma_min, sigma_max), geometric the other way
        karras_sigmas(80, 0.002, 10)
    with pytest.raises(ScorelabError, match=message):  # n = 1 used to return [0.002] unchecked
        loglinear_sigmas(80, 0.002, 1)
    with pytest.raises(ScorelabError, match=r"sigma_max=inf"):  # used to return NaN
        geometric_sigmas(math.inf, 0.01, 5)
    with pytest.raises(ScorelabError, match=r"need finite centre > 0 and width > 0, got centre=nan"):
        lognormal_sigmas(0.002, 80.0, 5, centre=math.nan)
    with pytest.raises(ScorelabError, match=r"rho must be a finite nonzero number .*got 0"):  # was ZeroDivisionError
        karras_sigmas(0.002, 80.0, 10, rho=0)
    with pytest.raises(ScorelabError, match=r"need an integer n \(noise levels\) >= 2, got 5\.0"):
        geometric_sigmas(10.0, 0.01, 5.0)


def test_options_a_schedule_ignores_are_refused():
    with pytest.raises(ScorelabError, match=r"cosine takes neither, got beta_start=0\.001, beta_end=None"):
        beta_schedule("cosine", 1000, beta_start=1e-3)
    with pytest.raises(
        ValueError, match=r"offset applies to leading spacing only, got offset=1 with spacing 'trailing'"
    ):
        timesteps(1000, 10, "trailing", offset=1)


def test_discrete_sigmas_refuses_betas_for_alpha_bar():
    betas = beta_schedule("linear", 1000)
    with pytest.raises(ScorelabError, match=r"alpha_bar must lie in \(0, 1\) and strictly decrease .*not the betas"):
        discrete_sigmas(betas, timesteps(1000, 5))


def test_append_zero_takes_a_list():
    from scorelab.schedules import append_zero

    assert append_zero([10.0, 1.0]).tolist() == [10.0, 1.0, 0.0]


def test_lognormal_quantiles_hold_far_in_the_tails_and_no_mass_is_one_line():
    """With the range several widths above the centre, 1 - Phi loses every digit (torch's ndtr is 0 below z = -9.5,
    1 above 8) and the schedule came out inf; the quantiles now go through the upper tail, and a range with no
    representable probability is refused."""
    for centre in (1e-6, 1e6):  # the range 9.9-20 widths above the centre, and 7.6-23 below it
        ln = lognormal_sigmas(0.02, 500.0, 12, centre=centre, width=1.0, dtype=torch.float64)
        assert torch.isfinite(ln).all() and (ln.diff() < 0).all() and ln[0] == 500.0 and ln[-1] == 0.02
        z = (ln.log() - math.log(centre)) / 1.0
        tail = torch.special.log_ndtr(-z if centre < 0.02 else z).exp()  # the mass beyond each sigma, accurately
        torch.testing.assert_close(tail.diff(), tail.diff()[0].expand(11), rtol=1e-6, atol=0)
    with pytest.raises(ScorelabError, match=r"centre=1e-12, width=0.01 put no representable probability in"):
        lognormal_sigmas(0.02, 500.0, 5, centre=1e-12, width=0.01)
