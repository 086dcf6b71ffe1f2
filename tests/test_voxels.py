"""Voxel grids: trilinear sampling, the ray-marching renderer against closed forms and finite differences, the mip
pyramid, and EWA voxel splatting against the ray-march and finite differences (all float64)."""

import math

import pytest
import torch

from scorelab.errors import ScorelabError
from scorelab.three.cameras import generate_rays, orbit_cameras
from scorelab.three.splat import splat_voxels
from scorelab.three.voxels import (
    VoxelGrid,
    footprint_level,
    mip_pyramid,
    pyramid_partition,
    ray_march,
    trilinear,
)

F64 = torch.float64


def _centres(r, dtype=F64):
    lin = (torch.arange(r, dtype=dtype) + 0.5) / r - 0.5
    z, y, x = torch.meshgrid(lin, lin, lin, indexing="ij")
    return x, y, z


def _blob(r, peak=20.0):
    """Gaussian blob of density (std 0.15) with a colour gradient, all inside [0, 1]."""
    x, y, z = _centres(r)
    dens = (peak * torch.exp(-(x**2 + y**2 + z**2) / (2 * 0.15**2)))[None]
    return dens, torch.stack([x + 0.5, y + 0.5, 0.5 - z])


def test_trilinear_exact_at_centres_linear_inside_hull_clamped_to_box_zero_outside():
    r = 8
    x, y, z = _centres(r)
    coef = torch.tensor([0.3, -1.2, 2.0], dtype=F64)
    field = (coef[0] * x + coef[1] * y + coef[2] * z + 0.1)[None]
    centres = torch.stack([x, y, z], -1).reshape(-1, 3)
    torch.testing.assert_close(trilinear(field, centres)[:, 0], field.reshape(-1), rtol=0, atol=1e-13)
    g = torch.Generator().manual_seed(0)
    hull = 0.5 - 0.5 / r
    pts = (torch.rand(200, 3, generator=g, dtype=F64) * 2 - 1) * hull
    torch.testing.assert_close(trilinear(field, pts)[:, 0], pts @ coef + 0.1, rtol=0, atol=1e-13)
    # between the outer centres and the faces the value is held (border), beyond the box it is zero
    face = torch.tensor([[0.49, 0.0, 0.0], [0.51, 0.0, 0.0], [0.0, -0.7, 0.0]], dtype=F64)
    held = coef[0] * hull + 0.1
    torch.testing.assert_close(trilinear(field, face)[:, 0], torch.tensor([held.item(), 0.0, 0.0], dtype=F64))


@pytest.mark.parametrize("theta,phi", [(math.pi / 2, 0.0), (0.0, 0.0), (1.1, 0.4), (2.2, 2.5)])
def test_homogeneous_box_opacity_is_one_minus_exp_sigma_chord(theta, phi):
    """A grid of constant density sigma is sigma everywhere in the box, so every sample along a ray has density sigma
    and prod (1 - alpha_i) = exp(-sigma delta N) = exp(-sigma L) exactly (no quadrature error). The centre pixel's ray
    passes through the origin with unit direction d, so its chord through [-1/2, 1/2]^3 is L = 1 / max_k |d_k|.
    Axis views (theta = pi/2 and the pole) and two oblique ones; rays that miss the box are exactly transparent."""
    sigma, r = 3.0, 4
    dens = torch.full((1, r, r, r), sigma, dtype=F64)
    col = torch.full((3, r, r, r), 0.25, dtype=F64)
    cam = orbit_cameras(theta, phi, 3.0, fov_deg=60, width=31, dtype=F64)
    out = ray_march(dens, col, cam, samples=16)
    _, dirs = generate_rays(cam)
    chord = 1 / dirs[0, 15, 15].abs().max().item()
    expected = 1 - math.exp(-sigma * chord)
    assert out["mask"][0, 0, 15, 15].item() == pytest.approx(expected, abs=1e-12)
    assert out["color"][0, :, 15, 15].tolist() == pytest.approx([0.25 * expected + 1 - expected] * 3, abs=1e-12)
    # the corner pixel looks past the box (fov 60 deg at distance 3 sees +-1.7 at the origin's depth)
    assert out["mask"][0, 0, 0, 0].item() == 0.0 and out["color"][0, :, 0, 0].tolist() == [1.0, 1.0, 1.0]


