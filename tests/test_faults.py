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


def _trainer(tmp_path, steps=12, **train):
    raw = {
        "data": {"name": "ring8"},
        "model": {"kind": "mlp", "width": 16, "depth": 1},
        "noise": {"sigma_max": 5.0, "sigma_min": 0.05, "levels": 10},
        "train": {"steps": steps, "batch_size": 8, "checkpoint_every": 4, "keep_checkpoints": 5, **train},
    }
    return Trainer(config_from_dict(raw), tmp_path / "run", progress=False, log=lambda *_: None)


def _nan_batches(trainer, bad):
    """Make the batches whose call number (from 1) satisfies bad(n) all-NaN; returns the call counter."""
    real_next, calls = trainer.source.next, {"n": 0}

    def next_batch(generator):
        calls["n"] += 1
        x, y = real_next(generator)
        return (x * float("nan") if bad(calls["n"]) else x), y

    trainer.source.next = next_batch
    return calls


def test_non_finite_steps_are_skipped_counted_and_stop_the_run_after_k(tmp_path):
    trainer = _trainer(tmp_path)
    _nan_batches(trainer, lambda n: n in (3, 7, 8))
    summary = trainer.run()
    assert summary["step"] == 12 and summary["skipped_steps"] == 3
    assert json.loads((tmp_path / "run" / "train.json").read_text())["skipped_steps"] == 3
    assert all(torch.isfinite(p).all() for p in trainer.denoiser.parameters())
    _, record = load_checkpoint(list_checkpoints(tmp_path / "run" / "checkpoints")[-1])
    assert record["skipped_steps"] == 3

    # K consecutive bad steps: a clear stop, and the last good checkpoint is intact and finite
    trainer = _trainer(tmp_path / "b", steps=40)
    _nan_batches(trainer, lambda n: n >= 10)
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


def test_ema_averages_with_a_warm_up_decay():
    """decay_t = min(decay, (1 + t) / (10 + t)): the average starts close to the model and moves by 1 - decay_t."""
    from torch import nn

    from scorelab.train.ema import EMA
    from scorelab.train.flat import FlatParameters

    model = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.0)
    ema, params = EMA(model, decay=0.99), FlatParameters(model)
    assert ema.decay_at(0) == pytest.approx(0.1) and ema.decay_at(10**6) == 0.99
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update(params, step=0)  # decay 0.1: nine tenths of the way to the model
    assert ema.model.weight.item() == pytest.approx(0.9)
    ema.update(params, step=10**6)  # decay 0.99: one hundredth of the rest
    assert ema.model.weight.item() == pytest.approx(0.9 + 0.1 * 0.01)
    assert model.weight.item() == 1.0  # the average is a copy


def test_training_updates_the_ema_and_sampling_loads_it(tmp_path):
    from scorelab.pipelines.sample import load_run

    init = _trainer(tmp_path / "init").denoiser.state_dict()
    trainer = _trainer(tmp_path, steps=4)
    trainer.run()
    tensors, _ = load_checkpoint(list_checkpoints(tmp_path / "run" / "checkpoints")[-1])
    ema = {k[4:]: v for k, v in tensors.items() if k.startswith("ema.")}
    model = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
    assert ema.keys() == model.keys() == init.keys()
    assert any(not torch.equal(ema[k], init[k]) for k in ema)  # the average moved with the training
    assert any(not torch.equal(ema[k], model[k]) for k in ema)  # and is not the model itself
    _, denoiser, _ = load_run(tmp_path / "run")
    assert all(torch.equal(v, ema[k]) for k, v in denoiser.state_dict().items())  # samples come from the average


def test_the_learning_rate_warms_up_linearly_from_the_first_step(tmp_path):
    trainer = _trainer(tmp_path, steps=6, lr=1e-3, lr_warmup=4)
    seen, real_step = [], trainer.opt.step

    def step(*args, **kwargs):  # the rate each optimizer step is taken with
        seen.append(trainer.opt.param_groups[0]["lr"])
        return real_step(*args, **kwargs)

    trainer.opt.step = step
    trainer.run()
    assert seen == pytest.approx([0.25e-3, 0.5e-3, 0.75e-3, 1e-3, 1e-3, 1e-3])


