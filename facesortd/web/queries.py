"""What the review page shows, read from the store on the request's own read-only connection.

The daemon writes through its ``Store`` (one connection behind a lock); the page reads the SQLite
file on a connection of its own per request (WAL lets readers run beside the writer), so a long
recluster never stalls a page, and a page can never write by accident. Every list is paged.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from facesortd.library.layout import identity_folder
from facesortd.people.doubt import DOUBTFUL
from facesortd.store.database import decode_path

PEOPLE_PER_PAGE = 48
FACES_PER_PAGE = 120
SAMPLES = 4
REVIEW_PER_PAGE = 40
REVIEW_MAX = 10_000


@dataclass(frozen=True)
class Page:
    number: int
    size: int
    total: int

    @property
    def count(self) -> int:
        return max(1, -(-self.total // self.size))

    @property
    def offset(self) -> int:
        return (self.number - 1) * self.size

    def as_dict(self) -> dict:
        return {"page": self.number, "per_page": self.size, "total": self.total, "pages": self.count}


def connect(db_path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=10.0)
    conn.execute("PRAGMA busy_timeout = 10000")
    return conn


def display_name(identity_id: int, name: Optional[str]) -> str:
    """The name a person gave, else the folder name (``Person_0007``)."""
    return name or identity_folder(identity_id, None).name


def _samples(conn: sqlite3.Connection, identity_id: int, n: int = SAMPLES) -> list[int]:
    return [r[0] for r in conn.execute(
        "SELECT id FROM faces WHERE identity_id = ? AND rejected = 0 ORDER BY id LIMIT ?",
        (identity_id, n))]


def _person(conn, identity_id: int, name: Optional[str], count: int, samples: int = SAMPLES) -> dict:
    return {"id": identity_id, "name": name, "display_name": display_name(identity_id, name),
            "face_count": count, "sample_face_ids": _samples(conn, identity_id, samples)}


def _search(q: str) -> tuple[str, list]:
    """Match the given name, or the default ``Person_0007`` name, or ``#7``/``7`` as the id."""
    q = q.strip()
    if not q:
        return "", []
    if q.lstrip("#").isdigit():
        return " AND i.id = ?", [int(q.lstrip("#"))]
    like = "%" + q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
    return (" AND (i.name LIKE ? ESCAPE '\\' OR (i.name IS NULL AND "
            "printf('Person_%04d', i.id) LIKE ? ESCAPE '\\'))", [like, like])


#: How the overview can be sorted: the ORDER BY over people i, their face counts c and (``doubt``)
#: their doubtful faces d: most faces at or above ``DOUBTFUL`` (not confirmed), then the most
#: doubtful one, then size.
SORTS = {"size": "c.n DESC, i.id",
         "name": "COALESCE(i.name, printf('Person_%04d', i.id)) COLLATE NOCASE, i.id",
         "doubt": "COALESCE(d.n, 0) DESC, d.top DESC, c.n DESC, i.id"}

#: Each person's doubtful faces among the REVIEW_MAX most doubtful ones (the Review queue's
#: depth), read from the top of the score index: what the ``doubt`` sort orders by. Unbounded it
#: would look up every doubtful face's row (0.5 s at 100k faces where most of them are doubtful).
_DOUBTFUL_PER_PERSON = (
    "LEFT JOIN (SELECT f.identity_id, COUNT(*) AS n, MAX(s.score) AS top "
    "FROM (SELECT face_id, score FROM face_doubt "
    f"WHERE score >= {DOUBTFUL} ORDER BY score DESC LIMIT {{limit}}) s "
    "CROSS JOIN faces f ON f.id = s.face_id WHERE f.pinned = 0 AND f.rejected = 0 "
    "GROUP BY f.identity_id) d ON d.identity_id = i.id ")


