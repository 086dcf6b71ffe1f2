"""Finite image data sets: scikit-learn's digits, or a folder of the user's own images.

An ImageSet holds its pixels as integer levels (uint8, 0 .. levels - 1), every image once, with a fixed held-out
split; `split` gives either part as float32 in [-1, 1]. A folder is read once per process: every image is turned
as its EXIF orientation says, alpha is composited over white, it is centre-cropped to a square and resized to
data.size (Lanczos, antialiased; JPEGs decode at a reduced scale where that is still large enough) and stored at 8
bits, so a data set of N images takes N x channels x size^2 bytes.

Folder layout: image files (PNG, JPEG, BMP, GIF, TIFF, WebP; the first frame of an animated one) anywhere below
the folder, links to files and folders followed; hidden files and folders (a leading '.') and files of other types
are skipped. For class labels (model.num_classes > 0) every image lies in a subfolder named after its class
(PATH/CLASS/...), and the classes are the subfolders' names in sorted order.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from ..config import MAX_IMAGE_SIZE
from ..errors import ScorelabError, warn
from ..resources import check_budget
from .images import _open, _to_array

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
SPLIT_SEED = 0  # the held-out split depends on the files alone, never on the training seed
MIN_TRAIN = 2
EIGHT_BIT_MODES = ("1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV")


@dataclass(frozen=True, eq=False)
class ImageSet:
    pixels: torch.Tensor  # uint8 (N, C, H, W), each value a level in 0 .. levels - 1
    labels: torch.Tensor | None  # int64 (N,) indices into `classes`; None for an unlabelled set
    held_out: torch.Tensor  # bool (N,): the held-out split
    levels: int  # how many values a pixel takes: 17 for the digits (0..16), 256 for 8-bit images
    classes: tuple[str, ...]  # class names, () when unlabelled
    where: str  # where the images come from: the folder, or the package
    fingerprint: str  # SHA-256 of what the set was read from and how it was split: a changed folder gives another

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.pixels.shape[1:])

    @property
    def source(self) -> str:
        """What the set is, for messages and reports: '768 images in PATH (3 classes)'."""
        classes = f" ({len(self.classes)} classes)" if self.classes else ""
        return f"{len(self.pixels)} images in {self.where}{classes}"

    def split(self, which: str, label: int | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(images (n, C, H, W) float32 in [-1, 1], labels (n,) or None) of the 'train' or 'test' (held-out) part,
        of one class when `label` is given."""
        if which not in ("train", "test"):
            raise ScorelabError(f"split must be 'train' or 'test', got {which!r}")
        mask = self.held_out if which == "test" else ~self.held_out
        if label is not None:
            if self.labels is None:
                raise ScorelabError(f"{self.where} has no class labels")
            mask = mask & (self.labels == label)
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
        held_out=digits_test_mask(labels),
        levels=17,
        classes=tuple(str(d) for d in range(10)),
        where="scikit-learn's 8x8 digits",
        fingerprint=digest,
    )


def list_images(root: Path) -> list[Path]:
    """Image files below root (relative paths, sorted), following links to files and folders, hidden files and
    folders left out. A folder reached again through a link below itself (a loop) is not walked again; a folder
    linked from two places is read from both. A folder that cannot be listed is a one-line error."""

    def refuse(err: OSError):
        raise ScorelabError(f"cannot list {err.filename} ({err.strerror})")

    def ident(folder: str) -> tuple[int, int]:
        st = os.stat(folder)
        return st.st_dev, st.st_ino

    found, above = [], {str(root): frozenset({ident(root)})}  # each folder's own identity and its ancestors'
    for folder, dirs, files in os.walk(root, onerror=refuse, followlinks=True):
        chain = above[folder]
        kept = []
        for d in sorted(d for d in dirs if not d.startswith(".")):
            child = os.path.join(folder, d)
            me = ident(child)
            if me not in chain:  # a loop back up to an ancestor is left out
                above[child] = chain | {me}
                kept.append(d)
        dirs[:] = kept
        rel = Path(folder).relative_to(root)
        for name in files:
            if not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES:
                if os.path.isfile(os.path.join(folder, name)):  # a dangling link is not an image
                    found.append(rel / name)
    return sorted(found)


def _signature(root: Path, files: list[Path]) -> tuple:
    """What identifies the folder's contents cheaply, for the in-process cache: names, sizes, inodes, and the
    modification and change times (a copy that keeps the modification time still changes the change time)."""
    out = []
    for rel in files:
        st = (root / rel).stat()
        out.append((str(rel), st.st_size, st.st_ino, st.st_mtime_ns, st.st_ctime_ns))
    return tuple(out)


