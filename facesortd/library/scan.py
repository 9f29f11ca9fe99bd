"""What a person did to placed files in the library, and what each action means to the store.

The library is facesortd's own output: every file the placer put there has a placement row with
its path and content hash. A scan (``Placer.sync(scan=...)``, inside the placer's lock, so every
operation of the placer is complete and recorded when it looks) finds the placed files that are
no longer at their row's path, looks for each among the files of the library that no row tracks
(match.py: by size, then sha256; a symlink by its target) and reads the difference as a correction. A file
at a row's path is that row's only if it plausibly is (one lstat: the image's size and mtime, a
placed symlink's target): else the row is missing too and the file there a candidate for the
others (a person dragged another placed photo onto the path this one left); if nothing else
claims that file, it is taken for the row's own (edited or touched in place), as before. A scan
of event paths reads only the rows under them (index ranges on the encoded paths) and, for the
"whole folder" rule, the rows of the folders the missing photos left:

- a photo moved into another person's folder: the face it was placed by (the largest face; under
  ``multi_face: all`` the face of the person whose folder it left) is pinned to that person;
  into ``placement.unknown_dir``: "not this person"; into ``placement.noface_dir``: its faces are
  "not a face"; into a folder made by hand: a new person named after the folder;
- every placed photo of a person's folder moved into one other folder (a folder renamed, or its
  photos dragged onto another person's folder): the person is renamed after the new folder, or
  merged into the person whose folder it is;
- a placed photo deleted (or moved out of the library): the image is marked removed by the user
  (never placed again, its faces out of the clustering); a placed link of a multi_face ``all``
  photo deleted: that folder's face is "not this person";
- moved anywhere else (a special folder, a place the layout cannot say anything about): the file
  stays where the person put it and the placer stops managing it (kind 'gone');
- a gone photo moved on: when files nobody claims are left over (only then), the gone rows whose
  file is no longer at their path (one lstat each) are candidates for them like missing placed
  photos (their companions with them; a scan of event paths reads the gone rows of the whole
  store for it, one pass). Found where it means something (a person's folder, a folder made by
  hand, ``unknown_dir``, ``noface_dir``), the row is the image's main file again (a link, where
  it has one) and the move is the usual correction: the placer manages it again; found
  elsewhere, the row follows it, still gone; found nowhere (deleted), the row is kept as it is:
  never "removed by the user" (it was not placed when it went), never dropped (an image without
  a row is one still in its inbox: with ``action: copy`` the placer would place it again);
- companions that moved with their photo are tracked at their new path; files nobody placed are
  never looked at beyond a stat (a hand-placed file is hashed only when its size is the size of a
  missing placed file, and then once: ``library_hashes`` caches it by path, size and mtime).

Corrections go through ``learn`` (the app wires ``people.corrections.from_library``: each is a
history row with ``"source": "library"``, undone like one made on the page); each is written in
one transaction with the placement rows it moves (plans.py), so a crash repeats at most a harmless look.
The person's folder is the path component the layout's plain ``{identity}`` part produces; a
layout without one (``{identity}_{year}/...``) cannot be read: the scan then only tells deleted
files from moved ones, and moved ones are left where the person put them.
"""

from __future__ import annotations

import logging
import os
import stat
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Optional, Union

from facesortd.config import Config
from facesortd.library.layout import identity_folders
from facesortd.library.match import SYMLINK, Image, Row, match, prune_cache
from facesortd.library.plans import Learn, Plan, apply
from facesortd.store.database import Store, decode_path, encode_path
from facesortd.store.identity_rows import live_map
from facesortd.store.sql import in_chunks

__all__ = ["Learn", "Learned", "scan_library"]

log = logging.getLogger("facesortd.scan")

_TRACKED = ("main", "extra", "companion")
_ROWS = ("SELECT p.id, p.image_id, p.path, p.kind, p.action, p.sha256, i.size, i.mtime_ns, "
         "i.path FROM placements p JOIN images i ON i.id = p.image_id "
         "WHERE p.image_id IS NOT NULL")


