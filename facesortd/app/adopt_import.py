"""``facesortd adopt DIR --import``: the copies into the library, each photo with its companions.

Each adopted photo is copied into its person's folder by the layout, with its companions from DIR
(``IMG_1.CR3``, ``IMG_1.xmp``, ``IMG_1.JPG.json``, ``IMG_1.MOV`` beside ``IMG_1.JPG``: what
``adopt.scan`` found for it, by ``watch.companions``) as the placer places an inbox photo's group:
one journaled group of verified copies ('main', then 'companion' placement rows of the image),
under names that share the photo's stem. A name taken in the target folder renames the whole
group (``IMG_1_1.JPG``, ``IMG_1_1.CR3``), never one file of it, and nothing is overwritten. From
then on the placer moves the companions with their photo (a rename, a merge) and ``undo`` retires
them with it. Nothing in DIR is changed.

A run interrupted before its copies finishes them the next time: photos recorded but never copied
(``unfinished``), and companions of copied photos that have no copy yet (``missing_companions``:
the group's later copies were cut off, or a sidecar was added to DIR since). A companion copied
once is never copied again, so one a person deleted from the library stays deleted.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable, Optional

from facesortd.app.progress import Progress
from facesortd.app.state import State
from facesortd.config import Config
from facesortd.formats import companion_suffix
from facesortd.fsops import candidate_names
from facesortd.library import companions as group
from facesortd.library.journal import Op, content_id
from facesortd.library.layout import Folder, identity_folders, layout_fields, photo_date, render
from facesortd.store.database import decode_path

__all__ = ["carry_out", "dry_listing", "missing_companions", "plan", "unfinished"]

_CHUNK = 200       # photo groups per journal run


def unfinished(conn, root: Path) -> list[tuple]:
    """Photos of DIR an earlier ``--import`` (or a plain adopt outside the library) recorded
    but never copied: 'kept' and nothing else placed. (image, path, sha256, mtime, inbox,
    identity)."""
    rows = conn.execute(
        "SELECT i.id, i.path, i.sha256, i.mtime_ns, i.inbox, "
        "(SELECT identity_id FROM faces WHERE image_id = i.id AND rejected = 0 "
        " AND identity_id IS NOT NULL ORDER BY id LIMIT 1) "
        "FROM images i JOIN placements p ON p.image_id = i.id AND p.kind = 'kept' "
        "WHERE i.status = 'done' AND NOT EXISTS (SELECT 1 FROM placements q "
        "WHERE q.image_id = i.id AND q.kind != 'kept')").fetchall()
    out = []
    for image_id, path, sha, mtime_ns, inbox, identity in rows:
        path = decode_path(path)
        if _under(path, root) and identity is not None and path.is_file():
            out.append((image_id, path, sha, mtime_ns, decode_path(inbox), identity))
    return out


def _under(path: Path, root: Path) -> bool:
    return os.fspath(path).startswith(os.fspath(root) + os.sep)


def _suffix(photo: Path, companion: Path) -> str:
    """What follows the photo's stem in the companion's name (``adopt.scan`` only pairs names
    that have one)."""
    tail = companion_suffix(photo.name, companion.name)
    assert tail is not None, (photo, companion)
    return tail


def plan(config: Config, conn, rows: Iterable[tuple], found: dict[Path, list[Path]],
         reserved: set[Path]) -> list[dict]:
    """Where each photo to import goes, ``rows`` as ``unfinished`` gives them: its person's
    folder by the layout, under the first name whose stem is free for the photo and all of its
    companions (``found``: the companions in DIR by photo path), not in ``reserved`` (added)."""
    pc = config.placement
    names = dict(conn.execute("SELECT id, name FROM identities WHERE merged_into IS NULL"))
    folders = identity_folders(names, pc.special_dirs)
    dated = bool(layout_fields(pc.layout) & {"year", "month", "day"})
    copies = []
    for image_id, src, sha, mtime_ns, inbox, identity in rows:
        folder = folders.get(identity, Folder(pc.unknown_dir, True))
        want = config.library / render(pc, folder, src, inbox,
                                       photo_date(src, mtime_ns) if dated else None)
        mates = [(c, _suffix(src, c)) for c in found.get(src, ())]
        dst = _free_group(want, [s for _, s in mates], reserved)
        copies.append({"image": image_id, "src": str(src), "dst": str(dst), "sha256": sha,
                       "person": folder.name,
                       "companions": [{"src": str(c), "dst": str(group.beside(dst, s)),
                                       "suffix": s} for c, s in mates]})
    return copies


def _free_group(want: Path, suffixes: list[str], reserved: set[Path]) -> Path:
    """``want`` or its first rename_new variant whose companions' names are free too (reserved
    with it): the group is renamed together."""
    for name in candidate_names(want.name):
        path = want.parent / name
        paths = [path] + [group.beside(path, s) for s in suffixes]
        if all(p not in reserved and not os.path.lexists(p) for p in paths):
            reserved.update(paths)
            return path
    raise AssertionError("unreachable")


def missing_companions(conn, root: Path, found: dict[Path, list[Path]],
                       reserved: set[Path]) -> list[dict]:
    """Companions in DIR of photos imported from DIR before that have no copy beside their photo
    yet, and were never copied (a copy a person deleted from the library stays deleted): to copy
    beside the photo where it is now, under its stem where that name is free."""
    rows = conn.execute(
        "SELECT k.image_id, k.path, m.path FROM placements k JOIN placements m "
        "ON m.image_id = k.image_id AND m.kind = 'main' AND m.action = 'copy' "
        "WHERE k.kind = 'kept'").fetchall()
    out = []
    for image_id, src, main in rows:
        src, main = decode_path(src), decode_path(main)
        mates = found.get(src) if _under(src, root) else None
        if not mates or not os.path.lexists(main):
            continue
        placed = {group.suffix(decode_path(r[0]).name, main, src) for r in conn.execute(
            "SELECT path FROM placements WHERE image_id = ? AND kind = 'companion'", (image_id,))}
        copied = {decode_path(r[0]) for r in conn.execute(
            "SELECT src FROM journal WHERE image_id = ? AND op = 'copy' AND kind LIKE "
            "'companion:%' AND status IN ('done', 'undone')", (image_id,))}
        for c in mates:
            s = _suffix(src, c)
            if s in placed or c in copied:
                continue
            want = group.beside(main, s)
            dst = next(want.parent / n for n in candidate_names(want.name)
                       if want.parent / n not in reserved and not os.path.lexists(want.parent / n))
            reserved.add(dst)
            out.append({"image": image_id, "src": str(c), "dst": str(dst), "suffix": s,
                        "companion_of": str(main)})
    return out


def dry_listing(copies: list[dict], late: list[dict]) -> dict:
    """What a dry run reports: each photo with the companions that would go with it."""
    return {"would_import": [{"src": c["src"], "dst": c["dst"],
                              "companions": [{"src": m["src"], "dst": m["dst"]}
                                             for m in c.get("companions", ())]}
                             for c in copies],
            "would_import_companions": sum(len(c.get("companions", ())) for c in copies)
            + len(late),
            "would_import_late_companions": [{"src": m["src"], "dst": m["dst"]} for m in late]}


def carry_out(state: State, copies: list[dict], late: list[dict]) -> dict:
    """Carry out the planned copies through the journal: one group per photo (the photo, then
    its companions), each verified against its sha256 and never over a file. A name taken
    meanwhile renames the group again while its photo is not copied yet; a companion whose name
    is taken after its photo was copied is reported (the next ``--import`` copies it)."""
    done: list[dict] = []
    failed: list[dict] = []
    late_done: list[dict] = []
    todo = list(copies)
    journal = state.placer.journal
    with Progress(lambda: (len(done) + len(failed), len(copies)), unit=" photos copied"):
        for _ in range(3):
            if not todo:
                break
            again = []
            for start in range(0, len(todo), _CHUNK):
                part = todo[start:start + _CHUNK]
                ops = [_ops(c, failed) for c in part]
                for c, group_ops, outcome in zip(part, ops, journal.run(ops)):
                    if outcome.error is None:
                        done.append(c)
                    elif outcome.taken and not outcome.done:   # the photo's name: rename them all
                        dst = Path(c["dst"])
                        c["dst"] = str(_free_group(dst, [m["suffix"] for m in c["companions"]],
                                                   set()))
                        for m in c["companions"]:
                            m["dst"] = str(group.beside(Path(c["dst"]), m["suffix"]))
                        again.append(c)
                    elif outcome.done:   # the photo is copied; a companion is not
                        done.append(c)
                        copied = {str(op.src) for op in outcome.done}
                        why = "its name was taken meanwhile" if outcome.taken \
                            else str(outcome.error)
                        c["companions"] = [m for m in c["companions"] if m["src"] in copied]
                        failed += [dict(src=str(op.src), dst=str(op.dst), why=why,
                                        companion_of=c["dst"])
                                   for op in group_ops[len(outcome.done):]]
                    else:
                        failed.append(_failed(c, str(outcome.error)))
            todo = again
    failed += [_failed(c, "its name kept being taken") for c in todo]
    if late:
        ops = [[Op("copy", Path(m["src"]), Path(m["dst"]), m["image"], "companion", m["sha256"],
                   "place", "copy")] for m in _hashed(late, failed)]
        for m, outcome in zip([m for m in late if "sha256" in m], journal.run(ops)):
            if outcome.error is None:
                late_done.append(m)
            else:
                failed.append(dict(src=m["src"], dst=m["dst"], why=str(outcome.error),
                                   companion_of=m["companion_of"]))
    return {"imported": len(done), "import_failed": failed,
            "imported_companions": sum(len(c["companions"]) for c in done) + len(late_done),
            "imported_files": [{"src": c["src"], "dst": c["dst"],
                                "companions": [{"src": m["src"], "dst": m["dst"]}
                                               for m in c["companions"]]} for c in done],
            "imported_late_companions": [{"src": m["src"], "dst": m["dst"]} for m in late_done]}


def _ops(c: dict, failed: list[dict]) -> list[Op]:
    """The photo's copy, then its companions' (hashed now, outside the store transaction; one
    that cannot be read is reported and left out)."""
    ops = [Op("copy", Path(c["src"]), Path(c["dst"]), c["image"], "main", c["sha256"], "place",
              "copy")]
    for m in _hashed(c["companions"], failed, c["dst"]):
        ops.append(Op("copy", Path(m["src"]), Path(m["dst"]), c["image"], "companion",
                      m["sha256"], "place", "copy"))
    c["companions"] = [m for m in c["companions"] if "sha256" in m]
    return ops


def _hashed(mates: list[dict], failed: list[dict], of: Optional[str] = None) -> list[dict]:
    out = []
    for m in mates:
        if "sha256" not in m:
            try:
                m["sha256"] = content_id(Path(m["src"]))
            except OSError as exc:
                failed.append(dict(src=m["src"], dst=m["dst"], why=f"cannot be read ({exc})",
                                   companion_of=of or m.get("companion_of")))
                continue
        out.append(m)
    return out


def _failed(c: dict, why: str) -> dict[str, Any]:
    return {"image": c["image"], "src": c["src"], "dst": c["dst"], "sha256": c["sha256"],
            "person": c["person"], "why": why}
