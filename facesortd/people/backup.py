"""People backup and restore: every decision a person made, keyed by content (photo sha256 + face
box), never by row ids, so a backup applies to any store holding the same photos: another
machine, a rebuilt state folder, or the same store after ``facesortd migrate`` to another model.

The file is a snapshot of the people, not a replay of the corrections: each live person with its
name, its hidden flag and its faces (a pinned face is a decision: moved, merged, split, confirmed
or drawn; an unpinned one is where the clustering had put it), the "not this person" pairs, the
faces with no person, the faces rejected as not a face, and the merge suggestions dismissed. Merges and splits are the
pinned faces they left. The format is versioned (``FORMAT``, ``VERSION``); README.md documents it.

``import_people`` is one store transaction with one ``history`` row ("people_import"), so
``undo`` takes it back, and the identity service and the placer follow it like any correction.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

from facesortd.errors import FacesortdError
from facesortd.people.corrections import _Recorder
from facesortd.store.database import Store

__all__ = ["FORMAT", "VERSION", "BackupError", "export_people", "import_people", "check_document",
           "drawn_to_recreate"]

FORMAT = "facesortd-people"
VERSION = 1
MIN_IOU = 0.5          # a face in the store is the file's face when their boxes overlap this much


class BackupError(FacesortdError):
    """A people file that cannot be applied (broken, not ours, from a newer facesortd)."""

    exit_code = 5


# ---- export --------------------------------------------------------------------------------

def _box(row) -> list[float]:
    return [round(float(v), 2) for v in row]


def export_people(store: Store) -> dict:
    """The people file's content (a dict ready for ``json.dump``) from one read of the store."""
    with store.read() as conn:
        faces = conn.execute(
            "SELECT f.id, i.sha256, f.box_x1, f.box_y1, f.box_x2, f.box_y2, f.identity_id, f.pinned, "
            "f.rejected FROM faces f JOIN images i ON i.id = f.image_id "
            "WHERE i.sha256 IS NOT NULL ORDER BY f.id").fetchall()
        identities = conn.execute(
            "SELECT id, name, hidden FROM identities WHERE merged_into IS NULL ORDER BY id").fetchall()
        cannot = conn.execute("SELECT face_id, identity_id FROM cannot_link "
                              "ORDER BY face_id, identity_id").fetchall()
        dismissed = conn.execute("SELECT a, b, distance FROM suggestions WHERE status = 'dismissed' "
                                 "ORDER BY id").fetchall()
        model = store.model_id
        drawn = _drawn(conn)
    key_of_face = {f[0]: dict({"photo": f[1], "box": _box(f[2:6])},
                              **({"drawn": True} if f[0] in drawn else {})) for f in faces}
    members: dict[int, list[dict]] = {}
    rejected, unassigned = [], []
    for fid, _sha, *_b, identity, pinned, is_rejected in faces:
        if is_rejected:
            rejected.append(key_of_face[fid])
        elif identity is not None:
            members.setdefault(identity, []).append(dict(key_of_face[fid], pinned=bool(pinned)))
        else:
            unassigned.append(key_of_face[fid])
    referenced = {i for _, i in cannot} | {x for a, b, _ in dismissed for x in (a, b)}
    people, key = [], {}
    for identity, name, hidden in identities:
        if identity in members or name is not None or hidden or identity in referenced:
            key[identity] = f"p{identity}"
            people.append({"key": key[identity], "name": name, "hidden": bool(hidden),
                           "faces": members.get(identity, [])})
    return {
        "format": FORMAT, "version": VERSION,
        "exported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "model": model,
        "people": people,
        "not_this_person": [dict(key_of_face[f], person=key[i]) for f, i in cannot
                            if f in key_of_face and i in key],
        "unassigned": unassigned,
        "rejected": rejected,
        "dismissed_suggestions": [{"a": key[a], "b": key[b], "distance": float(d)}
                                  for a, b, d in dismissed if a in key and b in key],
    }


def _drawn(conn) -> set[int]:
    """Faces a person drew on a photo (``corrections.add_face``, not undone): the detector will
    not find them again in a rebuilt store, so the file marks them for ``people import`` to
    recreate from their box."""
    out = set()
    for (payload,) in conn.execute("SELECT payload FROM history WHERE op = 'add_face' "
                                   "AND undone = 0"):
        out.update(int(f) for f in json.loads(payload).get("faces", {}))
    return out


