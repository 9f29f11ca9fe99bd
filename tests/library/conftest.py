"""What the library tests share: a placed library over real files with made-up faces."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from facesortd.config import parse_config
from facesortd.library.placer import Placer
from facesortd.people.corrections import from_library


class Env:
    """A store with made-up faces (``fake_ingest``) over real files in an inbox, and its placer
    wired to the corrections as the app wires it (``learn=from_library``)."""

    def __init__(self, fake, root: Path):
        self.fake = fake
        (root / "inbox").mkdir(parents=True)
        self.config = parse_config(f"library: {root / 'library'}\ninboxes:\n  - path: inbox\n",
                                   root / "facesortd.yaml")
        self.inbox, self.library = self.config.inboxes[0].path, self.config.library
        self.store = fake.open_store(self.config)
        self.placer = Placer(self.config, self.store, learn=from_library)

    def add(self, name: str, identities) -> int:
        path = self.inbox / name
        path.write_bytes(os.urandom(200) + name.encode())
        return self.fake.fabricate(self.store, path, self.inbox, identities)

    def main(self, image_id: int) -> Path:
        with self.store.read() as conn:
            (path,) = conn.execute("SELECT path FROM placements WHERE image_id = ? AND kind = 'main'",
                                   (image_id,)).fetchone()
        return Path(os.fsdecode(path))

    def copies(self) -> dict[str, list[Path]]:
        """sha256 -> every path holding those bytes in the library (each name counts)."""
        out: dict[str, list[Path]] = {}
        for p in sorted(self.library.rglob("*")):
            if p.is_file():
                out.setdefault(hashlib.sha256(p.read_bytes()).hexdigest(), []).append(p)
        return out

    def journal(self, status: str) -> list[tuple]:
        with self.store.read() as conn:
            return conn.execute("SELECT op, status, error FROM journal WHERE status = ?",
                                (status,)).fetchall()


    def one(self, sql: str, *args):
        with self.store.read() as conn:
            row = conn.execute(sql, args).fetchone()
        return row[0] if row else None


@pytest.fixture
def env(tmp_path, fake_ingest):
    e = Env(fake_ingest, tmp_path)
    yield e
    e.store.close()