def identities(conn: sqlite3.Connection, page: int = 1, q: str = "",
               per_page: int = PEOPLE_PER_PAGE, hidden: bool = False, sort: str = "size") -> dict:
    """People with at least one face, largest first (ties: oldest first), by name, or with the most
    doubtful faces first (``sort``);
    hidden people only with ``hidden``, else none of them."""
    where, args = _search(q)
    where += " AND i.hidden = 1" if hidden else " AND i.hidden = 0"
    total = conn.execute(
        "SELECT COUNT(*) FROM identities i WHERE i.merged_into IS NULL AND EXISTS (SELECT 1 FROM "
        f"faces f WHERE f.identity_id = i.id AND f.rejected = 0){where}", args).fetchone()[0]
    p = Page(page, per_page, total)
    rows = conn.execute(
        "SELECT i.id, i.name, c.n FROM (SELECT identity_id, COUNT(*) AS n FROM faces "
        "WHERE identity_id IS NOT NULL AND rejected = 0 GROUP BY identity_id) c "
        "JOIN identities i ON i.id = c.identity_id "
        + (_DOUBTFUL_PER_PERSON.format(limit=REVIEW_MAX) if sort == "doubt" else "")
        + f"WHERE i.merged_into IS NULL{where} ORDER BY {SORTS[sort]} LIMIT ? OFFSET ?",
        [*args, p.size, p.offset]).fetchall()
    return {"identities": [_person(conn, *r) for r in rows], **p.as_dict(), "q": q, "sort": sort}


def identity(conn: sqlite3.Connection, identity_id: int, page: int = 1,
             per_page: int = FACES_PER_PAGE, order: str = "doubt") -> Optional[dict]:
    """One person and a page of its faces; None if there is no such identity. ``order``:
    ``doubt`` (most doubtful first, confirmed faces last) or ``date`` (taken, else arrival)."""
    row = conn.execute("SELECT id, name, merged_into, hidden FROM identities WHERE id = ?",
                       (identity_id,)).fetchone()
    if row is None:
        return None
    total = conn.execute("SELECT COUNT(*) FROM faces WHERE identity_id = ? AND rejected = 0",
                         (identity_id,)).fetchone()[0]
    p = Page(page, per_page, total)
    faces = _faces(conn, "f.identity_id = ? AND f.rejected = 0", [identity_id], p,
                   ORDERS[order])
    return {"id": row[0], "name": row[1], "display_name": display_name(row[0], row[1]),
            "merged_into": row[2], "hidden": bool(row[3]), "face_count": total, "faces": faces,
            "order": order, **p.as_dict()}


def unassigned(conn: sqlite3.Connection, page: int = 1, per_page: int = FACES_PER_PAGE) -> dict:
    total = conn.execute("SELECT COUNT(*) FROM faces WHERE identity_id IS NULL AND rejected = 0"
                         ).fetchone()[0]
    p = Page(page, per_page, total)
    return {"faces": _faces(conn, "identity_id IS NULL AND rejected = 0", [], p), **p.as_dict()}


#: How a person's faces can be ordered (the SQL after ORDER BY, over faces f, face_doubt d and
#: image_dates t).
ORDERS = {"doubt": "f.pinned, COALESCE(d.score, -1) DESC, f.id",
          "date": "COALESCE(t.taken, '9999'), f.id"}


def _faces(conn, where: str, args: list, p: Page, order: str = "f.id") -> list[dict]:
    rows = conn.execute(
        "SELECT f.id, f.image_id, f.pinned, f.score, d.score FROM faces f "
        "LEFT JOIN face_doubt d ON d.face_id = f.id "
        + ("LEFT JOIN image_dates t ON t.image_id = f.image_id " if "t." in order else "")
        + f"WHERE {where} ORDER BY {order} LIMIT ? OFFSET ?", [*args, p.size, p.offset]).fetchall()
    return [{"id": r[0], "image_id": r[1], "pinned": bool(r[2]), "score": round(r[3], 3),
             "doubt": None if r[4] is None or r[2] else round(r[4], 3),
             "doubtful": bool(r[4] is not None and not r[2] and r[4] >= DOUBTFUL)}
            for r in rows]


