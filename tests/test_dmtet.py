"""Tet grids and DMTet: grid structure, the case table, topology and orientation of extracted surfaces, accuracy
against a bound derived from the cell size, gradients by finite differences, subdivision, regularisers, npz input."""

import math

import numpy as np
import pytest
import torch
import trimesh
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from scorelab.errors import ScorelabError
from scorelab.three.dmtet import (
    TRIANGLE_COUNT,
    DMTet,
    constrain_hanging,
    laplacian_smoothing,
    marching_tets,
    normal_consistency,
    sdf_sign_loss,
    subdivide,
    surface_tets,
)
from scorelab.three.tets import (
    TET_EDGES,
    TetGrid,
    _unique_edges,
    load_tet_grid,
    regular_grid,
    save_tet_grid,
    tet_volumes,
)

R_SPHERE = 0.35
R_TORUS, r_TORUS = 0.3, 0.12
BOX = 1.1  # regular_grid's default box [-0.55, 0.55]^3


def sphere_sdf(p):
    return p.norm(dim=-1) - R_SPHERE


def torus_sdf(p):
    q = torch.stack([p[..., :2].norm(dim=-1) - R_TORUS, p[..., 2]], -1)
    return q.norm(dim=-1) - r_TORUS


SHAPES = {
    # name: (exact SDF, Euler characteristic, enclosed volume, largest |Hessian| eigenvalue within distance L of it)
    "sphere": (sphere_sdf, 2, 4 / 3 * math.pi * R_SPHERE**3, lambda L: 1 / (R_SPHERE - L)),
    "torus": (
        torus_sdf,
        0,
        2 * math.pi**2 * R_TORUS * r_TORUS**2,
        lambda L: max(1 / (r_TORUS - L), 1 / (R_TORUS - r_TORUS - L)),
    ),
}


def _edge_counts(verts, faces):
    e = faces[:, [0, 1, 1, 2, 2, 0]].reshape(-1, 2).sort(1).values
    return torch.unique(e[:, 0] * verts.shape[0] + e[:, 1], return_counts=True)[1]


def _check_closed_manifold(verts, faces, euler):
    """Own counting: every edge in exactly 2 faces, every vertex's faces one fan (no pinched vertices), no unused
    vertex, and V - E + F = euler. Then trimesh's view of the same."""
    counts = _edge_counts(verts, faces)
    assert (counts == 2).all()
    assert verts.shape[0] - counts.shape[0] + faces.shape[0] == euler
    # corners (face, i) at vertex v are linked when their faces share an edge v-w; one component per vertex
    f = faces.numpy()
    n = 3 * f.shape[0]
    v = f.reshape(-1)
    nxt, prv = np.roll(f, -1, axis=1).reshape(-1), np.roll(f, 1, axis=1).reshape(-1)
    keys = np.concatenate([v * verts.shape[0] + nxt, v * verts.shape[0] + prv])
    corner = np.concatenate([np.arange(n), np.arange(n)])
    order = np.argsort(keys, kind="stable")
    keys, corner = keys[order], corner[order]
    pair = np.nonzero(keys[1:] == keys[:-1])[0]
    graph = coo_matrix((np.ones(pair.size), (corner[pair], corner[pair + 1])), shape=(n, n))
    assert connected_components(graph, directed=False)[0] == verts.shape[0] == np.unique(v).size
    mesh = trimesh.Trimesh(verts.detach().numpy(), f, process=False)
    assert mesh.is_watertight and mesh.is_winding_consistent and mesh.euler_number == euler
    return mesh


def _tet_faces_counts(tets):
    f = torch.cat([tets[:, [1, 2, 3]], tets[:, [0, 2, 3]], tets[:, [0, 1, 3]], tets[:, [0, 1, 2]]]).sort(1).values
    return torch.unique(f, dim=0, return_counts=True)[1]


