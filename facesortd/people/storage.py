"""What the identity service reads from and writes to the store: the correction marker and
constraints, its meta keys, the stored eps-graph, and the rows a result changes (merges of
emptied identities, merge suggestions).
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from facesortd.people.clustering import Constraints, Graph
from facesortd.store.database import Store
from facesortd.store.identity_rows import live_map, retire
from facesortd.store.sql import in_chunks


def history_marker(conn) -> tuple[int, int]:
    """Changes whenever a correction is made or undone (by this process or another one)."""
    row = conn.execute("SELECT COALESCE(MAX(id), 0), COALESCE(SUM(undone), 0) FROM history").fetchone()
    return int(row[0]), int(row[1])


def load_constraints(conn) -> Constraints:
    pinned = dict(conn.execute("SELECT id, identity_id FROM faces "
                               "WHERE pinned = 1 AND rejected = 0 AND identity_id IS NOT NULL"))
    cannot = frozenset((int(f), int(i)) for f, i in conn.execute(
        "SELECT face_id, identity_id FROM cannot_link"))
    # a hidden person is a decision too: never merged automatically, like a named one
    named = frozenset(r[0] for r in conn.execute(
        "SELECT id FROM identities WHERE (name IS NOT NULL OR hidden = 1) AND merged_into IS NULL"))
    return Constraints(pinned=pinned, cannot_link=cannot, named=named)


def meta_get(conn, key: str) -> Optional[str]:
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return row[0] if row else None


def meta_set(conn, key: str, value: object) -> None:
    conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, str(value)))


def record_merges(conn, previous: np.ndarray, label: np.ndarray) -> int:
    """Retire the identities a result emptied: an unnamed identity left with no face *in the
    store* (an incremental result lists only the faces it moved, so the result alone cannot
    tell), whose faces went to other identities, is merged into the one that took most of them.
    Returns how many were retired."""
    moved = (previous >= 0) & (label != previous)
    retired = 0
    for o in np.unique(previous[moved]).tolist():
        if conn.execute("SELECT 1 FROM faces WHERE identity_id = ? LIMIT 1", (o,)).fetchone():
            continue
        row = conn.execute("SELECT name, merged_into FROM identities WHERE id = ?", (o,)).fetchone()
        if row is None or row[0] is not None or row[1] is not None:
            continue
        to = label[(previous == o) & (label >= 0) & (label != o)]
        if not len(to):
            continue
        values, counts = np.unique(to, return_counts=True)
        if retire(conn, o, int(values[np.argmax(counts)])) is not None:
            retired += 1
    return retired


def to_live(conn, labels: np.ndarray) -> np.ndarray:
    """Labels with every merged identity replaced by the live one it resolves to (labels read
    before a merge, e.g. from a cache, never put a face on a merged identity)."""
    merged = live_map(conn)
    if not merged or not len(labels):
        return labels
    keys = np.fromiter(merged.keys(), np.int64, len(merged))
    hit = np.isin(labels, keys)
    if hit.any():
        labels = labels.copy()
        labels[hit] = [merged[int(x)] for x in labels[hit]]
    return labels


def record_suggestion(conn, a: int, b: int, distance: float) -> None:
    a, b = min(a, b), max(a, b)
    row = conn.execute("SELECT id, status FROM suggestions WHERE a = ? AND b = ?", (a, b)).fetchone()
    if row is None:
        conn.execute("INSERT INTO suggestions (a, b, distance, status) VALUES (?, ?, ?, 'open')",
                     (a, b, float(distance)))
    elif row[1] == "open":
        conn.execute("UPDATE suggestions SET distance = ? WHERE id = ?", (float(distance), row[0]))


def lookup(ids: np.ndarray):
    """A function: wanted ids -> (present, row in ``ids``); no sort when ids ascend (usual)."""
    if not len(ids):
        return lambda wanted: (np.zeros(len(wanted), bool), np.zeros(len(wanted), np.int64))
    order = None if bool(np.all(ids[1:] > ids[:-1])) else np.argsort(ids, kind="stable")
    look = ids if order is None else ids[order]

    def find(wanted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        pos = np.minimum(np.searchsorted(look, wanted), len(ids) - 1)
        return look[pos] == wanted, (pos if order is None else order[pos])
    return find


def rows_of(ids: np.ndarray, wanted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(present, row in ``ids``) per wanted id."""
    return lookup(ids)(wanted)


def read_graph(conn, ids: np.ndarray, eps: float, chunk: int = 1 << 16) -> Graph:
    """The stored edges within eps between faces in ``ids``, by row position (int32), read in
    chunks straight into arrays: millions of edges never become millions of Python tuples."""
    total = conn.execute("SELECT COUNT(*) FROM face_edges").fetchone()[0]
    index_type = np.int32 if len(ids) < 2**31 else np.int64
    gi, gj = np.empty(total, index_type), np.empty(total, index_type)
    gd = np.empty(total, np.float32)
    k, find = 0, lookup(ids)
    cursor = conn.execute("SELECT a, b, d FROM face_edges")
    while rows := cursor.fetchmany(chunk):
        e = np.array(rows, np.float64).reshape(-1, 3)
        ok_a, ra = find(e[:, 0].astype(np.int64))
        ok_b, rb = find(e[:, 1].astype(np.int64))
        ok = ok_a & ok_b & (e[:, 2] <= eps)
        m = int(ok.sum())
        gi[k:k + m], gj[k:k + m] = np.minimum(ra[ok], rb[ok]), np.maximum(ra[ok], rb[ok])
        gd[k:k + m] = e[ok, 2]
        k += m
    return Graph(gi[:k], gj[:k], gd[:k])


def load_pinned_ids(store: Store, face_ids: np.ndarray) -> list[int]:
    if not len(face_ids):
        return []
    out: list[int] = []
    with store.read() as conn:
        for marks, part in in_chunks(int(f) for f in face_ids):
            out += [r[0] for r in conn.execute(
                f"SELECT id FROM faces WHERE pinned = 1 AND id IN ({marks})", part)]
    return out


def write_edges(conn, a: np.ndarray, b: np.ndarray, d: np.ndarray) -> None:
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    rows = zip(lo.tolist(), hi.tolist(), np.asarray(d, np.float64).tolist())
    conn.executemany("INSERT OR REPLACE INTO face_edges (a, b, d) VALUES (?, ?, ?)", rows)
