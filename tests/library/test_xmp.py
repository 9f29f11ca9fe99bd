"""XMP sidecars (issue 16, item 3) on copies of the small real library (dlib-sorted photos): the
named people as MWG face regions, read back by exiftool (a reader facesortd did not write);
rewritten when people are renamed or merged, moved with their photo, retired by undo; a file that
is not ours is never written; the photos' bytes never change."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from facesortd.config import parse_config
from facesortd.errors import FacesortdError
from facesortd.library.placer import Placer
from facesortd.people.corrections import merge, rename
from facesortd.store.database import Store, decode_path, encode_path

ON = "placement:\n  xmp_sidecars: true\n"


def _exiftool(path: Path) -> dict:
    """What exiftool reads in ``path``'s XMP (structures kept)."""
    exe = shutil.which("exiftool")
    if exe is None:
        pytest.fail("exiftool is not installed: apt-get install libimage-exiftool-perl "
                    "(make install-test does it as root); the XMP test reads sidecars with it")
    out = subprocess.run([exe, "-j", "-struct", "-XMP:all", str(path)], check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out)[0]


def _copy(library, tmp_path: Path, extra: str = ON):
    config = library.copy(tmp_path, extra)
    store = Store.open(config.state_dir)
    people = {p: library.main_identity(v) for p, v in library.faces_by_person(store).items()}
    return config, store, people


def _mains(store: Store) -> dict[int, Path]:
    with store.read() as conn:
        return {r[0]: decode_path(r[1]) for r in conn.execute(
            "SELECT image_id, path FROM placements WHERE kind = 'main'")}


def _faces(store: Store, identity: int) -> dict[int, list[tuple]]:
    """image -> boxes of the identity's faces (merges followed by the caller)."""
    out: dict[int, list[tuple]] = {}
    with store.read() as conn:
        for image, *box in conn.execute(
                "SELECT image_id, box_x1, box_y1, box_x2, box_y2 FROM faces "
                "WHERE identity_id = ? AND rejected = 0", (identity,)):
            out.setdefault(image, []).append(tuple(box))
    return out


def _ours(store: Store) -> dict[int, tuple[Path, str, str]]:
    with store.read() as conn:
        return {r[0]: (decode_path(r[1]), r[2], r[3]) for r in conn.execute(
            "SELECT image_id, path, action, sha256 FROM placements "
            "WHERE kind = 'companion' AND action LIKE 'xmp:%'")}


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _photos_unchanged(store: Store) -> None:
    with store.read() as conn:
        shas = dict(conn.execute("SELECT id, sha256 FROM images"))
    for image, path in _mains(store).items():
        assert _sha(path) == shas[image], f"{path} was modified"


def _name_and_place(config, store: Store, names: dict[int, str]) -> Placer:
    """Name these people (identity -> name) and sync a new placer: the sidecars written."""
    for identity, name in names.items():
        rename(store, identity, name)
    placer = Placer(config, store)
    placer.sync()
    return placer


def _regions(info: dict) -> list[tuple[str, float, float, float, float]]:
    return [(r["Name"], r["Area"]["X"], r["Area"]["Y"], r["Area"]["W"], r["Area"]["H"])
            for r in info["RegionInfo"]["RegionList"]]


