"""The identities table's invariants, and the one way an identity is retired (merged into another).

What always holds once a store is at schema version 6 (``store_schema``'s triggers abort any write
that would break it, so a bug fails loudly instead of corrupting the people):

1. a merged identity holds no face, and no face is ever given to one;
2. ``merged_into`` points straight at a live identity: no chains, no cycles, never at itself.

So every face is on a live identity (a person on the review page, in that person's folder), or on
none (the Unassigned page, ``_unsorted/``), or rejected. Code that retires an identity calls
``retire``; code that holds identity ids read earlier (a cache, an undo snapshot) maps them through
``live_map`` / ``resolve`` before writing them. ``check`` counts what is broken (``facesortd
doctor``, tests); ``repair`` mends stores written before the triggers existed.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Optional

log = logging.getLogger("facesortd.identities")

__all__ = ["live_map", "resolve", "retire", "Problems", "check", "repair"]


def live_map(conn) -> dict[int, int]:
    """Merged identity id -> the live identity it resolves to (cycle-safe; a cycle or a dangling
    pointer resolves to no identity and is left out)."""
    into = dict(conn.execute("SELECT id, merged_into FROM identities WHERE merged_into IS NOT NULL"))
    out: dict[int, int] = {}
    for start in into:
        seen, node = [start], into[start]
        while node in into and node not in seen:
            seen.append(node)
            node = into[node]
        if node not in into:                  # reached an identity that is not merged
            out[start] = node
    return out


def resolve(conn, identity_id: Optional[int]) -> Optional[int]:
    """The live identity ``identity_id`` stands for today (itself when live); None for None, an
    unknown id, or one lost in a cycle."""
    seen: set[int] = set()
    node = identity_id
    while node is not None and node not in seen:
        seen.add(node)
        row = conn.execute("SELECT merged_into FROM identities WHERE id = ?", (int(node),)).fetchone()
        if row is None:
            return None
        if row[0] is None:
            return int(node)
        node = row[0]
    return None


def retire(conn, source: int, into: int) -> Optional[int]:
    """Merge ``source`` into the live identity ``into`` stands for: its faces (pins kept), its
    "not this person" pairs and the identities merged into it go there, then it is marked merged.
    Returns the surviving id, or None (nothing done) when ``into`` resolves to ``source`` itself or
    to nothing. Part of the caller's transaction."""
    source = int(source)
    target = resolve(conn, into)
    if target is None or target == source:
        return None
    conn.execute("UPDATE faces SET identity_id = ? WHERE identity_id = ?", (target, source))
    conn.execute("INSERT OR IGNORE INTO cannot_link (face_id, identity_id) "
                 "SELECT face_id, ? FROM cannot_link WHERE identity_id = ?", (target, source))
    conn.execute("DELETE FROM cannot_link WHERE identity_id = ?", (source,))
    conn.execute("UPDATE identities SET merged_into = ? WHERE merged_into = ?", (target, source))
    conn.execute("UPDATE identities SET merged_into = ? WHERE id = ?", (target, source))
    return target


@dataclass(frozen=True)
class Problems:
    """What breaks the invariants in a store (all zero in a healthy one)."""

    faces_on_merged: int = 0        # faces whose identity is a merged one
    merged_holding_faces: int = 0   # merged identities that still hold faces
    chained: int = 0                # merged_into points at an identity that is merged itself
    in_cycles: int = 0              # identities on a merged_into cycle
    dangling: int = 0               # merged_into points at no identity, or at itself

    @property
    def total(self) -> int:
        return sum(asdict(self).values())

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def check(conn) -> Problems:
    """Count what breaks the invariants (read-only)."""
    faces_on_merged, holding = conn.execute(
        "SELECT COUNT(*), COUNT(DISTINCT f.identity_id) FROM faces f "
        "JOIN identities i ON i.id = f.identity_id WHERE i.merged_into IS NOT NULL").fetchone()
    into = dict(conn.execute("SELECT id, merged_into FROM identities WHERE merged_into IS NOT NULL"))
    known = {r[0] for r in conn.execute("SELECT id FROM identities")}
    chained = sum(1 for a, b in into.items() if b in into and b != a)
    dangling = sum(1 for a, b in into.items() if b == a or b not in known)
    in_cycle: set[int] = set()
    for start in into:
        path, node = [], start
        while node in into and node not in path and node not in in_cycle:
            path.append(node)
            node = into[node]
        if node in path:
            in_cycle.update(path[path.index(node):])
    return Problems(int(faces_on_merged), int(holding), chained, len(in_cycle), dangling)


def _survivor(conn, members: list[int]) -> int:
    """Of identities that must become one: the named one, else the oldest."""
    marks = ",".join("?" * len(members))
    row = conn.execute(f"SELECT id FROM identities WHERE id IN ({marks}) "
                       "ORDER BY name IS NULL, created_at, id LIMIT 1", members).fetchone()
    return int(row[0])


def repair(conn) -> dict[str, int]:
    """Mend a store written before the invariants were enforced (part of the caller's transaction).

    - An identity marked merged that still holds faces was retired by mistake (an old bug marked
      an identity merged when *some* of its faces moved): it is live again, so the people it
      holds stay apart instead of being lumped into the identity it pointed at.
    - Chains are collapsed to the live identity at their end; a cycle with no live end keeps one
      survivor (the named, else the oldest), which becomes live, and the rest point straight at it.
    - A pointer at itself or at no identity is cleared.
    Returns what was changed; one log line says so when anything was.
    """
    before = check(conn)
    if not before.total:
        return {}
    revived = conn.execute(
        "UPDATE identities SET merged_into = NULL WHERE merged_into IS NOT NULL "
        "AND EXISTS (SELECT 1 FROM faces f WHERE f.identity_id = identities.id)").rowcount
    cleared = conn.execute(
        "UPDATE identities SET merged_into = NULL WHERE merged_into = id "
        "OR merged_into NOT IN (SELECT id FROM identities)").rowcount
    into = dict(conn.execute("SELECT id, merged_into FROM identities WHERE merged_into IS NOT NULL"))
    cycles = 0
    done: set[int] = set()
    for start in list(into):
        path, node = [], start
        while node in into and node not in path and node not in done:
            path.append(node)
            node = into[node]
        if node in path:                      # a cycle with no live end: pick its survivor
            ring = path[path.index(node):]
            keep = _survivor(conn, ring)
            conn.execute("UPDATE identities SET merged_into = NULL WHERE id = ?", (keep,))
            into.pop(keep, None)
            cycles += 1
        done.update(path)
    collapsed = 0
    for ident, root in live_map(conn).items():
        if into.get(ident) != root:
            conn.execute("UPDATE identities SET merged_into = ? WHERE id = ?", (root, ident))
            collapsed += 1
    out = {"revived": revived, "cleared": cleared, "cycles_broken": cycles,
           "chains_collapsed": collapsed}
    log.warning("repaired the store's identities: %s (before: %s); the library follows at the next "
                "placement", ", ".join(f"{k} {v}" for k, v in out.items()),
                ", ".join(f"{k} {v}" for k, v in before.as_dict().items() if v))
    return out
