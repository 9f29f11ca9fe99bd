"""`facesortd run` as systemd runs it: a real subprocess, a real notify socket, real signals.

One daemon (dlib embedder, aligned mode, web page on a free port) lives through the whole module:
READY=1 and watchdog pings, files dropped and ingested, /healthz and /metrics, SIGHUP with a new
inbox, SIGHUP with a broken config, a second daemon on the same state, SIGTERM -> exit 0.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

from facesortd.app.sdnotify import Notifier
from facesortd.telemetry import parse_prometheus

pytest.importorskip("dlib", reason="the dlib extra is installed by `make test`")

REPO = Path(__file__).resolve().parents[2]
TUNABLES = "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=17179869184"


def config_text(inboxes: list[str]) -> str:
    lines = ["state_dir: state", "library: library", "inboxes:"]
    lines += [f"  - path: {p}\n    mode: aligned" for p in inboxes]
    lines += ["watch:\n  settle_ms: 100\n  rescan_interval_s: 0",
              "embedder:\n  name: dlib\n  batch_size: 8\n  max_wait_ms: 50",
              "web:\n  enabled: true\n  host: 127.0.0.1\n  port: 0",
              "log_level: info"]
    return "\n".join(lines) + "\n"


class NotifySocket:
    """The socket systemd would own: collects every datagram the daemon sends, in a thread."""

    def __init__(self):
        self.name = f"@facesortd-test-{uuid.uuid4().hex}"  # abstract namespace, as systemd may use
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + self.name[1:])
        self.sock.settimeout(0.1)
        self.messages: list[tuple[float, str]] = []
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="test-notify")
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except socket.timeout:
                continue
            with self._cond:
                self.messages.append((time.monotonic(), data.decode()))
                self._cond.notify_all()

    def wait_for(self, line: str, timeout: float, after: int = 0) -> int:
        """Index of the first message from ``after`` on that has ``line``; fail after timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for i, (_, msg) in enumerate(self.messages[after:], after):
                    if line in msg.split("\n"):
                        return i
                left = deadline - time.monotonic()
                assert left > 0, f"no {line!r} within {timeout} s; got {self.messages}"
                self._cond.wait(left)

    def lines(self, prefix: str) -> list[tuple[float, str]]:
        with self._cond:
            return [(t, l) for t, m in self.messages for l in m.split("\n") if l.startswith(prefix)]

    def close(self):
        self._stop.set()
        self._thread.join()
        self.sock.close()


class Daemon:
    def __init__(self, root: Path, notify: NotifySocket):
        env = dict(os.environ, NOTIFY_SOCKET=notify.name, WATCHDOG_USEC="600000",
                   GLIBC_TUNABLES=TUNABLES, PYTHONPATH=str(REPO))
        env.pop("JOURNAL_STREAM", None)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "facesortd", "run", "--config", str(root / "facesortd.yaml")],
            cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.log: list[str] = []
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._read, name="test-daemon-stderr")
        self._thread.start()

    def _read(self):
        for line in self.proc.stderr:
            with self._cond:
                self.log.append(line.rstrip("\n"))
                self._cond.notify_all()

    def wait_log(self, pattern: str, timeout: float, after: int = 0) -> re.Match:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self.log[after:]:
                    m = re.search(pattern, line)
                    if m:
                        return m
                left = deadline - time.monotonic()
                assert left > 0 and self.proc.poll() is None, \
                    f"no log line matching {pattern!r}; log:\n" + "\n".join(self.log)
                self._cond.wait(min(left, 0.5))

    def finish(self, timeout: float = 60) -> int:
        try:
            return self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self._thread.join()
            self.proc.stderr.close()


def image_statuses(state: Path) -> dict[str, str]:
    conn = sqlite3.connect(f"file:{state / 'facesortd.db'}?mode=ro", uri=True, timeout=10)
    try:
        return {Path(os.fsdecode(p)).name: s for p, s in conn.execute("SELECT path, status FROM images")}
    finally:
        conn.close()


