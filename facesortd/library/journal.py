"""The journal of file operations: each is written down before it touches a file and marked done,
together with the placement it creates, after. ``replay()`` looks at the disk for every operation
not done and completes it or rolls it back, so a crash at any instant loses nothing.

Operations (``op``): ``move`` src -> dst (the source is unlinked only once dst holds its bytes),
``copy``, ``hardlink``, ``symlink`` (the source stays), ``retire`` (unlink one of our own extra
links or copies after checking it still holds the recorded bytes). Statuses: planned, done,
rolled_back, failed, undone (a done operation that ``facesortd undo`` reverted). Reasons: place,
follow, undo, quarantine (a broken file set aside: quarantine.py).

A power cut, not only a killed process: the store runs WAL with ``synchronous=NORMAL``, whose
commits reach the disk only at the next checkpoint, so a 'planned' row could be lost while the
rename it announced reached the disk. ``run()`` therefore commits the 'planned' rows of a whole
chunk of operations in one synced transaction (``Store.transaction(durable=True)``) before the
first file is touched, carries them out, fsyncs each folder they changed once, and only then
marks them done (a plain commit: a lost 'done' is replayed). Within one filesystem a move is one
atomic ``renameat2(RENAME_NOREPLACE)`` (where the filesystem has none: a link and an unlink, which
the filesystem's metadata journal keeps in order until that folder sync); a move to another
filesystem is a copy synced before its source is unlinked (``fsops.copy_exact``).

Outside changes (issue 19): a person may move or delete a placed file while the placer moves it.
The atomic rename either wins or finds the source gone; on the link path, a source that vanished
between link and unlink makes fsops remove its own link again when the file has another name
(``fsops.MovedMeanwhile``). Either way the operation is rolled back with ``MOVED_AWAY`` (not
failed): nothing of it is left, and the library scan (scan.py) finds the file where the person
put it. The replay likewise: a move whose file is at neither path was moved away by a person,
since a source is never unlinked before its destination is complete.

What it costs, measured on an ext4 virtio disk (``tools/bench_placer_sync.py --files 2000 --root
/tmp --tree <the code before> --tree .``, medians of 3 in one run): placing 2,000 small files in 8
person folders took 3.0 s before (a plain commit per operation and two folder fsyncs per move)
and 0.65 s now (4 chunks, each one synced commit and one fsync per folder it touched); moving
them all again after a rename, 2.8 s before and 0.73 s now. A synced commit per operation
instead (``--chunk 1``) took 4.0 s: ~5 ms per commit on that disk.
"""

from __future__ import annotations

import errno
import logging
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Optional, Sequence

from facesortd import fsops
from facesortd.store.database import Store, decode_path, encode_path

log = logging.getLogger("facesortd.journal")

OPS = ("move", "copy", "hardlink", "symlink", "retire")
#: the error text of an operation rolled back because its file was moved or deleted outside
#: facesortd while it ran (or while the daemon was down, found by the replay)
MOVED_AWAY = "moved away outside facesortd"
SYMLINK = "symlink:"   # sha256 column of a moved symlink (content_id): its target instead of a hash


@dataclass(frozen=True)
class Op:
    """One planned file operation. ``kind`` is the placement it makes (main, extra, held)."""

    op: str
    src: Path
    dst: Optional[Path]
    image_id: Optional[int]
    kind: str
    sha256: Optional[str]
    reason: str = "place"        # place | follow | undo | quarantine
    action: str = "move"         # the placement's action (for a new placement row)
    id: Optional[int] = None

    def describe(self) -> str:
        if self.op == "retire":
            return f"retire {self.src}"
        return f"{self.op} {self.src} -> {self.dst}"


@dataclass
class Outcome:
    """How one group of ``Journal.run`` ended: the operations done, in order, and the one that
    failed with its error (the group's later operations were not tried)."""

    done: list[Op] = field(default_factory=list)
    failed: Optional[Op] = None
    error: Optional[OSError] = None

    @property
    def taken(self) -> bool:
        """It stopped only because a destination appeared meanwhile: plan it again."""
        return self.failed is not None and _taken(self.failed, self.error)

    @property
    def moved_away(self) -> bool:
        """It stopped because its source was moved away (or deleted) outside facesortd while it
        ran: nothing of it was left behind; the library scan finds the file where it went."""
        return self.failed is not None and _moved_away(self.failed, self.error)


