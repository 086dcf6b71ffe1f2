"""Fault injection: kill a real `scorelab train` process with SIGKILL at random moments, resume it each time, and check
that no checkpoint is ever unreadable, that each resume starts from the newest checkpoint, and that the run which
survived the kills ends bit-identical to one that was never interrupted.

    python -m scorelab.train.faults [--kills 10] [--seed 0] [--dir DIR]

Checkpoints are written every `CHECKPOINT_EVERY` steps of a tiny model, and each file write pauses half-written for
`SLOW_WRITE_S` (SCORELAB_FAULT_SLOW_WRITES, as on a slow disk), so a good share of the random kills land while a
checkpoint is being written; the report counts those (kills that left a `.tmp` file, or a tensor file whose record
was not yet written). Exit status 0 when every check holds. Also run by tests/test_faults.py.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file

from .checkpoint import list_checkpoints, load_checkpoint

CHECKPOINT_EVERY = 3
STEPS = 400
SLOW_WRITE_S = 0.01  # each checkpoint file write pauses half-written for this long (a slow disk)


def tiny_config(path: Path, steps: int = STEPS) -> Path:
    raw = {
        "data": {"name": "ring8"},
        "model": {"kind": "mlp", "width": 32, "depth": 1},
        "noise": {"sigma_max": 5.0, "sigma_min": 0.05, "levels": 10},
        "train": {"steps": steps, "batch_size": 16, "checkpoint_every": CHECKPOINT_EVERY, "keep_checkpoints": 3},
        "sample": {"n": 64, "steps_per_level": 2, "step_size": 1e-3},
    }
    path.write_text(yaml.safe_dump(raw))
    return path


def _train(config: Path, run: Path, resume: bool) -> subprocess.Popen:
    where = ["--resume", str(run)] if resume else ["--out", str(run)]
    cmd = [sys.executable, "-m", "scorelab", "train", str(config), *where, "--quiet"]
    # unbuffered, so that what a life printed before its SIGKILL (the step it resumed from) is not lost
    env = {**os.environ, "SCORELAB_FAULT_SLOW_WRITES": str(SLOW_WRITE_S), "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


def _newest_step(ckpt_dir: Path) -> int:
    records = list_checkpoints(ckpt_dir)
    return json.loads(records[-1].read_text())["step"] if records else -1


def _audit(ckpt_dir: Path, since: float) -> dict:
    """Load every complete checkpoint (raises if one is unreadable) and count the debris of interrupted writes that
    this life left (modified after `since`)."""
    steps = [load_checkpoint(r)[1]["step"] for r in list_checkpoints(ckpt_dir)]
    records = {p.with_suffix("") for p in ckpt_dir.glob("ckpt_*.json")}
    orphans = [p for p in ckpt_dir.glob("ckpt_*.safetensors") if p.with_suffix("") not in records]
    tmp = list(ckpt_dir.glob("*.tmp"))
    return {
        "steps": steps,
        "tmp": sum(p.stat().st_mtime >= since for p in tmp),
        "orphans": sum(p.stat().st_mtime >= since for p in orphans),
    }


def run(work: Path, *, kills: int = 10, seed: int = 0, log=print) -> dict:
    rng = random.Random(seed)
    config = tiny_config(work / "tiny.yaml")
    straight, faulty = work / "straight", work / "faulty"
    proc = _train(config, straight, resume=False)
    out, _ = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"the uninterrupted run failed:\n{out}")
    ckpt = faulty / "checkpoints"
    events, newest = [], -1
    for k in range(kills):
        born = time.time() - 1e-3
        proc = _train(config, faulty, resume=k > 0)
        deadline = time.time() + 120
        while _newest_step(ckpt) <= newest:  # wait until this life has made progress
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"training life {k} ended before writing a checkpoint:\n{proc.communicate()[0]}")
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.25))
        if proc.poll() is not None:
            raise RuntimeError(f"training finished before kill {k}; raise STEPS")
        os.kill(proc.pid, signal.SIGKILL)
        said = proc.communicate()[0]
        if k > 0 and f"at step {newest}\n" not in said.split("resumed", 1)[-1][:200]:
            raise AssertionError(f"life {k} did not resume from the newest good checkpoint (step {newest}):\n{said}")
        audit = _audit(ckpt, born)  # every complete checkpoint must load with a matching hash
        resumed_from = max(audit["steps"])
        if resumed_from < newest:
            raise AssertionError(f"after kill {k} the newest checkpoint went back from {newest} to {resumed_from}")
        newest = resumed_from
        events.append({"kill": k, "newest_checkpoint": newest, **audit})
        log(f"kill {k + 1}/{kills}: newest good checkpoint at step {newest}, {audit['tmp']} partial temp files, "
            f"{audit['orphans']} tensor files without a record")  # fmt: skip
    proc = _train(config, faulty, resume=True)
    out, _ = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"the final resume failed:\n{out}")
    a = load_file(list_checkpoints(straight / "checkpoints")[-1].with_suffix(".safetensors"))
    b = load_file(list_checkpoints(ckpt)[-1].with_suffix(".safetensors"))
    identical = a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)
    mid_write = sum(1 for e in events if e["tmp"] or e["orphans"])
    return {
        "kills": kills,
        "kills_during_checkpoint_writes": mid_write,
        "checkpoint_every": CHECKPOINT_EVERY,
        "steps": STEPS,
        "final_bit_identical_to_uninterrupted": identical,
        "events": events,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dir", type=Path, default=None, help="work directory (default: a temporary one)")
    args = parser.parse_args(argv)
    if args.kills < 1:
        parser.error("--kills must be >= 1")
    with tempfile.TemporaryDirectory() as tmp:
        work = args.dir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        report = run(work, kills=args.kills, seed=args.seed)
    print(json.dumps({k: v for k, v in report.items() if k != "events"}, indent=2))
    return 0 if report["final_bit_identical_to_uninterrupted"] else 1


if __name__ == "__main__":
    sys.exit(main())