def wait_ingested(state: Path, names: set[str], timeout: float = 30) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    while True:
        statuses = image_statuses(state) if (state / "facesortd.db").exists() else {}
        if names <= {n for n, s in statuses.items() if s == "done"}:
            return statuses
        assert time.monotonic() < deadline, f"not ingested in time: {names - set(statuses)}; {statuses}"
        time.sleep(0.1)


def get(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.headers.get("Content-Type"), r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Content-Type"), exc.read().decode()


@pytest.fixture
def crops(data_dir) -> list[Path]:
    return sorted((data_dir / "faces_cropped").rglob("*.jpg"))[:6]


def test_daemon_under_a_notify_socket(tmp_path, crops):
    root = tmp_path
    for d in ("inbox", "inbox2"):
        (root / d).mkdir()
    cfg = root / "facesortd.yaml"
    cfg.write_text(config_text(["inbox"]))
    notify = NotifySocket()
    daemon = Daemon(root, notify)
    try:
        # READY=1 once the store is open and the catch-up scan is queued; then pings every ~0.3 s.
        ready = notify.wait_for("READY=1", timeout=60)
        url = daemon.wait_log(r"web page on (http://127\.0\.0\.1:\d+/)", timeout=5).group(1)
        assert notify.lines("STATUS=queue ")
        notify.wait_for("WATCHDOG=1", timeout=5, after=ready)
        time.sleep(1.0)
        pings = [t for t, _ in notify.lines("WATCHDOG=1")]
        assert len(pings) >= 3 and max(b - a for a, b in zip(pings, pings[1:])) < 0.6, pings

        # Files dropped are ingested; the web page reports them.
        for i, p in enumerate(crops[:3]):
            shutil.copy(p, root / "inbox" / f"a{i}.jpg")
        wait_ingested(root / "state", {"a0.jpg", "a1.jpg", "a2.jpg"})
        status, ctype, body = get(url + "healthz")
        assert status == 200 and json.loads(body)["status"] == "ok"
        # the store's gauges are read at most every 2 s (Telemetry.read_store), so a scrape right
        # after the files finished may show the previous reading: give it those 2 s
        deadline = time.monotonic() + 5
        while True:
            status, ctype, body = get(url + "metrics")
            assert status == 200 and ctype.startswith("text/plain; version=0.0.4")
            m = parse_prometheus(body)
            if m.get('facesortd_store_images{status="done"}') == 3 or time.monotonic() > deadline:
                break
            time.sleep(0.25)
        assert m['facesortd_files_total{outcome="done"}'] == 3
        assert m["facesortd_faces_ingested_total"] == 3
        assert m["facesortd_batch_faces_count"] >= 1 and m["facesortd_batch_faces_sum"] == 3
        assert m['facesortd_store_images{status="done"}'] == 3 and m["facesortd_healthy"] == 1

        # SIGHUP with a second inbox: it is watched at once.
        cfg.write_text(config_text(["inbox", "inbox2"]))
        n = len(daemon.log)
        daemon.proc.send_signal(signal.SIGHUP)
        daemon.wait_log(r"config reloaded", timeout=10, after=n)
        shutil.copy(crops[3], root / "inbox2" / "b0.jpg")
        wait_ingested(root / "state", {"b0.jpg"})

        # SIGHUP with a broken config: every problem logged, the old config (both inboxes) kept.
        cfg.write_text(config_text(["inbox", "inbox2"]).replace("batch_size: 8", "batch_size: 0")
                       + "surprise: 1\n")
        n = len(daemon.log)
        daemon.proc.send_signal(signal.SIGHUP)
        daemon.wait_log(r"config reload refused", timeout=10, after=n)
        daemon.wait_log(r"embedder\.batch_size", timeout=5, after=n)
        daemon.wait_log(r"surprise: unknown key", timeout=5, after=n)
        shutil.copy(crops[4], root / "inbox2" / "b1.jpg")
        wait_ingested(root / "state", {"b1.jpg"})
        assert daemon.proc.poll() is None

        # A recluster asked for (SIGUSR1, what `facesortd recluster` sends) is counted.
        daemon.proc.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + 20
        while parse_prometheus(get(url + "metrics")[2])["facesortd_reclusters_total"] < 1:
            assert time.monotonic() < deadline, "no recluster counted"
            time.sleep(0.2)

        # A second daemon on the same state_dir refuses at once, with the holder's pid.
        other = root / "other.yaml"
        other.write_text(config_text(["inbox3"]))
        second = subprocess.run(
            [sys.executable, "-m", "facesortd", "run", "--config", str(other)], cwd=root,
            env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True, text=True, timeout=60)
        assert second.returncode != 0
        assert f"in use by facesortd (pid {daemon.proc.pid})" in second.stderr, second.stderr

        # `facesortd status` shows the running daemon's figures next to the store's.
        status = subprocess.run(
            [sys.executable, "-m", "facesortd", "status", "--json", "--config", str(other)],
            cwd=root, env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True, text=True,
            timeout=60)
        assert status.returncode == 0, status.stderr
        shown = json.loads(status.stdout)
        assert shown["images"]["done"] == 5 and shown["daemon"]["pid"] == daemon.proc.pid

        # SIGTERM: STOPPING=1, exit 0, nothing left half-done.
        n = len(notify.messages)
        daemon.proc.send_signal(signal.SIGTERM)
        assert daemon.finish(timeout=30) == 0, "\n".join(daemon.log)
        notify.wait_for("STOPPING=1", timeout=1, after=n)
        assert any("stopped" in line for line in daemon.log)
        statuses = image_statuses(root / "state")
        assert sorted(statuses) == ["a0.jpg", "a1.jpg", "a2.jpg", "b0.jpg", "b1.jpg"]
        assert set(statuses.values()) == {"done"}
        fd = os.open(root / "state" / "lock", os.O_RDWR)  # the lock went with the process
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)
    finally:
        if daemon.proc.poll() is None:
            daemon.proc.kill()
        daemon.finish(timeout=30)
        notify.close()


