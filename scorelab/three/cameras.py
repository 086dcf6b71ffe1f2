"""Pinhole cameras in one convention (docs/cameras.md), with conversions at the edges.

World: right-handed, +z up, units of the object box [-0.5, 0.5]^3.
Spherical: polar theta in [0, pi] measured from +z (0 = top view, pi/2 = equator), azimuth phi
measured from +x towards +y, radius r > 0; position = r (sin t cos p, sin t sin p, cos t).
This is the Zero-1-to-3 parameterisation (Liu et al. 2023, sec. 3.1) with its z-up world.
Camera space: OpenCV, x right, y down, z forward (depth > 0 in front). Pixel (i, j) covers
[j, j+1] x [i, i+1]; its centre is (j + 0.5, i + 0.5) in (u, v).
"""

from __future__ import annotations

import math
import numbers
import operator
from dataclasses import dataclass

import torch

from scorelab.errors import ScorelabError

ZERO123_FOV_DEG = 49.1


@dataclass
class Cameras:
    """A batch of N pinhole cameras sharing one image size.

    world_to_cam: (N, 4, 4) rigid transforms, OpenCV camera axes.
    focal: (N, 2) (fx, fy) in pixels; principal: (N, 2) (cx, cy) in pixels.
    """

    world_to_cam: torch.Tensor
    focal: torch.Tensor
    principal: torch.Tensor
    width: int
    height: int

    def __post_init__(self):
        # shapes only (no values), so building cameras never waits for a device
        w2c = self.world_to_cam
        n = w2c.shape[0] if isinstance(w2c, torch.Tensor) and w2c.ndim == 3 else -1
        for name, t, shape in (
            ("world_to_cam", self.world_to_cam, (n, 4, 4)),
            ("focal", self.focal, (n, 2)),
            ("principal", self.principal, (n, 2)),
        ):
            if not isinstance(t, torch.Tensor) or tuple(t.shape) != shape or not t.is_floating_point():
                got = f"{t.dtype} {tuple(t.shape)}" if isinstance(t, torch.Tensor) else type(t).__name__
                want = str(shape) if n >= 0 else "(N, 4, 4)"
                raise ScorelabError(
                    f"Cameras: {name} must be a float tensor of shape {want} (world_to_cam (N, 4, 4), "
                    f"focal (N, 2) = (fx, fy), principal (N, 2) = (cx, cy)), got {got}"
                )
        check_image_size(self.width, self.height)

    def __len__(self) -> int:
        return self.world_to_cam.shape[0]

    def __getitem__(self, idx) -> Cameras:
        if isinstance(idx, numbers.Integral):  # one camera, still a batch of one (numpy integers too)
            i = operator.index(idx)
            if not -len(self) <= i < len(self):
                raise IndexError(f"camera index {i} out of range for {len(self)} cameras")
            idx = slice(i % len(self), i % len(self) + 1)
        return Cameras(self.world_to_cam[idx], self.focal[idx], self.principal[idx], self.width, self.height)

    @property
    def device(self) -> torch.device:
        return self.world_to_cam.device

    def to(self, device=None, dtype=None) -> Cameras:
        return Cameras(
            self.world_to_cam.to(device, dtype),
            self.focal.to(device, dtype),
            self.principal.to(device, dtype),
            self.width,
            self.height,
        )

    @property
    def rotation(self) -> torch.Tensor:
        """(N, 3, 3) world-to-camera rotation W."""
        return self.world_to_cam[:, :3, :3]

    @property
    def centre(self) -> torch.Tensor:
        """(N, 3) camera centres in world coordinates: -R^T t."""
        r, t = self.world_to_cam[:, :3, :3], self.world_to_cam[:, :3, 3]
        return -(r.transpose(1, 2) @ t.unsqueeze(-1)).squeeze(-1)


def check_image_size(width, height) -> None:
    if not isinstance(width, numbers.Integral) or not isinstance(height, numbers.Integral):
        raise ScorelabError(f"image size must be whole pixels, got {width}x{height}")
    if width <= 0 or height <= 0:
        raise ScorelabError(f"image size must be positive, got {width}x{height}")


def check_cameras(cameras, who: str) -> None:
    """A renderer's cameras: a non-empty Cameras batch."""
    if not isinstance(cameras, Cameras):
        raise ScorelabError(
            f"{who} needs cameras as a Cameras batch (e.g. orbit_cameras(...)), got {type(cameras).__name__}"
        )
    if len(cameras) == 0:
        raise ScorelabError(f"{who} needs at least one camera")


def _check_finite(name: str, value: torch.Tensor) -> None:
    if not torch.isfinite(value).all():
        raise ScorelabError(f"{name} must be finite, got {value.flatten()[:4].tolist()}...")


