"""Configs are dataclasses loaded from YAML; an unknown key, a wrong type or an out-of-range value is a
one-line ConfigError naming the key."""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .errors import ConfigError

# what to lower when training would not fit in memory (the up-front estimate, and an allocation that fails anyway)
TRAIN_MEMORY_HINT = (
    "lower train.batch_size or the model's size (model.width and model.depth, or model.channels, "
    "model.channel_mult and model.blocks_per_level) in the config"
)


@dataclass
class DataConfig:
    name: str = "ring8"  # a 2D toy (ring8, moons, swissroll, rings, checkerboard), 'digits', or 'images' (a folder)
    path: str = ""  # images: the folder (class labels from its subfolders; scorelab.data.image_sets)
    size: int = 0  # images: side in pixels; each image is centre-cropped to a square and resized to it
    channels: int = 0  # images: 1 (greyscale) or 3 (RGB)
    holdout: float = 0.1  # images: share held out for evaluation (per class), chosen by the files alone
    flip: bool = False  # images: random horizontal flips while training


@dataclass
class ModelConfig:
    kind: str = "mlp"  # 'mlp' (2D data) or 'unet' (images)
    parameterisation: str = "edm"  # 'eps', 'x0', 'v' or 'edm' (see scorelab.denoisers.Preconditioned)
    sigma_data: float = 0.5
    width: int = 128  # mlp
    depth: int = 3  # mlp
    channels: int = 32  # unet
    channel_mult: list[int] = field(default_factory=lambda: [1, 2])  # unet
    attention_levels: list[int] = field(default_factory=lambda: [1])  # unet
    blocks_per_level: int = 2  # unet
    dropout: float = 0.0  # unet
    num_classes: int = 0  # unet: class-conditional on this many labels (0 = unconditional); label -1 = no label


@dataclass
class NoiseConfig:
    schedule: str = "geometric"  # NCSN's geometric levels, or a DDPM beta schedule: linear, scaled_linear, cosine
    sigma_max: float = 10.0  # geometric
    sigma_min: float = 0.01  # geometric
    levels: int = 200  # geometric
    timesteps: int = 1000  # DDPM: T


@dataclass
class TrainConfig:
    objective: str = "ncsn"  # 'ncsn' (geometric levels) or 'ddpm' (eps-MSE over the beta schedule's timesteps)
    weighting: str = "eps"  # ddpm: eps, x0, v or min_snr (scorelab.objectives.diffusion.snr_weight)
    snr_gamma: float = 5.0  # min_snr: the SNR at which the weight is capped (Hang et al. 2023 recommend 5)
    cond_dropout: float = 0.0  # probability of dropping the label to -1 (classifier-free guidance training)
    steps: int = 5000
    batch_size: int = 256
    lr: float = 1e-3
    lr_warmup: int = 200
    ema_decay: float = 0.999
    seed: int = 0
    checkpoint_every: int = 1000
    keep_checkpoints: int = 2
    grad_clip: float = 1.0


@dataclass
class SampleConfig:
    n: int = 5000
    sampler: str = "annealed_langevin"  # or a diffusion sampler: ddpm, ddim, euler, heun, dpmpp_2m, dpmpp_3m, unipc
    steps: int = 20  # diffusion samplers: positive sigmas in the schedule
    schedule: str = "lognormal"  # diffusion samplers: lognormal (recommended), karras or trailing (DDPM timesteps)
    guidance: float = 1.0  # classifier-free guidance scale: 1 = conditional model, 0 = unconditional
    clamp: bool = True  # clamp the denoised estimate to the data range (images: [-1, 1])
    step_size: float = 2e-5  # epsilon of annealed Langevin: alpha_i = eps * sigma_i^2 / sigma_L^2
    steps_per_level: int = 5
    final_denoise: bool = True


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)


