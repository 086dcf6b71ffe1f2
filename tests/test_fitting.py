"""Procedural objects and the multi-view fitters: the reference mesh lies on the analytic surface, and every fitter
moves its representation towards held-out views of it."""

import math

import pytest
import torch

from scorelab.errors import ScorelabError
from scorelab.reproduce.fit_multiview import mask_iou, psnr
from scorelab.three.cameras import orbit_cameras
from scorelab.three.fitting import FITTERS, Views
from scorelab.three.mesh import euler_characteristic, face_normals, is_edge_manifold, is_watertight
from scorelab.three.objects import Snowman
from scorelab.three.raster import render_mesh
from scorelab.train.guard import MAX_BAD_STEPS


def test_snowman_reference_mesh_lies_on_its_surface_and_faces_outwards():
    obj = Snowman()
    mesh = obj.mesh(64)
    assert is_watertight(mesh) and is_edge_manifold(mesh) and euler_characteristic(mesh) == 2
    assert obj.sdf(mesh.vertices.double()).abs().max().item() < 1e-5  # Newton-projected onto the zero set
    assert mesh.vertices.abs().max().item() < 0.5  # inside the object box
    centroids = mesh.vertices[mesh.faces].mean(1)
    assert ((face_normals(mesh.vertices, mesh.faces) * obj.normals(centroids)).sum(1) > 0.9).float().mean() > 0.99
    assert 0 <= mesh.vertex_colors.min() and mesh.vertex_colors.max() <= 1
    # the SDF is negative inside: the body's centre, and positive at a box corner
    assert obj.sdf(torch.tensor([0.0, 0.0, -0.13])) < 0 < obj.sdf(torch.tensor([0.5, 0.5, 0.5]))
    with pytest.raises(ScorelabError, match="resolution"):
        obj.mesh(4)


def _views(mesh, theta, phi, size=24):
    cams = orbit_cameras(torch.tensor(theta), torch.tensor(phi), 1.5, width=size)
    with torch.no_grad():
        out = render_mesh(mesh, cams)
    return Views(cams, out["color"], out["mask"])


@pytest.fixture(scope="module")
def small_views():
    mesh = Snowman().mesh(48)
    train = _views(mesh, [1.0, 1.4, 1.8, 1.2] * 2, [0.8 * i for i in range(8)])
    test = _views(mesh, [1.3, 1.6], [0.4, 3.5])
    return train, test


SMALL = {
    "voxels": {"resolution": 16, "samples": 32, "rays": 1024, "lr": 0.2},
    "voxel_splats": {"resolution": 12, "views_per_step": 2},
    "gaussians": {"count": 500},
    "dmtet": {"resolution": 16, "color_resolution": 8},
}


@pytest.mark.parametrize("name", list(FITTERS))
def test_each_fitter_moves_towards_held_out_views(small_views, name):
    train, test = small_views
    scores = []
    for steps in (0, 40):
        fitted = FITTERS[name](train, steps=steps, progress=False, **SMALL[name])
        assert fitted.iterations == steps
        color, mask = fitted.render(test.cameras)
        assert color.shape == test.color.shape and mask.shape == test.mask.shape
        scores.append((psnr(color, test.color), mask_iou(mask, test.mask)))
    (p0, iou0), (p1, iou1) = scores
    assert p1 > p0 + 3 and iou1 > max(iou0, 0.6), (name, scores)
    if name == "dmtet":
        assert fitted.mesh is not None and fitted.mesh.faces.shape[0] > 0


def test_views_reject_mismatched_images():
    cams = orbit_cameras(1.0, 0.0, 2.0, width=8)
    with pytest.raises(ScorelabError, match="views need"):
        Views(cams, torch.zeros(1, 3, 8, 9), torch.zeros(1, 1, 8, 8))


def test_psnr_and_mask_iou_closed_forms():
    a = torch.zeros(1, 3, 4, 4)
    assert psnr(a + 0.1, a) == pytest.approx(20.0)  # MSE 0.01
    m = torch.zeros(1, 1, 4, 4)
    m[..., :2, :] = 1
    n = torch.zeros(1, 1, 4, 4)
    n[..., :, :2] = 1
    assert mask_iou(m, n) == pytest.approx(4 / 12)
    assert math.isfinite(psnr(a, a))


