"""Memory budgets: estimate what a request needs before doing it, and refuse up front what cannot fit.

The operating system kills a process that runs out of memory without a message and possibly mid-write; a request
refused before it starts costs nothing. Estimates are upper bounds: a probe forward pass with hooks sums the bytes of
every module output per sample, as if all were alive at once.
"""

from __future__ import annotations

import ctypes
import os
import re

import torch

from .errors import ScorelabError

_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def parse_bytes(text: str) -> int:
    """'512M', '4G', '1.5G', '1000000' -> bytes (binary units)."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]?)i?B?\s*", str(text), flags=re.IGNORECASE)
    if not m or float(m.group(1)) <= 0:
        raise ScorelabError(f"memory size must be a positive number with an optional K, M, G or T, got {text!r}")
    return int(float(m.group(1)) * _UNITS[m.group(2).upper()])


def format_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1024:
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TB"


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)


def keep_freed_memory() -> bool:
    """Ask glibc's malloc to keep freed memory for reuse instead of handing it back to the operating system, and to
    serve blocks up to 1 GiB (32 MiB where an older glibc caps it there) from that pool instead of mapping each
    afresh. Otherwise every training step faults its activations' pages in again (about 8,000-24,000 minor page
    faults per step of the benchmark's 2-level U-Net, 4-8% of the step; benchmarks/bench_allocator.py). The process's
    memory then stays at its peak rather than shrinking between steps. Called once by the `scorelab` command (it
    changes the whole process, so the library never calls it); True where both settings took effect (glibc), False
    elsewhere (macOS, Windows, musl)."""
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library the interpreter runs on
    except (OSError, AttributeError, TypeError):
        return False
    mapped = bool(mallopt(_M_MMAP_THRESHOLD, 2**30)) or bool(mallopt(_M_MMAP_THRESHOLD, 32 * 2**20))
    trimmed = bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
    return mapped and trimmed


def _read_int(path: str) -> int | None:
    try:
        with open(path) as f:
            text = f.read().strip()
    except OSError:
        return None
    return int(text) if text.isascii() and text.isdigit() else None  # cgroup v2 writes "max" for no limit


def _read_stat(path: str, key: str) -> int:
    """One counter of a cgroup's memory.stat, 0 when absent."""
    try:
        with open(path) as f:
            for line in f:
                name, _, value = line.partition(" ")
                if name == key and value.strip().isdigit():
                    return int(value)
    except OSError:
        pass
    return 0


def _ancestors(group: str) -> list[str]:
    """'/a/b' -> ['/a/b', '/a', '']: a group and every group above it, as suffixes of the mount point."""
    parts = [part for part in group.split("/") if part]
    return ["/" + "/".join(parts[:i]) if i else "" for i in range(len(parts), -1, -1)]


# per cgroup version: the files under a group's folder (limit, usage, stat) and the stat counter of reclaimable
# page cache, which usage includes but which the kernel gives back before it kills anything
_CGROUP_LAYOUT = {
    "v2": ("memory.max", "memory.current", "memory.stat", "inactive_file"),
    "v1": ("memory.limit_in_bytes", "memory.usage_in_bytes", "memory.stat", "total_inactive_file"),
}


def _cgroup_files(proc_cgroup: str = "/proc/self/cgroup", root: str = "/sys/fs/cgroup") -> list[tuple[str, ...]]:
    """(limit, usage, stat, cache key) of this process's memory cgroup and of every group above it: v2 (mounted at
    the root, or at root/unified on hybrid hosts), then v1 (inside a container with its own cgroup namespace the top
    is the container's group)."""
    groups = {"v2": "/", "v1": "/"}
    try:
        with open(proc_cgroup) as f:
            for line in f:
                _, controllers, path = line.rstrip("\n").split(":", 2)
                if controllers == "":
                    groups["v2"] = path
                elif "memory" in controllers.split(","):
                    groups["v1"] = path
    except (OSError, ValueError):
        pass
    files = []
    for version, mounts in (("v2", (root, f"{root}/unified")), ("v1", (f"{root}/memory",))):
        limit, usage, stat, key = _CGROUP_LAYOUT[version]
        for mount in mounts:
            for g in _ancestors(groups[version]):
                files.append((f"{mount}{g}/{limit}", f"{mount}{g}/{usage}", f"{mount}{g}/{stat}", key))
    return files


def cgroup_headroom(files: list[tuple[str, ...]] | None = None) -> int | None:
    """Bytes left under the tightest memory cgroup limit on this process (a container's limit, or a group's above
    it), not counting reclaimable page cache as used; None when there is no limit."""
    headrooms = []
    for limit_file, usage_file, stat_file, cache_key in _cgroup_files() if files is None else files:
        limit, usage = _read_int(limit_file), _read_int(usage_file)
        if limit is not None and limit < 2**60:  # v1 writes a huge number for no limit, v2 "max"
            used = max((usage or 0) - _read_stat(stat_file, cache_key), 0)
            headrooms.append(max(limit - used, 0))
    return min(headrooms) if headrooms else None


def available_memory() -> int:
    """Memory the system can give this process now: MemAvailable from /proc/meminfo (else physical memory), and no
    more than what is left under a container's cgroup limit."""
    system = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    system = int(line.split()[1]) * 1024
    except OSError:
        pass
    if system is None:
        try:
            system = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError, AttributeError):
            system = 8 * 2**30
    headroom = cgroup_headroom()
    return system if headroom is None else min(system, headroom)


@torch.no_grad()
def activation_bytes_per_sample(model: torch.nn.Module, call, batch: int = 2) -> int:
    """Bytes of every module output per sample during `call(batch)` (a forward pass on `batch` samples)."""
    total = 0

    def hook(_module, _inputs, output):
        nonlocal total
        for t in output if isinstance(output, (tuple, list)) else (output,):
            if isinstance(t, torch.Tensor):
                total += t.numel() * t.element_size()

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    try:
        call(batch)
    finally:
        for h in handles:
            h.remove()
    return -(-total // batch)


def check_budget(
    what: str, need: int, budget: int | None, *, option: str, hint: str = "ask for less", device=None
) -> None:
    """Raise a one-line ScorelabError when `need` bytes exceed `budget` (default: the available memory, or the free
    memory of `device` when that is a CUDA device); `hint` says how to ask for less."""
    from .devices import free_device_memory

    free = None if budget is not None or device is None else free_device_memory(device)
    if budget is not None:
        limit, source = budget, option
    elif free is not None:
        limit, source = free, f"the free memory of {device}"
    else:
        limit, source = available_memory(), "the available memory"
    if need > limit:
        raise ScorelabError(
            f"{what} needs about {format_bytes(need)} (an upper bound), more than the {format_bytes(limit)} allowed by "
            f"{source}; {hint}, or raise {option}"
        )


def out_of_memory(error: BaseException) -> str | None:
    """One line saying what could not be allocated when `error` is an allocation failure, else None. torch's CPU
    allocator raises RuntimeError "... can't allocate memory: you tried to allocate N bytes ..."; CUDA raises
    torch.OutOfMemoryError."""
    if isinstance(error, torch.OutOfMemoryError):
        return "out of accelerator memory"
    if isinstance(error, MemoryError):
        return "out of memory"
    if isinstance(error, RuntimeError) and "can't allocate memory" in str(error):
        found = re.search(r"allocate (\d+) bytes", str(error))
        return "out of memory" + (f" (one allocation of {format_bytes(int(found.group(1)))})" if found else "")
    return None
