"""The library as a second way to correct (issue 19): what a person does to placed files in a file
manager (a move to another person's folder, to the unknown or no-face folder, a folder renamed,
a folder's photos dragged onto another person's, a folder made by hand, a delete) is read by a
library scan (``Placer.sync(scan=...)``) on the small real library, and afterwards, through a
recluster, the store, the review API and the folders agree."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from facesortd.app.state import open_state
from facesortd.library.layout import identity_folders
from facesortd.library.placer import Placer, audit
from facesortd.people.corrections import from_library
from facesortd.store.database import decode_path
from facesortd.web import Control, create_app

pytest.importorskip("dlib", reason="the dlib extra is installed by `make test`")


class Lib:
    """A copy of the small real library, opened as the daemon opens it (the placer wired to the
    corrections), with the review API over the same store."""

    def __init__(self, library, root: Path):
        self.small = library
        self.config = library.copy(root)
        self.root = root
        self.state = open_state(self.config)
        self.store, self.placer = self.state.store, self.state.placer
        app = create_app(self.config, self.store, test_config={"TESTING": True},
                         control=Control(changed=lambda: None, request_recluster=lambda: None))
        self.client = app.test_client()
        self.lib = self.config.library

    def close(self) -> None:
        self.state.close()

    # -- reading ---------------------------------------------------------------------------------
    def people(self) -> dict[str, int]:
        by_person = self.small.faces_by_person(self.store)
        return {p: self.small.main_identity(pairs) for p, pairs in by_person.items()}

    def folder(self, identity: int) -> Path:
        with self.store.read() as conn:
            live = {i: n for i, n in conn.execute(
                "SELECT id, name FROM identities WHERE merged_into IS NULL")}
        pc = self.config.placement
        return self.lib / identity_folders(live, (pc.unknown_dir, pc.noface_dir, pc.quarantine_dir,
                                                  pc.group_dir, pc.duplicates_dir, pc.other_dir))[
            identity].name

    def photos(self, folder: Path) -> list[Path]:
        return sorted(p for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []

    def image_of(self, path: Path) -> int:
        with self.store.read() as conn:
            rows = {decode_path(r[0]): r[1] for r in conn.execute(
                "SELECT path, image_id FROM placements WHERE kind = 'main'")}
        return rows[path]

    def largest_face(self, image_id: int) -> tuple[int, int | None, int, int]:
        """(face id, identity, pinned, rejected) of the image's largest face."""
        with self.store.read() as conn:
            return conn.execute(
                "SELECT id, identity_id, pinned, rejected FROM faces WHERE image_id = ? "
                "ORDER BY (box_x2-box_x1)*(box_y2-box_y1) DESC, id LIMIT 1", (image_id,)).fetchone()

    def post(self, path: str, body=None):
        token = self.client.get("/api/csrf").json["csrf_token"]
        return self.client.post(path, headers={"X-CSRF-Token": token}, json=body or {})

    def history(self) -> list[dict]:
        return self.client.get("/api/history").json["history"]

    def api_faces(self, identity: int) -> set[int]:
        body = self.client.get(f"/api/identities/{identity}?per_page=200").json
        return {f["id"] for f in body["faces"]}

    def tree(self) -> dict[str, bytes]:
        return {str(p.relative_to(self.root)): p.read_bytes() for p in sorted(self.root.rglob("*"))
                if p.is_file() and "state" not in p.relative_to(self.root).parts}

    def rows(self) -> list[tuple]:
        with self.store.read() as conn:
            return conn.execute("SELECT image_id, path, kind FROM placements ORDER BY id").fetchall()

    def agree(self) -> None:
        """Every placed photo is where the placer wants it (by the store), its file is there, and
        the review API shows each person's faces as the store has them."""
        with self.store.read() as conn:
            placed = audit(self.config, conn)
            people = [r[0] for r in conn.execute(
                "SELECT DISTINCT identity_id FROM faces WHERE identity_id IS NOT NULL AND rejected = 0")]
            by_identity = {p: {r[0] for r in conn.execute(
                "SELECT id FROM faces WHERE identity_id = ? AND rejected = 0", (p,))} for p in people}
        assert placed and all(p.exists and p.in_place for p in placed), \
            [p for p in placed if not (p.exists and p.in_place)]
        for identity, faces in by_identity.items():
            assert self.api_faces(identity) == faces

    def recluster_and_sync(self) -> None:
        self.state.identities.recluster(reason="test")
        assert self.placer.sync(scan=True) == []     # nothing undone by the recluster


@pytest.fixture
def lib(library, tmp_path):
    made = []

    def make() -> Lib:
        made.append(Lib(library, tmp_path / f"l{len(made)}"))
        return made[-1]

    yield make
    for m in made:
        m.close()


