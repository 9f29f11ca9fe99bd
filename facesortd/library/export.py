"""Export chosen people: every photo of them copied (or linked) into a folder outside the
library, one folder per person or one folder with the person's name before each file name, and a
``manifest.csv`` (photo, person, source, sha256). Used by ``facesortd export`` and the review
page's "Export selected".

Nothing is ever written into the library, an inbox or the state folder, and nothing there is
moved or deleted: the sources are only read (or linked to). A name taken in the target gets
``name_1.jpg`` (the library's ``rename_new``); no file is ever replaced.
"""

from __future__ import annotations

import csv
import errno
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Literal, Optional

from facesortd.config import Config
from facesortd.errors import FacesortdError
from facesortd.fsops import candidate_names, copy_verified, fsync_dir, write_new_text
from facesortd.library.layout import identity_folders
from facesortd.store.database import Store, decode_path
from facesortd.store.identity_rows import resolve

__all__ = ["ExportError", "Item", "Layout", "Action", "resolve_people", "plan", "export",
           "check_target"]

Layout = Literal["per-person", "single"]
Action = Literal["copy", "hardlink", "symlink"]
MANIFEST = "manifest.csv"


class ExportError(FacesortdError):
    """An export that cannot be made as asked (unknown person, a target that cannot be used)."""

    exit_code = 6


@dataclass(frozen=True)
class Item:
    """One photo of one chosen person: where it is now and under which folder name it goes."""

    image_id: int
    identity_id: int
    person: str            # the person's folder name, as in the library
    source: Path
    sha256: Optional[str]


def resolve_people(store: Store, wanted: Iterable[str]) -> list[int]:
    """Live identity ids for ``NAME`` or ``#ID`` (a merged one: the person it became); every
    unknown or ambiguous one is named in one ``ExportError``."""
    ids: list[int] = []
    problems = []
    with store.read() as conn:
        for spec in wanted:
            spec = spec.strip()
            if spec.startswith("#") and spec[1:].isdigit():
                row = conn.execute("SELECT id FROM identities WHERE id = ?", (int(spec[1:]),)).fetchone()
                if row is None:
                    problems.append(f"no person {spec}")
                    continue
                found = [resolve(conn, row[0])]
            else:
                found = [r[0] for r in conn.execute(
                    "SELECT id FROM identities WHERE merged_into IS NULL AND name = ? ORDER BY id",
                    (spec,))]
                if not found:
                    found = [r[0] for r in conn.execute(
                        "SELECT id FROM identities WHERE merged_into IS NULL AND name = ? "
                        "COLLATE NOCASE ORDER BY id", (spec,))]
                if not found:
                    problems.append(f"no person named {spec!r} (names are as on the review page; "
                                    "or give #ID)")
                    continue
                if len(found) > 1:
                    problems.append(f"{len(found)} people are named {spec!r}: give one of "
                                    + ", ".join(f"#{i}" for i in found))
                    continue
            if found[0] not in ids:
                ids.append(found[0])
    if problems:
        raise ExportError("; ".join(problems))
    if not ids:
        raise ExportError("no people given")
    return ids


def plan(store: Store, identity_ids: list[int]) -> tuple[list[Item], list[dict]]:
    """(the photos to export, person by person; the photos whose file cannot be found now). A
    photo with several chosen people in it is one item per person."""
    with store.read() as conn:
        names = dict(conn.execute("SELECT id, name FROM identities WHERE merged_into IS NULL"))
        folders = identity_folders(names)
        marks = ",".join("?" * len(identity_ids))
        rows = conn.execute(
            "SELECT DISTINCT f.identity_id, i.id, i.path, i.sha256 FROM faces f "
            "JOIN images i ON i.id = f.image_id "
            f"WHERE f.rejected = 0 AND f.identity_id IN ({marks}) ORDER BY f.identity_id, i.id",
            identity_ids).fetchall()
        placed: dict[int, list] = {}
        for image_id, path in conn.execute(
                "SELECT p.image_id, p.path FROM placements p JOIN faces f ON f.image_id = p.image_id "
                f"WHERE p.kind IN ('main', 'extra') AND f.identity_id IN ({marks}) "
                "ORDER BY p.kind = 'extra', p.id", identity_ids):
            placed.setdefault(image_id, []).append(path)
    items, missing = [], []
    for identity, image_id, path, sha in rows:
        for value in placed.get(image_id, []) + [path]:
            candidate = decode_path(value)
            if candidate.is_file():
                items.append(Item(image_id, identity, folders[identity].name, candidate, sha))
                break
        else:
            missing.append({"image": image_id, "person": folders[identity].name,
                            "path": str(decode_path(path))})
    order = {i: n for n, i in enumerate(identity_ids)}
    items.sort(key=lambda it: (order[it.identity_id], it.image_id))
    return items, missing