# ---- reading a file ------------------------------------------------------------------------

def _check_face(face: Any, where: str) -> None:
    if not isinstance(face, dict) or not isinstance(face.get("photo"), str) \
            or len(face["photo"]) != 64:
        raise BackupError(f"{where}: needs a 'photo' (a sha256 in hex)")
    box = face.get("box")
    if not isinstance(box, list) or len(box) != 4 \
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in box):
        raise BackupError(f"{where}: needs a 'box' of 4 numbers [x1, y1, x2, y2]")


def check_document(doc: Any) -> dict:
    """``doc`` if it is a people file this facesortd can apply, else ``BackupError`` naming the
    first problem (nothing is applied from a file with any)."""
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise BackupError(f"not a facesortd people file (no \"format\": \"{FORMAT}\")")
    version = doc.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise BackupError(f"bad \"version\": {version!r}")
    if version > VERSION:
        raise BackupError(f"this people file has version {version}, written by a newer facesortd; "
                          f"this one reads versions up to {VERSION}: upgrade facesortd")
    for section in ("people", "unassigned", "not_this_person", "rejected", "dismissed_suggestions"):
        if not isinstance(doc.get(section, []), list):
            raise BackupError(f"\"{section}\" must be a list")
    keys = set()
    for n, person in enumerate(doc.get("people", [])):
        where = f"people[{n}]"
        if not isinstance(person, dict) or not isinstance(person.get("key"), str):
            raise BackupError(f"{where}: needs a 'key' (a string)")
        if person["key"] in keys:
            raise BackupError(f"{where}: key {person['key']!r} appears twice")
        keys.add(person["key"])
        name = person.get("name")
        if name is not None and (not isinstance(name, str) or "/" in name or "\0" in name
                                 or name.strip() in ("", ".", "..")):
            raise BackupError(f"{where}: bad name {name!r}")
        if not isinstance(person.get("faces", []), list):
            raise BackupError(f"{where}: 'faces' must be a list")
        for m, face in enumerate(person.get("faces", [])):
            _check_face(face, f"{where}.faces[{m}]")
    for n, face in enumerate(doc.get("not_this_person", [])):
        _check_face(face, f"not_this_person[{n}]")
        if face.get("person") not in keys:
            raise BackupError(f"not_this_person[{n}]: 'person' names no key in \"people\"")
    for section in ("unassigned", "rejected"):
        for n, face in enumerate(doc.get(section, [])):
            _check_face(face, f"{section}[{n}]")
    for n, pair in enumerate(doc.get("dismissed_suggestions", [])):
        if not isinstance(pair, dict) or pair.get("a") not in keys or pair.get("b") not in keys:
            raise BackupError(f"dismissed_suggestions[{n}]: 'a' and 'b' must name keys in \"people\"")
    return doc


# ---- import --------------------------------------------------------------------------------

def _iou(a, b) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    if w <= 0 or h <= 0:
        return 0.0
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


@dataclass
class _Matcher:
    """Faces of the store by photo sha256; each store face answers for at most one file face."""

    by_photo: dict[str, list[tuple]]
    taken: set = field(default_factory=set)
    missing_photos: set = field(default_factory=set)
    missing_faces: list = field(default_factory=list)

    @classmethod
    def read(cls, conn) -> "_Matcher":
        by_photo: dict[str, list[tuple]] = {}
        for row in conn.execute(
                "SELECT i.sha256, f.id, f.box_x1, f.box_y1, f.box_x2, f.box_y2, f.identity_id "
                "FROM faces f JOIN images i ON i.id = f.image_id WHERE i.sha256 IS NOT NULL"):
            by_photo.setdefault(row[0], []).append(row[1:])
        return cls(by_photo)

    def find(self, face: dict, what: str) -> Optional[tuple[int, Optional[int]]]:
        """(face id, its identity now) of the store's face for the file's ``face``, or None."""
        candidates = self.by_photo.get(face["photo"])
        if candidates is None:
            self.missing_photos.add(face["photo"])
            return None
        best, best_iou = None, MIN_IOU
        for fid, x1, y1, x2, y2, identity in candidates:
            if fid in self.taken:
                continue
            iou = _iou(face["box"], (x1, y1, x2, y2))
            if iou >= best_iou:
                best, best_iou = (fid, identity), iou
        if best is None:
            self.missing_faces.append({"photo": face["photo"], "box": face["box"], "of": what})
            return None
        self.taken.add(best[0])
        return best


