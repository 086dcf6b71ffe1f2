"""Voxels: render + backward time and peak memory for a 64^3 grid at 128 and 256 px, by ray marching (128 samples
per ray) and by EWA splatting through the mip pyramid. The grid holds a Gaussian blob of density with a colour
gradient.

    python benchmarks/bench_voxels.py      (writes benchmarks/results/voxels.json)
"""

from __future__ import annotations

from pathlib import Path

from _harness import measure, run

OUT = Path(__file__).parent / "results" / "voxels.json"


def child(size: str, renderer: str) -> dict:
    import torch

    from scorelab.three.cameras import orbit_cameras
    from scorelab.three.splat import splat_voxels
    from scorelab.three.voxels import VoxelGrid

    n = 64
    lin = (torch.arange(n) + 0.5) / n - 0.5
    z, y, x = torch.meshgrid(lin, lin, lin, indexing="ij")
    dens = torch.log(torch.expm1(20 * torch.exp(-(x**2 + y**2 + z**2) / (2 * 0.15**2)) + 1e-6))[None]
    grid = VoxelGrid(n, density=dens, color=torch.stack([x, y, z]) * 4)
    cam = orbit_cameras(1.1, 0.4, 2.0, width=int(size))

    def step():
        grid.zero_grad(set_to_none=True)
        if renderer == "ray_march":
            out = grid.render(cam, samples=128)
        else:
            out = splat_voxels(grid.density(), grid.color(), cam)
        (out["color"].sum() + out["mask"].sum()).backward()

    return {"grid": n, "size": int(size), "renderer": renderer, **measure(step)}


if __name__ == "__main__":
    run(__file__, child, [(s, r) for r in ("ray_march", "splat") for s in (128, 256)], OUT)
