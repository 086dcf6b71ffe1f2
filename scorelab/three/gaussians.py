"""3D Gaussian splatting in pure PyTorch (Kerbl et al. 2023, '3D Gaussian Splatting for Real-Time Radiance Field
Rendering'): EWA projection, degree-0/1 spherical-harmonic colour, tiled front-to-back compositing.

Memory is bounded by chunking: Gaussians are binned to 16 x 16 pixel tiles by their 3-sigma screen boxes, sorted by
depth within each tile, and tiles are composited in chunks holding at most `max_work` (pixel, Gaussian) pairs.
Everything is differentiable through autograd except the binning, sorting and the alpha < 1/255 and transmittance
< 1e-4 cut-offs (switches, as in the reference rasterizer).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .cameras import Cameras

SH_C0 = 0.28209479177387814  # real SH normalisation, degree 0: 1 / (2 sqrt(pi))
SH_C1 = 0.4886025119029199  # degree 1: sqrt(3 / (4 pi))
ALPHA_MAX, ALPHA_MIN, T_MIN = 0.99, 1 / 255, 1e-4
DILATION = 0.3  # px^2 added to the 2D covariance (Kerbl et al. 2023, sec. 4 / the reference rasterizer)
TILE = 16


class Gaussians(nn.Module):
    """means (G, 3); log_scales (G, 3); quats (G, 4) unnormalised w, x, y, z; opacity_logits (G,); sh (G, K, 3)
    with K = 1 (degree 0) or 4 (degree 1)."""

    def __init__(self, means, log_scales, quats, opacity_logits, sh):
        super().__init__()
        self.means = nn.Parameter(means)
        self.log_scales = nn.Parameter(log_scales)
        self.quats = nn.Parameter(quats)
        self.opacity_logits = nn.Parameter(opacity_logits)
        self.sh = nn.Parameter(sh)

    @classmethod
    def random_in_box(cls, n: int, *, half: float = 0.5, scale: float = 0.03, degree: int = 1, generator=None):
        g = generator
        means = (torch.rand(n, 3, generator=g) * 2 - 1) * half
        log_scales = torch.full((n, 3), math.log(scale))
        quats = torch.cat([torch.ones(n, 1), torch.zeros(n, 3)], 1)
        sh = torch.zeros(n, 1 + 3 * degree, 3)
        sh[:, 0] = (torch.rand(n, 3, generator=g) - 0.5) / SH_C0 * 0.5
        return cls(means, log_scales, quats, torch.full((n,), -2.0), sh)

    def render(self, cameras: Cameras, **kwargs) -> dict:
        return render_gaussians(
            self.means, self.log_scales, self.quats, torch.sigmoid(self.opacity_logits), self.sh, cameras, **kwargs
        )


def quat_to_rotmat(q: torch.Tensor) -> torch.Tensor:
    w, x, y, z = F.normalize(q, dim=-1).unbind(-1)
    rows = [
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ]
    return torch.stack([torch.stack(r, -1) for r in rows], -2)


def covariance_3d(log_scales: torch.Tensor, quats: torch.Tensor) -> torch.Tensor:
    """Sigma = R S S^T R^T (Kerbl et al. 2023, eq. 6)."""
    m = quat_to_rotmat(quats) * torch.exp(log_scales)[..., None, :]
    return m @ m.transpose(-1, -2)


def project(means, cov3d, cameras: Cameras, view: int = 0):
    """Screen means (G, 2), 2D covariances J W Sigma W^T J^T + 0.3 I (Zwicker et al. 2001, eq. 31; Kerbl et al. 2023,
    eq. 5) (G, 2, 2), and camera depths (G,), for one view."""
    w2c = cameras.world_to_cam[view].to(means.dtype)
    rot, trans = w2c[:3, :3], w2c[:3, 3]
    t = means @ rot.T + trans
    fx, fy = cameras.focal[view].to(means.dtype)
    cx, cy = cameras.principal[view].to(means.dtype)
    tx, ty, tz = t.unbind(-1)
    mean2d = torch.stack([fx * tx / tz + cx, fy * ty / tz + cy], -1)
    zeros = torch.zeros_like(tz)
    jac = torch.stack(
        [torch.stack([fx / tz, zeros, -fx * tx / tz**2], -1), torch.stack([zeros, fy / tz, -fy * ty / tz**2], -1)], -2
    )  # fmt: skip  (G, 2, 3)
    jw = jac @ rot
    cov2d = jw @ cov3d @ jw.transpose(-1, -2) + DILATION * torch.eye(2, dtype=means.dtype, device=means.device)
    return mean2d, cov2d, tz


def sh_color(sh: torch.Tensor, dirs: torch.Tensor) -> torch.Tensor:
    """Colour from real SH of degree 0/1 along unit view directions (camera -> Gaussian), with the reference
    implementation's +0.5 offset and clamp at 0: C0 k0 - C1 y k1 + C1 z k2 - C1 x k3 + 0.5."""
    c = SH_C0 * sh[:, 0]
    if sh.shape[1] >= 4:
        x, y, z = dirs[:, 0:1], dirs[:, 1:2], dirs[:, 2:3]
        c = c - SH_C1 * y * sh[:, 1] + SH_C1 * z * sh[:, 2] - SH_C1 * x * sh[:, 3]
    return (c + 0.5).clamp(min=0)


