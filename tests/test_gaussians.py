"""3D Gaussian splatting against closed forms, a dense reference, and finite differences (all in float64)."""

import math

import pytest
import torch

from scorelab.errors import ScorelabError
from scorelab.three.cameras import orbit_cameras
from scorelab.three.gaussians import (
    ALPHA_MAX,
    ALPHA_MIN,
    SH_C0,
    SH_C1,
    T_MIN,
    TILE,
    Gaussians,
    _bin_to_tiles,
    conic_and_extent,
    covariance_3d,
    project,
    render_gaussians,
    sh_color,
)

F64 = torch.float64
# on +x at distance 2, looking at -x: camera x = world +y, camera y = world -z; image 40 x 32 (several tiles)
CAM = orbit_cameras(math.pi / 2, 0.0, 2.0, width=40, height=32, dtype=F64)
FOCAL = CAM.focal[0, 0].item()
CENTRE = (20.0, 16.0)  # the world origin projects to the principal point


def _identity_quats(n):
    return torch.tensor([[1.0, 0, 0, 0]], dtype=F64).repeat(n, 1)


def _sh(colors):
    return ((colors - 0.5) / SH_C0)[:, None]  # degree-0 coefficients whose colour is `colors`


def _render(means, scales, opac, colors, cam=CAM, **kw):
    kw.setdefault("background", (0.0, 0.0, 0.0))  # the closed forms below are over black: colour = sum_i w_i c_i
    n = means.shape[0]
    return render_gaussians(means, scales.log(), _identity_quats(n), opac, _sh(colors), cam, **kw)


def _pixel_centres(h=32, w=40):
    jj, ii = torch.meshgrid(torch.arange(w, dtype=F64), torch.arange(h, dtype=F64), indexing="xy")
    return torch.stack([jj, ii], -1) + 0.5  # (h, w, 2) as (u, v)


# --- (a) projection -------------------------------------------------------------------------------------------------


