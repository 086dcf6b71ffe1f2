"""Finite image data sets: scikit-learn's digits, or a folder of the user's own images.

An ImageSet holds its pixels as integer levels (uint8, 0 .. levels - 1), every image once, with a fixed held-out
split; `split` gives either part as float32 in [-1, 1]. A folder is read once: every image is centre-cropped to a
square, resized to data.size (Lanczos, antialiased) and stored at 8 bits, so a data set of N images takes
N x channels x size^2 bytes.

Folder layout: image files (PNG, JPEG, BMP, GIF, TIFF, WebP) anywhere below the folder; hidden files and folders
(a leading '.') and files of other types are skipped. For class labels (model.num_classes > 0) every image lies
in a subfolder named after its class (PATH/CLASS/...), and the classes are the subfolders' names in sorted order.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from ..config import MAX_IMAGE_SIZE
from ..errors import ScorelabError
from ..resources import check_budget
from .images import _open, _to_array

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
SPLIT_SEED = 0  # the held-out split depends on the files alone, never on the training seed
MIN_TRAIN = 2


@dataclass(frozen=True, eq=False)
class ImageSet:
    pixels: torch.Tensor  # uint8 (N, C, H, W), each value a level in 0 .. levels - 1
    labels: torch.Tensor | None  # int64 (N,) indices into `classes`; None for an unlabelled set
    held_out: torch.Tensor  # bool (N,): the held-out split
    levels: int  # how many values a pixel takes: 17 for the digits (0..16), 256 for 8-bit images
    classes: tuple[str, ...]  # class names, () when unlabelled
    source: str  # what the set is, for messages and reports
    fingerprint: str  # SHA-256 of what the set was read from: a changed folder gives another

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.pixels.shape[1:])

    def split(self, which: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(images (n, C, H, W) float32 in [-1, 1], labels (n,) or None) of the 'train' or 'test' (held-out) part."""
        if which not in ("train", "test"):
            raise ScorelabError(f"split must be 'train' or 'test', got {which!r}")
        mask = self.held_out if which == "test" else ~self.held_out
        labels = None if self.labels is None else self.labels[mask]
        return to_signed(self.pixels[mask], self.levels), labels


def to_signed(pixels: torch.Tensor, levels: int) -> torch.Tensor:
    """Integer levels 0 .. levels - 1 as float32 in [-1, 1], evenly spaced (the discretised decoder's bin centres)."""
    return pixels.float() * (2.0 / (levels - 1)) - 1.0


def digits_set() -> ImageSet:
    """The 1,797 8x8 digits (pixel values 0..16) with their fixed stratified held-out split of 297."""
    from .digits import digits_levels, digits_test_mask

    pixels, labels = digits_levels()
    digest = hashlib.sha256(pixels.numpy().tobytes() + labels.numpy().tobytes()).hexdigest()
    return ImageSet(
        pixels=pixels,
        labels=labels,
        held_out=digits_test_mask(),
        levels=17,
        classes=tuple(str(d) for d in range(10)),
        source="scikit-learn's 8x8 digits",
        fingerprint=digest,
    )


def _hidden(rel: Path) -> bool:
    return any(part.startswith(".") for part in rel.parts)


def list_images(root: Path) -> list[Path]:
    """Image files below root (relative paths, sorted), hidden ones left out."""
    found = []
    for p in root.rglob("*"):
        rel = p.relative_to(root)
        if p.suffix.lower() in IMAGE_SUFFIXES and not _hidden(rel) and p.is_file():
            found.append(rel)
    return sorted(found)


def _signature(root: Path, files: list[Path]) -> tuple:
    """What identifies the folder's contents cheaply (names, sizes, modification times), for the in-process cache."""
    out = []
    for rel in files:
        st = (root / rel).stat()
        out.append((str(rel), st.st_size, st.st_mtime_ns))
    return tuple(out)


def _resize(a: np.ndarray, size: int) -> np.ndarray:
    """(H, W, C) float64 in [0, 1]: the centred square crop, resized to (size, size, C) with Lanczos filtering
    (Pillow scales the kernel with the reduction, so downsampling is antialiased)."""
    h, w, _ = a.shape
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    a = a[top : top + side, left : left + side]
    if side == size:
        return a
    channels = [
        np.asarray(
            Image.fromarray(np.ascontiguousarray(a[..., c], dtype=np.float32)).resize(
                (size, size), Image.Resampling.LANCZOS
            )
        )
        for c in range(a.shape[-1])
    ]
    return np.clip(np.stack(channels, -1), 0.0, 1.0)  # Lanczos overshoots at edges


def _with_channels(a: np.ndarray, channels: int) -> np.ndarray:
    """(H, W, C) float64 with C in 1..4 (grey, grey + alpha, RGB, RGBA) as (H, W, channels): alpha composited over
    white, colour as its ITU-R 601 luma for channels = 1 (Pillow's "L" conversion), grey repeated for 3."""
    c = a.shape[-1]
    colour, alpha = a[..., : 3 if c >= 3 else 1], (a[..., -1:] if c in (2, 4) else None)
    if alpha is not None:
        colour = colour * alpha + (1.0 - alpha)
    if channels == 1 and colour.shape[-1] == 3:
        return colour @ np.array([[0.299], [0.587], [0.114]])
    if channels == 3 and colour.shape[-1] == 1:
        return np.repeat(colour, 3, -1)
    return colour


def _split(labels: np.ndarray, holdout: float) -> np.ndarray:
    """Held-out mask: within each class a fixed permutation, round(holdout x count) of it held out (never a class's
    last image); at least one image in all when holdout > 0 and some class has two."""
    rng = np.random.default_rng(SPLIT_SEED)
    mask = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        mask[idx[: min(round(holdout * len(idx)), len(idx) - 1)]] = True
    if holdout > 0 and not mask.any():
        counts = np.bincount(labels)
        if counts.max() >= 2:
            mask[np.flatnonzero(labels == counts.argmax())[0]] = True
    return mask


