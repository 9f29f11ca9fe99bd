"""Watching the library: changes a person makes there with a file manager reach the placer.

A watchdog observer on ``config.library`` (inotify; ``watch.polling`` polls, for network
shares) hands the paths each event names (both ends of a move, files and folders created or
deleted) to ``touched``; the placer loop (loop.py) syncs with a scan of just those paths after
its debounce. The placer's own moves are events too: the loop drops those that only echo what its
last sync did, and a scan sees the rest as the placer's own work, so they never start a loop.

What inotify cannot promise is covered by full scans (``rescan``): when the kernel drops events
(queue overflow), when the observer dies (it is started again), and when the library appears
after start. When the kernel's inotify limits are reached (ENOSPC: ``fs.inotify.max_user_watches``,
one watch per folder; EMFILE: ``max_user_instances``) this is logged once and the library is not
watched at all: ``unwatched`` is called and the placer falls back to its rescan interval alone.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
import time
from pathlib import Path
from typing import Callable, Iterable, Optional

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver

from facesortd.config import WatchConfig

log = logging.getLogger("facesortd.library.watch")

THREAD_PREFIX = "facesortd-library"
CHECK_S = 5.0            # how often the observer's health (and a missing library) is looked at
POLL_S = 5.0             # polling: the least time between two looks at the whole library
LIMIT_ERRNOS = (errno.ENOSPC, errno.EMFILE)
_WATCHES_FILE = Path("/proc/sys/fs/inotify/max_user_watches")
_OVERFLOW_LOGGER = "watchdog.observers.inotify_c"   # watchdog reports an overflow only as a warning
_EVENTS = frozenset({"created", "deleted", "moved", "modified", "closed"})
_OWN_TEMP = ".facesortd-"   # the journal's copies in progress (journal.tmp_name)


class LibraryWatcher:
    """Watches the library and reports the paths that changed.

    ``touched(paths)``: called on watchdog's thread with the paths of one event; must return fast.
    ``rescan()``: the whole library should be scanned (events were lost or could not be had).
    ``unwatched()``: the library cannot be watched (kernel limit): rely on the rescan interval.
    """

    def __init__(self, library: Path, watch: WatchConfig, touched: Callable[[list[Path]], None],
                 rescan: Callable[[], None], unwatched: Optional[Callable[[], None]] = None,
                 exclude: Iterable[Path] = ()) -> None:
        self.library = Path(os.path.abspath(library))
        self.polling = watch.polling
        self._poll_s = max(POLL_S, watch.settle_ms / 1000.0)
        self._touched = touched
        self._rescan = rescan
        self._unwatched = unwatched
        self._exclude = tuple(os.path.abspath(p) for p in exclude)
        self._observer: Optional[BaseObserver] = None
        self._identity: Optional[tuple[int, int]] = None
        self._given_up = False         # a kernel limit: not watched until restart
        self._recount = False          # folders appeared: count the watches at the next check
        self._missing_logged = False
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._handler = _Handler(self)
        self._overflow = _OverflowHook(self)

    # -- public --------------------------------------------------------------------------------
    def start(self) -> None:
        """Watch now (if the library is there) and keep watching from a thread of its own."""
        logging.getLogger(_OVERFLOW_LOGGER).addHandler(self._overflow)
        self._ensure()
        self._thread = threading.Thread(target=self._run, name=f"{THREAD_PREFIX}-check", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the observer and the checking thread and join them; safe to call twice."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        self._thread = None
        self._close()
        logging.getLogger(_OVERFLOW_LOGGER).removeHandler(self._overflow)

    def threads(self) -> list[threading.Thread]:
        """The checking thread (for the supervisor's health check)."""
        return [self._thread] if self._thread is not None else []

    @property
    def watching(self) -> Optional[str]:
        """'inotify', 'polling', or None (not watched: missing, or a kernel limit)."""
        if self._observer is None:
            return None
        return "polling" if isinstance(self._observer, PollingObserver) else "inotify"

    @property
    def given_up(self) -> bool:
        """A kernel limit was reached: the library is scanned on the rescan interval alone."""
        return self._given_up

    # -- events (watchdog's thread) ------------------------------------------------------------
    def _on_event(self, event: FileSystemEvent) -> None:
        if event.event_type not in _EVENTS:
            return
        if event.event_type == "closed" and event.is_directory:
            return
        if event.is_directory and event.event_type in ("created", "moved"):
            self._recount = True
        paths = []
        for raw in (event.src_path, getattr(event, "dest_path", "")):
            if not raw:
                continue
            path = os.path.abspath(os.fsdecode(raw))
            if os.path.basename(path).startswith(_OWN_TEMP) or path == str(self.library):
                continue
            if any(path == ex or path.startswith(ex + os.sep) for ex in self._exclude):
                continue
            paths.append(Path(path))
        if paths:
            self._touched(paths)

    def _on_overflow(self) -> None:
        log.warning("the kernel dropped file events (inotify overflow); scanning the whole library")
        self._rescan()

    # -- the observer (checking thread, start and stop) ----------------------------------------
    def _run(self) -> None:
        while not self._stop.wait(CHECK_S):
            try:
                self._ensure()
            except Exception:   # one bad check must not end the watching
                log.exception("checking the library watch failed; trying again")

    def _ensure(self) -> None:
        """Keep one healthy observer on the library while it exists; a new one asks for a scan."""
        if self._given_up or self._stop.is_set():
            return
        if self._observer is not None:
            if self._healthy():
                if self._recount:   # folders were made: did each get its watch?
                    self._covered()
                return
            log.warning("watching the library %s stopped (folder replaced or observer failed); "
                        "watching it again and scanning it", self.library)
            self._close()
        try:
            st = os.stat(self.library)
        except OSError:
            if not self._missing_logged:
                log.info("the library %s is not there yet; watching it once it is", self.library)
                self._missing_logged = True
            return
        observer = self._new_observer()
        try:
            observer.schedule(self._handler, str(self.library), recursive=True)
            for emitter in list(observer.emitters):
                emitter.name = f"{THREAD_PREFIX}-emitter"
            observer.start()
        except OSError as exc:
            _close(observer)   # its own inotify instance: the kernel frees the watches it had
            if exc.errno in LIMIT_ERRNOS and not self.polling:
                self._give_up(exc)
            else:
                log.warning("cannot watch the library %s: %s; trying again in %.0f s",
                            self.library, exc.strerror or exc, CHECK_S)
            return
        self._observer, self._identity = observer, (st.st_dev, st.st_ino)
        if not self._covered():
            return
        if self._missing_logged:
            log.info("watching the library %s now", self.library)
        self._missing_logged = False
        self._rescan()   # whatever happened before the watch began

    def _covered(self) -> bool:
        """Does the observer hold a watch for every folder of the library? watchdog skips a
        subfolder it cannot watch without a word (versions from 5 on), so the kernel's count of
        the observer's watches is compared with the folders there are (a walk of the library's
        folders: at the start of a watch, and after folders were made). Short of it (the watch
        limit): stop watching and give up, as when the library folder itself could not be."""
        self._recount = False
        fd = getattr(getattr(self._observer, "_inotify_fd", None), "_inotify_fd", None)
        if not isinstance(fd, int):
            return True   # polling, or a watchdog whose inotify instance cannot be seen
        for attempt in range(2):
            folders, watches = _folders(self.library), _watches(fd)
            if watches is None or watches >= folders:
                return True
            if attempt == 0:
                time.sleep(0.2)   # folders made meanwhile get their watch from their event
        self._close()
        self._give_up(OSError(errno.ENOSPC, f"{watches} of {folders} folders could be watched"))
        return False

    def _give_up(self, exc: OSError) -> None:
        try:
            limit = _WATCHES_FILE.read_text().strip()
        except OSError:
            limit = "?"
        what = ("inotify watch limit reached" if exc.errno == errno.ENOSPC
                else "inotify instance limit reached")
        if exc.strerror and "folders could be watched" in exc.strerror:
            what += f": {exc.strerror}"
        log.warning("cannot watch the library %s: %s (fs.inotify.max_user_watches is %s, one watch "
                    "per folder; raise it, e.g. sysctl fs.inotify.max_user_watches=524288, or set "
                    "watch.polling); changes made there are seen at start and on the rescan "
                    "interval only", self.library, what, limit)
        self._given_up = True
        if self._unwatched is not None:
            self._unwatched()

    def _healthy(self) -> bool:
        observer = self._observer
        emitters = list(observer.emitters)
        reader = getattr(observer, "_inotify_fd", None)   # inotify's reader thread
        if not (observer.is_alive() and emitters and all(e.is_alive() for e in emitters)):
            return False
        if isinstance(reader, threading.Thread) and not reader.is_alive():
            return False
        try:
            st = os.stat(self.library)
        except OSError:
            return False
        return (st.st_dev, st.st_ino) == self._identity

    def _new_observer(self) -> BaseObserver:
        observer: BaseObserver = PollingObserver(timeout=self._poll_s) if self.polling else Observer()
        observer.name = f"{THREAD_PREFIX}-observer"
        reader = getattr(observer, "_inotify_fd", None)
        if isinstance(reader, threading.Thread):
            reader.name = f"{THREAD_PREFIX}-inotify"
        return observer

    def _close(self) -> None:
        observer, self._observer = self._observer, None
        if observer is not None:
            _close(observer)


def _folders(root: Path) -> int:
    """How many folders ``root`` is, with those under it (symlinks not followed, as watchdog)."""
    n = 0
    for top, dirnames, _files in os.walk(root):
        n += 1
        dirnames[:] = [d for d in dirnames if not os.path.islink(os.path.join(top, d))]
    return n


def _watches(fd: int) -> Optional[int]:
    """The kernel's count of the watches on inotify instance ``fd`` of this process."""
    try:
        text = Path(f"/proc/self/fdinfo/{fd}").read_text()
    except OSError:
        return None
    return sum(1 for line in text.splitlines() if line.startswith("inotify wd:"))


def _close(observer: BaseObserver) -> None:
    observer.stop()   # also stops its emitters and inotify's reader thread (closing its instance)
    if observer.ident is not None and observer is not threading.current_thread():
        observer.join()


class _Handler(FileSystemEventHandler):
    def __init__(self, watcher: LibraryWatcher) -> None:
        self._watcher = watcher

    def dispatch(self, event: FileSystemEvent) -> None:
        self._watcher._on_event(event)


class _OverflowHook(logging.Handler):
    """Turns watchdog's "inotify queue overflowed" warning into a full scan of the library."""

    def __init__(self, watcher: LibraryWatcher) -> None:
        super().__init__(logging.WARNING)
        self._watcher = watcher

    def emit(self, record: logging.LogRecord) -> None:
        if "overflow" in record.getMessage().lower():
            self._watcher._on_overflow()
