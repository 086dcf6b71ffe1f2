"""User-facing errors: the CLI prints them as one line and exits with status 2. Warnings go to stderr."""

import sys


def warn(message: str) -> None:
    """A warning the user should see and that is not part of a command's output: one line on stderr."""
    print(message, file=sys.stderr, flush=True)


class ScorelabError(Exception):
    """Bad input from the user: a one-line message naming what is wrong and what is allowed."""


class ConfigError(ScorelabError, ValueError):
    pass
