"""Load a trained run, draw samples (annealed Langevin or a diffusion sampler, with guidance), and measure them."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..config import MAX_STEPS, Config, config_differences
from ..data.image_sets import (
    ImageSet,
    budget_left,
    check_classes,
    check_outside,
    data_shape,
    image_set,
    is_image_data,
)
from ..data.toys import ring8_mixture, sample_toy
from ..devices import resolve_device
from ..errors import ScorelabError, warn
from ..guidance import Clamped, ClassifierFreeGuidance
from ..metrics.samples import BLOCK_ELEMENTS, component_stats, mmd_rbf, sliced_wasserstein2
from ..models.build import build_denoiser, check_model_format
from ..outputs import as_umask_allows, check_output_dir, json_text, staged_output
from ..plots import image_grid, scatter
from ..resources import activation_bytes_per_sample, check_budget
from ..sampling import SAMPLERS
from ..sampling.common import initial_noise
from ..sampling.langevin import annealed_langevin
from ..schedules import (
    alphas_cumprod,
    append_zero,
    beta_schedule,
    discrete_sigmas,
    geometric_sigmas,
    karras_sigmas,
    lognormal_sigmas,
    sigma_from_alpha_bar,
    timesteps,
)
from ..train.trainer import check_fingerprint, load_run_checkpoint, load_run_config

EVAL_SEED = 10_000  # fresh reference sets are drawn from seeds the training never uses
SAMPLE_OUTPUTS = {"samples.safetensors", "samples.png", "held_out.png", "nearest.png", "metrics.json"}


def load_run(run_dir: Path, device: str | torch.device = "cpu") -> tuple[Config, torch.nn.Module, dict]:
    """The run's config and its EMA denoiser, on `device` (scorelab.devices.DEVICE_NAMES), from the newest good
    checkpoint (falling back past damaged ones, with a warning on stderr)."""
    device = resolve_device(device)
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ScorelabError(f"run directory {str(run_dir)!r} does not exist")
    cfg = load_run_config(run_dir)
    tensors, record, recorded = load_run_checkpoint(run_dir, warn=warn)
    differ = config_differences(cfg, recorded)
    if differ:  # the network and its noise range are the checkpoint's; config.yaml was edited or replaced
        raise ScorelabError(
            f"{run_dir / 'config.yaml'} does not match the run's checkpoint ({'; '.join(differ[:3])}); "
            "restore it, or train a new run"
        )
    check_model_format(cfg, record, run_dir)
    denoiser = build_denoiser(cfg)
    denoiser.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("ema.")})
    return cfg, denoiser.to(device).eval().requires_grad_(False), record


def sample_sigmas(cfg: Config) -> torch.Tensor:
    levels = geometric_sigmas(cfg.noise.sigma_max, cfg.noise.sigma_min, cfg.noise.levels)
    return append_zero(levels) if cfg.sample.final_denoise else levels


def diffusion_sigmas(cfg: Config, steps: int, schedule: str) -> tuple[torch.Tensor, bool]:
    """(sigmas ending in 0, whether to start from the VP prior) over the noise range the model was trained on."""
    if not 1 <= steps < MAX_STEPS:
        raise ScorelabError(f"--steps must be >= 1 and < {MAX_STEPS}, got {steps}")
    if cfg.train.objective == "ddpm":
        ab = alphas_cumprod(beta_schedule(cfg.noise.schedule, cfg.noise.timesteps))
        if schedule == "trailing":
            if steps > cfg.noise.timesteps:
                raise ScorelabError(f"the trailing schedule takes at most {cfg.noise.timesteps} steps, got {steps}")
            return discrete_sigmas(ab, timesteps(cfg.noise.timesteps, steps, "trailing")), True
        s_min, s_max, vp = float(sigma_from_alpha_bar(ab[0])), float(sigma_from_alpha_bar(ab[-1])), True
    else:
        if schedule == "trailing":
            raise ScorelabError("schedule 'trailing' needs a DDPM-trained run; allowed here: lognormal, karras")
        s_min, s_max, vp = cfg.noise.sigma_min, cfg.noise.sigma_max, False
    if steps == 1:
        sig = torch.tensor([s_max])  # one evaluation: denoise straight from the top
    elif schedule == "lognormal":
        sig = lognormal_sigmas(s_min, s_max, steps, centre=cfg.model.sigma_data / 4, width=2.0)
    else:
        sig = karras_sigmas(s_min, s_max, steps, rho=7.0)
    return append_zero(sig), vp


def check_guidance(cfg: Config, guidance: float | None) -> None:
    if guidance is None:
        return
    if guidance < 0:
        raise ScorelabError(f"--guidance must be >= 0, got {guidance}")
    if guidance != 1.0 and not cfg.model.num_classes:
        raise ScorelabError(f"--guidance needs a class-conditional run (model.num_classes > 0), got {guidance}")
    if guidance != 1.0 and cfg.train.cond_dropout == 0:
        raise ScorelabError(
            f"--guidance needs a run trained with a null label (train.cond_dropout > 0), got {guidance}"
        )


def sampling_denoiser(cfg: Config, denoiser, guidance: float):
    """The trained denoiser with guidance and the data-range clamp applied as wrappers."""
    if cfg.model.num_classes and guidance != 1.0:
        denoiser = ClassifierFreeGuidance(denoiser, guidance, null_cond=-1)
    if is_image_data(cfg.data) and cfg.sample.clamp:
        denoiser = Clamped(denoiser, -1.0, 1.0)
    return denoiser


def sample_labels(cfg: Config, n: int, label: int | None) -> torch.Tensor | None:
    """Labels for a conditional model: all `label`, or the classes in turn; None for an unconditional one."""
    if not cfg.model.num_classes:
        if label is not None:
            raise ScorelabError("--label needs a class-conditional run (model.num_classes > 0)")
        return None
    if label is not None:
        if not 0 <= label < cfg.model.num_classes:
            raise ScorelabError(f"--label must be in 0..{cfg.model.num_classes - 1}, got {label}")
        return torch.full((n,), label, dtype=torch.long)
    return torch.arange(n) % cfg.model.num_classes


@torch.no_grad()
def generate(
    cfg: Config,
    denoiser,
    n: int,
    seed: int,
    *,
    sampler: str | None = None,
    steps: int | None = None,
    guidance: float | None = None,
    label: int | None = None,
    schedule: str | None = None,
    progress: bool = True,
    callback=None,
) -> torch.Tensor:
    """n samples from the run's (guided) denoiser, drawn on the denoiser's device from CPU generators seeded with
    `seed` (so a seed gives the same start on every device), returned on the CPU."""
    sampler = sampler or cfg.sample.sampler
    device = device_of(denoiser)
    g = torch.Generator().manual_seed(seed)
    shape = (n, *data_shape(cfg.data))
    cond = sample_labels(cfg, n, label)
    cond = None if cond is None else cond.to(device)
    model = sampling_denoiser(cfg, denoiser, cfg.sample.guidance if guidance is None else guidance)
    if sampler == "annealed_langevin":
        if cfg.train.objective != "ncsn":
            raise ScorelabError("annealed_langevin steps over an NCSN run's noise levels; this run is DDPM-trained")
        x = torch.randn(shape, generator=g) * cfg.noise.sigma_max  # the sigma_max-perturbed data is ~ N(0, sigma_max^2)
        x = annealed_langevin(
            model,
            x.to(device),
            sample_sigmas(cfg),
            step_size=cfg.sample.step_size,
            steps_per_level=cfg.sample.steps_per_level,
            cond=cond,
            generator=g,
            callback=callback,
            progress=progress,
        )
        return x.cpu()
    if sampler not in SAMPLERS:
        raise ScorelabError(f"unknown sampler {sampler!r}; allowed: annealed_langevin, {', '.join(SAMPLERS)}")
    sigmas, vp = diffusion_sigmas(cfg, cfg.sample.steps if steps is None else steps, schedule or cfg.sample.schedule)
    x = initial_noise(shape, float(sigmas[0]), vp_prior=vp, generator=g, device=device)
    return SAMPLERS[sampler](model, x, sigmas, cond=cond, generator=g, callback=callback, progress=progress).cpu()


def device_of(denoiser) -> torch.device:
    """Where a denoiser's parameters live; the CPU for a plain function (an exact oracle, say)."""
    params = denoiser.parameters() if isinstance(denoiser, torch.nn.Module) else iter(())
    return next(params, torch.empty(0)).device


