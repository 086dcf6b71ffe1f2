"""Meshes, export and geometry metrics."""

import math

import imageio.v3 as iio
import pytest
import torch
import trimesh
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scorelab.errors import ScorelabError
from scorelab.metrics.geometry import (
    distance_to_sphere,
    distance_to_torus,
    mean_distance_to_surface,
    nearest,
    nearest_blocked,
    surface_metrics,
    volume_iou,
    winding_number,
)
from scorelab.three.export import export_mesh, turntable
from scorelab.three.mesh import (
    Mesh,
    box_mesh,
    euler_characteristic,
    icosphere,
    is_edge_manifold,
    is_watertight,
    load_mesh,
    sample_surface,
    validate_mesh,
    vertex_normals,
)

EMPTY = Mesh(torch.zeros(0, 3), torch.zeros(0, 3, dtype=torch.long))


def test_icosphere_topology_and_normals():
    m = icosphere(3, 0.6)
    assert m.faces.shape[0] == 20 * 4**3 and is_watertight(m) and euler_characteristic(m) == 2
    assert trimesh.Trimesh(m.vertices.numpy(), m.faces.numpy(), process=False).volume > 0  # outward winding
    n = vertex_normals(m.vertices, m.faces)
    assert (n * torch.nn.functional.normalize(m.vertices, dim=1)).sum(1).min() > 0.99


def test_box_and_topology_checks():
    box = box_mesh((1.0, 2.0, 3.0), (0.1, 0.0, 0.0))
    tm = trimesh.Trimesh(box.vertices.numpy(), box.faces.numpy(), process=False)
    assert tm.volume == pytest.approx(6.0) and is_watertight(box) and euler_characteristic(box) == 2
    open_box = Mesh(box.vertices, box.faces[1:])  # one face removed: a hole, still edge-manifold
    assert not is_watertight(open_box) and is_edge_manifold(open_box) and euler_characteristic(open_box) == 1
    fin = Mesh(
        torch.cat([box.vertices, torch.tensor([[3.0, 3.0, 3.0]])]), torch.cat([box.faces, torch.tensor([[0, 1, 8]])])
    )
    assert not is_edge_manifold(fin) and not is_watertight(fin)  # edge 0-1 now has three faces


def test_surface_samples_are_uniform_on_a_box():
    # a unit cube made of 12 triangles of two sizes of split: uniform sampling gives each face 1/6 of the points
    box = trimesh.creation.box()
    m = Mesh(torch.tensor(box.vertices, dtype=torch.float32), torch.tensor(box.faces))
    pts, normals = sample_surface(m, 60_000, torch.Generator().manual_seed(0))
    share = torch.stack([(normals == torch.eye(3)[i]).all(1) | (normals == -torch.eye(3)[i]).all(1) for i in range(3)])
    per_axis = share.double().mean(1)
    se = math.sqrt((1 / 3) * (2 / 3) / 60_000)
    assert ((per_axis - 1 / 3).abs() < 4 * se).all()
    assert (pts.abs() <= 0.5 + 1e-6).all()


@pytest.mark.parametrize("ext", ["glb", "obj", "ply"])
def test_export_round_trip_keeps_vertices_and_colours(tmp_path, ext):
    m = icosphere(2, 0.5)
    m.vertex_colors = torch.rand(m.vertices.shape, generator=torch.Generator().manual_seed(1))
    path = export_mesh(m, tmp_path / f"sphere.{ext}")
    back = load_mesh(path)
    assert back.vertices.shape == m.vertices.shape and back.faces.shape == m.faces.shape
    torch.testing.assert_close(back.vertices, m.vertices, atol=1e-5, rtol=0)
    assert (back.vertex_colors - m.vertex_colors).abs().max() <= 0.5 / 255 + 1e-6  # 8-bit quantisation
    assert not list(tmp_path.glob(".*"))  # no temporary left behind


def test_turntable_gif_and_mp4(tmp_path):
    for ext in ("gif", "mp4"):
        path = turntable(lambda a: torch.full((3, 16, 16), a / (2 * math.pi)), 4, tmp_path / f"t.{ext}")
        assert iio.imread(path).shape[0] == 4
    with pytest.raises(ScorelabError, match="allowed: .gif, .mp4"):
        turntable(lambda a: torch.zeros(3, 4, 4), 2, tmp_path / "t.avi")


