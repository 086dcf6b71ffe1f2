"""Voxels: render + backward time and peak memory for a 64^3 grid at 128 and 256 px, by ray marching (128 samples
per ray) and by EWA splatting through the mip pyramid.

    python benchmarks/bench_gaussians.py      (writes benchmarks/results/voxels.json)

Each setting runs in a fresh subprocess; peak memory is that process's maximum resident set size (ru_maxrss) minus
its size after building the inputs. The grid holds a Gaussian blob of density with a colour gradient.
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

OUT = Path(__file__).parent / "results" / "voxels.json"


def child(n: int, size: int, renderer: str) -> dict:
    import torch

    from scorelab.three.cameras import orbit_cameras
    from scorelab.three.splat import splat_voxels
    from scorelab.three.voxels import VoxelGrid

    lin = (torch.arange(n) + 0.5) / n - 0.5
    z, y, x = torch.meshgrid(lin, lin, lin, indexing="ij")
    dens = torch.log(torch.expm1(20 * torch.exp(-(x**2 + y**2 + z**2) / (2 * 0.15**2)) + 1e-6))[None]
    grid = VoxelGrid(n, density=dens, color=torch.stack([x, y, z]) * 4)
    cam = orbit_cameras(1.1, 0.4, 2.0, width=size)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    def step():
        grid.zero_grad(set_to_none=True)
        if renderer == "ray_march":
            out = grid.render(cam, samples=128)
        else:
            out = splat_voxels(grid.density(), grid.color(), cam)
        (out["color"].sum() + out["mask"].sum()).backward()

    step()
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "grid": n,
        "size": size,
        "renderer": renderer,
        "render_backward_s": statistics.median(times),
        "peak_extra_mb": (peak - base) / 1024,
        "threads": torch.get_num_threads(),
    }


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--child":
        print(json.dumps(child(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])))
        return
    rows = []
    for renderer in ("ray_march", "splat"):
        for size in (128, 256):
            res = subprocess.run(
                [sys.executable, __file__, "--child", "64", str(size), renderer],
                capture_output=True,
                text=True,
                check=True,
            )
            rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
            print(rows[-1], flush=True)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"machine": platform.machine(), "rows": rows}, indent=2))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
