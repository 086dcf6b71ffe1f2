"""`scorelab inpaint` and `scorelab sdedit`: edit images with a trained image run, and measure the edits."""

from __future__ import annotations

import math
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..data.image_sets import ImageSet, budget_left, check_outside, data_shape, image_set, read_square, to_signed
from ..data.images import load_mask
from ..edit import Inpainting, repaint, sdedit, sdedit_sigmas
from ..errors import ScorelabError
from ..outputs import as_umask_allows, check_output_dir, json_text, staged_output
from ..plots import image_grid
from ..sampling import SAMPLERS
from ..sampling.common import initial_noise
from ..schedules import alphas_cumprod, beta_schedule, sigma_from_alpha_bar
from .sample import (
    check_guidance,
    check_sampling_budget,
    device_of,
    diffusion_sigmas,
    load_run,
    run_images,
    sampling_denoiser,
)

EDIT_KINDS = ("inpaint", "sdedit")
REGIONS = ("bottom", "top", "left", "right", "centre")
SHOWN, SHOWN_EDITS = 10, 8  # inputs, and edits of each per strength, shown in KIND.png


def edit_outputs(kind: str) -> set[str]:
    """The files `scorelab KIND` writes (named for the command, so that inpaint and sdedit never take each other's
    folders for their own)."""
    return {f"{kind}.safetensors", f"{kind}.png", "metrics.json"}


