"""3D Gaussian splatting in pure PyTorch (Kerbl et al. 2023, '3D Gaussian Splatting for Real-Time Radiance Field
Rendering'): EWA projection, degree-0/1 spherical-harmonic colour, tiled front-to-back compositing.

Conventions: cameras as in docs/cameras.md (OpenCV camera axes, pixel centres at (j + 0.5, i + 0.5)). A Gaussian set
is means (G, 3) in world units, log-scales (G, 3), rotations as unnormalised quaternions (G, 4) in (w, x, y, z) order,
opacities in [0, 1] (the module stores logits) and SH coefficients (G, K, 3) with K = 1 (degree 0) or 4 (degree 1),
in the reference's basis order (Y00, Y1-1, Y10, Y11). Any float dtype; everything follows the means' device.

Memory is bounded by chunking: Gaussians are binned to TILE x TILE (8 x 8) pixel tiles by their 3-sigma screen boxes
(one (Gaussian, tile) pair per overlap, sorted by tile then depth), and tiles are composited in chunks holding at most
`max_work` (pixel, Gaussian) pairs; the backward pass recomputes one chunk at a time and applies the compositing
gradient in closed form, so it too holds one chunk's intermediates. Differentiable (once) with respect to means,
scales, rotations, opacities and SH coefficients; the binning, sorting and the alpha < 1/255, alpha <= 0.99 and
transmittance < 1e-4 cut-offs are switches, as in the reference rasterizer.
"""

from __future__ import annotations

import math
import numbers

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from scorelab.data.images import check_background
from scorelab.errors import ScorelabError

from .cameras import Cameras, check_cameras

SH_C0 = 0.28209479177387814  # real SH normalisation, degree 0: 1 / (2 sqrt(pi))
SH_C1 = 0.4886025119029199  # degree 1: sqrt(3 / (4 pi))
ALPHA_MAX, ALPHA_MIN, T_MIN = 0.99, 1 / 255, 1e-4  # Kerbl et al. 2023, sec. 6 / the reference rasterizer
DILATION = 0.3  # px^2 added to the 2D covariance (Kerbl et al. 2023, sec. 4 / the reference rasterizer)
FRUSTUM_MARGIN = 0.15  # J is taken no further out than the image widened by this share per side (1.3 tan(fov/2))
TILE = 8  # pixels; on a CPU 8 x 8 tiles waste fewer (pixel, Gaussian) pairs than 16 x 16 (measured 1.7x faster)


def _check_gaussians(means, log_scales, quats, opacity, sh) -> None:
    g = means.shape[0] if means.dim() == 2 else -1
    if means.dim() != 2 or means.shape[1] != 3 or not means.is_floating_point():
        raise ScorelabError(f"means must be a float tensor of shape (G, 3), got {tuple(means.shape)}")
    for name, t, shape in (
        ("log_scales", log_scales, (g, 3)),
        ("quats", quats, (g, 4)),
        ("opacity", opacity, (g,)),
    ):
        if tuple(t.shape) != shape:
            raise ScorelabError(f"{name} must have shape {shape} to match means, got {tuple(t.shape)}")
    if sh.dim() != 3 or sh.shape[0] != g or sh.shape[1] not in (1, 4) or sh.shape[2] != 3:
        raise ScorelabError(
            f"sh must have shape ({g}, K, 3) with K = 1 (degree 0) or 4 (degree 1), got {tuple(sh.shape)}"
        )


def _check_values(means, log_scales, quats, opacity, sh) -> None:
    """Finite parameters and opacities in [0, 1] (not logits): one reduction each per render call."""
    for name, t in (("means", means), ("log_scales", log_scales), ("quats", quats), ("opacity", opacity), ("sh", sh)):
        if not torch.isfinite(t).all():
            raise ScorelabError(f"{name} must be finite, got NaN or infinite values")
    if ((opacity < 0) | (opacity > 1)).any():
        got = f"{opacity.min().item():g}..{opacity.max().item():g}"
        raise ScorelabError(f"opacity must lie in [0, 1] (opacities, not logits), got {got}")