def sampling_bytes(cfg: Config, denoiser, n: int, guidance: float | None = None, images: ImageSet | None = None) -> int:
    """Upper bound on the memory of sampling n at once and measuring them: every module output of one (guided)
    model call per sample, plus 8 sample-sized tensors of sampler state (x, denoised, multistep history, noise),
    plus the metrics (`metrics_bytes`)."""
    shape = data_shape(cfg.data)
    model = sampling_denoiser(cfg, denoiser, cfg.sample.guidance if guidance is None else guidance)

    device = device_of(denoiser)

    def probe(b: int):
        cond = torch.zeros(b, dtype=torch.long, device=device) if cfg.model.num_classes else None
        model(torch.zeros(b, *shape, device=device), torch.full((b,), float(cfg.noise.sigma_max), device=device), cond)

    per_sample = activation_bytes_per_sample(denoiser, probe) + 8 * 4 * math.prod(shape)
    return n * per_sample + metrics_bytes(cfg, n, images)


def check_sampling_budget(
    what: str,
    cfg: Config,
    denoiser,
    n: int,
    guidances,
    max_memory: int | None,
    images: ImageSet | None = None,
    held: int = 0,
) -> None:
    """Refuse, in one line, sampling n at a time at any of `guidances` whose estimate exceeds max_memory bytes
    (default: the available memory). On a CUDA device the sampling part is held against that device's free memory
    and the metrics, which run on the CPU, against the available memory. `images`: an image-folder run's ImageSet,
    whose size the metrics depend on; `held`: bytes kept on the CPU beside it all (earlier results)."""
    need = max(sampling_bytes(cfg, denoiser, n, g, images) for g in guidances)
    device = device_of(denoiser)
    if device.type == "cpu" or max_memory is not None:
        check_budget(what, need + held, max_memory, option="--max-memory")
        return
    metrics = metrics_bytes(cfg, n, images)
    check_budget(what, need - metrics, None, option="--max-memory", device=device)
    check_budget(f"measuring {n} samples", metrics + held, None, option="--max-memory")


