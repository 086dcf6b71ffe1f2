"""Example image folders made from data that ships inside installed packages, to try `data: {name: images}` on.

    python -m scorelab.data.examples textures DIR [--tile 32]

textures: scikit-image's three 512x512 greyscale texture photographs (brick, grass, gravel) cut into
non-overlapping tile x tile squares, one class folder each (DIR/brick/0000.png, ...): 3 x (512 / tile)^2 PNGs.
Tiles do not overlap, so a held-out tile is not a shifted copy of a training one (neighbours still share texture).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import ScorelabError

TEXTURES = ("brick", "grass", "gravel")


def write_textures(out_dir, tile: int = 32) -> int:
    """Write the texture tiles into out_dir (which must not exist yet, or be empty), all or none: they go into a
    staging folder beside it, renamed into place at the end; returns how many."""
    from skimage import data

    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ScorelabError(f"{out} exists and is not an empty folder; give a new folder")
    if tile < 4 or 512 % tile:
        raise ScorelabError(f"--tile must divide 512 and be at least 4, got {tile}")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    except OSError as e:
        raise ScorelabError(f"cannot write {out} ({e.strerror})") from None
    try:
        count = 0
        for name in TEXTURES:
            image = np.asarray(getattr(data, name)())
            (stage / name).mkdir()
            per_side = image.shape[0] // tile
            for r in range(per_side):
                for c in range(per_side):
                    crop = image[r * tile : (r + 1) * tile, c * tile : (c + 1) * tile]
                    Image.fromarray(crop).save(stage / name / f"{r * per_side + c:04d}.png")
                    count += 1
        stage.chmod(0o777 & ~_umask())
        if out.exists():
            out.rmdir()  # empty, checked above
        stage.rename(out)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return count


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scorelab.data.examples", description=__doc__.split("\n\n")[0])
    parser.add_argument("name", choices=["textures"], help="which example folder")
    parser.add_argument("out", help="folder to write (new, or empty)")
    parser.add_argument("--tile", type=int, default=32, help="tile side in pixels (divides 512; default 32)")
    args = parser.parse_args(argv)
    try:
        n = write_textures(args.out, args.tile)
    except ScorelabError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {n} images into {args.out} (class folders: {', '.join(TEXTURES)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