class Gaussians(nn.Module):
    """A trainable Gaussian set: means (G, 3); log_scales (G, 3); quats (G, 4) unnormalised (w, x, y, z);
    opacity_logits (G,) (opacity = sigmoid); sh (G, K, 3) with K = 1 (degree 0) or 4 (degree 1)."""

    def __init__(self, means, log_scales, quats, opacity_logits, sh):
        super().__init__()
        _check_gaussians(means, log_scales, quats, opacity_logits, sh)
        self.means = nn.Parameter(means)
        self.log_scales = nn.Parameter(log_scales)
        self.quats = nn.Parameter(quats)
        self.opacity_logits = nn.Parameter(opacity_logits)
        self.sh = nn.Parameter(sh)

    def __len__(self) -> int:
        return self.means.shape[0]

    @classmethod
    def random_in_box(
        cls, n: int, *, half: float = 0.5, scale: float = 0.03, opacity: float = 0.12, degree: int = 1, generator=None
    ) -> Gaussians:
        """n isotropic Gaussians uniform in [-half, half]^3, of std `scale`, random colours in [0.25, 0.75] and zero
        degree-1 coefficients; drawn on CPU in float32 from `generator`."""
        if isinstance(n, bool) or not isinstance(n, numbers.Integral):
            raise ScorelabError(f"random_in_box needs a whole number of Gaussians n > 0, got {n!r}")
        if n <= 0 or degree not in (0, 1) or not 0 < opacity < 1 or scale <= 0:
            raise ScorelabError(
                f"random_in_box needs n > 0, degree 0 or 1, opacity in (0, 1), scale > 0; got {n}, {degree}, "
                f"{opacity}, {scale}"
            )
        means = (torch.rand(n, 3, generator=generator) * 2 - 1) * half
        colors = 0.25 + 0.5 * torch.rand(n, 3, generator=generator)
        return cls.from_points(means, colors, scale=scale, opacity=opacity, degree=degree)

    @classmethod
    def from_points(
        cls, points, colors=None, *, scale: float | None = None, opacity: float = 0.1, degree: int = 1
    ) -> Gaussians:
        """Isotropic Gaussians at points (P, 3) with colours (P, 3) in [0, 1] (grey if None). Scale: `scale`, or
        else the mean distance to the three nearest other points (Kerbl et al. 2023, sec. 5.1)."""
        points = torch.as_tensor(points)
        if points.dim() != 2 or points.shape[1] != 3 or points.shape[0] == 0 or not points.is_floating_point():
            raise ScorelabError(f"points must be a non-empty float tensor of shape (P, 3), got {tuple(points.shape)}")
        if degree not in (0, 1) or not 0 < opacity < 1:
            raise ScorelabError(f"from_points needs degree 0 or 1 and opacity in (0, 1), got {degree}, {opacity}")
        n, dt, dev = points.shape[0], points.dtype, points.device
        if colors is None:
            colors = torch.full((n, 3), 0.5, dtype=dt, device=dev)
        colors = torch.as_tensor(colors, dtype=dt, device=dev)
        if colors.shape != (n, 3):
            raise ScorelabError(f"colors must have shape ({n}, 3) to match points, got {tuple(colors.shape)}")
        if not torch.isfinite(colors).all() or colors.min() < 0 or colors.max() > 1:
            raise ScorelabError(
                f"colors must be finite and lie in [0, 1], got {colors.min().item():g}..{colors.max().item():g}"
            )
        if scale is not None:
            if scale <= 0:
                raise ScorelabError(f"scale must be > 0, got {scale}")
            s = torch.full((n,), float(scale), dtype=dt, device=dev)
        elif n < 2:
            raise ScorelabError("from_points needs at least 2 points (or an explicit scale) to estimate a scale")
        else:
            k = min(3, n - 1)
            s = torch.cat(
                [
                    torch.cdist(chunk, points).topk(k + 1, largest=False).values[:, 1:].mean(1)
                    for chunk in points.split(4096)
                ]
            ).clamp_min(1e-7)
        sh = torch.zeros(n, 1 + 3 * degree, 3, dtype=dt, device=dev)
        sh[:, 0] = (colors - 0.5) / SH_C0  # inverse of sh_color for degree 0
        quats = torch.zeros(n, 4, dtype=dt, device=dev)
        quats[:, 0] = 1
        logit = math.log(opacity / (1 - opacity))
        return cls(
            points.clone(), s.log()[:, None].repeat(1, 3), quats, torch.full((n,), logit, dtype=dt, device=dev), sh
        )

    def render(self, cameras: Cameras, **kwargs) -> dict:
        """render_gaussians with this set's parameters (opacity = sigmoid(opacity_logits))."""
        return render_gaussians(
            self.means, self.log_scales, self.quats, torch.sigmoid(self.opacity_logits), self.sh, cameras, **kwargs
        )


