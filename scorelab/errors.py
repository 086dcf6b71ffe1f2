"""User-facing errors: the CLI prints them as one line and exits with status 2."""


class ScorelabError(Exception):
    """Bad input from the user: a one-line message naming what is wrong and what is allowed."""


class ConfigError(ScorelabError, ValueError):
    pass
