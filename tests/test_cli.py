"""End to end through the command line: train, resume, sample, errors."""

import contextlib
import io
import json
import os
import stat
import subprocess
import sys
from unittest import mock

import pytest
import torch
import yaml
from click.testing import CliRunner
from safetensors.torch import load_file

from scorelab.cli import cli, main
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


def straight_and_resumed(tmp_path, cfg, half_steps):
    """The last checkpoints' tensors of a run trained straight from `cfg`, and of one trained to `half_steps`, then
    resumed with `cfg` to its end."""
    r = CliRunner()
    assert r.invoke(cli, ["train", str(cfg), "--out", str(tmp_path / "straight"), "--quiet"]).exit_code == 0
    half = tmp_path / "half.yaml"
    raw = yaml.safe_load(cfg.read_text())
    raw["train"]["steps"] = half_steps
    half.write_text(yaml.safe_dump(raw))
    assert r.invoke(cli, ["train", str(half), "--out", str(tmp_path / "split"), "--quiet"]).exit_code == 0
    res = r.invoke(cli, ["train", str(cfg), "--resume", str(tmp_path / "split"), "--quiet"])
    assert res.exit_code == 0, res.output
    assert "resumed" in res.output
    a = load_file(list_checkpoints(tmp_path / "straight" / "checkpoints")[-1].with_suffix(".safetensors"))
    b = load_file(list_checkpoints(tmp_path / "split" / "checkpoints")[-1].with_suffix(".safetensors"))
    return a, b


@pytest.mark.parametrize("data", ["ring8", "digits"])  # an MLP, and a U-Net (channels-last weights, Adam state)
def test_resume_is_bit_identical_to_a_straight_run(tmp_path, data):
    a, b = straight_and_resumed(tmp_path, _tiny_config(tmp_path, data=data, steps=40), 20)
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
    """`scorelab ARGS` through the command's own entry point (main: the one-line errors and exit statuses), in this
    process: an interpreter start-up per call took 2 s. The exit status and what it printed, as subprocess gives
    them; _run_process runs a real process where the test needs one."""
    out, err, argv = io.StringIO(), io.StringIO(), sys.argv
    sys.argv = ["scorelab", *args]
    try:
        with (
            contextlib.redirect_stdout(out),
            contextlib.redirect_stderr(err),
            mock.patch("scorelab.resources.keep_freed_memory"),  # process-wide allocator setting: not in the tests'
        ):
            try:
                main()
                code = 0
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else int(e.code is not None)
    finally:
        sys.argv = argv
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


def _run_process(*args):
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
    p = _run_process("train", str(bad))  # and the same from a real `python -m scorelab` process
    assert p.returncode == 2 and p.stderr.startswith("error: ") and p.stderr.count("\n") == 1, p.stderr
    assert "unknown key 'train.stepz'" in p.stderr
    assert not (tmp_path / "runs").exists()


def test_guidance_must_be_a_finite_number(tmp_path):
    for args in (["sample", "RUN", "--guidance", "nan"], ["sample", "RUN", "--guidance", "inf"]) + (
        ["evaluate", "RUN", "--guidance", "1e400"],
    ):
        p = _run(*args)  # refused while the options are read, before the run is looked at
        assert p.returncode == 2 and p.stderr.count("\n") == 1 and "is not a finite number" in p.stderr, p.stderr


