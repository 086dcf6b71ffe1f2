"""What `scorelab.resources.keep_freed_memory` (run by the `scorelab` command) buys a training step: glibc's default
malloc hands freed memory back to the OS, so each step faults its activations' pages in again.

    python benchmarks/bench_allocator.py      (writes benchmarks/results/allocator.json; about 3 minutes)

The model is the benchmark's 2-level U-Net (1x16x16, batch 64, fused Adam). Two measurements:

1. Cost of a page fault, in one process: steps alternate between an allocator that hands freed heap memory back
   to the OS beyond 128 KiB (many faults, by the same trim-and-regrow mechanism as the default's) and the kept one
   (almost none); the median over 30 pairs of (time difference / fault difference) is the cost of one fault. Pairs
   of neighbouring steps see the same machine, so this holds even on a machine whose speed drifts.
2. Faults of the default allocator: a fresh process (the setting cannot be undone within one) counts its faults per
   step. Faults x cost is the expected saving.

As a direct check, two processes also run at once, one thread each, pinned to different cores, one default and one
kept, swapping cores each round; on a busy or drifting machine these pairs scatter widely (and the two share memory
bandwidth, which pulls their ratio towards 1). Needs Linux with glibc and two cores.
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


def child(keep: bool, threads: int | None) -> dict:
    """Median seconds per step and minor page faults per step over STEPS steps, default or kept allocator."""
    import resource

    from scorelab.resources import keep_freed_memory

    took = keep_freed_memory() if keep else False
    step = _stepper(threads)
    faults0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    times = []
    for _ in range(STEPS):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults0) / STEPS
    return {"keep_freed_memory": took, "seconds_per_step": statistics.median(times), "page_faults_per_step": faults}


def fault_cost(pairs: int = 30) -> dict:
    """Seconds per minor page fault, from steps alternating between a faulting and the kept allocator."""
    import ctypes
    import resource

    from scorelab.resources import _M_MMAP_THRESHOLD, _M_TRIM_THRESHOLD, keep_freed_memory

    mallopt = ctypes.CDLL(None).mallopt  # main() has checked for glibc
    step = _stepper(threads=None)
    costs, extra_faults, kept_times = [], [], []
    for i in range(pairs):
        got = {}
        for faulting in (True, False) if i % 2 else (False, True):
            if faulting:  # the default's own mechanism: freed heap memory handed back (trimmed), then faulted in again
                mallopt(_M_MMAP_THRESHOLD, 2**30)
                mallopt(_M_TRIM_THRESHOLD, 128 * 1024)
            else:
                keep_freed_memory()
            step()  # settle into the setting
            f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            t0 = time.perf_counter()
            step()
            got[faulting] = (time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
        (t_f, n_f), (t_k, n_k) = got[True], got[False]
        costs.append((t_f - t_k) / max(n_f - n_k, 1))
        extra_faults.append(n_f - n_k)
        kept_times.append(t_k)
    return {
        "seconds_per_fault": statistics.median(costs),
        "seconds_per_fault_quartiles": statistics.quantiles(costs, n=4),
        "extra_faults_per_step": statistics.median(extra_faults),
        "kept_seconds_per_step": statistics.median(kept_times),
    }


def _stepper(threads):
    """The training step of bench_training's 2-level scorelab net (the same inputs and optimiser), warmed up."""
    import torch
    from bench_training import stepper

    from scorelab.models.unet import UNet

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = UNet(in_channels=1, channels=32, channel_mult=(1, 2), attention_levels=(1,), blocks_per_level=2)
    return stepper(model, lambda m, x, t: m(x, t / 250.0))[0]


def _spawn(expr: str, core: int | None = None) -> subprocess.Popen:
    pin = f"os.sched_setaffinity(0, {{{core}}}); " if core is not None else ""
    code = (
        f"import os, json, sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); {pin}"
        f"import bench_allocator as b; print(json.dumps(b.{expr}))"
    )
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)


def _result(proc: subprocess.Popen) -> dict:
    out = proc.communicate()[0]
    if proc.returncode:
        sys.exit("a child process failed")
    return json.loads(out)


def main(rounds: int = 6) -> None:
    import platform

    if not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2 or platform.libc_ver()[0] != "glibc":
        sys.exit("needs Linux with glibc, and two cores to pin the two processes to")
    default = _result(_spawn("child(False, threads=None)"))
    cost = _result(_spawn("fault_cost()"))
    saving = default["page_faults_per_step"] * cost["seconds_per_fault"]
    print(
        f"default allocator: {default['page_faults_per_step']:.0f} faults per step; one fault costs "
        f"{cost['seconds_per_fault'] * 1e6:.2f} us (quartiles {cost['seconds_per_fault_quartiles'][0] * 1e6:.2f}-"
        f"{cost['seconds_per_fault_quartiles'][2] * 1e6:.2f}); expected saving {saving * 1e3:.1f} ms of a "
        f"{cost['kept_seconds_per_step'] * 1e3:.0f} ms step ({100 * saving / cost['kept_seconds_per_step']:.1f}%)",
        flush=True,
    )
    cores = sorted(os.sched_getaffinity(0))[:2]
    rows = []
    for r in range(rounds):
        procs = {
            keep: _spawn(f"child({keep}, threads=1)", core)
            for keep, core in ((False, cores[r % 2]), (True, cores[1 - r % 2]))
        }
        got = {keep: _result(p) for keep, p in procs.items()}
        rows.append({"default": got[False], "kept": got[True]})
        ratio = got[False]["seconds_per_step"] / got[True]["seconds_per_step"]
        print(
            f"pair {r}: default {1e3 * got[False]['seconds_per_step']:.0f} ms "
            f"({got[False]['page_faults_per_step']:.0f} faults/step), "
            f"kept {1e3 * got[True]['seconds_per_step']:.0f} ms ({got[True]['page_faults_per_step']:.0f}); "
            f"ratio {ratio:.3f}",
            flush=True,
        )
    ratios = [row["default"]["seconds_per_step"] / row["kept"]["seconds_per_step"] for row in rows]
    import torch

    result = {
        "date": time.strftime("%Y-%m-%d"),
        "torch": torch.__version__,
        "model": "scorelab UNet 2 levels (32, 64), attention at level 2, 1x16x16, batch 64, fused Adam",
        "default_allocator": default,
        "fault_cost": cost,
        "expected_saving_share": saving / cost["kept_seconds_per_step"],
        "pinned_pairs_one_thread": rows,
        "pinned_pairs_speedup_median": statistics.median(ratios),
        "pinned_pairs_speedup_range": [min(ratios), max(ratios)],
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2))
    print(
        f"expected saving {100 * result['expected_saving_share']:.1f}% of a step; pinned pairs "
        f"{statistics.median(ratios):.3f}x median (range {min(ratios):.3f}-{max(ratios):.3f}); wrote {OUT}"
    )


if __name__ == "__main__":
    main()
