"""Image and mask loaders: every supported format converts correctly, and no input (random bytes, random pixel
arrays in every Pillow mode, truncated files) makes them fail with anything but a one-line ScorelabError."""

import io

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from scorelab.data.images import load_image, load_mask
from scorelab.errors import ScorelabError


def _save(tmp_path, img: Image.Image, name="x.png") -> str:
    path = tmp_path / name
    img.save(path)
    return str(path)


def test_rgb_greyscale_palette_alpha_and_16_bit_convert_exactly(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (4, 6, 3), dtype=np.uint8)
    out = load_image(_save(tmp_path, Image.fromarray(rgb)))
    assert out.shape == (3, 4, 6) and out.dtype == torch.float32
    torch.testing.assert_close(out, torch.from_numpy(rgb).permute(2, 0, 1).float() / 255)
    grey = load_image(_save(tmp_path, Image.fromarray(rgb[..., 0])), channels=3)
    torch.testing.assert_close(grey, torch.from_numpy(rgb[..., 0]).float().div(255).expand(3, -1, -1))
    pal = Image.fromarray(rgb).quantize(8)
    want = torch.from_numpy(np.array(pal.convert("RGB"))).permute(2, 0, 1).float() / 255
    torch.testing.assert_close(load_image(_save(tmp_path, pal)), want)
    # alpha: composited over the background for RGB, kept for channels=4
    rgba = np.concatenate([rgb, np.full((4, 6, 1), 51, np.uint8)], -1)  # alpha 0.2
    path = _save(tmp_path, Image.fromarray(rgba))
    over_black = load_image(path, background=(0, 0, 0))
    torch.testing.assert_close(over_black, torch.from_numpy(rgb).permute(2, 0, 1).float() / 255 * 0.2)
    assert load_image(path, channels=4)[3].allclose(torch.full((4, 6), 0.2))
    # greyscale with alpha for a 1-channel model: over the background's grey, not with the alpha dropped
    la = Image.fromarray(np.stack([rgb[..., 0], np.full((4, 6), 51, np.uint8)], -1), mode="LA")
    la_path = _save(tmp_path, la)
    grey_a = torch.from_numpy(rgb[..., 0]).float() / 255
    torch.testing.assert_close(load_image(la_path, channels=1)[0], grey_a * 0.2 + 0.8)  # white background
    torch.testing.assert_close(load_image(la_path, channels=1, background=(0, 0, 0))[0], grey_a * 0.2)
    # 16-bit greyscale: scaled by 65535, not clipped to 8 bits
    deep = np.array([[0, 1000, 65535, 40000]], dtype=np.uint16)
    out16 = load_image(_save(tmp_path, Image.fromarray(deep)), channels=1)
    torch.testing.assert_close(out16[0], torch.from_numpy(deep.astype(np.float64) / 65535).float())


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p.write_bytes(b"not an image at all"), "not an image file"),
        (lambda p: p.write_bytes(_png_bytes()[:60]), "damaged or truncated"),
        (lambda p: None, "does not exist"),
    ],
)
def test_unreadable_files_get_one_line_errors(tmp_path, make, message):
    path = tmp_path / "bad.png"
    make(path)
    with pytest.raises(ScorelabError, match=message) as e:
        load_image(path)
    assert "\n" not in str(e.value)


def _png_bytes() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def test_size_channels_and_option_errors(tmp_path):
    path = _save(tmp_path, Image.fromarray(np.zeros((10, 12, 3), np.uint8)))
    with pytest.raises(ScorelabError, match="not divisible by the model's factor 8.*8x8"):
        load_image(path, multiple_of=8)
    assert load_image(path, multiple_of=2).shape == (3, 10, 12)
    with pytest.raises(ScorelabError, match="greyscale"):
        load_image(path, channels=1)
    with pytest.raises(ScorelabError, match="channels must be one of"):
        load_image(path, channels=2)


def test_masks(tmp_path):
    m = np.zeros((6, 8), np.uint8)
    m[2:4, 3:6] = 255
    path = _save(tmp_path, Image.fromarray(m))
    mask = load_mask(path, size=(6, 8))
    assert mask.dtype == torch.bool and mask.sum() == 6 and mask[2, 3]
    assert load_mask(_save(tmp_path, Image.fromarray(m).convert("RGB"), "rgb.png")).sum() == 6
    with pytest.raises(ScorelabError, match="does not match the image's 7x8"):
        load_mask(path, size=(7, 8))
    soft = m.copy()
    soft[0, 0] = 128
    with pytest.raises(ScorelabError, match="not binary"):
        load_mask(_save(tmp_path, Image.fromarray(soft), "soft.png"))
    with pytest.raises(ScorelabError, match="empty"):
        load_mask(_save(tmp_path, Image.fromarray(np.zeros((4, 4), np.uint8)), "empty.png"))
    colour = np.zeros((4, 4, 3), np.uint8)
    colour[0, 0] = (255, 0, 0)
    with pytest.raises(ScorelabError, match="colour"):
        load_mask(_save(tmp_path, Image.fromarray(colour), "colour.png"))