def _composite_chunk(mean2d, conic, opacity, color, valid, pix, background, alpha_min):
    """One chunk of tiles: mean2d (n, L, 2), conic (n, L, 3), opacity (n, L), color (n, L, C) in depth order per
    tile, valid (n, L), pix (n, 256, 2). alpha = min(0.99, o exp(-d^T Sigma'^-1 d / 2)), skipped below 1/255;
    C = sum_i c_i alpha_i T_i + T_final * background, T_i = prod_{j<i} (1 - alpha_j), stopping before the Gaussian
    that would take T below 1e-4 (Kerbl et al. 2023, sec. 6 and eq. 3)."""
    d = pix[:, :, None, :] - mean2d[:, None]  # (n, 256, L, 2)
    con = conic[:, None]
    power = -0.5 * (
        con[..., 0] * d[..., 0] ** 2 + 2 * con[..., 1] * d[..., 0] * d[..., 1] + con[..., 2] * d[..., 1] ** 2
    )
    alpha = (opacity[:, None] * torch.exp(power)).clamp(max=ALPHA_MAX)
    alpha = torch.where(valid[:, None] & (alpha >= alpha_min) & (power <= 0), alpha, torch.zeros_like(alpha))
    keep = torch.cumprod(1 - alpha.detach(), -1) >= T_MIN  # a prefix of each pixel's list
    alpha = alpha * keep
    trans_after = torch.cumprod(1 - alpha, -1)
    trans_before = torch.cat([torch.ones_like(trans_after[..., :1]), trans_after[..., :-1]], -1)
    weight = alpha * trans_before  # (n, 256, L)
    rgb = torch.einsum("npl,nlc->npc", weight, color) + trans_after[..., -1:] * background
    return rgb, 1 - trans_after[..., -1]


