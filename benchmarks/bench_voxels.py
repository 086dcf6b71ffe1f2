"""Voxels: render + backward time and peak memory for a 64^3 grid at 128 and 256 px, by ray marching (128 samples per
ray, chunks of 8192 rays, checkpointed) and by EWA splatting through the mip pyramid (16 px tiles, 2M-value blocks,
checkpointed), float32.

The grid is a ball of radius 0.35 (density 30 inside, a linear ramp to 0 over 0.05, 18 % of the cells non-empty) with
a colour gradient; one camera at distance 2 (fov 49.1 deg), so at both sizes a cell spans >= 1 px and the footprint
rule draws level 0. One step = render + backward of sum(colour) + sum(mask) to the grid's raw parameters.

Method (benchmarks/_harness.py): every setting runs in a fresh subprocess; time is the median of 3 steps after one
warm-up; peak memory is the growth of the process's peak resident set size (ru_maxrss) over the step, i.e. CPU RSS,
which includes allocator caching. Results depend on the machine's load; compare rows from the same run.

    python benchmarks/bench_voxels.py      (writes benchmarks/results/voxels.json, about a minute on 2 cores)
"""

from __future__ import annotations

from pathlib import Path

from _harness import measure, run

OUT = Path(__file__).parent / "results" / "voxels.json"


def child(size: str, renderer: str) -> dict:
    import torch

    from scorelab.three.cameras import orbit_cameras
    from scorelab.three.voxels import VoxelGrid, cell_centres, pyramid_partition

    n = 64
    c = cell_centres(n)
    rho = c.norm(dim=-1).view(1, n, n, n)
    dens = (30 * ((0.35 - rho) / 0.05).clamp(0, 1)).clamp(min=1e-6)
    grid = VoxelGrid(n, density_raw=torch.log(torch.expm1(dens)), color_raw=4 * c.T.reshape(3, n, n, n))
    cam = orbit_cameras(1.1, 0.4, 2.0, width=int(size))

    def step():
        grid.zero_grad(set_to_none=True)
        out = grid.render(cam, samples=128) if renderer == "ray_march" else grid.splat(cam)
        (out["color"].sum() + out["mask"].sum()).backward()

    row = {"grid": n, "size": int(size), "renderer": renderer}
    if renderer == "splat":
        with torch.no_grad():
            dl, _ = grid.pyramid()
            parts = pyramid_partition(n, len(dl), cam)
            row["kernels_per_level"] = [int((p & (d.reshape(-1) > 1e-3)).sum()) for p, d in zip(parts, dl, strict=True)]
    else:
        row["samples_per_ray"] = 128
    return {**row, **measure(step)}


if __name__ == "__main__":
    run(__file__, child, [(s, r) for r in ("ray_march", "splat") for s in (128, 256)], OUT)
