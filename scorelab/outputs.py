"""Output folders that are never half-written: checked before the work starts, filled in a hidden staging folder
beside them, and swapped into place only when every file is written."""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import ScorelabError

MANIFEST = ".scorelab-outputs.json"  # the names of the files a staged output wrote, kept beside them


def json_text(obj, indent: int = 2) -> str:
    """`obj` as strict JSON: a NaN or infinite number (a metric with nothing to measure, such as the spread of a
    mixture component no sample reached) becomes null, since JSON has no NaN and strict parsers refuse it."""

    def finite(v):
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: finite(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [finite(x) for x in v]
        return v

    return json.dumps(finite(obj), indent=indent, allow_nan=False)


def written_before(out: Path, command: str) -> set[str]:
    """The names an earlier run of `command` recorded in `out` (none when it has no readable manifest, or another
    command wrote it: one command never takes another's outputs for its own)."""
    try:
        manifest = json.loads((Path(out) / MANIFEST).read_text())
        names = manifest["files"] if manifest["command"] == command else []
    except (OSError, ValueError, KeyError, TypeError):
        return set()
    return {n for n in names if isinstance(n, str)} if isinstance(names, list) else set()


def check_output_dir(out: Path, owns: Callable[[str], bool], command: str) -> None:
    """Raise ScorelabError now, before any work, if `out` cannot receive this command's outputs: its parent cannot
    be created or written, it is a file, or it holds files this command did not write: `owns(name)` says which
    names it writes now, and the folder's manifest which an earlier run of the same `command` wrote. A folder of
    only those is replaced whole."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ScorelabError(f"output folder {out} is a file; choose a folder")
    here = Path.cwd().resolve()
    if out.resolve() == here or out.resolve() in here.parents:  # it is swapped whole at the end
        raise ScorelabError(f"output folder {out} is the current folder or holds it; choose a folder inside it")
    if out.is_dir():
        ours = written_before(out, command) | {MANIFEST}
        foreign = sorted(p.name for p in out.iterdir() if not (p.is_file() and (p.name in ours or owns(p.name))))
        if foreign:
            raise ScorelabError(
                f"output folder {out} holds files this command did not write ({', '.join(foreign[:3])}); "
                "choose a new or empty folder"
            )
    check_writable_dir(out.parent)


def check_writable_dir(folder: Path) -> None:
    """Raise ScorelabError naming the obstacle if `folder` could not be created or written. Creates nothing: the
    folders appear when the outputs are written (make_dirs), so work that fails or is interrupted leaves none."""
    folder = Path(folder)
    above = next(p for p in [folder, *folder.parents] if p.exists())  # "." or "/" at the latest
    if not above.is_dir():
        raise ScorelabError(f"cannot create folder {folder}: {above} is a file")
    try:  # a real write: permissions alone miss read-only and pseudo file systems
        os.rmdir(tempfile.mkdtemp(dir=above, prefix=".scorelab-probe-"))
    except OSError as e:
        raise ScorelabError(f"cannot write to {above}: {e.strerror or e}") from None


def make_dirs(folder: Path) -> list[Path]:
    """Create `folder` and its missing parents; return the ones created, deepest first (for remove_empty)."""
    folder = Path(folder)
    created = [p for p in [folder, *folder.parents] if not p.exists()]
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ScorelabError(f"cannot create folder {folder}: {e.strerror or e}") from None
    return created


def remove_empty(folders: list[Path]) -> None:
    """Remove the folders make_dirs created, deepest first, as far as they are still empty."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return


@contextmanager
def staged_output(out: Path, owns: Callable[[str], bool], command: str) -> Iterator[Path]:
    """Yield a staging folder to write every output into; on success it replaces `out` (with a manifest of the
    files, MANIFEST, so that a later run knows them for its own), on any error or Ctrl-C it is deleted and `out` is
    left as it was."""
    out = Path(out)
    check_output_dir(out, owns, command)
    created = make_dirs(out.parent)
    stage = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir()
    try:
        yield stage
        files = sorted(p.name for p in stage.iterdir() if p.is_file())
        (stage / MANIFEST).write_text(json.dumps({"command": command, "files": files}, indent=1))
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        remove_empty(created)
        raise
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    try:
        if out.exists():
            out.rename(old)
        stage.rename(out)
    except BaseException:
        if old.exists() and not out.exists():
            old.rename(out)  # the earlier outputs back where they were
        shutil.rmtree(stage, ignore_errors=True)
        remove_empty(created)
        raise
    shutil.rmtree(old, ignore_errors=True)


def as_umask_allows(path: Path) -> None:
    """Give a file the permissions a plain open() would (0666 less the umask): safetensors and mkstemp make their
    files readable by the owner alone."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)
