"""Marching tetrahedra and subdivision at grids 32, 64 and 128 beside scikit-image's compiled marching cubes on the
same sphere SDF (radius 0.35) sampled at the same (resolution + 1)^3 lattice.

    python benchmarks/bench_marching.py [--quick]      (writes benchmarks/results/marching.json)

Times are medians of several runs after one warm-up (5 for marching, 3 for subdivision; --quick: grids 32 and 64
only). A grid's unique edges and edge owners are built once, before timing (reported separately), as a grid is
reused across every optimisation step. "forward_backward" differentiates the sum of the extracted vertices with
respect to the SDF values and the grid positions. Subdivision splits the surface tets; its forward+backward also
extracts the surface from the subdivided grid (whose per-grid owner table is rebuilt: the grid is new each call).
torch runs on one thread by default, as scikit-image's marching cubes does (and on a shared 2-core machine
multi-threaded timings of millisecond ops are dominated by waiting for a descheduled thread).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch
from _harness import median_time
from skimage import measure

from scorelab.three.dmtet import marching_tets, subdivide
from scorelab.three.tets import regular_grid

OUT = Path(__file__).parent / "results" / "marching.json"


def measure_resolution(res: int) -> dict:
    t0 = time.perf_counter()
    grid = regular_grid(res)
    _ = grid.edge_keys, grid.tet_edges, grid.edge_owner, grid.edges
    build = time.perf_counter() - t0
    sdf = grid.vertices.norm(dim=1) - 0.35
    volume = sdf.reshape(res + 1, res + 1, res + 1).numpy()

    def march_forward_backward():
        s = sdf.clone().requires_grad_()
        v = grid.vertices.clone().requires_grad_()
        verts, _ = marching_tets(grid, v, s)
        verts.sum().backward()

    def subdivide_forward_backward():
        s = sdf.clone().requires_grad_()
        v = grid.vertices.clone().requires_grad_()
        fine, fine_sdf = subdivide(grid, s, vertices=v)
        verts, _ = marching_tets(fine, fine.vertices, fine_sdf)
        verts.sum().backward()

    verts, faces = marching_tets(grid, grid.vertices, sdf)
    row = {
        "resolution": res,
        "tets": grid.tets.shape[0],
        "surface_vertices": verts.shape[0],
        "surface_faces": faces.shape[0],
        "grid_and_edges_once_s": build,
        "marching_tets_forward_s": median_time(lambda: marching_tets(grid, grid.vertices, sdf), 5),
        "marching_tets_forward_backward_s": median_time(march_forward_backward, 5),
        "skimage_marching_cubes_s": median_time(lambda: measure.marching_cubes(volume, 0.0), 5),
        "subdivide_forward_s": median_time(lambda: subdivide(grid, sdf), 3),
        "subdivide_march_forward_backward_s": median_time(subdivide_forward_backward, 3),
    }
    row["forward_ratio_to_skimage"] = row["marching_tets_forward_s"] / row["skimage_marching_cubes_s"]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="grids 32 and 64 only")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1, like scikit-image)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for res in (32, 64) if args.quick else (32, 64, 128):
        rows.append(measure_resolution(res))
        print(json.dumps(rows[-1]), flush=True)
    result = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "processor": platform.processor(),
        "rows": rows,
        "goal": "marching tets forward at grid 128 within 5x of scikit-image marching_cubes",
        "goal_met": None if args.quick else rows[-1]["forward_ratio_to_skimage"] <= 5,
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
