"""What a person decides about identities: the operations the review page and the CLI share.

Each operation is one store transaction that also writes a ``history`` row holding the state it
changed (faces' identity/pinned/rejected, identities' name/merged_into, "not this person" pairs,
suggestion statuses), so ``undo`` restores exactly that. Decisions are recorded as constraints the
clustering never contradicts: a face moved by a person is *pinned*; "not this person" is a
``cannot_link`` pair; a named identity is never merged automatically.

The daemon's identity service notices a correction by the ``history`` table (also one made by
another process), re-reads the constraints and tells the placer; callers need not notify it.

The library is a second way to make them (library/scan.py reads what a person did to placed files
in a file manager): ``from_library`` is the placer's port to these operations, wired by the app;
each history row it writes has ``"via": "library"`` among its args and is undone like any other.
"""

from __future__ import annotations

import json
import time
from typing import Iterable, Optional, Union

from facesortd.errors import FacesortdError
from facesortd.store.database import Store
from facesortd.store.identity_rows import resolve, retire
from facesortd.store.sql import in_chunks

__all__ = ["CorrectionError", "UnknownId", "rename", "merge", "split", "move_faces", "not_this_person",
           "reject", "confirm", "hide", "add_face", "accept_suggestion", "dismiss_suggestion", "undo", "history",
           "remove_images", "from_library"]


class CorrectionError(FacesortdError):
    """A correction that cannot be made as asked (merged identity, bad name, empty selection)."""


class UnknownId(CorrectionError):
    """A correction names a face, identity or suggestion the store does not have (HTTP 404)."""


class _Recorder:
    """Snapshots of rows before an operation changes them, written to ``history`` at the end."""

    def __init__(self, conn, op: str, args: dict):
        self.conn, self.op, self.args = conn, op, args
        self.faces: dict[int, list] = {}
        self.identities: dict[int, list] = {}
        self.suggestions: dict[int, str] = {}
        self.cl_added: list[list[int]] = []
        self.cl_removed: list[list[int]] = []
        self.created: list[int] = []
        self.hidden: dict[int, int] = {}
        self.removed: list[int] = []

    def face(self, face_ids: Iterable[int]) -> None:
        ids = [int(f) for f in face_ids if int(f) not in self.faces]
        for marks, part in in_chunks(ids):
            for row in self.conn.execute(
                    f"SELECT id, identity_id, pinned, rejected FROM faces WHERE id IN ({marks})", part):
                self.faces[row[0]] = list(row[1:])

    def identity(self, identity_id: int) -> None:
        if identity_id not in self.identities:
            row = self.conn.execute("SELECT name, merged_into FROM identities WHERE id = ?",
                                    (identity_id,)).fetchone()
            self.identities[identity_id] = list(row)

    def suggestion(self, suggestion_id: int, status: str) -> None:
        self.suggestions.setdefault(suggestion_id, status)

    def new_identity(self) -> int:
        new = self.conn.execute("INSERT INTO identities (created_at) VALUES (?)",
                                (time.time(),)).lastrowid
        self.created.append(new)
        return new

    def cannot_link(self, face_id: int, identity_id: int) -> None:
        cur = self.conn.execute("INSERT OR IGNORE INTO cannot_link (face_id, identity_id) "
                                "VALUES (?, ?)", (face_id, identity_id))
        if cur.rowcount:
            self.cl_added.append([face_id, identity_id])

    def allow_link(self, face_id: int, identity_id: int) -> None:
        cur = self.conn.execute("DELETE FROM cannot_link WHERE face_id = ? AND identity_id = ?",
                                (face_id, identity_id))
        if cur.rowcount:
            self.cl_removed.append([face_id, identity_id])

    def write(self) -> int:
        payload = {"args": self.args, "faces": self.faces, "identities": self.identities,
                   "suggestions": self.suggestions, "cannot_link_added": self.cl_added,
                   "cannot_link_removed": self.cl_removed, "created": self.created,
                   "hidden": self.hidden, "removed_images": self.removed}
        return self.conn.execute(
            "INSERT INTO history (op, payload, created_at) VALUES (?, ?, ?)",
            (self.op, json.dumps(payload), time.time())).lastrowid


