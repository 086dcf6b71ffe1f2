"""Voxel grids: trilinear sampling, the ray-marching renderer against closed forms and finite differences, and the
mip pyramid."""

import math

import pytest
import torch

from scorelab.three.cameras import orbit_cameras
from scorelab.three.voxels import VoxelGrid, footprint_level, mip_pyramid, ray_march, trilinear


def _centres(r, dtype=torch.float64):
    lin = (torch.arange(r, dtype=dtype) + 0.5) / r - 0.5
    z, y, x = torch.meshgrid(lin, lin, lin, indexing="ij")
    return x, y, z


def test_trilinear_is_exact_at_centres_and_for_linear_fields():
    x, y, z = _centres(8)
    field = (0.3 * x - 1.2 * y + 2.0 * z + 0.1)[None]
    centres = torch.stack([x, y, z], -1).reshape(-1, 3)
    torch.testing.assert_close(trilinear(field, centres, -0.5, 0.5)[:, 0], field.reshape(-1))
    # inside the hull of the centres a linear field is reproduced exactly
    g = torch.Generator().manual_seed(0)
    pts = (torch.rand(100, 3, generator=g, dtype=torch.float64) - 0.5) * (1 - 1 / 8)
    expected = 0.3 * pts[:, 0] - 1.2 * pts[:, 1] + 2.0 * pts[:, 2] + 0.1
    torch.testing.assert_close(trilinear(field, pts, -0.5, 0.5)[:, 0], expected)


def _inner_box(r, a, sigma):
    x, y, z = _centres(r)
    inside = (x.abs() < a) & (y.abs() < a) & (z.abs() < a)
    return (sigma * inside.double())[None]


@pytest.mark.parametrize("elevation", [0.0, 0.3])
def test_homogeneous_box_opacity_is_one_minus_exp_sigma_chord(elevation):
    """Cells of density sigma filling [-a, a]^3 (a on cell boundaries). Across a face, the trilinear ramp runs from
    the last full centre to the first empty one, symmetric about the face, so the line integral along a ray that
    crosses two opposite faces is exactly sigma x chord. The camera sits on +x at elevation e: the central ray's
    chord is 2 a / cos(e). Midpoint quadrature of the piecewise-linear ramps errs by at most 4 kinks x delta^2 / 8 x
    sigma / h, about 2e-5 sigma at 1024 samples."""
    r, a, sigma = 32, 0.25, 4.0
    dens = _inner_box(r, a, sigma)
    cam = orbit_cameras(math.pi / 2 - elevation, 0.0, 2.0, width=9, dtype=torch.float64)
    out = ray_march(dens, torch.ones(3, r, r, r, dtype=torch.float64), cam, samples=1024)
    chord = 2 * a / math.cos(elevation)
    assert out["mask"][0, 0, 4, 4].item() == pytest.approx(1 - math.exp(-sigma * chord), abs=1e-3)


def test_depth_and_normal_of_an_opaque_cube_face():
    r, a = 32, 0.25
    dens = _inner_box(r, a, 400.0)
    cam = orbit_cameras(math.pi / 2, 0.0, 2.0, width=9, dtype=torch.float64)
    out = ray_march(dens, torch.ones(3, r, r, r, dtype=torch.float64), cam, samples=512)
    assert out["mask"][0, 0, 4, 4].item() == pytest.approx(1.0, abs=1e-6)
    # the face x = a is at camera depth 2 - a; the density ramps over one cell around it
    assert abs(out["depth"][0, 0, 4, 4].item() - (2 - a)) < 1 / r
    n = out["normals"][0, :, 4, 4]
    assert (n / n.norm())[0].item() > 0.99  # facing the camera on +x


def test_ray_march_gradients_match_finite_differences():
    torch.manual_seed(0)
    grid = VoxelGrid(
        6, density=torch.randn(1, 6, 6, 6, dtype=torch.float64), color=torch.randn(3, 6, 6, 6, dtype=torch.float64)
    )
    cam = orbit_cameras(1.0, 0.5, 1.8, width=8, dtype=torch.float64)
    w = torch.rand(1, 3, 8, 8, dtype=torch.float64)

    def loss():
        out = grid.render(cam, samples=32)
        return (out["color"] * w).sum() + out["mask"].sum()

    loss().backward()
    for p in (grid.density_raw, grid.color_raw):
        for i in torch.randperm(p.numel())[:5].tolist():
            flat = p.data.view(-1)
            h = 1e-6
            flat[i] += h
            lp = loss().item()
            flat[i] -= 2 * h
            lm = loss().item()
            flat[i] += h
            assert (lp - lm) / (2 * h) == pytest.approx(p.grad.view(-1)[i].item(), rel=1e-5, abs=1e-8)


