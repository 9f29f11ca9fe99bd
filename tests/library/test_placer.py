"""The placer on real files: layout fields, actions, multi_face, files following identity changes,
collisions, dry run, undo, journal repair and a library on another filesystem."""

from __future__ import annotations

import errno
import hashlib
import os
import time
from pathlib import Path

import pytest
from PIL import Image

from facesortd import fsops
from facesortd.config import parse_config
from facesortd.library.journal import Op, tmp_name
from facesortd.library.loop import PlacerLoop
from facesortd.library.placer import Placer
from facesortd.store.identity_rows import retire

# -- helpers ---------------------------------------------------------------------------------

class Env:
    """A config, a store and a placer over tmp folders; ``add`` writes an inbox file and records it
    (``fake``: the ``fake_ingest`` fixture)."""

    def __init__(self, fake, root: Path, library: Path | None = None, **placement: str):
        self.fake = fake
        self.root = root
        (root / "inbox").mkdir(parents=True, exist_ok=True)
        lines = "".join(f"  {k}: {v!r}\n" for k, v in placement.items())
        text = (f"library: {library or root / 'library'}\ninboxes:\n  - path: inbox\n"
                + (f"placement:\n{lines}" if lines else ""))
        self.config = parse_config(text, root / "facesortd.yaml")
        self.inbox = self.config.inboxes[0].path
        self.library = self.config.library
        self.store = fake.open_store(self.config)
        self.placer = Placer(self.config, self.store)

    def add(self, name: str, identities=(), content: bytes | None = None, areas=None,
            mtime: float | None = None) -> int:
        path = self.inbox / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if content is not None else os.urandom(64) + name.encode())
        if mtime is not None:
            os.utime(path, (mtime, mtime))
        return self.record(path, identities, areas)

    def record(self, path: Path, identities=(), areas=None) -> int:
        """Record an inbox file as ingested, with one face per entry of ``identities``."""
        return self.fake.fabricate(self.store, path, self.inbox, identities, areas)

    def new_identity(self, name: str | None = None) -> int:
        return self.fake.new_identity(self.store, name)

    def files(self, root: Path | None = None) -> dict[str, bytes]:
        root = root or self.library
        return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
                if p.is_file() or p.is_symlink()}

    def close(self):
        self.store.close()


@pytest.fixture
def env(tmp_path, fake_ingest):
    made = []

    def make(**kw):
        e = Env(fake_ingest, tmp_path / f"e{len(made)}", **kw)
        made.append(e)
        return e

    yield make
    for e in made:
        e.close()


def census(*roots: Path) -> dict[str, int]:
    """sha256 -> number of copies (hard links of one file count once) under the roots."""
    out: dict[str, int] = {}
    seen = set()
    for root in roots:
        for p in root.rglob("*"):
            if p.is_file() and not p.is_symlink():
                st = p.stat()
                if (st.st_dev, st.st_ino) in seen:
                    continue
                seen.add((st.st_dev, st.st_ino))
                h = hashlib.sha256(p.read_bytes()).hexdigest()
                out[h] = out.get(h, 0) + 1
    return out


def tree(*roots: Path) -> dict[str, str]:
    """Every path (files, links, folders) under the roots with its content hash or link target."""
    out = {}
    for root in roots:
        for p in sorted(root.rglob("*")):
            if p.is_symlink():
                out[str(p)] = "-> " + os.readlink(p)
            elif p.is_file():
                out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
            else:
                out[str(p)] = "dir"
    return out


def rename(store, identity_id, name):
    with store.transaction() as conn:
        conn.execute("UPDATE identities SET name = ? WHERE id = ?", (name, identity_id))


# -- layout and actions ----------------------------------------------------------------------