def review(conn: sqlite3.Connection, page: int = 1, per_page: int = REVIEW_PER_PAGE,
           samples: int = 0) -> dict:
    """The review queue: assigned faces not yet confirmed or placed by a person, of people not
    hidden, most doubtful first, each with its person and the nearest other person. It goes
    REVIEW_MAX faces deep (each face decided lets the next one in): a page costs its offset."""
    if (page - 1) * per_page >= REVIEW_MAX:
        return {"faces": [], "page": page, "per_page": per_page, "more": False}
    # CROSS JOIN: walk the score index from the top, never sort the whole table
    rows = conn.execute(
        "SELECT d.face_id, f.image_id, f.identity_id, i.name, c.id, c.name, d.score "
        "FROM face_doubt d CROSS JOIN faces f ON f.id = d.face_id "
        "JOIN identities i ON i.id = f.identity_id "
        # the candidate as it stands today: merged since, the person it was merged into
        "LEFT JOIN identities c0 ON c0.id = d.candidate "
        "LEFT JOIN identities c ON c.id = COALESCE(c0.merged_into, c0.id) "
        "AND c.id != f.identity_id AND c.merged_into IS NULL AND c.hidden = 0 "
        "WHERE f.pinned = 0 AND f.rejected = 0 AND i.hidden = 0 "
        "ORDER BY d.score DESC, d.face_id DESC LIMIT ? OFFSET ?",
        (per_page + 1, (page - 1) * per_page)).fetchall()
    more = len(rows) > per_page and page * per_page < REVIEW_MAX
    faces = [{"face_id": r[0], "image_id": r[1],
              "person": {"id": r[2], "name": r[3], "display_name": display_name(r[2], r[3])},
              "candidate": None if r[4] is None else
              {"id": r[4], "name": r[5], "display_name": display_name(r[4], r[5])},
              "score": round(r[6], 4)} for r in rows[:per_page]]
    if samples:   # the page shows a few faces of each side
        for f in faces:
            for side in (f["person"], f["candidate"]):
                if side is not None:
                    side["sample_face_ids"] = _samples(conn, side["id"], samples)
    return {"faces": faces, "page": page, "per_page": per_page, "more": more}


def suggestions(conn: sqlite3.Connection, limit: int = 100) -> list[dict]:
    """Open merge suggestions whose two sides are both still people, closest first."""
    rows = conn.execute(
        "SELECT s.id, s.distance, a.id, a.name, b.id, b.name FROM suggestions s "
        "JOIN identities a ON a.id = s.a JOIN identities b ON b.id = s.b "
        "WHERE s.status = 'open' AND a.merged_into IS NULL AND b.merged_into IS NULL "
        "ORDER BY s.distance, s.id LIMIT ?", (limit,)).fetchall()
    out = []
    for sid, distance, a, a_name, b, b_name in rows:
        sides = []
        for ident, name in ((a, a_name), (b, b_name)):
            n = conn.execute("SELECT COUNT(*) FROM faces WHERE identity_id = ? AND rejected = 0",
                             (ident,)).fetchone()[0]
            sides.append(_person(conn, ident, name, n, samples=6))
        out.append({"id": sid, "distance": round(distance, 4), "a": sides[0], "b": sides[1]})
    return out


def history(conn: sqlite3.Connection, limit: int = 50) -> list[dict]:
    """The latest corrections, newest first, each with a sentence saying what it did."""
    rows = conn.execute("SELECT id, op, payload, created_at, undone FROM history "
                        "ORDER BY id DESC LIMIT ?", (limit,)).fetchall()
    out = []
    for hid, op, payload, created_at, undone in rows:
        p = json.loads(payload)
        args = p.get("args", {})
        out.append({"id": hid, "op": op, "args": args, "created_at": created_at,
                    "undone": bool(undone), "summary": _summary(conn, op, args, p.get("created", []))})
    return out


def _who(conn, identity_id) -> str:
    row = conn.execute("SELECT name FROM identities WHERE id = ?", (identity_id,)).fetchone()
    return f"{display_name(int(identity_id), row[0] if row else None)} (#{identity_id})"


def _summary(conn, op: str, args: dict, created: list) -> str:
    text = _what(conn, op, args, created)
    # a correction read from the library (a file moved, a folder renamed or deleted by hand)
    return f"{text} (in the library folder)" if args.get("via") == "library" else text


