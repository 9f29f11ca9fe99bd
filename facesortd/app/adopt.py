"""``facesortd adopt DIR [--import] [--dry-run]``: start from folders a person already sorted.

DIR holds one folder per person (``DIR/<Person Name>/...``); the top folder names the person and
any folders below it (years, events) are that person's too. Photos directly in DIR, in a folder
named like one of the library's special folders (``_unsorted``...) or hidden are left out and
reported. Each photo goes through the real ingest pipeline (``ingest.Pipeline``: the configured
embedder, MTCNN in detect mode, aligned mode when every inbox is aligned) into a scratch store, so
nothing is written until every photo is read; then one store transaction records each photo with
exactly one face, that face pinned to its person (an existing person whose folder has that name,
compared as ``library.layout.identity_folders`` compares folder names, else a new named one), and
one ``history`` row ('adopt': undoable on the review page). Photos with several faces, none, or
that cannot be read are reported, never guessed. Content already in the store (sha256) is never
added again, so running adopt twice adds nothing.

Where the files stay:
  * DIR inside the library: each photo is a placed file where it is (a 'main' placement, its
    companions too). From then on it is the library's like any placed photo: it follows its person
    (a rename, a merge) and the layout; photos not where the layout puts them move at the next run
    (the report lists those moves as ``next_run_moves``).
  * DIR outside the library: the files stay there for good ('kept' placement: the placer never
    moves them nor takes their companions); they only teach the store the people.
  * ``--import``: copied into their person's folder in the library with their companions
    (adopt_import.py: journaled, verified, rename_new for the whole group); the source is never
    changed. The copies are the placed files; the source stays 'kept'. A run interrupted before
    its copies finishes them the next time.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from facesortd.app import adopt_import
from facesortd.app.progress import Progress
from facesortd.app.state import State, open_state
from facesortd.config import Config
from facesortd.errors import FacesortdError, StoreError
from facesortd.formats import extension, is_raw, owner
from facesortd.ingest.imageio import sha256_file
from facesortd.library.journal import content_id
from facesortd.library.layout import identity_folder, identity_folders
from facesortd.people.corrections import _Recorder
from facesortd.store.database import DB_NAME, Store, decode_path, encode_path
from facesortd.store.sql import in_chunks

__all__ = ["AdoptError", "adopt", "format_report"]

log = logging.getLogger("facesortd.adopt")

_LISTED = 200            # skipped photos named in the report (all of them are counted)

#: why a photo was not adopted: report key -> what the text report says
REASONS = {
    "multi_face": "several faces (not guessed)",
    "no_face": "no face found",
    "unreadable": "cannot be read",
    "conflict": "the same photo is in several people's folders",
    "not_in_person_folder": "not in a person's folder",
    "special_folder": "in a special folder of the library",
    "not_a_photo": "not a photo",
    "duplicate": "same photo again in the same person's folder",
    "already_in_store": "content already in the store",
    "already_adopted": "already adopted (same file)",
}
_QUIET = ("duplicate", "already_in_store", "already_adopted")   # counted, not listed in the text


class AdoptError(FacesortdError):
    """DIR cannot be adopted as asked (missing, an inbox, the state folder...)."""

    exit_code = 7


@dataclass
class _Photo:
    path: Path
    person: str           # the top folder's name under DIR
    size: int
    mtime_ns: int
    sha256: Optional[str] = None
    companions: list[Path] = field(default_factory=list)


@dataclass
class _Report:
    skipped: list[dict] = field(default_factory=list)

    def skip(self, path: Path, reason: str, why: str = "") -> None:
        self.skipped.append({"path": str(path), "reason": reason, "why": why or REASONS[reason]})


# ---- checks and the tree --------------------------------------------------------------------

def check_folder(config: Config, folder: Path, do_import: bool) -> tuple[Path, str]:
    """The absolute DIR and where its files will be: 'library' (adopted where they are, inside
    the library), 'outside' (kept where they are) or 'import' (copied into the library)."""
    root = Path(os.path.abspath(folder))
    if not root.exists():
        raise AdoptError(f"{root}: no such folder")
    if not root.is_dir():
        raise AdoptError(f"{root} is not a folder")

    def overlaps(a: Path, b: Path) -> bool:
        return a == b or b in a.parents or a in b.parents

    library = Path(os.path.abspath(config.library))
    if root in library.parents:
        raise AdoptError(f"{root} holds the library ({library}): adopt the library itself or "
                         "the folder of person folders")
    state = Path(os.path.abspath(config.state_dir))
    if overlaps(root, state):
        raise AdoptError(f"{root} overlaps the state folder ({state}): adopt the folders of photos "
                         "a person sorted, not facesortd's own")
    for inbox in config.inboxes:
        path = Path(os.path.abspath(inbox.path))
        if overlaps(root, path):
            raise AdoptError(f"{root} overlaps inbox {path}: the daemon sorts what is in an inbox "
                             "by itself; adopt a folder of its own")
    inside = root == library or library in root.parents
    if do_import and inside:
        raise AdoptError(f"--import copies photos into the library, and {root} is already in it: "
                         "run adopt without --import to adopt them where they are")
    return root, "import" if do_import else ("library" if inside else "outside")


def scan(config: Config, root: Path, report: _Report) -> list[_Photo]:
    """The photos of DIR's person folders, in path order; everything else is reported."""
    watch, pc = config.watch, config.placement
    specials = {s.casefold() for s in pc.special_dirs}

    def ignored(name: str) -> bool:
        return name.startswith(".") or any(fnmatch.fnmatch(name, p) for p in watch.ignore)

    photos: list[_Photo] = []
    for folder, dirs, names in os.walk(root):
        here = Path(folder)
        dirs[:] = sorted(d for d in dirs if not ignored(d))
        rel = here.relative_to(root).parts
        if rel and rel[0].casefold() in specials:
            if len(rel) == 1:
                report.skip(here, "special_folder", f"{rel[0]}/ is the library's own folder")
            dirs[:] = []
            continue
        names = sorted(n for n in names if not ignored(n))
        taken = [n for n in names if extension(n) in watch.extensions]
        taken += [n for n in names if is_raw(n) and extension(n) not in watch.extensions
                  and owner(n, taken) is None]   # a RAW alone: analysed on its preview
        by_name: dict[str, _Photo] = {}
        for name in taken:
            path = here / name
            try:
                st = os.lstat(path)
            except OSError as exc:
                report.skip(path, "unreadable", f"cannot be read ({exc.strerror or exc})")
                continue
            if not os.path.isfile(path) or os.path.islink(path):
                report.skip(path, "not_a_photo", "not a plain file (a link?)")
                continue
            if not rel:
                report.skip(path, "not_in_person_folder")
                continue
            by_name[name] = _Photo(path, rel[0].strip(), st.st_size, st.st_mtime_ns)
        photos += by_name.values()
        for name in names:
            if name in taken:
                continue
            mine = owner(name, taken) if extension(name) in watch.companions else None
            if mine is not None:
                if mine in by_name:
                    by_name[mine].companions.append(here / name)
            else:
                report.skip(here / name, "not_a_photo")
    return photos


