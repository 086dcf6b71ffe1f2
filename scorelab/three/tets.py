"""Tetrahedral grids: generated in code (cubes split into 6 tets) or loaded from an npz, with unique edges computed
once per grid.

Conventions
- vertices (V, 3) float; tets (T, 4) int64, every tet (a, b, c, d) positively oriented: det[b - a, c - a, d - a] > 0.
  `tets` is stored column-major (its transpose is contiguous) so that per-corner gathers read contiguous memory.
- Local edge k of a tet joins its vertices TET_EDGES[k] = 01, 02, 03, 12, 13, 23.
- Unique edges: the 1-D int64 key a * V + b with a < b, sorted ascending; edge e joins edges[e] = (a, b). Each tet's
  six edges index that list (`tet_edges`, (T, 6)). Built once per grid on first use and cached.
- `regular_grid` numbers vertex (i, j, k) (along x, y, z) as i + n j + n^2 k with n = resolution + 1 and lays tets
  out cube by cube (cube (i, j, k) -> i + r j + r^2 k, six tets each in the order of `KUHN_TETS`); its unique edges
  come from that structure directly, no sort.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from scorelab.errors import ScorelabError

TET_EDGES = ((0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3))
DEFAULT_MARGIN = 0.05  # regular grids span [-0.5, 0.5]^3 padded by 5% of the side on each face: [-0.55, 0.55]^3


def tet_volumes(vertices: torch.Tensor, tets: torch.Tensor) -> torch.Tensor:
    """Signed volumes det[b - a, c - a, d - a] / 6, (T,)."""
    a, b, c, d = (vertices[tets[:, k]] for k in range(4))
    return torch.linalg.cross(b - a, c - a).mul(d - a).sum(1) / 6


def orient(vertices: torch.Tensor, tets: torch.Tensor) -> torch.Tensor:
    """Tets reordered so that no signed volume is negative (negative tets get their last two vertices swapped)."""
    neg = tet_volumes(vertices.detach().double(), tets) < 0
    out = tets.clone()
    out[neg, 2], out[neg, 3] = tets[neg, 3], tets[neg, 2]
    return out


def _column_major(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(0) == 1 or t.shape[0] <= 1 else t.T.contiguous().T


@dataclass
class TetGrid:
    """A tet grid: vertices (V, 3) float, tets (T, 4) int64 positively oriented (not checked here: `regular_grid`
    and `load_tet_grid` guarantee it). `cube_resolution` is set only by `regular_grid` and promises its layout.
    `hanging` (set by `dmtet.subdivide`): per subdivision level, (H, 3) int64 rows (m, a, b) for midpoints m of
    edges a-b that unsplit tets still use; see `dmtet.constrain_hanging`."""

    vertices: torch.Tensor
    tets: torch.Tensor
    cube_resolution: int | None = None
    hanging: tuple[torch.Tensor, ...] = ()
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self):
        self.tets = _column_major(self.tets)

    @property
    def num_vertices(self) -> int:
        return self.vertices.shape[0]

    @property
    def columns(self) -> torch.Tensor:
        """(4, T) the tets' vertex indices, one contiguous row per corner."""
        return self.tets.T

    @property
    def edge_keys(self) -> torch.Tensor:
        """(E,) int64 sorted unique keys a * V + b, a < b."""
        return self._edge_cache()["keys"]

    @property
    def edges(self) -> torch.Tensor:
        """(E, 2) int64 end points (a, b), a < b, in key order."""
        c = self._edge_cache()
        if "edges" not in c:
            v = self.num_vertices
            c["edges"] = torch.stack([c["keys"] // v, c["keys"] % v], 1)
        return c["edges"]

    @property
    def tet_edges(self) -> torch.Tensor:
        """(T, 6) int64 each tet's edges (TET_EDGES order) as indices into `edges`."""
        return self._edge_cache()["tet_edges"]

    @property
    def edge_owner(self) -> torch.Tensor:
        """(T, 6) bool: exactly one (tet, local edge) slot per unique edge is marked (the last one in tet order), so
        selecting owned slots among any set of tets that contains all tets around an edge lists that edge once."""
        c = self._edge_cache()
        if "owner" not in c:
            flat = c["tet_edges"].reshape(-1)
            slot = torch.arange(flat.shape[0], device=flat.device)
            last = torch.zeros(c["keys"].shape[0], dtype=torch.int64, device=flat.device)
            last.scatter_reduce_(0, flat, slot, "amax")
            c["owner"] = (last[flat] == slot).view(-1, 6)
        return c["owner"]

    @property
    def edge_degree(self) -> torch.Tensor:
        """(E,) int64 number of tets around each edge."""
        c = self._edge_cache()
        if "degree" not in c:
            c["degree"] = torch.bincount(c["tet_edges"].reshape(-1), minlength=c["keys"].shape[0])
        return c["degree"]

    @property
    def edge_scratch(self) -> torch.Tensor:
        """(E,) int64 uninitialised work buffer, reused across calls (marching writes, then reads, a few entries)."""
        c = self._edge_cache()
        if "scratch" not in c:
            c["scratch"] = torch.empty(c["keys"].shape[0], dtype=torch.int64, device=c["keys"].device)
        return c["scratch"]

    def _edge_cache(self) -> dict:
        if "keys" not in self._cache:
            if self.cube_resolution is not None:
                keys, tet_edges = _regular_edges(self.cube_resolution, self.tets.device)
            else:
                keys, tet_edges = _unique_edges(self.tets, self.num_vertices)
            self._cache.update(keys=keys, tet_edges=tet_edges)
        return self._cache

    def to(self, device) -> TetGrid:
        cache = {k: (t.to(device) if torch.is_tensor(t) else t) for k, t in self._cache.items()}
        hanging = tuple(h.to(device) for h in self.hanging)
        return TetGrid(self.vertices.to(device), self.tets.to(device), self.cube_resolution, hanging, cache)

    @property
    def cell_size(self) -> float:
        """The shortest edge length (for a regular grid: the cube side h)."""
        if "cell_size" not in self._cache:
            e = self.edges
            self._cache["cell_size"] = (self.vertices[e[:, 0]] - self.vertices[e[:, 1]]).norm(dim=1).min().item()
        return self._cache["cell_size"]


def _unique_edges(tets: torch.Tensor, num_vertices: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Any grid: sort the 6 T keys once (torch.unique over a 1-D int64 key)."""
    keys = torch.empty(tets.shape[0], 6, dtype=torch.int64, device=tets.device)
    for k, (i, j) in enumerate(TET_EDGES):
        a, b = tets[:, i], tets[:, j]
        keys[:, k] = torch.minimum(a, b) * num_vertices + torch.maximum(a, b)
    unique, inverse = torch.unique(keys.view(-1), sorted=True, return_inverse=True)
    return unique, inverse.view(-1, 6)


def _kuhn_template() -> list[tuple[int, int, int, int]]:
    """The 6 tets of a unit cube around its main diagonal (Kuhn/Freudenthal), one per axis order, corner index
    x + 2 y + 4 z, each reordered to positive orientation. Every cube uses the same split, so neighbouring cubes
    cut their shared face along the same diagonal (the one from its lowest to its highest corner): conforming."""
    out = []
    for perm in itertools.permutations(range(3)):
        corner, path = [0, 0, 0], [0]
        for axis in perm:
            corner[axis] = 1
            path.append(corner[0] + 2 * corner[1] + 4 * corner[2])
        p = np.array([[c & 1, c >> 1 & 1, c >> 2 & 1] for c in path], dtype=float)
        if np.linalg.det(p[1:] - p[0]) < 0:
            path[2], path[3] = path[3], path[2]
        out.append(tuple(path))
    return out


KUHN_TETS = _kuhn_template()


def _regular_edges(r: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Unique edges of `regular_grid(r)` without sorting. Every edge joins a vertex a to a + t with t a nonzero 0/1
    vector (the two ends of a Kuhn edge are ordered componentwise); its key is a * V + a + d(t), d(t) = t_x + n t_y
    + n^2 t_z, and d increases with the code c = t_x + 2 t_y + 4 t_z. So listing (a, c) vertex-major, code-minor,
    over the pairs with a + t inside the grid gives the keys already sorted."""
    n = r + 1
    num_v = n**3
    lin = torch.arange(n, device=device)
    iz, iy, ix = torch.meshgrid(lin, lin, lin, indexing="ij")
    codes = torch.arange(1, 8, device=device)
    t = torch.stack([codes & 1, codes >> 1 & 1, codes >> 2 & 1], 1)  # (7, 3)
    valid = (ix.reshape(-1, 1) + t[:, 0] <= r) & (iy.reshape(-1, 1) + t[:, 1] <= r) & (iz.reshape(-1, 1) + t[:, 2] <= r)
    a = torch.arange(num_v, device=device).view(-1, 1)
    keys = (a * (num_v + 1) + (t[:, 0] + n * t[:, 1] + n * n * t[:, 2]))[valid]  # (V, 7) masked, vertex-major
    edge_id = torch.cumsum(valid.view(-1), 0) - 1  # edge index of slot (a, c) where valid
    del valid, a
    # per template tet and local edge: the lower corner's vertex offset and the edge's code
    corner_offset = [(c & 1) + n * (c >> 1 & 1) + n * n * (c >> 2 & 1) for c in range(8)]
    lin = torch.arange(r, device=device)
    cz, cy, cx = torch.meshgrid(lin, lin, lin, indexing="ij")
    base = (cx + n * cy + n * n * cz).reshape(-1, 1)
    tet_edges = torch.empty(r**3, 6, 6, dtype=torch.int64, device=device)
    for k, tet in enumerate(KUHN_TETS):
        lo = [min(tet[i], tet[j]) for i, j in TET_EDGES]
        hi = [max(tet[i], tet[j]) for i, j in TET_EDGES]
        off = torch.tensor([corner_offset[x] for x in lo], device=device)
        code = torch.tensor(
            [h - x for x, h in zip(lo, hi, strict=True)], device=device
        )  # hi - lo as corner bits: a 0/1 vector
        tet_edges[:, k] = edge_id[(base + off) * 7 + code - 1]
    return keys, tet_edges.view(-1, 6)


def regular_grid(
    resolution: int, *, low: float = -0.5 - DEFAULT_MARGIN, high: float = 0.5 + DEFAULT_MARGIN, dtype=torch.float32
) -> TetGrid:
    """A resolution^3 cube grid over [low, high]^3 (default: the object box [-0.5, 0.5]^3 with a 5% margin on each
    side, so surfaces touching the box still close), each cube split into the 6 positively oriented Kuhn tets.
    Allowed resolutions 1..256 (DMTet uses 16..128)."""
    if not isinstance(resolution, int) or not 1 <= resolution <= 256:
        raise ScorelabError(f"tet grid resolution must be an integer in 1..256, got {resolution!r}")
    if not high > low:
        raise ScorelabError(f"tet grid box needs low < high, got low={low}, high={high}")
    n = resolution + 1
    lin = torch.linspace(low, high, n, dtype=torch.float64)
    z, y, x = torch.meshgrid(lin, lin, lin, indexing="ij")
    vertices = torch.stack([x, y, z], -1).reshape(-1, 3).to(dtype)
    idx = torch.arange(resolution)
    cz, cy, cx = torch.meshgrid(idx, idx, idx, indexing="ij")
    base = (cx + n * cy + n * n * cz).reshape(1, -1)
    corner_offset = torch.tensor([(c & 1) + n * (c >> 1 & 1) + n * n * (c >> 2 & 1) for c in range(8)])
    template = corner_offset[torch.tensor(KUHN_TETS)]  # (6, 4)
    columns = torch.empty(4, resolution**3, 6, dtype=torch.int64)
    for corner in range(4):
        columns[corner] = base.T + template[:, corner]
    return TetGrid(vertices, columns.view(4, -1).T, cube_resolution=resolution)


def load_tet_grid(path, *, dtype=torch.float32) -> TetGrid:
    """An external grid from an npz with `vertices` (V, 3) float and `indices` (T, 4) int.
    Negatively oriented tets are reoriented (last two vertices swapped); degenerate tets (|volume| <= 1e-12 times the
    bounding box's volume) are rejected."""
    path = Path(path)
    try:
        data = np.load(path)
        keys = set(data.files)
    except Exception:
        raise ScorelabError(f"{path}: not a readable npz file") from None
    for key in ("vertices", "indices"):
        if key not in keys:
            raise ScorelabError(f"{path}: missing array {key!r}; a tet grid npz holds 'vertices' and 'indices'")
    v, t = data["vertices"], data["indices"]
    if v.ndim != 2 or v.shape[1] != 3 or v.shape[0] < 4 or not np.issubdtype(v.dtype, np.floating):
        raise ScorelabError(f"{path}: vertices must be a float (V, 3) array with V >= 4, got {v.shape} {v.dtype}")
    if t.ndim != 2 or t.shape[1] != 4 or t.shape[0] < 1 or not np.issubdtype(t.dtype, np.integer):
        raise ScorelabError(f"{path}: indices must be an integer (T, 4) array with T >= 1, got {t.shape} {t.dtype}")
    if not np.isfinite(v).all():
        raise ScorelabError(f"{path}: vertices contain NaN or infinite values")
    if t.min() < 0 or t.max() >= v.shape[0]:
        raise ScorelabError(f"{path}: indices must be in 0..{v.shape[0] - 1}, got {t.min()}..{t.max()}")
    vertices, tets = torch.from_numpy(v.astype(np.float64)), torch.from_numpy(t.astype(np.int64))
    vol = tet_volumes(vertices, tets)
    scale = (vertices.max(0).values - vertices.min(0).values).prod().item()
    degenerate = vol.abs() <= 1e-12 * scale
    if degenerate.any():
        raise ScorelabError(
            f"{path}: {degenerate.sum().item()} degenerate (zero-volume) tets, "
            f"e.g. tet {degenerate.nonzero()[0, 0].item()}; every tet needs a nonzero volume"
        )
    return TetGrid(vertices.to(dtype), orient(vertices, tets))


def save_tet_grid(grid: TetGrid, path) -> None:
    """Write `vertices` and `indices` to an npz that `load_tet_grid` reads back."""
    np.savez(path, vertices=grid.vertices.detach().cpu().numpy(), indices=grid.tets.cpu().numpy())
