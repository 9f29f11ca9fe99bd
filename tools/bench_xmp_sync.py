"""What ``placement.xmp_sidecars`` costs the placer when nothing changed: ``Sidecars.sync`` over a
library of N placed photos that each already have their sidecar, timed.

    python tools/bench_xmp_sync.py [--photos 100000] [--people 1000] [--reps 3] [--root DIR]

Builds a store of ``--photos`` images (one face each, people round-robin, all named, no model),
their placements (empty files stand in for the photos) and a recorded sidecar of ours beside each
(made by ``xmp.render`` once and copied, so the rows say what a real sync would have written),
then times ``Sidecars.sync()`` (what the end of every placer sync does: the store read, a digest
per photo, an lstat per sidecar; exiv2 only for a changed digest), and one more after renaming
one person (the sidecars of that person's photos rewritten). Prints one JSON line per rep.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path


def one_rep(root: Path, photos: int, people: int) -> dict:
    import numpy as np

    from facesortd.config import parse_config
    from facesortd.library import xmp
    from facesortd.library.journal import Journal
    from facesortd.store.database import Store, encode_path

    config = parse_config(f"library: {root / 'library'}\ninboxes:\n  - path: inbox\n"
                          "placement:\n  xmp_sidecars: true\n", root / "facesortd.yaml")
    (root / "inbox").mkdir()
    store = Store.open(config.state_dir)
    store.bind_model("bench", 4)
    now = time.time()
    with store.transaction() as conn:
        ids = [conn.execute("INSERT INTO identities (name, created_at) VALUES (?, ?)",
                            (f"Person {k}", now)).lastrowid for k in range(people)]
    vector = np.full(4, 0.5, np.float32)
    box = (100.0, 80.0, 300.0, 330.0)
    sample = xmp.render([xmp.Region("Person 0", box)], (1000, 800))
    from PIL import Image

    photo, side_file = root / "photo.jpg", root / "sidecar.xmp"
    Image.new("RGB", (1000, 800)).save(photo)
    side_file.write_bytes(sample)
    rows, t0 = [], time.perf_counter()
    for start in range(0, photos, 5000):
        items = [(root / "inbox" / f"IMG_{i:06d}.jpg", root / "inbox",
                  hashlib.sha256(str(i).encode()).hexdigest(), 1, 1, [(box, 0.99, vector)])
                 for i in range(start, min(start + 5000, photos))]
        for (image_id, (face,)), i in zip(store.add_ingested(items),
                                          range(start, start + len(items))):
            rows.append((image_id, face, ids[i % people], items[i - start][2]))
    out: dict = {"photos": photos, "ingest_s": round(time.perf_counter() - t0, 1)}
    t0 = time.perf_counter()
    placements, faces = [], []
    for k in range(people):
        (config.library / f"Person {k}").mkdir(parents=True)
    for n, (image_id, face, identity, sha) in enumerate(rows):   # hard links, few inodes
        if n % 50_000 == 0:   # ext4 allows 65,000 links to one file
            shutil.copy(photo, photo.with_name(f"photo{n}.jpg"))
            shutil.copy(side_file, side_file.with_name(f"sidecar{n}.xmp"))
        main = config.library / f"Person {identity - ids[0]}" / f"IMG_{image_id:06d}.jpg"
        os.link(photo.with_name(f"photo{n - n % 50_000}.jpg"), main)
        side = main.with_name(main.name + ".xmp")
        os.link(side_file.with_name(f"sidecar{n - n % 50_000}.xmp"), side)
        regions = [xmp.Region(f"Person {identity - ids[0]}", box)]
        placements += [(image_id, encode_path(main), "main", "move", sha, None, now, now),
                       (image_id, encode_path(side), "companion",
                        xmp.PREFIX + xmp.digest(sha, regions),
                        hashlib.sha256(sample).hexdigest(), side.stat().st_mtime_ns, now, now)]
        faces.append((identity, face))
    with store.transaction() as conn:
        conn.executemany("UPDATE faces SET identity_id = ? WHERE id = ?", faces)
        conn.executemany("INSERT INTO placements (image_id, path, kind, action, sha256, mtime_ns, "
                         "created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", placements)
    out["files_s"] = round(time.perf_counter() - t0, 1)
    sidecars = xmp.Sidecars(store, Journal(store))
    for step in ("unchanged_1", "unchanged_2"):
        t0 = time.perf_counter()
        counts = sidecars.sync(config)
        out[step + "_s"] = round(time.perf_counter() - t0, 3)
        assert not any(counts.values()), counts
    with store.transaction() as conn:
        conn.execute("UPDATE identities SET name = 'Renamed' WHERE id = ?", (ids[0],))
    t0 = time.perf_counter()
    counts = sidecars.sync(config)
    out["one_renamed_s"] = round(time.perf_counter() - t0, 3)
    out["one_renamed_rewritten"] = counts["rewritten"]
    store.close()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--photos", type=int, default=100_000)
    ap.add_argument("--people", type=int, default=1000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--root", type=Path, default=None, help="where the temp folders go")
    args = ap.parse_args()
    for _ in range(args.reps):
        root = Path(tempfile.mkdtemp(prefix="facesortd-xmp-bench-", dir=args.root))
        try:
            print(json.dumps(one_rep(root, args.photos, args.people)), flush=True)
        finally:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.exit(main())
