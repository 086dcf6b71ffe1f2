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


class SelfAttention(nn.Module):
    def __init__(self, ch: int, heads: int = 4):
        super().__init__()
        self.norm = nn.GroupNorm(_groups(ch), ch)
        self.qkv = nn.Conv2d(ch, 3 * ch, 1)
        self.proj = nn.Conv2d(ch, ch, 1)
        self.heads = heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        # (3, B, heads, HW, head_dim) with a unit-stride last dimension: PyTorch's fused (flash) CPU kernel needs it
        # and otherwise falls back to the unfused math path
        qkv = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, h * w)
        q, k, v = qkv.permute(1, 0, 2, 4, 3).contiguous().unbind(0)
        out = F.scaled_dot_product_attention(q, k, v)
        return x + self.proj(out.transpose(-1, -2).reshape(b, c, h, w))


class CrossAttention(nn.Module):
    """x + W_o softmax(Q Kᵀ / √d) V with queries from the image and keys and values from a conditioning sequence
    (Rombach et al. 2022, Sec. 3.3, eq. 3), per head. The output projection starts at zero, so a network gains it as
    an identity and learns to use the context from there."""

    def __init__(self, ch: int, context_dim: int, heads: int = 4):
        super().__init__()
        self.norm = nn.GroupNorm(_groups(ch), ch)
        self.q = nn.Conv2d(ch, ch, 1)
        self.kv = nn.Linear(context_dim, 2 * ch)
        self.proj = nn.Conv2d(ch, ch, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)
        self.heads = heads

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        d = c // self.heads
        q = self.q(self.norm(x)).reshape(b, self.heads, d, h * w).transpose(-1, -2).contiguous()  # (B, heads, HW, d)
        k, v = self.kv(context).reshape(b, -1, 2, self.heads, d).permute(2, 0, 3, 1, 4).contiguous().unbind(0)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, heads, HW, d)
        return x + self.proj(out.transpose(-1, -2).reshape(b, c, h, w))


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
            return [SelfAttention(ch)] + ([CrossAttention(ch, context_dim)] if context_dim else [])

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
                raise ValueError("this UNet has no class labels (num_classes = 0); cond must be None or a context")
            if self.num_classes and cond is None:
                cond = torch.full((batch,), -1, device=device)
            if cond is not None:
                if cond.dtype in (torch.bool, torch.uint8) or cond.shape != (batch,):
                    raise ValueError(
                        f"labels must be an integer tensor of shape ({batch},), got {cond.dtype} {tuple(cond.shape)}"
                    )
                lo, hi = (int(v) for v in torch.aminmax(cond)) if cond.numel() else (-1, -1)  # one pass, one sync
                if not -1 <= lo <= hi < self.num_classes:
                    raise ValueError(f"labels must be in -1..{self.num_classes - 1} (-1 = no label), got {lo}..{hi}")
            return cond, None
        if not self.context_dim:
            raise ValueError("this UNet takes no context sequence (context_dim = 0); cond must be labels or None")
        if cond.ndim != 3 or cond.shape[0] != batch or cond.shape[2] != self.context_dim:
            raise ValueError(f"context must have shape ({batch}, L, {self.context_dim}), got {tuple(cond.shape)}")
        labels = torch.full((batch,), -1, device=device) if self.num_classes else None
        return labels, cond

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor, cond=None) -> torch.Tensor:
        if x.ndim != 4 or x.shape[-1] % self.factor or x.shape[-2] % self.factor:
            raise ValueError(f"UNet expects (B, C, H, W) with H and W divisible by {self.factor}, got {tuple(x.shape)}")
        labels, context = self._split_cond(cond, x.shape[0], x.device)
        emb = self.embed(c_noise)
        if labels is not None:
            emb = emb + self.label_embed(labels + 1)  # index 0 is the null label
        h = self.inp(x)
        hs = [h]
        for layers in self.down:
            h = self._run(layers, h, emb, context)
            hs.append(h)
        h = self._run(self.mid, h, emb, context)
        for layers in self.up:
            if isinstance(layers[0], ResBlock):
                h = torch.cat([h, hs.pop()], dim=1)
            h = self._run(layers, h, emb, context)
        return self.out(h)
