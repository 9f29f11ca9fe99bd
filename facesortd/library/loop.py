"""The daemon's placer thread (``PlacerLoop``): when to sync, and which library paths to scan
with each sync, from the store's changes and the library watcher's events (watch.py)."""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Callable, Iterable, Optional

from facesortd.library.journal import Op
from facesortd.library.placer import Placer

log = logging.getLogger("facesortd.placer")

__all__ = ["PlacerLoop"]


class PlacerLoop:
    """The daemon's placer thread: syncs at start and then whenever ``changed`` is set or the
    library watcher (watch.py) reports ``touch``ed paths, after ``debounce`` so a burst of changes
    is one sync. Library paths are scanned with that sync (``Placer.sync(scan=paths)``); the
    whole library at start and every ``rescan_interval`` seconds (0: never; when the library
    cannot be watched, ``unwatched()``: every ``rescan_interval`` or ``FALLBACK_RESCAN_S``).

    Its own moves come back from the watcher as events: a path whose state (there or not) is
    still what the last sync left is an echo and dropped, and a batch of echoes alone starts no
    sync, so placing never feeds itself.
    """

    FALLBACK_RESCAN_S = 300.0

    def __init__(self, placer: Placer, changed: threading.Event, debounce: float = 1.0,
                 dry_run: bool = False, on_synced: Optional[Callable[[list[Op]], None]] = None,
                 rescan_interval: float = 0.0):
        self.placer = placer
        self.changed = changed
        self.debounce = debounce
        self.dry_run = dry_run
        self.on_synced = on_synced
        self.rescan_interval = rescan_interval
        self.syncs = 0                 # syncs done, and how many of them scanned (for tests, status)
        self.scans = {"full": 0, "paths": 0}
        self._lock = threading.Lock()
        self._touched: set[Path] = set()
        self._full = True              # the first sync scans the whole library
        self._own: dict[Path, bool] = {}   # paths the last sync changed -> there after it?
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="facesortd-placer")
        self._thread.start()

    def threads(self) -> list[threading.Thread]:
        """The placer thread, once started (for the supervisor's health check)."""
        return [self._thread] if self._thread is not None else []

    def stop(self, timeout: float = 60.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def touch(self, paths: Iterable[Path]) -> None:
        """Library paths changed (watcher thread): scan them with the next sync."""
        with self._lock:
            self._touched.update(paths)
        self._wake.set()

    def request_scan(self) -> None:
        """Scan the whole library with the next sync (events lost, a new watch)."""
        with self._lock:
            self._full = True
        self._wake.set()

    def unwatched(self) -> None:
        """The library cannot be watched: make sure it is scanned on an interval."""
        if not self.rescan_interval:
            log.warning("watch.rescan_interval_s is 0: the library is scanned every %.0f s instead",
                        self.FALLBACK_RESCAN_S)
            self.rescan_interval = self.FALLBACK_RESCAN_S
        self._wake.set()

    def _run(self) -> None:
        next_full = time.monotonic() + self.rescan_interval if self.rescan_interval else None
        first = True
        while not self._stop.is_set():
            if not first:
                woke = self.changed.wait(0.1) or self._wake.wait(0.1)
                if self.rescan_interval and next_full is None:   # unwatched() set one
                    next_full = time.monotonic() + self.rescan_interval
                due = next_full is not None and time.monotonic() >= next_full
                if not (woke or due):
                    continue
                if self._stop.wait(self.debounce):
                    return
                if due:
                    self.request_scan()
            first = False
            self._wake.clear()
            changed = self.changed.is_set()
            self.changed.clear()
            with self._lock:
                full, self._full = self._full, False
                touched, self._touched = self._touched, set()
            touched = {p for p in touched if not self._echo(p)}
            if not (changed or full or touched):
                continue   # only echoes of our own last sync
            if full:
                scan = True
                if self.rescan_interval:
                    next_full = time.monotonic() + self.rescan_interval
            else:
                scan = sorted(touched) if touched else False
            try:
                ops = self.placer.sync(dry_run=self.dry_run, scan=scan)
            except Exception:
                log.exception("placement failed; retrying at the next change")
                if scan is not False:   # the scan is owed still
                    with self._lock:
                        self._full |= scan is True
                        self._touched.update(touched)
                continue
            self.syncs += 1
            if scan is True:
                self.scans["full"] += 1
            elif scan:
                self.scans["paths"] += 1
            self._remember(ops)
            for op in ops if self.dry_run else ():
                log.info("dry run: would %s", op.describe())
            if self.on_synced is not None:
                self.on_synced(ops)

    def _remember(self, ops: list[Op]) -> None:
        """What the sync's own operations left at each path they touched (and their folders)."""
        own: dict[Path, bool] = {}
        for op in ops if not self.dry_run else ():
            for path in (op.src, op.dst):
                if path is not None:
                    for p in (path, path.parent):
                        if p not in own:   # one look per path (a folder is touched by many ops)
                            own[p] = os.path.lexists(p)
        self._own = own

    def _echo(self, path: Path) -> bool:
        """Is an event for ``path`` only our last sync's own change (still as that sync left it)?"""
        there = self._own.get(path)
        return there is not None and os.path.lexists(path) == there
