"""Turn files that land in inbox folders into Jobs, once they have settled.

Watchdog events and folder scans only mark paths as seen; one worker thread stats them, waits
until size and mtime have held still for ``settle_ms``, and hands a ``Job`` to the pipeline. What
a settled file is depends on its folder: a photo (``watch.extensions``) is a job; a companion
(``watch.companions``) named after a photo beside it is a 'companion' job, which only tells the
placer (it travels with that photo, even one placed by copy or link already); a companion with no photo beside it waits a little longer for its twin, then is
a job of its own (a lone RAW is analysed on its preview, anything else may follow a photo already
placed); any other file is a job for ``placement.other_dir`` or, with ``other_files: leave``, is
logged once and left. Scans
run at start (files that came while the daemon was down), every ``rescan_interval_s``, and whenever
an observer dies or the kernel drops events, so a missed event delays a file but never loses it.
"""

from __future__ import annotations

import errno
import fnmatch
import logging
import os
import stat
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver

from facesortd.config import InboxConfig, WatchConfig
from facesortd.formats import extension, is_raw, owner, stems
from facesortd.inbox.jobs import Job

log = logging.getLogger("facesortd.watcher")

THREAD_PREFIX = "facesortd-watch"
MISSING_RETRY_S = 5.0  # how often a missing or replaced inbox folder is looked at again
_FILE_EVENTS = frozenset({"created", "modified", "moved", "deleted", "closed", "attrib"})
# watchdog reports an inotify queue overflow only as this logger's warning; we listen for it.
_OVERFLOW_LOGGER = "watchdog.observers.inotify_c"
#: a companion with no photo beside it waits this much longer than settle_ms for its twin (a RAW
#: camera's JPEG, an XMP written before its photo) before it is taken alone
ORPHAN_WAIT_S = 1.0


@dataclass
class _Seen:
    """A file waiting to settle: what it looked like, and since when (on the watcher's clock)."""

    inbox: InboxConfig
    size: int
    mtime_ns: int
    since: float


@dataclass
class _Watch:
    observer: BaseObserver
    recursive: bool
    identity: tuple[int, int]  # (st_dev, st_ino) of the folder, to notice it being replaced


def _norm(path: Union[str, os.PathLike]) -> str:
    return os.path.abspath(os.fspath(path))


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


