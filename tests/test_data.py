"""Data sets: the digits' scaling and split, and the 2D toys against their definitions."""

import math

import pytest
import torch

from scorelab.data import toys
from scorelab.data.digits import load_digits_split
from scorelab.data.toys import ring8_mixture, sample_toy
from scorelab.errors import ScorelabError


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_digits_are_scaled_to_minus_one_one_and_the_split_is_a_stratified_partition():
    from sklearn.datasets import load_digits

    d = load_digits()
    x, y = load_digits_split("all")
    # pixel values 0..16 -> v / 8 - 1, so blank paper is -1 and full ink is +1
    torch.testing.assert_close(x, torch.from_numpy(d.images / 8.0 - 1.0).float().unsqueeze(1), rtol=0, atol=0)
    assert torch.equal(y, torch.from_numpy(d.target).long()) and x.min() == -1 and x.max() == 1
    (xa, ya), (xb, yb) = load_digits_split("train"), load_digits_split("test")
    assert len(xa) == 1500 and len(xb) == 297

    def rows(images, labels):
        return sorted(zip(labels.tolist(), map(tuple, images.flatten(1).tolist()), strict=True))

    # train and held-out together are the whole set, each digit exactly once (no overlap, nothing dropped)
    assert rows(torch.cat([xa, xb]), torch.cat([ya, yb])) == rows(x, y)
    # stratified: every class holds out its share of 297 / 1797, rounded
    counts = torch.bincount(y, minlength=10)
    assert torch.bincount(yb, minlength=10).tolist() == [round(n * 297 / 1797) for n in counts.tolist()]


def test_ring8_is_eight_equal_gaussians_of_std_0_1_on_the_circle_of_radius_2():
    mix = ring8_mixture()
    angles = torch.arange(8, dtype=torch.float64) * math.pi / 4
    torch.testing.assert_close(mix.weights.double(), torch.full((8,), 1 / 8, dtype=torch.float64))
    torch.testing.assert_close(mix.means.double(), 2 * torch.stack([angles.cos(), angles.sin()], 1))
    assert torch.allclose(mix.stds.double(), torch.tensor(0.1, dtype=torch.float64))
    # the samples: each mode's share (binomial SE), mean and per-coordinate std (normal-theory SEs), 4 SE bounds
    n = 16_000
    x = sample_toy("ring8", n, _gen()).double()
    assert x.dtype == torch.float64 and sample_toy("ring8", 4, _gen()).dtype == torch.float32
    nearest = torch.cdist(x, mix.means.double()).argmin(1)
    for k in range(8):
        xk = x[nearest == k]
        assert abs(len(xk) / n - 1 / 8) < 4 * math.sqrt(1 / 8 * 7 / 8 / n)
        assert ((xk.mean(0) - mix.means[k]).abs() < 4 * 0.1 / math.sqrt(len(xk))).all()
        assert ((xk.std(0) - 0.1).abs() < 4 * 0.1 / math.sqrt(2 * (len(xk) - 1))).all()


def test_checkerboard_is_uniform_on_the_eight_black_squares():
    n = 16_000
    x = sample_toy("checkerboard", n, _gen(1))
    assert x.min() >= -2 and x.max() <= 2
    cells = torch.floor(x).long()  # the unit square each point lies in, corners -2..1
    assert ((cells[:, 0] + cells[:, 1]) % 2 == 0).all()  # black squares only: the one at (-2, -2) and its kind
    counts = torch.bincount((cells[:, 0] + 2) * 4 + (cells[:, 1] + 2), minlength=16)
    black = torch.tensor([(i + j) % 2 == 0 for i in range(4) for j in range(4)])
    assert (counts[~black] == 0).all()
    assert ((counts[black] / n - 1 / 8).abs() < 4 * math.sqrt(1 / 8 * 7 / 8 / n)).all()
    # uniform within a square: the fractional parts have mean 1/2 and variance 1/12 (SE of a mean: sqrt(1/12 / n))
    frac = x - torch.floor(x)
    assert ((frac.mean(0) - 0.5).abs() < 4 * math.sqrt(1 / 12 / n)).all()


