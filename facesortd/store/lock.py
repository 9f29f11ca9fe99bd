"""The state folder's lock: one process writes a store at a time; released if the holder dies."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import Optional

from facesortd.errors import FacesortdError

__all__ = ["StateLock", "StateBusy"]


class StateBusy(FacesortdError):
    """Another process holds the state folder; ``pid`` is the one it wrote (None if none)."""

    def __init__(self, message: str, pid: Optional[int]):
        super().__init__(message)
        self.pid = pid


class StateLock:
    """An exclusive ``flock`` on ``<state_dir>/lock``, which holds the holder's pid (so
    ``facesortd recluster`` can signal a running daemon)."""

    def __init__(self, state_dir: Path):
        self.path = Path(state_dir) / "lock"
        self._fd: Optional[int] = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.read(fd, 64).decode(errors="replace").strip()
            os.close(fd)
            raise StateBusy(
                f"{self.path.parent} is in use by facesortd (pid {text or 'another process'}); "
                "stop that daemon first, or give this one another state_dir",
                int(text) if text.isdigit() else None) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None
