"""The pipeline's books: which files are in flight, which content is being ingested, and how each
file's trip ends (done, no face, duplicate, error, quarantined, gone).

Both pipeline stages (pipeline_prepare.py, pipeline_model.py) end files only through a Ledger, so
the in-flight set that ``Pipeline.drain`` waits on and the copies of content waiting for their
first copy stay consistent under one lock.

A broken file is recorded here and handed to ``set_aside``, a port the app fills with the
library's journaled quarantine (library/quarantine.py): the library is the only writer into the
library, and ingest sits below it. Without one (a pipeline with no library: benchmarks, tests) a
broken file is recorded and left where it is.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from facesortd import fsops
from facesortd.config import Config
from facesortd.formats import owner
from facesortd.inbox.jobs import Job
from facesortd.models.base import Box
from facesortd.store.database import Store

log = logging.getLogger("facesortd.pipeline")

SetAside = Callable[[int, Path, str], Optional[Path]]
"""(image id, path, reason) -> where the broken file went (None: it was gone); OSError when it
could not be moved."""


@dataclass
class Work:
    """One image travelling from a worker to the model thread."""

    job: Job
    sha256: str
    size: int
    faces: list[Any] = field(default_factory=list)        # prepared inputs for the embedder
    boxes: list[Box] = field(default_factory=list)        # in original image pixels
    scores: list[float] = field(default_factory=list)
    rgb: Optional[np.ndarray] = None                      # detect mode: decoded image awaiting detection
    scale: float = 1.0
    crop_rgb: Optional[np.ndarray] = None                 # detect mode: the larger copy faces are cut from
    crop_scale: float = 1.0
    vectors: list[np.ndarray] = field(default_factory=list)


@dataclass
class Stats:
    """Counters for status lines, metrics and benchmarks (written by the pipeline threads)."""

    files_done: int = 0
    files_noface: int = 0
    files_duplicate: int = 0
    files_error: int = 0
    files_skipped: int = 0
    files_other: int = 0           # neither photos nor companions, recorded for placement.other_dir
    faces: int = 0
    batches: int = 0
    batch_faces: int = 0
    model_seconds: float = 0.0     # embedding forward passes (model thread)
    detect_seconds: float = 0.0    # MTCNN (model thread)
    store_seconds: float = 0.0     # recording results (model thread, one transaction per batch)
    prepare_seconds: float = 0.0   # hashing + decoding, summed over the worker threads


class Ledger:
    """Files in flight and their endings; ``requeue(job)`` takes back a copy whose first copy
    failed (the pipeline's ``submit``), ``on_finished(job, outcome, reason)`` hears every end."""

    def __init__(self, config: Config, store: Store, stats: Stats,
                 requeue: Callable[[Job], bool],
                 on_finished: Optional[Callable[[Job, str, Optional[str]], None]] = None,
                 dry_run: bool = False, set_aside: Optional[SetAside] = None):
        self.config, self.store, self.stats = config, store, stats
        self.requeue, self.on_finished, self.dry_run = requeue, on_finished, dry_run
        self.set_aside = set_aside
        self.lock = threading.Lock()
        self.idle = threading.Condition(self.lock)
        self.in_flight: set[Path] = set()
        self.sha_owner: dict[str, Path] = {}          # content being ingested -> its first path
        self.sha_waiters: dict[str, list[Job]] = {}   # later copies of that content

    # -- in flight -----------------------------------------------------------------------------
    def busy(self, path: Path) -> bool:
        """Whether ``path`` is already in flight."""
        with self.lock:
            return path in self.in_flight

    def take(self, path: Path) -> bool:
        """Put ``path`` in flight; False when it already was."""
        with self.lock:
            if path in self.in_flight:
                return False
            self.in_flight.add(path)
            return True

    def depth(self) -> int:
        with self.lock:
            return len(self.in_flight)

    def drain(self, timeout: Optional[float] = None) -> bool:
        """Wait until no file is in flight; False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self.idle:
            while self.in_flight:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self.idle.wait(left if left is not None else 1.0)
        return True

    def finish(self, job: Job, outcome: Optional[str], reason: Optional[str] = None) -> None:
        """A file is through: ``on_finished(job, outcome, reason)`` (reason for errors only)."""
        with self.idle:
            self.in_flight.discard(job.path)
            if not self.in_flight:     # drain() waits for this; waking it per file costs GIL
                self.idle.notify_all()
        if outcome and self.on_finished:
            self.on_finished(job, outcome, reason)

    # -- content -------------------------------------------------------------------------------
    def claim(self, job: Job, sha: str, size: int, original: Optional[int]) -> Optional[Work]:
        """Content already stored as image ``original`` is recorded as a duplicate and a copy of
        content in flight waits for it (None); the first copy gets its Work."""
        if original is not None:
            self.record_duplicate(job, sha, size, original)
            return None
        with self.lock:
            owner = self.sha_owner.setdefault(sha, job.path)
            if owner != job.path:
                self.sha_waiters.setdefault(sha, []).append(job)
                return None
        return Work(job=job, sha256=sha, size=size)

    def release_sha(self, sha: str, image_id: Optional[int]) -> None:
        """The first copy of some content is finished: settle the copies that waited for it."""
        with self.lock:
            self.sha_owner.pop(sha, None)
            waiters = self.sha_waiters.pop(sha, [])
        for job in waiters:
            if image_id is not None:
                self.record_duplicate(job, sha, job.size, image_id)
            else:
                self.finish(job, None)
                if not self.requeue(job):
                    log.warning("could not requeue %s; the next rescan will take it", job.path)

    # -- endings -------------------------------------------------------------------------------
    def record_duplicate(self, job: Job, sha: str, size: int, original_id: int) -> None:
        image_id = self.store.add_image(job.path, job.inbox, sha, size, job.mtime_ns,
                                        status="pending")
        self.store.mark_duplicate(image_id, original_id)
        self.stats.files_duplicate += 1
        log.info("duplicate %s: same content as image %d, not embedded again", job.path, original_id)
        self.finish(job, "duplicate")

    def quarantine(self, job: Job, reason: str) -> None:
        """Record a broken file and have it set aside, with a reason file, into the quarantine
        folder (``set_aside``)."""
        if not job.path.exists():
            log.info("gone before it could be read: %s", job.path)
            self.finish(job, "gone")
            return
        try:
            st = job.path.stat()
            size, mtime_ns = st.st_size, st.st_mtime_ns
        except OSError:
            size, mtime_ns = job.size, job.mtime_ns
        where = self.config.library / self.config.placement.quarantine_dir
        moved_to = None
        if self.dry_run:
            log.warning("dry run: %s would be quarantined into %s: %s", job.path, where, reason)
            self.store.record_error(job.path, job.inbox, None, size, mtime_ns, reason)
            self.stats.files_error += 1
            self.finish(job, "error", reason)
            return
        # Recorded before the move: a crash in between leaves the file in the inbox, where the
        # next start finds it again (an 'error' row is never taken as already ingested).
        image_id = self.store.record_error(job.path, job.inbox, None, size, mtime_ns, reason)
        try:
            if self.set_aside is not None:
                moved_to = self.set_aside(image_id, job.path, reason)
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.error("could not move %s to quarantine (%s); it stays where it is", job.path, exc)
        self.stats.files_error += 1
        log.warning("quarantined %s: %s%s", job.path, reason,
                    f" -> {moved_to}" if moved_to else "")
        self.finish(job, "error", reason)

    def side_file(self, job: Job) -> None:
        """A file that is not analysed: a companion beside its photo, or one whose photo was
        placed before it settled ('loose'): the placer brings it to its photo (outcome
        'companion' tells it); else an other file,
        recorded as 'other' for the placer to move into ``placement.other_dir`` (its hash is
        taken there, off the watcher's thread)."""
        if job.kind == "companion":   # its photo is beside it: nothing to record
            self.finish(job, "companion")
            return
        if job.kind == "loose":
            photos = self.store.images_in_folder(job.path.parent, "done", "noface", "duplicate",
                                                 "error")   # a broken photo's: into quarantine
            if owner(job.path.name, [p.path.name for p in photos]) is not None:
                log.info("%s arrived after its photo; it follows it", job.path)
                self.finish(job, "companion")
                return
        if self.config.watch.other_files == "leave":
            log.info("left in the inbox (watch.other_files: leave): %s", job.path)
            return
        self.store.add_image(job.path, job.inbox, None, job.size, job.mtime_ns, status="other")
        self.stats.files_other += 1
        log.info("other file %s: to %s", job.path, self.config.placement.other_dir)
        self.finish(job, "other")

    def no_preview(self, job: Job, reason: str) -> None:
        """A camera RAW file whose picture cannot be read: not broken, so it is recorded as a
        photo without a face, with the reason, and goes to the no-face folder."""
        try:
            sha, size = fsops.sha256_and_size(job.path)
            mtime_ns = job.path.stat().st_mtime_ns
        except FileNotFoundError:
            log.info("gone before it could be read: %s", job.path)
            self.finish(job, "gone")
            return
        except OSError as exc:
            self.quarantine(job, f"cannot read the file ({exc})")
            return
        self.store.add_image(job.path, job.inbox, sha, size, mtime_ns, status="noface",
                             error=reason)
        self.stats.files_noface += 1
        log.warning("%s: %s; it goes with the photos without a face", job.path, reason)
        self.finish(job, "noface", reason)

    def fail(self, work: Work, reason: str) -> None:
        """A model-side failure: not the file's fault, so record it but leave the file in place."""
        work.faces = []
        work.vectors = []
        self.store.record_error(work.job.path, work.job.inbox, work.sha256, work.size,
                                work.job.mtime_ns, reason)
        self.stats.files_error += 1
        self.release_sha(work.sha256, None)
        self.finish(work.job, "error", reason)

    def recorded(self, recorded: list[tuple[Work, int]]) -> None:
        """After the commit: count, log, and let the files (and copies waiting on them) go, as
        ``finish`` then ``release_sha`` would for each, under one lock for the micro-batch."""
        waiting: list[tuple[str, int, list[Job]]] = []
        with self.idle:
            for work, image_id in recorded:
                self.in_flight.discard(work.job.path)
                self.sha_owner.pop(work.sha256, None)
                waiters = self.sha_waiters.pop(work.sha256, None)
                if waiters:
                    waiting.append((work.sha256, image_id, waiters))
            if not self.in_flight:
                self.idle.notify_all()
        faces = sum(len(work.vectors) for work, _ in recorded)
        done = sum(1 for work, _ in recorded if work.vectors)
        self.stats.faces += faces
        self.stats.files_done += done
        self.stats.files_noface += len(recorded) - done
        if log.isEnabledFor(logging.INFO):
            for work, _ in recorded:
                n = len(work.vectors)
                log.info("ingested %s: %s", work.job.path, f"{n} face(s)" if n else "no face")
        if self.on_finished:
            for work, _ in recorded:
                self.on_finished(work.job, "done" if work.vectors else "noface", None)
        for sha, image_id, jobs in waiting:
            for job in jobs:
                self.record_duplicate(job, sha, job.size, image_id)
