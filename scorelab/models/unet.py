"""A small noise-conditional U-Net (Ronneberger et al. 2015; residual blocks as in Ho et al. 2020, App. B)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ScorelabError
from .embeddings import NoiseEmbedding


def _groups(ch: int) -> int:
    """GroupNorm groups of about 8 channels, at most 32 groups. Wu & He (2018, Table 3) found the number of groups
    matters little; PyTorch's channels-last GroupNorm is several times faster with 8 channels per group than with 1
    (forward + backward on 64x32x16x16: 0.77 ms against 3.4 ms; README, "What was tried")."""
    groups = min(32, max(1, ch // 8))
    while ch % groups:
        groups -= 1
    return groups


def _heads(ch: int) -> int:
    """About 64 channels per attention head (Dhariwal & Nichol 2021, Sec. 3), and at least one."""
    heads = max(1, ch // 64)
    while ch % heads:
        heads -= 1
    return heads


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, emb_dim: int, dropout: float = 0.0):
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(cin), cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * cout)  # scale and shift (adaptive GroupNorm, Dhariwal & Nichol 2021)
        self.norm2 = nn.GroupNorm(_groups(cout), cout)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(emb)[:, :, None, None].chunk(2, dim=1)
        # adaptive GroupNorm (GN(h)·γ + β)·(1 + s) + t (Dhariwal & Nichol 2021, Sec. 3) as one multiply-add over h
        # with per-sample, per-channel factors: one pass over the activations fewer, forward and backward
        n, s1 = self.norm2, 1 + scale
        h = torch.addcmul(
            n.bias[:, None, None] * s1 + shift, F.group_norm(h, n.num_groups, eps=n.eps), n.weight[:, None, None] * s1
        )
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


def _tokens(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, H·W, C); free for a channels-last x, as the U-Net's activations are."""
    b, c, h, w = x.shape
    return x.permute(0, 2, 3, 1).reshape(b, h * w, c)