def test_fits_are_deterministic(small_views):
    """Same seed, same fit, with 2 threads (index_put_ accumulation order is otherwise thread-dependent on CPU)."""
    train, test = small_views
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        for name in ("dmtet", "gaussians"):
            renders = [
                FITTERS[name](
                    train, steps=8, progress=False, generator=torch.Generator().manual_seed(3), **SMALL[name]
                ).render(test.cameras)[0]
                for _ in range(2)
            ]
            assert torch.equal(renders[0], renders[1]), name
    finally:
        torch.set_num_threads(threads)
    assert not torch.are_deterministic_algorithms_enabled()  # the setting is restored after each fit


def test_fits_skip_non_finite_steps_and_stop_after_k(small_views):
    """A view with NaN pixels poisons every step that draws it: those steps are skipped and counted, the fit stays
    finite; when every view is poisoned the fit stops with a one-line error after MAX_BAD_STEPS."""
    train, test = small_views
    bad = train.color.clone()
    bad[0, :, 3, 3] = float("nan")
    poisoned = Views(train.cameras, bad, train.mask)
    fitted = FITTERS["gaussians"](poisoned, steps=30, progress=False, views_per_step=2, count=200)
    assert 0 < fitted.skipped_steps < 30
    assert torch.isfinite(fitted.render(test.cameras)[0]).all()
    all_bad = Views(train.cameras, train.color * float("nan"), train.mask)
    with pytest.raises(ScorelabError, match=f"fit DMTet: {MAX_BAD_STEPS} consecutive non-finite steps at step 19") as e:
        FITTERS["dmtet"](all_bad, steps=40, progress=False, **SMALL["dmtet"])
    assert "\n" not in str(e.value)


def test_smooth_union_is_quilez_polynomial_smooth_minimum():
    # Quilez, 'smooth minimum': min(a, b) when |a - b| >= k, and min - k / 4 at a = b (the blend fills the crease)
    from scorelab.three.objects import smooth_union

    a = torch.tensor([0.3, -0.2, 0.1], dtype=torch.float64)
    b = torch.tensor([0.5, 0.1, 0.1], dtype=torch.float64)
    torch.testing.assert_close(smooth_union(a, b, 0.1), torch.tensor([0.3, -0.2, 0.1 - 0.025], dtype=torch.float64))


def test_snowman_shading_is_half_on_the_side_away_from_the_light():
    # colour = albedo (0.5 + 0.5 max(0, n . l)): on the body sphere where n = -l the shade is exactly 1/2
    from scorelab.three.objects import LIGHT

    obj = Snowman()
    light = torch.nn.functional.normalize(torch.tensor(LIGHT, dtype=torch.float64), dim=0)
    centre, radius = obj.body
    p = (torch.tensor(centre, dtype=torch.float64) - radius * light)[None]
    assert abs(obj.sdf(p).item()) < 1e-9  # on the surface, away from the blends
    torch.testing.assert_close(obj.color(p), 0.5 * obj.albedo(p))


def test_learning_rate_factor_decays_by_a_half_cosine():
    from scorelab.three.fitting import _cosine

    assert _cosine(0, 100) == pytest.approx(1.0)
    assert _cosine(50, 100) == pytest.approx(0.55)
    assert _cosine(100, 100) == pytest.approx(0.1)


def _on_both_spheres(a, b, up):
    """A point on both spheres a and b ((centre, radius)), on their circle of intersection, towards `up`."""
    (ca, ra), (cb, rb) = ((torch.tensor(c, dtype=torch.float64), r) for c, r in (a, b))
    d = (cb - ca).norm()
    u = (cb - ca) / d
    along = (d**2 + ra**2 - rb**2) / (2 * d)
    w = torch.tensor(up, dtype=torch.float64)
    w = torch.nn.functional.normalize(w - (w @ u) * u, dim=0)
    return ca + along * u + (ra**2 - along**2).sqrt() * w


def test_snowman_blends_its_parts_by_smooth_unions_of_width_0_1_and_0_04():
    # Quilez smooth minimum at a = b = 0 is -k / 4: on the body-head circle k = 0.1, on the head-nose circle (the
    # nose at +x) k = 0.04; hard unions would give 0 there (a crease)
    obj = Snowman()
    # away from the blends the SDF is the exact distance: -0.35 at the body's centre, 0.1 below it and above the head
    far = torch.tensor([[0.0, 0.0, -0.13], [0.0, 0.0, -0.58], [0.0, 0.0, 0.59]], dtype=torch.float64)
    torch.testing.assert_close(obj.sdf(far), torch.tensor([-0.35, 0.1, 0.1], dtype=torch.float64))
    p = _on_both_spheres(obj.body, obj.head, (0.0, 1.0, 0.0))
    assert obj.sdf(p).item() == pytest.approx(-0.1 / 4, abs=1e-12)
    q = _on_both_spheres(obj.head, obj.nose, (0.0, 0.0, 1.0))
    assert q[0] > 0.15 and obj.sdf(q).item() == pytest.approx(-0.04 / 4, abs=1e-12)


