"""3D Gaussian splatting against closed forms, a dense reference, and finite differences."""

import math

import pytest
import torch

from scorelab.three.cameras import orbit_cameras
from scorelab.three.gaussians import (
    ALPHA_MAX,
    ALPHA_MIN,
    SH_C0,
    SH_C1,
    covariance_3d,
    project,
    render_gaussians,
    sh_color,
)

CAM = orbit_cameras(math.pi / 2, 0.0, 2.0, width=40, height=32, dtype=torch.float64)  # on +x, looking at -x


def _identity_quats(n):
    return torch.tensor([[1.0, 0, 0, 0]], dtype=torch.float64).repeat(n, 1)


def _render(means, scales, opac, colors, cam=CAM, **kw):
    n = means.shape[0]
    sh = ((colors - 0.5) / SH_C0)[:, None]
    return render_gaussians(means, scales.log(), _identity_quats(n), opac, sh, cam, **kw)


def test_projection_on_axis_matches_closed_form():
    # on the optical axis J W Sigma W^T J^T = f^2 / z^2 Sigma_xy (camera x = world -y, camera y = world -z)
    scales = torch.tensor([[0.05, 0.02, 0.03]], dtype=torch.float64)
    cov = covariance_3d(scales.log(), _identity_quats(1))
    _, cov2d, z = project(torch.zeros(1, 3, dtype=torch.float64), cov, CAM)
    f = CAM.focal[0, 0].item()
    expected = torch.diag(torch.tensor([0.02**2, 0.03**2], dtype=torch.float64)) * f**2 / 4 + 0.3 * torch.eye(2)
    torch.testing.assert_close(cov2d[0], expected.double())
    assert z.item() == pytest.approx(2.0)


def test_single_gaussian_alpha_is_the_closed_form_2d_gaussian():
    s, o = 0.04, 0.8
    out = _render(
        torch.zeros(1, 3, dtype=torch.float64),
        torch.full((1, 3), s, dtype=torch.float64),
        torch.tensor([o], dtype=torch.float64),
        torch.ones(1, 3, dtype=torch.float64),
    )
    f = CAM.focal[0, 0].item()
    var = (f * s / 2) ** 2 + 0.3
    jj, ii = torch.meshgrid(torch.arange(40.0), torch.arange(32.0), indexing="xy")
    d2 = (jj + 0.5 - 20) ** 2 + (ii + 0.5 - 16) ** 2
    alpha = (o * torch.exp(-0.5 * d2 / var)).clamp(max=ALPHA_MAX).double()
    alpha = torch.where(alpha >= ALPHA_MIN, alpha, torch.zeros_like(alpha))
    torch.testing.assert_close(out["alpha"][0, 0], alpha)


def test_two_gaussians_composite_front_to_back_in_depth_order():
    means = torch.tensor([[0.3, 0.0, 0.0], [-0.3, 0.0, 0.0]], dtype=torch.float64)  # the first is nearer
    colors = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    scales = torch.full((2, 3), 0.05, dtype=torch.float64)
    opac = torch.tensor([0.6, 0.9], dtype=torch.float64)
    out = _render(means, scales, opac, colors)
    a1, a2 = 0.6, 0.9  # at the common centre the power is 0 for both
    c = out["color"][0, :, 15, 19]  # pixel centre (19.5, 15.5) is 0.5 px from the projected centre (20, 16)
    f = CAM.focal[0, 0].item()
    fall1 = math.exp(-0.5 * 0.5 / ((f * 0.05 / 1.7) ** 2 + 0.3))
    fall2 = math.exp(-0.5 * 0.5 / ((f * 0.05 / 2.3) ** 2 + 0.3))
    a1, a2 = a1 * fall1, a2 * fall2
    torch.testing.assert_close(c, torch.tensor([a1, 0, (1 - a1) * a2], dtype=torch.float64))
    swapped = _render(means.flip(0), scales, opac, colors)
    # now the blue one (second) is nearer: red is behind it
    assert swapped["color"][0, 2, 15, 19] > swapped["color"][0, 0, 15, 19]


def _dense_reference(means, scales, opac, colors):
    """Every Gaussian at every pixel, sorted by depth, without tiles: the definition."""
    cov = covariance_3d(scales.log(), _identity_quats(means.shape[0]))
    mean2d, cov2d, z = project(means, cov, CAM)
    order = z.argsort()
    jj, ii = torch.meshgrid(torch.arange(40.0), torch.arange(32.0), indexing="xy")
    p = torch.stack([jj, ii], -1).double() + 0.5
    img = torch.zeros(32, 40, 3, dtype=torch.float64)
    trans = torch.ones(32, 40, dtype=torch.float64)
    done = torch.zeros(32, 40, dtype=torch.bool)
    for g in order.tolist():
        d = p - mean2d[g]
        inv = torch.linalg.inv(cov2d[g])
        power = -0.5 * torch.einsum("hwi,ij,hwj->hw", d, inv, d)
        a = (opac[g] * torch.exp(power)).clamp(max=ALPHA_MAX)
        a = torch.where(a >= ALPHA_MIN, a, torch.zeros_like(a))
        stop = trans * (1 - a) < 1e-4
        done = done | stop
        a = torch.where(done, torch.zeros_like(a), a)
        img += (a * trans)[..., None] * colors[g]
        trans = trans * (1 - a)
    return img.permute(2, 0, 1), 1 - trans