def test_bad_meshes_give_one_line_errors(tmp_path):
    v = torch.tensor([[0.0, 0, 0], [1, 0, 0], [0, 1, 0]])
    cases = {
        "empty": EMPTY,
        "nan": Mesh(torch.tensor([[0.0, 0, 0], [1, 0, 0], [float("nan"), 1, 0]]), torch.tensor([[0, 1, 2]])),
        "index": Mesh(v, torch.tensor([[0, 1, 3]])),
        "degenerate": Mesh(torch.tensor([[0.0, 0, 0], [1, 0, 0], [2, 0, 0]]), torch.tensor([[0, 1, 2]])),
        "shape": Mesh(v[:, :2], torch.tensor([[0, 1, 2]])),
        "colour": Mesh(v, torch.tensor([[0, 1, 2]]), torch.full((3, 3), 1.5)),
    }
    for name, mesh in cases.items():
        with pytest.raises(ScorelabError) as err:
            validate_mesh(mesh, name=name)
        assert "\n" not in str(err.value) and name in str(err.value)
    for bad in (lambda: box_mesh((1.0, 0.0, 1.0)), lambda: icosphere(-1), lambda: icosphere(2, radius=0.0)):
        with pytest.raises(ScorelabError):
            bad()
    with pytest.raises(ScorelabError, match="allowed: .glb, .obj, .ply"):
        export_mesh(icosphere(1), tmp_path / "x.stl")
    (tmp_path / "junk.obj").write_text("this is not a mesh\n")
    with pytest.raises(ScorelabError):
        load_mesh(tmp_path / "junk.obj")
    with pytest.raises(ScorelabError, match="does not exist"):
        load_mesh(tmp_path / "missing.ply")


def test_blocked_cdist_nearest_matches_the_kd_tree():
    g = torch.Generator().manual_seed(4)
    a, b = torch.rand(3000, 3, generator=g), torch.rand(2500, 3, generator=g)
    d1, i1 = nearest(a, b)
    d2, i2 = nearest_blocked(a, b, block=700)  # blocks that do not divide the sizes
    torch.testing.assert_close(d1, d2, rtol=0, atol=1e-7)  # cdist's matmul form loses ~1e-8 in float64 via sqrt
    assert (i1 == i2).float().mean() > 0.999  # indices may differ only on exact ties


def test_chamfer_floor_exact_distance_and_fscore():
    a, b = icosphere(5, 0.6), icosphere(5, 0.6)
    m = surface_metrics(a, b, n=100_000)
    # two independent 100k samplings of a radius-0.6 sphere differ by about 0.0034 (the sampling floor): the
    # mean nearest-neighbour distance of a Poisson process of density n / A is 1 / (2 sqrt(n / A)) = 0.0034
    floor = 0.5 / math.sqrt(100_000 / (4 * math.pi * 0.36))
    assert m["chamfer_l1"] == pytest.approx(floor, rel=0.1)
    # F-score: a sample has no neighbour within tau with probability exp(-n pi tau^2 / A) (Poisson), 4.5e-5 at the
    # default tau = 0.012; so F >= 1 - 10 x that; at 2 tau the probability is 1e-17 and F is exactly 1
    assert m["tau"] == pytest.approx(0.012, rel=1e-3)
    assert m["fscore"] >= 1 - 10 * math.exp(-100_000 * math.pi * m["tau"] ** 2 / (4 * math.pi * 0.36))
    assert surface_metrics(a, b, n=100_000, tau=2 * m["tau"])["fscore"] == 1.0
    assert m["normal_consistency"] > 0.999
    # exact distance of the icosphere's surface to the true sphere: at most the sag of a flat triangle with its
    # vertices on the sphere, r - sqrt(r^2 - rho^2), with circumradius rho <= longest edge / sqrt(3)
    pts, _ = sample_surface(a, 20_000, torch.Generator().manual_seed(2))
    e = a.vertices[a.faces[:, [0, 1, 2]]] - a.vertices[a.faces[:, [1, 2, 0]]]
    longest = e.norm(dim=-1).max().item()
    sag = 0.6 - math.sqrt(0.6**2 - longest**2 / 3)
    exact = distance_to_sphere(pts, 0.6)
    assert 0 < exact.max() <= sag * (1 + 1e-4)
    mean_exact = mean_distance_to_surface(a, lambda p: distance_to_sphere(p, 0.6))
    assert 0 < mean_exact <= sag and mean_exact < m["chamfer_l1"] / 10  # far below the sampling floor
    shifted = Mesh(a.vertices + torch.tensor([0.05, 0, 0]), a.faces)
    assert surface_metrics(shifted, b, n=20_000)["fscore"] < 0.5
    assert mean_distance_to_surface(shifted, lambda p: distance_to_sphere(p, 0.6)) > 0.02  # mean |0.05 cos| = 0.025
    worst = surface_metrics(EMPTY, b)
    assert worst["chamfer_l1"] == math.inf and worst["chamfer_l2"] == math.inf
    assert worst["fscore"] == 0 and worst["normal_consistency"] == 0
    assert mean_distance_to_surface(EMPTY, lambda p: distance_to_sphere(p, 0.6)) == math.inf