# upper bounds (exclusive, as every bound here) on sizes: far beyond any useful setting, and below where the maths
# overflows or one tensor alone outgrows any machine's memory before the up-front estimates could say so
MAX_STEPS = 100_000
RANGES = {
    "noise.sigma_max": (0.0, None),
    "noise.sigma_min": (0.0, None),
    "noise.levels": (2, MAX_STEPS),
    "train.steps": (1, None),
    "train.batch_size": (1, None),
    "train.lr": (0.0, None),
    "train.grad_clip": (0.0, None),
    "train.snr_gamma": (0.0, None),
    "train.lr_warmup": (0, None),
    "train.seed": (0, 2**32),
    "train.checkpoint_every": (1, None),
    "train.keep_checkpoints": (1, None),
    "sample.n": (2, None),  # the sample metrics compare sets, which needs two points
    "sample.step_size": (0.0, None),
    "sample.steps_per_level": (1, MAX_STEPS),
    "model.sigma_data": (0.0, None),
    "model.num_classes": (0, MAX_STEPS),
    "model.width": (1, 65_536),
    "model.depth": (1, 1_000),
    "model.channels": (4, 65_536),
    "model.blocks_per_level": (1, 1_000),
    "noise.timesteps": (2, MAX_STEPS),
    "sample.steps": (1, MAX_STEPS),
}
CHOICES = {
    "data.name": ("ring8", "moons", "swissroll", "rings", "checkerboard", "digits", "images"),
    "model.kind": ("mlp", "unet"),
    "model.parameterisation": ("eps", "x0", "v", "edm"),
    "noise.schedule": ("geometric", "linear", "scaled_linear", "cosine"),
    "train.objective": ("ncsn", "ddpm"),
    "train.weighting": ("eps", "x0", "v", "min_snr"),
    "sample.sampler": ("annealed_langevin", "ddpm", "ddim", "euler", "heun", "dpmpp_2m", "dpmpp_3m", "unipc"),
    "sample.schedule": ("lognormal", "karras", "trailing"),
}


def canonical_choice(value, allowed):
    """A named choice written with hyphens for underscores or the other way round (dpmpp-2m, ncsn_toy) as its
    canonical name (dpmpp_2m, ncsn-toy); anything else unchanged, so that an unknown name is reported as written."""
    if isinstance(value, str) and value not in allowed:
        for other in (value.replace("-", "_"), value.replace("_", "-")):
            if other in allowed:
                return other
    return value


