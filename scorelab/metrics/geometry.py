"""Surface and volume metrics between meshes, memory-bounded by chunking.

Chamfer-L1 = (mean_a min_b |a - b| + mean_b min_a |a - b|) / 2 and Chamfer-L2 the same with squared distances, over
area-weighted surface samples; F-score at tau (Tatarchenko et al. 2019): harmonic mean of the share of predicted
samples within tau of the reference and of reference samples within tau of the prediction; volumetric IoU from
inside tests by the generalised winding number (Jacobson et al. 2013) at points uniform in the union of bounding
boxes; normal consistency: mean |cos| between a sample's normal and its nearest neighbour's, both ways.

An empty predicted mesh scores the worst value: Chamfer = inf, F-score = 0, IoU = 0, normal consistency = 0, mean
distance to an analytic surface = inf. The reference must be a valid non-empty mesh (ScorelabError otherwise).
Sampled Chamfer has a floor from sampling alone, so where a surface is analytic also report the exact mean distance
of samples to it (`distance_to_sphere`, `distance_to_torus`).
"""

from __future__ import annotations

import math
import numbers

import torch

from ..errors import ScorelabError
from ..three.mesh import Mesh, face_areas, sample_surface, validate_mesh


def nearest(a: torch.Tensor, b: torch.Tensor, *, block: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """For each point of a (N, 3): the distance to and index of its nearest point in b (M, 3), exact, no gradient.
    On CPU by scipy's k-d tree (memory O(N + M), O(N log M) time: 100k x 100k in about a second where brute force
    takes minutes); on other devices by nearest_blocked (torch.cdist in blocks, on the tensors' device)."""
    if a.device.type != "cpu":
        return nearest_blocked(a, b, block=block)
    from scipy.spatial import cKDTree

    d, i = cKDTree(b.detach().double().numpy()).query(a.detach().double().numpy(), workers=-1)
    return torch.from_numpy(d), torch.from_numpy(i).long()


def nearest_blocked(a: torch.Tensor, b: torch.Tensor, *, block: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """Brute-force nearest neighbours by torch.cdist over block x block tiles, keeping a running minimum, so memory is
    O(block^2 + N) whatever N and M are. Returns float64 distances and int64 indices on a's device."""
    a, b = a.detach(), b.detach()
    best_d = torch.full((a.shape[0],), float("inf"), dtype=torch.float64, device=a.device)
    best_i = torch.zeros(a.shape[0], dtype=torch.long, device=a.device)
    for i in range(0, a.shape[0], block):
        ai = a[i : i + block].double()
        for j in range(0, b.shape[0], block):
            d, k = torch.cdist(ai, b[j : j + block].double()).min(1)
            better = d < best_d[i : i + block]
            best_d[i : i + block] = torch.where(better, d, best_d[i : i + block])
            best_i[i : i + block] = torch.where(better, k + j, best_i[i : i + block])
    return best_d, best_i


def _samples(mesh: Mesh, n: int, seed: int):
    return sample_surface(mesh, n, torch.Generator().manual_seed(seed))


def _no_area(mesh: Mesh) -> bool:
    return face_areas(mesh.vertices.detach(), mesh.faces).sum().item() == 0


def surface_metrics(pred: Mesh, ref: Mesh, *, n: int = 100_000, tau: float | None = None, seed: int = 0) -> dict:
    """Chamfer-L1, Chamfer-L2, F-score at tau (default 1% of the reference's largest bounding-box side) and normal
    consistency from n samples on each surface."""
    validate_mesh(ref, name="reference mesh")
    if tau is None:
        tau = 0.01 * (ref.vertices.max(0).values - ref.vertices.min(0).values).max().item()
    elif not 0 < tau < math.inf:  # tau <= 0 gives F-score 0 whatever the meshes
        raise ScorelabError(f"tau must be a distance > 0 (world units), got {tau}")
    pred = validate_mesh(pred, name="predicted mesh", allow_empty=True, allow_degenerate=True)
    if pred.is_empty or _no_area(pred):  # nothing to sample: the worst value, not a crash
        return {"chamfer_l1": math.inf, "chamfer_l2": math.inf, "fscore": 0.0, "normal_consistency": 0.0, "tau": tau}
    pa, na = _samples(pred, n, seed)
    pb, nb = _samples(ref, n, seed + 1)
    d_ab, i_ab = nearest(pa, pb)
    d_ba, i_ba = nearest(pb, pa)
    precision = (d_ab < tau).double().mean().item()
    recall = (d_ba < tau).double().mean().item()
    cos_ab = (na.double() * nb[i_ab].double()).sum(1).abs()
    cos_ba = (nb.double() * na[i_ba].double()).sum(1).abs()
    return {
        "chamfer_l1": 0.5 * (d_ab.mean() + d_ba.mean()).item(),
        "chamfer_l2": 0.5 * (d_ab.square().mean() + d_ba.square().mean()).item(),
        "fscore": 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall),
        "normal_consistency": 0.5 * (cos_ab.mean() + cos_ba.mean()).item(),
        "tau": tau,
    }


def winding_number(mesh: Mesh, points: torch.Tensor, *, max_pairs: int = 1_000_000) -> torch.Tensor:
    """Generalised winding number at each point (Jacobson et al. 2013, eq. 3): sum of the faces' signed solid angles
    / 4 pi, the solid angle of a triangle by Van Oosterom & Strackee 1983 (tan(omega / 2) = det / den); 1 inside a
    closed outward mesh, 0 outside, fractional near holes. Points are taken in chunks of max_pairs / F, so memory is
    O(max_pairs) (point, face) pairs."""
    tri = mesh.vertices[mesh.faces].detach().float()  # (F, 3, 3); float32 is ample for a 0.5 threshold
    points = points.to(tri.device)
    chunk = max(1, max_pairs // max(1, tri.shape[0]))
    out = []
    for start in range(0, points.shape[0], chunk):
        r = tri[None] - points[start : start + chunk, None, None].float()  # (P, F, 3, 3)
        a, b, c = r.unbind(2)
        la, lb, lc = a.norm(dim=-1), b.norm(dim=-1), c.norm(dim=-1)
        det = (a * torch.linalg.cross(b, c, dim=-1)).sum(-1)
        den = la * lb * lc + (a * b).sum(-1) * lc + (b * c).sum(-1) * la + (c * a).sum(-1) * lb
        out.append((2 * torch.atan2(det, den)).sum(1) / (4 * math.pi))
    return torch.cat(out)


def volume_iou(pred: Mesh, ref: Mesh, *, n: int = 10_000, seed: int = 0) -> float:
    """Intersection over union of the enclosed volumes, from n points uniform in the union of the bounding boxes."""
    validate_mesh(ref, name="reference mesh")
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
        raise ScorelabError(f"volume_iou needs an integer n >= 1 of sample points, got {n!r}")
    if validate_mesh(pred, name="predicted mesh", allow_empty=True, allow_degenerate=True).is_empty:
        return 0.0
    lo = torch.minimum(pred.vertices.min(0).values, ref.vertices.min(0).values).double()
    hi = torch.maximum(pred.vertices.max(0).values, ref.vertices.max(0).values).double()
    pts = lo + (hi - lo) * torch.rand(n, 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    inside_a, inside_b = winding_number(pred, pts) > 0.5, winding_number(ref, pts) > 0.5
    union = (inside_a | inside_b).sum().item()
    return (inside_a & inside_b).sum().item() / union if union else 0.0


def distance_to_sphere(points: torch.Tensor, radius: float, centre=(0.0, 0.0, 0.0)) -> torch.Tensor:
    """(P,) exact float64 distance of each point to the sphere: | |p - c| - r |."""
    c = torch.tensor(centre, dtype=torch.float64, device=points.device)
    return ((points.double() - c).norm(dim=1) - radius).abs()


def distance_to_torus(points: torch.Tensor, major: float, minor: float) -> torch.Tensor:
    """(P,) exact distance to the torus about the z axis through the origin: | |(rho - R, z)| - r |, rho = |(x, y)|."""
    p = points.double()
    return (torch.stack([p[:, :2].norm(dim=1) - major, p[:, 2]], 1).norm(dim=1) - minor).abs()


def mean_distance_to_surface(mesh: Mesh, distance, *, n: int = 100_000, seed: int = 0) -> float:
    """Mean exact distance from n area-weighted samples of the mesh to an analytic surface, `distance(points) -> (P,)`
    (e.g. lambda p: distance_to_sphere(p, 0.6)). Unlike sampled Chamfer it has no floor from sampling the reference:
    its only error is the Monte Carlo error of the mean over the mesh. inf for an empty mesh."""
    mesh = validate_mesh(mesh, name="mesh", allow_empty=True, allow_degenerate=True)
    if mesh.is_empty or _no_area(mesh):
        return math.inf
    return distance(_samples(mesh, n, seed)[0]).mean().item()