def _spherical(theta, phi, radius) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(theta, phi, radius) as broadcast float64 tensors, checked: finite angles, theta in [0, pi], radius > 0."""
    vals = [torch.as_tensor(v, dtype=torch.float64) for v in (theta, phi, radius)]
    try:
        theta, phi, radius = torch.broadcast_tensors(*vals)
    except RuntimeError:
        shapes = ", ".join(str(tuple(v.shape)) for v in vals)
        raise ScorelabError(f"camera theta, phi and radius must broadcast to one shape, got {shapes}") from None
    _check_finite("camera angles", torch.stack([theta, phi]))
    if theta.numel() and (theta.min() < -1e-6 or theta.max() > math.pi + 1e-6):  # 1e-6: pi rounded to float32
        bad = theta.min() if theta.min() < -1e-6 else theta.max()
        raise ScorelabError(
            f"camera polar angle theta must be in [0, pi] radians (0 = top view, pi/2 = the equator), got {bad:g}"
            + ("; degrees? multiply by pi / 180" if bad > math.pi else "")
        )
    _check_finite("camera radius", radius)
    if (radius <= 0).any():
        raise ScorelabError(f"camera radius must be > 0, got {radius.min().item():g}")
    return theta, phi, radius


def spherical_to_cartesian(theta, phi, radius) -> torch.Tensor:
    """Polar angle theta in [0, pi] (from +z), azimuth phi (from +x towards +y), radius > 0 -> (..., 3) position."""
    theta, phi, radius = _spherical(theta, phi, radius)
    st = torch.sin(theta)
    return torch.stack([radius * st * torch.cos(phi), radius * st * torch.sin(phi), radius * torch.cos(theta)], -1)


def cartesian_to_spherical(position: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(..., 3) -> (theta in [0, pi], phi in [0, 2 pi), radius)."""
    position = position.to(torch.float64)
    radius = position.norm(dim=-1)
    theta = torch.acos((position[..., 2] / radius.clamp_min(1e-300)).clamp(-1, 1))
    phi = torch.atan2(position[..., 1], position[..., 0]) % (2 * math.pi)
    phi = torch.where(phi >= 2 * math.pi, phi - 2 * math.pi, phi)  # -1e-17 % 2 pi rounds to 2 pi itself
    return theta, phi, radius


def look_at(eye: torch.Tensor, target: torch.Tensor | None = None, up=(0.0, 0.0, 1.0)) -> torch.Tensor:
    """World-to-camera (N, 4, 4), OpenCV axes, camera at eye looking at target with world up `up`.

    When the view direction is parallel to `up` (a pole), the camera's x axis falls back to forward x (+y): at
    theta = 0 that is +x, the limit of the pose as theta -> 0 along phi = 3 pi / 2 (no single choice is the limit
    along every phi).
    """
    eye = torch.as_tensor(eye, dtype=torch.float64)
    target = torch.zeros(3, dtype=torch.float64) if target is None else torch.as_tensor(target, dtype=torch.float64)
    up_t = torch.as_tensor(up, dtype=torch.float64)
    for name, t in (("eye", eye), ("target", target), ("up", up_t)):
        if t.ndim == 0 or t.shape[-1] != 3:
            raise ScorelabError(f"look_at needs {name} as 3D points (..., 3), got shape {tuple(t.shape)}")
        _check_finite(f"look_at {name}", t)
    eye = eye.reshape(-1, 3)
    try:
        target, up_t = target.expand_as(eye), up_t.expand_as(eye)
    except RuntimeError:
        raise ScorelabError(
            f"look_at needs target and up as one point (3,) or one per eye {tuple(eye.shape)}, got "
            f"{tuple(target.shape)} and {tuple(up_t.shape)}"
        ) from None
    if (up_t.norm(dim=-1) == 0).any():
        raise ScorelabError("look_at needs a nonzero up direction")
    forward = target - eye
    dist = forward.norm(dim=-1, keepdim=True)
    if (dist <= 0).any():
        raise ScorelabError("camera eye and target must differ")
    forward = forward / dist
    right = torch.linalg.cross(forward, up_t)  # OpenCV x = forward x up  (y = down = -up projected)
    degenerate = right.norm(dim=-1, keepdim=True) < 1e-9
    fallback = torch.linalg.cross(forward, torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64).expand_as(eye))
    right = torch.where(degenerate, fallback, right)
    right = right / right.norm(dim=-1, keepdim=True)
    down = torch.linalg.cross(forward, right)
    rot = torch.stack([right, down, forward], dim=1)  # rows: camera axes in world coordinates
    w2c = torch.eye(4, dtype=torch.float64).repeat(eye.shape[0], 1, 1)
    w2c[:, :3, :3] = rot
    w2c[:, :3, 3] = -(rot @ eye.unsqueeze(-1)).squeeze(-1)
    return w2c