def test_moons_are_two_half_circles_of_radius_1_5_with_noise_of_std_0_075():
    n = 8000
    clean = toys.moons(n, _gen(2), noise=0.0)
    # the upper moon: centre (-0.75, -0.375), y above it; the lower one: centre (0.75, 0.375), y below it
    upper = (clean - torch.tensor([-0.75, -0.375])).norm(dim=1)
    lower = (clean - torch.tensor([0.75, 0.375])).norm(dim=1)
    on_upper = (upper - 1.5).abs() < 1e-5
    assert (on_upper | ((lower - 1.5).abs() < 1e-5)).all()
    assert (clean[on_upper, 1] >= -0.375 - 1e-6).all() and (clean[~on_upper, 1] <= 0.375 + 1e-6).all()
    assert abs(on_upper.double().mean().item() - 0.5) < 4 * math.sqrt(0.25 / n)
    # centred: E[x] = E[y] = 0 (E cos t = 0, E sin t = 2 / pi on both moons); bound 4 SE with per-coordinate sd < 1.2
    assert (clean.mean(0).abs() < 4 * 1.2 / math.sqrt(n)).all()
    # the same draws plus the noise: 1.5 * 0.05 per coordinate
    noise = sample_toy("moons", n, _gen(2)) - clean
    assert abs(noise.std().item() - 0.075) < 4 * 0.075 / math.sqrt(2 * (2 * n - 1))


def test_swissroll_and_rings_lie_on_their_curves():
    n = 4000
    roll = toys.swissroll(n, _gen(3), noise=0.0).double()
    t = roll.norm(dim=1) * 4.5 * math.pi / 2  # r = t, scaled so that t = 4.5 pi lands at radius 2
    assert t.min() >= 1.5 * math.pi - 1e-4 and t.max() <= 4.5 * math.pi + 1e-4
    # t uniform on [1.5 pi, 4.5 pi]: mean 3 pi, sd 3 pi / sqrt(12)
    assert abs(t.mean().item() - 3 * math.pi) < 4 * 3 * math.pi / math.sqrt(12 * n)
    angle = torch.atan2(roll[:, 1], roll[:, 0])
    assert ((torch.remainder(angle - t + math.pi, 2 * math.pi) - math.pi).abs() < 1e-4).all()
    ring = toys.rings(n, _gen(4), noise=0.0)
    r = ring.norm(dim=1)
    inner = (r - 1).abs() < 1e-5
    assert (inner | ((r - 2).abs() < 1e-5)).all()
    assert abs(inner.double().mean().item() - 0.5) < 4 * math.sqrt(0.25 / n)


@pytest.mark.parametrize("name", sorted(toys.TOYS))
def test_sample_toy_draws_from_the_named_toy(name):
    got = sample_toy(name, 64, _gen(5))
    assert got.shape == (64, 2) and got.dtype == torch.float32
    torch.testing.assert_close(got, toys.TOYS[name](64, _gen(5)).float(), rtol=0, atol=0)
    with pytest.raises(ScorelabError, match="unknown 2D toy"):
        sample_toy("spiral", 4, _gen())


def test_batch_source_draws_shuffled_epochs_without_replacement_from_its_generator():
    """Every epoch is a permutation of the data set (a batch that crosses an epoch end takes the rest of one and the
    start of the next), batches keep their size, and the order is set by the generator alone. Held-out images are
    never drawn."""
    from scorelab.data.image_sets import ImageSet
    from scorelab.data.sources import BatchSource

    held = torch.zeros(12, dtype=torch.bool)
    held[[3, 7]] = True  # values 3 and 7 are held out
    keep = torch.tensor([v for v in range(12) if v not in (3, 7)])
    images = ImageSet(
        pixels=torch.arange(12, dtype=torch.uint8).view(12, 1, 1, 1),
        labels=100 + torch.arange(12),
        held_out=held,
        levels=256,
        classes=(),
        where="test",
        fingerprint="",
    )

    def stream(seed):
        src, g = BatchSource("images", 4, images=images), _gen(seed)
        batches = [src.next(g) for _ in range(10)]  # 40 items: four epochs
        values = [((x + 1) * 127.5).round().long().view(-1) for x, _ in batches]
        assert all(
            x.shape == (4, 1, 1, 1) and torch.equal(y, 100 + v) for (x, y), v in zip(batches, values, strict=True)
        )
        return keep.tolist(), torch.cat(values)

    kept, items = stream(0)
    for epoch in items.view(4, 10):
        assert sorted(epoch.tolist()) == kept
    assert torch.equal(stream(0)[1], items) and not torch.equal(stream(1)[1], items)
