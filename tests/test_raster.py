"""The triangle rasterizer: z-buffer, barycentrics, depth, coverage, and gradients against finite differences in the
interior (only the barycentric path gives them) and at silhouettes (only the antialias pass gives them), plus the
analytic derivative of coverage with respect to an edge's position."""

import math

import pytest
import torch
from scipy.spatial import ConvexHull

from scorelab.errors import ScorelabError
from scorelab.three.cameras import generate_rays, orbit_cameras, project, world_to_camera
from scorelab.three.mesh import Mesh, icosphere
from scorelab.three.raster import barycentrics, edge_neighbours, interpolate, rasterize, render_mesh

W = 24
CAM = orbit_cameras(math.pi / 2, 0.0, 2.0, width=W, dtype=torch.float64)  # on +x looking at the origin, z up
# For points in the plane x = 0 (depth 2): u = W/2 + (f/2) y and v = W/2 - (f/2) z, so world +y is screen right.
F_PX = CAM.focal[0, 0].item()


def _facing(v: torch.Tensor) -> torch.Tensor:
    """One face over three vertices, wound counter-clockwise as seen from the camera on +x."""
    n = torch.linalg.cross(v[1] - v[0], v[2] - v[0])
    return torch.tensor([[0, 1, 2]]) if n[0] > 0 else torch.tensor([[0, 2, 1]])


def test_barycentrics_sum_to_one_reproduce_pixel_centres_and_plane_depth():
    # a tilted quad: perspective-correct barycentrics interpolate world positions exactly (positions are affine in 3D)
    v = torch.tensor([[0.2, -0.6, -0.6], [-0.3, 0.6, -0.6], [-0.3, 0.6, 0.6], [0.2, -0.6, 0.6]], dtype=torch.float64)
    mesh = Mesh(v, torch.tensor([[0, 1, 2], [0, 2, 3]]))
    rast = rasterize(mesh, CAM)
    bary, covered = barycentrics(rast)
    cov = covered[0]
    assert cov.sum() > 200 and (~cov).sum() > 50  # both inside and outside are exercised
    torch.testing.assert_close(bary.sum(-1)[covered], torch.ones_like(bary[..., 0][covered]), rtol=0, atol=1e-12)
    assert (bary[covered] >= -1e-12).all()
    world = interpolate(mesh.vertices, rast, bary)[0]  # (H, W, 3)
    uv, _ = project(CAM, world[cov])  # each interpolated point must project back onto its pixel centre
    jj, ii = torch.meshgrid(torch.arange(W), torch.arange(W), indexing="xy")
    centres = torch.stack([jj, ii], -1)[cov].double() + 0.5
    torch.testing.assert_close(uv[0], centres, rtol=0, atol=1e-9)
    # depth buffer against the analytic ray-plane intersection through each pixel centre
    origins, dirs = generate_rays(CAM)
    normal = torch.linalg.cross(v[1] - v[0], v[2] - v[0])
    t = ((v[0] - origins[0]) @ normal) / (dirs[0] @ normal)
    hit = origins[0] + t[..., None] * dirs[0]
    analytic = world_to_camera(CAM, hit.reshape(-1, 3))[0, :, 2].reshape(W, W)
    depth = render_mesh(mesh, CAM)["depth"][0, 0]
    torch.testing.assert_close(depth[cov], analytic[cov], rtol=0, atol=1e-9)  # float64 rounding only
    assert (depth[~cov] == 0).all()


def test_nearer_triangle_wins_and_background_is_minus_one():
    far_v = torch.tensor([[0.0, -0.31, -0.27], [0.0, 0.33, -0.22], [0.0, 0.02, 0.36]], dtype=torch.float64)
    near_v = far_v + torch.tensor([0.5, 0.0, 0.0], dtype=torch.float64)
    both = Mesh(torch.cat([far_v, near_v]), torch.tensor([[0, 1, 2], [3, 4, 5]]))
    ids = rasterize(both, CAM).tri_id[0]
    assert (ids == -1).any() and (ids == 1).any() and not (ids == 0).any()  # the far one is hidden everywhere


