"""Service telemetry: counters, gauges and histograms, exposed in the Prometheus text format.

The daemon feeds it from the pipeline's ``on_finished`` hook (files by outcome, errors by kind), a
timing wrapper around the embedder (micro-batch size and latency), and a tick in its main loop
(queue depth, images/s). Figures that live in the store (images by status, faces, identities) are
read at scrape time. ``snapshot()`` is the same data as a dict: the daemon writes it to
``<state_dir>/status.json`` for ``facesortd status``.

The metrics are prometheus_client's, in a registry of each ``Telemetry``'s own (never the
library's global one, so tests and two apps in one process do not collide); ``render()`` is
``generate_latest`` of that registry. The small wrappers below add what the daemon reads back
(``get``, ``items``, a histogram's ``count`` and ``sum``) and leave out prometheus_client's
``<name>_created`` series: those would be new series on every dashboard, and the library only
turns them off for the whole process.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence

import prometheus_client as prom
from prometheus_client.parser import text_string_to_metric_families

SNAPSHOT_NAME = "status.json"
#: Outcomes the pipeline reports through ``on_finished``.
OUTCOMES = ("done", "noface", "duplicate", "error", "gone")
ERROR_KINDS = ("bad_image", "model", "store", "unexpected")
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
BATCH_SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
RATE_WINDOW_S = 30.0
#: The text format ``generate_latest`` writes (prometheus_client's CONTENT_TYPE_LATEST names 1.0.0).
CONTENT_TYPE = prom.CONTENT_TYPE_PLAIN_0_0_4


def error_kind(reason: str) -> str:
    """The kind of a recorded file error, from the reason the pipeline stored with it."""
    reason = (reason or "").lower()
    if reason.startswith(("embedding failed", "face detection failed")):
        return "model"
    if reason.startswith("could not record"):
        return "store"
    if reason.startswith("unexpected error"):
        return "unexpected"
    return "bad_image"


class _Metric:
    """One prometheus_client metric, registered through this wrapper (a collector of its own)."""

    def __init__(self, metric: Any, name: str, labels: Sequence[str]):
        self._metric = metric
        self.name, self.labels = name, tuple(labels)

    def _child(self, labels: dict[str, str]) -> Any:
        self._check(labels)
        return self._metric.labels(**labels) if self.labels else self._metric

    def _check(self, labels: dict[str, str]) -> None:
        if set(labels) != set(self.labels):
            raise ValueError(f"{self.name} takes labels {self.labels}, got {tuple(labels)}")

    def _samples(self, name: str) -> Iterator[Any]:
        for family in self._metric.collect():
            yield from (s for s in family.samples if s.name == name)

    def collect(self) -> Iterator[Any]:
        for family in self._metric.collect():   # a fresh family each call: safe to trim
            family.samples = [s for s in family.samples if not s.name.endswith("_created")]
            yield family

    def describe(self) -> Iterator[Any]:
        return iter(self._metric.describe())

    def render(self) -> list[str]:
        """This metric alone in the text format, line by line."""
        registry = prom.CollectorRegistry()
        registry.register(self)
        return prom.generate_latest(registry).decode("utf-8").splitlines()


class Counter(_Metric):
    """A value that only goes up (``inc``); resets only when the process restarts."""

    _type = prom.Counter

    def __init__(self, name: str, help_text: str, labels: Sequence[str] = ()):
        super().__init__(self._type(name, help_text, tuple(labels), registry=None), name, labels)

    def inc(self, amount: float = 1, **labels: str) -> None:
        self._child(labels).inc(amount)

    def get(self, **labels: str) -> float:
        self._check(labels)
        want = {k: str(v) for k, v in labels.items()}
        return next((s.value for s in self._samples(self.name) if s.labels == want), 0)

    def items(self) -> list[tuple[tuple[str, ...], float]]:
        """``[((label values...), value), ...]`` sorted by label values."""
        return sorted((tuple(s.labels[k] for k in self.labels), s.value)
                      for s in self._samples(self.name))


class Gauge(Counter):
    """A value that goes up and down (``set``)."""

    _type = prom.Gauge

    def set(self, value: float, **labels: str) -> None:
        self._child(labels).set(value)


class Histogram(_Metric):
    """Observations counted into cumulative buckets, with their sum and count (no labels)."""

    def __init__(self, name: str, help_text: str, buckets: Sequence[float]):
        self.buckets = tuple(sorted(buckets))
        super().__init__(prom.Histogram(name, help_text, buckets=self.buckets, registry=None),
                         name, ())

    def observe(self, value: float) -> None:
        self._metric.observe(value)

    @property
    def count(self) -> int:
        return int(next(self._samples(self.name + "_count")).value)

    @property
    def sum(self) -> float:
        return next(self._samples(self.name + "_sum")).value


class Telemetry:
    """The facesortd metrics. Thread-safe: pipeline, main loop and web threads all touch it."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self.started = clock()
        self.started_unix = time.time()
        self.files = Counter("facesortd_files_total", "Files finished since start, by outcome.", ["outcome"])
        self.errors = Counter("facesortd_errors_total", "Files that failed since start, by kind of error.", ["kind"])
        self.faces = Counter("facesortd_faces_ingested_total", "Faces embedded and stored since start.")
        self.reclusters = Counter("facesortd_reclusters_total", "Full reclusters run since start.")
        self.batch_faces = Histogram("facesortd_batch_faces", "Faces per embedder micro-batch.",
                                     BATCH_SIZE_BUCKETS)
        self.batch_seconds = Histogram("facesortd_batch_seconds", "Seconds per embedder micro-batch.",
                                       BATCH_SECONDS_BUCKETS)
        self.queue_depth = Gauge("facesortd_queue_depth", "Files taken by the pipeline, not finished yet.")
        self.pending = Gauge("facesortd_watcher_pending", "Files seen in the inboxes, settling or waiting for room in the queue.")
        self.rate = Gauge("facesortd_images_per_second", f"Files finished per second over the last {RATE_WINDOW_S:.0f} s.")
        self.store_images = Gauge("facesortd_store_images", "Images in the store, by status.", ["status"])
        self.store_faces = Gauge("facesortd_store_faces", "Faces in the store (not rejected).")
        self.store_unassigned = Gauge("facesortd_store_faces_unassigned", "Faces in the store with no identity.")
        self.store_identities = Gauge("facesortd_store_identities", "Identities (people) in the store.")
        self.store_files = Gauge("facesortd_store_files", "Placed photos that have companions (groups), "
                                 "their companion files (companions), and other files (other).", ["kind"])
        self.uptime = Gauge("facesortd_uptime_seconds", "Seconds since the daemon started.")
        self.up = Gauge("facesortd_healthy", "1 while every daemon thread runs and the pipeline makes progress.")
        self.up.set(1)
        self.unhealthy_reason: Optional[str] = None  # set by the service's health check
        self.embedder: Optional[dict] = None   # name, model_id, why (set by the daemon at load)
        for outcome in OUTCOMES:
            self.files.inc(0, outcome=outcome)
        for kind in ERROR_KINDS:
            self.errors.inc(0, kind=kind)
        self._samples: deque[tuple[float, float]] = deque()  # (time, files finished) for the rate
        self._store_counts: Optional[dict] = None
        self._store_read_at = -math.inf
        self._lock = threading.Lock()
        self.last_progress = self.started
        self.registry = prom.CollectorRegistry()   # this Telemetry's own, never the global one
        for metric in self.metrics():
            self.registry.register(metric)

    # -- feeding ---------------------------------------------------------------------------------
    def file_finished(self, outcome: str, error_reason: Optional[str] = None) -> None:
        self.files.inc(outcome=outcome)
        if outcome == "error":
            self.errors.inc(kind=error_kind(error_reason or ""))
        self.last_progress = self._clock()

    def batch(self, faces: int, seconds: float) -> None:
        self.batch_faces.observe(faces)
        self.batch_seconds.observe(seconds)
        self.faces.inc(faces)
        self.last_progress = self._clock()

    def tick(self, queue_depth: int, pending: int) -> None:
        """Called every second or so by the main loop: gauges and the images/s window."""
        now = self._clock()
        self.queue_depth.set(queue_depth)
        self.pending.set(pending)
        finished = self.files_finished()
        with self._lock:
            self._samples.append((now, finished))
            while len(self._samples) > 2 and now - self._samples[1][0] >= RATE_WINDOW_S:
                self._samples.popleft()
            t0, n0 = self._samples[0]
        self.rate.set(round((finished - n0) / (now - t0), 3) if now > t0 else 0.0)

    def files_finished(self) -> int:
        return int(sum(v for _, v in self.files.items()))

    def read_store(self, store: Any, max_age_s: float = 2.0) -> Optional[dict]:
        """Store counts for the gauges, read at most every ``max_age_s`` (scrapes may be frequent)."""
        now = self._clock()
        with self._lock:
            if now - self._store_read_at < max_age_s:
                return self._store_counts
            self._store_read_at = now
        try:
            counts = store.counts()
        except Exception:
            return self._store_counts
        for status, n in counts.get("images", {}).items():
            self.store_images.set(n, status=status)
        self.store_faces.set(counts.get("faces", 0))
        self.store_unassigned.set(counts.get("faces_unassigned", 0))
        self.store_identities.set(counts.get("identities", 0))
        for kind, n in counts.get("files", {}).items():
            self.store_files.set(n, kind=kind)
        with self._lock:
            self._store_counts = counts
        return counts

    # -- reading ---------------------------------------------------------------------------------
    def metrics(self) -> list[_Metric]:
        return [self.files, self.errors, self.faces, self.reclusters, self.batch_faces,
                self.batch_seconds, self.queue_depth, self.pending, self.rate, self.store_images,
                self.store_faces, self.store_unassigned, self.store_identities, self.store_files,
                self.uptime, self.up]

    def render(self, store: Any = None) -> str:
        """The Prometheus text exposition format (version 0.0.4)."""
        if store is not None:
            self.read_store(store)
        self.uptime.set(round(self._clock() - self.started, 3))
        return prom.generate_latest(self.registry).decode("utf-8")

    def snapshot(self) -> dict:
        """The live figures as plain data (for status.json and STATUS= lines)."""
        files = {k[0]: int(v) for k, v in self.files.items()}
        return {
            "pid": os.getpid(),
            "started_unix": round(self.started_unix, 3),
            "updated_unix": round(time.time(), 3),
            "uptime_s": round(self._clock() - self.started, 1),
            "files": {o: files.get(o, 0) for o in OUTCOMES},
            "errors": {k[0]: int(v) for k, v in self.errors.items()},
            "faces_ingested": int(self.faces.get()),
            "reclusters": int(self.reclusters.get()),
            "queue_depth": int(self.queue_depth.get()),
            "watcher_pending": int(self.pending.get()),
            "images_per_s": self.rate.get(),
            "batches": self.batch_faces.count,
            "batch_faces_mean": round(self.batch_faces.sum / self.batch_faces.count, 2)
            if self.batch_faces.count else None,
            "batch_seconds_mean": round(self.batch_seconds.sum / self.batch_seconds.count, 4)
            if self.batch_seconds.count else None,
            "healthy": bool(self.up.get()),
            "embedder": self.embedder,
        }

    def status_line(self, counts: Optional[dict] = None) -> str:
        """One short line for systemd's STATUS= (``systemctl status`` shows it)."""
        snap = self.snapshot()
        files = snap["files"]
        line = (f"queue {snap['queue_depth']}, pending {snap['watcher_pending']}, "
                f"{snap['images_per_s']:.1f} images/s; since start: {files['done']} with faces, "
                f"{files['noface']} no face, {files['duplicate']} duplicate, {files['error']} error")
        if counts:
            line += f"; store: {counts.get('faces', 0)} faces, {counts.get('identities', 0)} people"
        return line

    def write_snapshot(self, state_dir: Path) -> None:
        """Atomically replace ``<state_dir>/status.json`` (best effort: a full disk is logged elsewhere)."""
        path = Path(state_dir) / SNAPSHOT_NAME
        tmp = path.with_name(f".{SNAPSHOT_NAME}.{os.getpid()}.tmp")
        try:
            tmp.write_text(json.dumps(self.snapshot(), sort_keys=True))
            os.replace(tmp, path)
        except OSError:
            try:
                tmp.unlink()
            except OSError:
                pass