MODES = {
    "1": np.bool_,
    "L": np.uint8,
    "LA": np.uint8,
    "RGB": np.uint8,
    "RGBA": np.uint8,
    "I;16": np.uint16,
    "I": np.int32,
    "F": np.float32,
    "P": np.uint8,
    "CMYK": np.uint8,
}
CHANS = {"LA": 2, "RGB": 3, "RGBA": 4, "CMYK": 4}


@st.composite
def pil_images(draw):
    mode = draw(st.sampled_from(sorted(MODES)))
    h, w = draw(st.integers(1, 9)), draw(st.integers(1, 9))
    shape = (h, w, CHANS[mode]) if mode in CHANS else (h, w)
    dtype = MODES[mode]
    if dtype is np.float32:
        a = np.asarray(draw(st.lists(st.floats(-2, 2, width=32), min_size=h * w, max_size=h * w)), np.float32)
    else:
        top = {np.bool_: 1, np.uint8: 255, np.uint16: 65535, np.int32: 70000}[dtype]
        a = np.asarray(draw(st.lists(st.integers(0, top), min_size=h * w * (shape[2] if len(shape) == 3 else 1),
                                     max_size=h * w * (shape[2] if len(shape) == 3 else 1))))  # fmt: skip
    a = a.reshape(shape).astype(dtype)
    img = Image.fromarray(a, mode=None if mode in ("P", "I;16", "CMYK") else mode) if mode != "P" else None
    if mode == "P":
        img = Image.fromarray(a, "L").convert("P")
    elif mode == "CMYK":
        img = Image.fromarray(a[..., :4], "CMYK")
    elif mode == "I;16":
        img = Image.fromarray(a)
    fmt = draw(st.sampled_from(["PNG", "TIFF", "BMP", "JPEG", "WEBP"]))
    return img, fmt


def _check_result(fn, path, **kw):
    try:
        out = fn(path, **kw)
    except ScorelabError as e:
        assert str(e) and "\n" not in str(e)
        return None
    assert torch.isfinite(out.float()).all()
    return out


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pil_images(), st.sampled_from([1, 3, 4]), st.sampled_from([1, 2, 4]))
def test_loaders_never_crash_on_images_of_any_mode(tmp_path, drawn, channels, multiple_of):
    img, fmt = drawn
    buf = io.BytesIO()
    try:
        img.save(buf, fmt)
    except (OSError, ValueError, KeyError):
        return  # this format cannot hold this mode; nothing to load
    path = tmp_path / "drawn.img"
    path.write_bytes(buf.getvalue())
    out = _check_result(load_image, path, channels=channels, multiple_of=multiple_of)
    if out is not None:
        assert out.shape[0] == channels and out.shape[1] % multiple_of == 0 and out.shape[2] % multiple_of == 0
        assert out.min() >= 0 and out.max() <= 1
    mask = _check_result(load_mask, path)
    if mask is not None:
        assert mask.dtype == torch.bool and mask.any()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=400), st.integers(0, 400))
def test_loaders_never_crash_on_random_or_cut_bytes(tmp_path, junk, cut):
    path = tmp_path / "junk.png"
    for data in (junk, _png_bytes()[:cut], _png_bytes()[:cut] + junk):
        path.write_bytes(data)
        _check_result(load_image, path)
        _check_result(load_mask, path)


def test_full_scale_32_bit_images_load_as_white(tmp_path):
    # Pillow's "I" mode is signed: full scale is 2^31 - 1, not 2^32 - 1 (which gave white at 0.5)
    path = tmp_path / "white.tif"
    Image.fromarray(np.full((4, 4), 2**31 - 1, np.int32), "I").save(path)
    assert load_image(path, channels=1).max().item() == pytest.approx(1.0)


@pytest.mark.parametrize("background", [(1.0,), 0.5, (0, 0, 2), ("a", "b", "c"), (0, float("nan"), 0)])
def test_a_bad_background_is_a_one_line_error(tmp_path, background):
    path = _save(tmp_path, Image.fromarray(np.zeros((4, 4, 4), np.uint8)))
    with pytest.raises(ScorelabError, match=r"background must be three numbers \(R, G, B\) in \[0, 1\]"):
        load_image(path, background=background)


