"""Image data sets: a folder of the user's images (layout, crop and resize, channels, split, fingerprint, errors),
the copy figures of their samples, and training, sampling and evaluating on a folder end to end."""

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner
from PIL import Image
from test_cli import _run, straight_and_resumed

from scorelab.cli import cli
from scorelab.config import config_from_dict, load_config
from scorelab.data import image_sets
from scorelab.data.examples import write_textures
from scorelab.data.image_sets import ImageSet, check_classes, digits_set, folder_set, to_signed
from scorelab.data.sources import BatchSource
from scorelab.errors import ConfigError, ScorelabError
from scorelab.metrics.images import copy_figures, image_report, nearest_distances, reference_images


def _save(path, array, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array, dtype=np.uint8), mode).save(path)


def _classes(root, per_class=8, names=("b", "a"), size=(12, 12)):
    """Class folders whose images are constant grey: class folder k's image i has value 10 * i + 100 * k."""
    for k, name in enumerate(names):
        for i in range(per_class):
            _save(root / name / f"{i:02d}.png", np.full(size, 10 * i + 100 * k))
    return root


def test_class_folders_give_sorted_labels_and_a_fixed_split_within_each_class(tmp_path):
    root = _classes(tmp_path / "data")
    s = folder_set(root, size=12, channels=1, holdout=0.25, labelled=True)
    assert s.classes == ("a", "b") and s.levels == 256 and s.shape == (1, 12, 12)
    assert s.pixels.dtype == torch.uint8 and len(s.pixels) == 16
    # files in sorted order: a/00..07 (folder "a" is the second written, values 100..170), then b/00..07
    assert s.pixels[:, 0, 0, 0].tolist() == [100 + 10 * i for i in range(8)] + [10 * i for i in range(8)]
    assert s.labels.tolist() == [0] * 8 + [1] * 8
    # a quarter of each class held out, the same images on every load
    assert [int(s.held_out[s.labels == c].sum()) for c in (0, 1)] == [2, 2]
    image_sets._CACHE.clear()
    again = folder_set(root, size=12, channels=1, holdout=0.25, labelled=True)
    assert again is not s and torch.equal(again.held_out, s.held_out) and again.fingerprint == s.fingerprint
    (xa, ya), (xb, yb) = s.split("train"), s.split("test")
    assert (
        len(xa) == 12 and len(xb) == 4 and x_range_ok(xa) and ya.tolist().count(0) == 6 and yb.tolist() == [0, 0, 1, 1]
    )
    # levels 0..255 onto [-1, 1]: 0 -> -1, 255 -> +1, evenly spaced
    levels = torch.tensor([0, 51, 255], dtype=torch.uint8)
    torch.testing.assert_close(to_signed(levels, 256), torch.tensor([-1, -0.6, 1]))
    # unlabelled: the same images, no labels, the split drawn over all of them
    plain = folder_set(root, size=12, channels=1, holdout=0.25)
    assert plain.labels is None and plain.classes == () and int(plain.held_out.sum()) == 4
    assert plain.fingerprint != s.fingerprint  # the settings are part of what the set was read as


def x_range_ok(x):
    return x.dtype == torch.float32 and x.min() >= -1 and x.max() <= 1


def test_images_are_centre_cropped_then_resized_with_antialiasing(tmp_path):
    wide = np.zeros((16, 40), np.uint8)
    wide[:, 12:28] = 200  # the centred 16x16 square is 200, the margins 0
    _save(tmp_path / "d" / "wide.png", wide)
    tall = np.zeros((40, 16), np.uint8)
    tall[12:28] = 60
    _save(tmp_path / "d" / "tall.png", tall)
    board = (np.indices((64, 64)).sum(0) % 2 * 255).astype(np.uint8)  # a 1-pixel checkerboard
    _save(tmp_path / "d" / "zboard.png", board)
    s = folder_set(tmp_path / "d", size=16, channels=1, holdout=0.0)
    assert s.pixels[0].unique().tolist() == [60] and s.pixels[1].unique().tolist() == [200]  # tall, wide: margins cut
    # 64 -> 16 averages the checkerboard to mid-grey; sampling every 4th pixel (no antialiasing) would give 0s or 255s
    assert (s.pixels[2].int() - 127.5).abs().max() < 16
    assert not s.held_out.any()


def test_channels_are_converted_as_asked(tmp_path):
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[...] = (200, 100, 50)
    _save(tmp_path / "c" / "rgb.png", rgb)
    _save(tmp_path / "c" / "grey.png", np.full((8, 8), 90))
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[...] = (0, 0, 0, 64)  # black at alpha 64/255 over white
    _save(tmp_path / "c" / "rgba.png", rgba)
    one = folder_set(tmp_path / "c", size=8, channels=1, holdout=0.0)
    three = folder_set(tmp_path / "c", size=8, channels=3, holdout=0.0)
    grey, rgb_i, rgba_i = 0, 1, 2  # sorted file order ("rgb." before "rgba")
    assert one.pixels[rgb_i].unique().tolist() == [round(0.299 * 200 + 0.587 * 100 + 0.114 * 50)]  # ITU-R 601 luma
    assert three.pixels[grey].flatten(1).unique(dim=1).T.tolist() == [[90, 90, 90]]  # grey repeated
    assert three.pixels[rgb_i][:, 0, 0].tolist() == [200, 100, 50]
    white_share = 1 - 64 / 255
    assert three.pixels[rgba_i].unique().tolist() == [round(255 * white_share)]