def test_snowman_reference_mesh_is_coloured_by_the_shaded_colour_field():
    # vertex colours = albedo x (0.5 + 0.5 max(0, n . l)) at the vertices, not the bare albedo
    obj = Snowman()
    mesh = obj.mesh(24)
    torch.testing.assert_close(mesh.vertex_colors, obj.color(mesh.vertices).clamp(0, 1))
    assert (obj.albedo(mesh.vertices) - mesh.vertex_colors).abs().max() > 0.2


def _spy_losses(monkeypatch):
    """Record (step, loss, learning rates per parameter group, parameter groups) at every optimiser step."""
    from scorelab.three import fitting

    calls, update = [], fitting._update

    def spy(opt, loss, guard, step):
        calls.append((step, loss.item(), [g["lr"] for g in opt.param_groups], [g["params"] for g in opt.param_groups]))
        update(opt, loss, guard, step)

    monkeypatch.setattr(fitting, "_update", spy)
    return calls


@pytest.mark.parametrize("name", list(FITTERS))
def test_each_fitter_loss_has_unit_weight_rgb_and_mask_terms(small_views, monkeypatch, name):
    # L(t) = E(c - t_rgb)^2 + E(m - t_mask)^2: a quadratic in a constant target t, so L(0) + L(1) - 2 L(1/2) = 1/2
    # exactly per term whatever the render is (the render at step 0 does not depend on the targets)
    train, _ = small_views
    calls = _spy_losses(monkeypatch)
    for term in ("color", "mask"):
        first = []
        for t in (0.0, 1.0, 0.5):
            color = torch.full_like(train.color, t) if term == "color" else train.color
            mask = torch.full_like(train.mask, t) if term == "mask" else train.mask
            calls.clear()
            FITTERS[name](Views(train.cameras, color, mask), steps=1, progress=False, **SMALL[name])
            first.append(calls[0][1])
        assert first[0] + first[1] - 2 * first[2] == pytest.approx(0.5, rel=1e-4), term


def test_tv_prior_is_the_mean_squared_neighbour_difference_along_each_axis():
    from scorelab.three.fitting import _tv

    for axis in (1, 2, 3):
        shape = [1, 1, 1, 1]
        shape[axis] = 5
        ramp = (0.5 * torch.arange(5.0)).view(shape).expand(2, 5, 5, 5)
        assert _tv(ramp).item() == pytest.approx(0.25), axis  # one axis with steps of 1/2, the others constant


def test_voxel_tv_weight_enters_the_fit(small_views):
    train, test = small_views
    renders = [
        FITTERS["voxels"](train, steps=3, progress=False, **{**SMALL["voxels"], "tv": tv}).render(test.cameras)[0]
        for tv in (0.0, 100.0)
    ]
    assert (renders[0] - renders[1]).abs().max() > 1e-3


def test_dmtet_loss_adds_its_weighted_regularisers(small_views, monkeypatch):
    # loss = photometric + w_sign sdf_sign_loss + w_smooth laplacian + w_normal normal_consistency, each at the start
    from scorelab.three.dmtet import laplacian_smoothing, normal_consistency, sdf_sign_loss
    from scorelab.three.fitting import TexturedDMTet

    train, _ = small_views
    calls = _spy_losses(monkeypatch)
    res, cres = SMALL["dmtet"]["resolution"], SMALL["dmtet"]["color_resolution"]
    model = TexturedDMTet(res, cres, 0.45)
    mesh = model.mesh()
    terms = {
        "sign_weight": sdf_sign_loss(model.dmtet.grid, model.sdf()).item(),
        "smooth_weight": laplacian_smoothing(mesh.vertices, mesh.faces).item(),
        "normal_weight": normal_consistency(mesh.vertices, mesh.faces).item(),
    }
    assert min(terms.values()) > 0

    def first_loss(**weights):
        calls.clear()
        w = {"sign_weight": 0.0, "smooth_weight": 0.0, "normal_weight": 0.0, **weights}
        FITTERS["dmtet"](train, steps=1, progress=False, **SMALL["dmtet"], **w)
        return calls[0][1]

    photometric = first_loss()
    for key, value in terms.items():
        assert first_loss(**{key: 3.0}) - photometric == pytest.approx(3.0 * value, rel=1e-3), key


