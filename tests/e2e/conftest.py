"""What the end-to-end tests share: the real headless Chromium the browser tests drive through
Playwright (Debian's ``chromium``), and ``facesortd run`` in a subprocess (``start_daemon``)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TUNABLES = "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=17179869184"

CHROMIUM = Path(os.environ.get("FACESORTD_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture
def sync_playwright():
    """Playwright's ``sync_playwright``; without Playwright or Chromium the test fails under CI
    (the Makefile installs both) and is skipped elsewhere, before anything else starts."""
    missing = []
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sync_playwright = None
        missing.append("playwright (pip install -e '.[test]')")
    if not os.access(CHROMIUM, os.X_OK):
        missing.append(f"chromium at {CHROMIUM} (apt-get install chromium; `make install-test` "
                       "does it)")
    if missing:
        message = "the browser test needs " + " and ".join(missing)
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message + " (CI is set: it must run there)")
        pytest.skip(message)
    return sync_playwright


@pytest.fixture
def launch_chromium(sync_playwright):
    """``launch_chromium(pw, *extra_args)``: the real headless Chromium, from ``with
    sync_playwright() as pw``; the caller closes it."""

    def launch(pw, *extra_args: str):
        return pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS + list(extra_args))

    return launch


class RunningDaemon:
    """``facesortd run --config ROOT/facesortd.yaml`` in a subprocess, its log (stderr) collected
    on a thread; ``stop()`` (SIGTERM, then a kill after 60 s) returns its exit status."""

    def __init__(self, root: Path):
        env = dict(os.environ, GLIBC_TUNABLES=TUNABLES, PYTHONPATH=str(REPO))
        env.pop("NOTIFY_SOCKET", None)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "facesortd", "run", "--config", str(root / "facesortd.yaml")],
            cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.log: list[str] = []
        self._thread = threading.Thread(target=self._read, name="test-e2e-daemon-stderr")
        self._thread.start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.log.append(line.rstrip("\n"))

    def wait_log(self, pattern: str, timeout: float) -> re.Match:
        """The first log line matching ``pattern``, waiting for it up to ``timeout`` s (fails
        with the log when it does not come or the daemon exits)."""
        deadline = time.monotonic() + timeout
        while True:
            for line in list(self.log):
                m = re.search(pattern, line)
                if m:
                    return m
            assert time.monotonic() < deadline and self.proc.poll() is None, \
                f"no {pattern!r} in the log:\n" + "\n".join(self.log)
            time.sleep(0.05)

    def url(self, timeout: float = 120) -> str:
        """The review page's address, once the daemon serves it."""
        return self.wait_log(r"web page on (http://127\.0\.0\.1:\d+/)", timeout).group(1)

    def stop(self) -> int:
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
            return self.proc.wait(60)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self._thread.join()
            self.proc.stderr.close()


@pytest.fixture
def start_daemon():
    """``start_daemon(root)``: a ``RunningDaemon``; any still running at the end is stopped."""
    started: list[RunningDaemon] = []

    def start(root: Path) -> RunningDaemon:
        started.append(RunningDaemon(root))
        return started[-1]

    yield start
    for daemon in started:
        daemon.stop()
