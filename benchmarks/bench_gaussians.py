"""3D Gaussian splatting: render + backward time and peak memory for 10k and 100k Gaussians at 128 and 256 px.

Gaussians are random in the object box [-0.5, 0.5]^3, isotropic, 0.03 in scale, opacity 0.12, SH degree 1, one
camera at radius 2 (fov 49.1 deg). Loss: sum of colour + mask. Each setting runs in a fresh subprocess
(`_harness.py`): time is the median of 3 render + backward steps after one warm-up; memory is the growth of the
process's peak resident set (ru_maxrss) over the size after building the inputs, which sees torch's CPU allocations
(tracemalloc does not). `render_s` is the median of 3 forward passes without autograd, measured afterwards.

    python benchmarks/bench_gaussians.py      (writes benchmarks/results/gaussians.json)
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

from _harness import measure, run

OUT = Path(__file__).parent / "results" / "gaussians.json"


def child(n: str, size: str) -> dict:
    import torch

    from scorelab.three.cameras import orbit_cameras
    from scorelab.three.gaussians import TILE, Gaussians

    g = Gaussians.random_in_box(int(n), generator=torch.Generator().manual_seed(0))
    cam = orbit_cameras(1.1, 0.4, 2.0, width=int(size))

    def step():
        g.zero_grad(set_to_none=True)
        out = g.render(cam)
        (out["color"].sum() + out["mask"].sum()).backward()

    row = {"gaussians": int(n), "size": int(size), "tile": TILE, **measure(step)}
    times = []
    with torch.no_grad():
        for _ in range(3):
            t0 = time.perf_counter()
            g.render(cam)
            times.append(time.perf_counter() - t0)
    row["render_s"] = statistics.median(times)
    return row


if __name__ == "__main__":
    run(__file__, child, [(n, s) for n in (10_000, 100_000) for s in (128, 256)], OUT)