def metrics_bytes(cfg: Config, n: int, images: ImageSet | None = None) -> int:
    """Upper bound on the memory the metrics of n samples take. 2D toys: sliced W2 holds float64 projections of
    two sets onto 1,000 directions, sorted, with sort indices and differences (6 x n x 1000 x 8 bytes), and MMD a
    few pairwise-kernel blocks of BLOCK_ELEMENTS values and the median-heuristic's 2,000-point distance matrix.
    Digits: the classifier runs in fixed batches, so features (n x 64) and the within-class distance blocks.
    Image folders (`images`, the run's ImageSet): scorelab.metrics.images.image_metrics_bytes."""
    blocks = 8 * BLOCK_ELEMENTS * 8 + 3 * 2000**2 * 8
    if cfg.data.name == "digits":
        return n * 64 * 8 * 4 + blocks
    if cfg.data.name == "images":
        from ..metrics.images import image_metrics_bytes

        held = int(images.held_out.sum()) if images is not None else 0
        n_train = len(images.pixels) - held if images is not None else 0
        judged = images is not None and len(images.classes) > 1
        return image_metrics_bytes(n, n_train, held, data_shape(cfg.data), cfg.data.flip, judged)
    return n * 6 * 1000 * 8 + blocks


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


def evaluate(
    cfg: Config,
    samples: torch.Tensor,
    labels: torch.Tensor | None = None,
    images: ImageSet | None = None,
    progress: bool = False,
):
    """The metrics of a run's samples: the digits classifier's figures, the figures of an image folder's samples
    (`images`, the run's ImageSet; scorelab.metrics.images.image_report, whose judge trains with a progress bar when
    `progress`), or distances to fresh points of a 2D toy."""
    if cfg.data.name == "digits":
        from ..metrics.digits import conditional_report, digits_report

        one = labels is not None and labels.numel() > 0 and bool((labels == labels.flatten()[0]).all())
        out = digits_report(samples, label=int(labels.flatten()[0]) if one else None)  # one class: its own digits
        if labels is not None:
            out.update(conditional_report(samples, labels))
        return out
    if cfg.data.name == "images":
        from ..metrics.images import image_report

        return image_report(samples, images, labels, mirrored=cfg.data.flip, progress=progress)
    return toy_metrics(cfg.data.name, samples)


def run_images(
    cfg: Config, run_dir: Path, record: dict, *, strict: bool, progress: bool = False, max_memory: int | None = None
) -> ImageSet | None:
    """The image set an image-folder run was trained on, read again (None for other runs). A folder whose contents
    changed since the checkpoint is refused when `strict` (figures measured on the held-out split must be of the
    run's own split), else a warning (the samples do not depend on it)."""
    if cfg.data.name != "images":
        return None
    if not Path(cfg.data.path).is_dir():
        raise ScorelabError(
            f"the images {run_dir} was trained on are not at {cfg.data.path} any more; if they moved, set data.path "
            f"in {Path(run_dir) / 'config.yaml'} to where they are"
        )
    images = image_set(cfg.data, num_classes=cfg.model.num_classes, progress=progress, max_memory=max_memory)
    check_classes(images, cfg.model.num_classes)
    try:
        check_fingerprint(images, record, run_dir, "measure it")
    except ScorelabError as e:
        if strict:
            raise
        warn(f"warning: {e}; the figures compare the samples with the images there now")
    return images


