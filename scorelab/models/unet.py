"""A small noise-conditional U-Net (Ronneberger et al. 2015; residual blocks as in Ho et al. 2020, App. B)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .embeddings import NoiseEmbedding


def _groups(ch: int) -> int:
    for g in (32, 16, 8, 4, 2, 1):
        if ch % g == 0:
            return g
    return 1


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, emb_dim: int, dropout: float = 0.0):
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(cin), cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * cout)  # scale and shift (adaptive GroupNorm, Dhariwal & Nichol 2021)
        self.norm2 = nn.GroupNorm(_groups(cout), cout)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(emb)[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class SelfAttention(nn.Module):
    def __init__(self, ch: int, heads: int = 4):
        super().__init__()
        self.norm = nn.GroupNorm(_groups(ch), ch)
        self.qkv = nn.Conv2d(ch, 3 * ch, 1)
        self.proj = nn.Conv2d(ch, ch, 1)
        self.heads = heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, h * w).unbind(1)
        out = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))
        return x + self.proj(out.transpose(-1, -2).reshape(b, c, h, w))


class UNet(nn.Module):
    """Called as F(x_in, c_noise, cond); cond is an optional LongTensor of class labels (-1 = none)."""

    def __init__(
        self,
        in_channels: int = 1,
        channels: int = 64,
        channel_mult: tuple[int, ...] = (1, 2),
        blocks_per_level: int = 2,
        attention_levels: tuple[int, ...] = (1,),
        num_classes: int = 0,
        dropout: float = 0.0,
    ):
        super().__init__()
        emb_dim = 4 * channels
        self.factor = 2 ** (len(channel_mult) - 1)
        self.embed = NoiseEmbedding(channels, emb_dim)
        self.label_embed = nn.Embedding(num_classes + 1, emb_dim) if num_classes else None
        self.inp = nn.Conv2d(in_channels, channels, 3, padding=1)
        self.down = nn.ModuleList()
        skips = [channels]
        ch = channels
        for level, mult in enumerate(channel_mult):
            for _ in range(blocks_per_level):
                block = nn.ModuleList([ResBlock(ch, channels * mult, emb_dim, dropout)])
                ch = channels * mult
                if level in attention_levels:
                    block.append(SelfAttention(ch))
                self.down.append(block)
                skips.append(ch)
            if level < len(channel_mult) - 1:
                self.down.append(nn.ModuleList([nn.Conv2d(ch, ch, 3, stride=2, padding=1)]))
                skips.append(ch)
        self.mid = nn.ModuleList([ResBlock(ch, ch, emb_dim, dropout), SelfAttention(ch), ResBlock(ch, ch, emb_dim)])
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for _ in range(blocks_per_level + 1):
                block = nn.ModuleList([ResBlock(ch + skips.pop(), channels * mult, emb_dim, dropout)])
                ch = channels * mult
                if level in attention_levels:
                    block.append(SelfAttention(ch))
                self.up.append(block)
            if level > 0:
                self.up.append(
                    nn.ModuleList([nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(ch, ch, 3, padding=1)])
                )
        self.out = nn.Sequential(nn.GroupNorm(_groups(ch), ch), nn.SiLU(), nn.Conv2d(ch, in_channels, 3, padding=1))
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)

    def _run(self, layers: nn.ModuleList, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        for layer in layers:
            h = layer(h, emb) if isinstance(layer, ResBlock) else layer(h)
        return h

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor, cond=None) -> torch.Tensor:
        if x.ndim != 4 or x.shape[-1] % self.factor or x.shape[-2] % self.factor:
            raise ValueError(f"UNet expects (B, C, H, W) with H and W divisible by {self.factor}, got {tuple(x.shape)}")
        emb = self.embed(c_noise)
        if self.label_embed is not None:
            labels = torch.full((x.shape[0],), -1, device=x.device) if cond is None else cond
            emb = emb + self.label_embed(labels + 1)  # index 0 is the null label
        h = self.inp(x)
        hs = [h]
        for layers in self.down:
            h = self._run(layers, h, emb)
            hs.append(h)
        h = self._run(self.mid, h, emb)
        for layers in self.up:
            if isinstance(layers[0], ResBlock):
                h = torch.cat([h, hs.pop()], dim=1)
            h = self._run(layers, h, emb)
        return self.out(h)
