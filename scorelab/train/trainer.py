"""The training loop: NCSN objective, Adam, EMA, checkpoints that resume exactly."""

from __future__ import annotations

import contextlib
import json
import random
import signal
import threading
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from tqdm.auto import tqdm

from ..config import TRAIN_MEMORY_HINT, Config, config_differences, config_from_dict, config_to_dict, load_config
from ..data.image_sets import budget_left, check_classes, check_outside, data_shape, image_set, is_image_data
from ..data.sources import BatchSource
from ..devices import resolve_device
from ..errors import ConfigError, ScorelabError
from ..models.build import build_denoiser, check_model_format, model_format
from ..objectives.diffusion import ddpm_loss
from ..objectives.score_matching import ncsn_loss
from ..outputs import json_text
from ..resources import check_budget
from ..schedules import alphas_cumprod, beta_schedule, geometric_sigmas
from .checkpoint import _atomic_write, list_checkpoints, load_latest, save_checkpoint
from .ema import EMA
from .flat import FlatParameters
from .guard import NonFiniteGuard

RUN_FILES = {"config.yaml", "checkpoints", "train.json"}  # what training writes into a run directory


# measured: a few steps of the toy MLP at batch 8 and of the digits U-Net at batch 2 add 11 and 71 MB of resident
# memory (library code paged in, oneDNN's primitive caches, allocator arenas) against 5 and 32 MB of estimated tensors
FIXED_OVERHEAD = 128 * 2**20


def save_run_config(run_dir: Path, cfg: Config) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    _atomic_write(run_dir / "config.yaml", yaml.safe_dump(config_to_dict(cfg), sort_keys=False).encode())


def _remove_fresh_run(run_dir: Path, made: list[Path], had_config: bool) -> None:
    """Take away what a fresh run wrote before failing: its config, its empty checkpoint folder and the folders it
    created, so that no half-made run is left behind."""
    if not had_config:
        (run_dir / "config.yaml").unlink(missing_ok=True)
    for folder in (run_dir / "checkpoints", *made):
        try:
            folder.rmdir()  # only if empty
        except OSError:
            pass


def load_run_checkpoint(run_dir: Path, warn=print) -> tuple[dict[str, torch.Tensor], dict, Config]:
    """The newest good checkpoint of a run (falling back past damaged ones, and past records without a config),
    with the config its record holds."""
    tensors, record = load_latest(Path(run_dir) / "checkpoints", warn=warn, needs=("config",))
    where = Path(run_dir) / "checkpoints" / f"ckpt_{record['step']:08d}.json"
    if not isinstance(record["config"], dict):  # config_from_dict(None) would be the default config
        raise ScorelabError(f"checkpoint {where} holds a config that does not load (not a mapping)")
    try:
        return tensors, record, config_from_dict(record["config"])
    except ConfigError as e:
        raise ScorelabError(f"checkpoint {where} holds a config that does not load ({e})") from None


def load_run_config(run_dir: Path) -> Config:
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise ScorelabError(f"{run_dir} is not a run directory (no config.yaml)")
    return load_config(path)


def seed_global_rngs(seed: int, cuda: torch.device | None = None) -> None:
    """Seed torch's CPU, numpy's and Python's global generators, and the `cuda` device's: a fresh run starts from
    states that depend on the seed alone (unseeded, numpy and `random` start from OS entropy, and a resumed run could
    not match a straight one). Not torch.manual_seed, which also reseeds every other CUDA device."""
    torch.default_generator.manual_seed(seed)
    if cuda is not None:
        torch.cuda.init()  # the generators exist once CUDA is up (a no-op when it is)
        torch.cuda.default_generators[cuda.index].manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def rng_states(cuda: torch.device | None = None) -> dict[str, torch.Tensor]:
    """The global random states as tensors: torch's CPU generator, numpy's legacy MT19937 and Python's `random`, and
    the `cuda` device's generator when one is given. Training draws its own randomness from `Trainer.generator`;
    these are saved too, so that code which reaches for a global generator (a user's model with dropout, say) still
    resumes exactly."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    on_device = {} if cuda is None else {"rng.cuda": torch.cuda.get_rng_state(cuda)}
    return {
        **on_device,
        "rng.torch": torch.get_rng_state(),
        "rng.numpy": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
        "rng.numpy_extra": torch.tensor([pos, has_gauss], dtype=torch.int64),
        "rng.numpy_gauss": torch.tensor([gauss], dtype=torch.float64),
        "rng.python": torch.tensor(internal, dtype=torch.int64),
        "rng.python_extra": torch.tensor([version, 0 if gauss_next is None else 1], dtype=torch.int64),
        "rng.python_gauss": torch.tensor([0.0 if gauss_next is None else gauss_next], dtype=torch.float64),
    }


def set_rng_states(t: dict[str, torch.Tensor], cuda: torch.device | None = None) -> None:
    """Restore what `rng_states` saved (checkpoints from before it existed have none: then nothing changes); the
    CUDA generator's state only onto a `cuda` device, when the states hold one (a run trained there)."""
    if "rng.torch" not in t:
        return
    if cuda is not None and "rng.cuda" in t:
        torch.cuda.set_rng_state(t["rng.cuda"], cuda)
    torch.set_rng_state(t["rng.torch"])
    pos, has_gauss = t["rng.numpy_extra"].tolist()
    np.random.set_state(
        ("MT19937", t["rng.numpy"].numpy().astype(np.uint32), pos, has_gauss, t["rng.numpy_gauss"].item())
    )
    version, has_next = t["rng.python_extra"].tolist()
    gauss_next = t["rng.python_gauss"].item() if has_next else None
    random.setstate((version, tuple(t["rng.python"].tolist()), gauss_next))


