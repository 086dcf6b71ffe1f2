"""RePaint's resampling against an exact conditional (Lugmayr et al. 2022): filling the unknown part of an image by
replacing the known part in an unconditional sampler leaves the fill out of harmony with what is known; going back up
and down each step several times (resampling) repairs it.

Exact oracle: 2-D Gaussian mixtures, x1 known, x2 filled. The conditional p(x2 | x1) of a diagonal mixture is again a
mixture (weights w_k N(x1; mu_k1, s_k1^2), components N(mu_k2, s_k2^2)), so every fill is compared with exact draws:
the 1-D Wasserstein-1 distance between the fills and as many exact draws, beside that between two exact sets (the
noise floor at this n, mean of 20 pairs) and that of the same DDPM steps sampling the exact conditional directly, with
no inpainting (a reference for what the sampler and schedule do alone; not a bound: resampling can beat it)."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from ..analytic import GaussianMixture
from ..data.toys import ring8_mixture
from ..edit import repaint
from ..plots import line_panels
from ..sampling import ddpm
from ..schedules import append_zero, geometric_sigmas

TITLE = "Inpainting against an exact conditional: replacement vs RePaint's resampling (Lugmayr et al. 2022)"
OUTPUTS = ("repaint.png",)
RESAMPLES = (1, 2, 5, 10, 20)  # 1: the replacement method (DDPM steps, the known coordinate drawn from q)
STEPS, SIGMA_MAX, SIGMA_MIN = 50, 80.0, 0.002
FLOOR_PAIRS = 20


def cases() -> dict[str, tuple[GaussianMixture, float]]:
    """name -> (mixture, the known x1)."""
    return {
        "NCSN pair, x1 = 3": (GaussianMixture([0.8, 0.2], [[5.0, 5.0], [-5.0, -5.0]], 1.0), 3.0),
        "close pair, x1 = 0.5": (GaussianMixture([0.5, 0.5], [[1.0, 1.0], [-1.0, -1.0]], 0.5), 0.5),
        "ring of 8 (radius 2), x1 = 1.41": (ring8_mixture(), 1.41),  # two modes, x2 near +-1.41
    }


def conditional(mix: GaussianMixture, a: float) -> GaussianMixture:
    """p(x2 | x1 = a) of a diagonal 2-D mixture: reweighted components (Bishop 2006, eq. 2.116 per component)."""
    log_w = mix.weights.log() - 0.5 * ((a - mix.means[:, 0]) / mix.stds[:, 0]) ** 2 - mix.stds[:, 0].log()
    return GaussianMixture(torch.softmax(log_w, 0), mix.means[:, 1:], mix.stds[:, 1:])


def moments(mix: GaussianMixture) -> tuple[float, float]:
    """Mean and standard deviation of a 1-D mixture (the law of total variance)."""
    mean = (mix.weights * mix.means[:, 0]).sum()
    var = (mix.weights * (mix.stds[:, 0] ** 2 + mix.means[:, 0] ** 2)).sum() - mean**2
    return mean.item(), var.sqrt().item()


def wasserstein1(a: torch.Tensor, b: torch.Tensor) -> float:
    """W1 between two 1-D samples of equal size: the mean distance between their sorted values."""
    return (a.flatten().sort().values.double() - b.flatten().sort().values.double()).abs().mean().item()


def run(out_dir: Path, *, quick: bool = False, seed: int = 0, progress: bool = True) -> dict:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # thousands of tiny (n, 2) ops: extra threads only add overhead (12x when a core is busy)
    try:
        return _run(out_dir, quick=quick, seed=seed, progress=progress)
    finally:
        torch.set_num_threads(threads)


def _run(out_dir: Path, *, quick: bool, seed: int, progress: bool) -> dict:
    n = 5000 if quick else 10_000
    resamples = RESAMPLES[:-1] if quick else RESAMPLES
    sigmas = append_zero(geometric_sigmas(SIGMA_MAX, SIGMA_MIN, STEPS))
    rows, panels, floors, floor_sds, references = [], {}, {}, {}, {}
    for name, (mix, a) in cases().items():
        exact = conditional(mix, a)
        g = torch.Generator().manual_seed(seed)
        draws = exact.sample(n, g).float()
        # the noise floor: W1 between two exact sets of n, whose mean and spread over FLOOR_PAIRS pairs say how far
        # apart two W1 figures may lie by sampling alone
        pairs = torch.tensor([wasserstein1(exact.sample(n, g), exact.sample(n, g)) for _ in range(FLOOR_PAIRS)])
        floors[name], floor_sds[name] = pairs.mean().item(), pairs.std().item()
        # a reference, not a bound: the same 50 DDPM steps sampling the exact conditional itself (its own exact
        # denoiser), with no inpainting at all
        direct = ddpm(
            lambda x, s, c=None, exact=exact: exact(x, s).to(x.dtype),
            SIGMA_MAX * torch.randn(n, 1, generator=torch.Generator().manual_seed(seed + 100)),
            sigmas,
            generator=torch.Generator().manual_seed(seed + 101),
        )
        references[name] = wasserstein1(direct, draws)
        model = lambda x, s, c=None, mix=mix: mix(x, s).to(x.dtype)  # noqa: E731
        known, keep = torch.tensor([[a, 0.0]]), torch.tensor([[True, False]])
        start = SIGMA_MAX * torch.randn(n, 2, generator=g)
        line = ([], [])
        for r in resamples:
            fills = repaint(
                model,
                start,
                sigmas,
                image=known,
                keep=keep,
                resample=r,
                generator=torch.Generator().manual_seed(seed + r),
                progress=progress,
            )[:, 1]
            w1 = wasserstein1(fills, draws)
            rows.append(
                {
                    "case": name,
                    "resample": r,
                    "evaluations": STEPS * r,
                    "w1": w1,
                    "w1_over_floor": w1 / floors[name],
                    "mean": fills.mean().item(),
                    "std": fills.std().item(),
                    "exact_mean": moments(exact)[0],
                    "exact_std": moments(exact)[1],
                }
            )
            line[0].append(r)
            line[1].append(w1)
        panels[name] = {
            "RePaint (r = 1: replacement)": line,
            "exact sets (noise floor)": (line[0], [floors[name]] * len(line[0])),
            "DDPM on the exact conditional (50 steps)": (line[0], [references[name]] * len(line[0])),
        }
    out_dir.mkdir(parents=True, exist_ok=True)
    figure = line_panels(
        panels, out_dir / "repaint.png", xlabel="resamplings r (50 steps, r runs each)", ylabel="W1 to exact"
    )
    by_case = {name: [r for r in rows if r["case"] == name] for name in panels}
    # what the paper shows: resampling brings the fill closer to what the known part implies. Measured against the
    # exact conditional: the most resampled fill is closer than replacement's by more than 3 standard deviations of a
    # difference of two W1 figures (sqrt(2) times the noise floor's spread), in every case
    passed = all(case[0]["w1"] - case[-1]["w1"] > 3 * math.sqrt(2) * floor_sds[name] for name, case in by_case.items())
    table = [
        ["case", "r", "evaluations", "W1 to exact", "x noise floor", "x DDPM reference", "mean (exact)", "std (exact)"]
    ]
    for row in rows:
        table.append(
            [
                row["case"],
                str(row["resample"]),
                str(row["evaluations"]),
                f"{row['w1']:.3f}",
                f"{row['w1_over_floor']:.1f}",
                f"{row['w1'] / references[row['case']]:.1f}",
                f"{row['mean']:.3f} ({row['exact_mean']:.3f})",
                f"{row['std']:.3f} ({row['exact_std']:.3f})",
            ]
        )
    return {
        "rows": rows,
        "noise_floor": floors,
        "noise_floor_sd": floor_sds,
        "ddpm_reference": references,
        "n": n,
        "seed": seed,
        "setting": {"steps": STEPS, "sigma_max": SIGMA_MAX, "sigma_min": SIGMA_MIN, "schedule": "geometric", "jump": 1},
        "passed": passed,
        "figure": str(figure),
        "table": table,
    }