def image_figures(samples: torch.Tensor, images: ImageSet, stage: Path, mirrored: bool) -> None:
    """samples.png (up to 100), held_out.png (up to 100 held-out images; none without a held-out split) and
    nearest.png: up to 10 samples (top row) above their nearest training images (bottom row; for a model trained
    with flips, an image or its mirror image, whichever reference_images keeps)."""
    from ..metrics.images import nearest_distances, reference_images

    image_grid(samples[:100], stage / "samples.png", nrow=10)
    held, _ = images.split("test")
    if len(held):
        image_grid(held[:100], stage / "held_out.png", nrow=10)
    reference = reference_images(images.split("train")[0], mirrored)
    first = samples[:10]
    _, index = nearest_distances(first, reference, 1, mirrored=mirrored)
    image_grid(torch.cat([first, reference[index[:, 0]]]), stage / "nearest.png", nrow=len(first))


def sample_run(
    run_dir: Path,
    *,
    n: int | None = None,
    seed: int = 0,
    out_dir: Path | None = None,
    sampler: str | None = None,
    steps: int | None = None,
    guidance: float | None = None,
    label: int | None = None,
    progress: bool = True,
    max_memory: int | None = None,
    device: str | torch.device = "cpu",
    log=print,
) -> dict:
    """Sample a trained run on `device` and write samples, figures and metrics. Refuses up front (nothing written) a
    request whose memory estimate exceeds max_memory bytes (default: the available memory; see
    check_sampling_budget)."""
    cfg, denoiser, record = load_run(run_dir, device)
    n = n or cfg.sample.n
    if n < 2:
        raise ScorelabError(f"--n must be >= 2 (the metrics compare sets of samples), got {n}")
    if steps is not None and (sampler or cfg.sample.sampler) == "annealed_langevin":
        raise ScorelabError(
            "--steps is for diffusion samplers; annealed_langevin runs noise.levels x sample.steps_per_level steps"
        )
    check_guidance(cfg, guidance)
    if label is not None and (cfg.sample.guidance if guidance is None else guidance) == 0:
        raise ScorelabError(
            "--label has no effect at guidance 0 (the unconditional model); give --guidance above 0 or drop --label"
        )
    labels = sample_labels(cfg, n, label)
    out_dir = Path(out_dir) if out_dir else Path(run_dir) / "samples"
    check_outside(out_dir, cfg.data)
    check_output_dir(out_dir, SAMPLE_OUTPUTS.__contains__, "sample")
    images = run_images(cfg, Path(run_dir), record, strict=False, progress=progress, max_memory=max_memory)
    left = budget_left(max_memory, images)
    check_sampling_budget(f"sampling {n} samples", cfg, denoiser, n, [guidance], left, images)
    samples = generate(
        cfg, denoiser, n, seed, sampler=sampler, steps=steps, guidance=guidance, label=label, progress=progress
    )
    metrics = {
        "run": str(run_dir),
        "step": record["step"],
        "n": n,
        "seed": seed,
        "sampler": sampler or cfg.sample.sampler,
    }
    log(f"computing the metrics of {n} samples")
    metrics.update(evaluate(cfg, samples, labels, images, progress))
    if images is not None and images.classes:
        metrics["classes"] = list(images.classes)  # label i is the class folder classes[i]
    if metrics["sampler"] != "annealed_langevin":
        metrics["steps"] = cfg.sample.steps if steps is None else steps
        metrics["guidance"] = cfg.sample.guidance if guidance is None else guidance
    tensors = {"samples": samples.contiguous()}
    if labels is not None:
        tensors["labels"] = labels
    with staged_output(out_dir, SAMPLE_OUTPUTS.__contains__, "sample") as stage:
        save_file(tensors, stage / "samples.safetensors")
        as_umask_allows(stage / "samples.safetensors")
        if cfg.data.name == "digits":
            image_grid(samples[:100], stage / "samples.png", nrow=10)
            image_grid(image_set(cfg.data).split("test")[0][:100], stage / "held_out.png", nrow=10)
        elif cfg.data.name == "images":
            image_figures(samples, images, stage, cfg.data.flip)
        else:
            ref = sample_toy(cfg.data.name, n, torch.Generator().manual_seed(EVAL_SEED))
            scatter({"data": ref, "samples": samples}, stage / "samples.png", lim=3, s=1)
        (stage / "metrics.json").write_text(json_text(metrics))
    return metrics