def quat_to_rotmat(q: torch.Tensor) -> torch.Tensor:
    """Unnormalised (w, x, y, z) quaternions (..., 4) -> rotation matrices (..., 3, 3) (the standard unit-quaternion
    formula, Kerbl et al. 2023, sec. 4)."""
    w, x, y, z = F.normalize(q, dim=-1).unbind(-1)
    rows = [
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ]
    return torch.stack([torch.stack(r, -1) for r in rows], -2)


def covariance_3d(log_scales: torch.Tensor, quats: torch.Tensor) -> torch.Tensor:
    """Sigma = R S S^T R^T (Kerbl et al. 2023, eq. 6), (G, 3, 3)."""
    m = quat_to_rotmat(quats) * torch.exp(log_scales)[..., None, :]
    return m @ m.transpose(-1, -2)


def project(means, cov3d, cameras: Cameras, view: int = 0, near: float = 1e-6):
    """For one view: screen means (G, 2) in pixels, 2D covariances (G, 2, 2) and camera depths z (G,).

    Sigma' = J W Sigma W^T J^T + 0.3 I (Zwicker et al. 2001, eq. 31; Kerbl et al. 2023, eq. 5), J the Jacobian of
    (fx x / z + cx, fy y / z + cy) at the camera-space mean. Depths below `near` are clamped inside the divisions only,
    so Gaussians behind the camera (culled by the renderer) keep finite values and gradients. J is evaluated at the
    mean's direction clamped to the image widened by 15% of its size on each side (1.3 tan(fov/2) for a centred
    principal point, as in Kerbl et al.'s reference rasterizer), so Gaussians far outside the view do not get the
    huge, nearly singular footprints the affine approximation gives there; inside that frustum J is exact."""
    w2c = cameras.world_to_cam[view].to(means.device, means.dtype)
    rot, trans = w2c[:3, :3], w2c[:3, 3]
    t = means @ rot.T + trans
    fx, fy = cameras.focal[view].to(means.device, means.dtype)
    cx, cy = cameras.principal[view].to(means.device, means.dtype)
    tx, ty, tz = t.unbind(-1)
    zc = tz.clamp(min=near)
    mean2d = torch.stack([fx * tx / zc + cx, fy * ty / zc + cy], -1)  # pinhole projection, docs/cameras.md
    zeros = torch.zeros_like(zc)
    # normalised image coordinates x/z, y/z limited to the widened frustum (reference rasterizer's computeCov2D)
    w, h = cameras.width, cameras.height
    ux = (tx / zc).clamp((-cx - FRUSTUM_MARGIN * w) / fx, (w - cx + FRUSTUM_MARGIN * w) / fx)
    uy = (ty / zc).clamp((-cy - FRUSTUM_MARGIN * h) / fy, (h - cy + FRUSTUM_MARGIN * h) / fy)
    jac = torch.stack(
        [torch.stack([fx / zc, zeros, -fx * ux / zc], -1), torch.stack([zeros, fy / zc, -fy * uy / zc], -1)], -2
    )  # fmt: skip  (G, 2, 3), Zwicker et al. 2001, eq. 29 (the affine approximation of the projection)
    jw = jac @ rot
    cov2d = jw @ cov3d @ jw.transpose(-1, -2) + DILATION * torch.eye(2, dtype=means.dtype, device=means.device)
    return mean2d, cov2d, tz


