"""Metrics against closed forms, independent oracles and the shipped digits classifier."""

from __future__ import annotations

import hashlib
import math

import numpy as np
import pytest
import torch

from scorelab.data.digits import load_digits_split
from scorelab.errors import ScorelabError
from scorelab.metrics import digits as dm
from scorelab.metrics import samples as sm
from scorelab.metrics.digits import (
    classifier_features,
    classifier_probs,
    classifier_record,
    digits_report,
    frechet_distance,
    frechet_from_stats,
    load_classifier,
)
from scorelab.metrics.samples import component_stats, mmd_rbf, projections, sliced_wasserstein2


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# ----------------------------------------------------------------------------------------- sliced W2


def test_sw2_identical_and_permuted_sets_are_zero():
    x = randn(300, 3)
    assert sliced_wasserstein2(x, x) == 0.0
    assert sliced_wasserstein2(x, x[torch.randperm(300, generator=torch.Generator().manual_seed(1))]) == 0.0
    # the same empirical measure with every point repeated twice (unequal sizes)
    assert sliced_wasserstein2(x, torch.cat([x, x])) == pytest.approx(0.0, abs=1e-12)


def test_sw2_fixed_projections():
    x, y = randn(200, 2, seed=1), randn(200, 2, seed=2)
    assert sliced_wasserstein2(x, y, seed=3) == sliced_wasserstein2(x, y, seed=3)
    assert sliced_wasserstein2(x, y, seed=3) != sliced_wasserstein2(x, y, seed=4)
    theta = projections(5, 1000, seed=7)
    assert torch.equal(theta, projections(5, 1000, seed=7))
    assert torch.allclose(theta.norm(dim=1), torch.ones(1000, dtype=torch.float64))


@pytest.mark.parametrize("dim", [2, 5])
def test_sw2_of_a_shifted_copy(dim):
    # For y = x + m every projection's 1-D W2 is |theta . m| (a shift of a 1-D measure), so
    # SW2^2 = mean_theta (theta . m)^2 over the fixed directions exactly, whose expectation over uniform
    # theta is |m|^2 / D; (theta . m)^2 / |m|^2 ~ Beta(1/2, (D-1)/2), variance 2 (D-1) / (D^2 (D+2)).
    x = randn(500, dim, seed=3)
    m = torch.linspace(-1.0, 2.0, dim, dtype=torch.float64)
    p = 1000
    sw2 = sliced_wasserstein2(x, x + m, n_projections=p, seed=11)
    theta = projections(dim, p, seed=11)
    assert sw2**2 == pytest.approx(((theta @ m) ** 2).mean().item(), rel=1e-10)
    m2 = (m @ m).item()
    se = m2 * math.sqrt(2 * (dim - 1) / (dim**2 * (dim + 2)) / p)
    assert abs(sw2**2 - m2 / dim) < 4 * se


def test_sw2_unequal_sizes_match_the_exact_1d_w2():
    # oracle: the same two empirical measures as equal-size sets, every point of x repeated M times and of y N
    x, y = randn(7, 2, seed=4), randn(5, 2, seed=5) + 0.3
    theta = projections(2, 50, seed=0)
    px, py = x @ theta.T, y @ theta.T
    ex = px.repeat_interleave(5, dim=0).sort(0).values
    ey = py.repeat_interleave(7, dim=0).sort(0).values
    expected = math.sqrt(((ex - ey) ** 2).mean().item())
    assert sliced_wasserstein2(x, y, n_projections=50, seed=0) == pytest.approx(expected, rel=1e-12)
    assert sliced_wasserstein2(y, x, n_projections=50, seed=0) == pytest.approx(expected, rel=1e-12)


# ----------------------------------------------------------------------------------------- MMD