def region_keep(region: str, height: int, width: int) -> torch.Tensor:
    """A bool (1, 1, H, W) mask, True on the known pixels, that leaves `region` to fill: a half of the image
    (bottom, top, left, right) or its centre (the middle half of each side)."""
    keep = torch.ones(1, 1, height, width, dtype=torch.bool)
    h2, w2 = height // 2, width // 2
    if region == "bottom":
        keep[..., h2:, :] = False
    elif region == "top":
        keep[..., :h2, :] = False
    elif region == "left":
        keep[..., :w2] = False
    elif region == "right":
        keep[..., w2:] = False
    elif region == "centre":
        keep[..., height // 4 : height - height // 4, width // 4 : width - width // 4] = False
    else:
        raise ScorelabError(f"region must be one of {', '.join(REGIONS)}, got {region!r}")
    return keep


def edit_inputs(cfg, images: ImageSet, files: list[Path], held_out: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(inputs (N, C, H, W) in [-1, 1], their true labels or None): the image files, read as the run's data is
    (centre square, resized to the run's size; digits as 8x8 greyscale with ink bright, as scorelab draws them),
    then the first `held_out` images of the run's held-out split. Labels only when every input has one."""
    c, h, _ = data_shape(cfg.data)
    parts, labels = [], []
    for f in files:
        a, _ = read_square(f, h, c, what="--image")
        parts.append(to_signed(torch.from_numpy(a)[None], 256))
        labels.append(None)
    if held_out:
        held, held_labels = images.split("test")
        if held_out > len(held):
            raise ScorelabError(f"--held-out asks for {held_out} images, but {images.where} holds out {len(held)}")
        parts.append(held[:held_out])
        labels += held_labels[:held_out].tolist() if held_labels is not None else [None] * held_out
    if not parts:
        raise ScorelabError("nothing to edit: give --image FILE (repeatable) or --held-out N")
    x = torch.cat(parts)
    return x, (torch.tensor(labels) if None not in labels else None)


def _classify(cfg, images: ImageSet, x: torch.Tensor, progress: bool) -> torch.Tensor | None:
    """The class of each image by the run's judge: the digits classifier, or the judge trained on a labelled image
    folder (scorelab.metrics.judge); None where there are no classes."""
    if cfg.data.name == "digits":
        from ..metrics.digits import classifier_probs

        return classifier_probs(x).argmax(1)
    if images.labels is not None and len(images.classes) > 1:
        from ..metrics.judge import predict, train_judge

        judge, _ = train_judge(images, mirrored=cfg.data.flip, progress=progress)
        return predict(judge, x)
    return None


def _rms(a: torch.Tensor, b: torch.Tensor, where: torch.Tensor | None = None) -> float:
    d = (a - b) ** 2
    if where is not None:
        d = d[where.expand_as(d)]
    return d.double().mean().sqrt().item()


def strength_sigma(cfg, strength: float) -> float:
    """SDEdit's sigma_0 at time t_0 = strength of the run's forward process (Meng et al. 2022 take t_0 in (0, 1]):
    for a DDPM-trained run the sigma of timestep round(t_0 T) (at least 1) of its beta schedule; for a run trained
    over [sigma_min, sigma_max] the VE SDE's sigma(t_0) = sigma_min (sigma_max / sigma_min)^t_0 (Song et al. 2021,
    Appendix C)."""
    if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0 < strength <= 1:
        raise ScorelabError(f"--strength must be in (0, 1], got {strength!r}")
    if cfg.train.objective == "ddpm":
        ab = alphas_cumprod(beta_schedule(cfg.noise.schedule, cfg.noise.timesteps))
        t = int((Decimal(repr(float(strength))) * cfg.noise.timesteps).quantize(Decimal(1), ROUND_HALF_UP))
        return float(sigma_from_alpha_bar(ab[max(t, 1) - 1]))
    return cfg.noise.sigma_min ** (1 - strength) * cfg.noise.sigma_max**strength


def edit_run(
    run_dir: Path,
    kind: str,
    *,
    files: tuple[Path, ...] = (),
    held_out: int = 0,
    region: str | None = None,
    mask: Path | None = None,
    strengths: tuple[float, ...] = (),
    n: int = 4,
    sampler: str | None = None,
    steps: int | None = None,
    resample: int | None = None,
    jump: int | None = None,
    label: int | None = None,
    guidance: float | None = None,
    seed: int = 0,
    out_dir: Path | None = None,
    progress: bool = True,
    max_memory: int | None = None,
    device: str | torch.device = "cpu",
    log=print,
) -> dict:
    """Inpaint (kind 'inpaint': fill `region` or the white pixels of `mask`) or SDEdit (kind 'sdedit', once per
    strength t_0, see strength_sigma) each input n times, and write KIND.png, KIND.safetensors and metrics.json to
    out_dir (default RUN_DIR/KIND). Without `label` a class-conditional model edits unconditionally (its null label).
    Inpainting's default sampler is RePaint (resample 10, jump 1); SDEdit's is DDPM ancestral, the paper's reverse
    SDE."""
    if kind not in EDIT_KINDS:
        raise ScorelabError(f"kind must be 'inpaint' or 'sdedit', got {kind!r}")
    cfg, denoiser, record = load_run(run_dir, device)
    if cfg.data.name not in ("digits", "images"):
        raise ScorelabError(f"editing needs a run trained on images (digits or an image folder); {run_dir} is a 2D toy")
    if n < 1:
        raise ScorelabError(f"--n must be >= 1 (edits per input), got {n}")
    if held_out < 0:
        raise ScorelabError(f"--held-out must be >= 0, got {held_out}")
    if kind == "inpaint" and (region is None) == (mask is None):
        raise ScorelabError("inpaint needs exactly one of --region (bottom, top, left, right, centre) and --mask FILE")
    if kind == "sdedit" and not strengths:
        raise ScorelabError("sdedit needs --strength (in (0, 1]; repeatable)")
    allowed = (*SAMPLERS, "repaint") if kind == "inpaint" else tuple(SAMPLERS)
    sampler = sampler or ("repaint" if kind == "inpaint" else "ddpm")
    if sampler not in allowed:
        raise ScorelabError(f"--sampler must be one of {', '.join(allowed)} for {kind}, got {sampler!r}")
    if (resample is not None or jump is not None) and sampler != "repaint":
        raise ScorelabError("--resample and --jump are RePaint's; give them with --sampler repaint")
    resample, jump = resample or 10, jump or 1
    if label is None:
        if guidance not in (None, 0.0):
            raise ScorelabError(f"--guidance needs --label (the class to guide towards), got {guidance}")
        if cfg.model.num_classes and cfg.train.cond_dropout == 0:
            raise ScorelabError(
                f"{run_dir} was trained without a null label (train.cond_dropout 0), so it cannot edit without a "
                "class: give --label"
            )
        guidance = 0.0 if cfg.model.num_classes else None  # unconditional: the null label
    elif not cfg.model.num_classes:
        raise ScorelabError("--label needs a class-conditional run (model.num_classes > 0)")
    elif not 0 <= label < cfg.model.num_classes:
        raise ScorelabError(f"--label must be in 0..{cfg.model.num_classes - 1}, got {label}")
    check_guidance(cfg, guidance)
    guidance = cfg.sample.guidance if guidance is None else guidance
    if label is not None and guidance == 0:
        raise ScorelabError("--label has no effect at guidance 0 (the unconditional model); give --guidance above 0")
    steps = cfg.sample.steps if steps is None else steps
    sigmas, vp = diffusion_sigmas(cfg, steps, cfg.sample.schedule)
    tails = [sdedit_sigmas(sigmas, strength_sigma(cfg, s)) for s in strengths]  # every strength checked up front
    out_dir = Path(out_dir) if out_dir else Path(run_dir) / kind
    check_outside(out_dir, cfg.data)
    outputs = edit_outputs(kind)
    check_output_dir(out_dir, outputs.__contains__, kind)
    shape = data_shape(cfg.data)
    keep = region_keep(region, *shape[1:]) if region else None
    if mask is not None:
        keep = ~load_mask(mask, size=shape[1:], what="--mask")[None, None]  # white marks the pixels to fill
        if not keep.any():
            raise ScorelabError(f"--mask {mask}: is white everywhere, so no pixel is known; that is sampling")
    folder = run_images(cfg, Path(run_dir), record, strict=False, progress=progress, max_memory=max_memory)
    images = folder or image_set(cfg.data)
    inputs, true_labels = edit_inputs(cfg, images, list(files), held_out)
    total = len(inputs) * n
    held = 4 * total * math.prod(shape) * (1 + max(1, len(tails)))  # the inputs repeated and every edit, kept
    check_sampling_budget(
        f"editing {total} images", cfg, denoiser, total, [guidance], budget_left(max_memory, folder), folder, held
    )
    dev = device_of(denoiser)
    batch = inputs.repeat_interleave(n, 0).to(dev)
    cond = None
    if cfg.model.num_classes:
        cond = torch.full((total,), -1 if label is None else label, dtype=torch.long, device=dev)
    model = sampling_denoiser(cfg, denoiser, guidance)
    g = torch.Generator().manual_seed(seed)
    rows, edits = [], []
    if kind == "inpaint":
        x = initial_noise((total, *shape), float(sigmas[0]), vp_prior=vp, generator=g, device=dev)
        if sampler == "repaint":
            out = repaint(
                model,
                x,
                sigmas,
                image=batch,
                keep=keep.to(dev),
                resample=resample,
                jump=jump,
                cond=cond,
                generator=g,
                progress=progress,
            )
        else:
            out = SAMPLERS[sampler](
                Inpainting(model, batch, keep.to(dev)), x, sigmas, cond=cond, generator=g, progress=progress
            )
        edits.append(out.cpu())
        rows.append({})
    else:
        for strength, tail in zip(strengths, tails, strict=True):
            sigma0 = float(tail[0])
            g = torch.Generator().manual_seed(seed)  # per t0, so that its edits do not depend on the others
            out = sdedit(
                model, batch, tail, SAMPLERS[sampler], sigma_start=sigma0, cond=cond, generator=g, progress=progress
            )
            edits.append(out.cpu())
            rows.append({"strength": strength, "sigma_start": sigma0, "steps_run": len(tail) - 1})
    log(f"measuring {total * len(edits)} edits")
    batch = batch.cpu()
    judged = _classify(cfg, images, inputs, progress)
    reference = true_labels if true_labels is not None else judged  # each input's class, as far as one is known
    reference = None if reference is None else reference.repeat_interleave(n)
    for row, out in zip(rows, edits, strict=True):
        row["rms_to_input"] = _rms(out, batch)
        if keep is not None:
            row["rms_in_filled_region"] = _rms(out, batch, ~keep)
            row["known_max_abs_change"] = (out - batch)[keep.expand_as(out)].abs().max().item()
        classes = _classify(cfg, images, out, progress) if reference is not None else None
        if classes is not None:
            row["input_class_kept"] = (classes == reference).double().mean().item()
            if label is not None:
                row["label_accuracy"] = (classes == label).double().mean().item()
    metrics = {
        "run": str(run_dir),
        "step": record["step"],
        "kind": kind,
        "inputs": len(inputs),
        "edits_per_input": n,
        "sampler": sampler,
        "steps": steps,
        "seed": seed,
        "label": label,
        "guidance": guidance if cfg.model.num_classes else None,
        "rows": rows,
    }
    if kind == "inpaint":
        metrics["filled"] = f"region {region}" if region else f"mask {mask}"
        metrics["filled_share"] = 1 - keep.double().mean().item()
        if sampler == "repaint":
            metrics.update(resample=resample, jump=jump)
    if reference is not None and judged is not None:
        # how to read the class figures: the input classes are the true labels of held-out inputs, or the judge's
        # reading of image files; read input_class_kept against the judge's agreement with the true labels, and
        # label_accuracy against the share of inputs already in --label
        metrics["input_classes"] = "true labels" if true_labels is not None else "judged"
        if true_labels is not None:
            metrics["judge_accuracy_on_inputs"] = (judged == true_labels).double().mean().item()
        if label is not None:
            metrics["inputs_in_label"] = (reference[::n] == label).double().mean().item()
    tensors = {"inputs": inputs.contiguous(), "edits": torch.stack(edits).contiguous()}
    if keep is not None:
        tensors["keep"] = keep.contiguous()
    with staged_output(out_dir, outputs.__contains__, kind) as stage:
        save_file(tensors, stage / f"{kind}.safetensors")
        as_umask_allows(stage / f"{kind}.safetensors")
        _figure(inputs, edits, keep, n, stage / f"{kind}.png")
        (stage / "metrics.json").write_text(json_text(metrics))
    metrics["out"] = str(out_dir)
    return metrics


def _figure(inputs: torch.Tensor, edits: list[torch.Tensor], keep: torch.Tensor | None, n: int, path: Path) -> Path:
    """One row per input (the first SHOWN): the input, for inpainting the input with its fill region grey, then its
    first SHOWN_EDITS edits (per strength, in order)."""
    shown = inputs[:SHOWN]
    columns = [shown[:, None]]
    if keep is not None:
        columns.append(torch.where(keep, shown, torch.zeros(())).unsqueeze(1))
    for out in edits:
        columns.append(out[: len(shown) * n].reshape(len(shown), n, *out.shape[1:])[:, :SHOWN_EDITS])
    grid = torch.cat(columns, 1)
    return image_grid(grid.flatten(0, 1), path, nrow=grid.shape[1])
