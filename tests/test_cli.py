"""End to end through the command line: train, resume, sample, errors."""

import json
import os
import stat
import subprocess
import sys

import pytest
import torch
import yaml
from click.testing import CliRunner
from safetensors.torch import load_file

from scorelab.cli import cli
from scorelab.errors import ScorelabError
from scorelab.train.checkpoint import list_checkpoints


def _tiny_config(tmp_path, data="ring8", steps=40):
    raw = {
        "data": {"name": data},
        "model": {
            "kind": "mlp" if data != "digits" else "unet",
            "width": 32,
            "depth": 1,
            "channels": 8,
            "attention_levels": [],
        },
        "noise": {"sigma_max": 5.0, "sigma_min": 0.05, "levels": 10},
        "train": {"steps": steps, "batch_size": 16, "checkpoint_every": 10, "keep_checkpoints": 2},
        "sample": {"n": 64, "steps_per_level": 2, "step_size": 1e-3},
    }
    path = tmp_path / f"{data}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.parametrize("data", ["ring8", "digits"])  # an MLP, and a U-Net (channels-last weights, Adam state)
def test_resume_is_bit_identical_to_a_straight_run(tmp_path, data):
    cfg = _tiny_config(tmp_path, data=data, steps=40)
    r = CliRunner()
    assert r.invoke(cli, ["train", str(cfg), "--out", str(tmp_path / "straight"), "--quiet"]).exit_code == 0
    half = tmp_path / "half.yaml"
    raw = yaml.safe_load(cfg.read_text())
    raw["train"]["steps"] = 20
    half.write_text(yaml.safe_dump(raw))
    assert r.invoke(cli, ["train", str(half), "--out", str(tmp_path / "split"), "--quiet"]).exit_code == 0
    res = r.invoke(cli, ["train", str(cfg), "--resume", str(tmp_path / "split"), "--quiet"])
    assert res.exit_code == 0, res.output
    assert "resumed" in res.output
    a = load_file(list_checkpoints(tmp_path / "straight" / "checkpoints")[-1].with_suffix(".safetensors"))
    b = load_file(list_checkpoints(tmp_path / "split" / "checkpoints")[-1].with_suffix(".safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert len(list_checkpoints(tmp_path / "straight" / "checkpoints")) == 2  # keep_checkpoints


def test_corrupt_checkpoint_falls_back_to_older(tmp_path):
    cfg = _tiny_config(tmp_path, steps=20)
    r = CliRunner()
    assert r.invoke(cli, ["train", str(cfg), "--out", str(tmp_path / "run"), "--quiet"]).exit_code == 0
    newest = list_checkpoints(tmp_path / "run" / "checkpoints")[-1].with_suffix(".safetensors")
    newest.write_bytes(newest.read_bytes()[:100])
    res = r.invoke(cli, ["sample", str(tmp_path / "run"), "--n", "32", "--quiet"])
    assert res.exit_code == 0, res.output
    assert "corrupt" in res.stderr and "older checkpoint" in res.stderr  # a warning, not part of the output
    metrics = json.loads((tmp_path / "run" / "samples" / "metrics.json").read_text())
    assert metrics["step"] == 10 and metrics["n"] == 32 and metrics["sw2"] > 0


def _set_model_format(run, value):
    for record_path in list_checkpoints(run / "checkpoints"):
        record = json.loads(record_path.read_text())
        if value is None:
            del record["model_format"]  # as records were written before formats existed
        else:
            record["model_format"] = value
        record_path.write_text(json.dumps(record))


def test_a_run_of_another_unet_format_is_refused_in_one_line(tmp_path):
    """Weights of an older U-Net definition (before channels-last groups and heads) must not load into today's."""
    cfg = _tiny_config(tmp_path, data="digits", steps=10)
    r = CliRunner()
    run = tmp_path / "run"
    assert r.invoke(cli, ["train", str(cfg), "--out", str(run), "--quiet"]).exit_code == 0
    assert all(json.loads(p.read_text())["model_format"] == 2 for p in list_checkpoints(run / "checkpoints"))
    more = tmp_path / "more.yaml"
    raw = yaml.safe_load(cfg.read_text())
    raw["train"]["steps"] = 20
    more.write_text(yaml.safe_dump(raw))
    commands = (
        ["sample", str(run), "--n", "8", "--quiet"],
        ["evaluate", str(run), "--n", "8", "--quiet"],
        ["train", str(more), "--resume", str(run), "--quiet"],
    )
    for value, expected in ((None, "model format 1"), (3, "written by a newer scorelab"), ("2", "malformed")):
        _set_model_format(run, value)
        for args in commands:
            res = r.invoke(cli, args)
            assert isinstance(res.exception, ScorelabError), res.output  # `scorelab` prints it as one line, exit 2
            assert expected in str(res.exception) and "\n" not in str(res.exception)
    assert not (run / "samples").exists() and not (run / "eval").exists()
    assert [p.name for p in list_checkpoints(run / "checkpoints")] == ["ckpt_00000010.json"]  # resume wrote nothing


def test_an_mlp_run_from_before_model_formats_still_samples(tmp_path):
    cfg = _tiny_config(tmp_path, steps=10)
    r = CliRunner()
    run = tmp_path / "run"
    assert r.invoke(cli, ["train", str(cfg), "--out", str(run), "--quiet"]).exit_code == 0
    _set_model_format(run, None)
    res = r.invoke(cli, ["sample", str(run), "--n", "16", "--quiet"])
    assert res.exit_code == 0, res.output


@pytest.mark.parametrize("data", ["moons", "digits"])
def test_train_and_sample_write_grid_and_metrics(tmp_path, data):
    cfg = _tiny_config(tmp_path, data=data, steps=10)
    r = CliRunner()
    assert r.invoke(cli, ["train", str(cfg), "--out", str(tmp_path / "run"), "--quiet"]).exit_code == 0
    res = r.invoke(cli, ["sample", str(tmp_path / "run"), "--n", "20", "--seed", "3", "--quiet"])
    assert res.exit_code == 0, res.output
    out = tmp_path / "run" / "samples"
    assert (out / "samples.png").stat().st_size > 0
    m = json.loads((out / "metrics.json").read_text())
    assert ("confident_share" in m) if data == "digits" else ("sw2_over_floor" in m)
    again = r.invoke(
        cli, ["sample", str(tmp_path / "run"), "--n", "20", "--seed", "3", "--quiet", "--out", str(tmp_path / "again")]
    )
    assert again.exit_code == 0
    assert torch.equal(
        load_file(out / "samples.safetensors")["samples"],
        load_file(tmp_path / "again" / "samples.safetensors")["samples"],
    )


def _trained(tmp_path, steps=10, data="ring8"):
    """A tiny run trained through the command line: (config path, run directory)."""
    cfg = _tiny_config(tmp_path, data=data, steps=steps)
    run = tmp_path / "run"
    assert CliRunner().invoke(cli, ["train", str(cfg), "--out", str(run), "--quiet"]).exit_code == 0
    return cfg, run


def _run(*args):
    return subprocess.run([sys.executable, "-m", "scorelab", *args], capture_output=True, text=True)


def test_bad_input_exits_2_with_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  stepz: 3\n")
    for args in (
        ["train", str(bad)],
        ["train", str(tmp_path / "nope.yaml")],
        ["sample", str(tmp_path / "nothing")],
        ["reproduce", "no-such-figure"],
        ["train"],  # click usage errors are one line too
        ["train", str(bad), "--bogus"],
        ["sample", str(tmp_path / "nothing"), "--n", "0"],
        ["sample", str(tmp_path / "nothing"), "--sampler", "bogus"],
    ):
        p = _run(*args)
        assert p.returncode == 2, (args, p.stderr)
        assert p.stderr.strip().count("\n") == 0 and p.stderr.startswith("error:"), p.stderr
    assert not (tmp_path / "runs").exists()


def test_guidance_must_be_a_finite_number(tmp_path):
    for args in (["sample", "RUN", "--guidance", "nan"], ["sample", "RUN", "--guidance", "inf"]) + (
        ["evaluate", "RUN", "--guidance", "1e400"],
    ):
        p = _run(*args)  # refused while the options are read, before the run is looked at
        assert p.returncode == 2 and p.stderr.count("\n") == 1 and "is not a finite number" in p.stderr, p.stderr


def test_training_out_of_memory_is_one_line_and_leaves_nothing(tmp_path):
    """A batch of 1e14 2-D points (800 TB) cannot be allocated on any machine, whatever the overcommit setting."""
    raw = yaml.safe_load(_tiny_config(tmp_path).read_text())
    raw["train"]["batch_size"] = 10**14
    cfg = tmp_path / "huge.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    p = _run("train", str(cfg), "--out", str(tmp_path / "runs" / "huge"), "--quiet")
    assert p.returncode == 2 and p.stderr.count("\n") == 1, p.stderr
    assert p.stderr.startswith("error: out of memory") and "train.batch_size" in p.stderr
    assert not (tmp_path / "runs").exists()  # the config it had written and the folders it made are gone


def test_train_refuses_a_folder_of_other_files_and_resume_says_what_is_missing(tmp_path):
    cfg = _tiny_config(tmp_path, steps=10)
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    p = _run("train", str(cfg), "--out", str(folder))
    assert p.returncode == 2 and "holds files that are not a run's (notes.txt)" in p.stderr, p.stderr
    assert [f.name for f in folder.iterdir()] == ["notes.txt"]
    p = _run("train", str(cfg), "--resume", str(tmp_path / "nope"))
    assert p.returncode == 2 and "run directory" in p.stderr and "does not exist" in p.stderr, p.stderr
    (tmp_path / "early").mkdir()  # a run stopped before its first checkpoint: its config and nothing else
    (tmp_path / "early" / "config.yaml").write_text(cfg.read_text())
    p = _run("train", str(cfg), "--resume", str(tmp_path / "early"))
    assert p.returncode == 2 and "train it again without --resume" in p.stderr, p.stderr


@pytest.mark.parametrize("records_time", [True, False])
def test_training_time_counts_sessions_that_never_finished(tmp_path, records_time):
    """Each checkpoint records the run's training time so far, so a session stopped before it could write
    train.json (a kill) still counts, up to its last checkpoint. The time is set to 1000 s by hand so that it cannot
    be mistaken for the few tenths of a second these steps take. A checkpoint from before records kept the time
    (records_time False) falls back to the finished sessions' train.json."""
    cfg, run = _trained(tmp_path, steps=20)
    last = list_checkpoints(run / "checkpoints")[-1]
    record = json.loads(last.read_text())
    if records_time:
        record["seconds"] = 1000.0
        (run / "train.json").unlink()  # as if the session had been killed after its last checkpoint
    else:
        del record["seconds"]
        (run / "train.json").write_text(json.dumps({"step": 20, "seconds": 1000.0}))
    last.write_text(json.dumps(record))
    raw = yaml.safe_load(cfg.read_text())
    raw["train"]["steps"] = 40
    cfg.write_text(yaml.safe_dump(raw))
    assert CliRunner().invoke(cli, ["train", str(cfg), "--resume", str(run), "--quiet"]).exit_code == 0
    summary = json.loads((run / "train.json").read_text())
    assert summary["seconds"] == pytest.approx(1000.0 + summary["session_seconds"], abs=0.11)
    newest = json.loads(list_checkpoints(run / "checkpoints")[-1].read_text())
    assert newest["step"] == 40 and newest["seconds"] == pytest.approx(summary["seconds"], abs=0.11)


def test_refuses_to_overwrite_a_run(tmp_path):
    cfg = _tiny_config(tmp_path, steps=10)
    r = CliRunner()
    assert r.invoke(cli, ["train", str(cfg), "--out", str(tmp_path / "run"), "--quiet"]).exit_code == 0
    p = _run("train", str(cfg), "--out", str(tmp_path / "run"))
    assert p.returncode == 2 and "--resume" in p.stderr


def test_every_command_has_help():
    for args in ([], ["train"], ["sample"], ["reproduce"], ["demo"]):
        res = CliRunner().invoke(cli, [*args, "--help"])
        assert res.exit_code == 0 and "Usage" in res.output


def test_conditional_ddpm_train_sample_evaluate(tmp_path):
    raw = {
        "data": {"name": "digits"},
        "model": {
            "kind": "unet",
            "parameterisation": "eps",
            "sigma_data": 1.0,
            "channels": 8,
            "attention_levels": [],
            "num_classes": 10,
        },
        "noise": {"schedule": "linear", "timesteps": 50},
        "train": {"objective": "ddpm", "cond_dropout": 0.1, "steps": 6, "batch_size": 8, "checkpoint_every": 3},
        "sample": {"n": 20, "sampler": "dpmpp_2m", "steps": 4, "guidance": 3.0},
    }
    cfg = tmp_path / "ddpm.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    run = tmp_path / "run"
    r = CliRunner()
    assert r.invoke(cli, ["train", str(cfg), "--out", str(run), "--quiet"]).exit_code == 0
    res = r.invoke(
        cli,
        [
            "sample",
            str(run),
            "--sampler",
            "unipc",
            "--steps",
            "3",
            "--guidance",
            "3",
            "--label",
            "7",
            "--n",
            "12",
            "--quiet",
        ],
    )
    assert res.exit_code == 0, res.output
    metrics = json.loads((run / "samples" / "metrics.json").read_text())
    assert metrics["sampler"] == "unipc" and metrics["guidance"] == 3.0 and 0 <= metrics["conditional_accuracy"] <= 1
    labels = load_file(run / "samples" / "samples.safetensors")["labels"]
    assert (labels == 7).all()
    res = r.invoke(
        cli, ["evaluate", str(run), "--n", "10", "--steps", "2", "--guidance", "0", "--guidance", "3", "--quiet"]
    )
    assert res.exit_code == 0, res.output
    ev = json.loads((run / "eval" / "eval.json").read_text())
    assert [row["guidance"] for row in ev["rows"]] == [0.0, 3.0] and ev["bits_per_dim"] > 0
    res = r.invoke(cli, ["sample", str(run), "--quiet", "--label", "10"])
    assert isinstance(res.exception, ScorelabError) and "--label must be in 0..9" in str(res.exception)
    res = r.invoke(cli, ["sample", str(run), "--quiet", "--label", "3", "--guidance", "0"])
    assert isinstance(res.exception, ScorelabError) and "--label has no effect at guidance 0" in str(res.exception)
    res = r.invoke(cli, ["evaluate", str(run), "--n", "100000000", "--no-bpd", "--max-memory", "1M", "--quiet"])
    assert isinstance(res.exception, ScorelabError) and "sampling 100000000 samples at a time needs about" in str(
        res.exception
    )
    umask = os.umask(0)
    os.umask(umask)
    for name in ("samples.safetensors", "metrics.json", "samples.png"):  # safetensors alone made its file 0600
        assert stat.S_IMODE((run / "samples" / name).stat().st_mode) == 0o666 & ~umask, name
    res = r.invoke(cli, ["sample", str(run), "--quiet", "--sampler", "nope"])
    assert res.exit_code == 2 and "nope" in res.output
    res = r.invoke(cli, ["sample", str(run), "--quiet", "--sampler", "dpm-pp-2x"])
    assert res.exit_code == 2 and "'dpm-pp-2x'" in res.output  # reported as written
    # the spelling: hyphens for underscores
    res = r.invoke(cli, ["sample", str(run), "--quiet", "--sampler", "dpmpp-2m", "--steps", "2", "--n", "4"])
    assert res.exit_code == 0, res.output
    assert json.loads((run / "samples" / "metrics.json").read_text())["sampler"] == "dpmpp_2m"
    res = r.invoke(cli, ["sample", str(run), "--quiet", "--sampler", "annealed_langevin"])
    assert isinstance(res.exception, ScorelabError) and "this run is DDPM-trained" in str(res.exception)


def test_sample_refuses_requests_beyond_the_memory_budget(tmp_path):
    cfg = _tiny_config(tmp_path, steps=10)
    assert CliRunner().invoke(cli, ["train", str(cfg), "--out", str(tmp_path / "run"), "--quiet"]).exit_code == 0
    p = _run("sample", str(tmp_path / "run"), "--n", "1000000", "--max-memory", "1M")
    assert p.returncode == 2 and p.stderr.count("\n") == 1, p.stderr
    assert "sampling 1000000 samples needs about" in p.stderr and "--max-memory" in p.stderr
    assert not (tmp_path / "run" / "samples").exists()  # refused before anything was written
    p = _run("sample", str(tmp_path / "run"), "--max-memory", "lots")
    assert p.returncode == 2 and "memory size must be" in p.stderr
    from scorelab.pipelines.sample import load_run, metrics_bytes, sampling_bytes

    conf, denoiser, _ = load_run(tmp_path / "run")
    per = sampling_bytes(conf, denoiser, 1) - metrics_bytes(conf, 1)
    # the MLP's outputs per sample: at least its hidden activations (width 32, float32) and at most a few KB
    assert 32 * 4 <= per <= 8192
    assert sampling_bytes(conf, denoiser, 1000) == 1000 * per + metrics_bytes(conf, 1000)


def test_a_run_whose_files_were_edited_or_damaged(tmp_path):
    cfg, run = _trained(tmp_path, steps=20)
    r = CliRunner()
    good = (run / "config.yaml").read_text()
    # an edited config.yaml no longer describes the checkpoint's network
    (run / "config.yaml").write_text(good.replace("width: 32", "width: 64"))
    res = r.invoke(cli, ["sample", str(run), "--quiet"])
    assert isinstance(res.exception, ScorelabError) and "model.width: 64 vs 32" in str(res.exception)
    (run / "config.yaml").write_text("data: [\n")
    res = r.invoke(cli, ["sample", str(run), "--quiet"])
    assert isinstance(res.exception, ScorelabError) and "config.yaml: not valid YAML" in str(res.exception)
    (run / "config.yaml").write_text(good)
    # a checkpoint record that is valid JSON of the wrong shape: fall back to the older checkpoint
    list_checkpoints(run / "checkpoints")[-1].write_text("[1, 2]")
    res = r.invoke(cli, ["sample", str(run), "--n", "16", "--quiet"])
    assert res.exit_code == 0 and "not a checkpoint record" in res.output, res.output
    assert json.loads((run / "samples" / "metrics.json").read_text())["step"] == 10


def test_sample_outputs_are_written_whole_or_not_at_all(tmp_path, monkeypatch):
    cfg, run = _trained(tmp_path, steps=10)
    r = CliRunner()
    out = tmp_path / "out"
    out.mkdir()
    (out / "held_out.png").write_bytes(b"stale")  # a file of this command's, from an earlier digits sampling
    assert r.invoke(cli, ["sample", str(run), "--n", "16", "--out", str(out), "--quiet"]).exit_code == 0
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json", "samples.png", "samples.safetensors"]
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def fail(*args, **kwargs):
        raise KeyboardInterrupt  # Ctrl-C while the figures are written

    monkeypatch.setattr("scorelab.pipelines.sample.scatter", fail)
    res = r.invoke(cli, ["sample", str(run), "--n", "16", "--seed", "1", "--out", str(out), "--quiet"])
    assert res.exit_code != 0
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # the earlier outputs, untouched
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no staging folder left
    res = r.invoke(cli, ["sample", str(run), "--n", "16", "--out", str(tmp_path / "new" / "deep"), "--quiet"])
    assert res.exit_code != 0 and not (tmp_path / "new").exists()  # nor the folders made for it
    monkeypatch.undo()
    (out / "notes.txt").write_text("mine")
    res = r.invoke(cli, ["sample", str(run), "--n", "16", "--out", str(out), "--quiet"])
    assert isinstance(res.exception, ScorelabError) and "did not write (notes.txt)" in str(res.exception)
    assert (out / "notes.txt").read_text() == "mine"
    (tmp_path / "afile").write_text("")
    for args in (
        ["sample", str(run), "--out", str(tmp_path / "afile" / "sub")],
        ["reproduce", "sampler-accuracy", "--quick", "--json", str(tmp_path / "afile" / "x.json")],
    ):
        p = _run(*args)
        assert p.returncode == 2 and p.stderr.startswith("error:") and p.stderr.count("\n") == 1, (args, p.stderr)


def test_resuming_a_finished_run_changes_nothing_and_steps_apply_to_diffusion_samplers_only(tmp_path):
    cfg, run = _trained(tmp_path, steps=10)
    r = CliRunner()
    summary = (run / "train.json").read_text()
    res = r.invoke(cli, ["train", str(cfg), "--resume", str(run), "--quiet"])
    assert res.exit_code == 0 and "already at step 10 of 10" in res.output, res.output
    assert (run / "train.json").read_text() == summary
    res = r.invoke(cli, ["sample", str(run), "--steps", "7", "--quiet"])
    assert isinstance(res.exception, ScorelabError) and "--steps is for diffusion samplers" in str(res.exception)


def test_the_sampling_memory_estimate_bounds_sampling_and_metrics(tmp_path):
    # measured in a fresh process: the peak resident memory that sampling 5,000 points and their metrics add
    _, run = _trained(tmp_path, steps=10)
    script = (
        "import resource, sys\n"
        "from scorelab.pipelines.sample import evaluate, generate, load_run, sampling_bytes\n"
        "cfg, den, _ = load_run(sys.argv[1])\n"
        "est = sampling_bytes(cfg, den, 5000)\n"
        "base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024\n"
        "evaluate(cfg, generate(cfg, den, 5000, 0, progress=False))\n"
        "print(est, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base)\n"
    )
    p = subprocess.run([sys.executable, "-c", script, str(run)], capture_output=True, text=True)
    estimate, used = map(int, p.stdout.split())
    assert used <= estimate, (used, estimate)


def test_out_and_resume_must_name_the_same_run(tmp_path):
    cfg, run = _trained(tmp_path, steps=10)
    res = CliRunner().invoke(cli, ["train", str(cfg), "--resume", str(run), "--out", str(tmp_path / "other")])
    assert isinstance(res.exception, ScorelabError) and "either --out or --resume" in str(res.exception)
    assert not (tmp_path / "other").exists()


def test_a_failed_swap_puts_the_earlier_outputs_back(tmp_path, monkeypatch):
    from pathlib import Path

    from scorelab.outputs import staged_output

    out = tmp_path / "out"
    out.mkdir()
    (out / "a.txt").write_text("earlier")
    real_rename = Path.rename

    def rename(self, target):
        if ".partial-" in self.name:  # the staging folder cannot be moved into place (a full disk, say)
            raise OSError(28, "No space left on device")
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", rename)
    with pytest.raises(OSError):
        with staged_output(out, lambda name: name.endswith(".txt")) as stage:
            (stage / "a.txt").write_text("newer")
    assert (out / "a.txt").read_text() == "earlier"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # neither the stage nor the moved-away folder is left


def test_evaluate_budgets_its_largest_guidance_run(tmp_path):
    """Guidance runs the model on twice the batch: the request is refused if that run does not fit, even when the
    unguided one would."""
    from scorelab.pipelines.sample import load_run, sampling_bytes

    raw = {
        "data": {"name": "digits"},
        "model": {"kind": "unet", "channels": 8, "attention_levels": [], "num_classes": 10},
        "noise": {"sigma_max": 5.0, "sigma_min": 0.05, "levels": 10},
        "train": {"cond_dropout": 0.1, "steps": 1, "batch_size": 4},
    }
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    run = tmp_path / "run"
    assert CliRunner().invoke(cli, ["train", str(cfg), "--out", str(run), "--quiet"]).exit_code == 0
    conf, denoiser, _ = load_run(run)
    unguided, guided = sampling_bytes(conf, denoiser, 8, 1.0), sampling_bytes(conf, denoiser, 8, 3.0)
    assert guided > unguided
    budget = str((unguided + guided) // 2)
    args = ["evaluate", str(run), "--n", "8", "--steps", "1", "--no-bpd", "--sampler", "euler", "--quiet"]
    res = CliRunner().invoke(cli, [*args, "--guidance", "1", "--guidance", "3", "--max-memory", budget])
    assert isinstance(res.exception, ScorelabError) and "more than the" in str(res.exception)
    assert not (run / "eval").exists()
