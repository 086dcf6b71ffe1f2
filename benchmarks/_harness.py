"""Shared by the renderer benchmarks: each setting runs in a fresh subprocess, so its peak memory (ru_maxrss minus
the size after building the inputs) is its own; times are medians after one warm-up."""

from __future__ import annotations

import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path


def median_time(fn: Callable[[], object], repeats: int = 3) -> float:
    """Median seconds of `repeats` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure(step: Callable[[], None], repeats: int = 3) -> dict:
    """Median seconds of `step` (after a warm-up) and the extra peak resident memory it needed."""
    import torch

    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    seconds = median_time(step, repeats)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"render_backward_s": seconds, "peak_extra_mb": (peak - base) / 1024, "threads": torch.get_num_threads()}


def run(script: str, child: Callable[..., dict], settings: list[tuple], out: Path) -> None:
    """As a child (`script --child ARGS`): print child(*ARGS) as JSON. As the parent: run every setting in a fresh
    subprocess and write all rows to `out`."""
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        print(json.dumps(child(*sys.argv[2:])))
        return
    rows = []
    for setting in settings:
        res = subprocess.run(
            [sys.executable, script, "--child", *map(str, setting)], capture_output=True, text=True, check=True
        )
        rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": platform.machine(), "rows": rows}, indent=2))
    print(f"wrote {out}")