def test_a_finite_loss_with_non_finite_gradients_is_skipped_and_counted(tmp_path, monkeypatch):
    from scorelab.train import trainer as trainer_module

    real_loss, calls = trainer_module.ncsn_loss, {"n": 0}

    def nan_gradients_sometimes(denoiser, *args, **kwargs):
        calls["n"] += 1
        loss = real_loss(denoiser, *args, **kwargs)
        if calls["n"] in (3, 7):  # adds 0 to the loss, and 0 * inf = NaN to a gradient
            loss = loss + 0 * torch.sqrt(0 * next(denoiser.parameters())).sum()
        return loss

    monkeypatch.setattr(trainer_module, "ncsn_loss", nan_gradients_sometimes)
    trainer = _trainer(tmp_path)
    summary = trainer.run()
    assert summary["step"] == 12 and summary["skipped_steps"] == 2
    assert all(torch.isfinite(p).all() for p in trainer.denoiser.parameters())
    assert all(torch.isfinite(p).all() for p in trainer.ema.model.parameters())


def test_the_guard_stops_at_exactly_k_consecutive_bad_steps_and_a_good_one_resets_the_count():
    from scorelab.train.guard import NonFiniteGuard

    logs = []
    guard = NonFiniteGuard("fit", log=logs.append, max_bad=3)
    for step in range(10):  # two bad steps and a good one, over and over: never three in a row
        if step % 3 == 2:
            guard.good()
        else:
            guard.bad(step)
    assert guard.skipped == 7 and len(logs) == 7
    guard.bad(10)  # the second in a row (9 was bad)
    with pytest.raises(ScorelabError, match="fit: 3 consecutive non-finite steps at step 11; stopping"):
        guard.bad(11)


def test_a_run_whose_steps_are_not_a_multiple_of_the_cadence_ends_with_a_checkpoint(tmp_path):
    trainer = _trainer(tmp_path, steps=6)  # checkpoint_every 4
    trainer.run()
    assert [p.name for p in list_checkpoints(tmp_path / "run" / "checkpoints")] == [
        "ckpt_00000004.json",
        "ckpt_00000006.json",
    ]


def test_a_run_stopped_by_non_finite_steps_keeps_its_config_and_can_be_sampled(tmp_path):
    from scorelab.pipelines.sample import load_run

    trainer = _trainer(tmp_path, steps=40)
    calls = _nan_batches(trainer, lambda n: n >= 10)
    with pytest.raises(ScorelabError, match="consecutive non-finite steps"):
        trainer.run()
    assert calls["n"] == 9 + MAX_BAD_STEPS  # nine good steps, then exactly K bad ones
    _, _, record = load_run(tmp_path / "run")  # its config.yaml is still there: the last good checkpoint is usable
    assert record["step"] == 8


