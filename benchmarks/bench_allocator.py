"""What `scorelab.resources.keep_freed_memory` (run by the `scorelab` command) buys a training step: glibc's default
malloc hands freed memory back to the OS, so each step faults its activations' pages in again.

    python benchmarks/bench_allocator.py      (writes benchmarks/results/allocator.json)

The setting cannot be undone within a process, so two processes run at once, one thread each, pinned to different
cores, one with the default allocator and one with the setting; they swap cores every round, so both see the same
spells of a shared machine. Each process times 20 training steps of the benchmark's 2-level U-Net (1x16x16,
batch 64, fused Adam) after a warm-up and counts its minor page faults per step. The figure is the median over rounds
of the paired ratio, default time / kept time.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

OUT = Path(__file__).parent / "results" / "allocator.json"
STEPS = 20


def child(keep: bool) -> dict:
    import resource

    import torch
    import torch.nn.functional as F

    from scorelab.models.unet import UNet
    from scorelab.resources import keep_freed_memory

    took = keep_freed_memory() if keep else False
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = UNet(in_channels=1, channels=32, channel_mult=(1, 2), attention_levels=(1,), blocks_per_level=2)
    x, target, sigma = torch.randn(64, 1, 16, 16), torch.randn(64, 1, 16, 16), torch.rand(64)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4, fused=True)

    def step():
        opt.zero_grad(set_to_none=True)
        F.mse_loss(model(x, sigma), target).backward()
        opt.step()

    for _ in range(3):
        step()
    faults0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    times = []
    for _ in range(STEPS):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults0) / STEPS
    return {"keep_freed_memory": took, "seconds_per_step": statistics.median(times), "page_faults_per_step": faults}


def main(rounds: int = 6) -> None:
    if not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2:
        sys.exit("needs Linux and two cores to pin the two processes to")
    cores = sorted(os.sched_getaffinity(0))[:2]
    rows = []
    for r in range(rounds):
        procs = {}
        for keep, core in ((False, cores[r % 2]), (True, cores[1 - r % 2])):
            code = f"import os, json, sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); os.sched_setaffinity(0, {{{core}}}); from bench_allocator import child; print(json.dumps(child({keep})))"
            procs[keep] = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        got = {keep: json.loads(p.communicate()[0]) for keep, p in procs.items()}
        if any(p.returncode for p in procs.values()):
            sys.exit("a child process failed")
        rows.append({"default": got[False], "kept": got[True]})
        ratio = got[False]["seconds_per_step"] / got[True]["seconds_per_step"]
        print(
            f"round {r}: default {got[False]['seconds_per_step'] * 1e3:.0f} ms ({got[False]['page_faults_per_step']:.0f} "
            f"faults/step), kept {got[True]['seconds_per_step'] * 1e3:.0f} ms ({got[True]['page_faults_per_step']:.0f}); "
            f"ratio {ratio:.3f}",
            flush=True,
        )
    ratios = [row["default"]["seconds_per_step"] / row["kept"]["seconds_per_step"] for row in rows]
    import torch

    result = {
        "date": time.strftime("%Y-%m-%d"),
        "torch": torch.__version__,
        "model": "scorelab UNet 2 levels (32, 64), attention at level 2, 1x16x16, batch 64, fused Adam, 1 thread",
        "rounds": rows,
        "paired_speedup_median": statistics.median(ratios),
        "paired_speedup_range": [min(ratios), max(ratios)],
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2))
    print(f"keeping freed memory: {statistics.median(ratios):.3f}x median (range {min(ratios):.3f}-{max(ratios):.3f}); wrote {OUT}")


if __name__ == "__main__":
    main()