def drawn_to_recreate(store: Store, doc: dict) -> list[dict]:
    """The drawn faces of the file (``"drawn": true``) that this store lacks on a photo it holds:
    each {"image_id", "box"} for the caller to embed (the store's model, cut from the box) and
    hand to ``import_people``. A face whose photo is not here is reported by the import."""
    doc = check_document(doc)
    wanted = [f for person in doc.get("people", []) for f in person.get("faces", [])
              if f.get("drawn")]
    if not wanted:
        return []
    out = []
    with store.read() as conn:
        for face in wanted:
            row = conn.execute("SELECT id FROM images WHERE sha256 = ? ORDER BY id LIMIT 1",
                               (face["photo"],)).fetchone()
            if row is None:
                continue
            boxes = conn.execute("SELECT box_x1, box_y1, box_x2, box_y2 FROM faces "
                                 "WHERE image_id = ?", (row[0],)).fetchall()
            if all(_iou(face["box"], b) < MIN_IOU for b in boxes):
                out.append({"image_id": row[0], "box": [float(v) for v in face["box"]]})
    return out


def import_people(store: Store, doc: dict, dry_run: bool = False,
                  preview: Optional[Callable[[], Any]] = None,
                  drawn: Sequence[tuple[int, Sequence[float], Any]] = ()) -> dict:
    """Apply a people file (``check_document``-ed here) to ``store`` in one transaction: each
    person of the file becomes the store's identity that holds most of its faces now (if no other
    person of the file claimed it first, largest first), else a new one; its faces go to it
    (pinned where they were pinned), its name and hidden flag follow; then the "not this person"
    pairs, the rejections and the dismissed suggestions. Returns the report; ``dry_run`` rolls
    the transaction back, after calling ``preview`` inside it (its result is the report's
    ``preview``: e.g. the placer's dry run, which sees the imported people). ``drawn``: (image
    id, box, vector) of drawn faces to add first (``drawn_to_recreate``), in the same
    transaction; undoing the import takes them out again, as undoing a drawn face does."""
    doc = check_document(doc)

    class _DryRun(Exception):
        pass

    report: dict[str, Any] = {}
    try:
        with store.transaction() as conn:
            report = _apply(store, conn, doc, drawn)
            if dry_run:
                if preview is not None:
                    report["preview"] = preview()
                raise _DryRun
    except _DryRun:
        pass
    report["dry_run"] = dry_run
    return report