def test_sphere_mask_area_matches_projection():
    """Two bounds on the antialiased mask of an icosphere (radius r at distance D, polar 1.1, azimuth 0.4):

    1. Against the exact outline: a convex polyhedron projects onto the convex hull of its projected vertices. The
       antialias pass gives every row (or column) the length of its centre line inside the outline, which is the row's
       exact area while the outline is straight across the row's unit band; where it turns by an exterior angle a
       inside a band the error is at most the area between the polyline and a straight line over a unit band,
       (1/2) tan a <= a for the small angles of a fine polygon, and the exterior angles of a convex polygon sum to
       2 pi: |mask - hull| <= pi px^2 (measured: below 0.7 px^2, while counting covered pixel centres errs by 14).
    2. Against the analytic sphere: the hull lies between the projections of the inscribed sphere (radius = least
       distance from the centre to a face plane) and of the sphere itself, discs of radius f rho / sqrt(D^2 - rho^2)
       (the tangent cone), so |mask - pi R^2| <= pi (R^2 - R_in^2) + pi."""
    r, d = 0.5, 2.0
    for sub, width in ((3, 48), (5, 96)):  # at level 5 the rim triangles are slivers far below a pixel
        mesh = icosphere(sub, r, dtype=torch.float64)
        cam = orbit_cameras(1.1, 0.4, d, width=width, dtype=torch.float64)
        area = render_mesh(mesh, cam)["mask"].sum().item()
        hull = ConvexHull(project(cam, mesh.vertices)[0][0].numpy()).volume
        assert abs(area - hull) <= math.pi, (sub, area, hull)
        f = cam.focal[0, 0].item()
        p = mesh.vertices[mesh.faces]
        n = torch.nn.functional.normalize(torch.linalg.cross(p[:, 1] - p[:, 0], p[:, 2] - p[:, 0]), dim=1)
        r_in = (n * p[:, 0]).sum(1).min().item()
        big, small = f * r / math.sqrt(d * d - r * r), f * r_in / math.sqrt(d * d - r_in * r_in)
        assert abs(area - math.pi * big**2) <= math.pi * (big**2 - small**2) + math.pi


def _render_loss(mesh, weights, shift):
    moved = Mesh(mesh.vertices + shift, mesh.faces, mesh.vertex_colors)
    out = render_mesh(moved, CAM, background=(0.0, 0.0, 0.0))
    return (out["color"] * weights[:, :3]).sum() + (out["mask"] * weights[:, 3:]).sum(), out["tri_id"]