def test_moves_to_a_person_to_unknown_and_to_noface_are_corrections(lib):
    e = lib()
    people = e.people()
    felix, rowling, cho, palocci = (people[p] for p in ("Allyson_Felix", "JK_Rowling", "Fujio_Cho",
                                                        "Antonio_Palocci"))
    unknown = e.lib / e.config.placement.unknown_dir
    noface = e.lib / e.config.placement.noface_dir
    a = e.photos(e.folder(felix))[0]
    b = e.photos(e.folder(cho))[0]
    c = e.photos(e.folder(palocci))[0]
    ia, ib, ic = e.image_of(a), e.image_of(b), e.image_of(c)
    before = len(e.history())
    unknown.mkdir(exist_ok=True)
    noface.mkdir(exist_ok=True)
    os.rename(a, e.folder(rowling) / a.name)          # a file manager's drag
    os.rename(b, unknown / b.name)
    os.rename(c, noface / c.name)
    ops = e.placer.sync(scan=True)
    assert ops == []                                  # each stays where the person put it
    assert (e.folder(rowling) / a.name).exists() and (unknown / b.name).exists() \
        and (noface / c.name).exists()
    assert e.placer.last_scan.moved == 3 and e.placer.last_scan.removed == 0

    face_a, who_a, pinned_a, _ = e.largest_face(ia)
    assert (who_a, pinned_a) == (rowling, 1)
    face_b, who_b, _, _ = e.largest_face(ib)
    assert who_b is None
    with e.store.read() as conn:
        assert conn.execute("SELECT 1 FROM cannot_link WHERE face_id = ? AND identity_id = ?",
                            (face_b, cho)).fetchone()
        assert conn.execute("SELECT COUNT(*) FROM faces WHERE image_id = ? AND rejected = 0",
                            (ic,)).fetchone()[0] == 0
    made = e.history()[: len(e.history()) - before]
    assert sorted(h["op"] for h in made) == ["move_faces", "not_this_person", "reject"]
    assert all(h["args"]["via"] == "library" for h in made)
    assert face_a in e.api_faces(rowling) and face_a not in e.api_faces(felix)

    e.recluster_and_sync()
    assert e.largest_face(ia)[1:3] == (rowling, 1) and e.largest_face(ib)[1] is None
    e.agree()
    # undoable on the page like any correction: the photo goes back to its person's folder
    undone = [e.post("/api/undo").json["undone"][0]["op"] for _ in range(3)]
    assert sorted(undone) == ["move_faces", "not_this_person", "reject"]
    e.placer.sync(scan=True)
    assert (e.folder(felix) / a.name).exists() and not (e.folder(rowling) / a.name).exists()
    assert (e.folder(palocci) / c.name).exists()
    e.agree()


def test_folder_rename_merge_onto_a_person_and_a_folder_made_by_hand(lib):
    e = lib()
    people = e.people()
    felix, rowling, cho, paul = (people[p] for p in ("Allyson_Felix", "JK_Rowling", "Fujio_Cho",
                                                     "Paul_McCartney"))
    felix_photos = [p.name for p in e.photos(e.folder(felix))]
    # a folder renamed: the person is named
    os.rename(e.folder(felix), e.lib / "Allyson Felix")
    # every photo of one folder dragged onto another person's: merged
    cho_photos = e.photos(e.folder(cho))
    for p in cho_photos:
        os.rename(p, e.folder(rowling) / p.name)
    # a folder made by hand, two photos moved into it: a new person of that name
    made = e.lib / "Sir Paul"
    made.mkdir()
    moved = e.photos(e.folder(paul))[:2]
    faces = [e.largest_face(e.image_of(p))[0] for p in moved]
    for p in moved:
        os.rename(p, made / p.name)
    e.placer.sync(scan=True)
    e.placer.sync(scan=True)     # what the first sync moved (the merged folder) is its own work

    with e.store.read() as conn:
        names = dict(conn.execute("SELECT id, name FROM identities WHERE merged_into IS NULL"))
        merged = dict(conn.execute("SELECT id, merged_into FROM identities"))
        new = conn.execute("SELECT id FROM identities WHERE name = 'Sir Paul'").fetchone()[0]
        assert {r[0] for r in conn.execute("SELECT identity_id FROM faces WHERE id IN (?, ?)",
                                           faces)} == {new}
    assert names[felix] == "Allyson Felix" and merged[cho] == rowling
    assert sorted(p.name for p in e.photos(e.lib / "Allyson Felix")) == sorted(felix_photos)
    assert {p.name for p in cho_photos} <= {p.name for p in e.photos(e.folder(rowling))}
    assert sorted(p.name for p in e.photos(made)) == sorted(p.name for p in moved)
    ops = [h["op"] for h in e.history()[:3]]
    assert sorted(ops) == ["merge", "move_faces", "rename"]
    identities = {i["id"]: i["name"] for i in e.client.get("/api/identities").json["identities"]}
    assert identities[felix] == "Allyson Felix" and identities[new] == "Sir Paul"
    assert cho not in identities

    e.recluster_and_sync()
    with e.store.read() as conn:
        assert conn.execute("SELECT name FROM identities WHERE id = ?", (felix,)).fetchone()[0] \
            == "Allyson Felix"
        assert conn.execute("SELECT merged_into FROM identities WHERE id = ?", (cho,)).fetchone()[0] \
            == rowling
    e.agree()


def test_a_deleted_photo_is_removed_for_good_and_sorted_again_when_dropped_again(lib, tmp_path):
    from facesortd.app.daemon import Daemon

    e = lib()
    people = e.people()
    rowling = people["JK_Rowling"]
    gone = e.photos(e.folder(rowling))[0]
    image = e.image_of(gone)
    face = e.largest_face(image)[0]
    content = gone.read_bytes()
    gone.unlink()
    assert e.placer.sync(scan=True) == []
    assert e.placer.last_scan.removed == 1
    with e.store.read() as conn:
        assert conn.execute("SELECT removed_at IS NOT NULL FROM images WHERE id = ?",
                            (image,)).fetchone()[0] == 1
        assert conn.execute("SELECT COUNT(*) FROM faces WHERE image_id = ? AND rejected = 0",
                            (image,)).fetchone()[0] == 0
    assert e.store.counts()["images_removed"] == 1
    assert face not in e.api_faces(rowling)
    assert face not in set(e.store.vectors()[0].tolist())     # not evidence any more
    e.recluster_and_sync()
    assert not any(p.name == gone.name for p in e.lib.rglob("*"))
    assert e.placer.sync(scan=True) == [] and e.placer.last_scan.removed == 0   # no repeat
    e.agree()
    e.close()

    # the same content dropped into the inbox again is a new arrival, sorted again
    again = e.root / "inbox" / "again.jpg"
    again.write_bytes(content)
    counts = Daemon(e.config).run_once(timeout=600)
    assert counts["images_removed"] == 1
    e.state = open_state(e.config)
    e.store, e.placer = e.state.store, e.state.placer
    with e.store.read() as conn:
        status, faces = conn.execute(
            "SELECT status, (SELECT COUNT(*) FROM faces WHERE image_id = images.id AND rejected = 0) "
            "FROM images WHERE path = ?", (str(again),)).fetchone()
    assert status == "done" and faces >= 1
    assert not again.exists() and any(p.name == "again.jpg" for p in e.lib.rglob("*"))