def _args(args: dict, source: Optional[str]) -> dict:
    """A history row's args, with where the correction came from when not the page or the CLI."""
    return {**args, "via": source} if source else args


def _live_identity(conn, identity_id: int) -> int:
    row = conn.execute("SELECT merged_into FROM identities WHERE id = ?", (int(identity_id),)).fetchone()
    if row is None:
        raise UnknownId(f"no identity with id {identity_id}")
    if row[0] is not None:
        raise CorrectionError(f"identity {identity_id} was merged into {row[0]}; use {row[0]}")
    return int(identity_id)


def _faces(conn, face_ids: Iterable[int]) -> list[int]:
    ids = sorted({int(f) for f in face_ids})
    if not ids:
        raise CorrectionError("no faces given")
    found = {r[0] for marks, part in in_chunks(ids) for r in conn.execute(
        f"SELECT id FROM faces WHERE rejected = 0 AND id IN ({marks})", part)}
    missing = [f for f in ids if f not in found]
    if missing:
        raise UnknownId(f"no such face (or rejected as not a face): {missing[:10]}")
    return ids


def _pin(rec: _Recorder, face_ids: list[int], identity_id: Optional[int]) -> None:
    rec.face(face_ids)
    rec.conn.executemany("UPDATE faces SET identity_id = ?, pinned = ? WHERE id = ?",
                         [(identity_id, 0 if identity_id is None else 1, f) for f in face_ids])


def rename(store: Store, identity_id: int, name: Optional[str], source: Optional[str] = None) -> dict:
    """Give an identity a name (its folder follows); ``None`` or "" takes the name away."""
    name = (name or "").strip() or None
    if name is not None and ("/" in name or "\0" in name or name in (".", "..")):
        raise CorrectionError(f"a name cannot contain '/' or be '.' or '..': {name!r}")
    with store.transaction() as conn:
        identity_id = _live_identity(conn, identity_id)
        rec = _Recorder(conn, "rename", _args({"identity": identity_id, "name": name}, source))
        rec.identity(identity_id)
        conn.execute("UPDATE identities SET name = ? WHERE id = ?", (name, identity_id))
        return {"history": rec.write(), "identity": identity_id, "name": name}


def merge(store: Store, source: int, into: int, origin: Optional[str] = None) -> dict:
    """All of ``source``'s faces go to ``into`` for good (both pinned there); ``source`` is retired."""
    with store.transaction() as conn:
        source, into = _live_identity(conn, source), _live_identity(conn, into)
        if source == into:
            raise CorrectionError("an identity cannot be merged into itself")
        rec = _Recorder(conn, "merge", _args({"source": source, "into": into}, origin))
        faces = [r[0] for r in conn.execute("SELECT id FROM faces WHERE identity_id = ? "
                                            "AND rejected = 0", (source,))]
        # both sides pinned: a recluster that sees two groups still keeps them one person
        kept = [r[0] for r in conn.execute("SELECT id FROM faces WHERE identity_id = ? "
                                           "AND rejected = 0", (into,))]
        _pin(rec, faces + kept, into)
        for (face,) in conn.execute("SELECT face_id FROM cannot_link WHERE identity_id = ?",
                                    (source,)).fetchall():
            rec.allow_link(face, source)
            rec.cannot_link(face, into)
        rec.identity(source); rec.identity(into)
        src_name, into_name = rec.identities[source][0], rec.identities[into][0]
        retire(conn, source, into)     # nothing left to move: it re-points what pointed at source
        if into_name is None and src_name is not None:
            conn.execute("UPDATE identities SET name = ? WHERE id = ?", (src_name, into))
        for sid, status in conn.execute(
                "SELECT id, status FROM suggestions WHERE status = 'open' AND "
                "((a = ? AND b = ?) OR (a = ? AND b = ?))", (source, into, into, source)).fetchall():
            rec.suggestion(sid, status)
            conn.execute("UPDATE suggestions SET status = 'accepted' WHERE id = ?", (sid,))
        return {"history": rec.write(), "identity": into, "faces": len(faces)}


