"""Differentiable voxel splatting (Zwicker et al. 2001, 'EWA Volume Splatting'), self-contained: projection, tile
binning, per-tile depth sort and front-to-back compositing are all here.

Model. Each drawn voxel (centre mu, side s at its pyramid level, density sigma, colour c) is a reconstruction kernel
    sigma(x) ~ sum_v sigma_v s_v^3 N(x; mu_v, (k s_v)^2 I),       k = `kernel_std` (cells), default 0.5,
i.e. a normalised Gaussian carrying the voxel's mass sigma_v s_v^3 (for k >~ 0.5 a lattice of such kernels sums to a
constant field to about 2 exp(-2 pi^2 k^2) = 1.4 % per axis at k = 0.5; Poisson summation). Integrating one kernel
along a ray (Zwicker et al. 2001, 'the footprint function') gives the 2D Gaussian of the ray's offset,
    tau_v = sigma_v s_v / (2 pi k^2) exp(-d^2 / (2 (k s_v)^2)),
which EWA maps to the screen with its local affine approximation: Sigma' = J W Sigma W^T J^T, J the Jacobian of
(x, y, z) -> (f_x x / z + c_x, f_y y / z + c_y) at the centre. The anti-aliasing low-pass (a Gaussian of 0.3 px^2,
as in 3D Gaussian splatting) is *convolved* with the footprint, as in the EWA resampling filter (Zwicker et al. 2001):
the covariance becomes Sigma' + 0.3 I and the peak is scaled by sqrt(det Sigma' / det(Sigma' + 0.3 I)), which keeps
each kernel's screen integral, so tiny far voxels do not gain optical depth from the blur.

Opacity. Each kernel's alpha at a pixel is alpha_v = 1 - exp(-tau_v(pixel)), composited front to back by the depth of
its centre: T_v = prod_{u<v} (1 - alpha_u) = exp(-sum_{u<v} tau_u). The mask 1 - exp(-sum_v tau_v) is then exactly
the ray-march's 1 - exp(-integral sigma dt) for the kernel-reconstructed volume, whatever the order; only the colour
depends on the order. So on a smooth volume the two renderers differ by (a) Gaussian vs trilinear reconstruction,
(b) the low-pass blur, (c) the affine projection, (d) sorting kernels by centre depth, and (e) quadrature.

Culling: voxels with density <= `min_density` are skipped; kernels are cut at 4 standard deviations (the mass beyond
is exp(-8) = 3.4e-4 of each footprint); kernels whose centre is nearer than `near` (1e-3, in `project_kernels`) are
dropped. No early stop at low transmittance (every kernel gets its exact gradient). The affine (EWA) projection is
poor for cells close to the camera: keep cameras well outside the grid (the ray marcher has no such limit).

Memory. (kernel, tile) pairs are sorted by (tile, depth); tiles are processed in chunks, and a tile's kernel list in
blocks, so that one block holds at most about `max_work` (tile pixels x kernels) values; under autograd each block is
recomputed in the backward pass (activation checkpointing), so backward memory is bounded the same way.
"""

from __future__ import annotations

import math

import torch
from torch.utils.checkpoint import checkpoint

from scorelab.data.images import check_background
from scorelab.errors import ScorelabError

from .cameras import Cameras, check_cameras
from .voxels import _check_box, _check_volume, cell_centres, mip_pyramid, pyramid_partition

LOWPASS = 0.3  # px^2, screen-space anti-aliasing filter variance
CUTOFF = 4.0  # kernels are evaluated out to this many standard deviations