def test_hidden_and_other_files_are_skipped_and_subfolders_of_plain_sets_are_read(tmp_path):
    root = tmp_path / "p"
    _save(root / "one.png", np.zeros((4, 4)))
    _save(root / "deep" / "er" / "two.jpg", np.full((4, 4), 255))
    _save(root / ".hidden.png", np.zeros((4, 4)))
    _save(root / ".cache" / "three.png", np.zeros((4, 4)))
    (root / "notes.txt").write_text("not an image")
    s = folder_set(root, size=4, channels=1, holdout=0.0)
    assert len(s.pixels) == 2 and s.labels is None


@pytest.mark.parametrize(
    "setup, kwargs, message",
    [
        (lambda p: None, {}, "does not exist"),
        (lambda p: p.write_text("x"), {}, "is not a folder"),
        (lambda p: p.mkdir(), {}, "no images in"),
        (lambda p: _save(p / "a.png", np.zeros((4, 4))), {}, "at least 2 outside the held-out split"),
        (lambda p: (_save(p / "a.png", np.zeros((4, 4))), (p / "b.png").write_bytes(b"junk")), {}, "b.png"),
        (lambda p: (_classes(p, 2), _save(p / "loose.png", np.zeros((4, 4)))), {"labelled": True}, "outside class"),
        (lambda p: _classes(p, 2), {"channels": 4}, r"1 \(greyscale\) or 3"),
        (lambda p: _classes(p, 2), {"holdout": 0.7}, r"\[0, 0.5\]"),
        (lambda p: _classes(p, 2), {"size": 0}, "data.size"),
    ],
)
def test_folders_that_cannot_be_used_are_one_line_errors(tmp_path, setup, kwargs, message):
    root = tmp_path / "data"
    setup(root)
    with pytest.raises(ScorelabError, match=message) as e:
        folder_set(root, **{"size": 4, "channels": 1, "holdout": 0.1, **kwargs})
    assert "\n" not in str(e.value)


def test_a_set_too_large_for_the_memory_budget_is_refused_before_any_image_is_read(tmp_path, monkeypatch):
    root = _classes(tmp_path / "d", 3)
    monkeypatch.setattr(image_sets, "_open", lambda *a, **k: pytest.fail("decoded an image"))
    with pytest.raises(ScorelabError, match="holding 6 images at 32x32.*lower data.size"):
        folder_set(root, size=32, channels=3, holdout=0.1, max_memory=6 * 3 * 32 * 32 - 1)


def test_the_fingerprint_and_the_cache_follow_the_files(tmp_path):
    root = _classes(tmp_path / "d", 3)
    first = folder_set(root, size=8, channels=1)
    assert folder_set(root, size=8, channels=1) is first  # read once per process
    _save(root / "a" / "00.png", np.full((12, 12), 7))  # same name, other pixels
    changed = folder_set(root, size=8, channels=1)
    assert changed is not first and changed.fingerprint != first.fingerprint and changed.pixels[0, 0, 0, 0] == 7


def test_a_split_never_takes_a_class_s_last_image_and_holds_out_one_image_at_least():
    labels = np.array([0, 1, 1, 2, 2, 2])
    mask = image_sets._split(labels, 0.1)  # rounds to 0 in every class: one image of the largest class is held out
    assert mask.sum() == 1 and labels[mask].tolist() == [2]
    assert not image_sets._split(np.array([0, 0]), 0.1).any()  # holding one out would leave too few to train on
    mask = image_sets._split(labels, 0.5)
    assert [int(mask[labels == c].sum()) for c in range(3)] == [0, 1, 2]  # one image: kept; 0.5 x 3 rounds to 2
    assert int(image_sets._split(np.zeros(50, dtype=np.int64), 0.29).sum()) == 15  # 14.5 in decimal, up
    assert not image_sets._split(labels, 0.0).any()


def test_the_digits_set_holds_scikit_learn_s_values_as_levels():
    # load_digits_split reads this set (tests/test_data.py checks its scaling and split against scikit-learn)
    from sklearn.datasets import load_digits

    d = digits_set()
    assert d.levels == 17 and d.shape == (1, 8, 8) and d.classes == tuple("0123456789")
    raw = load_digits()
    assert torch.equal(d.pixels[:, 0].double(), torch.from_numpy(raw.images)) and d.pixels.dtype == torch.uint8
    assert torch.equal(d.labels, torch.from_numpy(raw.target).long()) and int(d.held_out.sum()) == 297


def _set(pixels, labels=None, held=None):
    n = len(pixels)
    return ImageSet(
        pixels=pixels,
        labels=labels,
        held_out=torch.zeros(n, dtype=torch.bool) if held is None else held,
        levels=256,
        classes=(),
        where="test",
        fingerprint="",
    )