def _image(t: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(B, H·W, C) -> a channels-last (B, C, H, W) view of the same memory."""
    return t.view(t.shape[0], h, w, t.shape[2]).permute(0, 3, 1, 2)


class SelfAttention(nn.Module):
    """x + W_o softmax(Q Kᵀ / √d) V over the H·W positions, per head (Vaswani et al. 2017, eq. 1). The projections
    act on (B, H·W, C) tokens, which a channels-last activation already is, so no layout copies are made."""

    def __init__(self, ch: int, heads: int):
        super().__init__()
        self.norm = nn.GroupNorm(_groups(ch), ch)
        self.qkv = nn.Linear(ch, 3 * ch)
        self.proj = nn.Linear(ch, ch)
        self.heads = heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        # (3, B, heads, HW, head_dim) views with a unit-stride last dimension, as PyTorch's fused CPU kernel needs
        q, k, v = self.qkv(_tokens(self.norm(x))).view(b, h * w, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, heads, HW, head_dim)
        return x + _image(self.proj(out.transpose(1, 2).reshape(b, h * w, c)), h, w)


class CrossAttention(nn.Module):
    """x + W_o softmax(Q Kᵀ / √d) V with queries from the image and keys and values from a conditioning sequence
    (Rombach et al. 2022, Sec. 3.3, eq. 3), per head. The output projection starts at zero, so a network gains it as
    an identity and learns to use the context from there."""

    def __init__(self, ch: int, context_dim: int, heads: int):
        super().__init__()
        self.norm = nn.GroupNorm(_groups(ch), ch)
        self.q = nn.Linear(ch, ch)
        self.kv = nn.Linear(context_dim, 2 * ch)
        self.proj = nn.Linear(ch, ch)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)
        self.heads = heads

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        d = c // self.heads
        q = self.q(_tokens(self.norm(x))).view(b, h * w, self.heads, d).transpose(1, 2)  # (B, heads, HW, d)
        k, v = self.kv(context).view(b, -1, 2, self.heads, d).permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, heads, HW, d)
        return x + _image(self.proj(out.transpose(1, 2).reshape(b, h * w, c)), h, w)


class UNet(nn.Module):
    """Called as F(x_in, c_noise, cond). cond is None, a LongTensor (B,) of class labels (-1 = no label; needs
    num_classes), or a float tensor (B, L, context_dim), a conditioning sequence that every attention level and the
    middle block cross-attend to (needs context_dim). With no context the cross-attention layers are skipped."""

    def __init__(
        self,
        in_channels: int = 1,
        channels: int = 64,
        channel_mult: tuple[int, ...] = (1, 2),
        blocks_per_level: int = 2,
        attention_levels: tuple[int, ...] = (1,),
        num_classes: int = 0,
        dropout: float = 0.0,
        context_dim: int = 0,
    ):
        super().__init__()
        emb_dim = 4 * channels
        self.num_classes, self.context_dim = num_classes, context_dim

        def attention(ch: int) -> list[nn.Module]:
            heads = _heads(ch)
            return [SelfAttention(ch, heads)] + ([CrossAttention(ch, context_dim, heads)] if context_dim else [])

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
                    block.extend(attention(ch))
                self.down.append(block)
                skips.append(ch)
            if level < len(channel_mult) - 1:
                self.down.append(nn.ModuleList([nn.Conv2d(ch, ch, 3, stride=2, padding=1)]))
                skips.append(ch)
        self.mid = nn.ModuleList(
            [ResBlock(ch, ch, emb_dim, dropout), *attention(ch), ResBlock(ch, ch, emb_dim, dropout)]
        )
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for _ in range(blocks_per_level + 1):
                block = nn.ModuleList([ResBlock(ch + skips.pop(), channels * mult, emb_dim, dropout)])
                ch = channels * mult
                if level in attention_levels:
                    block.extend(attention(ch))
                self.up.append(block)
            if level > 0:
                self.up.append(
                    nn.ModuleList([nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(ch, ch, 3, padding=1)])
                )
        self.out = nn.Sequential(nn.GroupNorm(_groups(ch), ch), nn.SiLU(), nn.Conv2d(ch, in_channels, 3, padding=1))
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)
        # channels-last weights and activations: oneDNN's NHWC convolutions are 1.35-1.7x faster on CPU (README)
        self.to(memory_format=torch.channels_last)

    def _run(self, layers: nn.ModuleList, h: torch.Tensor, emb: torch.Tensor, context) -> torch.Tensor:
        for layer in layers:
            if isinstance(layer, ResBlock):
                h = layer(h, emb)
            elif isinstance(layer, CrossAttention):
                h = h if context is None else layer(h, context)
            else:
                h = layer(h)
        return h

    def _split_cond(self, cond, batch: int, device) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(labels or None, context or None) from cond, with one-line errors for what the network cannot take."""
        if cond is None or not torch.is_floating_point(cond):
            if cond is not None and not self.num_classes:
                raise ScorelabError("this UNet has no class labels (num_classes = 0); cond must be None or a context")
            if self.num_classes and cond is None:
                cond = torch.full((batch,), -1, device=device)
            if cond is not None:
                if cond.dtype in (torch.bool, torch.uint8) or cond.shape != (batch,):
                    raise ScorelabError(
                        f"labels must be an integer tensor of shape ({batch},), got {cond.dtype} {tuple(cond.shape)}"
                    )
                lo, hi = (int(v) for v in torch.aminmax(cond)) if cond.numel() else (-1, -1)  # one pass, one sync
                if not -1 <= lo <= hi < self.num_classes:
                    raise ScorelabError(f"labels must be in -1..{self.num_classes - 1} (-1 = no label), got {lo}..{hi}")
            return cond, None
        if not self.context_dim:
            raise ScorelabError("this UNet takes no context sequence (context_dim = 0); cond must be labels or None")
        if cond.ndim != 3 or cond.shape[0] != batch or cond.shape[2] != self.context_dim:
            raise ScorelabError(f"context must have shape ({batch}, L, {self.context_dim}), got {tuple(cond.shape)}")
        labels = torch.full((batch,), -1, device=device) if self.num_classes else None
        return labels, cond

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor, cond=None) -> torch.Tensor:
        if x.ndim != 4 or x.shape[-1] % self.factor or x.shape[-2] % self.factor:
            raise ScorelabError(
                f"UNet expects (B, C, H, W) with H and W divisible by {self.factor}, got {tuple(x.shape)}"
            )
        if x.shape[1] != self.inp.in_channels or x.dtype != self.inp.weight.dtype:
            raise ScorelabError(
                f"this UNet takes {self.inp.in_channels}-channel {self.inp.weight.dtype} images, got "
                f"{x.shape[1]}-channel {x.dtype} (convert x, or the model with .to(dtype))"
            )
        labels, context = self._split_cond(cond, x.shape[0], x.device)
        emb = self.embed(c_noise)
        if labels is not None:
            emb = emb + self.label_embed(labels + 1)  # index 0 is the null label
        h = self.inp(x.contiguous(memory_format=torch.channels_last))
        hs = [h]
        for layers in self.down:
            h = self._run(layers, h, emb, context)
            hs.append(h)
        h = self._run(self.mid, h, emb, context)
        for layers in self.up:
            if isinstance(layers[0], ResBlock):
                h = torch.cat([h, hs.pop()], dim=1)
            h = self._run(layers, h, emb, context)
        return self.out(h).contiguous()