# ---- the command ----------------------------------------------------------------------------

def adopt(config: Config, folder: Path, do_import: bool = False, dry_run: bool = False) -> dict:
    """Adopt DIR (see the module doc); returns the report. ``dry_run``: every photo is read and
    the report says what would happen; nothing is written (no store rows, no files)."""
    root, where = check_folder(config, folder, do_import)
    report = _Report()
    photos = scan(config, root, report)
    state: Optional[State] = None
    if (config.state_dir / DB_NAME).exists() or not dry_run:
        # the lock: a running daemon is refused, a dry run's too (it reads the store as a whole)
        state = open_state(config, existing=dry_run, load_vectors=False, replay=not dry_run)
    try:
        store = state.store if state is not None else None
        todo = _unique(_new_photos(store, photos, report), report)
        faces: dict[Path, tuple] = {}
        model = None
        if todo:
            faces, model = _ingest(config, store, root, todo, report)
        adopted = [p for p in todo if p.path in faces]
        found = {p.path: [c for c in p.companions if c.is_file() and not c.is_symlink()]
                 for p in photos}
        out = _apply(config, state, root, where, adopted, faces, model, dry_run, found)
        copies, late = out.pop("copies"), out.pop("late")
        if where == "import":
            if dry_run:
                out.update(adopt_import.dry_listing(copies, late))
            else:
                assert state is not None
                out.update(adopt_import.carry_out(state, copies, late))
    finally:
        if state is not None:
            state.close()
    counts: dict[str, int] = {}
    for s in report.skipped:
        counts[s["reason"]] = counts.get(s["reason"], 0) + 1
    order = list(REASONS)          # what a person may want to act on first
    listed = sorted(report.skipped, key=lambda s: order.index(s["reason"]))[:_LISTED]
    out.update({"folder": str(root), "where": where, "dry_run": dry_run,
                "photos_found": len(photos) + counts.get("not_in_person_folder", 0),
                "skipped": counts, "skipped_photos": listed})
    return out


