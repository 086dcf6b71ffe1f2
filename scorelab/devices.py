"""Where training and sampling run: the names the --device option takes, resolved to a torch.device.

The library itself follows its inputs' device (DESIGN: no hard-coded device); this is for the pipelines that create
tensors themselves (the trainer, sample, evaluate). Random draws stay on the CPU generator there and are moved, so
one seed gives the same noise on every device.
"""

from __future__ import annotations

import torch

from .errors import ScorelabError

DEVICE_NAMES = "auto, cpu, cuda or cuda:N"


def resolve_device(name: str | torch.device = "cpu") -> torch.device:
    """'auto' (the first CUDA GPU when there is one, else the CPU), 'cpu', 'cuda' or 'cuda:N' as a torch.device;
    a one-line ScorelabError for any other name, or for a CUDA device this machine does not have."""
    text = str(name).strip().lower()
    if text == "auto":
        return torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(text)
    except RuntimeError:
        raise ScorelabError(f"unknown device {str(name)!r}; allowed: {DEVICE_NAMES}") from None
    if device.type == "cpu" and device.index in (None, 0):
        return torch.device("cpu")
    if device.type != "cuda":
        raise ScorelabError(f"device {str(name)!r} is not supported; allowed: {DEVICE_NAMES}")
    if not torch.cuda.is_available():
        raise ScorelabError(
            f"device {str(name)!r} is not available: torch finds no CUDA GPU here (torch.cuda.is_available() is "
            "False); use --device cpu"
        )
    count, index = torch.cuda.device_count(), device.index or 0
    if index >= count:
        raise ScorelabError(f"device {str(name)!r} does not exist; this machine has cuda:0 to cuda:{count - 1}")
    return torch.device("cuda", index)


def free_device_memory(device: torch.device) -> int | None:
    """Bytes free on a CUDA device (what the driver reports); None for the CPU, whose budget is the process's
    available memory (scorelab.resources.available_memory)."""
    if device.type != "cuda":
        return None
    free, _total = torch.cuda.mem_get_info(device)
    return free