def mmd_reference(x, y, bandwidths):
    """Gretton et al. 2012 eq. (3), written out with full kernel matrices."""

    def k(a, b):
        d2 = torch.cdist(a, b) ** 2
        return sum(torch.exp(-d2 / (2 * h * h)) for h in bandwidths)

    n, m = len(x), len(y)
    kxx, kyy = k(x, x), k(y, y)
    within_x = (kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1))
    within_y = (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
    return (within_x + within_y - 2 * k(x, y).mean()).item()


def test_mmd_matches_written_out_formula(monkeypatch):
    x, y = randn(40, 3, seed=1), randn(30, 3, seed=2) + 0.5
    for bw in ([0.7], [0.3, 1.0, 3.0]):
        assert mmd_rbf(x, y, bandwidths=bw) == pytest.approx(mmd_reference(x, y, bw), rel=1e-10)
    monkeypatch.setattr(sm, "BLOCK_ELEMENTS", 7 * 30 * 2)  # blocks of 7 rows: the row-blocked sums give the same figure
    assert mmd_rbf(x, y, bandwidths=[0.3, 1.0]) == pytest.approx(mmd_reference(x, y, [0.3, 1.0]), rel=1e-10)


def test_median_bandwidth_is_median_pooled_distance():
    x, y = randn(50, 2, seed=1), randn(60, 2, seed=2)
    pooled = torch.cat([x, y])
    d = torch.cdist(pooled, pooled)
    iu = torch.triu_indices(110, 110, offset=1)
    assert sm.median_bandwidth(x, y) == pytest.approx(d[iu[0], iu[1]].median().item(), rel=1e-10)
    assert mmd_rbf(x, y) == pytest.approx(mmd_rbf(x, y, bandwidths=[sm.median_bandwidth(x, y)]), rel=1e-12)


def test_mmd_permutation_null_and_shift():
    # same distribution: the observed MMD^2 sits inside its permutation null (a 1 % level test at this seed);
    # a shift of one standard deviation: far above every permutation of the pooled set.
    n = 200
    x, y = randn(n, 2, seed=1), randn(n, 2, seed=2)
    shifted = y + torch.tensor([1.0, 0.0], dtype=torch.float64)
    g = torch.Generator().manual_seed(0)

    def null(a, b, reps=100):
        pooled = torch.cat([a, b])
        h = [sm.median_bandwidth(a, b)]
        out = []
        for _ in range(reps):
            p = pooled[torch.randperm(2 * n, generator=g)]
            out.append(mmd_rbf(p[:n], p[n:], bandwidths=h))
        return np.array(out)

    same = mmd_rbf(x, y)
    assert same < np.quantile(null(x, y), 0.99)
    assert mmd_rbf(x, shifted) > null(x, shifted).max()


def test_point_set_shape_validation():
    with pytest.raises(ScorelabError, match=r"\(N, D\)"):
        sliced_wasserstein2(torch.zeros(10), torch.zeros(10))
    with pytest.raises(ScorelabError, match="same dimension"):
        mmd_rbf(torch.zeros(10, 2), torch.zeros(10, 3))
    with pytest.raises(ScorelabError, match="at least two"):
        mmd_rbf(torch.zeros(1, 2), torch.zeros(10, 2))


# ----------------------------------------------------------------------------------------- modes


def test_component_stats_recovers_weights_and_stds():
    # three well separated components (>= 5 std from every decision boundary, so truncation is negligible)
    n = 20_000
    g = torch.Generator().manual_seed(0)
    means = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]], dtype=torch.float64)
    stds = torch.tensor([[1.0, 0.5], [0.3, 0.3], [0.5, 1.0]], dtype=torch.float64)
    weights = torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64)
    k = torch.multinomial(weights, n, replacement=True, generator=g)
    x = means[k] + stds[k] * torch.randn(n, 2, generator=g, dtype=torch.float64)
    # a fourth mean far away collects nothing
    stats = component_stats(x, torch.cat([means, torch.tensor([[50.0, 50.0]], dtype=torch.float64)]))
    w = torch.tensor(stats["weight"])
    assert sum(stats["count"]) == n and stats["count"][3] == 0
    assert torch.all((w[:3] - weights).abs() < 4 * torch.sqrt(weights * (1 - weights) / n))
    for j in range(3):
        nk = stats["count"][j]
        s = torch.tensor(stats["std"][j], dtype=torch.float64)
        mu = torch.tensor(stats["mean"][j], dtype=torch.float64)
        assert torch.all((s - stds[j]).abs() < 4 * stds[j] / math.sqrt(2 * nk))  # SE of a sample std
        assert torch.all((mu - means[j]).abs() < 4 * stds[j] / math.sqrt(nk))
    assert all(math.isnan(v) for v in stats["std"][3] + stats["mean"][3])


