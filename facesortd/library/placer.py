"""The placer: makes the library agree with the store, one journaled file operation at a time.

Reconciliation: ``sync()`` computes where each ingested image should be (``placement_layout``),
compares it with where its file is (the ``placements`` table; an image without a row is still at
its inbox path) and carries out the difference through the ``Journal``. Renames, merges, splits and
reassignments need nothing special: the wanted folder changes and the file follows. Files the
placer did not put in the library have no row and are never touched; a placed file someone moved
away is marked 'gone' and left alone. ``undo()`` puts files back in their inbox and holds them,
quarantined ones too. Operations are planned for a chunk of images, then carried out together
(``Journal.run``: one synced commit and one fsync per folder for the chunk, not per file).
``quarantine()`` is the pipeline's way to set a broken file aside (quarantine.py).
``audit()`` says, read-only, where each placed file is against where the placer wants it
(``facesortd doctor``). ``sync(scan=...)`` first reads what a person did to placed files in the
library (scan.py: moves, folder renames, deletions are corrections, recorded through ``learn``).
Companions (companions.py: ``IMG_1.CR3``, ``IMG_1.xmp``, ``IMG_1.JPG.json`` beside ``IMG_1.JPG``)
are operations of their photo's group: placed with it under names that share its (renamed) stem,
moved when it follows its person, undone with it; one that arrives later goes to where its photo
is now. Other files ('other' images: neither photos nor companions) go to ``placement.other_dir``
with their path inside the inbox kept.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import stat
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterable, Optional, Union

from facesortd.config import Config
from facesortd.fsops import candidate_names, prune_empty
from facesortd.library import companions, quarantine, xmp
from facesortd.library.journal import Journal, Op, content_id
from facesortd.library.layout import Folder, identity_folders, is_candidate, layout_fields, photo_date, render
from facesortd.library.scan import Learn, Learned, scan_library
from facesortd.store.database import DB_NAME, ImageRow, Store, decode_path, encode_path

log = logging.getLogger("facesortd.placer")

CHUNK_OPS = 500   # operations per Journal.run: per chunk one synced commit, one fsync per folder
_PASSES = 3       # a destination taken meanwhile: that image is planned again, this many times


@dataclass(frozen=True)
class _Placement:
    image_id: int
    path: Path
    kind: str
    action: str
    sha256: Optional[str]
    mtime_ns: Optional[int]
    chosen: Optional[str] = None    # the file name a person gave it in the library (scan.py)

    def named(self, rel: Path) -> Path:
        """``rel`` under the name a person chose for this file, if they chose one."""
        return rel.with_name(self.chosen) if self.chosen else rel


@dataclass
class _Snapshot:
    images: dict[int, ImageRow]
    faces: dict[int, list[tuple[float, Optional[int]]]]       # image -> [(area, identity root)]
    folders: dict[int, Folder]                                 # identity root -> folder
    placements: dict[int, list[_Placement]]
    by_path: dict[Path, _Placement]
    dates: dict[int, tuple[Optional[str], str]]
    hidden_only: set[int] = field(default_factory=set)         # images whose faces are all hidden
    removed: set[int] = field(default_factory=set)             # deleted from the library by a person
    reserved: set[Path] = field(default_factory=set)           # destinations chosen this sync
    listings: dict[Path, companions.Listing] = field(default_factory=dict)   # inbox folders


@dataclass
class _Group:
    """One image's operations, in order (each may rely on the one before, as a link on a file
    just moved), what to do once all of them were done, and folders they may have emptied."""

    image: ImageRow
    ops: list[Op] = field(default_factory=list)
    then: list[Callable[[], None]] = field(default_factory=list)
    prune: list[Path] = field(default_factory=list)


class Placer:
    """``replay()`` at start, ``sync(dry_run)`` whenever placement may have changed, ``undo()``."""

    def __init__(self, config: Config, store: Store, learn: Optional[Learn] = None):
        self.config = config
        self.store = store
        self.learn = learn              # corrections read from the library (scan.py); the app's
        self.last_scan: Optional[Learned] = None
        self.journal = Journal(store)
        self.sidecars = xmp.Sidecars(store, self.journal)   # placement.xmp_sidecars
        self._lock = threading.Lock()   # one sync (or undo) at a time
        self._cache_dates = True        # False: capture dates found are not written (audit)

    # -- public --------------------------------------------------------------------------------
    def replay(self) -> dict[str, int]:
        """Complete or roll back what a crash interrupted (at start, before anything else)."""
        with self._lock:
            outcome = self.journal.replay()
            quarantine.repair(self.config, self.store)
            return outcome

    def quarantine(self, image_id: int, path: Path, reason: str) -> Optional[Path]:
        """Set the broken file ``path`` (image ``image_id``, recorded as an error) aside into the
        quarantine folder, journaled: the pipeline's ``set_aside`` (see quarantine.py)."""
        return quarantine.set_aside(self.config, self.journal, image_id, path, reason)

    def sync(self, dry_run: bool = False, scan: Union[bool, Iterable[Path]] = False) -> list[Op]:
        """Carry out (or, dry, only list) the operations that put every file where it belongs.

        ``scan``: first read what a person did in the library (scan.py): True, all of it; library
        paths (a watcher's events, both ends of a move), only those and what they imply (all of it
        when a placed file there is missing and not found among them). ``last_scan`` tells what
        it found. A dry run records nothing."""
        with self._lock:
            if scan is True or (scan is not False and scan is not None):
                self.last_scan = scan_library(self.config, self.store, self.learn, scan, dry_run)
            done: list[Op] = []
            again: Optional[set[int]] = None
            for _ in range(_PASSES):
                snap = self._load()
                images = snap.images.values() if again is None else \
                    [snap.images[i] for i in again if i in snap.images]
                again = self._each(images, lambda image, s=snap: self._reconcile(image, s, dry_run),
                                   dry_run, done, "place")
                if not again:
                    break
            self.sidecars.sync(self.config, dry_run)   # XMP face tags (xmp.py)
            if done and not dry_run:
                log.info("placed: %d file operation(s)", len(done))
            return done

    def undo(self, last: Optional[int] = None, since: Optional[float] = None,
             dry_run: bool = False) -> list[Op]:
        """Put the files of the last ``last`` placement operations (or those since ``since``)
        back where they came from, quarantined files included, and hold them there (the placer
        and the pipeline leave them alone until the file changes)."""
        with self._lock:
            sql = ("SELECT id, image_id FROM journal WHERE status = 'done' AND image_id IS NOT NULL "
                   "AND reason IN ('place', 'follow', 'quarantine') AND op != 'retire'")
            args: tuple = ()
            if since is not None:
                sql, args = sql + " AND created_at >= ?", (since,)
            sql += " ORDER BY id DESC"
            if last is not None:
                sql += f" LIMIT {int(last):d}"
            with self.store.read() as conn:
                rows = conn.execute(sql, args).fetchall()
            done: list[Op] = []
            todo = set(r[1] for r in rows)
            order = list(dict.fromkeys(r[1] for r in rows))
            for _ in range(_PASSES):
                snap = self._load()
                images = [image for image in (snap.images.get(i) or self.store.get_image(i)
                                              for i in order if i in todo) if image is not None]
                todo = self._each(images, lambda image, s=snap: self._undo_image(image, s),
                                  dry_run, done, "undo")
                if not todo:
                    break
            if not dry_run and rows:
                with self.store.transaction() as conn:
                    conn.executemany("UPDATE journal SET status = 'undone' WHERE id = ?",
                                     [(r[0],) for r in rows])
            return done

    # -- carrying out --------------------------------------------------------------------------
    def _each(self, images: Iterable[ImageRow], plan: Callable[[ImageRow], list[_Group]],
              dry_run: bool, done: list[Op], what: str) -> set[int]:
        """Plan each image's operations; a dry run only lists them in ``done``, else they are
        carried out a chunk at a time and the ones done are added. Returns the images to plan
        again: a destination was taken between planning and doing."""
        again: set[int] = set()
        chunk: list[_Group] = []
        waiting = 0
        for image in images:
            try:
                groups = plan(image)
            except OSError as exc:  # one file's trouble never stops the others
                log.error("could not %s %s: %s", what, image.path, exc)
                continue
            if dry_run:
                done.extend(op for group in groups for op in group.ops)
                continue
            chunk += [g for g in groups if g.ops or g.then or g.prune]
            waiting += sum(len(g.ops) for g in groups)
            if waiting >= CHUNK_OPS:
                self._carry_out_chunk(chunk, done, again, what)
                chunk, waiting = [], 0
        if chunk:
            self._carry_out_chunk(chunk, done, again, what)
        return again

    def _carry_out_chunk(self, chunk: list[_Group], done: list[Op], again: set[int],
                         what: str) -> None:
        for group, out in zip(chunk, self.journal.run([g.ops for g in chunk])):
            done.extend(out.done)
            if out.error is None:
                for then in group.then:
                    then()
            elif out.taken:
                again.add(group.image.id)
            elif out.moved_away:   # a person moved or deleted it meanwhile: theirs wins
                log.info("%s: moved away outside facesortd while it ran; the library scan reads "
                         "where it went", out.failed.describe())
            elif what == "undo":
                log.error("could not undo %s: %s", group.image.path, out.error)
            else:
                log.error("%s failed: %s (the file stays where it was)", out.failed.describe(),
                          out.error)
            for folder in group.prune:
                prune_empty(folder, self.config.library)

    # -- reconciliation ------------------------------------------------------------------------
    def _reconcile(self, image: ImageRow, snap: _Snapshot, dry_run: bool) -> list[_Group]:
        """This image's operations (a dry run writes nothing; a real one may update the image's
        placement rows, not its files)."""
        if image.status == "error":
            return self._beside_quarantined(image, snap)
        placements = self._current(image, snap.placements.get(image.id, []), dry_run, snap.removed)
        if placements is None:
            return []
        targets = self._targets(image, snap)
        if not targets:
            return []
        group = _Group(image)
        main = next((p for p in placements if p.kind == "main"), None)
        extras = [p for p in placements if p.kind == "extra"]
        placed = [p for p in placements if p.kind == "companion" and os.path.lexists(p.path)]
        action = self.config.placement.action
        arriving = self._arriving(image, snap, placed, main.path if main else image.path)
        if main is None:
            try:
                st = os.lstat(image.path)
            except FileNotFoundError:
                return []  # gone from the inbox before it could be placed
            if (st.st_size, st.st_mtime_ns) != (image.size, image.mtime_ns):
                return []  # a new version: the pipeline ingests it first
            if image.sha256 is None:   # an other file: hashed here, off the watcher's thread
                image = replace(image, sha256=content_id(image.path))
                if not dry_run:
                    self._set_sha(image)
            template = Op(action, image.path, None, image.id,
                          "main", image.sha256, "place", action)
            main_path = self._carry_out(template, targets[0], image, snap, group,
                                        [suffix for _, suffix in arriving])
        elif not os.path.lexists(main.path):
            # moved or deleted by a person: the next library scan (sync(scan=...)) reads which
            log.debug("%s was placed at %s but is not there now; left for the library scan",
                      image.path, main.path)
            return []
        elif self._acceptable(main.path, main.named(targets[0]), image, snap):
            main_path = main.path
        else:
            sha = content_id(main.path) if os.path.islink(main.path) else image.sha256
            template = Op("move", main.path, None, image.id, "main", sha, "follow", main.action)
            suffixes = [companions.suffix(p.path.name, main.path, image.path) for p in placed]
            main_path = self._carry_out(template, main.named(targets[0]), image, snap, group,
                                        suffixes + [suffix for _, suffix in arriving])
            group.prune.append(main.path.parent)
            for p, suffix in zip(placed, suffixes):   # the group follows under the new stem
                dst = companions.beside(main_path, suffix)
                snap.reserved.add(dst)
                group.ops.append(Op("move", p.path, dst, image.id, "companion", _sha(p), "follow",
                                    p.action))
            placed = []
        for p in placed:
            if p.path.parent != main_path.parent:   # left behind (a crash between two moves)
                suffix = companions.suffix(p.path.name, main.path if main else image.path,
                                           image.path)
                dst = self._free(companions.beside(main_path, suffix), snap)
                group.ops.append(Op("move", p.path, dst, image.id, "companion", _sha(p), "follow",
                                    p.action))
                group.prune.append(p.path.parent)
        for path, suffix in arriving:
            dst = self._free(companions.beside(main_path, suffix), snap)
            group.ops.append(Op(action, path, dst, image.id, "companion", content_id(path), "place",
                                action))
        unmatched = list(extras)
        for rel in targets[1:]:
            keep = next((e for e in unmatched if self._acceptable(e.path, rel, image, snap)), None)
            if keep is not None:
                unmatched.remove(keep)
                continue
            # extra entries are links (a copy where links are impossible), never a second move
            src, op = (image.path, "symlink") if action == "symlink" else (main_path, "hardlink")
            self._carry_out(Op(op, src, None, image.id, "extra", image.sha256, "place", op),
                            rel, image, snap, group)
        for extra in unmatched:
            group.ops.append(Op("retire", extra.path, None, image.id, "extra", image.sha256,
                                "follow", extra.action))
        return [group]

    def _beside_quarantined(self, image: ImageRow, snap: _Snapshot) -> list[_Group]:
        """A broken photo set aside (quarantine.py) keeps its group: its companions join it in
        the quarantine folder, the ones that come later too."""
        rows = snap.placements.get(image.id, [])
        main = next((p for p in rows if p.kind == "main"), None)
        if main is None or any(p.kind == "held" for p in rows) or not os.path.lexists(main.path):
            return []
        placed = [p for p in rows if p.kind == "companion"]
        group = _Group(image)
        for path, suffix in self._arriving(image, snap, placed, main.path):
            dst = self._free(companions.beside(main.path, suffix), snap)
            group.ops.append(Op("move", path, dst, image.id, "companion", content_id(path),
                                "quarantine", "move"))
        return [group] if group.ops else []

    def _current(self, image: ImageRow, placements: list[_Placement],
                 dry_run: bool, snap_removed: Iterable[int] = ()) -> Optional[list[_Placement]]:
        """This image's live placements; None if it is held or gone (leave it alone)."""
        live = []
        for p in placements:
            if p.kind == "held":
                if (p.sha256, p.mtime_ns) == (image.sha256, image.mtime_ns):
                    return None
                if not dry_run:  # the file changed since undo: sort it again
                    self._forget(p, "DELETE FROM placements WHERE image_id = ? AND path = ?")
            elif p.kind == "gone":
                return None
            elif p.kind == "removed":   # deleted from the library by a person (scan.py)
                if image.id in snap_removed:
                    return None
                if not dry_run:   # the removal undone, or the same path sorted again
                    self._forget(p, "DELETE FROM placements WHERE image_id = ? AND path = ?")
            elif p.kind == "companion":
                live.append(p)     # its own bytes: never compared with the photo's
            elif p.kind == "held_companion":
                continue           # back in the inbox with its held photo (undo)
            elif p.kind == "kept":
                continue           # facesortd adopt: the person's own file, never moved
            elif p.sha256 != image.sha256:
                # the inbox path now holds other content: the old file stays where it is, untracked
                if not dry_run:
                    self._forget(p, "UPDATE placements SET image_id = NULL "
                                    "WHERE image_id = ? AND path = ?")
            else:
                live.append(p)
        if not live and any(p.kind == "kept" for p in placements):
            return None            # adopted where it is, outside the library: it stays there
        return live

    def _targets(self, image: ImageRow, snap: _Snapshot) -> list[Path]:
        """Library-relative paths wanted for this image: the main one first, then extras."""
        folders = self._wanted_folders(image, snap)
        if not folders:
            return []
        pc = self.config.placement
        if image.status == "other":   # the path inside the inbox, kept
            try:
                inside = image.path.relative_to(image.inbox)
            except ValueError:
                inside = Path(image.path.name)
            return [Path(pc.other_dir) / inside]
        date = self._date(image, snap) if layout_fields(pc.layout) & {"year", "month", "day"} \
            else None
        return [render(pc, f, image.path, image.inbox, date) for f in folders]

    def _wanted_folders(self, image: ImageRow, snap: _Snapshot) -> list[Folder]:
        """The folders wanted for this image, the main one first; none while it is not sorted."""
        pc = self.config.placement
        if image.id in snap.removed or image.duplicate_of in snap.removed:
            return []   # deleted from the library by a person: never placed again (nor its copies)
        if image.status == "duplicate":
            if pc.on_conflict == "skip_identical":
                return [Folder(pc.duplicates_dir, True)]
            original = snap.images.get(image.duplicate_of)
            if original is None or original.status not in ("done", "noface"):
                return []
            return self._folders(original, snap)
        if image.status in ("done", "noface"):
            return self._folders(image, snap)
        if image.status == "other":
            return [Folder(pc.other_dir, True)]
        return []

    def _folders(self, image: ImageRow, snap: _Snapshot) -> list[Folder]:
        pc = self.config.placement
        faces = snap.faces.get(image.id, [])
        unknown = Folder(pc.unknown_dir, True)
        if image.id in snap.hidden_only:
            return [unknown]
        if image.status == "noface" or not faces:
            return [Folder(pc.noface_dir, True)]
        if pc.multi_face == "largest":
            root = faces[0][1]
            return [snap.folders[root] if root is not None else unknown]
        if pc.multi_face == "group" and len(faces) > 1:
            return [Folder(pc.group_dir, True)]
        people = list(dict.fromkeys(snap.folders[r] for _, r in faces if r is not None))
        return people or [unknown]

    def _date(self, image: ImageRow, snap: _Snapshot) -> tuple[str, str, str]:
        sha, taken = snap.dates.get(image.id, (None, ""))
        if taken and sha == image.sha256:
            return tuple(taken.split("-"))  # type: ignore[return-value]
        mains = [p.path for p in snap.placements.get(image.id, []) if p.kind == "main"]
        date = photo_date(mains[0] if mains else image.path, image.mtime_ns)
        if self._cache_dates:
            with self.store.transaction() as conn:
                conn.execute("INSERT OR REPLACE INTO image_dates (image_id, sha256, taken) "
                             "VALUES (?, ?, ?)", (image.id, image.sha256, "-".join(date)))
        snap.dates[image.id] = (image.sha256, "-".join(date))
        return date

    def _acceptable(self, path: Path, rel: Path, image: ImageRow, snap: _Snapshot) -> bool:
        """Is ``path`` a fine place for a file wanted at ``rel`` (the name or a rename_new
        variant of it; or, with skip_identical, the duplicates folder when ``rel`` is taken by
        the same bytes)?"""
        want = self.config.library / rel
        if path.parent == want.parent and is_candidate(path.name, want.name):
            return True
        pc = self.config.placement
        if pc.on_conflict != "skip_identical":
            return False
        divert = self._divert(image, snap)
        return (path.parent == divert.parent and is_candidate(path.name, divert.name)
                and self._holds_same(want, image, snap))

    def _divert(self, image: ImageRow, snap: _Snapshot) -> Path:
        """Where skip_identical puts a file whose bytes are already at its wanted path."""
        pc = self.config.placement
        date = self._date(image, snap) if layout_fields(pc.layout) & {"year", "month", "day"} \
            else None
        return self.config.library / render(pc, Folder(pc.duplicates_dir, True), image.path,
                                            image.inbox, date)

    def _holds_same(self, path: Path, image: ImageRow, snap: _Snapshot) -> bool:
        """Does ``path`` (someone else's file) hold exactly this image's bytes?"""
        if not os.path.lexists(path):
            return False
        other = snap.by_path.get(path)
        if other is not None:
            return other.image_id != image.id and other.sha256 == image.sha256
        try:
            return content_id(path) == image.sha256
        except OSError:
            return False

    def _choose(self, rel: Path, image: ImageRow, kind: str, snap: _Snapshot,
                suffixes: Iterable[str] = ()) -> Path:
        """A free destination for ``rel`` under the conflict policy (never an existing path);
        with its companions' ``suffixes``, one whose stem is free for all of them too (rename_new
        renames the whole group: IMG_1.jpg, IMG_1.CR3, IMG_1.xmp)."""
        suffixes = list(suffixes)
        want = self.config.library / rel
        if (self.config.placement.on_conflict == "skip_identical" and kind == "main"
                and want not in snap.reserved and self._holds_same(want, image, snap)):
            log.info("%s: the same bytes are already at %s; into the duplicates folder",
                     image.path, want)
            want = self._divert(image, snap)
        for name in candidate_names(want.name):
            path = want.parent / name
            if all(p not in snap.reserved and not os.path.lexists(p) for p in
                   [path] + [companions.beside(path, s) for s in suffixes]):
                return path
        raise AssertionError("unreachable")

    def _free(self, want: Path, snap: _Snapshot) -> Path:
        """``want`` or its first free rename_new variant, reserved for this sync."""
        for name in candidate_names(want.name):
            path = want.parent / name
            if path not in snap.reserved and not os.path.lexists(path):
                snap.reserved.add(path)
                return path
        raise AssertionError("unreachable")

    def _arriving(self, image: ImageRow, snap: _Snapshot, placed: list[_Placement],
                  main_at: Path) -> list[tuple[Path, str]]:
        """Companions of this image in its inbox folder, settled, to be placed beside it now
        (with a copy or link action, those placed before stay placed: they are not taken twice)."""
        if image.status == "other" or self.config.library in image.path.parents \
                or any(p.kind == "kept" for p in snap.placements.get(image.id, ())):
            return []   # adopted (facesortd adopt): its folder is a person's own, not an inbox
        folder = image.path.parent
        if folder not in snap.listings:
            snap.listings[folder] = companions.listing(folder, self.store, self.config.watch)
        found = companions.of(image.path.name, snap.listings[folder], self.config.watch)
        if self.config.placement.action != "move" and found:
            have = {companions.suffix(p.path.name, main_at, image.path) for p in placed}
            found = [(name, suffix) for name, suffix in found if suffix not in have]
        settle_s = self.config.watch.settle_ms / 1000.0
        out = []
        for name, suffix in found:
            try:
                st = os.lstat(folder / name)
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode) and time.time() - st.st_mtime >= settle_s:
                out.append((folder / name, suffix))
        return out

    def _carry_out(self, template: Op, rel: Path, image: ImageRow, snap: _Snapshot,
                   group: _Group, suffixes: Iterable[str] = ()) -> Path:
        """Pick a free destination for ``template`` and add the operation to ``group``."""
        suffixes = list(suffixes)
        dst = self._choose(rel, image, template.kind, snap, suffixes)
        snap.reserved.add(dst)   # the companions' names, free too, are reserved as they are taken
        group.ops.append(replace(template, dst=dst))
        return dst

    # -- undo ----------------------------------------------------------------------------------
    def _undo_image(self, image: ImageRow, snap: _Snapshot) -> list[_Group]:
        """Put the image's placed files back: links and copies retired, a moved file moved back
        beside its inbox path, then held there. A quarantined file's reason file is retired on its
        own (one edited by hand stays and does not keep the file from going back)."""
        placements = [p for p in snap.placements.get(image.id, [])
                      if p.kind in ("main", "extra", "reason", "companion")]
        group, note = _Group(image), _Group(image)
        order = ("extra", "main", "companion", "reason")
        main = next((p for p in placements if p.kind == "main"), None)
        back = image.path   # where the photo goes back to: its companions take its stem
        for p in sorted(placements, key=lambda p: order.index(p.kind)):
            if not os.path.lexists(p.path):
                continue
            sha = p.sha256 or image.sha256   # a quarantined file: the image row has no hash
            if p.kind == "main" and p.action == "move":
                back = target = self._free_beside(image.path, snap)
                sha = content_id(p.path) if os.path.islink(p.path) else sha
                group.ops.append(Op("move", p.path, target, image.id, "held", sha, "undo", "move"))
            elif p.kind == "companion" and p.action == "move":
                suffix = companions.suffix(p.path.name, main.path if main else image.path,
                                           image.path)
                target = self._free(companions.beside(back, suffix), snap)
                group.ops.append(Op("move", p.path, target, image.id, "held_companion", _sha(p),
                                    "undo", "move"))
            else:
                (note if p.kind == "reason" else group).ops.append(
                    Op("retire", p.path, None, image.id, p.kind, sha, "undo", p.action))
        group.then.append(lambda: self._hold(image))
        note.prune += sorted({p.path.parent for p in placements})
        return [group, note]

    def _free_beside(self, path: Path, snap: _Snapshot) -> Path:
        for name in candidate_names(path.name):
            candidate = path.parent / name
            if candidate not in snap.reserved and not os.path.lexists(candidate):
                snap.reserved.add(candidate)
                return candidate
        raise AssertionError("unreachable")

    def _hold(self, image: ImageRow) -> None:
        now = time.time()
        with self.store.transaction() as conn:
            conn.execute("UPDATE placements SET mtime_ns = ?, updated_at = ? "
                         "WHERE image_id = ? AND kind = 'held'", (image.mtime_ns, now, image.id))
            if not conn.execute("SELECT 1 FROM placements WHERE image_id = ? AND kind = 'held'",
                                (image.id,)).fetchone():
                conn.execute("INSERT INTO placements (image_id, path, kind, action, sha256, "
                             "mtime_ns, created_at, updated_at) VALUES (?, ?, 'held', 'none', ?, "
                             "?, ?, ?)", (image.id, encode_path(image.path), image.sha256,
                                          image.mtime_ns, now, now))

    # -- store reads and small writes ----------------------------------------------------------
    def _load(self, identities: Optional[Iterable[tuple[int, Optional[str], Optional[int]]]] = None
              ) -> _Snapshot:
        """What sync needs, read in one go; ``identities`` (id, name, merged_into) rows stand in
        for the store's (``audit``)."""
        with self.store.read() as conn:
            images = {r.id: r for r in self.store.images_with_status("done", "noface", "duplicate",
                                                                     "other", "error")}
            merged, names = {}, {}
            rows = conn.execute("SELECT id, name, merged_into FROM identities") \
                if identities is None else identities
            for iid, name, into in rows:
                names[iid], merged[iid] = name, into
            hidden = _hidden(conn)
            removed = _removed(conn)
            faces: dict[int, list] = defaultdict(list)
            veiled: set[int] = set()
            for image_id, area, identity in conn.execute(
                    "SELECT image_id, (box_x2 - box_x1) * (box_y2 - box_y1), identity_id "
                    "FROM faces WHERE rejected = 0 ORDER BY image_id, id"):
                root = _root(identity, merged)
                if root is not None and root in hidden:   # placed as if the face were not there
                    veiled.add(image_id)
                    continue
                faces[image_id].append((area, root))
            placements: dict[int, list] = defaultdict(list)
            by_path = {}
            for row in _placement_rows(conn):
                p = _Placement(row[0], decode_path(row[1]), *row[2:])
                placements[p.image_id].append(p)
                by_path[p.path] = p
            dates = {r[0]: (r[1], r[2]) for r in
                     conn.execute("SELECT image_id, sha256, taken FROM image_dates")}
        for image_faces in faces.values():
            image_faces.sort(key=lambda f: -f[0])   # largest face first (stable: lowest id wins)
        live = {i: name for i, name in names.items() if merged[i] is None}
        folders = identity_folders(live, self.config.placement.special_dirs)
        return _Snapshot(images, dict(faces), folders, dict(placements), by_path, dates,
                         hidden_only=veiled - set(faces), removed=removed)

    def _set_sha(self, image: ImageRow) -> None:
        with self.store.transaction() as conn:
            conn.execute("UPDATE images SET sha256 = ? WHERE id = ? AND sha256 IS NULL",
                         (image.sha256, image.id))

    def _forget(self, p: _Placement, sql: str) -> None:
        with self.store.transaction() as conn:
            conn.execute(sql, (p.image_id, encode_path(p.path)))