def conic_and_extent(cov2d: torch.Tensor, opacity: torch.Tensor | None = None, alpha_min: float = 0.0):
    """Conic (a, b, c) of the inverse 2D covariance [[a, b], [b, c]], (G, 3), and the screen half-widths (G, 2) of the
    box used for culling (no gradient): the axis-aligned box k sqrt(Sigma'_xx), k sqrt(Sigma'_yy) of the ellipse
    d^T Sigma'^-1 d <= k^2 with k = min(3, sqrt(2 ln(o / alpha_min))). k = 3 is the reference's 3-sigma cut (which
    uses a square of the major axis instead, a superset); the smaller k where the Gaussian is so faint that alpha
    falls below alpha_min inside the 3-sigma ellipse drops only contributions that are skipped anyway. A Gaussian
    with o < alpha_min gets a negative width (never visible)."""
    det = cov2d[:, 0, 0] * cov2d[:, 1, 1] - cov2d[:, 0, 1] ** 2
    conic = torch.stack([cov2d[:, 1, 1], -cov2d[:, 0, 1], cov2d[:, 0, 0]], -1) / det[:, None]
    with torch.no_grad():
        k = torch.full_like(det, 3.0)
        if opacity is not None and alpha_min > 0:
            # o exp(-k^2 / 2) = alpha_min on the ellipse of Mahalanobis radius k
            k2 = 2 * torch.log(opacity.detach().clamp_min(1e-30) / alpha_min)
            k = torch.where(k2 >= 0, k2.clamp_min(0).sqrt().clamp(max=3.0), -torch.ones_like(k))
        extent = k[:, None] * torch.stack([cov2d[:, 0, 0], cov2d[:, 1, 1]], -1).sqrt()
    return conic, extent


def sh_color(sh: torch.Tensor, dirs: torch.Tensor) -> torch.Tensor:
    """Colour (G, 3) from real SH of degree 0/1 (G, K, 3) along unit view directions (camera -> Gaussian) (G, 3),
    with the reference implementation's +0.5 offset and clamp at 0 (Kerbl et al. 2023, sec. 4; the reference's
    computeColorFromSH): C0 k0 - C1 y k1 + C1 z k2 - C1 x k3 + 0.5."""
    c = SH_C0 * sh[:, 0]
    if sh.shape[1] >= 4:
        x, y, z = dirs[:, 0:1], dirs[:, 1:2], dirs[:, 2:3]
        c = c - SH_C1 * y * sh[:, 1] + SH_C1 * z * sh[:, 2] - SH_C1 * x * sh[:, 3]
    return (c + 0.5).clamp(min=0)


def _alpha(packed, valid, origin, pix, alpha_min, backward=False):
    """Per (Gaussian, pixel) of a chunk: offsets dx, dy, the Gaussian falloff exp(power), o exp(power), alpha, and
    where alpha passes the gradient of o exp(power) (below the cap, not cut; only for the backward pass)."""
    dx = pix[:, 0] - (packed[..., 0:1] - origin[:, None, 0:1])  # (n, L, P)
    dy = pix[:, 1] - (packed[..., 1:2] - origin[:, None, 1:2])
    a, b, c = packed[..., 2:3], packed[..., 3:4], packed[..., 4:5]
    power = (-0.5 * a) * dx * dx - b * dx * dy - (0.5 * c) * dy * dy  # -d^T Sigma'^-1 d / 2 with the conic (a, b, c)
    falloff = torch.exp(power)
    raw = (packed[..., 5:6] * valid[..., None]) * falloff
    alpha = raw.clamp(max=ALPHA_MAX)  # Kerbl et al. 2023, sec. 6: alpha = min(0.99, o exp(power))
    live = (raw < ALPHA_MAX) if backward else None
    if alpha_min > 0:
        cut = alpha >= alpha_min  # ... skipped below 1/255
        alpha = alpha * cut
        live = live & cut if backward else None
    return dx, dy, falloff, raw, alpha, live