@pytest.mark.parametrize(
    "theta,phi,normal", [(math.pi / 2, 0.0, (1, 0, 0)), (0.0, 0.0, (0, 0, 1)), (math.pi / 2, -math.pi / 2, (0, -1, 0))]
)
def test_depth_and_normal_of_a_constant_density_cube_face(theta, phi, normal):
    """Camera at distance D on an axis, centre pixel looking straight at the face at camera depth D - 1/2. With
    constant sigma the weights are w_i = (1 - a)^i a, a = 1 - exp(-sigma delta), at camera depths
    D - 1/2 + (i + 1/2) delta, delta = 1/N: the expected depth is that geometric sum (a closed form, summed here).
    The density gradient is zero inside and points inward over the last cell (the drop to zero outside), so the
    composited normal is the outward face normal times the weight of the samples within 1.5 cells of the face."""
    sigma, r, n, dist = 200.0, 8, 256, 2.0
    dens = torch.full((1, r, r, r), sigma, dtype=F64)
    cam = orbit_cameras(theta, phi, dist, width=9, dtype=F64)
    out = ray_march(dens, torch.ones(3, r, r, r, dtype=F64), cam, samples=n)
    delta = 1 / n
    a = 1 - math.exp(-sigma * delta)
    i = torch.arange(n, dtype=F64)
    w = (1 - a) ** i * a
    expected_depth = (w * (dist - 0.5 + (i + 0.5) * delta)).sum().item()
    assert out["depth"][0, 0, 4, 4].item() == pytest.approx(expected_depth, abs=1e-10)
    assert out["depth"][0, 0, 4, 4].item() / out["mask"][0, 0, 4, 4].item() == pytest.approx(dist - 0.5, abs=2 * delta)
    near_face = w[: int(1.5 * n / r)].sum().item()  # samples within 1.5 cells of the face
    expected_normal = torch.tensor(normal, dtype=F64) * near_face
    torch.testing.assert_close(out["normals"][0, :, 4, 4], expected_normal, rtol=0, atol=1e-10)


def _fd_check(loss, params, n_coords=4, n_dirs=2, seed=0):
    """Central differences on a few coordinates and random directions, against autograd (float64). With h = 1e-5 the
    truncation error h^2 |f'''| / 6 is ~1e-10 for these losses; rounding in the difference is about eps |f| / h
    per evaluation (|f| ~ 100 summed pixels: ~2e-9), so abs tolerance 10 eps |f| / h, and rel 1e-6."""
    value = loss(*params)
    grads = torch.autograd.grad(value, params)
    g = torch.Generator().manual_seed(seed)
    h = 1e-5
    atol = 10 * torch.finfo(F64).eps * abs(value.item()) / h
    for k, (p, gp) in enumerate(zip(params, grads, strict=True)):
        dirs = [
            torch.zeros(p.numel(), dtype=F64).index_fill_(0, torch.tensor([i]), 1.0)
            for i in torch.randperm(p.numel(), generator=g)[:n_coords].tolist()
        ]
        dirs += [torch.randn(p.numel(), generator=g, dtype=F64) for _ in range(n_dirs)]
        for v in dirs:
            v = v.view(p.shape)
            plus = [q + h * v if j == k else q for j, q in enumerate(params)]
            minus = [q - h * v if j == k else q for j, q in enumerate(params)]
            with torch.no_grad():
                fd = (loss(*plus) - loss(*minus)).item() / (2 * h)
            assert fd == pytest.approx((gp * v).sum().item(), rel=1e-6, abs=atol)


def test_ray_march_gradients_match_finite_differences():
    g = torch.Generator().manual_seed(1)
    raw_d = torch.randn(1, 8, 8, 8, generator=g, dtype=F64) + 1.0
    raw_c = torch.randn(3, 8, 8, 8, generator=g, dtype=F64)
    cam = orbit_cameras(1.0, 0.5, 1.8, width=8, dtype=F64)
    wc, wn = torch.rand(1, 3, 8, 8, generator=g, dtype=F64), torch.rand(1, 3, 8, 8, generator=g, dtype=F64)

    def loss(d, c):
        out = ray_march(torch.nn.functional.softplus(d), torch.sigmoid(c), cam, samples=24, chunk=20)
        return (out["color"] * wc).sum() + out["mask"].sum() + out["depth"].sum() + (out["normals"] * wn).sum()

    _fd_check(loss, (raw_d.requires_grad_(), raw_c.requires_grad_()))


