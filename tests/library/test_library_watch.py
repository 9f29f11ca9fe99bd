"""Watching the library (library/watch.py) and the placer loop that scans what it reports: real
inotify on tmp folders, a real placer and store (faces made up by fake_ingest), and the kernel's
real watch limit, lowered inside a user namespace of the test's own."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from facesortd.config import WatchConfig
from facesortd.library.loop import PlacerLoop
from facesortd.library.watch import LibraryWatcher

REPO = Path(__file__).resolve().parents[2]


class Seen:
    """What a watcher reported: touched paths and full-scan requests."""

    def __init__(self):
        self.paths: set[Path] = set()
        self.scans = 0
        self.cond = threading.Condition()

    def touched(self, paths):
        with self.cond:
            self.paths.update(paths)
            self.cond.notify_all()

    def rescan(self):
        with self.cond:
            self.scans += 1
            self.cond.notify_all()

    def wait_for(self, *paths: Path, timeout: float = 5.0) -> None:
        with self.cond:
            assert self.cond.wait_for(lambda: set(paths) <= self.paths, timeout), \
                (sorted(set(paths) - self.paths), sorted(self.paths))


def wait_until(check, timeout: float = 10.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        time.sleep(0.02)


@pytest.mark.parametrize("polling", [False, True])
def test_the_watcher_reports_both_ends_of_moves_renames_and_deletes(tmp_path, polling, monkeypatch):
    import facesortd.library.watch as watch

    monkeypatch.setattr(watch, "POLL_S", 0.3)   # a poll every 0.3 s (5 s in the daemon)
    lib = tmp_path / "library"
    (lib / "Alice").mkdir(parents=True)
    (lib / "Bob").mkdir()
    (lib / "Alice" / "a.jpg").write_bytes(b"a")
    (lib / "Bob" / "b.jpg").write_bytes(b"b")
    seen = Seen()
    w = LibraryWatcher(lib, WatchConfig(polling=polling, settle_ms=0), seen.touched, seen.rescan,
                       exclude=[lib / "state"])
    w.start()
    try:
        assert w.watching == ("polling" if polling else "inotify") and seen.scans == 1
        time.sleep(0.1 if not polling else 0.5)   # the polling observer's first snapshot
        os.rename(lib / "Alice" / "a.jpg", lib / "Bob" / "a.jpg")
        os.rename(lib / "Bob", lib / "Robert")
        os.unlink(lib / "Robert" / "b.jpg")
        (lib / "state").mkdir()
        (lib / "state" / "x.db").write_bytes(b"not the library's")
        (lib / "Robert" / ".facesortd-7-a.jpg.tmp").write_bytes(b"the journal's copy")
        timeout = 5.0 if not polling else 15.0
        if polling:   # a poll sees the end state: the renamed folder, the file gone from it
            seen.wait_for(lib / "Alice" / "a.jpg", lib / "Robert" / "a.jpg", lib / "Bob",
                          lib / "Robert", timeout=timeout)
        else:
            seen.wait_for(lib / "Alice" / "a.jpg", lib / "Bob" / "a.jpg", lib / "Bob", lib / "Robert",
                          lib / "Robert" / "b.jpg", timeout=timeout)
        time.sleep(0.3)
        assert not [p for p in seen.paths if "state" in p.parts or p.name.startswith(".facesortd-")]
    finally:
        w.stop()
    assert w.watching is None and not w.threads()


def test_a_library_that_appears_later_is_watched_then_and_scanned(tmp_path, monkeypatch):
    import facesortd.library.watch as watch

    monkeypatch.setattr(watch, "CHECK_S", 0.05)
    lib = tmp_path / "library"
    seen = Seen()
    w = LibraryWatcher(lib, WatchConfig(), seen.touched, seen.rescan)
    w.start()
    try:
        assert w.watching is None and seen.scans == 0
        (lib / "Alice").mkdir(parents=True)   # the placer makes it with its first placement
        wait_until(lambda: w.watching == "inotify", what="watching the new library")
        assert seen.scans == 1
        (lib / "Alice" / "x.jpg").write_bytes(b"x")
        seen.wait_for(lib / "Alice" / "x.jpg")
        shutil.rmtree(lib)   # replaced: watched again (a new folder), scanned again
        (lib / "Bob").mkdir(parents=True)
        wait_until(lambda: seen.scans == 2, what="a second watch after the library was replaced")
        (lib / "Bob" / "y.jpg").write_bytes(b"y")
        seen.wait_for(lib / "Bob" / "y.jpg")
    finally:
        w.stop()


_LIMITED = textwrap.dedent("""
    import ctypes, json, logging, os, sys, time
    from pathlib import Path
    Path("/proc/sys/user/max_inotify_watches").write_text(sys.argv[2])
    from facesortd.config import WatchConfig
    from facesortd.library.watch import LibraryWatcher
    records = []
    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())
    logging.getLogger("facesortd").addHandler(Keep())
    logging.getLogger("facesortd").setLevel(logging.INFO)
    lib = Path(sys.argv[1])
    calls = {"rescan": 0, "unwatched": 0}
    w = LibraryWatcher(lib, WatchConfig(), lambda paths: None,
                       lambda: calls.__setitem__("rescan", calls["rescan"] + 1),
                       lambda: calls.__setitem__("unwatched", calls["unwatched"] + 1))
    w.start()
    started = w.watching
    for i in range(int(sys.argv[3])):   # new folders (new people) past the limit
        (lib / f"New_{i}").mkdir()
    time.sleep(0.5)                     # their events arrive
    w._ensure(); w._ensure()            # the checks: the new folders counted; no second try
    given_up, watching = w.given_up, w.watching
    w.stop()
    # the failed observer's inotify instance was closed: the kernel has its watches back
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.inotify_init1(0)
    added = [libc.inotify_add_watch(fd, str(p).encode(), 0x100) >= 0
             for p in sorted(lib.iterdir())[:int(sys.argv[2])]]
    os.close(fd)
    print(json.dumps({"given_up": given_up, "watching": watching, "calls": calls, "added": added,
                      "started": started,
                      "limit": [m for m in records if "cannot watch the library" in m]}))