def test_exact_distance_to_a_torus():
    # a torus mesh with its vertices on the surface: a flat triangle deviates from a surface of largest principal
    # curvature kappa = 1 / (minor radius) by at most kappa rho^2 / 2 to second order; allow twice that
    tm = trimesh.creation.torus(0.4, 0.15, major_sections=64, minor_sections=32)
    m = Mesh(torch.tensor(tm.vertices, dtype=torch.float64), torch.tensor(tm.faces))
    torch.testing.assert_close(
        distance_to_torus(m.vertices, 0.4, 0.15), torch.zeros(len(m.vertices), dtype=torch.float64)
    )
    assert is_watertight(m) and euler_characteristic(m) == 0
    e = m.vertices[m.faces[:, [0, 1, 2]]] - m.vertices[m.faces[:, [1, 2, 0]]]
    rho = e.norm(dim=-1).max().item()  # the circumradius is at most the longest edge over sqrt(3) < the longest edge
    mean_exact = mean_distance_to_surface(m, lambda p: distance_to_torus(p, 0.4, 0.15), n=20_000)
    assert 0 < mean_exact <= rho**2 / 0.15


def test_volume_iou_and_winding_number():
    big, small = icosphere(3, 0.6), icosphere(3, 0.3)
    w = winding_number(big, torch.tensor([[0.0, 0, 0], [0.9, 0, 0]]))
    torch.testing.assert_close(w, torch.tensor([1.0, 0.0], dtype=w.dtype), atol=1e-5, rtol=0)
    iou = volume_iou(small, big, n=10_000)
    # nested spheres: IoU = (0.3/0.6)^3 = 1/8, up to the icospheres' volume deficit and sampling error
    vol = lambda m: trimesh.Trimesh(m.vertices.numpy(), m.faces.numpy()).volume  # noqa: E731
    expected = vol(small) / vol(big)
    union_share = vol(big) / 1.2**3  # points land in the union's bounding box
    se = math.sqrt(expected * (1 - expected) / (10_000 * union_share))
    assert abs(iou - expected) < 4 * se
    assert volume_iou(EMPTY, big) == 0.0


OBJ_LINES = st.sampled_from(
    ["v 0 0 0", "v 1 0 0", "v 0 1 0", "v 0 0 nan", "v 1e308 1e308 1e308", "f 1 2 3", "f 1 2 4", "f 1 1 1",
     "f 3 2 1", "f -1 -2 -3", "vt 0 0", "vn 0 0 1", "f 1/1 2/1 3/1", "# comment", "o thing", "v 1 2", "f", "garbage"]
)  # fmt: skip


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(OBJ_LINES, max_size=12), st.sampled_from([".obj", ".ply", ".glb", ".stl", ".off"]), st.binary(max_size=64)
)
def test_mesh_loader_never_crashes_otherwise(tmp_path, lines, suffix, junk):
    """OBJ text built from valid and broken lines, and random bytes under every extension: load_mesh returns a valid
    mesh or raises a one-line ScorelabError."""
    for i, data in enumerate(("\n".join(lines).encode(), junk)):
        path = tmp_path / f"m{i}{suffix if i else '.obj'}"
        path.write_bytes(data)
        try:
            mesh = load_mesh(path)
        except ScorelabError as e:
            assert "\n" not in str(e)
            continue
        validate_mesh(mesh)


def test_a_prediction_with_no_area_scores_the_worst_value():
    flat = Mesh(torch.tensor([[0.0, 0, 0], [1, 0, 0], [2, 0, 0]]), torch.tensor([[0, 1, 2]]))  # collinear
    ref = icosphere(2)
    m = surface_metrics(flat, ref, n=1000)
    assert m["chamfer_l1"] == math.inf and m["fscore"] == 0.0
    assert mean_distance_to_surface(flat, lambda p: distance_to_sphere(p, 1.0)) == math.inf
    # one zero-area face among good ones (marching tets makes them) is measured, not refused
    v = torch.cat([ref.vertices, ref.vertices[:1]])
    f = torch.cat([ref.faces, torch.tensor([[0, 0, v.shape[0] - 1]])])
    assert mean_distance_to_surface(Mesh(v, f), lambda p: distance_to_sphere(p, 1.0), n=2000) < 0.05
    with pytest.raises(ScorelabError, match="zero total area"):
        sample_surface(flat, 10)


