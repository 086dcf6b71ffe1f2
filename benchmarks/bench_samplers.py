"""Samplers side by side with diffusers: accuracy against an exact score, and per-step overhead.

    python benchmarks/bench_samplers.py [--quick]     (writes benchmarks/results/samplers.json)

Accuracy: the two Gaussian mixtures of `scorelab reproduce sampler-accuracy`, exact eps-model
eps(x_t, t) = (x - D(x, sigma_t)) / sigma_t with x = x_t / sqrt(alpha_bar_t), through diffusers' DDIM (trailing),
DPMSolverMultistep, EulerDiscrete and UniPCMultistep schedulers on the DDPM linear schedule (sigma up to 157), against
scorelab's samplers on its recommended schedule (sigma up to 500) and on the same trailing DDPM timesteps, at the same
model-evaluation counts. Overhead: a model returning zeros, 1x4x64x64, 50 steps.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from scorelab.metrics.moments import moment_z_scores
from scorelab.reproduce.sampler_accuracy import mixtures, schedule
from scorelab.sampling import ddim, dpmpp_2m, dpmpp_3m, euler, unipc
from scorelab.sampling.common import initial_noise
from scorelab.schedules import alphas_cumprod, beta_schedule, discrete_sigmas, timesteps

OUT = Path(__file__).parent / "results" / "samplers.json"
LINEAR = dict(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02)


def diffusers_schedulers():
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler, UniPCMultistepScheduler

    return {
        "diffusers_ddim_trailing": lambda: DDIMScheduler(**LINEAR, timestep_spacing="trailing", clip_sample=False),
        "diffusers_dpmsolver_multistep": lambda: DPMSolverMultistepScheduler(**LINEAR),
        "diffusers_euler_discrete": lambda: EulerDiscreteScheduler(**LINEAR),
        "diffusers_unipc_multistep": lambda: UniPCMultistepScheduler(**LINEAR),
    }


def eps_model(mixture):
    """The exact eps-prediction network of a mixture on the linear schedule's timesteps (float t interpolated)."""
    ab = alphas_cumprod(beta_schedule("linear", 1000))
    log_sigma = (((1 - ab) / ab).sqrt()).log().numpy()

    def model(x_vp: torch.Tensor, t) -> torch.Tensor:
        sigma = float(np.exp(np.interp(float(t), np.arange(1000), log_sigma)))
        x = x_vp.double() * (1 + sigma**2) ** 0.5
        d = mixture(x, torch.full((x.shape[0],), sigma, dtype=torch.float64))
        return ((x - d) / sigma).to(x_vp.dtype)

    return model


def run_diffusers(make, mixture, nfe: int, n: int, seed: int):
    sched = make()
    sched.set_timesteps(nfe)
    model = eps_model(mixture)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, generator=g, dtype=torch.float32).double() * float(sched.init_noise_sigma)
    calls = 0
    for t in sched.timesteps:
        eps = model(sched.scale_model_input(x, t), t)
        calls += 1
        x = sched.step(eps, t, x).prev_sample
    return x, calls


def accuracy(n: int, nfes, seed: int = 0) -> list[dict]:
    rows = []
    ours = {"scorelab_unipc": unipc, "scorelab_dpmpp_3m": dpmpp_3m, "scorelab_dpmpp_2m": dpmpp_2m}
    for mname, mix in mixtures().items():
        for nfe in nfes:
            for name, make in diffusers_schedulers().items():
                out, calls = run_diffusers(make, mix, nfe, n, seed)
                rows.append(
                    {
                        "mixture": mname,
                        "sampler": name,
                        "schedule": "ddpm-linear (diffusers)",
                        "nfe": calls,
                        "max_z": moment_z_scores(out, mix)["max_z"],
                    }
                )
            # scorelab's samplers on its recommended schedule (sigma up to 500), and on the DDPM trailing timesteps
            # the diffusers schedulers see (sigma up to 157): the second separates the solver from the schedule
            for kind, label in (
                ("lognormal", "lognormal (scorelab)"),
                ("ddpm-linear-trailing", "ddpm-linear trailing"),
            ):
                for name, fn in ours.items():
                    sig, vp = schedule(kind, nfe, mix)
                    g = torch.Generator().manual_seed(seed)
                    x = initial_noise((n, 2), float(sig[0]), vp_prior=vp, generator=g, dtype=torch.float64)
                    rows.append(
                        {
                            "mixture": mname,
                            "sampler": name,
                            "schedule": label,
                            "nfe": nfe,
                            "max_z": moment_z_scores(fn(mix, x, sig, generator=g), mix)["max_z"],
                        }
                    )
            print(*(f"{r['sampler']}:{r['max_z']:.1f}" for r in rows[-10:]), f"[{mname} nfe {nfe}]", flush=True)
    return rows