def _new_photos(store: Optional[Store], photos: list[_Photo], report: _Report) -> list[_Photo]:
    """The photos whose content the store does not hold yet (hashed here, with a progress bar)."""
    done = [0]
    hashed = []
    with Progress(lambda: (done[0], len(photos)), unit=" photos hashed"):
        for photo in photos:
            done[0] += 1
            if store is not None:
                known = store.find_image_by_path(photo.path)
                if known is not None and (known.size, known.mtime_ns) == (photo.size,
                                                                           photo.mtime_ns):
                    report.skip(photo.path, "already_adopted")
                    continue
            try:
                photo.sha256, _ = sha256_file(photo.path)
            except Exception as exc:
                report.skip(photo.path, "unreadable", f"cannot be read ({exc})")
                continue
            hashed.append(photo)
    known_shas = _known_shas(store, {p.sha256 for p in hashed}) if store is not None else {}
    out = []
    for photo in hashed:
        row = known_shas.get(photo.sha256)
        if row is not None:
            report.skip(photo.path, "already_in_store", f"content already in the store "
                                                        f"(image #{row[0]}, {row[1]})")
            continue
        out.append(photo)
    return out


def _known_shas(store: Store, shas: set) -> dict[str, tuple[int, str]]:
    """sha256 -> (id, path) of the oldest image of that content the store holds, in one read."""
    out: dict[str, tuple[int, str]] = {}
    with store.read() as conn:
        for marks, part in in_chunks(sorted(shas)):
            for sha, image_id, path in conn.execute(
                    f"SELECT sha256, id, path FROM images WHERE sha256 IN ({marks}) AND status IN "
                    "('done', 'noface', 'duplicate') ORDER BY id", part):
                out.setdefault(sha, (image_id, str(decode_path(path))))
    return out


def _unique(photos: list[_Photo], report: _Report) -> list[_Photo]:
    """One photo per content: copies in one person's folder are that person's once; the same
    photo in several people's folders is nobody's (it would be a guess)."""
    by_sha: dict[str, list[_Photo]] = {}
    for photo in photos:
        by_sha.setdefault(photo.sha256 or "", []).append(photo)
    out = []
    for copies in by_sha.values():
        people = sorted({p.person.casefold() for p in copies})
        if len(people) > 1:
            for p in copies:
                report.skip(p.path, "conflict", "the same photo is in the folders of " +
                            ", ".join(sorted({c.person for c in copies})))
            continue
        out.append(copies[0])
        for p in copies[1:]:
            report.skip(p.path, "duplicate", f"same photo as {copies[0].path}")
    return sorted(out, key=lambda p: p.path)