def test_default_layout_moves_each_kind_of_image_to_its_folder(env):
    e = env()
    alice, anon = e.new_identity("Alice"), e.new_identity()
    data = {}
    for name, ids in [("a.jpg", [alice]), ("b.png", [anon]), ("c.jpg", [None]), ("d.jpg", [])]:
        e.add(name, ids)
        data[name] = (e.inbox / name).read_bytes()
    ops = e.placer.sync()
    assert len(ops) == 4 and all(op.op == "move" for op in ops)
    assert e.files() == {"Alice/a.jpg": data["a.jpg"], f"Person_{anon:04d}/b.png": data["b.png"],
                         "_unsorted/c.jpg": data["c.jpg"], "_noface/d.jpg": data["d.jpg"]}
    assert list(e.inbox.iterdir()) == []
    assert e.placer.sync() == []   # nothing left to do
    with e.store.read() as conn:
        assert conn.execute("SELECT COUNT(*) FROM journal WHERE status = 'done'").fetchone()[0] == 4


def _jpeg_with_date(path: Path, when: str) -> bytes:
    im = Image.new("RGB", (8, 8), (200, 10, 10))
    exif = Image.Exif()
    exif.get_ifd(0x8769)[36867] = when
    im.save(path, exif=exif.tobytes())
    return path.read_bytes()


def test_layout_fields_year_month_day_inbox_identity_name_ext(env):
    e = env(layout="{year}/{month}/{day}/{inbox}/{identity}/{name}{ext}")
    alice = e.new_identity("Alice")
    exif_bytes = _jpeg_with_date(e.inbox / "exif.jpg", "2019:07:04 10:11:12")
    e.record(e.inbox / "exif.jpg", [alice])
    mtime = time.mktime((2021, 2, 3, 12, 0, 0, 0, 0, -1))
    e.add("plain.JPG", [None], content=b"no exif here", mtime=mtime)
    e.add("none.png", [], content=b"no face", mtime=mtime)
    e.placer.sync()
    assert e.files() == {"2019/07/04/inbox/Alice/exif.jpg": exif_bytes,
                         "2021/02/03/inbox/_unsorted/plain.JPG": b"no exif here",
                         "2021/02/03/inbox/_noface/none.png": b"no face"}


def test_layout_without_identity_puts_special_files_under_their_folder(env):
    e = env(layout="{identity}-{name}{ext}")
    bob = e.new_identity("Bob")
    e.add("x.jpg", [bob], content=b"x")
    e.add("y.jpg", [], content=b"y")
    e.placer.sync()
    assert e.files() == {"Bob-x.jpg": b"x", "_noface-y.jpg": b"y"}
    e2 = env(layout="{year}/{name}{ext}")
    e2.add("z.jpg", [e2.new_identity()], content=b"z", mtime=time.mktime((2020, 5, 6, 0, 0, 0, 0, 0, -1)))
    e2.add("w.jpg", [None], content=b"w", mtime=time.mktime((2020, 5, 6, 0, 0, 0, 0, 0, -1)))
    e2.placer.sync()
    assert e2.files() == {"2020/z.jpg": b"z", "_unsorted/2020/w.jpg": b"w"}


@pytest.mark.parametrize("action", ["copy", "hardlink", "symlink"])
def test_non_move_actions_leave_the_inbox_file(env, action):
    e = env(action=action)
    carol = e.new_identity("Carol")
    e.add("p.jpg", [carol], content=b"photo-bytes")
    src = e.inbox / "p.jpg"
    before = src.stat()
    ops = e.placer.sync()
    assert [op.op for op in ops] == [action]
    dst = e.library / "Carol" / "p.jpg"
    assert src.read_bytes() == b"photo-bytes" and dst.read_bytes() == b"photo-bytes"
    if action == "copy":
        assert not dst.is_symlink() and not os.path.samefile(src, dst)
    elif action == "hardlink":
        assert os.path.samefile(src, dst) and not dst.is_symlink()
    else:
        assert dst.is_symlink() and os.readlink(dst) == str(src)
    # the pipeline will not ingest the inbox file again, and the placer does nothing more
    assert e.store.image_is_current(src, before.st_size, before.st_mtime_ns)
    assert e.placer.sync() == []
    rename(e.store, carol, "Caroline")   # the library entry follows, the inbox file stays
    assert [op.op for op in e.placer.sync()] == ["move"]
    assert (e.library / "Caroline" / "p.jpg").read_bytes() == b"photo-bytes"
    assert src.read_bytes() == b"photo-bytes" and not (e.library / "Carol").exists()


