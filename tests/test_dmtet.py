"""Tet grids and DMTet: topology, orientation, accuracy bound from the cell size, gradients, subdivision."""

import math

import numpy as np
import pytest
import torch
import trimesh

from scorelab.errors import ScorelabError
from scorelab.three.dmtet import (
    DMTet,
    laplacian_smoothing,
    marching_tets,
    normal_consistency,
    sdf_sign_loss,
    subdivide,
    surface_tets,
)
from scorelab.three.tets import load_tet_grid, regular_grid, save_tet_grid, tet_volumes

R_SPHERE = 0.35
R_TORUS, r_TORUS = 0.3, 0.12


def sphere_sdf(p):
    return p.norm(dim=-1) - R_SPHERE


def torus_sdf(p):
    q = torch.stack([p[..., :2].norm(dim=-1) - R_TORUS, p[..., 2]], -1)
    return q.norm(dim=-1) - r_TORUS


def _topology(verts, faces):
    e = faces[:, [0, 1, 1, 2, 2, 0]].reshape(-1, 2).sort(1).values
    _, counts = torch.unique(e[:, 0] * verts.shape[0] + e[:, 1], return_counts=True)
    return verts.shape[0] - counts.shape[0] + faces.shape[0], bool((counts == 2).all())


def _faces_of_tets(tets):
    f = torch.cat([tets[:, [1, 2, 3]], tets[:, [0, 2, 3]], tets[:, [0, 1, 3]], tets[:, [0, 1, 2]]]).sort(1).values
    return torch.unique(f, dim=0, return_counts=True)[1]


@pytest.mark.parametrize("res", [4, 16])
def test_regular_grid_is_positive_conforming_and_fills_the_box(res):
    g = regular_grid(res, dtype=torch.float64)
    vol = tet_volumes(g.vertices, g.tets)
    assert (vol > 0).all()
    assert vol.sum().item() == pytest.approx(1.1**3, rel=1e-12)
    counts = _faces_of_tets(g.tets)
    assert set(counts.tolist()) == {1, 2}
    assert (counts == 1).sum().item() == 6 * 2 * res * res  # boundary: two triangles per cube face on the box
    assert g.tet_edges.shape == (g.tets.shape[0], 6)
    a, b = g.edges[g.tet_edges[:, 0]].unbind(1)
    assert torch.equal(torch.minimum(g.tets[:, 0], g.tets[:, 1]), a) and torch.equal(
        torch.maximum(g.tets[:, 0], g.tets[:, 1]), b
    )


def _distance_bound(h: float, kappa_max: float) -> tuple[float, float]:
    """Bounds on the distance to the true surface from the cell size h.

    Along a tet edge (length L <= sqrt(3) h, the cube diagonal) the linear interpolant of a smooth f differs from f by
    at most kappa L^2 / 8 where kappa bounds |f''| along the edge; where the interpolant is 0, |f| <= kappa L^2 / 8,
    and |grad f| = 1 for an SDF, so each mesh vertex lies within eps = kappa L^2 / 8 of the surface. A point inside a
    triangle of diameter <= L whose vertices lie within eps is at most eps further out (|x| is convex) and, inward,
    at most the sag of a chord: 1 / kappa - sqrt((1 / kappa - eps)^2 - L^2 / 3) with 1 / kappa the smallest radius
    of curvature (an equilateral triangle of side L has circumradius L / sqrt(3)).
    """
    L = math.sqrt(3) * h
    eps = kappa_max * L * L / 8
    rho = 1 / kappa_max
    return eps, eps + rho - math.sqrt((rho - eps) ** 2 - L * L / 3)


def _exact_distance(name, p):
    return (sphere_sdf(p) if name == "sphere" else torus_sdf(p)).abs()