@dataclass
class Learned:
    """What one scan found and did (``dry_run``: would do): corrections as (op, args), files
    followed to where the person put them, and the counts."""

    corrections: list[tuple[str, dict]] = field(default_factory=list)
    moved: int = 0          # placed files found elsewhere in the library
    removed: int = 0        # placed photos deleted
    left: int = 0           # moved where the layout says nothing: no longer managed
    returned: int = 0       # of the moved: photos no longer managed ('gone') placed again
    hashed: int = 0         # files hashed (not in the cache or changed)
    files: int = 0          # files the walk saw (a full scan) or under the paths given


def scan_library(config: Config, store: Store, learn: Optional[Learn],
                 scan: Union[bool, Iterable[Path]], dry_run: bool = False) -> Learned:
    """Look at the library (``scan=True``: all of it; else only the given paths, both ends of a
    move, a created or deleted file or folder) and record what a person did there."""
    full = scan is True
    paths = None if full else [Path(p) for p in scan]   # type: ignore[union-attr]
    s = _Scan(config, store, learn, dry_run)
    out = s.run(paths)
    if out is None:   # a placed file missing with no match among the paths: look everywhere
        out = _Scan(config, store, learn, dry_run).run(None)
    return out


class _Scan:
    def __init__(self, config: Config, store: Store, learn: Optional[Learn], dry_run: bool):
        self.config, self.store, self.learn, self.dry_run = config, store, learn, dry_run
        self.library = Path(os.path.abspath(config.library))
        self.out = Learned()
        pc = config.placement
        parts = Path(pc.layout).parts
        self.depth = len(parts)
        self.at = parts.index("{identity}") if "{identity}" in parts else None
        self.specials = pc.special_dirs
        export = Path(os.path.abspath(config.export.root))
        self.skip = {str(export)} if self.library in export.parents else set()
        self._alone: set[int] = set()
        self._alone_asked: set[int] = set()

    # -- the walk ------------------------------------------------------------------------------
    def _walk(self, root: str, into: set[str]) -> None:
        """Every file and symlink under ``root`` (names only: no stat), dot-names and the export
        folder left out (the journal's temporary files start with a dot). Plain strings: at
        100,000 files, Path objects cost more than the walk."""
        stack = [root]
        while stack:
            folder = stack.pop()
            try:
                entries = os.scandir(folder)
            except OSError:
                continue
            with entries:
                for entry in entries:
                    if entry.name.startswith("."):
                        continue
                    try:
                        is_dir = entry.is_dir(follow_symlinks=False)
                    except OSError:
                        continue
                    if is_dir:
                        if entry.path not in self.skip:
                            stack.append(entry.path)
                    else:
                        into.add(entry.path)

    def run(self, paths: Optional[list[Path]]) -> Optional[Learned]:
        seen: set[str] = set()
        lib = str(self.library)
        if paths is None:
            rows = self._rows(None)
            self._walk(lib, seen)
        else:
            roots = [os.path.abspath(p) for p in paths]
            roots = [r for r in roots if r == lib or r.startswith(lib + os.sep)]
            rows = self._rows(roots)
            for r in roots:
                if os.path.isdir(r) and not os.path.islink(r):
                    self._walk(r, seen)
                elif os.path.lexists(r) and not os.path.basename(r).startswith("."):
                    seen.add(r)
        known = {r[2] for r in rows}
        self.out.files = len(seen)
        missing, suspect = self._look(rows, seen)
        untracked = [Path(p) for p in sorted(seen - known)]
        if paths is None and not self.dry_run:
            prune_cache(self.store, seen)
        alone = self._left_alone({r.image_id for r in missing + suspect})
        missing = [row for row in missing if row.image_id not in alone]
        suspect = [row for row in suspect if row.image_id not in alone]
        images: dict[int, Image] = {}
        found: dict[int, Path] = {}
        late: list[Path] = []
        if missing or suspect:
            images = self._images({row.image_id for row in missing + suspect})
            found = self._match(missing + suspect, untracked + sorted({r.path for r in suspect}),
                                images)
            held = self._settle(suspect, found)
            missing += held
            if paths is not None and any(row.id not in found for row in missing):
                return None
            elif paths is None and any(row.id not in found for row in missing):
                # the walk is not atomic: a file moved while it ran, from a folder not listed yet
                # into one listed already, was seen nowhere. A second walk before anything is
                # taken for deleted: what it finds that the first did not may be it.
                again: set[str] = set()
                self._walk(lib, again)
                taken = {row.id for row in held}
                missing = [row for row in missing if row.id in found or row.id in taken
                           or not os.path.lexists(row.path)]
                late = [Path(p) for p in sorted(again - known - seen)]
                found.update(self._match([row for row in missing if row.id not in found], late,
                                         images))
        # files nobody claimed may be photos a person moved to where they meant nothing ('gone')
        # and has moved on since: only then are the gone rows looked at
        claimed = set(found.values())
        pool = [p for p in untracked + late if p not in claimed]
        gone: list[Row] = []
        if pool:
            gone = self._gone(rows if paths is None else rows + self._gone_rows(rows), seen)
        if gone:
            images.update(self._images({row.image_id for row in gone} - set(images)))
            back = self._match(gone, pool, images)
            gone = [row for row in gone if row.id in back]
            found.update(back)
        if missing or gone:
            self._interpret(missing, found, images, gone)
        return self.out

    def _look(self, rows: list[tuple], seen: set[str]) -> tuple[list[Row], list[Row]]:
        """The tracked rows whose file is not at their path (missing), and those whose path holds a
        file that may not be theirs (suspect): a photo or link whose size, mtime or link target
        is not its image's (a person moved another file onto that path, replaced or edited it),
        with the companions of such a photo. One lstat per placed photo: a file at a row's path
        is not proof that it holds the row's file."""
        missing: list[Row] = []
        suspect: list[Row] = []
        companions = []
        lstat, regular = os.lstat, stat.S_ISREG
        for r in rows:
            kind, path = r[3], r[2]
            if kind == "companion":
                companions.append(r)
                continue
            if kind not in _TRACKED:
                continue
            try:
                st = lstat(path)
            except OSError:
                if path not in seen:
                    missing.append(Row.of(r))
                continue
            if st.st_size == r[6] and st.st_mtime_ns == r[7] and regular(st.st_mode):
                continue   # the common case, first
            if not _holds(path, st, r):
                suspect.append(Row.of(r))
        doubted = {row.image_id for row in suspect if row.kind == "main"}
        for r in companions:
            path = r[2]
            if path not in seen and not os.path.lexists(path):
                missing.append(Row.of(r))
            elif r[1] in doubted:
                suspect.append(Row.of(r))
        return missing, suspect

    @staticmethod
    def _settle(suspect: list[Row], found: dict[int, Path]) -> list[Row]:
        """The suspect rows that are missing: found elsewhere (moved; the file at their path is
        someone else's), or found nowhere while another missing file was found at their path
        (theirs is gone). One found at its own path holds its file after all (touched, or on a
        filesystem that rounds mtimes); one found nowhere with nobody's file at its path is taken
        for its own file, as before the look (edited in place, or replaced by the person)."""
        for row in suspect:
            if found.get(row.id) == row.path:
                del found[row.id]
        claimed = set(found.values())
        return [row for row in suspect if row.id in found or row.path in claimed]

    def _rows(self, roots: Optional[list[str]]) -> list[tuple]:
        """(id, image id, path, kind, action, sha256, image size, image mtime_ns, image path) of
        the placement rows of images, at or under ``roots`` (None: all); paths as text."""
        with self.store.read() as conn:
            if roots is None:
                found = conn.execute(_ROWS).fetchall()
            else:
                found = []
                for r in roots:   # the path index: a range per root
                    found += _under(conn, _ROWS, "p.path", r)
        return _texts(found)

    def _gone_rows(self, rows: list[tuple]) -> list[tuple]:
        """The gone rows of the whole store that ``rows`` (a scan of event paths: the rows under
        them) does not have: a photo left in ``_groups/`` may be the file that turned up at an
        event path. One pass over the placements, made only when an event path holds a file
        nobody claimed."""
        have = {r[0] for r in rows}
        with self.store.read() as conn:
            found = conn.execute(f"{_ROWS} AND p.kind = 'gone'").fetchall()
        return [r for r in _texts(found) if r[0] not in have]

    def _gone(self, rows: list[tuple], seen: set[str]) -> list[Row]:
        """The rows of photos moved to where they meant nothing ('gone') whose file is no longer
        at their path (one lstat each, as for placed photos), with those of their companions
        that left their path too: the candidates for the files nobody claimed. The photos the
        placer leaves alone for another reason (held by undo, removed, broken) are left out."""
        out: list[Row] = []
        lstat = os.lstat
        for r in rows:
            if r[3] != "gone":
                continue
            path = r[2]
            try:
                st = lstat(path)
            except OSError:
                if path not in seen:
                    out.append(Row.of(r))
                continue
            if not _holds(path, st, r):
                out.append(Row.of(r))
        if not out:
            return out
        ids = sorted({row.image_id for row in out})
        with self.store.read() as conn:
            blocked: set[int] = set()
            companions: list[tuple] = []
            for marks, part in in_chunks(ids):
                blocked |= {r[0] for r in conn.execute(
                    f"SELECT image_id FROM placements WHERE kind IN ('held', 'removed') "
                    f"AND image_id IN ({marks})", part)}
                blocked |= {r[0] for r in conn.execute(
                    f"SELECT id FROM images WHERE (status IN ('error', 'pending') "
                    f"OR removed_at IS NOT NULL) AND id IN ({marks})", part)}
                companions += conn.execute(f"{_ROWS} AND p.kind = 'companion' "
                                           f"AND p.image_id IN ({marks})", part).fetchall()
        out = [row for row in out if row.image_id not in blocked]
        wanted = {row.image_id for row in out}
        for r in _texts(companions):
            if r[1] in wanted and r[2] not in seen and not os.path.lexists(r[2]):
                out.append(Row.of(r))
        return out

    def _left_alone(self, ids: set[int]) -> set[int]:
        """Those of ``ids`` the placer leaves alone (held by undo, gone, removed, broken or not
        ingested)."""
        ask = sorted(ids - self._alone_asked)
        if ask:
            with self.store.read() as conn:
                for marks, part in in_chunks(ask):
                    self._alone |= {r[0] for r in conn.execute(
                        f"SELECT image_id FROM placements WHERE kind IN ('held', 'gone', 'removed') "
                        f"AND image_id IN ({marks})", part)}
                    self._alone |= {r[0] for r in conn.execute(
                        f"SELECT id FROM images WHERE status IN ('error', 'pending') "
                        f"AND id IN ({marks})", part)}
            self._alone_asked |= set(ask)
        return ids & self._alone

    def _images(self, ids: set[int]) -> dict[int, Image]:
        out: dict[int, Image] = {}
        with self.store.read() as conn:
            for marks, part in in_chunks(sorted(ids)):
                for r in conn.execute(f"SELECT id, sha256, size, status, duplicate_of, "
                                      f"removed_at IS NOT NULL, path FROM images "
                                      f"WHERE id IN ({marks})", part):
                    out[r[0]] = Image(*r[:5], bool(r[5]), decode_path(r[6]))
        return out

    def _match(self, missing: list[Row], untracked: list[Path],
               images: dict[int, Image]) -> dict[int, Path]:
        found, hashed = match(self.store, missing, untracked, images, self.dry_run)
        self.out.hashed += hashed
        return found

    # -- meaning -------------------------------------------------------------------------------
    def _folder(self, path: Union[str, Path]) -> Optional[str]:
        """The person folder a library path is in: the component the layout's ``{identity}`` part
        produces; None where the layout says nothing about this path."""
        if self.at is None:
            return None
        lib, text = str(self.library) + os.sep, os.fspath(path)
        if not text.startswith(lib):
            return None
        parts = text[len(lib):].split(os.sep)
        return parts[self.at] if len(parts) == self.depth else None

    def _interpret(self, missing: list[Row], found: dict[int, Path],
                   images: dict[int, Image], gone: list[Row]) -> None:
        """Read each missing row's move (``found``: where it went; absent: deleted) and each gone
        row found again, as corrections and row updates, and apply them."""
        with self.store.read() as conn:
            live = {iid: name for iid, name in conn.execute(
                "SELECT id, name FROM identities WHERE merged_into IS NULL")}
            merged = live_map(conn)
            sources = {i.duplicate_of or i.id for i in images.values()}
            faces: dict[int, list[tuple[int, float, Optional[int]]]] = defaultdict(list)
            for marks, part in in_chunks(sorted(sources)):
                for image_id, face, area, identity in conn.execute(
                        f"SELECT image_id, id, (box_x2 - box_x1) * (box_y2 - box_y1), identity_id "
                        f"FROM faces WHERE rejected = 0 AND image_id IN ({marks}) ORDER BY id", part):
                    faces[image_id].append((face, area, merged.get(identity, identity)))
        for image_faces in faces.values():
            image_faces.sort(key=lambda f: -f[1])
        folder_of = {f.name: i for i, f in identity_folders(live, self.specials).items()}
        folded = {name.casefold(): i for name, i in folder_of.items()}
        pc = self.config.placement

        def meaning(folder: Optional[str]) -> Union[int, str, None]:
            """An identity id; 'unknown', 'noface', 'special'; ('new', name); None: unreadable."""
            if folder is None:
                return None
            if folder == pc.unknown_dir:
                return "unknown"
            if folder == pc.noface_dir:
                return "noface"
            if folder in self.specials:
                return "special"
            if folder in folder_of:
                return folder_of[folder]
            if folder.casefold() in folded:
                return folded[folder.casefold()]
            return "new:" + folder

        if self.at is None and any(r.id in found for r in missing):
            log.warning("placement.layout %r has no plain {identity} folder: files moved in the "
                        "library cannot be read as corrections; they stay where they were put. "
                        "Correct on the review page, or use a layout with a folder that is "
                        "{identity} alone (e.g. '{identity}/{year}/{name}{ext}')", pc.layout)
        plans: list[Plan] = []
        # every placed photo of a person's folder moved into one other folder: rename or merge
        whole: dict[int, Union[int, str]] = {}
        members = self._members([row.path for row in missing if row.kind != "companion"], meaning)
        for identity, inside in members.items():
            dests = {meaning(self._folder(found[r])) if r in found else None for r in inside}
            if len(dests) == 1 and all(r in found for r in inside):
                dest = dests.pop()
                if dest != identity and (isinstance(dest, int) or
                                         (isinstance(dest, str) and dest.startswith("new:"))):
                    whole[identity] = dest
        done_rows: set[int] = set()
        new_people: dict[str, list[int]] = defaultdict(list)
        new_rows: dict[str, list[tuple[int, Optional[Path], Optional[str]]]] = defaultdict(list)
        for identity, dest in sorted(whole.items(), key=lambda kv: kv[0]):
            moved = [(r, found[r], None) for r in members[identity]]
            done_rows |= set(members[identity])
            if isinstance(dest, int):
                plans.append(Plan("merge", {"source": identity, "into": dest}, moved,
                                   f"all of {_name(identity, live)}'s photos into "
                                   f"{_name(dest, live)}'s folder: merged"))
            else:
                plans.append(Plan("rename", {"identity": identity, "name": dest[4:]}, moved,
                                   f"{_name(identity, live)}'s folder renamed: named {dest[4:]!r}"))
        # a gone photo found where it means something is placed again: as the image's main file,
        # or one of its links (multi_face: all) where it has a main file already
        back = {row.id for row in gone}
        with_main = self._with_main({r.image_id for r in gone}) if gone else set()
        for row in sorted(list(missing) + list(gone), key=lambda r: (r.kind == "companion", r.id)):
            if row.id in done_rows:
                continue
            image = images.get(row.image_id)
            if image is None:
                continue
            if row.kind == "companion":   # a gone photo's too: found, by construction
                new = found.get(row.id)
                plans.append(Plan(None, {}, [(row.id, new, None)],
                                   f"companion {row.path} " + (f"followed to {new}" if new else "gone")))
                continue
            image_faces = faces.get(image.duplicate_of or image.id, [])
            old = meaning(self._folder(row.path))
            if row.id not in found:
                if row.kind == "extra":   # one link of a multi_face photo: that face is not theirs
                    face = next((f for f, _, who in image_faces if who == old), None)
                    plans.append(Plan("not_this_person" if face else None,
                                       {"faces": [face]} if face else {}, [(row.id, None, None)],
                                       f"{row.path} deleted: not {_name(old, live)}"))
                else:
                    self.out.removed += 1
                    plans.append(Plan(None if image.removed else "remove_images",
                                       {"images": [image.id]}, [(row.id, row.path, "removed")],
                                       f"{row.path} deleted: the photo is removed"))
                continue
            new = found[row.id]
            self.out.moved += 1
            dest = meaning(self._folder(new))
            face = next((f for f, _, who in image_faces if who == old and isinstance(old, int)),
                        image_faces[0][0] if image_faces else None)
            current = next((who for f, _, who in image_faces if f == face), None)
            follow = [(row.id, new, None)]
            meaningless = dest is None or dest == "special" or (face is None and dest != "noface") \
                or image.status == "other"
            if row.id in back:
                if meaningless or image.removed:
                    plans.append(Plan(None, {}, [(row.id, new, "gone")],
                                       f"{row.path} (not managed) moved to {new}: still not managed"))
                    continue
                kind = "extra" if image.id in with_main else "main"
                with_main.add(image.id)
                follow = [(row.id, new, kind)]
                self.out.returned += 1
                if not self.dry_run:
                    log.info("library: %s, not managed since it was moved there, is in %s now: "
                             "managed again", row.path, new)
            if meaningless:
                self.out.left += 1
                plans.append(Plan(None, {}, [(row.id, new, "gone")],
                                   f"{row.path} moved to {new}: left there, no longer managed"))
            elif dest == "noface":
                plans.append(Plan("reject" if image_faces else None,
                                   {"faces": [f for f, _, _ in image_faces]}, follow,
                                   f"{row.path} moved to {pc.noface_dir}: not a face"))
            elif dest == "unknown":
                plans.append(Plan("not_this_person" if current is not None else None,
                                   {"faces": [face]}, follow,
                                   f"{row.path} moved to {pc.unknown_dir}: not {_name(current, live)}"))
            elif isinstance(dest, int):
                plans.append(Plan("move_faces" if dest != current else None,
                                   {"faces": [face], "to": dest}, follow,
                                   f"{row.path} moved to {new}: {_name(dest, live)}"))
            else:
                new_people[dest[4:]].append(face)
                new_rows[dest[4:]].extend(follow)
        for name, face_ids in new_people.items():
            plans.append(Plan("move_faces", {"faces": sorted(set(face_ids)), "to": "new", "name": name},
                               new_rows[name], f"photos moved into a new folder {name!r}: a new person"))
        self.out.corrections += apply(self.store, self.learn, plans, self.dry_run)

    def _with_main(self, ids: set[int]) -> set[int]:
        """Those of ``ids`` that have a main placement row."""
        with self.store.read() as conn:
            return {r[0] for marks, part in in_chunks(sorted(ids)) for r in conn.execute(
                f"SELECT image_id FROM placements WHERE kind = 'main' AND image_id IN ({marks})",
                part)}

    def _members(self, moved: list[Path], meaning: Callable) -> dict[int, list[int]]:
        """Identity -> the ids of the placed photos (main and extra rows) in its folder, for the
        people whose folder a missing photo was in: read from the rows under those folders only
        (the folders of the missing rows, and the folders on disk at the layout's ``{identity}``
        level whose name means one of those people, another case of the name included)."""
        if self.at is None:
            return {}
        lib = str(self.library)
        prefixes: dict[str, Union[int, str, None]] = {}
        for path in moved:
            parts = os.fspath(path)[len(lib) + 1:].split(os.sep)
            if len(parts) == self.depth:
                prefixes[os.path.join(lib, *parts[:self.at + 1])] = meaning(parts[self.at])
        people = {m for m in prefixes.values() if isinstance(m, int)}
        if not people:
            return {}
        level = [lib]
        for _ in range(self.at + 1):   # the folders at the {identity} level
            below = []
            for folder in level:
                try:
                    with os.scandir(folder) as entries:
                        below += [e.path for e in entries if not e.name.startswith(".")
                                  and e.path not in self.skip and e.is_dir(follow_symlinks=False)]
                except OSError:
                    continue
            level = below
        for folder in level:
            if folder not in prefixes:
                prefixes[folder] = meaning(os.path.basename(folder))
        sql = ("SELECT p.id, p.image_id, p.path FROM placements p WHERE p.image_id IS NOT NULL "
               "AND p.kind IN ('main', 'extra')")
        rows = []
        with self.store.read() as conn:
            for folder, m in sorted(prefixes.items()):
                if m in people:
                    rows += _under(conn, sql, "p.path", folder)
        alone = self._left_alone({r[1] for r in rows})
        members: dict[int, list[int]] = defaultdict(list)
        for row_id, image_id, path in rows:
            if image_id not in alone:
                m = meaning(self._folder(_text(path)))
                if m in people:
                    members[m].append(row_id)
        return members

