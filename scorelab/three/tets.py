"""Tetrahedral grids: generated in code (cubes split into 6 tets) or loaded from an npz, with unique edges computed
once per grid.

Convention: every tet (a, b, c, d) is positively oriented, det[b - a, c - a, d - a] > 0.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from scorelab.errors import ScorelabError

# local edge k of a tet joins its vertices TET_EDGES[k]
TET_EDGES = ((0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3))


def tet_volumes(vertices: torch.Tensor, tets: torch.Tensor) -> torch.Tensor:
    """Signed volumes det[b - a, c - a, d - a] / 6, (T,)."""
    p = vertices[tets]
    return torch.linalg.det(torch.stack([p[:, 1] - p[:, 0], p[:, 2] - p[:, 0], p[:, 3] - p[:, 0]], dim=1)) / 6


def orient(vertices: torch.Tensor, tets: torch.Tensor) -> torch.Tensor:
    """Tets reordered so that every signed volume is positive (swapping the last two vertices of negative ones)."""
    neg = tet_volumes(vertices.double(), tets) < 0
    out = tets.clone()
    out[neg, 2], out[neg, 3] = tets[neg, 3], tets[neg, 2]
    return out


@dataclass
class TetGrid:
    """vertices (V, 3) float, tets (T, 4) int64, positively oriented. `edges` (E, 2) with a < b, sorted by the 1-D key
    a * V + b, and `tet_edges` (T, 6) indexing them in TET_EDGES order, are computed once on first use."""

    vertices: torch.Tensor
    tets: torch.Tensor
    _edges: tuple[torch.Tensor, torch.Tensor] | None = field(default=None, repr=False)
    _columns: torch.Tensor | None = field(default=None, repr=False)

    @property
    def columns(self) -> torch.Tensor:
        """(4, T) the tets' vertex indices, one contiguous row per corner (fast per-corner gathers)."""
        if self._columns is None:
            self._columns = self.tets.T.contiguous()
        return self._columns

    @property
    def edges(self) -> torch.Tensor:
        return self._edge_cache()[0]

    @property
    def tet_edges(self) -> torch.Tensor:
        return self._edge_cache()[1]

    def _edge_cache(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._edges is None:
            v = self.vertices.shape[0]
            pairs = self.tets[:, list(TET_EDGES)]  # (T, 6, 2)
            a, b = pairs.min(-1).values, pairs.max(-1).values
            keys, inverse = torch.unique((a * v + b).reshape(-1), sorted=True, return_inverse=True)
            self._edges = (torch.stack([keys // v, keys % v], 1), inverse.reshape(-1, 6))
        return self._edges

    def to(self, device) -> TetGrid:
        cache = None if self._edges is None else tuple(t.to(device) for t in self._edges)
        return TetGrid(self.vertices.to(device), self.tets.to(device), cache)

    @property
    def cell_size(self) -> float:
        """The shortest edge length (for a regular grid: the cube side h)."""
        e = self.edges
        return (self.vertices[e[:, 0]] - self.vertices[e[:, 1]]).norm(dim=1).min().item()


def _kuhn_tets() -> list[tuple[int, int, int, int]]:
    """The 6 tets of a unit cube along its main diagonal (Kuhn/Freudenthal): corner index = x + 2 y + 4 z."""
    out = []
    for perm in itertools.permutations(range(3)):
        corner = [0, 0, 0]
        path = [0]
        for axis in perm:
            corner[axis] = 1
            path.append(corner[0] + 2 * corner[1] + 4 * corner[2])
        out.append(tuple(path))
    return out


def regular_grid(resolution: int, *, low: float = -0.55, high: float = 0.55, dtype=torch.float32) -> TetGrid:
    """A resolution^3 cube grid over [low, high]^3 (default: the object box [-0.5, 0.5]^3 with a 10% margin so
    surfaces touching the box still close), each cube split into 6 tets. The split is the same in every cube, so
    neighbouring cubes meet in the same face diagonals and the mesh is conforming."""
    if not 1 <= resolution <= 512:
        raise ScorelabError(f"tet grid resolution must be in 1..512, got {resolution}")
    n = resolution + 1
    lin = torch.linspace(low, high, n, dtype=torch.float64)
    z, y, x = torch.meshgrid(lin, lin, lin, indexing="ij")
    vertices = torch.stack([x, y, z], -1).reshape(-1, 3)
    idx = torch.arange(resolution)
    cz, cy, cx = torch.meshgrid(idx, idx, idx, indexing="ij")
    base = (cx + n * cy + n * n * cz).reshape(-1, 1)
    offsets = torch.tensor([dx + n * dy + n * n * dz for dz in (0, 1) for dy in (0, 1) for dx in (0, 1)])
    corners = base + offsets  # (C, 8), corner index = x + 2 y + 4 z
    tets = corners[:, torch.tensor(_kuhn_tets())].reshape(-1, 4)
    tets = orient(vertices, tets)
    return TetGrid(vertices.to(dtype), tets)


def load_tet_grid(path, *, dtype=torch.float32) -> TetGrid:
    """An external grid from an npz with `vertices` (V, 3) float and `indices` (T, 4) int.
    Negatively oriented tets are reoriented; degenerate (zero-volume) tets are rejected."""
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
    if v.ndim != 2 or v.shape[1] != 3 or v.shape[0] < 4 or not np.issubdtype(v.dtype, np.number):
        raise ScorelabError(f"{path}: vertices must be a numeric (V, 3) array with V >= 4, got {v.shape}")
    if t.ndim != 2 or t.shape[1] != 4 or t.shape[0] < 1 or not np.issubdtype(t.dtype, np.integer):
        raise ScorelabError(f"{path}: indices must be an integer (T, 4) array with T >= 1, got {t.shape} {t.dtype}")
    if not np.isfinite(v).all():
        raise ScorelabError(f"{path}: vertices contain NaN or infinite values")
    if t.min() < 0 or t.max() >= v.shape[0]:
        raise ScorelabError(f"{path}: indices must be in 0..{v.shape[0] - 1}, got {t.min()}..{t.max()}")
    vertices, tets = torch.from_numpy(v.astype(np.float64)), torch.from_numpy(t.astype(np.int64))
    vol = tet_volumes(vertices, tets)
    scale = (vertices.max(0).values - vertices.min(0).values).max().item() ** 3
    if (vol.abs() <= 1e-12 * scale).any():
        raise ScorelabError(f"{path}: {(vol.abs() <= 1e-12 * scale).sum().item()} degenerate (zero-volume) tets")
    return TetGrid(vertices.to(dtype), orient(vertices, tets))


def save_tet_grid(grid: TetGrid, path) -> None:
    np.savez(path, vertices=grid.vertices.cpu().numpy(), indices=grid.tets.cpu().numpy())