def test_batches_flip_half_the_images_and_only_when_asked():
    pixels = torch.randint(0, 256, (10, 1, 4, 4), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    data = to_signed(pixels, 256)
    src, g = BatchSource("images", 50, images=_set(pixels), flip=True), torch.Generator().manual_seed(1)
    mirrored = total = 0
    for _ in range(20):
        x, labels = src.next(g)
        assert labels is None
        for img in x:
            same = [bool(torch.equal(img, d)) for d in data]
            flip = [bool(torch.equal(img, d.flip(-1))) for d in data]
            assert any(same) or any(flip)  # each image is a data image or its mirror
            mirrored += any(flip) and not any(same)
            total += 1
    assert abs(mirrored / total - 0.5) < 4 * math.sqrt(0.25 / total)
    # without flips a batch is the data's images and the generator makes no draw beyond the epoch orders
    plain, g1, g2 = BatchSource("images", 10, images=_set(pixels)), torch.Generator(), torch.Generator()
    x, _ = plain.next(g1.manual_seed(3))
    assert torch.equal(x, data[torch.randperm(10, generator=g2.manual_seed(3))])
    assert torch.equal(g1.get_state(), g2.get_state())


def test_nearest_distances_match_brute_force_and_copies_are_found():
    g = torch.Generator().manual_seed(0)
    train = torch.rand(40, 1, 4, 4, generator=g) * 2 - 1
    queries = torch.rand(300, 1, 4, 4, generator=g) * 2 - 1
    d, i = nearest_distances(queries, train, 2)
    full = torch.cdist(queries.flatten(1).double(), train.flatten(1).double())
    ref_d, ref_i = full.topk(2, largest=False)
    torch.testing.assert_close(d, ref_d)
    assert torch.equal(i, ref_i)
    # copies of training images (and copies plus a little noise) are copies; fresh draws are not
    copies = train[:20] + 1e-3 * torch.randn(20, 1, 4, 4, generator=g)
    assert copy_figures(train, train) == {"nearest_train_rms": 0.0, "copy_share": 1.0}
    assert copy_figures(copies, train)["copy_share"] == 1.0
    fresh = copy_figures(queries, train)
    assert fresh["copy_share"] < 0.1 and fresh["nearest_train_rms"] > 0.1
    # image_report: the held-out images here are five of the training images, so they are copies
    pixels = ((train + 1) * 127.5).round().to(torch.uint8)
    held = torch.zeros(40, dtype=torch.bool)
    report = image_report(queries, _set(torch.cat([pixels, pixels[:5]]), held=torch.cat([held, ~held[:5]])))
    train8 = to_signed(pixels, 256)
    assert report["held_out_copy_share"] == 1.0
    assert report["copy_share"] == copy_figures(queries, train8)["copy_share"]
    assert report["channel_mean"] == pytest.approx([queries.double().mean().item()])
    assert report["train_channel_std"] == pytest.approx([train8.double().std().item()])
    assert "conditional_accuracy" not in report  # no labels
    assert image_report(queries, _set(pixels))["held_out_copy_share"] is None


def test_the_judge_learns_the_classes_and_reads_the_samples_against_its_held_out_accuracy(monkeypatch):
    from scorelab.metrics import judge

    monkeypatch.setattr(judge, "STEPS", 300)  # enough for these classes; the default 1000 is for real images

    g = torch.Generator().manual_seed(0)
    # three classes a small CNN tells apart and a nearest neighbour in pixels does not: horizontal stripes, vertical
    # stripes and noise, each at a random phase and contrast
    n, side = 90, 8
    labels = torch.arange(n) % 3
    phase = torch.randint(0, 2, (n, 1, 1), generator=g)
    ramp = torch.arange(side)
    stripes_h = ((ramp[:, None] + phase) % 2).expand(n, side, side)
    stripes_v = ((ramp[None, :] + phase) % 2).expand(n, side, side)
    noise = torch.randint(0, 2, (n, side, side), generator=g)
    pattern = torch.where(
        (labels == 0)[:, None, None], stripes_h, torch.where((labels == 1)[:, None, None], stripes_v, noise)
    )
    contrast = torch.randint(60, 128, (n, 1, 1), generator=g)
    pixels = (128 + (2 * pattern - 1) * contrast).clamp(0, 255).to(torch.uint8)[:, None]
    held = torch.zeros(n, dtype=torch.bool)
    held[:15] = True
    s = ImageSet(pixels, labels, held, 256, ("h", "v", "noise"), "test", "stripes")
    model, accuracy = judge.train_judge(s)
    assert accuracy == 1.0 and judge.train_judge(s)[0] is model  # kept for the process
    held_x, held_y = s.split("test")
    right = judge.judge_report(held_x, held_y, s)
    wrong = judge.judge_report(held_x, (held_y + 1) % 3, s)
    assert right == {"conditional_accuracy": 1.0, "judge_held_out_accuracy": 1.0}
    assert wrong["conditional_accuracy"] == 0.0
    report = image_report(held_x, s, held_y)
    assert report["conditional_accuracy"] == 1.0 and report["judge_held_out_accuracy"] == 1.0
    assert "conditional_accuracy" not in image_report(held_x, s)  # no labels asked for: nothing to judge
    # the caller's random state is left alone, and the same seed trains the same judge
    state = torch.get_rng_state()
    judge._CACHE.clear()
    again, _ = judge.train_judge(s)
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), model.state_dict().values(), strict=True))