def _apply(store: Store, conn, doc: dict,
           drawn: Sequence[tuple[int, Sequence[float], Any]] = ()) -> dict:
    rec = _Recorder(conn, "people_import", {"format": doc["format"], "version": doc["version"],
                                            "exported_at": doc.get("exported_at")})
    for image_id, box, vector in drawn:       # before matching: they are matched like any face
        face_id = store.add_face(int(image_id), tuple(float(v) for v in box), vector)
        rec.faces[face_id] = [None, 0, 1]     # undone: no person, out of the clustering
    match = _Matcher.read(conn)
    found: dict[str, list[tuple[int, Optional[int], bool]]] = {}
    for person in doc.get("people", []):
        rows = []
        for face in person.get("faces", []):
            hit = match.find(face, person["key"])
            if hit is not None:
                rows.append((hit[0], hit[1], bool(face.get("pinned", False))))
        found[person["key"]] = rows
    live = {r[0] for r in conn.execute("SELECT id FROM identities WHERE merged_into IS NULL")}

    # each person of the file -> an identity of this store; the largest people choose first
    target: dict[str, int] = {}
    claimed: set[int] = set()
    created = 0
    for person in sorted(doc.get("people", []), key=lambda p: -len(found[p["key"]])):
        rows = found[person["key"]]
        votes: dict[int, int] = {}
        for _, identity, _ in rows:
            if identity is not None and identity in live and identity not in claimed:
                votes[identity] = votes.get(identity, 0) + 1
        if votes:
            target[person["key"]] = max(votes, key=lambda i: (votes[i], -i))
        elif rows:
            target[person["key"]] = rec.new_identity()
            created += 1
        else:
            continue             # none of its faces is in this store: nothing to give a name to
        claimed.add(target[person["key"]])

    faces_set = 0
    back_from_rejected: list[int] = []
    for person in doc.get("people", []):
        to = target.get(person["key"])
        if to is None:
            continue
        rows = found[person["key"]]
        rec.face(f for f, _, _ in rows)
        back_from_rejected += [fid for fid, _, _ in rows if rec.faces[fid][2]]
        conn.executemany("UPDATE faces SET identity_id = ?, pinned = ? WHERE id = ?",
                         [(to, int(pinned), fid) for fid, _, pinned in rows])
        faces_set += len(rows)
        rec.identity(to)
        rec.hidden.setdefault(to, conn.execute("SELECT hidden FROM identities WHERE id = ?",
                                               (to,)).fetchone()[0])
        conn.execute("UPDATE identities SET name = ?, hidden = ? WHERE id = ?",
                     (person.get("name"), int(bool(person.get("hidden"))), to))
    store.set_rejected(back_from_rejected, False)

    # the faces the file has with no person lose the one they have here
    loose = [hit[0] for face in doc.get("unassigned", [])
             if (hit := match.find(face, "unassigned")) is not None]
    rec.face(loose)
    conn.executemany("UPDATE faces SET identity_id = NULL, pinned = 0 WHERE id = ?",
                     [(f,) for f in loose])
    store.set_rejected([f for f in loose if rec.faces[f][2]], False)

    rejected = []
    for face in doc.get("rejected", []):
        hit = match.find(face, "rejected")
        if hit is not None:
            rejected.append(hit[0])
    rec.face(rejected)
    conn.executemany("UPDATE faces SET identity_id = NULL, pinned = 0 WHERE id = ?",
                     [(f,) for f in rejected])
    store.set_rejected(rejected, True)

    # "not this person" faces were matched above if they belong to someone else now; a face
    # may answer for a person's face and for a constraint, so these look up without taking
    not_this = 0
    for face in doc.get("not_this_person", []):
        to = target.get(face["person"])
        fid = _lookup(conn, match, face)
        if fid is None or to is None:
            continue
        rec.face([fid])
        if conn.execute("SELECT identity_id FROM faces WHERE id = ?", (fid,)).fetchone()[0] == to:
            conn.execute("UPDATE faces SET identity_id = NULL, pinned = 0 WHERE id = ?", (fid,))
        rec.cannot_link(fid, to)
        not_this += 1

    dismissed = 0
    for pair in doc.get("dismissed_suggestions", []):
        a, b = target.get(pair["a"]), target.get(pair["b"])
        if a is None or b is None or a == b:
            continue
        a, b = min(a, b), max(a, b)
        row = conn.execute("SELECT id, status FROM suggestions WHERE a = ? AND b = ?", (a, b)).fetchone()
        if row is None:
            conn.execute("INSERT INTO suggestions (a, b, distance, status) VALUES (?, ?, ?, 'dismissed')",
                         (a, b, float(pair.get("distance", 0.0))))
        else:
            rec.suggestion(row[0], row[1])
            conn.execute("UPDATE suggestions SET status = 'dismissed' WHERE id = ?", (row[0],))
        dismissed += 1

    history = rec.write()
    people = doc.get("people", [])
    return {
        "history": history,
        "people": len(people), "people_matched": len(target), "people_created": created,
        "people_unmatched": [p.get("name") or p["key"] for p in people if p["key"] not in target],
        "faces_set": faces_set, "unassigned": len(loose), "rejected": len(rejected),
        "not_this_person": not_this,
        "dismissed_suggestions": dismissed,
        "photos_not_in_store": sorted(match.missing_photos),
        "faces_not_found": match.missing_faces,
        "drawn_faces_recreated": len(drawn),
    }


def _lookup(conn, match: _Matcher, face: dict) -> Optional[int]:
    """The store's face for ``face`` whether or not another entry took it (no report)."""
    best, best_iou = None, MIN_IOU
    for fid, x1, y1, x2, y2, _ in match.by_photo.get(face["photo"], ()):
        iou = _iou(face["box"], (x1, y1, x2, y2))
        if iou >= best_iou:
            best, best_iou = fid, iou
    if best is None and face["photo"] not in match.by_photo:
        match.missing_photos.add(face["photo"])
    return best
