"""Dense voxel grids of density and colour, a reference ray-marching renderer, and a mip pyramid.

Grid: R^3 cells over the box [low, high]^3 (default the object box [-0.5, 0.5]^3), values at cell centres, stored
(C, Z, Y, X) so that trilinear sampling is `grid_sample` with align_corners=False (cell-centred). Density is
softplus(raw) >= 0; colour is sigmoid(raw) in [0, 1]. Outside the box the density is 0.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from scorelab.errors import ScorelabError

from .cameras import Cameras, generate_rays


def trilinear(volume: torch.Tensor, points: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """Sample a (C, Z, Y, X) cell-centred volume at world points (..., 3) -> (..., C); zero outside the box."""
    shape = points.shape[:-1]
    g = (points.reshape(1, 1, 1, -1, 3) - low) / (high - low) * 2 - 1  # grid_sample wants (x, y, z) in [-1, 1]
    out = F.grid_sample(volume[None], g.to(volume.dtype), mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.reshape(volume.shape[0], -1).T.reshape(*shape, volume.shape[0])


class VoxelGrid(nn.Module):
    def __init__(self, resolution: int, *, low: float = -0.5, high: float = 0.5, density=None, color=None):
        super().__init__()
        if resolution < 2:
            raise ScorelabError(f"voxel resolution must be >= 2, got {resolution}")
        r = resolution
        self.low, self.high = low, high
        self.density_raw = nn.Parameter(torch.full((1, r, r, r), -5.0) if density is None else density)
        self.color_raw = nn.Parameter(torch.zeros(3, r, r, r) if color is None else color)

    @property
    def resolution(self) -> int:
        return self.density_raw.shape[-1]

    @property
    def cell(self) -> float:
        return (self.high - self.low) / self.resolution

    def density(self) -> torch.Tensor:
        return F.softplus(self.density_raw)

    def color(self) -> torch.Tensor:
        return torch.sigmoid(self.color_raw)

    def render(self, cameras: Cameras, **kwargs) -> dict:
        return ray_march(self.density(), self.color(), cameras, low=self.low, high=self.high, **kwargs)


def _box_hits(origins, dirs, low, high):
    """Slab test: entry and exit distances along each ray (t_far < t_near when the ray misses)."""
    inv = 1 / torch.where(dirs.abs() < 1e-12, torch.full_like(dirs, 1e-12), dirs)
    t0, t1 = (low - origins) * inv, (high - origins) * inv
    t_near = torch.minimum(t0, t1).amax(-1).clamp(min=0)
    t_far = torch.maximum(t0, t1).amin(-1)
    return t_near, t_far


def ray_march(
    density: torch.Tensor,
    color: torch.Tensor,
    cameras: Cameras,
    *,
    low: float = -0.5,
    high: float = 0.5,
    samples: int = 128,
    background=(1.0, 1.0, 1.0),
    chunk: int = 8192,
) -> dict:
    """Volume rendering by quadrature along each pixel's ray (Max 1995; Mildenhall et al. 2020, eq. 3):
    alpha_i = 1 - exp(-sigma_i delta_i), T_i = prod_{j<i} (1 - alpha_j), C = sum_i T_i alpha_i c_i + T_N bg, with
    `samples` midpoints evenly spaced between the ray's box entry and exit. Returns colour (N, 3, H, W), opacity
    (N, 1, H, W), expected camera depth (N, 1, H, W, weighted by T_i alpha_i, not normalised) and normals
    (N, 3, H, W): the composited unit negative density gradient (from the trilinear interpolant). Rays are processed
    in chunks of `chunk`, so memory is chunk x samples."""
    origins, dirs = generate_rays(cameras.to(dtype=density.dtype))
    n, h, w, _ = dirs.shape
    o, d = origins.reshape(-1, 3), dirs.reshape(-1, 3)
    forward = cameras.rotation[:, 2].to(density.dtype)  # camera z axis in world coordinates
    fz = forward[:, None, None, :].expand(n, h, w, 3).reshape(-1, 3)
    bg = torch.as_tensor(background, dtype=density.dtype, device=density.device)
    volume = torch.cat([density, color])
    outs = []
    for s in range(0, o.shape[0], chunk):
        args = (volume, o[s : s + chunk], d[s : s + chunk], fz[s : s + chunk], bg, low, high, samples)
        if torch.is_grad_enabled():
            # recompute each chunk in the backward pass: memory holds one chunk's samples, not the whole image's
            outs.append(checkpoint(_march_chunk, *args, use_reentrant=False))
        else:
            outs.append(_march_chunk(*args))
    out = torch.cat(outs).reshape(n, h, w, 8).permute(0, 3, 1, 2)
    return {"color": out[:, :3], "mask": out[:, 3:4], "depth": out[:, 4:5], "normals": out[:, 5:]}


def _march_chunk(volume, oc, dc, fc, bg, low, high, samples):
    t_near, t_far = _box_hits(oc, dc, low, high)
    delta = (t_far - t_near).clamp(min=0) / samples
    t = t_near[:, None] + (torch.arange(samples, dtype=oc.dtype, device=oc.device) + 0.5) * delta[:, None]
    pts = oc[:, None] + t[..., None] * dc[:, None]
    vals = trilinear(volume, pts, low, high)
    sigma, rgb = vals[..., 0].clamp(min=0), vals[..., 1:]
    alpha = 1 - torch.exp(-sigma * delta[:, None])
    trans = torch.cumprod(torch.cat([torch.ones_like(alpha[:, :1]), 1 - alpha[:, :-1]], 1), 1)
    weight = trans * alpha
    acc = weight.sum(1)
    col = (weight[..., None] * rgb).sum(1) + (1 - acc)[:, None] * bg
    depth = (weight * t * (dc * fc).sum(-1, keepdim=True)).sum(1)  # camera z = t (d . forward)
    nrm = (weight[..., None] * _density_normals(volume[:1], pts, low, high)).sum(1)
    return torch.cat([col, acc[:, None], depth[:, None], nrm], 1)


def _density_normals(density: torch.Tensor, pts: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """Unit negative gradient of the density at the points, by central differences of half a cell on the
    trilinear interpolant."""
    eps = 0.5 * (high - low) / density.shape[-1]
    offsets = torch.eye(3, dtype=pts.dtype, device=pts.device) * eps
    grads = [
        trilinear(density, pts + offsets[k], low, high)[..., 0]
        - trilinear(density, pts - offsets[k], low, high)[..., 0]
        for k in range(3)
    ]
    return -F.normalize(torch.stack(grads, -1), dim=-1)


def mip_pyramid(density: torch.Tensor, color: torch.Tensor, levels: int | None = None):
    """Levels of 2x averaging: density averaged, colour averaged weighted by density (so empty cells do not grey the
    colour). Level 0 is the grid itself; returns lists of (1, r, r, r) densities and (3, r, r, r) colours."""
    r = density.shape[-1]
    levels = levels or int(math.log2(r)) + 1
    dens, cols = [density], [color]
    for _ in range(1, levels):
        if dens[-1].shape[-1] < 2 or dens[-1].shape[-1] % 2:
            break
        dw = F.avg_pool3d((dens[-1] * cols[-1])[None], 2)[0]
        dn = F.avg_pool3d(dens[-1][None], 2)[0]
        cols.append(torch.where(dn > 0, dw / dn.clamp_min(1e-12), F.avg_pool3d(cols[-1][None], 2)[0]))
        dens.append(dn)
    return dens, cols


def footprint_level(cell: float, depth: torch.Tensor, focal: float, n_levels: int) -> torch.Tensor:
    """Pyramid level whose cells cover about one pixel: a cell of side s at depth z spans f s / z pixels, so level
    l (cells 2^l s) matches when 2^l f s / z ~ 1, l = clamp(floor(log2(z / (f s))), 0, n_levels - 1)."""
    ratio = depth / (focal * cell)
    return torch.floor(torch.log2(ratio.clamp(min=1.0))).clamp(0, n_levels - 1).long()
