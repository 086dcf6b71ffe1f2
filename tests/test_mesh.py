"""Meshes, export and geometry metrics."""

import math

import imageio.v3 as iio
import pytest
import torch
import trimesh

from scorelab.errors import ScorelabError
from scorelab.metrics.geometry import distance_to_sphere, surface_metrics, volume_iou, winding_number
from scorelab.three.export import export_mesh, turntable
from scorelab.three.mesh import (
    Mesh,
    euler_characteristic,
    icosphere,
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
    }
    for name, mesh in cases.items():
        with pytest.raises(ScorelabError) as err:
            validate_mesh(mesh, name=name)
        assert "\n" not in str(err.value) and name in str(err.value)
    with pytest.raises(ScorelabError, match="allowed: .glb, .obj, .ply"):
        export_mesh(icosphere(1), tmp_path / "x.stl")
    (tmp_path / "junk.obj").write_text("this is not a mesh\n")
    with pytest.raises(ScorelabError):
        load_mesh(tmp_path / "junk.obj")
    with pytest.raises(ScorelabError, match="does not exist"):
        load_mesh(tmp_path / "missing.ply")


def test_chamfer_floor_exact_distance_and_fscore():
    a, b = icosphere(5, 0.6), icosphere(5, 0.6)
    m = surface_metrics(a, b, n=100_000)
    # two independent 100k samplings of a radius-0.6 sphere differ by about 0.0034 (the sampling floor)
    assert 0.0025 < m["chamfer_l1"] < 0.0045
    assert m["fscore"] > 0.999 and m["normal_consistency"] > 0.999
    # exact distance of the icosphere's surface to the true sphere: at most the sag of a flat triangle with its
    # vertices on the sphere, r - sqrt(r^2 - rho^2), with circumradius rho <= longest edge / sqrt(3)
    pts, _ = sample_surface(a, 20_000, torch.Generator().manual_seed(2))
    e = a.vertices[a.faces[:, [0, 1, 2]]] - a.vertices[a.faces[:, [1, 2, 0]]]
    longest = e.norm(dim=-1).max().item()
    sag = 0.6 - math.sqrt(0.6**2 - longest**2 / 3)
    assert distance_to_sphere(pts, 0.6).max() <= sag * (1 + 1e-4)
    shifted = Mesh(a.vertices + torch.tensor([0.05, 0, 0]), a.faces)
    assert surface_metrics(shifted, b, n=20_000)["fscore"] < 0.5
    worst = surface_metrics(EMPTY, b)
    assert worst["chamfer_l1"] == math.inf and worst["fscore"] == 0 and worst["normal_consistency"] == 0


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
