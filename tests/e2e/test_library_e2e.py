"""The library as a second way to correct (issue 19), through the real daemon: ``facesortd run`` in
a subprocess watching the library of real photos sorted by the real model (the session's
``library``, dlib). A photo dragged into another person's folder, a person's folder renamed, a
photo deleted: the store, the review API and the folders agree, and a recluster (SIGUSR1) undoes
none of it. Then ``run --once`` reads a move made while no daemon ran."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from facesortd.telemetry import parse_prometheus

pytest.importorskip("dlib", reason="the dlib extra is installed by `make test`")

REPO = Path(__file__).resolve().parents[2]
TUNABLES = "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=17179869184"
CONFIG = ("inboxes:\n  - path: inbox\n    mode: detect\n"
          "watch:\n  settle_ms: 100\n  rescan_interval_s: 0\n"
          "embedder:\n  name: dlib\n  batch_size: 16\n  max_wait_ms: 50\n"
          "web:\n  enabled: true\n  host: 127.0.0.1\n  port: 0\n"
          "log_level: info\n")


def get_text(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.read().decode()


def get(url: str):
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read().decode())


def read(root: Path, sql: str, *args) -> list[tuple]:
    conn = sqlite3.connect(f"file:{root / 'state' / 'facesortd.db'}?mode=ro", uri=True, timeout=10)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def placed(root: Path) -> dict[int, Path]:
    """image id -> where its main file is placed, for the images facesortd still manages."""
    return {i: Path(os.fsdecode(p)) for i, p in read(
        root, "SELECT image_id, path FROM placements WHERE kind = 'main' AND image_id IS NOT NULL")}


def eventually(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        time.sleep(0.1)


def test_moves_renames_and_deletes_in_the_library_teach_the_running_daemon(tmp_path, library,
                                                                          start_daemon):
    root = tmp_path
    library.copy(root)
    (root / "facesortd.yaml").write_text(CONFIG)
    lib = root / "library"
    by_folder: dict[Path, list[int]] = {}
    for image, path in placed(root).items():
        by_folder.setdefault(path.parent, []).append(image)
    people = sorted((f for f in by_folder if f.name.startswith("Person_")),
                    key=lambda f: -len(by_folder[f]))
    assert len(people) >= 3, by_folder
    a, b, c = people[:3]                       # three person folders, the largest first
    moved = by_folder[a][0]
    deleted = by_folder[a][1]
    b_person = int(b.name.split("_")[1])        # Person_0007: identity 7 (unnamed)
    c_person = int(c.name.split("_")[1])
    moved_from = placed(root)[moved]

    daemon = start_daemon(root)
    try:
        url = daemon.url(timeout=90)
        daemon.wait_log(r"facesortd running", timeout=30)
        time.sleep(0.5)   # the library watch begins with the placer's first sync

        os.rename(moved_from, b / moved_from.name)          # dragged into another person's folder
        os.rename(c, lib / "Christopher Walken")             # a person's folder renamed
        os.unlink(placed(root)[deleted])                     # a photo deleted

        def learned():
            faces = get(f"{url}api/images/{moved}")["faces"]
            person = get(f"{url}api/identities/{c_person}")
            removed = read(root, "SELECT removed_at FROM images WHERE id = ?", deleted)[0][0]
            return (faces[0]["person"] and faces[0]["person"]["id"] == b_person
                    and faces[0]["pinned"] and person["name"] == "Christopher Walken"
                    and removed is not None)

        eventually(learned, 30, "the daemon learning the move, the rename and the delete")

        def agree() -> None:
            now = placed(root)
            assert now[moved] == b / moved_from.name and now[moved].is_file()
            assert not moved_from.exists()
            assert all(p.parent == lib / "Christopher Walken" and p.is_file()
                       for i, p in now.items() if i in by_folder[c])
            assert not c.exists()
            assert deleted not in now or not now[deleted].exists()
            assert not list(lib.rglob(placed_name(root, deleted)))   # not placed again
            faces = get(f"{url}api/images/{moved}")["faces"]
            assert faces[0]["person"]["id"] == b_person and faces[0]["pinned"]
            assert get(f"{url}api/identities/{c_person}")["name"] == "Christopher Walken"
            history = get(f"{url}api/history")
            assert "library" in json.dumps(history)

        agree()
        # a recluster undoes none of it (SIGUSR1, what `facesortd recluster` sends)
        daemon.proc.send_signal(signal.SIGUSR1)
        eventually(lambda: parse_prometheus(get_text(url + "metrics"))["facesortd_reclusters_total"]
                   >= 1, 60, "a recluster")
        time.sleep(2.0)   # its changes placed (the loop's debounce is 1 s)
        agree()
    finally:
        assert daemon.stop() == 0, "\n".join(daemon.log)
    assert not [line for line in daemon.log if "Traceback" in line], "\n".join(daemon.log)

    # run --once: a move made while no daemon ran is read by the scan before placing
    now = placed(root)
    back = now[moved]
    os.rename(back, a / back.name)
    once = subprocess.run([sys.executable, "-m", "facesortd", "run", "--once", "--config",
                           str(root / "facesortd.yaml")], cwd=root, capture_output=True, text=True,
                          env=dict(os.environ, GLIBC_TUNABLES=TUNABLES, PYTHONPATH=str(REPO)),
                          timeout=300)
    assert once.returncode == 0, once.stderr
    assert placed(root)[moved] == a / back.name and (a / back.name).is_file()
    a_person = int(a.name.split("_")[1])
    assert read(root, "SELECT identity_id, pinned FROM faces WHERE image_id = ? AND rejected = 0 "
                "ORDER BY (box_x2-box_x1)*(box_y2-box_y1) DESC", moved)[0] == (a_person, 1)


def placed_name(root: Path, image: int) -> str:
    (path,) = read(root, "SELECT path FROM images WHERE id = ?", image)[0]
    return Path(os.fsdecode(path)).name
