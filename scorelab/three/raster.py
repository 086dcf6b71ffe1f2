"""A differentiable triangle rasterizer in pure PyTorch, in the decomposition of nvdiffrast (Laine et al. 2020,
'Modular Primitives for High-Performance Differentiable Rendering'): rasterize (a z-buffer with no gradient:
triangle id and perspective-correct barycentrics per pixel), interpolate (differentiable attribute interpolation),
antialias (an analytic blend across silhouette edges, which is where gradients with respect to vertex positions at
silhouettes come from).

Pixels follow docs/cameras.md: pixel (i, j) has its centre at (u, v) = (j + 0.5, i + 0.5). Triangles with a vertex
at depth <= `near` are culled (no clipping). Both windings are drawn; back faces are found for silhouettes by their
screen-space orientation (counter-clockwise from outside in the world is clockwise on screen, since v points down).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .cameras import Cameras, world_to_camera
from .mesh import Mesh, face_normals


@dataclass
class Rasterized:
    """tri_id (N, H, W) int64, -1 for background; the screen-space vertex positions (N, V, 2) and depths (N, V)
    they were computed from (differentiable), and the faces."""

    tri_id: torch.Tensor
    screen: torch.Tensor
    depth: torch.Tensor
    faces: torch.Tensor


def project_vertices(cameras: Cameras, vertices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, V, 2) pixel coordinates and (N, V) camera depths, differentiable in the vertices."""
    cam = world_to_camera(cameras.to(dtype=vertices.dtype), vertices)
    z = cam[..., 2]
    uv = cam[..., :2] / z.unsqueeze(-1) * cameras.focal[:, None, :].to(vertices.dtype) + cameras.principal[
        :, None, :
    ].to(vertices.dtype)
    return uv, z


def _edge(a, b, p):
    """Edge function: twice the signed area of (a, b, p); positive when p is to the left of a -> b (x right, y up)."""
    return (b[..., 0] - a[..., 0]) * (p[..., 1] - a[..., 1]) - (b[..., 1] - a[..., 1]) * (p[..., 0] - a[..., 0])


@torch.no_grad()
def _zbuffer(screen, depth, faces, height, width, near, max_pairs):
    """Nearest triangle per pixel for one view: enumerate each triangle's pixel bounding box in chunks of at most
    max_pairs (triangle, pixel) pairs, keep the pixels inside, and take the per-pixel minimum of a packed
    (depth bits, triangle id) key with scatter_reduce."""
    dev = screen.device
    tri = screen[faces]  # (F, 3, 2)
    z = depth[faces]  # (F, 3)
    lo = torch.floor(tri.min(1).values - 0.5).clamp(min=0)
    hi = torch.ceil(tri.max(1).values - 0.5)
    hi[:, 0].clamp_(max=width - 1)
    hi[:, 1].clamp_(max=height - 1)
    area = _edge(tri[:, 0], tri[:, 1], tri[:, 2])
    valid = (z > near).all(1) & (hi >= lo).all(1) & (area.abs() > 1e-12)
    ids = valid.nonzero().squeeze(1)
    w = (hi[ids, 0] - lo[ids, 0] + 1).long()
    h = (hi[ids, 1] - lo[ids, 1] + 1).long()
    counts = w * h
    best = torch.full((height * width,), torch.iinfo(torch.int64).max, dtype=torch.int64, device=dev)
    ends = torch.cumsum(counts, 0)
    start = 0
    while start < ids.shape[0]:
        base = ends[start - 1] if start else torch.zeros((), dtype=torch.long, device=dev)
        stop = int(torch.searchsorted(ends, base + max_pairs, right=True))
        stop = max(stop, start + 1)
        sel = ids[start:stop]
        n_pix = counts[start:stop]
        owner = torch.repeat_interleave(torch.arange(sel.shape[0], device=dev), n_pix)
        offset = torch.arange(owner.shape[0], device=dev) - torch.repeat_interleave(
            torch.cumsum(n_pix, 0) - n_pix, n_pix
        )
        px = lo[sel, 0].long()[owner] + offset % w[start:stop][owner]
        py = lo[sel, 1].long()[owner] + offset // w[start:stop][owner]
        p = torch.stack([px, py], 1).to(screen.dtype) + 0.5
        t = tri[sel][owner]
        e0, e1, e2 = _edge(t[:, 1], t[:, 2], p), _edge(t[:, 2], t[:, 0], p), _edge(t[:, 0], t[:, 1], p)
        a = area[sel][owner]
        inside = (e0 * a >= 0) & (e1 * a >= 0) & (e2 * a >= 0)
        b = torch.stack([e0, e1, e2], 1)[inside] / a[inside, None]
        zz = z[sel][owner][inside]
        pix_depth = 1 / (b / zz).sum(1)  # perspective-correct depth: 1/z is affine in screen space
        key = (pix_depth.float().view(torch.int32).long() << 32) | sel[owner][inside]
        best.scatter_reduce_(0, (py * width + px)[inside], key, reduce="amin")
        start = stop
    tri_id = torch.where(best == torch.iinfo(torch.int64).max, -1, best & 0xFFFFFFFF)
    return tri_id.reshape(height, width)


