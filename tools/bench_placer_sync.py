"""What the journal's durability costs: a placer sync of N small files, timed.

    python tools/bench_placer_sync.py [--files 2000] [--people 8] [--reps 3] [--chunk N]
        [--tree DIR ...]

Each rep builds a fresh inbox of ``--files`` small files under ``--root`` (default: a temp folder
on the disk the state and library would live on), records them as ingested with one face each
(people round-robin, no model), and times two syncs: ``place`` (inbox -> person folders) and
``follow`` (every person renamed, so every file moves again). With ``--tree``, each given source
tree (a checkout, e.g. a ``git worktree`` of an older commit) is run in turn in its own process,
rep by rep, so the figures compare in one run. ``--chunk`` overrides ``placer.CHUNK_OPS`` where
the tree has it (1: a synced commit per operation). Prints one JSON line per tree and rep, then
the medians.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def one_rep(root: Path, files: int, people: int, chunk: int | None) -> dict:
    import numpy as np

    from facesortd import fsops
    from facesortd.config import parse_config
    from facesortd.library import placer as placer_mod
    from facesortd.store.database import Store

    if chunk is not None and hasattr(placer_mod, "CHUNK_OPS"):
        placer_mod.CHUNK_OPS = chunk
    inbox = root / "inbox"
    for i in range(files):
        folder = inbox / f"cam{i % 4}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"IMG_{i:05d}.jpg").write_bytes(os.urandom(2000))
    config = parse_config(f"library: {root / 'library'}\ninboxes:\n  - path: inbox\n",
                          root / "facesortd.yaml")
    store = Store.open(config.state_dir)
    store.bind_model("bench", 4)
    now = time.time()
    with store.transaction() as conn:
        ids = [conn.execute("INSERT INTO identities (name, created_at) VALUES (?, ?)",
                            (f"P{k}", now)).lastrowid for k in range(people)]
    vector = np.full(4, 0.5, np.float32)
    for i, path in enumerate(sorted(p for p in inbox.rglob("*") if p.is_file())):
        st = path.stat()
        image_id = store.add_image(path, inbox, fsops.sha256_of(path), st.st_size,
                                   st.st_mtime_ns, status="pending")
        (face,) = store.add_faces(image_id, [((0.0, 0.0, 10.0, 10.0), 0.99, vector)])
        with store.transaction() as conn:
            conn.execute("UPDATE faces SET identity_id = ? WHERE id = ?", (ids[i % people], face))
    placer = placer_mod.Placer(config, store)
    out = {}
    for step in ("place", "follow"):
        if step == "follow":
            with store.transaction() as conn:
                conn.executemany("UPDATE identities SET name = ? WHERE id = ?",
                                 [(f"Renamed {k}", i) for k, i in enumerate(ids)])
        t0 = time.perf_counter()
        ops = placer.sync()
        out[step + "_s"] = round(time.perf_counter() - t0, 3)
        out[step + "_ops"] = len(ops)
    store.close()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", type=int, default=2000)
    ap.add_argument("--people", type=int, default=8)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--chunk", type=int, default=None)
    ap.add_argument("--root", type=Path, default=None, help="where the temp folders go")
    ap.add_argument("--tree", type=Path, action="append", default=[])
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:   # a child: one rep against the facesortd on sys.path
        root = Path(tempfile.mkdtemp(prefix="facesortd-bench-", dir=args.root))
        try:
            print(json.dumps(one_rep(root, args.files, args.people, args.chunk)))
        finally:
            shutil.rmtree(root, ignore_errors=True)
        return 0
    trees = args.tree or [Path(__file__).resolve().parents[1]]
    results: dict[str, list[dict]] = {str(t): [] for t in trees}
    for rep in range(args.reps):
        for tree in trees:
            cmd = [sys.executable, __file__, "--one", "--files", str(args.files),
                   "--people", str(args.people)]
            cmd += ["--chunk", str(args.chunk)] if args.chunk is not None else []
            cmd += ["--root", str(args.root)] if args.root is not None else []
            env = dict(os.environ, PYTHONPATH=str(tree))
            line = subprocess.run(cmd, env=env, check=True, capture_output=True,
                                  text=True).stdout.strip().splitlines()[-1]
            results[str(tree)].append(json.loads(line))
            print(json.dumps({"tree": str(tree), "rep": rep, **results[str(tree)][-1]}))
    for tree, runs in results.items():
        print(json.dumps({"tree": tree, "median": {
            k: statistics.median(r[k] for r in runs) for k in runs[0]}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
