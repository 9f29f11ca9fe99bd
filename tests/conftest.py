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


@pytest.fixture(scope="module")
def library(tmp_path_factory, data_dir):
    """The small real library (identity_fixtures), ingested once per session by the real daemon."""
    from identity_fixtures import small_library

    return small_library(tmp_path_factory, data_dir)


@pytest.fixture
def review(library, tmp_path):
    """The review app (web_fixtures.Review) over a fresh copy of ``library``."""
    from web_fixtures import open_review

    r = open_review(library, tmp_path)
    yield r
    r.store.close()
