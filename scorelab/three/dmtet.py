"""DMTet (Shen et al. 2021, 'Deep Marching Tetrahedra'): an SDF and a bounded offset per tet-grid vertex, marching
tetrahedra differentiable in both, volume subdivision of surface tets, and the usual regularisers.

Sign convention: the SDF is negative inside and positive outside; extracted faces are wound counter-clockwise seen
from outside, so (v1 - v0) x (v2 - v0) points towards positive SDF.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .tets import TET_EDGES, TetGrid, orient


def _reference_table() -> tuple[torch.Tensor, torch.Tensor]:
    """Marching-tetrahedra table: for each of the 16 sign cases (bit i set = vertex i outside), up to two triangles
    as local edge indices, oriented on a positively oriented reference tet so normals point to the outside vertices.

    One vertex apart from the other three: the triangle on that vertex's three edges. Two and two: the quad through
    the four edges joining the groups, in cyclic order (p r, p t, q t, q r), split into two triangles.
    """
    ref = torch.tensor([[0.0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=torch.float64)  # det > 0
    edge_of = {frozenset(e): k for k, e in enumerate(TET_EDGES)}
    mid = torch.stack([(ref[a] + ref[b]) / 2 for a, b in TET_EDGES])
    tris = torch.full((16, 2, 3), -1, dtype=torch.long)
    count = torch.zeros(16, dtype=torch.long)
    for code in range(1, 15):
        out = [i for i in range(4) if code >> i & 1]
        ins = [i for i in range(4) if not code >> i & 1]
        if len(out) == 1 or len(ins) == 1:
            lone, rest = (out[0], ins) if len(out) == 1 else (ins[0], out)
            cand = [[edge_of[frozenset((lone, r))] for r in rest]]
        else:
            (p, q), (r, t) = out, ins
            pr, pt, qt, qr = (edge_of[frozenset(e)] for e in ((p, r), (p, t), (q, t), (q, r)))
            cand = [[pr, pt, qt], [pr, qt, qr]]
        towards_out = ref[out].mean(0) - ref[ins].mean(0)
        for j, tri in enumerate(cand):
            a, b, c = mid[tri]
            if torch.dot(torch.linalg.cross(b - a, c - a), towards_out) < 0:
                tri = [tri[0], tri[2], tri[1]]
            tris[code, j] = torch.tensor(tri)
        count[code] = len(cand)
    return tris, count


TRIANGLE_TABLE, TRIANGLE_COUNT = _reference_table()


def surface_tets(grid: TetGrid, sdf: torch.Tensor) -> torch.Tensor:
    """(T,) bool: tets whose vertices have both signs."""
    outside = (sdf > 0)[grid.tets]
    return outside.any(1) & ~outside.all(1)


def marching_tets(grid: TetGrid, vertices: torch.Tensor, sdf: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Triangle mesh of the zero level set of the piecewise-linear SDF on the grid.

    vertices: (V, 3) grid vertex positions (deformed or not); sdf: (V,). Returns (M, 3) vertices, one per edge whose
    end points have opposite signs, at the zero of the linear SDF along it: (v_a s_b - v_b s_a) / (s_b - s_a)
    (Shen et al. 2021, eq. 3), differentiable in vertices and sdf; and (F, 3) int64 faces. Uses the grid's unique
    edges, computed once per grid; per call only the surface tets' few edge ids are deduplicated.
    """
    outside = sdf > 0
    occ = outside.to(torch.uint8)
    col = grid.columns
    code = occ[col[0]] | (occ[col[1]] << 1) | (occ[col[2]] << 2) | (occ[col[3]] << 3)
    active = ((code != 0) & (code != 15)).nonzero().squeeze(1)
    code = code[active].long()
    tet_edges = grid.tet_edges[active]
    # the crossing edges all belong to surface tets: look only there (a small set) instead of at every grid edge
    candidates = tet_edges.reshape(-1)
    ends = grid.edges[candidates]
    cross_idx = torch.unique(candidates[outside[ends[:, 0]] != outside[ends[:, 1]]])  # sorted edge ids
    a, b = grid.edges[cross_idx, 0], grid.edges[cross_idx, 1]
    s_a, s_b = sdf[a].unsqueeze(1), sdf[b].unsqueeze(1)
    verts = (vertices[a] * s_b - vertices[b] * s_a) / (s_b - s_a)  # output vertex k sits on edge cross_idx[k]
    table, count = TRIANGLE_TABLE.to(sdf.device), TRIANGLE_COUNT.to(sdf.device)
    faces = []
    for j in (0, 1):
        sel = count[code] > j
        edge_ids = tet_edges[sel].gather(1, table[code[sel], j])  # (n, 3) global edge ids
        faces.append(torch.searchsorted(cross_idx, edge_ids))
    return verts, torch.cat(faces)