def _weights(alpha):
    """w_i = alpha_i T_i with T_i = prod_{j<i} (1 - alpha_j) (Kerbl et al. 2023, eq. 3), dropping from the first
    Gaussian that would take T below 1e-4 (a prefix of each pixel's list is kept); also T_i and the kept mask."""
    trans_after = torch.cumprod(1 - alpha, 1)
    trans_before = torch.cat([torch.ones_like(trans_after[:, :1]), trans_after[:, :-1]], 1)
    keep = trans_after >= T_MIN
    return alpha * trans_before * keep, trans_before, keep


class _CompositeChunk(torch.autograd.Function):
    """One chunk of n tiles. packed (n, L, 6 + C): each tile's Gaussians in depth order as (mean u, mean v, conic a,
    b, c, opacity, features); valid (n, L) marks real entries (the rest pad); origin (n, 2) tile origins in pixels;
    pix (P, 2) pixel centres relative to a tile's origin. Returns sum_i w_i f_i (n, C, P) and alpha sum_i w_i =
    1 - T_final (n, P).

    The backward pass recomputes the chunk (so memory holds one chunk's intermediates) and applies the compositing
    gradient in closed form, as the reference rasterizer does: with g_i = dL/dw_i,
    dL/dalpha_i = g_i T_i - sum_{k>i} g_k w_k / (1 - alpha_i) (the same telescoping as its back-to-front pass)."""

    @staticmethod
    def forward(ctx, packed, valid, origin, pix, alpha_min):
        ctx.save_for_backward(packed, valid, origin, pix)
        ctx.alpha_min = alpha_min
        weight = _weights(_alpha(packed, valid, origin, pix, alpha_min)[4])[0]  # (n, L, P)
        return torch.bmm(packed[..., 6:].transpose(1, 2), weight), weight.sum(1)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_f, grad_a):
        packed, valid, origin, pix = ctx.saved_tensors
        dx, dy, falloff, raw, alpha, live = _alpha(packed, valid, origin, pix, ctx.alpha_min, backward=True)
        weight, trans_before, keep = _weights(alpha)
        g_w = torch.baddbmm(grad_a[:, None, :], packed[..., 6:], grad_f)  # dL/dw_i = f_i . dL/dF + dL/dA
        g_feats = torch.bmm(weight, grad_f.transpose(1, 2))  # (n, L, C)
        gw = g_w * weight
        later = gw.sum(1, keepdim=True) - gw.cumsum(1)  # sum_{k>i} g_k w_k
        g_raw = (g_w * trans_before - later / (1 - alpha)) * (keep & live)  # dL/d(o exp(power))
        g_o = (g_raw * falloff).sum(-1) * valid  # (n, L)
        g_pow = g_raw * raw
        q, r = g_pow * dx, g_pow * dy
        sx, sy = q.sum(-1), r.sum(-1)
        a, b, c = packed[..., 2], packed[..., 3], packed[..., 4]
        # power = -a dx^2 / 2 - b dx dy - c dy^2 / 2 with dx = u - mean_u, dy = v - mean_v
        g_mean = torch.stack([a * sx + b * sy, b * sx + c * sy], -1)
        g_conic = torch.stack([-0.5 * (q * dx).sum(-1), -(q * dy).sum(-1), -0.5 * (r * dy).sum(-1)], -1)
        return torch.cat([g_mean, g_conic, g_o[..., None], g_feats], -1), None, None, None, None


