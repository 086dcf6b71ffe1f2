"""`scorelab inpaint` and `scorelab sdedit` on a tiny class-conditional DDPM digits run: outputs, figures, the known
pixels, labels and guidance, image files and masks, and one-line errors that write nothing."""

import json
import math

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file
from test_cli import _DDPM, _run, _trained_ddpm

from scorelab.cli import REGION_NAMES
from scorelab.data.image_sets import digits_set, folder_set, to_signed
from scorelab.metrics.digits import classifier_probs
from scorelab.outputs import MANIFEST
from scorelab.pipelines.edit import REGIONS, edit_run, region_keep, strength_sigma
from scorelab.pipelines.sample import diffusion_sigmas, load_run


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
    p = _run(*f"inpaint {run} --held-out 3 --region bottom --n 2 --steps 3 --resample 2 --out {out} --quiet".split())
    assert p.returncode == 0, p.stderr
    assert "input_class_kept" in p.stdout and f"written to {out}" in p.stdout
    assert sorted(f.name for f in out.iterdir()) == [MANIFEST, "inpaint.png", "inpaint.safetensors", "metrics.json"]
    t = load_file(out / "inpaint.safetensors")
    held = digits_set().split("test")[0][:3]
    assert torch.equal(t["inputs"], held) and t["edits"].shape == (1, 6, 1, 8, 8)
    edits, keep = t["edits"][0], t["keep"]
    assert torch.equal(edits[keep.expand_as(edits)], held.repeat_interleave(2, 0)[keep.expand_as(edits)])
    assert not torch.equal(edits, held.repeat_interleave(2, 0))  # the region was filled, not copied
    m = json.loads((out / "metrics.json").read_text())
    assert m["sampler"] == "repaint" and m["resample"] == 2 and m["filled"] == "region bottom"
    assert m["filled_share"] == 0.5 and m["label"] is None and m["guidance"] == 0.0
    row = m["rows"][0]
    assert row["known_max_abs_change"] == 0.0
    # the figures, recomputed from the saved edits: the classifier against the held-out labels, and the RMS
    labels = digits_set().split("test")[1][:3]
    assert row["input_class_kept"] == (classifier_probs(edits).argmax(1) == labels.repeat_interleave(2)).double().mean()
    assert m["judge_accuracy_on_inputs"] == (classifier_probs(held).argmax(1) == labels).double().mean()
    expected = (edits - held.repeat_interleave(2, 0)).double().pow(2)
    assert row["rms_to_input"] == pytest.approx(expected.mean().sqrt().item())
    assert row["rms_in_filled_region"] == pytest.approx(expected[..., 4:, :].mean().sqrt().item())
    assert m["input_classes"] == "true labels"
    # 4 columns (input, masked, 2 fills) and 3 rows of 8x8 images, 1-pixel gaps, drawn 4x
    assert Image.open(out / "inpaint.png").size == (4 * (1 + 4 * 9), 4 * (1 + 3 * 9))


def test_inpaint_with_a_mask_file_and_an_image_file(run, tmp_path):
    img = np.full((16, 24), 255, dtype=np.uint8)  # read as the folder loader reads (its tests): square, 8x8
    Image.fromarray(img).save(tmp_path / "in.png")
    mask = np.zeros((8, 8), dtype=np.uint8)
    mask[:, :3] = 255  # white: fill
    Image.fromarray(mask).save(tmp_path / "mask.png")
    out = tmp_path / "o"
    files = f"--image {tmp_path / 'in.png'} --mask {tmp_path / 'mask.png'}"
    p = _run(*f"inpaint {run} {files} --sampler ddim --steps 3 --n 3 --label 4 --out {out} --quiet".split())
    assert p.returncode == 0, p.stderr
    t = load_file(out / "inpaint.safetensors")
    assert torch.equal(t["inputs"], torch.ones(1, 1, 8, 8))  # white, at 8x8
    assert t["keep"][0, 0, :, :3].logical_not().all() and t["keep"][0, 0, :, 3:].all()
    assert (t["edits"][0][..., 3:] == 1).all()
    m = json.loads((out / "metrics.json").read_text())
    assert m["label"] == 4 and m["guidance"] == 3.0 and m["input_classes"] == "judged" and "resample" not in m
    judged = classifier_probs(t["inputs"]).argmax(1)  # an image file has no label: the classifier's reading of it
    assert m["inputs_in_label"] == float(judged[0] == 4) and "judge_accuracy_on_inputs" not in m
    assert m["rows"][0]["label_accuracy"] == (classifier_probs(t["edits"][0]).argmax(1) == 4).double().mean()


