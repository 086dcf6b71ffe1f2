"""Dense voxel grids of density and colour, a reference ray-marching renderer, and a mip pyramid.

Conventions (world units, camera convention of docs/cameras.md):
- A grid has R cells per side over the axis-aligned box [low, high]^3 (default the object box [-0.5, 0.5]^3); cell
  side s = (high - low) / R. Values live at cell centres low + (i + 1/2) s. Tensors are stored (C, Z, Y, X): index
  [c, k, j, i] is the cell whose centre has world coordinates (x_i, y_j, z_k).
- Density sigma >= 0 in 1 / world unit; `VoxelGrid` stores raw values and uses sigma = softplus(raw). Colour is RGB in
  [0, 1]; `VoxelGrid` stores logits and uses sigmoid(logits). The free functions below take activated tensors:
  density (1, R, R, R) and colour (3, R, R, R).
- Trilinear sampling is `F.grid_sample(..., align_corners=False)`: with that flag the normalised coordinate -1 is the
  outer edge of the first cell and +1 the outer edge of the last one, which is exactly the cell-centred layout. Between
  the outermost centres and the box faces values are held constant (border padding); outside the box they are zero.
  So a grid of constant value c is exactly c everywhere inside the box, and a linear field is reproduced exactly
  inside the hull of the centres.
"""

from __future__ import annotations

import math
import numbers

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from scorelab.data.images import check_background
from scorelab.errors import ScorelabError

from .cameras import Cameras, check_cameras, generate_rays
from .mesh import safe_normalize


def _check_volume(name: str, volume: torch.Tensor, channels: int | None) -> None:
    """A cubic volume (channels, R, R, R); channels None: any number of channels."""
    if (
        not isinstance(volume, torch.Tensor)
        or volume.dim() != 4
        or (channels is not None and volume.shape[0] != channels)
        or len(set(volume.shape[1:])) != 1
    ):
        got = tuple(volume.shape) if isinstance(volume, torch.Tensor) else type(volume).__name__
        raise ScorelabError(f"{name} must have shape ({channels or 'C'}, R, R, R), got {got}")


def _check_box(low: float, high: float) -> None:
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise ScorelabError(f"voxel box needs finite low < high, got low={low}, high={high}")


def trilinear(volume: torch.Tensor, points: torch.Tensor, low: float = -0.5, high: float = 0.5) -> torch.Tensor:
    """Sample a (C, R, R, R) cell-centred volume at world points (..., 3) -> (..., C).

    Trilinear between cell centres, constant between the outer centres and the box faces, zero outside the box.
    """
    _check_volume("volume", volume, None)
    if not isinstance(points, torch.Tensor) or points.ndim == 0 or points.shape[-1] != 3:
        got = tuple(points.shape) if isinstance(points, torch.Tensor) else type(points).__name__
        raise ScorelabError(f"points must be world points of shape (..., 3), got {got}")
    shape = points.shape[:-1]
    p = points.reshape(-1, 3).to(volume.dtype)
    g = (p - low) / (high - low) * 2 - 1  # grid_sample wants (x, y, z) in [-1, 1], x indexing the last axis
    out = F.grid_sample(
        volume[None], g.view(1, 1, 1, -1, 3), mode="bilinear", padding_mode="border", align_corners=False
    )
    out = out.view(volume.shape[0], -1).T
    inside = ((p >= low) & (p <= high)).all(-1, keepdim=True)
    return torch.where(inside, out, torch.zeros_like(out)).reshape(*shape, volume.shape[0])


def density_gradient(density: torch.Tensor, low: float = -0.5, high: float = 0.5) -> torch.Tensor:
    """(1, R, R, R) density -> (3, R, R, R) gradient (d/dx, d/dy, d/dz) at the cell centres by central differences,
    with zero density outside the box (so the outer cells see the drop to zero at the faces)."""
    s = (high - low) / density.shape[-1]
    p = F.pad(density, (1, 1, 1, 1, 1, 1))
    gx = (p[:, 1:-1, 1:-1, 2:] - p[:, 1:-1, 1:-1, :-2]) / (2 * s)
    gy = (p[:, 1:-1, 2:, 1:-1] - p[:, 1:-1, :-2, 1:-1]) / (2 * s)
    gz = (p[:, 2:, 1:-1, 1:-1] - p[:, :-2, 1:-1, 1:-1]) / (2 * s)
    return torch.cat([gx, gy, gz])