def tmp_name(dst: Path, journal_id: int) -> Path:
    """Where a copy is written before it is renamed to ``dst`` (ours by name: replay removes it)."""
    return dst.with_name(f".facesortd-{journal_id}-{dst.name}.tmp")


class Journal:
    """Carries out Ops with a journal row around each; ``replay()`` repairs interrupted ones."""

    def __init__(self, store: Store):
        self.store = store

    # -- forward -------------------------------------------------------------------------------
    def execute(self, op: Op) -> Op:
        """Plan, do and finish one operation. FileExistsError when ``dst`` was taken meanwhile
        (the row is rolled back; the caller picks another name); OSError when it failed (the row
        says why, the files are as before)."""
        (outcome,) = self.run([[op]])
        if outcome.error is not None:
            raise outcome.error
        return outcome.done[0]

    def run(self, groups: Sequence[Sequence[Op]]) -> list[Outcome]:
        """Carry out groups of operations as one chunk: plan them all in one synced commit, do
        each group in order (a group stops at its first failure: its later operations depend on
        the earlier ones, like a link to a file just moved), fsync the folders they changed once,
        then mark them done in one commit. One Outcome per group."""
        planned = self._plan([op for group in groups for op in group])
        outcomes = [Outcome() for _ in groups]
        settled: list[tuple[str, Optional[str], int]] = []   # (status, why, id) of the rest
        folders: set[Path] = set()
        ops = iter(planned)
        try:
            for group, out in zip(groups, outcomes):
                for op in [next(ops) for _ in group]:
                    if out.failed is not None:
                        settled.append(("rolled_back", f"not tried: journal {out.failed.id} "
                                                       "before it failed", op.id))
                        continue
                    try:
                        folders |= self._do(op)
                    except OSError as exc:
                        out.failed, out.error = op, exc
                        if _taken(op, exc):
                            settled.append(("rolled_back", "destination appeared meanwhile", op.id))
                        elif _moved_away(op, exc):
                            settled.append(("rolled_back", f"{MOVED_AWAY}: {exc}", op.id))
                        else:
                            settled.append(("failed", f"{type(exc).__name__}: {exc}", op.id))
                    else:
                        out.done.append(op)
        finally:   # also when interrupted: what was done is recorded, the rest rolled back
            settled += [("rolled_back", "not tried: interrupted", op.id) for op in ops]
            for folder in sorted(folders):
                fsops.fsync_dir(folder)
            now = time.time()
            with self.store.transaction() as conn:
                for out in outcomes:
                    for op in out.done:
                        self._record_done(conn, op, now)
                conn.executemany("UPDATE journal SET status = ?, error = ?, updated_at = ? "
                                 "WHERE id = ?", [(s, why, now, jid) for s, why, jid in settled])
        return outcomes

    def _plan(self, ops: list[Op]) -> list[Op]:
        """Write the 'planned' rows, synced to the disk before any of the files is touched."""
        if not ops:
            return []
        now = time.time()
        with self.store.transaction(durable=True) as conn:
            return [replace(op, id=conn.execute(
                "INSERT INTO journal (op, src, dst, status, created_at, updated_at, image_id, "
                "kind, sha256, reason) VALUES (?, ?, ?, 'planned', ?, ?, ?, ?, ?, ?)",
                (op.op, encode_path(op.src), None if op.dst is None else encode_path(op.dst), now,
                 now, op.image_id, f"{op.kind}:{op.action}", op.sha256, op.reason)).lastrowid)
                for op in ops]

    def _do(self, op: Op) -> set[Path]:
        """Carry out one planned operation; returns the folders whose entries it changed (synced
        by the caller before the row is marked done)."""
        if op.op == "retire":
            return self._retire(op)
        if op.op == "symlink" and os.path.islink(op.src):
            raise OSError(errno.EINVAL, f"{op.src} is a symlink")
        folders = _make_folders(op.dst.parent) | {op.dst.parent}
        if os.path.lexists(op.dst):
            raise FileExistsError(op.dst)
        if op.op == "symlink":
            os.symlink(os.path.abspath(op.src), op.dst)
        elif op.op == "move" and fsops.rename_noreplace(op.src, op.dst):
            folders.add(op.src.parent)   # atomic: a racing outside move wins or finds it gone
        elif op.op == "move" and os.path.islink(op.src):
            os.symlink(os.readlink(op.src), op.dst)
            if os.lstat(op.src.parent).st_dev != os.lstat(op.dst.parent).st_dev:
                fsops.fsync_dir(op.dst.parent)   # two filesystems: nothing orders link and unlink
            os.unlink(op.src)
            folders.add(op.src.parent)
        elif op.op == "copy":
            fsops.copy_exact(op.src, op.dst, tmp_name(op.dst, op.id), op.sha256)
        elif op.op == "move":   # a link and an unlink (a copy synced first on another filesystem)
            fsops.move_exact(op.src, op.dst, tmp_name(op.dst, op.id), op.sha256, try_rename=False)
            folders.add(op.src.parent)
        else:   # hardlink
            fsops.place_exact(op.src, op.dst, tmp_name(op.dst, op.id), op.sha256)
        return folders

    def _retire(self, op: Op) -> set[Path]:
        if not os.path.lexists(op.src):
            return set()
        if not os.path.islink(op.src) and not _holds(op.src, op.sha256):  # a link holds no bytes
            raise OSError(errno.EEXIST, f"{op.src} changed since it was placed; left as it is")
        os.unlink(op.src)
        return {op.src.parent}

    def _complete(self, op: Op) -> None:
        with self.store.transaction() as conn:
            self._record_done(conn, op, time.time())

    @staticmethod
    def _record_done(conn, op: Op, now: float) -> None:
        """The files are in their final state: record the placement and mark the row done."""
        src, dst = encode_path(op.src), None if op.dst is None else encode_path(op.dst)
        if op.op == "retire":
            conn.execute("DELETE FROM placements WHERE path = ? AND image_id IS ?",
                         (src, op.image_id))
        elif op.op == "move" and conn.execute(
                "SELECT 1 FROM placements WHERE path = ? AND image_id IS ? AND kind != 'gone'",
                (src, op.image_id)).fetchone():
            conn.execute("UPDATE placements SET path = ?, kind = ?, updated_at = ? "
                         "WHERE path = ? AND image_id IS ? AND kind != 'gone'",
                         (dst, op.kind, now, src, op.image_id))
        else:
            mtime = None
            if op.kind == "held":
                row = conn.execute("SELECT mtime_ns FROM images WHERE id = ?",
                                   (op.image_id,)).fetchone()
                mtime = row[0] if row else None
            conn.execute(
                "INSERT INTO placements (image_id, path, kind, action, sha256, mtime_ns, "
                "created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (op.image_id, dst, op.kind, op.action, op.sha256, mtime, now, now))
        conn.execute("UPDATE journal SET status = 'done', updated_at = ? WHERE id = ?",
                     (now, op.id))

    def _set(self, jid: int, status: str, error: Optional[str] = None) -> None:
        with self.store.transaction() as conn:
            conn.execute("UPDATE journal SET status = ?, error = ?, updated_at = ? WHERE id = ?",
                         (status, error, time.time(), jid))

    # -- repair --------------------------------------------------------------------------------
    def pending(self) -> list[Op]:
        with self.store.read() as conn:
            rows = conn.execute("SELECT id, op, src, dst, image_id, kind, sha256, reason FROM journal "
                                "WHERE status = 'planned' ORDER BY id").fetchall()
        return [_op_from_row(r) for r in rows]

    def replay(self) -> dict[str, int]:
        """Complete or roll back every operation a crash interrupted; returns counts by outcome."""
        outcome = {"completed": 0, "rolled_back": 0, "failed": 0}
        for op in self.pending():
            result = self._recover(op)
            outcome[result] += 1
            log.info("journal %d (%s): %s", op.id, op.describe(), result.replace("_", " "))
        return outcome

    def _recover(self, op: Op) -> str:
        if op.dst is not None:
            tmp = tmp_name(op.dst, op.id)
            if os.path.lexists(tmp):
                os.unlink(tmp)   # our own copy, never renamed into place (or already linked)
        if op.op == "retire":
            if os.path.lexists(op.src):
                self._set(op.id, "rolled_back", "interrupted; the file stays")
                return "rolled_back"
            self._complete(op)
            return "completed"
        dst_ok = os.path.lexists(op.dst) and (
            _holds(op.dst, op.sha256) if op.op != "symlink"
            else os.path.islink(op.dst) and os.readlink(op.dst) == os.path.abspath(op.src))
        if op.op == "move" and dst_ok and os.path.lexists(op.src):
            if _same_file(op.src, op.dst) or _holds(op.src, op.sha256):
                os.unlink(op.src)        # the new name was complete; only the unlink was missing
                fsops.fsync_dir(op.src.parent)
            else:
                log.warning("journal %d: %s now holds other bytes; it stays", op.id, op.src)
        if dst_ok:
            for folder in {op.dst.parent, op.src.parent} if op.op == "move" else {op.dst.parent}:
                fsops.fsync_dir(folder)   # what a killed process left in the page cache
            self._complete(op)
            return "completed"
        if op.op == "move" and not os.path.lexists(op.src):
            # not ours: we never unlink a source before its destination is complete, so a person
            # moved or deleted it (the library scan finds it by its content where it went)
            self._set(op.id, "rolled_back", f"{MOVED_AWAY}: the file is at neither path")
            log.warning("journal %d (%s): the file is at neither path: moved or deleted outside "
                        "facesortd; the library scan looks for it", op.id, op.describe())
            return "rolled_back"
        self._set(op.id, "rolled_back", "interrupted before the destination was complete")
        return "rolled_back"


def _op_from_row(row: tuple) -> Op:
    jid, op, src, dst, image_id, kind, sha, reason = row
    kind, _, action = (kind or "main:move").partition(":")
    return Op(op=op, src=decode_path(src), dst=None if dst is None else decode_path(dst),
              image_id=image_id, kind=kind, sha256=sha, reason=reason or "place",
              action=action or "move", id=jid)


def _taken(op: Op, exc: OSError) -> bool:
    """Did ``op`` fail only because its destination appeared meanwhile (try another name)? A
    retire refused for a file changed by hand is EEXIST too, but a failure."""
    return isinstance(exc, FileExistsError) and op.op != "retire"


def _moved_away(op: Op, exc: Optional[BaseException]) -> bool:
    """Did ``op`` fail because its source is gone (moved or deleted by someone else)?"""
    if isinstance(exc, fsops.MovedMeanwhile):
        return True
    return isinstance(exc, FileNotFoundError) and op.op != "retire" and not os.path.lexists(op.src)


def _make_folders(folder: Path) -> set[Path]:
    """``mkdir -p folder``; returns the folders that gained an entry (the parents of those made),
    so that the new folders are synced with the files in them."""
    missing = []
    while not os.path.isdir(folder) and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    for made in reversed(missing):
        made.mkdir(exist_ok=True)
    return {made.parent for made in missing}


def content_id(path: Path) -> str:
    """What the journal records to recognise a file later: sha256, or a symlink's target."""
    if os.path.islink(path):
        return SYMLINK + os.readlink(path)
    return fsops.sha256_of(path)


def _holds(path: Path, sha: Optional[str]) -> bool:
    if sha is None:
        return False
    try:
        if sha.startswith(SYMLINK):
            return os.path.islink(path) and SYMLINK + os.readlink(path) == sha
        if os.path.islink(path):
            return False
        return fsops.sha256_of(path) == sha
    except OSError:
        return False


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samestat(os.lstat(a), os.lstat(b))
    except OSError:
        return False