def test_multi_face_largest_all_group(env):
    results = {}
    for policy in ("largest", "all", "group"):
        e = env(multi_face=policy)
        small, big = e.new_identity("Small"), e.new_identity("Big")
        e.add("two.jpg", [small, big], content=b"two people", areas=[10.0, 50.0])
        e.add("one.jpg", [small], content=b"one person")
        e.add("unk.jpg", [None, None], content=b"two strangers")
        e.placer.sync()
        results[policy] = e.files()
        assert list(e.inbox.iterdir()) == []
    assert results["largest"] == {"Big/two.jpg": b"two people", "Small/one.jpg": b"one person",
                                  "_unsorted/unk.jpg": b"two strangers"}
    assert results["all"] == {"Big/two.jpg": b"two people", "Small/two.jpg": b"two people",
                              "Small/one.jpg": b"one person", "_unsorted/unk.jpg": b"two strangers"}
    assert results["group"] == {"_groups/two.jpg": b"two people", "Small/one.jpg": b"one person",
                                "_groups/unk.jpg": b"two strangers"}


def test_multi_face_all_extra_is_a_link_and_follows_reassignment(env):
    e = env(multi_face="all")
    a, b, c = (e.new_identity(n) for n in ("A", "B", "C"))
    e.add("g.jpg", [a, b], content=b"group photo")
    e.placer.sync()
    assert os.path.samefile(e.library / "A" / "g.jpg", e.library / "B" / "g.jpg")
    with e.store.transaction() as conn:   # "not this person": the face of B is C's
        conn.execute("UPDATE faces SET identity_id = ? WHERE identity_id = ?", (c, b))
    ops = e.placer.sync()
    assert sorted(op.op for op in ops) == ["hardlink", "retire"]
    assert e.files() == {"A/g.jpg": b"group photo", "C/g.jpg": b"group photo"}
    assert census(e.library, e.inbox) == {hashlib.sha256(b"group photo").hexdigest(): 1}


# -- files follow identity changes -----------------------------------------------------------

def test_rename_merge_split_and_assignment_move_placed_files(env):
    e = env()
    p1, p2 = e.new_identity(), e.new_identity()
    for i in range(3):
        e.add(f"p1_{i}.jpg", [p1], content=f"p1 {i}".encode())
    e.add("p2.jpg", [p2], content=b"p2")
    e.add("who.jpg", [None], content=b"who")
    hand = e.library / f"Person_{p1:04d}" / "mine.txt"
    e.placer.sync()
    hand.write_bytes(b"put here by hand")
    hand_stat = hand.stat()
    rename(e.store, p1, "Dana")
    e.placer.sync()
    assert sorted(e.files()) == ["Dana/p1_0.jpg", "Dana/p1_1.jpg", "Dana/p1_2.jpg",
                                 f"Person_{p1:04d}/mine.txt", f"Person_{p2:04d}/p2.jpg",
                                 "_unsorted/who.jpg"]
    assert hand.read_bytes() == b"put here by hand" and hand.stat().st_ino == hand_stat.st_ino
    with e.store.transaction() as conn:   # merge p2 into Dana (its faces go with it)
        retire(conn, p2, p1)
    e.placer.sync()
    assert "Dana/p2.jpg" in e.files() and not (e.library / f"Person_{p2:04d}").exists()
    split = e.new_identity("Eve")   # split: one of Dana's faces is someone else
    with e.store.transaction() as conn:
        conn.execute("UPDATE faces SET identity_id = ? WHERE image_id = "
                     "(SELECT id FROM images WHERE path LIKE '%p1_2.jpg')", (split,))
        conn.execute("UPDATE faces SET identity_id = ? WHERE identity_id IS NULL", (split,))
    e.placer.sync()
    assert sorted(e.files()) == ["Dana/p1_0.jpg", "Dana/p1_1.jpg", "Dana/p2.jpg", "Eve/p1_2.jpg",
                                 "Eve/who.jpg", f"Person_{p1:04d}/mine.txt"]
    assert not (e.library / "_unsorted").exists()
    assert len(census(e.library, e.inbox)) == 6 and e.placer.sync() == []


