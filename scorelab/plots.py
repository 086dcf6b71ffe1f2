"""PNG figures: image grids (Pillow) and 2D scatter / quiver plots (matplotlib figures rendered with Agg)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image


def image_grid(images: torch.Tensor, path: Path, *, nrow: int | None = None, scale: int = 4) -> Path:
    """Save (N, C, H, W) images in [-1, 1] as one PNG grid, each image upscaled by `scale` (nearest)."""
    x = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu()
    n, c, h, w = x.shape
    nrow = nrow or int(np.ceil(np.sqrt(n)))
    ncol = int(np.ceil(n / nrow))
    pad = 1
    grid = torch.full((c, ncol * (h + pad) + pad, nrow * (w + pad) + pad), 64, dtype=torch.uint8)
    for i in range(n):
        r, q = divmod(i, nrow)
        grid[:, pad + r * (h + pad) : pad + r * (h + pad) + h, pad + q * (w + pad) : pad + q * (w + pad) + w] = x[i]
    arr = grid.permute(1, 2, 0).numpy()
    img = Image.fromarray(arr[:, :, 0] if c == 1 else arr)
    img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    path = Path(path)
    img.save(path)
    return path


def _figure(ncols: int, size: tuple[float, float]):
    """A matplotlib Figure and a row of axes, without pyplot: no backend is switched and no global figure is kept,
    so plotting from a notebook leaves its backend alone (savefig renders PNG with Agg)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=size)
    return fig, fig.subplots(1, ncols, squeeze=False)


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return Path(path)


def scatter(sets: dict[str, torch.Tensor], path: Path, *, lim: float | None = None, s: float = 1.0) -> Path:
    """Side-by-side scatter plots of 2D point sets, one panel per entry."""
    fig, axes = _figure(len(sets), (4 * len(sets), 4))
    for ax, (title, pts) in zip(axes[0], sets.items(), strict=True):
        p = pts.detach().cpu().numpy()
        ax.scatter(p[:, 0], p[:, 1], s=s, alpha=0.5, linewidths=0)
        ax.set_title(title)
        ax.set_aspect("equal")
        if lim is not None:
            ax.set_xlim(-lim, lim)
            ax.set_ylim(-lim, lim)
    return _save(fig, path)


def quiver(fields: dict[str, tuple[torch.Tensor, torch.Tensor]], path: Path, lim: float, arrow: float) -> Path:
    """Quiver plots of vector fields given as (points (N, 2), vectors (N, 2)), one panel per entry, all on one scale:
    the longest vector of any panel is drawn `arrow` data units long (so lengths compare across panels)."""
    fig, axes = _figure(len(fields), (4.5 * len(fields), 4.5))
    longest = max(vec.norm(dim=1).max().item() for _, vec in fields.values())
    for ax, (title, (pts, vec)) in zip(axes[0], fields.items(), strict=True):
        p, v = pts.detach().cpu().numpy(), vec.detach().cpu().numpy()
        ax.quiver(p[:, 0], p[:, 1], v[:, 0], v[:, 1], angles="xy", scale_units="xy", scale=longest / arrow)
        ax.set_title(title)
        ax.set_aspect("equal")
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
    return _save(fig, path)


def trajectories(paths: torch.Tensor, path: Path, *, lim: float, background: torch.Tensor | None = None) -> Path:
    """Plot 2D trajectories (T, N, 2), start marked with a dot and end with a cross."""
    fig, axes = _figure(1, (5, 5))
    ax = axes[0, 0]
    if background is not None:
        b = background.cpu().numpy()
        ax.scatter(b[:, 0], b[:, 1], s=1, c="lightgray", linewidths=0)
    tr = paths.detach().cpu().numpy()
    for i in range(tr.shape[1]):
        ax.plot(tr[:, i, 0], tr[:, i, 1], lw=0.6, alpha=0.8)
        ax.plot(tr[0, i, 0], tr[0, i, 1], "o", ms=2, c="k")
        ax.plot(tr[-1, i, 0], tr[-1, i, 1], "x", ms=4, c="r")
    ax.set_xlim(-lim, lim)
    ax.set_ylim(-lim, lim)
    ax.set_aspect("equal")
    return _save(fig, path)


def line_panels(
    panels: dict[str, dict[str, tuple[list, list]]],
    path: Path,
    *,
    xlabel: str,
    ylabel: str,
    logx: bool = True,
    logy: bool = True,
    hline: float | None = None,
) -> Path:
    """One panel per entry, each with named (x, y) lines; an optional dashed horizontal reference line."""
    fig, axes = _figure(len(panels), (4.2 * len(panels), 3.6))
    for ax, (title, lines) in zip(axes[0], panels.items(), strict=True):
        for label, (xs, ys) in lines.items():
            ax.plot(xs, ys, marker="o", ms=3, label=label)
        if hline is not None:
            ax.axhline(hline, ls="--", c="gray", lw=1)
        ax.set_xscale("log" if logx else "linear")
        ax.set_yscale("log" if logy else "linear")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
    axes[0][-1].legend(fontsize=7)
    return _save(fig, path)