def _mode(config: Config) -> str:
    """Detect, unless every inbox is aligned (the photos people keep are crops there too)."""
    return "aligned" if all(i.mode == "aligned" for i in config.inboxes) else "detect"


def _ingest(config: Config, store: Optional[Store], root: Path, photos: list[_Photo],
            report: _Report) -> tuple[dict[Path, tuple], Any]:
    """Run the real pipeline on ``photos`` into a scratch store: (path -> (inbox, box, score,
    vector) of each photo with exactly one face, the embedder); everything else is reported.
    The scratch store keeps the real one free of a half-read folder, and lets a dry run read
    every photo without writing a row."""
    from facesortd.app.daemon import make_detector
    from facesortd.inbox.jobs import Job
    from facesortd.ingest.pipeline import Pipeline
    from facesortd.models.embedders import load_embedder, resolve_device

    mode = _mode(config)
    embedder, _ = load_embedder(config.embedder, store.model_id if store else None)
    if store is not None and store.model_id not in (None, embedder.model_id):
        raise StoreError(f"the store holds vectors of {store.model_id} and embedder.name gives "
                         f"{embedder.model_id}: set embedder.name: auto to adopt with the "
                         "store's model")
    detector = make_detector(config.model_copy(update={"inboxes": (
        config.inboxes[0].model_copy(update={"mode": mode}),)}),
        resolve_device(config.embedder.device))
    # aligned: recorded under the aligned inbox, as every part that asks "was this face a whole
    # crop?" looks the inbox up in the config; detect: under DIR
    inbox = config.inboxes[0].path if mode == "aligned" else root
    finished = [0]
    lock = threading.Lock()

    def on_finished(*_: Any) -> None:
        with lock:
            finished[0] += 1

    out: dict[Path, tuple] = {}
    with tempfile.TemporaryDirectory(prefix="facesortd-adopt-") as scratch_dir:
        scratch = Store.open(Path(scratch_dir))
        try:
            scratch.bind_model(embedder.model_id, embedder.dim)
            pipeline = Pipeline(config, scratch, embedder, detector, on_finished=on_finished)
            with Progress(lambda: (finished[0], len(photos)), unit=" photos"):
                pipeline.start()
                try:
                    for p in photos:
                        job = Job(p.path, inbox, mode, p.size, p.mtime_ns)
                        while not pipeline.submit(job):
                            time.sleep(0.05)
                    pipeline.drain()
                finally:
                    pipeline.stop()
            with scratch.read() as conn:
                rows = {decode_path(r[0]): r[1:] for r in conn.execute(
                    "SELECT path, id, sha256, size, mtime_ns, status, error FROM images")}
                found: dict[int, list] = {}
                for image_id, *face in conn.execute(
                        "SELECT image_id, box_x1, box_y1, box_x2, box_y2, score, vector FROM faces "
                        "ORDER BY id"):
                    found.setdefault(image_id, []).append(face)
        finally:
            scratch.close()
    for p in photos:
        row = rows.get(p.path)
        if row is None:
            report.skip(p.path, "unreadable", "gone before it could be read")
            continue
        image_id, sha, size, mtime_ns, status, error = row
        these = found.get(image_id, [])
        if status == "error":
            report.skip(p.path, "unreadable", f"cannot be read: {error}")
        elif status == "noface" or not these:
            report.skip(p.path, "no_face", error or "")
        elif len(these) > 1:
            report.skip(p.path, "multi_face", f"{len(these)} faces (a photo with several faces is "
                                              "not guessed)")
        else:
            *box, score, vector = these[0]
            p.sha256, p.size, p.mtime_ns = sha, size, mtime_ns
            out[p.path] = (inbox, tuple(box), score, np.frombuffer(vector, "<f4").copy())
    return out, embedder


