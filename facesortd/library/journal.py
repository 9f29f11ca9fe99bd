"""The journal of file operations: each is written down before it touches a file and marked done,
together with the placement it creates, after. ``replay()`` looks at the disk for every operation
not done and completes it or rolls it back, so a crash at any instant loses nothing.

Operations (``op``): ``move`` src -> dst (the source is unlinked only once dst holds its bytes),
``copy``, ``hardlink``, ``symlink`` (the source stays), ``retire`` (unlink one of our own extra
links or copies after checking it still holds the recorded bytes). Statuses: planned, done,
rolled_back, failed, undone (a done operation that ``facesortd undo`` reverted).
"""

from __future__ import annotations

import errno
import logging
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

from facesortd import fsops
from facesortd.store.database import Store, decode_path, encode_path

log = logging.getLogger("facesortd.journal")

OPS = ("move", "copy", "hardlink", "symlink", "retire")
_SYMLINK = "symlink:"   # sha256 column of a moved symlink: its target instead of a hash


@dataclass(frozen=True)
class Op:
    """One planned file operation. ``kind`` is the placement it makes (main, extra, held)."""

    op: str
    src: Path
    dst: Optional[Path]
    image_id: Optional[int]
    kind: str
    sha256: Optional[str]
    reason: str = "place"        # place | follow | undo
    action: str = "move"         # the placement's action (for a new placement row)
    id: Optional[int] = None

    def describe(self) -> str:
        if self.op == "retire":
            return f"retire {self.src}"
        return f"{self.op} {self.src} -> {self.dst}"


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
        if op.op == "symlink" and os.path.islink(op.src):
            raise OSError(errno.EINVAL, f"{op.src} is a symlink")
        op = self._plan(op)
        try:
            self._do(op)
        except FileExistsError:
            self._set(op.id, "rolled_back", "destination appeared meanwhile")
            raise
        except OSError as exc:
            self._set(op.id, "failed", f"{type(exc).__name__}: {exc}")
            raise
        self._complete(op)
        return op

    def _plan(self, op: Op) -> Op:
        now = time.time()
        with self.store.transaction() as conn:
            jid = conn.execute(
                "INSERT INTO journal (op, src, dst, status, created_at, updated_at, image_id, "
                "kind, sha256, reason) VALUES (?, ?, ?, 'planned', ?, ?, ?, ?, ?, ?)",
                (op.op, encode_path(op.src), None if op.dst is None else encode_path(op.dst), now,
                 now, op.image_id, f"{op.kind}:{op.action}", op.sha256, op.reason)).lastrowid
        return replace(op, id=jid)

    def _do(self, op: Op) -> None:
        if op.op == "retire":
            self._retire(op)
            return
        op.dst.parent.mkdir(parents=True, exist_ok=True)
        if os.path.lexists(op.dst):
            raise FileExistsError(op.dst)
        if op.op == "symlink":
            os.symlink(os.path.abspath(op.src), op.dst)
        elif op.op == "move" and os.path.islink(op.src):
            os.symlink(os.readlink(op.src), op.dst)
            os.unlink(op.src)
        elif op.op == "copy":
            fsops.copy_exact(op.src, op.dst, tmp_name(op.dst, op.id), op.sha256)
        else:  # move, hardlink
            fsops.place_exact(op.src, op.dst, tmp_name(op.dst, op.id), op.sha256)
            if op.op == "move":
                os.unlink(op.src)
                fsops.fsync_dir(op.src.parent)
        fsops.fsync_dir(op.dst.parent)

    def _retire(self, op: Op) -> None:
        if not os.path.lexists(op.src):
            return
        if not os.path.islink(op.src) and not _holds(op.src, op.sha256):  # a link holds no bytes
            raise OSError(errno.EEXIST, f"{op.src} changed since it was placed; left as it is")
        os.unlink(op.src)

    def _complete(self, op: Op) -> None:
        """The files are in their final state: record the placement and mark the row done."""
        now = time.time()
        with self.store.transaction() as conn:
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
            self._complete(op)
            return "completed"
        if op.op == "move" and not os.path.lexists(op.src):
            self._set(op.id, "failed", "neither source nor destination holds the file")
            log.error("journal %d (%s): the file is at neither path", op.id, op.describe())
            return "failed"
        self._set(op.id, "rolled_back", "interrupted before the destination was complete")
        return "rolled_back"


def _op_from_row(row: tuple) -> Op:
    jid, op, src, dst, image_id, kind, sha, reason = row
    kind, _, action = (kind or "main:move").partition(":")
    return Op(op=op, src=decode_path(src), dst=None if dst is None else decode_path(dst),
              image_id=image_id, kind=kind, sha256=sha, reason=reason or "place",
              action=action or "move", id=jid)


def content_id(path: Path) -> str:
    """What the journal records to recognise a file later: sha256, or a symlink's target."""
    if os.path.islink(path):
        return _SYMLINK + os.readlink(path)
    return fsops.sha256_of(path)


def _holds(path: Path, sha: Optional[str]) -> bool:
    if sha is None:
        return False
    try:
        if sha.startswith(_SYMLINK):
            return os.path.islink(path) and _SYMLINK + os.readlink(path) == sha
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