def _images_config(tmp_path, root, **data):
    raw = {
        "data": {"name": "images", "path": str(root), "size": 8, "channels": 1, "holdout": 0.25, **data},
        "model": {
            "kind": "unet",
            "parameterisation": "eps",
            "sigma_data": 1.0,
            "channels": 8,
            "channel_mult": [1, 2],
            "attention_levels": [],
            "num_classes": 2,
        },
        "noise": {"schedule": "linear", "timesteps": 20},
        "train": {"objective": "ddpm", "steps": 6, "batch_size": 4, "checkpoint_every": 3, "cond_dropout": 0.2},
        "sample": {"n": 8, "sampler": "ddim", "steps": 3, "guidance": 2.0},
    }
    path = tmp_path / "images.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_config_keys_of_an_image_folder(tmp_path, monkeypatch):
    base = yaml.safe_load(_images_config(tmp_path, "folder").read_text())
    monkeypatch.chdir(tmp_path)
    assert load_config(tmp_path / "images.yaml").data.path == str(tmp_path / "folder")  # absolute, from the cwd

    def refused(change, message):
        raw = yaml.safe_load(yaml.safe_dump(base))
        for key, value in change.items():
            section, name = key.split(".")
            raw[section][name] = value
        with pytest.raises(ConfigError, match=message):
            config_from_dict(raw)

    refused({"data.path": ""}, "data.path: data 'images' needs the folder")
    refused({"data.size": 0}, "data.size: data 'images' needs the side")
    refused({"data.size": 9}, "multiple of 2, got 9")  # two levels halve the image once
    refused({"data.channels": 2}, "data.channels: data 'images' needs 1")
    refused({"data.holdout": -0.1}, r"data.holdout: must be in \[0, 0.5\]")
    refused({"model.kind": "mlp"}, "model.kind: data 'images' needs unet")
    digits = {"data": {"name": "digits", "flip": True}, "model": {"kind": "unet"}}
    with pytest.raises(ConfigError, match="data.flip: only for data 'images'"):
        config_from_dict(digits)


def test_a_class_count_that_does_not_match_the_folders_is_named(tmp_path):
    root = _classes(tmp_path / "Photos (2023)", 2)
    s = folder_set(root, size=4, channels=1, holdout=0.0, labelled=True)
    check_classes(s, 2)
    with pytest.raises(ScorelabError) as e:
        check_classes(s, 3)
    assert str(e.value) == (
        f"model.num_classes is 3, but {root} has 2 class folder(s) (a, b); set model.num_classes: 2"
    )


def test_train_resume_sample_and_evaluate_on_a_folder(tmp_path, monkeypatch):
    root = _classes(tmp_path / "data", 6, size=(10, 14))
    cfg = _images_config(tmp_path, root)
    r = CliRunner()
    res = r.invoke(cli, ["train", str(cfg), "--out", str(tmp_path / "run"), "--quiet"])
    assert res.exit_code == 0, res.output
    res = r.invoke(cli, ["sample", str(tmp_path / "run"), "--quiet"])
    assert res.exit_code == 0, res.output
    out = tmp_path / "run" / "samples"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["classes"] == ["a", "b"] and metrics["n"] == 8 and metrics["guidance"] == 2.0
    assert 0 <= metrics["copy_share"] <= 1 and metrics["held_out_nearest_train_rms"] >= 0
    assert Image.open(out / "samples.png").mode == "L" and Image.open(out / "nearest.png").size == (8 * 4 * 8 + 36, 76)
    # evaluate: bits/dim on the held-out quarter, decoded on 256 levels
    from scorelab.objectives import elbo

    seen = {}
    real = elbo.VariationalBound.per_sample

    def spy(self, denoiser, x, **kw):
        seen.update(levels=self.levels, n=len(x))
        return real(self, denoiser, x, **kw)

    monkeypatch.setattr(elbo.VariationalBound, "per_sample", spy)
    res = r.invoke(cli, ["evaluate", str(tmp_path / "run"), "--n", "6", "--steps", "3", "--quiet"])
    assert res.exit_code == 0, res.output
    ev = json.loads((tmp_path / "run" / "eval" / "eval.json").read_text())
    assert seen == {"levels": 256, "n": 4} and ev["bits_per_dim"] > 0 and len(ev["rows"]) == 3
    assert {"copy_share", "nearest_train_rms", "held_out_copy_share"} <= ev["rows"][0].keys()
    # the folder changes: resuming and evaluating are refused, sampling warns
    _save(root / "a" / "00.png", np.full((10, 14), 3))
    more = tmp_path / "more.yaml"
    raw = yaml.safe_load(cfg.read_text())
    raw["train"]["steps"] = 9
    more.write_text(yaml.safe_dump(raw))
    res = _run("train", str(more), "--resume", str(tmp_path / "run"), "--quiet")
    assert res.returncode == 2 and "changed since its checkpoint" in res.stderr and "resume it" in res.stderr
    res = _run("evaluate", str(tmp_path / "run"), "--n", "6", "--steps", "3", "--quiet")
    assert res.returncode == 2 and "changed since its checkpoint" in res.stderr
    res = _run("sample", str(tmp_path / "run"), "--quiet")
    assert res.returncode == 0 and "changed since its checkpoint" in res.stderr


def test_resume_on_a_folder_with_flips_is_bit_identical(tmp_path):
    a, b = straight_and_resumed(tmp_path, _images_config(tmp_path, _classes(tmp_path / "data", 5), flip=True), 3)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_missing_folder_is_refused_before_the_run_folder_is_made(tmp_path):
    cfg = _images_config(tmp_path, tmp_path / "nowhere")
    res = _run("train", str(cfg), "--out", str(tmp_path / "run"), "--quiet")
    assert res.returncode == 2 and "does not exist" in res.stderr and not (tmp_path / "run").exists()


