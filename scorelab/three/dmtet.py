"""DMTet (Shen et al. 2021, 'Deep Marching Tetrahedra'): an SDF and a bounded offset per tet-grid vertex, marching
tetrahedra differentiable in both, volume subdivision of surface tets, and the usual regularisers.

Sign convention: the SDF is negative inside and positive outside (a vertex with s > 0 is "outside", s <= 0 inside).
Extracted meshes follow the shared mesh convention: vertices (M, 3) float, faces (F, 3) int64, counter-clockwise
seen from outside, so (v1 - v0) x (v2 - v0) points towards positive SDF.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from scorelab.errors import ScorelabError

from .mesh import face_normals
from .tets import TET_EDGES, TetGrid

# Marching-tetrahedra case table (Shen et al. 2021, sec. 3.1; Doi & Koide 1991). Case code = sum of 2^i over the
# outside vertices i. Local edges: 0 = 01, 1 = 02, 2 = 03, 3 = 12, 4 = 13, 5 = 23.
# Case analysis, for a positively oriented tet (det[v1 - v0, v2 - v0, v3 - v0] > 0):
# - 0 or 15: one sign, no surface.
# - one vertex i on its own side (codes 1, 2, 4, 8 and their complements 14, 13, 11, 7): one triangle on the three
#   edges at i. For i outside it is wound so its normal points at i; the complement case is the same triangle
#   reversed (the lone vertex is then inside, and the normal points away from it).
# - two and two (codes 3, 5, 6 and complements 12, 10, 9): with p, q outside and r, t inside, the four edges pr, pt,
#   qt, qr form a quad in that cyclic order, split along pr-qt into two triangles wound towards p, q.
# Windings were worked out on the reference tet (0, e_x, e_y, e_z) (e.g. code 1: (m01, m03, m02) has normal
# (-1, -1, -1)/4, towards v0); an affine map with positive determinant keeps them, so they hold for every
# positively oriented tet. tests/test_dmtet.py checks all 14 cases on random tets against the linear SDF's gradient.
TRIANGLE_TABLE = torch.tensor(
    [
        [[-1, -1, -1], [-1, -1, -1]],  # 0: all inside
        [[0, 2, 1], [-1, -1, -1]],  # 1: v0 out
        [[0, 3, 4], [-1, -1, -1]],  # 2: v1 out
        [[1, 4, 2], [1, 3, 4]],  # 3: v0 v1 out
        [[1, 5, 3], [-1, -1, -1]],  # 4: v2 out
        [[0, 2, 5], [0, 5, 3]],  # 5: v0 v2 out
        [[0, 5, 4], [0, 1, 5]],  # 6: v1 v2 out
        [[2, 5, 4], [-1, -1, -1]],  # 7: v3 in
        [[2, 4, 5], [-1, -1, -1]],  # 8: v3 out
        [[0, 5, 1], [0, 4, 5]],  # 9: v0 v3 out
        [[0, 3, 5], [0, 5, 2]],  # 10: v1 v3 out
        [[1, 3, 5], [-1, -1, -1]],  # 11: v2 in
        [[1, 4, 3], [1, 2, 4]],  # 12: v2 v3 out
        [[0, 4, 3], [-1, -1, -1]],  # 13: v1 in
        [[0, 1, 2], [-1, -1, -1]],  # 14: v0 in
        [[-1, -1, -1], [-1, -1, -1]],  # 15: all outside
    ],
    dtype=torch.int64,
)
TRIANGLE_COUNT = torch.tensor([0, 1, 1, 2, 1, 2, 2, 1, 1, 2, 2, 1, 2, 1, 1, 0], dtype=torch.int64)
# CROSSES[code, k]: local edge k joins vertices of opposite signs in case `code`
CROSSES = torch.tensor([[(c >> i & 1) != (c >> j & 1) for i, j in TET_EDGES] for c in range(16)])


def _check(grid: TetGrid, sdf: torch.Tensor, vertices: torch.Tensor | None = None) -> None:
    v = grid.num_vertices
    if sdf.shape != (v,) or not sdf.is_floating_point():
        raise ScorelabError(f"sdf must be a float tensor of shape ({v},) (one value per grid vertex), got {sdf.shape}")
    if vertices is not None and (vertices.shape != (v, 3) or not vertices.is_floating_point()):
        raise ScorelabError(f"vertices must be a float tensor of shape ({v}, 3), got {tuple(vertices.shape)}")


def surface_tets(grid: TetGrid, sdf: torch.Tensor) -> torch.Tensor:
    """(T,) bool: tets whose vertices have both signs."""
    _check(grid, sdf)
    outside = (sdf.detach() > 0)[grid.tets]
    return outside.any(1) & ~outside.all(1)


def _candidate_tets(grid: TetGrid, outside: torch.Tensor) -> torch.Tensor | None:
    """On a `regular_grid`, the tets of cubes whose 8 corners have both signs (a superset of the surface tets,
    found with dense slices of the vertex lattice); None for other grids."""
    r = grid.cube_resolution
    if r is None:
        return None
    o = outside.view(r + 1, r + 1, r + 1)  # (z, y, x)
    any_out, all_out = o[:, :, 1:] | o[:, :, :-1], o[:, :, 1:] & o[:, :, :-1]  # reduce x, then y, then z pairs
    any_out, all_out = any_out[:, 1:] | any_out[:, :-1], all_out[:, 1:] & all_out[:, :-1]
    any_out, all_out = any_out[1:] | any_out[:-1], all_out[1:] & all_out[:-1]
    cubes = (any_out & ~all_out).view(-1).nonzero().squeeze(1)
    return (cubes.unsqueeze(1) * 6 + torch.arange(6, device=cubes.device)).view(-1)


def marching_tets(grid: TetGrid, vertices: torch.Tensor, sdf: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Triangle mesh of the zero level set of the piecewise-linear SDF on the grid.

    vertices: (V, 3) grid vertex positions (deformed or not); sdf: (V,). Returns (M, 3) vertices, one per grid edge
    whose end points have opposite signs, at the zero of the linear SDF along it, v = (v_a s_b - v_b s_a) / (s_b - s_a)
    (Shen et al. 2021, eq. 3), differentiable in `vertices` and `sdf`; and (F, 3) int64 faces wound outwards.
    Shared edges give shared vertices, so the mesh is watertight. Uses the grid's unique edges (built once per grid);
    per call there is no sort: each crossing edge is listed once through the grid's `edge_owner` slots.
    """
    _check(grid, sdf, vertices)
    outside = sdf.detach() > 0
    cand = _candidate_tets(grid, outside)
    if cand is None:
        occ = outside.to(torch.uint8)
        col = grid.columns
        code = occ[col[0]] | (occ[col[1]] << 1) | (occ[col[2]] << 2) | (occ[col[3]] << 3)
        active = ((code != 0) & (code != 15)).nonzero().squeeze(1)
        code = code[active].long()
    else:
        occ = outside[grid.tets[cand]].to(torch.uint8)
        code = (occ[:, 0] | (occ[:, 1] << 1) | (occ[:, 2] << 2) | (occ[:, 3] << 3)).long()
        keep = ((code != 0) & (code != 15)).nonzero().squeeze(1)
        active, code = cand.index_select(0, keep), code.index_select(0, keep)
    tet_edges = grid.tet_edges[active]  # (n, 6)
    crossing = CROSSES.to(sdf.device)[code] & grid.edge_owner[active]
    cross_idx = tet_edges[crossing]  # (M,) every crossing edge exactly once
    num_cross = cross_idx.shape[0]
    vertex_of_edge = grid.edge_scratch  # (E,) int64, uninitialised: only the entries written here are read
    vertex_of_edge[cross_idx] = torch.arange(num_cross, device=sdf.device)  # only these entries are ever read
    ends = grid.edges[cross_idx]
    a, b = ends[:, 0], ends[:, 1]
    s_a, s_b = sdf[a].unsqueeze(1), sdf[b].unsqueeze(1)
    verts = (vertices[a] * s_b - vertices[b] * s_a) / (s_b - s_a)  # Shen et al. 2021 eq. 3; s_a, s_b differ in sign
    table, count = TRIANGLE_TABLE.to(sdf.device), TRIANGLE_COUNT.to(sdf.device)
    faces = []
    for j in (0, 1):
        sel = count[code] > j
        edge_ids = tet_edges[sel].gather(1, table[code[sel], j])  # (n_j, 3) global edge ids
        faces.append(vertex_of_edge[edge_ids])
    return verts, torch.cat(faces)