def check_target(config: Config, target: Path) -> Path:
    """The absolute target folder, if it may be written: not in the library, an inbox or the
    state folder (the daemon would sort or ingest the copies), and writable."""
    target = Path(os.path.abspath(target))
    guarded = [("the library", config.library), ("the state folder", config.state_dir)]
    guarded += [(f"inbox {i.path}", i.path) for i in config.inboxes]
    for what, folder in guarded:
        folder = Path(os.path.abspath(folder))
        if target == folder or folder in target.parents or target in folder.parents:
            raise ExportError(f"{target} overlaps {what} ({folder}): export to a folder of its own")
    existing = target
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ExportError(f"{existing} is not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ExportError(f"cannot write in {existing}")
    return target


def _put(src: Path, folder: Path, name: str, action: Action) -> Path:
    """``src`` into ``folder`` under ``name`` or its first free ``name_N`` variant; never replaces."""
    for candidate in candidate_names(name):
        dst = folder / candidate
        if os.path.lexists(dst):
            continue
        try:
            if action == "copy":
                copy_verified(src, dst)
            elif action == "hardlink":
                os.link(src, dst, follow_symlinks=False)
            else:
                os.symlink(os.path.abspath(src), dst)
        except FileExistsError:
            continue              # taken meanwhile: the next name
        return dst
    raise AssertionError("unreachable")


def _file_name(item: Item, layout: Layout) -> tuple[str, str]:
    """(folder under the target, file name) of an item."""
    if layout == "per-person":
        return item.person, item.source.name
    return "", f"{item.person} - {item.source.name}"


def export(items: list[Item], target: Path, layout: Layout = "per-person", action: Action = "copy",
           dry_run: bool = False, on_file: Optional[Callable[[int], None]] = None) -> dict:
    """Copy or link ``items`` into ``target`` and write its manifest (``manifest.csv``, else a
    free ``manifest_N.csv``). ``on_file(n)`` after each file. ``dry_run``: the report of what it
    would do (names as they would be free now), nothing written."""
    rows: list[tuple[str, str, str, str]] = []
    failed: list[dict] = []
    planned: set[Path] = set()
    if not dry_run:
        try:
            target.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ExportError(f"cannot make {target}: {exc.strerror or exc}") from None
    for n, item in enumerate(items, 1):
        sub, name = _file_name(item, layout)
        folder = target / sub if sub else target
        try:
            if dry_run:
                dst = next(folder / c for c in candidate_names(name)
                           if not os.path.lexists(folder / c) and folder / c not in planned)
                planned.add(dst)
            else:
                folder.mkdir(exist_ok=True)
                dst = _put(item.source, folder, name, action)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EDQUOT):
                raise ExportError(f"export stopped at {item.source}: {exc.strerror}; "
                                  f"{len(rows)} photo(s) exported to {target} so far") from None
            failed.append({"source": str(item.source), "error": exc.strerror or str(exc)})
            continue
        rows.append((str(dst.relative_to(target)), item.person, str(item.source), item.sha256 or ""))
        if on_file is not None:
            on_file(n)
    manifest = target / MANIFEST
    if not dry_run:
        text = io.StringIO()
        writer = csv.writer(text)
        writer.writerow(["photo", "person", "source", "sha256"])
        writer.writerows(rows)
        manifest = write_new_text(target / MANIFEST, text.getvalue())
        fsync_dir(target)
    people: dict[str, int] = {}
    for _, person, _, _ in rows:
        people[person] = people.get(person, 0) + 1
    return {"target": str(target), "manifest": str(manifest), "photos": len(rows),
            "people": people, "layout": layout, "action": action, "failed": failed,
            "dry_run": dry_run, "files": [r[0] for r in rows]}