def test_resume_restores_the_global_random_state_that_unet_dropout_draws_from(tmp_path):
    """U-Net dropout draws from torch's global generator: a resumed run only matches a straight one if the
    checkpoint's global state is put back."""

    def trainer(run, steps):
        raw = {
            "data": {"name": "digits"},
            "model": {"kind": "unet", "channels": 8, "attention_levels": [], "dropout": 0.5},
            "noise": {"sigma_max": 5.0, "sigma_min": 0.05, "levels": 10},
            "train": {"steps": steps, "batch_size": 4, "checkpoint_every": 2},
        }
        return Trainer(config_from_dict(raw), run, progress=False, log=lambda *_: None)

    trainer(tmp_path / "straight", 4).run()
    trainer(tmp_path / "split", 2).run()
    resumed = trainer(tmp_path / "split", 4)
    resumed.resume()
    resumed.run()
    a, _ = load_checkpoint(list_checkpoints(tmp_path / "straight" / "checkpoints")[-1])
    b, _ = load_checkpoint(list_checkpoints(tmp_path / "split" / "checkpoints")[-1])
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_training_leaves_the_callers_global_random_states_alone(tmp_path):
    """The trainer keeps its own torch, numpy and Python global states (seeded from train.seed, saved in
    checkpoints): building one, training it (with U-Net dropout drawing from torch's global generator) and resuming
    it leave the caller's generators where they were."""
    import random

    import numpy as np

    def seed():
        torch.manual_seed(123)
        np.random.seed(4)
        random.seed(5)

    def draws():
        return torch.rand(3), np.random.rand(3), random.random()

    seed()
    expected = draws()
    seed()
    raw = {
        "data": {"name": "digits"},
        "model": {"kind": "unet", "channels": 8, "attention_levels": [], "dropout": 0.5},
        "noise": {"sigma_max": 5.0, "sigma_min": 0.05, "levels": 10},
        "train": {"steps": 2, "batch_size": 4, "checkpoint_every": 2},
    }
    Trainer(config_from_dict(raw), tmp_path / "run", progress=False, log=lambda *_: None).run()
    raw["train"]["steps"] = 4
    longer = Trainer(config_from_dict(raw), tmp_path / "run", progress=False, log=lambda *_: None)
    longer.resume()
    longer.run()
    got = draws()
    assert torch.equal(got[0], expected[0]) and np.array_equal(got[1], expected[1]) and got[2] == expected[2]


def test_the_skipped_count_carries_over_a_resume(tmp_path):
    trainer = _trainer(tmp_path, steps=4)
    _nan_batches(trainer, lambda n: n == 2)
    assert trainer.run()["skipped_steps"] == 1
    raw = config_to_dict(trainer.cfg)
    raw["train"]["steps"] = 8
    longer = Trainer(config_from_dict(raw), tmp_path / "run", progress=False, log=lambda *_: None)
    longer.resume()
    assert longer.run()["skipped_steps"] == 1  # the run's count, not this session's
    _, record = load_checkpoint(list_checkpoints(tmp_path / "run" / "checkpoints")[-1])
    assert record["step"] == 8 and record["skipped_steps"] == 1


def test_label_dropout_drops_the_configured_share_of_labels(tmp_path, monkeypatch):
    from scorelab.train import trainer as trainer_module

    raw = {
        "data": {"name": "digits"},
        "model": {"kind": "unet", "channels": 8, "attention_levels": [], "num_classes": 10},
        "noise": {"sigma_max": 5.0, "sigma_min": 0.05, "levels": 10},
        "train": {"steps": 1, "batch_size": 1024, "cond_dropout": 0.25},
    }
    trainer = Trainer(config_from_dict(raw), tmp_path / "run", progress=False, log=lambda *_: None)
    seen = {}

    def record_labels(denoiser, x, sigmas, *, cond=None, generator=None):
        seen["cond"] = cond
        return (x.sum() * 0 + next(denoiser.parameters()).sum()) * 0  # finite, and cheap

    monkeypatch.setattr(trainer_module, "ncsn_loss", record_labels)
    trainer.train_step()
    dropped = (seen["cond"] == -1).float().mean().item()
    assert 0.2 <= dropped <= 0.3, dropped  # 0.25 +- 2.6 standard deviations of 1024 draws
    assert ((seen["cond"] >= 0) & (seen["cond"] < 10) | (seen["cond"] == -1)).all()


def test_gradients_are_clipped_to_train_grad_clip(tmp_path):
    trainer = _trainer(tmp_path, grad_clip=1e-4)
    assert trainer.train_step() is not None
    norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in trainer.denoiser.parameters()]))
    assert 0 < norm <= 1e-4 * (1 + 1e-5)


def test_a_checkpoint_whose_bytes_changed_fails_its_hash_check(tmp_path):
    """A flipped bit leaves a file safetensors still reads: only the hash catches it."""
    from scorelab.train.checkpoint import load_latest, save_checkpoint

    d = tmp_path / "ck"
    save_checkpoint(d, 1, {"w": torch.zeros(4)}, {}, keep=5)
    save_checkpoint(d, 2, {"w": torch.ones(4)}, {}, keep=5)
    blob = d / "ckpt_00000002.safetensors"
    data = bytearray(blob.read_bytes())
    data[-1] ^= 0xFF  # the last byte of the tensor data
    blob.write_bytes(bytes(data))
    warnings = []
    tensors, record = load_latest(d, warn=warnings.append)
    assert record["step"] == 1 and torch.equal(tensors["w"], torch.zeros(4))
    assert len(warnings) == 1 and "ckpt_00000002.safetensors is corrupt" in warnings[0]


