"""Mesh files through trimesh (GLB, OBJ, PLY with vertex colours) and turntable videos through imageio (GIF, MP4).
Files are written to a temporary name in the same directory and renamed, so a crash never leaves half a file."""

from __future__ import annotations

import numbers
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from scorelab.errors import ScorelabError
from scorelab.outputs import as_umask_allows, check_writable_dir

from .mesh import Mesh, validate_mesh

MESH_FORMATS = (".glb", ".obj", ".ply")
VIDEO_FORMATS = (".gif", ".mp4")


def _atomic(path: Path, suffix: str, write: Callable[[str], None]) -> Path:
    if path.is_dir():
        raise ScorelabError(f"{path} is a folder; give a file name")
    check_writable_dir(path.parent)  # a file where a folder should be, or no permission: one line
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        as_umask_allows(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def export_mesh(mesh: Mesh, path) -> Path:
    """Write GLB, OBJ or PLY (chosen by the extension), with vertex colours when the mesh has them."""
    import trimesh

    path = Path(path)
    if path.suffix.lower() not in MESH_FORMATS:
        raise ScorelabError(f"{path}: unknown mesh format {path.suffix!r}; allowed: {', '.join(MESH_FORMATS)}")
    validate_mesh(mesh, name=str(path))
    colors = None
    if mesh.vertex_colors is not None:
        colors = (mesh.vertex_colors.detach().clamp(0, 1).cpu().numpy() * 255).round().astype(np.uint8)
        colors = np.concatenate([colors, np.full((len(colors), 1), 255, np.uint8)], 1)
    tm = trimesh.Trimesh(
        mesh.vertices.detach().cpu().numpy(), mesh.faces.cpu().numpy(), vertex_colors=colors, process=False
    )
    return _atomic(path, path.suffix, lambda tmp: tm.export(tmp, file_type=path.suffix[1:].lower()))


def to_uint8(frame: torch.Tensor) -> np.ndarray:
    """(C, H, W), the layout of the project's images, or (H, W, C) float in [0, 1] -> (H, W, 3) uint8. A leading
    dimension of 1, 3 or 4 is read as channels, so an (H, W, C) frame must be more than 4 pixels high."""
    if (
        not isinstance(frame, torch.Tensor)
        or not frame.is_floating_point()
        or frame.ndim != 3
        or (frame.shape[0] not in (1, 3, 4) and frame.shape[2] not in (1, 3, 4))
    ):
        got = f"{frame.dtype} {tuple(frame.shape)}" if isinstance(frame, torch.Tensor) else type(frame).__name__
        raise ScorelabError(
            f"a frame must be a float image in [0, 1], (C, H, W) or (H, W, C) with C = 1, 3 or 4, got {got}"
        )
    f = frame.detach().float().cpu()
    if f.shape[0] in (1, 3, 4):
        f = f.permute(1, 2, 0)
    return (f[..., :3].clamp(0, 1).numpy() * 255).round().astype(np.uint8)


def turntable(render: Callable[[float], torch.Tensor], n_frames: int, path, *, fps: int = 12) -> Path:
    """Render n_frames views at azimuths 2 pi k / n and write them as a GIF or MP4. `render(azimuth)` returns one
    frame as a float image in [0, 1], (3, H, W) or (H, W, 3)."""
    import imageio.v3 as iio

    path = Path(path)
    if path.suffix.lower() not in VIDEO_FORMATS:
        raise ScorelabError(f"{path}: unknown video format {path.suffix!r}; allowed: {', '.join(VIDEO_FORMATS)}")
    if isinstance(n_frames, bool) or not isinstance(n_frames, numbers.Integral) or n_frames < 1:
        raise ScorelabError(f"turntable needs a whole number of frames >= 1, got {n_frames!r}")
    frames = np.stack([to_uint8(render(2 * np.pi * k / n_frames)) for k in range(n_frames)])
    if path.suffix.lower() == ".gif":
        return _atomic(path, ".gif", lambda tmp: iio.imwrite(tmp, frames, duration=1000 / fps, loop=0))
    return _atomic(path, ".mp4", lambda tmp: iio.imwrite(tmp, frames, fps=fps))  # imageio-ffmpeg writer
