"""Triangle rasterizer: render (colour, mask, depth, normals, antialiased) + backward time and peak memory for a
20,480-face icosphere at 128 and 256 px.

    python benchmarks/bench_raster.py      (writes benchmarks/results/raster.json)
"""

from __future__ import annotations

from pathlib import Path

from _harness import measure, run

OUT = Path(__file__).parent / "results" / "raster.json"


def child(size: str) -> dict:
    import torch

    from scorelab.three.cameras import orbit_cameras
    from scorelab.three.mesh import Mesh, icosphere
    from scorelab.three.raster import render_mesh

    mesh = icosphere(5, 0.5)
    colors = torch.rand(mesh.vertices.shape, generator=torch.Generator().manual_seed(0))
    cam = orbit_cameras(1.1, 0.4, 2.0, width=int(size))

    def step():
        v = mesh.vertices.clone().requires_grad_()
        c = colors.clone().requires_grad_()
        out = render_mesh(Mesh(v, mesh.faces, c), cam)
        (out["color"].sum() + out["mask"].sum()).backward()

    return {"faces": mesh.faces.shape[0], "size": int(size), **measure(step)}


if __name__ == "__main__":
    run(__file__, child, [(128,), (256,)], OUT)