def test_learning_rates_follow_the_cosine_schedule_in_every_group(small_views, monkeypatch):
    # lr_k(step) = base_k * _cosine(step, steps); per-group bases: Gaussians as in Kerbl et al. 2023 (raised),
    # DMTet's SDF and deformation at lr, its colour volume at color_lr
    from scorelab.three import fitting
    from scorelab.three.fitting import _cosine

    train, _ = small_views
    calls = _spy_losses(monkeypatch)
    models, make = [], fitting.Gaussians.random_in_box
    monkeypatch.setattr(fitting.Gaussians, "random_in_box", lambda *a, **k: models.append(make(*a, **k)) or models[-1])
    steps = 4
    for name, kwargs in {
        "voxels": {"lr": 0.2},
        "voxel_splats": {"lr": 0.3},
        "gaussians": {},
        "dmtet": {"lr": 0.02, "color_lr": 0.3},
    }.items():
        calls.clear()
        models.clear()
        FITTERS[name](train, steps=steps, progress=False, **{**SMALL[name], **kwargs})
        assert [c[0] for c in calls] == list(range(steps)), name
        groups = calls[0][3]
        if name == "gaussians":
            (m,) = models
            want = {m.means: 2e-3, m.log_scales: 1e-2, m.quats: 5e-3, m.opacity_logits: 5e-2, m.sh: 1e-2}
            base = [want[g[0]] for g in groups]
            assert len(groups) == 5 and all(len(g) == 1 for g in groups)
        elif name == "dmtet":
            base = [0.3 if g[0].ndim == 4 else 0.02 for g in groups]  # the colour volume is the only 4-D one
            assert sorted(g[0].ndim for g in groups) == [1, 2, 4]  # SDF (+ coarse grids), deformation, colour
        else:
            base = [kwargs["lr"]] * len(groups)
        for step, _, lrs, _ in calls:
            assert lrs == pytest.approx([b * _cosine(step, steps) for b in base]), (name, step)


def test_every_fitter_counts_its_skipped_steps(small_views):
    train, _ = small_views
    poisoned = Views(train.cameras, train.color * float("nan"), train.mask)
    for name in FITTERS:
        fitted = FITTERS[name](poisoned, steps=3, progress=False, **SMALL[name])
        assert fitted.skipped_steps == 3, name


def test_update_stops_only_after_max_bad_steps_in_a_row():
    from scorelab.three.fitting import _update
    from scorelab.train.guard import NonFiniteGuard

    p = torch.nn.Parameter(torch.ones(2))
    opt = torch.optim.SGD([p], lr=0.1)
    guard = NonFiniteGuard("toy", log=lambda _: None)
    for step in range(2 * MAX_BAD_STEPS):  # alternating: more bad steps in all than the limit, never two in a row
        before = p.detach().clone()
        bad = step % 2 == 0
        _update(opt, (p * (float("nan") if bad else 1.0)).sum(), guard, step)
        assert torch.equal(p.detach(), before) == bad  # a bad step leaves the parameters as they were
    assert guard.skipped == MAX_BAD_STEPS
    with pytest.raises(ScorelabError, match="consecutive"):
        for step in range(MAX_BAD_STEPS):
            _update(opt, p.sum() * float("nan"), guard, step)


def test_voxel_fits_follow_the_seed(small_views):
    train, test = small_views
    for name, extra in (("voxels", {}), ("voxel_splats", {"prune_after": 1.0}), ("gaussians", {})):
        renders = [
            FITTERS[name](
                train, steps=3, progress=False, generator=torch.Generator().manual_seed(s), **SMALL[name], **extra
            ).render(test.cameras)[0]
            for s in (3, 3, 4)
        ]
        assert torch.equal(renders[0], renders[1]) and not torch.equal(renders[0], renders[2]), name