class VoxelGrid(nn.Module):
    """Learnable grid: `density_raw` (1, R, R, R) with sigma = softplus(raw), `color_raw` (3, R, R, R) logits with
    rgb = sigmoid(logits). The default start is nearly empty (sigma = softplus(-5) = 0.0067) and grey."""

    def __init__(self, resolution: int, *, low: float = -0.5, high: float = 0.5, density_raw=None, color_raw=None):
        super().__init__()
        if isinstance(resolution, bool) or not isinstance(resolution, numbers.Integral) or resolution < 1:
            raise ScorelabError(f"voxel resolution must be an integer >= 1, got {resolution!r}")
        _check_box(low, high)
        r = resolution
        self.low, self.high = float(low), float(high)
        dens = torch.full((1, r, r, r), -5.0) if density_raw is None else torch.as_tensor(density_raw)
        col = torch.zeros(3, r, r, r) if color_raw is None else torch.as_tensor(color_raw)
        _check_volume("density_raw", dens, 1)
        _check_volume("color_raw", col, 3)
        if dens.shape[-1] != r or col.shape[-1] != r:
            raise ScorelabError(f"grid tensors must have resolution {r}, got {dens.shape[-1]} and {col.shape[-1]}")
        self.density_raw = nn.Parameter(dens.clone())
        self.color_raw = nn.Parameter(col.clone())

    @property
    def resolution(self) -> int:
        return self.density_raw.shape[-1]

    def density(self) -> torch.Tensor:
        return F.softplus(self.density_raw)

    def color(self) -> torch.Tensor:
        return torch.sigmoid(self.color_raw)

    def pyramid(self, levels: int | None = None):
        return mip_pyramid(self.density(), self.color(), levels)

    def render(self, cameras: Cameras, **kwargs) -> dict:
        """Ray-marched render (`ray_march`)."""
        return ray_march(self.density(), self.color(), cameras, low=self.low, high=self.high, **kwargs)

    def splat(self, cameras: Cameras, **kwargs) -> dict:
        """Splatted render (`scorelab.three.splat.splat_voxels`)."""
        from .splat import splat_voxels

        return splat_voxels(self.density(), self.color(), cameras, low=self.low, high=self.high, **kwargs)