@pytest.mark.parametrize("use_pyramid,radius", [(False, 1.8), (True, 2.5)])
def test_splatting_gradients_match_finite_differences(use_pyramid, radius):
    """Level-0 splats, and a view where the pyramid draws both level-0 and level-1 cells (gradients then flow through
    the 2x averaging). Tiny tile and work sizes force several tile chunks and kernel blocks."""
    dens, col = _blob(8, peak=8.0)
    cam = orbit_cameras(1.0, 0.5, radius, width=10, dtype=F64)
    parts = pyramid_partition(8, 4, cam, dtype=F64)
    if use_pyramid:
        assert parts[0].sum() > 0 and parts[1].sum() > 0
    g = torch.Generator().manual_seed(5)
    w = torch.rand(1, 3, 10, 10, generator=g, dtype=F64)

    def loss(d, c):
        out = splat_voxels(d, c, cam, use_pyramid=use_pyramid, tile=4, max_work=600)
        return (out["color"] * w).sum() + out["mask"].sum() + out["depth"].sum()

    _fd_check(loss, (dens.clone().requires_grad_(), col.clone().requires_grad_()))


def test_mip_pyramid_levels_are_exact_averages_of_children():
    g = torch.Generator().manual_seed(1)
    dens = torch.rand(1, 8, 8, 8, generator=g, dtype=F64)
    dens[0, :2, :2, :2] = 0  # an empty block: its colour falls back to the plain mean
    col = torch.rand(3, 8, 8, 8, generator=g, dtype=F64)
    ds, cs = mip_pyramid(dens, col)
    assert [d.shape[-1] for d in ds] == [8, 4, 2, 1]
    for lvl in range(1, 4):
        r = ds[lvl].shape[-1]
        kids_d = ds[lvl - 1].reshape(1, r, 2, r, 2, r, 2)
        kids_c = cs[lvl - 1].reshape(3, r, 2, r, 2, r, 2)
        mean_d = kids_d.mean((2, 4, 6))
        torch.testing.assert_close(ds[lvl], mean_d, rtol=0, atol=1e-15)
        weighted = (kids_d * kids_c).mean((2, 4, 6)) / mean_d
        expected = torch.where(mean_d > 0, weighted, kids_c.mean((2, 4, 6)))
        torch.testing.assert_close(cs[lvl], expected, rtol=0, atol=1e-14)
    assert cs[1][:, 0, 0, 0].tolist() == pytest.approx(col[:, :2, :2, :2].mean((1, 2, 3)).tolist())
    assert ds[-1].item() == pytest.approx(dens.mean().item(), abs=1e-15)


def test_footprint_level_rule_and_far_cameras_pick_coarser_levels():
    # f s / z = 1, 1/2, 1/4 (+ a little) pixels -> levels 0, 1, 2; nearer than one-pixel cells -> 0; clamped at top
    f, s = 100.0, 0.01
    z = torch.tensor([0.5, 1.0, 2.0 * 1.001, 4.0 * 1.001, 1e6])
    assert footprint_level(s, z, f, 4).tolist() == [0, 0, 1, 2, 3]
    levels = {}
    for dist in (2.0, 8.0):
        cam = orbit_cameras(1.0, 0.3, dist, width=64)
        parts = pyramid_partition(32, 6, cam)
        cover = torch.zeros(32, 32, 32, dtype=torch.long)
        mean_level = 0.0
        for lvl, m in enumerate(parts):
            r, k = 32 >> lvl, 1 << lvl
            up = m.view(r, r, r).repeat_interleave(k, 0).repeat_interleave(k, 1).repeat_interleave(k, 2)
            cover += up.long()
            mean_level += lvl * up.sum().item() / 32**3
        assert (cover == 1).all()  # the drawn cells tile the box exactly once
        levels[dist] = mean_level
    # f s / z: 64 / (2 tan(24.55 deg)) / 32 / z = 2.19 / z, so z in [1.5, 2.5] -> footprints > 0.5 px: all level 0;
    # z in [7.5, 8.5] -> 0.26-0.29 px: levels 1 (>= 1/4 px) and 2 (< 1/4 px), none at level 0
    assert levels[2.0] == 0.0 and 1.0 <= levels[8.0] <= 2.0


