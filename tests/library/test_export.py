"""``facesortd export`` (issue 16, item 1) on a copy of the small real library: the photos of the
people chosen, the manifest, rename_new in the target, and the library left as it was."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from facesortd.cli import main
from facesortd.library.placer import Placer
from facesortd.people.corrections import add_face, rename
from facesortd.store.database import Store


def _tree(root: Path) -> dict[str, str]:
    """Every file under ``root`` with its sha256 (links followed), and symlinks as such."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def named(library, tmp_path_factory):
    """A copy of the library with Paul and JK named, and a face drawn for JK on one of Paul's
    photos (a photo of two chosen people)."""
    root = tmp_path_factory.mktemp("export")
    config = library.copy(root)
    with Store.open(config.state_dir) as store:
        people = {p: library.main_identity(v) for p, v in library.faces_by_person(store).items()}
        rename(store, people["Paul_McCartney"], "Paul")
        rename(store, people["JK_Rowling"], "Joanne")
        with store.read() as conn:
            image, vector = conn.execute(
                "SELECT f.image_id, f.vector FROM faces f WHERE f.identity_id = ? ORDER BY f.id "
                "LIMIT 1", (people["Paul_McCartney"],)).fetchone()
            jk_vector = conn.execute("SELECT vector FROM faces WHERE identity_id = ? LIMIT 1",
                                     (people["JK_Rowling"],)).fetchone()[0]
        add_face(store, image, (1, 1, 30, 30), np.frombuffer(jk_vector, np.float32),
                 people["JK_Rowling"])
        Placer(config, store).sync()                   # the renamed folders
    return root, config, people


def test_export_per_person_with_manifest_never_replacing(named, tmp_path, capsys):
    root, config, people = named
    yaml = str(root / "facesortd.yaml")
    before = _tree(config.library)
    out = tmp_path / "out"
    (out / "Paul").mkdir(parents=True)
    with Store.open(config.state_dir) as store, store.read() as conn:
        a_paul_photo = Path(conn.execute(
            "SELECT p.path FROM placements p JOIN faces f ON f.image_id = p.image_id "
            "WHERE f.identity_id = ? AND p.kind = 'main' ORDER BY p.id LIMIT 1",
            (people["Paul_McCartney"],)).fetchone()[0])
    (out / "Paul" / a_paul_photo.name).write_bytes(b"mine")        # a name already taken
    capsys.readouterr()
    assert main(["export", "--config", yaml, "--people", "Paul", f"#{people['JK_Rowling']}",
                 "--to", str(out)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["people"] == {"Paul": 4, "Joanne": 5} and report["missing"] == []
    assert (out / "Paul" / a_paul_photo.name).read_bytes() == b"mine"
    stem, ext = a_paul_photo.stem, a_paul_photo.suffix
    assert (out / "Paul" / f"{stem}_1{ext}").read_bytes() == a_paul_photo.read_bytes()
    # the photo of both goes to each of them
    joanne = {p.name for p in (out / "Joanne").iterdir()}
    assert any(n.startswith("Paul_McCartney__") for n in joanne)
    with open(out / "manifest.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 9 and {r["person"] for r in rows} == {"Paul", "Joanne"}
    for row in rows:
        data = (out / row["photo"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == row["sha256"]
        assert Path(row["source"]).read_bytes() == data
    assert _tree(config.library) == before              # the library as it was

    # a second export into the same folder: new names, a second manifest, nothing replaced
    exported = _tree(out)
    assert main(["export", "--config", yaml, "--people", "paul", "--to", str(out),
                 "--layout", "single", "--action", "symlink"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["manifest"] == str(out / "manifest_1.csv")
    assert all(_tree(out)[k] == v for k, v in exported.items())
    singles = [p for p in out.iterdir() if p.name.startswith("Paul - ")]
    assert len(singles) == 4 and all(p.is_symlink() for p in singles)


def test_export_refuses_bad_input_and_writes_nothing(named, tmp_path, capsys):
    root, config, _ = named
    yaml = str(root / "facesortd.yaml")
    out = tmp_path / "out"
    assert main(["export", "--config", yaml, "--people", "Paul", "Nobody", "--to", str(out)]) == 6
    assert "no person named 'Nobody'" in capsys.readouterr().err and not out.exists()
    assert main(["export", "--config", yaml, "--people", "Paul", "--to",
                 str(config.library / "x")]) == 6
    assert "overlaps the library" in capsys.readouterr().err
    assert not (config.library / "x").exists()
    (tmp_path / "a-file").write_text("")
    assert main(["export", "--config", yaml, "--people", "Paul", "--to",
                 str(tmp_path / "a-file" / "out")]) == 6
    assert "is not a folder" in capsys.readouterr().err
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    try:
        if not __import__("os").access(locked, __import__("os").W_OK):   # not root
            assert main(["export", "--config", yaml, "--people", "Paul", "--to",
                         str(locked / "out")]) == 6
            assert "cannot write in" in capsys.readouterr().err
    finally:
        locked.chmod(0o700)
    assert main(["export", "--config", yaml, "--people", "Paul", "--to", str(out), "--dry-run",
                 "--verbose"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["photos"] == 4 and len(report["files"]) == 4 and not out.exists()