def test_notifier_outside_systemd_is_a_no_op():
    n = Notifier({})
    assert not n.enabled and n.watchdog_interval is None
    assert n.ready() is False and n.watchdog() is False


def test_notifier_sends_to_a_path_socket_and_halves_the_watchdog(tmp_path):
    path = tmp_path / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(2)
    try:
        n = Notifier({"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "30000000"})
        assert n.watchdog_interval == 15.0
        assert n.ready("hello") and sock.recv(100) == b"READY=1\nSTATUS=hello"
        assert n.stopping() and sock.recv(100) == b"STOPPING=1"
        n.close()
    finally:
        sock.close()
    # A watchdog meant for another process (WATCHDOG_PID) is not ours to ping.
    assert Notifier({"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "30000000",
                     "WATCHDOG_PID": str(os.getpid() + 1)}).watchdog_interval is None


def run_once_child(root: Path, timeout: float = 240) -> tuple[int, str, int]:
    """`facesortd run --once` in a child; (exit code, stderr, the child's own peak RSS in KiB)."""
    env = dict(os.environ, GLIBC_TUNABLES=TUNABLES, PYTHONPATH=str(REPO))
    with open(root / "stderr.txt", "w+") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "facesortd", "run", "--once", "--config", str(root / "facesortd.yaml")],
            cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=err)
        deadline = time.monotonic() + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                proc.kill()
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.05)
        proc.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        return proc.returncode, err.read(), usage.ru_maxrss


def test_a_burst_of_files_is_all_taken_with_bounded_memory(tmp_path, data_dir):
    """1,200 files at once (more than the 1,024-file intake queue): all recorded, and the peak
    RSS stays within a small margin of a 20-file run. Twenty distinct faces, the rest copies of
    them, so the model work stays small and the test measures the intake, not dlib."""
    distinct = sorted((data_dir / "faces_cropped").rglob("*.jpg"))[:20]
    peaks = {}
    for n in (20, 1200):
        root = tmp_path / str(n)
        (root / "inbox").mkdir(parents=True)
        (root / "facesortd.yaml").write_text(
            config_text(["inbox"]).replace("enabled: true", "enabled: false").replace(
                "log_level: info", "log_level: warning"))
        blobs = [p.read_bytes() for p in distinct]
        for i in range(n):
            (root / "inbox" / f"f{i:05d}.jpg").write_bytes(blobs[i % len(blobs)])
        rc, err, peaks[n] = run_once_child(root)
        assert rc == 0, err
        statuses = image_statuses(root / "state")
        assert len(statuses) == n
        assert sorted(set(statuses.values())) == (["done"] if n == 20 else ["done", "duplicate"])
        assert list(statuses.values()).count("done") == len(distinct)
    growth_mib = (peaks[1200] - peaks[20]) / 1024
    print(f"peak RSS: 20 files {peaks[20] / 1024:.0f} MiB, 1200 files {peaks[1200] / 1024:.0f} MiB")
    assert growth_mib < 64, f"1,200 files took {growth_mib:.0f} MiB more than 20"