@pytest.mark.parametrize("res,width,use_pyramid,level", [(32, 48, False, 0), (32, 24, True, 1)])
def test_splatting_agrees_with_ray_marching_on_a_smooth_volume(res, width, use_pyramid, level):
    """Why they differ and by how much. The splatted optical depth is the ray-march's blurred on screen by a Gaussian
    of variance V = 0.3 px^2 (the low-pass) + (k^2 4^l - 1/6) p^2, with p = f s / z the level-0 cell footprint:
    a level-l Gaussian reconstruction kernel (std k 2^l s, k = 1/2) replaces the trilinear one (the tent filter,
    variance s^2 / 6 per axis). To second order a blur changes tau by V / 2 lap(tau), so the mask changes by
    pred = exp(-tau) V / 2 lap(tau), computed here from the ray-marched image (tau = -log(1 - mask)). Measured: the
    mask differs from the ray-march by up to 0.011 (level 0) and 0.054 (level 1, a 2-px blob), and pred explains all
    but 0.0008 and 0.0054 of it. Bound on the residual: the next term of the blur series is about V / sigma_px^2
    (0.09 and 0.11 here, blob screen std sigma_px = 3.9 and 2.0 px) times the leading one, doubled for the order-one
    factors of the fourth derivative, plus 1e-3 for the rest (affine projection, reconstruction ripple
    2 exp(-2 pi^2 k^2) per axis on a ray that averages it, sorting by centre depth, quadrature): 0.25 max|pred| +
    1e-3. The colour over white is 1 - sum w (1 - c) with 0 <= 1 - c <= 1, so its change is bounded by the mask's
    blur estimate: |d colour| <= max|pred| (measured 0.6 max|pred|)."""
    dens, col = _blob(res)
    cam = orbit_cameras(1.1, 0.4, 2.0, width=width, dtype=F64)
    if use_pyramid:
        assert pyramid_partition(res, 6, cam, dtype=F64)[level].sum() > 0
    ref = ray_march(dens, col, cam, samples=256)
    out = splat_voxels(dens, col, cam, use_pyramid=use_pyramid)
    p = cam.focal[0, 0].item() / res / 2.0
    var = 0.3 + (0.25 * 4**level - 1 / 6) * p**2
    tau = -torch.log1p(-ref["mask"][0, 0])
    lap = torch.zeros_like(tau)  # 5-point Laplacian in px^-2
    lap[1:-1, 1:-1] = tau[2:, 1:-1] + tau[:-2, 1:-1] + tau[1:-1, 2:] + tau[1:-1, :-2] - 4 * tau[1:-1, 1:-1]
    pred = torch.exp(-tau) * var / 2 * lap
    diff = out["mask"][0, 0] - ref["mask"][0, 0]
    bound = pred.abs().max().item()
    assert (diff - pred).abs().max().item() < 0.25 * bound + 1e-3
    assert (out["color"] - ref["color"]).abs().max().item() < bound
    if level == 0:
        assert diff.abs().max().item() < 0.02 and bound < 0.015  # the absolute figures at this resolution


def test_voxel_grid_module_and_bad_input():
    grid = VoxelGrid(4)
    assert grid.density().min().item() == pytest.approx(math.log1p(math.exp(-5.0)))
    cam = orbit_cameras(1.0, 0.0, 2.0, width=8)
    out, spl = grid.render(cam, samples=8), grid.splat(cam)
    assert out["color"].shape == spl["color"].shape == (1, 3, 8, 8)
    with pytest.raises(ScorelabError, match="density"):
        ray_march(torch.zeros(2, 4, 4, 4), torch.zeros(3, 4, 4, 4), cam)
    with pytest.raises(ScorelabError, match="box"):
        VoxelGrid(4, low=1.0, high=0.0)
    with pytest.raises(ScorelabError, match="resolution"):
        VoxelGrid(0)