def test_sdedit_one_row_per_strength_and_the_same_seed_gives_the_same_edits(run, tmp_path):
    out = tmp_path / "sd"
    p = _run(*f"sdedit {run} --held-out 2 --strength 0.25 --strength 1 --n 2 --steps 4 --out {out} --quiet".split())
    assert p.returncode == 0, p.stderr
    m = json.loads((out / "metrics.json").read_text())
    assert [r["strength"] for r in m["rows"]] == [0.25, 1.0] and m["sampler"] == "ddpm"
    cfg, _, _ = load_run(run)
    used = [float(torch.tensor(strength_sigma(cfg, t))) for t in (0.25, 1.0)]  # as the float32 schedule holds it
    assert [r["sigma_start"] for r in m["rows"]] == used
    sigmas, _ = diffusion_sigmas(cfg, 4, cfg.sample.schedule)
    assert [r["steps_run"] for r in m["rows"]] == [int((sigmas < r["sigma_start"]).sum()) for r in m["rows"]]
    t = load_file(out / "sdedit.safetensors")
    assert t["edits"].shape == (2, 4, 1, 8, 8) and "keep" not in t
    again = edit_run(
        run, "sdedit", held_out=2, strengths=(0.25, 1.0), n=2, steps=4, out_dir=tmp_path / "sd2", progress=False
    )  # the same request from Python: the same edits (one seed, drawn on the CPU)
    assert torch.equal(load_file(tmp_path / "sd2" / "sdedit.safetensors")["edits"], t["edits"])
    assert again["rows"] == m["rows"]
    alone = edit_run(
        run, "sdedit", held_out=2, strengths=(1.0,), n=2, steps=4, out_dir=tmp_path / "sd3", progress=False
    )
    assert alone["rows"][0] == m["rows"][1]  # each t0 draws from the seed afresh: its edits do not depend on the others
    assert torch.equal(load_file(tmp_path / "sd3" / "sdedit.safetensors")["edits"][0], t["edits"][1])


def test_sdedit_strength_is_the_time_of_the_forward_process():
    """t0 on the DDPM run's beta schedule (timestep round(t0 T), at least 1) and on a VE run's geometric sigma(t)."""
    from types import SimpleNamespace

    from scorelab.schedules import alphas_cumprod, beta_schedule, sigma_from_alpha_bar

    ddpm_cfg = SimpleNamespace(
        train=SimpleNamespace(objective="ddpm"), noise=SimpleNamespace(schedule="linear", timesteps=1000)
    )
    ab = alphas_cumprod(beta_schedule("linear", 1000))
    assert strength_sigma(ddpm_cfg, 0.3) == float(sigma_from_alpha_bar(ab[299]))
    assert strength_sigma(ddpm_cfg, 1.0) == float(sigma_from_alpha_bar(ab[999]))
    assert strength_sigma(ddpm_cfg, 0.0004) == float(sigma_from_alpha_bar(ab[0]))  # at least timestep 1
    assert strength_sigma(ddpm_cfg, 0.0305) == float(sigma_from_alpha_bar(ab[30]))  # 30.5 rounds half up to 31
    ve_cfg = SimpleNamespace(
        train=SimpleNamespace(objective="ncsn"), noise=SimpleNamespace(sigma_min=0.01, sigma_max=50.0)
    )
    assert strength_sigma(ve_cfg, 1.0) == pytest.approx(50.0) and strength_sigma(ve_cfg, 0.5) == pytest.approx(
        math.sqrt(0.01 * 50.0)
    )


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
        (["sdedit", "{run}", "--held-out", "1", "--strength", "1.5"], "--strength"),
        (
            ["inpaint", "{run}", "--held-out", "1", "--region", "top", "--sampler", "ddim", "--resample", "10"],
            "give them with --sampler repaint",
        ),
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
    inputs = f"--held-out 2 --image {tmp_path / 'grey.png'}"
    p = _run(*f"inpaint {tmp_path / 'run'} {inputs} --region centre --n 2 --sampler ddim --out {out} --quiet".split())
    assert p.returncode == 0, p.stderr
    m = json.loads((out / "metrics.json").read_text())
    assert m["inputs"] == 3 and m["input_classes"] == "judged"  # an image file has no label: the judge's class
    assert m["rows"][0]["known_max_abs_change"] == 0
    t = load_file(out / "inpaint.safetensors")
    assert torch.equal(t["inputs"][0], to_signed(torch.full((1, 8, 8), 120, dtype=torch.uint8), 256))
    # the class figure, recomputed: the judge (kept for the process) reads inputs and edits
    model, _ = judge.train_judge(folder_set(root, size=8, channels=1, holdout=0.25, labelled=True))
    inputs_class = judge.predict(model, t["inputs"]).repeat_interleave(2)
    kept = (judge.predict(model, t["edits"][0]) == inputs_class).double().mean().item()
    assert m["rows"][0]["input_class_kept"] == kept
    inside = root / "a" / "edits"
    p = _run("sdedit", str(tmp_path / "run"), "--held-out", "1", "--strength", "0.5", "--out", str(inside), "--quiet")
    assert p.returncode == 2 and "lies inside data.path" in p.stderr and not inside.exists()


