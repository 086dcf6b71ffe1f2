"""Evaluate a trained run on image data: bits per dimension on the held-out split (DDPM runs) and, per guidance
scale and sampler, the sample figures: for the digits the classifier's (conditional accuracy, diversity within a
class, Frechet distance), for a folder of images the copy figures and channel statistics (metrics/images.py)."""

from __future__ import annotations

import math
from fnmatch import fnmatch
from pathlib import Path

import torch

from ..data.image_sets import ImageSet, budget_left, check_outside, image_set, is_image_data
from ..errors import ScorelabError
from ..objectives.elbo import VariationalBound
from ..outputs import check_output_dir, json_text, staged_output
from ..plots import image_grid
from ..sampling import SAMPLERS
from ..schedules import alphas_cumprod, beta_schedule
from .sample import (
    check_guidance,
    check_sampling_budget,
    device_of,
    diffusion_sigmas,
    evaluate,
    generate,
    load_run,
    run_images,
    sample_labels,
)


def held_out_bits_per_dim(
    cfg, denoiser, *, conditional: bool, seed: int = 0, progress: bool = True, images: ImageSet | None = None
) -> float:
    """The DDPM bound on the held-out images (the 297 held-out digits, or an image folder's held-out split given as
    `images`) in bits per dimension (Ho et al. 2020, eq. 5 and 13), with the fixed-large reverse variance and the
    decoder discretised on the data's own levels (17 for the digits, 256 for 8-bit images); conditional on the true
    label, or with the null label."""
    images = images or image_set(cfg.data)
    x, y = images.split("test")
    ab = alphas_cumprod(beta_schedule(cfg.noise.schedule, cfg.noise.timesteps))
    vb = VariationalBound(ab, variance="large", decoder="discretized", levels=images.levels)
    cond = (y if conditional else torch.full_like(y, -1)) if cfg.model.num_classes else None
    device = device_of(denoiser)
    x, cond = x.to(device), None if cond is None else cond.to(device)
    bound = vb.per_sample(denoiser, x, cond=cond, generator=torch.Generator().manual_seed(seed), progress=progress)
    return bound.mean().item() / (x[0].numel() * math.log(2))


def evaluate_run(
    run_dir: Path,
    *,
    guidances=None,
    samplers=("dpmpp_2m",),
    steps: int = 20,
    n: int = 1000,
    bpd: bool = True,
    seed: int = 0,
    max_memory: int | None = None,
    progress: bool = True,
    device: str | torch.device = "cpu",
    log=print,
) -> dict:
    """Evaluate on `device`. Refuses up front (nothing written) a request whose memory estimate exceeds max_memory
    bytes (default: the available memory; see check_sampling_budget); the samplers and guidance scales run one
    after another, so the largest of them counts."""
    cfg, denoiser, record = load_run(run_dir, device)
    if not is_image_data(cfg.data):
        raise ScorelabError(f"evaluate works on image runs (digits or images); {run_dir} trains on {cfg.data.name!r}")
    if guidances is None:  # 0, 1 and 3 for a class-conditional run; an unconditional one has only its own model
        guidances = (0.0, 1.0, 3.0) if cfg.model.num_classes else (1.0,)
    for g in guidances:
        check_guidance(cfg, g)
    diffusion_sigmas(cfg, steps, cfg.sample.schedule)  # steps the schedule cannot take: refused before the bits/dim
    names = {(s, g): f"{s}_g{g:g}.png" for s in samplers for g in guidances}
    if len(set(names.values())) < len(samplers) * len(guidances):
        raise ScorelabError(
            f"--guidance {', '.join(f'{g!r}' for g in guidances)} (with --sampler {', '.join(samplers)}) repeats a "
            "run or gives two the same grid name (6 significant digits); give each once"
        )
    out_dir = Path(run_dir) / "eval"

    # its files now, and any sampler's grid: an evaluation from before manifests wrote other samplers' and scales'
    def owns(name: str) -> bool:
        return name == "eval.json" or any(fnmatch(name, f"{s}_g*.png") for s in SAMPLERS)

    check_outside(out_dir, cfg.data)
    check_output_dir(out_dir, owns, "evaluate")
    images = run_images(cfg, Path(run_dir), record, strict=True, progress=progress, max_memory=max_memory)
    images = images or image_set(cfg.data)
    if bpd and cfg.train.objective == "ddpm" and not images.held_out.any():
        why = "data.holdout is 0" if cfg.data.holdout == 0 else "too few images to spare one"
        raise ScorelabError(f"{run_dir} has no held-out images ({why}) to measure bits/dim on; give --no-bpd")
    left = budget_left(max_memory, images if cfg.data.name == "images" else None)
    check_sampling_budget(f"sampling {n} samples at a time", cfg, denoiser, n, guidances, left, images)
    grids = {}
    result = {"run": str(run_dir), "step": record["step"], "n": n, "steps": steps, "rows": []}
    if bpd and cfg.train.objective == "ddpm":
        result["bits_per_dim"] = held_out_bits_per_dim(
            cfg, denoiser, conditional=True, progress=progress, images=images
        )
        if cfg.model.num_classes:
            result["bits_per_dim_unconditional"] = held_out_bits_per_dim(
                cfg, denoiser, conditional=False, progress=progress, images=images
            )
        log(f"held-out bits/dim: {result['bits_per_dim']:.3f}")
    for sampler in samplers:
        for guidance in guidances:
            samples = generate(
                cfg, denoiser, n, seed, sampler=sampler, steps=steps, guidance=guidance, progress=progress
            )
            labels = sample_labels(cfg, n, None)
            m = evaluate(cfg, samples, labels, images, progress)
            row = {"sampler": sampler, "guidance": guidance, **{k: v for k, v in m.items() if not isinstance(v, list)}}
            result["rows"].append(row)
            grids[names[sampler, guidance]] = samples[:100]
            log(
                f"{sampler} guidance {guidance:g}: "
                + ", ".join(
                    f"{k} {row[k]:.3f}"
                    for k in (
                        "conditional_accuracy",
                        "within_class_diversity",
                        "confident_share",
                        "frechet",
                        "nearest_train_rms",
                        "copy_share",
                        "judge_held_out_accuracy",
                    )
                    if k in row
                )
            )
    # written at once: an interrupted evaluation leaves the old one
    with staged_output(out_dir, owns, "evaluate") as stage:
        for name, images in grids.items():
            image_grid(images, stage / name, nrow=10)
        (stage / "eval.json").write_text(json_text(result))
    return result
