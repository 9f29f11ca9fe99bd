"""The error types that become user messages and exit codes in ``cli.main``."""

from __future__ import annotations


class FacesortdError(Exception):
    """An error a user can act on; ``str(err)`` is the whole message."""

    exit_code = 1


class ConfigError(FacesortdError):
    """A config file that cannot be used: names the file and every problem with its key path."""

    exit_code = 2

    def __init__(self, path: object, problems: list[str]):
        self.path = str(path)
        self.problems = list(problems)
        lines = [f"{self.path}: {len(self.problems)} problem(s) in the config:"]
        lines += [f"  - {p}" for p in self.problems]
        super().__init__("\n".join(lines))


class StoreError(FacesortdError):
    """The store cannot be used as it is (another embedder's vectors, a newer schema...)."""

    exit_code = 3


class ModelUnavailable(FacesortdError):
    """Model weights or a backend package are missing; the message says how to get them."""

    exit_code = 4


class BadImage(Exception):
    """A file that is not a usable image; ``reason`` is a short readable sentence."""

    def __init__(self, reason: str):
        self.reason = reason
        super().__init__(reason)