@pytest.mark.parametrize("res", [32, 64])
@pytest.mark.parametrize("name, euler", [("sphere", 2), ("torus", 0)])
def test_sphere_and_torus_are_closed_outward_and_accurate(name, euler, res):
    g = regular_grid(res, dtype=torch.float64)
    sdf_fn = sphere_sdf if name == "sphere" else torus_sdf
    verts, faces = marching_tets(g, g.vertices, sdf_fn(g.vertices))
    chi, manifold = _topology(verts, faces)
    assert manifold and chi == euler
    mesh = trimesh.Trimesh(verts.numpy(), faces.numpy(), process=False)
    assert mesh.is_watertight and mesh.is_winding_consistent and mesh.euler_number == euler
    # outward: positive enclosed volume, and face normals agree with the SDF gradient
    assert mesh.volume > 0
    p = verts[faces]
    n = torch.nn.functional.normalize(torch.linalg.cross(p[:, 1] - p[:, 0], p[:, 2] - p[:, 0]), dim=1)
    c = p.mean(1).requires_grad_()
    grad = torch.autograd.grad(sdf_fn(c).sum(), c)[0]
    assert (n * grad).sum(1).mean() > 0.99
    # accuracy against the bound derived from the cell size
    h = 1.1 / res
    L = math.sqrt(3) * h
    kappa = 1 / (R_SPHERE - L) if name == "sphere" else max(1 / (r_TORUS - L), 1 / (R_TORUS - r_TORUS - L))
    eps_vertex, eps_face = _distance_bound(h, kappa)
    assert _exact_distance(name, verts).max() <= eps_vertex
    assert _exact_distance(name, c.detach()).max() <= eps_face
    w = torch.rand(faces.shape[0], 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    w = w / w.sum(1, keepdim=True)
    samples = (w[..., None] * p).sum(1)
    assert _exact_distance(name, samples).mean() <= eps_face


def test_gradients_match_finite_differences():
    g = regular_grid(3, dtype=torch.float64)
    gen = torch.Generator().manual_seed(1)
    sdf = sphere_sdf(g.vertices) + 0.02 * torch.randn(g.vertices.shape[0], generator=gen, dtype=torch.float64)
    pos = g.vertices + 0.01 * torch.randn(g.vertices.shape, generator=gen, dtype=torch.float64)
    verts0, _ = marching_tets(g, pos, sdf)
    w = torch.randn(verts0.shape, generator=gen, dtype=torch.float64)

    def f(s, x):
        return (marching_tets(g, x, s)[0] * w).sum()

    s = sdf.clone().requires_grad_()
    x = pos.clone().requires_grad_()
    gs, gx = torch.autograd.grad(f(s, x), (s, x))
    step = 1e-6  # far below the smallest |sdf| (no sign change, so the topology is fixed)
    assert sdf.abs().min() > 100 * step
    for i in torch.randperm(sdf.shape[0], generator=gen)[:12].tolist():
        d = torch.zeros_like(sdf)
        d[i] = step
        fd = (f(sdf + d, pos) - f(sdf - d, pos)) / (2 * step)
        assert fd.item() == pytest.approx(gs[i].item(), abs=1e-6, rel=1e-5)
        for k in range(3):
            d = torch.zeros_like(pos)
            d[i, k] = step
            fd = (f(sdf, pos + d) - f(sdf, pos - d)) / (2 * step)
            assert fd.item() == pytest.approx(gx[i, k].item(), abs=1e-6, rel=1e-5)


def test_subdivision_keeps_volume_orientation_and_surface():
    g = regular_grid(16, dtype=torch.float64)
    sdf = torus_sdf(g.vertices)
    mask = surface_tets(g, sdf)
    g2, sdf2 = subdivide(g, sdf)
    assert g2.tets.shape[0] == g.tets.shape[0] + 7 * mask.sum().item()
    vol = tet_volumes(g2.vertices, g2.tets)
    assert (vol > 0).all() and vol.sum().item() == pytest.approx(1.1**3, rel=1e-12)
    verts, faces = marching_tets(g2, g2.vertices, sdf2)
    chi, manifold = _topology(verts, faces)
    assert manifold and chi == 0
    # midpoint SDFs are the linear interpolant, so the extracted surface encloses the same volume
    v1 = trimesh.Trimesh(*(t.numpy() for t in marching_tets(g, g.vertices, sdf)), process=False).volume
    assert trimesh.Trimesh(verts.numpy(), faces.numpy(), process=False).volume == pytest.approx(v1, rel=1e-9)
    # with the true SDF at the new vertices the surface gets closer to the torus
    verts_true, _ = marching_tets(g2, g2.vertices, torus_sdf(g2.vertices))
    assert torus_sdf(verts_true).abs().mean() < torus_sdf(verts).abs().mean()


def test_dmtet_module_and_regularisers():
    g = regular_grid(8)
    model = DMTet(g, sphere_sdf(g.vertices))
    verts, faces = model()
    assert verts.requires_grad and faces.shape[1] == 3
    with torch.no_grad():
        model.deform.fill_(100.0)
    assert (model.positions() - g.vertices).abs().max() <= 0.25 * g.cell_size + 1e-6  # bounded offset
    loss = sdf_sign_loss(g, model.sdf)
    loss.backward()
    assert model.sdf.grad.abs().sum() > 0
    # closed forms on a regular tetrahedron centred at 0: adjacent normals have cos = -1/3, and each vertex's
    # neighbour average is -v/3, so the Laplacian term is (4/3)^2 |v|^2
    v = torch.tensor([[1.0, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]], dtype=torch.float64)
    f = torch.tensor([[0, 1, 2], [0, 3, 1], [0, 2, 3], [1, 3, 2]])
    assert normal_consistency(v, f).item() == pytest.approx(4 / 3)
    assert laplacian_smoothing(v, f).item() == pytest.approx(16 / 9 * 3)


def test_npz_round_trip_and_bad_grids(tmp_path):
    g = regular_grid(3)
    save_tet_grid(g, tmp_path / "g.npz")
    back = load_tet_grid(tmp_path / "g.npz")
    assert torch.equal(back.tets, g.tets) and torch.allclose(back.vertices, g.vertices)
    flipped = g.tets.clone()
    flipped[:, [2, 3]] = flipped[:, [3, 2]]
    np.savez(tmp_path / "flip.npz", vertices=g.vertices.numpy(), indices=flipped.numpy())
    assert (
        tet_volumes(load_tet_grid(tmp_path / "flip.npz").vertices.double(), load_tet_grid(tmp_path / "flip.npz").tets)
        > 0
    ).all()
    bad = {
        "missing": dict(vertices=g.vertices.numpy()),
        "shape": dict(vertices=g.vertices.numpy()[:, :2], indices=g.tets.numpy()),
        "nan": dict(vertices=np.full((5, 3), np.nan), indices=np.array([[0, 1, 2, 3]])),
        "range": dict(vertices=g.vertices.numpy(), indices=g.tets.numpy() + 1000),
        "degenerate": dict(
            vertices=np.array([[0.0, 0, 0], [1, 0, 0], [0, 1, 0], [1, 1, 0]]), indices=np.array([[0, 1, 2, 3]])
        ),
    }
    for name, arrays in bad.items():
        np.savez(tmp_path / f"{name}.npz", **arrays)
        with pytest.raises(ScorelabError):
            load_tet_grid(tmp_path / f"{name}.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ScorelabError, match="not a readable npz"):
        load_tet_grid(tmp_path / "junk.npz")