def _check_edges(grid):
    """Edge keys sorted and unique with a < b, tet_edges pointing at the right pairs, one owner slot per edge."""
    keys, v = grid.edge_keys, grid.num_vertices
    assert (keys[1:] > keys[:-1]).all()
    assert (keys // v < keys % v).all()
    for k, (i, j) in enumerate(TET_EDGES):
        a, b = grid.edges[grid.tet_edges[:, k]].unbind(1)
        ti, tj = grid.tets[:, i], grid.tets[:, j]
        assert torch.equal(a, torch.minimum(ti, tj)) and torch.equal(b, torch.maximum(ti, tj))
    assert torch.equal(torch.bincount(grid.tet_edges[grid.edge_owner], minlength=keys.shape[0]), torch.ones_like(keys))
    assert torch.equal(grid.edge_degree, torch.bincount(grid.tet_edges.reshape(-1), minlength=keys.shape[0]))


@pytest.mark.parametrize("res", [1, 2, 5, 16])
def test_regular_grid_is_positive_conforming_and_fills_the_box(res):
    g = regular_grid(res, dtype=torch.float64)
    vol = tet_volumes(g.vertices, g.tets)
    assert (vol > 0).all()
    assert vol.sum().item() == pytest.approx(BOX**3, rel=1e-12)
    assert g.tets.shape == (6 * res**3, 4) and g.vertices.shape == ((res + 1) ** 3, 3)
    counts = _tet_faces_counts(g.tets)
    assert set(counts.tolist()) == {1, 2}  # conforming: interior faces shared by exactly two tets
    assert (counts == 1).sum().item() == 6 * 2 * res * res  # box boundary: two triangles per cube face
    # a triangulated ball: V - E + F - T = 1
    assert g.num_vertices - g.edge_keys.shape[0] + counts.shape[0] - g.tets.shape[0] == 1
    # edges from the grid's structure equal those from sorting all 6 T keys
    keys, tet_edges = _unique_edges(g.tets, g.num_vertices)
    assert torch.equal(keys, g.edge_keys) and torch.equal(tet_edges, g.tet_edges)
    _check_edges(g)


def _linear_gradient(p, s):
    """Gradient of the linear function taking values s (4,) at the tet's corners p (4, 3)."""
    return torch.linalg.solve(p[1:] - p[0], s[1:] - s[0])


def test_case_table_on_random_tets():
    """All 14 sign cases on random positively oriented tets: the right number of triangles, vertices on the zero
    plane of the linear SDF and on the crossing edges, normals along the SDF gradient (exactly, to rounding: each
    triangle lies in the plane l = 0), and a quad's two triangles sharing its diagonal."""
    gen = torch.Generator().manual_seed(0)
    for code in range(1, 15):
        for _ in range(5):
            p = torch.randn(4, 3, generator=gen, dtype=torch.float64)
            if torch.linalg.det(p[1:] - p[0]) < 0:
                p = p[[0, 1, 3, 2]]
            sign = torch.tensor([1.0 if code >> i & 1 else -1.0 for i in range(4)], dtype=torch.float64)
            if torch.linalg.det(p[1:] - p[0]) < 1e-3:
                continue
            s = sign * (0.1 + torch.rand(4, generator=gen, dtype=torch.float64))
            grid = TetGrid(p, torch.tensor([[0, 1, 2, 3]]))
            verts, faces = marching_tets(grid, p, s)
            n_cross = sum((s[i] > 0) != (s[j] > 0) for i, j in TET_EDGES)
            assert verts.shape[0] == n_cross and faces.shape[0] == TRIANGLE_COUNT[code]
            g = _linear_gradient(p, s)
            assert (s[0] + (verts - p[0]) @ g).abs().max() < 1e-12
            q = verts[faces]
            n = torch.linalg.cross(q[:, 1] - q[:, 0], q[:, 2] - q[:, 0])
            cos = (n @ g) / (n.norm(dim=1) * g.norm())
            assert (cos > 1 - 1e-9).all(), code
            if faces.shape[0] == 2:
                assert len(set(faces[0].tolist()) & set(faces[1].tolist())) == 2


def _distance_bounds(h: float, kappa: float) -> tuple[float, float]:
    """Distance bounds for marching tets on an exact SDF f (|grad f| = 1, so |f(x)| is the distance from x to the
    surface), from the cell size h. kappa bounds the Hessian's norm of f in the tets that meet the surface.

    - A mesh vertex v sits where the linear interpolant l of f along a tet edge vanishes. The edge has length
      L <= sqrt(3) h (the cube diagonal is the longest Kuhn edge) and |f - l| <= kappa L^2 / 8 on it (linear
      interpolation error), so |f(v)| <= eps_v = kappa L^2 / 8.
    - A point x = sum w_i v_i of a triangle: Taylor around x gives sum w_i f(v_i) = f(x) + 1/2 sum w_i
      (v_i - x)^T H (v_i - x), and sum w_i |v_i - x|^2 = 1/2 sum_ij w_i w_j |v_i - v_j|^2 <= D^2 (1 - sum w_i^2) / 2
      <= D^2 / 3 with D <= L the triangle's diameter (it lies in one tet). So |f(x)| <= eps_v + kappa L^2 / 6.
    The error is O(kappa h^2); these are worst cases, asserted for the max and (a fortiori) the mean.
    """
    L = math.sqrt(3) * h
    eps_v = kappa * L * L / 8
    return eps_v, eps_v + kappa * L * L / 6


@pytest.mark.parametrize("res", [32, 64])
@pytest.mark.parametrize("name", ["sphere", "torus"])
def test_sphere_and_torus_are_closed_outward_and_accurate(name, res):
    sdf_fn, euler, volume, kappa_of = SHAPES[name]
    g = regular_grid(res, dtype=torch.float64)
    verts, faces = marching_tets(g, g.vertices, sdf_fn(g.vertices))
    mesh = _check_closed_manifold(verts, faces, euler)
    # outward: positive signed volume, and face normals along the SDF gradient at the centroids. The mean cosine
    # threshold 0.99 is stated, not derived (the worst-case normal error bound is vacuous at these h); an inward
    # winding gives -1.
    assert mesh.volume > 0
    p = verts[faces]
    n = torch.nn.functional.normalize(torch.linalg.cross(p[:, 1] - p[:, 0], p[:, 2] - p[:, 0]), dim=1)
    c = p.mean(1).requires_grad_()
    grad = torch.autograd.grad(sdf_fn(c).sum(), c)[0]
    assert (n * grad).sum(1).mean() > 0.99
    # exact distances against the bound derived from the cell size
    h = BOX / res
    eps_v, eps_f = _distance_bounds(h, kappa_of(math.sqrt(3) * h))
    d_v, d_c = sdf_fn(verts).abs(), sdf_fn(c.detach()).abs()
    assert d_v.max() <= eps_v and d_v.mean() <= eps_v
    assert d_c.max() <= eps_f and d_c.mean() <= eps_f
    w = torch.rand(faces.shape[0], 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    samples = ((w / w.sum(1, keepdim=True))[..., None] * p).sum(1)
    assert sdf_fn(samples).abs().max() <= eps_f
    # every surface point is within eps_f of the true surface, so the enclosed volumes differ by at most area * eps_f
    assert abs(mesh.volume - volume) <= mesh.area * eps_f


def test_no_surface_gives_an_empty_mesh_and_bad_shapes_raise():
    g = regular_grid(4)
    verts, faces = marching_tets(g, g.vertices, torch.ones(g.num_vertices))
    assert verts.shape == (0, 3) and faces.shape == (0, 3) and faces.dtype == torch.int64
    with pytest.raises(ScorelabError, match="sdf must be"):
        marching_tets(g, g.vertices, torch.ones(3))
    with pytest.raises(ScorelabError, match="vertices must be"):
        marching_tets(g, g.vertices[:5], torch.ones(g.num_vertices))
    with pytest.raises(ScorelabError, match="resolution"):
        regular_grid(0)


def test_regular_fast_path_matches_the_general_path():
    g = regular_grid(12, dtype=torch.float64)
    general = TetGrid(g.vertices, g.tets)  # same tets, no cube structure: every tet's code is computed
    sdf = torus_sdf(g.vertices)
    v1, f1 = marching_tets(g, g.vertices, sdf)
    v2, f2 = marching_tets(general, g.vertices, sdf)
    assert torch.equal(v1, v2) and torch.equal(f1, f2)


def test_gradients_match_finite_differences():
    """Extracted vertices w.r.t. the SDF values and the (deformed) grid positions, float64 central differences via
    gradcheck. The step 1e-6 is far below the smallest |sdf| (asserted), so no sign changes and the topology is
    fixed; gradcheck's default tolerances (atol 1e-5, rtol 1e-3) are far above the O(step^2) truncation error."""
    g = regular_grid(3, dtype=torch.float64)
    gen = torch.Generator().manual_seed(1)
    sdf = sphere_sdf(g.vertices) + 0.02 * torch.randn(g.num_vertices, generator=gen, dtype=torch.float64)
    pos = g.vertices + 0.01 * torch.randn(g.vertices.shape, generator=gen, dtype=torch.float64)
    assert sdf.abs().min() > 1e-3
    assert marching_tets(g, pos, sdf)[1].shape[0] > 20
    s = sdf.clone().requires_grad_()
    x = pos.clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda s, x: marching_tets(g, x, s)[0], (s, x), eps=1e-6)


def test_dmtet_module_gradients_through_the_bounded_offset():
    g = regular_grid(4, dtype=torch.float64)
    model = DMTet(g, sphere_sdf(g.vertices))
    with torch.no_grad():
        model.deform.normal_(generator=torch.Generator().manual_seed(2))

    def extract(sdf, deform):
        return marching_tets(g, model.base + model.offset_scale * torch.tanh(deform), sdf)[0]

    assert torch.autograd.gradcheck(
        extract, (model.sdf.detach().clone().requires_grad_(), model.deform.detach().clone().requires_grad_()), eps=1e-6
    )
    verts, faces = model()
    assert verts.dtype == torch.float64 and verts.requires_grad and faces.shape[1] == 3
    with torch.no_grad():
        model.deform.fill_(100.0)
    assert (model.positions() - g.vertices).abs().max() <= 0.25 * g.cell_size * (1 + 1e-12)  # bounded offset
    with pytest.raises(ScorelabError, match="max_offset"):
        DMTet(g, max_offset=2.0)


@pytest.mark.parametrize("name", ["sphere", "torus"])
def test_subdivision_keeps_volume_orientation_and_surface(name):
    sdf_fn, euler, _, _ = SHAPES[name]
    g = regular_grid(10, dtype=torch.float64)
    sdf = sdf_fn(g.vertices)
    mask = surface_tets(g, sdf)
    g2, sdf2 = subdivide(g, sdf)
    assert g2.tets.shape[0] == g.tets.shape[0] - mask.sum().item() + 8 * mask.sum().item()  # 8 children each
    vol = tet_volumes(g2.vertices, g2.tets)
    assert (vol > 0).all() and vol.sum().item() == pytest.approx(BOX**3, rel=1e-12)
    # children of one parent fill it: per-parent volumes are preserved
    parent_vol = tet_volumes(g.vertices, g.tets)[mask]
    child_vol = vol[g.tets.shape[0] - mask.sum() :].view(-1, 8).sum(1)
    assert torch.allclose(child_vol, parent_vol, rtol=1e-12, atol=0)
    # the merged edge structure equals one sorted from scratch
    keys, tet_edges = _unique_edges(g2.tets, g2.num_vertices)
    assert torch.equal(keys, g2.edge_keys) and torch.equal(tet_edges, g2.tet_edges)
    _check_edges(g2)
    verts, faces = marching_tets(g2, g2.vertices, sdf2)
    mesh = _check_closed_manifold(verts, faces, euler)
    # midpoint SDFs reproduce the parents' linear interpolant, so the zero set (and its volume) is unchanged
    v1 = trimesh.Trimesh(*(t.numpy() for t in marching_tets(g, g.vertices, sdf)), process=False).volume
    assert mesh.volume == pytest.approx(v1, rel=1e-9)
    # new values at the midpoints (as DMTet's refinement predicts): closed once the hanging midpoints are constrained
    refined = constrain_hanging(
        g2, torch.where(torch.arange(g2.num_vertices) < g.num_vertices, sdf2, sdf_fn(g2.vertices))
    )
    assert torch.equal(refined[: g.num_vertices], sdf) and g2.hanging[0].shape[0] > 0
    verts, faces = marching_tets(g2, g2.vertices, refined)
    _check_closed_manifold(verts, faces, euler)
    # with the true SDF at the new vertices the surface gets closer to the shape
    assert sdf_fn(verts).abs().mean() < sdf_fn(marching_tets(g, g.vertices, sdf)[0]).abs().mean()
    with pytest.raises(ScorelabError, match="hanging"):
        subdivide(g2, refined)


def test_subdivision_is_differentiable_in_positions_and_sdf():
    g = regular_grid(2, dtype=torch.float64)
    sdf = sphere_sdf(g.vertices * 1.5).requires_grad_()
    pos = g.vertices.clone().requires_grad_()
    g2, sdf2 = subdivide(g, sdf, vertices=pos)
    (g2.vertices.sum() + sdf2.sum()).backward()
    # each vertex contributes 1 for itself plus 1/2 per split edge it ends
    split = torch.zeros(g.edge_keys.shape[0], dtype=torch.bool)
    split[g.tet_edges[surface_tets(g, sdf)].reshape(-1)] = True
    per_vertex = 1 + 0.5 * torch.bincount(g.edges[split].reshape(-1), minlength=g.num_vertices).double()
    assert torch.equal(sdf.grad, per_vertex) and torch.equal(pos.grad, per_vertex[:, None].expand(-1, 3))


def test_regularisers_closed_forms():
    # one tet, sdf (-1, 2, 3, 4): crossing edges 01, 02, 03; BCE(sigmoid(-1), 1) = softplus(1) on each, and
    # BCE(sigmoid(s_b), 0) = softplus(s_b)
    p = torch.tensor([[0.0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=torch.float64)
    grid = TetGrid(p, torch.tensor([[0, 1, 2, 3]]))
    s = torch.tensor([-1.0, 2, 3, 4], dtype=torch.float64, requires_grad=True)
    sp = torch.nn.functional.softplus
    expected = sp(torch.tensor(1.0, dtype=torch.float64)) + sp(s.detach()[1:]).mean()
    loss = sdf_sign_loss(grid, s)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-12)
    loss.backward()
    assert s.grad.abs().sum() > 0
    assert sdf_sign_loss(grid, torch.ones(4, dtype=torch.float64)).item() == 0
    # regular tetrahedron centred at 0: adjacent normals have cos = -1/3, so 1 - cos = 4/3; each vertex's
    # neighbour average is -v/3, so the Laplacian term is |4 v / 3|^2 = 16/9 * 3
    v = torch.tensor([[1.0, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]], dtype=torch.float64)
    f = torch.tensor([[0, 1, 2], [0, 3, 1], [0, 2, 3], [1, 3, 2]])
    assert normal_consistency(v, f).item() == pytest.approx(4 / 3, rel=1e-12)
    assert laplacian_smoothing(v, f).item() == pytest.approx(16 / 9 * 3, rel=1e-12)
    # a flat fan: normals agree and the centre is its neighbours' average
    flat = torch.tensor([[0.0, 0, 0], [1, 0, 0], [0, 1, 0], [-1, 0, 0], [0, -1, 0]], dtype=torch.float64)
    fan = torch.tensor([[0, 1, 2], [0, 2, 3], [0, 3, 4], [0, 4, 1]])
    assert normal_consistency(flat, fan).item() == pytest.approx(0, abs=1e-15)


def test_npz_round_trip_and_bad_grids(tmp_path):
    g = regular_grid(3)
    save_tet_grid(g, tmp_path / "g.npz")
    back = load_tet_grid(tmp_path / "g.npz")
    assert torch.equal(back.tets, g.tets) and torch.equal(back.vertices, g.vertices)
    assert torch.equal(back.edge_keys, g.edge_keys) and torch.equal(back.tet_edges, g.tet_edges)
    flipped = g.tets.clone()
    flipped[::2, [2, 3]] = flipped[::2, [3, 2]]
    np.savez(tmp_path / "flip.npz", vertices=g.vertices.numpy(), indices=flipped.numpy())
    re = load_tet_grid(tmp_path / "flip.npz", dtype=torch.float64)
    assert (tet_volumes(re.vertices, re.tets) > 0).all()  # negative tets are reoriented, not rejected
    v, t = g.vertices.numpy(), g.tets.numpy()
    bad = {
        "missing array 'indices'": dict(vertices=v),
        "vertices must be": dict(vertices=v[:, :2], indices=t),
        "indices must be an integer": dict(vertices=v, indices=t[:, :3]),
        "NaN": dict(vertices=np.where(np.arange(v.shape[0])[:, None] == 2, np.nan, v), indices=t),
        "indices must be in": dict(vertices=v, indices=t + 1000),
        "degenerate": dict(
            vertices=np.array([[0.0, 0, 0], [1, 0, 0], [0, 1, 0], [1, 1, 0], [0, 0, 1]]),
            indices=np.array([[0, 1, 2, 4], [0, 1, 2, 3]]),
        ),
    }
    for message, arrays in bad.items():
        np.savez(tmp_path / "bad.npz", **arrays)
        with pytest.raises(ScorelabError, match=message):
            load_tet_grid(tmp_path / "bad.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ScorelabError, match="not a readable npz"):
        load_tet_grid(tmp_path / "junk.npz")


def test_a_grid_and_a_dmtet_move_between_devices():
    grid = regular_grid(2)
    grid.cell_size  # noqa: B018 -- caches a Python float beside the tensors
    moved = grid.to("meta")  # the meta device stands in for a GPU
    assert moved.tets.device.type == "meta" and moved.cell_size == grid.cell_size
    dm = DMTet(regular_grid(2)).to("meta")
    assert dm.grid.tets.device.type == "meta" and dm.base.device.type == "meta"


def test_normal_consistency_gradient_is_finite_with_a_zero_area_face():
    v = torch.tensor([[0.0, 0, 0], [1, 0, 0], [0, 1, 0], [0.5, 0, 0]], dtype=torch.float64, requires_grad=True)
    f = torch.tensor([[0, 1, 2], [0, 3, 1]])  # the second face is collinear, sharing edge 0-1
    normal_consistency(v, f).backward()
    assert torch.isfinite(v.grad).all() and v.grad.abs().max() < 10


def test_surface_tets_are_exactly_the_tets_with_both_signs():
    grid = regular_grid(4)
    sdf = grid.vertices.norm(dim=1) - 0.5
    out = (sdf > 0)[grid.tets]
    mixed = out.any(1) & ~out.all(1)
    assert mixed.any() and (~mixed).any() and out.all(1).any()  # all-outside tets exist and must be left out
    assert torch.equal(surface_tets(grid, sdf), mixed)


@pytest.mark.parametrize("bad_index", [-1, "V"])
def test_npz_rejects_an_index_one_past_either_end(tmp_path, bad_index):
    # 0..V-1 are the only vertex indices: -1 would wrap round to the last vertex, V is out of range
    g = regular_grid(2)
    v, t = g.vertices.numpy(), g.tets.numpy().copy()
    t[5, 1] = v.shape[0] if bad_index == "V" else -1
    np.savez(tmp_path / "bad.npz", vertices=v, indices=t)
    with pytest.raises(ScorelabError, match="indices must be in"):
        load_tet_grid(tmp_path / "bad.npz")


@pytest.mark.parametrize("res", [1, 3, 8])
def test_cell_size_of_a_regular_grid_is_the_cube_side(res):
    # the shortest Kuhn edge is a cube edge, h = side / res (face and main diagonals are sqrt 2 h, sqrt 3 h)
    assert regular_grid(res).cell_size == pytest.approx(BOX / res, rel=1e-6)
    assert regular_grid(res, low=0.0, high=2.0).cell_size == pytest.approx(2.0 / res, rel=1e-6)


def test_a_subdivided_grid_keeps_its_hanging_midpoints_when_moved():
    g = regular_grid(4, dtype=torch.float64)
    g2, _ = subdivide(g, sphere_sdf(g.vertices))
    moved = g2.to("meta")
    assert len(moved.hanging) == len(g2.hanging) == 1
    assert moved.hanging[0].shape == g2.hanging[0].shape and moved.hanging[0].device.type == "meta"