def test_the_texture_example_is_three_class_folders_of_tiles(tmp_path):
    assert write_textures(tmp_path / "tex", tile=128) == 3 * 16
    s = folder_set(tmp_path / "tex", size=32, channels=1, holdout=0.1, labelled=True)
    assert s.classes == ("brick", "grass", "gravel") and len(s.pixels) == 48
    assert [int(s.held_out[s.labels == c].sum()) for c in range(3)] == [2, 2, 2]  # round(0.1 x 16)
    with pytest.raises(ScorelabError, match="not an empty folder"):
        write_textures(tmp_path / "tex", tile=128)
    with pytest.raises(ScorelabError, match="must divide 512"):
        write_textures(tmp_path / "other", tile=100)


def _exif_rotated(path, array, orientation=6):
    """An image stored as `array` whose EXIF tag says to turn it (6: 90 degrees clockwise) for viewing."""
    img = Image.fromarray(np.asarray(array, dtype=np.uint8))
    exif = img.getexif()
    exif[0x0112] = orientation
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, exif=exif.tobytes(), **({"quality": 100} if path.suffix == ".jpg" else {}))


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_phone_photos_are_turned_as_their_exif_orientation_says(tmp_path, suffix):
    from scorelab.data.images import load_image

    stored = np.zeros((8, 16), np.uint8)
    stored[:, 8:] = 255  # stored landscape, right half white; shown turned 90 degrees clockwise: bottom half white
    _exif_rotated(tmp_path / "d" / f"photo{suffix}", stored)
    _save(tmp_path / "d" / "plain.png", np.zeros((8, 8)))  # a set needs two images
    shown = load_image(tmp_path / "d" / f"photo{suffix}", channels=1)[0]
    assert shown.shape == (16, 8) and shown[:8].max() < 0.1 and shown[8:].min() > 0.9
    s = folder_set(tmp_path / "d", size=8, channels=1, holdout=0.0)  # the centre square of the upright photo
    assert (s.pixels[0, 0, :3] < 30).all() and (s.pixels[0, 0, 5:] > 225).all()  # "photo" sorts before "plain"


def test_copies_are_found_when_mirrored_under_flips_and_when_an_image_is_stored_twice():
    g = torch.Generator().manual_seed(0)
    train = torch.rand(30, 1, 6, 6, generator=g) * 2 - 1
    mirrored = train[:10].flip(-1)
    assert copy_figures(mirrored, reference_images(train))["copy_share"] < 0.2  # without flips: not copies
    assert copy_figures(mirrored, reference_images(train, mirrored=True), mirrored=True)["copy_share"] == 1.0
    twice = torch.cat([train, train[:5]])  # five images stored twice: their copies are still copies
    assert copy_figures(train[:5], twice)["copy_share"] == 0.0  # the duplicate hides it from the raw ratio
    assert copy_figures(train[:5], reference_images(twice))["copy_share"] == 1.0
    assert len(reference_images(twice)) == 30 and len(reference_images(twice, mirrored=True)) == 30


def test_file_names_that_are_not_utf8_load(tmp_path):
    import os

    root = tmp_path / "d"
    _save(root / "a.png", np.zeros((4, 4)))
    (root / os.fsdecode(b"\xff\xfe.png")).write_bytes((root / "a.png").read_bytes())
    assert len(folder_set(root, size=4, channels=1, holdout=0.0).pixels) == 2


def test_links_to_class_folders_are_followed_and_a_link_loop_ends(tmp_path):
    _classes(tmp_path / "real", 3)
    root = tmp_path / "linked"
    root.mkdir()
    (root / "a").symlink_to(tmp_path / "real" / "a")
    (root / "b").symlink_to(tmp_path / "real" / "b")
    (tmp_path / "real" / "a" / "loop").symlink_to(root)  # a/loop -> linked, which is walked already: skipped
    s = folder_set(root, size=4, channels=1, holdout=0.0, labelled=True)
    assert s.classes == ("a", "b") and len(s.pixels) == 3 + 3


def test_large_jpegs_decode_at_a_reduced_scale_and_agree_with_the_photograph(tmp_path, monkeypatch):
    """A JPEG decodes at 1/8 of its size where that still leaves twice the target (fast, little memory), and the
    centre square, resized, is within 2 of 255 levels of the Lanczos-resized original: as good as a full decode
    (1.0-1.4 levels, JPEG's own error), where a crop box rounded to the reduced pixels was off by 5."""
    from scorelab.data.images import _open

    yy, xx = np.mgrid[0:600, 0:800]
    smooth = 127 + 100 * np.sin(xx / 90) * np.cos(yy / 70)
    Image.fromarray(smooth.astype(np.uint8)).save(tmp_path / "big.jpg", quality=95)
    assert _open(tmp_path / "big.jpg", "image", draft=(64, 64)).size == (100, 75)  # 1/8, still >= 64
    asked = []
    real_open = image_sets._open
    monkeypatch.setattr(image_sets, "_open", lambda *a, **k: asked.append(k.get("draft")) or real_open(*a, **k))
    for size in (16, 32):
        _save(tmp_path / f"d{size}" / "small.png", np.zeros((size, size)))
        (tmp_path / f"d{size}" / "big.jpg").write_bytes((tmp_path / "big.jpg").read_bytes())
        got = folder_set(tmp_path / f"d{size}", size=size, channels=1, holdout=0.0).pixels[0, 0].numpy()
        photo = Image.fromarray(smooth[:, 100:700].astype(np.float32)).resize((size, size), Image.LANCZOS)
        assert np.abs(got - np.asarray(photo)).max() <= 2, size
    assert asked == [(32, 32), (32, 32), (64, 64), (64, 64)]  # the folder asks for twice the size