def _under(conn, sql: str, column: str, root: str) -> list[tuple]:
    """The rows of ``sql`` (ending in a WHERE clause) whose ``column`` is ``root`` or a path under
    it, by index ranges: the store keeps a path as text, or as its raw bytes where the name is not
    valid UTF-8 (encode_path), and SQLite orders every text before every blob, so a folder's paths
    are one text range (``root/`` up to ``root0``, the character after the separator) and one
    blob range (the same in bytes; only that one for a folder whose own name is not UTF-8)."""
    enc = encode_path(root)
    out = conn.execute(f"{sql} AND {column} = ?", (enc,)).fetchall()
    after = chr(ord(os.sep) + 1)
    if isinstance(enc, str):
        out += conn.execute(f"{sql} AND {column} >= ? AND {column} < ?",
                            (enc + os.sep, enc + after)).fetchall()
    raw = os.fsencode(root)
    out += conn.execute(f"{sql} AND {column} >= ? AND {column} < ?",
                        (raw + os.fsencode(os.sep), raw + os.fsencode(after))).fetchall()
    return out


def _texts(rows: list[tuple]) -> list[tuple]:
    """Placement rows with their path as text (a raw-byte path decoded as the filesystem does)."""
    return [(r[0], r[1], _text(r[2]), *r[3:]) for r in rows]