def test_a_dry_run_changes_nothing_and_hand_placed_files_are_left_alone(lib, data_dir):
    e = lib()
    people = e.people()
    felix, rowling = people["Allyson_Felix"], people["JK_Rowling"]
    a, deleted = e.photos(e.folder(felix))[0], e.photos(e.folder(rowling))[0]
    os.rename(a, e.folder(rowling) / a.name)
    deleted.unlink()
    # a person's own files: a stranger's photo, a copy of a placed photo, a text file
    own = e.lib / "Holidays"
    own.mkdir()
    stranger = sorted((data_dir / "faces_cropped" / "Madonna").iterdir())[0]
    shutil.copyfile(stranger, own / "madonna.jpg")
    shutil.copyfile(e.photos(e.folder(felix))[0], own / "copy.jpg")
    (e.folder(rowling) / "notes.txt").write_text("mine")
    before_tree, before_rows = e.tree(), e.rows()
    with e.store.read() as conn:
        before_faces = conn.execute("SELECT id, identity_id, pinned, rejected FROM faces").fetchall()
    before_history = len(e.history())

    e.placer.sync(dry_run=True, scan=True)
    assert sorted(op for op, _ in e.placer.last_scan.corrections) == ["move_faces", "remove_images"]
    assert e.tree() == before_tree and e.rows() == before_rows and len(e.history()) == before_history
    with e.store.read() as conn:
        assert conn.execute("SELECT id, identity_id, pinned, rejected FROM faces").fetchall() \
            == before_faces
        assert conn.execute("SELECT COUNT(*) FROM library_hashes").fetchone()[0] == 0

    e.placer.sync(scan=True)
    assert len(e.history()) == before_history + 2
    after = e.tree()
    for name in ("library/Holidays/madonna.jpg", "library/Holidays/copy.jpg"):
        assert after[name] == before_tree[name]
    assert (e.folder(rowling) / "notes.txt").read_text() == "mine"
    with e.store.read() as conn:   # never tracked: no placement row names them
        paths = {decode_path(r[0]) for r in conn.execute("SELECT path FROM placements")}
    assert not paths & {own / "madonna.jpg", own / "copy.jpg", e.folder(rowling) / "notes.txt"}
    e.recluster_and_sync()
    assert (own / "madonna.jpg").exists() and (own / "copy.jpg").exists()


def test_watcher_paths_look_only_there_and_the_whole_library_when_one_end_is_missing(lib):
    e = lib()
    people = e.people()
    felix, rowling, paul = people["Allyson_Felix"], people["JK_Rowling"], people["Paul_McCartney"]
    a = e.photos(e.folder(felix))[0]
    b = e.photos(e.folder(paul))[0]
    os.rename(a, e.folder(rowling) / a.name)
    os.rename(b, e.folder(rowling) / b.name)
    # both ends of the first move: only that one is read
    e.placer.sync(scan=[a, e.folder(rowling) / a.name])
    assert e.largest_face(e.image_of(e.folder(rowling) / a.name))[1] == rowling
    assert e.placer.last_scan.moved == 1
    assert e.largest_face(e.image_of(b))[1] == paul          # not looked at yet
    # only the end it left: not taken for a delete, the library is searched
    e.placer.sync(scan=[b])
    assert e.placer.last_scan.moved == 1 and e.placer.last_scan.removed == 0
    assert e.largest_face(e.image_of(e.folder(rowling) / b.name))[1] == rowling
    e.recluster_and_sync()
    e.agree()