class Watcher:
    """Watches inbox folders and submits each settled image file once as a ``Job``.

    ``submit(job)`` returns False when the pipeline's queue is full; the file then stays pending
    and is offered again on a later tick. A path is not submitted again while its size and mtime
    are unchanged, unless the pipeline calls ``forget(path)``.
    """

    def __init__(self, inboxes: Sequence[InboxConfig], watch: WatchConfig, submit: Callable[[Job], bool],
                 exclude: Sequence[Path] = (), clock: Callable[[], float] = time.monotonic) -> None:
        self._config = watch
        self._submit = submit
        self._exclude = tuple(_norm(p) for p in exclude)
        self._clock = clock
        self._settle_s = watch.settle_ms / 1000.0
        self._tick_s = max(0.01, min(0.1, self._settle_s / 4))
        self._extensions = frozenset(e.lower() for e in watch.extensions)
        self._companions = frozenset(e.lower() for e in watch.companions)
        self._orphan_s = self._settle_s + max(ORPHAN_WAIT_S, self._settle_s)
        self._handler = _EventHandler(self)
        self._overflow_hook = _OverflowHook(self)

        # Shared with event, pipeline and caller threads; guarded by _lock.
        self._lock = threading.Condition()
        self._inboxes = {_norm(i.path): i for i in inboxes}
        self._dirty: set[str] = set()  # paths named by events, not looked at yet
        self._scan_requests: set[str] = set()  # folders to scan (new subfolders)
        self._full_rescan = False
        self._reconcile = False  # inbox list changed or a rescan was asked: check the observers
        self._submitted: dict[str, tuple[int, int]] = {}  # path -> (size, mtime_ns) handed over
        self._beside: dict[str, set[str]] = {}  # folder -> companions left to travel with a photo
        self._idle = False  # set by the worker after a tick that left nothing to do
        self._pending_n = 0

        # Owned by the worker thread alone.
        self._pending: dict[str, _Seen] = {}
        self._watches: dict[str, _Watch] = {}
        self._missing: set[str] = set()
        self._next_rescan = 0.0
        self._next_folder_check = 0.0

        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: Optional[threading.Thread] = None

    # ---- public API -------------------------------------------------------------------------

    def start(self) -> None:
        """Start observers and the worker, whose first tick scans every inbox (catch-up).

        Observers start before the scan, so a file that arrives during it is not missed; start()
        returns at once and ``wait_idle`` tells when the catch-up is through.
        """
        if self._thread is not None:
            raise RuntimeError("Watcher.start() may be called only once")
        with self._lock:
            self._full_rescan = self._reconcile = True
            self._idle = False
        logging.getLogger(_OVERFLOW_LOGGER).addHandler(self._overflow_hook)
        self._thread = threading.Thread(target=self._run, name=f"{THREAD_PREFIX}-worker", daemon=True)
        self._thread.start()
        log.info("watching %d inbox(es), settle %d ms", len(self._inboxes), self._config.settle_ms)

    def threads(self) -> list[threading.Thread]:
        """The worker thread (settling, rescans), for the supervisor's health check."""
        return [self._thread] if self._thread is not None else []

    def stop(self) -> None:
        """Stop the worker and every observer and join their threads; safe to call twice."""
        self._stopping.set()
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        self._close_all()
        logging.getLogger(_OVERFLOW_LOGGER).removeHandler(self._overflow_hook)
        with self._lock:
            self._idle = False
            self._lock.notify_all()

    def rescan(self) -> None:
        """Scan every inbox on the next tick (and watch any that appeared). Thread-safe."""
        with self._lock:
            self._full_rescan = self._reconcile = True
            self._idle = False
        self._wake.set()

    def set_inboxes(self, inboxes: Sequence[InboxConfig]) -> None:
        """Replace the inbox list (SIGHUP). The worker stops observers of removed inboxes, drops
        their pending files, and watches and scans added ones on its next tick."""
        with self._lock:
            self._inboxes = {_norm(i.path): i for i in inboxes}
            self._reconcile = True
            self._idle = False
        self._wake.set()

    def forget(self, path: Path) -> None:
        """Let ``path`` be submitted again even with the same size and mtime (it left the inbox,
        or failed and may be put back). Thread-safe."""
        with self._lock:
            self._submitted.pop(_norm(path), None)

    def pending_count(self) -> int:
        """Files seen but not yet submitted (settling, or waiting for room in the queue)."""
        with self._lock:
            return self._pending_n

    def wait_idle(self, timeout: float) -> bool:
        """True once the catch-up scan ran and nothing is pending; False after ``timeout`` s."""
        if self._thread is None or self._stopping.is_set():
            return False
        with self._lock:
            return self._lock.wait_for(lambda: self._idle, timeout)

    # ---- event side (watchdog threads) --------------------------------------------------------

    def _on_event(self, event: FileSystemEvent) -> None:
        if event.event_type not in _FILE_EVENTS:
            return
        src = os.fsdecode(event.src_path) if event.src_path else ""
        dest = os.fsdecode(event.dest_path) if getattr(event, "dest_path", "") else ""
        with self._lock:
            if event.is_directory:
                # A folder created or moved in may hold files whose events came before its watch.
                if event.event_type in ("created", "moved") and (dest or src):
                    self._scan_requests.add(dest or src)
                elif event.event_type == "deleted" and src in self._inboxes:
                    self._reconcile = True
            else:
                self._dirty.update(p for p in (src, dest) if p)
            self._idle = False

    def _on_overflow(self) -> None:
        log.warning("the kernel dropped file events (inotify overflow); rescanning every inbox")
        self.rescan()

    # ---- worker thread ------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while not self._stopping.is_set():
                self._wake.clear()
                try:
                    self._tick()
                except Exception:  # one bad tick must not stop the daemon's intake
                    log.exception("watcher tick failed; trying again")
                self._wake.wait(self._tick_s)
        finally:
            self._close_all()

    def _tick(self) -> None:
        now = self._clock()
        with self._lock:
            inboxes = dict(self._inboxes)
            reconcile, self._reconcile = self._reconcile, False
            full, self._full_rescan = self._full_rescan, False
            scans, self._scan_requests = self._scan_requests, set()
            dirty, self._dirty = self._dirty, set()

        scans |= self._manage_watches(inboxes, reconcile, now)
        if self._config.rescan_interval_s and now >= self._next_rescan:
            full = True  # on the first tick this is the catch-up scan itself
            self._next_rescan = now + self._config.rescan_interval_s
        if full:
            scans |= set(inboxes)
        for path in [p for p, seen in self._pending.items() if _norm(seen.inbox.path) not in inboxes]:
            del self._pending[path]

        for folder in sorted(scans):
            self._scan(folder, inboxes, now)
        for path in dirty:
            self._look(path, inboxes, now)
        self._settle(now)

        with self._lock:
            self._pending_n = len(self._pending)
            self._idle = not (self._pending or self._dirty or self._scan_requests
                              or self._full_rescan or self._reconcile)
            self._lock.notify_all()

    def _inbox_of(self, path: str, inboxes: dict[str, InboxConfig]) -> Optional[tuple[str, InboxConfig]]:
        for root, inbox in inboxes.items():
            if path.startswith(root.rstrip(os.sep) + os.sep):
                return root, inbox
        return None

    def _skip_folder(self, name: str) -> bool:
        return name.startswith(".") or any(fnmatch.fnmatch(name, pat) for pat in self._config.ignore)

    def _wanted(self, path: str, root: str, inbox: InboxConfig) -> bool:
        """Whether a file path (not yet stat'ed) is one we take: filters on names alone."""
        parts = path[len(root.rstrip(os.sep)) + 1:].split(os.sep)
        name = parts[-1]
        if not inbox.recursive and len(parts) > 1:
            return False
        if any(self._skip_folder(folder) for folder in parts[:-1]):
            return False
        if any(fnmatch.fnmatch(name, pat) for pat in self._config.ignore):
            return False
        return not any(_inside(path, ex) for ex in self._exclude)

    def _look(self, path: str, inboxes: dict[str, InboxConfig], now: float) -> None:
        """An event named ``path``: start settling it, or forget it if it is gone."""
        found = self._inbox_of(path, inboxes)
        if found is None or not self._wanted(path, *found):
            return
        try:
            st = os.lstat(path)
        except OSError:
            st = None
        if st is None or not stat.S_ISREG(st.st_mode):
            self._pending.pop(path, None)
            with self._lock:
                was = self._submitted.pop(path, None)
                self._beside.get(os.path.dirname(path), set()).discard(path)
            if was is not None and extension(path) in self._extensions:
                self._photo_left(path, inboxes, now)
            return
        self._note(path, found[1], st, now)

    def _photo_left(self, path: str, inboxes: dict[str, InboxConfig], now: float) -> None:
        """A photo left its folder (placed, quarantined): companions of it that stayed behind
        (not settled when it was placed) are looked at again, alone now."""
        folder, name = os.path.split(path)
        with self._lock:
            waiting = self._beside.get(folder, set())
            behind = [p for p in waiting if owner(os.path.basename(p), [name]) is not None]
            for p in behind:
                waiting.discard(p)
                self._submitted.pop(p, None)
            if not waiting:
                self._beside.pop(folder, None)
        for p in behind:
            self._look(p, inboxes, now)

    def _note(self, path: str, inbox: InboxConfig, st: os.stat_result, now: float) -> None:
        key = (st.st_size, st.st_mtime_ns)
        with self._lock:
            if self._submitted.get(path) == key:
                return
        seen = self._pending.get(path)
        if seen is None or (seen.size, seen.mtime_ns) != key:
            self._pending[path] = _Seen(inbox, key[0], key[1], now)

    def _scan(self, folder: str, inboxes: dict[str, InboxConfig], now: float) -> None:
        """Walk ``folder`` (an inbox or a folder in one) with os.scandir, not following links."""
        if folder in inboxes:
            root, inbox = folder, inboxes[folder]
        else:
            found = self._inbox_of(folder, inboxes)
            if found is None:
                return
            root, inbox = found
        if any(_inside(folder, ex) for ex in self._exclude):
            return
        seen_files: set[str] = set()
        complete = True
        stack = [folder]
        while stack:
            current = stack.pop()
            try:
                with os.scandir(current) as entries:
                    for entry in entries:
                        path = os.path.join(current, entry.name)
                        if entry.is_dir(follow_symlinks=False):
                            if (inbox.recursive and not self._skip_folder(entry.name)
                                    and not any(_inside(path, ex) for ex in self._exclude)):
                                stack.append(path)
                        elif entry.is_file(follow_symlinks=False) and self._wanted(path, root, inbox):
                            try:
                                st = entry.stat(follow_symlinks=False)
                            except OSError:
                                continue
                            seen_files.add(path)
                            self._note(path, inbox, st, now)
            except OSError as exc:
                complete = False
                if current == root and root in self._missing:
                    continue  # already warned that the inbox is missing
                log.warning("cannot scan %s: %s", current, exc.strerror or exc)
        if complete and folder == root:
            # Forget files handed over earlier that are gone now, so the map does not grow forever.
            with self._lock:
                for path in [p for p in self._submitted if _inside(p, root) and p not in seen_files]:
                    del self._submitted[path]

    def _photo_name(self, name: str) -> Optional[str]:
        """The photo a name is or will be: ``IMG_1.HEIC``, or ``IMG_1.HEIC`` for the upload
        ``IMG_1.HEIC.part`` (an ignored name), so its companions wait for it."""
        if extension(name) in self._extensions:
            return name
        dot = name.rfind(".")
        if dot > 0 and extension(name[:dot]) in self._extensions \
                and any(fnmatch.fnmatch(name, pat) for pat in self._config.ignore):
            return name[:dot]
        return None

    def _kind(self, path: str, listings: dict[str, dict[str, str]]) -> str:
        """What a settled file is: photo | companion (its photo is beside it) | orphan (a
        companion alone: waits for its twin) | other | leave (other, left in the inbox)."""
        ext = extension(path)
        if ext in self._extensions:
            return "photo"
        if ext in self._companions:
            folder, name = os.path.split(path)
            if folder not in listings:
                try:
                    names = os.listdir(folder)
                except OSError:
                    names = []
                listings[folder] = stems(self._photo_name(n) for n in names
                                         if self._photo_name(n) is not None)
            return "companion" if owner(name, listings[folder]) is not None else "orphan"
        return "other" if self._config.other_files == "move" else "leave"

    def _settle(self, now: float) -> None:
        """Submit pending files whose size and mtime held still for settle_ms, oldest first."""
        due = [(p, s) for p, s in self._pending.items() if now - s.since >= self._settle_s]
        listings: dict[str, dict[str, str]] = {}   # folder -> its photos by stem, this tick
        for path, seen in due:
            try:
                st = os.lstat(path)
            except OSError:
                st = None
            if st is None or not stat.S_ISREG(st.st_mode):
                del self._pending[path]
                continue
            key = (st.st_size, st.st_mtime_ns)
            if key != (seen.size, seen.mtime_ns):
                self._pending[path] = _Seen(seen.inbox, key[0], key[1], now)  # still changing
                continue
            with self._lock:
                if self._submitted.get(path) == key:
                    del self._pending[path]
                    continue
            kind = self._kind(path, listings)
            if kind == "orphan":
                if now - seen.since < self._orphan_s:
                    continue   # its twin may still be on its way
                kind = "photo" if is_raw(path) else "loose"
            if kind == "leave":
                log.info("left in the inbox (watch.other_files: leave): %s", path)
                with self._lock:
                    self._submitted[path] = key
                del self._pending[path]
                continue
            job = Job(path=Path(path), inbox=seen.inbox.path, mode=seen.inbox.mode,
                      size=key[0], mtime_ns=key[1], kind=kind)
            try:
                accepted = self._submit(job)
            except Exception:
                log.exception("submitting %s failed; will retry", path)
                accepted = False
            if not accepted:
                return  # the queue is full: keep this and the rest pending, retry next tick
            with self._lock:
                self._submitted[path] = key
                if kind == "companion":   # looked at again if its photo leaves without it
                    self._beside.setdefault(os.path.dirname(path), set()).add(path)
            del self._pending[path]
            log.debug("settled: %s (%d bytes)", path, key[0])

    # ---- observers (worker thread, and stop()) ------------------------------------------------

    def _manage_watches(self, inboxes: dict[str, InboxConfig], reconcile: bool, now: float) -> set[str]:
        """Keep one healthy observer per existing inbox; return the inboxes that need a scan
        because they were just (re)watched."""
        check_folders = reconcile or now >= self._next_folder_check
        if check_folders:
            self._next_folder_check = now + MISSING_RETRY_S
        for root, w in list(self._watches.items()):
            inbox = inboxes.get(root)
            if inbox is None or inbox.recursive != w.recursive:
                self._close(self._watches.pop(root).observer)
            elif not self._healthy(w, root, check_folders):
                log.warning("watching %s stopped (folder deleted, replaced or observer failed); "
                            "watching it again when it is there", root)
                self._close(self._watches.pop(root).observer)
        self._missing &= set(inboxes)
        to_scan = set()
        for root, inbox in inboxes.items():
            if root in self._watches or (root in self._missing and not check_folders):
                continue
            if self._watch(root, inbox, warn=root not in self._missing):
                if root in self._missing:
                    log.info("inbox %s is back; watching it", root)
                self._missing.discard(root)
                to_scan.add(root)
            else:
                self._missing.add(root)
        return to_scan

    def _healthy(self, w: _Watch, root: str, check_folder: bool) -> bool:
        emitters = list(w.observer.emitters)
        if not (w.observer.is_alive() and emitters and all(e.is_alive() for e in emitters)):
            return False
        if check_folder:
            try:
                st = os.stat(root)
            except OSError:
                return False
            return (st.st_dev, st.st_ino) == w.identity
        return True

    def _watch(self, root: str, inbox: InboxConfig, warn: bool) -> bool:
        try:
            st = os.stat(root)
            if not stat.S_ISDIR(st.st_mode):
                raise NotADirectoryError(errno.ENOTDIR, "not a folder")
        except OSError as exc:
            if warn:
                log.warning("inbox %s is not there (%s); will watch it when it appears",
                            root, exc.strerror or exc)
            return False
        polling = self._config.polling
        while True:
            observer = self._new_observer(polling)
            try:
                observer.schedule(self._handler, root, recursive=inbox.recursive)
                for emitter in list(observer.emitters):
                    emitter.name = f"{THREAD_PREFIX}-emitter"
                observer.start()
            except OSError as exc:
                self._close(observer)
                if not polling and exc.errno in (errno.ENOSPC, errno.EMFILE):
                    log.warning("cannot watch %s with inotify (%s; raise fs.inotify.max_user_watches); "
                                "polling it instead", root, exc.strerror)
                    polling = True
                    continue
                if warn:
                    log.warning("cannot watch %s: %s; will retry", root, exc.strerror or exc)
                return False
            self._watches[root] = _Watch(observer, inbox.recursive, (st.st_dev, st.st_ino))
            return True

    def _new_observer(self, polling: bool) -> BaseObserver:
        if polling:
            observer: BaseObserver = PollingObserver(timeout=max(1.0, self._settle_s))
        else:
            observer = Observer()
        observer.name = f"{THREAD_PREFIX}-observer"
        helper = getattr(observer, "_inotify_fd", None)  # inotify's reader thread, started already
        if isinstance(helper, threading.Thread):
            helper.name = f"{THREAD_PREFIX}-inotify"
        return observer

    @staticmethod
    def _close(observer: BaseObserver) -> None:
        observer.stop()  # also stops and joins its emitters (and inotify's reader thread)
        if observer.ident is not None and observer is not threading.current_thread():
            observer.join()

    def _close_all(self) -> None:
        while self._watches:
            _, w = self._watches.popitem()
            self._close(w.observer)


class _EventHandler(FileSystemEventHandler):
    def __init__(self, watcher: Watcher) -> None:
        self._watcher = watcher

    def dispatch(self, event: FileSystemEvent) -> None:
        self._watcher._on_event(event)


class _OverflowHook(logging.Handler):
    """Turns watchdog's "inotify queue overflowed" warning into a full rescan."""

    def __init__(self, watcher: Watcher) -> None:
        super().__init__(logging.WARNING)
        self._watcher = watcher

    def emit(self, record: logging.LogRecord) -> None:
        if "overflow" in record.getMessage().lower():
            self._watcher._on_overflow()
