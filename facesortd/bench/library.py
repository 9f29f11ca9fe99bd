"""``facesortd bench library``: what reading the library costs (issue 19) at 100k placed files.

It builds a real state folder and library in a temp folder: ``files`` small files (1-6 KB of
random bytes, so sizes collide as they would not among real photos: the worst case for the
size-then-hash match) in ``people`` person folders, one store with an image, a face and a
placement row for each (bulk SQL on the real schema), plus ``hand`` files a person put there by
hand (no row). Then it times, with the real ``scan_library`` and ``Placer``:

- a full scan with nothing changed (the walk of the library against the rows), and a placer sync
  without a scan over the same store, for comparison;
- a full scan after ``moves`` placed photos were dragged to other person folders, twice with
  their names kept (the scan hashes the file of the same size and name first: one hash each) and
  twice renamed on the way (every untracked file of a missing file's size is a candidate: the
  hand-placed ones are hashed too, and kept in the hash cache, so a later scan only stats them);
- the scan of one move's two event paths, as the daemon's watcher hands them over.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from facesortd.config import parse_config
from facesortd.library.layout import identity_folders, render
from facesortd.library.placer import Placer
from facesortd.library.scan import scan_library
from facesortd.people.corrections import from_library
from facesortd.store.database import Store, encode_path

__all__ = ["bench_library"]

MODEL, DIM = "bench-library", 4


def _build(root: Path, files: int, people: int, hand: int, rng: np.random.Generator,
           out: Callable[[str], None]):
    """The state folder, config and library; returns (config, store, placed: image -> path)."""
    (root / "inbox").mkdir(parents=True)
    config = parse_config(f"library: {root / 'library'}\nstate_dir: {root / 'state'}\n"
                          "inboxes:\n  - path: inbox\n", root / "facesortd.yaml")
    store = Store.open(config.state_dir, load_vectors=False)
    store.bind_model(MODEL, DIM)
    pc = config.placement
    now = time.time()
    vector = np.zeros(DIM, np.float32).tobytes()
    with store.transaction() as conn:
        conn.executemany("INSERT INTO identities (id, name, created_at) VALUES (?, NULL, ?)",
                         [(i, now) for i in range(1, people + 1)])
    folders = identity_folders({i: None for i in range(1, people + 1)}, pc.special_dirs)
    inbox = config.inboxes[0].path
    sizes = rng.integers(1000, 6000, size=files + hand)
    who = rng.integers(1, people + 1, size=files)
    placed: dict[int, Path] = {}
    made: set[Path] = set()
    step = 10_000
    for start in range(0, files, step):
        images, faces, rows = [], [], []
        for n in range(start, min(start + step, files)):
            image_id = n + 1
            original = inbox / f"IMG_{n:06d}.jpg"
            path = config.library / render(pc, folders[int(who[n])], original, inbox)
            if path.parent not in made:
                path.parent.mkdir(parents=True, exist_ok=True)
                made.add(path.parent)
            data = rng.bytes(int(sizes[n]))
            path.write_bytes(data)
            sha = hashlib.sha256(data).hexdigest()
            st = path.stat()
            images.append((image_id, encode_path(original), encode_path(inbox), sha, len(data),
                           st.st_mtime_ns, now, now))
            faces.append((image_id, vector, MODEL, int(who[n]), now))
            rows.append((image_id, encode_path(path), sha, now, now))
            placed[image_id] = path
        with store.transaction() as conn:
            conn.executemany("INSERT INTO images (id, path, inbox, sha256, size, mtime_ns, status, "
                             "created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, 'done', ?, ?)", images)
            conn.executemany("INSERT INTO faces (image_id, box_x1, box_y1, box_x2, box_y2, score, "
                             "vector, model_id, identity_id, created_at) "
                             "VALUES (?, 0, 0, 10, 10, 0.99, ?, ?, ?, ?)", faces)
            conn.executemany("INSERT INTO placements (image_id, path, kind, action, sha256, "
                             "created_at, updated_at) VALUES (?, ?, 'main', 'move', ?, ?, ?)", rows)
        out(f"built {min(start + step, files)} of {files} placed files")
    homes = sorted(made)
    for n in range(hand):   # a person's own files among the placed ones: no row
        folder = homes[int(rng.integers(len(homes)))]
        (folder / f"mine_{n:05d}.jpg").write_bytes(rng.bytes(int(sizes[files + n])))
    return config, store, placed, homes


def _timed(fn: Callable[[], object]) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def _drag(placed: dict[int, Path], homes: list[Path], count: int, rng: np.random.Generator,
          rename: bool = False) -> list[tuple[int, Path, Path]]:
    """Move ``count`` placed photos into other person folders (their names kept, or with
    ``rename`` changed as a file manager's "keep both" does: then the name does not lead the
    scan to them, and every untracked file of the same size is a candidate)."""
    moved = []
    for image_id in rng.choice(sorted(placed), size=count, replace=False):
        src = placed[int(image_id)]
        for _ in range(10):
            folder = homes[int(rng.integers(len(homes)))]
            dst = folder / (f"{src.stem} (2){src.suffix}" if rename else src.name)
            if folder != src.parent and not dst.exists():
                os.rename(src, dst)
                placed[int(image_id)] = dst
                moved.append((int(image_id), src, dst))
                break
    return moved


def bench_library(files: int = 100_000, people: int = 1000, moves: int = 100, hand: int = 1000,
                  repeats: int = 3, seed: int = 0, root: Optional[Path] = None, keep: bool = False,
                  out: Callable[[str], None] = lambda line: None) -> dict:
    """Build the library, time the scans (medians of ``repeats`` where repeatable); JSON figures."""
    rng = np.random.default_rng(seed)
    base = Path(tempfile.mkdtemp(prefix="facesortd-bench-library-", dir=root))
    store = None
    try:
        t_build, (config, store, placed, homes) = _timed(
            lambda: _build(base, files, people, hand, rng, out))
        learn = from_library
        figures: dict = {"files": files, "people": people, "hand_placed": hand, "moves": moves,
                         "build_s": round(t_build, 1), "root": str(base)}

        def scan(what) -> tuple[float, object]:
            return _timed(lambda: scan_library(config, store, learn, what))

        # warm: the first walk also warms the page cache of a library just written
        clean = [scan(True) for _ in range(repeats + 1)][1:]
        figures["full_scan_unchanged_s"] = round(statistics.median(t for t, _ in clean), 3)
        figures["full_scan_unchanged_files_seen"] = clean[0][1].files
        placer = Placer(config, store, learn=learn)
        t_sync, ops = _timed(lambda: placer.sync())
        figures["placer_sync_without_scan_s"] = round(t_sync, 2)
        figures["placer_sync_without_scan_ops"] = len(ops)

        rounds = []
        for r, rename in enumerate((False, False, True, True)):
            moved = _drag(placed, homes, moves, rng, rename)
            t, learned = scan(True)
            with store.read() as conn:
                cached = conn.execute("SELECT COUNT(*) FROM library_hashes").fetchone()[0]
            ok = _check(store, moved)
            rounds.append({"renamed": rename, "scan_s": round(t, 3), "moved": len(moved),
                           "learned_moves": learned.moved,
                           "hashed": learned.hashed, "hash_cache_rows": cached,
                           "rows_follow_the_files": ok})
            out(f"round {r + 1}: {rounds[-1]}")
        figures["full_scan_after_moves"] = rounds

        events = []
        for _ in range(max(repeats, 5)):
            (image_id, src, dst), = _drag(placed, homes, 1, rng)
            t, learned = scan([src, dst])
            events.append((t, learned.moved, _check(store, [(image_id, src, dst)])))
        figures["event_paths_scan_s"] = round(statistics.median(t for t, _, _ in events), 4)
        figures["event_paths_scan_learned"] = sum(m for _, m, _ in events)
        figures["event_paths_rows_follow"] = all(ok for _, _, ok in events)
        t_sync_scan, ops = _timed(lambda: placer.sync(scan=True))
        figures["placer_sync_with_full_scan_s"] = round(t_sync_scan, 2)
        figures["placer_sync_with_full_scan_ops"] = len(ops)
        return figures
    finally:
        if store is not None:
            store.close()
        if not keep:
            shutil.rmtree(base, ignore_errors=True)


def _check(store: Store, moved: list[tuple[int, Path, Path]]) -> bool:
    """Do the placement rows of the moved photos name where they went (the scan learned them)?"""
    with store.read() as conn:
        for image_id, _, dst in moved:
            row = conn.execute("SELECT path FROM placements WHERE image_id = ? AND kind = 'main'",
                               (image_id,)).fetchone()
            if row is None or row[0] != encode_path(dst):
                return False
    return True
