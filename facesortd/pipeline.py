"""The ingest pipeline: settled files in, face vectors in the store out.

Stages, in order (each a small method below):
  1. ``submit``      intake: drop a path already in flight or already ingested unchanged
  2. ``_prepare``    worker threads: hash, find duplicates, decode (and for aligned mode, cut the face);
                     or, with decoding processes (decode_pool.py), hash and decode there, then
                     ``_decoded`` finds duplicates on the thread that drives the process
  3. ``_model_loop`` the one model thread: detect faces in batches, embed micro-batches of up to
                     ``batch_size`` faces or ``max_wait_ms``, record every image with its faces
                     (one store transaction per micro-batch: little model-thread time between
                     forward passes)
Decoding runs in the workers ahead of the model, so the model does not wait on the disk. On a CPU
device the model's thread pool already uses every core, and a worker decoding in the middle of a
forward pass preempts one of its threads and stalls the others at the next barrier; there the
workers decode only while no forward pass runs ("gated"): the next batch is decoded on all cores
between two forward passes, which costs the model less than sharing cores during them.
A file that cannot be decoded is recorded with its reason and moved to the quarantine folder.
All torch work (detector and embedder) happens on the model thread: one torch thread pool only.
On an accelerator the model thread feeds the device from Python and needs the GIL, which decode
threads hold for much of their work; there hashing and decoding run in worker processes instead
(``embedder.decode_processes``: auto = processes on an accelerator, threads on a CPU).
"""

from __future__ import annotations

import logging
import os
import sys
import queue
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from .config import Config
from .embedders.base import Box, Embedder
from .errors import BadImage
from .fsops import move_no_overwrite, write_new_text
from .decode_pool import DecodePool, Request, Result, decode_request
from .imageio import sha256_file
from .jobs import Job
from .store import Store

log = logging.getLogger("facesortd.pipeline")

_STOP = object()
_GPU_SWITCH_INTERVAL_S = 0.0002


@dataclass
class _Work:
    """One image travelling from a worker to the model thread."""

    job: Job
    sha256: str
    size: int
    faces: list[Any] = field(default_factory=list)        # prepared inputs for the embedder
    boxes: list[Box] = field(default_factory=list)        # in original image pixels
    scores: list[float] = field(default_factory=list)
    rgb: Optional[np.ndarray] = None                      # detect mode: decoded image awaiting detection
    scale: float = 1.0
    vectors: list[np.ndarray] = field(default_factory=list)


@dataclass
class Stats:
    """Counters for status lines, metrics and benchmarks (written by the pipeline threads)."""

    files_done: int = 0
    files_noface: int = 0
    files_duplicate: int = 0
    files_error: int = 0
    files_skipped: int = 0
    faces: int = 0
    batches: int = 0
    batch_faces: int = 0
    model_seconds: float = 0.0     # embedding forward passes (model thread)
    detect_seconds: float = 0.0    # MTCNN (model thread)
    store_seconds: float = 0.0     # recording results (model thread, one transaction per batch)
    prepare_seconds: float = 0.0   # hashing + decoding, summed over the worker threads


