"""Faults injected into real training: SIGKILL at random moments (scorelab.train.faults), SIGTERM / SIGINT, and
non-finite losses."""

import json
import signal
import subprocess
import sys
import time

import pytest
import torch

from scorelab.config import config_from_dict, config_to_dict
from scorelab.errors import ScorelabError
from scorelab.train import faults
from scorelab.train.checkpoint import list_checkpoints, load_checkpoint
from scorelab.train.guard import MAX_BAD_STEPS
from scorelab.train.trainer import Trainer


def test_ten_sigkills_never_corrupt_a_checkpoint_and_the_run_ends_bit_identical(tmp_path):
    report = faults.run(tmp_path, kills=10, seed=0, log=lambda *_: None)
    assert report["final_bit_identical_to_uninterrupted"]
    steps = [e["newest_checkpoint"] for e in report["events"]]
    assert steps == sorted(steps) and steps[-1] > steps[0]  # every life made progress; none went back
    # kills landing inside checkpoint writes: the debris is there, and it never broke a resume
    assert report["kills_during_checkpoint_writes"] >= 1, report["events"]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_and_sigint_save_a_checkpoint_and_exit_with_a_message(tmp_path, sig):
    config = faults.tiny_config(tmp_path / "tiny.yaml", steps=100_000)
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "scorelab", "train", str(config), "--out", str(run), "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while not list_checkpoints(run / "checkpoints"):
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[0]
        time.sleep(0.02)
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 128 + sig, out
    name = signal.Signals(sig).name
    assert f"{name} received: saved checkpoint at step" in out and "--resume" in out
    step = int(out.split("saved checkpoint at step ")[1].split()[0])
    _, record = load_checkpoint(list_checkpoints(run / "checkpoints")[-1])
    assert record["step"] == step > 0  # the checkpoint written on the signal, not the last periodic one


def _trainer(tmp_path, steps=12):
    raw = {
        "data": {"name": "ring8"},
        "model": {"kind": "mlp", "width": 16, "depth": 1},
        "noise": {"sigma_max": 5.0, "sigma_min": 0.05, "levels": 10},
        "train": {"steps": steps, "batch_size": 8, "checkpoint_every": 4, "keep_checkpoints": 5},
    }
    return Trainer(config_from_dict(raw), tmp_path / "run", progress=False, log=lambda *_: None)


def test_non_finite_steps_are_skipped_counted_and_stop_the_run_after_k(tmp_path):
    trainer = _trainer(tmp_path)
    real_next, calls = trainer.source.next, {"n": 0}

    def sometimes_nan(generator):
        calls["n"] += 1
        x, y = real_next(generator)
        return (x * float("nan") if calls["n"] in (3, 7, 8) else x), y

    trainer.source.next = sometimes_nan
    summary = trainer.run()
    assert summary["step"] == 12 and summary["skipped_steps"] == 3
    assert json.loads((tmp_path / "run" / "train.json").read_text())["skipped_steps"] == 3
    assert all(torch.isfinite(p).all() for p in trainer.denoiser.parameters())
    _, record = load_checkpoint(list_checkpoints(tmp_path / "run" / "checkpoints")[-1])
    assert record["skipped_steps"] == 3

    # K consecutive bad steps: a clear stop, and the last good checkpoint is intact and finite
    trainer = _trainer(tmp_path / "b", steps=40)
    real_next, calls["n"] = trainer.source.next, 0

    def nan_from_the_tenth(generator):
        calls["n"] += 1
        x, y = real_next(generator)
        return (x * float("nan") if calls["n"] >= 10 else x), y

    trainer.source.next = nan_from_the_tenth
    with pytest.raises(ScorelabError, match=f"{MAX_BAD_STEPS} consecutive non-finite steps at step 9"):
        trainer.run()
    tensors, record = load_checkpoint(list_checkpoints(tmp_path / "b" / "run" / "checkpoints")[-1])
    assert record["step"] == 8 and all(torch.isfinite(v.float()).all() for v in tensors.values())


def test_fault_script_entry_point_rejects_bad_arguments():
    res = subprocess.run(
        [sys.executable, "-m", "scorelab.train.faults", "--kills", "0"], capture_output=True, text=True
    )
    assert res.returncode == 2 and "--kills must be >= 1" in res.stderr


