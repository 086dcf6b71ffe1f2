"""Marching tetrahedra and subdivision at grids 32, 64 and 128 beside scikit-image's compiled marching cubes on the
same sphere SDF sampled at the same resolution.

    python benchmarks/bench_marching.py      (writes benchmarks/results/marching.json)

Times are medians of 5 runs after one warm-up; the grid's unique edges are built once, before timing, as a grid is
reused across every optimisation step.
"""

from __future__ import annotations

import json
import platform
import statistics
import time
from pathlib import Path

import torch
from skimage import measure

from scorelab.three.dmtet import marching_tets, subdivide
from scorelab.three.tets import regular_grid

OUT = Path(__file__).parent / "results" / "marching.json"


def timed(fn, repeats: int = 5) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure_resolution(res: int) -> dict:
    grid = regular_grid(res)
    t0 = time.perf_counter()
    _ = grid.edges
    edge_build = time.perf_counter() - t0
    sdf = grid.vertices.norm(dim=1) - 0.35
    volume = sdf.reshape(res + 1, res + 1, res + 1).numpy()

    def forward_backward():
        s = sdf.clone().requires_grad_()
        v = grid.vertices.clone().requires_grad_()
        verts, _ = marching_tets(grid, v, s)
        verts.sum().backward()

    row = {
        "resolution": res,
        "tets": grid.tets.shape[0],
        "unique_edges_once_s": edge_build,
        "marching_tets_forward_s": timed(lambda: marching_tets(grid, grid.vertices, sdf)),
        "marching_tets_forward_backward_s": timed(forward_backward),
        "subdivide_s": timed(lambda: subdivide(grid, sdf)),
        "skimage_marching_cubes_s": timed(lambda: measure.marching_cubes(volume, 0.0)),
    }
    row["ratio_to_skimage"] = row["marching_tets_forward_s"] / row["skimage_marching_cubes_s"]
    return row


def main() -> None:
    rows = []
    for res in (32, 64, 128):
        rows.append(measure_resolution(res))
        print(json.dumps(rows[-1]), flush=True)
    result = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "rows": rows,
        "goal_within_5x_at_128": rows[-1]["ratio_to_skimage"] <= 5,
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