def test_a_file_replaced_with_its_modification_time_kept_is_read_again(tmp_path):
    import os

    root = _classes(tmp_path / "d", 2)
    first = folder_set(root, size=4, channels=1)
    target = root / "a" / "00.png"
    st = target.stat()
    _save(target, np.full((12, 12), 99))  # same size on disk, other pixels, then the old times put back (cp -p)
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert target.stat().st_size == st.st_size
    again = folder_set(root, size=4, channels=1)
    assert again is not first and again.pixels[0, 0, 0, 0] == 99


def test_small_images_are_upscaled_with_a_warning_and_the_split_rounds_half_up(tmp_path, capsys):
    for i in range(7):
        _save(tmp_path / "d" / f"{i}.png", np.full((4, 4), 10 * i))
    s = folder_set(tmp_path / "d", size=8, channels=1, holdout=0.5)
    assert "7 of the 7 images" in capsys.readouterr().err and s.shape == (1, 8, 8)
    assert int(s.held_out.sum()) == 4  # 3.5 rounds to 4 (Python's round would give 4 too; 2.5 would give 2)
    assert int(image_sets._split(np.zeros(5, dtype=np.int64), 0.5).sum()) == 3


def test_outputs_inside_the_image_folder_are_refused(tmp_path):
    root = _classes(tmp_path / "data", 3)
    cfg = _images_config(tmp_path, root)
    res = _run("train", str(cfg), "--out", str(root / "run"), "--quiet")
    assert res.returncode == 2 and "lies inside data.path" in res.stderr and not (root / "run").exists()
    assert _run("train", str(cfg), "--out", str(tmp_path / "run"), "--quiet").returncode == 0
    res = _run("sample", str(tmp_path / "run"), "--out", str(root / "b" / "samples"), "--quiet")
    assert res.returncode == 2 and "lies inside data.path" in res.stderr


def test_a_run_made_from_python_with_a_relative_path_samples_and_resumes_after_its_folder_moves(tmp_path, monkeypatch):
    import shutil

    from scorelab.pipelines.sample import sample_run
    from scorelab.train.trainer import Trainer

    monkeypatch.chdir(tmp_path)
    _classes(tmp_path / "data", 4)
    raw = yaml.safe_load(_images_config(tmp_path, "data").read_text())
    Trainer(config_from_dict(raw), tmp_path / "run", progress=False, log=lambda *a: None).run()
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["data"]["path"] == str(tmp_path / "data")
    assert sample_run(tmp_path / "run", progress=False, log=lambda *a: None)["n"] == 8
    shutil.move(tmp_path / "data", tmp_path / "moved")
    res = _run("sample", str(tmp_path / "run"), "--quiet")
    assert res.returncode == 2 and "are not at" in res.stderr and "set data.path in" in res.stderr
    config = tmp_path / "run" / "config.yaml"
    config.write_text(config.read_text().replace(str(tmp_path / "data"), str(tmp_path / "moved")))
    res = _run("sample", str(tmp_path / "run"), "--quiet")
    assert res.returncode == 0 and "changed since" not in res.stderr  # the same images, elsewhere
    raw["data"]["path"], raw["train"]["steps"] = "moved", 9
    (tmp_path / "more.yaml").write_text(yaml.safe_dump(raw))
    res = _run("train", "more.yaml", "--resume", str(tmp_path / "run"), "--quiet")
    assert res.returncode == 0, res.stderr


def test_samples_of_one_class_are_set_beside_that_class_s_images(tmp_path, monkeypatch):
    from scorelab.metrics import judge
    from scorelab.pipelines.sample import evaluate

    monkeypatch.setattr(judge, "STEPS", 200)  # two classes of flat greys

    root = _classes(tmp_path / "data", 6)
    cfg = config_from_dict(yaml.safe_load(_images_config(tmp_path, root).read_text()))
    s = folder_set(root, size=8, channels=1, holdout=0.25, labelled=True)
    b_train = s.split("train", 1)[0]
    out = evaluate(cfg, b_train, torch.ones(len(b_train), dtype=torch.long), s)
    assert out["label"] == 1 and out["label_class"] == "b" and out["copy_share"] == 1.0
    assert out["conditional_accuracy"] == 1.0
    assert out["train_channel_mean"] == pytest.approx(out["channel_mean"])  # class b's own training images
    held_b = s.split("test", 1)[0]
    assert (
        out["held_out_nearest_train_rms"]
        == copy_figures(held_b, reference_images(s.split("train")[0]))["nearest_train_rms"]
    )
    mixed = evaluate(cfg, b_train, torch.arange(len(b_train)) % 2, s)
    assert "label" not in mixed and mixed["train_channel_mean"] != pytest.approx(mixed["channel_mean"])


def test_evaluate_says_why_there_is_no_held_out_image(tmp_path):
    root = tmp_path / "data"
    for name in ("a", "b"):
        _save(root / name / "0.png", np.zeros((8, 8)))
        _save(root / name / "1.png", np.full((8, 8), 255))
    raw = yaml.safe_load(_images_config(tmp_path, root).read_text())
    raw["data"]["holdout"] = 0.0
    cfg = tmp_path / "none.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    assert _run("train", str(cfg), "--out", str(tmp_path / "run"), "--quiet").returncode == 0
    res = _run("evaluate", str(tmp_path / "run"), "--n", "4", "--steps", "2", "--quiet")
    assert res.returncode == 2 and "(data.holdout is 0)" in res.stderr and "--no-bpd" in res.stderr
    assert _run("sample", str(tmp_path / "run"), "--quiet").returncode == 0
    assert (tmp_path / "run" / "samples" / "samples.png").exists()
    assert not (tmp_path / "run" / "samples" / "held_out.png").exists()  # nothing held out: no figure of it