def test_mip_pyramid_averages_and_footprint_levels():
    g = torch.Generator().manual_seed(1)
    dens = torch.rand(1, 8, 8, 8, generator=g, dtype=torch.float64)
    col = torch.rand(3, 8, 8, 8, generator=g, dtype=torch.float64)
    ds, cs = mip_pyramid(dens, col)
    assert [d.shape[-1] for d in ds] == [8, 4, 2, 1]
    block = dens[0, :2, :2, :2]
    assert ds[1][0, 0, 0, 0].item() == pytest.approx(block.mean().item())
    expected = (block * col[:, :2, :2, :2]).sum((1, 2, 3)) / block.sum()
    torch.testing.assert_close(cs[1][:, 0, 0, 0], expected)
    assert ds[-1].item() == pytest.approx(dens.mean().item())
    # a cell of side s at depth z spans f s / z pixels: near cameras use level 0, far ones coarser levels
    levels = footprint_level(1 / 64, torch.tensor([0.5, 2.0, 8.0, 64.0]), focal=70.0, n_levels=4)
    assert levels.tolist() == [0, 0, 2, 3]


def _blob(r, peak=20.0, dtype=torch.float64):
    x, y, z = _centres(r, dtype)
    dens = (peak * torch.exp(-(x**2 + y**2 + z**2) / (2 * 0.15**2)))[None]
    return dens, torch.stack([x + 0.5, y + 0.5, 0.5 - z])


@pytest.mark.parametrize("use_pyramid", [False, True])
def test_splatting_agrees_with_ray_marching_on_a_smooth_volume(use_pyramid):
    """Splatting blurs the image by its kernels: variance (0.5 cell x f / z)^2 + 0.3 px^2 = 0.47 px^2 here. For a blob
    of screen std 0.15 f / z = 3.9 px and peak opacity 0.84 the image Laplacian is at most about 2 x 0.84 / 3.9^2 =
    0.11 / px^2, so pixels move by at most about 0.47 / 2 x 0.11 = 0.026, and far less on average."""
    from scorelab.three.splat import splat_voxels

    dens, col = _blob(32)
    cam = orbit_cameras(1.1, 0.4, 2.0, width=48, dtype=torch.float64)
    ref = ray_march(dens, col, cam, samples=256)
    out = splat_voxels(dens, col, cam, use_pyramid=use_pyramid)
    for key in ("color", "mask"):
        diff = (out[key] - ref[key]).abs()
        assert diff.max() < 0.03 and diff.mean() < 0.005, key


def test_splatting_gradients_match_finite_differences():
    from scorelab.three.splat import splat_voxels

    dens, col = _blob(6, peak=8.0)
    cam = orbit_cameras(1.0, 0.5, 1.8, width=12, dtype=torch.float64)
    w = torch.rand(1, 3, 12, 12, generator=torch.Generator().manual_seed(5), dtype=torch.float64)

    def loss(d, c):
        out = splat_voxels(d, c, cam, use_pyramid=False)
        return (out["color"] * w).sum() + out["mask"].sum()

    d, c = dens.clone().requires_grad_(), col.clone().requires_grad_()
    gd, gc = torch.autograd.grad(loss(d, c), (d, c))
    h = 1e-6
    gen = torch.Generator().manual_seed(6)
    for p, g, is_d in ((dens, gd, True), (col, gc, False)):
        for i in torch.randperm(p.numel(), generator=gen)[:5].tolist():
            e = torch.zeros(p.numel(), dtype=p.dtype)
            e[i] = h
            e = e.reshape(p.shape)
            args_p = (dens + e, col) if is_d else (dens, col + e)
            args_m = (dens - e, col) if is_d else (dens, col - e)
            fd = (loss(*args_p) - loss(*args_m)).item() / (2 * h)
            # rounding in the difference: about |loss| x 2e-16 / h = 2e-8 for a loss of about 100
            assert fd == pytest.approx(g.reshape(-1)[i].item(), rel=1e-5, abs=1e-7)
