"""3D Gaussian splatting: render + backward time and peak memory for 10k and 100k Gaussians at 128 and 256 px.

    python benchmarks/bench_gaussians.py      (writes benchmarks/results/gaussians.json)

Each setting runs in a fresh subprocess; peak memory is that process's maximum resident set size (ru_maxrss) minus
its size after building the inputs. Gaussians are random in the object box, 0.03 in scale, opacity 0.12.
"""

from __future__ import annotations

import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

OUT = Path(__file__).parent / "results" / "gaussians.json"


def child(n: int, size: int) -> dict:
    import torch

    from scorelab.three.cameras import orbit_cameras
    from scorelab.three.gaussians import Gaussians

    g = Gaussians.random_in_box(n, generator=torch.Generator().manual_seed(0))
    cam = orbit_cameras(1.1, 0.4, 2.0, width=size)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    def step():
        g.zero_grad(set_to_none=True)
        out = g.render(cam)
        (out["color"].sum() + out["alpha"].sum()).backward()

    step()
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "gaussians": n,
        "size": size,
        "render_backward_s": statistics.median(times),
        "peak_extra_mb": (peak - base) / 1024,
        "threads": torch.get_num_threads(),
    }


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        print(json.dumps(child(int(sys.argv[2]), int(sys.argv[3]))))
        return
    rows = []
    for n in (10_000, 100_000):
        for size in (128, 256):
            res = subprocess.run(
                [sys.executable, __file__, "--child", str(n), str(size)], capture_output=True, text=True, check=True
            )
            rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
            print(rows[-1], flush=True)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"machine": platform.machine(), "rows": rows}, indent=2))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