# --- audit additions ------------------------------------------------------------------------------------------------


def test_samples_are_uniform_within_each_face_and_follow_the_areas():
    # Osada et al. 2002, sec. 4.2: faces drawn in proportion to area (here 1 : 3), points uniform inside each face, so
    # a face's samples average to its centroid; face_areas is half the cross product's norm
    from scorelab.three.mesh import face_areas

    v = torch.tensor([[0.0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1], [3, 0, 1], [0, 1, 1]], dtype=torch.float64)
    m = Mesh(v, torch.tensor([[0, 1, 2], [3, 4, 5]]))
    torch.testing.assert_close(face_areas(m.vertices, m.faces), torch.tensor([0.5, 1.5], dtype=torch.float64))
    n = 40_000
    pts, _ = sample_surface(m, n, torch.Generator().manual_seed(0))
    on_second = pts[:, 2] > 0.5
    share = on_second.double().mean().item()
    assert abs(share - 0.75) < 4 * math.sqrt(0.75 * 0.25 / n)
    for sel, face in ((~on_second, 0), (on_second, 1)):
        centroid = v[m.faces[face]].mean(0)
        torch.testing.assert_close(pts[sel].mean(0), centroid, rtol=0, atol=0.02)


def test_fscore_is_the_harmonic_mean_of_precision_and_recall():
    """Tatarchenko et al. 2019: F = 2 P R / (P + R). A prediction that is the reference plus an equal-area copy far
    away has precision P = 1/2 (half its samples are far from the reference) and recall R = 1, so F = 2/3 (the
    arithmetic mean would give 3/4, precision alone 1/2)."""
    ref = icosphere(3, 0.3)
    copy = Mesh(ref.vertices + torch.tensor([2.0, 0, 0]), ref.faces + ref.vertices.shape[0])
    pred = Mesh(torch.cat([ref.vertices, copy.vertices]), torch.cat([ref.faces, copy.faces]))
    f = surface_metrics(pred, ref, n=20_000, tau=0.05)["fscore"]
    assert f == pytest.approx(2 / 3, abs=0.01)
    assert surface_metrics(ref, pred, n=20_000, tau=0.05)["fscore"] == pytest.approx(2 / 3, abs=0.01)  # symmetric


def test_chamfer_l2_is_the_mean_of_squared_distances():
    """Two radius-0.6 spheres 0.1 apart: a point at polar angle t on one is about 0.1 |cos t| from the other, so
    Chamfer-L1 ~ 0.1 E|cos| = 0.05 and Chamfer-L2 ~ 0.01 E cos^2 = 0.0033 (the square of the mean would be 0.0025);
    the exact per-sample distances to the analytic spheres give both to the sampling floor."""
    a = icosphere(4, 0.6, dtype=torch.float64)
    b = Mesh(a.vertices + torch.tensor([0.1, 0, 0], dtype=torch.float64), a.faces)
    m = surface_metrics(b, a, n=50_000)
    pb, _ = sample_surface(b, 50_000, torch.Generator().manual_seed(0))
    pa, _ = sample_surface(a, 50_000, torch.Generator().manual_seed(1))
    d_b, d_a = distance_to_sphere(pb, 0.6), distance_to_sphere(pa, 0.6, (0.1, 0.0, 0.0))
    assert m["chamfer_l1"] == pytest.approx(0.5 * (d_b.mean() + d_a.mean()).item(), rel=0.05)
    assert m["chamfer_l2"] == pytest.approx(0.5 * (d_b.square().mean() + d_a.square().mean()).item(), rel=0.05)
    assert m["chamfer_l2"] == pytest.approx(0.01 / 3, rel=0.08)


def test_normal_consistency_ignores_orientation():
    # mean |cos| (as in Occupancy Networks): a copy wound inside-out is still perfectly consistent
    a = icosphere(4, 0.6)
    flipped = Mesh(a.vertices, a.faces.flip(1))
    assert surface_metrics(flipped, a, n=20_000)["normal_consistency"] > 0.99