def subdivide(grid: TetGrid, sdf: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[TetGrid, torch.Tensor]:
    """Split the tets in `mask` (default: the surface tets) into 8 children each at their edge midpoints, with the
    SDF at a midpoint the average of its end points (Shen et al. 2021, sec. 3.2 'volume subdivision').

    Faces shared between a split tet and an unsplit one carry a single sign when the unsplit tet is not a surface
    tet, so the extracted surface stays closed. Returns the new grid (with the kept tets) and the new SDF.
    """
    mask = surface_tets(grid, sdf) if mask is None else mask
    v = grid.vertices.shape[0]
    split_edges = torch.zeros(grid.edges.shape[0], dtype=torch.bool, device=sdf.device)
    split_edges[grid.tet_edges[mask].reshape(-1)] = True
    e_idx = split_edges.nonzero().squeeze(1)
    new_id = torch.full((grid.edges.shape[0],), -1, dtype=torch.long, device=sdf.device)
    new_id[e_idx] = v + torch.arange(e_idx.shape[0], device=sdf.device)
    a, b = grid.edges[e_idx, 0], grid.edges[e_idx, 1]
    vertices = torch.cat([grid.vertices, (grid.vertices[a] + grid.vertices[b]) / 2])
    new_sdf = torch.cat([sdf, (sdf[a] + sdf[b]) / 2])

    t = grid.tets[mask]
    m = new_id[grid.tet_edges[mask]]  # (n, 6) midpoints in TET_EDGES order: 01 02 03 12 13 23
    m01, m02, m03, m12, m13, m23 = m.unbind(1)
    v0, v1, v2, v3 = t.unbind(1)
    children = [
        (v0, m01, m02, m03),
        (m01, v1, m12, m13),
        (m02, m12, v2, m23),
        (m03, m13, m23, v3),
        # the inner octahedron, split along the diagonal m02-m13 around the cycle m01, m12, m23, m03
        (m02, m13, m01, m12),
        (m02, m13, m12, m23),
        (m02, m13, m23, m03),
        (m02, m13, m03, m01),
    ]
    new_tets = torch.stack([torch.stack(c, 1) for c in children], 1).reshape(-1, 4)
    tets = torch.cat([grid.tets[~mask], orient(vertices.detach(), new_tets)])
    return TetGrid(vertices, tets), new_sdf


class DMTet(nn.Module):
    """Learnable SDF and offset on a tet grid. Offsets are tanh-bounded to `max_offset` cells (default 0.25 of the
    shortest grid edge; bounded offsets keep the grid from tangling, though inversion is not checked)."""

    def __init__(self, grid: TetGrid, sdf: torch.Tensor | None = None, *, max_offset: float = 0.25):
        super().__init__()
        self.grid = grid
        n = grid.vertices.shape[0]
        self.register_buffer("base", grid.vertices.clone())
        self.sdf = nn.Parameter(torch.zeros(n) if sdf is None else sdf.clone().float())
        self.deform = nn.Parameter(torch.zeros(n, 3))
        self.offset_scale = max_offset * grid.cell_size

    def positions(self) -> torch.Tensor:
        return self.base + self.offset_scale * torch.tanh(self.deform)

    def forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        return marching_tets(self.grid, self.positions(), self.sdf)


def sdf_sign_loss(grid: TetGrid, sdf: torch.Tensor) -> torch.Tensor:
    """Cross-entropy on edges whose SDF changes sign: push sigmoid(s_a) towards [s_b > 0] and vice versa, which
    discourages spurious sign flips (Shen et al. 2021; as used by Magic3D and Fantasia3D)."""
    e = grid.edges
    s_a, s_b = sdf[e[:, 0]], sdf[e[:, 1]]
    cross = (s_a > 0) != (s_b > 0)
    if not cross.any():
        return sdf.sum() * 0
    s_a, s_b = s_a[cross], s_b[cross]
    return F.binary_cross_entropy_with_logits(s_a, (s_b > 0).float()) + F.binary_cross_entropy_with_logits(
        s_b, (s_a > 0).float()
    )


def _face_normals(verts: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    p = verts[faces]
    return F.normalize(torch.linalg.cross(p[:, 1] - p[:, 0], p[:, 2] - p[:, 0]), dim=1)


def normal_consistency(verts: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """Mean of 1 - cos between the normals of the two faces on each interior edge."""
    f = faces.shape[0]
    if f == 0:
        return verts.sum() * 0
    e = faces[:, [0, 1, 1, 2, 2, 0]].reshape(-1, 2).sort(1).values
    key = e[:, 0] * verts.shape[0] + e[:, 1]
    order = key.argsort()
    key, face_of = key[order], (torch.arange(3 * f, device=faces.device) // 3)[order]
    pair = (key[1:] == key[:-1]).nonzero().squeeze(1)
    n = _face_normals(verts, faces)
    return (1 - (n[face_of[pair]] * n[face_of[pair + 1]]).sum(1)).mean()


def laplacian_smoothing(verts: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """Mean squared distance between each vertex and the average of its neighbours (uniform weights)."""
    if faces.shape[0] == 0:
        return verts.sum() * 0
    e = faces[:, [0, 1, 1, 2, 2, 0]].reshape(-1, 2)
    e = torch.cat([e, e.flip(1)])
    summed = torch.zeros_like(verts).index_add(0, e[:, 0], verts[e[:, 1]])
    degree = torch.zeros(verts.shape[0], device=verts.device, dtype=verts.dtype).index_add(
        0, e[:, 0], torch.ones(e.shape[0], device=verts.device, dtype=verts.dtype)
    )
    used = degree > 0
    return ((summed[used] / degree[used, None] - verts[used]) ** 2).sum(1).mean()


__all__ = [
    "DMTet",
    "laplacian_smoothing",
    "marching_tets",
    "normal_consistency",
    "sdf_sign_loss",
    "subdivide",
    "surface_tets",
]
