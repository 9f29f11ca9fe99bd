"""One decoding process: what runs in it (``python -m facesortd.ingest.worker FD ARENA_FD``) and
the handle the pool keeps on it (decode_pool.py drives these).

The process is a fresh Python, never forked from one that holds CUDA and never importing torch:
it reads chunks of requests from its socket and answers with each file's SHA-256, size and
decoded uint8 pixels (through shared memory, decode_arena.py, where they fit), or the reason the
file is broken. The decoding threads use the same ``decode_request``, so both give equal pixels.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Optional, Union

import numpy as np

from facesortd.errors import BadImage
from facesortd.ingest.arena import Arena
from facesortd.ingest.imageio import decode, decode_face_crop, sha256_file

#: ("crop", side): aligned mode, the whole image resized to side x side;
#: ("full", max_side or None): decoded upright, no side longer than max_side.
Request = tuple[Path, str, Optional[int]]
#: (sha256, size, rgb, scale, original (w, h)) for a decoded file, or a BadImage for a broken one.
Result = Union[tuple[str, int, np.ndarray, float, tuple[int, int]], BadImage]

IN_FLIGHT = 2         # chunks sent to one process before its first answer is read (arena regions)


def decode_request(path: Path, kind: str, param: Optional[int]) -> tuple[np.ndarray, float,
                                                                      tuple[int, int]]:
    """Decode one file as a request asks: (rgb uint8 HxWx3, scale, original (w, h)).

    Shared by the decoding threads and processes, so both paths give the same pixels.
    """
    if kind == "crop":
        rgb = decode_face_crop(path, int(param or 0))
        return rgb, 1.0, (rgb.shape[1], rgb.shape[0])
    decoded = decode(path, max_side=param)
    return decoded.rgb, decoded.scale, decoded.original_size


def hash_and_decode(request: Request) -> Result:
    """What one decoding process does for one file; never raises."""
    path, kind, param = request
    try:
        sha, size = sha256_file(path)
        if size == 0:
            raise BadImage("the file is empty (0 bytes)")
        rgb, scale, original = decode_request(path, kind, param)
        return sha, size, rgb, scale, original
    except BadImage as exc:
        return exc
    except Exception as exc:  # never let one file stop a worker
        return BadImage(f"unexpected error: {type(exc).__name__}: {exc}")


def _serve(conn: Connection, arena: Optional[Arena]) -> None:
    """The decoding process's loop: (region, requests) in, (results, seconds spent) out, with
    the pixels packed into that region of the arena when there is one.

    SIGTERM and SIGINT are the daemon's to handle (systemd signals the whole cgroup, Ctrl-C the
    whole process group): the process ends when the daemon closes the socket, never before.
    """
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    conn.send("ready")
    while True:
        try:
            message = conn.recv()
            if message is None:
                return
            region, requests = message
            t0 = time.perf_counter()
            results = [hash_and_decode((Path(p), kind, param)) for p, kind, param in requests]
            if arena is not None:
                results = arena.pack(region, results)
            conn.send((results, time.perf_counter() - t0))
        except (EOFError, OSError):
            return              # the pipeline went away


class Worker:
    """One decoding process and the socket to it."""

    def __init__(self, index: int):
        self.index = index
        ours, theirs = socket.socketpair()
        self.arena = Arena.create(IN_FLIGHT)
        arena_fd = self.arena.fd if self.arena is not None else None
        env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
        root = str(Path(__file__).resolve().parents[1])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "facesortd.ingest.worker", str(theirs.fileno()),
                 str(arena_fd) if arena_fd is not None else "-"],
                pass_fds=(theirs.fileno(),) + ((arena_fd,) if arena_fd is not None else ()),
                stdin=subprocess.DEVNULL, env=env)
        except BaseException:
            ours.close()
            if self.arena is not None:
                self.arena.close()
            raise
        finally:
            theirs.close()
        self.conn = Connection(ours.detach())

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Wait for the process to say it is ready (imports done, signals set)."""
        try:
            if self.conn.poll(timeout) and self.conn.recv() == "ready":
                return
        except (EOFError, OSError):
            pass
        code = self.close(1.0)
        raise RuntimeError(f"a decoding process did not start (exit code {code}); see its "
                           "error above")

    def close(self, timeout: float) -> Optional[int]:
        """Ask the process to exit, wait for it (kill it past ``timeout``); its exit code."""
        try:
            self.conn.send(None)
        except OSError:
            pass
        self.conn.close()
        if self.arena is not None:
            self.arena.close()
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def send(self, region: int, requests: list[Request]) -> None:
        """Ask for a chunk, its pixels to go into ``region`` (paths as str: cheaper to pickle)."""
        self.conn.send((region, [(str(p), kind, param) for p, kind, param in requests]))

    def recv(self, region: int) -> tuple[list[Result], float]:
        """The answers for the chunk sent with ``region``, their pixels copied out of it."""
        results, seconds = self.conn.recv()
        if self.arena is not None:
            results = self.arena.unpack(region, results)
        return results, seconds


if __name__ == "__main__":
    _serve(Connection(int(sys.argv[1])),
           Arena.attach(int(sys.argv[2]), IN_FLIGHT) if sys.argv[2] != "-" else None)