def test_sidecars_hold_the_named_people_as_exiftool_reads_them(library, tmp_path, caplog):
    config, store, people = _copy(library, tmp_path)
    with store:
        paul, jk = people["Paul_McCartney"], people["JK_Rowling"]
        placer = _name_and_place(config, store, {paul: "Paul McCartney", jk: "Joanne"})
        mains, ours = _mains(store), _ours(store)
        named = {**{i: "Paul McCartney" for i in _faces(store, paul)},
                 **{i: "Joanne" for i in _faces(store, jk)}}
        assert named and set(ours) == set(named) & set(mains)
        for image, (path, action, sha) in ours.items():
            main = mains[image]
            assert path == main.with_name(main.name + ".xmp") and action.startswith("xmp:")
            assert _sha(path) == sha
            info = _exiftool(path)
            with Image.open(main) as im:
                width, height = im.size
            assert info["RegionInfo"]["AppliedToDimensions"] == {"W": width, "H": height,
                                                                  "Unit": "pixel"}
            regions = info["RegionInfo"]["RegionList"]
            assert all(r["Type"] == "Face" and r["Area"]["Unit"] == "normalized" for r in regions)
            ident = paul if named[image] == "Paul McCartney" else jk
            want = sorted((named[image], (x1 + x2) / 2 / width, (y1 + y2) / 2 / height,
                           (x2 - x1) / width, (y2 - y1) / height)
                          for x1, y1, x2, y2 in _faces(store, ident)[image])
            got = sorted(_regions(info))
            assert [g[0] for g in got] == [w[0] for w in want]
            assert all(abs(a - b) < 1e-5 for g, w in zip(got, want) for a, b in zip(g[1:], w[1:]))
            assert info["Subject"] in (named[image], [named[image]])
            assert info["HierarchicalSubject"] in (f"People|{named[image]}",
                                                   [f"People|{named[image]}"])
        # the unnamed people's photos have none; the photos themselves were never written
        assert not [p for image, p in mains.items() if image not in named
                    and p.with_name(p.name + ".xmp").exists()]
        _photos_unchanged(store)
        # a sync with nothing changed writes nothing (the digest, no exiv2) and moves nothing
        stats = {p: os.stat(p).st_mtime_ns for p, _, _ in ours.values()}
        assert placer.sync() == []
        assert not any(placer.sidecars.sync(config).values())
        assert {p: os.stat(p).st_mtime_ns for p, _, _ in _ours(store).values()} == stats


def test_rename_and_merge_rewrite_and_move_the_sidecars(library, tmp_path):
    config, store, people = _copy(library, tmp_path)
    with store:
        paul, jk = people["Paul_McCartney"], people["JK_Rowling"]
        placer = _name_and_place(config, store, {paul: "Paul", jk: "Joanne"})
        before = _ours(store)
        pauls = set(_faces(store, paul)) & set(before)
        assert pauls
        rename(store, paul, "Sir Paul")
        placer.sync()
        after = _ours(store)
        assert set(after) == set(before)
        for image in pauls:
            old, new = before[image][0], after[image][0]
            assert not old.exists() and new.parent == config.library / "Sir Paul"
            assert new == _mains(store)[image].with_name(_mains(store)[image].name + ".xmp")
            assert {r[0] for r in _regions(_exiftool(new))} == {"Sir Paul"}
            assert after[image][2] == _sha(new) != before[image][2]   # the new hash recorded
        assert not (config.library / "Paul").exists()
        # a crash between our rename over a sidecar and its row: the row still has the old digest
        # and hash; the next sync knows the bytes as ours (not another program's edit)
        image = min(pauls)
        with store.transaction() as conn:
            conn.execute("UPDATE placements SET action = ?, sha256 = ?, mtime_ns = NULL "
                         "WHERE path = ?", (*before[image][1:], encode_path(after[image][0])))
        placer.sync()
        assert _ours(store)[image] == after[image]
        for image in set(after) - pauls:    # Joanne's: not rewritten
            assert after[image] == before[image]
        merge(store, paul, jk)
        placer.sync()
        merged = _ours(store)
        for image in pauls:
            path = merged[image][0]
            assert path.parent == config.library / "Joanne"
            assert {r[0] for r in _regions(_exiftool(path))} == {"Joanne"}
        _photos_unchanged(store)


