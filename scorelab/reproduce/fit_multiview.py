"""Fit each 3D representation to multi-view images of a known object (issue #4, sec. 7).

A procedural coloured object (`scorelab.three.objects.Snowman`) is rendered from 24 training and 8 held-out views at
64x64 (each pixel the mean of 4x4 rasterizer samples, over white); voxels (ray-marched), voxel splats, 3D Gaussians and
DMTet (through the rasterizer) are fitted to the training views by RGB + mask L2 and scored on the held-out views.
PSNR is over whole 64x64 images (the usual definition; the background counts), and also over the pixels that the
object or the fit covers ('object PSNR', stricter). Chamfer-L1 and F-score (tau = 1% of the object's largest side)
compare the DMTet mesh with the object's reference mesh on 100k samples each.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ..metrics.geometry import surface_metrics
from ..plots import image_grid
from ..three.cameras import orbit_cameras
from ..three.export import export_mesh, turntable
from ..three.fitting import FITTERS, Views
from ..three.objects import Snowman
from ..three.raster import render_mesh

TITLE = "Fit voxels, voxel splats, 3D Gaussians and DMTet to 24 views of a known object (PSNR >= 28 dB each)"
# the files run() writes into its folder
OUTPUTS = ("fit_multiview.png", *(f"{n}.glb" for n in FITTERS), *(f"{n}_turntable.gif" for n in FITTERS))
SIZE, SUPERSAMPLE, RADIUS = 64, 4, 1.5
TRAIN_THETA = [50.0, 70.0, 90.0, 110.0] * 6  # polar angles (degrees from +z) of the 24 training views
TRAIN_PHI = [15.0 * i for i in range(24)]
TEST_THETA = [60.0, 80.0, 100.0, 75.0] * 2  # held-out views: between the training azimuths and elevations
TEST_PHI = [45.0 * j + 22.5 for j in range(8)]

SETTINGS = {
    "voxels": {"resolution": 48, "steps": 800},
    "voxel_splats": {"resolution": 40, "steps": 600, "views_per_step": 1, "lr": 0.3},
    "gaussians": {"count": 8000, "steps": 300},
    "dmtet": {"resolution": 64, "steps": 150},
}
QUICK = {
    "voxels": {"resolution": 32, "steps": 250, "samples": 64, "rays": 2048},
    "voxel_splats": {"resolution": 24, "steps": 60, "views_per_step": 1, "lr": 0.3},
    "gaussians": {"count": 2000, "steps": 100, "views_per_step": 2},
    "dmtet": {"resolution": 32, "steps": 60},
}
TARGETS = {"psnr": 28.0, "dmtet_chamfer_l1": 0.01}
QUICK_TARGETS = {"psnr": 20.0, "dmtet_chamfer_l1": 0.03}  # a smoke run: the paper-level targets need the full run


def render_views(mesh, theta_deg, phi_deg) -> Views:
    """Ground truth: the reference mesh at SUPERSAMPLE x the resolution, box-filtered down to SIZE."""
    theta = torch.tensor(theta_deg) * math.pi / 180
    phi = torch.tensor(phi_deg) * math.pi / 180
    fine = orbit_cameras(theta, phi, RADIUS, width=SIZE * SUPERSAMPLE)
    with torch.no_grad():
        out = render_mesh(mesh, fine, background=(1.0, 1.0, 1.0))
    cams = orbit_cameras(theta, phi, RADIUS, width=SIZE)
    return Views(cams, F.avg_pool2d(out["color"], SUPERSAMPLE), F.avg_pool2d(out["mask"], SUPERSAMPLE))


def psnr(pred: torch.Tensor, target: torch.Tensor, where: torch.Tensor | None = None) -> float:
    """Peak signal-to-noise ratio for values in [0, 1]: -10 log10(MSE), over `where` (N, 1, H, W) if given."""
    err = (pred.clamp(0, 1) - target).square().mean(1, keepdim=True)
    mse = err[where].mean() if where is not None else err.mean()
    return -10 * math.log10(max(mse.item(), 1e-12))


def mask_iou(pred: torch.Tensor, target: torch.Tensor) -> float:
    """IoU of the masks thresholded at 0.5."""
    a, b = pred > 0.5, target > 0.5
    return (a & b).sum().item() / max((a | b).sum().item(), 1)


def run(out_dir: Path, *, quick: bool = False, seed: int = 0, progress: bool = True) -> dict:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    obj = Snowman()
    reference = obj.mesh(160)
    train = render_views(reference, TRAIN_THETA, TRAIN_PHI)
    test = render_views(reference, TEST_THETA, TEST_PHI)
    settings, targets = (QUICK, QUICK_TARGETS) if quick else (SETTINGS, TARGETS)
    results, renders = {}, [test.color]
    for name, fitter in FITTERS.items():
        t0 = time.perf_counter()
        fitted = fitter(train, generator=torch.Generator().manual_seed(seed), progress=progress, **settings[name])
        seconds = time.perf_counter() - t0
        color, mask = fitted.render(test.cameras)
        covered = (test.mask > 0.01) | (mask > 0.01)
        row = {
            "psnr": psnr(color, test.color),
            "object_psnr": psnr(color, test.color, covered),
            "mask_iou": mask_iou(mask, test.mask),
            "iterations": fitted.iterations,
            "skipped_steps": fitted.skipped_steps,
            "seconds": seconds,
            "settings": settings[name],
        }
        if fitted.mesh is not None:
            row.update({k: v for k, v in surface_metrics(fitted.mesh, reference).items() if k != "normal_consistency"})
            row["faces"] = int(fitted.mesh.faces.shape[0])
            if not fitted.mesh.is_empty:  # a collapsed fit scores the worst value above; there is nothing to export
                export_mesh(fitted.mesh, out_dir / f"{name}.glb")
        # a turntable of every fit at 75 degrees from the top: GIF, 24 frames
        spin = lambda phi, f=fitted: f.render(orbit_cameras(1.31, phi, RADIUS, width=SIZE))[0][0]  # noqa: E731
        turntable(spin, 24, out_dir / f"{name}_turntable.gif")
        results[name] = row
        renders.append(color.clamp(0, 1))
    figure = image_grid(torch.cat(renders) * 2 - 1, out_dir / "fit_multiview.png", nrow=len(TEST_PHI), scale=3)
    dm = results["dmtet"]
    passed = all(r["psnr"] >= targets["psnr"] for r in results.values()) and (
        dm["chamfer_l1"] <= targets["dmtet_chamfer_l1"]
    )
    table = [["representation", "PSNR", "object PSNR", "mask IoU", "Chamfer-L1", "F-score", "iterations", "seconds"]]
    for name, r in results.items():
        surface = [f"{r['chamfer_l1']:.4f}", f"{r['fscore']:.3f}"] if "chamfer_l1" in r else ["-", "-"]
        table.append(
            [
                name,
                f"{r['psnr']:.2f}",
                f"{r['object_psnr']:.2f}",
                f"{r['mask_iou']:.3f}",
                *surface,
                str(r["iterations"]),
                f"{r['seconds']:.0f}",
            ]  # fmt: skip
        )
    return {
        "object": "snowman",
        "views": {"train": len(train), "held_out": len(test), "size": SIZE, "supersample": SUPERSAMPLE},
        "results": results,
        "targets": targets,
        "quick": quick,
        "seed": seed,
        "total_seconds": time.perf_counter() - start,
        "table": table,
        "figure": str(figure),
        "passed": passed,
    }