def test_companions_follow_their_photo_and_a_placer_without_corrections_leaves_files(
        tmp_path, fake_ingest):
    from facesortd.config import parse_config

    root = tmp_path / "c"
    (root / "inbox").mkdir(parents=True)
    text = f"library: {root / 'library'}\ninboxes:\n  - path: inbox\nwatch:\n  settle_ms: 0\n"
    config = parse_config(text, root / "facesortd.yaml")
    store = fake_ingest.open_store(config)
    try:
        x = fake_ingest.new_identity(store, "X")
        y = fake_ingest.new_identity(store, "Y")
        inbox = config.inboxes[0].path
        for name in ("IMG_1.JPG", "IMG_1.xmp", "IMG_1.CR3", "IMG_2.JPG"):
            (inbox / name).write_bytes(os.urandom(40) + name.encode())
        image = fake_ingest.fabricate(store, inbox / "IMG_1.JPG", inbox, [x])
        fake_ingest.fabricate(store, inbox / "IMG_2.JPG", inbox, [x])
        placer = Placer(config, store, learn=from_library)
        placer.sync()
        lib = config.library
        assert sorted(p.name for p in (lib / "X").iterdir()) == ["IMG_1.CR3", "IMG_1.JPG",
                                                                 "IMG_1.xmp", "IMG_2.JPG"]
        (lib / "Y").mkdir()
        for name in ("IMG_1.JPG", "IMG_1.xmp", "IMG_1.CR3"):
            os.rename(lib / "X" / name, lib / "Y" / name)
        assert placer.sync(scan=True) == []
        with store.read() as conn:
            rows = {decode_path(p).name: (decode_path(p).parent.name, kind) for p, kind in
                    conn.execute("SELECT path, kind FROM placements WHERE image_id = ?", (image,))}
            assert conn.execute("SELECT identity_id, pinned FROM faces WHERE image_id = ?",
                                (image,)).fetchone() == (y, 1)
            payload = json.loads(conn.execute("SELECT payload FROM history ORDER BY id DESC "
                                              "LIMIT 1").fetchone()[0])
        assert rows == {"IMG_1.JPG": ("Y", "main"), "IMG_1.xmp": ("Y", "companion"),
                        "IMG_1.CR3": ("Y", "companion")}
        assert payload["args"]["via"] == "library"
        # renamed in the store: the group follows the person's folder as one
        from facesortd.people.corrections import rename
        rename(store, y, "Yvonne")
        placer.sync()
        assert sorted(p.name for p in (lib / "Yvonne").iterdir()) == ["IMG_1.CR3", "IMG_1.JPG",
                                                                      "IMG_1.xmp"]

        # a placer without the corrections port learns nothing and leaves the file be
        bare = Placer(config, store)
        os.rename(lib / "X" / "IMG_2.JPG", lib / "Yvonne" / "IMG_2.JPG")
        assert bare.sync(scan=True) == []
        assert (lib / "Yvonne" / "IMG_2.JPG").exists()
        with store.read() as conn:
            assert conn.execute("SELECT identity_id, pinned FROM faces WHERE image_id != ?",
                                (image,)).fetchone() == (x, 0)
    finally:
        store.close()


def test_a_folder_deleted_is_one_correction_and_run_once_reads_the_library(lib, capsys):
    from facesortd.cli import main

    e = lib()
    people = e.people()
    paul, felix, rowling = people["Paul_McCartney"], people["Allyson_Felix"], people["JK_Rowling"]
    folder = e.folder(paul)
    images = [e.image_of(p) for p in e.photos(folder)]
    moved = e.photos(e.folder(felix))[0]
    face = e.largest_face(e.image_of(moved))[0]
    shutil.rmtree(folder)
    os.rename(moved, e.folder(rowling) / moved.name)
    before = len(e.history())
    e.close()

    config = str(e.root / "facesortd.yaml")
    assert main(["run", "--once", "--config", config]) == 0
    assert main(["status", "--config", config]) == 0
    assert f"images_removed: {len(images)} (photos deleted" in capsys.readouterr().out
    e.state = open_state(e.config)
    e.store, e.placer = e.state.store, e.state.placer
    made = e.history()[: len(e.history()) - before]
    assert sorted(h["op"] for h in made) == ["move_faces", "remove_images"]
    removal = next(h for h in made if h["op"] == "remove_images")
    assert sorted(removal["args"]["images"]) == sorted(images)
    with e.store.read() as conn:
        assert conn.execute("SELECT identity_id, pinned FROM faces WHERE id = ?",
                            (face,)).fetchone() == (rowling, 1)
    assert (e.folder(rowling) / moved.name).exists() and not folder.exists()
    e.recluster_and_sync()
    e.agree()


# -- layouts, multi_face links, the hash cache (made-up faces on real files: fake_ingest) --------

class Fake:
    """A store with made-up faces over real files, its placer wired to the corrections."""

    def __init__(self, fake, root: Path, placement: str = ""):
        from facesortd.config import parse_config

        self.fake = fake
        (root / "inbox").mkdir(parents=True)
        text = (f"library: {root / 'library'}\ninboxes:\n  - path: inbox\nwatch:\n  settle_ms: 0\n"
                + (f"placement:\n{placement}" if placement else ""))
        self.config = parse_config(text, root / "facesortd.yaml")
        self.inbox, self.lib = self.config.inboxes[0].path, self.config.library
        self.store = fake.open_store(self.config)
        self.placer = Placer(self.config, self.store, learn=from_library)

    def photo(self, name: str, identities, content: bytes | None = None, areas=None) -> int:
        path = self.inbox / name
        path.write_bytes(content if content is not None else os.urandom(64) + name.encode())
        os.utime(path, (1.6e9, 1.6e9))   # {year}: 2020
        return self.fake.fabricate(self.store, path, self.inbox, identities, areas)

    def faces(self, image: int) -> list[tuple]:
        with self.store.read() as conn:
            return conn.execute("SELECT identity_id, pinned, rejected FROM faces WHERE image_id = ? "
                                "ORDER BY id", (image,)).fetchall()


@pytest.fixture
def fake(tmp_path, fake_ingest):
    made = []

    def make(placement: str = "") -> Fake:
        made.append(Fake(fake_ingest, tmp_path / f"f{len(made)}", placement))
        return made[-1]

    yield make
    for f in made:
        f.store.close()