def box_intersect(origins: torch.Tensor, dirs: torch.Tensor, low: float, high: float):
    """Slab test (Kay & Kajiya 1986): entry and exit distances (..., ) along rays o + t d, t >= 0; the ray misses
    the box when t_far <= t_near."""
    safe = torch.where(dirs.abs() < 1e-12, torch.full_like(dirs, 1e-12), dirs)
    t0, t1 = (low - origins) / safe, (high - origins) / safe
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
    pixels: torch.Tensor | None = None,
    normals: bool = True,
) -> dict:
    """Reference volume renderer: emission-absorption (Max 1995) by the NeRF quadrature (Mildenhall et al. 2020, eq. 3).

    Each pixel's ray (`generate_rays`) is clipped to the box by the slab test and sampled at `samples` midpoints
    t_i = t_near + (i + 1/2) delta, delta = (t_far - t_near) / samples. alpha_i = 1 - exp(-sigma_i delta),
    T_i = prod_{j<i} (1 - alpha_j), w_i = T_i alpha_i.

    Returns a dict of (N, C, H, W) tensors in the density's dtype:
      color   sum_i w_i c_i + (1 - sum_i w_i) * background
      mask    opacity sum_i w_i = 1 - exp(-sum_i sigma_i delta)
      depth   sum_i w_i z_i with z_i the camera-space z (depth along the optical axis, not the ray length) of sample i;
              not normalised by the opacity (divide by mask for the surface depth)
      normals sum_i w_i n_i in world coordinates, n_i = -grad sigma / |grad sigma| (zero where the gradient is zero);
              the gradient is `density_gradient` sampled trilinearly
    pixels: optional (N, P) int64 flat pixel indices (i * W + j) per view; then only those rays are marched and every
    buffer is (N, C, P) (training on random rays). normals=False skips the normals buffer (and its gradient volume).
    Rays are processed `chunk` at a time; under autograd each chunk is recomputed in the backward pass (activation
    checkpointing), so memory holds chunk x samples values, not the whole image's.
    """
    _check_volume("density", density, 1)
    _check_volume("color", color, 3)
    _check_box(low, high)
    check_cameras(cameras, "ray_march")
    check_background(background)
    if samples < 1 or chunk < 1:
        raise ScorelabError(f"samples and chunk must be >= 1, got samples={samples}, chunk={chunk}")
    if color.shape[-1] != density.shape[-1]:
        raise ScorelabError(f"density and color resolutions differ: {density.shape[-1]} vs {color.shape[-1]}")
    dt, dev = density.dtype, density.device
    origins, dirs = generate_rays(cameras.to(dev, dt))
    n, h, w, _ = dirs.shape
    origins, dirs = origins.reshape(n, h * w, 3), dirs.reshape(n, h * w, 3)
    if pixels is not None:
        if pixels.dim() != 2 or pixels.shape[0] != n or pixels.dtype != torch.int64:
            raise ScorelabError(f"pixels must be int64 of shape ({n}, P), got {pixels.dtype} {tuple(pixels.shape)}")
        if pixels.numel() and (pixels.min() < 0 or pixels.max() >= h * w):
            raise ScorelabError(f"pixel indices must be in [0, {h * w}), got [{pixels.min()}, {pixels.max()}]")
        pix = pixels.to(dev)[..., None].expand(-1, -1, 3)
        origins, dirs = origins.gather(1, pix), dirs.gather(1, pix)
    o, d = origins.reshape(-1, 3), dirs.reshape(-1, 3)
    rays = o.shape[0] // n
    forward = cameras.rotation[:, 2].to(dev, dt)  # camera z axis in world coordinates (row 2 of W)
    fz = forward[:, None, :].expand(n, rays, 3).reshape(-1, 3)
    bg = torch.as_tensor(background, dtype=dt, device=dev)
    parts = [density, color] + ([density_gradient(density, low, high)] if normals else [])
    volume = torch.cat(parts)
    outs = []
    for s in range(0, o.shape[0], chunk):
        args = (volume, o[s : s + chunk], d[s : s + chunk], fz[s : s + chunk], bg, low, high, samples)
        if torch.is_grad_enabled() and volume.requires_grad:
            outs.append(checkpoint(_march_chunk, *args, use_reentrant=False))
        else:
            outs.append(_march_chunk(*args))
    c = 8 if normals else 5
    out = torch.cat(outs).reshape(n, rays, c).transpose(1, 2)
    if pixels is None:
        out = out.reshape(n, c, h, w)
    result = {"color": out[:, :3], "mask": out[:, 3:4], "depth": out[:, 4:5]}
    if normals:
        result["normals"] = out[:, 5:]
    return result


def _march_chunk(volume, o, d, fz, bg, low, high, samples):
    t_near, t_far = box_intersect(o, d, low, high)
    delta = (t_far - t_near).clamp(min=0) / samples
    t = t_near[:, None] + (torch.arange(samples, dtype=o.dtype, device=o.device) + 0.5) * delta[:, None]
    vals = trilinear(volume, o[:, None] + t[..., None] * d[:, None], low, high)  # (rays, samples, 4 or 7)
    sigma, rgb = vals[..., 0].clamp(min=0), vals[..., 1:4]
    tau = sigma * delta[:, None]
    alpha = -torch.expm1(-tau)  # Mildenhall et al. 2020, eq. 3: alpha_i = 1 - exp(-sigma_i delta_i)
    # T_i = prod_{j<i} (1 - alpha_j) = exp(-sum_{j<i} sigma_j delta_j)   (Mildenhall et al. 2020, eq. 3)
    trans = torch.exp(-(torch.cumsum(tau, 1) - tau))
    weight = trans * alpha
    acc = weight.sum(1)
    col = (weight[..., None] * rgb).sum(1) + (1 - acc)[:, None] * bg
    depth = (weight * t).sum(1) * (d * fz).sum(-1)  # camera z of o + t d is z_o + t (d . forward), z_o = 0
    out = [col, acc[:, None], depth[:, None]]
    if vals.shape[-1] == 7:
        out.append((weight[..., None] * -safe_normalize(vals[..., 4:7])).sum(1))
    return torch.cat(out, 1)