def test_undo_retires_the_sidecars_with_their_photos(library, tmp_path):
    config, store, people = _copy(library, tmp_path)
    with store:
        placer = _name_and_place(config, store, {people["Fujio_Cho"]: "Fujio"})
        ours = _ours(store)
        assert ours
        placer.undo()
        assert not any(p.exists() for p, _, _ in ours.values())
        assert not _ours(store)
        assert not list((tmp_path / "inbox").glob("*.xmp"))   # ours are not the inbox's
        with store.read() as conn:
            held = [decode_path(r[0]) for r in conn.execute(
                "SELECT path FROM placements WHERE kind = 'held'")]
        assert held and all(p.exists() for p in held)
        placer.sync()   # held: stays in the inbox, no sidecar comes back
        assert not _ours(store)


def test_a_file_that_is_not_ours_is_never_written(library, tmp_path, caplog):
    config, store, people = _copy(library, tmp_path)
    with store:
        paul = people["Paul_McCartney"]
        rename(store, paul, "Paul")
        Placer(config.model_copy(update={"placement": config.placement.model_copy(
            update={"xmp_sidecars": False})}), store).sync()
        mains = _mains(store)
        first, second, *_ = sorted(i for i in _faces(store, paul) if i in mains)
        theirs = mains[first].with_name(mains[first].name + ".xmp")
        theirs.write_bytes(b"<x:xmpmeta xmlns:x='adobe:ns:meta/'/>\n")   # a camera's, a tool's
        placer = Placer(config, store)
        placer.sync()
        placer.sync()
        assert theirs.read_bytes() == b"<x:xmpmeta xmlns:x='adobe:ns:meta/'/>\n"
        assert first not in _ours(store) and second in _ours(store)
        assert sum("is not facesortd's" in r.message for r in caplog.records) == 1   # told once
        # our own sidecar edited by another program becomes the user's: moved, never rewritten
        edited = _ours(store)[second][0]
        edited.write_bytes(edited.read_bytes().replace(b"Paul", b"Paulo"))
        content = edited.read_bytes()
        rename(store, paul, "Paul M")
        placer.sync()
        moved = _mains(store)[second].with_name(_mains(store)[second].name + ".xmp")
        assert moved.parent == config.library / "Paul M" and moved.read_bytes() == content
        assert second not in _ours(store)
        _photos_unchanged(store)


def test_the_sidecar_name_follows_its_pattern(library, tmp_path):
    config, store, people = _copy(library, tmp_path,
                                  ON + '  xmp_sidecar_name: "{name}.xmp"\n')
    with store:
        rename(store, people["JK_Rowling"], "Joanne")
        Placer(config, store).sync()
        mains, ours = _mains(store), _ours(store)
        assert ours and all(p == mains[i].with_suffix(".xmp") for i, (p, _, _) in ours.items())
        # the default pattern again: the same sidecars renamed, not written twice
        config = parse_config((tmp_path / "facesortd.yaml").read_text().replace(
            '  xmp_sidecar_name: "{name}.xmp"\n', ""), tmp_path / "facesortd.yaml")
        Placer(config, store).sync()
        renamed = _ours(store)
        assert {i: (p.name, s) for i, (p, _, s) in renamed.items()} == \
            {i: (mains[i].name + ".xmp", s) for i, (_, _, s) in ours.items()}
        # sidecars off: ours retired, the photos stay
        off = config.model_copy(update={"placement": config.placement.model_copy(
            update={"xmp_sidecars": False})})
        Placer(off, store).sync()
        assert not _ours(store) and not any(p.exists() for p, _, _ in renamed.values())
        assert all(p.exists() for p in _mains(store).values())


@pytest.mark.parametrize("pattern", ["{identity}/{name}.xmp", "{name}.json", "x_{name}.xmp",
                                     "{name}{ext}.xmp/x.xmp", "{name"])
def test_a_bad_sidecar_name_is_refused(tmp_path, pattern):
    text = f'placement:\n  xmp_sidecar_name: "{pattern}"\n'
    with pytest.raises(FacesortdError, match="xmp_sidecar_name"):
        parse_config(text, tmp_path / "facesortd.yaml")