def _composite_tiles(mean2d, conic, feats, opacity, order, tile_ids, tiles_x, n_tiles, max_work, alpha_min):
    """Front-to-back compositing of each tile's depth-sorted Gaussians (`order`: Gaussian ids sorted by tile then
    depth, `tile_ids`: their tiles): per tile and pixel, sum_i w_i f_i (n_tiles, C, P) and alpha (n_tiles, P), with
    P = TILE^2 pixels in row-major order."""
    dev, dt = mean2d.device, mean2d.dtype
    counts = torch.bincount(tile_ids, minlength=n_tiles)
    starts = torch.cumsum(counts, 0) - counts
    out_f = mean2d.new_zeros(n_tiles, feats.shape[1], TILE * TILE)
    out_a = mean2d.new_zeros(n_tiles, TILE * TILE)
    packed = torch.cat([mean2d, conic, opacity[:, None], feats], 1)  # one gather per chunk (and one scatter back)
    # tiles are independent: visit them longest list first, so each chunk pads its lists to similar lengths
    by_len = torch.argsort(counts, descending=True)
    lengths = counts[by_len].tolist()
    ly, lx = torch.meshgrid(torch.arange(TILE, device=dev), torch.arange(TILE, device=dev), indexing="ij")
    pix = torch.stack([lx.reshape(-1), ly.reshape(-1)], -1).to(dt) + 0.5  # (P, 2) centres relative to the origin
    chunks, i = [], 0
    while i < len(lengths) and lengths[i] > 0:
        # as many tiles as fit in max_work (pixel, Gaussian) pairs at the chunk's longest list (its first)
        n = max(1, min(max_work // (TILE * TILE * lengths[i]), len(lengths) - i))
        n = next((k for k in range(1, n) if lengths[i + k] == 0), n)  # stop at the empty tiles
        chunks.append((i, n, lengths[i]))
        i += n
    for i, n, longest in chunks:
        tiles = by_len[i : i + n]
        slot = torch.arange(longest, device=dev)
        valid = slot[None] < counts[tiles, None]  # (n, L)
        idx = order[(starts[tiles, None] + slot[None]).clamp(max=order.shape[0] - 1)]  # (n, L) Gaussian ids
        origin = torch.stack([(tiles % tiles_x) * TILE, (tiles // tiles_x) * TILE], -1).to(dt)  # (n, 2)
        f, a = _CompositeChunk.apply(packed[idx], valid, origin, pix, alpha_min)
        out_f = out_f.index_copy(0, tiles, f)
        out_a = out_a.index_copy(0, tiles, a)
    return out_f, out_a


def _bin_to_tiles(mean2d, extent, z, near, tiles_x, tiles_y):
    """(Gaussian, tile) pairs of the visible Gaussians (z > near, extent >= 0, box [mean - extent, mean + extent] on
    screen), sorted by tile then depth: Gaussian ids and tile ids."""
    dev = mean2d.device
    lo = ((mean2d - extent) / TILE).floor().clamp(min=0)
    hi = ((mean2d + extent) / TILE).floor()
    hi = torch.minimum(hi, torch.tensor([tiles_x - 1, tiles_y - 1], device=dev, dtype=hi.dtype))
    visible = (z > near) & (hi >= lo).all(1) & (extent >= 0).all(1) & torch.isfinite(mean2d).all(1)
    ids = visible.nonzero().squeeze(1)
    lo, hi = lo[ids].long(), hi[ids].long()
    nx, ny = hi[:, 0] - lo[:, 0] + 1, hi[:, 1] - lo[:, 1] + 1
    per = nx * ny
    owner = torch.repeat_interleave(torch.arange(ids.shape[0], device=dev), per)
    off = torch.arange(owner.shape[0], device=dev) - torch.repeat_interleave(torch.cumsum(per, 0) - per, per)
    tile = (lo[owner, 1] + off // nx[owner]) * tiles_x + lo[owner, 0] + off % nx[owner]
    gid = ids[owner]
    depth_rank = torch.empty_like(z, dtype=torch.long)
    depth_rank[z.argsort()] = torch.arange(z.shape[0], device=dev)
    sort = (tile * z.shape[0] + depth_rank[gid]).argsort()
    return gid[sort], tile[sort]


def render_gaussians(
    means,
    log_scales,
    quats,
    opacity,
    sh,
    cameras: Cameras,
    *,
    background=(1.0, 1.0, 1.0),
    near: float = 0.01,
    max_work: int = 1_000_000,
    preserve_integral: bool = False,
    alpha_min: float = ALPHA_MIN,
) -> dict:
    """Render every view, as the other renderers do: colour (N, 3, H, W) over `background` (3 values, white by
    default), mask (N, 1, H, W) = the opacity sum_i w_i, expected depth (N, 1, H, W) (camera z weighted by the
    compositing weights, not normalised by the mask).

    Gaussians with camera depth z <= near are culled. max_work bounds the (pixel, Gaussian) pairs of one chunk, so
    peak memory is O(max_work) plus O(pairs of Gaussians and tiles), never O(G x pixels); the result does not depend
    on it. preserve_integral: scale each opacity by sqrt(det(Sigma' - 0.3 I) / det Sigma'), so the 0.3 px^2 low-pass
    term blurs a kernel without adding to its screen integral (EWA's convolution of normalised Gaussians, Zwicker et
    al. 2001, eq. 30; the same factor as Mip-Splatting's 2D filter). Off by default, as in the 3DGS reference.
    alpha_min: contributions below it are skipped (1/255 in the reference; many faint kernels, as in voxel
    splatting, need 0 or their sum is lost)."""
    _check_gaussians(means, log_scales, quats, opacity, sh)
    _check_values(means, log_scales, quats, opacity, sh)
    check_cameras(cameras, "render_gaussians")
    if max_work < 1 or near <= 0 or not 0 <= alpha_min < 1:
        raise ScorelabError(
            f"need max_work >= 1, near > 0 and alpha_min in [0, 1), got {max_work}, {near}, {alpha_min}"
        )
    check_background(background)
    bg = torch.as_tensor(background, dtype=means.dtype, device=means.device)
    cameras = cameras.to(means.device, means.dtype)  # everything follows the means
    h, w = cameras.height, cameras.width
    tiles_x, tiles_y = math.ceil(w / TILE), math.ceil(h / TILE)
    cov3d = covariance_3d(log_scales, quats)
    colors, masks, depths = [], [], []
    for v in range(len(cameras)):
        mean2d, cov2d, z = project(means, cov3d, cameras, v)
        op = opacity
        if preserve_integral:
            det = cov2d[:, 0, 0] * cov2d[:, 1, 1] - cov2d[:, 0, 1] ** 2
            det_raw = (cov2d[:, 0, 0] - DILATION) * (cov2d[:, 1, 1] - DILATION) - cov2d[:, 0, 1] ** 2
            op = opacity * torch.sqrt(det_raw.clamp(min=0) / det)
        conic, extent = conic_and_extent(cov2d, op, alpha_min)
        centre = cameras.centre[v]
        col = sh_color(sh, F.normalize(means - centre, dim=-1))
        feats = torch.cat([col, z[:, None]], -1)  # composite colour and depth together
        with torch.no_grad():
            order, tile_sorted = _bin_to_tiles(mean2d.detach(), extent, z.detach(), near, tiles_x, tiles_y)
        f, a = _composite_tiles(
            mean2d, conic, feats, op, order, tile_sorted, tiles_x, tiles_x * tiles_y, max_work, alpha_min
        )
        f = torch.cat([f.transpose(1, 2), (1 - a)[..., None]], -1)  # (tiles, P, 5) with the final transmittance
        img = f.reshape(tiles_y, tiles_x, TILE, TILE, 5).permute(0, 2, 1, 3, 4).reshape(tiles_y * TILE, -1, 5)[:h, :w]
        colors.append((img[..., :3] + img[..., 4:] * bg).permute(2, 0, 1))
        depths.append(img[..., 3])
        masks.append(1 - img[..., 4])
    return {"color": torch.stack(colors), "mask": torch.stack(masks)[:, None], "depth": torch.stack(depths)[:, None]}
