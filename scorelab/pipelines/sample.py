"""Load a trained run, draw samples with annealed Langevin, and measure them."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..config import Config
from ..data.digits import load_digits_split
from ..data.toys import ring8_mixture, sample_toy
from ..errors import ScorelabError
from ..metrics.samples import component_stats, mmd_rbf, sliced_wasserstein2
from ..models.build import build_denoiser
from ..plots import image_grid, scatter
from ..sampling.langevin import annealed_langevin
from ..schedules import append_zero, geometric_sigmas
from ..train.checkpoint import load_latest
from ..train.trainer import load_run_config

EVAL_SEED = 10_000  # fresh reference sets are drawn from seeds the training never uses


def load_run(run_dir: Path, log=print) -> tuple[Config, torch.nn.Module, dict]:
    """The run's config and its EMA denoiser from the newest good checkpoint."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ScorelabError(f"run directory {str(run_dir)!r} does not exist")
    cfg = load_run_config(run_dir)
    tensors, record = load_latest(run_dir / "checkpoints", warn=log)
    denoiser = build_denoiser(cfg)
    denoiser.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("ema.")})
    return cfg, denoiser.eval().requires_grad_(False), record


def sample_sigmas(cfg: Config) -> torch.Tensor:
    levels = geometric_sigmas(cfg.noise.sigma_max, cfg.noise.sigma_min, cfg.noise.levels)
    return append_zero(levels) if cfg.sample.final_denoise else levels


@torch.no_grad()
def generate(cfg: Config, denoiser, n: int, seed: int, *, progress: bool = True, callback=None) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    shape = (n, 2) if cfg.data.name != "digits" else (n, 1, 8, 8)
    x = torch.randn(shape, generator=g) * cfg.noise.sigma_max  # the sigma_max-perturbed data is ~ N(0, sigma_max^2)
    return annealed_langevin(denoiser, x, sample_sigmas(cfg), step_size=cfg.sample.step_size,
                             steps_per_level=cfg.sample.steps_per_level, generator=g, callback=callback,
                             progress=progress)


def toy_metrics(name: str, samples: torch.Tensor, *, floor_pairs: int = 5) -> dict:
    """Sliced W2 and MMD to fresh points, against the noise floor of independent fresh sets of the same size."""
    n = samples.shape[0]
    g = torch.Generator().manual_seed(EVAL_SEED)
    ref = sample_toy(name, n, g)
    floor = [sliced_wasserstein2(sample_toy(name, n, g), sample_toy(name, n, g)) for _ in range(floor_pairs)]
    out = {
        "sw2": sliced_wasserstein2(samples, ref),
        "sw2_noise_floor": sum(floor) / len(floor),
        "mmd": mmd_rbf(samples, ref),
    }
    out["sw2_over_floor"] = out["sw2"] / out["sw2_noise_floor"]
    if name == "ring8":
        mix = ring8_mixture()
        stats = component_stats(samples, mix.means.float())
        true_std = float(mix.stds[0, 0])
        rel = (torch.as_tensor(stats["std"]) / true_std - 1).abs()
        out["ring_component_weights"] = stats["weight"]
        out["ring_component_std"] = stats["std"]
        out["ring_std_max_rel_error"] = rel.max().item()
    return out


def evaluate(cfg: Config, samples: torch.Tensor) -> dict:
    if cfg.data.name == "digits":
        from ..metrics.digits import digits_report

        return digits_report(samples)
    return toy_metrics(cfg.data.name, samples)


def sample_run(run_dir: Path, *, n: int | None = None, seed: int = 0, out_dir: Path | None = None,
               progress: bool = True, log=print) -> dict:
    cfg, denoiser, record = load_run(run_dir, log=log)
    n = n or cfg.sample.n
    out_dir = Path(out_dir) if out_dir else Path(run_dir) / "samples"
    out_dir.mkdir(parents=True, exist_ok=True)
    samples = generate(cfg, denoiser, n, seed, progress=progress)
    metrics = {"run": str(run_dir), "step": record["step"], "n": n, "seed": seed, **evaluate(cfg, samples)}
    save_file({"samples": samples.contiguous()}, out_dir / "samples.safetensors")
    if cfg.data.name == "digits":
        image_grid(samples[:100], out_dir / "samples.png", nrow=10)
        image_grid(load_digits_split("test")[0][:100], out_dir / "held_out.png", nrow=10)
    else:
        ref = sample_toy(cfg.data.name, n, torch.Generator().manual_seed(EVAL_SEED))
        scatter({"data": ref, "samples": samples}, out_dir / "samples.png", lim=3, s=1)
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics
