"""The pipeline's worker stage: hash each file, find duplicates, decode it, and hand a Work item
to the model thread.

Decoding runs either in worker threads here or in decoding processes (decode_pool.py), whose
answers arrive chunk by chunk on the thread that drives each process (``_decoded``). Threads may
be gated: they start a file only while no forward pass runs (see pipeline.py for why).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Callable, Optional

import numpy as np

from facesortd.config import Config
from facesortd.errors import BadImage
from facesortd.inbox.jobs import Job
from facesortd.ingest.imageio import NoPreview, sha256_file, shrink
from facesortd.ingest.ledger import Ledger, Stats, Work
from facesortd.ingest.pool import DecodePool, Request, Result, decode_request
from facesortd.models.base import Embedder
from facesortd.store.database import Store

log = logging.getLogger("facesortd.pipeline")

_STOP = object()


class Preparer:
    """Jobs from ``intake`` become Work for ``hand_over(works)``, in threads or processes;
    threads wait for ``gate`` (set while the model is idle) before each file."""

    def __init__(self, config: Config, store: Store, embedder: Embedder, ledger: Ledger,
                 stats: Stats, hand_over: Callable[[list[Work]], None], gate: threading.Event,
                 queue_size: int):
        self.config, self.store, self.embedder = config, store, embedder
        self.ledger, self.stats = ledger, stats
        self._hand_over, self._gate = hand_over, gate
        self.intake: queue.Queue = queue.Queue(maxsize=queue_size)
        self.pool: Optional[DecodePool] = None
        self.threads: list[threading.Thread] = []

    def start_processes(self, processes: int) -> None:
        """Decode in ``processes`` processes; returns once they are ready."""
        self.pool = DecodePool(processes, self.intake, _STOP, self.request, self._decoded,
                               self._add_prepare_seconds)
        self.pool.start()

    def start_threads(self, threads: int) -> None:
        for i in range(threads):
            t = threading.Thread(target=self._worker_loop, name=f"facesortd-prep-{i}")
            t.start()
            self.threads.append(t)

    def running_threads(self) -> list[threading.Thread]:
        """The decoding threads, and the link threads of the decoding processes."""
        return list(self.threads) + (self.pool.threads() if self.pool is not None else [])

    def stop(self, timeout: float) -> None:
        """Finish the jobs already taken, then end the processes and join the threads."""
        for _ in range(self.pool.processes if self.pool else len(self.threads)):
            self.intake.put(_STOP)
        if self.pool is not None:
            self.pool.join(timeout)
            self.pool = None
        for t in self.threads:
            t.join(timeout)
        self.threads.clear()

    # -- in threads ----------------------------------------------------------------------------
    def _worker_loop(self) -> None:
        while True:
            job = self.intake.get()
            if job is _STOP:
                return
            self._gate.wait()
            t0 = time.perf_counter()
            try:
                work = self._prepare(job)
            except NoPreview as exc:
                self.ledger.no_preview(job, exc.reason)
                continue
            except BadImage as exc:
                self.ledger.quarantine(job, exc.reason)
                continue
            except Exception as exc:  # never let one file stop a worker
                log.exception("unexpected error preparing %s", job.path)
                self.ledger.quarantine(job, f"unexpected error: {type(exc).__name__}: {exc}")
                continue
            finally:
                self.stats.prepare_seconds += time.perf_counter() - t0
            if work is not None:
                self._hand_over([work])

    def _prepare(self, job: Job) -> Optional[Work]:
        """Hash and decode one file; None when it needs no model work (a duplicate)."""
        sha, size = sha256_file(job.path)
        if size == 0:
            raise BadImage("the file is empty (0 bytes)")
        work = self._claim(job, sha, size)
        if work is None:
            return None
        try:
            return self._fill(work, *decode_request(*self.request(job)))
        except BaseException:
            self.ledger.release_sha(sha, None)
            raise

    def _claim(self, job: Job, sha: str, size: int,
               originals: Optional[dict[str, int]] = None) -> Optional[Work]:
        """Known content is recorded as a duplicate and a copy of content in flight waits for
        it (None); the first copy gets its Work. ``originals``: looked up for a whole chunk."""
        if originals is None:
            row = self.store.find_image_by_sha(sha)
            original = row.id if row is not None else None
        else:
            original = originals.get(sha)
        return self.ledger.claim(job, sha, size, original)

    def request(self, job: Job) -> Request:
        """How to decode a job. Aligned mode: the whole image is the face (resized straight to
        the embedder's crop size when it has one). Detect mode: downscaled for the detector."""
        if job.mode == "aligned":
            crop_size = getattr(self.embedder, "crop_size", None)
            return (job.path, "crop", crop_size) if crop_size else (job.path, "full", None)
        return job.path, "full", self.config.detector.crop_side()

    def _fill(self, work: Work, rgb: np.ndarray, scale: float,
              original: tuple[int, int]) -> Work:
        """Put decoded pixels into ``work``: the face itself (aligned), or the copy faces are cut
        from and the smaller one the detector looks at (detect)."""
        if work.job.mode != "aligned":
            work.crop_rgb, work.crop_scale = rgb, scale
            work.rgb, grown = shrink(rgb, self.config.detector.max_side_px)
            work.scale = scale * grown
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

    # -- with decoding processes: on the thread that drives one process -------------------------
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
                if isinstance(result, NoPreview):
                    self.ledger.no_preview(job, result.reason)
                    continue
                if isinstance(result, BadImage):
                    self.ledger.quarantine(job, result.reason)
                    continue
                sha, size, rgb, scale, original = result
                work = self._claim(job, sha, size, originals)
                if work is None:
                    continue
                try:
                    works.append(self._fill(work, rgb, scale, original))
                except BaseException:
                    self.ledger.release_sha(sha, None)
                    raise
            except Exception as exc:  # never let one file stop a decoding link
                log.exception("unexpected error preparing %s", job.path)
                self.ledger.quarantine(job, f"unexpected error: {type(exc).__name__}: {exc}")
        if works:
            self._hand_over(works)

    def _add_prepare_seconds(self, seconds: float) -> None:
        with self.ledger.lock:
            self.stats.prepare_seconds += seconds

