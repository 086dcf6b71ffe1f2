"""Procedural coloured objects with analytic signed distances: ground truth for fitting reproductions and tests.

An object gives its SDF (negative inside), a colour field and a reference mesh. Colours are view-independent (albedo
times Lambertian shading from a light fixed in the world), so any representation with per-point colour can match them.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from scorelab.errors import ScorelabError

from .mesh import Mesh, face_normals

LIGHT = (0.48, -0.36, 0.8)  # world direction towards the light (unit length)


def _sphere(p: torch.Tensor, centre, radius: float) -> torch.Tensor:
    return (p - torch.as_tensor(centre, dtype=p.dtype, device=p.device)).norm(dim=-1) - radius


def smooth_union(a: torch.Tensor, b: torch.Tensor, k: float) -> torch.Tensor:
    """Polynomial smooth minimum of two SDFs over a blend width k (Quilez, 'smooth minimum'); min(a, b) when
    |a - b| >= k."""
    h = (0.5 + 0.5 * (b - a) / k).clamp(0, 1)
    return b * (1 - h) + a * h - k * h * (1 - h)


class Snowman:
    """Two blended spheres (body and head) and a small nose along +x, inside [-0.5, 0.5]^3, z up, with a smooth
    three-colour pattern. Its surface is smooth everywhere (no creases), so piecewise-linear fits converge at the
    resolution's rate, and the nose breaks the rotational symmetry so that every azimuth looks different."""

    body = ((0.0, 0.0, -0.13), 0.35)
    head = ((0.0, 0.0, 0.27), 0.22)
    nose = ((0.22, 0.0, 0.29), 0.06)

    def sdf(self, p: torch.Tensor) -> torch.Tensor:
        """(..., 3) -> (...,); a lower bound on the distance near the blends, exact elsewhere."""
        d = smooth_union(_sphere(p, *self.body), _sphere(p, *self.head), 0.1)
        return smooth_union(d, _sphere(p, *self.nose), 0.04)

    def normals(self, p: torch.Tensor) -> torch.Tensor:
        """Unit outward normals: the normalised SDF gradient (by autograd)."""
        with torch.enable_grad():
            q = p.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(self.sdf(q).sum(), q)
        return F.normalize(g, dim=-1)

    def albedo(self, p: torch.Tensor) -> torch.Tensor:
        """(..., 3) in [0.2, 0.9]: smooth bands, about one period across the object."""
        x, y, z = p.unbind(-1)
        return torch.stack(
            [
                0.55 + 0.35 * torch.sin(7 * z + 3 * x + 0.5),
                0.55 + 0.35 * torch.sin(6 * y - 4 * z + 1.7),
                0.55 + 0.35 * torch.cos(5 * x + 5 * y + 2.4),
            ],
            -1,
        )

    def color(self, p: torch.Tensor) -> torch.Tensor:
        """Albedo times (0.5 + 0.5 max(0, n . l)), with l the fixed world light direction."""
        light = F.normalize(torch.tensor(LIGHT, dtype=p.dtype, device=p.device), dim=0)
        shade = 0.5 + 0.5 * (self.normals(p) @ light).clamp(min=0)
        return self.albedo(p) * shade[..., None]

    def mesh(self, resolution: int = 160) -> Mesh:
        """Reference mesh: marching cubes (scikit-image) on a resolution^3 lattice over [-0.55, 0.55]^3, vertices
        projected onto the zero set by three Newton steps, wound outwards, coloured by `color`."""
        if not 16 <= resolution <= 512:
            raise ScorelabError(f"reference mesh resolution must be in 16..512, got {resolution}")
        from skimage.measure import marching_cubes

        lin = torch.linspace(-0.55, 0.55, resolution, dtype=torch.float64)
        x, y, z = torch.meshgrid(lin, lin, lin, indexing="ij")
        field = self.sdf(torch.stack([x, y, z], -1)).numpy()
        step = float(lin[1] - lin[0])
        verts, faces, _, _ = marching_cubes(field, 0.0, spacing=(step, step, step))
        v = torch.from_numpy(np.ascontiguousarray(verts)).double() - 0.55
        for _ in range(3):  # Newton: v <- v - f(v) grad f / |grad f|^2
            with torch.enable_grad():
                q = v.requires_grad_(True)
                f = self.sdf(q)
                (g,) = torch.autograd.grad(f.sum(), q)
            v = (v - f[:, None] * g / g.square().sum(1, keepdim=True)).detach()
        f_idx = torch.from_numpy(np.ascontiguousarray(faces)).long()
        centroid = v[f_idx].mean(1)
        if (face_normals(v, f_idx) * self.normals(centroid)).sum(1).mean() < 0:
            f_idx = f_idx.flip(1)
        v = v.float()
        return Mesh(v, f_idx, self.color(v).clamp(0, 1))


__all__ = ["Snowman", "smooth_union"]
