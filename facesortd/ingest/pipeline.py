"""The ingest pipeline: settled files in, face vectors in the store out.

Stages, in order (this module is the small façade that wires them):
  1. ``submit``            intake: drop a path already in flight or already ingested unchanged
  2. pipeline_prepare.py   worker threads: hash, find duplicates, decode (and for aligned mode,
                           cut the face); or, with decoding processes (decode_pool.py), hash and
                           decode there, then find duplicates on the thread that drives the process
  3. pipeline_model.py     the one model thread: detect faces in batches, embed micro-batches of up
                           to ``batch_size`` faces or ``max_wait_ms``, record every image with its
                           faces (one store transaction per micro-batch: little model-thread time
                           between forward passes)
pipeline_ledger.py keeps the books both stages share: files in flight, content being ingested, and
how each file ends (recorded, duplicate, quarantined, failed).
Decoding runs in the workers ahead of the model, so the model does not wait on the disk. On a CPU
device the model's thread pool already uses every core, and a worker decoding in the middle of a
forward pass preempts one of its threads and stalls the others at the next barrier; there the
workers decode only while no forward pass runs ("gated"): the next batch is decoded on all cores
between two forward passes, which costs the model less than sharing cores during them.
A file that cannot be decoded is recorded with its reason and handed to ``set_aside`` (the app
wires in the library's journaled quarantine) to be moved to the quarantine folder.
All torch work (detector and embedder) happens on the model thread: one torch thread pool only.
On an accelerator the model thread feeds the device from Python and needs the GIL, which decode
threads hold for much of their work; there hashing and decoding run in worker processes instead
(``embedder.decode_processes``: auto = processes on an accelerator, threads on a CPU).
"""

from __future__ import annotations

import os
import queue
import sys
import threading
from typing import Any, Callable, Optional

from facesortd.config import Config
from facesortd.inbox.jobs import Job
from facesortd.ingest.ledger import Ledger, SetAside, Stats, Work
from facesortd.ingest.model_stage import ModelStage
from facesortd.ingest.prepare import Preparer
from facesortd.models.base import Embedder
from facesortd.store.database import Store

__all__ = ["Pipeline", "SetAside", "Stats", "Work", "decode_processes_for"]

_GPU_SWITCH_INTERVAL_S = 0.0002


class Pipeline:
    """Turns Jobs into stored faces; start(), submit(job), drain(), stop()."""

    def __init__(self, config: Config, store: Store, embedder: Embedder, detector: Any = None,
                 workers: Optional[int] = None, queue_size: int = 1024,
                 on_finished: Optional[Callable[[Job, str, Optional[str]], None]] = None,
                 on_faces: Optional[Callable[[list[int]], None]] = None, dry_run: bool = False,
                 decode_processes: Optional[int] = None, set_aside: Optional[SetAside] = None):
        self.config = config
        self.store = store
        self.embedder = embedder
        self.detector = detector
        self.on_finished = on_finished
        self.on_faces = on_faces   # called on the model thread with the ids of newly stored faces
        self.dry_run = dry_run     # run --dry-run: a broken file is recorded but not moved
        self.stats = Stats()
        # set_aside: where broken files go (Placer.quarantine); None: they stay, recorded
        self._ledger = Ledger(config, store, self.stats, self.submit, on_finished, dry_run,
                              set_aside)
        self._model = ModelStage(config, store, embedder, detector, self._ledger, self.stats,
                                 on_faces)
        self._prep = Preparer(config, store, embedder, self._ledger, self.stats,
                              self._model.hand_over, self._model.idle, queue_size)
        self._workers_n = workers   # None: chosen at start() for the device
        # None: embedder.decode_processes; 0: decode in threads; N: in N processes
        self._processes_n = decode_processes
        self._processes_started = 0
        self._started = False
        self._accepting = False

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> None:
        gated = _runs_on_cpu(self.embedder)
        processes = self._processes_n
        if processes is None:
            processes = decode_processes_for(self.config.embedder.decode_processes, gated)
        if processes:
            gated = False   # processes never wait for the model (asked for, or a GPU)
            self._prep.start_processes(processes)
            self._processes_started, self._workers_n = processes, 0
        elif self._workers_n is None:
            # CPU: the gated workers decode between forward passes, two cover both cores. GPU:
            # more threads decode, but past ~4 they fight the model thread for the GIL (measured on
            # an H200, 16 cores: 4 threads 1,010 images/s, 8 threads 775, 12 threads 787).
            self._workers_n = 2 if gated else max(2, min(4, (os.cpu_count() or 2) - 1))
        self._model.gated = gated
        if not gated and sys.getswitchinterval() > _GPU_SWITCH_INTERVAL_S:
            # The model thread feeds the GPU from Python, one GIL acquisition per layer; with the
            # default 5 ms switch interval it waits behind busy decoding threads at every layer.
            sys.setswitchinterval(_GPU_SWITCH_INTERVAL_S)
        self._accepting = True
        self._started = True
        self._prep.start_threads(self._workers_n)
        self._model.start()

    def threads(self) -> list[threading.Thread]:
        """The threads that must stay alive while the pipeline runs (for the supervisor)."""
        return self._model.threads() + self._prep.running_threads() if self._started else []

    def stop(self, timeout: float = 60.0) -> None:
        """Stop taking files, finish the ones already taken, and join the threads."""
        self._accepting = False
        if not self._started:
            return
        self._started = False
        self._prep.stop(timeout)
        self._model.stop(timeout)

    def drain(self, timeout: Optional[float] = None) -> bool:
        """Wait until every accepted file is finished; False on timeout."""
        return self._ledger.drain(timeout)

    def workers_description(self) -> str:
        """How decoding runs once started (benchmarks, status): N threads or N processes."""
        if self._processes_started:
            return f"{self._processes_started} processes"
        return f"{self._workers_n} threads" + (" (gated)" if self._model.gated else "")

    @property
    def queue_depth(self) -> int:
        return self._ledger.depth()

    # -- stage 1: intake -----------------------------------------------------------------------
    def submit(self, job: Job) -> bool:
        """Accept a settled file. False only when the queue is full (the caller retries later)."""
        if not self._accepting:
            return False
        if self._ledger.busy(job.path):
            return True
        if self.store.image_is_current(job.path, job.size, job.mtime_ns):
            self.stats.files_skipped += 1
            return True
        if job.kind != "photo":
            self._ledger.side_file(job)
            return True
        if not self._ledger.take(job.path):
            return True
        try:
            self._prep.intake.put_nowait(job)
        except queue.Full:
            self._ledger.finish(job, None)
            return False
        return True


def decode_processes_for(setting: object, on_cpu: bool) -> int:
    """``embedder.decode_processes`` as a number: auto is threads (0) on a CPU, where the model
    already uses every core, and on an accelerator every usable core but 4 (the model thread, the
    links to the processes, the store), at least 2. Measured on an H200 with 16 cores, aligned
    mode: 6 processes 3,977 images/s, 9 processes 4,678, 12 processes 6,064."""
    if setting != "auto":
        return int(setting)  # type: ignore[call-overload]
    if on_cpu:
        return 0
    from facesortd.models.torchsetup import usable_cores

    return max(2, usable_cores() - 4)


def _runs_on_cpu(embedder: Embedder) -> bool:
    try:
        return str(embedder.describe().get("device", "cpu")).startswith("cpu")
    except Exception:
        return True