# ----------------------------------------------------------------------------------------- Frechet


def test_frechet_closed_form_diagonal():
    g = torch.Generator().manual_seed(0)
    d = 6
    mu_a, mu_b = torch.randn(d, generator=g), torch.randn(d, generator=g)
    va, vb = torch.rand(d, generator=g) + 0.1, torch.rand(d, generator=g) + 0.1
    # diagonal covariances commute: (Sa Sb)^(1/2) = diag(sqrt(a b)); the trace term is sum (sqrt a - sqrt b)^2
    expected = ((mu_a - mu_b) ** 2).sum() + ((va.sqrt() - vb.sqrt()) ** 2).sum()
    got = frechet_from_stats(mu_a, torch.diag(va), mu_b, torch.diag(vb))
    assert got == pytest.approx(expected.item(), rel=1e-6)
    assert frechet_from_stats(mu_a, torch.diag(va), mu_a, torch.diag(va)) == pytest.approx(0.0, abs=1e-6)


def test_frechet_matches_scipy_sqrtm():
    linalg = pytest.importorskip("scipy.linalg")
    rng = np.random.default_rng(0)
    d = 8
    a, b = rng.normal(size=(d, d)), rng.normal(size=(d, d))
    ca, cb = a @ a.T + 0.1 * np.eye(d), b @ b.T + 0.1 * np.eye(d)
    ma, mb = rng.normal(size=d), rng.normal(size=d)
    expected = ((ma - mb) ** 2).sum() + np.trace(ca + cb - 2 * linalg.sqrtm(ca @ cb).real)
    assert frechet_from_stats(ma, ca, mb, cb) == pytest.approx(expected, rel=1e-8)


def test_frechet_distance_fits_mean_and_ddof1_covariance():
    fa, fb = randn(100, 4, seed=1), randn(80, 4, seed=2) * 2 + 1
    expected = frechet_from_stats(
        fa.mean(0), np.cov(fa.numpy(), rowvar=False), fb.mean(0), np.cov(fb.numpy(), rowvar=False)
    )
    assert frechet_distance(fa, fb) == pytest.approx(expected, rel=1e-10)
    assert frechet_distance(fa, fa) == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(ScorelabError):
        frechet_distance(fa, fb[:, :3])


# ----------------------------------------------------------------------------------------- digits classifier


def test_shipped_classifier_is_the_recorded_one():
    record = classifier_record()
    weights = dm.ASSETS / dm.WEIGHTS_NAME
    assert weights.stat().st_size < 1_000_000
    assert hashlib.sha256(weights.read_bytes()).hexdigest() == record["weights_sha256"]
    assert record["command"].startswith("python -m scorelab.metrics.digits")
    assert load_classifier() is load_classifier("cpu")  # cached


def test_classifier_held_out_accuracy():
    x, y = load_digits_split("test")
    probs = classifier_probs(x)
    assert probs.shape == (len(x), 10)
    assert torch.allclose(probs.sum(1), torch.ones(len(x)), atol=1e-5)
    acc = (probs.argmax(1) == y).double().mean().item()
    assert acc >= 0.95
    # same figure as recorded at training time, up to one borderline digit on other hardware
    assert abs(acc - classifier_record()["held_out"]["accuracy"]) <= 1 / len(x) + 1e-12
    assert classifier_features(x).shape == (len(x), classifier_record()["config"]["features"])


def test_digits_report_on_real_held_out_digits():
    x, _ = load_digits_split("test")
    r = digits_report(x)
    assert 0.0 <= r["confident_share"] <= 1.0
    assert len(r["class_histogram"]) == 10
    assert sum(r["class_histogram"]) == pytest.approx(1.0, abs=1e-12)
    assert r["min_class_share"] == min(r["class_histogram"])
    assert r["max_class_share"] == max(r["class_histogram"])
    assert r["confident_share"] == r["held_out_confident_share"]  # the same digits, the same classifier
    assert r["classifier_held_out_accuracy"] >= 0.95
    assert r["frechet"] == pytest.approx(0.0, abs=1e-4)  # the samples are the reference
    assert r["frechet_real_same_n"] > 0 and r["frechet_real_n"] == len(x)