def test_alpha_composites_over_each_channel_of_a_coloured_background(tmp_path):
    rgb = np.random.default_rng(2).integers(0, 256, (4, 6, 3), dtype=np.uint8)
    alpha = np.random.default_rng(3).integers(0, 256, (4, 6, 1), dtype=np.uint8)
    path = _save(tmp_path, Image.fromarray(np.concatenate([rgb, alpha], -1)))
    a = torch.from_numpy(alpha).permute(2, 0, 1).double() / 255
    colour = torch.from_numpy(rgb).permute(2, 0, 1).double() / 255
    bg = torch.tensor([1.0, 0.5, 0.0], dtype=torch.float64)[:, None, None]
    # "over" compositing (Porter & Duff 1984): C = alpha C_fg + (1 - alpha) C_bg, channel by channel
    want = colour * a + bg * (1 - a)
    torch.testing.assert_close(load_image(path, background=(1.0, 0.5, 0.0)), want.float())
    # greyscale with alpha over a coloured background: over its ITU-R 601 luma 0.299 R + 0.587 G + 0.114 B
    la = Image.fromarray(np.concatenate([rgb[..., :1], alpha], -1), mode="LA")
    grey_bg = 0.299 * 1.0 + 0.587 * 0.5
    want_grey = colour[:1] * a + grey_bg * (1 - a)
    torch.testing.assert_close(load_image(_save(tmp_path, la, "la.png"), channels=1, background=(1.0, 0.5, 0.0)),
                               want_grey.float())  # fmt: skip
    # channels=4 of an image without alpha: fully opaque
    opaque = load_image(_save(tmp_path, Image.fromarray(rgb), "rgb.png"), channels=4)
    torch.testing.assert_close(opaque[:3], colour.float())
    assert torch.equal(opaque[3], torch.ones(4, 6))


def test_palette_transparency_and_one_bit_images(tmp_path):
    rgb = np.random.default_rng(4).integers(0, 256, (4, 6, 3), dtype=np.uint8)
    pal = Image.fromarray(rgb).quantize(8)
    pal.info["transparency"] = 0  # palette entry 0 is transparent
    path = _save(tmp_path, pal)
    rgba = np.array(Image.open(path).convert("RGBA")).astype(np.float64) / 255
    assert (rgba[..., 3] == 0).any() and (rgba[..., 3] == 1).any()
    want = torch.from_numpy(rgba[..., :3] * rgba[..., 3:]).permute(2, 0, 1).float()  # over black
    torch.testing.assert_close(load_image(path, background=(0, 0, 0)), want)
    torch.testing.assert_close(load_image(path, channels=4)[3], torch.from_numpy(rgba[..., 3]).float())
    # a 1-bit image: white is 1, black 0, as an image and as a mask
    bits = np.zeros((4, 6), bool)
    bits[1:3, 2:5] = True
    one = _save(tmp_path, Image.fromarray(bits), "bits.png")
    assert Image.open(one).mode == "1"
    assert torch.equal(load_image(one, channels=1)[0], torch.from_numpy(bits).float())
    assert torch.equal(load_mask(one), torch.from_numpy(bits))


def test_masks_of_every_depth_ignore_alpha_and_sizes_are_checked_on_both_sides(tmp_path):
    m = np.zeros((6, 8), np.uint16)
    m[1:4, 2:7] = 65535
    want = torch.from_numpy(m > 0)
    assert torch.equal(load_mask(_save(tmp_path, Image.fromarray(m), "deep.png")), want)  # 16-bit white is 65535
    rgba = np.zeros((6, 8, 4), np.uint8)
    rgba[..., :3] = (m > 0)[..., None] * 255
    rgba[..., 3] = np.random.default_rng(5).integers(0, 256, (6, 8))  # an alpha that is not the mask
    assert torch.equal(load_mask(_save(tmp_path, Image.fromarray(rgba), "rgba.png")), want)
    with pytest.raises(ScorelabError, match="does not match the image's 6x9"):
        load_mask(_save(tmp_path, Image.fromarray(m), "deep2.png"), size=(6, 9))
    # only the width is off: 8 x 12 at factor 8
    with pytest.raises(ScorelabError, match="not divisible by the model's factor 8"):
        load_image(_save(tmp_path, Image.fromarray(np.zeros((8, 12, 3), np.uint8)), "wide.png"), multiple_of=8)


def test_32_bit_integer_and_float_greyscale_keep_their_range(tmp_path):
    # an "I" image whose values fit 16 bits is read as 16-bit data (scaled by 65535), as PNG / TIFF 16-bit often load
    deep = np.array([[0, 300, 40000, 65535]], np.int32)
    path = tmp_path / "deep.tif"
    Image.fromarray(deep, "I").save(path)
    torch.testing.assert_close(load_image(path, channels=1)[0], torch.from_numpy(deep / 65535.0).float())
    # float images in [0, 1] load unchanged; values outside it are refused, not clipped
    f = np.array([[0.0, 0.25, 1.0]], np.float32)
    Image.fromarray(f, "F").save(tmp_path / "f.tif")
    torch.testing.assert_close(load_image(tmp_path / "f.tif", channels=1)[0], torch.from_numpy(f))
    Image.fromarray(f * 1.5, "F").save(tmp_path / "over.tif")
    with pytest.raises(ScorelabError, match=r"must be in \[0, 1\], got \[0, 1.5\]"):
        load_image(tmp_path / "over.tif", channels=1)
