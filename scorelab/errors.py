"""User-facing errors: the CLI prints them as one line and exits with status 2. Warnings go to stderr."""

import sys


def warn(message: str) -> None:
    """A warning the user should see and that is not part of a command's output: one line on stderr."""
    print(message, file=sys.stderr, flush=True)


class ScorelabError(ValueError):
    """Bad input, from the command line or a Python caller: a one-line message naming what is wrong and what is
    allowed. Every check in the library raises it; it is a ValueError, so `except ValueError` catches it too."""


class ConfigError(ScorelabError):
    """A config file or key that is wrong; the message names the key."""


def show_values(values, limit: int = 6) -> str:
    """A tensor or sequence of numbers as a short list for a one-line message: [10, 1, 0.1] or [80, 40, 20, ..., 0]."""
    import torch

    flat = torch.as_tensor(values).detach().reshape(-1).cpu().tolist()
    fmt = [f"{v:.4g}" if isinstance(v, float) else str(v) for v in flat]
    if len(fmt) > limit:
        fmt = fmt[: limit - 2] + ["..."] + fmt[-1:]
    return "[" + ", ".join(fmt) + "]"