def mip_pyramid(density: torch.Tensor, color: torch.Tensor, levels: int | None = None):
    """Mip pyramid by 2x averaging: level l+1 cell = mean of its 8 children for density, density-weighted mean for
    colour (so empty children do not grey it; where all 8 are empty, the plain mean). Level 0 is the grid itself.
    Stops when a level would not halve exactly (odd side) or at `levels`. Returns lists of (1, r, r, r) densities
    and (3, r, r, r) colours, r = R / 2^l. The block mean keeps the column optical depth: a ray through a level-l
    cell of side 2^l s sees the same integral of the averaged density as of the children, to first order."""
    _check_volume("density", density, 1)
    _check_volume("color", color, 3)
    if levels is not None and levels < 1:
        raise ScorelabError(f"pyramid levels must be >= 1, got {levels}")
    r = density.shape[-1]
    levels = levels or int(math.log2(r)) + 1
    dens, cols = [density], [color]
    while len(dens) < levels and dens[-1].shape[-1] % 2 == 0 and dens[-1].shape[-1] >= 2:
        dn = F.avg_pool3d(dens[-1][None], 2)[0]
        dw = F.avg_pool3d((dens[-1] * cols[-1])[None], 2)[0]
        plain = F.avg_pool3d(cols[-1][None], 2)[0]
        cols.append(torch.where(dn > 0, dw / torch.where(dn > 0, dn, torch.ones_like(dn)), plain))
        dens.append(dn)
    return dens, cols


def footprint_level(cell: float, depth: torch.Tensor, focal: float, n_levels: int) -> torch.Tensor:
    """Pyramid level for a cell at camera depth `depth` (any shape): the coarsest level whose cells still cover at
    most one pixel.

    A level-0 cell of side s at depth z spans f s / z pixels (pinhole projection u = f x / z); a level-l cell spans
    2^l f s / z. The largest l with 2^l f s / z <= 1 is l = floor(log2(z / (f s))); clamped to [0, n_levels - 1]
    (near cells, wider than a pixel, use level 0). The chosen cells span (1/2, 1] pixel, so their splat kernels
    (std 1/2 cell <= 1/2 px) blur no more than the 0.3 px^2 anti-aliasing filter already does.
    """
    ratio = depth / (focal * cell)
    lvl = torch.floor(torch.log2(ratio.clamp(min=1.0)))
    return lvl.clamp(0, n_levels - 1).long()


def cell_centres(resolution: int, low: float = -0.5, high: float = 0.5, dtype=torch.float32, device=None):
    """(R^3, 3) world (x, y, z) cell centres in the grid's (Z, Y, X) storage order (row-major flatten)."""
    lin = low + (torch.arange(resolution, dtype=dtype, device=device) + 0.5) * (high - low) / resolution
    z, y, x = torch.meshgrid(lin, lin, lin, indexing="ij")
    return torch.stack([x, y, z], -1).reshape(-1, 3)


def pyramid_partition(
    resolution: int, n_levels: int, cameras: Cameras, low: float = -0.5, high: float = 0.5, dtype=torch.float32
) -> list[torch.Tensor]:
    """For one camera, which cell of which level to draw: a list of flat boolean masks (r_l^3,), one per level.

    Top-down: a cell at level l is drawn when `footprint_level` at its own centre's depth is >= l and no ancestor
    was drawn; level 0 takes everything left. So the drawn cells tile the box exactly once (every level-0 cell has
    exactly one drawn ancestor-or-self), and distant regions are drawn with fewer, coarser cells.
    """
    if len(cameras) != 1:
        raise ScorelabError(f"pyramid_partition takes one camera, got {len(cameras)}")
    dev = cameras.device
    w2c = cameras.world_to_cam[0].to(dev, dtype)
    f = float(cameras.focal[0].max())
    s0 = (high - low) / resolution
    masks: list[torch.Tensor] = [None] * n_levels  # type: ignore[list-item]
    covered = None  # (r, r, r) bool at the current level: some ancestor drawn
    for lvl in range(n_levels - 1, -1, -1):
        r = resolution >> lvl
        if covered is not None:
            covered = covered.repeat_interleave(2, 0).repeat_interleave(2, 1).repeat_interleave(2, 2)
        else:
            covered = torch.zeros(r, r, r, dtype=torch.bool, device=dev)
        if lvl == 0:
            draw = ~covered
        else:
            z = cell_centres(r, low, high, dtype, dev) @ w2c[2, :3] + w2c[2, 3]
            draw = (footprint_level(s0, z, f, n_levels) >= lvl).view(r, r, r) & ~covered
        masks[lvl] = draw.reshape(-1)
        covered = covered | draw
    return masks