def project_kernels(centres, side, cameras: Cameras, kernel_std: float = 0.5, near: float = 1e-3):
    """EWA projection of isotropic kernels (std kernel_std * side) for one camera.

    centres (P, 3) world, side: float or (P,). Returns mean2d (P, 2) in pixels (u, v), conic (P, 3) = the entries
    (a, b, c) of the inverse of Sigma' + 0.3 I, scale (P,) = sqrt(det Sigma' / det(Sigma' + 0.3 I)), radius (P,) in
    pixels (CUTOFF x the largest standard deviation), depth (P,) camera z, and valid (P,) (in front of `near`).
    """
    dt = centres.dtype
    w2c = cameras.world_to_cam[0].to(centres.device, dt)
    fx, fy = cameras.focal[0].to(centres.device, dt)
    cx, cy = cameras.principal[0].to(centres.device, dt)
    cam = centres @ w2c[:3, :3].T + w2c[:3, 3]
    x, y, z = cam.unbind(-1)
    valid = z > near
    zs = torch.where(valid, z, torch.ones_like(z))
    mean2d = torch.stack([fx * x / zs + cx, fy * y / zs + cy], -1)
    var = (kernel_std * torch.as_tensor(side, dtype=dt, device=centres.device)) ** 2
    # Zwicker et al. 2001, local affine approximation: Sigma' = J W Sigma W^T J^T (= var J J^T: Sigma = var I)
    j00, j02, j11, j12 = fx / zs, -fx * x / zs**2, fy / zs, -fy * y / zs**2
    a = var * (j00 * j00 + j02 * j02)
    b = var * (j02 * j12)
    c = var * (j11 * j11 + j12 * j12)
    det0 = a * c - b * b
    a, c = a + LOWPASS, c + LOWPASS  # Zwicker et al. 2001, EWA resampling filter: convolve with the low-pass
    det = a * c - b * b
    scale = torch.sqrt(det0 / det)  # keeps the footprint's screen integral under the convolution
    conic = torch.stack([c / det, -b / det, a / det], -1)
    lam = 0.5 * (a + c) + torch.sqrt((0.25 * (a - c) ** 2 + b * b).clamp(min=0))
    radius = CUTOFF * torch.sqrt(lam)
    return mean2d, conic, scale, radius, z, valid