@pytest.mark.parametrize("count, side, n", [(3000, 32, 600), (10, 512, 20)])
def test_the_image_metrics_estimate_bounds_what_they_take(count, side, n):
    # measured in a fresh process: the peak resident memory the figures of n samples add (copy figures, judge,
    # channel statistics), `count` RGB images of side x side under flips, a tenth held out
    script = (
        "import resource, sys, torch\n"
        "import scorelab.metrics.judge as judge\n"
        "judge.STEPS = 20  # what the judge holds does not grow with its steps\n"
        "from scorelab.config import config_from_dict\n"
        "from scorelab.data.image_sets import ImageSet\n"
        "from scorelab.pipelines.sample import evaluate, metrics_bytes\n"
        "count, side, n = map(int, sys.argv[1:])\n"
        "raw = {'data': {'name': 'images', 'path': 'x', 'size': side, 'channels': 3, 'flip': True},\n"
        "       'model': {'kind': 'unet'}}\n"
        "cfg = config_from_dict(raw)\n"
        "g = torch.Generator().manual_seed(0)\n"
        "held = torch.zeros(count, dtype=torch.bool); held[: count // 10] = True\n"
        "pixels = torch.randint(0, 256, (count, 3, side, side), dtype=torch.uint8, generator=g)\n"
        "s = ImageSet(pixels, torch.arange(count) % 3, held, 256, ('a', 'b', 'c'), 'x', '')\n"
        "samples = torch.rand(n, 3, side, side, generator=g) * 2 - 1\n"
        "est = metrics_bytes(cfg, n, s)\n"
        "base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024\n"
        "evaluate(cfg, samples, torch.arange(n) % 3, s)\n"
        "print(est, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base)\n"
    )
    p = subprocess.run([sys.executable, "-c", script, str(count), str(side), str(n)], capture_output=True, text=True)
    estimate, used = map(int, p.stdout.split())
    assert used <= estimate, (used, estimate)