def test_a_layout_with_folders_before_the_person_and_one_without_a_person_folder(fake):
    f = fake("  layout: '{year}/{identity}/{name}{ext}'\n")
    x, y = (f.fake.new_identity(f.store, n) for n in ("X", "Y"))
    a = f.photo("a.jpg", [x])
    f.photo("b.jpg", [y])
    f.placer.sync()
    os.rename(f.lib / "2020" / "X" / "a.jpg", f.lib / "2020" / "Y" / "a.jpg")
    assert f.placer.sync(scan=True) == []
    assert f.faces(a) == [(y, 1, 0)]

    g = fake("  layout: '{identity}_{year}/{name}{ext}'\n")
    x = g.fake.new_identity(g.store, "X")
    a = g.photo("a.jpg", [x])
    g.photo("b.jpg", [x])
    g.placer.sync()
    (g.lib / "mine").mkdir()
    os.rename(g.lib / "X_2020" / "a.jpg", g.lib / "mine" / "a.jpg")
    (g.lib / "X_2020" / "b.jpg").unlink()
    assert g.placer.sync(scan=True) == []
    assert g.faces(a) == [(x, 0, 0)] and (g.lib / "mine" / "a.jpg").exists()   # left there
    assert g.placer.last_scan.left == 1 and g.placer.last_scan.removed == 1
    assert g.placer.sync(scan=True) == [] and g.placer.last_scan.moved == 0


def test_multi_face_all_a_link_moved_or_deleted_is_about_that_folders_face(fake):
    f = fake("  multi_face: all\n")
    x, y, z = (f.fake.new_identity(f.store, n) for n in ("X", "Y", "Z"))
    one = f.photo("one.jpg", [x, y], areas=[20.0, 10.0])
    two = f.photo("two.jpg", [x, y], areas=[20.0, 10.0])
    f.placer.sync()
    assert (f.lib / "Y" / "one.jpg").exists() and (f.lib / "Y" / "two.jpg").exists()
    (f.lib / "Z").mkdir(exist_ok=True)
    os.rename(f.lib / "Y" / "one.jpg", f.lib / "Z" / "one.jpg")   # Y's face is Z's
    (f.lib / "Y" / "two.jpg").unlink()                             # Y's face is not Y's
    f.placer.sync(scan=True)
    assert f.faces(one) == [(x, 0, 0), (z, 1, 0)]
    assert f.faces(two) == [(x, 0, 0), (None, 0, 0)]
    with f.store.read() as conn:
        assert conn.execute("SELECT COUNT(*) FROM cannot_link WHERE identity_id = ?", (y,)).fetchone() \
            == (1,)
    assert f.placer.sync(scan=True) == []
    assert not (f.lib / "Y" / "two.jpg").exists() and (f.lib / "X" / "two.jpg").exists()


def test_a_removal_undone_gives_the_faces_back_and_the_scan_hashes_only_what_changed(fake):
    from facesortd.people.corrections import undo

    f = fake()
    x = f.fake.new_identity(f.store, "X")
    ids = [f.photo(f"p{i}.jpg", [x], content=bytes([i]) * 100) for i in range(4)]
    f.placer.sync()
    (f.lib / "mine").mkdir()
    hand = f.lib / "mine" / "hand.jpg"
    hand.write_bytes(b"h" * 100)                 # a person's own file, the size of the placed ones
    (f.lib / "X" / "p0.jpg").unlink()
    f.placer.sync(scan=True)
    assert f.placer.last_scan.hashed == 1 and f.placer.last_scan.removed == 1
    (f.lib / "X" / "p1.jpg").unlink()
    f.placer.sync(scan=True)
    assert f.placer.last_scan.hashed == 0 and f.placer.last_scan.removed == 1   # from the cache
    os.utime(hand, (1.7e9, 1.7e9))
    (f.lib / "X" / "p2.jpg").unlink()
    f.placer.sync(scan=True)
    assert f.placer.last_scan.hashed == 1                                       # changed: again
    assert hand.read_bytes() == b"h" * 100
    assert f.faces(ids[2]) == [(None, 0, 1)]
    undo(f.store)                                # the last removal undone: the face is evidence again
    assert f.faces(ids[2]) == [(x, 0, 0)]
    assert f.placer.sync(scan=True) == [] and f.placer.last_scan.removed == 0
    assert f.store.counts()["images_removed"] == 2


def test_duplicates_a_renamed_file_and_an_original_deleted_beside_its_copy(fake):
    f = fake()
    x, y = (f.fake.new_identity(f.store, n) for n in ("X", "Y"))
    a = f.photo("a.jpg", [x], content=b"same" * 30)
    b = f.photo("b.jpg", [], content=b"same" * 30)        # the same bytes: a duplicate of a
    c = f.photo("c.jpg", [x])
    f.placer.sync()
    assert sorted(p.name for p in (f.lib / "X").iterdir()) == ["a.jpg", "b.jpg", "c.jpg"]
    # the copy dragged to Y: the face it shows (the original's) is Y's, and both follow
    os.rename(f.lib / "X" / "b.jpg", f.lib / "Y.jpg")
    (f.lib / "Y").mkdir()
    os.rename(f.lib / "Y.jpg", f.lib / "Y" / "b.jpg")
    f.placer.sync(scan=True)
    assert f.faces(a) == [(y, 1, 0)] and (f.lib / "Y" / "a.jpg").exists()
    # renamed in its own folder: taken for the same photo, and the name the person gave it is
    # kept, also when it follows its person to another folder
    os.rename(f.lib / "X" / "c.jpg", f.lib / "X" / "holiday.jpg")
    f.placer.sync(scan=True)
    assert f.placer.last_scan.moved == 1 and f.faces(c) == [(x, 0, 0)]
    assert not (f.lib / "X" / "c.jpg").exists() and (f.lib / "X" / "holiday.jpg").exists()
    assert f.placer.sync(scan=True) == []
    from facesortd.people.corrections import rename
    rename(f.store, x, "Xavier")
    f.placer.sync(scan=True)
    assert sorted(p.name for p in (f.lib / "Xavier").iterdir()) == ["holiday.jpg"]
    assert f.faces(c) == [(x, 0, 0)]
    # the original deleted, its copy kept: the copy stays where it is (not sent to _noface)
    (f.lib / "Y" / "a.jpg").unlink()
    f.placer.sync(scan=True)
    assert f.placer.last_scan.removed == 1 and f.faces(a) == [(None, 0, 1)]
    assert f.placer.sync(scan=True) == [] and (f.lib / "Y" / "b.jpg").exists()
    with f.store.read() as conn:
        assert conn.execute("SELECT removed_at IS NULL FROM images WHERE id = ?", (b,)).fetchone() == (1,)