def test_edits_of_runs_the_class_figures_cannot_read_and_of_runs_without_a_null_label(tmp_path):
    """A one-class image folder (no judge: no class figures) edits; a conditional run trained without label dropout
    has no null label, so it edits only towards a --label."""
    from test_image_sets import _images_config, _save

    for i in range(4):
        _save(tmp_path / "one" / "only" / f"{i}.png", np.full((8, 8), 60 * i))
    raw = yaml.safe_load(_images_config(tmp_path, tmp_path / "one").read_text())
    raw["model"].update(num_classes=1, channel_mult=[1])
    (tmp_path / "one.yaml").write_text(yaml.safe_dump(raw))
    assert _run("train", str(tmp_path / "one.yaml"), "--out", str(tmp_path / "r1"), "--quiet").returncode == 0
    p = _run("inpaint", str(tmp_path / "r1"), "--held-out", "1", "--region", "top", "--sampler", "ddim", "--quiet")
    assert p.returncode == 0, p.stderr
    m = json.loads((tmp_path / "r1" / "inpaint" / "metrics.json").read_text())
    assert "input_class_kept" not in m["rows"][0] and "input_classes" not in m
    raw = dict(_DDPM, train={**_DDPM["train"], "cond_dropout": 0.0}, sample={**_DDPM["sample"], "guidance": 1.0})
    (tmp_path / "nonull.yaml").write_text(yaml.safe_dump(raw))
    assert _run("train", str(tmp_path / "nonull.yaml"), "--out", str(tmp_path / "r2"), "--quiet").returncode == 0
    p = _run("sdedit", str(tmp_path / "r2"), "--held-out", "1", "--strength", "0.1", "--quiet")
    assert p.returncode == 2 and "trained without a null label" in p.stderr and "give --label" in p.stderr
    p = _run("sdedit", str(tmp_path / "r2"), "--held-out", "1", "--strength", "0.1", "--label", "2", "--quiet")
    assert p.returncode == 0, p.stderr


def test_inpaint_and_sdedit_keep_to_their_own_folders_and_budgets_count_from_zero(run, tmp_path):
    out = tmp_path / "shared"
    assert _run("inpaint", str(run), "--held-out", "1", "--region", "top", "--out", str(out), "--quiet").returncode == 0
    p = _run("sdedit", str(run), "--held-out", "1", "--strength", "0.1", "--out", str(out), "--quiet")
    assert p.returncode == 2 and "holds files this command did not write" in p.stderr, p.stderr
    assert (out / "inpaint.png").exists() and not (out / "sdedit.png").exists()
    p = _run("sdedit", str(run), "--held-out", "1", "--strength", "0.1", "--max-memory", "1K", "--quiet")
    assert p.returncode == 2 and "1.0 KB allowed by --max-memory" in p.stderr, p.stderr  # not less the digits
