"""Quarantine through the library's journal, on real files: a broken file set aside with its
reason file and its journal row, never overwriting; a process killed between 'planned' and 'done'
(and between the move and the reason file) repaired at the next start; ``facesortd undo`` taking
it back into its inbox, holding it there, and listing it in a dry run."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from facesortd.cli import main
from facesortd.config import parse_config
from facesortd.library.journal import Op
from facesortd.library.placer import Placer
from facesortd.store.database import Store, decode_path

REPO = Path(__file__).resolve().parents[2]
BROKEN = b"\xff\xd8\xff\xe0 a JPEG that stops here"
REASON = "truncated image: image file is truncated"


class Env:
    """A config, a store and a placer over tmp folders; ``broken`` drops a broken file in the
    inbox and records it as the pipeline does (an 'error' image)."""

    def __init__(self, root: Path):
        self.root = root
        (root / "inbox").mkdir(parents=True, exist_ok=True)
        self.config_path = root / "facesortd.yaml"
        self.config_path.write_text("inboxes:\n  - path: inbox\n")
        self.config = parse_config(self.config_path.read_text(), self.config_path)
        self.inbox = self.config.inboxes[0].path
        self.quarantine = self.config.library / "_quarantine"
        self.store = Store.open(self.config.state_dir)
        self.placer = Placer(self.config, self.store)

    def broken(self, name: str, content: bytes = BROKEN) -> tuple[int, Path]:
        path = self.inbox / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        st = path.stat()
        return self.store.record_error(path, self.inbox, None, st.st_size, st.st_mtime_ns,
                                       REASON), path

    def rows(self, sql: str, *args) -> list[tuple]:
        with self.store.read() as conn:
            return conn.execute(sql, args).fetchall()

    def reopen(self) -> None:
        """A new start: the store opened again, the journal replayed."""
        self.store.close()
        self.store = Store.open(self.config.state_dir)
        self.placer = Placer(self.config, self.store)
        self.placer.replay()


@pytest.fixture
def env(tmp_path):
    e = Env(tmp_path)
    yield e
    e.store.close()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def test_a_broken_file_is_quarantined_through_the_journal(env):
    image_id, path = env.broken("cam/IMG_0001.jpg")
    where = env.placer.quarantine(image_id, path, REASON)
    assert where == env.quarantine / "IMG_0001.jpg"
    assert not path.exists()
    assert files(env.quarantine) == {"IMG_0001.jpg": BROKEN,
                                     "IMG_0001.jpg.reason.txt": f"{path}\n{REASON}\n".encode()}
    rows = env.rows("SELECT op, src, dst, status, image_id, kind, sha256, reason FROM journal")
    assert [(r[0], decode_path(r[1]), decode_path(r[2]), *r[3:]) for r in rows] == [
        ("move", path, where, "done", image_id, "main:move", sha(BROKEN), "quarantine")]
    placed = env.rows("SELECT path, kind FROM placements WHERE image_id = ? ORDER BY id", image_id)
    assert [(decode_path(p), k) for p, k in placed] == [
        (where, "main"), (env.quarantine / "IMG_0001.jpg.reason.txt", "reason")]


def test_quarantine_never_overwrites(env):
    env.quarantine.mkdir(parents=True)
    (env.quarantine / "a.jpg").write_bytes(b"an earlier broken file")
    (env.quarantine / "a_1.jpg.reason.txt").write_text("someone's notes")
    image_id, path = env.broken("a.jpg")
    assert env.placer.quarantine(image_id, path, REASON) == env.quarantine / "a_1.jpg"
    assert files(env.quarantine) == {
        "a.jpg": b"an earlier broken file", "a_1.jpg": BROKEN,
        "a_1.jpg.reason.txt": b"someone's notes",
        "a_1.jpg.reason_1.txt": f"{path}\n{REASON}\n".encode()}


def test_a_file_gone_before_the_move_is_left_alone(env):
    image_id, path = env.broken("gone.jpg")
    path.unlink()
    assert env.placer.quarantine(image_id, path, REASON) is None
    assert not env.quarantine.exists()


# -- crashes ---------------------------------------------------------------------------------

_KILLER = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    from facesortd.config import load_config
    from facesortd.library import journal, quarantine
    from facesortd.library.placer import Placer
    from facesortd.store.database import Store

    config, image_id, path, where = load_config(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3]), sys.argv[4]
    die = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)
    if where == "before_done":        # the file moved (link and unlink), the row still 'planned'
        real = journal.Journal._do
        journal.Journal._do = lambda self, op: (real(self, op), die())
    elif where == "before_unlink":    # linked into the quarantine, not yet unlinked in the inbox
        journal.fsops._renameat2_looked, journal.fsops._renameat2 = True, None   # link + unlink
        journal.fsops.place_exact = lambda *a, **k: (os.link(a[0], a[1]), die())
    elif where == "before_reason":    # moved and marked done, the reason file not yet written
        quarantine._write_reason = die
    store = Store.open(config.state_dir)
    Placer(config, store).quarantine(image_id, path, "truncated image: image file is truncated")
""")


@pytest.mark.parametrize("where", ["before_unlink", "before_done", "before_reason"])
def test_a_crash_mid_quarantine_is_repaired_at_the_next_start(env, where):
    image_id, path = env.broken("crash.jpg")
    env.store.close()
    proc = subprocess.run([sys.executable, "-c", _KILLER, str(env.config_path), str(image_id),
                           str(path), where], env=dict(os.environ, PYTHONPATH=str(REPO)),
                          stderr=subprocess.PIPE)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode(errors="replace")
    env.store = Store.open(env.config.state_dir)
    status = "done" if where == "before_reason" else "planned"
    assert [r[0] for r in env.rows("SELECT status FROM journal")] == [status]
    assert (env.quarantine / "crash.jpg").exists()

    env.reopen()    # what every start does: replay the journal (open_state, daemon)
    assert [r[0] for r in env.rows("SELECT status FROM journal")] == ["done"]
    assert not path.exists()
    assert files(env.quarantine) == {"crash.jpg": BROKEN,
                                     "crash.jpg.reason.txt": f"{path}\n{REASON}\n".encode()}
    assert sorted(r[0] for r in env.rows("SELECT kind FROM placements WHERE image_id = ?",
                                         image_id)) == ["main", "reason"]
    env.reopen()    # a second start finds nothing left to do
    assert len(files(env.quarantine)) == 2


def test_a_crash_before_the_move_leaves_the_file_for_the_next_start(env):
    image_id, path = env.broken("early.jpg")
    op = env.placer.journal._plan([Op("move", path, env.quarantine / "early.jpg", image_id, "main",
                                       sha(BROKEN), "quarantine", "move")])[0]
    env.reopen()
    assert env.rows("SELECT status FROM journal WHERE id = ?", op.id) == [("rolled_back",)]
    assert path.read_bytes() == BROKEN and not env.quarantine.exists()
    st = path.stat()   # not held: the pipeline takes it again and quarantines it then
    assert not env.store.image_is_current(path, st.st_size, st.st_mtime_ns)


# -- undo ------------------------------------------------------------------------------------

def test_undo_takes_a_quarantined_file_back_and_holds_it(env, capsys):
    image_id, path = env.broken("back.jpg")
    mtime = path.stat().st_mtime_ns
    env.placer.quarantine(image_id, path, REASON)
    before = files(env.inbox), files(env.config.library)
    env.store.close()

    assert main(["undo", "--last", "1", "--dry-run", "--config", str(env.config_path)]) == 0
    out = capsys.readouterr().out
    assert f"move {env.quarantine / 'back.jpg'} -> {path}" in out
    assert f"retire {env.quarantine / 'back.jpg.reason.txt'}" in out
    assert "2 file operation(s) planned" in out
    assert (files(env.inbox), files(env.config.library)) == before

    assert main(["undo", "--last", "1", "--config", str(env.config_path)]) == 0
    assert "2 file operation(s)" in capsys.readouterr().out
    assert path.read_bytes() == BROKEN and path.stat().st_mtime_ns == mtime
    assert not env.quarantine.exists()          # emptied by undo, so removed
    env.store = Store.open(env.config.state_dir)
    env.placer = Placer(env.config, env.store)
    rows = env.rows("SELECT op, reason, status FROM journal ORDER BY id")
    assert rows == [("move", "quarantine", "undone"), ("move", "undo", "done"),
                    ("retire", "undo", "done")]
    st = path.stat()   # held: the pipeline skips it (Pipeline.submit asks image_is_current)
    assert env.store.image_is_current(path, st.st_size, st.st_mtime_ns)
    path.write_bytes(BROKEN + b" and more")    # changed: tried (and quarantined) again
    st = path.stat()
    assert not env.store.image_is_current(path, st.st_size, st.st_mtime_ns)
    image_id = env.store.record_error(path, env.inbox, None, st.st_size, st.st_mtime_ns, REASON)
    assert env.placer.quarantine(image_id, path, REASON) == env.quarantine / "back.jpg"
    assert not env.rows("SELECT 1 FROM placements WHERE kind = 'held'")


def test_undo_leaves_a_reason_file_edited_by_hand(env):
    image_id, path = env.broken("notes.jpg")
    env.placer.quarantine(image_id, path, REASON)
    (env.quarantine / "notes.jpg.reason.txt").write_text("checked: the camera's card is bad\n")
    undone = env.placer.undo(last=1)
    assert [op.op for op in undone] == ["move"]
    assert path.read_bytes() == BROKEN
    assert files(env.quarantine) == {"notes.jpg.reason.txt":
                                     b"checked: the camera's card is bad\n"}
    (status, error), = env.rows("SELECT status, error FROM journal WHERE op = 'retire'")
    assert status == "failed" and "changed since it was placed" in error
    st = path.stat()
    assert env.store.image_is_current(path, st.st_size, st.st_mtime_ns)
