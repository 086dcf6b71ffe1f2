"""Inpainting side by side with diffusers' RePaintScheduler: accuracy against an exact conditional, and time.

    python benchmarks/bench_inpainting.py [--quick]     (writes benchmarks/results/inpainting.json)

The three cases of `scorelab reproduce repaint` (2-D mixtures, x1 known, x2 filled; the conditional is exact). Both
libraries get the same exact eps-model on the DDPM linear schedule (T = 1000) and the same known value:
- the paper's setting (Lugmayr et al. 2022): 250 steps, jump length 10, 10 resamplings, DDPM noise (diffusers' eta = 1);
- scorelab's default: 50 steps, jump length 1, 10 resamplings (diffusers: the same through its jump parameters).
scorelab steps over the same timesteps' sigmas (`discrete_sigmas`). Figures: W1 of the fills to as many exact draws
(the noise floor: W1 between two exact sets), model evaluations counted, seconds.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from scorelab.edit import repaint
from scorelab.reproduce.repaint import cases, conditional, wasserstein1
from scorelab.schedules import alphas_cumprod, beta_schedule, discrete_sigmas

OUT = Path(__file__).parent / "results" / "inpainting.json"
SETTINGS = {"paper": (250, 10, 10), "scorelab default": (50, 1, 10)}  # steps, jump length, resamplings


def _counted(fn):
    def wrapped(*args, **kwargs):
        wrapped.calls += 1
        return fn(*args, **kwargs)

    wrapped.calls = 0
    return wrapped


def run_diffusers(mixture, a: float, start_vp: torch.Tensor, steps: int, jump: int, resample: int, seed: int):
    from diffusers import RePaintScheduler

    sched = RePaintScheduler(
        num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02, eta=1.0, clip_sample=False
    )  # clip_sample (default True) would clamp x0 to [-1, 1]: the mixtures reach 5
    sched.set_timesteps(steps, jump_length=jump, jump_n_sample=resample)
    ab = sched.alphas_cumprod.double()

    @_counted
    def eps(x_vp, t):  # the exact eps-prediction network at timestep t
        sigma = float(((1 - ab[t]) / ab[t]).sqrt())
        x = x_vp.double() / ab[t].sqrt()
        return ((x - mixture(x, torch.full((len(x),), sigma, dtype=torch.float64))) / sigma).to(x_vp.dtype)

    original = torch.tensor([[a, 0.0]]).expand_as(start_vp)
    mask = torch.tensor([[1.0, 0.0]]).expand_as(start_vp)  # diffusers' RePaint: 1 on the known values
    g = torch.Generator().manual_seed(seed)
    x, t_last = start_vp.clone(), sched.timesteps[0] + 1
    for t in sched.timesteps:
        if t < t_last:
            x = sched.step(eps(x, int(t)), int(t), x, original, mask, generator=g).prev_sample
        else:
            x = sched.undo_step(x, t_last, g)
        t_last = t
    return x, eps.calls


def run_scorelab(mixture, a: float, start_vp: torch.Tensor, steps: int, jump: int, resample: int, seed: int):
    ab = alphas_cumprod(beta_schedule("linear", 1000))
    stride = 1000 // steps
    ts = torch.arange(0, 1000, stride).flip(0)  # diffusers' RePaint timesteps: 0, stride, ..., descending
    sigmas = discrete_sigmas(ab, ts)  # ends in 0
    model = _counted(lambda x, s, c=None: mixture(x, s).to(x.dtype))
    known, keep = torch.tensor([[a, 0.0]]), torch.tensor([[True, False]])
    x = start_vp * (1 + sigmas[0] ** 2).sqrt()  # the same N(0, I) start, in sigma-space
    g = torch.Generator().manual_seed(seed)
    out = repaint(model, x, sigmas, image=known, keep=keep, resample=resample, jump=jump, generator=g)
    return out, model.calls


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="2,000 points instead of 10,000")
    n = 2000 if parser.parse_args().quick else 10_000
    torch.set_num_threads(1)
    rows = []
    for name, (mixture, a) in cases().items():
        exact = conditional(mixture, a)
        g = torch.Generator().manual_seed(0)
        draws = exact.sample(2 * n, g).float()
        floor = wasserstein1(draws[:n], draws[n:])
        start = torch.randn(n, 2, generator=g)
        for setting, (steps, jump, resample) in SETTINGS.items():
            for library, fn in (("diffusers", run_diffusers), ("scorelab", run_scorelab)):
                t0 = time.perf_counter()
                out, calls = fn(mixture, a, start, steps, jump, resample, seed=1)
                seconds = time.perf_counter() - t0
                w1 = wasserstein1(out[:, 1], draws[:n])
                rows.append(
                    {
                        "case": name,
                        "setting": setting,
                        "steps": steps,
                        "jump": jump,
                        "resample": resample,
                        "library": library,
                        "evaluations": calls,
                        "w1": w1,
                        "w1_over_floor": w1 / floor,
                        "known_max_abs_error": (out[:, 0] - a).abs().max().item(),
                        "seconds": seconds,
                    }
                )
                print(json.dumps(rows[-1]), flush=True)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"machine": platform.processor() or platform.machine(), "n": n, "rows": rows}, indent=2))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
