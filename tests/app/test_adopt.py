"""``facesortd adopt DIR`` (issue 16, item 4) on real photos: a tree of ``<Person Name>/*.jpg``
adopted outside the library, inside it and with ``--import``; dry runs that write nothing; a
second run that adds nothing; new inbox photos that join the adopted people; bad input."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import time
from pathlib import Path

import pytest

from facesortd.app.daemon import Daemon
from facesortd.cli import main
from facesortd.config import parse_config
from facesortd.people.corrections import rename, undo
from facesortd.store.database import Store
from facesortd.store.lock import StateLock

pytest.importorskip("dlib", reason="the dlib extra is installed by `make test`")

PEOPLE = ("Allyson_Felix", "Fujio_Cho", "JK_Rowling")


def make_config(root: Path):
    (root / "inbox").mkdir(parents=True, exist_ok=True)
    text = ("inboxes:\n  - path: inbox\n    mode: detect\n"
            "watch:\n  settle_ms: 100\n  rescan_interval_s: 0\n"
            "embedder:\n  name: dlib\n  batch_size: 16\n  max_wait_ms: 50\n"
            "web:\n  enabled: false\n")
    (root / "facesortd.yaml").write_text(text)
    return parse_config(text, root / "facesortd.yaml")


def photos(data_dir: Path, person: str) -> list[Path]:
    return sorted((data_dir / "faces" / person).iterdir())


def build_tree(dir_: Path, data_dir: Path, first: int = 0, count: int = 3) -> dict[str, list[Path]]:
    """``<Person Name>/`` folders (the name with spaces, as people keep them) with ``count``
    photos each, one of them a folder deeper; a group photo and a photo with no face in a
    person's folder, a broken file, and a photo directly in DIR."""
    out: dict[str, list[Path]] = {}
    for person in PEOPLE:
        folder = dir_ / person.replace("_", " ")
        folder.mkdir(parents=True, exist_ok=True)
        for k, f in enumerate(photos(data_dir, person)[first:first + count]):
            dst = (folder / "2019" if k == 0 else folder) / f.name
            dst.parent.mkdir(exist_ok=True)
            shutil.copyfile(f, dst)
            out.setdefault(person, []).append(dst)
    shutil.copyfile(data_dir / "scenes" / "obama_and_biden.jpg", dir_ / "Allyson Felix" / "group.jpg")
    shutil.copyfile(data_dir / "nonfaces" / "dog.jpg", dir_ / "Fujio Cho" / "dog.jpg")
    (dir_ / "JK Rowling" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    shutil.copyfile(photos(data_dir, "Paul_McCartney")[0], dir_ / "loose.jpg")
    return out


def tree_state(dir_: Path) -> dict[str, tuple[str, int]]:
    """Every file under ``dir_``: (sha256, mtime_ns), to show that nothing was touched."""
    return {str(p.relative_to(dir_)): (hashlib.sha256(p.read_bytes()).hexdigest(),
                                       p.stat().st_mtime_ns)
            for p in sorted(dir_.rglob("*")) if p.is_file()}


def adopt(capsys, config_path: Path, *args: str) -> tuple[int, dict]:
    code = main(["adopt", "--config", str(config_path), "--json", *args])
    out = capsys.readouterr()
    return code, (json.loads(out.out) if code == 0 else {"stderr": out.err})


def people(state: Path) -> dict[str, list[tuple[int, int]]]:
    """name -> [(face id, pinned)] of the live named people."""
    with sqlite3.connect(state / "facesortd.db") as conn:
        rows = conn.execute("SELECT i.name, f.id, f.pinned FROM faces f JOIN identities i ON "
                            "i.id = f.identity_id WHERE i.merged_into IS NULL AND i.name IS NOT NULL "
                            "AND f.rejected = 0 ORDER BY f.id").fetchall()
    out: dict[str, list] = {}
    for name, face, pinned in rows:
        out.setdefault(name, []).append((face, pinned))
    return out


def placements(state: Path) -> dict[str, str]:
    with sqlite3.connect(state / "facesortd.db") as conn:
        return {path: kind for path, kind in conn.execute("SELECT path, kind FROM placements "
                                                          "WHERE image_id IS NOT NULL")}


def test_adopt_outside_the_library_then_new_photos_join(tmp_path, data_dir, capsys):
    config = make_config(tmp_path)
    cfg = tmp_path / "facesortd.yaml"
    sorted_dir = tmp_path / "sorted"
    adopted = build_tree(sorted_dir, data_dir)
    before = tree_state(sorted_dir)

    code, dry = adopt(capsys, cfg, str(sorted_dir), "--dry-run")
    assert code == 0 and dry["dry_run"]
    assert sorted(dry["people_created"]) == ["Allyson Felix", "Fujio Cho", "JK Rowling"]
    assert dry["faces_pinned"] == 9
    assert not (tmp_path / "state").exists()            # not even a store
    assert tree_state(sorted_dir) == before

    code, report = adopt(capsys, cfg, str(sorted_dir))
    assert code == 0
    assert report["where"] == "outside"
    assert sorted(report["people_created"]) == ["Allyson Felix", "Fujio Cho", "JK Rowling"]
    assert report["faces_pinned"] == report["photos_adopted"] == 9
    assert report["skipped"] == {"multi_face": 1, "no_face": 1, "unreadable": 1,
                                 "not_in_person_folder": 1}
    why = {Path(s["path"]).name: s["reason"] for s in report["skipped_photos"]}
    assert why == {"group.jpg": "multi_face", "dog.jpg": "no_face", "broken.jpg": "unreadable",
                   "loose.jpg": "not_in_person_folder"}
    found = people(config.state_dir)
    assert {n: len(f) for n, f in found.items()} == {"Allyson Felix": 3, "Fujio Cho": 3,
                                                     "JK Rowling": 3}
    assert all(pinned for faces in found.values() for _, pinned in faces)
    assert set(placements(config.state_dir).values()) == {"kept"}
    assert tree_state(sorted_dir) == before             # nothing moved, renamed or touched

    code, again = adopt(capsys, cfg, str(sorted_dir))   # twice: nothing new
    assert code == 0 and again["photos_adopted"] == 0 and again["people_created"] == []
    assert again["skipped"]["already_adopted"] == 9
    assert people(config.state_dir) == found
    # the same content under another name, in another folder: known by its sha256, not added
    copy = tmp_path / "copies" / "Someone" / "same.jpg"
    copy.parent.mkdir(parents=True)
    shutil.copyfile(adopted["JK_Rowling"][1], copy)
    code, known = adopt(capsys, cfg, str(tmp_path / "copies"), "--dry-run")
    assert code == 0 and known["photos_adopted"] == 0 and known["people_created"] == []
    assert known["skipped"] == {"already_in_store": 1}
    assert known["skipped_photos"][0]["why"].endswith(f", {adopted['JK_Rowling'][1]})")

    # new photos of the same people, dropped into the inbox later, join them
    for person in PEOPLE:
        for f in photos(data_dir, person)[3:5]:
            shutil.copyfile(f, tmp_path / "inbox" / f.name)
    Daemon(config).run_once(timeout=600)
    for person in PEOPLE:
        folder = config.library / person.replace("_", " ")
        assert sorted(p.name for p in folder.iterdir()) == \
            sorted(f.name for f in photos(data_dir, person)[3:5]), person
    after = people(config.state_dir)
    assert {n: len(f) for n, f in after.items()} == {"Allyson Felix": 5, "Fujio Cho": 5,
                                                     "JK Rowling": 5}
    assert tree_state(sorted_dir) == before             # the kept photos never move
    assert all(p.exists() for files in adopted.values() for p in files)


def test_adopt_inside_the_library(tmp_path, data_dir, capsys):
    config = make_config(tmp_path)
    cfg = tmp_path / "facesortd.yaml"
    # a person made earlier (from another folder), with a name that differs only in case
    (tmp_path / "old" / "fujio cho").mkdir(parents=True)
    shutil.copyfile(photos(data_dir, "Fujio_Cho")[5], tmp_path / "old" / "fujio cho" / "a.jpg")
    code, first = adopt(capsys, cfg, str(tmp_path / "old"))
    assert code == 0 and first["people_created"] == ["fujio cho"]

    library = config.library
    build_tree(library, data_dir)
    (library / "loose.jpg").unlink()
    (library / "_unsorted").mkdir()
    shutil.copyfile(photos(data_dir, "JK_Rowling")[4], library / "_unsorted" / "x.jpg")
    photo = library / "JK Rowling" / photos(data_dir, "JK_Rowling")[1].name
    sidecar = photo.with_suffix(".xmp")
    sidecar.write_text("<x:xmpmeta xmlns:x='adobe:ns:meta/'/>")
    before = tree_state(library)

    code, dry = adopt(capsys, cfg, str(library), "--dry-run")
    assert code == 0 and dry["photos_adopted"] == 9 and dry["where"] == "library"
    assert "history" not in dry             # no History row to undo: it was rolled back
    assert tree_state(library) == before
    assert len(people(config.state_dir)["fujio cho"]) == 1     # the dry run wrote nothing

    code, report = adopt(capsys, cfg, str(library))
    assert code == 0 and isinstance(report["history"], int)
    assert sorted(report["people_created"]) == ["Allyson Felix", "JK Rowling"]
    assert [(p["name"], p["folder"]) for p in report["people_reused"]] == [("fujio cho", "Fujio Cho")]
    assert report["skipped"]["special_folder"] == 1
    # not where the layout puts them, so the next run moves them (and says so now): the photos
    # one folder deeper, and Fujio Cho's, whose person's folder is "fujio cho"
    fujio = sorted(p.relative_to(library) for p in (library / "Fujio Cho").rglob("*.jpg")
                   if p.name != "dog.jpg")
    nested = sorted(p.relative_to(library) for p in library.glob("*/2019/*.jpg"))
    wanted = {library / rel.parts[0] / rel.name for rel in nested}
    wanted = {p.parent.with_name("fujio cho") / p.name if p.parent.name == "Fujio Cho" else p
              for p in wanted} | {library / "fujio cho" / rel.name for rel in fujio}
    assert sorted(report["next_run_moves"]) == sorted(
        f"move {library / rel} -> {dst}" for rel, dst in zip(
            sorted(set(nested) | set(fujio)),
            [next(w for w in wanted if w.name == rel.name) for rel in sorted(set(nested) | set(fujio))]))
    assert tree_state(library) == before                # adopt itself touches nothing
    kinds = placements(config.state_dir)
    assert kinds[str(photo)] == "main" and kinds[str(sidecar)] == "companion"
    assert len(people(config.state_dir)["fujio cho"]) == 4

    Daemon(config).run_once(timeout=600)                # the moves announced, and no other
    assert not any(library.glob("*/2019/*.jpg"))
    assert all(w.is_file() for w in wanted)
    assert photo.is_file() and sidecar.is_file()        # where the layout wants them: untouched
    assert (library / "Fujio Cho" / "dog.jpg").is_file()   # never adopted, never touched

    with Store.open(config.state_dir, load_vectors=False) as store:   # they follow their person
        with store.read() as conn:
            jk = conn.execute("SELECT id FROM identities WHERE name = 'JK Rowling'").fetchone()[0]
        rename(store, jk, "Joanne Rowling")
    Daemon(config).run_once(timeout=600)
    moved = library / "Joanne Rowling" / photo.name
    assert moved.is_file() and moved.with_suffix(".xmp").is_file()
    assert [p.name for p in (library / "JK Rowling").rglob("*")] == ["broken.jpg"]   # not adopted
    assert (library / "_unsorted" / "x.jpg").is_file()   # never adopted, never touched


def test_adopt_import(tmp_path, data_dir, capsys):
    config = make_config(tmp_path)
    cfg = tmp_path / "facesortd.yaml"
    sorted_dir = tmp_path / "sorted"
    build_tree(sorted_dir, data_dir, count=2)
    before = tree_state(sorted_dir)

    code, dry = adopt(capsys, cfg, str(sorted_dir), "--import", "--dry-run")
    assert code == 0 and len(dry["would_import"]) == 6
    assert not (tmp_path / "state").exists() and not config.library.exists()

    # a plain adopt first (kept where they are), then --import copies those in too
    code, plain = adopt(capsys, cfg, str(sorted_dir / ".." / "sorted"))
    assert code == 0 and plain["photos_adopted"] == 6 and not config.library.exists()
    code, dry = adopt(capsys, cfg, str(sorted_dir), "--import", "--dry-run")
    assert code == 0 and dry["imports_resumed"] == 6 and not config.library.exists()
    code, report = adopt(capsys, cfg, str(sorted_dir), "--import")
    assert code == 0 and report["imported"] == 6 and report["import_failed"] == []
    assert report["imports_resumed"] == 6 and report["photos_adopted"] == 0
    for person in PEOPLE:
        folder = config.library / person.replace("_", " ")
        assert sorted(p.name for p in folder.iterdir()) == \
            sorted(f.name for f in photos(data_dir, person)[:2])
        for p in folder.iterdir():
            assert p.read_bytes() == (data_dir / "faces" / person / p.name).read_bytes()
    assert tree_state(sorted_dir) == before

    code, again = adopt(capsys, cfg, str(sorted_dir), "--import")   # nothing twice
    assert code == 0 and again["imported"] == 0 and again["photos_adopted"] == 0
    assert sum(1 for _ in config.library.rglob("*.jpg")) == 6

    # new photos join; the copies follow their people, the originals stay as they are
    for f in photos(data_dir, "JK_Rowling")[3:5]:
        shutil.copyfile(f, tmp_path / "inbox" / f.name)
    Daemon(config).run_once(timeout=600)
    assert len(list((config.library / "JK Rowling").iterdir())) == 4
    assert tree_state(sorted_dir) == before
    with sqlite3.connect(config.state_dir / "facesortd.db") as conn:
        rows = conn.execute("SELECT kind, action FROM placements WHERE image_id IS NOT NULL").fetchall()
    assert sorted(set(rows)) == [("kept", "none"), ("main", "copy"), ("main", "move")]

    # a photo added to DIR later is imported by the next run, with a fresh name if taken
    extra = photos(data_dir, "Fujio_Cho")[2]
    shutil.copyfile(extra, sorted_dir / "Fujio Cho" / photos(data_dir, "Fujio_Cho")[0].name
                    .replace(".jpg", "_b.jpg"))
    (config.library / "Fujio Cho" / "Fujio_Cho_0001_b.jpg").write_bytes(b"someone else's")
    code, late = adopt(capsys, cfg, str(sorted_dir), "--import")
    assert code == 0 and late["imported"] == 1
    assert (config.library / "Fujio Cho" / "Fujio_Cho_0001_b.jpg").read_bytes() == b"someone else's"
    assert (config.library / "Fujio Cho" / "Fujio_Cho_0001_b_1.jpg").read_bytes() == extra.read_bytes()


def test_bad_input(tmp_path, data_dir, capsys):
    config = make_config(tmp_path)
    cfg = tmp_path / "facesortd.yaml"
    (tmp_path / "sorted" / "Ann").mkdir(parents=True)
    shutil.copyfile(photos(data_dir, "Fujio_Cho")[0], tmp_path / "sorted" / "Ann" / "a.jpg")
    config.state_dir.mkdir()
    config.library.mkdir()
    cases = [(tmp_path / "missing", 7, "no such folder"),
             (tmp_path / "inbox", 7, "overlaps inbox"),
             (config.state_dir, 7, "overlaps the state folder"),
             (tmp_path, 7, "holds the library")]
    for path, code, text in cases:
        got, out = adopt(capsys, cfg, str(path))
        assert (got, text in out["stderr"]) == (code, True), (path, out)
    got, out = adopt(capsys, cfg, str(config.library), "--import")
    assert got == 7 and "already in it" in out["stderr"]

    Store.open(config.state_dir).close()
    lock = StateLock(config.state_dir)                   # a daemon holds the state folder
    lock.acquire()
    try:
        for extra in ((), ("--dry-run",)):
            got, out = adopt(capsys, cfg, str(tmp_path / "sorted"), *extra)
            assert got == 1 and f"pid {os.getpid()}" in out["stderr"]
    finally:
        lock.release()
    with sqlite3.connect(config.state_dir / "facesortd.db") as conn:
        assert conn.execute("SELECT COUNT(*) FROM images").fetchone() == (0,)


def test_adopt_reads_camera_formats(tmp_path, data_dir, capsys):
    """HEIC through pillow-heif, a lone RAW (its preview stripped: no face, not broken), and a
    JPEG's RAW twin and sidecar, which are its companions, not photos (a dry run)."""
    Image = pytest.importorskip("PIL.Image")
    pytest.importorskip("pillow_heif")
    make_config(tmp_path)
    folder = tmp_path / "sorted" / "Fujio Cho"
    folder.mkdir(parents=True)
    src = photos(data_dir, "Fujio_Cho")
    with Image.open(src[0]) as im:
        im.save(folder / "phone.heic", quality=90)
    shutil.copyfile(src[1], folder / "IMG_1.jpg")
    shutil.copyfile(data_dir / "camera" / "CanonRaw.cr3", folder / "IMG_1.CR3")
    shutil.copyfile(data_dir / "camera" / "XMP.xmp", folder / "IMG_1.xmp")
    shutil.copyfile(data_dir / "camera" / "Nikon.nef", folder / "lone.nef")
    shutil.copyfile(data_dir / "camera" / "truncated.heic", folder / "cut.heic")
    code, report = adopt(capsys, tmp_path / "facesortd.yaml", str(tmp_path / "sorted"), "--dry-run")
    assert code == 0 and report["photos_adopted"] == 2
    why = {Path(s["path"]).name: s for s in report["skipped_photos"]}
    assert sorted(why) == ["cut.heic", "lone.nef"]
    assert why["lone.nef"]["reason"] == "no_face" and "preview" in why["lone.nef"]["why"]
    assert why["cut.heic"]["reason"] == "unreadable" and "truncated" in why["cut.heic"]["why"]


def test_adopt_aligned_crops(tmp_path, data_dir, capsys):
    """Every inbox aligned: adopted photos are face crops too, one face each, recorded under the
    aligned inbox (whose mode says how their faces were cut)."""
    config = make_config(tmp_path)
    text = (tmp_path / "facesortd.yaml").read_text().replace("mode: detect", "mode: aligned")
    (tmp_path / "facesortd.yaml").write_text(text)
    crops = sorted((data_dir / "faces_cropped").iterdir())[:2]
    for person in crops:
        (tmp_path / "sorted" / person.name).mkdir(parents=True)
        for f in sorted(person.iterdir())[:2]:
            shutil.copyfile(f, tmp_path / "sorted" / person.name / f.name)
    code, report = adopt(capsys, tmp_path / "facesortd.yaml", str(tmp_path / "sorted"))
    assert code == 0 and report["photos_adopted"] == 4 and report["skipped"] == {}
    with sqlite3.connect(config.state_dir / "facesortd.db") as conn:
        inboxes = {r[0] for r in conn.execute("SELECT inbox FROM images")}
        boxes = conn.execute("SELECT box_x1, box_y1 FROM faces").fetchall()
    assert inboxes == {str(config.inboxes[0].path)} and set(boxes) == {(0.0, 0.0)}
    assert sorted(people(config.state_dir)) == sorted(p.name for p in crops)

    with Store.open(config.state_dir, load_vectors=False) as store:
        assert [u["op"] for u in undo(store)] == ["adopt"]   # as a correction on the page
    assert people(config.state_dir) == {}
    with sqlite3.connect(config.state_dir / "facesortd.db") as conn:
        assert conn.execute("SELECT COUNT(*), SUM(pinned) FROM faces").fetchone() == (4, 0)


def test_identity_service_assigns_new_faces_to_adopted_people(tmp_path, data_dir, capsys):
    """The incremental step alone, before any recluster: faces of new inbox photos go to the
    adopted (pinned, named) person they are nearest to."""
    config = make_config(tmp_path)
    sorted_dir = tmp_path / "sorted"
    for person in PEOPLE[:2]:
        (sorted_dir / person).mkdir(parents=True)
        for f in photos(data_dir, person)[:3]:
            shutil.copyfile(f, sorted_dir / person / f.name)
    code, report = adopt(capsys, tmp_path / "facesortd.yaml", str(sorted_dir))
    assert code == 0 and report["faces_pinned"] == 6
    with sqlite3.connect(config.state_dir / "facesortd.db") as conn:
        named = dict(conn.execute("SELECT name, id FROM identities"))
        last = conn.execute("SELECT MAX(id) FROM faces").fetchone()[0]

    from facesortd.inbox.jobs import Job

    daemon = Daemon(config)
    daemon.open()                       # the identity thread is not started: assign() runs here
    try:
        daemon.pipeline.start()
        new = [f for person in PEOPLE[:2] for f in photos(data_dir, person)[3:5]]
        for f in new:
            dst = tmp_path / "inbox" / f.name
            shutil.copyfile(f, dst)
            st = dst.stat()
            assert daemon.pipeline.submit(Job(dst, tmp_path / "inbox", "detect", st.st_size,
                                              st.st_mtime_ns))
        assert daemon.pipeline.drain(120)
        daemon.pipeline.stop()
        with daemon.store.read() as conn:
            fresh = [r[0] for r in conn.execute("SELECT id FROM faces WHERE id > ?", (last,))]
        assert len(fresh) == len(new)
        daemon.identities.assign(fresh)
        with daemon.store.read() as conn:
            got = dict(conn.execute(
                "SELECT i.path, f.identity_id FROM faces f JOIN images i ON i.id = f.image_id "
                "WHERE f.id > ?", (last,)))
    finally:
        daemon.close()
    assert {Path(p).name: who for p, who in got.items()} == \
        {f.name: named[f.parent.name] for f in new}


def test_adopt_import_copies_companions(tmp_path, data_dir, capsys):
    """--import copies each photo's group (RAW twin, sidecars, Live Photo video) into the
    library under the photo's stem, renamed together when a name is taken; the group follows
    its person, undo retires it, and the sources in DIR never change. A lone RAW is a photo."""
    from facesortd.app.adopt import format_report
    from facesortd.app.commands import undo as undo_placements

    config = make_config(tmp_path)
    cfg = tmp_path / "facesortd.yaml"
    folder = tmp_path / "sorted" / "Fujio Cho"
    folder.mkdir(parents=True)
    src = photos(data_dir, "Fujio_Cho")
    shutil.copyfile(src[0], folder / "IMG_1.jpg")
    (folder / "IMG_1.CR3").write_bytes(b"raw bytes of IMG_1 " * 64)      # copied, never decoded
    shutil.copyfile(data_dir / "camera" / "XMP.xmp", folder / "IMG_1.xmp")
    (folder / "IMG_1.jpg.json").write_text('{"title": "IMG_1.jpg"}')
    shutil.copyfile(src[1], folder / "IMG_2.jpg")
    shutil.copyfile(data_dir / "camera" / "QuickTime.mov", folder / "IMG_2.MOV")
    shutil.copyfile(data_dir / "camera" / "Nikon.nef", folder / "lone.nef")   # no twin: a photo
    group1 = ("IMG_1.jpg", "IMG_1.CR3", "IMG_1.xmp", "IMG_1.jpg.json")
    before = tree_state(tmp_path / "sorted")

    code, dry = adopt(capsys, cfg, str(tmp_path / "sorted"), "--import", "--dry-run")
    assert code == 0 and dry["would_import_companions"] == 4
    assert {Path(w["src"]).name: sorted(Path(c["src"]).name for c in w["companions"])
            for w in dry["would_import"]} == {"IMG_1.jpg": sorted(group1[1:]),
                                              "IMG_2.jpg": ["IMG_2.MOV"]}
    assert "to copy:        2, and 4 companions" in format_report(dry)
    assert not config.library.exists()

    theirs = config.library / "Fujio Cho" / "IMG_1.CR3"   # someone else's file: the group moves
    theirs.parent.mkdir(parents=True)
    theirs.write_bytes(b"not ours")
    t0 = time.time()
    code, report = adopt(capsys, cfg, str(tmp_path / "sorted"), "--import")
    assert code == 0 and report["imported"] == 2 and report["imported_companions"] == 4
    assert report["import_failed"] == []
    assert {Path(s["path"]).name: s["reason"] for s in report["skipped_photos"]} == \
        {"lone.nef": "no_face"}                          # read as a photo, not taken as anyone's
    assert "copied:         2, and 4 companions" in format_report(report)
    lib = config.library / "Fujio Cho"
    renamed = {n: n.replace("IMG_1", "IMG_1_1") for n in group1}
    renamed.update({"IMG_2.jpg": "IMG_2.jpg", "IMG_2.MOV": "IMG_2.MOV"})
    assert sorted(p.name for p in lib.iterdir()) == sorted(list(renamed.values()) + ["IMG_1.CR3"])
    for name, copy in renamed.items():
        assert (lib / copy).read_bytes() == (folder / name).read_bytes(), name
    assert theirs.read_bytes() == b"not ours"
    with sqlite3.connect(config.state_dir / "facesortd.db") as conn:
        rows = conn.execute("SELECT kind, action, COUNT(*) FROM placements WHERE image_id IS NOT "
                            "NULL GROUP BY kind, action").fetchall()
    assert sorted(rows) == [("companion", "copy", 4), ("kept", "none", 2), ("main", "copy", 2)]
    assert tree_state(tmp_path / "sorted") == before

    code, again = adopt(capsys, cfg, str(tmp_path / "sorted"), "--import")   # nothing twice
    assert code == 0 and again["imported"] == again["imported_companions"] == 0
    assert len(list(lib.iterdir())) == 7

    with Store.open(config.state_dir, load_vectors=False) as store:   # the group follows
        with store.read() as conn:
            fujio = conn.execute("SELECT id FROM identities WHERE name = 'Fujio Cho'").fetchone()[0]
        rename(store, fujio, "Fujio C")
    Daemon(config).run_once(timeout=600)
    moved = config.library / "Fujio C"     # free there: the group takes its own stem again
    assert sorted(p.name for p in moved.iterdir()) == sorted(renamed)
    assert [p.name for p in lib.iterdir()] == ["IMG_1.CR3"]           # theirs stays
    for name in renamed:
        assert (moved / name).read_bytes() == (folder / name).read_bytes(), name

    # a sidecar added to DIR since joins its photo where it is now; copied once only
    (folder / "IMG_2.xmp").write_text("<x:xmpmeta xmlns:x='adobe:ns:meta/'/>")
    before = tree_state(tmp_path / "sorted")
    code, late = adopt(capsys, cfg, str(tmp_path / "sorted"), "--import")
    assert code == 0 and late["imported"] == 0 and late["imported_companions"] == 1
    assert (moved / "IMG_2.xmp").read_bytes() == (folder / "IMG_2.xmp").read_bytes()
    (moved / "IMG_2.xmp").unlink()                        # a person deletes it: it stays deleted
    code, late = adopt(capsys, cfg, str(tmp_path / "sorted"), "--import")
    assert code == 0 and late["imported_companions"] == 0 and not (moved / "IMG_2.xmp").exists()

    undo_placements(config, None, str(t0))                # the copies are retired, groups too
    assert not moved.exists() and [p.name for p in lib.iterdir()] == ["IMG_1.CR3"]
    assert tree_state(tmp_path / "sorted") == before