def move_faces(store: Store, face_ids: Iterable[int], to: Union[int, str],
               source: Optional[str] = None, name: Optional[str] = None) -> dict:
    """Put faces in identity ``to`` (or a new one with ``"new"``, named ``name`` if given), pinned
    there for good."""
    with store.transaction() as conn:
        faces = _faces(conn, face_ids)
        args = {"faces": faces, "to": to, **({"name": name} if name else {})}
        rec = _Recorder(conn, "move_faces", _args(args, source))
        target = rec.new_identity() if to == "new" else _live_identity(conn, int(to))
        if to == "new" and name:
            rec.identity(target)
            conn.execute("UPDATE identities SET name = ? WHERE id = ?", (name, target))
        for f in faces:
            rec.allow_link(f, target)
        _pin(rec, faces, target)
        return {"history": rec.write(), "identity": target, "faces": len(faces)}


def split(store: Store, identity_id: int, face_ids: Iterable[int]) -> dict:
    """Cut ``face_ids`` out of an identity into a new one; both parts are pinned, so no recluster
    joins them again."""
    with store.transaction() as conn:
        identity_id = _live_identity(conn, identity_id)
        faces = _faces(conn, face_ids)
        members = {r[0] for r in conn.execute("SELECT id FROM faces WHERE identity_id = ? "
                                              "AND rejected = 0", (identity_id,))}
        stray = [f for f in faces if f not in members]
        if stray:
            raise CorrectionError(f"faces {stray[:10]} are not in identity {identity_id}")
        rest = sorted(members - set(faces))
        if not rest:
            raise CorrectionError("a split must leave some faces in the identity; use move_faces")
        rec = _Recorder(conn, "split", {"identity": identity_id, "faces": faces})
        new = rec.new_identity()
        _pin(rec, faces, new)
        _pin(rec, rest, identity_id)
        return {"history": rec.write(), "identity": new, "faces": len(faces)}


def not_this_person(store: Store, face_ids: Iterable[int], source: Optional[str] = None) -> dict:
    """Take faces out of their identity and never put them back in it (they become unassigned)."""
    with store.transaction() as conn:
        faces = _faces(conn, face_ids)
        rec = _Recorder(conn, "not_this_person", _args({"faces": faces}, source))
        rec.face(faces)
        for f in faces:
            identity = rec.faces[f][0]
            if identity is not None:
                rec.cannot_link(f, identity)
        _pin(rec, faces, None)
        return {"history": rec.write(), "faces": len(faces)}


def reject(store: Store, face_ids: Iterable[int], source: Optional[str] = None) -> dict:
    """Faces that are not faces: out of every identity and out of the clustering."""
    with store.transaction() as conn:
        faces = _faces(conn, face_ids)
        rec = _Recorder(conn, "reject", _args({"faces": faces}, source))
        _pin(rec, faces, None)
        store.set_rejected(faces, True)
        return {"history": rec.write(), "faces": len(faces)}


def remove_images(store: Store, image_ids: Iterable[int], source: Optional[str] = "library") -> dict:
    """Photos a person deleted from the library: marked removed (``images.removed_at``: never
    placed again, and the same content dropped into an inbox later is sorted as a new arrival),
    their faces out of every identity and out of the clustering (rejected: not evidence any more).
    Undo gives the faces back; the file stays deleted."""
    ids = sorted({int(i) for i in image_ids})
    if not ids:
        raise CorrectionError("no images given")
    with store.transaction() as conn:
        rec = _Recorder(conn, "remove_images", _args({"images": ids}, source))
        faces = []
        for marks, part in in_chunks(ids):
            faces += [r[0] for r in conn.execute(
                f"SELECT id FROM faces WHERE rejected = 0 AND image_id IN ({marks})", part)]
            rec.removed += [r[0] for r in conn.execute(
                f"SELECT id FROM images WHERE removed_at IS NULL AND id IN ({marks})", part)]
        _pin(rec, faces, None)
        store.set_rejected(faces, True)
        now = time.time()
        conn.executemany("UPDATE images SET removed_at = ? WHERE id = ?", [(now, i) for i in rec.removed])
        return {"history": rec.write(), "images": len(rec.removed), "faces": len(faces)}