# -- a file at a row's path is not proof that it is the row's file (issue 19) -----------------

def _swap(f: "Fake", action: str) -> None:
    """Two placed photos named IMG_1.jpg in X/ and Y/: Y's dragged into Z/, then X's onto the
    path Y's row still names. The scan tells them apart: X's is Y's now, Y's is Z's, and
    nothing is taken for deleted."""
    x, y, z = (f.fake.new_identity(f.store, n) for n in ("X", "Y", "Z"))
    for name, who in (("x.jpg", x), ("y.jpg", y), ("z.jpg", z)):
        f.photo(name, [who])
    (f.inbox / "a").mkdir()
    (f.inbox / "b").mkdir()
    a = f.photo("a/IMG_1.jpg", [x], content=b"x" * 300)
    b = f.photo("b/IMG_1.jpg", [y], content=b"y" * 300)   # the same size...
    os.utime(f.inbox / "b" / "IMG_1.jpg", (1.7e9, 1.7e9))   # ...not the same mtime
    with f.store.transaction() as conn:
        conn.execute("UPDATE images SET mtime_ns = ? WHERE id = ?", (int(1.7e18), b))
    f.placer.sync()
    os.rename(f.lib / "Y" / "IMG_1.jpg", f.lib / "Z" / "IMG_1.jpg")
    os.rename(f.lib / "X" / "IMG_1.jpg", f.lib / "Y" / "IMG_1.jpg")
    if action == "symlink":
        assert os.readlink(f.lib / "Y" / "IMG_1.jpg") == str(f.inbox / "a" / "IMG_1.jpg")
    f.placer.sync(scan=True)
    assert f.placer.last_scan.removed == 0 and f.placer.last_scan.moved == 2
    assert f.faces(a) == [(y, 1, 0)] and f.faces(b) == [(z, 1, 0)]
    assert f.placer.sync(scan=True) == [] and f.placer.last_scan.moved == 0
    assert f.store.counts()["images_removed"] == 0


@pytest.mark.parametrize("action", ["move", "copy", "hardlink", "symlink"])
def test_a_photo_dragged_onto_the_path_another_left_is_told_apart(fake, action):
    _swap(fake(f"  action: {action}\n"), action)


def test_a_photo_touched_edited_or_replaced_in_place(fake):
    """What a row's path holds, when it is not the row's file as placed: touched (the same bytes:
    hashed once, then from the cache), edited in place or replaced by the person's own file while
    the photo went elsewhere."""
    f = fake()
    x, y = (f.fake.new_identity(f.store, n) for n in ("X", "Y"))
    a = f.photo("a.jpg", [x], content=b"a" * 200)
    b = f.photo("b.jpg", [x], content=b"b" * 210)
    c = f.photo("c.jpg", [y], content=b"c" * 220)
    f.photo("d.jpg", [y])                                         # Y keeps a photo: no merge
    f.placer.sync()
    os.utime(f.lib / "X" / "a.jpg", (1.75e9, 1.75e9))
    (f.lib / "X" / "b.jpg").write_bytes(b"edited" * 50)
    os.rename(f.lib / "Y" / "c.jpg", f.lib / "X" / "c.jpg")
    (f.lib / "Y" / "c.jpg").write_bytes(b"mine" * 55)            # the size of c: hashed, not c
    f.placer.sync(scan=True)
    s = f.placer.last_scan
    assert (s.moved, s.removed) == (1, 0)
    assert f.faces(a) == [(x, 0, 0)] and f.faces(b) == [(x, 0, 0)] and f.faces(c) == [(x, 1, 0)]
    assert f.placer.sync(scan=True) == []
    assert (f.placer.last_scan.moved, f.placer.last_scan.removed, f.placer.last_scan.hashed) == \
        (0, 0, 0)
    assert (f.lib / "Y" / "c.jpg").read_bytes() == b"mine" * 55     # the person's file, left alone
    assert (f.lib / "X" / "b.jpg").read_bytes() == b"edited" * 50
    assert f.store.counts()["images_removed"] == 0