def test_two_people_never_share_a_folder(env):
    """Same names (also differing in case), a name like another person's Person_NNNN folder, a
    special folder's name: each identity still gets a folder of its own."""
    e = env()
    a, b, c, d, plain = (e.new_identity() for _ in range(5))
    for ident, name in [(a, "Ada"), (b, "ada"), (c, f"Person_{plain:04d}"), (d, "_unsorted")]:
        rename(e.store, ident, name)
    for ident in (a, b, c, d, plain):
        e.add(f"f{ident}.jpg", [ident], content=f"face {ident}".encode())
    e.add("who.jpg", [None], content=b"who")
    e.placer.sync()
    folders = {}
    for rel in e.files():
        folders.setdefault(rel.split("/")[0], []).append(rel)
    assert all(len(files) == 1 for files in folders.values()), folders
    assert f"Ada/f{a}.jpg" in e.files() and f"Person_{plain:04d}/f{plain}.jpg" in e.files()
    assert "_unsorted/who.jpg" in e.files() and f"_unsorted (#{d})/f{d}.jpg" in e.files()


def test_a_placed_file_moved_away_by_hand_is_left_alone(env):
    e = env()
    x = e.new_identity("X")
    e.add("m.jpg", [x], content=b"m")
    e.placer.sync()
    os.rename(e.library / "X" / "m.jpg", e.root / "elsewhere.jpg")
    rename(e.store, x, "Y")
    assert e.placer.sync() == []
    assert (e.root / "elsewhere.jpg").read_bytes() == b"m" and not (e.library / "Y").exists()


# -- collisions ------------------------------------------------------------------------------

def test_rename_new_never_overwrites(env):
    e = env()
    f = e.new_identity("F")
    (e.library / "F").mkdir(parents=True)
    (e.library / "F" / "a.jpg").write_bytes(b"hand placed")
    e.add("one/a.jpg", [f], content=b"first a")
    e.add("two/a.jpg", [f], content=b"second a")
    e.placer.sync()
    assert e.files() == {"F/a.jpg": b"hand placed", "F/a_1.jpg": b"first a", "F/a_2.jpg": b"second a"}
    assert e.placer.sync() == []   # a rename_new name is where the file belongs: it stays


def test_skip_identical_sends_same_bytes_to_duplicates(env):
    e = env(on_conflict="skip_identical")
    g = e.new_identity("G")
    (e.library / "G").mkdir(parents=True)
    (e.library / "G" / "s.jpg").write_bytes(b"same bytes")
    e.add("s.jpg", [g], content=b"same bytes")          # identical to the hand-placed file
    e.add("d1/t.jpg", [g], content=b"twin")
    e.add("d2/t.jpg", [g], content=b"twin")             # a duplicate image of d1/t.jpg
    e.placer.sync()
    assert e.files() == {"G/s.jpg": b"same bytes", "_duplicates/s.jpg": b"same bytes",
                         "G/t.jpg": b"twin", "_duplicates/t.jpg": b"twin"}
    assert e.placer.sync() == []
    e2 = env()   # rename_new: a duplicate goes where its original's person goes
    h = e2.new_identity("H")
    e2.add("d1/t.jpg", [h], content=b"twin")
    e2.add("d2/t.jpg", [h], content=b"twin")
    e2.placer.sync()
    assert e2.files() == {"H/t.jpg": b"twin", "H/t_1.jpg": b"twin"}


# -- dry run and undo ------------------------------------------------------------------------

def test_dry_run_lists_the_operations_and_changes_nothing(env):
    e = env(multi_face="all")
    a, b = e.new_identity("A"), e.new_identity()
    for i in range(5):
        e.add(f"f{i}.jpg", [a, b] if i % 2 else [a])
    e.add("n.jpg", [])
    before = tree(e.root)
    planned = e.placer.sync(dry_run=True)
    assert tree(e.root) == before
    assert [op.op for op in planned].count("move") == 6 and [op.op for op in planned].count("hardlink") == 2
    with e.store.read() as conn:
        assert conn.execute("SELECT COUNT(*) FROM journal").fetchone()[0] == 0
    done = e.placer.sync()
    assert [(op.op, op.src, op.dst) for op in done] == [(op.op, op.src, op.dst) for op in planned]