# The 8 children of a tet split at its edge midpoints m_ij (Shen et al. 2021, sec. 3.2 'volume subdivision'): four
# corner tets and the inner octahedron split along the diagonal m02-m13. Corners 0-3 are the parent's vertices,
# 4-9 the midpoints in TET_EDGES order (m01, m02, m03, m12, m13, m23). Each child is listed in positive orientation
# for a positively oriented parent (checked on the reference tet below; affine maps with det > 0 keep it).
_M01, _M02, _M03, _M12, _M13, _M23 = range(4, 10)
CHILDREN = torch.tensor(
    [
        [0, _M01, _M02, _M03],
        [_M01, 1, _M12, _M13],
        [_M02, _M12, 2, _M23],
        [_M03, _M13, _M23, 3],
        [_M02, _M13, _M01, _M12],
        [_M02, _M13, _M12, _M23],
        [_M02, _M13, _M23, _M03],
        [_M02, _M13, _M03, _M01],
    ]
)


def _orient_children() -> torch.Tensor:
    ref = torch.tensor([[0.0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=torch.float64)
    pts = torch.cat([ref, torch.stack([(ref[i] + ref[j]) / 2 for i, j in TET_EDGES])])
    out = CHILDREN.clone()
    for c in out:
        p = pts[c]
        if torch.linalg.det(p[1:] - p[0]) < 0:
            c[2], c[3] = c[3].clone(), c[2].clone()
    return out


CHILDREN = _orient_children()


def subdivide(
    grid: TetGrid, sdf: torch.Tensor, mask: torch.Tensor | None = None, *, vertices: torch.Tensor | None = None
) -> tuple[TetGrid, torch.Tensor]:
    """Split the tets in `mask` (default: the surface tets) into 8 children each at their edge midpoints, the SDF at a
    midpoint being the average of its end points (Shen et al. 2021, sec. 3.2). `vertices` (default: the grid's)
    are the positions to split, e.g. DMTet's deformed ones; the new grid's vertices stay differentiable in them and
    the new SDF in `sdf`.

    Only conforming grids (no hanging midpoints) can be split: one level of surface refinement, as DMTet does per
    forward pass; deeper levels would need constraints on midpoints of interface faces as well (not implemented).

    Returns (new grid, new sdf): old vertices keep their ids, midpoints are appended; tets = unsplit parents, then
    8 children per split tet. The new grid is not conforming: a midpoint on an edge that an unsplit tet still uses
    "hangs" (recorded in `new_grid.hanging`). With the averaged SDF every face between a split and an unsplit tet
    has one sign at all its corners and midpoints (the unsplit tet has one sign), so the extracted surface stays
    closed. If the SDF at the new vertices is then changed (DMTet refines it with a network), pass it through
    `constrain_hanging` first, or a hanging midpoint can change sign where its unsplit neighbour cannot see it and
    the surface cracks. The new grid's unique edges are built from the parent's (kept parent edges plus the
    children's, merged in key order), not re-sorted from scratch.
    """
    _check(grid, sdf, vertices)
    if grid.hanging:
        raise ScorelabError(
            "subdivide: this grid already has hanging midpoints from a subdivision; subdivide a conforming grid (a "
            "regular or loaded one) once, e.g. on every forward pass from the base grid"
        )
    mask = surface_tets(grid, sdf) if mask is None else mask
    if mask.shape != (grid.tets.shape[0],) or mask.dtype != torch.bool:
        raise ScorelabError(f"subdivide mask must be a bool tensor of shape ({grid.tets.shape[0]},), got {mask.shape}")
    vertices = grid.vertices if vertices is None else vertices
    dev = sdf.device
    v_old, num_edges = grid.num_vertices, grid.edge_keys.shape[0]
    parent_edges = grid.tet_edges[mask]  # (n, 6)
    split = torch.zeros(num_edges, dtype=torch.bool, device=dev)
    split[parent_edges.reshape(-1)] = True
    split_idx = split.nonzero().squeeze(1)
    mid_id = torch.empty(num_edges, dtype=torch.int64, device=dev)
    mid_id[split_idx] = v_old + torch.arange(split_idx.shape[0], device=dev)
    a, b = grid.edges[split_idx].unbind(1)
    new_vertices = torch.cat([vertices, (vertices[a] + vertices[b]) / 2])
    new_sdf = torch.cat([sdf, (sdf[a] + sdf[b]) / 2])  # Shen et al. 2021 sec. 3.2: midpoint SDF = average
    v_new = new_vertices.shape[0]

    corners = torch.cat([grid.tets[mask], mid_id[parent_edges]], 1)  # (n, 10)
    children = corners[:, CHILDREN.to(dev)].reshape(-1, 4)  # (8 n, 4)
    keep = (~mask).nonzero().squeeze(1)
    kept_tet_edges = grid.tet_edges.index_select(0, keep)

    # unique edges of the new grid: parent edges still used by an unsplit tet (more incident tets than split ones),
    # plus the children's edges (each has a midpoint as its larger end, so the two sets are disjoint); both sorted,
    # merged by position
    split_count = torch.bincount(parent_edges.reshape(-1), minlength=num_edges)
    kept_degree = grid.edge_degree - split_count
    kept_idx = (kept_degree > 0).nonzero().squeeze(1)
    kept_ends = grid.edges[kept_idx]
    kept_keys = kept_ends[:, 0] * v_new + kept_ends[:, 1]
    child_keys = torch.empty(children.shape[0], 6, dtype=torch.int64, device=dev)
    for k, (i, j) in enumerate(TET_EDGES):
        p, q = children[:, i], children[:, j]
        child_keys[:, k] = torch.minimum(p, q) * v_new + torch.maximum(p, q)
    child_unique, child_inverse = torch.unique(child_keys.view(-1), sorted=True, return_inverse=True)
    child_pos = torch.searchsorted(kept_keys, child_unique) + torch.arange(child_unique.shape[0], device=dev)
    total = kept_keys.shape[0] + child_unique.shape[0]
    is_child = torch.zeros(total, dtype=torch.bool, device=dev)
    is_child[child_pos] = True
    kept_pos = (~is_child).nonzero().squeeze(1)
    keys = torch.empty(total, dtype=torch.int64, device=dev)
    keys[kept_pos], keys[child_pos] = kept_keys, child_unique
    degree = torch.empty(total, dtype=torch.int64, device=dev)
    degree[kept_pos] = kept_degree[kept_idx]
    degree[child_pos] = torch.bincount(child_inverse.view(-1), minlength=child_unique.shape[0])
    new_id = torch.empty(num_edges, dtype=torch.int64, device=dev)
    new_id[kept_idx] = kept_pos
    tet_edges = torch.cat([new_id[kept_tet_edges], child_pos[child_inverse].view(-1, 6)])

    columns = torch.cat([grid.columns.index_select(1, keep), children.T], 1)  # column-major storage, no copy later
    hang = split_idx[kept_degree[split_idx] > 0]  # split edges that unsplit tets still use
    hanging = torch.stack([mid_id[hang], grid.edges[hang, 0], grid.edges[hang, 1]], 1)
    new_grid = TetGrid(new_vertices, columns.T, hanging=(*grid.hanging, hanging))
    new_grid._cache.update(keys=keys, tet_edges=tet_edges, degree=degree)
    return new_grid, new_sdf


def constrain_hanging(grid: TetGrid, sdf: torch.Tensor) -> torch.Tensor:
    """The SDF with each hanging midpoint's value reset to the average of its edge's ends, differentiable: the
    hanging-node constraint of adaptive meshes. On a grid from
    `subdivide`, with the SDF at the old vertices left as it was at subdivision (so unsplit tets keep one sign),
    the new vertices' values can be anything and the extracted surface stays closed; if old vertices change sign,
    subdivide again from the coarse grid (DMTet subdivides on every forward pass). No-op on grids without hanging
    midpoints."""
    _check(grid, sdf)
    for level in grid.hanging:
        m, a, b = level.unbind(1)
        sdf = sdf.index_put((m,), (sdf[a] + sdf[b]) / 2)
    return sdf


class DMTet(nn.Module):
    """Learnable SDF and vertex offsets on a tet grid (Shen et al. 2021, sec. 3.1): position = base +
    max_offset * h * tanh(deform), h the grid's shortest edge, so each coordinate moves at most max_offset * h
    (default 0.25: a quarter cell). Bounding the offsets keeps the grid from tangling in practice; tet inversion is
    not checked (a Kuhn tet's smallest height is h / sqrt(2), which two quarter-cell moves cannot undo along one
    axis but diagonal moves of 0.43 h each can). Parameters follow the grid's dtype and device."""

    def __init__(self, grid: TetGrid, sdf: torch.Tensor | None = None, *, max_offset: float = 0.25):
        super().__init__()
        if not 0 <= max_offset <= 0.5:
            raise ScorelabError(f"max_offset is a fraction of the cell size in [0, 0.5], got {max_offset}")
        base = grid.vertices.detach()
        if sdf is not None:
            _check(grid, sdf)
        self.grid = grid
        self.register_buffer("base", base.clone())
        self.sdf = nn.Parameter(torch.zeros_like(base[:, 0]) if sdf is None else sdf.detach().clone().to(base))
        self.deform = nn.Parameter(torch.zeros_like(base))
        self.offset_scale = max_offset * grid.cell_size

    def positions(self) -> torch.Tensor:
        """(V, 3) deformed grid vertices."""
        return self.base + self.offset_scale * torch.tanh(self.deform)

    def _apply(self, fn, *args, **kwargs):
        # the grid's index tensors are not parameters or buffers: move them with the module (.to, .cuda, ...)
        out = super()._apply(fn, *args, **kwargs)
        if self.grid.vertices.device != self.base.device:
            self.grid = self.grid.to(self.base.device)
        return out

    def forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The extracted mesh (vertices (M, 3), faces (F, 3))."""
        return marching_tets(self.grid, self.positions(), self.sdf)


def sdf_sign_loss(grid: TetGrid, sdf: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy on the grid edges whose SDF changes sign: BCE(sigmoid(s_a), [s_b > 0]) + BCE(sigmoid(s_b),
    [s_a > 0]) (the SDF regulariser of nvdiffrec, Munkberg et al. 2022 eq. 4, used with DMTet by Magic3D and
    Fantasia3D); it discourages spurious sign flips. Zero (with a graph) when no edge crosses."""
    _check(grid, sdf)
    e = grid.edges
    s_a, s_b = sdf[e[:, 0]], sdf[e[:, 1]]
    cross = (s_a > 0) != (s_b > 0)
    if not cross.any():
        return sdf.sum() * 0
    s_a, s_b = s_a[cross], s_b[cross]
    return F.binary_cross_entropy_with_logits(s_a, (s_b > 0).to(s_a)) + F.binary_cross_entropy_with_logits(
        s_b, (s_a > 0).to(s_b)
    )


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
    n = face_normals(verts, faces)  # zero-area faces (an SDF value exactly 0) get 0 and no 1 / eps gradient
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
    "constrain_hanging",
    "laplacian_smoothing",
    "marching_tets",
    "normal_consistency",
    "sdf_sign_loss",
    "subdivide",
    "surface_tets",
]
