"""3D Gaussian splatting: render + backward time and peak memory for 10k and 100k Gaussians at 128 and 256 px.
Gaussians are random in the object box, 0.03 in scale, opacity 0.12.

    python benchmarks/bench_gaussians.py      (writes benchmarks/results/gaussians.json)
"""

from __future__ import annotations

from pathlib import Path

from _harness import measure, run

OUT = Path(__file__).parent / "results" / "gaussians.json"


def child(n: str, size: str) -> dict:
    import torch

    from scorelab.three.cameras import orbit_cameras
    from scorelab.three.gaussians import Gaussians

    g = Gaussians.random_in_box(int(n), generator=torch.Generator().manual_seed(0))
    cam = orbit_cameras(1.1, 0.4, 2.0, width=int(size))

    def step():
        g.zero_grad(set_to_none=True)
        out = g.render(cam)
        (out["color"].sum() + out["alpha"].sum()).backward()

    return {"gaussians": int(n), "size": int(size), **measure(step)}


if __name__ == "__main__":
    run(__file__, child, [(n, s) for n in (10_000, 100_000) for s in (128, 256)], OUT)
