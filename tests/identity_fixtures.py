"""A small real library for the identity and correction tests: 5 people × 4 photos, ingested once
per test session by the real daemon (MTCNN + dlib) and copied for each test that changes it."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path
from typing import Optional

import numpy as np

from facesortd.app.daemon import Daemon
from facesortd.config import Config, parse_config
from facesortd.store.database import Store

PEOPLE = ("Allyson_Felix", "Antonio_Palocci", "Fujio_Cho", "JK_Rowling", "Paul_McCartney")
PER_PERSON = 4
_cache: dict[str, Path] = {}


def make_config(root: Path, extra: str = "") -> Config:
    (root / "inbox").mkdir(parents=True, exist_ok=True)
    text = ("inboxes:\n  - path: inbox\n    mode: detect\n"
            "watch:\n  settle_ms: 100\n  rescan_interval_s: 0\n"
            "embedder:\n  name: dlib\n  batch_size: 16\n  max_wait_ms: 50\n"
            "web:\n  enabled: false\n" + extra)
    (root / "facesortd.yaml").write_text(text)
    return parse_config(text, root / "facesortd.yaml")


def add_photos(root: Path, data_dir: Path, first: int, count: int, people=PEOPLE) -> None:
    for person in people:
        for f in sorted((data_dir / "faces" / person).iterdir())[first:first + count]:
            shutil.copyfile(f, root / "inbox" / f"{person}__{f.name}")


def small_library(tmp_path_factory, data_dir: Path) -> Path:
    """The folder of an ingested run (config, inbox, state); ingested once, never modified."""
    if "lib" not in _cache:
        root = tmp_path_factory.mktemp("library")
        config = make_config(root)
        add_photos(root, data_dir, 0, PER_PERSON)
        Daemon(config).run_once(timeout=600)
        _cache["lib"] = root
    return _cache["lib"]


def copy_library(src: Path, dst: Path, extra: str = "") -> Config:
    """An independent copy: its own inbox, library and store, whose paths point into ``dst``
    (a copy that still pointed at ``src``'s files could move them)."""
    shutil.copytree(src / "inbox", dst / "inbox")
    shutil.copytree(src / "state", dst / "state")
    if (src / "library").is_dir():
        shutil.copytree(src / "library", dst / "library", symlinks=True)
    with sqlite3.connect(dst / "state" / "facesortd.db") as conn:
        old, new = str(src), str(dst)
        for table, column in (("images", "path"), ("images", "inbox"), ("placements", "path"),
                              ("journal", "src"), ("journal", "dst")):
            conn.execute(f"UPDATE {table} SET {column} = ? || substr({column}, ?) "
                         f"WHERE substr({column}, 1, ?) = ?", (new, len(old) + 1, len(old), old))
    conn.close()
    return make_config(dst, extra)


def faces_by_person(store: Store) -> dict[str, list[tuple[int, Optional[int]]]]:
    """person -> [(face id, identity id)] of the largest face of each of their photos."""
    with store.read() as conn:
        rows = conn.execute(
            "SELECT i.path, f.id, f.identity_id, (f.box_x2-f.box_x1)*(f.box_y2-f.box_y1) AS area "
            "FROM faces f JOIN images i ON i.id = f.image_id WHERE f.rejected = 0 "
            "ORDER BY i.path, area DESC").fetchall()
    seen, out = set(), {}
    for path, face, identity, _ in rows:
        if path in seen:
            continue
        seen.add(path)
        out.setdefault(Path(path).name.split("__")[0], []).append((face, identity))
    return out


def main_identity(pairs) -> int:
    ids = [i for _, i in pairs if i is not None]
    values, counts = np.unique(ids, return_counts=True)
    return int(values[np.argmax(counts)])