def test_checkpoints_carry_the_global_random_states(tmp_path):
    """torch's global generator, numpy's and Python's `random` are saved and restored with the rest of the state."""
    import random

    import numpy as np

    from scorelab.train.trainer import rng_states, set_rng_states

    torch.manual_seed(5)
    np.random.seed(6)
    random.seed(7)
    random.gauss(0, 1)  # leaves a cached Gaussian in Python's state
    saved = rng_states()
    first = (torch.rand(3), np.random.rand(3), random.random(), random.gauss(0, 1))
    set_rng_states(saved)
    again = (torch.rand(3), np.random.rand(3), random.random(), random.gauss(0, 1))
    assert torch.equal(first[0], again[0]) and np.array_equal(first[1], again[1]) and first[2:] == again[2:]
    trainer = _trainer(tmp_path)
    assert {"rng.torch", "rng.numpy", "rng.python"} <= trainer.state_tensors().keys()


def test_a_fresh_run_seeds_every_global_generator(tmp_path):
    """Unseeded, numpy and Python start from OS entropy, so two fresh runs of one config would save different global
    states and a killed-and-resumed run could never match a straight one: the trainer seeds them from train.seed."""
    import random

    import numpy as np

    random.seed(None)
    np.random.seed(None)
    first = {k: v for k, v in _trainer(tmp_path / "a").state_tensors().items() if k.startswith("rng.")}
    random.seed(None)
    np.random.seed(None)
    second = {k: v for k, v in _trainer(tmp_path / "b").state_tensors().items() if k.startswith("rng.")}
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


def test_a_signal_during_non_finite_steps_still_saves_and_stops(tmp_path):
    trainer = _trainer(tmp_path, steps=40)
    real_next, calls = trainer.source.next, {"n": 0}

    def nan_after_six(generator):
        calls["n"] += 1
        x, y = real_next(generator)
        if calls["n"] == 7:
            trainer._stop_signal = signal.SIGTERM  # as the handler would set it
        return (x * float("nan") if calls["n"] > 6 else x), y

    trainer.source.next = nan_after_six
    with pytest.raises(SystemExit) as stop:
        trainer.run()
    assert stop.value.code == 128 + signal.SIGTERM
    _, record = load_checkpoint(list_checkpoints(tmp_path / "run" / "checkpoints")[-1])
    assert record["step"] == 6  # the last completed step, saved although the steps after it were skipped


def test_resume_refuses_a_changed_training_setting_but_takes_more_steps(tmp_path):
    trainer = _trainer(tmp_path, steps=4)
    trainer.run()
    raw = config_to_dict(trainer.cfg)
    raw["train"]["steps"] = 8
    longer = Trainer(config_from_dict(raw), tmp_path / "run", progress=False, log=lambda *_: None)
    longer.resume()
    assert longer.run()["step"] == 8
    raw["train"]["lr"] = 0.5
    changed = Trainer(config_from_dict(raw), tmp_path / "run", progress=False, log=lambda *_: None)
    with pytest.raises(ScorelabError, match=r"train.lr: 0.5 vs 0.001"):
        changed.resume()


def test_a_save_after_a_fallback_drops_the_abandoned_newer_records(tmp_path):
    from scorelab.train.checkpoint import save_checkpoint

    d = tmp_path / "ck"
    for step in (10, 20, 30):
        save_checkpoint(d, step, {"w": torch.zeros(1)}, {}, keep=5)
    # the run fell back from 30 to 20 and goes on: 30's record is from a timeline that no longer exists
    save_checkpoint(d, 25, {"w": torch.ones(1)}, {}, keep=5)
    assert [p.stem for p in list_checkpoints(d)] == ["ckpt_00000010", "ckpt_00000020", "ckpt_00000025"]


def test_checkpoints_order_by_step_past_the_eight_padded_digits(tmp_path):
    from scorelab.train.checkpoint import save_checkpoint

    d = tmp_path / "ck"
    for step in (99_999_999, 100_000_000, 100_000_001):  # "ckpt_100000000" sorts before "ckpt_99999999" as text
        save_checkpoint(d, step, {"w": torch.full((1,), float(step))}, {}, keep=2)
    assert [p.stem for p in list_checkpoints(d)] == ["ckpt_100000000", "ckpt_100000001"]


def test_files_that_only_look_like_checkpoints_are_neither_listed_nor_deleted(tmp_path):
    from scorelab.train.checkpoint import save_checkpoint

    d = tmp_path / "ck"
    d.mkdir()
    for name in ("ckpt_latest.json", "ckpt_\u00b2.json", "ckpt_12.json.bak"):
        (d / name).write_text("{}")
    for step in (1, 2, 3):
        save_checkpoint(d, step, {"w": torch.zeros(1)}, {}, keep=1)
    assert [p.name for p in list_checkpoints(d)] == ["ckpt_00000003.json"]
    assert (d / "ckpt_latest.json").exists() and (d / "ckpt_\u00b2.json").exists()