def test_training_beyond_the_memory_budget_is_refused_up_front_and_leaves_nothing(tmp_path):
    """A batch of 1e14 2-D points (800 TB) is refused by the estimate before anything is written; with the budget
    raised past it, the allocation itself fails, and that is one line too, naming the settings to lower."""
    raw = yaml.safe_load(_tiny_config(tmp_path).read_text())
    raw["train"]["batch_size"] = 10**14
    cfg = tmp_path / "huge.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    p = _run("train", str(cfg), "--out", str(tmp_path / "runs" / "huge"), "--quiet")
    assert p.returncode == 2 and p.stderr.count("\n") == 1, p.stderr
    assert p.stderr.startswith(f"error: training at batch size {10**14} needs about ") and "TB" in p.stderr
    assert "the available memory; lower train.batch_size" in p.stderr and "raise --max-memory" in p.stderr
    assert not (tmp_path / "runs").exists()
    p = _run_process(
        "train", str(cfg), "--out", str(tmp_path / "runs" / "huge"), "--quiet", "--max-memory", "10000000T"
    )
    assert p.returncode == 2 and p.stderr.count("\n") == 1, p.stderr
    assert p.stderr.startswith("error: out of memory") and "train.batch_size" in p.stderr
    assert not (tmp_path / "runs").exists()  # the config it had written and the folders it made are gone
    res = CliRunner().invoke(
        cli, ["train", str(_tiny_config(tmp_path)), "--out", str(tmp_path / "runs" / "tiny"), "--max-memory", "1M"]
    )
    assert isinstance(res.exception, ScorelabError) and "allowed by --max-memory" in str(res.exception)
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("case", ["ring8", "digits", "parameter-heavy"])
def test_the_training_memory_estimate_bounds_training(tmp_path, case):
    """Measured in a fresh process set up as the scorelab command sets it up: the peak resident memory that
    training adds (20 steps, two checkpoints) stays under the estimate, which also must not move training's random
    streams. The parameter-heavy MLP (76 MiB of weights, batch 2) is dominated by the optimiser state and the
    checkpoint copies, the other two by activations and the fixed overhead."""
    raw = yaml.safe_load(_tiny_config(tmp_path, data="digits" if case == "digits" else "ring8", steps=20).read_text())
    raw["train"]["batch_size"] = 256
    if case == "parameter-heavy":
        raw["model"].update(width=1024, depth=6)
        raw["train"].update(batch_size=2, steps=4, checkpoint_every=2)
    cfg = tmp_path / "big.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    script = (
        "import resource, sys, torch\n"
        "from scorelab.config import load_config\n"
        "from scorelab.resources import keep_freed_memory\n"
        "from scorelab.train.trainer import Trainer\n"
        "keep_freed_memory()\n"
        "t = Trainer(load_config(sys.argv[1]), sys.argv[2], progress=False, log=lambda *a: None)\n"
        "states = torch.get_rng_state(), t.generator.get_state()\n"
        "est = t.memory_estimate()\n"
        "assert torch.equal(states[0], torch.get_rng_state()) and torch.equal(states[1], t.generator.get_state())\n"
        "base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024\n"
        "t.run()\n"
        "print(est, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base)\n"
    )
    p = subprocess.run([sys.executable, "-c", script, str(cfg), str(tmp_path / "run")], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    estimate, used = map(int, p.stdout.split())
    assert used <= estimate, (used, estimate)


def test_train_refuses_a_folder_of_other_files_and_resume_says_what_is_missing(tmp_path):
    cfg = _tiny_config(tmp_path, steps=10)
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    p = _run("train", str(cfg), "--out", str(folder))
    assert p.returncode == 2 and "holds files that are not a run's (notes.txt)" in p.stderr, p.stderr
    assert [f.name for f in folder.iterdir()] == ["notes.txt"]
    p = _run("train", str(cfg), "--resume", str(tmp_path / "nope"))
    assert p.returncode == 2 and f"run directory '{tmp_path / 'nope'}' does not exist" in p.stderr, p.stderr
    (tmp_path / "early").mkdir()  # a run stopped before its first checkpoint: its config and nothing else
    (tmp_path / "early" / "config.yaml").write_text(cfg.read_text())
    p = _run("train", str(cfg), "--resume", str(tmp_path / "early"))
    assert p.returncode == 2 and "train it again without --resume" in p.stderr, p.stderr
    p = _run("train", str(cfg), "--resume", str(folder))  # not a run at all
    assert p.returncode == 2 and f"{folder} is not a run directory (no config.yaml)" in p.stderr, p.stderr


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


_DDPM = {
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


def _trained_ddpm(tmp_path):
    """A tiny class-conditional DDPM digits run (T = 50, guidance 3 and 4 steps by default)."""
    cfg = tmp_path / "ddpm.yaml"
    cfg.write_text(yaml.safe_dump(_DDPM))
    run = tmp_path / "run"
    assert CliRunner().invoke(cli, ["train", str(cfg), "--out", str(run), "--quiet"]).exit_code == 0
    return run


def test_conditional_ddpm_train_sample_evaluate(tmp_path):
    run = _trained_ddpm(tmp_path)
    r = CliRunner()
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


def test_one_command_never_takes_another_commands_outputs_for_its_own(tmp_path):
    """The manifest names the command that wrote the folder: samples in X are not a reproduction's to replace."""
    cfg, run = _trained(tmp_path)
    out = tmp_path / "x"
    assert CliRunner().invoke(cli, ["sample", str(run), "--n", "16", "--out", str(out), "--quiet"]).exit_code == 0
    before = sorted(p.name for p in out.iterdir())
    res = CliRunner().invoke(cli, ["reproduce", "ncsn-toy", "--quick", "--out", str(out), "--quiet"])
    assert isinstance(res.exception, ScorelabError) and "holds files this command did not write" in str(res.exception)
    assert sorted(p.name for p in out.iterdir()) == before


def test_evaluate_refuses_what_it_cannot_do_before_the_bits_per_dim_and_owns_only_its_files(tmp_path):
    from scorelab.outputs import MANIFEST

    cfg = tmp_path / "trailing.yaml"
    cfg.write_text(yaml.safe_dump({**_DDPM, "sample": {**_DDPM["sample"], "schedule": "trailing"}}))
    run = tmp_path / "run"
    r = CliRunner()
    assert r.invoke(cli, ["train", str(cfg), "--out", str(run), "--quiet"]).exit_code == 0
    res = r.invoke(cli, ["evaluate", str(run), "--n", "4", "--steps", "51", "--quiet"])
    assert isinstance(res.exception, ScorelabError) and "takes at most 50 steps, got 51" in str(res.exception)
    assert "bits/dim" not in res.output and not (run / "eval").exists()
    for twice in (["--guidance", "0.1", "--guidance", "0.10000001"], ["--guidance", "1", "--guidance", "1"]):
        res = r.invoke(cli, ["evaluate", str(run), "--n", "4", *twice])
        assert isinstance(res.exception, ScorelabError) and "repeats a run or gives two" in str(res.exception)
    from scorelab.pipelines.sample import generate, load_run

    conf, den, _ = load_run(run)
    with pytest.raises(ScorelabError, match="--steps must be >= 1"):  # 0 was taken for "the config's steps"
        generate(conf, den, 4, 0, steps=0, progress=False)
    res = r.invoke(cli, ["sample", str(run), "--steps", "100000", "--quiet"])
    assert res.exit_code == 2 and "100000 is not in the range 1<=x<100000" in res.output, res.output
    args = ["evaluate", str(run), "--n", "4", "--steps", "2", "--no-bpd", "--quiet", "--guidance"]
    assert r.invoke(cli, [*args, "1"]).exit_code == 0
    wrote = ["dpmpp_2m_g1.png", "eval.json"]
    assert sorted(p.name for p in (run / "eval").iterdir()) == sorted([MANIFEST, *wrote])
    assert r.invoke(cli, [*args, "3"]).exit_code == 0  # replaces the first evaluation whole
    assert sorted(p.name for p in (run / "eval").iterdir()) == sorted([MANIFEST, "dpmpp_2m_g3.png", "eval.json"])
    (run / "eval" / "my_figure.png").write_text("mine")
    res = r.invoke(cli, [*args, "1"])
    assert isinstance(res.exception, ScorelabError) and "did not write (my_figure.png)" in str(res.exception)
    assert (run / "eval" / "my_figure.png").read_text() == "mine"


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
    newest = list_checkpoints(run / "checkpoints")[-1]
    record = json.loads(newest.read_text())
    newest.write_text("[1, 2]")
    res = r.invoke(cli, ["sample", str(run), "--n", "16", "--quiet"])
    assert res.exit_code == 0 and "not a checkpoint record" in res.output, res.output
    assert json.loads((run / "samples" / "metrics.json").read_text())["step"] == 10
    newest.write_text(json.dumps({k: v for k, v in record.items() if k != "config"}))  # a record without its config
    res = r.invoke(cli, ["sample", str(run), "--n", "16", "--quiet"])
    assert res.exit_code == 0 and "(needs 'step', 'sha256', 'config'); trying an older" in res.output, res.output
    bad = {**record, "config": {**record["config"], "model": {**record["config"]["model"], "width": "wide"}}}
    for config, says in ((bad, "(model.width:"), ({**record, "config": None}, "(not a mapping)")):
        newest.write_text(json.dumps(config))
        res = r.invoke(cli, ["sample", str(run), "--n", "16", "--quiet"])
        assert isinstance(res.exception, ScorelabError), res.output
        assert str(res.exception).startswith(f"checkpoint {newest} holds a config that does not load {says}")


def test_sample_outputs_are_written_whole_or_not_at_all(tmp_path, monkeypatch):
    from scorelab.outputs import MANIFEST

    cfg, run = _trained(tmp_path, steps=10)
    r = CliRunner()
    out = tmp_path / "out"
    out.mkdir()
    (out / "held_out.png").write_bytes(b"stale")  # a file of this command's, from an earlier digits sampling
    assert r.invoke(cli, ["sample", str(run), "--n", "16", "--out", str(out), "--quiet"]).exit_code == 0
    assert sorted(p.name for p in out.iterdir()) == [MANIFEST, "metrics.json", "samples.png", "samples.safetensors"]
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
        with staged_output(out, lambda name: name.endswith(".txt"), "test") as stage:
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


def _label_sensitive(denoiser):
    """The denoiser with its weights jittered: a few training steps leave the label's effect at ~1e-6, too small
    to tell the conditional, the unconditional and the guided model apart."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in denoiser.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return denoiser


def test_generate_hands_the_sampler_the_trained_noise_range_the_guided_clamped_model_and_the_labels(
    tmp_path, monkeypatch
):
    from scorelab.pipelines import sample as sp
    from scorelab.schedules import alphas_cumprod, beta_schedule, discrete_sigmas, sigma_from_alpha_bar

    cfg, den, _ = sp.load_run(_trained_ddpm(tmp_path))
    den = _label_sensitive(den)
    calls = []

    def spy(name):
        def record(model, x, sigmas, *, cond, **kwargs):
            calls.append({"name": name, "model": model, "x": x, "sigmas": sigmas, "cond": cond})
            return x

        return record

    for name in list(sp.SAMPLERS):
        monkeypatch.setitem(sp.SAMPLERS, name, spy(name))

    def call(**kwargs):
        sp.generate(cfg, den, 200, 0, progress=False, **kwargs)
        return calls[-1]

    ab = alphas_cumprod(beta_schedule("linear", 50))
    s_max = float(sigma_from_alpha_bar(ab[-1]))
    c = call(sampler="unipc", steps=3, guidance=3.0, label=7)
    sig = c["sigmas"]
    assert c["name"] == "unipc" and (c["cond"] == 7).all()
    assert len(sig) == 4 and sig[-1] == 0 and (sig[1:] < sig[:-1]).all()  # --steps positive sigmas, then 0
    assert float(sig[0]) == pytest.approx(s_max, rel=1e-5)  # from the top of the trained DDPM range
    assert float(c["x"].std()) == pytest.approx((1 + s_max**2) ** 0.5, rel=0.05)  # x_T ~ N(0, I) in sigma space
    one = call(sampler="euler", steps=1)["sigmas"]
    assert one.tolist() == pytest.approx([s_max, 0.0], rel=1e-5)  # one step: denoise straight from the top
    assert torch.equal(call(steps=5)["sigmas"], call(steps=5, schedule="lognormal")["sigmas"])  # the config's
    assert not torch.equal(call(steps=5)["sigmas"], call(steps=5, schedule="karras")["sigmas"])
    trailing = call(steps=5, schedule="trailing")["sigmas"]
    assert all(s in discrete_sigmas(ab, torch.arange(50)).tolist() for s in trailing[:-1].tolist())
    assert calls[-1]["name"] == "dpmpp_2m"  # the config's sampler
    assert torch.equal(call()["cond"], torch.arange(200) % 10)  # without --label: the classes in turn
    # the model the sampler gets: guidance on D (scale 1 conditional, 0 unconditional), clamped to [-1, 1]
    x = 3 * torch.randn(6, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    s, y, null = torch.full((6,), 1.5), torch.full((6,), 7), torch.full((6,), -1)
    d_c, d_u = den(x, s, y), den(x, s, null)
    assert not torch.allclose(d_c, d_u, atol=1e-3) and (d_u + 3 * (d_c - d_u)).abs().max() > 1.2
    for g, want in ((3.0, d_u + 3 * (d_c - d_u)), (1.0, d_c), (0.0, d_u)):
        torch.testing.assert_close(call(guidance=g)["model"](x, s, y), want.clamp(-1, 1))


def test_generate_runs_annealed_langevin_over_the_run_s_levels_from_sigma_max(tmp_path, monkeypatch):
    from scorelab.config import config_from_dict
    from scorelab.models.build import build_denoiser
    from scorelab.pipelines import sample as sp
    from scorelab.schedules import geometric_sigmas

    raw = yaml.safe_load(_tiny_config(tmp_path, data="digits").read_text())
    raw["model"]["num_classes"] = 10
    cfg = config_from_dict(raw)
    calls = []

    def record(model, x, sigmas, **kwargs):
        calls.append({"x": x, "sigmas": sigmas, **kwargs})
        return x

    monkeypatch.setattr(sp, "annealed_langevin", record)
    sp.generate(cfg, build_denoiser(cfg), 500, 0, progress=False)
    c = calls[-1]
    assert float(c["x"].std()) == pytest.approx(5.0, rel=0.05)  # the sigma_max-perturbed data ~ N(0, sigma_max^2)
    torch.testing.assert_close(c["sigmas"], torch.cat([geometric_sigmas(5.0, 0.05, 10), torch.zeros(1)]))
    assert c["steps_per_level"] == 2 and c["step_size"] == 1e-3 and torch.equal(c["cond"], torch.arange(500) % 10)
    raw["sample"]["final_denoise"] = False
    sp.generate(config_from_dict(raw), build_denoiser(cfg), 4, 0, progress=False)
    torch.testing.assert_close(calls[-1]["sigmas"], geometric_sigmas(5.0, 0.05, 10))  # no final denoising step


def test_sample_writes_the_requested_samples_their_figures_and_metrics(tmp_path):
    import numpy as np
    from PIL import Image

    from scorelab.data.digits import load_digits_split
    from scorelab.pipelines.sample import evaluate, generate, load_run
    from scorelab.plots import image_grid

    run = _trained_ddpm(tmp_path)
    args = ["--sampler", "euler", "--steps", "3", "--guidance", "2", "--label", "7", "--n", "12", "--seed", "5"]
    res = CliRunner().invoke(cli, ["sample", str(run), *args, "--quiet"])  # not the config's 4 steps, guidance 3
    assert res.exit_code == 0, res.output
    cfg, den, _ = load_run(run)
    want = generate(cfg, den, 12, 5, sampler="euler", steps=3, guidance=2.0, label=7, progress=False)
    assert not torch.equal(
        want, generate(cfg, den, 12, 6, sampler="euler", steps=3, guidance=2.0, label=7, progress=False)
    )
    out = run / "samples"
    assert torch.equal(load_file(out / "samples.safetensors")["samples"], want)
    m = json.loads((out / "metrics.json").read_text())
    assert (m["sampler"], m["steps"], m["guidance"], m["seed"], m["n"]) == ("euler", 3, 2.0, 5, 12)
    figures = evaluate(cfg, want, torch.full((12,), 7))
    for k in ("conditional_accuracy", "within_class_diversity", "frechet", "confident_share"):
        assert m[k] == figures[k], k
    want_png = image_grid(want, tmp_path / "want.png", nrow=10)
    real_png = image_grid(load_digits_split("test")[0][:100], tmp_path / "real.png", nrow=10)  # held-out digits
    for name, expected in (("samples.png", want_png), ("held_out.png", real_png)):
        assert np.array_equal(np.asarray(Image.open(out / name)), np.asarray(Image.open(expected))), name


def test_toy_metrics_compare_the_samples_with_fresh_data():
    from scorelab.data.toys import ring8_mixture, sample_toy
    from scorelab.pipelines.sample import toy_metrics

    real = sample_toy("ring8", 400, torch.Generator().manual_seed(1))
    good, bad = toy_metrics("ring8", real), toy_metrics("ring8", real * 1.5)
    for m in (good, bad):
        assert m["sw2_over_floor"] == pytest.approx(m["sw2"] / m["sw2_noise_floor"])
        rel = (torch.tensor(m["ring_component_std"]) / float(ring8_mixture().stds[0, 0]) - 1).abs()
        assert m["ring_std_max_rel_error"] == pytest.approx(rel.max().item())  # the worst component, not the mean
    assert good["sw2_over_floor"] < 2 < bad["sw2_over_floor"]
    assert bad["mmd"] > 10 * abs(good["mmd"])


def test_evaluate_rows_are_each_sampler_and_guidance_s_own_figures(tmp_path, monkeypatch):
    import numpy as np
    from PIL import Image

    from scorelab.pipelines import evaluate as ev
    from scorelab.pipelines.sample import generate, load_run

    run = _trained_ddpm(tmp_path)
    cfg, den, _ = load_run(run)
    seen = []
    real_evaluate = ev.evaluate
    monkeypatch.setattr(ev, "evaluate", lambda c, x, y, i, p: seen.append((x, y)) or real_evaluate(c, x, y, i, p))
    args = ["--n", "110", "--steps", "2", "--sampler", "euler", "--sampler", "unipc", "--guidance", "0", "--guidance"]
    res = CliRunner().invoke(cli, ["evaluate", str(run), *args, "3", "--no-bpd", "--quiet"])
    assert res.exit_code == 0, res.output
    rows = json.loads((run / "eval" / "eval.json").read_text())["rows"]
    assert [(r["sampler"], r["guidance"]) for r in rows] == [("euler", 0), ("euler", 3), ("unipc", 0), ("unipc", 3)]
    for row, (x, y) in zip(rows, seen, strict=True):
        want = generate(cfg, den, 110, 0, sampler=row["sampler"], steps=2, guidance=row["guidance"], progress=False)
        assert torch.equal(x, want) and torch.equal(y, torch.arange(110) % 10)  # accuracy against the asked class
        grid = Image.open(run / "eval" / f"{row['sampler']}_g{row['guidance']:g}.png")
        assert grid.size == ((10 * 9 + 1) * 4,) * 2  # the first 100 of the 110 samples, 10 to a row
        expected = Image.open(ev.image_grid(want[:100], tmp_path / "want.png", nrow=10))
        assert np.array_equal(np.asarray(grid), np.asarray(expected))
    res = CliRunner().invoke(cli, ["evaluate", str(run), "--n", "4", "--steps", "1", "--no-bpd", "--quiet"])
    assert res.exit_code == 0, res.output
    rows = json.loads((run / "eval" / "eval.json").read_text())["rows"]
    assert [r["guidance"] for r in rows] == [0.0, 1.0, 3.0]  # a conditional run's default scales


def test_held_out_bits_per_dim_is_the_bound_on_the_test_digits_in_bits(tmp_path, monkeypatch):
    import math

    from scorelab.config import config_from_dict
    from scorelab.data.digits import load_digits_split
    from scorelab.models.build import build_denoiser
    from scorelab.objectives.elbo import VariationalBound
    from scorelab.pipelines import evaluate as ev
    from scorelab.schedules import alphas_cumprod, beta_schedule

    raw = yaml.safe_load(yaml.safe_dump(_DDPM))
    raw["noise"]["timesteps"] = 10  # a short bound: the test compares figures, not their quality
    cfg = config_from_dict(raw)
    den = _label_sensitive(build_denoiser(cfg).eval().requires_grad_(False))
    x, y = load_digits_split("test")
    vb = VariationalBound(
        alphas_cumprod(beta_schedule("linear", 10)), variance="large", decoder="discretized", levels=17
    )
    got = {}
    for conditional, cond in ((True, y), (False, torch.full_like(y, -1))):
        nats = vb.per_sample(den, x, cond=cond, generator=torch.Generator().manual_seed(0)).mean().item()
        got[conditional] = ev.held_out_bits_per_dim(cfg, den, conditional=conditional, progress=False)
        assert got[conditional] == pytest.approx(nats / (64 * math.log(2)), rel=1e-6), conditional
    assert got[True] != pytest.approx(got[False], rel=1e-4)  # the true label matters to this network
    monkeypatch.setattr(ev, "held_out_bits_per_dim", lambda cfg, den, *, conditional, **kw: float(conditional))
    run = _trained_ddpm(tmp_path)
    res = CliRunner().invoke(cli, ["evaluate", str(run), "--n", "2", "--steps", "1", "--guidance", "1", "--quiet"])
    assert res.exit_code == 0, res.output
    result = json.loads((run / "eval" / "eval.json").read_text())
    assert result["bits_per_dim"] == 1.0 and result["bits_per_dim_unconditional"] == 0.0


_TINY_DEMO = {
    "ncsn-toy2d": {
        "model": {"width": 32, "depth": 1},
        "noise": {"levels": 10},
        "train": {"steps": 4, "batch_size": 16},
        "sample": {"n": 100},
    },
    "ncsn-digits": {
        "model": {"channels": 8, "channel_mult": [1], "attention_levels": [], "blocks_per_level": 1},
        "noise": {"levels": 4},
        "train": {"steps": 2, "batch_size": 8},
        "sample": {"n": 20, "steps_per_level": 1},
    },
    "ddpm-digits": {
        "model": {"channels": 8, "channel_mult": [1], "attention_levels": [], "blocks_per_level": 1},
        "noise": {"timesteps": 50},
        "train": {"steps": 2, "batch_size": 8},
    },
}


def test_the_demo_report_shows_every_section_and_each_figure_it_names_exists(tmp_path, monkeypatch):
    import re

    import numpy as np
    from PIL import Image

    from scorelab.metrics.digits import conditional_report
    from scorelab.pipelines import demo
    from scorelab.pipelines.sample import generate, load_run
    from scorelab.plots import image_grid

    monkeypatch.setattr(demo, "DEMO_OVERRIDES", _TINY_DEMO)
    toy = {"langevin_weight": 0.5, "annealed_weight": 0.79, "true_weight": 0.8, "passed": True}

    def ncsn_toy(out_dir, progress=True):  # tests/test_reproduce.py runs the reproduction itself
        out_dir.mkdir(parents=True)
        return {**toy, "figure": image_grid(torch.zeros(1, 1, 2, 2), out_dir / "ncsn_toy.png")}

    monkeypatch.setattr(demo.ncsn_toy, "run", ncsn_toy)
    out = tmp_path / "demo"
    page = demo.run_demo(out, progress=False, log=lambda *a: None).read_text()
    sources = re.findall(r"<img src=['\"]([^'\"]+)['\"]", page)
    assert len(sources) == 6 + 2 * 3 + 3
    for src in sources:
        assert (out / src).is_file(), src
    for heading in ("<h2>1.", "<h2>2.", "<h2>3.", "<h2>4.", "<h2>5."):
        assert heading in page
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["ncsn_toy"] == toy
    for section, run in (("toy2d", "toy2d"), ("digits", "digits")):
        sampled = json.loads((out / run / "samples" / "metrics.json").read_text())
        assert {k: v for k, v in metrics[section].items() if k != "train"} == sampled
        assert (
            metrics[section]["train"]["step"]
            == _TINY_DEMO[f"ncsn-{'toy2d' if run == 'toy2d' else 'digits'}"]["train"]["steps"]
        )
        assert "<tr><td>sw2</td>" in page if section == "toy2d" else "<tr><td>frechet</td>" in page
    assert list(metrics["edits"]) == list(demo.DEMO_EDITS)
    for name, edit in metrics["edits"].items():
        assert edit == json.loads((out / "ddpm-digits" / name / "metrics.json").read_text())
        assert edit["inputs"] == 100 and len(edit["rows"]) == (4 if name == "sdedit" else 1)
        assert f"<img src='ddpm-digits/{name}/{demo.DEMO_EDITS[name]['kind']}.png' width='30%'>" in page
    first = metrics["edits"]["sdedit"]["rows"][0]
    assert f"<tr><td>sdedit</td><td>t0 0.03 (sigma {first['sigma_start']:.3g})</td>" in page
    assert f"<td>{first['input_class_kept']:.3f}</td>" in page
    rows = metrics["ddpm_digits"]["guidance"]
    assert [(r["sampler"], r["guidance"]) for r in rows] == [(s, g) for s in ("dpmpp_2m", "unipc") for g in (0, 1, 3)]
    cfg, den, _ = load_run(out / "ddpm-digits")
    x = generate(cfg, den, 200, 0, sampler="unipc", steps=20, guidance=3.0, progress=False)
    report = conditional_report(x, torch.arange(200) % 10)  # the classes in turn: one column per class
    assert rows[-1]["conditional_accuracy"] == report["conditional_accuracy"]
    assert rows[-1]["within_class_diversity"] == report["within_class_diversity"]
    grid = Image.open(out / "ddpm-digits" / "grid_unipc_g3.png")
    assert np.array_equal(np.asarray(grid), np.asarray(Image.open(image_grid(x[:100], tmp_path / "want.png", nrow=10))))
    shown = "<td>unipc</td><td>3</td><td><img src='ddpm-digits/grid_unipc_g3.png' width='160'></td>"
    assert (
        shown + f"<td>{report['conditional_accuracy']:.3f}</td><td>{report['within_class_diversity']:.2f}</td>" in page
    )


def test_the_demo_score_field_and_trajectory_figures_plot_what_they_say(tmp_path, monkeypatch):
    from scorelab.config import config_from_dict
    from scorelab.data.toys import ring8_mixture
    from scorelab.pipelines import demo
    from scorelab.pipelines.sample import generate

    drawn = {}

    def spy(name):
        def record(what, out, **kwargs):
            drawn[name] = what
            return out

        return record

    monkeypatch.setattr(demo, "quiver", spy("quiver"))
    monkeypatch.setattr(demo, "trajectories", spy("paths"))
    exact = ring8_mixture()  # the exact denoiser: the learned panel must match the exact one
    demo._score_field_figure(lambda x, s: exact(x.double(), s.double()).float(), tmp_path / "field.png")
    (p1, learned), (p2, truth) = drawn["quiver"].values()
    assert torch.equal(p1, p2) and p1.shape == (21 * 21, 2)
    torch.testing.assert_close(learned, truth, rtol=1e-3, atol=1e-4)
    raw = yaml.safe_load(_tiny_config(tmp_path).read_text())  # levels 5 ... 0.05, 2 steps each
    cfg = config_from_dict(raw)
    demo._trajectory_figure(cfg, lambda x, s, c=None: exact(x.double(), s.double()).float(), tmp_path / "t.png")
    paths = drawn["paths"]
    # geometric 5 -> 0.05 over 10 levels: the last 3 (0.166, 0.0905, 0.05) are <= 0.2, 2 steps each, then the final
    assert paths.shape == (3 * 2 + 1, 16, 2)
    final = generate(cfg, lambda x, s, c=None: exact(x.double(), s.double()).float(), 16, seed=1, progress=False)
    assert torch.equal(paths[-1], final)


def test_the_toy_sample_figure_puts_fresh_data_and_the_samples_in_their_own_panels(tmp_path, monkeypatch):
    from scorelab.data.toys import sample_toy

    _, run = _trained(tmp_path)
    panels = {}
    monkeypatch.setattr("scorelab.pipelines.sample.scatter", lambda sets, path, **kw: panels.update(sets) or path)
    assert CliRunner().invoke(cli, ["sample", str(run), "--n", "30", "--quiet"]).exit_code == 0
    assert list(panels) == ["data", "samples"]
    assert torch.equal(panels["samples"], load_file(run / "samples" / "samples.safetensors")["samples"])
    assert torch.equal(panels["data"], sample_toy("ring8", 30, torch.Generator().manual_seed(10_000)))


def test_a_rerun_demo_continues_its_runs_and_trains_again_those_it_cannot_continue(tmp_path, monkeypatch):
    """The demo owns runs/demo: a rerun resumes a run with its settings and network version, and trains from scratch
    a run an older scorelab (another model format) or other demo settings made, saying so (not an error)."""
    import copy

    from scorelab.models.build import MODEL_FORMATS
    from scorelab.pipelines import demo

    monkeypatch.setattr(demo, "DEMO_OVERRIDES", copy.deepcopy(_TINY_DEMO))
    run, logs = tmp_path / "digits", []
    demo._train("ncsn-digits", run, False, logs.append)
    demo.DEMO_OVERRIDES["ncsn-digits"]["train"]["steps"] = 3  # a longer demo continues the run
    assert demo._train("ncsn-digits", run, False, logs.append)["step"] == 3
    assert f"resumed {run} at step 2" in logs and not any("again" in line for line in logs)

    record = sorted((run / "checkpoints").glob("ckpt_*.json"))[-1]
    record.write_text(json.dumps({**json.loads(record.read_text()), "model_format": MODEL_FORMATS["unet"] - 1}))
    logs.clear()
    assert demo._train("ncsn-digits", run, False, logs.append)["step"] == 3
    old, new = MODEL_FORMATS["unet"] - 1, MODEL_FORMATS["unet"]
    want = f"{run} holds a unet of model format {old}, and this scorelab builds format {new}: training it again"
    assert logs[0] == want
    assert not any(line.startswith("resumed") for line in logs)  # from scratch: the old weights are gone
    assert [p.name for p in sorted((run / "checkpoints").glob("ckpt_*.json"))][-1] == "ckpt_00000003.json"
    assert json.loads(sorted((run / "checkpoints").glob("ckpt_*.json"))[-1].read_text())["model_format"] == new

    demo.DEMO_OVERRIDES["ncsn-digits"]["train"]["batch_size"] = 4
    logs.clear()
    demo._train("ncsn-digits", run, False, logs.append)
    assert logs[0] == f"{run} was trained with other demo settings (train.batch_size: 4 vs 8): training it again"


def test_the_demo_refuses_a_folder_with_files_it_did_not_write_and_deletes_nothing(tmp_path, monkeypatch):
    """A stale run in the demo folder is trained again from scratch (above), which removes its folder: so the demo
    first refuses any folder holding files it did not write, anywhere it writes, before any work."""
    import copy

    from scorelab.pipelines import demo

    monkeypatch.setattr(demo, "DEMO_OVERRIDES", copy.deepcopy(_TINY_DEMO))
    out = tmp_path / "demo"
    demo._train("ncsn-digits", out / "digits", False, lambda *a: None)
    demo.check_demo_folder(out)  # a demo run alone is the demo's
    # and what scorelab's own commands leave there: an evaluation, a reproduction's manifest, a killed stage
    assert (
        CliRunner().invoke(cli, ["evaluate", str(out / "digits"), "--n", "4", "--steps", "1", "--quiet"]).exit_code == 0
    )
    assert CliRunner().invoke(cli, ["reproduce", "ncsn-toy", "--quick", "--out", str(out / "ncsn-toy")]).exit_code == 0
    (out / "digits" / ".samples.partial-99").mkdir()
    demo.check_demo_folder(out)
    for mine in ("notes.txt", "digits/notes.txt", "digits/samples/mine.png", "digits/checkpoints/best.pt"):
        (out / mine).parent.mkdir(exist_ok=True)
        (out / mine).write_text("mine")
        monkeypatch.setattr(demo.ncsn_toy, "run", lambda *a, **k: pytest.fail("work began"))
        with pytest.raises(ScorelabError, match=f"holds files the demo did not write \\({mine}\\); move them"):
            demo.run_demo(out, progress=False, log=lambda *a: None)
        assert (out / mine).read_text() == "mine"
        (out / mine).unlink()
    (tmp_path / "afile").write_text("")
    with pytest.raises(ScorelabError, match="is a file"):
        demo.check_demo_folder(tmp_path / "afile")


def test_metrics_files_are_strict_json_with_null_for_what_could_not_be_measured(tmp_path):
    """Two samples reach at most two of the ring's eight components: the others' spreads are NaN, which JSON does
    not have (Python wrote a bare NaN that strict parsers refuse); they are null now."""
    cfg, run = _trained(tmp_path)
    res = CliRunner().invoke(cli, ["sample", str(run), "--n", "2", "--quiet"])
    assert res.exit_code == 0, res.output

    def refuse(constant):
        raise AssertionError(f"{constant} in metrics.json")

    metrics = json.loads((run / "samples" / "metrics.json").read_text(), parse_constant=refuse)
    assert metrics["ring_std_max_rel_error"] is None and [None, None] in metrics["ring_component_std"]
    assert all(w >= 0 for w in metrics["ring_component_weights"])


def test_usage_errors_point_to_the_commands_help_and_reproduce_lists_its_names():
    from scorelab.reproduce import REPRODUCTIONS

    p = _run("train", "x.yaml", "--quiet=yes")
    assert p.returncode == 2 and p.stderr.strip().endswith("(see 'scorelab train --help')"), p.stderr
    res = CliRunner().invoke(cli, ["reproduce", "nope", "--list"])
    assert isinstance(res.exception, ScorelabError) and "give a reproduction's NAME or --list" in str(res.exception)
    assert all(name in cli.commands["reproduce"].help for name in REPRODUCTIONS)
    p = subprocess.run([sys.executable, "-m", "scorelab.cli", "--help"], capture_output=True, text=True)
    assert p.returncode == 0 and "Commands:" in p.stdout


def test_the_package_and_the_command_report_the_same_version():
    import scorelab

    res = CliRunner().invoke(cli, ["--version"])
    assert res.exit_code == 0 and res.output.strip().endswith(f"version {scorelab.__version__}"), res.output
    assert scorelab.__version__.count(".") >= 1


def test_the_demo_report_rounds_metrics_inside_lists_too():
    from scorelab.pipelines.demo import _row

    row = _row("ring_component_std", [[0.10120494291808588, 0.10479629474551916], [0.1112, 0.2]])
    assert "(0.101, 0.105), (0.111, 0.2)" in row and "0.10120494" not in row
    assert "0.09832<" in _row("sw2", 0.098321234)
    assert ">the held-out digits<" in _row("reference", "the held-out digits")