def _square(img: Image.Image, size: int, channels: int) -> tuple[np.ndarray, bool]:
    """(uint8 (channels, size, size), whether it was upscaled): alpha composited over white, colour as ITU-R 601 luma
    for one channel (Pillow's "L" conversion) and greyscale repeated for three, the centred square cropped and
    resized with Lanczos filtering (Pillow widens the kernel by the reduction, so downsampling is antialiased)."""
    w, h = img.size
    side = min(w, h)
    # the exact centre, which lies between pixels when the excess is odd (a JPEG decoded at a reduced scale would
    # otherwise move by half a reduced pixel, several pixels of the photo)
    left, top = (w - side) / 2, (h - side) / 2
    box = (left, top, left + side, top + side)
    if img.mode in EIGHT_BIT_MODES:  # in Pillow, at 8 bits
        if img.mode in ("LA", "La", "PA", "RGBA", "RGBa") or (img.mode == "P" and "transparency" in img.info):
            rgba = img.convert("RGBA")
            img = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
        img = img.convert("L" if channels == 1 else "RGB")
        if side == size and left.is_integer() and top.is_integer():
            img = img.crop(tuple(int(v) for v in box))
        else:
            img = img.resize((size, size), Image.Resampling.LANCZOS, box=box)
        a = np.asarray(img, dtype=np.uint8).reshape(size, size, channels)
    else:  # 16- and 32-bit and float greyscale: scaled by their own range (images._to_array), resized as floats
        g = Image.fromarray(_to_array(img)[..., 0].astype(np.float32))
        g = np.asarray(g.resize((size, size), Image.Resampling.LANCZOS, box=box))
        a = np.repeat(np.rint(np.clip(g, 0.0, 1.0) * 255.0).astype(np.uint8)[..., None], channels, -1)
    return a.transpose(2, 0, 1).copy(), side < size  # a copy: Pillow's buffer is read-only


def read_square(path, size: int, channels: int, what: str = "image") -> tuple[np.ndarray, bool]:
    """An image file as the folder loader reads it: (uint8 (channels, size, size), whether it was upscaled)."""
    img = _open(path, what, draft=(2 * size, 2 * size))  # twice the size: Lanczos does the last step
    try:
        return _square(img, size, channels)
    except ScorelabError as e:
        raise ScorelabError(f"{what} {path}: {e}") from None
    except (ValueError, OSError) as e:  # a mode Pillow cannot convert
        raise ScorelabError(f"{what} {path}: cannot be converted ({img.mode}: {e})") from None


def _split(labels: np.ndarray, holdout: float) -> np.ndarray:
    """Held-out mask: within each class a fixed permutation, holdout x count of it (rounded half up) held out, never
    a class's last image; at least one image in all when holdout > 0, some class has two and MIN_TRAIN are left."""
    rng = np.random.default_rng(SPLIT_SEED)
    mask = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        share = int(Decimal(repr(holdout)) * len(idx) + Decimal("0.5"))  # in decimal: 0.29 x 50 is 14.5, not 14.49..
        mask[idx[: min(share, len(idx) - 1)]] = True
    if holdout > 0 and not mask.any():
        counts = np.bincount(labels)
        if counts.max() >= 2 and len(labels) > MIN_TRAIN:
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
            folder_bytes(len(files), size, channels),
            max_memory,
            option="--max-memory",
            hint="lower data.size, or use fewer images",
        )
        _CACHE.clear()  # one folder at a time: a second would double what the process holds
        _CACHE[key] = _load_folder(root, files, size, channels, holdout, labelled, progress)
    return _CACHE[key]


_CACHE: dict[tuple, ImageSet] = {}


def folder_bytes(count: int, size: int, channels: int) -> int:
    """What a folder of `count` images takes once read: one byte per value."""
    return count * channels * size * size


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
    upscaled = 0
    for i, rel in enumerate(tqdm(files, desc="load images", disable=not progress, leave=False)):
        where = root / rel
        try:
            data = where.read_bytes()
        except OSError as e:
            raise ScorelabError(f"image {where}: cannot be read ({e.strerror})") from None
        digest.update(os.fsencode(str(rel)) + b"\0" + hashlib.sha256(data).digest())
        a, up = read_square(where, size, channels)
        pixels[i] = torch.from_numpy(a)
        upscaled += up
    held_out = _split(labels, holdout)
    if (~held_out).sum() < MIN_TRAIN:
        raise ScorelabError(
            f"{root} has {len(files)} image(s); training needs at least {MIN_TRAIN} outside the held-out split "
            f"(data.holdout {holdout})"
        )
    if upscaled:
        warn(
            f"warning: {upscaled} of the {len(files)} images in {root} are smaller than {size}x{size} and were upscaled"
        )
    if holdout > 0 and not held_out.any():
        warn(f"warning: data.holdout {holdout} holds out no image of {root} (too few images to spare one)")
    digest.update(labels.tobytes() + held_out.tobytes())
    return ImageSet(
        pixels=pixels,
        labels=torch.from_numpy(labels) if labelled else None,
        held_out=torch.from_numpy(held_out),
        levels=256,
        classes=classes,
        where=str(root),
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
            f"model.num_classes is {num_classes}, but {images.where} has {len(images.classes)} class folder(s) "
            f"({shown}); set model.num_classes: {len(images.classes)}"
        )


def budget_left(max_memory: int | None, images: ImageSet | None) -> int | None:
    """What a --max-memory budget leaves for the rest once an image set is held (None: the available memory, which
    is measured with the set already held)."""
    if max_memory is None or images is None:
        return max_memory
    return max_memory - images.pixels.numel()


def check_outside(folder, data) -> None:
    """Outputs written inside an image folder would be read as its images by the next command: refuse it."""
    if data.name != "images" or not data.path:
        return
    inner, images = Path(folder).expanduser().resolve(), Path(data.path).expanduser().resolve()
    if inner == images or images in inner.parents:
        raise ScorelabError(
            f"{folder} lies inside data.path {images}: what scorelab writes there would be read as images; "
            "give a folder outside it"
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