# ---- writing ---------------------------------------------------------------------------------

def _people(conn, config: Config) -> dict[str, int]:
    """Live identities by their folder name, case folded (as ``identity_folders`` names them)."""
    names = dict(conn.execute("SELECT id, name FROM identities WHERE merged_into IS NULL"))
    folders = identity_folders(names, config.placement.special_dirs)
    return {f.name.casefold(): i for i, f in sorted(folders.items())}


def _apply(config: Config, state: Optional[State], root: Path, where: str,
           adopted: list[_Photo], faces: dict[Path, tuple], model: Any, dry_run: bool,
           found: dict[Path, list[Path]]) -> dict:
    """One transaction: people, photos, pinned faces, placements, the history row, and the
    copies an import will make (``found``: each photo's companions in DIR, copied with it); a
    dry run rolls it back after reading what it would do."""
    out: dict[str, Any] = {"people_created": [], "people_reused": [], "photos_adopted": 0,
                           "faces_pinned": 0, "copies": [], "late": [], "next_run_moves": []}
    if state is None:             # a dry run and no store yet: everyone would be new
        out.update(people_created=sorted({p.person.casefold(): p.person
                                          for p in adopted}.values()),
                   photos_adopted=len(adopted), faces_pinned=len(adopted))
        out["copies"] = [{"src": str(p.path), "dst": None,
                          "companions": [{"src": str(c), "dst": None} for c in found[p.path]]}
                         for p in adopted] if where == "import" else []
        return out

    class _Rollback(Exception):
        pass

    store = state.store
    try:
        with store.transaction() as conn:
            resumed = adopt_import.unfinished(conn, root) if where == "import" else []
            if adopted:
                _write(config, store, conn, root, where, adopted, faces, model, out)
            if where == "import":
                reserved: set[Path] = set()
                out["copies"] = adopt_import.plan(config, conn, out.get("_adopted", []) + resumed,
                                                  found, reserved)
                out["late"] = adopt_import.missing_companions(conn, root, found, reserved)
                out["imports_resumed"] = len(resumed)
            elif where == "library" and adopted:   # what the next run will do with them
                ids = {row[0] for row in out["_adopted"]}
                out["next_run_moves"] = [op.describe() for op in state.placer.sync(dry_run=True)
                                         if op.image_id in ids]
            out.pop("_adopted", None)
            if dry_run:
                out.pop("history", None)    # rolled back with the rest: no row to undo
                raise _Rollback
    except _Rollback:
        pass
    return out