def _composite_tiles(
    mean2d, conic, color, opacity, order, tile_ids, tiles_x, n_tiles, height, width, background, max_work, alpha_min
):
    """Front-to-back compositing of each tile's depth-sorted Gaussians: per tile and pixel, the composited features
    (n_tiles, 256, C) over `background` and the alpha (n_tiles, 256)."""
    dev, dt = mean2d.device, mean2d.dtype
    counts = torch.bincount(tile_ids, minlength=n_tiles)
    starts = torch.cumsum(counts, 0) - counts
    out_rgb = background.expand(n_tiles, TILE * TILE, color.shape[1]).clone()
    out_a = torch.zeros(n_tiles, TILE * TILE, dtype=dt, device=dev)
    active = (counts > 0).nonzero().squeeze(1)
    ly, lx = torch.meshgrid(torch.arange(TILE, device=dev), torch.arange(TILE, device=dev), indexing="ij")
    local = torch.stack([lx.reshape(-1), ly.reshape(-1)], -1).to(dt)  # (256, 2) pixel offsets in a tile
    i = 0
    while i < active.shape[0]:
        # as many tiles as fit in max_work (pixel, Gaussian) pairs, padded to the longest list in the chunk
        j = i + 1
        longest = int(counts[active[i]])
        while j < active.shape[0] and (j - i + 1) * TILE * TILE * max(longest, int(counts[active[j]])) <= max_work:
            longest = max(longest, int(counts[active[j]]))
            j += 1
        tiles = active[i:j]
        slot = torch.arange(longest, device=dev)
        valid = slot[None] < counts[tiles, None]  # (n, L)
        idx = order[(starts[tiles, None] + slot[None]).clamp(max=order.shape[0] - 1)]  # (n, L) Gaussian ids
        origin = torch.stack([(tiles % tiles_x) * TILE, (tiles // tiles_x) * TILE], -1).to(dt)  # (n, 2)
        pix = origin[:, None] + local[None] + 0.5  # (n, 256, 2) pixel centres
        args = (mean2d[idx], conic[idx], opacity[idx], color[idx], valid, pix, background, alpha_min)
        if torch.is_grad_enabled():
            # recompute the chunk in the backward pass, so memory holds one chunk's intermediates, not all of them
            rgb, a = checkpoint(_composite_chunk, *args, use_reentrant=False)
        else:
            rgb, a = _composite_chunk(*args)
        out_rgb[tiles] = rgb
        out_a[tiles] = a
        i = j
    return out_rgb, out_a


def render_gaussians(
    means,
    log_scales,
    quats,
    opacity,
    sh,
    cameras: Cameras,
    *,
    background=(0.0, 0.0, 0.0),
    near: float = 0.01,
    max_work: int = 4_000_000,
    preserve_integral: bool = False,
    alpha_min: float = ALPHA_MIN,
) -> dict:
    """Render every view: colour (N, 3, H, W) over `background`, alpha (N, 1, H, W), expected depth (N, 1, H, W)
    (camera z weighted by the compositing weights, not normalised).

    preserve_integral: scale each opacity by sqrt(det Sigma' / det(Sigma' + 0.3 I)), so the 0.3 px^2 low-pass term
    blurs a kernel without adding to its screen integral (EWA's convolution of normalised Gaussians, Zwicker et al.
    2001, eq. 30; the same factor as Mip-Splatting's 2D filter). Off by default, as in the 3DGS reference.
    alpha_min: contributions below it are skipped (1/255 in the reference; many faint kernels, as in voxel
    splatting, need 0 or their sum is lost)."""
    h, w = cameras.height, cameras.width
    tiles_x, tiles_y = math.ceil(w / TILE), math.ceil(h / TILE)
    n_tiles = tiles_x * tiles_y
    bg = torch.as_tensor(background, dtype=means.dtype, device=means.device)
    cov3d = covariance_3d(log_scales, quats)
    colors, alphas, depths = [], [], []
    for v in range(len(cameras)):
        mean2d, cov2d, z = project(means, cov3d, cameras, v)
        det = cov2d[:, 0, 0] * cov2d[:, 1, 1] - cov2d[:, 0, 1] ** 2
        conic = torch.stack([cov2d[:, 1, 1], -cov2d[:, 0, 1], cov2d[:, 0, 0]], -1) / det[:, None]
        op = opacity
        if preserve_integral:
            det_raw = (cov2d[:, 0, 0] - DILATION) * (cov2d[:, 1, 1] - DILATION) - cov2d[:, 0, 1] ** 2
            op = opacity * torch.sqrt(det_raw.clamp(min=0) / det)
        centre = cameras.centre[v].to(means.dtype)
        col = sh_color(sh, F.normalize(means - centre, dim=-1))
        feats = torch.cat([col, z[:, None]], -1)  # composite colour and depth together
        with torch.no_grad():
            mid = 0.5 * (cov2d[:, 0, 0] + cov2d[:, 1, 1])
            radius = 3 * torch.sqrt(mid + torch.sqrt((mid**2 - det).clamp(min=0.1)))  # 3 sigma of the major axis
            lo = ((mean2d - radius[:, None]) / TILE).floor().long()
            hi = ((mean2d + radius[:, None]) / TILE).floor().long()
            lo[:, 0].clamp_(0, tiles_x - 1), lo[:, 1].clamp_(0, tiles_y - 1)
            hi[:, 0].clamp_(max=tiles_x - 1), hi[:, 1].clamp_(max=tiles_y - 1)
            visible = (z > near) & (hi >= lo).all(1) & (mean2d + radius[:, None] >= 0).all(1)
            ids = visible.nonzero().squeeze(1)
            nx, ny = hi[ids, 0] - lo[ids, 0] + 1, hi[ids, 1] - lo[ids, 1] + 1
            per = nx * ny
            owner = torch.repeat_interleave(torch.arange(ids.shape[0], device=means.device), per)
            off = torch.arange(owner.shape[0], device=means.device) - torch.repeat_interleave(
                torch.cumsum(per, 0) - per, per
            )
            tile = (lo[ids, 1][owner] + off // nx[owner]) * tiles_x + lo[ids, 0][owner] + off % nx[owner]
            gid = ids[owner]
            depth_rank = torch.empty_like(z, dtype=torch.long)
            depth_rank[z.argsort()] = torch.arange(z.shape[0], device=means.device)
            sort = (tile * z.shape[0] + depth_rank[gid]).argsort()
            order, tile_sorted = gid[sort], tile[sort]
        rgbd, a = _composite_tiles(
            mean2d,
            conic,
            feats,
            op,
            order,
            tile_sorted,
            tiles_x,
            n_tiles,
            h,
            w,
            torch.cat([bg, bg.new_zeros(1)]),
            max_work,
            alpha_min,
        )
        img = (
            rgbd.reshape(tiles_y, tiles_x, TILE, TILE, 4)
            .permute(0, 2, 1, 3, 4)
            .reshape(tiles_y * TILE, tiles_x * TILE, 4)
        )
        alpha = a.reshape(tiles_y, tiles_x, TILE, TILE).permute(0, 2, 1, 3).reshape(tiles_y * TILE, tiles_x * TILE)
        colors.append(img[:h, :w, :3].permute(2, 0, 1))
        depths.append(img[:h, :w, 3])
        alphas.append(alpha[:h, :w])
    return {"color": torch.stack(colors), "alpha": torch.stack(alphas)[:, None], "depth": torch.stack(depths)[:, None]}
