"""`scorelab inpaint` and `scorelab sdedit` on a tiny class-conditional DDPM digits run: outputs, figures, the known
pixels, labels and guidance, image files and masks, and one-line errors that write nothing."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from test_cli import _run, _trained_ddpm

from scorelab.cli import REGION_NAMES
from scorelab.data.image_sets import digits_set, to_signed
from scorelab.outputs import MANIFEST
from scorelab.pipelines.edit import REGIONS, edit_run, region_keep


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return _trained_ddpm(tmp_path_factory.mktemp("edit"))


def test_regions_leave_the_named_part_to_fill():
    assert REGION_NAMES == REGIONS
    bottom = region_keep("bottom", 8, 8)[0, 0]
    assert bottom[:4].all() and not bottom[4:].any()
    assert region_keep("top", 8, 8)[0, 0].flip(0).equal(bottom)
    left = region_keep("left", 6, 8)[0, 0]
    assert left[:, 4:].all() and not left[:, :4].any()
    assert region_keep("right", 6, 8)[0, 0].flip(1).equal(left)
    centre = region_keep("centre", 8, 8)[0, 0]
    assert (~centre).sum() == 16 and not centre[2:6, 2:6].any()


def test_inpaint_fills_the_region_and_keeps_every_known_pixel(run, tmp_path):
    out = tmp_path / "fills"
    p = _run(
        "inpaint",
        str(run),
        "--held-out",
        "3",
        "--region",
        "bottom",
        "--n",
        "2",
        "--steps",
        "3",
        "--resample",
        "2",
        "--out",
        str(out),
        "--quiet",
    )
    assert p.returncode == 0, p.stderr
    assert "input_class_kept" in p.stdout and f"written to {out}" in p.stdout
    assert sorted(f.name for f in out.iterdir()) == [MANIFEST, "edits.png", "edits.safetensors", "metrics.json"]
    t = load_file(out / "edits.safetensors")
    held = digits_set().split("test")[0][:3]
    assert torch.equal(t["inputs"], held) and t["edits"].shape == (1, 6, 1, 8, 8)
    edits, keep = t["edits"][0], t["keep"]
    assert torch.equal(edits[keep.expand_as(edits)], held.repeat_interleave(2, 0)[keep.expand_as(edits)])
    assert not torch.equal(edits, held.repeat_interleave(2, 0))  # the region was filled, not copied
    m = json.loads((out / "metrics.json").read_text())
    assert m["sampler"] == "repaint" and m["resample"] == 2 and m["filled"] == "region bottom"
    assert m["filled_share"] == 0.5 and m["label"] is None and m["guidance"] == 0.0
    row = m["rows"][0]
    assert row["known_max_abs_change"] == 0.0 and 0 <= row["input_class_kept"] <= 1
    assert row["rms_in_filled_region"] > row["rms_to_input"] > 0  # all the change lies in the filled half
    assert m["input_classes"] == "true labels" and 0 <= m["judge_accuracy_on_inputs"] <= 1
    # 4 columns (input, masked, 2 fills) and 3 rows of 8x8 images, 1-pixel gaps, drawn 4x
    assert Image.open(out / "edits.png").size == (4 * (1 + 4 * 9), 4 * (1 + 3 * 9))


def test_inpaint_with_a_mask_file_and_an_image_file(run, tmp_path):
    img = np.full((16, 24), 255, dtype=np.uint8)  # read as the folder loader reads (its tests): square, 8x8
    Image.fromarray(img).save(tmp_path / "in.png")
    mask = np.zeros((8, 8), dtype=np.uint8)
    mask[:, :3] = 255  # white: fill
    Image.fromarray(mask).save(tmp_path / "mask.png")
    out = tmp_path / "o"
    p = _run(
        "inpaint",
        str(run),
        "--image",
        str(tmp_path / "in.png"),
        "--mask",
        str(tmp_path / "mask.png"),
        "--sampler",
        "ddim",
        "--steps",
        "3",
        "--n",
        "3",
        "--label",
        "4",
        "--out",
        str(out),
        "--quiet",
    )
    assert p.returncode == 0, p.stderr
    t = load_file(out / "edits.safetensors")
    assert torch.equal(t["inputs"], torch.ones(1, 1, 8, 8))  # white, at 8x8
    assert t["keep"][0, 0, :, :3].logical_not().all() and t["keep"][0, 0, :, 3:].all()
    assert (t["edits"][0][..., 3:] == 1).all()
    m = json.loads((out / "metrics.json").read_text())
    assert m["label"] == 4 and m["guidance"] == 3.0 and m["input_classes"] == "judged"
    assert 0 <= m["rows"][0]["label_accuracy"] <= 1 and "resample" not in m


def test_sdedit_one_row_per_strength_and_the_same_seed_gives_the_same_edits(run, tmp_path):
    out = tmp_path / "sd"
    p = _run(
        "sdedit",
        str(run),
        "--held-out",
        "2",
        "--strength",
        "0.25",
        "--strength",
        "1",
        "--n",
        "2",
        "--steps",
        "4",
        "--out",
        str(out),
        "--quiet",
    )
    assert p.returncode == 0, p.stderr
    m = json.loads((out / "metrics.json").read_text())
    assert [r["strength"] for r in m["rows"]] == [0.25, 1.0] and m["sampler"] == "ddpm"
    t = load_file(out / "edits.safetensors")
    assert t["edits"].shape == (2, 4, 1, 8, 8) and "keep" not in t
    again = edit_run(
        run, "sdedit", held_out=2, strengths=(0.25, 1.0), n=2, steps=4, out_dir=tmp_path / "sd2", progress=False
    )  # the same request from Python: the same edits (one seed, drawn on the CPU)
    assert torch.equal(load_file(tmp_path / "sd2" / "edits.safetensors")["edits"], t["edits"])
    assert again["rows"] == m["rows"]
    assert m["rows"][0]["rms_to_input"] < m["rows"][1]["rms_to_input"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["inpaint", "{run}", "--held-out", "2"], "exactly one of --region"),
        (["inpaint", "{run}", "--held-out", "2", "--region", "top", "--mask", "{tmp}/m.png"], "exactly one of"),
        (["inpaint", "{run}", "--region", "top"], "nothing to edit"),
        (["inpaint", "{run}", "--held-out", "5000", "--region", "top"], "holds out 297"),
        (
            ["inpaint", "{run}", "--held-out", "1", "--region", "top", "--sampler", "ddim", "--resample", "3"],
            "give them with --sampler repaint",
        ),
        (["inpaint", "{run}", "--held-out", "1", "--region", "top", "--guidance", "2"], "--guidance needs --label"),
        (["inpaint", "{run}", "--held-out", "1", "--region", "top", "--label", "10"], "--label must be in 0..9"),
        (["inpaint", "{run}", "--held-out", "1", "--region", "top", "--label", "1", "--guidance", "0"], "no effect"),
        (["inpaint", "{run}", "--held-out", "1", "--mask", "{tmp}/m.png"], "file does not exist"),
        (["inpaint", "{run}", "--held-out", "1", "--mask", "{tmp}/big.png"], "does not match the image's 8x8"),
        (["inpaint", "{run}", "--held-out", "1", "--mask", "{tmp}/white.png"], "no pixel is known"),
        (["inpaint", "{run}", "--image", "{tmp}/nope.png", "--region", "top"], "--image"),
        (["sdedit", "{run}", "--held-out", "1"], "Missing option '--strength'"),
        (["sdedit", "{run}", "--held-out", "1", "--strength", "0"], "--strength"),
        (["sdedit", "{run}", "--held-out", "1", "--strength", "0.01", "--steps", "4"], "runs no step"),
        (["sdedit", "{run}", "--held-out", "1", "--strength", "0.5", "--sampler", "repaint"], "--sampler"),
        (["sdedit", "{tmp}/none", "--held-out", "1", "--strength", "0.5"], "does not exist"),
    ],
)
def test_bad_edit_requests_are_one_line_and_write_nothing(run, tmp_path, args, message):
    Image.fromarray(np.zeros((9, 9), dtype=np.uint8)).save(tmp_path / "big.png")
    Image.fromarray(np.full((8, 8), 255, dtype=np.uint8)).save(tmp_path / "white.png")
    out = tmp_path / "never"
    p = _run(*[a.format(run=run, tmp=tmp_path) for a in args], "--out", str(out), "--quiet")
    assert p.returncode == 2 and p.stderr.startswith("error:") and p.stderr.count("\n") == 1, p.stderr
    assert message in p.stderr, p.stderr
    assert not out.exists()


def test_editing_a_2d_toy_run_is_refused(tmp_path):
    from test_cli import _trained

    _, toy = _trained(tmp_path, data="ring8", steps=2)
    p = _run("sdedit", str(toy), "--held-out", "1", "--strength", "0.5", "--quiet")
    assert p.returncode == 2 and "needs a run trained on images" in p.stderr, p.stderr


def test_editing_an_image_folder_run_judges_classes_and_refuses_outputs_inside_the_folder(tmp_path, monkeypatch):
    from test_image_sets import _classes, _images_config, _save

    from scorelab.metrics import judge

    monkeypatch.setattr(judge, "STEPS", 200)  # two classes of flat greys
    root = _classes(tmp_path / "data", 6)
    assert _run("train", str(_images_config(tmp_path, root)), "--out", str(tmp_path / "run"), "--quiet").returncode == 0
    _save(tmp_path / "grey.png", np.full((20, 20), 120))  # resized to the run's 8x8
    out = tmp_path / "edits"
    p = _run(
        "inpaint",
        str(tmp_path / "run"),
        "--held-out",
        "2",
        "--image",
        str(tmp_path / "grey.png"),
        "--region",
        "centre",
        "--n",
        "2",
        "--sampler",
        "ddim",
        "--out",
        str(out),
        "--quiet",
    )
    assert p.returncode == 0, p.stderr
    m = json.loads((out / "metrics.json").read_text())
    assert m["inputs"] == 3 and m["input_classes"] == "judged"  # an image file has no label: the judge's class
    assert 0 <= m["rows"][0]["input_class_kept"] <= 1 and m["rows"][0]["known_max_abs_change"] == 0
    t = load_file(out / "edits.safetensors")
    assert torch.equal(t["inputs"][0], to_signed(torch.full((1, 8, 8), 120, dtype=torch.uint8), 256))
    inside = root / "a" / "edits"
    p = _run("sdedit", str(tmp_path / "run"), "--held-out", "1", "--strength", "0.5", "--out", str(inside), "--quiet")
    assert p.returncode == 2 and "lies inside data.path" in p.stderr and not inside.exists()