def test_checkpoint_files_are_fsynced_before_their_rename_and_the_record_goes_last(tmp_path, monkeypatch):
    """The order that makes a checkpoint whose record exists complete: each file is flushed to disk before it is
    renamed into place, the folder after, and the tensor file before its record."""
    import os
    import stat as stat_module

    from scorelab.train.checkpoint import save_checkpoint

    events, real_fsync, real_replace = [], os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", "folder" if stat_module.S_ISDIR(os.fstat(fd).st_mode) else "file"))
        real_fsync(fd)

    def replace(src, dst):
        events.append(("rename", os.path.basename(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    save_checkpoint(tmp_path, 7, {"w": torch.zeros(1)}, {}, keep=2)
    name = "ckpt_00000007"
    assert events == [
        ("fsync", "file"),
        ("rename", f"{name}.safetensors"),
        ("fsync", "folder"),
        ("fsync", "file"),
        ("rename", f"{name}.json"),
        ("fsync", "folder"),
    ]


@pytest.mark.parametrize(
    "key, value",
    [("batch_size", 4), ("lr", 0.5), ("lr_warmup", 3), ("ema_decay", 0.5), ("seed", 1), ("grad_clip", 2.0),
     ("weighting", "x0"), ("cond_dropout", 0.1)],
)  # fmt: skip
def test_resume_refuses_every_other_training_setting(tmp_path, key, value):
    """Only train.steps, train.checkpoint_every and train.keep_checkpoints may change on a resume."""
    trainer = _trainer(tmp_path, steps=4)
    trainer.run()
    raw = config_to_dict(trainer.cfg)
    raw["train"][key] = value
    changed = Trainer(config_from_dict(raw), tmp_path / "run", progress=False, log=lambda *_: None)
    with pytest.raises(ScorelabError, match=f"train.{key}: "):
        changed.resume()


def test_a_record_without_a_step_is_not_a_checkpoint(tmp_path):
    import hashlib

    from scorelab.train.checkpoint import load_latest, save_checkpoint

    d = tmp_path / "ck"
    save_checkpoint(d, 1, {"w": torch.zeros(1)}, {}, keep=5)
    save_checkpoint(d, 2, {"w": torch.ones(1)}, {}, keep=5)
    digest = hashlib.sha256((d / "ckpt_00000002.safetensors").read_bytes()).hexdigest()
    for bad in ({"sha256": digest}, {"step": "2", "sha256": digest}):  # no step, or a step that is not a number
        (d / "ckpt_00000002.json").write_text(json.dumps(bad))
        warnings = []
        _, record = load_latest(d, warn=warnings.append)
        assert record["step"] == 1 and "is not a checkpoint record" in warnings[0]


def test_training_passes_the_configured_snr_gamma_to_the_loss(tmp_path, monkeypatch):
    from scorelab.train import trainer as trainer_module

    real, seen = trainer_module.ddpm_loss, []

    def recording(*args, **kwargs):
        seen.append((kwargs["weighting"], kwargs["gamma"]))
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer_module, "ddpm_loss", recording)
    raw = {
        "data": {"name": "ring8"},
        "model": {"kind": "mlp", "width": 16, "depth": 1},
        "noise": {"schedule": "linear", "timesteps": 50},
        "train": {"objective": "ddpm", "weighting": "min_snr", "snr_gamma": 2.5, "steps": 2, "batch_size": 8},
    }
    Trainer(config_from_dict(raw), tmp_path / "run", progress=False, log=lambda *_: None).run()
    assert seen == [("min_snr", 2.5)] * 3  # the memory estimate's probe loss, then one per step
