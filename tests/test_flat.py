"""FlatParameters: a module's parameters as views into one buffer, and the training step over it."""

import copy

import pytest
import torch
from torch import nn

from scorelab.errors import ScorelabError
from scorelab.models.unet import UNet
from scorelab.train.ema import EMA
from scorelab.train.flat import FlatParameters


def _unet():
    torch.manual_seed(0)
    return UNet(in_channels=1, channels=8, channel_mult=(1, 2), attention_levels=(1,), blocks_per_level=1)


def _loss(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(4, 1, 8, 8, generator=g)
    return (model(x, torch.rand(4, generator=g)) - x).square().mean()


def test_parameters_keep_their_objects_values_and_layouts():
    model = _unet()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    layouts = [(p.shape, p.stride()) for p in model.parameters()]
    objects = list(model.parameters())
    fp = FlatParameters(model)
    assert list(model.parameters()) == objects and [(p.shape, p.stride()) for p in model.parameters()] == layouts
    assert any(p.ndim == 4 and not p.is_contiguous() for p in objects)  # channels-last weights stay so
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert all(p.untyped_storage().data_ptr() == fp.flat.untyped_storage().data_ptr() for p in objects)
    assert fp.flat.numel() == sum(p.numel() for p in objects)


def test_backward_clipping_and_adam_over_the_buffer_match_the_per_tensor_step():
    """The gradients accumulate into the buffer bit for bit as they would into separate tensors; clipping's norm and
    Adam's update agree to float32 rounding (the norm sums in another order)."""
    plain, flat_model = _unet(), _unet()
    fp = FlatParameters(flat_model)
    opt_plain = torch.optim.Adam(plain.parameters(), lr=1e-2, fused=True)
    opt_flat = torch.optim.Adam([fp.flat], lr=1e-2, fused=True)
    for step in range(3):
        opt_plain.zero_grad(set_to_none=True)
        fp.zero_grad()
        _loss(plain, step).backward()
        _loss(flat_model, step).backward()
        for a, b in zip(plain.parameters(), flat_model.parameters(), strict=True):
            if step == 0:
                assert torch.equal(a.grad, b.grad)
            else:  # the parameters differ by rounding after a step, and so do their gradients
                torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-6)
        n_plain = torch.nn.utils.clip_grad_norm_(plain.parameters(), 0.1)
        n_flat = torch.nn.utils.clip_grad_norm_([fp.flat], 0.1)
        torch.testing.assert_close(n_flat, n_plain, rtol=1e-6, atol=0)
        opt_plain.step()
        opt_flat.step()
    for a, b in zip(plain.parameters(), flat_model.parameters(), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
    assert any(not torch.equal(a, b) for a, b in zip(_unet().parameters(), flat_model.parameters(), strict=True))


def test_zero_grad_clears_the_gradients_in_place():
    model = _unet()
    fp = FlatParameters(model)
    _loss(model).backward()
    assert fp.flat.grad.abs().sum() > 0
    fp.zero_grad()
    assert all(p.grad is not None and not p.grad.any() for p in model.parameters())
    _loss(model).backward()  # accumulates into the same views
    assert all(
        p.grad.untyped_storage().data_ptr() == fp.flat.grad.untyped_storage().data_ptr() for p in model.parameters()
    )


def test_a_parameter_or_gradient_taken_out_of_the_buffer_is_caught():
    """nn.Module.zero_grad() sets gradients to None and .to(dtype) gives parameters new memory: either would leave
    the optimiser updating a buffer the model no longer reads, so check() refuses to go on."""
    model = _unet()
    fp = FlatParameters(model)
    _loss(model).backward()
    fp.check()
    model.zero_grad()
    _loss(model).backward()  # new gradient tensors, outside the buffer
    with pytest.raises(ScorelabError, match="moved out of the flat training buffer"):
        fp.check()
    other = _unet()
    fp = FlatParameters(other)
    other.double()
    with pytest.raises(ScorelabError, match="moved out"):
        fp.check()


def test_the_ema_moves_its_flat_copy_by_one_lerp():
    model = _unet()
    fp = FlatParameters(model)
    ema = EMA(model, decay=0.9)
    target = copy.deepcopy(model)
    with torch.no_grad():
        fp.flat.add_(1.0)
    ema.update(fp, step=10**6)
    for e, t, p in zip(ema.model.parameters(), target.parameters(), model.parameters(), strict=True):
        torch.testing.assert_close(e, 0.9 * t + 0.1 * p)  # the average of the old and the new weights
    with pytest.raises(ScorelabError, match="same parameters"):
        ema.update(FlatParameters(nn.Linear(2, 2)), step=0)


def test_refuses_what_it_cannot_flatten():
    with pytest.raises(ScorelabError, match="no parameters"):
        FlatParameters(nn.ReLU())
    mixed = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2).double())
    with pytest.raises(ScorelabError, match="one dtype"):
        FlatParameters(mixed)
