"""Sampler accuracy against an exact score: every sampler at 5-50 model evaluations on two Gaussian mixtures,
on the DDPM linear schedule's discrete timesteps and on scorelab's recommended sigma schedule.

Main metric: the moment z-score (scorelab.metrics.moments); max_z <= 3 is indistinguishable from exact sampling.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..analytic import GaussianMixture
from ..metrics.moments import moment_z_scores
from ..metrics.samples import SlicedW2Reference
from ..plots import line_panels
from ..sampling import SAMPLERS, evaluations
from ..sampling.common import initial_noise
from ..schedules import alphas_cumprod, append_zero, beta_schedule, discrete_sigmas, lognormal_sigmas, timesteps

TITLE = "Sampler accuracy against an exact score: moment max_z at 5-50 evaluations (target <= 3 at 20)"
OUTPUTS = ("sampler_accuracy.png",)  # the files run() writes into its folder (patterns)
NFES = (5, 10, 20, 50)
# recommended: log-normal quantile schedule centred at sigma_data / 4, width 2, from 500 to 0.02 (see README)
SIGMA_MIN, SIGMA_MAX, WIDTH = 0.02, 500.0, 2.0


def mixtures() -> dict[str, GaussianMixture]:
    ang = torch.arange(8, dtype=torch.float64) * 2 * math.pi / 8
    ring = GaussianMixture([1 / 8] * 8, torch.stack([4 * torch.cos(ang), 4 * torch.sin(ang)], 1), 0.3)
    pair = GaussianMixture([0.8, 0.2], [[5.0, 5.0], [-5.0, -5.0]], 1.0)
    return {"ring": ring, "pair": pair}


def sigma_data(mixture: GaussianMixture) -> float:
    """Root of the mean per-coordinate variance of the mixture (law of total variance)."""
    w, mu, std = mixture.weights, mixture.means, mixture.stds
    mean = (w[:, None] * mu).sum(0)
    var = (w[:, None] * (std**2 + (mu - mean) ** 2)).sum(0)
    return float(var.mean().sqrt())


def schedule(kind: str, n_sigmas: int, mixture: GaussianMixture) -> tuple[torch.Tensor, bool]:
    """(sigmas ending in 0, whether the start is the VP prior N(0, I) in x_vp)."""
    if kind == "ddpm-linear-trailing":
        ab = alphas_cumprod(beta_schedule("linear", 1000))
        return discrete_sigmas(ab, timesteps(1000, n_sigmas, "trailing"), dtype=torch.float64), True
    centre = sigma_data(mixture) / 4
    return append_zero(
        lognormal_sigmas(SIGMA_MIN, SIGMA_MAX, n_sigmas, centre=centre, width=WIDTH, dtype=torch.float64)
    ), False


class _Counted:
    def __init__(self, denoiser):
        self.denoiser, self.calls = denoiser, 0

    def __call__(self, x, sigma, cond=None):
        self.calls += 1
        return self.denoiser(x, sigma, cond)


def run(out_dir: Path, *, quick: bool = False, seed: int = 0, progress: bool = True) -> dict:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    n = 5000 if quick else 20000
    mixes = mixtures()
    exact_max_z, references = {}, {}
    for name, mix in mixes.items():
        g = torch.Generator().manual_seed(seed + 1)
        exact_max_z[name] = moment_z_scores(mix.sample(n, g).double(), mix)["max_z"]
        references[name] = SlicedW2Reference(mix.sample(n, g).double())
    results = []
    jobs = [(m, k, s, e) for m in mixes for k in ("ddpm-linear-trailing", "lognormal") for s in SAMPLERS for e in NFES]
    for mname, kind, sname, nfe in tqdm(jobs, desc="sampler-accuracy", leave=False, disable=not progress):
        mix = mixes[mname]
        n_sigmas = (nfe + 1) // 2 if sname == "heun" else nfe
        sigmas, vp = schedule(kind, n_sigmas, mix)
        g = torch.Generator().manual_seed(seed)
        x = initial_noise((n, 2), float(sigmas[0]), vp_prior=vp, generator=g, dtype=torch.float64)
        model = _Counted(mix)
        out = SAMPLERS[sname](model, x, sigmas, generator=g)
        assert model.calls == evaluations(sname, n_sigmas)
        z = moment_z_scores(out, mix)
        row = {
            "mixture": mname,
            "schedule": kind,
            "sampler": sname,
            "nfe": model.calls,
            "max_z": z["max_z"],
            "sw2": references[mname].distance(out),
        }
        if mname == "pair":
            row["mode_weight"] = z["weights"][0]
        results.append(row)
    panels = {}
    for mname in mixes:
        for kind in ("ddpm-linear-trailing", "lognormal"):
            rows = [r for r in results if r["mixture"] == mname and r["schedule"] == kind]
            panels[f"{mname}, {kind}"] = {
                s: ([r["nfe"] for r in rows if r["sampler"] == s], [r["max_z"] for r in rows if r["sampler"] == s])
                for s in SAMPLERS
            }
    figure = line_panels(
        panels, out_dir / "sampler_accuracy.png", xlabel="model evaluations", ylabel="max_z", hline=3.0
    )
    table = [["mixture", "schedule", "sampler", *[f"nfe~{e}" for e in NFES]]]
    for mname in mixes:
        for kind in ("ddpm-linear-trailing", "lognormal"):
            for s in SAMPLERS:
                zs = [r["max_z"] for r in results if (r["mixture"], r["schedule"], r["sampler"]) == (mname, kind, s)]
                table.append([mname, kind, s, *[f"{v:.1f}" for v in zs]])
    table.append(["exact samples", "", "", *[f"{exact_max_z['ring']:.1f} / {exact_max_z['pair']:.1f}"] + [""] * 3])
    best20 = {
        m: min(
            r["max_z"]
            for r in results
            if r["mixture"] == m and r["schedule"] == "lognormal" and r["nfe"] == 20 and r["sampler"] == "unipc"
        )
        for m in mixes
    }
    return {
        "exact_max_z": exact_max_z,
        "results": results,
        "unipc_lognormal_at_20": best20,
        "n": n,
        "seed": seed,
        "table": table,
        "figure": str(figure),
        "passed": all(v <= 3.0 for v in best20.values()),
    }