def _write(config: Config, store: Store, conn, root: Path, where: str, adopted: list[_Photo],
           faces: dict[Path, tuple], model: Any, out: dict) -> None:
    """Inside the transaction: the people (found or made), the photos with their one face
    pinned, their placements, and the history row."""
    store.bind_model(model.model_id, model.dim)
    rec = _Recorder(conn, "adopt", {"folder": str(root), "where": where})
    people = _people(conn, config)
    target: dict[str, int] = {}
    for person in sorted({p.person for p in adopted}):
        key = identity_folder(0, person).name.casefold()
        if key in people:
            target[person] = identity = people[key]
            if all(r["id"] != identity for r in out["people_reused"]):
                name = conn.execute("SELECT name FROM identities WHERE id = ?",
                                    (identity,)).fetchone()[0]
                out["people_reused"].append({"id": identity, "name": name, "folder": person})
        else:
            identity = rec.new_identity()
            rec.identities[identity] = [None, None]      # undone: the name goes again
            conn.execute("UPDATE identities SET name = ? WHERE id = ?", (person, identity))
            people[key] = target[person] = identity
            out["people_created"].append(person)
    recorded = store.add_ingested([
        (p.path, faces[p.path][0], p.sha256, p.size, p.mtime_ns,
         [(faces[p.path][1], faces[p.path][2], faces[p.path][3])]) for p in adopted])
    now = time.time()
    pins, placements = [], []
    for p, (image_id, face_ids) in zip(adopted, recorded):
        rec.faces[face_ids[0]] = [None, 0, 0]             # undone: back to the clustering
        pins.append((target[p.person], face_ids[0]))
        if where == "library":     # a placed file where it is, its companions beside it
            placements.append((image_id, encode_path(p.path), "main", "move", p.sha256, None))
            placements += [(image_id, encode_path(c), "companion", "move", content_id(c), None)
                           for c in p.companions]
        else:                      # outside, or the source of an import: never moved
            placements.append((image_id, encode_path(p.path), "kept", "none", p.sha256,
                               p.mtime_ns))
    conn.executemany("UPDATE faces SET identity_id = ?, pinned = 1 WHERE id = ?", pins)
    conn.executemany("INSERT INTO placements (image_id, path, kind, action, sha256, mtime_ns, "
                     "created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                     [(*row, now, now) for row in placements])
    out["history"] = rec.write()
    out["photos_adopted"] = out["faces_pinned"] = len(adopted)
    out["_adopted"] = [(image_id, p.path, p.sha256, p.mtime_ns, faces[p.path][0],
                        target[p.person]) for p, (image_id, _) in zip(adopted, recorded)]


# ---- the text report --------------------------------------------------------------------------

def format_report(r: dict) -> str:
    """The report as a person reads it (``--json`` prints the dict)."""
    verb = "would be " if r["dry_run"] else ""
    where = {"library": "adopted where they are, in the library: they follow their person "
                        "from now on",
             "outside": "kept where they are, outside the library: facesortd never moves them",
             "import": "copied into the library; the originals stay as they are"}[r["where"]]
    lines = [f"facesortd adopt {r['folder']}{' (dry run: nothing written)' if r['dry_run'] else ''}",
             f"  photos found:   {r['photos_found']} ({where})",
             f"  people created: {len(r['people_created'])}"
             + (f" ({', '.join(r['people_created'])})" if r["people_created"] else ""),
             f"  people reused:  {len(r['people_reused'])}"
             + (" (" + ", ".join(f"{p['folder']} = #{p['id']}" for p in r["people_reused"]) + ")"
                if r["people_reused"] else ""),
             f"  faces pinned:   {r['faces_pinned']} ({r['photos_adopted']} photos {verb}adopted)"]
    if r["where"] == "import":
        if r["dry_run"]:
            lines.append(f"  to copy:        {len(r.get('would_import', []))}"
                         + (f", and {r['would_import_companions']} companions"
                            if r.get("would_import_companions") else ""))
        else:
            lines.append(f"  copied:         {r.get('imported', 0)}"
                         + (f", and {r['imported_companions']} companions"
                            if r.get("imported_companions") else "")
                         + (f", {len(r['import_failed'])} failed" if r.get("import_failed") else "")
                         + (f" ({r['imports_resumed']} left by an earlier run)"
                            if r.get("imports_resumed") else ""))
    if r.get("next_run_moves"):
        lines.append(f"  not where the layout puts them: {len(r['next_run_moves'])} (the next run "
                     "moves them into their person's folder)")
    skipped = sum(r["skipped"].values())
    lines.append(f"  skipped:        {skipped}")
    for reason, n in sorted(r["skipped"].items(), key=lambda kv: -kv[1]):
        lines.append(f"    {n:5d}  {REASONS[reason]}")
    shown = [s for s in r["skipped_photos"] if s["reason"] not in _QUIET]
    for s in shown:
        lines.append(f"    {s['path']}: {s['why']}")
    more = skipped - sum(n for reason, n in r["skipped"].items() if reason in _QUIET) - len(shown)
    if more > 0:
        lines.append(f"    ... and {more} more (--json lists the first {_LISTED})")
    return "\n".join(lines) + "\n"