def test_watcher_paths_read_only_their_rows_non_utf8_names_included(fake):
    """A scan of event paths reads the rows at or under them by index ranges, text and raw-byte
    paths (a name that is not UTF-8) alike, and walks only there (``files``)."""
    f = fake()
    x, y = (f.fake.new_identity(f.store, n) for n in ("X", "Y"))
    odd = os.fsdecode(b"caf\xe9.jpg")
    a = f.photo("a.jpg", [x])
    b = f.photo(odd, [x], content=os.urandom(99))
    f.photo("y.jpg", [y])
    f.placer.sync()
    assert (f.lib / "X" / odd).exists()
    (f.lib / "Y2").mkdir()
    os.rename(f.lib / "X" / odd, f.lib / "Y2" / odd)      # a raw-byte path into a new folder
    f.placer.sync(scan=[f.lib / "X" / odd, f.lib / "Y2" / odd])
    assert (f.placer.last_scan.files, f.placer.last_scan.moved) == (1, 1)
    assert f.faces(b) == [(f.faces(b)[0][0], 1, 0)] and f.faces(b)[0][0] not in (x, y)
    os.rename(f.lib / "X", f.lib / "Xavier")              # the rest of X's folder: a rename
    f.placer.sync(scan=[f.lib / "X", f.lib / "Xavier"])
    assert f.placer.last_scan.files == 1
    assert f.placer.last_scan.corrections == [("rename", {"identity": x, "name": "Xavier"})]
    assert f.faces(a) == [(x, 0, 0)]
    assert f.placer.sync(scan=True) == [] and f.placer.last_scan.moved == 0


# -- a photo moved where it meant nothing ('gone') and on again (issue 19) ---------------------

def _kind(f: "Fake", image: int) -> list[tuple[str, str]]:
    """(path inside the library, kind) of the image's placement rows."""
    with f.store.read() as conn:
        return [(str(decode_path(p).relative_to(f.lib)), k) for p, k in conn.execute(
            "SELECT path, kind FROM placements WHERE image_id = ? ORDER BY id", (image,))]


def _gone_setup(f: "Fake") -> tuple[int, int, int]:
    """X and Y with two photos each; X's a.jpg dragged into _groups/: left there, not managed."""
    x, y = (f.fake.new_identity(f.store, n) for n in ("X", "Y"))
    a = f.photo("a.jpg", [x])
    for name, who in (("x.jpg", x), ("y.jpg", y), ("y2.jpg", y)):
        f.photo(name, [who])
    f.placer.sync()
    (f.lib / "_groups").mkdir()
    os.rename(f.lib / "X" / "a.jpg", f.lib / "_groups" / "a.jpg")
    assert f.placer.sync(scan=True) == []
    assert f.placer.last_scan.left == 1 and _kind(f, a) == [("_groups/a.jpg", "gone")]
    return x, y, a


def test_a_photo_dragged_into_groups_and_back_into_a_persons_folder_is_managed_again(fake):
    from facesortd.people.corrections import rename

    f = fake()
    x, y, a = _gone_setup(f)
    # not managed: a recluster's rename of X leaves it in _groups/
    rename(f.store, x, "Xena")
    f.placer.sync(scan=True)
    assert (f.lib / "_groups" / "a.jpg").exists() and _kind(f, a) == [("_groups/a.jpg", "gone")]
    os.rename(f.lib / "_groups" / "a.jpg", f.lib / "Y" / "a.jpg")
    assert f.placer.sync(scan=True) == []
    s = f.placer.last_scan
    assert (s.moved, s.returned, s.left, s.removed) == (1, 1, 0, 0)
    assert f.faces(a) == [(y, 1, 0)]                                   # pinned to Y
    assert _kind(f, a) == [("Y/a.jpg", "main")]
    with f.store.read() as conn:
        face = conn.execute("SELECT id FROM faces WHERE image_id = ?", (a,)).fetchone()[0]
    assert f.placer.last_scan.corrections == [("move_faces", {"faces": [face], "to": y})]
    # managed again: Y renamed, the photo follows
    rename(f.store, y, "Yvonne")
    f.placer.sync(scan=True)
    assert sorted(p.name for p in (f.lib / "Yvonne").iterdir()) == ["a.jpg", "y.jpg", "y2.jpg"]
    assert _kind(f, a) == [("Yvonne/a.jpg", "main")]
    assert f.placer.sync(scan=True) == [] and f.placer.last_scan.moved == 0


def test_a_photo_dragged_into_groups_then_into_unsorted_is_not_that_person(fake):
    f = fake()
    x, y, a = _gone_setup(f)
    (f.lib / "_unsorted").mkdir(exist_ok=True)
    os.rename(f.lib / "_groups" / "a.jpg", f.lib / "_unsorted" / "a.jpg")
    assert f.placer.sync(scan=True) == []
    assert f.placer.last_scan.returned == 1
    assert f.faces(a) == [(None, 0, 0)]
    with f.store.read() as conn:
        assert conn.execute("SELECT COUNT(*) FROM cannot_link WHERE identity_id = ?",
                            (x,)).fetchone() == (1,)
    assert _kind(f, a) == [("_unsorted/a.jpg", "main")]
    assert f.placer.sync(scan=True) == [] and (f.lib / "_unsorted" / "a.jpg").exists()


def test_a_gone_photo_moved_on_where_it_means_nothing_or_deleted_is_never_removed(fake):
    f = fake("  action: copy\n")          # the inbox keeps the original: nothing may place it again
    x, y, a = _gone_setup(f)
    # from _groups/ to a folder the layout says nothing about: the row follows, still not managed
    (f.lib / "mine" / "deeper").mkdir(parents=True)
    os.rename(f.lib / "_groups" / "a.jpg", f.lib / "mine" / "deeper" / "a.jpg")
    assert f.placer.sync(scan=True) == []
    s = f.placer.last_scan
    assert (s.moved, s.returned, s.removed) == (1, 0, 0)
    assert _kind(f, a) == [("mine/deeper/a.jpg", "gone")] and f.faces(a) == [(x, 0, 0)]
    # deleted there: not removed (it was not placed when it went), the row stays gone
    (f.lib / "mine" / "deeper" / "a.jpg").unlink()
    (f.lib / "X" / "hand.jpg").write_bytes(b"h" * 8)     # a file nobody claims: gone rows looked at
    assert f.placer.sync(scan=True) == []
    s = f.placer.last_scan
    assert (s.moved, s.returned, s.removed) == (0, 0, 0)
    assert f.store.counts()["images_removed"] == 0 and f.faces(a) == [(x, 0, 0)]
    assert _kind(f, a) == [("mine/deeper/a.jpg", "gone")]
    assert not (f.lib / "X" / "a.jpg").exists() and (f.inbox / "a.jpg").exists()
    with f.store.read() as conn:
        assert conn.execute("SELECT removed_at FROM images WHERE id = ?", (a,)).fetchone() == (None,)
    # its bytes dropped into a person's folder later: it is that photo, managed again
    shutil.copy2(f.inbox / "a.jpg", f.lib / "Y" / "again.jpg")
    f.placer.sync(scan=[f.lib / "Y" / "again.jpg"])
    assert f.placer.last_scan.returned == 1 and f.faces(a) == [(y, 1, 0)]
    assert _kind(f, a) == [("Y/again.jpg", "main")]