def test_voxel_splats_start_at_init_density_and_prune_after_a_quarter(small_views, monkeypatch):
    # density = softplus(raw) = init_density everywhere at the start; min_density rises at step prune_after * steps
    from scorelab.three.voxels import VoxelGrid

    train, test = small_views
    seen, splat = [], VoxelGrid.splat

    def spy(self, cameras, **kwargs):
        seen.append((self.density().detach().clone(), kwargs["min_density"]))
        return splat(self, cameras, **kwargs)

    monkeypatch.setattr(VoxelGrid, "splat", spy)
    fitted = FITTERS["voxel_splats"](
        train, steps=8, progress=False, init_density=0.2, min_density=0.05, prune_density=0.5, prune_after=0.25,
        **SMALL["voxel_splats"],
    )  # fmt: skip
    torch.testing.assert_close(seen[0][0], torch.full_like(seen[0][0], 0.2))
    assert [m for _, m in seen] == [0.05, 0.05] + [0.5] * 6
    fitted.render(test.cameras)
    assert seen[-1][1] == 0.5  # the fit is drawn as it was trained at the end


def test_textured_dmtet_sdf_adds_its_coarse_grids_at_the_vertices():
    # trilinear interpolation of a constant volume is that constant, so a constant coarse grid shifts the SDF
    from scorelab.three.fitting import TexturedDMTet

    model = TexturedDMTet(4, 4, 0.45, coarse=(2, 3))
    start = model.sdf().detach().clone()
    torch.testing.assert_close(start, model.dmtet.grid.vertices.norm(dim=1) - 0.45)
    with torch.no_grad():
        model.coarse[0].fill_(0.1)
        model.coarse[1].fill_(-0.03)
    torch.testing.assert_close(model.sdf().detach(), start + 0.07)


def test_a_fit_with_nothing_drawn_runs_and_renders_empty(small_views):
    """Every voxel pruned from the first step: the loss depends on no parameter, so each step changes nothing (it
    once failed inside autograd, 'element 0 of tensors does not require grad')."""
    train, test = small_views
    fitted = FITTERS["voxel_splats"](
        train, steps=3, progress=False, prune_after=0.0, prune_density=1e9, **SMALL["voxel_splats"]
    )
    color, mask = fitted.render(test.cameras)
    assert fitted.iterations == 3 and fitted.skipped_steps == 0
    assert mask.abs().max() == 0 and torch.equal(color, torch.ones_like(color))  # white background only


def test_views_refuse_integer_or_bool_images_and_values_outside_0_1():
    # 0..255 colours, uint8 colours and bool masks were accepted and the fitters trained on them silently
    cams = orbit_cameras(1.0, 0.0, 2.0, width=8)
    color, mask = torch.rand(1, 3, 8, 8), torch.rand(1, 1, 8, 8)
    with pytest.raises(ScorelabError, match=r"views need color values in \[0, 1\], got .*\.\.2[0-9][0-9]"):
        Views(cams, color * 255, mask)
    with pytest.raises(ScorelabError, match=r"views need mask values in \[0, 1\], got -0\.5\.\.0\.5"):
        Views(cams, color, torch.full_like(mask, 0.5).index_fill(3, torch.tensor([0, 1]), -0.5))
    with pytest.raises(ScorelabError, match=r"views need float color images with values in \[0, 1\], got torch\.uint8"):
        Views(cams, (color * 255).to(torch.uint8), mask)
    with pytest.raises(ScorelabError, match=r"views need float mask images with values in \[0, 1\], got torch\.bool"):
        Views(cams, color, mask > 0.5)
    with pytest.raises(ScorelabError, match=r"views need color values in \[0, 1\], got .*inf"):
        Views(cams, color.index_fill(3, torch.tensor([2]), float("inf")), mask)
    Views(cams, color.clamp(0, 1) * (1 + 1e-7), torch.ones_like(mask))  # rounding slack, and the range's ends
    Views(cams, color * float("nan"), mask)  # NaN is left to the fitters, which skip non-finite steps


@pytest.mark.parametrize("name", list(FITTERS))
def test_fitters_refuse_negative_or_fractional_steps(name):
    # steps=-5 returned a fit that reported iterations=-5
    cams = orbit_cameras(1.0, 0.0, 2.0, width=8)
    views = Views(cams, torch.ones(1, 3, 8, 8), torch.zeros(1, 1, 8, 8))
    for steps in (-5, -1, 2.5, True):
        with pytest.raises(ScorelabError, match=r"steps must be a whole number >= 0"):
            FITTERS[name](views, steps=steps, progress=False, **SMALL[name])