class Pipeline:
    """Turns Jobs into stored faces; start(), submit(job), drain(), stop()."""

    def __init__(self, config: Config, store: Store, embedder: Embedder, detector: Any = None,
                 workers: Optional[int] = None, queue_size: int = 1024,
                 on_finished: Optional[Callable[[Job, str, Optional[str]], None]] = None,
                 on_faces: Optional[Callable[[list[int]], None]] = None, dry_run: bool = False,
                 decode_processes: Optional[int] = None):
        self.config = config
        self.store = store
        self.embedder = embedder
        self.detector = detector
        self.on_finished = on_finished
        self.on_faces = on_faces   # called on the model thread with the ids of newly stored faces
        self.dry_run = dry_run     # run --dry-run: a broken file is recorded but not moved
        self.stats = Stats()
        self._intake: queue.Queue = queue.Queue(maxsize=queue_size)
        self._prepared: queue.Queue = queue.Queue(maxsize=max(8, 2 * config.embedder.batch_size))
        self._workers_n = workers   # None: chosen at start() for the device
        # None: embedder.decode_processes; 0: decode in threads; N: in N processes
        self._processes_n = decode_processes
        self._pool: Optional[DecodePool] = None
        self._processes_started = 0
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._in_flight: set[Path] = set()
        self._sha_owner: dict[str, Path] = {}          # content being ingested -> its first path
        self._sha_waiters: dict[str, list[Job]] = {}   # later copies of that content
        self._accepting = False
        self._model_idle = threading.Event()   # the gate: set while no forward pass runs
        self._model_idle.set()
        self._gated = False

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> None:
        self._gated = _runs_on_cpu(self.embedder)
        processes = self._processes_n
        if processes is None:
            processes = decode_processes_for(self.config.embedder.decode_processes, self._gated)
        if processes:
            self._gated = False   # processes never wait for the model (asked for, or a GPU)
            self._pool = DecodePool(processes, self._intake, _STOP, self._request, self._decoded,
                                    self._add_prepare_seconds)
            self._pool.start()
            self._processes_started, self._workers_n = processes, 0
        elif self._workers_n is None:
            # CPU: the gated workers decode between forward passes, two cover both cores. GPU:
            # more threads decode, but past ~4 they fight the model thread for the GIL (measured on
            # an H200, 16 cores: 4 threads 1,010 images/s, 8 threads 775, 12 threads 787).
            self._workers_n = 2 if self._gated else max(2, min(4, (os.cpu_count() or 2) - 1))
        if not self._gated and sys.getswitchinterval() > _GPU_SWITCH_INTERVAL_S:
            # The model thread feeds the GPU from Python, one GIL acquisition per layer; with the
            # default 5 ms switch interval it waits behind busy decoding threads at every layer.
            sys.setswitchinterval(_GPU_SWITCH_INTERVAL_S)
        self._accepting = True
        for i in range(self._workers_n):
            t = threading.Thread(target=self._worker_loop, name=f"facesortd-prep-{i}")
            t.start()
            self._threads.append(t)
        t = threading.Thread(target=self._model_loop, name="facesortd-model")
        t.start()
        self._threads.append(t)

    def stop(self, timeout: float = 60.0) -> None:
        """Stop taking files, finish the ones already taken, and join the threads."""
        self._accepting = False
        if not self._threads:
            return
        for _ in range(self._pool.processes if self._pool else self._workers_n):
            self._intake.put(_STOP)
        if self._pool is not None:
            self._pool.join(timeout)
            self._pool = None
        for t in self._threads[:-1]:
            t.join(timeout)
        self._prepared.put(_STOP)
        self._threads[-1].join(timeout)
        self._threads.clear()

    def drain(self, timeout: Optional[float] = None) -> bool:
        """Wait until every accepted file is finished; False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._idle:
            while self._in_flight:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._idle.wait(left if left is not None else 1.0)
        return True

    def workers_description(self) -> str:
        """How decoding runs once started (benchmarks, status): N threads or N processes."""
        if self._processes_started:
            return f"{self._processes_started} processes"
        return f"{self._workers_n} threads" + (" (gated)" if self._gated else "")

    @property
    def queue_depth(self) -> int:
        with self._lock:
            return len(self._in_flight)

    # -- stage 1: intake -----------------------------------------------------------------------
    def submit(self, job: Job) -> bool:
        """Accept a settled file. False only when the queue is full (the caller retries later)."""
        if not self._accepting:
            return False
        with self._lock:
            if job.path in self._in_flight:
                return True
        if self.store.image_is_current(job.path, job.size, job.mtime_ns):
            self.stats.files_skipped += 1
            return True
        with self._lock:
            if job.path in self._in_flight:
                return True
            self._in_flight.add(job.path)
        try:
            self._intake.put_nowait(job)
        except queue.Full:
            self._finish(job, None)
            return False
        return True

    def _finish(self, job: Job, outcome: Optional[str], reason: Optional[str] = None) -> None:
        """A file is through: ``on_finished(job, outcome, reason)`` (reason for errors only)."""
        with self._idle:
            self._in_flight.discard(job.path)
            if not self._in_flight:     # drain() waits for this; waking it per file costs GIL
                self._idle.notify_all()
        if outcome and self.on_finished:
            self.on_finished(job, outcome, reason)

    # -- stage 2: workers ----------------------------------------------------------------------
    def _worker_loop(self) -> None:
        while True:
            job = self._intake.get()
            if job is _STOP:
                return
            self._model_idle.wait()
            t0 = time.perf_counter()
            try:
                work = self._prepare(job)
            except BadImage as exc:
                self._quarantine(job, exc.reason)
                continue
            except Exception as exc:  # never let one file stop a worker
                log.exception("unexpected error preparing %s", job.path)
                self._quarantine(job, f"unexpected error: {type(exc).__name__}: {exc}")
                continue
            finally:
                self.stats.prepare_seconds += time.perf_counter() - t0
            if work is not None:
                self._prepared.put([work])

    def _prepare(self, job: Job) -> Optional[_Work]:
        """Hash and decode one file; None when it needs no model work (a duplicate)."""
        sha, size = sha256_file(job.path)
        if size == 0:
            raise BadImage("the file is empty (0 bytes)")
        work = self._claim(job, sha, size)
        if work is None:
            return None
        try:
            return self._fill(work, *decode_request(*self._request(job)))
        except BaseException:
            self._release_sha(sha, None)
            raise

    def _claim(self, job: Job, sha: str, size: int,
               originals: Optional[dict[str, int]] = None) -> Optional[_Work]:
        """Known content is recorded as a duplicate and a copy of content in flight waits for
        it (None); the first copy gets its _Work. ``originals``: looked up for a whole chunk."""
        if originals is None:
            row = self.store.find_image_by_sha(sha)
            original = row.id if row is not None else None
        else:
            original = originals.get(sha)
        if original is not None:
            self._record_duplicate(job, sha, size, original)
            return None
        with self._lock:
            owner = self._sha_owner.setdefault(sha, job.path)
            if owner != job.path:
                self._sha_waiters.setdefault(sha, []).append(job)
                return None
        return _Work(job=job, sha256=sha, size=size)

    def _request(self, job: Job) -> Request:
        """How to decode a job. Aligned mode: the whole image is the face (resized straight to
        the embedder's crop size when it has one). Detect mode: downscaled for the detector."""
        if job.mode == "aligned":
            crop_size = getattr(self.embedder, "crop_size", None)
            return (job.path, "crop", crop_size) if crop_size else (job.path, "full", None)
        return job.path, "full", self.config.detector.max_side_px

    def _fill(self, work: _Work, rgb: np.ndarray, scale: float,
              original: tuple[int, int]) -> _Work:
        """Put decoded pixels into ``work``: the face itself (aligned) or the detector's input."""
        if work.job.mode != "aligned":
            work.rgb, work.scale = rgb, scale
            return work
        h, w = rgb.shape[:2]
        if getattr(self.embedder, "crop_size", None):
            work.faces.append(rgb)
        else:
            work.faces.append(self.embedder.prepare(rgb, (0.0, 0.0, float(w), float(h))))
            w, h = original
        work.boxes.append((0.0, 0.0, float(w), float(h)))
        work.scores.append(1.0)
        return work

    # -- stage 2, with decoding processes: on the thread that drives one process ---------------
    def _decoded(self, jobs: list[Job], results: list[Result]) -> None:
        """A decoding process's answers for a chunk of jobs: broken files are set aside, the
        rest go on toward the model together (one duplicate lookup, one hand-over)."""
        try:
            originals = self.store.find_originals(
                [r[0] for r in results if not isinstance(r, BadImage)])
        except Exception:
            log.exception("could not look up duplicates for %d files; one by one", len(jobs))
            originals = None
        works = []
        for job, result in zip(jobs, results):
            try:
                if isinstance(result, BadImage):
                    self._quarantine(job, result.reason)
                    continue
                sha, size, rgb, scale, original = result
                work = self._claim(job, sha, size, originals)
                if work is None:
                    continue
                try:
                    works.append(self._fill(work, rgb, scale, original))
                except BaseException:
                    self._release_sha(sha, None)
                    raise
            except Exception as exc:  # never let one file stop a decoding link
                log.exception("unexpected error preparing %s", job.path)
                self._quarantine(job, f"unexpected error: {type(exc).__name__}: {exc}")
        if works:
            self._prepared.put(works)

    def _add_prepare_seconds(self, seconds: float) -> None:
        with self._lock:
            self.stats.prepare_seconds += seconds

    def _quarantine(self, job: Job, reason: str) -> None:
        """Record a broken file and move it, with a reason file, into the quarantine folder."""
        if not job.path.exists():
            log.info("gone before it could be read: %s", job.path)
            self._finish(job, "gone")
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
            self._finish(job, "error", reason)
            return
        # Recorded before the move: a crash in between leaves the file in the inbox, where the
        # next start finds it again (an 'error' row is never taken as already ingested).
        self.store.record_error(job.path, job.inbox, None, size, mtime_ns, reason)
        try:
            moved_to = move_no_overwrite(job.path, where)
            write_new_text(moved_to.with_name(moved_to.name + ".reason.txt"),
                           f"{job.path}\n{reason}\n")
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.error("could not move %s to quarantine (%s); it stays where it is", job.path, exc)
        self.stats.files_error += 1
        log.warning("quarantined %s: %s%s", job.path, reason,
                    f" -> {moved_to}" if moved_to else "")
        self._finish(job, "error", reason)

    def _record_duplicate(self, job: Job, sha: str, size: int, original_id: int) -> None:
        image_id = self.store.add_image(job.path, job.inbox, sha, size, job.mtime_ns,
                                        status="pending")
        self.store.mark_duplicate(image_id, original_id)
        self.stats.files_duplicate += 1
        log.info("duplicate %s: same content as image %d, not embedded again", job.path, original_id)
        self._finish(job, "duplicate")

    # -- stage 3: the model thread -------------------------------------------------------------
    def _model_loop(self) -> None:
        batch_size = self.config.embedder.batch_size
        max_wait = self.config.embedder.max_wait_ms / 1000.0
        pending: list[tuple[_Work, Any]] = []
        waiting: list[_Work] = []      # images whose faces are (partly) in ``pending``
        deadline: Optional[float] = None
        stopping = False
        while not stopping or pending:
            timeout = 0.05 if deadline is None else max(0.0, deadline - time.monotonic())
            items: list[_Work] = []
            if not stopping:
                try:
                    got = self._prepared.get(timeout=timeout)
                    while True:
                        if got is _STOP:
                            stopping = True
                            break
                        items.extend(got)
                        if len(items) >= batch_size:
                            break
                        got = self._prepared.get_nowait()
                except queue.Empty:
                    pass
            detect = [w for w in items if w.rgb is not None]
            if detect:
                self._detect(detect)
            self._store_all([w for w in items if not w.faces])  # no face: nothing to announce
            for work in items:
                if work.faces:
                    waiting.append(work)
                    pending.extend((work, face) for face in work.faces)
            if pending and deadline is None:
                deadline = time.monotonic() + max_wait
            while len(pending) >= batch_size or (
                    pending and (stopping or time.monotonic() >= (deadline or 0))):
                chunk, pending = pending[:batch_size], pending[batch_size:]
                self._embed(chunk)
                done = [w for w in waiting if len(w.vectors) == len(w.faces)]
                waiting = [w for w in waiting if len(w.vectors) != len(w.faces)]
                self._announce(self._store_all(done))
                deadline = None if not pending else time.monotonic() + max_wait

    @contextmanager
    def _forward_pass(self):
        """Close the workers' gate while the model runs (CPU devices only)."""
        if self._gated:
            self._model_idle.clear()
        try:
            yield
        finally:
            self._model_idle.set()

    def _detect(self, works: list[_Work]) -> None:
        t0 = time.perf_counter()
        try:
            with self._forward_pass():
                found = self.detector.detect([w.rgb for w in works],
                                             scales=[w.scale for w in works])
        except Exception:
            log.exception("face detection failed for a batch; trying images one by one")
            found = []
            for w in works:
                try:
                    found.extend(self.detector.detect([w.rgb], scales=[w.scale]))
                except Exception as exc:
                    found.append(exc)
        self.stats.detect_seconds += time.perf_counter() - t0
        for work, detections in zip(works, found):
            rgb, scale = work.rgb, work.scale
            work.rgb = None
            if isinstance(detections, Exception):
                self._fail(work, f"face detection failed: {detections}")
                continue
            for det in detections:
                x1, y1, x2, y2 = det.box
                local = (x1 / scale, y1 / scale, x2 / scale, y2 / scale)
                work.faces.append(self.embedder.prepare(rgb, local))
                work.boxes.append(tuple(float(v) for v in det.box))
                work.scores.append(float(det.score))

    def _embed(self, chunk: list[tuple[_Work, Any]]) -> None:
        t0 = time.perf_counter()
        try:
            with self._forward_pass():
                vectors = self.embedder.embed([face for _, face in chunk])
        except Exception as exc:
            log.exception("embedding a batch of %d faces failed", len(chunk))
            for work in {id(w): w for w, _ in chunk}.values():
                self._fail(work, f"embedding failed: {type(exc).__name__}: {exc}")
            return
        self.stats.model_seconds += time.perf_counter() - t0
        self.stats.batches += 1
        self.stats.batch_faces += len(chunk)
        for (work, _), vec in zip(chunk, vectors):
            work.vectors.append(vec)

    def _fail(self, work: _Work, reason: str) -> None:
        """A model-side failure: not the file's fault, so record it but leave the file in place."""
        work.faces = []
        work.vectors = []
        self.store.record_error(work.job.path, work.job.inbox, work.sha256, work.size,
                                work.job.mtime_ns, reason)
        self.stats.files_error += 1
        self._release_sha(work.sha256, None)
        self._finish(work.job, "error", reason)

    def _announce(self, face_ids: list[int]) -> None:
        if face_ids and self.on_faces is not None:
            try:
                self.on_faces(face_ids)
            except Exception:
                log.exception("a listener for new faces failed")

    def _store_all(self, works: list[_Work]) -> list[int]:
        """Record finished images with their faces; returns the new face ids.

        One transaction for the whole micro-batch: a commit per image (two, before) cost the model
        thread ~1.7 ms each between forward passes, against ~0.3 ms per image batched. Each image
        is still all-or-nothing; if the batch fails, the images are retried one by one so one bad
        row cannot lose the others.
        """
        works = [w for w in works if w.job.path in self._in_flight]  # not the failed ones
        if not works:
            return []
        t0 = time.perf_counter()
        recorded: list[tuple[_Work, int, list[int]]] = []
        try:
            results = self.store.add_ingested([self._row(w) for w in works])
            recorded = [(w, image_id, ids) for w, (image_id, ids) in zip(works, results)]
        except Exception:
            log.warning("recording %d images in one transaction failed; one by one now",
                        len(works), exc_info=True)
            recorded = []
            for work in works:
                try:
                    ((image_id, ids),) = self.store.add_ingested([self._row(work)])
                    recorded.append((work, image_id, ids))
                except Exception as exc:
                    log.exception("could not record %s", work.job.path)
                    self._fail(work, f"could not record in the store: {exc}")
        self.stats.store_seconds += time.perf_counter() - t0
        self._recorded_all([(w, image_id) for w, image_id, _ in recorded])
        return [face_id for _, _, ids in recorded for face_id in ids]

    @staticmethod
    def _row(work: _Work) -> tuple:
        """The image and its faces, as ``Store.add_ingested`` takes them."""
        job = work.job
        return (job.path, job.inbox, work.sha256, work.size, job.mtime_ns,
                list(zip(work.boxes, work.scores, work.vectors)))

    def _recorded_all(self, recorded: list[tuple[_Work, int]]) -> None:
        """After the commit: count, log, and let the files (and copies waiting on them) go, as
        ``_finish`` then ``_release_sha`` would for each, under one lock for the micro-batch."""
        waiting: list[tuple[str, int, list[Job]]] = []
        with self._idle:
            for work, image_id in recorded:
                self._in_flight.discard(work.job.path)
                self._sha_owner.pop(work.sha256, None)
                waiters = self._sha_waiters.pop(work.sha256, None)
                if waiters:
                    waiting.append((work.sha256, image_id, waiters))
            if not self._in_flight:
                self._idle.notify_all()
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
                self._record_duplicate(job, sha, job.size, image_id)

    def _release_sha(self, sha: str, image_id: Optional[int]) -> None:
        """The first copy of some content is finished: settle the copies that waited for it."""
        with self._lock:
            self._sha_owner.pop(sha, None)
            waiters = self._sha_waiters.pop(sha, [])
        for job in waiters:
            if image_id is not None:
                self._record_duplicate(job, sha, job.size, image_id)
            else:
                self._finish(job, None)
                if not self.submit(job):
                    log.warning("could not requeue %s; the next rescan will take it", job.path)


def decode_processes_for(setting: object, on_cpu: bool) -> int:
    """``embedder.decode_processes`` as a number: auto is threads (0) on a CPU, where the model
    already uses every core, and on an accelerator every usable core but 4 (the model thread, the
    links to the processes, the store), at least 2. Measured on an H200 with 16 cores, aligned
    mode: 6 processes 3,977 images/s, 9 processes 4,678, 12 processes 6,064."""
    if setting != "auto":
        return int(setting)  # type: ignore[call-overload]
    if on_cpu:
        return 0
    from .embedders.torchsetup import usable_cores

    return max(2, usable_cores() - 4)


def _runs_on_cpu(embedder: Embedder) -> bool:
    try:
        return str(embedder.describe().get("device", "cpu")).startswith("cpu")
    except Exception:
        return True