def _text(value: Union[str, bytes]) -> str:
    """A stored path as text (the store keeps an undecodable name as its raw bytes)."""
    return os.fsdecode(value) if isinstance(value, bytes) else value


def _holds(path: str, st: os.stat_result, row: tuple) -> bool:
    """Is the file at a placement row's path (``st``: its lstat) plausibly the row's own? A link
    placed by the symlink action: its target is the image's original (or the journal's content id
    names that target); a file (or the file a link of another kind points at): the image's size,
    and its mtime, which a move, a hard link and the placer's copy all keep (on a filesystem that
    keeps whole seconds only, within two seconds). A wrong "no" costs a look (a hash, cached); a
    wrong "yes" would take another photo for this one."""
    size, mtime, original = row[6], row[7], row[8]
    if stat.S_ISLNK(st.st_mode):
        try:
            target = os.readlink(path)
        except OSError:
            return False
        if row[5] == SYMLINK + target or (original is not None
                                            and target == os.path.abspath(_text(original))):
            return True
        try:
            st = os.stat(path)
        except OSError:
            return False
    if not stat.S_ISREG(st.st_mode):
        return False
    if size is None or st.st_size != size:
        return size is None
    if mtime is None or st.st_mtime_ns == mtime:
        return True
    return st.st_mtime_ns % 1_000_000_000 == 0 and abs(st.st_mtime_ns - mtime) <= 2_000_000_000


def _name(identity, live: dict[int, Optional[str]]) -> str:
    if not isinstance(identity, int):
        return "anyone"
    return f"{live.get(identity) or f'Person_{identity:04d}'} (#{identity})"
