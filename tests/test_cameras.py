import math

import pytest
import torch

from scorelab.errors import ScorelabError
from scorelab.three.cameras import (
    cartesian_to_spherical,
    generate_rays,
    orbit_cameras,
    project,
    relative_pose,
    spherical_to_cartesian,
)


def test_spherical_round_trip():
    g = torch.Generator().manual_seed(0)
    theta = torch.rand(100, generator=g, dtype=torch.float64) * (math.pi - 0.02) + 0.01
    phi = torch.rand(100, generator=g, dtype=torch.float64) * 2 * math.pi
    r = torch.rand(100, generator=g, dtype=torch.float64) * 0.7 + 1.5
    t2, p2, r2 = cartesian_to_spherical(spherical_to_cartesian(theta, phi, r))
    torch.testing.assert_close(t2, theta)
    torch.testing.assert_close(torch.sin(p2 - phi), torch.zeros_like(phi), atol=1e-12, rtol=0)
    torch.testing.assert_close(r2, r)


def test_convention_axes():
    # polar 0 looks straight down from +z; azimuth 0 sits on +x; azimuth pi/2 on +y
    torch.testing.assert_close(
        spherical_to_cartesian(0.0, 0.3, 2.0), torch.tensor([0.0, 0.0, 2.0], dtype=torch.float64)
    )
    torch.testing.assert_close(
        spherical_to_cartesian(math.pi / 2, math.pi / 2, 1.0),
        torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64),
        atol=1e-12,
        rtol=0,
    )


def test_origin_projects_to_centre_and_up_is_up():
    cams = orbit_cameras(
        torch.tensor([1.0, 1.3, 2.0]), torch.tensor([0.0, 2.0, 5.0]), 2.0, width=64, dtype=torch.float64
    )
    uv, z = project(cams, torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 0.2]], dtype=torch.float64))
    torch.testing.assert_close(uv[:, 0], torch.full((3, 2), 32.0, dtype=torch.float64))
    torch.testing.assert_close(z[:, 0], torch.full((3,), 2.0, dtype=torch.float64))
    assert (uv[:, 1, 1] < 32).all()  # a point above the origin appears higher in the image (smaller v)


def test_rays_hit_projected_points():
    cams = orbit_cameras(torch.tensor([1.1]), torch.tensor([0.7]), 1.8, width=8, height=6, dtype=torch.float64)
    o, d = generate_rays(cams)
    pts = (o + 1.3 * d).reshape(-1, 3)
    uv, _ = project(cams, pts)
    j, i = torch.meshgrid(torch.arange(8.0), torch.arange(6.0), indexing="xy")
    expected = torch.stack([j + 0.5, i + 0.5], -1).reshape(-1, 2).to(torch.float64)
    torch.testing.assert_close(uv[0], expected)
    assert cams.focal[0, 0] == pytest.approx(4 / math.tan(math.radians(49.1) / 2))


def test_relative_pose_continuous_across_zero_azimuth():
    a = relative_pose(1.0, 2 * math.pi - 1e-6, 1.5, 1.0, 1e-6, 1.5)
    b = relative_pose(1.0, 0.0, 1.5, 1.0, 0.0, 1.5)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    torch.testing.assert_close(b, torch.tensor([0.0, 0.0, 1.0, 0.0], dtype=torch.float64))


@pytest.mark.parametrize("bad", [dict(radius=0.0), dict(radius=-1.0), dict(theta=float("nan"))])
def test_bad_cameras(bad):
    args = dict(theta=1.0, phi=0.0, radius=2.0) | bad
    with pytest.raises(ScorelabError):
        orbit_cameras(args["theta"], args["phi"], args["radius"])


def test_indexing_one_camera_keeps_a_batch_of_one():
    import numpy as np

    cams = orbit_cameras(torch.tensor([0.5, 1.0, 1.5]), torch.tensor([0.0, 1.0, 2.0]), 2.0, width=8)
    for idx, want in ((-1, 2), (np.int64(1), 1), (0, 0)):
        one = cams[idx]
        assert len(one) == 1 and one.world_to_cam.shape == (1, 4, 4)
        torch.testing.assert_close(one.world_to_cam[0], cams.world_to_cam[want])
    with pytest.raises(IndexError):
        cams[3]


def test_the_pole_pose_is_the_limit_along_phi_three_halves_pi():
    pole = orbit_cameras(0.0, 0.0, 2.0, width=8, dtype=torch.float64).world_to_cam[0, :3, :3]
    near = orbit_cameras(1e-7, 1.5 * math.pi, 2.0, width=8, dtype=torch.float64).world_to_cam[0, :3, :3]
    torch.testing.assert_close(pole, near, atol=1e-6, rtol=0)
    torch.testing.assert_close(pole[0], torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64))  # x axis +x at the pole


