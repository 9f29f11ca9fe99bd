"""The pipeline's model stage: the one thread that runs torch (detector and embedder), embeds
micro-batches of up to ``batch_size`` faces or ``max_wait_ms``, records every image with its faces
(one store transaction per micro-batch) and announces the new faces.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from contextlib import contextmanager
from typing import Any, Callable, Optional

from facesortd.config import Config
from facesortd.ingest.ledger import Ledger, Stats, Work
from facesortd.models.base import Embedder
from facesortd.store.database import Store

log = logging.getLogger("facesortd.pipeline")

_STOP = object()

#: Decoded pixels waiting for the model, at most (one hand-over larger than this still passes
#: alone). Detect mode holds two copies of each photo (~11 MB for a 12-megapixel one), and
#: decoding processes hand over 16 at a time, so a count of hand-overs alone bounds nothing useful.
MAX_QUEUED_BYTES = 512 << 20


class ModelStage:
    """Work from ``hand_over`` to the store; ``idle`` is the workers' gate, closed during forward
    passes when ``gated`` (CPU devices); ``on_faces(ids)`` hears of newly stored faces."""

    def __init__(self, config: Config, store: Store, embedder: Embedder, detector: Any,
                 ledger: Ledger, stats: Stats,
                 on_faces: Optional[Callable[[list[int]], None]] = None):
        self.config, self.store, self.embedder, self.detector = config, store, embedder, detector
        self.ledger, self.stats, self.on_faces = ledger, stats, on_faces
        self._prepared: queue.Queue = queue.Queue(maxsize=max(8, 2 * config.embedder.batch_size))
        self.idle = threading.Event()   # the gate: set while no forward pass runs
        self.idle.set()
        self.gated = False
        self._thread: Optional[threading.Thread] = None
        self._detect_fill = getattr(detector, "max_batch", 1)
        self._room = threading.Condition()
        self._queued_bytes = 0

    def hand_over(self, works: list[Work]) -> None:
        """Queue prepared images for the model (blocks while the model is behind)."""
        size = sum(_pixel_bytes(w) for w in works)
        with self._room:
            while self._queued_bytes and self._queued_bytes + size > MAX_QUEUED_BYTES:
                self._room.wait()
            self._queued_bytes += size
        self._prepared.put((works, size))

    def _taken(self, size: int) -> None:
        with self._room:
            self._queued_bytes -= size
            self._room.notify_all()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="facesortd-model")
        self._thread.start()

    def threads(self) -> list[threading.Thread]:
        return [self._thread] if self._thread is not None else []

    def stop(self, timeout: float) -> None:
        """Finish what was handed over (once no more can come), then join the thread."""
        self._prepared.put(_STOP)
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _loop(self) -> None:
        batch_size = self.config.embedder.batch_size
        max_wait = self.config.embedder.max_wait_ms / 1000.0
        pending: list[tuple[Work, Any]] = []
        waiting: list[Work] = []      # images whose faces are (partly) in ``pending``
        deadline: Optional[float] = None
        stopping = False
        while not stopping or pending:
            timeout = 0.05 if deadline is None else max(0.0, deadline - time.monotonic())
            items: list[Work] = []
            if not stopping:
                try:
                    got = self._prepared.get(timeout=timeout)
                    fill_until: Optional[float] = None
                    to_detect = 0
                    while True:
                        if got is _STOP:
                            stopping = True
                            break
                        works, size = got
                        items.extend(works)
                        self._taken(size)
                        if len(items) >= batch_size:
                            break
                        to_detect += sum(w.rgb is not None for w in works)
                        if fill_until is None and to_detect:
                            fill_until = time.monotonic() + max_wait
                        got = self._next(to_detect, fill_until)
                except queue.Empty:
                    pass
            detect = [w for w in items if w.rgb is not None]
            if detect:
                self._detect(detect)
            self.store_all([w for w in items if not w.faces])  # no face: nothing to announce
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
                self._announce(self.store_all(done))
                deadline = None if not pending else time.monotonic() + max_wait

    @contextmanager
    def _forward_pass(self):
        """Close the workers' gate while the model runs (CPU devices only)."""
        if self.gated:
            self.idle.clear()
        try:
            yield
        finally:
            self.idle.set()

    def _next(self, to_detect: int, fill_until: Optional[float]) -> Any:
        """The next hand-over already queued; for photos awaiting detection, wait (up to
        ``max_wait_ms`` from the first) until a full detector batch is there: one batch of 8
        costs less per photo than 8 of one, and so does embedding their faces together."""
        wait = 0.0 if fill_until is None else fill_until - time.monotonic()
        if wait > 0 and to_detect < self._detect_fill:
            return self._prepared.get(timeout=wait)
        return self._prepared.get_nowait()

    def _detect(self, works: list[Work]) -> None:
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
            rgb, scale = work.crop_rgb, work.crop_scale  # faces come from the larger copy
            work.rgb = work.crop_rgb = None
            if isinstance(detections, Exception):
                self.ledger.fail(work, f"face detection failed: {detections}")
                continue
            for det in detections:
                x1, y1, x2, y2 = det.box
                local = (x1 / scale, y1 / scale, x2 / scale, y2 / scale)
                work.faces.append(self.embedder.prepare(rgb, local))
                work.boxes.append(tuple(float(v) for v in det.box))
                work.scores.append(float(det.score))

    def _embed(self, chunk: list[tuple[Work, Any]]) -> None:
        t0 = time.perf_counter()
        try:
            with self._forward_pass():
                vectors = self.embedder.embed([face for _, face in chunk])
        except Exception as exc:
            log.exception("embedding a batch of %d faces failed", len(chunk))
            for work in {id(w): w for w, _ in chunk}.values():
                self.ledger.fail(work, f"embedding failed: {type(exc).__name__}: {exc}")
            return
        self.stats.model_seconds += time.perf_counter() - t0
        self.stats.batches += 1
        self.stats.batch_faces += len(chunk)
        for (work, _), vec in zip(chunk, vectors):
            work.vectors.append(vec)

    def _announce(self, face_ids: list[int]) -> None:
        if face_ids and self.on_faces is not None:
            try:
                self.on_faces(face_ids)
            except Exception:
                log.exception("a listener for new faces failed")

    def store_all(self, works: list[Work]) -> list[int]:
        """Record finished images with their faces; returns the new face ids.

        One transaction for the whole micro-batch: a commit per image (two, before) cost the model
        thread ~1.7 ms each between forward passes, against ~0.3 ms per image batched. Each image
        is still all-or-nothing; if the batch fails, the images are retried one by one so one bad
        row cannot lose the others.
        """
        in_flight = self.ledger.in_flight
        works = [w for w in works if w.job.path in in_flight]  # not the failed ones
        if not works:
            return []
        t0 = time.perf_counter()
        recorded: list[tuple[Work, int, list[int]]] = []
        try:
            results = self.store.add_ingested([_row(w) for w in works])
            recorded = [(w, image_id, ids) for w, (image_id, ids) in zip(works, results)]
        except Exception:
            log.warning("recording %d images in one transaction failed; one by one now",
                        len(works), exc_info=True)
            recorded = []
            for work in works:
                try:
                    ((image_id, ids),) = self.store.add_ingested([_row(work)])
                    recorded.append((work, image_id, ids))
                except Exception as exc:
                    log.exception("could not record %s", work.job.path)
                    self.ledger.fail(work, f"could not record in the store: {exc}")
        self.stats.store_seconds += time.perf_counter() - t0
        self.ledger.recorded([(w, image_id) for w, image_id, _ in recorded])
        return [face_id for _, _, ids in recorded for face_id in ids]


def _row(work: Work) -> tuple:
    """The image and its faces, as ``Store.add_ingested`` takes them."""
    job = work.job
    return (job.path, job.inbox, work.sha256, work.size, job.mtime_ns,
            list(zip(work.boxes, work.scores, work.vectors)))


def _pixel_bytes(work: Work) -> int:
    """The pixels a Work holds; a photo small enough to be its own crop copy counts once."""
    crop = None if work.crop_rgb is work.rgb else work.crop_rgb
    return sum(a.nbytes for a in (work.rgb, crop, *work.faces) if hasattr(a, "nbytes"))