def overhead(steps: int = 50, repeats: int = 21) -> list[dict]:
    """Seconds per step, excluding the model, with a model that returns zeros (1x4x64x64, float32). The six runs
    take turns, one warm-up each and then `repeats` rounds, so that a slow spell on a shared machine falls on all of
    them; each figure is the median over its rounds."""
    shape = (1, 4, 64, 64)

    def zeros_denoiser(x, sigma, cond=None):
        return torch.zeros_like(x)

    ab = alphas_cumprod(beta_schedule("linear", 1000))
    sig = discrete_sigmas(ab, timesteps(1000, steps, "trailing"))

    def ours(fn):
        def run():
            fn(zeros_denoiser, torch.randn(shape), sig)

        return run

    def theirs(make):
        def run():
            sched = make()
            sched.set_timesteps(steps)
            x = torch.randn(shape) * float(sched.init_noise_sigma)
            for t in sched.timesteps:
                eps = torch.zeros_like(sched.scale_model_input(x, t))
                x = sched.step(eps, t, x).prev_sample

        return run

    made = diffusers_schedulers()
    runs = {
        ("scorelab", "ddim"): ours(ddim),
        ("scorelab", "dpmpp_2m"): ours(dpmpp_2m),
        ("scorelab", "euler"): ours(euler),
        ("diffusers", "ddim"): theirs(made["diffusers_ddim_trailing"]),
        ("diffusers", "dpmpp_2m"): theirs(made["diffusers_dpmsolver_multistep"]),
        ("diffusers", "euler"): theirs(made["diffusers_euler_discrete"]),
    }
    times = {key: [] for key in runs}
    for r in range(repeats + 1):
        for key, run in runs.items():
            t0 = time.perf_counter()
            run()
            if r:  # round 0 warms up
                times[key].append((time.perf_counter() - t0) / steps)
    return [
        {"library": lib, "algorithm": alg, "us_per_step": 1e6 * statistics.median(t)} for (lib, alg), t in times.items()
    ]


def main() -> None:
    import diffusers

    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true", help="5,000 samples instead of 20,000")
    args = p.parse_args()
    n = 5000 if args.quick else 20000
    acc = accuracy(n, (5, 10, 20, 50))
    summary = {}
    for m in mixtures():
        ours20 = min(
            r["max_z"]
            for r in acc
            if r["mixture"] == m
            and r["sampler"].startswith("scorelab")
            and r["nfe"] == 20
            and "scorelab" in r["schedule"]
        )
        theirs50 = min(
            r["max_z"] for r in acc if r["mixture"] == m and r["sampler"].startswith("diffusers") and r["nfe"] == 50
        )
        summary[m] = {"scorelab_best_at_20": ours20, "diffusers_best_at_50": theirs50, "goal_met": ours20 < theirs50}
    over = overhead()
    ratio = {
        a: next(r["us_per_step"] for r in over if r["library"] == "scorelab" and r["algorithm"] == a)
        / next(r["us_per_step"] for r in over if r["library"] == "diffusers" and r["algorithm"] == a)
        for a in ("ddim", "dpmpp_2m", "euler")
    }
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "n": n,
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "machine": platform.machine(),
        "threads": torch.get_num_threads(),
        "accuracy": acc,
        "accuracy_summary": summary,
        "overhead": over,
        "overhead_ratio_scorelab_over_diffusers": ratio,
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2))
    print(json.dumps({"accuracy_summary": summary, "overhead": over, "ratio": ratio}, indent=2))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