def from_library(store: Store, op: str, args: dict) -> dict:
    """The placer's port (library/scan.py): one correction read from the library, recorded with
    ``"via": "library"``. ``op``: move_faces (faces, to, name), not_this_person (faces), reject
    (faces), rename (identity, name), merge (source, into), remove_images (images)."""
    if op == "move_faces":
        return move_faces(store, args["faces"], args["to"], source="library", name=args.get("name"))
    if op == "not_this_person":
        return not_this_person(store, args["faces"], source="library")
    if op == "reject":
        return reject(store, args["faces"], source="library")
    if op == "rename":
        return rename(store, args["identity"], args["name"], source="library")
    if op == "merge":
        return merge(store, args["source"], args["into"], origin="library")
    if op == "remove_images":
        return remove_images(store, args["images"], source="library")
    raise CorrectionError(f"not a correction the library can make: {op!r}")


def confirm(store: Store, face_ids: Iterable[int]) -> dict:
    """These faces are right where they are: pinned to their person (they leave the review
    queue, and no recluster moves them). Faces with no person are refused."""
    with store.transaction() as conn:
        faces = _faces(conn, face_ids)
        rec = _Recorder(conn, "confirm", {"faces": faces})
        rec.face(faces)
        loose = [f for f in faces if rec.faces[f][0] is None]
        if loose:
            raise CorrectionError(f"faces {loose[:10]} have no person to confirm; move them instead")
        conn.executemany("UPDATE faces SET pinned = 1 WHERE id = ?", [(f,) for f in faces])
        return {"history": rec.write(), "faces": len(faces)}


def hide(store: Store, identity_id: int, hidden: bool = True) -> dict:
    """Hide a person (a stranger, a poster): off the overview and the review queue, and photos
    are placed as if its faces were not there. ``hidden=False`` shows it again."""
    with store.transaction() as conn:
        identity_id = _live_identity(conn, identity_id)
        rec = _Recorder(conn, "hide" if hidden else "unhide", {"identity": identity_id})
        rec.hidden[identity_id] = conn.execute("SELECT hidden FROM identities WHERE id = ?",
                                               (identity_id,)).fetchone()[0]
        conn.execute("UPDATE identities SET hidden = ? WHERE id = ?", (int(hidden), identity_id))
        return {"history": rec.write(), "identity": identity_id, "hidden": hidden}


def add_face(store: Store, image_id: int, box: tuple[float, float, float, float], vector,
             to: Union[int, str]) -> dict:
    """A face the detector missed, drawn by a person: stored on its photo with ``vector`` (the
    store's model's, cut from ``box``) and pinned to ``to`` (or a new person). Undo takes it out
    again (as not a face)."""
    with store.transaction() as conn:
        if conn.execute("SELECT 1 FROM images WHERE id = ?", (int(image_id),)).fetchone() is None:
            raise UnknownId(f"no image with id {image_id}")
        rec = _Recorder(conn, "add_face", {"image": int(image_id), "box": [float(v) for v in box],
                                           "to": to})
        target = rec.new_identity() if to == "new" else _live_identity(conn, int(to))
        try:
            face_id = store.add_face(int(image_id), box, vector)
        except KeyError as exc:
            raise CorrectionError(str(exc).strip("'\"")) from None
        rec.faces[face_id] = [None, 0, 1]      # undone: no person, out of the clustering
        conn.execute("UPDATE faces SET identity_id = ?, pinned = 1 WHERE id = ?", (target, face_id))
        return {"history": rec.write(), "face": face_id, "identity": target}


def _suggestion(conn, suggestion_id: int) -> tuple[int, int, str]:
    row = conn.execute("SELECT a, b, status FROM suggestions WHERE id = ?",
                       (int(suggestion_id),)).fetchone()
    if row is None:
        raise UnknownId(f"no suggestion with id {suggestion_id}")
    return row