def _convert(value, tp, key: str):
    origin = typing.get_origin(tp)
    if origin in (list, tuple):
        (item_tp, *_) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {type(value).__name__} {value!r}")
        return [_convert(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin in (typing.Union, types.UnionType):
        raise ConfigError(f"{key}: union types are not supported in configs")
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot in the mantissa) as a string
            try:
                value = float(value)
            except ValueError:
                raise ConfigError(f"{key}: expected a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{key}: expected a finite number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported type {tp}")


def _build(cls, raw, prefix: str):
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for k in raw:
        if k not in names:
            where = f"{prefix}.{k}" if prefix else str(k)
            raise ConfigError(f"unknown key {where!r}; allowed: {', '.join(sorted(names))}")
    kwargs = {}
    for f in dataclasses.fields(cls):
        key = f"{prefix}.{f.name}" if prefix else f.name
        if f.name not in raw:
            continue
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            if raw[f.name] is None:
                raise ConfigError(f"{key}: the section is empty; give its keys or leave it out")
            kwargs[f.name] = _build(tp, raw[f.name], key)
        else:
            value = _convert(raw[f.name], tp, key)
            kwargs[f.name] = canonical_choice(value, CHOICES[key]) if key in CHOICES else value
    return cls(**kwargs)


def validate(cfg: Config) -> Config:
    flat = config_to_dict(cfg)
    for key, (lo, hi) in RANGES.items():
        section, name = key.split(".")
        v = flat[section][name]
        if v <= lo if isinstance(lo, float) else v < lo:
            bound = f"> {lo}" if isinstance(lo, float) else f">= {lo}"
            raise ConfigError(f"{key}: must be {bound}, got {v}")
        if hi is not None and v >= hi:
            raise ConfigError(f"{key}: must be < {hi}, got {v}")
    for key, allowed in CHOICES.items():
        section, name = key.split(".")
        if flat[section][name] not in allowed:
            raise ConfigError(f"{key}: must be one of {', '.join(allowed)}, got {flat[section][name]!r}")
    if cfg.noise.sigma_min >= cfg.noise.sigma_max:
        raise ConfigError(
            f"noise.sigma_min ({cfg.noise.sigma_min}) must be below noise.sigma_max ({cfg.noise.sigma_max})"
        )
    if not 0.0 <= cfg.train.ema_decay < 1.0:
        raise ConfigError(f"train.ema_decay: must be in [0, 1), got {cfg.train.ema_decay}")
    _validate_data(cfg)
    m = cfg.model
    if m.channels % 2:  # the sinusoidal noise embedding has as many cos as sin features
        raise ConfigError(f"model.channels: must be even (the noise embedding), got {m.channels}")
    if not m.channel_mult or any(k < 1 for k in m.channel_mult):
        raise ConfigError(f"model.channel_mult: must be a non-empty list of integers >= 1, got {m.channel_mult}")
    if cfg.data.name == "digits" and len(m.channel_mult) > 4:
        raise ConfigError(
            f"model.channel_mult: 8x8 digits allow at most 4 levels (3 halvings), got {len(m.channel_mult)}"
        )
    if any(not 0 <= a < len(m.channel_mult) for a in m.attention_levels):
        raise ConfigError(
            f"model.attention_levels: each must be a level index in [0, {len(m.channel_mult) - 1}], "
            f"got {m.attention_levels}"
        )
    if not 0.0 <= m.dropout < 1.0:
        raise ConfigError(f"model.dropout: must be in [0, 1), got {m.dropout}")
    if cfg.sample.schedule == "trailing" and cfg.sample.steps > cfg.noise.timesteps:
        raise ConfigError(
            f"sample.steps: the trailing schedule takes at most noise.timesteps ({cfg.noise.timesteps}) steps, "
            f"got {cfg.sample.steps}"
        )
    if cfg.train.snr_gamma != TrainConfig.snr_gamma and cfg.train.weighting != "min_snr":
        raise ConfigError(
            f"train.snr_gamma: only used with train.weighting: min_snr, got weighting {cfg.train.weighting!r}"
        )
    if not 0.0 <= cfg.train.cond_dropout < 1.0:
        raise ConfigError(f"train.cond_dropout: must be in [0, 1), got {cfg.train.cond_dropout}")
    if cfg.sample.guidance < 0:
        raise ConfigError(f"sample.guidance: must be >= 0, got {cfg.sample.guidance}")
    if (cfg.train.objective == "ncsn") != (cfg.noise.schedule == "geometric"):
        need = "geometric" if cfg.train.objective == "ncsn" else "linear, scaled_linear or cosine"
        raise ConfigError(f"noise.schedule: objective {cfg.train.objective!r} needs {need}, got {cfg.noise.schedule!r}")
    if cfg.model.num_classes and cfg.data.name not in ("digits", "images"):
        raise ConfigError(
            f"model.num_classes: only image data (digits, or an images folder of class folders) has labels, got "
            f"data {cfg.data.name!r}"
        )
    if cfg.sample.guidance != 1.0 and not cfg.model.num_classes:
        raise ConfigError("sample.guidance: guidance needs a class-conditional model (model.num_classes > 0)")
    if cfg.sample.guidance != 1.0 and cfg.train.cond_dropout == 0:
        raise ConfigError("sample.guidance: guidance needs a trained null label (train.cond_dropout > 0)")
    if cfg.sample.schedule == "trailing" and cfg.train.objective != "ddpm":
        raise ConfigError("sample.schedule: 'trailing' needs DDPM timesteps (train.objective: ddpm)")
    images = cfg.data.name in ("digits", "images")
    if images != (cfg.model.kind == "unet"):
        raise ConfigError(f"model.kind: data {cfg.data.name!r} needs {'unet' if images else 'mlp'}")
    if cfg.data.name == "images" and cfg.data.size % 2 ** (len(m.channel_mult) - 1):
        raise ConfigError(
            f"data.size: the U-Net's {len(m.channel_mult)} levels halve the image {len(m.channel_mult) - 1} times, "
            f"so the size must be a multiple of {2 ** (len(m.channel_mult) - 1)}, got {cfg.data.size}"
        )
    return cfg


IMAGE_KEYS = ("path", "size", "channels", "holdout", "flip")  # data keys that only an images folder takes
MAX_IMAGE_SIZE = 1024


def _validate_data(cfg: Config) -> None:
    d, default = cfg.data, DataConfig()
    if d.name != "images":
        for key in IMAGE_KEYS:
            if getattr(d, key) != getattr(default, key):
                raise ConfigError(
                    f"data.{key}: only for data 'images' (a folder), got {getattr(d, key)!r} for data {d.name!r}"
                )
        return
    if not d.path:
        raise ConfigError("data.path: data 'images' needs the folder of images (data.path: path/to/folder)")
    if not 1 <= d.size <= MAX_IMAGE_SIZE:
        raise ConfigError(f"data.size: data 'images' needs the side in pixels, 1 to {MAX_IMAGE_SIZE}, got {d.size}")
    if d.channels not in (1, 3):
        raise ConfigError(f"data.channels: data 'images' needs 1 (greyscale) or 3 (RGB), got {d.channels}")
    if not 0.0 <= d.holdout <= 0.5:
        raise ConfigError(f"data.holdout: must be in [0, 0.5], got {d.holdout}")


def config_from_dict(raw) -> Config:
    cfg = validate(_build(Config, raw, ""))
    if cfg.data.path:  # relative to where the command runs, as --out is; a run records it absolute
        cfg.data.path = str(Path(cfg.data.path).expanduser().resolve())
    return cfg


def config_to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


# what a resumed run may change: its length and checkpoint cadence, and where its image folder lies (the images
# themselves are checked by the fingerprint the run records, scorelab.train.trainer.check_fingerprint)
RESUMABLE_CHANGES = {"train.steps", "train.checkpoint_every", "train.keep_checkpoints", "data.path"}


def config_differences(a: Config, b: Config, sections=("data", "model", "noise")) -> list[str]:
    """'section.key: A vs B' for every setting in `sections` where the two configs differ (leaving out the
    settings a resumed run may change: RESUMABLE_CHANGES)."""
    da, db = config_to_dict(a), config_to_dict(b)
    return [
        f"{section}.{key}: {da[section][key]!r} vs {db[section][key]!r}"
        for section in sections
        for key in da[section]
        if da[section][key] != db[section][key] and f"{section}.{key}" not in RESUMABLE_CHANGES
    ]


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (plain YAML keeps the last silently)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: ...`: keys given beside a merge override it
                continue
            key = self.construct_object(key_node, deep=deep)
            try:
                repeated = key in seen
            except TypeError:  # an unhashable key: the base loader reports it as invalid YAML
                break
            if repeated:
                raise ConfigError(f"line {key_node.start_mark.line + 1}: key {key!r} is given twice")
            seen.add(key)
        return super().construct_mapping(node, deep)


def load_config(path: str | Path) -> Config:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    try:
        raw = yaml.load(path.read_text(), Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}: not valid YAML{where}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file") from None
    if raw is None:
        raise ConfigError(f"{path}: the config is empty; write the settings to train (configs/ has examples)")
    try:
        return config_from_dict(raw)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