def test_undo_puts_files_back_in_the_inbox_and_holds_them(env):
    e = env()
    k = e.new_identity("K")
    for i in range(4):
        e.add(f"u{i}.jpg", [k], content=f"u{i}".encode())
    before = tree(e.inbox)
    e.placer.sync()
    undone = e.placer.undo(last=2)
    assert [op.op for op in undone] == ["move", "move"]
    assert sorted(p.name for p in e.inbox.iterdir()) == ["u2.jpg", "u3.jpg"]
    assert e.placer.sync() == []   # held: the placer leaves them in the inbox
    assert e.placer.undo(since=time.time() - 60) and tree(e.inbox) == before
    assert not (e.library / "K").exists()
    for p in e.inbox.iterdir():    # the pipeline will not re-ingest them either
        st = p.stat()
        assert e.store.image_is_current(p, st.st_size, st.st_mtime_ns)


def test_undo_of_copies_removes_only_our_verified_copies(env):
    e = env(action="copy")
    k = e.new_identity("K")
    e.add("c.jpg", [k], content=b"c")
    e.add("d.jpg", [k], content=b"d")
    e.placer.sync()
    (e.library / "K" / "d.jpg").write_bytes(b"edited by hand after placing")
    e.placer.undo(last=5)
    assert e.files() == {"K/d.jpg": b"edited by hand after placing"}
    assert e.files(e.inbox) == {"c.jpg": b"c", "d.jpg": b"d"}


# -- the journal repairs interrupted operations ----------------------------------------------

def _planned(e: Env, op: Op) -> Op:
    return e.placer.journal._plan([op])[0]


def test_replay_completes_or_rolls_back_each_interrupted_state(env):
    e = env()
    z = e.new_identity("Z")
    ids = {n: e.add(f"{n}.jpg", [z], content=n.encode() * 10) for n in ("linked", "copying", "taken", "fresh")}
    sha = {n: hashlib.sha256(n.encode() * 10).hexdigest() for n in ids}
    dst = {n: e.library / "Z" / f"{n}.jpg" for n in ids}
    (e.library / "Z").mkdir(parents=True)
    ops = {n: _planned(e, Op("move", e.inbox / f"{n}.jpg", dst[n], ids[n], "main", sha[n]))
           for n in ids}
    os.link(e.inbox / "linked.jpg", dst["linked"])              # crashed before the unlink
    tmp_name(dst["copying"], ops["copying"].id).write_bytes(b"cop")   # crashed mid-copy
    dst["taken"].write_bytes(b"someone else's file")           # not ours: never touched
    result = e.placer.replay()
    assert result == {"completed": 1, "rolled_back": 3, "failed": 0}
    assert dst["linked"].read_bytes() == b"linked" * 10 and not (e.inbox / "linked.jpg").exists()
    assert sorted(p.name for p in (e.library / "Z").iterdir()) == ["linked.jpg", "taken.jpg"]
    assert dst["taken"].read_bytes() == b"someone else's file"
    e.placer.sync()
    assert e.files() == {"Z/linked.jpg": b"linked" * 10, "Z/copying.jpg": b"copying" * 10,
                         "Z/taken.jpg": b"someone else's file", "Z/taken_1.jpg": b"taken" * 10,
                         "Z/fresh.jpg": b"fresh" * 10}
    assert list(e.inbox.iterdir()) == []


# -- another filesystem ----------------------------------------------------------------------

def _sort_and_census(e: Env, n: int = 30):
    people = [e.new_identity() for _ in range(3)]
    for i in range(n):
        e.add(f"s/{i % 4}/img.jpg" if i < 8 else f"x{i}.jpg", [people[i % 3]] if i % 5 else [],
              content=os.urandom(2000 + i))
    want = census(e.inbox)
    e.placer.sync()
    rename(e.store, people[0], "Renamed")
    e.placer.sync()
    assert census(e.library, e.inbox) == want and all(v == 1 for v in want.values())
    assert not any(p.is_file() for p in e.inbox.rglob("*"))
    assert not [p for p in e.library.rglob(".facesortd-*")]


