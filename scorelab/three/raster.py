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

import math
from dataclasses import dataclass

import torch

from scorelab.data.images import check_background
from scorelab.errors import ScorelabError

from .cameras import Cameras, check_cameras, world_to_camera
from .mesh import Mesh, validate_mesh, vertex_normals


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
    cameras = cameras.to(vertices.device, vertices.dtype)  # the cameras follow the mesh
    cam = world_to_camera(cameras, vertices)
    z = cam[..., 2]
    uv = cam[..., :2] / z.unsqueeze(-1) * cameras.focal[:, None, :] + cameras.principal[:, None, :]
    return uv, z


def _edge(a, b, p):
    """Edge function (Pineda 1988): twice the signed area of (a, b, p); positive when p is to the left of a -> b
    (x right, y up)."""
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
    check_cameras(cameras, "rasterize")
    if not 0 < near < math.inf:  # near <= 0 would draw faces behind the camera, mirrored
        raise ScorelabError(f"near must be a depth > 0, got {near}")
    screen, depth = project_vertices(cameras, mesh.vertices)
    faces = mesh.faces.long()  # int32 faces (which validate_mesh allows) as int64 for the index arithmetic
    ids = torch.stack(
        [
            _zbuffer(screen[k].detach(), depth[k].detach(), faces, cameras.height, cameras.width, near, max_pairs)
            for k in range(len(cameras))
        ]
    )
    return Rasterized(ids, screen, depth, faces)


def barycentrics(rast: Rasterized) -> tuple[torch.Tensor, torch.Tensor]:
    """Perspective-correct barycentrics (N, H, W, 3), recomputed differentiably from the projected vertices of each
    pixel's triangle (zero on background), and the covered mask (N, H, W)."""
    n, h, w = rast.tri_id.shape
    covered = rast.tri_id >= 0
    if rast.faces.shape[0] == 0:
        return rast.screen.new_zeros(n, h, w, 3), covered
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
    # background pixels read face 0 as a stand-in; a safe denominator keeps 0/0 (face 0 degenerate) out of the backward
    b = bz / torch.where(covered[..., None], bz.sum(-1, keepdim=True), torch.ones_like(bz[..., :1]))
    return torch.where(covered[..., None], b, torch.zeros_like(b)), covered


def interpolate(attributes: torch.Tensor, rast: Rasterized, bary: torch.Tensor | None = None) -> torch.Tensor:
    """Per-vertex attributes (V, C) -> (N, H, W, C) at each pixel, zero on background; differentiable in both the
    attributes and the vertex positions (through the barycentrics)."""
    if rast.faces.shape[0] == 0:
        return attributes.new_zeros(*rast.tri_id.shape, attributes.shape[-1])
    if bary is None:
        bary, _ = barycentrics(rast)
    values = attributes[rast.faces[rast.tri_id.clamp(min=0)]]  # (N, H, W, 3, C)
    return (bary[..., None] * values).sum(-2)