def check_fingerprint(images, record: dict, run_dir: Path, action: str) -> None:
    """One-line error when the images a run was trained on have changed since its checkpoint `record` (records from
    before fingerprints were kept have none: nothing to check)."""
    have = record.get("data_fingerprint")
    if images is not None and have is not None and have != images.fingerprint:
        raise ScorelabError(
            f"the data of {run_dir} changed since its checkpoint ({images.source} now): restore the images the run "
            f"was trained on to {action}, or train a new run"
        )


class Trainer:
    def __init__(
        self,
        cfg: Config,
        run_dir: Path,
        *,
        progress: bool = True,
        log=print,
        warn=None,
        continue_with: str | None = None,
        max_memory: int | None = None,
        device: str | torch.device = "cpu",
    ):
        """`log` takes progress lines, `warn` warnings (default: `log`); `continue_with` is the command that the
        message after Ctrl-C or SIGTERM gives for continuing (default: scorelab train CONFIG --resume RUN_DIR).
        `run` refuses, before writing anything, to train when `memory_estimate` exceeds max_memory bytes (default:
        the available memory, or the free memory of a CUDA `device`). `device` is one of
        scorelab.devices.DEVICE_NAMES; the model is initialised on the CPU and moved, and every random draw comes
        from CPU generators, so a seed starts the same run on every device, and a checkpoint resumes on any
        device."""
        self.device = resolve_device(device)
        self.cfg, self.run_dir, self.progress, self.log = cfg, Path(run_dir), progress, log
        self.max_memory = max_memory
        self.warn = warn or log
        self.continue_with = continue_with or f"scorelab train CONFIG --resume {self.run_dir}"
        # the training's own global random states: parameter initialisation, and any global draws a user's model
        # makes, come from them; the caller's are put back after each use (seeded from train.seed when fresh)
        caller = rng_states(self._cuda)
        seed_global_rngs(cfg.train.seed, self._cuda)
        self.denoiser = build_denoiser(cfg).to(self.device)
        self._rngs = rng_states(self._cuda)
        set_rng_states(caller, self._cuda)
        self._rngs_live = False  # whether the global generators hold the training's states (inside run)
        # one buffer: Adam, clipping and the EMA are one kernel each; built after the move, which gives new memory
        self.params = FlatParameters(self.denoiser)
        self.ema = EMA(self.denoiser, cfg.train.ema_decay)
        self.opt = torch.optim.Adam([self.params.flat], lr=cfg.train.lr, fused=True)
        self.generator = torch.Generator().manual_seed(cfg.train.seed)
        check_outside(self.run_dir, cfg.data)
        self._images, self._source = None, None  # read on first use: after resume's cheaper checks, before run writes
        if cfg.train.objective == "ncsn":
            self.sigmas = geometric_sigmas(cfg.noise.sigma_max, cfg.noise.sigma_min, cfg.noise.levels)
        else:
            self.alpha_bar = alphas_cumprod(beta_schedule(cfg.noise.schedule, cfg.noise.timesteps))
        self.step = 0
        after = f" with the last good checkpoint in {self.run_dir / 'checkpoints'}"
        self.guard = NonFiniteGuard("training", log=self.warn, after=after)
        self._stop_signal: int | None = None
        self.seconds_before = 0.0  # training time of the run's earlier sessions, up to the checkpoint resumed from
        self._session_start = time.time()
        self._saved = False  # whether this session has written a checkpoint
        self._saved_at: tuple[int, float] | None = None  # (step, session seconds) of this session's last checkpoint

    @property
    def images(self):
        """The ImageSet of image data (digits or a folder; None for 2D toys), read and budgeted on first use."""
        if self._images is None and is_image_data(self.cfg.data):
            self._images = image_set(
                self.cfg.data,
                num_classes=self.cfg.model.num_classes,
                progress=self.progress,
                max_memory=self.max_memory,
            )
            check_classes(self._images, self.cfg.model.num_classes)
        return self._images

    @property
    def source(self) -> BatchSource:
        """Where the training batches come from (its state is the data order)."""
        if self._source is None:
            self._source = BatchSource(
                self.cfg.data.name, self.cfg.train.batch_size, images=self.images, flip=self.cfg.data.flip
            )
        return self._source

    @property
    def _cuda(self) -> torch.device | None:
        """The CUDA device whose generator the global states hold, or None on the CPU."""
        return self.device if self.device.type == "cuda" else None

    # ---- state -------------------------------------------------------------------------------
    def state_tensors(self) -> dict[str, torch.Tensor]:
        t = {f"model.{k}": v for k, v in self.denoiser.state_dict().items()}
        t.update({f"ema.{k}": v for k, v in self.ema.model.state_dict().items()})
        # Adam's state per parameter, as checkpoints have always stored it (the step count once per parameter)
        for k, v in self.opt.state.get(self.params.flat, {}).items():
            parts = self.params.views(v) if v.shape == self.params.flat.shape else [v] * len(self.params.params)
            t.update({f"optim.{i}.{k}": part for i, part in enumerate(parts)})  # save_checkpoint copies them
        t["rng.train"] = self.generator.get_state()
        t.update(rng_states(self._cuda) if self._rngs_live else self._rngs)
        t.update(self.source.state())
        return t

    def load_state(self, t: dict[str, torch.Tensor], record: dict) -> None:
        self.denoiser.load_state_dict({k[6:]: v for k, v in t.items() if k.startswith("model.")})
        self.ema.model.load_state_dict({k[4:]: v for k, v in t.items() if k.startswith("ema.")})
        state: dict[str, torch.Tensor] = {}
        for k, v in t.items():
            if k.startswith("optim."):
                _, i, name = k.split(".", 2)
                if name == "step":
                    state[name] = v.to(self.device, copy=True)  # fused Adam keeps its step beside the parameters
                    continue
                flat = state.setdefault(name, torch.zeros_like(self.params.flat.detach(), dtype=v.dtype))
                # into the parameter's own memory layout (a checkpoint stores it contiguous): Adam pairs the buffer's
                # elements with its moments' in memory order, so a channels-last weight's moments must be laid out
                # as the weight is (the U-Net case of test_resume_is_bit_identical_to_a_straight_run)
                self.params.views(flat)[int(i)].copy_(v)
        if state:
            self.opt.state[self.params.flat] = state
        self.generator.set_state(t["rng.train"])
        if "rng.torch" in t:  # checkpoints from before they kept the global states have none: then nothing changes
            self._rngs = {k: v for k, v in t.items() if k.startswith("rng.") and k != "rng.train"}
            if self._rngs_live:
                set_rng_states(self._rngs, self._cuda)
        self.source.load_state(t)
        self.step = record["step"]
        self.guard.skipped = record.get("skipped_steps", 0)
        self.seconds_before = record.get("seconds", 0.0)

    def save(self) -> None:
        session = time.time() - self._session_start
        self._saved_at = (self.step, session)
        meta = {
            "config": config_to_dict(self.cfg),
            "model_format": model_format(self.cfg),
            "skipped_steps": self.guard.skipped,
            "seconds": round(self.seconds_before + session, 1),  # every session so far
            "data_fingerprint": None if self.images is None else self.images.fingerprint,
        }
        save_checkpoint(
            self.run_dir / "checkpoints", self.step, self.state_tensors(), meta, self.cfg.train.keep_checkpoints
        )
        self._saved = True

    def resume(self) -> None:
        if not self.run_dir.is_dir():
            raise ScorelabError(f"run directory {str(self.run_dir)!r} does not exist")
        if not (self.run_dir / "config.yaml").is_file():
            raise ScorelabError(f"{self.run_dir} is not a run directory (no config.yaml)")
        if not list_checkpoints(self.run_dir / "checkpoints"):
            raise ScorelabError(
                f"no checkpoint found in {self.run_dir / 'checkpoints'}: the run stopped before its first one; "
                "train it again without --resume"
            )
        t, record, recorded = load_run_checkpoint(self.run_dir, warn=self.warn)
        # everything that shapes the updates must match for the resumed run to be the run the checkpoint records
        differ = config_differences(self.cfg, recorded, ("data", "model", "noise", "train"))
        if differ:
            raise ScorelabError(
                f"cannot resume {self.run_dir}: the config differs from the run's ({'; '.join(differ[:3])})"
            )
        check_model_format(self.cfg, record, self.run_dir)
        check_fingerprint(self.images, record, self.run_dir, "resume it")
        self.load_state(t, record)
        if "seconds" not in record:  # a checkpoint from before records kept the time: the finished sessions' total
            self.seconds_before = self._previous_summary().get("seconds", 0.0)
        self.log(f"resumed {self.run_dir} at step {self.step}")

    # ---- loop --------------------------------------------------------------------------------
    def _lr(self) -> float:
        # linear warm-up to the base rate (Goyal et al. 2017, 'Accurate, Large Minibatch SGD', sec. 2.2)
        warm = self.cfg.train.lr_warmup
        return self.cfg.train.lr * min(1.0, (self.step + 1) / warm) if warm > 0 else self.cfg.train.lr

    @contextlib.contextmanager
    def _training_rngs(self):
        """Run the block with the global generators in the training's states, then put the caller's back, keeping
        where the block left the training's."""
        if self._rngs_live:
            yield
            return
        caller = rng_states(self._cuda)
        set_rng_states(self._rngs, self._cuda)
        self._rngs_live = True
        try:
            yield
        finally:
            self._rngs.update(rng_states(self._cuda))
            set_rng_states(caller, self._cuda)
            self._rngs_live = False

    def _loss(self, x: torch.Tensor, labels: torch.Tensor | None, generator: torch.Generator) -> torch.Tensor:
        cond = None
        if self.cfg.model.num_classes:
            # classifier-free guidance training: drop the label to the null label -1 (Ho & Salimans 2022, Alg. 1)
            drop = (torch.rand(labels.shape, generator=generator) < self.cfg.train.cond_dropout).to(labels.device)
            cond = torch.where(drop, torch.full_like(labels, -1), labels)
        if self.cfg.train.objective == "ncsn":
            return ncsn_loss(self.denoiser, x, self.sigmas, cond=cond, generator=generator)
        return ddpm_loss(
            self.denoiser,
            x,
            self.alpha_bar,
            weighting=self.cfg.train.weighting,
            gamma=self.cfg.train.snr_gamma,
            cond=cond,
            generator=generator,
        )

    def memory_estimate(self, probe: int = 2) -> int:
        """Upper bound on the bytes training adds to the process once the model and its EMA exist: 16 x the
        parameters (the gradients and Adam's two moments, 3; saving a checkpoint copies model, EMA and moments, 4,
        and safetensors holds about 8 more while it serialises them: an MLP of 305 MiB of parameters took 13.2 x), a
        fixed FIXED_OVERHEAD, and, per sample of the batch, twice what autograd saves for the backward pass of one
        loss (the activations, and their gradients, which are no larger) and the batch itself. The saved bytes are
        measured on a `probe`-sample batch; the probe draws from its own generators, so training's random streams do
        not move."""
        params = list(self.denoiser.parameters())
        param_bytes = sum(p.numel() * p.element_size() for p in params)
        own = {p.untyped_storage().data_ptr() for p in params}
        saved: dict[int, int] = {}

        def pack(t: torch.Tensor) -> torch.Tensor:
            storage = t.untyped_storage()
            if storage.data_ptr() not in own:
                saved[storage.data_ptr()] = storage.nbytes()
            return t

        x = torch.zeros(probe, *data_shape(self.cfg.data), device=self.device)
        labels = torch.zeros(probe, dtype=torch.long, device=self.device) if self.cfg.model.num_classes else None
        devices = [] if self._cuda is None else [self._cuda]
        with torch.random.fork_rng(devices=devices), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            self._loss(x, labels, torch.Generator().manual_seed(0))
        per_sample = 2 * -(-sum(saved.values()) // probe) + x[0].numel() * x.element_size()
        return FIXED_OVERHEAD + 16 * param_bytes + self.cfg.train.batch_size * per_sample

    def train_step(self) -> float | None:
        x, labels = self.source.next(self.generator)
        x, labels = x.to(self.device), None if labels is None else labels.to(self.device)
        loss = self._loss(x, labels, self.generator)
        self.params.zero_grad()
        if not torch.isfinite(loss):
            return None
        loss.backward()
        self.params.check()  # code that swapped a parameter or its gradient out of the buffer would stop training
        grad_norm = torch.nn.utils.clip_grad_norm_([self.params.flat], self.cfg.train.grad_clip)
        if not torch.isfinite(grad_norm):
            return None
        for group in self.opt.param_groups:
            group["lr"] = self._lr()
        self.opt.step()
        self.ema.update(self.params, self.step)
        return loss.item()

    def _on_signal(self, signum, frame) -> None:
        self._stop_signal = signum

    def _stop(self, bar) -> None:
        self.save()
        bar.close()  # before the message, so that the bar is not redrawn after it
        name = signal.Signals(self._stop_signal).name
        self.log(
            f"{name} received: saved checkpoint at step {self.step} in {self.run_dir}; "
            f"continue with: {self.continue_with}"
        )
        raise SystemExit(128 + self._stop_signal)

    def _previous_summary(self) -> dict:
        try:
            return json.loads((self.run_dir / "train.json").read_text())
        except (OSError, ValueError):
            return {}

    def run(self) -> dict:
        """Train to train.steps. A fresh run that fails before its first checkpoint takes away what it wrote."""
        cfg = self.cfg.train
        if self.step >= cfg.steps:
            self.log(f"{self.run_dir} is already at step {self.step} of {cfg.steps}; raise train.steps to train on")
            return {**self._previous_summary(), "step": self.step, "session_steps": 0}
        self.source  # noqa: B018 (the data is read, and its memory checked, before anything is written)
        need = self.memory_estimate()
        check_budget(
            f"training at batch size {cfg.batch_size}",
            need,
            budget_left(self.max_memory, self.images),  # a budget given covers the images, read already
            option="--max-memory",
            hint=TRAIN_MEMORY_HINT,
            device=self.device,
        )
        first_step = self.step
        made = [d for d in (self.run_dir, *self.run_dir.parents) if not d.exists()]
        had_config = (self.run_dir / "config.yaml").exists()
        save_run_config(self.run_dir, self.cfg)
        try:
            with self._training_rngs():
                return self._loop(first_step)
        except BaseException:
            if first_step == 0 and not self._saved:
                _remove_fresh_run(self.run_dir, made, had_config)
            raise

    def _loop(self, first_step: int) -> dict:
        cfg = self.cfg.train
        handlers = {}
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                handlers[s] = signal.signal(s, self._on_signal)
        self._session_start, losses, self._saved_at = time.time(), [], None
        bar = tqdm(total=cfg.steps, initial=self.step, desc="train", disable=not self.progress)
        try:
            while self.step < cfg.steps:
                loss = self.train_step()
                if loss is None:
                    self.guard.bad(self.step)
                    if self._stop_signal is not None:
                        self._stop(bar)  # a skipped step changed nothing: the state is still the last good one
                    continue
                self.guard.good()
                self.step += 1
                losses.append(loss)
                bar.update()
                if self.step % 50 == 0:
                    bar.set_postfix(loss=f"{sum(losses[-50:]) / len(losses[-50:]):.4f}")
                if self.step % cfg.checkpoint_every == 0 or self.step == cfg.steps:
                    self.save()
                if self._stop_signal is not None:
                    self._stop(bar)
        finally:
            bar.close()
            for s, h in handlers.items():
                signal.signal(s, h)
        # a session that ends on a checkpoint (every finished one) reports the time that checkpoint records
        ended_on_save = self._saved_at is not None and self._saved_at[0] == self.step
        session = self._saved_at[1] if ended_on_save else time.time() - self._session_start
        summary = {
            "step": self.step,
            # over every session of the run, interrupted ones included up to their last checkpoint
            "seconds": round(self.seconds_before + session, 1),
            "session_steps": self.step - first_step,
            "session_seconds": round(session, 1),
            "final_loss": (sum(losses[-100:]) / len(losses[-100:])) if losses else None,  # this session's last 100
            "skipped_steps": self.guard.skipped,
            "device": str(self.device),
        }
        _atomic_write(self.run_dir / "train.json", json_text(summary).encode())
        return summary
