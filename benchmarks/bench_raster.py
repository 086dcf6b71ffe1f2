"""Triangle rasterizer: render (colour, mask, depth, normals, antialiased) + backward time and peak memory for a
20,480-face icosphere at 128 and 256 px.

    python benchmarks/bench_raster.py      (writes benchmarks/results/raster.json)

Each setting runs in a fresh subprocess; peak memory is that process's maximum resident set size (ru_maxrss) minus
its size after importing torch and building the inputs, so it counts everything the render and backward allocate.
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

OUT = Path(__file__).parent / "results" / "raster.json"


def child(size: int) -> dict:
    import torch

    from scorelab.three.cameras import orbit_cameras
    from scorelab.three.mesh import Mesh, icosphere
    from scorelab.three.raster import render_mesh

    mesh = icosphere(5, 0.5)
    colors = torch.rand(mesh.vertices.shape, generator=torch.Generator().manual_seed(0))
    cam = orbit_cameras(1.1, 0.4, 2.0, width=size)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    def step():
        v = mesh.vertices.clone().requires_grad_()
        c = colors.clone().requires_grad_()
        out = render_mesh(Mesh(v, mesh.faces, c), cam)
        (out["color"].sum() + out["mask"].sum()).backward()

    step()
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "faces": mesh.faces.shape[0],
        "size": size,
        "render_backward_s": statistics.median(times),
        "peak_extra_mb": (peak - base) / 1024,
        "threads": torch.get_num_threads(),
    }


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        print(json.dumps(child(int(sys.argv[2]))))
        return
    rows = []
    for size in (128, 256):
        res = subprocess.run(
            [sys.executable, __file__, "--child", str(size)], capture_output=True, text=True, check=True
        )
        rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"machine": platform.machine(), "rows": rows}, indent=2))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