def edge_neighbours(faces: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For edge k of face i (from vertex k to vertex k + 1): the face across it and that face's vertex off the edge,
    both (F, 3) int64, -1 on a boundary edge. View-independent; computed once per render. Edges shared by more than
    two faces (non-manifold) are paired in sorted order, so which neighbour they get is arbitrary."""
    faces = faces.long()  # int32 faces would overflow the edge keys and mismatch the int64 outputs
    f = faces.shape[0]
    e = torch.stack([faces, faces.roll(-1, 1)], -1).reshape(-1, 2)  # (3F, 2): edge k of face i at 3 i + k
    third = faces.roll(-2, 1).reshape(-1)  # the vertex opposite each edge within its own face
    key = e.min(1).values * (int(faces.max()) + 1) + e.max(1).values
    order = key.argsort()
    same = (key[order][1:] == key[order][:-1]).nonzero().squeeze(1)
    a, b = order[same], order[same + 1]
    face = torch.full((3 * f,), -1, dtype=torch.long, device=faces.device)
    vert = torch.full((3 * f,), -1, dtype=torch.long, device=faces.device)
    face[a], face[b] = b // 3, a // 3
    vert[a], vert[b] = third[b], third[a]
    return face.reshape(f, 3), vert.reshape(f, 3)


def antialias(
    color: torch.Tensor, rast: Rasterized, neighbours: tuple | None = None, *, max_steps: int = 64
) -> torch.Tensor:
    """Analytic antialiasing across silhouette edges (Laine et al. 2020, sec. 3.4). color: (N, H, W, C).

    For each pair of horizontally or vertically adjacent pixels with different triangles, the triangle in front (the
    nearer one, or the only one) owns the 'near' pixel. Walk along the segment from the near pixel's centre to the far
    one's: leave the current triangle through the edge the line exits by (Cyrus-Beck clipping), and while that edge is
    not a silhouette step into the triangle across it (at most max_steps steps; nvdiffrast looks at the first triangle
    only, which misses silhouettes of triangles smaller than a pixel). An edge is a silhouette in this view if no face
    lies across it, or the neighbour's far vertex is on the same side of it as the triangle's own third vertex (the
    surface folds away). The blend happens when the walk meets a silhouette at t in (0, 1) and that edge runs across
    the pair's direction (|dv| >= |du| for a horizontal pair, |du| > |dv| for a vertical one), so each edge is counted
    by one family of pairs and a translation changes the summed coverage by the edge's projected length, as the
    derivative of the covered area requires. With pixels as unit boxes along the segment, the surface covers t - 1/2
    of the far pixel when t > 1/2 (its colour moves that far towards the near one), or leaves 1/2 - t of the near pixel
    uncovered (its colour moves towards the far one). Both families blend the input colours and their changes add. The
    weights depend on the silhouette edge's screen position: that is where the gradients with respect to the vertex
    positions at silhouettes come from. `neighbours` is edge_neighbours(rast.faces), computed if not given."""
    n, h, w, c = color.shape
    if rast.faces.shape[0] == 0:
        return color
    adj_face, adj_vert = edge_neighbours(rast.faces) if neighbours is None else neighbours
    with torch.no_grad():
        depth_img = _pixel_depth(rast, *barycentrics(rast))
    src = color.reshape(n * h * w, c)
    flat = src
    for drow, dcol in ((0, 1), (1, 0)):
        id_p, id_q = rast.tri_id[:, : h - drow, : w - dcol], rast.tri_id[:, drow:, dcol:]
        d_p, d_q = depth_img[:, : h - drow, : w - dcol], depth_img[:, drow:, dcol:]
        p_front = (id_q < 0) | ((id_p >= 0) & (d_p <= d_q))
        front = torch.where(p_front, id_p, id_q)
        view, row, col = ((id_p != id_q) & (front >= 0)).nonzero().unbind(1)
        if view.numel() == 0:
            continue
        pf = p_front[view, row, col]
        idx_p = (view * h + row) * w + col
        idx_q = (view * h + row + drow) * w + col + dcol
        near_idx, far_idx = torch.where(pf, idx_p, idx_q), torch.where(pf, idx_q, idx_p)
        centre_p = torch.stack([col, row], 1).to(rast.screen.dtype) + 0.5
        centre_q = centre_p + torch.tensor([dcol, drow], dtype=centre_p.dtype, device=centre_p.device)
        near_c = torch.where(pf[:, None], centre_p, centre_q)
        far_c = torch.where(pf[:, None], centre_q, centre_p)
        tri, k, ok = _walk_to_silhouette(rast, front[view, row, col], view, near_c, far_c, adj_face, adj_vert,
                                         bool(dcol), max_steps)  # fmt: skip
        # differentiable crossing of the chosen edge: edge functions are affine along the segment
        a = rast.screen[view, rast.faces[tri, k]]
        b = rast.screen[view, rast.faces[tri, (k + 1) % 3]]
        f_near, f_far = _edge(a, b, near_c), _edge(a, b, far_c)
        t = f_near / torch.where(ok, f_near - f_far, torch.ones_like(f_near))
        t = torch.where(ok, t, torch.full_like(t, 0.5)).to(color.dtype)  # t = 1/2 blends nothing
        c_near, c_far = src[near_idx], src[far_idx]
        delta_far = (t - 0.5).clamp(min=0)[:, None] * (c_near - c_far)
        delta_near = (0.5 - t).clamp(min=0)[:, None] * (c_far - c_near)
        flat = flat.index_add(0, far_idx, delta_far).index_add(0, near_idx, delta_near)
    return flat.reshape(n, h, w, c)


@torch.no_grad()
def _walk_to_silhouette(rast, tri, view, near_c, far_c, adj_face, adj_vert, horizontal, max_steps):
    """For each segment (near_c -> far_c, starting in triangle tri of its view), the triangle and edge index k where
    the segment leaves the surface through a silhouette edge running across the segment, and whether it does so
    before the far centre (ok). No gradient: only the choice is made here."""
    m = tri.shape[0]
    k = torch.zeros(m, dtype=torch.long, device=tri.device)
    ok = torch.zeros(m, dtype=torch.bool, device=tri.device)
    active = torch.ones(m, dtype=torch.bool, device=tri.device)
    screen = rast.screen.detach()
    for _ in range(max_steps):
        i = active.nonzero().squeeze(1)
        if i.numel() == 0:
            break
        ti, vi = tri[i], view[i]
        v = screen[vi[:, None], rast.faces[ti]]  # (M, 3, 2)
        a, b = v, v.roll(-1, 1)  # edge k from vertex k to k + 1
        sign = torch.sign(_edge(v[:, 0], v[:, 1], v[:, 2]))[:, None]  # inside: sign * edge function >= 0
        f0 = sign * _edge(a, b, near_c[i, None])
        f1 = sign * _edge(a, b, far_c[i, None])
        leaving = f1 < f0  # Cyrus-Beck: the inside measure decreases along the segment
        t_edge = torch.where(leaving, f0 / (f0 - f1).where(leaving, torch.ones_like(f0)), torch.full_like(f0, 3.0))
        t, kk = t_edge.min(1)
        kk = torch.where(t < 3.0, kk, torch.zeros_like(kk))
        ea, eb = v[torch.arange(len(i)), kk], v[torch.arange(len(i)), (kk + 1) % 3]
        own = v[torch.arange(len(i)), (kk + 2) % 3]
        nf, nv = adj_face[ti, kk], adj_vert[ti, kk]
        opp = screen[vi, nv.clamp(min=0)]
        silhouette = (nf < 0) | (_edge(ea, eb, own) * _edge(ea, eb, opp) > 0)
        du, dv = (eb - ea).abs().unbind(1)
        across = dv >= du if horizontal else du > dv
        inside = t < 1  # the surface ends before the far centre
        done = ~inside | silhouette
        k[i], tri[i] = kk, torch.where(done, ti, nf)
        ok[i] = inside & silhouette & across
        active[i] = ~done
    return tri, k, ok & ~active


def _pixel_depth(rast: Rasterized, bary: torch.Tensor, covered: torch.Tensor) -> torch.Tensor:
    """Camera depth of each pixel's triangle at the pixel centre, +inf on background. Perspective-correct barycentrics
    interpolate camera z exactly, since z is an affine function on the triangle in 3D."""
    if rast.faces.shape[0] == 0:
        return torch.full(covered.shape, float("inf"), dtype=rast.depth.dtype, device=covered.device)
    view = torch.arange(covered.shape[0], device=covered.device)[:, None, None, None]
    z = rast.depth[view, rast.faces[rast.tri_id.clamp(min=0)]]  # (N, H, W, 3)
    d = (bary * z).sum(-1)
    return torch.where(covered, d, torch.full_like(d, float("inf")))


def render_mesh(mesh: Mesh, cameras: Cameras, *, background=(1.0, 1.0, 1.0), near: float = 1e-3) -> dict:
    """Render a mesh into every camera. Returns a dict of buffers, all (N, C, H, W) in the vertices' dtype:

    color (3): interpolated vertex colours, or the area-weighted vertex normals shown as colours 0.5 + 0.5 n when the
        mesh has none, over `background` (RGB in [0, 1]), antialiased at silhouettes;
    mask (1): coverage in [0, 1], antialiased at silhouettes (the source of the position gradient at the outline);
    depth (1): camera z of the visible surface (perspective-correct), 0 on background, not antialiased;
    normals (3): world-space interpolated vertex normals (not renormalised), 0 on background;
    and tri_id (N, H, W) int64, -1 on background. Faces with a vertex at depth <= near are not drawn (no clipping);
    an empty mesh renders background. Gradients flow to vertices and vertex colours."""
    validate_mesh(mesh, name="render_mesh: mesh", allow_empty=True, allow_degenerate=True)
    check_cameras(cameras, "render_mesh")
    check_background(background)
    rast = rasterize(mesh, cameras, near=near)
    bary, covered = barycentrics(rast)
    normals = interpolate(vertex_normals(mesh.vertices, rast.faces), rast, bary)
    if mesh.vertex_colors is not None:
        albedo = interpolate(mesh.vertex_colors, rast, bary)
    else:
        albedo = (0.5 + 0.5 * normals).clamp(0, 1)
    bg = torch.as_tensor(background, dtype=albedo.dtype, device=albedo.device)
    cov = covered[..., None].to(albedo.dtype)
    rgb = albedo * cov + bg * (1 - cov)
    both = antialias(torch.cat([rgb, cov], -1), rast)
    depth = _pixel_depth(rast, bary, covered)
    return {
        "color": both[..., :3].permute(0, 3, 1, 2),
        "mask": both[..., 3:].permute(0, 3, 1, 2),
        "depth": torch.where(covered, depth, torch.zeros_like(depth)).unsqueeze(1),
        "normals": (normals * cov).permute(0, 3, 1, 2),
        "tri_id": rast.tri_id,
    }
