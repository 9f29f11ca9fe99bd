"""Wires the service together: lock, store, model, pipeline, watcher; runs once or until SIGTERM."""

from __future__ import annotations

import logging
import signal
import threading
import time
from typing import Any, Optional

from facesortd.app.progress import Progress
from facesortd.app.state import State, open_state
from facesortd.app.supervisor import Supervisor
from facesortd.config import Config, load_config
from facesortd.errors import ConfigError, FacesortdError
from facesortd.inbox.jobs import Job
from facesortd.inbox.watcher import Watcher
from facesortd.ingest.pipeline import Pipeline
from facesortd.models.embedders import load_embedder, resolve_device
from facesortd.store.database import Store
from facesortd.store.lock import StateLock
from facesortd.telemetry import Telemetry, TimedEmbedder

log = logging.getLogger("facesortd")


def make_detector(config: Config, device: Any):
    """The MTCNN detector, only when some inbox is in detect mode (it costs memory and a load)."""
    if not any(inbox.mode == "detect" for inbox in config.inboxes):
        return None
    from facesortd.models.detect import FaceDetector
    detector = FaceDetector(config.detector, device=device)
    detector.load()
    return detector


class Daemon:
    """One running facesortd: ``run_once()`` for batch use, ``run_forever()`` for the service."""

    def __init__(self, config: Config, dry_run: bool = False):
        self.config = config
        self.dry_run = dry_run   # run --dry-run: plan file operations, change nothing on disk
        self.placer = None       # Placer (placer.py): the library follows the store
        self.placer_loop = None
        self.planned: list = []  # the operations of the last sync (planned, in a dry run)
        self._stop = threading.Event()
        self._reload = threading.Event()
        self.changed = threading.Event()   # set when faces or identities changed: placement follows
        self.state: Optional[State] = None   # the open state folder (app.state.open_state)
        self.lock: Optional[StateLock] = None
        self.store: Optional[Store] = None
        self.pipeline: Optional[Pipeline] = None
        self.watcher: Optional[Watcher] = None
        self.library_watcher = None   # LibraryWatcher (library/watch.py), with the placer loop
        self.identities = None   # IdentityService (identities.py): faces to people
        self._recluster = threading.Event()   # SIGUSR1 (facesortd recluster): recluster now
        self.telemetry = Telemetry()   # files by outcome, batches, queue: /metrics and status

    def open(self) -> None:
        """Take the lock, open the store, load the model (fails fast with what to do)."""
        cfg = self.config
        loaded: list = []

        def load_model(store_model: Optional[str]) -> str:
            # embedder.name: auto keeps the store's model, so the store opens first
            embedder, choice = load_embedder(cfg.embedder, store_model)
            loaded.extend((embedder, choice))
            return embedder.name

        self.state = open_state(cfg, replay=not self.dry_run,   # a dry run changes nothing on disk
                                choose_model=load_model, on_changed=self.notify_changed)
        self.lock, self.store = self.state.lock, self.state.store
        self.placer, self.identities = self.state.placer, self.state.identities
        try:
            embedder, choice = loaded
            self.telemetry.embedder = {"name": embedder.name, "model_id": embedder.model_id,
                                       "chosen": choice.reason}
            self.store.bind_model(embedder.model_id, embedder.dim)
            detector = make_detector(cfg, resolve_device(cfg.embedder.device))
            log.info("model %s on %s", embedder.model_id, embedder.describe())
            embedder = TimedEmbedder(embedder, self.telemetry)  # micro-batch size and latency
            self.pipeline = Pipeline(cfg, self.store, embedder, detector,
                                     on_finished=self._on_finished, on_faces=self._on_faces,
                                     set_aside=self.placer.quarantine,   # journaled
                                     dry_run=self.dry_run)   # a dry run quarantines nothing either
            self.watcher = Watcher(cfg.inboxes, cfg.watch, self.pipeline.submit,
                                   exclude=[cfg.library, cfg.state_dir])
        except BaseException:
            self.close()
            raise

    def _on_faces(self, face_ids: list[int]) -> None:
        """New faces are in the store (called on the model thread: hand work off, return fast)."""
        if self.identities is not None:
            self.identities.submit(face_ids)
        self.notify_changed()

    def notify_changed(self) -> None:
        """Something that decides where files belong changed (faces, identities, corrections)."""
        self.changed.set()

    def _on_finished(self, job: Job, outcome: str, reason: Optional[str]) -> None:
        self.telemetry.file_finished(outcome, reason)
        # A file that left the inbox (quarantined, gone) may come back with the same stat later.
        if outcome in ("error", "gone") and self.watcher is not None:
            self.watcher.forget(job.path)
        # no model work, so no new faces to announce it: an other file, a companion come after
        # its photo, a RAW without a readable preview (no face) are for the placer now
        if outcome in ("other", "companion") or (outcome == "noface" and reason):
            self.notify_changed()

    def start(self) -> None:
        self.identities.start()
        self.pipeline.start()
        self.watcher.start()

    def close(self) -> None:
        """Stop taking files, finish what was taken, close the store, release the lock."""
        if self.library_watcher is not None:
            self.library_watcher.stop()
            self.library_watcher = None
        if self.watcher is not None:
            self.watcher.stop()
        if self.pipeline is not None:
            self.pipeline.stop()
        if self.state is not None:   # after the pipeline: its last faces get assigned, then placed
            self.state.close()
            self.state = self.store = self.identities = self.placer_loop = None

    def run_once(self, timeout: Optional[float] = None) -> dict:
        """Ingest everything present in the inboxes, then return the store's counts."""
        self.open()
        progress = Progress(self.progress_counts)  # a terminal only
        try:
            self.start()
            progress.start()
            deadline = None if timeout is None else time.monotonic() + timeout
            while not self._stop.is_set():
                if self.watcher.wait_idle(0.2) and self.pipeline.drain(0.2) \
                        and self.watcher.wait_idle(0):
                    break
                if deadline is not None and time.monotonic() > deadline:
                    raise FacesortdError("run --once did not finish in time")
            if not self._stop.is_set():   # run --once = ingest, assign, recluster
                # join the model thread first: every stored batch has then been handed to the
                # identity service, so none is assigned after the files were placed
                self.pipeline.stop()
                self.identities.drain()
                self.identities.recluster(reason="run --once")
            if not self._stop.is_set():   # ... and place: last, after every identity change,
                # with a scan of the library first: what a person moved, renamed or deleted there
                self.planned = self.placer.sync(dry_run=self.dry_run, scan=True)
            return self.store.counts()
        finally:
            progress.stop()
            self.close()

    def run_forever(self) -> None:
        """Run until SIGTERM/SIGINT; SIGHUP reloads the config (the old one stays if invalid)."""
        self.open()
        supervisor = None
        try:
            self.start()
            from facesortd.library.loop import PlacerLoop
            self.placer_loop = PlacerLoop(self.placer, self.changed, debounce=1.0,
                                          dry_run=self.dry_run,
                                          rescan_interval=self.config.watch.rescan_interval_s)
            self.state.placer_loop = self.placer_loop   # stopped by state.close(), in order
            self.placer_loop.start()
            self.library_watcher = self._watch_library()
            # web page, sd_notify READY/STATUS/WATCHDOG, health of every part, status.json
            supervisor = Supervisor(
                self.config, self.telemetry,
                [self.pipeline, self.watcher, self.identities, self.placer_loop,
                 self.library_watcher],
                store=self.store, queue=self.queue_counts,
                last_recluster=lambda: self.identities.last_counts, web_app=self._web_app)
            supervisor.start()
            log.info("facesortd running: watching %s", ", ".join(str(i.path) for i in self.config.inboxes))
            while not self._stop.wait(supervisor.wait_s):
                supervisor.tick()
                if self._recluster.is_set():
                    self._recluster.clear()
                    self.identities.request_recluster()
                if self._reload.is_set():
                    self._reload.clear()
                    supervisor.reloading()
                    self.reload()
                    supervisor.reloaded(self.config)
        finally:
            if supervisor is not None:
                supervisor.stopping()
            log.info("stopping: finishing the files already taken")
            if supervisor is not None:
                supervisor.close()
            self.close()
            log.info("stopped")

    def _watch_library(self):
        """The library watcher (library/watch.py), feeding the placer loop the paths a person
        changed there; started now (a dry run watches too: it only plans)."""
        from facesortd.library.watch import LibraryWatcher

        loop = self.placer_loop
        watcher = LibraryWatcher(self.config.library, self.config.watch, loop.touch,
                                 loop.request_scan, loop.unwatched, exclude=[self.config.state_dir])
        watcher.start()
        return watcher

    def _web_app(self):
        """The review app on this daemon's store: corrections made on the page make the files
        follow, and a recluster is queued on the identity thread."""
        from facesortd.web import Control, create_app

        control = Control(changed=self.notify_changed,
                          request_recluster=self.identities.request_recluster,
                          faces_added=self.identities.submit)
        return create_app(self.config, self.store, self.telemetry, control=control)

    def queue_counts(self) -> tuple[int, int]:
        """(files in the pipeline, files the watcher is still settling)."""
        depth = self.pipeline.queue_depth if self.pipeline is not None else 0
        pending = self.watcher.pending_count() if self.watcher is not None else 0
        return depth, pending

    def progress_counts(self) -> tuple[int, int]:
        """(files done, files known) for the ``run --once`` progress line."""
        done = self.telemetry.files_finished()
        if self.pipeline is not None:
            done += self.pipeline.stats.files_skipped
        depth, pending = self.queue_counts()
        return done, done + depth + pending

    def reload(self) -> None:
        source = self.config.source
        try:
            new = load_config(source)
        except ConfigError as exc:
            log.error("config reload refused, the old config stays in force:\n%s", exc)
            return
        self.watcher.set_inboxes(new.inboxes)
        old, self.config = self.config, new
        if self.placer is not None:
            self.placer.config = new
            self.notify_changed()   # a new layout: files follow
        if self.library_watcher is not None and (old.library, old.watch.polling) != \
                (new.library, new.watch.polling):
            self.library_watcher.stop()   # another library: watch it instead, and scan it
            self.library_watcher = self._watch_library()
        if self.placer_loop is not None:
            self.placer_loop.rescan_interval = new.watch.rescan_interval_s
            if self.library_watcher is not None and self.library_watcher.given_up:
                self.placer_loop.unwatched()   # still unwatched: keep a rescan interval
        log.info("config reloaded from %s", source)

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, lambda *_: self._stop.set())
        signal.signal(signal.SIGINT, lambda *_: self._stop.set())
        signal.signal(signal.SIGHUP, lambda *_: self._reload.set())
        signal.signal(signal.SIGUSR1, lambda *_: self._recluster.set())   # facesortd recluster