def test_distance_to_an_off_centre_sphere():
    c = torch.tensor([0.2, -0.1, 0.3], dtype=torch.float64)
    pts = c + torch.tensor([[0.5, 0, 0], [0, 0, -0.8], [0, 0, 0]], dtype=torch.float64)
    d = distance_to_sphere(pts, 0.5, tuple(c.tolist()))
    torch.testing.assert_close(d, torch.tensor([0.0, 0.3, 0.5], dtype=torch.float64))


def test_volume_iou_of_two_cubes_overlapping_by_half():
    # unit cubes offset by 1/2 along x: intersection 1/2, union 3/2, IoU 1/3 (points drawn in the union's box)
    a = box_mesh(centre=(-0.25, 0.0, 0.0))
    b = box_mesh(centre=(0.25, 0.0, 0.0))
    se = math.sqrt((1 / 3) * (2 / 3) / 10_000)
    assert abs(volume_iou(a, b, n=10_000) - 1 / 3) < 4 * se
    assert abs(volume_iou(b, a, n=10_000) - 1 / 3) < 4 * se


def test_video_frames_are_rounded_to_8_bits():
    from scorelab.three.export import to_uint8

    frame = torch.tensor([0.0, 0.999, 1.2, 0.2, -0.1], dtype=torch.float64).reshape(1, 1, 5).expand(3, 1, 5)  # CHW
    assert to_uint8(frame)[0, :, 0].tolist() == [0, 255, 255, 51, 0]  # round(255 x), clamped; not truncated


def test_video_frames_in_the_image_layout_are_read_as_channels_first_even_when_narrow():
    from scorelab.three.export import to_uint8

    chw = torch.stack([torch.full((2, 4), v) for v in (0.0, 0.5, 1.0)])  # (3, H = 2, W = 4): W alone looks like C
    out = to_uint8(chw)
    assert out.shape == (2, 4, 3) and out[1, 3].tolist() == [0, 128, 255]
    hwc = torch.rand(6, 5, 3, generator=torch.Generator().manual_seed(0))
    assert to_uint8(hwc).shape == (6, 5, 3)


def test_geometry_metrics_refuse_a_non_positive_tau_and_no_sample_points():
    a, b = icosphere(1, 0.5), icosphere(2, 0.5)
    for tau in (0.0, -1.0):  # the F-score was 0 whatever the meshes
        with pytest.raises(ScorelabError, match=r"tau must be a distance > 0 \(world units\), got "):
            surface_metrics(a, b, n=100, tau=tau)
    with pytest.raises(ScorelabError, match=r"volume_iou needs an integer n >= 1 of sample points, got 0"):
        volume_iou(a, b, n=0)  # was an error from torch.cat


@pytest.mark.parametrize(
    "frame", [torch.rand(8, 8), torch.rand(2, 8, 8), torch.rand(1, 3, 8, 8), torch.zeros(3, 8, 8, dtype=torch.uint8)]
)
def test_video_frames_of_another_layout_or_dtype_are_refused(frame):
    from scorelab.three.export import to_uint8

    # (H, W) and (2, H, W) gave garbage of the wrong shape, (1, 3, H, W) failed in the writer, uint8 came out all white
    with pytest.raises(ScorelabError, match=r"a frame must be a float image in \[0, 1\], \(C, H, W\) or \(H, W, C\)"):
        to_uint8(frame)


def test_turntable_needs_a_whole_number_of_frames(tmp_path):
    with pytest.raises(ScorelabError, match=r"turntable needs a whole number of frames >= 1, got 2\.5"):
        turntable(lambda a: torch.zeros(3, 4, 4), 2.5, tmp_path / "t.gif")


def test_export_to_a_path_below_a_file_or_onto_a_folder_is_one_line(tmp_path):
    # a parent that is a file raised a raw FileExistsError from mkdir (NotADirectoryError one level deeper)
    (tmp_path / "file").write_text("not a folder\n")
    for path in (tmp_path / "file" / "x.obj", tmp_path / "file" / "sub" / "x.obj"):
        with pytest.raises(ScorelabError, match=r"cannot create folder .*: .*file is a file"):
            export_mesh(icosphere(1), path)
    (tmp_path / "dir.obj").mkdir()
    with pytest.raises(ScorelabError, match=r"dir\.obj is a folder; give a file name"):
        export_mesh(icosphere(1), tmp_path / "dir.obj")
    with pytest.raises(ScorelabError, match="is a file"):
        turntable(lambda a: torch.zeros(3, 4, 4), 2, tmp_path / "file" / "t.gif")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir.obj", "file"]  # nothing else written
