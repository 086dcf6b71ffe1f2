"""The `scorelab` command: train, sample, evaluate, inpaint, sdedit, reproduce, demo."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import click

from .config import CHOICES, MAX_STEPS, TRAIN_MEMORY_HINT, canonical_choice
from .errors import ScorelabError, warn
from .outputs import json_text


class _Name(click.Choice):
    """A choice of names written with underscores that also takes them with hyphens (dpmpp-2m for dpmpp_2m)."""

    def convert(self, value, param, ctx):
        return super().convert(canonical_choice(value, self.choices), param, ctx)


class _Scale(click.FloatRange):
    """A finite float >= 0 (click's FloatRange lets nan and inf through)."""

    def __init__(self):
        super().__init__(min=0)

    def convert(self, value, param, ctx):
        value = super().convert(value, param, ctx)
        if not math.isfinite(value):
            self.fail(f"{value} is not a finite number", param, ctx)
        return value


def _device_option(command):
    return click.option(
        "--device",
        default="cpu",
        show_default=True,
        help="Where the model runs: auto (a CUDA GPU when there is one), cpu, cuda or cuda:N.",
    )(command)


# options several commands share, declared once
_seed_option = click.option(
    "--seed", type=click.IntRange(0, 2**63 - 1), default=0, show_default=True, help="Random seed."
)
_request_memory_option = click.option(
    "--max-memory", default=None, help="Refuse requests estimated above this (e.g. 4G; default: available memory)."
)
_quiet_option = click.option("--quiet", is_flag=True, help="No progress bars.")
LABEL_HELP = (
    "0 to model.num_classes - 1 (conditional runs; for an image folder, class i is the i-th class folder in sorted "
    "order)"
)

SAMPLER_NAMES = CHOICES["sample.sampler"]
DIFFUSION_SAMPLER_NAMES = tuple(name for name in SAMPLER_NAMES if name != "annealed_langevin")
REGION_NAMES = ("bottom", "top", "left", "right", "centre")  # scorelab.pipelines.edit.REGIONS


def _echo_table(rows: list[list[str]]) -> None:
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    for j, row in enumerate(rows):
        click.echo("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)))
        if j == 0:
            click.echo("  ".join("-" * w for w in widths))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="scorelab")
def cli() -> None:
    """scorelab: learn, follow, compose and distill scores, in pure PyTorch."""


@cli.command()
@click.argument("config", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--out", type=click.Path(file_okay=False, path_type=Path), help="Run directory (default runs/CONFIG_NAME)."
)
@click.option(
    "--resume",
    type=click.Path(file_okay=False, path_type=Path),
    help="Continue the run in this directory from its newest good checkpoint.",
)
@click.option(
    "--max-memory", default=None, help="Refuse to train above this estimate (e.g. 4G; default: available memory)."
)
@_device_option
@_quiet_option
def train(
    config: Path, out: Path | None, resume: Path | None, max_memory: str | None, device: str, quiet: bool
) -> None:
    """Train the model CONFIG describes.

    Checkpoints go to RUN_DIR/checkpoints; Ctrl-C saves one and stops. To continue: train CONFIG --resume RUN_DIR.
    """
    from .config import load_config
    from .resources import parse_bytes
    from .train.checkpoint import list_checkpoints
    from .train.trainer import RUN_FILES, Trainer

    cfg = load_config(config)
    if resume is not None and out is not None and resume != out:
        raise ScorelabError("give either --out or --resume, not both with different directories")
    run_dir = resume or out or Path("runs") / config.stem
    if resume is None and list_checkpoints(run_dir / "checkpoints"):
        raise ScorelabError(f"{run_dir} already holds a run; continue it with --resume {run_dir} or pick another --out")
    if resume is None and run_dir.is_dir():  # not into a folder of other files; a run that never checkpointed is fine
        foreign = sorted(p.name for p in run_dir.iterdir() if p.name.removesuffix(".tmp") not in RUN_FILES)
        if foreign:
            raise ScorelabError(
                f"{run_dir} holds files that are not a run's ({', '.join(foreign[:3])}); choose a new or empty --out"
            )
    budget = None if max_memory is None else parse_bytes(max_memory)
    trainer = Trainer(
        cfg,
        run_dir,
        progress=not quiet,
        log=click.echo,
        warn=warn,
        continue_with=f"scorelab train {config} --resume {run_dir}",
        max_memory=budget,
        device=device,
    )
    if resume is not None:
        trainer.resume()
    summary = trainer.run()
    if summary["session_steps"]:
        click.echo(
            f"trained {summary['session_steps']} steps in {summary['session_seconds']} s, now at step "
            f"{summary['step']}; run directory: {run_dir}"
        )


@cli.command()
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--n", type=click.IntRange(min=2), default=None, help="Number of samples (default: the config's).")
@_seed_option
@click.option(
    "--out", type=click.Path(file_okay=False, path_type=Path), help="Output directory (default RUN_DIR/samples)."
)
@click.option(
    "--sampler",
    type=_Name(SAMPLER_NAMES),
    default=None,
    help="Sampler (default: the config's sample.sampler).",
)
@click.option(
    "--steps",
    type=click.IntRange(1, MAX_STEPS, max_open=True),
    default=None,
    help="Diffusion sampler steps (positive sigmas; default: the config's sample.steps).",
)
@click.option(
    "--guidance",
    type=_Scale(),
    default=None,
    help="Classifier-free guidance scale s in D_u + s (D_c - D_u): 0 unconditional, 1 the plain conditional model "
    "(default: the config's sample.guidance).",
)
@click.option(
    "--label",
    type=int,
    default=None,
    help=f"Class to sample, {LABEL_HELP}; default: all in turn.",
)
@_request_memory_option
@_device_option
@_quiet_option
def sample(
    run_dir: Path,
    n: int | None,
    seed: int,
    out: Path | None,
    sampler: str | None,
    steps: int | None,
    guidance: float | None,
    label: int | None,
    max_memory: str | None,
    device: str,
    quiet: bool,
) -> None:
    """Draw samples from a trained run.

    Writes the samples, a PNG grid and metrics.json to OUT, all at once when every file is ready.
    """
    from .pipelines.sample import sample_run
    from .resources import parse_bytes

    metrics = sample_run(
        run_dir,
        n=n,
        seed=seed,
        out_dir=out,
        sampler=sampler,
        steps=steps,
        guidance=guidance,
        label=label,
        progress=not quiet,
        max_memory=None if max_memory is None else parse_bytes(max_memory),
        device=device,
        log=click.echo,
    )
    shown = {k: v for k, v in metrics.items() if isinstance(v, (int, float, str))}
    click.echo(json_text(shown))
    click.echo(f"samples and metrics written to {out or Path(run_dir) / 'samples'}")


@cli.command()
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--guidance",
    "guidances",
    type=_Scale(),
    multiple=True,
    help="Guidance scales s in D_u + s (D_c - D_u) (repeatable; default 0, 1 and 3, or 1 for an unconditional run).",
)
@click.option(
    "--sampler",
    "samplers",
    multiple=True,
    type=_Name(DIFFUSION_SAMPLER_NAMES),
    help="Samplers (repeatable; default dpmpp_2m).",
)
@click.option(
    "--steps",
    type=click.IntRange(1, MAX_STEPS, max_open=True),
    default=20,
    show_default=True,
    help="Sampler steps (positive sigmas).",
)
@click.option(
    "--n", type=click.IntRange(min=2), default=1000, show_default=True, help="Samples per sampler and guidance."
)
@click.option("--no-bpd", is_flag=True, help="Skip the held-out bits per dimension.")
@_request_memory_option
@_device_option
@_quiet_option
def evaluate(
    run_dir: Path,
    guidances,
    samplers,
    steps: int,
    n: int,
    no_bpd: bool,
    max_memory: str | None,
    device: str,
    quiet: bool,
) -> None:
    """Evaluate an image run (digits or an images folder) into RUN_DIR/eval.

    Held-out bits/dim (DDPM runs; a pass over every timestep, two for a conditional run), then per sampler and
    guidance scale: for the digits conditional accuracy, diversity within a class and Frechet distance; for an
    images folder how near the samples lie to the training images (and the share of copies) beside the held-out
    images' figures.
    """
    from .pipelines.evaluate import evaluate_run
    from .resources import parse_bytes

    evaluate_run(
        run_dir,
        guidances=guidances or None,
        samplers=samplers or ("dpmpp_2m",),
        steps=steps,
        n=n,
        bpd=not no_bpd,
        max_memory=None if max_memory is None else parse_bytes(max_memory),
        progress=not quiet,
        device=device,
        log=click.echo,
    )
    click.echo(f"results: {Path(run_dir) / 'eval' / 'eval.json'}")


@cli.command()
@click.argument("name", required=False)
@click.option("--list", "list_", is_flag=True, help="List the reproductions.")
@click.option("--quick", is_flag=True, help="A reduced setting: about a minute.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), help="Write the results here.")
@click.option(
    "--out", type=click.Path(file_okay=False, path_type=Path), help="Figure directory (default runs/reproduce/NAME)."
)
@_quiet_option
def reproduce(
    name: str | None, list_: bool, quick: bool, json_path: Path | None, out: Path | None, quiet: bool
) -> None:
    """Reproduce a paper's figure or table (--list shows them): ncsn-toy, sampler-accuracy, fit-multiview, repaint."""
    from .reproduce import REPRODUCTIONS

    if list_ and name is not None:
        raise ScorelabError(f"give a reproduction's NAME or --list, not both (got {name!r} and --list)")
    if list_ or name is None:
        for key, module in REPRODUCTIONS.items():
            click.echo(f"{key:20s} {module.TITLE}")
        return
    name = canonical_choice(name, REPRODUCTIONS)
    if name not in REPRODUCTIONS:
        raise ScorelabError(f"unknown reproduction {name!r}; allowed: {', '.join(REPRODUCTIONS)}")
    module = REPRODUCTIONS[name]
    out = out or Path("runs") / "reproduce" / name
    from fnmatch import fnmatch

    from .outputs import check_output_dir, check_writable_dir, make_dirs, staged_output
    from .train.checkpoint import _atomic_write

    json_in_out = json_path is not None and json_path.resolve().parent == out.resolve()

    def owns(file: str) -> bool:  # its figures, and a results JSON asked for beside them
        return any(fnmatch(file, pattern) for pattern in module.OUTPUTS) or (json_in_out and file == json_path.name)

    if json_path is not None and not json_in_out and out.resolve() in json_path.resolve().parents:
        raise ScorelabError(f"--json must be in --out ({out}) itself or outside it, not in a folder below it")
    # refuse a place that cannot take the figures before the work, not after it
    check_output_dir(out, owns, f"reproduce {name}")
    if json_path is not None and not json_in_out:
        check_writable_dir(json_path.parent)
    # the figures (and a JSON beside them) appear together, or not at all
    with staged_output(out, owns, f"reproduce {name}") as stage:
        result = module.run(stage, quick=quick, progress=not quiet)
        result["figure"] = str(out / Path(result["figure"]).name)
        payload = json_text({k: v for k, v in result.items() if k != "table"}).encode()
        if json_in_out:
            _atomic_write(stage / json_path.name, payload)
    if json_path is not None and not json_in_out:
        make_dirs(json_path.parent)
        _atomic_write(json_path, payload)
    click.echo(module.TITLE)
    _echo_table(result["table"])
    click.echo(f"figure: {result['figure']}")
    if json_path is not None:
        click.echo(f"results: {json_path}")
    if not result["passed"]:
        click.echo("the result does not show what the paper shows", err=True)
        sys.exit(1)


def _edit_options(command):
    """The options inpaint and sdedit share, in the order --help shows them."""
    options = [
        click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path)),
        click.option(
            "--image",
            "images",
            multiple=True,
            type=click.Path(dir_okay=False, path_type=Path),
            help="An image to edit (repeatable): its centre square, resized to the run's size (digits: 8x8 "
            "greyscale, ink bright).",
        ),
        click.option(
            "--held-out",
            type=click.IntRange(min=0),
            default=0,
            show_default=True,
            help="Edit the first N images of the run's held-out split (after any --image); their labels give the class "
            "figures when every input has one.",
        ),
        click.option("--n", type=click.IntRange(min=1), default=4, show_default=True, help="Edits per input."),
        click.option(
            "--steps",
            type=click.IntRange(1, MAX_STEPS, max_open=True),
            default=None,
            help="Steps of the whole schedule (default: the config's sample.steps); sdedit runs the part below its "
            "start.",
        ),
        click.option(
            "--label",
            type=int,
            default=None,
            help=f"Class to edit towards, {LABEL_HELP}; default: none (the model's null label).",
        ),
        click.option(
            "--guidance",
            type=_Scale(),
            default=None,
            help="Guidance scale with --label (default: the config's sample.guidance).",
        ),
        _seed_option,
        click.option(
            "--out",
            type=click.Path(file_okay=False, path_type=Path),
            help="Output directory (default RUN_DIR/inpaint or RUN_DIR/sdedit).",
        ),
        _request_memory_option,
        _device_option,
        _quiet_option,
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _edit(kind: str, run_dir: Path, max_memory: str | None, quiet: bool, out: Path | None, **kwargs) -> None:
    from .pipelines.edit import edit_run
    from .resources import parse_bytes

    metrics = edit_run(
        run_dir,
        kind,
        out_dir=out,
        progress=not quiet,
        max_memory=None if max_memory is None else parse_bytes(max_memory),
        log=click.echo,
        **kwargs,
    )
    rows = metrics["rows"]
    keys = list(rows[0])
    _echo_table([keys] + [[f"{r[k]:.4g}" if isinstance(r[k], float) else str(r[k]) for k in keys] for r in rows])
    click.echo(f"edits and metrics written to {metrics['out']}")


@cli.command()
@_edit_options
@click.option("--region", type=click.Choice(REGION_NAMES), default=None, help="The part of the image to fill.")
@click.option(
    "--mask",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="A black-and-white image of the run's size; white marks the pixels to fill.",
)
@click.option(
    "--sampler",
    type=_Name((*DIFFUSION_SAMPLER_NAMES, "repaint")),
    default="repaint",
    show_default=True,
    help="repaint (Lugmayr et al. 2022; --resample 1 is the replacement method), or any other diffusion sampler "
    "through a wrapper that keeps the known pixels (no resampling; its fills drift further, see the README).",
)
@click.option(
    "--resample", type=click.IntRange(min=1), default=None, help="RePaint: runs of each stretch [default: 10]."
)
@click.option("--jump", type=click.IntRange(min=1), default=None, help="RePaint: steps per stretch [default: 1].")
def inpaint(run_dir: Path, images, max_memory, quiet, out, **kwargs) -> None:
    """Fill a region of images with a trained image run.

    Writes inpaint.png (per input: the input, the input with its region grey, the fills), inpaint.safetensors and
    metrics.json to OUT (default RUN_DIR/inpaint), all at once when every file is ready.
    """
    _edit("inpaint", run_dir, max_memory, quiet, out, files=images, **kwargs)


@cli.command()
@_edit_options
@click.option(
    "--strength",
    "strengths",
    multiple=True,
    required=True,
    type=click.FloatRange(0, 1, min_open=True),
    help="SDEdit's t0 in (0, 1]: the input is noised to the run's noise level at that time of its forward process, "
    "then denoised; low stays close to the input, high follows the model (repeatable).",
)
@click.option(
    "--sampler",
    type=_Name(DIFFUSION_SAMPLER_NAMES),
    default="ddpm",
    show_default=True,
    help="ddpm follows the paper's stochastic reverse process; a deterministic sampler maps the noised input.",
)
def sdedit(run_dir: Path, images, max_memory, quiet, out, **kwargs) -> None:
    """Edit images by noising them part of the way and denoising (SDEdit, Meng et al. 2022).

    Writes sdedit.png (per input: the input, then its edits per strength), sdedit.safetensors and metrics.json to
    OUT (default RUN_DIR/sdedit), all at once when every file is ready.
    """
    _edit("sdedit", run_dir, max_memory, quiet, out, files=images, **kwargs)


@cli.command()
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("runs/demo"),
    show_default=True,
    help="Report folder; a rerun continues the runs in it.",
)
@_quiet_option
def demo(out: Path, quiet: bool) -> None:
    """Train the 2D and digits models at demo size and write a report.

    Samples, figures and metrics go under OUT; the report is OUT/index.html.
    """
    from .pipelines.demo import run_demo

    index = run_demo(out, progress=not quiet, log=click.echo)
    click.echo(f"report: {index.resolve()}")