def test_phi_stays_below_two_pi_and_sizes_are_whole_pixels():
    _, phi, _ = cartesian_to_spherical(torch.tensor([[1.0, -1e-17, 0.0]], dtype=torch.float64))
    assert 0 <= phi.item() < 2 * math.pi
    with pytest.raises(ScorelabError, match="whole pixels"):
        orbit_cameras(1.0, 0.0, 2.0, width=7.5)


def test_relative_pose_is_target_minus_condition():
    # Liu et al. 2023 (Zero-1-to-3), sec. 3.1: (theta_b - theta_a, sin(phi_b - phi_a), cos(phi_b - phi_a), r_b - r_a)
    got = relative_pose(1.0, 0.2, 1.5, 1.3, 0.9, 2.0)
    want = torch.tensor([0.3, math.sin(0.7), math.cos(0.7), 0.5], dtype=torch.float64)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


def test_principal_point_of_a_non_square_image_is_its_centre():
    cams = orbit_cameras(1.2, 0.5, 2.0, width=40, height=30, dtype=torch.float64)
    uv, _ = project(cams, torch.zeros(1, 3, dtype=torch.float64))
    torch.testing.assert_close(uv[0, 0], torch.tensor([20.0, 15.0], dtype=torch.float64))


def test_cameras_built_by_hand_are_shape_checked():
    from scorelab.three.cameras import Cameras

    c = orbit_cameras(1.0, 0.3, 2.0, width=8)
    w2c, f, p = c.world_to_cam, c.focal, c.principal
    for args, message in (
        ((w2c[0], f, p), r"world_to_cam must be a float tensor of shape \(N, 4, 4\) .*got torch.float32 \(4, 4\)"),
        ((w2c, f[:, 0], p), r"focal must be a float tensor of shape \(1, 2\) .*got torch.float32 \(1,\)"),
        ((w2c.repeat(2, 1, 1), f, p), r"focal must be a float tensor of shape \(2, 2\)"),  # used to broadcast
    ):
        with pytest.raises(ScorelabError, match="Cameras: " + message):
            Cameras(*args, 8, 8)
    with pytest.raises(ScorelabError, match=r"image size must be positive, got 0x8"):  # rendered empty images
        Cameras(w2c, f, p, 0, 8)


@pytest.mark.parametrize(
    "theta, message",
    [
        (60.0, r"camera polar angle theta must be in \[0, pi\] radians .*got 60; degrees\? multiply by pi / 180"),
        (-0.5, r"camera polar angle theta must be in \[0, pi\] radians .*got -0\.5$"),
    ],
)
def test_polar_angles_outside_zero_to_pi_are_refused(theta, message):
    with pytest.raises(ScorelabError, match=message):  # silently placed the camera elsewhere
        orbit_cameras(theta, 0.0, 2.0)
    with pytest.raises(ScorelabError, match=message):
        relative_pose(1.0, 0.0, 1.5, theta, 0.0, 1.5)
    orbit_cameras(torch.tensor(180.0) * math.pi / 180, 0.0, 2.0)  # pi rounded to float32 is just above pi: allowed


def test_camera_radius_must_be_finite_and_angles_broadcast():
    for r in (math.inf, math.nan):  # gave NaN poses
        with pytest.raises(ScorelabError, match=r"camera radius must be finite"):
            orbit_cameras(1.0, 0.0, r)
    with pytest.raises(
        ScorelabError, match=r"camera theta, phi and radius must broadcast to one shape, got \(3,\), \(2,\), \(\)"
    ):
        orbit_cameras([1.0, 1.2, 1.3], [0.0, 1.0], 2.0)


def test_projected_points_and_look_at_inputs_are_checked():
    from scorelab.three.cameras import look_at

    cams = orbit_cameras(1.0, 0.3, 2.0, width=8)
    for pts in (torch.zeros(5, 2), torch.zeros(1, 5, 3)):  # were einsum errors
        with pytest.raises(ScorelabError, match=r"points must be a \(P, 3\) tensor of world points, got "):
            project(cams, pts)
    with pytest.raises(
        ScorelabError, match=r"points \(torch.float64\) and cameras \(torch.float32\) must share a dtype"
    ):
        project(cams, torch.zeros(2, 3, dtype=torch.float64))
    with pytest.raises(ScorelabError, match=r"look_at needs eye as 3D points \(\.\.\., 3\), got shape \(2,\)"):
        look_at(torch.tensor([1.0, 2.0]))
    with pytest.raises(ScorelabError, match=r"look_at needs a nonzero up direction"):
        look_at(torch.tensor([1.0, 0.0, 1.0]), up=(0.0, 0.0, 0.0))
