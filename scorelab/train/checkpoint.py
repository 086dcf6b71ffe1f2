"""Checkpoints: safetensors for tensors (no pickle) plus a JSON of config, step and content hash.

A checkpoint is `ckpt_STEP.safetensors` and `ckpt_STEP.json`; both are written to a temporary file,
fsynced and renamed, the JSON last, so a checkpoint whose JSON exists and whose hash matches is whole.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from pathlib import Path

import torch
from safetensors.torch import load, save

from ..errors import ScorelabError, warn


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    # fault injection (scorelab.train.faults): pause half-way through each write, like a slow disk, so that kills
    # land inside writes; unset in normal use
    pause = float(os.environ.get("SCORELAB_FAULT_SLOW_WRITES") or 0)
    with open(tmp, "wb") as f:
        if pause > 0:
            f.write(data[: len(data) // 2])
            f.flush()
            time.sleep(pause)
            data = data[len(data) // 2 :]
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def save_checkpoint(directory: Path, step: int, tensors: dict[str, torch.Tensor], meta: dict, keep: int) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    # copies: parameters that are views into one flat buffer share memory, which safetensors refuses
    blob = save({k: v.detach().cpu().clone(memory_format=torch.contiguous_format) for k, v in tensors.items()})
    stem = directory / f"ckpt_{step:08d}"
    _atomic_write(stem.with_suffix(".safetensors"), blob)
    record = {"step": step, "sha256": hashlib.sha256(blob).hexdigest(), **meta}
    _atomic_write(stem.with_suffix(".json"), json.dumps(record, indent=2).encode())
    records = list_checkpoints(directory)
    # records past this step belong to a timeline abandoned by a fallback resume: they go, then all but the newest keep
    later = [p for p in records if _step_of(p) > step]
    for old in later + [p for p in records if p not in later][:-keep]:
        old.unlink(missing_ok=True)
        old.with_suffix(".safetensors").unlink(missing_ok=True)
    return stem.with_suffix(".safetensors")


_RECORD = re.compile(r"ckpt_([0-9]+)\.json")


def _step_of(record_path: Path) -> int:
    return int(_RECORD.fullmatch(record_path.name).group(1))


def list_checkpoints(directory: Path) -> list[Path]:
    """The JSON records of complete checkpoints, oldest first (by the step in the name, which is zero-padded to 8
    digits and grows past them); other files, such as ckpt_latest.json, are not checkpoints and are left alone."""
    records = [p for p in Path(directory).glob("ckpt_*.json") if _RECORD.fullmatch(p.name)]
    return sorted(records, key=_step_of)


def load_checkpoint(record_path: Path, needs: tuple[str, ...] = ()) -> tuple[dict[str, torch.Tensor], dict]:
    """Load one checkpoint, checking its hash; raises ScorelabError naming the file if it is damaged or its record
    lacks one of the keys in `needs`."""
    try:
        record = json.loads(record_path.read_text())
        blob_path = record_path.with_suffix(".safetensors")
        blob = blob_path.read_bytes()
    except (OSError, ValueError) as e:
        raise ScorelabError(f"checkpoint {record_path} is unreadable ({e.__class__.__name__})") from None
    missing = [k for k in needs if not isinstance(record, dict) or k not in record]
    if not isinstance(record, dict) or not isinstance(record.get("step"), int) or "sha256" not in record or missing:
        keys = ", ".join(repr(k) for k in ("step", "sha256", *needs))
        raise ScorelabError(f"checkpoint {record_path} is not a checkpoint record (needs {keys})")
    if hashlib.sha256(blob).hexdigest() != record.get("sha256"):
        raise ScorelabError(f"checkpoint {blob_path} is corrupt (content hash does not match its record)")
    return load(blob), record  # the very bytes that were hashed


def load_latest(directory: Path, warn=warn, needs: tuple[str, ...] = ()) -> tuple[dict[str, torch.Tensor], dict]:
    """The newest good checkpoint in a directory (whose record has the keys in `needs`), falling back past damaged
    ones and saying so."""
    records = list_checkpoints(directory)
    if not records:
        raise ScorelabError(f"no checkpoint found in {directory}")
    for record_path in reversed(records):
        try:
            return load_checkpoint(record_path, needs)
        except ScorelabError as e:
            warn(f"warning: {e}; trying an older checkpoint")
    raise ScorelabError(f"every checkpoint in {directory} is damaged")