@dataclass(frozen=True)
class Placed:
    """One image's main file in the library (``audit``): where it is and where the placer wants it."""

    image_id: int
    path: Path                  # where the placer put it (the placements table)
    wanted: Path                # where the placer wants it now (a rename_new variant is as good)
    identity: Optional[int]     # the live identity whose folder ``wanted`` is in; None: a special one
    exists: bool                # the file is still at ``path``
    in_place: bool              # ``path`` is fine for ``wanted``: sync leaves the file there


def audit(config: Config, conn: sqlite3.Connection,
          identities: Optional[Iterable[tuple[int, Optional[str], Optional[int]]]] = None
          ) -> list[Placed]:
    """Each placed image's main file against the folder the placer wants for it now, by the
    placer's own rules: what ``sync(dry_run=True)`` would move with reason 'follow', and why.

    Read-only, for ``facesortd doctor``: ``conn`` may be a read-only connection to a store the
    daemon is writing (no ``Store.open``, which migrates), and nothing is written, not even the
    capture-date cache. ``identities`` (id, name, merged_into) rows stand in for the store's, so
    a store that the next start repairs can be judged as it will be. Images that undo holds or
    whose file someone moved away ('gone') are left out: sync leaves them alone too.
    """
    placer = Placer(config, Store(conn, config.state_dir / DB_NAME))
    placer._cache_dates = False
    snap = placer._load(identities)
    owners = {folder: identity for identity, folder in snap.folders.items()}
    out = []
    for image in snap.images.values():
        live = placer._current(image, snap.placements.get(image.id, []), dry_run=True,
                               snap_removed=snap.removed)
        main = next((p for p in live or () if p.kind == "main"), None)
        folders = placer._wanted_folders(image, snap) if main is not None else []
        if not folders:
            continue
        rel = main.named(placer._targets(image, snap)[0])
        out.append(Placed(image.id, main.path, config.library / rel, owners.get(folders[0]),
                          os.path.lexists(main.path),
                          placer._acceptable(main.path, rel, image, snap)))
    return out


