"""Triangle meshes: validation, normals, area-weighted sampling, topology checks, loading, small procedural meshes.

Convention: vertices (V, 3) float, faces (F, 3) int64, counter-clockwise seen from outside, so the outward face
normal is (v1 - v0) x (v2 - v0).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from scorelab.errors import ScorelabError


@dataclass
class Mesh:
    """vertices (V, 3) float; faces (F, 3) int64, counter-clockwise seen from outside; vertex_colors (V, 3) float in
    [0, 1] or None. Units are world units (docs/cameras.md)."""

    vertices: torch.Tensor
    faces: torch.Tensor
    vertex_colors: torch.Tensor | None = None

    @property
    def is_empty(self) -> bool:
        return self.faces.shape[0] == 0 or self.vertices.shape[0] == 0


def validate_mesh(mesh: Mesh, *, name: str = "mesh", allow_empty: bool = False, allow_degenerate: bool = False) -> Mesh:
    """Return the mesh, or raise a one-line ScorelabError naming what is wrong and what is allowed: shapes (V, 3) and
    integer (F, 3); at least one face unless allow_empty; finite vertices; face indices in 0..V-1; every face with area
    > 1e-12 x (bounding-box side)^2 unless allow_degenerate (a renderer skips zero-area faces; metrics and exporters
    should not see them); vertex colours finite, (V, 3), in [0, 1]."""
    v, f = mesh.vertices, mesh.faces
    if v.ndim != 2 or v.shape[1] != 3:
        raise ScorelabError(f"{name}: vertices must have shape (V, 3), got {tuple(v.shape)}")
    if f.ndim != 2 or f.shape[1] != 3 or f.dtype not in (torch.int32, torch.int64):
        raise ScorelabError(f"{name}: faces must be an integer (F, 3) tensor, got {tuple(f.shape)} {f.dtype}")
    if mesh.is_empty:
        if allow_empty:
            return mesh
        raise ScorelabError(f"{name}: empty mesh ({v.shape[0]} vertices, {f.shape[0]} faces); need at least one face")
    if not torch.isfinite(v).all():
        raise ScorelabError(f"{name}: vertices contain NaN or infinite values")
    if f.min() < 0 or f.max() >= v.shape[0]:
        raise ScorelabError(f"{name}: face indices must be in 0..{v.shape[0] - 1}, got {f.min()}..{f.max()}")
    if not allow_degenerate:
        area = face_areas(v.detach(), f)
        scale = (v.max(0).values - v.min(0).values).max().detach().clamp_min(1e-30)
        degenerate = area <= 1e-12 * scale**2
        if degenerate.any():
            raise ScorelabError(
                f"{name}: {int(degenerate.sum())} degenerate (zero-area) faces; every face needs area > 0"
            )
    c = mesh.vertex_colors
    if c is not None:
        if c.shape != v.shape or not torch.isfinite(c).all():
            shapes = f"{tuple(v.shape)}, got {tuple(c.shape)}"
            raise ScorelabError(f"{name}: vertex colours must be finite with shape {shapes}")
        if c.min() < 0 or c.max() > 1:
            got = f"{c.min().item():g}..{c.max().item():g}"
            raise ScorelabError(f"{name}: vertex colours must lie in [0, 1], got {got}")
    return mesh


def drop_degenerate_faces(mesh: Mesh) -> Mesh:
    """The mesh without the faces that `validate_mesh` calls degenerate (zero area: marching tetrahedra makes them
    where the SDF is zero at a grid vertex). Vertices are kept, so watertightness in the edge-count sense can change
    only where a zero-area face sat."""
    if mesh.is_empty:
        return mesh
    v = mesh.vertices.detach()
    scale = (v.max(0).values - v.min(0).values).max().clamp_min(1e-30)
    keep = face_areas(v, mesh.faces) > 1e-12 * scale**2
    return Mesh(mesh.vertices, mesh.faces[keep], mesh.vertex_colors)


def safe_normalize(v: torch.Tensor, tiny: float = 1e-12) -> torch.Tensor:
    """v / |v| along the last dimension, and 0 (with a zero gradient, not 1 / eps) where |v| <= tiny."""
    norm = v.norm(dim=-1, keepdim=True)
    ok = norm > tiny
    return torch.where(ok, v / torch.where(ok, norm, 1.0), 0.0)


def face_areas(vertices: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """(F,) triangle areas: half the norm of (v1 - v0) x (v2 - v0)."""
    p = vertices[faces]
    return 0.5 * torch.linalg.cross(p[:, 1] - p[:, 0], p[:, 2] - p[:, 0]).norm(dim=1)


def face_normals(vertices: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """(F, 3) unit outward normals (v1 - v0) x (v2 - v0) / |...|; 0 for a zero-area face."""
    p = vertices[faces]
    return safe_normalize(torch.linalg.cross(p[:, 1] - p[:, 0], p[:, 2] - p[:, 0]))


def vertex_normals(vertices: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """Area-weighted average of the incident faces' normals (Gouraud 1971 averages them; weighting by area as compared
    by Max 1999): the unnormalised cross product is 2 x area x normal."""
    p = vertices[faces]
    n = torch.linalg.cross(p[:, 1] - p[:, 0], p[:, 2] - p[:, 0])
    out = torch.zeros_like(vertices).index_add(0, faces.reshape(-1), n.repeat_interleave(3, 0))
    return safe_normalize(out)


def sample_surface(mesh: Mesh, n: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """n points uniformly on the surface and the unit normals of the faces they lie on, both (n, 3) on the mesh's device
    and dtype. Faces are drawn with probability proportional to area, then a uniform point in the face by the
    square-root trick (Osada et al. 2002, sec. 4.2: p = (1 - sqrt r1) a + sqrt r1 (1 - r2) b + sqrt r1 r2 c). The
    random numbers are drawn on CPU (float32) from `generator`, so a seed gives the same points on any device."""
    v, f = mesh.vertices, mesh.faces
    area = face_areas(v.detach(), f).double().cpu()
    if not area.sum() > 0:
        raise ScorelabError("cannot sample a surface with zero total area")
    idx = torch.multinomial(area / area.sum(), n, replacement=True, generator=generator).to(v.device)
    r1, r2 = torch.rand(2, n, 1, generator=generator).double().to(v.device)
    s = r1.sqrt()
    p = v[f[idx]].double()
    pts = (1 - s) * p[:, 0] + s * (1 - r2) * p[:, 1] + s * r2 * p[:, 2]
    return pts.to(v.dtype), face_normals(v, f)[idx]


def edge_counts(faces: torch.Tensor, n_vertices: int) -> torch.Tensor:
    """How many faces share each distinct undirected edge (one count per edge, order unspecified)."""
    e = faces[:, [0, 1, 1, 2, 2, 0]].reshape(-1, 2).sort(1).values
    return torch.unique(e[:, 0] * n_vertices + e[:, 1], return_counts=True)[1]


def euler_characteristic(mesh: Mesh) -> int:
    """V - E + F over the vertices the faces use."""
    used = torch.unique(mesh.faces).numel()
    return used - edge_counts(mesh.faces, mesh.vertices.shape[0]).numel() + mesh.faces.shape[0]


def is_watertight(mesh: Mesh) -> bool:
    """Every edge is shared by exactly two faces (closed and edge-manifold)."""
    return bool((edge_counts(mesh.faces, mesh.vertices.shape[0]) == 2).all())


def is_edge_manifold(mesh: Mesh) -> bool:
    """No edge is shared by more than two faces (boundary edges, shared by one, are allowed)."""
    return bool((edge_counts(mesh.faces, mesh.vertices.shape[0]) <= 2).all())


def load_mesh(path, *, name: str | None = None) -> Mesh:
    """A mesh file (OBJ, PLY, GLB, STL, ...) through trimesh, validated; vertex colours kept when present."""
    import trimesh

    path = Path(path)
    name = name or str(path)
    if not path.is_file():
        raise ScorelabError(f"{name}: file does not exist")
    try:
        loaded = trimesh.load(path, force="mesh", process=False)
    except Exception as e:  # trimesh raises many types for unreadable files
        raise ScorelabError(f"{name}: not a readable mesh file ({type(e).__name__})") from None
    if not isinstance(loaded, trimesh.Trimesh):
        raise ScorelabError(f"{name}: no triangle mesh found in the file")
    v = torch.as_tensor(loaded.vertices, dtype=torch.float32)
    f = torch.as_tensor(loaded.faces, dtype=torch.int64).reshape(-1, 3)
    colors = None
    vc = getattr(loaded.visual, "vertex_colors", None)
    if loaded.visual.kind == "vertex" and vc is not None and len(vc) == len(v):
        colors = torch.as_tensor(vc[:, :3], dtype=torch.float32) / 255.0
    return validate_mesh(Mesh(v, f, colors), name=name)


def icosphere(subdivisions: int = 3, radius: float = 1.0, *, dtype=torch.float32) -> Mesh:
    """A sphere from a subdivided icosahedron: 20 * 4^k faces, 10 * 4^k + 2 vertices on the sphere, outward winding."""
    if not (isinstance(subdivisions, int) and 0 <= subdivisions <= 8) or not radius > 0:
        raise ScorelabError(f"icosphere needs subdivisions in 0..8 and radius > 0, got {subdivisions}, {radius}")
    t = (1 + 5**0.5) / 2
    v = torch.tensor(
        [[-1, t, 0], [1, t, 0], [-1, -t, 0], [1, -t, 0], [0, -1, t], [0, 1, t], [0, -1, -t], [0, 1, -t],
         [t, 0, -1], [t, 0, 1], [-t, 0, -1], [-t, 0, 1]], dtype=torch.float64)  # fmt: skip
    f = torch.tensor(
        [[0, 11, 5], [0, 5, 1], [0, 1, 7], [0, 7, 10], [0, 10, 11], [1, 5, 9], [5, 11, 4], [11, 10, 2], [10, 7, 6],
         [7, 1, 8], [3, 9, 4], [3, 4, 2], [3, 2, 6], [3, 6, 8], [3, 8, 9], [4, 9, 5], [2, 4, 11], [6, 2, 10],
         [8, 6, 7], [9, 8, 1]])  # fmt: skip
    v = F.normalize(v, dim=1)
    for _ in range(subdivisions):
        e = torch.cat([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]]).sort(1).values
        keys, inv = torch.unique(e[:, 0] * v.shape[0] + e[:, 1], return_inverse=True)
        mids = F.normalize((v[keys // v.shape[0]] + v[keys % v.shape[0]]) / 2, dim=1)
        m = inv.reshape(3, -1) + v.shape[0]
        a, b, c = f.unbind(1)
        ab, bc, ca = m
        f = torch.cat([torch.stack(t, 1) for t in ((a, ab, ca), (ab, b, bc), (ca, bc, c), (ab, bc, ca))])
        v = torch.cat([v, mids])
    return Mesh((v * radius).to(dtype), f)


def box_mesh(size=(1.0, 1.0, 1.0), centre=(0.0, 0.0, 0.0), *, dtype=torch.float32) -> Mesh:
    """An axis-aligned box: 8 vertices, 12 faces, outward winding; size = side lengths along x, y, z."""
    if len(size) != 3 or any(s <= 0 for s in size):
        raise ScorelabError(f"box size must be three lengths > 0, got {tuple(size)}")
    corners = torch.tensor(
        [[x, y, z] for x in (-0.5, 0.5) for y in (-0.5, 0.5) for z in (-0.5, 0.5)], dtype=torch.float64
    )  # vertex index = 4 [x > 0] + 2 [y > 0] + [z > 0]
    v = corners * torch.tensor(size, dtype=torch.float64) + torch.tensor(centre, dtype=torch.float64)
    f = torch.tensor(
        [[0, 1, 3], [0, 3, 2], [4, 6, 7], [4, 7, 5],  # -x, +x
         [0, 4, 5], [0, 5, 1], [2, 3, 7], [2, 7, 6],  # -y, +y
         [0, 2, 6], [0, 6, 4], [1, 5, 7], [1, 7, 3]])  # -z, +z  # fmt: skip
    return Mesh(v.to(dtype), f)
