"""The U-Net's blocks against their textbook formulas, and its shape contract."""

import math

import pytest
import torch
import torch.nn.functional as F

from scorelab.denoisers import Preconditioned
from scorelab.errors import ScorelabError
from scorelab.guidance import ClassifierFreeGuidance
from scorelab.models.unet import CrossAttention, ResBlock, SelfAttention, UNet


def _randomise(net):
    for m in net.modules():  # undo the zero initialisations, which hide the condition until training moves them
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
            torch.nn.init.normal_(m.weight, std=0.1)
    return net


def test_resblock_equals_the_unfused_adaptive_group_norm():
    """The folded multiply-add equals (GN(h)·γ + β)·(1 + s) + t (Dhariwal & Nichol 2021, Sec. 3)."""
    torch.manual_seed(0)
    block = ResBlock(8, 16, emb_dim=12)
    for p in (block.conv2.weight, block.norm2.weight, block.norm2.bias):
        torch.nn.init.normal_(p)  # away from the zero / identity initialisation, so every term matters
    x, emb = torch.randn(3, 8, 4, 4), torch.randn(3, 12)
    h = block.conv1(F.silu(block.norm1(x)))
    scale, shift = block.emb(emb)[:, :, None, None].chunk(2, dim=1)
    expected = block.skip(x) + block.conv2(F.silu(block.norm2(h) * (1 + scale) + shift))
    torch.testing.assert_close(block(x, emb), expected, rtol=1e-5, atol=1e-5)


def _per_head_attention(q, k, v, heads):
    """softmax(Q Kᵀ / √d) V for each head separately, heads taking consecutive channel blocks of (B, N, C) tokens."""
    d = q.shape[-1] // heads
    outs = []
    for i in range(heads):
        qi, ki, vi = (t[..., i * d : (i + 1) * d] for t in (q, k, v))
        outs.append(torch.softmax(qi @ ki.transpose(-1, -2) / math.sqrt(d), dim=-1) @ vi)
    return torch.cat(outs, dim=-1)


def _tokens(x):
    return x.flatten(2).transpose(1, 2)  # (B, C, H, W) -> (B, H·W, C), position-major