def test_digits_report_for_one_class_compares_with_that_class():
    """Samples all asked for one class are compared with the held-out digits of that class, and so is the real floor:
    the held-out 7s are then at distance 0 and real training 7s near the floor, while against all held-out digits a
    set of 7s is far away."""
    x, y = load_digits_split("test")
    sevens = x[y == 7]
    r = digits_report(sevens, label=7)
    assert r["n_reference"] == int((y == 7).sum()) and r["reference"] == "the held-out digits of class 7"
    assert r["frechet"] == pytest.approx(0.0, abs=1e-4)
    train_x, train_y = load_digits_split("train")
    train_sevens = train_x[train_y == 7][: len(sevens)]
    own = digits_report(train_sevens, label=7)
    everyone = digits_report(train_sevens)
    assert everyone["reference"] == "the held-out digits" and everyone["n_reference"] == len(x)
    assert own["frechet"] < everyone["frechet"] / 3
    assert own["frechet_real_same_n"] == pytest.approx(own["frechet"], rel=1.0)  # the floor is of the same kind
    with pytest.raises(ScorelabError, match="class 0-9"):
        digits_report(sevens, label=10)
    with pytest.raises(ScorelabError, match="class 0-9"):
        digits_report(sevens, label=True)
    with pytest.raises(ScorelabError, match="not both"):
        digits_report(sevens, label=7, reference=sevens)