def _what(conn, op: str, args: dict, created: list) -> str:
    n = len(args.get("faces", []))
    faces = f"{n} face{'' if n == 1 else 's'}"
    if op == "rename":
        return (f"#{args['identity']} named “{args['name']}”" if args.get("name")
                else f"the name of #{args['identity']} taken away")
    if op == "merge":
        return f"#{args['source']} merged into {_who(conn, args['into'])}"
    if op == "move_faces":
        to = _who(conn, created[0]) + ", a new person" if args.get("to") == "new" and created \
            else _who(conn, args["to"])
        return f"{faces} moved to {to}"
    if op == "split":
        return f"{faces} split off {_who(conn, args['identity'])}"
    if op == "not_this_person":
        return f"{faces} taken out of their person for good"
    if op == "reject":
        return f"{faces} marked as not a face"
    if op == "confirm":
        return f"{faces} confirmed in their person"
    if op in ("hide", "unhide"):
        return f"{_who(conn, args['identity'])} {'hidden' if op == 'hide' else 'shown again'}"
    if op == "add_face":
        to = "a new person" if args.get("to") == "new" else _who(conn, args["to"])
        return f"a face drawn on photo #{args['image']}, given to {to}"
    if op == "remove_images":
        k = len(args.get("images", []))
        return f"{k} photo{'' if k == 1 else 's'} deleted from the library: never placed again"
    if op == "adopt":
        where = {"library": "where they are, in the library", "import": "copied into the library",
                 "outside": "kept where they are"}.get(args.get("where"), args.get("where"))
        return f"the people of {args.get('folder')} adopted: {where}"
    if op == "dismiss_suggestion":
        return f"suggestion #{args['suggestion']} dismissed: different people"
    if op == "people_import":
        return f"a people file exported {args.get('exported_at') or 'at an unknown time'} applied"
    return json.dumps(args)


def image(conn: sqlite3.Connection, image_id: int) -> Optional[dict]:
    """One photo's faces (boxes in the upright full-size photo's pixels) with their people,
    largest first; None if there is no such image. A duplicate shows its original's faces."""
    row = conn.execute("SELECT id, path, status, duplicate_of FROM images WHERE id = ?",
                       (image_id,)).fetchone()
    if row is None:
        return None
    rows = conn.execute(
        "SELECT f.id, f.box_x1, f.box_y1, f.box_x2, f.box_y2, f.identity_id, i.name, i.hidden, "
        "f.pinned, d.score FROM faces f LEFT JOIN identities i ON i.id = f.identity_id "
        "LEFT JOIN face_doubt d ON d.face_id = f.id WHERE f.image_id = ? AND f.rejected = 0 "
        "ORDER BY (f.box_x2 - f.box_x1) * (f.box_y2 - f.box_y1) DESC, f.id",
        (row[3] or row[0],)).fetchall()
    faces = [{"id": r[0], "box": [round(v, 1) for v in r[1:5]],
              "person": None if r[5] is None else
              {"id": r[5], "name": r[6], "display_name": display_name(r[5], r[6]), "hidden": bool(r[7])},
              "pinned": bool(r[8]), "doubt": None if r[9] is None or r[8] else round(r[9], 3)}
             for r in rows]
    return {"id": row[0], "name": decode_path(row[1]).name, "status": row[2], "faces": faces}


def face(conn: sqlite3.Connection, face_id: int) -> Optional[tuple]:
    """(image id, box, score) of a face, rejected ones included (a thumbnail of any stored face)."""
    row = conn.execute("SELECT image_id, box_x1, box_y1, box_x2, box_y2, score FROM faces "
                       "WHERE id = ?", (face_id,)).fetchone()
    return None if row is None else (row[0], tuple(row[1:5]), row[5])


def image_files(conn: sqlite3.Connection, image_id: int) -> Optional[tuple[str, list[bytes | str]]]:
    """(inbox, candidate paths) where an image's file may be now: where the placer put it, then
    where it arrived. None if there is no such image."""
    row = conn.execute("SELECT path, inbox FROM images WHERE id = ?", (image_id,)).fetchone()
    if row is None:
        return None
    placed = [r[0] for r in conn.execute(
        "SELECT path FROM placements WHERE image_id = ? AND kind IN ('main', 'extra') "
        "ORDER BY kind = 'extra', id", (image_id,))]
    return row[1], placed + [row[0]]
