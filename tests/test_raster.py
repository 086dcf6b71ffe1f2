"""The triangle rasterizer: z-buffer, barycentrics, depth, coverage, and gradients against finite differences at
silhouettes (only the antialias pass gives them) and in the interior."""

import math

import pytest
import torch

from scorelab.three.cameras import orbit_cameras
from scorelab.three.mesh import Mesh, icosphere
from scorelab.three.raster import barycentrics, interpolate, rasterize, render_mesh

CAM = orbit_cameras(math.pi / 2, 0.0, 2.0, width=24, dtype=torch.float64)  # on +x, looking at the origin, z up


def _triangle(colors=None):
    # a triangle in the plane x = 0 facing the camera on +x: counter-clockwise seen from +x
    v = torch.tensor([[0.0, -0.31, -0.27], [0.0, 0.33, -0.22], [0.0, 0.02, 0.36]], dtype=torch.float64)
    return Mesh(v, torch.tensor([[0, 1, 2]]), colors)


def test_barycentrics_reproduce_pixel_centres_and_depth_of_a_plane():
    # a tilted quad: perspective-correct barycentrics interpolate world positions exactly (they are affine in 3D)
    v = torch.tensor([[0.2, -0.6, -0.6], [-0.3, 0.6, -0.6], [-0.3, 0.6, 0.6], [0.2, -0.6, 0.6]], dtype=torch.float64)
    mesh = Mesh(v, torch.tensor([[0, 1, 2], [0, 2, 3]]))
    rast = rasterize(mesh, CAM)
    bary, covered = barycentrics(rast)
    assert covered.sum() > 100
    torch.testing.assert_close(bary.sum(-1)[covered], torch.ones_like(bary[..., 0][covered]))
    world = interpolate(mesh.vertices, rast, bary)[0]  # (H, W, 3)
    # each covered pixel's interpolated point must lie on that pixel's ray: project it back
    from scorelab.three.cameras import project

    uv, depth = project(CAM, world[covered[0]])
    jj, ii = torch.meshgrid(torch.arange(24), torch.arange(24), indexing="xy")
    centres = torch.stack([jj, ii], -1)[covered[0]].double() + 0.5
    torch.testing.assert_close(uv[0], centres)
    out = render_mesh(mesh, CAM)
    torch.testing.assert_close(out["depth"][0, 0][covered[0]], depth[0])


def test_nearer_triangle_wins_and_background_is_minus_one():
    far = _triangle()
    near = Mesh(far.vertices + torch.tensor([0.5, 0.0, 0.0], dtype=torch.float64), far.faces)
    both = Mesh(torch.cat([far.vertices, near.vertices]), torch.tensor([[0, 1, 2], [3, 4, 5]]))
    ids = rasterize(both, CAM).tri_id[0]
    assert (ids == -1).any() and (ids == 1).any() and not (ids == 0).any()  # the far one is hidden everywhere


def test_sphere_mask_area_matches_projection():
    """An icosphere of radius r at distance D projects to a disc of radius f r / sqrt(D^2 - r^2) (the tangent cone).
    The polygon lies between its inscribed and circumscribed spheres, and antialiasing leaves at most half a pixel of
    coverage error along the rim: |area - pi R^2| <= pi (R^2 - R_in^2) + pi R."""
    r, d = 0.5, 2.0
    mesh = icosphere(4, r, dtype=torch.float64)
    cam = orbit_cameras(1.1, 0.4, d, width=96, dtype=torch.float64)
    area = render_mesh(mesh, cam)["mask"].sum().item()
    f = cam.focal[0, 0].item()
    e = (mesh.vertices[mesh.faces[:, 0]] - mesh.vertices[mesh.faces[:, 1]]).norm(dim=1).max().item()
    r_in = math.sqrt(r * r - e * e / 3)
    big = f * r / math.sqrt(d * d - r * r)
    small = f * r_in / math.sqrt(d * d - r_in * r_in)
    assert abs(area - math.pi * big**2) <= math.pi * (big**2 - small**2) + math.pi * big


def _loss_and_grad(mesh, weights, shift):
    shift = shift.clone().requires_grad_()
    moved = Mesh(mesh.vertices + shift, mesh.faces, mesh.vertex_colors)
    out = render_mesh(moved, CAM, background=(0.0, 0.0, 0.0))
    loss = (out["color"] * weights).sum() + (out["mask"] * weights[:, :1]).sum()
    return loss, torch.autograd.grad(loss, shift)[0], out["tri_id"]


@pytest.mark.parametrize("case", ["silhouette", "interior"])
def test_translation_gradient_matches_finite_differences(case):
    colors = None
    if case == "silhouette":
        colors = torch.tensor([[1.0, 0.2, 0.1]] * 3, dtype=torch.float64)  # constant: only silhouettes move the image
    else:
        colors = torch.tensor([[1.0, 0.0, 0.2], [0.0, 1.0, 0.5], [0.3, 0.2, 1.0]], dtype=torch.float64)
    mesh = _triangle(colors)
    weights = torch.rand(1, 3, 24, 24, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    zero = torch.zeros(3, dtype=torch.float64)
    _, grad, ids0 = _loss_and_grad(mesh, weights, zero)
    # The antialiased image is continuous in the vertices, smooth except where an edge crosses a pixel centre (the
    # ids change; checked below) or passes the midpoint between two centres (t = 1/2, where the blend moves from one
    # pixel to the other). Steps of 1e-7 world units (1e-6 px) sit between such events; that FD at h and h / 10
    # agree confirms no event falls inside the step.
    for k in (1, 2):  # in-plane translations (y: right-left on screen, z: up-down)
        fds = []
        for h in (1e-7, 1e-8):
            e = torch.zeros(3, dtype=torch.float64)
            e[k] = h
            lp, _, ids_p = _loss_and_grad(mesh, weights, e)
            lm, _, ids_m = _loss_and_grad(mesh, weights, -e)
            assert torch.equal(ids_p, ids0) and torch.equal(ids_m, ids0)  # no edge crosses a pixel centre
            fds.append((lp - lm).item() / (2 * h))
        assert fds[0] == pytest.approx(fds[1], rel=1e-5)
        # central differences at h = 1e-7: rounding about 1e-16 * |loss| / h ~ 1e-7 relative
        assert fds[0] == pytest.approx(grad[k].item(), rel=1e-5, abs=1e-7), (case, k)
        assert abs(grad[k].item()) > 1e-2  # the gradient is really there
    if case == "silhouette":
        # without the antialias pass, a constant-colour triangle has no gradient with respect to its position
        shift = zero.clone().requires_grad_()
        moved = Mesh(mesh.vertices + shift, mesh.faces, mesh.vertex_colors)
        rast = rasterize(moved, CAM)
        img = interpolate(moved.vertex_colors, rast)
        g = torch.autograd.grad((img * weights.permute(0, 2, 3, 1)).sum(), shift, allow_unused=True)[0]
        assert g is None or g.abs().max() < 1e-9


def test_chunking_does_not_change_the_image():
    mesh = icosphere(3, 0.5, dtype=torch.float64)
    a = rasterize(mesh, CAM).tri_id
    b = rasterize(mesh, CAM, max_pairs=97).tri_id
    assert torch.equal(a, b)
