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
from scorelab.three.objects import Snowman, get_object
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
    with pytest.raises(ScorelabError, match="unknown object"):
        get_object("teapot")
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