def _sha(p: _Placement) -> Optional[str]:
    """What the journal checks a placed file by: its recorded hash, a symlink's target."""
    return content_id(p.path) if os.path.islink(p.path) else p.sha256


def _root(identity: Optional[int], merged: dict[int, Optional[int]]) -> Optional[int]:
    """Follow ``merged_into`` to the identity that survives (a cycle stops where it closes)."""
    seen = set()
    while identity is not None and merged.get(identity) is not None and identity not in seen:
        seen.add(identity)
        identity = merged[identity]
    return identity if identity is None or identity in merged else None


def _placement_rows(conn: sqlite3.Connection) -> Iterable[tuple]:
    """(image_id, path, kind, action, sha256, mtime_ns, chosen_name) of every image's placement
    (chosen_name None in a store from before schema 10, which doctor may read unmigrated)."""
    sql = ("SELECT image_id, path, kind, action, sha256, mtime_ns{} FROM placements "
           "WHERE image_id IS NOT NULL ORDER BY id")
    try:
        return conn.execute(sql.format(", chosen_name")).fetchall()
    except sqlite3.OperationalError:
        return [row + (None,) for row in conn.execute(sql.format(""))]


def _hidden(conn: sqlite3.Connection) -> set[int]:
    """People hidden by a correction (none in a store from before schema 8, which doctor may read
    before the next start migrates it)."""
    try:
        return {r[0] for r in conn.execute("SELECT id FROM identities WHERE hidden = 1")}
    except sqlite3.OperationalError:
        return set()


def _removed(conn: sqlite3.Connection) -> set[int]:
    """Images a person deleted from the library (none in a store from before schema 9)."""
    try:
        return {r[0] for r in conn.execute("SELECT id FROM images WHERE removed_at IS NOT NULL")}
    except sqlite3.OperationalError:
        return set()


def parse_since(text: str) -> float:
    """``--since``: unix seconds, an ISO date or date-time (local time), or an age like 30m, 2h, 1d."""
    import datetime
    import re

    from facesortd.errors import FacesortdError

    text = text.strip()
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([smhd])", text)
    if m:
        return time.time() - float(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]
    try:
        return float(text)
    except ValueError:
        pass
    try:
        return datetime.datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise FacesortdError(f"--since {text!r}: give unix seconds, a date like 2024-05-01 or "
                             "2024-05-01T13:00, or an age like 30m, 2h, 1d") from None
