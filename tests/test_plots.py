"""Figures: the image grid's pixel values and layout."""

import numpy as np
import pytest
import torch
from PIL import Image

from scorelab.plots import image_grid


def test_image_grid_maps_minus_one_to_black_and_one_to_white_and_fills_rows_first(tmp_path):
    images = torch.tensor(
        [
            [[-1.0, -1.0, -1.0], [-1.0, -1.0, -1.0]],
            [[0.0, 1.0, 2.0], [-2.0, 0.5, -0.5]],  # outside [-1, 1]: clamped
            [[1.0, 0.0, -1.0], [0.0, 1.0, 0.0]],
        ]
    ).unsqueeze(1)  # (3, 1, 2, 3): three 2 x 3 images
    path = image_grid(images, tmp_path / "grid.png", nrow=2, scale=3)
    want = np.full((2 * 3 + 1, 2 * 4 + 1), 64, dtype=np.uint8)  # 1-pixel padding between and around the cells
    want[1:3, 1:4] = 0  # image 0: first row, first column
    want[1:3, 5:8] = [[128, 255, 255], [0, 191, 64]]  # image 1: first row, second column (127.5 rounds to 128)
    want[4:6, 1:4] = [[255, 128, 0], [128, 255, 128]]  # image 2: second row, first column
    got = np.asarray(Image.open(path))
    assert got.shape == (21, 27)
    np.testing.assert_array_equal(got, np.kron(want, np.ones((3, 3), dtype=np.uint8)))  # nearest upscaling


def test_quiver_draws_every_panel_on_one_scale_and_trajectories_mark_start_and_end(tmp_path, monkeypatch):
    from matplotlib.axes import Axes

    from scorelab.plots import quiver, trajectories

    drawn = []
    real_quiver, real_plot = Axes.quiver, Axes.plot
    monkeypatch.setattr(Axes, "quiver", lambda ax, *a, **kw: drawn.append(kw["scale"]) or real_quiver(ax, *a, **kw))
    pts = torch.zeros(2, 2)
    quiver(
        {"short": (pts, torch.ones(2, 2)), "long": (pts, 3 * torch.ones(2, 2))}, tmp_path / "q.png", lim=1, arrow=0.5
    )
    assert drawn == pytest.approx(
        [3 * 2**0.5 / 0.5] * 2
    )  # the longest vector of either panel is drawn 0.5 long in both

    marks = []
    monkeypatch.setattr(Axes, "plot", lambda ax, *a, **kw: marks.append(a) or real_plot(ax, *a, **kw))
    path = torch.tensor([[[0.0, 0.0]], [[1.0, 1.0]], [[2.0, 3.0]]])  # (T = 3, N = 1, 2)
    trajectories(path, tmp_path / "t.png", lim=4)
    (x, y), (x0, y0, dot), (x1, y1, cross) = marks
    assert list(x) == [0, 1, 2] and list(y) == [0, 1, 3]
    assert (x0, y0, dot) == (0, 0, "o") and (x1, y1, cross) == (2, 3, "x")  # dot at the start, cross at the end


def test_plotting_leaves_the_callers_matplotlib_backend_and_figures_alone(tmp_path):
    """A notebook user's backend is not switched to Agg, and no pyplot figure is left open per plot."""
    import subprocess
    import sys

    code = (
        "import matplotlib; matplotlib.use('svg'); import matplotlib.pyplot as plt, torch\n"
        "from scorelab.plots import quiver, scatter, trajectories\n"
        f"d = {str(tmp_path)!r}\n"
        "scatter({'a': torch.randn(50, 2)}, d + '/s.png')\n"
        "quiver({'a': (torch.randn(9, 2), torch.randn(9, 2))}, d + '/q.png', lim=3, arrow=0.3)\n"
        "trajectories(torch.randn(4, 5, 2), d + '/t.png', lim=3)\n"
        "print(matplotlib.get_backend(), len(plt.get_fignums()))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["svg", "0"]
    assert all(Image.open(tmp_path / f).size[0] > 100 for f in ("s.png", "q.png", "t.png"))