def focal_from_fov(fov_deg: float, size: int) -> float:
    """Focal length in pixels for a field of view spanning `size` pixels: f = (size / 2) / tan(fov / 2)."""
    if not 0 < fov_deg < 180:
        raise ScorelabError(f"field of view must be in (0, 180) degrees, got {fov_deg}")
    return 0.5 * size / math.tan(math.radians(fov_deg) / 2)


def orbit_cameras(
    theta,
    phi,
    radius,
    *,
    fov_deg: float = ZERO123_FOV_DEG,
    width: int = 64,
    height: int | None = None,
    dtype=torch.float32,
    device=None,
) -> Cameras:
    """Cameras on spheres around the origin, looking at it, z up; fov spans the image width."""
    height = width if height is None else height
    check_image_size(width, height)
    eye = spherical_to_cartesian(theta, phi, radius).reshape(-1, 3)
    w2c = look_at(eye)
    n = eye.shape[0]
    f = focal_from_fov(fov_deg, width)
    focal = torch.full((n, 2), f, dtype=torch.float64)
    principal = torch.tensor([[width / 2, height / 2]], dtype=torch.float64).repeat(n, 1)
    return Cameras(w2c, focal, principal, width, height).to(device, dtype)


def world_to_camera(cameras: Cameras, points: torch.Tensor) -> torch.Tensor:
    """(P, 3) world points -> (N, P, 3) camera-space points."""
    if not isinstance(points, torch.Tensor) or points.ndim != 2 or points.shape[1] != 3:
        got = tuple(points.shape) if isinstance(points, torch.Tensor) else type(points).__name__
        raise ScorelabError(f"points must be a (P, 3) tensor of world points, got {got}")
    if points.dtype != cameras.world_to_cam.dtype:
        raise ScorelabError(
            f"points ({points.dtype}) and cameras ({cameras.world_to_cam.dtype}) must share a dtype; "
            "use cameras.to(dtype=points.dtype)"
        )
    r, t = cameras.world_to_cam[:, :3, :3], cameras.world_to_cam[:, :3, 3]
    return torch.einsum("nij,pj->npi", r, points) + t[:, None, :]


def project(cameras: Cameras, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(P, 3) world points -> pixel coordinates (N, P, 2) as (u, v), and depth (N, P)."""
    cam = world_to_camera(cameras, points)
    z = cam[..., 2]
    uv = cam[..., :2] / z.unsqueeze(-1) * cameras.focal[:, None, :] + cameras.principal[:, None, :]
    return uv, z


def pixel_grid(cameras: Cameras) -> torch.Tensor:
    """(H, W, 2) pixel-centre coordinates (u, v) = (j + 0.5, i + 0.5)."""
    dev, dt = cameras.device, cameras.focal.dtype
    v, u = torch.meshgrid(
        torch.arange(cameras.height, device=dev, dtype=dt) + 0.5,
        torch.arange(cameras.width, device=dev, dtype=dt) + 0.5,
        indexing="ij",
    )
    return torch.stack([u, v], -1)


def generate_rays(cameras: Cameras) -> tuple[torch.Tensor, torch.Tensor]:
    """Ray origins and unit directions through pixel centres, each (N, H, W, 3) in world coordinates."""
    uv = pixel_grid(cameras)  # (H, W, 2)
    xy = (uv[None] - cameras.principal[:, None, None, :]) / cameras.focal[:, None, None, :]
    d_cam = torch.cat([xy, torch.ones_like(xy[..., :1])], -1)
    d_world = torch.einsum("nji,nhwj->nhwi", cameras.rotation, d_cam)  # R^T d
    d_world = d_world / d_world.norm(dim=-1, keepdim=True)
    origins = cameras.centre[:, None, None, :].expand_as(d_world)
    return origins, d_world


def relative_pose(theta_a, phi_a, r_a, theta_b, phi_b, r_b) -> torch.Tensor:
    """Zero-1-to-3 relative pose from view a to view b: (..., 4) = (dtheta, sin dphi, cos dphi, dr)."""
    # Liu et al. 2023 (Zero-1-to-3), sec. 3.1: the embedding of the relative viewpoint
    vals = [*_spherical(theta_a, phi_a, r_a), *_spherical(theta_b, phi_b, r_b)]
    try:
        theta_a, phi_a, r_a, theta_b, phi_b, r_b = torch.broadcast_tensors(*vals)
    except RuntimeError:
        shapes = ", ".join(str(tuple(v.shape)) for v in vals)
        raise ScorelabError(f"the two views' angles and radii must broadcast to one shape, got {shapes}") from None
    d_phi = phi_b - phi_a
    return torch.stack([theta_b - theta_a, torch.sin(d_phi), torch.cos(d_phi), r_b - r_a], -1)
