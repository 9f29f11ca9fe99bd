"""A one-line progress display for ``run --once`` on a terminal: files done/total, rate, ETA.

Silent unless the stream is a TTY (cron, systemd and tests see only the log). Log lines written
to the same stream clear the progress line first, so the two never garble each other.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from typing import Callable, Optional, TextIO

CLEAR = "\r\x1b[K"


def format_line(done: int, total: int, elapsed: float) -> str:
    """``1234/10000 files  45.1/s  ETA 3m14s`` (no ETA until the rate is known)."""
    total = max(total, done)
    rate = done / elapsed if elapsed > 0 else 0.0
    line = f"{done}/{total} files"
    if total:
        line += f" ({100.0 * done / total:.0f}%)"
    line += f"  {rate:.1f}/s"
    if rate > 0 and total > done:
        line += f"  ETA {_duration((total - done) / rate)}"
    return line


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class _ClearLine(logging.Filter):
    def __init__(self, progress: "Progress"):
        super().__init__()
        self._progress = progress

    def filter(self, record: logging.LogRecord) -> bool:
        self._progress.clear()
        return True


class Progress:
    """``with Progress(counts): ...`` where ``counts()`` returns (done, total) at any moment."""

    def __init__(self, counts: Callable[[], tuple[int, int]], stream: Optional[TextIO] = None,
                 interval: float = 0.5, delay: float = 1.0):
        self._counts = counts
        self._stream = stream if stream is not None else sys.stderr
        self._interval = interval
        self._delay = delay  # small runs finish before anything is drawn
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._lock = threading.Lock()
        self._shown = False
        self._drawn = False  # drawn at least once: the final figures get their own line
        self._filter = _ClearLine(self)
        self._handlers: list[logging.Handler] = []
        self._started = 0.0

    @property
    def active(self) -> bool:
        try:
            return self._stream.isatty()
        except (AttributeError, ValueError):
            return False

    def __enter__(self) -> "Progress":
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> None:
        if not self.active:
            return
        self._started = time.monotonic()
        for handler in logging.getLogger().handlers:
            if getattr(handler, "stream", None) is self._stream:
                handler.addFilter(self._filter)
                self._handlers.append(handler)
        self._thread = threading.Thread(target=self._run, name="facesortd-progress", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Draw the final figures on their own line and join the thread."""
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join()
        self._thread = None
        if self._drawn:
            self._draw(final=True)
        for handler in self._handlers:
            handler.removeFilter(self._filter)
        self._handlers.clear()

    def clear(self) -> None:
        with self._lock:
            if self._shown:
                self._stream.write(CLEAR)
                self._stream.flush()
                self._shown = False

    def _run(self) -> None:
        if self._stop.wait(self._delay):
            return
        while True:
            self._draw()
            if self._stop.wait(self._interval):
                return

    def _draw(self, final: bool = False) -> None:
        try:
            done, total = self._counts()
        except Exception:
            return
        line = format_line(done, total, time.monotonic() - self._started)
        with self._lock:
            self._stream.write(CLEAR + line + ("\n" if final else ""))
            self._stream.flush()
            self._shown = not final
            self._drawn = True
