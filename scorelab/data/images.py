"""Loading user images and masks (Pillow), with one-line errors for everything that cannot be used.

What is converted rather than refused (docs/bad-input.md lists every case):
- palette (P) images are expanded to RGB(A) through their palette;
- 16- and 32-bit integer and float greyscale images are scaled by their own range type (16-bit by 65535), never
  clipped to 8 bits;
- an alpha channel is composited over `background` (its grey value for greyscale output) and kept only when
  channels=4 is asked for;
- greyscale is repeated to RGB when channels=3 is asked for (and RGB is refused for channels=1, since dropping colour
  silently is rarely what the user meant);
- an EXIF orientation (a phone photo stored sideways) is applied, so the image comes out as a viewer shows it;
- an animated or multi-page file gives its first frame.
Returned tensors are float32 (C, H, W) in [0, 1].
"""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import ScorelabError

MAX_PIXELS = 8192 * 8192
CHANNELS = (1, 3, 4)


@contextlib.contextmanager
def _pillow_limit(pixels: int | None):
    """Pillow's decompression-bomb limit set to `pixels` (None: off) inside the block."""
    before = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = pixels
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = before


def _open(path, what: str, draft: tuple[int, int] | None = None) -> Image.Image:
    """The decoded image, turned as its EXIF orientation says. draft: the smallest (width, height) needed, which lets
    a JPEG decode at 1/2, 1/4 or 1/8 of its size where that is still at least this large."""
    path = Path(path)
    if not path.is_file():
        raise ScorelabError(f"{what} {path}: file does not exist")
    try:
        with warnings.catch_warnings(), _pillow_limit(None if draft else Image.MAX_IMAGE_PIXELS):
            # MAX_PIXELS below is the limit, checked on the size that will be decoded (Pillow's own check would
            # refuse a large photo before a JPEG could be asked to decode at a reduced scale)
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(path)
            if draft is not None and img.format in ("JPEG", "MPO"):  # MPO: the JPEG of many cameras and phones
                img.draft(None, draft)  # the DCT scales down while decoding: fast, and far less memory
            if img.width * img.height > MAX_PIXELS:
                raise ScorelabError(
                    f"{what} {path}: {img.width}x{img.height} is larger than the {MAX_PIXELS} pixels allowed"
                )
            img.load()  # decode now, so truncated files fail here
            ImageOps.exif_transpose(img, in_place=True)
    except ScorelabError:
        raise
    except PermissionError:
        raise ScorelabError(f"{what} {path}: cannot be read (permission denied)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ScorelabError(f"{what} {path}: larger than the {MAX_PIXELS} pixels allowed") from None
    except UnidentifiedImageError:
        raise ScorelabError(
            f"{what} {path}: not an image file Pillow can read (PNG, JPEG, BMP, TIFF, WebP, ...)"
        ) from None
    except (OSError, SyntaxError, ValueError) as e:
        raise ScorelabError(f"{what} {path}: damaged or truncated image ({type(e).__name__}: {e})") from None
    if img.width == 0 or img.height == 0:
        raise ScorelabError(f"{what} {path}: the image is empty ({img.width}x{img.height})")
    return img


def _to_array(img: Image.Image) -> np.ndarray:
    """(H, W, C) float64 in [0, 1] with C in {1, 2, 3, 4} (L, LA, RGB, RGBA)."""
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    elif img.mode in ("1", "L", "LA", "RGB", "RGBA"):
        pass
    elif img.mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        return (np.asarray(img, dtype=np.float64) / 65535.0)[..., None]
    elif img.mode == "I":
        a = np.asarray(img, dtype=np.float64)
        top = 65535.0 if a.max(initial=0) <= 65535 else 2147483647.0  # Pillow's "I" is signed 32-bit
        return (np.clip(a, 0, None) / top)[..., None]
    elif img.mode == "F":
        a = np.asarray(img, dtype=np.float64)
        if not np.isfinite(a).all():
            raise ScorelabError("float image contains NaN or infinite values")
        if a.min(initial=0) < 0 or a.max(initial=0) > 1:
            raise ScorelabError(f"float image values must be in [0, 1], got [{a.min():g}, {a.max():g}]")
        return a[..., None]
    elif img.mode in ("CMYK", "YCbCr", "LAB", "HSV", "PA", "La", "RGBa", "RGBX"):
        img = img.convert("RGBA" if img.mode in ("PA", "La", "RGBa") else "RGB")
    else:
        raise ScorelabError(f"unsupported image mode {img.mode!r}; allowed: greyscale, RGB, RGBA, palette, 16-bit")
    a = np.asarray(img.convert("L") if img.mode == "1" else img, dtype=np.float64) / 255.0
    return a[..., None] if a.ndim == 2 else a


def check_background(background) -> np.ndarray:
    """A background colour: three numbers (R, G, B) in [0, 1] (a tuple, array or tensor), as float64; else a one-line
    error. Shared by the image loader and the renderers in scorelab.three."""
    try:
        raw = background.detach().cpu() if isinstance(background, torch.Tensor) else background
        bg = np.asarray(raw, dtype=np.float64)
    except (TypeError, ValueError):
        bg = np.zeros(0)
    if bg.shape != (3,) or not ((bg >= 0) & (bg <= 1)).all():
        raise ScorelabError(f"background must be three numbers (R, G, B) in [0, 1], got {background!r}")
    return bg


def load_image(
    path, *, channels: int = 3, multiple_of: int = 1, background=(1.0, 1.0, 1.0), what: str = "image"
) -> torch.Tensor:
    """An image file as a float32 (channels, H, W) tensor in [0, 1]; H and W must be multiples of `multiple_of`
    (a model's downsampling factor). channels: 1 (greyscale; alpha composited over `background`'s grey), 3 (RGB,
    alpha composited over `background`) or 4."""
    if channels not in CHANNELS:
        raise ScorelabError(f"channels must be one of {CHANNELS}, got {channels}")
    if multiple_of < 1:
        raise ScorelabError(f"multiple_of must be >= 1, got {multiple_of}")
    bg = check_background(background)
    img = _open(path, what)
    try:
        a = _to_array(img)
    except ScorelabError as e:
        raise ScorelabError(f"{what} {path}: {e}") from None
    h, w, c = a.shape
    if h % multiple_of or w % multiple_of:
        fit = f"{h - h % multiple_of}x{w - w % multiple_of}"
        raise ScorelabError(
            f"{what} {path}: size {h}x{w} is not divisible by the model's factor {multiple_of}; "
            f"crop or resize it (for example to {fit})"
        )
    colour, alpha = a[..., : 3 if c >= 3 else 1], (a[..., -1:] if c in (2, 4) else None)
    if channels == 1:
        if colour.shape[-1] == 3:
            raise ScorelabError(f"{what} {path}: has colour (RGB) but a greyscale (1-channel) image is needed")
        out = colour
        if alpha is not None:  # over the background's grey value (ITU-R 601 luma, as Pillow's "L" conversion)
            grey = float(np.dot(bg, (0.299, 0.587, 0.114)))
            out = colour * alpha + grey * (1 - alpha)
    else:
        rgb = np.repeat(colour, 3, -1) if colour.shape[-1] == 1 else colour
        if channels == 4:
            out = np.concatenate([rgb, alpha if alpha is not None else np.ones_like(rgb[..., :1])], -1)
        elif alpha is not None:
            out = rgb * alpha + bg.reshape(1, 1, 3) * (1 - alpha)
        else:
            out = rgb
    return torch.from_numpy(np.ascontiguousarray(out.transpose(2, 0, 1))).float()


def load_mask(path, *, size: tuple[int, int] | None = None, what: str = "mask") -> torch.Tensor:
    """A binary mask file as a bool (H, W) tensor: greyscale or RGB(A) whose pixels are all black or all white
    (0 or the format's maximum; for RGB all three channels agree; an alpha channel is ignored). size: the (H, W) it
    must have (that of the image it goes with). A mask that selects nothing is refused."""
    img = _open(path, what)
    try:
        a = _to_array(img)
    except ScorelabError as e:
        raise ScorelabError(f"{what} {path}: {e}") from None
    c = a.shape[-1]
    grey = a[..., : 3 if c >= 3 else 1]
    if grey.shape[-1] == 3 and not (np.ptp(grey, axis=-1) == 0).all():
        raise ScorelabError(f"{what} {path}: has colour; a mask must be black and white (R = G = B)")
    grey = grey[..., 0]
    if size is not None and tuple(grey.shape) != tuple(size):
        raise ScorelabError(
            f"{what} {path}: size {grey.shape[0]}x{grey.shape[1]} does not match the image's {size[0]}x{size[1]}"
        )
    values = np.unique(grey)
    if not np.isin(values, (0.0, 1.0)).all():
        bad = [f"{v:.3g}" for v in values[~np.isin(values, (0.0, 1.0))][:3]]
        raise ScorelabError(
            f"{what} {path}: is not binary ({len(values)} distinct levels, e.g. {', '.join(bad)}); "
            "allowed: black (0) and white (maximum) only; threshold it first"
        )
    mask = torch.from_numpy(grey == 1.0)
    if not mask.any():
        raise ScorelabError(f"{what} {path}: is empty (no white pixel), so it selects nothing")
    return mask