def _scene(n=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    means = (torch.rand(n, 3, generator=g, dtype=torch.float64) - 0.5) * 0.5
    scales = 0.02 + 0.06 * torch.rand(n, 3, generator=g, dtype=torch.float64)
    opac = 0.3 + 0.6 * torch.rand(n, generator=g, dtype=torch.float64)
    colors = torch.rand(n, 3, generator=g, dtype=torch.float64)
    return means, scales, opac, colors


@pytest.mark.parametrize("max_work", [4_000_000, 256 * 3, 1])
def test_tiled_chunked_render_equals_the_dense_definition(max_work):
    means, scales, opac, colors = _scene()
    ref_img, ref_alpha = _dense_reference(means, scales, opac, colors)
    out = _render(means, scales, opac, colors, max_work=max_work)
    # tiles drop a Gaussian from a tile beyond its 3-sigma box, where alpha < o * exp(-4.5) ~ 0.01 could still pass the
    # 1/255 cut: allow that much per pixel
    assert (out["color"][0] - ref_img).abs().max() < 0.012
    assert (out["alpha"][0, 0] - ref_alpha).abs().max() < 0.012
    assert (out["color"][0] - ref_img).abs().mean() < 1e-3


def test_gradients_match_finite_differences():
    means, scales, opac, colors = _scene(n=4, seed=1)
    sh = ((colors - 0.5) / SH_C0)[:, None]
    quats = torch.tensor([[0.9, 0.1, -0.2, 0.3]], dtype=torch.float64).repeat(4, 1)
    w = torch.rand(1, 3, 32, 40, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    params = [means.clone(), scales.log().clone(), quats, opac.clone(), sh.clone()]

    def loss(*p):
        return (render_gaussians(p[0], p[1], p[2], p[3], p[4], CAM)["color"] * w).sum()

    req = [p.clone().requires_grad_() for p in params]
    grads = torch.autograd.grad(loss(*req), req)
    h = 1e-6  # small enough that no alpha crosses the 1/255 or 0.99 switches inside the step (checked by h / 10)
    gen = torch.Generator().manual_seed(3)
    for k, p in enumerate(params):
        for _ in range(3):
            i = torch.randint(0, p.numel(), (1,), generator=gen).item()
            fds = []
            for step in (h, h / 10):
                d = torch.zeros_like(p).reshape(-1)
                d[i] = step
                plus = [q if j != k else q + d.reshape(p.shape) for j, q in enumerate(params)]
                minus = [q if j != k else q - d.reshape(p.shape) for j, q in enumerate(params)]
                fds.append(((loss(*plus) - loss(*minus)) / (2 * step)).item())
            assert fds[0] == pytest.approx(fds[1], rel=1e-4, abs=1e-6)
            assert fds[0] == pytest.approx(grads[k].reshape(-1)[i].item(), rel=1e-4, abs=1e-6), (k, i)


def test_sh_degree_one_follows_the_view_direction():
    sh = torch.zeros(1, 4, 3, dtype=torch.float64)
    sh[0, 3, 0] = 1.0  # the x coefficient of the red channel
    for x in (-1.0, 0.0, 1.0):
        c = sh_color(sh, torch.tensor([[x, 0.0, 0.0]], dtype=torch.float64))
        assert c[0, 0].item() == pytest.approx(max(0.0, 0.5 - SH_C1 * x))
        assert c[0, 1].item() == pytest.approx(0.5)


def test_early_stop_at_low_transmittance():
    """Stacked Gaussians of alpha about 0.95 on the axis: transmittance after k of them is about 0.05^k, below 1e-4
    from the fourth on, so exactly the first three contribute (the reference rasterizer's rule)."""
    n = 20
    xs = torch.linspace(0.4, -0.4, n, dtype=torch.float64)
    means = torch.stack([xs, torch.zeros(n, dtype=torch.float64), torch.zeros(n, dtype=torch.float64)], 1)
    colors = torch.rand(n, 3, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    out = _render(
        means, torch.full((n, 3), 0.2, dtype=torch.float64), torch.full((n,), 0.96, dtype=torch.float64), colors
    )
    f = CAM.focal[0, 0].item()
    alphas = [0.96 * math.exp(-0.5 * 0.5 / ((f * 0.2 / (2 - x)) ** 2 + 0.3)) for x in xs.tolist()]
    expected, trans = torch.zeros(3, dtype=torch.float64), 1.0
    for k in range(3):
        expected += alphas[k] * trans * colors[k]
        trans *= 1 - alphas[k]
    assert trans * (1 - alphas[3]) < 1e-4 < trans
    torch.testing.assert_close(out["color"][0, :, 15, 19], expected)
