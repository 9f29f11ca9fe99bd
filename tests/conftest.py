"""Shared fixtures: the real data folder, temp trees, and a check that no thread is left behind."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("FACESORTD_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """``../shared/data``: real labeled photos (see its README)."""
    if not (DATA / "faces").is_dir():
        pytest.fail(f"test data not found at {DATA}; set FACESORTD_DATA to the shared/data folder")
    return DATA


@pytest.fixture(autouse=True)
def no_leaked_threads():
    """Every thread a test starts must be stopped and joined before the test ends."""
    before = set(threading.enumerate())
    yield
    leaked = [t for t in threading.enumerate() if t not in before and t.is_alive()]
    for t in leaked:
        t.join(timeout=5)
    leaked = [t for t in leaked if t.is_alive()]
    assert not leaked, f"threads left running: {[t.name for t in leaked]}"