def _check_fd(mesh, axes, h=1e-7):
    """Central differences of a weighted sum of antialiased colour and mask against autograd, w.r.t. a translation.

    The rendered image is continuous and piecewise smooth (rational) in the vertices; it has kinks only where an edge
    crosses a pixel centre (the triangle ids change: checked to stay fixed) or where a blend switches (t = 1/2 or a
    different silhouette edge, when a vertex lines up with a pixel centre). Steps h and h / 10 (world units; 1 unit is
    about 14 px) lie between such events, which FD at h and h / 10 agreeing confirms. Within a smooth piece the
    truncation error is O(h^2) and float64 rounding is about eps |loss| / h per difference, so we allow
    atol = 10 eps |loss| / (h / 10) and rel 1e-5 between the two FDs and against autograd."""
    weights = torch.rand(1, 4, W, W, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    shift = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    loss, ids0 = _render_loss(mesh, weights, shift)
    grad = torch.autograd.grad(loss, shift)[0]
    atol = 10 * torch.finfo(torch.float64).eps * abs(loss.item()) / (h / 10)
    for k in axes:
        fds = []
        for step in (h, h / 10):
            e = torch.zeros(3, dtype=torch.float64)
            e[k] = step
            (lp, ids_p), (lm, ids_m) = _render_loss(mesh, weights, e), _render_loss(mesh, weights, -e)
            assert torch.equal(ids_p, ids0) and torch.equal(ids_m, ids0)  # no edge crosses a pixel centre
            fds.append((lp - lm).item() / (2 * step))
        assert fds[0] == pytest.approx(fds[1], rel=1e-5, abs=atol)
        assert fds[0] == pytest.approx(grad[k].item(), rel=1e-5, abs=atol), k
        assert abs(grad[k].item()) > 100 * atol  # the gradient is really there
    return grad


def test_interior_gradient_matches_finite_differences():
    # a quad far larger than the view: no silhouette is visible, only the z-buffer + barycentric path gives gradients
    v = torch.tensor([[0.1, -3.1, -2.7], [-0.2, 2.9, -3.3], [-0.25, 3.2, 2.8], [0.05, -2.8, 3.05]], dtype=torch.float64)
    colors = torch.tensor([[1.0, 0.0, 0.2], [0.0, 1.0, 0.5], [0.3, 0.2, 1.0], [0.6, 0.6, 0.0]], dtype=torch.float64)
    mesh = Mesh(v, torch.tensor([[0, 1, 2], [0, 2, 3]]), colors)
    assert (rasterize(mesh, CAM).tri_id >= 0).all()
    _check_fd(mesh, axes=(0, 1, 2), h=1e-5)  # the only events are the diagonal crossing a pixel centre


def test_silhouette_gradient_matches_finite_differences_and_comes_from_antialiasing():
    # a constant-colour triangle: the image changes with its position only at its outline
    v = torch.tensor([[0.0, -0.31, -0.27], [0.0, 0.33, -0.22], [0.0, 0.02, 0.36]], dtype=torch.float64)
    mesh = Mesh(v, _facing(v), torch.tensor([[1.0, 0.2, 0.1]] * 3, dtype=torch.float64))
    _check_fd(mesh, axes=(0, 1, 2))  # x moves it towards the camera (it grows), y and z across the screen
    # without the antialias pass there is no gradient with respect to its position at all
    shift = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    moved = Mesh(mesh.vertices + shift, mesh.faces, mesh.vertex_colors)
    img = interpolate(moved.vertex_colors, rasterize(moved, CAM))
    g = torch.autograd.grad(img.sum(), shift, allow_unused=True)[0]
    assert g is None or g.abs().max() < 1e-12


def test_sphere_gradient_with_occlusion_and_small_triangles():
    # a coloured icosphere: interior, silhouettes over background, sub-pixel triangles at the rim, all at once
    mesh = icosphere(2, 0.6, dtype=torch.float64)
    mesh.vertex_colors = torch.rand(
        mesh.vertices.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64
    )
    _check_fd(mesh, axes=(0, 1, 2))


@pytest.mark.parametrize("slope", [0.0, 0.3, 0.9])
def test_coverage_derivative_equals_edge_length(slope):
    """Analytic oracle: moving a straight outline edge sideways by du pixels changes the covered area by its length
    across the image times du. For a near-vertical edge spanning all W rows inside the image the derivative of the
    summed mask with respect to a world-y translation is exactly W * f / depth (depth 2), for any slope below 1; the
    same for a near-horizontal edge and a world-z translation. Counting an edge in both pixel-pair families (a bug)
    gives W (1 + slope) instead."""
    for axis in (1, 2):
        top = torch.tensor([0.0, 0.013 + 5 * slope, 5.0], dtype=torch.float64)
        bottom = torch.tensor([0.0, 0.013 - 5 * slope, -5.0], dtype=torch.float64)
        if axis == 2:  # the same edge turned by 90 degrees in the plane x = 0
            top, bottom = top[[0, 2, 1]], bottom[[0, 2, 1]]
        far = torch.tensor([0.0, -20.0, 0.0] if axis == 1 else [0.0, 0.0, -20.0], dtype=torch.float64)
        v = torch.stack([top, bottom, far])
        shift = torch.zeros(3, dtype=torch.float64, requires_grad=True)
        mesh = Mesh(v + shift, _facing(v), torch.ones(3, 3, dtype=torch.float64))
        mask = render_mesh(mesh, CAM, background=(0.0, 0.0, 0.0))["mask"]
        g = torch.autograd.grad(mask.sum(), shift)[0]
        # the covered side is at -y (resp. -z), so moving +y (+z) only covers more
        assert g[axis].item() == pytest.approx(W * F_PX / 2, rel=1e-12)


def test_chunking_does_not_change_the_image_and_edge_neighbours_close_up():
    mesh = icosphere(3, 0.5, dtype=torch.float64)
    a = rasterize(mesh, CAM).tri_id
    b = rasterize(mesh, CAM, max_pairs=97).tri_id
    assert torch.equal(a, b)
    face, vert = edge_neighbours(mesh.faces)
    assert (face >= 0).all() and (vert >= 0).all()  # closed surface: every edge has a neighbour
    ends = torch.stack([mesh.faces, mesh.faces.roll(-1, 1)], -1)  # (F, 3, 2) edge endpoints
    nb = mesh.faces[face]  # (F, 3, 3) the neighbour's vertices
    assert ((nb[..., :, None] == ends[..., None, :]).any(-1).sum(-1) == 2).all()  # the neighbour shares the edge
    assert not (vert[..., None] == ends).any()  # and its far vertex is off it
    assert (nb == vert[..., None]).any(-1).all()


def test_empty_mesh_renders_background_and_bad_input_raises():
    empty = Mesh(torch.zeros(0, 3, dtype=torch.float64), torch.zeros(0, 3, dtype=torch.long))
    out = render_mesh(empty, CAM, background=(0.2, 0.4, 0.6))
    assert out["mask"].abs().max() == 0 and (out["tri_id"] == -1).all()
    torch.testing.assert_close(out["color"][0, :, 3, 5], torch.tensor([0.2, 0.4, 0.6], dtype=torch.float64))
    v = torch.tensor([[0.0, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=torch.float64)
    with pytest.raises(ScorelabError, match="face indices"):
        render_mesh(Mesh(v, torch.tensor([[0, 1, 5]])), CAM)
    with pytest.raises(ScorelabError, match="NaN"):
        render_mesh(Mesh(v * float("nan"), torch.tensor([[0, 1, 2]])), CAM)


def test_background_pixels_give_finite_gradients_when_face_zero_is_degenerate():
    # background pixels read face 0 as a stand-in; a zero-area face 0 once made 0/0 there and NaN vertex gradients
    v = torch.tensor(
        [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, -0.4, -0.4], [0.0, 0.4, -0.4], [0.0, 0.0, 0.4]],
        dtype=torch.float64,
        requires_grad=True,
    )
    mesh = Mesh(v, torch.cat([torch.tensor([[0, 1, 2]]), _facing(v.detach()[3:]) + 3]))
    out = render_mesh(mesh, CAM)
    assert (out["mask"] > 0.5).any() and (out["mask"] < 0.5).any()
    (out["color"].sum() + out["mask"].sum()).backward()
    assert torch.isfinite(v.grad).all() and v.grad[3:].abs().sum() > 0


# --- audit additions ------------------------------------------------------------------------------------------------


def _ray_cast_ids(v, faces, cam):
    """Nearest triangle per pixel centre by exact ray-triangle intersection (-1 for none), and the depth gap to the
    second hit (inf where fewer than two)."""
    origins, dirs = generate_rays(cam)
    o, d = origins[0].reshape(-1, 3), dirs[0].reshape(-1, 3)
    ts = []
    for f in faces.tolist():
        a, b, c = v[f]
        n = torch.linalg.cross(b - a, c - a)
        t = ((a - o) @ n) / (d @ n)
        p = o + t[:, None] * d
        side = [torch.linalg.cross((q1 - q0).expand_as(p), p - q0) @ n for q0, q1 in ((a, b), (b, c), (c, a))]
        inside = (side[0] >= 0) & (side[1] >= 0) & (side[2] >= 0) & (t > 0)
        ts.append(torch.where(inside, t, torch.full_like(t, math.inf)))
    ts = torch.stack(ts, 1)
    best = ts.min(1)
    ids = torch.where(torch.isfinite(best.values), best.indices, -1)
    gap = ts.sort(1).values
    return ids.reshape(cam.height, cam.width), (gap[:, 1] - gap[:, 0]).reshape(cam.height, cam.width)


def test_zbuffer_resolves_interpenetrating_triangles_like_a_ray_cast():
    """1/z, not z, is affine in screen space (perspective-correct depth): a steeply slanted triangle crossing a
    fronto-parallel one must win exactly where its surface is nearer along each pixel's ray."""
    v = torch.tensor([[0.0, -3.0, -3.0], [0.0, 3.0, -3.0], [0.0, 0.0, 3.0],  # fronto-parallel, depth 2
                      [0.9, -0.7, -0.6], [0.9, -0.7, 0.6], [-0.9, 0.7, 0.05]], dtype=torch.float64)  # fmt: skip
    faces = torch.tensor([[0, 1, 2], [3, 4, 5]])
    ids = rasterize(Mesh(v, faces), CAM).tri_id[0]
    want, gap = _ray_cast_ids(v, faces, CAM)
    clear = gap > 1e-6  # skip pixels exactly on the intersection line
    assert (want[clear] == 1).sum() > 20 and (want[clear] == 0).sum() > 20
    assert torch.equal(ids[clear], want[clear])


def test_no_holes_where_a_shared_edge_passes_through_pixel_centres():
    # a screen-aligned square split along its diagonal, which runs through the pixel centres (k + 1/2, k + 1/2):
    # those pixels lie on an edge of both triangles and must be covered by one of them (edge functions >= 0)
    from scorelab.three.raster import _zbuffer

    screen = torch.tensor([[4.5, 4.5], [19.5, 4.5], [19.5, 19.5], [4.5, 19.5]], dtype=torch.float64)
    depth = torch.full((4,), 2.0, dtype=torch.float64)
    ids = _zbuffer(screen, depth, torch.tensor([[0, 1, 2], [0, 2, 3]]), 24, 24, 1e-3, 10**6)
    assert (ids[5:19, 5:19] >= 0).all()  # every pixel centre strictly inside the square
    assert (ids[range(5, 19), range(5, 19)] >= 0).all()


def test_occluding_edge_is_antialiased_against_the_surface_behind():
    """The coverage oracle of test_coverage_derivative_equals_edge_length with a blue surface behind instead of the
    background: the summed red of a red triangle's near-vertical outline changes by W f / depth per unit of world-y
    translation; only the antialias pass with the nearer triangle owning the pair can give it."""
    top = torch.tensor([0.0, 0.013 + 1.5, 5.0], dtype=torch.float64)
    bottom = torch.tensor([0.0, 0.013 - 1.5, -5.0], dtype=torch.float64)
    far = torch.tensor([0.0, -20.0, 0.0], dtype=torch.float64)
    front = torch.stack([top, bottom, far])
    back = torch.tensor([[-0.5, -9.0, -9.0], [-0.5, 9.0, -9.0], [-0.5, 9.0, 9.0], [-0.5, -9.0, 9.0]],
                        dtype=torch.float64)  # fmt: skip
    shift = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    verts = torch.cat([front + shift, back])
    faces = torch.cat([_facing(front), torch.tensor([[3, 4, 5], [3, 5, 6]])])  # the quad faces +x
    colors = torch.tensor([[1.0, 0, 0]] * 3 + [[0, 0, 1.0]] * 4, dtype=torch.float64)
    out = render_mesh(Mesh(verts, faces, colors), CAM, background=(0.0, 0.0, 0.0))
    assert (out["mask"] == 1).all()  # the blue quad fills the view
    g = torch.autograd.grad(out["color"][0, 0].sum(), shift)[0]
    assert g[1].item() == pytest.approx(W * F_PX / 2, rel=1e-12)


def test_meshes_without_colours_show_normals_as_half_plus_half_n():
    # the centre pixel of a sphere seen from +x: normal about +x, so colour about (1, 0.5, 0.5)
    out = render_mesh(icosphere(3, 0.5, dtype=torch.float64), CAM)
    c, n = out["color"][0, :, 12, 12], out["normals"][0, :, 12, 12]
    torch.testing.assert_close(c, (0.5 + 0.5 * n).clamp(0, 1))
    assert n[0].item() > 0.95


def test_render_mesh_needs_cameras_a_valid_background_and_a_positive_near():
    mesh = icosphere(1, 0.4)
    with pytest.raises(ScorelabError, match=r"render_mesh needs at least one camera"):  # was a torch.stack error
        render_mesh(mesh, CAM[0:0])
    for bg in ((0.5,), (255, 255, 255)):  # (0.5,) broadcast to grey, 255 gave colours of 255
        with pytest.raises(ScorelabError, match=r"background must be three numbers \(R, G, B\) in \[0, 1\], got "):
            render_mesh(mesh, CAM, background=bg)
    for near in (0.0, -1.0):
        with pytest.raises(ScorelabError, match=r"near must be a depth > 0, got "):
            render_mesh(mesh, CAM, near=near)


def test_int32_faces_render_as_int64_faces():
    # validate_mesh allows int32 faces; render_mesh crashed on them ("Index put requires the source and destination
    # dtypes match") in the antialias pass's edge_neighbours
    ico = icosphere(2, 0.6, dtype=torch.float64)
    ico.vertex_colors = torch.rand(ico.vertices.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    cams = orbit_cameras([1.0, 1.6], [0.3, 2.0], 2.0, width=W, dtype=torch.float64)
    wide = render_mesh(ico, cams)
    narrow = render_mesh(Mesh(ico.vertices, ico.faces.int(), ico.vertex_colors), cams)
    assert (wide["mask"] > 0.5).any() and (wide["mask"] < 0.5).any()
    for key in ("color", "mask", "depth", "normals", "tri_id"):
        torch.testing.assert_close(narrow[key], wide[key], rtol=0, atol=0)
    for got, want in zip(edge_neighbours(ico.faces.int()), edge_neighbours(ico.faces), strict=True):
        assert got.dtype == torch.int64 and torch.equal(got, want)