def read_snapshot(state_dir: Path, max_age_s: float = 30.0) -> Optional[dict]:
    """The running daemon's last snapshot, or None when none is running (stale or dead pid)."""
    try:
        snap = json.loads((Path(state_dir) / SNAPSHOT_NAME).read_text())
        pid = int(snap["pid"])
        os.kill(pid, 0)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if time.time() - float(snap.get("updated_unix", 0)) > max_age_s:
        return None
    return snap


def format_snapshot(snap: Optional[dict]) -> str:
    """The daemon's live figures as ``facesortd status`` prints them."""
    if snap is None:
        return f"{'daemon':>16}: not running\n"
    rows = [("daemon", f"running, pid {snap['pid']}, up {snap['uptime_s']:.0f} s"
                       + ("" if snap.get("healthy", True) else ", UNHEALTHY")),
            ("queue", f"{snap['queue_depth']} in the pipeline, {snap['watcher_pending']} settling"),
            ("images/s", f"{snap['images_per_s']:.1f}"),
            ("files (run)", ", ".join(f"{k} {v}" for k, v in snap["files"].items())),
            ("errors (run)", ", ".join(f"{k} {v}" for k, v in snap["errors"].items() if v) or "none"),
            ("batches", f"{snap['batches']}, mean {snap['batch_faces_mean'] or 0} faces, "
                        f"{1000 * (snap['batch_seconds_mean'] or 0):.0f} ms"),
            ("reclusters", str(snap["reclusters"]))]
    if snap.get("embedder"):
        emb = snap["embedder"]
        rows.insert(1, ("model (run)", f"{emb['model_id']} ({emb['chosen']})"))
    return "".join(f"{k:>16}: {v}\n" for k, v in rows)


class TimedEmbedder:
    """Wraps an embedder so each micro-batch is measured; everything else passes through.

    The pipeline calls ``embed`` once per micro-batch on its model thread; wrapping it here keeps
    the measurement out of the pipeline's inner loop.
    """

    def __init__(self, inner: Any, telemetry: Telemetry):
        self._inner = inner
        self._telemetry = telemetry

    def embed(self, faces: Sequence[Any]):
        t0 = time.perf_counter()
        out = self._inner.embed(faces)
        self._telemetry.batch(len(faces), time.perf_counter() - t0)
        return out

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def parse_prometheus(text: str) -> dict[str, float]:
    """``{'name{labels}': value}`` from exposition text (prometheus_client's parser), for tests
    and `doctor`-style checks; labels are written as the text format writes them."""
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{_escape(v)}"' for k, v in sample.labels.items())
            out[sample.name + (f"{{{labels}}}" if labels else "")] = sample.value
    return out


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


__all__: Iterable[str] = ["CONTENT_TYPE", "Counter", "Gauge", "Histogram", "Telemetry", "TimedEmbedder",
                          "error_kind", "parse_prometheus", "read_snapshot"]