def test_event_paths_of_a_gone_photo_moved_back(fake):
    """Placer.sync(scan=[paths]): both ends of the move (the gone row's path among them), or only
    the new path (a file nobody claims: the gone rows are looked at)."""
    f = fake()
    x, y, a = _gone_setup(f)
    b = f.photo("b.jpg", [y])
    f.placer.sync()
    os.rename(f.lib / "Y" / "b.jpg", f.lib / "_groups" / "b.jpg")
    f.placer.sync(scan=[f.lib / "Y" / "b.jpg", f.lib / "_groups" / "b.jpg"])
    assert _kind(f, b) == [("_groups/b.jpg", "gone")]
    # both ends
    os.rename(f.lib / "_groups" / "a.jpg", f.lib / "X" / "a.jpg")
    f.placer.sync(scan=[f.lib / "_groups" / "a.jpg", f.lib / "X" / "a.jpg"])
    s = f.placer.last_scan
    assert (s.files, s.moved, s.returned) == (1, 1, 1)
    assert _kind(f, a) == [("X/a.jpg", "main")] and f.faces(a) == [(x, 0, 0)]   # its own person
    assert s.corrections == []
    # only the new end, into a folder made by hand: a new person
    (f.lib / "Zoe").mkdir()
    os.rename(f.lib / "_groups" / "b.jpg", f.lib / "Zoe" / "b.jpg")
    f.placer.sync(scan=[f.lib / "Zoe" / "b.jpg"])
    assert f.placer.last_scan.returned == 1 and _kind(f, b) == [("Zoe/b.jpg", "main")]
    with f.store.read() as conn:
        zoe = conn.execute("SELECT id FROM identities WHERE name = 'Zoe'").fetchone()[0]
    assert f.faces(b) == [(zoe, 1, 0)]
    # only the old end of a gone photo's move: nothing is taken for deleted, no full scan needed
    os.rename(f.lib / "X" / "a.jpg", f.lib / "_groups" / "a.jpg")
    f.placer.sync(scan=True)
    os.rename(f.lib / "_groups" / "a.jpg", f.lib / "_groups" / "a2.jpg")
    f.placer.sync(scan=[f.lib / "_groups" / "a.jpg"])
    assert f.placer.last_scan.removed == 0 and f.store.counts()["images_removed"] == 0
    assert f.placer.sync(scan=True) == [] and _kind(f, a) == [("_groups/a2.jpg", "gone")]
    assert f.placer.sync(scan=True) == [] and f.placer.last_scan.moved == 0


def test_a_gone_photo_and_its_companion_back_in_a_folder_and_a_dry_run(fake):
    """Its companion comes back with it, tracked at its new place; a dry run says what the move
    means and changes nothing."""
    f = fake()
    x, y = (f.fake.new_identity(f.store, n) for n in ("X", "Y"))
    (f.inbox / "IMG_1.xmp").write_bytes(b"<xmp/>" * 9)
    a = f.photo("IMG_1.JPG", [x])
    for name, who in (("x.jpg", x), ("y.jpg", y)):
        f.photo(name, [who])
    f.placer.sync()
    assert (f.lib / "X" / "IMG_1.xmp").exists()
    (f.lib / "_groups").mkdir()
    for name in ("IMG_1.JPG", "IMG_1.xmp"):
        os.rename(f.lib / "X" / name, f.lib / "_groups" / name)
    f.placer.sync(scan=True)
    assert _kind(f, a) == [("_groups/IMG_1.JPG", "gone"), ("_groups/IMG_1.xmp", "companion")]
    for name in ("IMG_1.JPG", "IMG_1.xmp"):
        os.rename(f.lib / "_groups" / name, f.lib / "Y" / name)
    assert f.placer.sync(scan=True, dry_run=True) == []
    assert f.placer.last_scan.returned == 1 and f.placer.last_scan.corrections[0][0] == "move_faces"
    assert _kind(f, a) == [("_groups/IMG_1.JPG", "gone"), ("_groups/IMG_1.xmp", "companion")]
    assert f.faces(a) == [(x, 0, 0)]
    assert f.placer.sync(scan=True) == []
    assert _kind(f, a) == [("Y/IMG_1.JPG", "main"), ("Y/IMG_1.xmp", "companion")]
    assert f.faces(a) == [(y, 1, 0)]
    from facesortd.people.corrections import rename
    rename(f.store, y, "Yvonne")
    f.placer.sync(scan=True)
    assert sorted(p.name for p in (f.lib / "Yvonne").iterdir()) == ["IMG_1.JPG", "IMG_1.xmp", "y.jpg"]
