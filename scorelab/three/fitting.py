"""Fit each 3D representation to posed images by RGB + mask L2 (photometric reconstruction).

Every fitter takes training views (cameras, colours (N, 3, H, W) over a white background, masks (N, 1, H, W)) and
returns a `Fitted`: a renderer for new cameras, the number of optimiser steps, and a surface mesh where the
representation has one. Views are drawn at random each step from a torch.Generator, so a seed gives the same fit.
"""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from scorelab.determinism import deterministic
from scorelab.errors import ScorelabError
from scorelab.train.guard import NonFiniteGuard, all_finite

from .cameras import Cameras
from .dmtet import DMTet, laplacian_smoothing, marching_tets, normal_consistency, sdf_sign_loss
from .gaussians import Gaussians
from .mesh import Mesh, drop_degenerate_faces
from .raster import render_mesh
from .tets import regular_grid
from .voxels import VoxelGrid, trilinear

WHITE = (1.0, 1.0, 1.0)
RANGE_TOL = 1e-6  # rounding slack on the [0, 1] range of view colours and masks


@dataclass
class Views:
    cameras: Cameras
    color: torch.Tensor  # (N, 3, H, W) in [0, 1], over white
    mask: torch.Tensor  # (N, 1, H, W) in [0, 1]

    def __post_init__(self):
        n, h, w = len(self.cameras), self.cameras.height, self.cameras.width
        if self.color.shape != (n, 3, h, w) or self.mask.shape != (n, 1, h, w):
            raise ScorelabError(
                f"views need color (N, 3, H, W) and mask (N, 1, H, W) matching {n} cameras of {h}x{w}, got "
                f"{tuple(self.color.shape)} and {tuple(self.mask.shape)}"
            )
        for name, t in (("color", self.color), ("mask", self.mask)):
            if not t.is_floating_point():
                raise ScorelabError(f"views need float {name} images with values in [0, 1], got {t.dtype}")
            if ((t < -RANGE_TOL) | (t > 1 + RANGE_TOL)).any():  # NaN passes: the fitters skip non-finite steps
                seen = t[~t.isnan()]
                got = f"{seen.min().item():g}..{seen.max().item():g}"
                raise ScorelabError(f"views need {name} values in [0, 1], got {got}")

    def __len__(self) -> int:
        return len(self.cameras)

    def pick(self, idx: torch.Tensor) -> Views:
        i = idx.tolist()
        cams = Cameras(
            self.cameras.world_to_cam[i],
            self.cameras.focal[i],
            self.cameras.principal[i],
            self.cameras.width,
            self.cameras.height,
        )
        return Views(cams, self.color[i], self.mask[i])


@dataclass
class Fitted:
    render: Callable[[Cameras], tuple[torch.Tensor, torch.Tensor]]  # cameras -> colour (N,3,H,W), mask (N,1,H,W)
    iterations: int
    mesh: Mesh | None = None
    skipped_steps: int = 0  # non-finite steps skipped (scorelab.train.guard)


def _update(opt: torch.optim.Optimizer, loss: torch.Tensor, guard: NonFiniteGuard, step: int) -> None:
    """Backward and one optimiser step, unless the loss or a gradient is not finite: then the step is skipped and
    counted, and MAX_BAD_STEPS in a row stop the fit (scorelab.train.guard). A loss that depends on no parameter (a
    render in which nothing is drawn, e.g. every voxel pruned) gives no gradient and the step changes nothing."""
    opt.zero_grad(set_to_none=True)
    if bool(torch.isfinite(loss)) and loss.requires_grad:
        loss.backward()
    if all_finite(loss, (p for group in opt.param_groups for p in group["params"])):
        opt.step()
        guard.good()
    else:
        guard.bad(step)


def _loss(color, mask, views: Views) -> torch.Tensor:
    return F.mse_loss(color, views.color) + F.mse_loss(mask, views.mask)


def _batches(n_views: int, per_step: int, steps: int, generator: torch.Generator):
    for _ in range(steps):
        yield torch.randperm(n_views, generator=generator)[:per_step]


def _progress(steps: int, desc: str, progress: bool):
    return tqdm(range(steps), desc=desc, disable=not progress, leave=False)


def _cosine(step: int, steps: int, low: float = 0.1) -> float:
    """Learning-rate factor: cosine decay from 1 to `low` (Loshchilov & Hutter 2017, SGDR, eq. 5, one cycle)."""
    return low + (1 - low) * 0.5 * (1 + math.cos(math.pi * step / max(steps, 1)))


def _tv(volume: torch.Tensor) -> torch.Tensor:
    """Mean squared difference between neighbouring cells of a (C, R, R, R) volume: the squared form of total
    variation (Rudin, Osher & Fatemi 1992), a smoothness prior on voxel grids as in Plenoxels (Fridovich-Keil et al.
    2022), which take the root."""
    return sum((volume.diff(dim=d) ** 2).mean() for d in (1, 2, 3))


def _deterministic(fit):
    """Run a fitter under `scorelab.determinism.deterministic`, so a seed gives the same fit on CPU."""

    @functools.wraps(fit)
    def wrapped(*args, **kwargs):
        with deterministic():
            return fit(*args, **kwargs)

    return wrapped


