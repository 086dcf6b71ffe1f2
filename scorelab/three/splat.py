"""Differentiable voxel splatting (Zwicker et al. 2001, 'EWA Volume Splatting'): every non-empty voxel of the mip level
that matches its screen footprint becomes an isotropic 3D Gaussian kernel, projected with the EWA Jacobian
(J W Sigma W^T J^T plus the 0.3 px^2 low-pass term) and composited front to back by the tiled Gaussian rasterizer.

Kernel: std k s for a voxel of side s (k = 0.5). Opacity: a ray through a homogeneous region crosses kernels whose
footprints, at spacing s, sum to 2 pi k^2 (the lattice sum of a 2D Gaussian of std k s), so each kernel carries the
optical depth tau = sigma s / (2 pi k^2) of its share of the column, and its peak opacity is 1 - exp(-tau); the
low-pass term is applied integral-preserving (`preserve_integral`), or small voxels would gain opacity from the blur,
and no kernel is skipped for a small alpha (`alpha_min = 0`): a fine grid is many faint kernels whose sum matters.
Colours are the voxel colours. This matches the ray-marched image where the density varies slowly over a few cells.
"""

from __future__ import annotations

import math

import torch

from .cameras import Cameras
from .gaussians import SH_C0, render_gaussians
from .voxels import footprint_level, mip_pyramid

KERNEL_STD = 0.5  # in cells


def voxel_centres(resolution: int, low: float, high: float, dtype=torch.float32, device=None) -> torch.Tensor:
    """(R^3, 3) cell centres in the (Z, Y, X) storage order of the grid."""
    lin = low + (torch.arange(resolution, dtype=dtype, device=device) + 0.5) * (high - low) / resolution
    z, y, x = torch.meshgrid(lin, lin, lin, indexing="ij")
    return torch.stack([x, y, z], -1).reshape(-1, 3)


def splat_voxels(
    density: torch.Tensor,
    color: torch.Tensor,
    cameras: Cameras,
    *,
    low: float = -0.5,
    high: float = 0.5,
    background=(1.0, 1.0, 1.0),
    min_density: float = 1e-3,
    use_pyramid: bool = True,
    max_work: int = 4_000_000,
) -> dict:
    """Render a density (1, R, R, R) and colour (3, R, R, R) grid by splatting; returns colour (N, 3, H, W) and
    mask (N, 1, H, W). With `use_pyramid`, each voxel is drawn from the pyramid level whose cells cover about one
    pixel at its depth (`footprint_level`), so distant regions draw fewer, larger kernels."""
    dens_levels, col_levels = mip_pyramid(density, color) if use_pyramid else ([density], [color])
    colors, masks = [], []
    for v in range(len(cameras)):
        cam = cameras[v]
        means, scales, opac, sh = [], [], [], []
        for level, (d, c) in enumerate(zip(dens_levels, col_levels, strict=True)):
            r = d.shape[-1]
            s = (high - low) / r
            centres = voxel_centres(r, low, high, density.dtype, density.device)
            sig = d.reshape(-1)
            keep = sig > min_density
            if use_pyramid:
                w2c = cam.world_to_cam[0].to(density.dtype)
                depth = centres @ w2c[2, :3] + w2c[2, 3]
                fine = footprint_level(
                    (high - low) / density.shape[-1], depth, float(cam.focal[0, 0]), len(dens_levels)
                )
                keep = keep & (fine == level)
            if not keep.any():
                continue
            tau = sig[keep] * s / (2 * math.pi * KERNEL_STD**2)
            means.append(centres[keep])
            scales.append(
                torch.full((int(keep.sum()), 3), math.log(KERNEL_STD * s), dtype=density.dtype, device=density.device)
            )
            opac.append(1 - torch.exp(-tau))
            sh.append(((c.reshape(3, -1).T[keep] - 0.5) / SH_C0)[:, None])
        if not means:
            bg = torch.as_tensor(background, dtype=density.dtype, device=density.device)
            colors.append(bg[:, None, None].expand(3, cam.height, cam.width))
            masks.append(torch.zeros(1, cam.height, cam.width, dtype=density.dtype, device=density.device))
            continue
        m = torch.cat(means)
        quats = torch.zeros(m.shape[0], 4, dtype=density.dtype, device=density.device)
        quats[:, 0] = 1
        out = render_gaussians(
            m,
            torch.cat(scales),
            quats,
            torch.cat(opac),
            torch.cat(sh),
            cam,
            background=background,
            max_work=max_work,
            preserve_integral=True,
            alpha_min=0.0,
        )
        colors.append(out["color"][0])
        masks.append(out["alpha"][0])
    return {"color": torch.stack(colors), "mask": torch.stack(masks)}