def test_library_on_another_filesystem(env, tmp_path):
    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("no second filesystem here; the forced copy path is tested below")
    library = Path(os.path.realpath(shm)) / f"facesortd-test-{os.getpid()}-{time.time_ns()}"
    try:
        e = env(library=library)
        _sort_and_census(e)
    finally:
        for p in sorted(library.rglob("*"), reverse=True) if library.exists() else []:
            p.rmdir() if p.is_dir() else p.unlink()
        if library.exists():
            library.rmdir()


def test_copy_path_forced_by_exdev(env, monkeypatch):
    real_link = os.link
    inbox_prefix = []

    def link(src, dst, *a, **k):   # links out of the inbox cross "filesystems"
        if inbox_prefix and str(src).startswith(inbox_prefix[0]):
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        return real_link(src, dst, *a, **k)

    monkeypatch.setattr(fsops.os, "link", link)
    e = env()
    inbox_prefix.append(str(e.inbox))
    _sort_and_census(e)


# -- the daemon's placer thread --------------------------------------------------------------

def test_placer_loop_follows_changes_and_stops(env):
    e = env()
    q = e.new_identity()
    e.add("loop.jpg", [q], content=b"loop")
    changed = __import__("threading").Event()
    synced = []
    loop = PlacerLoop(e.placer, changed, debounce=0.05, on_synced=synced.append)
    loop.start()
    try:
        deadline = time.monotonic() + 10
        while not (e.library / f"Person_{q:04d}" / "loop.jpg").exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        rename(e.store, q, "Quinn")
        changed.set()
        while not (e.library / "Quinn" / "loop.jpg").exists() and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        loop.stop()
    assert e.files() == {"Quinn/loop.jpg": b"loop"} and len(synced) >= 2


# -- the whole job through the command line (real dlib model, aligned face crops) -------------

def test_cli_dry_run_then_run_then_undo(tmp_path, data_dir, capsys):
    pytest.importorskip("dlib", reason="the dlib extra is installed by `make test`")
    from facesortd.cli import main

    inbox = tmp_path / "inbox"
    inbox.mkdir()
    for person in ("Ben_Affleck", "Madonna"):
        for p in sorted((data_dir / "faces_cropped" / person).glob("*.jp*g"))[:3]:
            (inbox / f"{person}_{p.name}").write_bytes(p.read_bytes())
    (inbox / "broken.jpg").write_bytes(b"not a photo at all")
    config = tmp_path / "facesortd.yaml"
    config.write_text("inboxes:\n  - path: inbox\n    mode: aligned\nwatch:\n  settle_ms: 50\n"
                      "  rescan_interval_s: 0\nembedder:\n  name: dlib\nweb:\n  enabled: false\n")
    before = tree(tmp_path / "inbox")
    assert main(["run", "--once", "--dry-run", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert out.count("would move") == 6 and tree(inbox) == before
    assert not (tmp_path / "library").exists()

    assert main(["run", "--once", "--config", str(config)]) == 0
    capsys.readouterr()
    library = tmp_path / "library"
    placed = sorted(str(p.relative_to(library)) for p in library.rglob("*") if p.is_file())
    folders = {p.split("/")[0] for p in placed}
    assert len(placed) == 8 and "_quarantine" in folders   # broken file + its reason file
    people = {f: {p.split("/")[1].split("_")[0] for p in placed if p.startswith(f + "/")}
              for f in folders if f.startswith("Person_")}
    assert sorted(map(sorted, people.values())) == [["Ben"], ["Madonna"]]
    assert sorted(p.name for p in inbox.iterdir()) == []

    # undo takes the quarantined file back too (and retires the reason file it wrote)
    assert main(["undo", "--last", "100", "--config", str(config)]) == 0
    assert "8 file operation(s)" in capsys.readouterr().out
    assert tree(inbox) == before
    assert not any(p.is_file() for p in library.rglob("*"))
    assert main(["run", "--once", "--config", str(config)]) == 0   # held: all stay put
    assert tree(inbox) == before