def _check_steps(steps) -> None:
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 0:
        raise ScorelabError(f"steps must be a whole number >= 0 (0 gives the initial state), got {steps!r}")


def _set_lr(opt: torch.optim.Optimizer, base: list[float], factor: float) -> None:
    for group, lr in zip(opt.param_groups, base, strict=True):
        group["lr"] = lr * factor


@_deterministic
def fit_voxels(
    train: Views,
    *,
    resolution: int = 48,
    steps: int = 800,
    rays: int = 4096,
    samples: int = 96,
    lr: float = 0.1,
    tv: float = 1e-4,
    generator: torch.Generator | None = None,
    progress: bool = True,
) -> Fitted:
    """A `VoxelGrid` rendered by `ray_march` on `rays` random pixels per step, plus a squared-TV prior on the raw
    density and colour. Its 'surface' is not extracted (no mesh)."""
    _check_steps(steps)
    guard = NonFiniteGuard("fit voxels", log=tqdm.write)
    g = generator or torch.Generator().manual_seed(0)
    grid = VoxelGrid(resolution, density_raw=torch.full((1, resolution, resolution, resolution), -3.0))
    opt = torch.optim.Adam(grid.parameters(), lr=lr)
    n, hw = len(train), train.cameras.height * train.cameras.width
    colors, masks = train.color.reshape(n, 3, hw), train.mask.reshape(n, 1, hw)
    per_view = max(rays // n, 1)
    for step in _progress(steps, "voxels", progress):
        _set_lr(opt, [lr], _cosine(step, steps))
        pix = torch.randint(0, hw, (n, per_view), generator=g)
        out = grid.render(train.cameras, samples=samples, pixels=pix, normals=False, background=WHITE)
        idx3, idx1 = pix[:, None].expand(-1, 3, -1), pix[:, None]
        loss = F.mse_loss(out["color"], colors.gather(2, idx3)) + F.mse_loss(out["mask"], masks.gather(2, idx1))
        loss = loss + tv * (_tv(grid.density_raw) + _tv(grid.color_raw))
        _update(opt, loss, guard, step)

    @torch.no_grad()
    def render(cameras: Cameras):
        out = grid.render(cameras, samples=samples, normals=False, background=WHITE)
        return out["color"], out["mask"]

    return Fitted(render, steps, skipped_steps=guard.skipped)


@_deterministic
def fit_splats(
    train: Views,
    *,
    resolution: int = 40,
    steps: int = 600,
    views_per_step: int = 1,
    lr: float = 0.3,
    tile: int = 8,
    init_density: float = 0.3,
    min_density: float = 0.05,
    prune_density: float = 1.0,
    prune_after: float = 0.25,
    kernel_std: float = 0.5,
    generator: torch.Generator | None = None,
    progress: bool = True,
) -> Fitted:
    """A `VoxelGrid` rendered by EWA voxel splatting (`VoxelGrid.splat`), whole views per step, squared-TV prior.
    The grid starts at `init_density` everywhere. Cells below `min_density` are not drawn; after the first
    `prune_after` of the steps the threshold rises to `prune_density`, which removes the faint haze in free space
    and most of the drawing cost (pruning, as in Plenoxels). Undrawn cells get no gradient, so they stay empty."""
    _check_steps(steps)
    guard = NonFiniteGuard("fit voxel splats", log=tqdm.write)
    g = generator or torch.Generator().manual_seed(0)
    raw = math.log(math.expm1(init_density))  # softplus^-1
    grid = VoxelGrid(resolution, density_raw=torch.full((1, resolution, resolution, resolution), raw))
    opt = torch.optim.Adam(grid.parameters(), lr=lr)
    opts = {"background": WHITE, "tile": tile, "min_density": min_density, "kernel_std": kernel_std}
    for step, idx in zip(
        _progress(steps, "voxel splats", progress), _batches(len(train), views_per_step, steps, g), strict=True
    ):
        _set_lr(opt, [lr], _cosine(step, steps))
        if step >= prune_after * steps:
            opts["min_density"] = max(min_density, prune_density)
        batch = train.pick(idx)
        out = grid.splat(batch.cameras, **opts)
        loss = _loss(out["color"], out["mask"], batch)
        _update(opt, loss, guard, step)

    @torch.no_grad()
    def render(cameras: Cameras):
        out = grid.splat(cameras, **opts)
        return out["color"], out["mask"]

    return Fitted(render, steps, skipped_steps=guard.skipped)


@_deterministic
def fit_gaussians(
    train: Views,
    *,
    count: int = 8000,
    steps: int = 300,
    views_per_step: int = 4,
    generator: torch.Generator | None = None,
    progress: bool = True,
) -> Fitted:
    """3D Gaussians (degree-1 SH) initialised uniformly in the box, no densification; learning rates per parameter
    group as in Kerbl et al. 2023 (sec. 7.1), raised for a short schedule."""
    _check_steps(steps)
    guard = NonFiniteGuard("fit Gaussians", log=tqdm.write)
    g = generator or torch.Generator().manual_seed(0)
    model = Gaussians.random_in_box(count, half=0.45, scale=0.02, opacity=0.1, degree=1, generator=g)
    groups = [
        (model.means, 2e-3),
        (model.log_scales, 1e-2),
        (model.quats, 5e-3),
        (model.opacity_logits, 5e-2),
        (model.sh, 1e-2),
    ]
    opt = torch.optim.Adam([{"params": [p], "lr": lr} for p, lr in groups])
    base = [lr for _, lr in groups]
    for step, idx in zip(
        _progress(steps, "gaussians", progress), _batches(len(train), views_per_step, steps, g), strict=True
    ):
        _set_lr(opt, base, _cosine(step, steps))
        batch = train.pick(idx)
        out = model.render(batch.cameras, background=WHITE)
        loss = _loss(out["color"], out["mask"], batch)
        _update(opt, loss, guard, step)

    @torch.no_grad()
    def render(cameras: Cameras):
        out = model.render(cameras, background=WHITE)
        return out["color"], out["mask"]

    return Fitted(render, steps, skipped_steps=guard.skipped)


class TexturedDMTet(torch.nn.Module):
    """DMTet geometry whose SDF is a per-vertex value plus coarse dense grids sampled at the vertices (a
    multi-resolution parameterisation: the coarse grids move whole regions coherently, the per-vertex values add
    detail), and a colour field: vertex colours = sigmoid(trilinear(colour logits volume))."""

    def __init__(self, resolution: int, color_resolution: int, init_radius: float, coarse=(8, 16, 32)):
        super().__init__()
        grid = regular_grid(resolution)
        self.dmtet = DMTet(grid, grid.vertices.norm(dim=1) - init_radius)
        self.lo, self.hi = float(grid.vertices.min()), float(grid.vertices.max())
        self.coarse = torch.nn.ParameterList([torch.nn.Parameter(torch.zeros(1, r, r, r)) for r in coarse])
        r = color_resolution
        self.color_raw = torch.nn.Parameter(torch.zeros(3, r, r, r))

    def sdf(self) -> torch.Tensor:
        base = self.dmtet.base
        return self.dmtet.sdf + sum(trilinear(v, base, self.lo, self.hi)[:, 0] for v in self.coarse)

    def mesh(self) -> Mesh:
        v, f = marching_tets(self.dmtet.grid, self.dmtet.positions(), self.sdf())
        colors = torch.sigmoid(trilinear(self.color_raw, v.clamp(-0.5, 0.5)))
        return Mesh(v, f, colors)


@_deterministic
def fit_dmtet(
    train: Views,
    *,
    resolution: int = 64,
    color_resolution: int = 32,
    steps: int = 150,
    views_per_step: int = 4,
    lr: float = 0.01,
    color_lr: float = 0.1,
    init_radius: float = 0.45,
    sign_weight: float = 0.01,
    smooth_weight: float = 0.0,
    normal_weight: float = 0.2,
    coarse=(8, 16, 32),
    adam_eps: float = 1e-8,
    generator: torch.Generator | None = None,
    progress: bool = True,
) -> Fitted:
    """DMTet on a regular tet grid, initialised as a sphere, rendered by the rasterizer (antialiased silhouettes give
    the shape gradient), with a colour volume, the SDF sign-flip regulariser and optional mesh smoothness terms."""
    _check_steps(steps)
    guard = NonFiniteGuard("fit DMTet", log=tqdm.write)
    g = generator or torch.Generator().manual_seed(0)
    model = TexturedDMTet(resolution, color_resolution, init_radius, coarse)
    opt = torch.optim.Adam(
        [
            {"params": [model.dmtet.sdf, *model.coarse], "lr": lr},
            {"params": [model.dmtet.deform], "lr": lr},
            {"params": [model.color_raw], "lr": color_lr},
        ],
        eps=adam_eps,
    )
    base = [lr, lr, color_lr]
    for step, idx in zip(
        _progress(steps, "DMTet", progress), _batches(len(train), views_per_step, steps, g), strict=True
    ):
        _set_lr(opt, base, _cosine(step, steps))
        batch = train.pick(idx)
        mesh = model.mesh()
        out = render_mesh(mesh, batch.cameras, background=WHITE)
        loss = _loss(out["color"], out["mask"], batch) + sign_weight * sdf_sign_loss(model.dmtet.grid, model.sdf())
        if smooth_weight:
            loss = loss + smooth_weight * laplacian_smoothing(mesh.vertices, mesh.faces)
        if normal_weight:
            loss = loss + normal_weight * normal_consistency(mesh.vertices, mesh.faces)
        _update(opt, loss, guard, step)

    with torch.no_grad():
        final = model.mesh()
    final = drop_degenerate_faces(Mesh(final.vertices.detach(), final.faces, final.vertex_colors.detach()))

    @torch.no_grad()
    def render(cameras: Cameras):
        out = render_mesh(final, cameras, background=WHITE)
        return out["color"], out["mask"]

    return Fitted(render, steps, final, guard.skipped)


FITTERS = {"voxels": fit_voxels, "voxel_splats": fit_splats, "gaussians": fit_gaussians, "dmtet": fit_dmtet}