def test_ray_march_on_chosen_pixels_equals_the_full_render_there():
    dens, col = _blob(12)
    cam = orbit_cameras(torch.tensor([1.0, 1.9]), torch.tensor([0.3, 2.2]), 2.0, width=10, dtype=F64)
    full = ray_march(dens, col, cam, samples=32)
    pix = torch.tensor([[0, 17, 55, 99], [3, 45, 46, 80]])
    part = ray_march(dens, col, cam, samples=32, pixels=pix, normals=False)
    assert set(part) == {"color", "mask", "depth"} and part["color"].shape == (2, 3, 4)
    for key in ("color", "mask", "depth"):
        want = full[key].flatten(2).gather(2, pix[:, None].expand(-1, full[key].shape[1], -1))
        torch.testing.assert_close(part[key], want, rtol=0, atol=1e-12)
    with pytest.raises(ScorelabError, match="pixel indices"):
        ray_march(dens, col, cam, pixels=torch.tensor([[0, 100], [0, 1]]))
    with pytest.raises(ScorelabError, match="pixels must be int64"):
        ray_march(dens, col, cam, pixels=torch.zeros(1, 3, dtype=torch.int64))


def test_normals_backpropagate_finite_small_gradients_through_constant_density():
    # F.normalize's eps once gave 1 / eps = 1e30 gradients wherever the density gradient is exactly zero
    d = torch.full((1, 8, 8, 8), 2.0, dtype=F64, requires_grad=True)
    c = torch.full((3, 8, 8, 8), 0.5, dtype=F64)
    out = ray_march(d, c, orbit_cameras(1.0, 0.3, 2.0, width=8, dtype=F64), samples=32)
    out["normals"].sum().backward()
    assert torch.isfinite(d.grad).all() and d.grad.abs().max() < 10


# --- audit additions ------------------------------------------------------------------------------------------------


def test_density_gradient_of_a_linear_field_is_its_coefficients():
    # central differences are exact on a linear field: (s(x + h) - s(x - h)) / 2h = coef, away from the box faces
    from scorelab.three.voxels import density_gradient

    x, y, z = _centres(8)
    coef = torch.tensor([0.7, -1.3, 2.1], dtype=F64)
    field = (coef[0] * x + coef[1] * y + coef[2] * z + 5.0)[None]
    grad = density_gradient(field)[:, 1:-1, 1:-1, 1:-1]
    torch.testing.assert_close(grad, coef[:, None, None, None].expand_as(grad), rtol=0, atol=1e-12)


def test_a_camera_inside_the_box_integrates_only_in_front_of_it():
    # camera at (0.3, 0, 0) looking at -x inside a constant box: the centre ray's chord is 0.8 (to x = -1/2), not 1
    sigma = 1.5
    dens = torch.full((1, 4, 4, 4), sigma, dtype=F64)
    cam = orbit_cameras(math.pi / 2, 0.0, 0.3, width=31, dtype=F64)
    out = ray_march(dens, torch.full((3, 4, 4, 4), 0.25, dtype=F64), cam, samples=16)
    assert out["mask"][0, 0, 15, 15].item() == pytest.approx(1 - math.exp(-sigma * 0.8), abs=1e-12)


def test_depth_is_camera_z_off_the_axis_too():
    """Mildenhall et al. 2020 quadrature with z the camera depth, not the ray length: off-axis rays through the
    dense cube's front face (at camera depth D - 1/2 for every pixel) give depth / mask = D - 1/2 up to the first
    cell's absorption (the ray length there is up to 6% longer)."""
    sigma, r, n, dist = 200.0, 8, 256, 2.0
    cam = orbit_cameras(math.pi / 2, 0.0, dist, width=9, dtype=F64)
    out = ray_march(torch.full((1, r, r, r), sigma, dtype=F64), torch.ones(3, r, r, r, dtype=F64), cam, samples=n)
    surface = out["depth"][0, 0, 2:7, 2:7] / out["mask"][0, 0, 2:7, 2:7]
    assert (out["mask"][0, 0, 2:7, 2:7] > 0.999).all()
    torch.testing.assert_close(surface, torch.full_like(surface, dist - 0.5 + 1 / sigma), rtol=0, atol=0.01)


