"""Queue items: small frozen values, so the same file queued twice is one job."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Job:
    """A settled file in an inbox, ready to be ingested.

    ``size`` and ``mtime_ns`` are what the watcher saw when it decided the file had settled; the
    pipeline uses them to skip files it has already ingested.
    """

    path: Path
    inbox: Path
    mode: str  # "detect" | "aligned"
    size: int
    mtime_ns: int
    #: photo: analysed; other: neither a photo nor a companion (watch.other_files: move);
    #: companion: one whose photo is beside it (the placer takes it with the photo);
    #: loose: a companion whose photo is no longer beside it (it may follow a placed one)
    kind: str = "photo"