""")


@pytest.mark.parametrize("limit, new_folders", [(0, 0), (4, 0), (13, 3)])
def test_the_kernels_watch_limit_falls_back_to_the_rescan_interval(tmp_path, limit, new_folders):
    """A real ENOSPC from inotify_add_watch: the watcher runs in a user namespace of its own whose
    max_inotify_watches (a per-namespace kernel limit, writable by the namespace's owner) is
    ``limit``, for a library of 13 folders: not even the library (0), some of its folders (4:
    watchdog skips the others without a word; the watcher counts), or all of them until three new
    person folders are made (13). It says so once, frees the watches it had, and tells the loop to
    rely on the rescan interval."""
    unshare = shutil.which("unshare")
    probe = subprocess.run([unshare or "unshare", "-Ur", "true"], capture_output=True) \
        if unshare else None
    if probe is None or probe.returncode != 0:
        pytest.skip("no unprivileged user namespaces here (unshare -Ur)")
    lib = tmp_path / "library"
    for i in range(12):
        (lib / f"Person_{i:04d}").mkdir(parents=True)
    proc = subprocess.run(["unshare", "-Ur", sys.executable, "-c", _LIMITED, str(lib), str(limit),
                           str(new_folders)], capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=60)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["given_up"] and got["watching"] is None
    assert got["started"] == ("inotify" if new_folders else None)
    assert got["calls"] == {"rescan": 1 if new_folders else 0, "unwatched": 1}
    assert len(got["limit"]) == 1 and "inotify watch limit reached" in got["limit"][0]
    assert "max_user_watches" in got["limit"][0]
    assert got["added"] == [True] * limit   # the kernel has every watch back


def test_the_placer_loop_falls_back_to_an_interval_when_unwatched(env):
    e = env
    loop = PlacerLoop(e.placer, threading.Event(), debounce=0.01, rescan_interval=0)
    loop.FALLBACK_RESCAN_S = 0.2
    loop.start()
    try:
        wait_until(lambda: loop.scans["full"] == 1, what="the scan at start")
        time.sleep(0.5)
        assert loop.scans["full"] == 1 and loop.syncs == 1   # interval 0: no rescans
        loop.unwatched()
        wait_until(lambda: loop.scans["full"] >= 3, what="rescans every 0.2 s")
    finally:
        loop.stop()


def test_moves_renames_and_deletes_in_a_watched_library_reach_the_store(env):
    """The daemon's wiring without the model: placer loop + library watcher. A photo dragged into
    another person's folder, a folder renamed, a photo deleted: each reaches the store through a
    scan of the paths the events named (not a full scan), and the loop's own moves start no sync
    of their own."""
    e = env
    alice, bob, carol = (e.fake.new_identity(e.store, n) for n in ("Alice", "Bob", "Carol"))
    a1, a2 = e.add("a1.jpg", [alice]), e.add("a2.jpg", [alice])
    e.add("b1.jpg", [bob])
    e.add("c1.jpg", [carol])
    changed = threading.Event()
    loop = PlacerLoop(e.placer, changed, debounce=0.05, rescan_interval=0)
    watcher = LibraryWatcher(e.library, e.config.watch, loop.touch, loop.request_scan, loop.unwatched)
    loop.start()
    try:
        wait_until(lambda: (e.library / "Carol" / "c1.jpg").exists(), what="the first placement")
        watcher.start()   # the library exists now (the daemon starts it at once; it waits)
        wait_until(lambda: loop.scans["full"] == 2, what="the scan of a new watch")
        quiet = loop.syncs
        time.sleep(0.6)   # the placer's own moves came back as events: echoes, no sync
        assert loop.syncs == quiet

        os.rename(e.library / "Alice" / "a1.jpg", e.library / "Bob" / "a1.jpg")
        wait_until(lambda: e.one("SELECT identity_id FROM faces WHERE image_id = ?", a1) == bob,
                   what="the face of a1.jpg pinned to Bob")
        assert e.one("SELECT path FROM placements WHERE image_id = ? AND kind = 'main'", a1) \
            == os.fsencode(e.library / "Bob" / "a1.jpg").decode()
        assert (e.library / "Bob" / "a1.jpg").is_file() and not (e.library / "Alice" / "a1.jpg").exists()

        os.rename(e.library / "Carol", e.library / "Christopher Walken")
        wait_until(lambda: e.one("SELECT name FROM identities WHERE id = ?", carol)
                   == "Christopher Walken", what="Carol renamed after her folder")
        assert (e.library / "Christopher Walken" / "c1.jpg").is_file()
        assert not (e.library / "Carol").exists()

        os.unlink(e.library / "Alice" / "a2.jpg")
        wait_until(lambda: e.one("SELECT kind FROM placements WHERE image_id = ?", a2) == "removed",
                   what="a2.jpg removed by the user")
        assert loop.scans["full"] == 2 and loop.scans["paths"] >= 1   # events, not rescans
        settled = loop.syncs
        time.sleep(0.6)
        assert loop.syncs == settled, "the loop kept syncing on its own events"
        assert sorted(str(p.relative_to(e.library)) for p in e.library.rglob("*.jpg")) == \
            ["Bob/a1.jpg", "Bob/b1.jpg", "Christopher Walken/c1.jpg"]
    finally:
        watcher.stop()
        loop.stop()
