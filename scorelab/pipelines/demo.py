"""`make demo`: train the 2D-toy and digits score models at demo size, sample, write an HTML report."""

from __future__ import annotations

import html
import re
import shutil
from pathlib import Path

import torch

from ..config import config_differences, config_from_dict, config_to_dict, load_config
from ..data.toys import ring8_mixture
from ..denoisers import score_from_denoised
from ..errors import ScorelabError
from ..metrics.digits import conditional_report
from ..models.build import model_format, record_format
from ..outputs import MANIFEST, check_writable_dir, json_text, written_before
from ..plots import image_grid, quiver, trajectories
from ..reproduce import ncsn_toy
from ..train.checkpoint import list_checkpoints
from ..train.trainer import RUN_FILES, Trainer, load_run_checkpoint
from .edit import edit_outputs, edit_run
from .sample import SAMPLE_OUTPUTS, generate, load_run, sample_labels, sample_run, sample_sigmas

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"

# demo size: under 10 minutes in all on 2 cores; the configs' own settings are the full runs
DEMO_OVERRIDES = {
    "ncsn-toy2d": {"train": {"steps": 4000}, "sample": {"n": 5000}},
    "ncsn-digits": {"train": {"steps": 1000}, "sample": {"n": 400}},
    "ddpm-digits": {"train": {"steps": 1500}, "sample": {"n": 400}},
}
DEMO_GUIDANCE = (0.0, 1.0, 3.0)
DEMO_SAMPLERS = ("dpmpp_2m", "unipc")
# editing with the DDPM digits model: folder -> edit_run settings (the first 100 held-out digits, 20 steps)
DEMO_EDITS = {
    "inpaint": {"kind": "inpaint", "region": "bottom", "sampler": "repaint", "resample": 10},
    "inpaint-replace": {"kind": "inpaint", "region": "bottom", "sampler": "repaint", "resample": 1},
    "sdedit": {"kind": "sdedit", "strengths": (0.03, 0.06, 0.1, 0.2), "label": 3},  # t0: sigma 0.11 to 0.72
}


def _config(name: str):
    raw = config_to_dict(load_config(CONFIG_DIR / f"{name}.yaml"))
    for section, values in DEMO_OVERRIDES[name].items():
        raw[section].update(values)
    return config_from_dict(raw)


RUN_FOLDERS = ("toy2d", "digits", "ddpm-digits")
CHECKPOINT_FILE = re.compile(r"ckpt_[0-9]+\.(json|safetensors)(\.tmp)?")


STAGING = re.compile(r"\..+\.(partial|old)-[0-9]+")  # what a staged output killed half-way leaves beside its folder


def _foreign(out: Path) -> list[str]:
    """The files and folders under a demo folder that neither the demo nor the scorelab commands run on its folders
    (sample, evaluate, reproduce ncsn-toy) wrote, as paths relative to it."""
    grids = {f"grid_{s}_g{g:g}.png" for s in DEMO_SAMPLERS for g in DEMO_GUIDANCE}
    figures = {"score_field.png", "trajectories.png", *grids}
    foreign = []

    def check(folder: Path, allowed: set[str], where: str = "") -> None:
        for p in folder.glob("*") if folder.is_dir() else []:
            if p.name not in allowed and not STAGING.fullmatch(p.name):
                foreign.append(f"{where}{p.name}")

    def staged(folder: Path, command: str, *own: str) -> set[str]:
        return {MANIFEST, *own, *written_before(folder, command)}

    check(out, {"metrics.json", "index.html", "ncsn-toy", *RUN_FOLDERS})
    check(out / "ncsn-toy", staged(out / "ncsn-toy", "reproduce ncsn-toy", *ncsn_toy.OUTPUTS), "ncsn-toy/")
    for name in RUN_FOLDERS:
        run = out / name
        check(run, {*RUN_FILES, *(f"{f}.tmp" for f in RUN_FILES), "samples", "eval", *DEMO_EDITS, *figures}, f"{name}/")
        for p in (run / "checkpoints").glob("*"):
            if not CHECKPOINT_FILE.fullmatch(p.name):
                foreign.append(f"{name}/checkpoints/{p.name}")
        check(run / "samples", staged(run / "samples", "sample", *SAMPLE_OUTPUTS), f"{name}/samples/")
        check(run / "eval", staged(run / "eval", "evaluate", "eval.json"), f"{name}/eval/")
        for edit in DEMO_EDITS:
            kind = DEMO_EDITS[edit]["kind"]
            check(run / edit, staged(run / edit, kind, *edit_outputs(kind)), f"{name}/{edit}/")
    return sorted(foreign)


