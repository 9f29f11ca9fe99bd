"""Hashing and decoding in worker processes, for devices where the model needs the GIL to itself.

On a GPU the model is fast enough that the pipeline's Python work becomes the limit, and decode
threads compete with the model thread for the GIL. Here each decoding process is a fresh Python
(decode_worker.py: never forked from a process that holds CUDA, never importing torch, so no
second torch thread pool) that reads chunks of requests from a socket, and answers with each
file's SHA-256, size and decoded uint8 pixels, or the reason it is broken. The pixels go through
shared memory (decode_arena.py), the rest through the socket. One thread in
this process drives each worker process, with up to two chunks in flight so the process never
waits for it; it hands each chunk's answers to ``deliver`` in the order the jobs were taken.

A file that crashes its decoding process (a decoder bug, an out-of-memory kill) costs only that
file: the process is replaced, the files of the lost chunks are decoded again one per request,
and the one that crashes a process alone is reported broken. When no new process starts (no
interpreter, too many processes, one that dies before it is ready), nothing waits on it: those
files are decoded in this process, the other processes carry on with the work, and a start is
tried again after a pause (1 s, doubling up to a minute); with no process left at all, the link
threads decode here until one starts. (A file that crashes the decoder would crash this process
too; systemd restarts the daemon and the file, still in its inbox, meets a process next time.)
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from typing import Any, Callable, Optional

from facesortd.errors import BadImage
from facesortd.ingest.worker import IN_FLIGHT as _IN_FLIGHT
from facesortd.ingest.worker import Request, Result, Worker, decode_request, hash_and_decode

__all__ = ["CHUNK", "DecodePool", "Request", "Result", "decode_request", "hash_and_decode"]

log = logging.getLogger("facesortd.decode_pool")

CHUNK = 16            # files per request: amortizes the round trip, keeps latency low


class DecodePool:
    """``processes`` decoding processes fed from ``intake``; each link thread stops after it
    takes one ``stop`` item. ``request(job)`` says how to decode a job, ``deliver(jobs, results)``
    takes the answers for a chunk, ``spent(seconds)`` the processes' busy time."""

    def __init__(self, processes: int, intake: queue.Queue, stop: object,
                 request: Callable[[Any], Request],
                 deliver: Callable[[list[Any], list[Result]], None],
                 spent: Callable[[float], None], chunk: int = CHUNK):
        if processes < 1:
            raise ValueError(f"processes must be at least 1, not {processes}")
        self.processes = processes
        self._intake, self._stop = intake, stop
        self._request, self._deliver, self._spent = request, deliver, spent
        self._chunk = chunk
        self._workers: list[Optional[Worker]] = []   # None: the slot's process did not start
        self._threads: list[threading.Thread] = []
        self._retry_at = [0.0] * processes            # when a slot may try to start one again
        self._failed_starts = [0] * processes
        self._closing = threading.Event()
        self._lock = threading.Lock()
        self.decoded_here = 0   # files decoded in this process because no process could start

    def start(self) -> None:
        """Start the processes (in parallel: each takes ~0.2 s to import numpy and Pillow). A
        slot whose process fails to start is tried again later, as after a crash: the daemon
        starts anyway, decoding with the processes it has, or in itself with none."""
        failed: list[tuple[int, Exception]] = []
        try:
            for i in range(self.processes):
                try:
                    self._workers.append(Worker(i))
                except Exception as exc:
                    self._workers.append(None)
                    failed.append((i, exc))
            for i, w in enumerate(self._workers):
                try:
                    if w is not None:
                        w.wait_ready()
                except Exception as exc:
                    self._workers[i] = None
                    failed.append((i, exc))
        except BaseException:
            self._close_workers(5.0)
            raise
        for i, exc in failed:   # after all started, so the log says how many others there are
            self._start_failed(i, exc)
        for i in range(self.processes):
            t = threading.Thread(target=self._link, args=(i,), name=f"facesortd-decode-{i}")
            t.start()
            self._threads.append(t)

    def threads(self) -> list[threading.Thread]:
        """The link threads, one per decoding process (alive while the pool runs)."""
        return list(self._threads)

    #: Pause before trying again to start a process that failed to start, doubled per failure.
    RESTART_DELAY_S = 1.0
    RESTART_DELAY_MAX_S = 60.0

    def join(self, timeout: float = 60.0) -> None:
        """Wait for the link threads (after one ``stop`` item each), then end the processes."""
        self._closing.set()   # links without a process take no ``stop`` item: they end now
        for t in self._threads:
            t.join(timeout)
        self._threads.clear()
        self._close_workers(timeout)

    def pids(self) -> list[int]:
        """The running decoding processes (fewer than ``processes`` while some failed to start)."""
        return [w.proc.pid for w in self._workers if w is not None]

    def _close_workers(self, timeout: float) -> None:
        for w in self._workers:
            if w is None:
                continue
            code = w.close(timeout)
            if code:
                log.warning("decoding process %d exited with code %s", w.proc.pid, code)
        self._workers.clear()

    # -- one link thread per process ------------------------------------------------------------
    def _link(self, index: int) -> None:
        # Chunks in flight with their arena regions; the process answers in order, so a region
        # is reused only after the chunk that had it was received (and its pixels copied out).
        sent: deque[tuple[list[Any], int]] = deque()
        stopping = False
        seq = 0
        while True:
            if not sent and self._workers[index] is None:
                if stopping or (turn := self._without_process(index)) is None:
                    return
                jobs, stopping = turn
                if self._workers[index] is None:
                    continue
                if jobs:
                    region, seq = seq % _IN_FLIGHT, seq + 1
                    sent.append((jobs, region))
                    self._send(index, region, jobs)
            while not stopping and len(sent) < _IN_FLIGHT:
                jobs, stopping = self._take(block=not sent)
                if not jobs:
                    break
                region, seq = seq % _IN_FLIGHT, seq + 1
                sent.append((jobs, region))
                if not self._send(index, region, jobs):
                    break
            if not sent:
                if stopping:
                    return
                continue
            jobs, region = sent.popleft()
            try:
                results, seconds = self._workers[index].recv(region)
            except (EOFError, OSError):
                lost = [jobs, *(chunk for chunk, _ in sent)]
                sent.clear()
                seq = 0
                self._recover(index, [j for chunk in lost for j in chunk])
                continue
            self._spent(seconds)
            self._deliver(jobs, results)

    def _without_process(self, index: int) -> Optional[tuple[list[Any], bool]]:
        """A turn of a link whose process failed to start: start one when due, else leave the
        work to the other processes or, with none left, decode a chunk here. Returns jobs for a
        new process and whether a ``stop`` item came; None when the pool is closing."""
        if self._replace(index) is not None:
            return [], False
        if any(w is not None for w in self._workers):
            return None if self._closing.wait(self._until_retry(index)) else ([], False)
        jobs, stopping = self._take(block=True)
        if jobs and self._replace(index) is None:
            self._deliver(jobs, self._decode_here(jobs))
            return [], stopping
        return jobs, stopping

    def _take(self, block: bool) -> tuple[list[Any], bool]:
        """Up to one chunk of jobs: waits for the first only when ``block``."""
        jobs: list[Any] = []
        try:
            item = self._intake.get() if block else self._intake.get_nowait()
            while item is not self._stop:
                jobs.append(item)
                if len(jobs) >= self._chunk:
                    return jobs, False
                item = self._intake.get_nowait()
            return jobs, True
        except queue.Empty:
            return jobs, False

    def _send(self, index: int, region: int, jobs: list[Any]) -> bool:
        try:
            self._workers[index].send(region, [self._request(job) for job in jobs])
            return True
        except OSError:
            return False   # the process is gone: the receive that follows finds out

    def _recover(self, index: int, jobs: list[Any]) -> None:
        """The process died with ``jobs`` in flight: replace it and decode them one at a time."""
        dead, self._workers[index] = self._workers[index], None
        code = dead.close(5.0)
        log.error("decoding process %d died (exit code %s) with %d file(s) in flight; "
                  "decoding them again one by one", dead.proc.pid, code, len(jobs))
        for job in jobs:
            self._deliver([job], [self._retry(index, job)])

    def _retry(self, index: int, job: Any) -> Result:
        """One file of a lost chunk, alone, so that one which crashes a process is known: in this
        slot's process (started again as needed), or in this process when none starts."""
        worker = self._workers[index] or self._replace(index)
        if worker is None:
            # Named first: should this file crash the decoder, the log says which one it was.
            log.warning("decoding %s in this process: no decoding process could start", job)
            return self._decode_here([job])[0]
        try:
            worker.send(0, [self._request(job)])
            (result,), seconds = worker.recv(0)
        except (EOFError, OSError):
            self._workers[index] = None
            code = worker.close(5.0)
            return BadImage(f"decoding it crashed the decoding process (exit code {code})")
        self._spent(seconds)
        return result

    def _replace(self, index: int) -> Optional[Worker]:
        """A new process for slot ``index``; None when it fails to start, or failed lately."""
        if time.monotonic() < self._retry_at[index]:
            return None
        try:
            worker = self._fresh(index)
        except Exception as exc:
            self._start_failed(index, exc)
            return None
        if self._failed_starts[index]:
            log.info("decoding process %d started after %d failed tries", worker.proc.pid,
                     self._failed_starts[index])
        self._failed_starts[index], self._retry_at[index] = 0, 0.0
        self._workers[index] = worker
        return worker

    def _start_failed(self, index: int, exc: Exception) -> None:
        """Log a process that did not start and when slot ``index`` tries again (doubling)."""
        failed = self._failed_starts[index] = self._failed_starts[index] + 1
        delay = min(self.RESTART_DELAY_MAX_S, self.RESTART_DELAY_S * 2 ** (failed - 1))
        self._retry_at[index] = time.monotonic() + delay
        others = sum(w is not None for w in self._workers)
        log.error("could not start a decoding process (%s: %s); %s; trying again in %.1f s",
                  type(exc).__name__, exc,
                  f"new work goes to the {others} other process(es)" if others
                  else "decoding in this process meanwhile", delay)

    def _until_retry(self, index: int) -> float:
        """How long a slot without a process waits before it looks again (at most a second)."""
        return min(1.0, max(0.05, self._retry_at[index] - time.monotonic()))

    def _decode_here(self, jobs: list[Any]) -> list[Result]:
        """Decode in this process, on the link thread: slower (the GIL), but nothing waits."""
        t0 = time.perf_counter()
        results = [hash_and_decode(self._request(job)) for job in jobs]
        self._spent(time.perf_counter() - t0)
        with self._lock:
            self.decoded_here += len(jobs)
        return results

    @staticmethod
    def _fresh(index: int) -> Worker:
        worker = Worker(index)
        worker.wait_ready()
        return worker
