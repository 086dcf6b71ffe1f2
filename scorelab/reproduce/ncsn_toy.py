"""Song & Ermon 2019, Sec. 3.2.2 / Fig. 3: plain Langevin gets the mode weights of a mixture wrong;
annealed Langevin recovers them. Exact scores of 0.8 N((5,5), I) + 0.2 N((-5,-5), I)."""

from __future__ import annotations

from pathlib import Path

import torch

from ..analytic import GaussianMixture
from ..plots import scatter
from ..sampling.langevin import annealed_langevin, langevin
from ..schedules import geometric_sigmas

TITLE = "NCSN toy: Langevin vs annealed Langevin mode weights (Song & Ermon 2019, Fig. 3)"
OUTPUTS = ("ncsn_toy.png",)  # the files run() writes into its folder (patterns)


def mode_weight(x: torch.Tensor) -> float:
    """Fraction of samples nearer to (5, 5) than to (-5, -5)."""
    centre = torch.tensor([5.0, 5.0], dtype=x.dtype)
    return ((x - centre).norm(dim=1) < (x + centre).norm(dim=1)).float().mean().item()


def run(out_dir: Path, *, quick: bool = False, seed: int = 0, progress: bool = True) -> dict:
    # The paper's setting already runs in about a second, so --quick changes nothing here.
    mixture = GaussianMixture([0.8, 0.2], [[5.0, 5.0], [-5.0, -5.0]], [1.0, 1.0])
    g = torch.Generator().manual_seed(seed)
    x0 = torch.rand(1280, 2, generator=g) * 16 - 8  # uniform on [-8, 8]^2
    plain = langevin(lambda x: mixture.score(x, 0.0), x0, step_size=0.1, n_steps=1000, generator=g, progress=progress)
    sigmas = geometric_sigmas(20.0, 1.0, 10)
    annealed = annealed_langevin(
        mixture, x0, sigmas, step_size=0.1, steps_per_level=100, generator=g, progress=progress
    )
    exact = mixture.sample(1280, g)
    result = {
        "langevin_weight": mode_weight(plain),
        "annealed_weight": mode_weight(annealed),
        "true_weight": 0.8,
        "exact_sample_weight": mode_weight(exact),
        "n": 1280,
        "seed": seed,
        "setting": {
            "langevin": {"step_size": 0.1, "steps": 1000},
            "annealed": {
                "sigma_max": 20.0,
                "sigma_min": 1.0,
                "levels": 10,
                "steps_per_level": 100,
                "step_size": 0.1,
                "alpha_i": "step_size * sigma_i^2 / sigma_L^2",
            },
        },
    }
    result["passed"] = abs(result["annealed_weight"] - 0.8) <= 0.05 and abs(result["langevin_weight"] - 0.8) >= 0.15
    out_dir.mkdir(parents=True, exist_ok=True)
    png = scatter(
        {"exact samples": exact, "Langevin": plain, "annealed Langevin": annealed}, out_dir / "ncsn_toy.png", lim=9, s=3
    )
    result["figure"] = str(png)
    result["table"] = [
        ["method", "weight of (5,5)", "|error|"],
        ["exact samples", f"{result['exact_sample_weight']:.3f}", f"{abs(result['exact_sample_weight'] - 0.8):.3f}"],
        ["Langevin", f"{result['langevin_weight']:.3f}", f"{abs(result['langevin_weight'] - 0.8):.3f}"],
        ["annealed Langevin", f"{result['annealed_weight']:.3f}", f"{abs(result['annealed_weight'] - 0.8):.3f}"],
    ]
    return result