def accept_suggestion(store: Store, suggestion_id: int) -> dict:
    """Merge the pair: the newer identity into the named (else older) one."""
    with store.transaction() as conn:
        a, b, status = _suggestion(conn, suggestion_id)
        if status != "open":
            raise CorrectionError(f"suggestion {suggestion_id} is already {status}")
        a_named = conn.execute("SELECT name IS NOT NULL FROM identities WHERE id = ?", (a,)).fetchone()[0]
        b_named = conn.execute("SELECT name IS NOT NULL FROM identities WHERE id = ?", (b,)).fetchone()[0]
        into, source = (b, a) if (b_named and not a_named) else (a, b)
        return merge(store, source, into)


def dismiss_suggestion(store: Store, suggestion_id: int) -> dict:
    """These two are different people: the pair is not suggested again."""
    with store.transaction() as conn:
        _, _, status = _suggestion(conn, suggestion_id)
        rec = _Recorder(conn, "dismiss_suggestion", {"suggestion": int(suggestion_id)})
        rec.suggestion(int(suggestion_id), status)
        conn.execute("UPDATE suggestions SET status = 'dismissed' WHERE id = ?", (int(suggestion_id),))
        return {"history": rec.write()}


def history(store: Store, limit: int = 50) -> list[dict]:
    """The latest corrections, newest first."""
    with store.read() as conn:
        rows = conn.execute("SELECT id, op, payload, created_at, undone FROM history "
                            "ORDER BY id DESC LIMIT ?", (limit,)).fetchall()
    return [{"id": r[0], "op": r[1], "args": json.loads(r[2])["args"], "created_at": r[3],
             "undone": bool(r[4])} for r in rows]


def undo(store: Store, last: int = 1, since: Optional[float] = None) -> list[dict]:
    """Reverse the latest corrections not yet undone, newest first: the ``last`` N, or all made
    since the unix time ``since``. One transaction; returns what was undone."""
    done: list[dict] = []
    with store.transaction() as conn:
        if since is not None:
            rows = conn.execute("SELECT id, op, payload FROM history WHERE undone = 0 AND "
                                "created_at >= ? ORDER BY id DESC", (float(since),)).fetchall()
        else:
            rows = conn.execute("SELECT id, op, payload FROM history WHERE undone = 0 "
                                "ORDER BY id DESC LIMIT ?", (int(last),)).fetchall()
        for hid, op, payload in rows:
            p = json.loads(payload)
            # identities first (a merge undone makes its source live again), then the faces,
            # each to the live identity its old one stands for today (it may have been merged
            # since: the store never gives a face to a merged identity)
            retire_again = []
            for identity, (name, merged_into) in p["identities"].items():
                conn.execute("UPDATE identities SET name = ? WHERE id = ?", (name, int(identity)))
                if merged_into is None:
                    conn.execute("UPDATE identities SET merged_into = NULL WHERE id = ?",
                                 (int(identity),))
                else:
                    retire_again.append((int(identity), int(merged_into)))
            back = []
            for face, (identity, pinned, rejected) in p["faces"].items():
                conn.execute("UPDATE faces SET identity_id = ?, pinned = ? WHERE id = ?",
                             (resolve(conn, identity), pinned, int(face)))
                back.append((int(face), bool(rejected)))
            store.set_rejected([f for f, r in back if not r], False)
            store.set_rejected([f for f, r in back if r], True)
            for identity, merged_into in retire_again:
                if resolve(conn, identity) == identity:
                    retire(conn, identity, merged_into)
            removed = p.get("removed_images", [])
            conn.executemany("UPDATE images SET removed_at = NULL WHERE id = ?", [(i,) for i in removed])
            for identity, was in p.get("hidden", {}).items():
                conn.execute("UPDATE identities SET hidden = ? WHERE id = ?", (was, int(identity)))
            for sid, status in p["suggestions"].items():
                conn.execute("UPDATE suggestions SET status = ? WHERE id = ?", (status, int(sid)))
            for face, identity in p["cannot_link_added"]:
                conn.execute("DELETE FROM cannot_link WHERE face_id = ? AND identity_id = ?",
                             (face, identity))
            for face, identity in p["cannot_link_removed"]:
                conn.execute("INSERT OR IGNORE INTO cannot_link (face_id, identity_id) VALUES (?, ?)",
                             (face, identity))
            conn.execute("UPDATE history SET undone = 1 WHERE id = ?", (hid,))
            done.append({"id": hid, "op": op, "args": p["args"]})
    return done