def check_demo_folder(out: Path) -> None:
    """Refuse, before any work, a demo folder that is a file or holds anything the demo did not write: the demo
    replaces what it wrote (a run it cannot continue is trained again from scratch) and nothing else."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ScorelabError(f"output folder {out} is a file; choose a folder")
    foreign = _foreign(out) if out.is_dir() else []
    if foreign:
        raise ScorelabError(
            f"output folder {out} holds files the demo did not write ({', '.join(foreign[:3])}); "
            "move them or choose a new --out"
        )
    check_writable_dir(out.parent)


def _why_not_resumable(cfg, run_dir: Path) -> str | None:
    """Why this scorelab cannot continue an earlier demo run (another network version or other demo settings)."""
    _, record, recorded = load_run_checkpoint(run_dir)
    differ = config_differences(cfg, recorded, ("data", "model", "noise", "train"))
    if differ:
        return f"was trained with other demo settings ({'; '.join(differ[:3])})"
    have, want = record_format(record, run_dir), model_format(cfg)
    if have != want:
        return f"holds a {cfg.model.kind} of model format {have}, and this scorelab builds format {want}"
    return None


def _train(name: str, run_dir: Path, progress: bool, log) -> dict:
    cfg = _config(name)
    if list_checkpoints(run_dir / "checkpoints"):
        stale = _why_not_resumable(cfg, run_dir)
        if stale:  # a run it cannot continue is trained again; check_demo_folder saw only the demo's files there
            log(f"{run_dir} {stale}: training it again")
            shutil.rmtree(run_dir)
    trainer = Trainer(cfg, run_dir, progress=progress, log=log, continue_with=f"scorelab demo --out {run_dir.parent}")
    if list_checkpoints(run_dir / "checkpoints"):
        trainer.resume()  # a rerun of the demo continues where it stopped
    return trainer.run()


def _score_field_figure(denoiser, out: Path) -> Path:
    """The learned score beside the exact one for the ring-of-Gaussians toy, at a middle noise level."""
    g = torch.linspace(-3, 3, 21)
    pts = torch.stack(torch.meshgrid(g, g, indexing="xy"), -1).reshape(-1, 2)
    sigma = torch.full((pts.shape[0],), 0.3)
    with torch.no_grad():
        learned = score_from_denoised(pts, denoiser(pts, sigma), sigma)
    exact = ring8_mixture().score(pts, 0.3).float()
    compress = lambda v: v / (v.norm(dim=1, keepdim=True) + 1e-8) * v.norm(dim=1, keepdim=True).sqrt()  # noqa: E731
    return quiver(
        {
            "learned score, sigma = 0.3": (pts, compress(learned)),
            "exact score, sigma = 0.3": (pts, compress(exact)),
        },
        out,
        lim=3.2,
        arrow=0.27,  # the grid spacing: the longest arrow of either panel spans one cell
    )


def _trajectory_figure(cfg, denoiser, out: Path) -> Path:
    """The last part of 16 annealed Langevin chains: every step at noise levels sigma <= 0.2 (above that the steps are
    larger than the plot), then the final denoised sample."""
    steps = []
    final = generate(cfg, denoiser, 16, seed=1, progress=False, callback=lambda i, x: steps.append(x.clone()))
    level = sample_sigmas(cfg)[: len(steps) // cfg.sample.steps_per_level].repeat_interleave(cfg.sample.steps_per_level)
    path = torch.stack([x for x, s in zip(steps, level.tolist(), strict=False) if s <= 0.2] + [final])
    return trajectories(path, out, lim=4, background=ring8_mixture().sample(2000, torch.Generator().manual_seed(0)))


def _guidance_grids(run_dir: Path, progress: bool, log) -> list[dict]:
    """Class-conditional grids (one column per class) and classifier figures per sampler and guidance scale."""
    cfg, denoiser, _ = load_run(run_dir)
    rows = []
    for sampler in DEMO_SAMPLERS:
        for guidance in DEMO_GUIDANCE:
            x = generate(cfg, denoiser, 200, seed=0, sampler=sampler, steps=20, guidance=guidance, progress=progress)
            grid = image_grid(x[:100], run_dir / f"grid_{sampler}_g{guidance:g}.png", nrow=10)
            report = conditional_report(x, sample_labels(cfg, 200, None))
            rows.append(
                {
                    "sampler": sampler,
                    "guidance": guidance,
                    "grid": grid,
                    "conditional_accuracy": report["conditional_accuracy"],
                    "within_class_diversity": report["within_class_diversity"],
                }
            )
    return rows


def _edits(run_dir: Path, progress: bool, log) -> dict:
    """Each DEMO_EDITS edit of the first 100 held-out digits, once each: its metrics, with 'figure' (KIND.png)."""
    done = {}
    for folder, settings in DEMO_EDITS.items():
        m = edit_run(
            run_dir, **settings, held_out=100, n=1, steps=20, out_dir=run_dir / folder, progress=progress, log=log
        )
        done[folder] = {**m, "figure": run_dir / folder / f"{settings['kind']}.png"}
    return done


def _cell(v, digits: int = 4) -> str:
    """A metric as text: floats to `digits` significant figures, lists (of lists) element by element."""
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    if isinstance(v, list):
        return ", ".join(f"({_cell(x, 3)})" if isinstance(x, list) else _cell(x, 3) for x in v)
    return str(v)


def _row(k, v) -> str:
    return f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(_cell(v))}</td></tr>"


def _table(d: dict) -> str:
    return "<table>" + "".join(_row(k, v) for k, v in d.items()) + "</table>"


def run_demo(out: Path, *, progress: bool = True, log=print) -> Path:
    out = Path(out)
    check_demo_folder(out)
    out.mkdir(parents=True, exist_ok=True)
    log("[1/6] NCSN toy reproduction with exact scores (Song & Ermon 2019, Fig. 3)")
    toy = ncsn_toy.run(out / "ncsn-toy", progress=progress)
    log("[2/6] training the 2D score network on the ring of 8 Gaussians")
    toy_train = _train("ncsn-toy2d", out / "toy2d", progress, log)
    toy_metrics = sample_run(out / "toy2d", progress=progress, log=log)
    toy_cfg, toy_denoiser, _ = load_run(out / "toy2d")
    field = _score_field_figure(toy_denoiser, out / "toy2d" / "score_field.png")
    traj = _trajectory_figure(toy_cfg, toy_denoiser, out / "toy2d" / "trajectories.png")
    log("[3/6] training the digits score U-Net")
    dig_train = _train("ncsn-digits", out / "digits", progress, log)
    log("[4/6] sampling digits with annealed Langevin")
    dig_metrics = sample_run(out / "digits", progress=progress, log=log)
    log("[5/6] class-conditional DDPM on digits, sampled with guidance 0, 1 and 3")
    ddpm_train = _train("ddpm-digits", out / "ddpm-digits", progress, log)
    guided = _guidance_grids(out / "ddpm-digits", progress, log)
    log("[6/6] editing held-out digits with the DDPM model: inpainting (RePaint, replacement) and SDEdit")
    edits = _edits(out / "ddpm-digits", progress, log)
    metrics = {
        "ncsn_toy": {k: toy[k] for k in ("langevin_weight", "annealed_weight", "true_weight", "passed")},
        "toy2d": {"train": toy_train, **toy_metrics},
        "digits": {"train": dig_train, **dig_metrics},
        "ddpm_digits": {"train": ddpm_train, "guidance": [{k: v for k, v in r.items() if k != "grid"} for r in guided]},
        "edits": {name: {k: v for k, v in m.items() if k not in ("figure", "out")} for name, m in edits.items()},
    }
    (out / "metrics.json").write_text(json_text(metrics))
    rel = lambda p: Path(p).resolve().relative_to(out.resolve()).as_posix()  # noqa: E731
    guided_rows = "".join(
        "<tr><td>{sampler}</td><td>{guidance:g}</td><td><img src='{src}' width='160'></td><td>{acc:.3f}</td>"
        "<td>{div:.2f}</td></tr>".format(
            sampler=r["sampler"],
            guidance=r["guidance"],
            src=rel(r["grid"]),
            acc=r["conditional_accuracy"],
            div=r["within_class_diversity"],
        )
        for r in guided
    )
    edit_rows = "".join(
        "<tr><td>{name}</td><td>{what}</td><td>{rms:.3f}</td><td>{kept:.3f}</td><td>{label}</td></tr>".format(
            name=html.escape(name),
            what=html.escape(
                f"t0 {r['strength']:g} (sigma {r['sigma_start']:.3g})" if "strength" in r else m["filled"]
            ),
            rms=r["rms_to_input"],
            kept=r["input_class_kept"],
            label=f"{r['label_accuracy']:.3f}" if "label_accuracy" in r else "",
        )
        for name, m in edits.items()
        for r in m["rows"]
    )
    sd, sd_settings = edits["sdedit"], DEMO_EDITS["sdedit"]
    edit_figures = " ".join(f"<img src='{rel(m['figure'])}' width='30%'>" for m in edits.values())
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>scorelab demo</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}}img{{max-width:100%}}
td{{padding:2px 10px;border-bottom:1px solid #ddd}}</style></head><body>
<h1>scorelab demo</h1>
<p>Demo-size runs (short training); the README lists the full-size results and the commands for them.</p>
<h2>1. Annealed vs plain Langevin with exact scores (Song &amp; Ermon 2019, Fig. 3)</h2>
<img src="{rel(toy["figure"])}">{_table(metrics["ncsn_toy"])}
<h2>2. Learned score on the ring of 8 Gaussians</h2>
<p>Learned and exact score at sigma = 0.3, arrows of length &prop; &radic;|score| on one scale in both panels:</p>
<img src="{rel(field)}"><p>Annealed Langevin trajectories at noise levels sigma &le; 0.2 (dot: the first step at
sigma &le; 0.2, cross: the final denoised sample):</p><img src="{rel(traj)}">
<p>Samples beside fresh data:</p><img src="toy2d/samples/samples.png">
{_table({k: v for k, v in toy_metrics.items() if k != "run"})}
<h2>3. Digits (scikit-learn 8x8), noise-conditional U-Net + annealed Langevin</h2>
<p>Samples (left) and real held-out digits (right):</p>
<img src="digits/samples/samples.png" width="45%"> <img src="digits/samples/held_out.png" width="45%">
{_table({k: v for k, v in dig_metrics.items() if k != "run"})}
<h2>4. Class-conditional DDPM with classifier-free guidance (one column per class)</h2>
<p>Guidance 0 is the unconditional model, 1 the plain conditional model, 3 guided; 20 steps each.
Conditional accuracy: the digits classifier agrees with the requested class (200 samples).</p>
<table><tr><th>sampler</th><th>guidance</th><th>samples</th><th>conditional accuracy</th>
<th>within-class diversity</th></tr>
{guided_rows}
</table>
<h2>5. Editing held-out digits with the DDPM model</h2>
<p>Filling the bottom half with RePaint (10 runs of each of 20 steps; left) and with the replacement method (RePaint
without resampling, 20 steps; middle), both without a label; SDEdit towards the label {sd["label"]} at guidance
{sd["guidance"]:g}, at t0 = {", ".join(f"{t:g}" for t in sd_settings["strengths"])} (right). Each row: the input (for
inpainting also the input with its region grey), then its edits. Figures over the first 100 held-out digits: RMS
difference to the input (on [-1, 1]), the share the digits classifier puts in the input's true class (it reads
{sd["judge_accuracy_on_inputs"]:.0%} of the unedited inputs right), and the share it puts in class {sd["label"]}
({sd["inputs_in_label"]:.0%} of the inputs already are).</p>
{edit_figures}
<table><tr><th>edit</th><th>setting</th><th>RMS to input</th><th>input class kept</th><th>class {sd["label"]}</th></tr>
{edit_rows}
</table>
</body></html>"""
    index = out / "index.html"
    index.write_text(page)
    return index
