"""Companions travel with their photo (RAW twins, sidecars, Live Photo videos, Takeout JSON): placed,
renamed, moved and undone as one group; late ones follow; other files go to placement.other_dir."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from facesortd.config import parse_config
from facesortd.library.placer import Placer


class Env:
    def __init__(self, fake, root: Path, placement: str = ""):
        self.fake, self.root = fake, root
        (root / "inbox").mkdir(parents=True)
        text = (f"library: {root / 'library'}\ninboxes:\n  - path: inbox\n"
                "watch:\n  settle_ms: 0\n" + placement)
        self.config = parse_config(text, root / "facesortd.yaml")
        self.inbox, self.library = self.config.inboxes[0].path, self.config.library
        self.store = fake.open_store(self.config)
        self.placer = Placer(self.config, self.store)

    def write(self, name: str) -> Path:
        path = self.inbox / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(32) + name.encode())
        return path

    def photo(self, name: str, *companions: str, identities=()) -> int:
        for c in companions:
            self.write(c)
        return self.fake.fabricate(self.store, self.write(name), self.inbox, identities)

    def files(self, root: Path | None = None) -> dict[str, bytes]:
        root = root or self.library
        return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
                if p.is_file()}


@pytest.fixture
def env(tmp_path, fake_ingest):
    made = []

    def make(placement: str = "") -> Env:
        made.append(Env(fake_ingest, tmp_path / f"e{len(made)}", placement))
        return made[-1]

    yield make
    for e in made:
        e.store.close()


GROUP = ("IMG_1.CR3", "IMG_1.xmp", "IMG_1.CR3.xmp", "IMG_1.JPG.json", "IMG_1.AAE")


def test_group_placed_together_and_renamed_as_one(env):
    e = env()
    alice = e.fake.new_identity(e.store, "Alice")
    before = {n: (e.inbox / n) for n in ()}
    e.photo("IMG_1.JPG", *GROUP, identities=[alice])
    e.photo("cam2/IMG_1.JPG", "cam2/IMG_1.CR3", identities=[alice])   # same names: rename_new
    e.write("IMG_2.xmp")                                              # no photo: not a companion
    (e.library / "Alice").mkdir(parents=True)
    (e.library / "Alice" / "IMG_3.xmp").write_bytes(b"someone else's")   # clashes with a companion
    e.photo("IMG_3.jpg", "IMG_3.xmp", identities=[alice])
    want = {n: (e.inbox / n).read_bytes() for n in ("IMG_1.JPG", *GROUP, "cam2/IMG_1.JPG",
                                                     "cam2/IMG_1.CR3", "IMG_3.jpg", "IMG_3.xmp")}
    assert before == {}
    e.placer.sync()
    got = e.files()
    first = {f"Alice/{n}": want[n] for n in ("IMG_1.JPG", *GROUP)}
    assert {k: got[k] for k in first} == first
    assert got["Alice/IMG_1_1.JPG"] == want["cam2/IMG_1.JPG"]
    assert got["Alice/IMG_1_1.CR3"] == want["cam2/IMG_1.CR3"]
    assert got["Alice/IMG_3_1.jpg"] == want["IMG_3.jpg"]           # the whole group renamed
    assert got["Alice/IMG_3_1.xmp"] == want["IMG_3.xmp"]
    assert got["Alice/IMG_3.xmp"] == b"someone else's"
    assert sorted(p.name for p in e.inbox.rglob("*") if p.is_file()) == ["IMG_2.xmp"]
    assert e.placer.sync() == []                                     # settled: nothing more


def test_group_follows_its_person_and_undo_brings_it_back(env):
    e = env()
    alice = e.fake.new_identity(e.store, "Alice")
    e.photo("IMG_1.JPG", *GROUP, identities=[alice])
    inbox_before = {n: (e.inbox / n).read_bytes() for n in ("IMG_1.JPG", *GROUP)}
    e.placer.sync()
    with e.store.transaction() as conn:
        conn.execute("UPDATE identities SET name = 'Alice B' WHERE id = ?", (alice,))
    ops = e.placer.sync()
    assert len(ops) == 1 + len(GROUP) and {op.reason for op in ops} == {"follow"}
    assert e.files() == {f"Alice B/{n}": b for n, b in inbox_before.items()}
    assert not (e.library / "Alice").exists()
    late = e.write("IMG_1.MOV")                     # a Live Photo video, after its photo
    e.placer.sync()
    assert not late.exists() and (e.library / "Alice B" / "IMG_1.MOV").is_file()
    e.placer.undo()
    assert e.files(e.inbox) == {**inbox_before, "IMG_1.MOV": e.files(e.inbox)["IMG_1.MOV"]}
    assert e.files() == {}
    assert e.placer.sync() == []                    # held in the inbox, group and all


def test_companions_copied_once_with_the_copy_action(env):
    e = env("placement:\n  action: copy\n")
    alice = e.fake.new_identity(e.store, "Alice")
    e.photo("IMG_1.HEIC", "IMG_1.MOV", "IMG_1.AAE", identities=[alice])
    e.placer.sync()
    assert sorted(e.files()) == ["Alice/IMG_1.AAE", "Alice/IMG_1.HEIC", "Alice/IMG_1.MOV"]
    assert e.placer.sync() == []
    assert sorted(p.name for p in e.inbox.iterdir()) == ["IMG_1.AAE", "IMG_1.HEIC", "IMG_1.MOV"]


def test_other_files_keep_their_path_and_undo(env):
    e = env()
    path = e.write("trip/notes.pdf")
    st = path.stat()
    e.store.add_image(path, e.inbox, None, st.st_size, st.st_mtime_ns, status="other")
    data = path.read_bytes()
    (ops,) = e.placer.sync()
    assert ops.dst == e.library / "_other" / "trip" / "notes.pdf" and ops.dst.read_bytes() == data
    e.placer.undo()
    assert path.read_bytes() == data and e.placer.sync() == []


def test_a_broken_photo_keeps_its_group_in_quarantine(env):
    e = env()
    path = e.write("IMG_9.HEIC")
    mov = e.write("IMG_9.MOV")
    data, video = path.read_bytes(), mov.read_bytes()
    st = path.stat()
    image = e.store.record_error(path, e.inbox, None, st.st_size, st.st_mtime_ns, "truncated")
    e.placer.quarantine(image, path, "truncated")
    (op,) = e.placer.sync()
    assert op.dst == e.library / "_quarantine" / "IMG_9.MOV" and op.dst.read_bytes() == video
    assert e.placer.sync() == []
    e.placer.undo()
    assert path.read_bytes() == data and mov.read_bytes() == video
    assert e.placer.sync() == []


def test_copied_group_renamed_on_conflict_is_copied_once(env):
    """With copy, the inbox keeps the group: a renamed copy (my.trip_1.jpg) must still be known
    as the copy of my.trip.xmp, or every sync would copy it again."""
    e = env("placement:\n  action: copy\n")
    alice = e.fake.new_identity(e.store, "Alice")
    (e.library / "Alice").mkdir(parents=True)
    (e.library / "Alice" / "my.trip.jpg").write_bytes(b"another photo")
    e.photo("my.trip.jpg", "my.trip.xmp", "my.trip.jpg.json", identities=[alice])
    e.placer.sync()
    assert sorted(e.files()) == ["Alice/my.trip.jpg", "Alice/my.trip_1.jpg",
                                 "Alice/my.trip_1.jpg.json", "Alice/my.trip_1.xmp"]
    assert e.placer.sync() == [] and e.placer.sync() == []