def folder_set(
    path,
    *,
    size: int,
    channels: int,
    holdout: float = 0.1,
    labelled: bool = False,
    progress: bool = False,
    max_memory: int | None = None,
) -> ImageSet:
    """The images below `path` at size x size with `channels` (1 or 3); labelled: the class folders' names as labels
    (see the module docstring). Refuses, before decoding any, a set whose pixels would take more than max_memory
    bytes (default: the available memory). Read once per process for the same files and settings."""
    root = Path(path).expanduser()
    if not root.exists():
        raise ScorelabError(f"data.path {str(root)!r} does not exist")
    if not root.is_dir():
        raise ScorelabError(f"data.path {str(root)!r} is not a folder")
    if channels not in (1, 3):
        raise ScorelabError(f"data.channels must be 1 (greyscale) or 3 (RGB), got {channels}")
    if not 1 <= size <= MAX_IMAGE_SIZE:
        raise ScorelabError(f"data.size must be in 1..{MAX_IMAGE_SIZE}, got {size}")
    if not 0 <= holdout <= 0.5:
        raise ScorelabError(f"data.holdout must be in [0, 0.5], got {holdout}")
    root = root.resolve()
    files = list_images(root)
    if not files:
        raise ScorelabError(f"no images in {root} (looked for {', '.join(IMAGE_SUFFIXES)} files, hidden ones skipped)")
    key = (root, size, channels, holdout, labelled, _signature(root, files))
    if key not in _CACHE:
        check_budget(
            f"holding {len(files)} images at {size}x{size}",
            len(files) * channels * size * size,
            max_memory,
            option="--max-memory",
            hint="lower data.size, or use fewer images",
        )
        _CACHE.clear()  # one folder at a time: a second would double what the process holds
        _CACHE[key] = _load_folder(root, files, size, channels, holdout, labelled, progress)
    return _CACHE[key]


_CACHE: dict[tuple, ImageSet] = {}


def _load_folder(root: Path, files: list[Path], size, channels, holdout, labelled, progress) -> ImageSet:
    if labelled:
        loose = [f for f in files if len(f.parts) == 1]
        if loose:
            raise ScorelabError(
                f"{root} has images outside class folders (e.g. {loose[0]}); for class labels put every image in a "
                "folder named after its class (PATH/CLASS/image.png), or set model.num_classes: 0"
            )
        classes = tuple(sorted({f.parts[0] for f in files}))
        labels = np.array([classes.index(f.parts[0]) for f in files], dtype=np.int64)
    else:
        classes, labels = (), np.zeros(len(files), dtype=np.int64)
    pixels = torch.empty(len(files), channels, size, size, dtype=torch.uint8)
    digest = hashlib.sha256(f"{size} {channels} {holdout} {labelled}".encode())
    for i, rel in enumerate(tqdm(files, desc="load images", disable=not progress, leave=False)):
        where = root / rel
        digest.update(str(rel).encode() + b"\0" + where.read_bytes())
        img = _open(where, "image")
        try:
            a = _to_array(img)
        except ScorelabError as e:
            raise ScorelabError(f"image {where}: {e}") from None
        a = _resize(_with_channels(a, channels), size)
        pixels[i] = torch.from_numpy(np.rint(a * 255.0).astype(np.uint8).transpose(2, 0, 1))
    held_out = _split(labels, holdout)
    if (~held_out).sum() < MIN_TRAIN:
        raise ScorelabError(
            f"{root} has {len(files)} image(s); training needs at least {MIN_TRAIN} outside the held-out split "
            f"(data.holdout {holdout})"
        )
    what = f"{len(files)} images in {root}" + (f" ({len(classes)} classes)" if classes else "")
    return ImageSet(
        pixels=pixels,
        labels=torch.from_numpy(labels) if labelled else None,
        held_out=torch.from_numpy(held_out),
        levels=256,
        classes=classes,
        source=what,
        fingerprint=digest.hexdigest(),
    )


def image_set(data, *, num_classes: int = 0, progress: bool = False, max_memory: int | None = None) -> ImageSet:
    """The ImageSet a DataConfig names ('digits' or 'images'), labelled when the model takes num_classes labels."""
    if data.name == "digits":
        return digits_set()
    if data.name != "images":
        raise ScorelabError(f"data {data.name!r} is not an image data set (digits or images)")
    return folder_set(
        data.path,
        size=data.size,
        channels=data.channels,
        holdout=data.holdout,
        labelled=num_classes > 0,
        progress=progress,
        max_memory=max_memory,
    )


def check_classes(images: ImageSet, num_classes: int) -> None:
    """A class-conditional model must have exactly one label per class of its data."""
    if num_classes and num_classes != len(images.classes):
        shown = ", ".join(images.classes[:5]) + (", ..." if len(images.classes) > 5 else "")
        raise ScorelabError(
            f"model.num_classes is {num_classes}, but {images.source.split(' (')[0]} has {len(images.classes)} "
            f"class(es) ({shown}); set model.num_classes: {len(images.classes)}"
        )


def data_shape(data) -> tuple[int, ...]:
    """The shape of one sample of a DataConfig's data: (2,) for a 2D toy, (C, H, W) for images."""
    if data.name == "digits":
        return (1, 8, 8)
    if data.name == "images":
        return (data.channels, data.size, data.size)
    return (2,)


def is_image_data(data) -> bool:
    return data.name in ("digits", "images")
