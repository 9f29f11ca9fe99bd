"""decode_pool: a decoding process that dies and cannot be replaced (no interpreter to start, or one
that dies before its handshake) loses no file and hangs nothing; the pool goes on with the
processes it has, or decodes in this process when it has none, and starts a process again later."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import sys
import time

import pytest

from facesortd.ingest.pool import DecodePool

pytest.importorskip("dlib", reason="the dlib extra is installed by `make test`")

#: What a spawn meets: no interpreter at that path (OSError from the start itself), or a program
#: that exits at once (the child dies before it says it is ready).
_BROKEN_INTERPRETERS = {"missing": "/nonexistent/python3", "exits_at_once": shutil.which("false")}


def _kill(pool: DecodePool, slot: int) -> int:
    worker = pool._workers[slot]
    os.kill(worker.proc.pid, signal.SIGKILL)
    assert worker.proc.wait(10) == -signal.SIGKILL
    return worker.proc.pid


def _submit_and_drain(pipe, jobs, timeout: float = 30) -> None:
    for job in jobs:
        assert pipe.submit(job)
    assert pipe.drain(timeout), "files left in flight: the pipeline would wait for them forever"


@pytest.mark.parametrize("broken", sorted(_BROKEN_INTERPRETERS))
def test_a_replacement_that_cannot_start_loses_no_file(tmp_path, data_dir, monkeypatch, caplog,
                                                      broken, open_pipeline, jobs_of, process_gone,
                                                      copy_crops, images):
    """The only process dies and no new one starts: its chunk and every later file are decoded
    in this process, with one clear error line; once processes start again, one takes over."""
    config, store, pipe = open_pipeline(tmp_path, 1)
    inbox = tmp_path / "inbox"
    first = copy_crops(data_dir, inbox, 0, 8)
    monkeypatch.setattr(DecodePool, "RESTART_DELAY_MAX_S", 0.2)
    real = sys.executable
    try:
        pipe.start()
        pool = pipe._prep.pool
        old = _kill(pool, 0)
        monkeypatch.setattr(sys, "executable", _BROKEN_INTERPRETERS[broken])
        with caplog.at_level(logging.INFO, logger="facesortd.decode_pool"):
            _submit_and_drain(pipe, jobs_of(inbox))
        assert pool.pids() == [] and pool.decoded_here == len(first)
        assert "could not start a decoding process" in caplog.text
        assert "decoding in this process" in caplog.text
        statuses = {name: r[1] for name, r in images(store).items()}
        assert statuses == {name: "done" for name in first}

        monkeypatch.setattr(sys, "executable", real)   # interpreters start again
        time.sleep(0.3)                       # past the (shortened) wait before the next try
        second = copy_crops(data_dir, inbox, 8, 4)
        _submit_and_drain(pipe, jobs_of(inbox))
        (new,) = pool.pids()
        assert new != old and pool._workers[0].proc.poll() is None
        assert pool.decoded_here == len(first)    # the new process decoded the second batch
        statuses = {name: r[1] for name, r in images(store).items()}
    finally:
        pipe.stop()
        store.close()
    assert statuses == {name: "done" for name in first + second}
    assert not list((config.library / "_quarantine").glob("*"))
    assert process_gone(new)


def test_the_pool_goes_on_with_fewer_processes(tmp_path, data_dir, monkeypatch, caplog, open_pipeline,
                                               jobs_of, process_gone, copy_crops, images):
    """One of two processes dies and cannot be replaced: once that is found out, the other one
    decodes all new work (none is decoded in this process while a process lives), and no thread
    or process is left behind."""
    config, store, pipe = open_pipeline(tmp_path, 2)
    inbox = tmp_path / "inbox"
    names = copy_crops(data_dir, inbox, 0, 12)
    try:
        pipe.start()
        pool = pipe._prep.pool
        survivor = pool._workers[1].proc.pid
        _kill(pool, 0)
        monkeypatch.setattr(sys, "executable", "/nonexistent/python3")
        jobs = iter(jobs_of(inbox))
        with caplog.at_level(logging.INFO, logger="facesortd.decode_pool"):
            # One file at a time until the dead process's link takes one and finds it dead.
            for job in jobs:
                assert pipe.submit(job) and pipe.drain(30)
                if pool.pids() == [survivor]:
                    break
            assert pool.pids() == [survivor], "the dead process was never found out"
            assert "new work goes to the 1 other process(es)" in caplog.text
            here = pool.decoded_here          # its one file, decoded here after the crash
            assert here == 1
            rest = list(jobs)
            assert len(rest) >= 6
            for job in rest:
                assert pipe.submit(job)
            assert pipe.drain(30)
        assert pool.decoded_here == here and pool.pids() == [survivor]
        statuses = {name: r[1] for name, r in images(store).items()}
    finally:
        pipe.stop()
        store.close()
    assert statuses == {name: "done" for name in names}
    assert process_gone(survivor)


def test_the_daemon_starts_when_no_decoding_process_can(tmp_path, data_dir, monkeypatch, caplog,
                                                        open_pipeline, jobs_of, process_gone, copy_crops,
                                                        images):
    """No process starts at all (before, ``start`` raised and the daemon did not come up): the
    files are decoded in this process with an error line saying so, and a process takes over
    once one can start."""
    config, store, pipe = open_pipeline(tmp_path, 2)
    inbox = tmp_path / "inbox"
    first = copy_crops(data_dir, inbox, 0, 6)
    monkeypatch.setattr(DecodePool, "RESTART_DELAY_MAX_S", 0.2)
    real = sys.executable
    monkeypatch.setattr(sys, "executable", "/nonexistent/python3")
    try:
        with caplog.at_level(logging.INFO, logger="facesortd.decode_pool"):
            pipe.start()
            pool = pipe._prep.pool
            assert pool.pids() == []
            assert caplog.text.count("could not start a decoding process") == 2
            _submit_and_drain(pipe, jobs_of(inbox))
        assert pool.decoded_here == len(first)
        monkeypatch.setattr(sys, "executable", real)
        time.sleep(0.3)
        second = copy_crops(data_dir, inbox, 6, 4)
        _submit_and_drain(pipe, jobs_of(inbox))
        started = pool.pids()
        assert started and pool.decoded_here == len(first)
        statuses = {name: r[1] for name, r in images(store).items()}
    finally:
        pipe.stop()
        store.close()
    assert statuses == {name: "done" for name in first + second}
    assert all(process_gone(pid) for pid in started)
