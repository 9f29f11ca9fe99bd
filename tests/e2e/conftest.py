"""The real headless Chromium the browser tests drive through Playwright (Debian's ``chromium``)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

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