def _bin(mean2d, radius, depth, keep, width, height, tile):
    """(kernel, tile) pairs sorted by tile then depth: returns kernel ids (Q,), tile ids (Q,)."""
    tx, ty = -(-width // tile), -(-height // tile)
    x0 = torch.floor((mean2d[:, 0] - radius) / tile).clamp(0, tx).long()
    x1 = torch.floor((mean2d[:, 0] + radius) / tile).clamp(-1, tx - 1).long() + 1
    y0 = torch.floor((mean2d[:, 1] - radius) / tile).clamp(0, ty).long()
    y1 = torch.floor((mean2d[:, 1] + radius) / tile).clamp(-1, ty - 1).long() + 1
    nx, ny = (x1 - x0).clamp(min=0), (y1 - y0).clamp(min=0)
    count = torch.where(keep, nx * ny, torch.zeros_like(nx))
    kid = torch.repeat_interleave(torch.arange(mean2d.shape[0], device=mean2d.device), count)
    if kid.numel() == 0:
        return kid, kid
    start = torch.cumsum(count, 0) - count
    local = torch.arange(kid.numel(), device=kid.device) - start[kid]
    tid = (y0[kid] + local // nx[kid]) * tx + x0[kid] + local % nx[kid]
    order = torch.argsort(depth[kid], stable=True)  # depth first, then a stable sort by tile keeps depth order
    kid, tid = kid[order], tid[order]
    order = torch.argsort(tid, stable=True)
    return kid[order], tid[order]


def _composite_block(pix, mean2d, conic, peak, feats, valid, tau_acc, feat_acc):
    """Front-to-back compositing of one block of depth-sorted kernels over a chunk of tiles.

    pix (B, P, 2); mean2d (B, K, 2); conic (B, K, 3); peak (B, K); feats (B, K, F); valid (B, K);
    tau_acc (B, P) optical depth in front of the block; feat_acc (B, P, F) accumulated features."""
    d = pix[:, None, :, :] - mean2d[:, :, None, :]  # (B, K, P, 2)
    a, b, c = conic[..., 0, None], conic[..., 1, None], conic[..., 2, None]
    power = -0.5 * (a * d[..., 0] ** 2 + c * d[..., 1] ** 2) - b * d[..., 0] * d[..., 1]
    inside = (power > -0.5 * CUTOFF**2) & valid[..., None]
    tau = torch.where(inside, peak[..., None] * torch.exp(power.clamp(min=-0.5 * CUTOFF**2)), torch.zeros_like(power))
    # front-to-back compositing of footprints (Zwicker et al. 2001; Max 1995):
    # alpha_v = 1 - exp(-tau_v), T_v = prod_{u<v} (1 - alpha_u) = exp(-sum_{u<v} tau_u)
    before = tau_acc[:, None, :] + torch.cumsum(tau, 1) - tau
    weight = torch.exp(-before) * -torch.expm1(-tau)  # (B, K, P)
    feat_acc = feat_acc + torch.einsum("bkp,bkf->bpf", weight, feats)
    return tau_acc + tau.sum(1), feat_acc


def _rasterize(mean2d, conic, peak, feats, depth, radius, keep, width, height, tile, max_work):
    """Tiled front-to-back compositing. Returns optical depth (H, W) and accumulated features (H, W, F)."""
    dt, dev = mean2d.dtype, mean2d.device
    nf = feats.shape[1]
    tx, ty = -(-width // tile), -(-height // tile)
    tau_img = torch.zeros(ty * tx, tile * tile, dtype=dt, device=dev)
    feat_img = torch.zeros(ty * tx, tile * tile, nf, dtype=dt, device=dev)
    kid, tid = _bin(mean2d, radius, depth, keep, width, height, tile)
    if kid.numel() > 0:
        counts = torch.bincount(tid, minlength=tx * ty)
        starts = torch.cumsum(counts, 0) - counts
        tiles = torch.nonzero(counts).squeeze(1)
        tiles = tiles[torch.argsort(counts[tiles], descending=True)]  # similar lengths share a chunk: less padding
        iy, ix = torch.meshgrid(torch.arange(tile, device=dev), torch.arange(tile, device=dev), indexing="ij")
        local = torch.stack([ix.reshape(-1), iy.reshape(-1)], -1).to(dt) + 0.5  # pixel centres (j + 1/2, i + 1/2)
        npix = tile * tile
        counts_l = counts[tiles].tolist()
        pos, outs_t, outs_f, done = 0, [], [], []
        while pos < len(tiles):
            kmax = counts_l[pos]
            nt = max(1, min(len(tiles) - pos, max_work // max(1, kmax * npix)))
            chunk = tiles[pos : pos + nt]
            pos += nt
            origin = torch.stack([chunk % tx, chunk // tx], -1).to(dt) * tile
            pix = origin[:, None, :] + local[None]  # (B, P, 2)
            tau_acc = torch.zeros(nt, npix, dtype=dt, device=dev)
            feat_acc = torch.zeros(nt, npix, nf, dtype=dt, device=dev)
            kb = max(1, max_work // (nt * npix))
            for k0 in range(0, kmax, kb):
                slot = torch.arange(k0, min(kmax, k0 + kb), device=dev)
                valid = slot[None] < counts[chunk][:, None]
                pair = (starts[chunk][:, None] + slot[None]).clamp(max=kid.numel() - 1)
                ids = kid[pair]
                args = (pix, mean2d[ids], conic[ids], peak[ids], feats[ids], valid, tau_acc, feat_acc)
                if torch.is_grad_enabled() and (peak.requires_grad or feats.requires_grad):
                    tau_acc, feat_acc = checkpoint(_composite_block, *args, use_reentrant=False)
                else:
                    tau_acc, feat_acc = _composite_block(*args)
            outs_t.append(tau_acc)
            outs_f.append(feat_acc)
            done.append(chunk)
        done = torch.cat(done)
        tau_img = tau_img.index_put((done,), torch.cat(outs_t))
        feat_img = feat_img.index_put((done,), torch.cat(outs_f))
    tau_img = tau_img.view(ty, tx, tile, tile).permute(0, 2, 1, 3).reshape(ty * tile, tx * tile)
    feat_img = feat_img.view(ty, tx, tile, tile, nf).permute(0, 2, 1, 3, 4).reshape(ty * tile, tx * tile, nf)
    return tau_img[:height, :width], feat_img[:height, :width]


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
    kernel_std: float = 0.5,
    tile: int = 16,
    max_work: int = 2_000_000,
) -> dict:
    """Render density (1, R, R, R) >= 0 and colour (3, R, R, R) in [0, 1] by EWA splatting (see the module docstring).

    With `use_pyramid`, each region is drawn from the mip level whose cells span at most one pixel at its depth
    (`pyramid_partition`, `footprint_level`); otherwise every level-0 voxel is drawn. Returns (N, C, H, W):
    color (over `background`), mask (opacity), depth (sum of weight x kernel-centre camera z, not normalised, like
    `ray_march`). Differentiable with respect to density and colour.
    """
    _check_volume("density", density, 1)
    _check_volume("color", color, 3)
    _check_box(low, high)
    check_cameras(cameras, "splat_voxels")
    check_background(background)
    if color.shape[-1] != density.shape[-1]:
        raise ScorelabError(f"density and color resolutions differ: {density.shape[-1]} vs {color.shape[-1]}")
    if kernel_std <= 0 or tile < 1 or max_work < 1:
        raise ScorelabError(f"kernel_std, tile and max_work must be positive, got {kernel_std}, {tile}, {max_work}")
    dt, dev = density.dtype, density.device
    res = density.shape[-1]
    dens_levels, col_levels = mip_pyramid(density, color) if use_pyramid else ([density], [color])
    bg = torch.as_tensor(background, dtype=dt, device=dev)
    colors, masks, depths = [], [], []
    for v in range(len(cameras)):
        cam = cameras[v].to(dev, dt)
        parts = pyramid_partition(res, len(dens_levels), cam, low, high, dt)
        cen, side, sig, col = [], [], [], []
        for lvl, (d, c) in enumerate(zip(dens_levels, col_levels, strict=True)):
            r = d.shape[-1]
            sel = parts[lvl] & (d.reshape(-1) > min_density)
            idx = torch.nonzero(sel).squeeze(1)
            if idx.numel() == 0:
                continue
            cen.append(cell_centres(r, low, high, dt, dev)[idx])
            side.append(torch.full((idx.numel(),), (high - low) / r, dtype=dt, device=dev))
            sig.append(d.reshape(-1)[idx])
            col.append(c.reshape(3, -1)[:, idx].T)
        if cen:
            cen, side, sig, col = torch.cat(cen), torch.cat(side), torch.cat(sig), torch.cat(col)
        else:
            cen = torch.zeros(0, 3, dtype=dt, device=dev)
            side, sig, col = cen[:, 0], cen[:, 0], cen
        mean2d, conic, scale, radius, z, valid = project_kernels(cen, side, cam, kernel_std)
        # line integral of sigma s^3 N(x; mu, (k s)^2 I) through its centre: sigma s / (2 pi k^2) (module docstring)
        peak = sig * side / (2 * math.pi * kernel_std**2) * scale
        feats = torch.cat([col, z[:, None]], 1)
        tau, acc = _rasterize(mean2d, conic, peak, feats, z, radius, valid, cam.width, cam.height, tile, max_work)
        mask = -torch.expm1(-tau)
        colors.append((acc[..., :3] + (1 - mask)[..., None] * bg).permute(2, 0, 1))
        masks.append(mask[None])
        depths.append(acc[..., 3][None])
    return {"color": torch.stack(colors), "mask": torch.stack(masks), "depth": torch.stack(depths)}