def test_projection_on_axis_matches_closed_form():
    # on the optical axis J W Sigma W^T J^T = f^2 / z^2 Sigma_xy (camera x = world +y, camera y = world -z)
    scales = torch.tensor([[0.05, 0.02, 0.03]], dtype=F64)
    cov = covariance_3d(scales.log(), _identity_quats(1))
    mean2d, cov2d, z = project(torch.zeros(1, 3, dtype=F64), cov, CAM)
    expected = torch.diag(torch.tensor([0.02**2, 0.03**2], dtype=F64)) * FOCAL**2 / 4 + 0.3 * torch.eye(2, dtype=F64)
    torch.testing.assert_close(cov2d[0], expected, rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(mean2d[0], torch.tensor(CENTRE, dtype=F64))
    assert z.item() == pytest.approx(2.0, rel=1e-14)


def test_jacobian_is_clamped_to_the_widened_frustum_outside_the_view():
    """A Gaussian far to the side gets the footprint of one at the clamp boundary, 1.3 tan(fov/2) off the axis for a
    centred principal point (Kerbl et al.'s reference rasterizer); the mean itself still projects exactly."""
    cov = covariance_3d(torch.log(torch.tensor([[0.05, 0.02, 0.03]], dtype=F64)), _identity_quats(1))
    w2c = CAM.world_to_cam[0]
    rot, trans = w2c[:3, :3], w2c[:3, 3]
    fx, cx = CAM.focal[0, 0], CAM.principal[0, 0]
    z = 2.0
    lim = 1.3 * (CAM.width / 2) / fx  # tan(fov_x / 2) = (W / 2) / fx for this centred camera
    assert cx == CAM.width / 2

    def at(u):  # the world point at camera coordinates (u z, 0, z)
        return ((torch.tensor([u * z, 0.0, z], dtype=F64) - trans) @ rot)[None]

    far_mean2d, far_cov2d, _ = project(at(5 * lim), cov, CAM)
    _, edge_cov2d, _ = project(at(lim), cov, CAM)
    torch.testing.assert_close(far_cov2d, edge_cov2d, rtol=1e-12, atol=1e-12)
    assert far_mean2d[0, 0].item() == pytest.approx((fx * 5 * lim + cx).item(), rel=1e-12)
    # just inside the widened frustum nothing is clamped: the footprint still changes with the position
    _, inside_cov2d, _ = project(at(0.9 * lim), cov, CAM)
    assert not torch.allclose(inside_cov2d, edge_cov2d)


def test_projection_off_axis_uses_the_jacobian_of_the_pinhole_map():
    """Off the axis, Sigma' - 0.3 I = (dp/dx) Sigma (dp/dx)^T with dp/dx the autograd Jacobian of the world-to-pixel
    map at the mean (EWA's local affine approximation); the covariance comes from a random rotation."""
    g = torch.Generator().manual_seed(0)
    means = (torch.rand(5, 3, generator=g, dtype=F64) - 0.5) * 0.8
    quats = torch.randn(5, 4, generator=g, dtype=F64)
    cov = covariance_3d(torch.log(0.02 + 0.1 * torch.rand(5, 3, generator=g, dtype=F64)), quats)
    mean2d, cov2d, _ = project(means, cov, CAM)
    w2c = CAM.world_to_cam[0]

    def pix(x):
        c = w2c[:3, :3] @ x + w2c[:3, 3]
        return CAM.focal[0] * c[:2] / c[2] + CAM.principal[0]

    for k in range(5):
        jac = torch.autograd.functional.jacobian(pix, means[k])  # (2, 3)
        torch.testing.assert_close(mean2d[k], pix(means[k]))
        torch.testing.assert_close(cov2d[k], jac @ cov[k] @ jac.T + 0.3 * torch.eye(2, dtype=F64))
    # a rotation's covariance is R S^2 R^T: symmetric with eigenvalues the squared scales
    ev = torch.linalg.eigvalsh(covariance_3d(torch.tensor([[0.1, 0.2, 0.3]], dtype=F64).log(), quats[:1]))
    torch.testing.assert_close(ev[0], torch.tensor([0.01, 0.04, 0.09], dtype=F64))


# --- (b) a single Gaussian ------------------------------------------------------------------------------------------


def test_single_gaussian_alpha_is_the_closed_form_2d_gaussian():
    s, o = 0.04, 0.8
    out = _render(
        torch.zeros(1, 3, dtype=F64), torch.full((1, 3), s, dtype=F64), torch.tensor([o], dtype=F64),
        torch.ones(1, 3, dtype=F64),
    )  # fmt: skip
    var = (FOCAL * s / 2) ** 2 + 0.3
    d2 = ((_pixel_centres() - torch.tensor(CENTRE, dtype=F64)) ** 2).sum(-1)
    alpha = (o * torch.exp(-0.5 * d2 / var)).clamp(max=ALPHA_MAX)
    alpha = torch.where(alpha >= ALPHA_MIN, alpha, torch.zeros_like(alpha))
    assert (alpha == 0).any() and (alpha > 0).sum() > 20  # the 1/255 cut is exercised
    torch.testing.assert_close(out["mask"][0, 0], alpha, rtol=1e-12, atol=1e-14)
    # white over the background colour: C = alpha * 1 + (1 - alpha) * bg; expected depth = alpha * z
    bg = torch.tensor([0.2, 0.4, 0.6], dtype=F64)
    out = _render(
        torch.zeros(1, 3, dtype=F64), torch.full((1, 3), s, dtype=F64), torch.tensor([o], dtype=F64),
        torch.ones(1, 3, dtype=F64), background=bg.tolist(),
    )  # fmt: skip
    torch.testing.assert_close(out["color"][0], alpha + (1 - alpha) * bg[:, None, None], rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(out["depth"][0, 0], 2.0 * alpha, rtol=1e-12, atol=1e-14)


def test_opacity_is_capped_at_0_99():
    # opacity 1, std about 11 px: the pixels nearest the centre have o exp(-d^2 / 2 var) > 0.998, capped to 0.99
    out = _render(
        torch.zeros(1, 3, dtype=F64), torch.full((1, 3), 0.5, dtype=F64), torch.tensor([1.0], dtype=F64),
        torch.ones(1, 3, dtype=F64),
    )  # fmt: skip
    assert out["mask"].max().item() == ALPHA_MAX and (out["mask"] == ALPHA_MAX).sum() >= 4


# --- (c) two Gaussians ----------------------------------------------------------------------------------------------


def _falloff(scale, depth, d2=0.5, focal=FOCAL):
    """exp(-d^2 / (2 var)) of an isotropic Gaussian at camera depth `depth`, d^2 px^2 from its centre."""
    return math.exp(-0.5 * d2 / ((focal * scale / depth) ** 2 + 0.3))


def test_two_gaussians_composite_front_to_back_in_depth_order():
    red, blue = torch.tensor([1.0, 0.0, 0.0], dtype=F64), torch.tensor([0.0, 0.0, 1.0], dtype=F64)
    means = torch.tensor([[0.3, 0.0, 0.0], [-0.3, 0.0, 0.0]], dtype=F64)  # the first (red) is nearer: z = 1.7 < 2.3
    scales = torch.full((2, 3), 0.05, dtype=F64)
    opac = torch.tensor([0.6, 0.9], dtype=F64)
    out = _render(means, scales, opac, torch.stack([red, blue]))
    c = out["color"][0, :, 15, 19]  # pixel centre (19.5, 15.5) is 0.5 px^2 from the projected centre (20, 16)
    a1, a2 = 0.6 * _falloff(0.05, 1.7), 0.9 * _falloff(0.05, 2.3)
    torch.testing.assert_close(c, a1 * red + (1 - a1) * a2 * blue, rtol=1e-12, atol=1e-14)
    # swap the positions: now blue is in front at z = 1.7 and red behind at z = 2.3, listed in the same order
    swapped = _render(means.flip(0), scales, opac, torch.stack([red, blue]))["color"][0, :, 15, 19]
    b1, b2 = 0.9 * _falloff(0.05, 1.7), 0.6 * _falloff(0.05, 2.3)
    torch.testing.assert_close(swapped, b1 * blue + (1 - b1) * b2 * red, rtol=1e-12, atol=1e-14)


# --- (d) tiles and chunks against a dense reference ----------------------------------------------------------------


def _dense_reference(means, scales, opac, colors, tile_cull):
    """Every Gaussian at every pixel, depth-sorted, one Gaussian at a time: the definition. With tile_cull a Gaussian
    only reaches the pixels of the TILE x TILE tiles its culling box overlaps (see conic_and_extent). Also returns
    whether the transmittance stop fired anywhere."""
    cov = covariance_3d(scales.log(), _identity_quats(means.shape[0]))
    mean2d, cov2d, z = project(means, cov, CAM)
    p = _pixel_centres()
    tile_of = (p - 0.5).div(TILE).floor()  # (h, w, 2) tile column, row of each pixel
    img = torch.zeros(32, 40, 4, dtype=F64)  # colour and expected depth
    trans = torch.ones(32, 40, dtype=F64)
    done = torch.zeros(32, 40, dtype=torch.bool)
    for g in z.argsort().tolist():
        d = p - mean2d[g]
        power = -0.5 * torch.einsum("hwi,ij,hwj->hw", d, torch.linalg.inv(cov2d[g]), d)
        a = (opac[g] * torch.exp(power)).clamp(max=ALPHA_MAX)
        a = torch.where(a >= ALPHA_MIN, a, torch.zeros_like(a))
        if tile_cull:  # the box [m - e, m + e], e = k sqrt(diag Sigma'), k = min(3, sqrt(2 ln(o / alpha_min)))
            k = min(3.0, math.sqrt(2 * math.log(opac[g].item() / ALPHA_MIN)))
            e = k * torch.diagonal(cov2d[g]).sqrt()
            lo, hi = ((mean2d[g] - e) / TILE).floor(), ((mean2d[g] + e) / TILE).floor()
            a = torch.where(((tile_of >= lo) & (tile_of <= hi)).all(-1), a, torch.zeros_like(a))
        done = done | (trans * (1 - a) < T_MIN)  # the reference stops before the Gaussian that takes T below 1e-4
        a = torch.where(done, torch.zeros_like(a), a)
        img += (a * trans)[..., None] * torch.cat([colors[g], z[g : g + 1]])
        trans = trans * (1 - a)
    return img.permute(2, 0, 1), 1 - trans, bool(done.any())


def _scene(n, seed, opacity_range):
    g = torch.Generator().manual_seed(seed)
    means = (torch.rand(n, 3, generator=g, dtype=F64) - 0.5) * torch.tensor([0.6, 1.0, 0.8], dtype=F64)
    scales = 0.05 + 0.2 * torch.rand(n, 3, generator=g, dtype=F64)
    lo, hi = opacity_range
    opac = lo + (hi - lo) * torch.rand(n, generator=g, dtype=F64)
    colors = torch.rand(n, 3, generator=g, dtype=F64)
    return means, scales, opac, colors


@pytest.mark.parametrize("max_work", [4_000_000, 256 * 7, 256 * 3, 1])
def test_tiled_chunked_render_equals_the_dense_definition(max_work):
    """Tiles, pairs, sorting and chunking change only the order of float64 sums: equal to the dense definition (with
    the same tile culling) and to each other to 1e-12. The scene exercises the 1/255 cut, the early stop and
    tile culling (asserted), with opaque Gaussians overlapping across tile borders."""
    means, scales, opac, colors = _scene(40, 1, (0.5, 0.99))
    ref_img, ref_alpha, stopped = _dense_reference(means, scales, opac, colors, tile_cull=True)
    uncut_img, _, _ = _dense_reference(means, scales, opac, colors, tile_cull=False)
    assert stopped and (ref_img[:3] - uncut_img[:3]).abs().max() > 1e-3  # the stop fires, and culling matters here
    out = _render(means, scales, opac, colors, max_work=max_work)
    torch.testing.assert_close(out["color"][0], ref_img[:3], rtol=0, atol=1e-12)
    torch.testing.assert_close(out["depth"][0], ref_img[3:], rtol=0, atol=1e-12)
    torch.testing.assert_close(out["mask"][0, 0], ref_alpha, rtol=0, atol=1e-12)
    base = _render(means, scales, opac, colors, max_work=4_000_000)
    for key in ("color", "mask", "depth"):
        torch.testing.assert_close(out[key], base[key], rtol=0, atol=1e-12)


def test_three_sigma_boxes_lose_nothing_above_the_cut_for_opacity_below_0_35():
    """At the 3-sigma box edge alpha <= o exp(-4.5) < 1/255 when o < 255^-1 e^4.5 = 0.353: culling is then exact."""
    means, scales, opac, colors = _scene(40, 0, (0.05, 0.35))
    ref_img, ref_alpha, _ = _dense_reference(means, scales, opac, colors, tile_cull=False)
    out = _render(means, scales, opac, colors, max_work=256 * 5)
    torch.testing.assert_close(out["color"][0], ref_img[:3], rtol=0, atol=1e-12)
    torch.testing.assert_close(out["mask"][0, 0], ref_alpha, rtol=0, atol=1e-12)


# --- (e) gradients --------------------------------------------------------------------------------------------------


def _grad_scene(n, seed):
    g = torch.Generator().manual_seed(seed)
    means = (torch.rand(n, 3, generator=g, dtype=F64) - 0.5) * 0.5
    log_scales = torch.log(0.08 + 0.08 * torch.rand(n, 3, generator=g, dtype=F64))
    quats = torch.randn(n, 4, generator=g, dtype=F64)
    opac = 0.3 + 0.5 * torch.rand(n, generator=g, dtype=F64)  # <= 0.8: alpha never reaches the 0.99 cap
    sh = torch.zeros(n, 4, 3, dtype=F64)
    sh[:, 0] = (0.3 + 0.4 * torch.rand(n, 3, generator=g, dtype=F64) - 0.5) / SH_C0  # colours in [0.3, 0.7] ...
    sh[:, 1:] = 0.1 * torch.randn(n, 3, 3, generator=g, dtype=F64)  # ... so the clamp at 0 stays inactive
    return [means, log_scales, quats, opac, sh]


def test_gradients_match_finite_differences_away_from_the_switches():
    """torch.autograd.gradcheck (central differences, eps 1e-6, float64) on every parameter of 4 Gaussians, SH
    degree 1, through colour, alpha and depth. The configuration keeps clear of the non-differentiable switches:
    on a 16 x 16 image every Gaussian's box covers every tile even when shrunk by 0.01 px (asserted), so binning
    cannot change within the step; alpha_min = 0 (no 1/255 cut), opacities <= 0.8 (no 0.99
    cap, and T >= 0.2^4 > 1e-4, no early stop), colours in [0.3, 0.7] (no clamp). Central-difference error is
    O(eps^2) + O(1e-16 / eps) ~ 1e-10 here, so atol 1e-7 / rtol 1e-6 is a real check."""
    cam = orbit_cameras(1.2, 0.3, 2.0, width=16, dtype=F64)
    g = torch.Generator().manual_seed(5)
    w = [torch.rand(1, c, 16, 16, generator=g, dtype=F64) for c in (3, 1, 1)]

    def loss(*p):
        out = render_gaussians(*p, cam, alpha_min=0.0, background=(0.1, 0.5, 0.9))
        assert out["mask"].max() > 0.3  # the Gaussians are in view
        return sum((out[k] * wk).sum() for k, wk in zip(("color", "mask", "depth"), w, strict=True))

    params = [p.requires_grad_() for p in _grad_scene(4, 1)]
    with torch.no_grad():
        mean2d, cov2d, z = project(params[0], covariance_3d(params[1], params[2]), cam)
        order, _ = _bin_to_tiles(mean2d, conic_and_extent(cov2d)[1] - 0.01, z, 0.01, 16 // TILE, 16 // TILE)
    assert order.shape[0] == 4 * (16 // TILE) ** 2
    assert torch.autograd.gradcheck(loss, params, eps=1e-6, atol=1e-7, rtol=1e-6)


def test_gradients_with_the_reference_cutoffs_on_several_tiles_and_chunks():
    """With the 1/255 cut on, several tiles and one-tile chunks (the checkpointed path): central differences at two
    steps (1e-6 and 1e-7) agree, so no switch flips inside the step, and match autograd to rtol 1e-5; the
    chunked gradient equals the single-chunk one."""
    params = _grad_scene(6, 2)
    params[1] = params[1] - 0.6  # smaller Gaussians, so the cut at 1/255 falls inside the image
    w = torch.rand(1, 3, 32, 40, generator=torch.Generator().manual_seed(2), dtype=F64)

    def loss(*p, max_work=1):  # over black: a white background adds ~600 to the loss and round-off to the differences
        return (render_gaussians(*p, CAM, max_work=max_work, background=(0.0, 0.0, 0.0))["color"] * w).sum()

    req = [p.clone().requires_grad_() for p in params]
    grads = torch.autograd.grad(loss(*req), req)
    grads_one_chunk = torch.autograd.grad(loss(*req, max_work=10**8), req)
    for a, b in zip(grads, grads_one_chunk, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    gen = torch.Generator().manual_seed(3)
    for k, p in enumerate(params):
        for i in torch.randint(0, p.numel(), (3,), generator=gen).tolist():
            fds = []
            for step in (1e-6, 1e-7):
                d = torch.zeros(p.numel(), dtype=F64)
                d[i] = step
                plus = [q if j != k else q + d.reshape(p.shape) for j, q in enumerate(params)]
                minus = [q if j != k else q - d.reshape(p.shape) for j, q in enumerate(params)]
                fds.append(((loss(*plus) - loss(*minus)) / (2 * step)).item())
            assert fds[0] == pytest.approx(fds[1], rel=1e-5, abs=1e-7)
            assert grads[k].reshape(-1)[i].item() == pytest.approx(fds[0], rel=1e-5, abs=1e-7), (k, i)


def test_opacity_logits_of_the_module_get_gradients():
    gs = Gaussians.random_in_box(50, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        gs.log_scales += torch.tensor([0.0, 0.5, 1.0])  # anisotropic, or rotations would not matter
    out = gs.render(orbit_cameras(1.0, 0.5, 2.0, width=24))
    (out["color"].sum() + out["mask"].sum()).backward()
    for p in gs.parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0


# --- (f) view-dependent colour --------------------------------------------------------------------------------------


def test_sh_degree_one_follows_the_view_direction():
    """Closed form of the degree-1 real SH (basis order Y00, Y1-1 ~ -y, Y10 ~ z, Y11 ~ -x, as the reference)."""
    g = torch.Generator().manual_seed(0)
    sh = 0.3 * torch.randn(1, 4, 3, generator=g, dtype=F64)
    for d in ([1.0, 0, 0], [0, -1.0, 0], [0, 0, 1.0], [0.6, 0.0, -0.8]):
        x, y, z = d
        expected = SH_C0 * sh[0, 0] - SH_C1 * y * sh[0, 1] + SH_C1 * z * sh[0, 2] - SH_C1 * x * sh[0, 3] + 0.5
        torch.testing.assert_close(sh_color(sh, torch.tensor([d], dtype=F64))[0], expected.clamp(min=0))
    assert (sh_color(torch.full((1, 1, 3), -10.0, dtype=F64), torch.tensor([[1.0, 0, 0]], dtype=F64)) == 0).all()


def test_rendered_colour_changes_with_the_camera_as_the_sh_says():
    """A Gaussian at the origin seen from +x, +y, -x and from above: the view direction (camera -> Gaussian) is minus
    the camera position, so the centre pixel's colour is alpha * (C0 k0 + C1 (x k3 + y k1 - z k2) / r + 0.5)."""
    sh = torch.zeros(1, 4, 3, dtype=F64)
    sh[0, 1, 1] = 0.4  # green follows -y
    sh[0, 2, 2] = 0.5  # blue follows z
    sh[0, 3, 0] = 0.6  # red follows -x
    sh[0, 0] = 0.1
    for theta, phi in ((math.pi / 2, 0.0), (math.pi / 2, math.pi / 2), (math.pi / 2, math.pi), (0.3, 1.0)):
        cam = orbit_cameras(theta, phi, 2.0, width=32, dtype=F64)
        out = render_gaussians(
            torch.zeros(1, 3, dtype=F64), torch.full((1, 3), math.log(0.1), dtype=F64), _identity_quats(1),
            torch.tensor([0.5], dtype=F64), sh, cam, background=(0.0, 0.0, 0.0),
        )  # fmt: skip
        view = -torch.tensor(
            [math.sin(theta) * math.cos(phi), math.sin(theta) * math.sin(phi), math.cos(theta)], dtype=F64
        )
        colour = sh_color(sh, view[None])[0]
        # pixel (15, 15) is 0.5 px^2 from the principal point (16, 16)
        alpha = 0.5 * _falloff(0.1, 2.0, focal=cam.focal[0, 0].item())
        torch.testing.assert_close(out["color"][0, :, 15, 15], alpha * colour, rtol=1e-12, atol=1e-14)


# --- (g) early stop ------------------------------------------------------------------------------------------------


def test_early_stop_at_low_transmittance():
    """Stacked Gaussians of alpha about 0.95 on the axis: transmittance after k of them is about 0.05^k, below 1e-4
    from the fourth on, so exactly the first three contribute (the reference rasterizer's rule); compositing all 20
    differs from that by at most the transmittance left, < 1e-4."""
    n = 20
    xs = torch.linspace(0.4, -0.4, n, dtype=F64)
    means = torch.stack([xs, torch.zeros(n, dtype=F64), torch.zeros(n, dtype=F64)], 1)
    colors = torch.rand(n, 3, generator=torch.Generator().manual_seed(4), dtype=F64)
    out = _render(means, torch.full((n, 3), 0.2, dtype=F64), torch.full((n,), 0.96, dtype=F64), colors)
    alphas = [0.96 * _falloff(0.2, 2 - x) for x in xs.tolist()]
    expected, full, trans = torch.zeros(3, dtype=F64), torch.zeros(3, dtype=F64), 1.0
    for k in range(n):
        if k < 3:
            expected += alphas[k] * trans * colors[k]
        full += alphas[k] * trans * colors[k]
        trans *= 1 - alphas[k]
    t3 = math.prod(1 - a for a in alphas[:3])
    assert t3 * (1 - alphas[3]) < 1e-4 < t3
    torch.testing.assert_close(out["color"][0, :, 15, 19], expected, rtol=1e-12, atol=1e-14)
    assert (out["color"][0, :, 15, 19] - full).abs().max() <= T_MIN
    assert out["mask"][0, 0, 15, 19].item() == pytest.approx(1 - t3, rel=1e-12)


def _matches_central_differences(loss, params, picks):
    """autograd's gradient of loss(*params) against central differences at two step sizes (which must agree, so no
    pixel crosses a threshold in between), for each (parameter index, element index) in picks."""
    req = [p.clone().requires_grad_() for p in params]
    grads = torch.autograd.grad(loss(*req), req)
    for k, i in picks:
        fds = []
        for step in (1e-6, 1e-7):
            d = torch.zeros(params[k].numel(), dtype=F64)
            d[i] = step
            plus = [q if j != k else q + d.reshape(q.shape) for j, q in enumerate(params)]
            minus = [q if j != k else q - d.reshape(q.shape) for j, q in enumerate(params)]
            fds.append(((loss(*plus) - loss(*minus)) / (2 * step)).item())
        assert fds[0] == pytest.approx(fds[1], rel=1e-5, abs=1e-7)
        assert grads[k].reshape(-1)[i].item() == pytest.approx(fds[0], rel=1e-5, abs=1e-7), (k, i)


def test_gradients_through_the_early_stop():
    """The stacked scene above: central differences (steps 1e-6 and 1e-7 agree, so no switch flips) match autograd
    for the colour, opacity and position of near Gaussians (which contribute) and far ones (which only reach the
    pixels where the stop has not fired), to rtol 1e-5."""
    n = 12
    xs = torch.linspace(0.4, -0.4, n, dtype=F64)
    means = torch.stack([xs, 0.05 * torch.arange(n, dtype=F64) - 0.3, torch.zeros(n, dtype=F64)], 1)
    colors = torch.rand(n, 3, generator=torch.Generator().manual_seed(4), dtype=F64)
    log_scales, opac = torch.full((n, 3), math.log(0.2), dtype=F64), torch.full((n,), 0.96, dtype=F64)
    params = [means, log_scales, _identity_quats(n), opac, _sh(colors)]
    w = torch.rand(1, 3, 32, 40, generator=torch.Generator().manual_seed(6), dtype=F64)

    def loss(*p):
        return (render_gaussians(*p, CAM)["color"] * w).sum()

    _matches_central_differences(loss, params, ((4, 0), (4, 3 * 11), (3, 1), (3, 10), (0, 3 * 2 + 1), (0, 3 * 9 + 1)))


# --- culling, initialisers, bad input ------------------------------------------------------------------------------


def test_gaussians_behind_the_camera_are_culled_with_finite_gradients():
    # world x = 2 is the camera centre (depth 0) and x = 2.5 is behind it; both huge, both would cover the image
    means = torch.tensor([[2.0, 0.0, 0.0], [2.5, 0.0, 0.0], [0.0, 0.0, 0.0]], dtype=F64, requires_grad=True)
    scales = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 1.0], [0.04, 0.04, 0.04]], dtype=F64)
    colors = torch.ones(3, 3, dtype=F64)
    out = _render(means, scales, torch.full((3,), 0.8, dtype=F64), colors)
    only = _render(means[2:].detach(), scales[2:], torch.tensor([0.8], dtype=F64), colors[2:])
    torch.testing.assert_close(out["color"], only["color"], rtol=0, atol=0)
    out["color"].sum().backward()
    assert torch.isfinite(means.grad).all() and (means.grad[:2] == 0).all() and means.grad[2].abs().sum() > 0


def test_off_screen_gaussians_are_not_binned():
    """Only the on-screen Gaussian gets (Gaussian, tile) pairs: one per tile its box [10, 30] x [6, 26] overlaps.
    Off screen, behind the camera, or with a negative extent (too faint to pass 1/255): none."""
    tiles_x, tiles_y = math.ceil(40 / TILE), math.ceil(32 / TILE)
    mean2d = torch.tensor([[20.0, 16.0], [500.0, 16.0], [20.0, -300.0], [-50.0, -50.0], [20, 16], [20, 16]], dtype=F64)
    extent = torch.full((6, 2), 10.0, dtype=F64)
    extent[4] = -1e-3
    z = torch.tensor([1.0, 1, 1, 1, 1, -1], dtype=F64)
    order, tiles = _bin_to_tiles(mean2d, extent, z, 0.01, tiles_x, tiles_y)
    expected = [
        ty * tiles_x + tx for ty in range(6 // TILE, 26 // TILE + 1) for tx in range(10 // TILE, 30 // TILE + 1)
    ]
    assert set(order.tolist()) == {0} and tiles.tolist() == sorted(expected)


def test_a_batch_of_cameras_renders_each_view():
    gs = Gaussians.random_in_box(300, generator=torch.Generator().manual_seed(1)).double()
    cams = orbit_cameras([0.8, 1.6], [0.0, 2.0], [2.0, 1.8], width=24, height=20, dtype=F64)
    both = gs.render(cams, background=(1.0, 1.0, 1.0))
    for v in range(2):
        one = gs.render(cams[v], background=(1.0, 1.0, 1.0))
        for key in ("color", "mask", "depth"):
            assert both[key].shape[0] == 2 and one[key].shape[0] == 1
            torch.testing.assert_close(both[key][v], one[key][0], rtol=0, atol=0)
    assert both["color"].shape == (2, 3, 20, 24) and (both["mask"] > 0.1).any()


def test_from_points_uses_the_mean_distance_to_three_neighbours():
    lin = torch.arange(5, dtype=F64) * 0.1
    pts = torch.stack(torch.meshgrid(lin, lin, lin, indexing="ij"), -1).reshape(-1, 3)
    gs = Gaussians.from_points(pts, torch.rand(125, 3, dtype=F64), opacity=0.2)
    torch.testing.assert_close(gs.log_scales.exp(), torch.full((125, 3), 0.1, dtype=F64))  # lattice spacing
    torch.testing.assert_close(torch.sigmoid(gs.opacity_logits), torch.full((125,), 0.2, dtype=F64))
    cols = torch.rand(7, 3, dtype=F64)
    gs = Gaussians.from_points(torch.rand(7, 3, dtype=F64), cols, scale=0.05, degree=0)
    torch.testing.assert_close(sh_color(gs.sh.detach(), torch.zeros(7, 3, dtype=F64)), cols)
    r = Gaussians.random_in_box(100, generator=torch.Generator().manual_seed(0))
    assert r.means.abs().max() <= 0.5 and r.sh.shape == (100, 4, 3) and r.means.dtype == torch.float32


def test_conic_is_the_inverse_covariance_and_the_box_bounds_the_cut():
    cov = torch.tensor([[[4.0, 1.5], [1.5, 2.0]]], dtype=F64).repeat(3, 1, 1)
    conic, extent = conic_and_extent(cov)
    inv = torch.linalg.inv(cov[0])
    torch.testing.assert_close(conic[0], torch.stack([inv[0, 0], inv[0, 1], inv[1, 1]]))
    torch.testing.assert_close(extent[0], 3 * torch.tensor([2.0, 2.0**0.5], dtype=F64))  # 3-sigma box of the ellipse
    # a faint Gaussian: on the box's right edge the largest alpha (at the conditional mean of y) is exactly 1/255
    opac = torch.tensor([0.99, 0.2, 0.003], dtype=F64)
    _, extent = conic_and_extent(cov, opac, ALPHA_MIN)
    torch.testing.assert_close(extent[0], 3 * torch.tensor([2.0, 2.0**0.5], dtype=F64))  # bright: the 3-sigma box
    d = torch.tensor([extent[1, 0], 1.5 / 4.0 * extent[1, 0]], dtype=F64)
    assert (0.2 * torch.exp(-0.5 * d @ inv @ d)).item() == pytest.approx(ALPHA_MIN, rel=1e-12)
    assert (extent[2] < 0).all()  # opacity below 1/255: never visible


def test_bad_input_raises_a_scorelab_error():
    means, scales, opac, colors = _scene(3, 0, (0.2, 0.5))
    q, sh = _identity_quats(3), _sh(colors)
    with pytest.raises(ScorelabError, match="sh must have shape"):
        render_gaussians(means, scales.log(), q, opac, torch.zeros(3, 2, 3, dtype=F64), CAM)
    with pytest.raises(ScorelabError, match="quats"):
        render_gaussians(means, scales.log(), q[:2], opac, sh, CAM)
    with pytest.raises(ScorelabError, match="means"):
        render_gaussians(means[:, :2], scales.log(), q, opac, sh, CAM)
    with pytest.raises(ScorelabError, match="background"):
        render_gaussians(means, scales.log(), q, opac, sh, CAM, background=(1.0, 1.0))
    with pytest.raises(ScorelabError, match="max_work"):
        render_gaussians(means, scales.log(), q, opac, sh, CAM, max_work=0)
    with pytest.raises(ScorelabError, match="points"):
        Gaussians.from_points(torch.zeros(0, 3))


# --- audit additions: conventions and switches the tests above take from the module itself -------------------------


def test_constants_and_sh_basis_are_the_references_not_the_modules():
    """Kerbl et al. 2023 / the reference rasterizer: alpha = min(0.99, o G); real SH normalisation Y00 = 1 / (2 sqrt
    pi), Y1m = sqrt(3 / (4 pi)) (-y, z, -x) (the other tests read these constants from the module, so they cannot
    catch a wrong value)."""
    out = _render(
        torch.zeros(1, 3, dtype=F64), torch.full((1, 3), 0.5, dtype=F64), torch.tensor([1.0], dtype=F64),
        torch.ones(1, 3, dtype=F64),
    )  # fmt: skip
    assert out["mask"].max().item() == 0.99
    sh = torch.zeros(1, 4, 3, dtype=F64)
    sh[0, 0], sh[0, 1, 0], sh[0, 2, 1], sh[0, 3, 2] = 0.7, 0.3, -0.4, 0.5
    x, y, z = 0.36, -0.48, 0.8  # a unit view direction
    d = torch.tensor([[x, y, z]], dtype=F64)
    c0, c1 = 1 / (2 * math.sqrt(math.pi)), math.sqrt(3 / (4 * math.pi))
    expected = 0.5 + 0.7 * c0 + c1 * torch.tensor([-y * 0.3, z * -0.4, -x * 0.5], dtype=F64)
    torch.testing.assert_close(sh_color(sh, d)[0], expected, rtol=1e-14, atol=1e-14)


def test_quaternion_is_hamilton_w_x_y_z_and_rotates_counter_clockwise():
    """q = (cos t/2, sin t/2 n) rotates by +t about n (right-handed), and R(q1 q2) = R(q1) R(q2) (Hamilton product),
    as the reference's build_rotation / computeCov3D."""
    from scorelab.three.gaussians import quat_to_rotmat

    t = 0.7
    rz = quat_to_rotmat(torch.tensor([math.cos(t / 2), 0, 0, math.sin(t / 2)], dtype=F64))
    torch.testing.assert_close(rz @ torch.tensor([1.0, 0, 0], dtype=F64), torch.tensor([math.cos(t), math.sin(t), 0.0],
                               dtype=F64))  # fmt: skip
    g = torch.Generator().manual_seed(3)
    q1, q2 = torch.randn(2, 4, generator=g, dtype=F64)
    w1, v1, w2, v2 = q1[0], q1[1:], q2[0], q2[1:]
    prod = torch.cat([(w1 * w2 - v1 @ v2)[None], w1 * v2 + w2 * v1 + torch.linalg.cross(v1, v2)])
    torch.testing.assert_close(quat_to_rotmat(prod), quat_to_rotmat(q1) @ quat_to_rotmat(q2))


def test_preserve_integral_scales_opacity_by_the_ewa_determinant_ratio():
    """A Gaussian turned 45 degrees about the optical axis (an off-diagonal 2D covariance), in closed form: camera x =
    world y, camera y = -world z, so Sigma_px = (f / 2)^2 A R diag(sy^2, sz^2) R^T A, A = diag(1, -1); with
    preserve_integral alpha = o sqrt(det Sigma_px / det(Sigma_px + 0.3 I)) exp(-d^T (Sigma_px + 0.3 I)^-1 d / 2)
    (Zwicker et al. 2001, eq. 30). Also fixes the sign of the screen correlation (the quaternion convention)."""
    t, sy, sz, o = math.pi / 4, 0.15, 0.05, 0.6
    q = torch.tensor([[math.cos(t / 2), math.sin(t / 2), 0.0, 0.0]], dtype=F64)  # about world x (the view axis)
    rot = torch.tensor([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]], dtype=F64)
    a = torch.diag(torch.tensor([1.0, -1.0], dtype=F64))
    cov = (FOCAL / 2) ** 2 * a @ rot @ torch.diag(torch.tensor([sy**2, sz**2], dtype=F64)) @ rot.T @ a
    full = cov + 0.3 * torch.eye(2, dtype=F64)
    d = _pixel_centres() - torch.tensor(CENTRE, dtype=F64)
    maha = torch.einsum("hwi,ij,hwj->hw", d, torch.linalg.inv(full), d)
    for preserve, factor in ((True, math.sqrt(torch.linalg.det(cov) / torch.linalg.det(full))), (False, 1.0)):
        out = render_gaussians(
            torch.zeros(1, 3, dtype=F64), torch.tensor([[0.1, sy, sz]], dtype=F64).log(), q,
            torch.tensor([o], dtype=F64), _sh(torch.ones(1, 3, dtype=F64)), CAM, alpha_min=0.0,
            preserve_integral=preserve,
        )  # fmt: skip
        expected = o * factor * torch.exp(-0.5 * maha)
        sel = expected > 0.01  # inside the 3-sigma box, so binned
        assert sel.sum() > 100
        torch.testing.assert_close(out["mask"][0, 0][sel], expected[sel], rtol=1e-12, atol=1e-14)


def test_jacobian_clamp_in_v_uses_the_image_height():
    """The frustum clamp of the reference (1.3 tan(fov_y / 2)) on a non-square image (40 x 32): a Gaussian far below
    the view gets the footprint of one at v-limit (h / 2 + 0.15 h) / fy."""
    cov = covariance_3d(torch.log(torch.tensor([[0.05, 0.02, 0.03]], dtype=F64)), _identity_quats(1))
    w2c = CAM.world_to_cam[0]
    rot, trans = w2c[:3, :3], w2c[:3, 3]
    lim = 1.3 * (CAM.height / 2) / CAM.focal[0, 1].item()
    assert CAM.principal[0, 1].item() == CAM.height / 2 and CAM.width != CAM.height

    def at(v):
        return ((torch.tensor([0.0, v * 2.0, 2.0], dtype=F64) - trans) @ rot)[None]

    _, far, _ = project(at(5 * lim), cov, CAM)
    _, edge, _ = project(at(lim), cov, CAM)
    _, inside, _ = project(at(0.95 * lim), cov, CAM)
    torch.testing.assert_close(far, edge, rtol=1e-12, atol=1e-12)
    assert not torch.allclose(inside, edge)


def test_gaussians_nearer_than_near_are_culled():
    # a small Gaussian 0.4 in front of the camera: drawn with near = 0.3, culled (not drawn at all) with near = 0.5
    means = torch.tensor([[1.6, 0.0, 0.0]], dtype=F64)
    args = (means, torch.full((1, 3), 0.01, dtype=F64), torch.tensor([0.8], dtype=F64), torch.ones(1, 3, dtype=F64))
    assert _render(*args, near=0.3)["mask"].max() > 0.5
    assert (_render(*args, near=0.5)["mask"] == 0).all()


def test_gradient_is_zero_through_the_alpha_cap():
    """Where o G > 0.99 alpha is the constant 0.99: central differences in the opacity and the mean (two steps that
    agree, so no pixel crosses the cap) match autograd, which must not pass gradient through capped pixels."""
    means = torch.tensor([[0.0, 0.013, -0.021]], dtype=F64)
    params = [means, torch.full((1, 3), math.log(0.5), dtype=F64), _identity_quats(1), torch.tensor([0.998], dtype=F64),
              _sh(torch.full((1, 3), 0.6, dtype=F64))]  # fmt: skip
    w = torch.rand(1, 1, 32, 40, generator=torch.Generator().manual_seed(7), dtype=F64)

    def loss(*p):
        out = render_gaussians(*p, CAM)
        assert (out["mask"] == 0.99).sum() >= 4  # the cap is active
        return (out["mask"] * w).sum()

    _matches_central_differences(loss, params, ((3, 0), (0, 1), (0, 2)))


def test_from_points_scale_is_the_mean_of_exactly_three_neighbour_distances():
    # Kerbl et al. 2023, sec. 5.1 ("the mean of the distance to the closest three points"; the reference code takes
    # the root of the mean squared distance instead): for the origin the three nearest are at 1, 2 and 4 (then 8)
    pts = torch.tensor([[0.0, 0, 0], [1, 0, 0], [0, 2, 0], [0, 0, 4], [8, 0, 0]], dtype=F64)
    gs = Gaussians.from_points(pts, degree=0)
    assert gs.log_scales[0].exp().tolist() == pytest.approx([7 / 3] * 3, rel=1e-12)


def test_opacities_outside_0_1_and_non_finite_parameters_are_refused():
    # logits passed as opacities gave a blank image (-1) or were drawn as if opaque (5); a NaN mean was silently dropped
    # (all NaN: a plain background image)
    means, scales, opac, colors = _scene(3, 0, (0.2, 0.5))
    params = [means, scales.log(), _identity_quats(3), opac, _sh(colors)]
    for bad in (-1.0, 5.0):
        with pytest.raises(ScorelabError, match=r"opacity must lie in \[0, 1\] \(opacities, not logits\)"):
            render_gaussians(*params[:3], torch.full((3,), bad, dtype=F64), params[4], CAM)
    for k, name in enumerate(("means", "log_scales", "quats", "opacity", "sh")):
        for value in (float("nan"), float("inf")):
            p = [t.clone() for t in params]
            p[k].reshape(-1)[0] = value
            with pytest.raises(ScorelabError, match=f"^{name} must be finite"):
                render_gaussians(*p, CAM)
    edge = render_gaussians(*params[:3], torch.tensor([0.0, 0.5, 1.0], dtype=F64), params[4], CAM)  # the range's ends
    assert (edge["mask"] > 0).any()


def test_from_points_refuses_colours_outside_0_1():
    pts = torch.rand(5, 3, dtype=F64)
    for bad in (torch.rand(5, 3, dtype=F64) * 255, torch.full((5, 3), -0.1, dtype=F64), torch.full((5, 3), 200).byte()):
        with pytest.raises(ScorelabError, match=r"colors must be finite and lie in \[0, 1\]"):
            Gaussians.from_points(pts, bad, scale=0.1)
    nan = torch.full((5, 3), 0.5, dtype=F64)
    nan[2, 1] = float("nan")
    with pytest.raises(ScorelabError, match="colors must be finite"):
        Gaussians.from_points(pts, nan, scale=0.1)
    Gaussians.from_points(pts, torch.tensor([[0.0, 1.0, 0.5]], dtype=F64).repeat(5, 1), scale=0.1)  # the ends are fine


@pytest.mark.parametrize("n", [10.5, 10.0, True, "10"])
def test_random_in_box_needs_a_whole_number_of_gaussians(n):
    with pytest.raises(ScorelabError, match="random_in_box needs a whole number of Gaussians n > 0"):
        Gaussians.random_in_box(n)