def test_digits_report_separates_noise_from_digits():
    x, _ = load_digits_split("test")
    noise = torch.rand(297, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    r = digits_report(noise)
    assert r["confident_share"] < r["held_out_confident_share"]
    assert r["frechet"] > 10 * r["frechet_real_same_n"]
    r_ref = digits_report(noise, reference=x)  # passing the default reference explicitly: the same figure
    assert r_ref["frechet"] == pytest.approx(r["frechet"], rel=1e-9)


@pytest.mark.parametrize("shape", [(3, 8, 8), (2, 3, 8, 8), (2, 1, 7, 7), (0, 1, 8, 8)])
def test_digits_shape_validation(shape):
    with pytest.raises(ScorelabError, match=r"\(N, 1, 8, 8\)"):
        digits_report(torch.zeros(shape))
    with pytest.raises(ScorelabError, match=r"\(N, 1, 8, 8\)"):
        classifier_features(torch.zeros(shape))


def test_shift_augment_translates_with_background_fill():
    x, _ = load_digits_split("test")
    x = x[:64]
    out = dm.shift_augment(x, torch.Generator().manual_seed(0))
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1), value=-1.0)
    crops = [padded[:, :, 1 - dy : 9 - dy, 1 - dx : 9 - dx] for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
    match = torch.stack([(out == c).flatten(1).all(1) for c in crops])  # (9, B)
    assert match.any(0).all()


def test_training_is_deterministic(tmp_path):
    state = torch.random.get_rng_state()
    r1 = dm.train_classifier(tmp_path / "a", seed=3, epochs=1, log=None)
    r2 = dm.train_classifier(tmp_path / "b", seed=3, epochs=1, log=None)
    assert torch.equal(state, torch.random.get_rng_state())  # the global RNG is left alone
    assert r1["weights_sha256"] == r2["weights_sha256"]
    assert (tmp_path / "a" / dm.WEIGHTS_NAME).read_bytes() == (tmp_path / "b" / dm.WEIGHTS_NAME).read_bytes()
    assert r1["training"]["seed"] == 3 and "train_classifier(" in r1["command"]


def test_moment_z_scores_of_exact_samples_are_standard_normal_and_a_wrong_spread_is_caught():
    from scorelab.metrics.moments import moment_z_scores
    from scorelab.reproduce.sampler_accuracy import mixtures

    ring = mixtures()["ring"]
    zs = []
    for seed in range(10):
        out = moment_z_scores(ring.sample(20_000, torch.Generator().manual_seed(seed)).double(), ring)
        zs += out["weight_z"] + out["mean_z"] + out["std_z"]
    zs = torch.tensor(zs)
    assert len(zs) == 10 * 40  # 8 weights, 16 means, 16 stds per run
    assert abs(zs.mean().item()) < 0.15 and 0.85 < zs.std().item() < 1.15
    # 5% too much spread around every mean: the std z-scores see it (about 0.05 / sqrt(1 / (2 * 2500)) = 3.5 each)
    x = ring.sample(20_000, torch.Generator().manual_seed(0)).double()
    nearest = torch.cdist(x, ring.means).argmin(1)
    wide = ring.means[nearest] + 1.05 * (x - ring.means[nearest])
    assert moment_z_scores(wide, ring)["max_z"] > 3


def test_moment_z_scores_of_a_zero_weight_component():
    from scorelab.analytic import GaussianMixture
    from scorelab.metrics.moments import moment_z_scores

    mix = GaussianMixture([1.0, 0.0], [[0.0], [10.0]], 1.0)
    x = torch.randn(1000, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert math.isfinite(moment_z_scores(x, mix)["max_z"])
    assert moment_z_scores(x + 10, mix)["max_z"] == math.inf  # every sample lands on the impossible component


def test_conditional_report_on_held_out_digits_and_bad_label_shapes():
    x, y = load_digits_split("test")
    report = dm.conditional_report(x, y)
    assert report["conditional_accuracy"] > 0.95  # the classifier agrees with the true labels of real digits
    assert report["within_class_diversity"] == pytest.approx(report["held_out_within_class_diversity"])
    with pytest.raises(ScorelabError, match=r"labels must have shape \(\d+,\)"):
        dm.conditional_report(x, y[:, None])


def test_moment_z_scores_are_standard_normal_in_each_family():
    """Each family on its own, under exact sampling: weight z (binomial SE sqrt(w (1 - w) / n)), mean z and std z
    (normal-theory SE of a sample std, sd / sqrt(2 (n_k - 1))) have mean 0 and std 1. Unequal weights (0.2, 0.8)
    so that the (1 - w) factor matters; 1000 runs of 400 samples."""
    from scorelab.analytic import GaussianMixture
    from scorelab.metrics.moments import moment_z_scores

    mix = GaussianMixture([0.2, 0.8], [[-10.0], [10.0]], 1.0)
    g = torch.Generator().manual_seed(0)
    families = {"weight_z": [], "mean_z": [], "std_z": []}
    for _ in range(1000):
        out = moment_z_scores(mix.sample(400, g).double(), mix)
        for name, zs in families.items():
            zs += out[name]
    for name, zs in families.items():
        z = torch.tensor(zs)
        assert abs(z.mean().item()) < 0.1 and 0.9 < z.std().item() < 1.1, (name, z.mean().item(), z.std().item())


def test_digits_report_class_histogram_is_the_argmax_share_and_a_given_reference_is_used():
    x, y = load_digits_split("test")
    threes = x[y == 3]
    r = digits_report(threes)
    expected = torch.bincount(classifier_probs(threes).argmax(1), minlength=10).double() / len(threes)
    assert r["class_histogram"] == pytest.approx(expected.tolist(), abs=1e-12)
    assert r["max_class_share"] == r["class_histogram"][3] > 0.9  # the classifier calls these digits 3s
    assert r["n_samples"] == len(threes)
    # a reference other than the default: the samples' features against that reference's, and its size
    ref, _ = load_digits_split("train")
    ref = ref[:200]
    r_ref = digits_report(threes, reference=ref)
    assert r_ref["n_reference"] == 200
    want = frechet_distance(classifier_features(threes), classifier_features(ref))
    assert r_ref["frechet"] == pytest.approx(want, rel=1e-9)
    assert r_ref["frechet"] != pytest.approx(r["frechet"], rel=1e-3)


def _mean_pairwise_distance_per_class(x, y):
    """Oracle: mean over classes of the mean distance over the unordered pairs of one class (torch.pdist)."""
    per_class = [torch.pdist(x[y == c].flatten(1).double()).mean().item() for c in y.unique() if (y == c).sum() >= 2]
    return sum(per_class) / len(per_class)


def test_conditional_report_within_class_diversity_closed_form():
    # class 0: blank paper and one inked pixel, distance 2; class 1: blank, pixel a, pixel b: distances 2, 2, 2 sqrt 2
    blank = -torch.ones(1, 8, 8)
    a, b = blank.clone(), blank.clone()
    a[0, 2, 3], b[0, 5, 5] = 1.0, 1.0
    x = torch.stack([blank, a, blank, a, b])
    y = torch.tensor([0, 0, 1, 1, 1])
    r = dm.conditional_report(x, y)
    expected = (2.0 + (4.0 + 2 * math.sqrt(2)) / 3) / 2
    assert r["within_class_diversity"] == pytest.approx(expected, rel=1e-9)
    assert r["conditional_accuracy"] == (classifier_probs(x).argmax(1) == y).double().mean().item()
    real_x, real_y = load_digits_split("test")
    assert r["held_out_within_class_diversity"] == pytest.approx(
        _mean_pairwise_distance_per_class(real_x, real_y), rel=1e-9
    )


def test_conditional_report_diversity_of_one_large_class_in_row_blocks():
    # 2,100 samples of one class (more rows than one block holds): half blank, half with one inked pixel, so
    # 2 * 1050^2 ordered pairs at distance 2 out of 2100 * 2099
    blank = -torch.ones(1050, 1, 8, 8)
    inked = blank.clone()
    inked[:, 0, 4, 4] = 1.0
    r = dm.conditional_report(torch.cat([blank, inked]), torch.full((2100,), 7))
    assert r["within_class_diversity"] == pytest.approx(2 * 2 * 1050**2 / (2100 * 2099), rel=1e-9)


def test_sliced_w2_needs_at_least_one_projection():
    x = randn(20, 2)
    for bad in (0, -1, 10.0):  # 0 returned NaN; the others failed inside torch.randn
        with pytest.raises(ScorelabError, match=rf"n_projections must be an integer >= 1, got {bad!r}"):
            sliced_wasserstein2(x, x, n_projections=bad)


def test_mmd_bandwidths_must_be_finite_while_nan_samples_still_give_nan():
    x, y = randn(20, 2, seed=1), randn(20, 2, seed=2)
    for bad in ([math.nan], [math.inf]):  # NaN gave NaN, inf gave 0 whatever the sets
        with pytest.raises(ScorelabError, match=r"bandwidths must be a non-empty list of positive finite numbers"):
            mmd_rbf(x, y, bandwidths=bad)
    assert math.isnan(mmd_rbf(torch.full((20, 2), math.nan), y))  # the median heuristic's NaN is not the user's


def test_moment_z_scores_checks_the_samples_against_the_mixture():
    from scorelab.analytic import GaussianMixture
    from scorelab.metrics.moments import moment_z_scores

    gm = GaussianMixture([0.5, 0.5], [[-1.0, 0.0], [1.0, 0.0]], 0.3)
    with pytest.raises(ScorelabError, match=r"samples must have the mixture's dimension D = 2, got shape \(10, 3\)"):
        moment_z_scores(randn(10, 3), gm)  # was a torch.cdist error
    with pytest.raises(ScorelabError, match=r"samples must be a point set of shape \(N, D\), got \(0, 2\)"):
        moment_z_scores(torch.zeros(0, 2), gm)  # was ZeroDivisionError


def test_frechet_from_stats_refuses_a_covariance_that_is_not_symmetric_psd():
    mu = torch.zeros(2)
    with pytest.raises(
        ValueError, match=r"cov_a must be a symmetric positive semi-definite covariance, got smallest eigenvalue -1"
    ):
        frechet_from_stats(mu, -torch.eye(2), mu, torch.eye(2))  # was 0.0
    with pytest.raises(
        ScorelabError, match=r"cov_b must be a symmetric positive semi-definite covariance, .*asymmetry 2"
    ):
        frechet_from_stats(mu, torch.eye(2), mu, torch.tensor([[1.0, 2.0], [0.0, 1.0]]))
