"""Build the Denoiser a config describes."""

from __future__ import annotations

from ..config import Config
from ..denoisers import Preconditioned
from .mlp import MLP
from .unet import UNet


def build_denoiser(cfg: Config) -> Preconditioned:
    m = cfg.model
    if m.kind == "mlp":
        net = MLP(dim=2, width=m.width, depth=m.depth)
    else:
        net = UNet(
            in_channels=1,
            channels=m.channels,
            channel_mult=tuple(m.channel_mult),
            blocks_per_level=m.blocks_per_level,
            attention_levels=tuple(m.attention_levels),
            dropout=m.dropout,
            num_classes=m.num_classes,
        )
    return Preconditioned(net, m.parameterisation, m.sigma_data)