def test_splat_projection_is_the_ewa_closed_form():
    """project_kernels against its definition (Zwicker et al. 2001): Sigma' = k^2 s^2 J J^T with J the autograd
    Jacobian of the world-to-pixel map, conic = (Sigma' + 0.3 I)^-1, scale = sqrt(det Sigma' / det(Sigma' + 0.3 I)),
    radius = 4 sqrt(largest eigenvalue of Sigma' + 0.3 I); off-axis centres, so Sigma' has off-diagonal terms."""
    from scorelab.three.splat import project_kernels

    cam = orbit_cameras(1.1, 0.4, 1.5, width=32, dtype=F64)
    centres = torch.tensor([[0.4, -0.3, 0.35], [-0.45, 0.4, -0.3], [0.1, 0.2, -0.4]], dtype=F64)
    side = torch.tensor([0.2, 0.1, 0.15], dtype=F64)
    mean2d, conic, scale, radius, depth, valid = project_kernels(centres, side, cam, kernel_std=0.5)
    w2c = cam.world_to_cam[0]

    def pix(p):
        c = w2c[:3, :3] @ p + w2c[:3, 3]
        return cam.focal[0] * c[:2] / c[2] + cam.principal[0]

    for k in range(3):
        jac = torch.autograd.functional.jacobian(pix, centres[k])
        sig = (0.5 * side[k]) ** 2 * jac @ jac.T
        full = sig + 0.3 * torch.eye(2, dtype=F64)
        assert abs(sig[0, 1].item()) > 0.01 * sig[0, 0].item()
        inv = torch.linalg.inv(full)
        torch.testing.assert_close(mean2d[k], pix(centres[k]))
        torch.testing.assert_close(conic[k], torch.stack([inv[0, 0], inv[0, 1], inv[1, 1]]))
        torch.testing.assert_close(scale[k], torch.sqrt(torch.linalg.det(sig) / torch.linalg.det(full)))
        torch.testing.assert_close(radius[k], 4 * torch.linalg.eigvalsh(full)[-1].sqrt())
    assert valid.all()


def test_splat_depth_agrees_with_ray_marching():
    # both are sum of weight x camera z; normalised by the mask they agree to the blob's depth spread (a few 1e-3)
    dens, col = _blob(32)
    cam = orbit_cameras(1.1, 0.4, 2.0, width=48, dtype=F64)
    ref = ray_march(dens, col, cam, samples=256)
    out = splat_voxels(dens, col, cam, use_pyramid=False)
    sel = ref["mask"] > 0.3
    assert sel.sum() > 50
    ref_z, out_z = ref["depth"][sel] / ref["mask"][sel], out["depth"][sel] / out["mask"][sel]
    assert (ref_z - out_z).abs().max().item() < 0.01


def test_pyramid_cells_drawn_above_level_zero_span_at_most_one_pixel():
    # footprint_level's rule at the camera's own focal length: a level-l cell (side 2^l s) spans f 2^l s / z <= 1 px
    res, n_levels = 32, 6
    cam = orbit_cameras(1.0, 0.3, 8.0, width=64, dtype=F64)
    parts = pyramid_partition(res, n_levels, cam, dtype=F64)
    f, s = cam.focal[0, 0].item(), 1.0 / res
    w2c = cam.world_to_cam[0]
    drawn_above = 0
    for lvl in range(1, n_levels):
        r = res >> lvl
        cen = _centres(r)
        z = torch.stack(cen, -1).reshape(-1, 3) @ w2c[2, :3] + w2c[2, 3]
        span = f * (2**lvl) * s / z[parts[lvl]]
        drawn_above += span.numel()
        assert (span <= 1 + 1e-12).all()
    assert drawn_above > 0


def test_volume_renderers_need_cameras_and_a_valid_background():
    d, c = torch.rand(1, 4, 4, 4), torch.rand(3, 4, 4, 4)
    cam = orbit_cameras(1.0, 0.3, 2.0, width=8)
    for name, render in (("ray_march", ray_march), ("splat_voxels", splat_voxels)):
        with pytest.raises(ScorelabError, match=rf"{name} needs at least one camera"):  # ZeroDivisionError / stack
            render(d, c, cam[0:0])
        with pytest.raises(
            ScorelabError, match=r"background must be three numbers \(R, G, B\) in \[0, 1\], got \(0\.5,\)"
        ):
            render(d, c, cam, background=(0.5,))


def test_trilinear_and_voxel_grid_inputs_are_checked():
    with pytest.raises(ScorelabError, match=r"points must be world points of shape \(\.\.\., 3\), got \(5, 2\)"):
        trilinear(torch.rand(3, 4, 4, 4), torch.zeros(5, 2))
    with pytest.raises(ScorelabError, match=r"volume must have shape \(C, R, R, R\), got \(4, 4, 4\)"):
        trilinear(torch.rand(4, 4, 4), torch.zeros(5, 3))
    with pytest.raises(ScorelabError, match=r"voxel resolution must be an integer >= 1, got 4\.5"):
        VoxelGrid(4.5)