OUT_OF_MEMORY_HINTS = {
    "train": TRAIN_MEMORY_HINT,
    "sample": "lower --n",
    "evaluate": "lower --n",
    "inpaint": "lower --n or --held-out",
    "sdedit": "lower --n or --held-out",
}


def main() -> None:
    """Entry point: every user error is one line `error: ...` on stderr and exit status 2 (click's usage errors too)."""
    from .resources import keep_freed_memory

    keep_freed_memory()
    try:
        code = cli.main(standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError as e:  # `scorelab` alone: show the help
        click.echo(e.format_message())
        sys.exit(0)
    except click.UsageError as e:
        command = next((a for a in sys.argv[1:] if a in cli.commands), None)  # click gives no context for some
        where = e.ctx.command_path if e.ctx is not None else " ".join(["scorelab", *([command] if command else [])])
        click.echo(f"error: {e.format_message()} (see '{where} --help')", err=True)
        sys.exit(2)
    except ScorelabError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(2)
    except click.exceptions.Abort:
        click.echo("error: aborted", err=True)
        sys.exit(130)
    except click.ClickException as e:
        click.echo(f"error: {e.format_message()}", err=True)
        sys.exit(e.exit_code)
    except (RuntimeError, MemoryError) as e:  # an allocation that failed: what, and what to ask for instead
        from .resources import out_of_memory

        what = out_of_memory(e)
        if what is None:
            raise
        command = next((a for a in sys.argv[1:] if a in cli.commands), None)
        click.echo(f"error: {what}; {OUT_OF_MEMORY_HINTS.get(command, 'ask for less')}", err=True)
        sys.exit(2)
    except OSError as e:  # a folder that cannot be created, a full disk: the OS's reason and the path
        where = f": {e.filename}" if e.filename else ""
        click.echo(f"error: {e.strerror or e}{where}", err=True)
        sys.exit(2)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":  # python -m scorelab.cli, as well as python -m scorelab and the scorelab command
    main()
