"""Build the Denoiser a config describes."""

from __future__ import annotations

from ..config import Config
from ..data.image_sets import data_shape
from ..denoisers import Preconditioned
from ..errors import ScorelabError
from .mlp import MLP
from .unet import UNet

# The version of each network's definition. Increase it when the same weights stop meaning the same function (or stop
# fitting): checkpoints record it and runs of another version are refused instead of loaded into a changed network.
# unet 2 (2026-12-01): GroupNorm groups of ~8 channels, attention projections as Linear layers, ~64 channels per head.
MODEL_FORMATS = {"mlp": 1, "unet": 2}


def model_format(cfg: Config) -> int:
    return MODEL_FORMATS[cfg.model.kind]


def record_format(record: dict, run_dir) -> int:
    """The network version a checkpoint record was written with; records before formats existed are version 1."""
    have = record.get("model_format", 1)
    if type(have) is not int:
        raise ScorelabError(f"{run_dir}: its checkpoint record has a malformed model_format {have!r}")
    return have


def check_model_format(cfg: Config, record: dict, run_dir) -> None:
    """One-line error when the checkpoint `record` holds weights of another version of the run's network."""
    have, want = record_format(record, run_dir), model_format(cfg)
    if have < want:
        raise ScorelabError(
            f"{run_dir} holds a {cfg.model.kind} of model format {have}, and this scorelab builds format {want}: "
            "its weights do not fit this version's network; train the run again (or use the scorelab that trained it)"
        )
    if have > want:
        raise ScorelabError(
            f"{run_dir} holds a {cfg.model.kind} of model format {have}, written by a newer scorelab than this one "
            f"(format {want}); upgrade scorelab to use it"
        )


def build_denoiser(cfg: Config) -> Preconditioned:
    m = cfg.model
    if m.kind == "mlp":
        net = MLP(dim=2, width=m.width, depth=m.depth)
    else:
        net = UNet(
            in_channels=data_shape(cfg.data)[0],
            channels=m.channels,
            channel_mult=tuple(m.channel_mult),
            blocks_per_level=m.blocks_per_level,
            attention_levels=tuple(m.attention_levels),
            dropout=m.dropout,
            num_classes=m.num_classes,
        )
    return Preconditioned(net, m.parameterisation, m.sigma_data)