def rasterize(mesh: Mesh, cameras: Cameras, *, near: float = 1e-3, max_pairs: int = 2_000_000) -> Rasterized:
    """Triangle id per pixel for each camera (no gradient), with the differentiable projected vertices kept."""
    screen, depth = project_vertices(cameras, mesh.vertices)
    ids = torch.stack(
        [
            _zbuffer(screen[k].detach(), depth[k].detach(), mesh.faces, cameras.height, cameras.width, near, max_pairs)
            for k in range(len(cameras))
        ]
    )
    return Rasterized(ids, screen, depth, mesh.faces)


def barycentrics(rast: Rasterized) -> tuple[torch.Tensor, torch.Tensor]:
    """Perspective-correct barycentrics (N, H, W, 3), recomputed differentiably from the projected vertices of each
    pixel's triangle (zero on background), and the covered mask (N, H, W)."""
    n, h, w = rast.tri_id.shape
    covered = rast.tri_id >= 0
    fid = rast.tri_id.clamp(min=0)
    view = torch.arange(n, device=fid.device)[:, None, None].expand_as(fid)
    verts = rast.faces[fid]  # (N, H, W, 3)
    s = rast.screen[view[..., None], verts]  # (N, H, W, 3, 2)
    z = rast.depth[view[..., None], verts]  # (N, H, W, 3)
    jj, ii = torch.meshgrid(torch.arange(w, device=fid.device), torch.arange(h, device=fid.device), indexing="xy")
    p = torch.stack([jj, ii], -1).to(s.dtype) + 0.5
    area = _edge(s[..., 0, :], s[..., 1, :], s[..., 2, :])
    area = torch.where(covered, area, torch.ones_like(area))
    b = torch.stack([_edge(s[..., 1, :], s[..., 2, :], p), _edge(s[..., 2, :], s[..., 0, :], p),
                     _edge(s[..., 0, :], s[..., 1, :], p)], -1) / area[..., None]  # fmt: skip
    bz = b / z  # perspective correction: attributes / z are affine in screen space
    b = bz / bz.sum(-1, keepdim=True)
    return torch.where(covered[..., None], b, torch.zeros_like(b)), covered


def interpolate(attributes: torch.Tensor, rast: Rasterized, bary: torch.Tensor | None = None) -> torch.Tensor:
    """Per-vertex attributes (V, C) -> (N, H, W, C) at each pixel, zero on background; differentiable in both the
    attributes and the vertex positions (through the barycentrics)."""
    if bary is None:
        bary, _ = barycentrics(rast)
    values = attributes[rast.faces[rast.tri_id.clamp(min=0)]]  # (N, H, W, 3, C)
    return (bary[..., None] * values).sum(-2)


def _silhouette_edges(faces: torch.Tensor, screen: torch.Tensor) -> torch.Tensor:
    """(F, 3) bool per view-independent face edge k (from vertex k to k+1): the edge is a silhouette in this view if no
    other face shares it, or the face across it is turned the other way on screen."""
    f = faces.shape[0]
    e = torch.stack([faces, faces.roll(-1, 1)], -1).reshape(-1, 2)  # (3F, 2): edge k of face i at 3 i + k
    key = e.min(1).values * (faces.max() + 1) + e.max(1).values
    order = key.argsort()
    sk = key[order]
    other = torch.full((3 * f,), -1, dtype=torch.long, device=faces.device)
    same = (sk[1:] == sk[:-1]).nonzero().squeeze(1)
    other[order[same]] = order[same + 1] // 3
    other[order[same + 1]] = order[same] // 3
    tri = screen[faces]
    orient = torch.sign(_edge(tri[:, 0], tri[:, 1], tri[:, 2]))  # (F,)
    face = torch.arange(3 * f, device=faces.device) // 3
    sil = (other < 0) | (orient[face] != orient[other.clamp(min=0)])
    return sil.reshape(f, 3)


