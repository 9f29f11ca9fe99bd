"""The ``run --once`` progress bar on a terminal: files done/total, rate, ETA (tqdm's).

Silent unless the stream is a TTY (cron, systemd and tests see only the log). While the bar is
shown, the root logger's console handlers go through tqdm's ``logging_redirect_tqdm``, which
clears the bar, writes the log line and draws the bar again, so the two never garble each other.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
from typing import Callable, Optional, TextIO

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

UNIT = " files"


class _Bar(tqdm):
    """tqdm with no monitor thread (our own thread paces the bar) and a lock of its own: the
    default lock is a multiprocessing one, which this in-process bar does not need."""

    monitor_interval = 0


_Bar.set_lock(threading.RLock())


def _console(handler: logging.Handler) -> bool:
    """A handler ``logging_redirect_tqdm`` takes over: a stream handler on stdout or stderr."""
    return isinstance(handler, logging.StreamHandler) and handler.stream in (sys.stdout, sys.stderr)


def format_line(done: int, total: int, elapsed: float) -> str:
    """The bar's text for these figures, as tqdm draws it (``total`` never below ``done``)."""
    return _Bar.format_meter(done, max(total, done), elapsed, unit=UNIT)


class Progress:
    """``with Progress(counts): ...`` where ``counts()`` returns (done, total) at any moment."""

    def __init__(self, counts: Callable[[], tuple[int, int]], stream: Optional[TextIO] = None,
                 interval: float = 0.5, delay: float = 1.0, unit: str = UNIT):
        self._counts = counts
        self._unit = unit
        self._stream = stream if stream is not None else sys.stderr
        self._interval = interval
        self._delay = delay  # small runs finish before anything is drawn
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._bar: Optional[_Bar] = None
        self._logging = contextlib.ExitStack()

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
        if any(_console(h) for h in logging.getLogger().handlers):   # else it would add one
            self._logging.enter_context(logging_redirect_tqdm(tqdm_class=_Bar))
        self._thread = threading.Thread(target=self._run, name="facesortd-progress", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Draw the final figures on their own line, join the thread, give logging back."""
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join()
        self._thread = None
        if self._bar is not None:
            self._update()
            self._bar.close()   # leave=True: the last figures stay, then a newline
            self._bar = None
        self._logging.close()

    def _run(self) -> None:
        if self._stop.wait(self._delay):
            return
        try:
            done, total = self._counts()
        except Exception:
            done, total = 0, 0
        # initial=done: the rate and ETA count from here, not from files done before the bar.
        self._bar = _Bar(total=max(total, done), initial=done, file=self._stream, unit=self._unit,
                         mininterval=0, miniters=1, dynamic_ncols=True, leave=True)
        while not self._stop.wait(self._interval):
            self._update()

    def _update(self) -> None:
        try:
            done, total = self._counts()
        except Exception:
            return
        bar = self._bar
        bar.total = max(total, done, bar.n)
        if done > bar.n:
            bar.update(done - bar.n)   # tqdm keeps the rate (smoothed) and redraws
        else:
            bar.refresh()              # nothing new: keep the clock and ETA moving