def test_a_hung_pipeline_stops_the_watchdog_pings(tmp_path):
    """The supervisor's health check over real threads and a real notify socket: pings flow while
    the components' threads run and files finish; a queue with no progress for STALL_S, or a dead
    model thread, stops them (systemd then restarts the daemon) and /healthz turns 503."""
    from types import SimpleNamespace

    from facesortd.app import supervisor as service_mod
    from facesortd.app.supervisor import Supervisor
    from facesortd.config import parse_config
    from facesortd.telemetry import Telemetry

    clock = [100.0]
    stop, stop_model = threading.Event(), threading.Event()
    model = threading.Thread(target=stop_model.wait, name="facesortd-model")
    threads = [model] + [threading.Thread(target=stop.wait, name=n)
                         for n in ("facesortd-prep-0", "facesortd-watch-worker", "identities")]
    for t in threads:
        t.start()
    # components report their own threads, as the pipeline, watcher and identity service do
    pipeline = SimpleNamespace(threads=lambda: threads[:2])
    others = SimpleNamespace(threads=lambda: threads[2:])
    path = tmp_path / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.setblocking(False)

    def pings() -> int:
        n = 0
        while True:
            try:
                n += sock.recv(100).split(b"\n").count(b"WATCHDOG=1")
            except BlockingIOError:
                return n

    try:
        telemetry = Telemetry(clock=lambda: clock[0])
        depth = [0]
        (tmp_path / "state").mkdir()
        svc = Supervisor(parse_config("{}", tmp_path / "facesortd.yaml"), telemetry,
                         [pipeline, others], queue=lambda: (depth[0], 0),
                         notifier=Notifier({"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "2000000"}),
                         clock=lambda: clock[0])
        svc.tick()
        assert pings() == 1 and telemetry.up.get() == 1
        depth[0] = 5                       # busy, and files keep finishing: healthy
        for _ in range(5):
            clock[0] += service_mod.STALL_S / 4
            telemetry.last_progress = clock[0]
            svc.tick()
        assert pings() == 5 and telemetry.up.get() == 1
        clock[0] += service_mod.STALL_S + 1  # nothing finished for longer than STALL_S
        svc.tick()
        clock[0] += 2
        svc.tick()
        assert pings() == 0 and telemetry.up.get() == 0
        assert "no file finished" in telemetry.unhealthy_reason
        telemetry.last_progress = clock[0]   # it recovers
        clock[0] += 2
        svc.tick()
        assert pings() == 1 and telemetry.up.get() == 1
        stop_model.set()                     # the model thread dies
        model.join()
        clock[0] += 2
        svc.tick()
        assert pings() == 0 and "facesortd-model" in telemetry.unhealthy_reason
        assert "identities" not in telemetry.unhealthy_reason
        svc.notifier.close()
    finally:
        stop.set()
        for t in threads:
            t.join()
        sock.close()


def test_journal_lines_carry_their_priority():
    """Under systemd (JOURNAL_STREAM set) every stderr line starts with <priority> for journald,
    continuation lines of a multi-line message (a refused reload's problems) too."""
    code = ("import logging, sys; from facesortd.cli import _setup_logging; _setup_logging('info');"
            "log = logging.getLogger('facesortd'); log.info('one'); log.warning('two');"
            "log.error('three\\nfour'); log.debug('hidden')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                       env=dict(os.environ, JOURNAL_STREAM="8:1234", PYTHONPATH=str(REPO)))
    assert r.stderr.splitlines() == ["<6>INFO facesortd: one", "<4>WARNING facesortd: two",
                                     "<3>ERROR facesortd: three", "<3>four"]