def test_the_example_command_refuses_in_one_line_and_leaves_nothing_half_written(tmp_path, capsys):
    from scorelab.data.examples import main

    (tmp_path / "file").write_text("x")
    assert main(["textures", str(tmp_path / "file" / "below")]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_the_library_batch_source_still_takes_the_digits_by_name():
    x, y = BatchSource("digits", 5).next(torch.Generator().manual_seed(0))
    assert x.shape == (5, 1, 8, 8) and y.shape == (5,)


def test_a_photo_beyond_the_pixel_limits_loads_when_a_reduced_decode_fits_them(tmp_path, monkeypatch):
    from PIL import Image as PILImage

    from scorelab.data import images as loader

    monkeypatch.setattr(loader, "MAX_PIXELS", 1000)  # stand-ins for 8192^2 and Pillow's 89 million
    monkeypatch.setattr(PILImage, "MAX_IMAGE_PIXELS", 500)
    PILImage.new("RGB", (120, 96), (200, 100, 50)).save(tmp_path / "photo.jpg", quality=95)
    with pytest.raises(ScorelabError, match="photo.jpg: larger than the 1000 pixels allowed"):
        loader.load_image(tmp_path / "photo.jpg")  # a full decode
    assert loader._open(tmp_path / "photo.jpg", "image", draft=(16, 16)).size == (30, 24)  # a quarter: 720 pixels
    assert PILImage.MAX_IMAGE_PIXELS == 500  # Pillow's own limit is back
    _save(tmp_path / "d" / "a.png", np.zeros((8, 8)))
    (tmp_path / "d" / "photo.jpg").write_bytes((tmp_path / "photo.jpg").read_bytes())
    s = folder_set(tmp_path / "d", size=8, channels=3, holdout=0.0)
    assert (s.pixels[1, :, 4, 4].int() - torch.tensor([200, 100, 50])).abs().max() <= 2


def test_runs_that_train_can_be_sampled_whatever_the_figures_cannot_say(tmp_path):
    """One class, images smaller than the judge's poolings, a single distinct training image: each trains, and
    sample reports what can be measured (null where a figure is undefined) instead of failing after sampling."""
    one_class = tmp_path / "one"
    for i in range(4):
        _save(one_class / "only" / f"{i}.png", np.full((8, 8), 60 * i))
    tiny = _classes(tmp_path / "tiny", 4, size=(2, 2))
    same = tmp_path / "same"
    for i in range(3):
        _save(same / f"{i}.png", np.full((8, 8), 77))
    cases = [(one_class, {"size": 8}, 1), (tiny, {"size": 2}, 2), (same, {"size": 8, "holdout": 0.0}, 0)]
    for k, (root, data, classes) in enumerate(cases):
        raw = yaml.safe_load(_images_config(tmp_path, root, **data).read_text())
        raw["model"]["num_classes"] = classes
        raw["model"]["channel_mult"] = [1]
        if not classes:
            raw["train"]["cond_dropout"], raw["sample"]["guidance"] = 0.0, 1.0
        cfg = tmp_path / f"case{k}.yaml"
        cfg.write_text(yaml.safe_dump(raw))
        assert _run("train", str(cfg), "--out", str(tmp_path / f"run{k}"), "--quiet").returncode == 0
        res = _run("sample", str(tmp_path / f"run{k}"), "--quiet")
        assert res.returncode == 0, (k, res.stderr)
        m = json.loads((tmp_path / f"run{k}" / "samples" / "metrics.json").read_text())
        if k == 0:
            assert "conditional_accuracy" not in m  # one class: nothing to tell apart
        if k == 1:
            assert 0 <= m["conditional_accuracy"] <= 1 and m["judge_held_out_accuracy"] is not None
        if k == 2:
            assert m["copy_share"] is None and m["nearest_train_rms"] >= 0  # one distinct image: no second nearest


def test_copies_of_nearly_symmetric_images_are_found_under_flips():
    g = torch.Generator().manual_seed(1)
    half = torch.rand(20, 1, 6, 3, generator=g) * 2 - 1
    symmetric = torch.cat([half, half.flip(-1)], -1)  # each image its own mirror image
    train = symmetric + 0.01 * torch.randn(symmetric.shape, generator=g)  # 1% away from symmetric
    copies = train + 0.01 * torch.randn(train.shape, generator=g)  # 1% away from the training images
    assert copy_figures(copies, reference_images(train))["copy_share"] == 1.0
    assert copy_figures(copies, reference_images(train, mirrored=True), mirrored=True)["copy_share"] == 1.0
    pairs = torch.cat([train, train.flip(-1)])  # an image and its mirror image stored as two files
    assert len(reference_images(pairs, mirrored=True)) == 20
    assert copy_figures(copies.flip(-1), reference_images(pairs, mirrored=True), mirrored=True)["copy_share"] == 1.0


def test_the_judge_trains_when_measured_under_no_grad(monkeypatch):
    from scorelab.metrics import judge

    monkeypatch.setattr(judge, "STEPS", 100)  # black against white

    pixels = torch.cat([torch.zeros(6, 1, 4, 4), torch.full((6, 1, 4, 4), 255.0)]).to(torch.uint8)
    s = ImageSet(pixels, torch.arange(12) // 6, torch.zeros(12, dtype=torch.bool), 256, ("a", "b"), "t", "nograd")
    with torch.no_grad():
        model, _ = judge.train_judge(s)
    assert judge.predict(model, s.split("train")[0]).tolist() == [0] * 6 + [1] * 6


def test_a_folder_linked_from_two_classes_is_read_for_both(tmp_path):
    _classes(tmp_path / "shared", 3, names=("x",))
    root = tmp_path / "data"
    for name in ("cats", "dogs"):
        _save(root / name / "own.png", np.zeros((4, 4)))
        (root / name / "common").symlink_to(tmp_path / "shared" / "x")
    s = folder_set(root, size=4, channels=1, holdout=0.0, labelled=True)
    assert torch.bincount(s.labels).tolist() == [4, 4]


def test_resume_refuses_a_folder_that_is_not_a_run_before_reading_the_images(tmp_path, monkeypatch):
    root = _classes(tmp_path / "data", 3)
    cfg = _images_config(tmp_path, root)
    (tmp_path / "notarun").mkdir()
    monkeypatch.setattr(image_sets, "_load_folder", lambda *a, **k: pytest.fail("read the images"))
    res = _run("train", str(cfg), "--resume", str(tmp_path / "notarun"), "--quiet")
    assert res.returncode == 2 and "is not a run directory" in res.stderr


def test_evaluate_refuses_to_write_inside_the_image_folder(tmp_path):
    root = _classes(tmp_path / "data", 3)
    assert _run("train", str(_images_config(tmp_path, root)), "--out", str(tmp_path / "run"), "--quiet").returncode == 0
    config = tmp_path / "run" / "config.yaml"
    config.write_text(config.read_text().replace(str(root), str(tmp_path)))  # data.path now holds the run
    res = _run("evaluate", str(tmp_path / "run"), "--n", "4", "--steps", "2", "--no-bpd", "--quiet")
    assert res.returncode == 2 and "lies inside data.path" in res.stderr and not (tmp_path / "run" / "eval").exists()


def test_a_budget_given_covers_the_images_held(tmp_path):
    s = folder_set(_classes(tmp_path / "d", 3), size=8, channels=3)
    assert image_sets.budget_left(10_000, s) == 10_000 - 6 * 3 * 64 and image_sets.budget_left(None, s) is None


@pytest.mark.parametrize("mode", ["I;16", "P", "CMYK"])
def test_sixteen_bit_palette_and_cmyk_files_load_in_a_folder_as_their_8_bit_equals(tmp_path, mode):
    grey = np.linspace(0, 255, 64).reshape(8, 8).astype(np.uint8)
    _save(tmp_path / "ref" / "a.png", grey)
    _save(tmp_path / "ref" / "b.png", grey)
    if mode == "I;16":
        Image.fromarray(grey.astype(np.uint16) * 257).save(tmp_path / "a.png")
    elif mode == "P":
        Image.fromarray(grey).convert("P").save(tmp_path / "a.png")
    else:
        Image.fromarray(grey).convert("CMYK").save(tmp_path / "a.jpg", quality=100)
    name = "a.jpg" if mode == "CMYK" else "a.png"
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / name).write_bytes((tmp_path / name).read_bytes())
    _save(tmp_path / "m" / "b.png", grey)
    ref = folder_set(tmp_path / "ref", size=4, channels=1, holdout=0.0).pixels[0].int()
    got = folder_set(tmp_path / "m", size=4, channels=1, holdout=0.0).pixels[0].int()
    assert (got - ref).abs().max() <= (4 if mode == "CMYK" else 1)