def antialias(color: torch.Tensor, rast: Rasterized) -> torch.Tensor:
    """Analytic antialiasing across silhouette edges (Laine et al. 2020, sec. 3.4). For each pair of horizontally or
    vertically adjacent pixels with different triangles, take the triangle in front (the nearer one, or the only one;
    its pixel is the 'near' pixel). The segment from the near pixel's centre to the far one's leaves that triangle
    through the first edge it crosses, at t in (0, 1). If that edge is a silhouette, the triangle covers the far pixel's
    half of the segment by t - 1/2 when t > 1/2 (the far colour moves that far towards the near one), else the near
    pixel loses 1/2 - t of its half (its colour moves towards the far one). The weights depend on the edge's screen
    position, which is what gives gradients with respect to the vertices at silhouettes. color: (N, H, W, C)."""
    n, h, w, c = color.shape
    depth_img = _pixel_depth(rast)
    sil = torch.stack([_silhouette_edges(rast.faces, rast.screen[v].detach()) for v in range(n)])  # (N, F, 3)
    flat = color.reshape(n * h * w, c)
    for drow, dcol in ((0, 1), (1, 0)):
        id_p, id_q = rast.tri_id[:, : h - drow, : w - dcol], rast.tri_id[:, drow:, dcol:]
        d_p, d_q = depth_img[:, : h - drow, : w - dcol], depth_img[:, drow:, dcol:]
        p_front = (id_q < 0) | ((id_p >= 0) & (d_p <= d_q))
        front = torch.where(p_front, id_p, id_q)
        view, row, col = ((id_p != id_q) & (front >= 0)).nonzero().unbind(1)
        if view.numel() == 0:
            continue
        pf = p_front[view, row, col]
        tri = front[view, row, col]
        idx_p = (view * h + row) * w + col
        idx_q = (view * h + row + drow) * w + col + dcol
        near_idx, far_idx = torch.where(pf, idx_p, idx_q), torch.where(pf, idx_q, idx_p)
        centre_p = torch.stack([col, row], 1).to(rast.screen.dtype) + 0.5
        centre_q = centre_p + torch.tensor([dcol, drow], dtype=centre_p.dtype, device=centre_p.device)
        near_c = torch.where(pf[:, None], centre_p, centre_q)
        far_c = torch.where(pf[:, None], centre_q, centre_p)
        verts = rast.screen[view[:, None], rast.faces[tri]]  # (M, 3, 2), differentiable
        ts = []
        for k in range(3):
            a, b = verts[:, k], verts[:, (k + 1) % 3]
            f_near, f_far = _edge(a, b, near_c), _edge(a, b, far_c)
            t = f_near / (f_near - f_far)
            ts.append(torch.where(f_near * f_far < 0, t, torch.full_like(t, 2.0)))
        ts = torch.stack(ts, 1)
        exit_edge = ts.detach().argmin(1)
        t = ts.gather(1, exit_edge[:, None]).squeeze(1).to(color.dtype)
        ok = (t < 1) & sil[view, tri, exit_edge]
        t = torch.where(ok, t, torch.full_like(t, 0.5))  # 0.5 blends nothing
        c_near, c_far = flat[near_idx], flat[far_idx]
        delta_far = (t - 0.5).clamp(min=0)[:, None] * (c_near - c_far)
        delta_near = (0.5 - t).clamp(min=0)[:, None] * (c_far - c_near)
        flat = flat.index_add(0, far_idx, delta_far).index_add(0, near_idx, delta_near)
    return flat.reshape(n, h, w, c)


def _pixel_depth(rast: Rasterized) -> torch.Tensor:
    """Depth of each pixel's triangle at the pixel (no gradient), +inf on background."""
    with torch.no_grad():
        b, covered = barycentrics(rast)
        n = rast.tri_id.shape[0]
        view = torch.arange(n, device=b.device)[:, None, None, None]
        z = rast.depth[view, rast.faces[rast.tri_id.clamp(min=0)]]
        d = (b * z).sum(-1)  # perspective-correct barycentrics interpolate camera depth directly
        return torch.where(covered, d, torch.full_like(d, float("inf")))


def render_mesh(mesh: Mesh, cameras: Cameras, *, background=(1.0, 1.0, 1.0), near: float = 1e-3) -> dict:
    """Colour (N, 3, H, W) from the vertex colours (or shaded normals when there are none) over `background`,
    antialiased; mask (N, 1, H, W) antialiased coverage; depth (N, 1, H, W) camera z (0 on background); normals
    (N, 3, H, W) world-space, interpolated vertex normals (0 on background)."""
    rast = rasterize(mesh, cameras, near=near)
    bary, covered = barycentrics(rast)
    fn = face_normals(mesh.vertices, mesh.faces)
    vn = torch.zeros_like(mesh.vertices).index_add(0, mesh.faces.reshape(-1), fn.repeat_interleave(3, 0))
    vn = F.normalize(vn, dim=1)
    normals = interpolate(vn, rast, bary)
    if mesh.vertex_colors is not None:
        albedo = interpolate(mesh.vertex_colors, rast, bary)
    else:
        albedo = (0.5 + 0.5 * normals).clamp(0, 1)
    bg = torch.as_tensor(background, dtype=albedo.dtype, device=albedo.device)
    cov = covered[..., None].to(albedo.dtype)
    rgb = albedo * cov + bg * (1 - cov)
    both = antialias(torch.cat([rgb, cov], -1), rast)
    view = torch.arange(len(cameras), device=bary.device)[:, None, None, None]
    z = rast.depth[view, rast.faces[rast.tri_id.clamp(min=0)]]
    depth = torch.where(covered, (bary * z).sum(-1), torch.zeros_like(covered, dtype=z.dtype))
    return {
        "color": both[..., :3].permute(0, 3, 1, 2),
        "mask": both[..., 3:].permute(0, 3, 1, 2),
        "depth": depth[:, None],
        "normals": (normals * cov).permute(0, 3, 1, 2),
        "tri_id": rast.tri_id,
    }