@pytest.mark.parametrize("channels_last", [False, True])
def test_self_attention_equals_softmax_attention_per_head(channels_last):
    """x + W_o · softmax(Q Kᵀ / √d) V per head (Vaswani et al. 2017, eq. 1) over the H·W positions."""
    torch.manual_seed(1)
    attn = SelfAttention(16, heads=4)
    x = torch.randn(2, 16, 4, 4)
    q, k, v = attn.qkv(_tokens(attn.norm(x))).chunk(3, dim=-1)
    out = attn.proj(_per_head_attention(q, k, v, heads=4))  # (B, HW, C)
    expected = x + out.transpose(1, 2).reshape(2, 16, 4, 4)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(attn(x), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("size", [(8, 8), (16, 8), (12, 20)])
def test_unet_runs_at_any_size_divisible_by_its_factor(size):
    net = UNet(in_channels=3, channels=8, channel_mult=(1, 2, 2), attention_levels=(2,), num_classes=4)
    x = torch.randn(2, 3, *size)
    out = net(x, torch.zeros(2), torch.tensor([1, -1]))
    assert out.shape == x.shape
    # the output layer starts at zero, so an untrained network predicts 0 and trains from there
    assert torch.equal(out, torch.zeros_like(out))


def test_unet_refuses_sizes_not_divisible_by_its_factor():
    net = UNet(in_channels=1, channels=8, channel_mult=(1, 2, 2))
    with pytest.raises(ScorelabError, match="divisible by 4"):
        net(torch.randn(1, 1, 8, 6), torch.zeros(1))


def test_class_label_changes_the_output_and_minus_one_is_the_null_label():
    torch.manual_seed(2)
    net = _randomise(UNet(in_channels=1, channels=8, channel_mult=(1, 2), num_classes=3))
    x, t = torch.randn(2, 1, 8, 8), torch.zeros(2)
    null = net(x, t, torch.tensor([-1, -1]))
    torch.testing.assert_close(net(x, t, None), null)  # no labels means the null label
    assert not torch.allclose(net(x, t, torch.tensor([0, 2])), null)


def test_cross_attention_equals_softmax_attention_over_the_context():
    """x + W_o · softmax(Q Kᵀ / √d) V with Q from the image, K and V from the context (Rombach et al. 2022, eq. 3)."""
    torch.manual_seed(3)
    attn = CrossAttention(16, context_dim=6, heads=4)
    torch.nn.init.normal_(attn.proj.weight)
    x, ctx = torch.randn(2, 16, 4, 4), torch.randn(2, 5, 6)
    k, v = attn.kv(ctx).chunk(2, dim=-1)
    out = attn.proj(_per_head_attention(attn.q(_tokens(attn.norm(x))), k, v, heads=4))
    expected = x + out.transpose(1, 2).reshape(2, 16, 4, 4)
    torch.testing.assert_close(attn(x, ctx), expected, rtol=1e-5, atol=1e-5)


def test_unet_cross_attends_to_a_context_sequence_and_works_under_guidance():
    torch.manual_seed(4)
    net = _randomise(UNet(in_channels=1, channels=8, channel_mult=(1, 2), attention_levels=(1,), context_dim=6))
    x, t = torch.randn(2, 1, 8, 8), torch.zeros(2)
    a, b = torch.randn(2, 3, 6), torch.randn(2, 7, 6)  # sequences of any length
    assert not torch.allclose(net(x, t, a), net(x, t, b))
    assert not torch.allclose(net(x, t, a), net(x, t, None))  # no context skips the cross-attention
    # one row of the batch sees only its own context
    torch.testing.assert_close(net(x[:1], t[:1], a[:1]), net(x, t, a)[:1], rtol=1e-5, atol=1e-5)
    # classifier-free guidance with a zero sequence as the null context: one batched call, D_u + s (D_c - D_u)
    den = Preconditioned(net, "eps", 1.0)
    sigma = torch.full((2,), 0.7)
    null = torch.zeros(3, 6)
    guided = ClassifierFreeGuidance(den, 3.0, null)(x, sigma, a)
    d_c, d_u = den(x, sigma, a), den(x, sigma, null.expand_as(a))
    torch.testing.assert_close(guided, d_u + 3.0 * (d_c - d_u), rtol=1e-4, atol=1e-5)


def test_unet_refuses_a_condition_it_cannot_take():
    plain = UNet(in_channels=1, channels=8, channel_mult=(1, 2))
    with pytest.raises(ScorelabError, match="no class labels"):
        plain(torch.randn(1, 1, 8, 8), torch.zeros(1), torch.tensor([3]))
    with pytest.raises(ScorelabError, match="no context sequence"):
        plain(torch.randn(1, 1, 8, 8), torch.zeros(1), torch.randn(1, 2, 4))
    ctx_net = UNet(in_channels=1, channels=8, channel_mult=(1, 2), context_dim=4)
    with pytest.raises(ScorelabError, match=r"context must have shape \(1, L, 4\)"):
        ctx_net(torch.randn(1, 1, 8, 8), torch.zeros(1), torch.randn(1, 2, 5))


def test_labels_are_checked_and_sigma_zero_returns_x():
    net = UNet(in_channels=1, channels=8, channel_mult=(1, 2), attention_levels=(), num_classes=10)
    x, t = torch.randn(2, 1, 8, 8), torch.zeros(2)
    for bad, why in (
        (torch.tensor([3]), "shape"),
        (torch.tensor([[1], [2]]), "shape"),
        (torch.tensor([True, False]), "integer"),
        (torch.tensor([10, 0]), "-1..9"),
        (torch.tensor([-2, 0]), "-1..9"),
    ):
        with pytest.raises(ScorelabError, match=why):
            net(x, t, bad)
    assert net(x, t, torch.tensor([-1, 9])).shape == x.shape
    for param in ("eps", "x0", "v", "edm"):
        d = Preconditioned(net, param, 0.5)(x, torch.tensor([0.0, 1.0]), torch.tensor([1, 2]))
        assert torch.isfinite(d).all() and torch.equal(d[0], x[0])  # D(x, 0) = x: no noise to remove


def test_embedding_follows_the_model_dtype():
    net = UNet(in_channels=1, channels=8, channel_mult=(1, 2), attention_levels=()).double()
    assert net(torch.randn(2, 1, 8, 8, dtype=torch.float64), torch.rand(2, dtype=torch.float64)).dtype == torch.float64


def test_unet_takes_either_memory_layout_and_returns_a_contiguous_tensor():
    """The U-Net runs channels-last inside (faster convolutions on CPU); callers see neither the layout nor a change
    in the result, and loading contiguous weights (as a checkpoint stores them) keeps its weights channels-last."""
    torch.manual_seed(5)

    def build():
        return UNet(in_channels=3, channels=16, channel_mult=(1, 2), attention_levels=(1,), num_classes=3)

    net = _randomise(build())
    x, t, y = torch.randn(3, 3, 8, 12), torch.rand(3), torch.tensor([0, 2, -1])
    out = net(x, t, y)
    assert out.is_contiguous() and not out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(net(x.contiguous(memory_format=torch.channels_last), t, y), out)
    wide = torch.zeros(3, 3, 8, 24)
    wide[..., ::2] = x
    torch.testing.assert_close(net(wide[..., ::2], t, y), out)  # a strided view
    state = net.state_dict()
    assert state["inp.weight"].is_contiguous(memory_format=torch.channels_last)
    copy = build()
    copy.load_state_dict({k: v.contiguous() for k, v in state.items()})
    assert copy.inp.weight.is_contiguous(memory_format=torch.channels_last)
    assert not copy.inp.weight.is_contiguous()
    torch.testing.assert_close(copy(x, t, y), out)


def test_group_and_head_counts_divide_the_channels():
    """About 8 channels per GroupNorm group (at most 32 groups) and about 64 channels per attention head."""
    from scorelab.models.unet import _groups, _heads

    assert [_groups(c) for c in (8, 12, 16, 32, 64, 96, 256, 512, 1024)] == [1, 1, 2, 4, 8, 12, 32, 32, 32]
    assert [_heads(c) for c in (16, 64, 96, 128, 200, 256)] == [1, 1, 1, 2, 2, 4]
    for c in range(1, 600):
        assert c % _groups(c) == 0 and c % _heads(c) == 0


def test_label_k_uses_embedding_row_k_plus_1_and_row_0_is_the_null_label():
    """labels + 1 indexes the label embedding: -1 (no label) is row 0, and every real label has a row of its own."""
    torch.manual_seed(6)
    net = _randomise(UNet(in_channels=1, channels=8, channel_mult=(1, 2), attention_levels=(), num_classes=3))
    x, t = torch.randn(4, 1, 8, 8), torch.zeros(4)
    labels = torch.tensor([-1, 0, 1, 2])
    before = net(x, t, labels)
    assert all(not torch.allclose(before[i], before[j]) for i in range(4) for j in range(i))
    with torch.no_grad():
        net.label_embed.weight[0].add_(1.0)  # move the null label's embedding only
    after = net(x, t, labels)
    assert not torch.allclose(after[0], before[0])
    torch.testing.assert_close(after[1:], before[1:])
    # the label embedding is added to the noise embedding, not put in its place: c_noise still matters with a label
    assert not torch.allclose(net(x, torch.full((4,), 0.5), labels), after)
    # one row of the batch sees only its own label
    torch.testing.assert_close(net(x[1:2], t[1:2], labels[1:2]), after[1:2], rtol=1e-5, atol=1e-5)


def test_build_denoiser_passes_the_config_to_the_network():
    from scorelab.config import config_from_dict
    from scorelab.models.build import build_denoiser
    from scorelab.models.mlp import MLP

    raw = {"data": {"name": "digits"}, "model": {"kind": "unet", "channels": 16, "channel_mult": [1, 2, 2],
           "blocks_per_level": 1, "attention_levels": [0, 2], "dropout": 0.25, "num_classes": 10,
           "parameterisation": "v", "sigma_data": 0.7}}  # fmt: skip
    den = build_denoiser(config_from_dict(raw))
    net = den.net
    assert isinstance(net, UNet) and den.parameterisation == "v" and den.sigma_data == 0.7
    assert net.num_classes == 10 and net.label_embed.num_embeddings == 11 and net.factor == 4
    assert net.inp.in_channels == 1 and net.inp.out_channels == 16
    assert sum(isinstance(m, SelfAttention) for m in net.modules()) == 2 + 4 + 1  # one down and two up per level; mid
    assert {m.p for m in net.modules() if isinstance(m, torch.nn.Dropout)} == {0.25}
    mlp = build_denoiser(config_from_dict({"model": {"kind": "mlp", "width": 48, "depth": 5}})).net
    assert isinstance(mlp, MLP) and len(mlp.blocks) == 5 and mlp.inp.out_features == 48 and mlp.dim == 2


def test_a_context_without_labels_uses_the_null_label():
    torch.manual_seed(7)
    net = _randomise(UNet(in_channels=1, channels=8, channel_mult=(1, 2), num_classes=3, context_dim=4))
    x, t, ctx = torch.randn(2, 1, 8, 8), torch.zeros(2), torch.randn(2, 3, 4)
    before = net(x, t, ctx)
    with torch.no_grad():
        net.label_embed.weight[1:].add_(1.0)  # every real label's row: no effect
    torch.testing.assert_close(net(x, t, ctx), before)
    with torch.no_grad():
        net.label_embed.weight[0].add_(1.0)  # the null label's row
    assert not torch.allclose(net(x, t, ctx), before)


def test_mlp_blocks_are_residual_and_the_output_follows_each_rows_noise_level():
    # h + fc2(silu(fc1(silu(LN h)) + emb)) (He et al. 2016): with fc2 zeroed every block is the identity
    from scorelab.models.mlp import MLP

    torch.manual_seed(0)
    net = _randomise(MLP(dim=2, width=16, depth=2, emb_dim=8))
    x, c = torch.randn(4, 2), torch.tensor([-1.0, 0.0, 0.5, 2.0])
    out = net(x, c)
    assert not torch.allclose(net(x, torch.full((4,), 0.5)), out)  # the noise level reaches the output
    torch.testing.assert_close(net(x[2:3], c[2:3]), out[2:3])  # each row sees only its own noise level
    with torch.no_grad():
        for block in net.blocks:
            block.fc2.weight.zero_()
            block.fc2.bias.zero_()
    torch.testing.assert_close(net(x, c), net.out(net.inp(x)))


def test_networks_refuse_inputs_and_conditions_they_cannot_take():
    """A 3-channel or float64 image failed deep inside a convolution; labels given to the MLP were silently ignored,
    so guidance around it did nothing."""
    from scorelab.models.mlp import MLP

    net = UNet(in_channels=1, channels=8, channel_mult=(1, 2))
    with pytest.raises(ScorelabError, match="takes 1-channel torch.float32 images, got 3-channel torch.float32"):
        net(torch.randn(1, 3, 8, 8), torch.zeros(1))
    with pytest.raises(ScorelabError, match="got 1-channel torch.float64 .convert x, or the model with .to.dtype.."):
        net(torch.randn(1, 1, 8, 8, dtype=torch.float64), torch.zeros(1))
    assert net.double()(torch.randn(1, 1, 8, 8, dtype=torch.float64), torch.zeros(1)).dtype == torch.float64
    mlp = MLP(dim=2, width=16, depth=1)
    assert mlp(torch.randn(4, 2), torch.zeros(4)).shape == (4, 2)
    with pytest.raises(ScorelabError, match="this MLP takes no condition"):
        mlp(torch.randn(4, 2), torch.zeros(4), torch.arange(4))
