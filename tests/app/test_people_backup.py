"""``facesortd people export|import`` (issue 16, item 2): the round trip on real photos, and the
files a person could hand it that it must refuse with nothing applied."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from facesortd.cli import main
from facesortd.library.placer import Placer
from facesortd.store.database import Store
from facesortd.web import Control, create_app

pytest.importorskip("dlib", reason="the dlib extra is installed by `make test`")


class Api:
    """The review API over a store (Flask's test client), as the page uses it."""

    def __init__(self, config, store):
        app = create_app(config, store, control=Control(changed=lambda: None,
                                                        request_recluster=lambda: None),
                         test_config={"TESTING": True})
        self.client, self.store = app.test_client(), store

    def post(self, path, body):
        token = self.client.get("/api/csrf").json["csrf_token"]
        response = self.client.post(path, json=body, headers={"X-CSRF-Token": token})
        assert response.status_code == 200, response.get_data(as_text=True)
        return response.json

    def get_all(self, path, key):
        out, page = [], 1
        while True:
            body = self.client.get(f"{path}{'&' if '?' in path else '?'}page={page}").json
            out += body[key]
            if page >= body["pages"]:
                return out
            page += 1

    def key(self, face_id):
        """A face by content: its photo's sha256 and its box."""
        with self.store.read() as conn:
            sha, *box = conn.execute("SELECT i.sha256, f.box_x1, f.box_y1, f.box_x2, f.box_y2 FROM "
                                     "faces f JOIN images i ON i.id = f.image_id WHERE f.id = ?",
                                     (face_id,)).fetchone()
        return sha, tuple(round(v) for v in box)

    def people(self) -> dict:
        """frozenset of (face key, pinned) -> (name, hidden), every person the API lists, and the
        faces with no person under the key None."""
        out = {}
        for hidden in (0, 1):
            for person in self.get_all(f"/api/identities?hidden={hidden}", "identities"):
                faces = self.get_all(f"/api/identities/{person['id']}", "faces")
                out[frozenset((self.key(f["id"]), f["pinned"]) for f in faces)] = \
                    (person["name"], bool(hidden))
        out[None] = frozenset(self.key(f["id"]) for f in self.get_all("/api/unassigned", "faces"))
        return out

    def decisions(self) -> dict:
        """The constraints by content: 'not this person' pairs (face, that person's faces),
        rejected faces, dismissed pairs of people."""
        with self.store.read() as conn:
            members = {}
            for fid, ident in conn.execute("SELECT id, identity_id FROM faces WHERE rejected = 0 "
                                           "AND identity_id IS NOT NULL"):
                members.setdefault(ident, set()).add(self.key(fid))
            person = {i: frozenset(m) for i, m in members.items()}
            cannot = {(self.key(f), person.get(i)) for f, i in
                      conn.execute("SELECT face_id, identity_id FROM cannot_link")}
            rejected = {self.key(f) for (f,) in conn.execute("SELECT id FROM faces WHERE rejected = 1")}
            dismissed = {frozenset((person.get(a), person.get(b))) for a, b in conn.execute(
                "SELECT a, b FROM suggestions WHERE status = 'dismissed'")}
        return {"not_this_person": cannot, "rejected": rejected, "dismissed": dismissed}


def _folders(library: Path) -> tuple[dict, set]:
    """Named folders -> their photos; the unnamed person folders' photo sets (their names carry
    ids, which differ between stores)."""
    named, unnamed = {}, set()
    for folder in library.iterdir():
        photos = frozenset(p.name for p in folder.rglob("*") if p.is_file())
        if folder.name.startswith("Person_"):
            unnamed.add(photos)
        else:
            named[folder.name] = photos
    return named, unnamed


def _correct(api: Api, library) -> None:
    """The corrections of the round trips, through the review API: names, a merge, a split (named),
    not this person, not a face, confirmed faces, a hidden person, a dismissed suggestion."""
    store = api.store
    by_person = library.faces_by_person(store)
    ids = {p: library.main_identity(v) for p, v in by_person.items()}
    faces = {p: [f for f, _ in v] for p, v in by_person.items()}
    api.post(f"/api/identities/{ids['JK_Rowling']}/rename", {"name": "Joanne"})
    api.post(f"/api/identities/{ids['Paul_McCartney']}/rename", {"name": "Paul"})
    api.post(f"/api/identities/{ids['Fujio_Cho']}/merge", {"into": ids["Antonio_Palocci"]})
    split = api.post("/api/faces/move", {"faces": faces["Allyson_Felix"][:2], "to": "new"})
    api.post(f"/api/identities/{split['identity']}/rename", {"name": "Allyson (track)"})
    api.post("/api/faces/not-this-person", {"faces": [faces["Paul_McCartney"][3]]})
    api.post("/api/faces/reject", {"faces": [faces["JK_Rowling"][3]]})
    api.post("/api/faces/confirm", {"faces": faces["JK_Rowling"][:2]})
    api.post(f"/api/identities/{ids['Allyson_Felix']}/hide", {})
    # two people the page never suggests merging again
    with store.transaction() as conn:
        conn.execute("INSERT INTO suggestions (a, b, distance) VALUES (?, ?, 0.5)",
                     (ids["JK_Rowling"], ids["Paul_McCartney"]))
    suggestion = api.client.get("/api/suggestions").json["suggestions"][0]["id"]
    api.post(f"/api/suggestions/{suggestion}/dismiss", {})


def test_people_survive_a_rebuilt_state_folder(library, tmp_path, capsys):
    a = tmp_path / "a"
    config = library.copy(a)
    with Store.open(config.state_dir) as store:
        api = Api(config, store)
        _correct(api, library)
        # a face the detector never found, drawn on a photo of Paul's: the rebuilt store's
        # detector will not find it either, so the import cuts it from the photo again
        paul = library.main_identity(library.faces_by_person(store)["Paul_McCartney"])
        with store.read() as conn:
            photo = conn.execute("SELECT image_id FROM faces WHERE identity_id = ? ORDER BY id "
                                 "LIMIT 1", (paul,)).fetchone()[0]
        drawn = api.post(f"/api/images/{photo}/faces", {"box": [0, 0, 60, 60], "to": paul})["face"]
        with store.read() as conn:
            drawn_vector = conn.execute("SELECT vector FROM faces WHERE id = ?", (drawn,)).fetchone()[0]
        Placer(config, store).sync()
        before, decided = api.people(), api.decisions()
    assert {"Joanne", "Paul", "Allyson (track)"} <= set(_folders(config.library)[0])
    backup = tmp_path / "people.json"
    assert main(["people", "export", str(backup), "--config", str(a / "facesortd.yaml")]) == 0
    doc = json.loads(backup.read_text())
    assert doc["format"] == "facesortd-people" and doc["version"] == 1
    assert [f["box"] for p in doc["people"] for f in p["faces"] if f.get("drawn")] == [[0, 0, 60, 60]]
    assert "Joanne" in {p["name"] for p in doc["people"]}
    # never replaced
    assert main(["people", "export", str(backup), "--config", str(a / "facesortd.yaml")]) == 1

    # the same photos into a new state folder and library, sorted from scratch, then the file
    b = tmp_path / "b"
    config_b = library.config(b)
    library.add_photos(b, 0, library.per_person)
    assert main(["run", "--once", "--config", str(b / "facesortd.yaml")]) == 0
    capsys.readouterr()
    assert main(["people", "import", str(backup), "--dry-run", "--config", str(b / "facesortd.yaml")]) == 0
    dry = json.loads(capsys.readouterr().out)
    assert dry["dry_run"] and dry["preview"]                  # files would move ...
    assert dry["drawn_faces_to_recreate"] == 1
    assert "Joanne" not in _folders(config_b.library)[0]     # ... and none did
    assert main(["people", "import", str(backup), "--config", str(b / "facesortd.yaml")]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["photos_not_in_store"] == [] and report["faces_not_found"] == []
    assert report["people_unmatched"] == []
    assert report["drawn_faces_recreated"] == 1 and report["drawn_faces_not_recreated"] == []
    with Store.open(config_b.state_dir) as store:
        api = Api(config_b, store)
        assert api.people() == before
        assert api.decisions() == decided
        with store.read() as conn:     # the same crop, the same model: the same vector
            again = conn.execute("SELECT f.vector FROM faces f JOIN images i ON i.id = f.image_id "
                                 "WHERE f.box_x1 = 0 AND f.box_y2 = 60").fetchall()
        assert len(again) == 1 and np.allclose(np.frombuffer(again[0][0], np.float32),
                                               np.frombuffer(drawn_vector, np.float32), atol=1e-5)
        assert f"a people file exported {doc['exported_at']} applied" in \
            api.client.get("/history").get_data(as_text=True)
    assert _folders(config_b.library) == _folders(config.library)

    # a run after it keeps them (the daemon follows the imported corrections)
    assert main(["run", "--once", "--config", str(b / "facesortd.yaml")]) == 0
    with Store.open(config_b.state_dir) as store:
        assert Api(config_b, store).people() == before
    assert _folders(config_b.library) == _folders(config.library)


def _rows(state_dir: Path) -> list:
    with sqlite3.connect(state_dir / "facesortd.db") as conn:
        rows = [conn.execute(f"SELECT * FROM {t} ORDER BY 1").fetchall()
                for t in ("faces", "identities", "cannot_link", "suggestions", "history")]
    conn.close()
    return rows


@pytest.mark.parametrize("content, message", [
    ("{not json", "not valid JSON (line 1"),
    ('{"format": "facesortd-people", "version": 2, "people": []}', "written by a newer facesortd"),
    ('{"format": "something-else", "version": 1}', "not a facesortd people file"),
    ('{"format": "facesortd-people", "version": 1, "people": [{"key": "p1", "name": "A", "faces": '
     '[]}], "rejected": [{"photo": "00", "box": [0, 0, 1, 1]}]}', "rejected[0]: needs a 'photo'"),
])
def test_a_bad_people_file_is_refused_with_nothing_applied(library, tmp_path, capsys, content, message):
    config = library.copy(tmp_path)
    before = _rows(config.state_dir)
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    assert main(["people", "import", str(bad), "--config", str(tmp_path / "facesortd.yaml")]) == 5
    err = capsys.readouterr().err
    assert message in err and "nothing was applied" in err
    assert _rows(config.state_dir) == before


def test_import_reports_photos_it_does_not_have_and_is_undone_as_one_correction(library, tmp_path,
                                                                               capsys):
    config = library.copy(tmp_path)
    yaml = str(tmp_path / "facesortd.yaml")
    with Store.open(config.state_dir) as store:
        from facesortd.people.backup import export_people
        doc = export_people(store)
    before = _rows(config.state_dir)
    doc["people"][0]["name"] = "Someone"
    doc["people"].append({"key": "elsewhere", "name": "Stranger", "hidden": False,
                          "faces": [{"photo": "ab" * 32, "box": [1, 2, 30, 40], "pinned": True}]})
    path = tmp_path / "people.json"
    path.write_text(json.dumps(doc))
    assert main(["people", "import", str(path), "--config", yaml]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["photos_not_in_store"] == ["ab" * 32]
    assert report["people_unmatched"] == ["Stranger"]
    with Store.open(config.state_dir) as store:
        with store.read() as conn:
            assert conn.execute("SELECT COUNT(*) FROM identities WHERE name = 'Someone'").fetchone()[0] == 1
        from facesortd.people.corrections import undo
        assert [u["op"] for u in undo(store)] == ["people_import"]
    after = _rows(config.state_dir)
    assert after[:4] == before[:4]           # faces, identities, constraints as they were


def test_people_follow_a_store_migrated_to_another_model(library, tmp_path, facenet_weights, capsys):
    """Exported from a dlib store, imported into the same photos' store after `facesortd migrate
    --to facenet`: the faces are matched by photo and box, not by vector, so the people hold."""
    config = library.copy(tmp_path / "a")
    with Store.open(config.state_dir) as store:
        api = Api(config, store)
        _correct(api, library)
        Placer(config, store).sync()
        before, decided = api.people(), api.decisions()
    backup = tmp_path / "people.json"
    assert main(["people", "export", str(backup), "--config", str(tmp_path / "a" / "facesortd.yaml")]) == 0

    other = library.copy(tmp_path / "b")
    yaml = str(tmp_path / "b" / "facesortd.yaml")
    assert main(["migrate", "--to", "facenet", "--weights", str(facenet_weights), "--config", yaml]) == 0
    capsys.readouterr()
    assert main(["people", "import", str(backup), "--config", yaml]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["faces_not_found"] == [] and report["photos_not_in_store"] == []
    with Store.open(other.state_dir) as store:
        assert store.model_id.startswith("facenet")
        api = Api(other, store)
        assert api.people() == before and api.decisions() == decided
    assert _folders(other.library) == _folders(config.library)
