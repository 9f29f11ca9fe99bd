"""``facesortd migrate``: re-embedding a store with another model keeps every face, name and
correction; bad input changes nothing; vectors of two models never meet in a search; SIGKILL at
random moments then a second run gives what one uninterrupted run gives.

Stores are copies of the small real library (MTCNN + dlib); facenet runs with a state dict saved
from an untrained InceptionResnetV1 whose BatchNorm statistics were measured on real faces (the
VGGFace2 weights cannot be downloaded here).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from facesortd import cli
from facesortd.config import parse_config
from facesortd.store.database import Store
from facesortd.store.lock import StateLock
from facesortd.web import Control, create_app

torch = pytest.importorskip("torch")
facenet_pytorch = pytest.importorskip("facenet_pytorch")

REPO = Path(__file__).resolve().parents[2]


def migrate(config: Path, *args: str, capsys=None) -> tuple[int, dict]:
    """``facesortd migrate`` in this process: (exit code, the JSON report or {})."""
    code = cli.main(["migrate", "--config", str(config), *args])
    report = {}
    if capsys is not None:
        out = capsys.readouterr().out
        report = json.loads(out) if out.strip() else {}
    return code, report


def _status(config: Path, capsys) -> dict:
    assert cli.main(["status", "--json", "--config", str(config)]) == 0
    return json.loads(capsys.readouterr().out)


def store_rows(state: Path) -> dict:
    """Everything a migration may change, read straight from SQLite."""
    with sqlite3.connect(state / "facesortd.db") as conn:
        out = {t: conn.execute(f"SELECT * FROM {t} ORDER BY 1").fetchall()
               for t in ("faces", "identities", "cannot_link", "meta", "images", "face_edges")}
    conn.close()
    return out


def vectors_by_face(state: Path) -> dict[int, np.ndarray]:
    with sqlite3.connect(state / "facesortd.db") as conn:
        rows = conn.execute("SELECT id, vector FROM faces").fetchall()
    conn.close()
    return {i: np.frombuffer(v, "<f4") for i, v in rows}


def assert_one_model(state: Path) -> str:
    """What any search sees: every face's model is the store's, and the in-memory matrix holds
    vectors of that model's size only. Returns the model id."""
    with Store.open(state) as store:
        model, dim = store.model_id, store.counts()["dim"]
        with store.read() as conn:
            models = {r[0] for r in conn.execute("SELECT DISTINCT model_id FROM faces")}
            live = [r[0] for r in conn.execute("SELECT id FROM faces WHERE rejected = 0 ORDER BY id")]
        ids, matrix = store.vectors()
    assert models <= {model}, f"faces of {models} in a store of {model}"
    assert list(ids) == live and (not len(live) or matrix.shape == (len(live), dim))
    return model


class App:
    """The review API over a state folder, through Flask's test client."""

    def __init__(self, root: Path):
        path = root / "facesortd.yaml"
        self.config = parse_config(path.read_text(), path)
        self.store = Store.open(self.config.state_dir)
        control = Control(changed=lambda: None, request_recluster=lambda: None)
        self.client = create_app(self.config, self.store, control=control,
                                 test_config={"TESTING": True}).test_client()

    def get(self, url: str) -> dict:
        r = self.client.get(url)
        assert r.status_code == 200, r.data
        return r.json

    def post(self, url: str, body: dict) -> dict:
        csrf = self.client.get("/api/csrf").json["csrf_token"]
        r = self.client.post(url, json=body, headers={"X-CSRF-Token": csrf})
        assert r.status_code == 200, r.data
        return r.json

    def faces_of(self, identity: int) -> set[int]:
        person = self.get(f"/api/identities/{identity}?page=1")
        faces = {f["id"] for f in person["faces"]}
        assert person["face_count"] == len(faces)       # one page holds the small library
        return faces

    def unassigned(self) -> set[int]:
        return {f["id"] for f in self.get("/api/unassigned?page=1")["faces"]}

    def close(self) -> None:
        self.store.close()


def make_corrections(app: App, library) -> dict:
    """A name, a move (pinned), a merge (pinned), "not this person" and a rejection, through the
    API; what each one must keep meaning afterwards."""
    people = {p: library.main_identity(pairs)
              for p, pairs in library.faces_by_person(app.store).items()}
    faces = {p: [f for f, _ in pairs] for p, pairs in library.faces_by_person(app.store).items()}
    app.post(f"/api/identities/{people['JK_Rowling']}/rename", {"name": "Joanne"})
    moved = faces["Allyson_Felix"][0]                  # a wrong move: only the pin keeps it there
    app.post("/api/faces/move", {"faces": [moved], "to": people["Paul_McCartney"]})
    app.post(f"/api/identities/{people['Antonio_Palocci']}/merge", {"into": people["Fujio_Cho"]})
    not_jk = faces["JK_Rowling"][1]
    app.post("/api/faces/not-this-person", {"faces": [not_jk]})
    rejected = faces["Paul_McCartney"][2]
    app.post("/api/faces/reject", {"faces": [rejected]})
    with app.store.transaction() as conn:    # a merge suggestion a person dismissed stays dismissed
        conn.execute("INSERT INTO suggestions (a, b, distance, status) VALUES (?, ?, 0.5, 'dismissed')",
                     (people["Allyson_Felix"], people["Paul_McCartney"]))
    return {"joanne": people["JK_Rowling"], "moved": moved, "paul": people["Paul_McCartney"],
            "antonio": people["Antonio_Palocci"], "fujio": people["Fujio_Cho"],
            "merged_faces": set(app.faces_of(people["Fujio_Cho"])), "not_jk": not_jk,
            "rejected": rejected}


def assert_corrections_hold(app: App, c: dict) -> None:
    named = app.get("/api/identities?q=Joanne")["identities"]
    assert [p["id"] for p in named] == [c["joanne"]] and named[0]["face_count"] >= 1
    assert c["not_jk"] not in app.faces_of(c["joanne"])           # not this person
    assert c["moved"] in app.faces_of(c["paul"])                  # moved and pinned
    assert app.get(f"/api/identities/{c['antonio']}")["merged_into"] == c["fujio"]
    assert c["merged_faces"] <= app.faces_of(c["fujio"])          # merged: pinned together
    everywhere = set(app.unassigned())
    for p in app.get("/api/identities?page=1")["identities"]:
        everywhere |= app.faces_of(p["id"])
    assert c["rejected"] not in everywhere                        # rejected: nowhere
    with app.store.read() as conn:
        assert conn.execute("SELECT COUNT(*) FROM suggestions WHERE status = 'dismissed'").fetchone() == (1,)
    with app.store.read() as conn:
        assert conn.execute("SELECT rejected FROM faces WHERE id = ?", (c["rejected"],)).fetchone() == (1,)


def test_round_trip_keeps_every_correction(library, tmp_path, facenet_weights, capsys):
    """dlib -> facenet -> dlib on real photos: the corrections made through the review API hold
    after each move, checked through the API; the faces cut for facenet are the ones a facenet
    ingest cuts, and the way back gives dlib's vectors again."""
    library.copy(tmp_path)
    app = App(tmp_path)
    corrections = make_corrections(app, library)
    app.close()
    dlib_vectors = vectors_by_face(tmp_path / "state")
    config = tmp_path / "facesortd.yaml"

    code, report = migrate(config, "--to", "facenet", "--weights", str(facenet_weights), capsys=capsys)
    assert code == 0 and report["changed"] and report["model_after"].startswith("facenet-vggface2:")
    assert report["faces_reembedded"] == len(dlib_vectors)          # the rejected face too
    assert report["photos_missing"] == 0 and report["faces_dropped"] == 0
    assert assert_one_model(tmp_path / "state") == report["model_after"]
    facenet_vectors = vectors_by_face(tmp_path / "state")
    assert set(facenet_vectors) == set(dlib_vectors)                # every face keeps its id
    app = App(tmp_path)
    assert_corrections_hold(app, corrections)
    app.close()

    # the faces re-embedded are the faces a facenet ingest of the same photos cuts
    fresh = tmp_path / "fresh"
    library.config(fresh)
    text = (fresh / "facesortd.yaml").read_text()
    (fresh / "facesortd.yaml").write_text(text.replace("name: dlib", f"name: facenet\n  weights: {facenet_weights}"))
    library.add_photos(fresh, 0, library.per_person)
    assert cli.main(["run", "--once", "--config", str(fresh / "facesortd.yaml")]) == 0
    capsys.readouterr()

    def by_content(state: Path) -> dict:
        with sqlite3.connect(state / "facesortd.db") as conn:
            rows = conn.execute("SELECT i.sha256, f.box_x1, f.box_y1, f.box_x2, f.box_y2, f.vector "
                                "FROM faces f JOIN images i ON i.id = f.image_id").fetchall()
        conn.close()
        return {(r[0], *np.round(r[1:5], 3)): np.frombuffer(r[5], "<f4") for r in rows}

    ours, theirs = by_content(tmp_path / "state"), by_content(fresh / "state")
    assert set(ours) <= set(theirs)
    for key, vector in ours.items():
        np.testing.assert_allclose(vector, theirs[key], atol=2e-5)

    code, report = migrate(config, "--to", "dlib", capsys=capsys)
    assert code == 0 and report["model_after"] == "dlib-resnet-v1"
    assert assert_one_model(tmp_path / "state") == "dlib-resnet-v1"
    back = vectors_by_face(tmp_path / "state")
    assert set(back) == set(dlib_vectors)
    for face, vector in back.items():
        np.testing.assert_allclose(vector, dlib_vectors[face], atol=1e-6)
    app = App(tmp_path)
    assert_corrections_hold(app, corrections)
    app.close()


def test_aligned_photos_are_re_embedded_whole(data_dir, tmp_path, facenet_weights, capsys):
    """An aligned inbox (each photo one face crop): a move to facenet gives the vectors a facenet
    ingest of the same crops gives, and the way back gives dlib's own again."""
    crops = [f for person in sorted((data_dir / "faces_cropped").iterdir())[:2]
             for f in sorted(person.iterdir())[:3]]

    def ingest(root: Path, embedder: str) -> Path:
        (root / "inbox").mkdir(parents=True)
        for f in crops:
            shutil.copyfile(f, root / "inbox" / f"{f.parent.name}__{f.name}")
        (root / "facesortd.yaml").write_text(
            "inboxes:\n  - path: inbox\n    mode: aligned\nwatch:\n  settle_ms: 100\n"
            f"  rescan_interval_s: 0\nembedder:\n  name: {embedder}\n  weights: {facenet_weights}\n"
            "web:\n  enabled: false\n")
        assert cli.main(["run", "--once", "--config", str(root / "facesortd.yaml")]) == 0
        return root / "facesortd.yaml"

    def by_content(config: Path) -> dict:
        with sqlite3.connect(config.parent / "state" / "facesortd.db") as conn:
            rows = conn.execute("SELECT i.sha256, f.vector FROM faces f "
                                "JOIN images i ON i.id = f.image_id").fetchall()
        conn.close()
        return {sha: np.frombuffer(v, "<f4") for sha, v in rows}

    ours = ingest(tmp_path / "ours", "dlib")
    theirs = ingest(tmp_path / "theirs", "facenet")
    capsys.readouterr()
    dlib = by_content(ours)
    assert len(dlib) == len(crops)
    assert migrate(ours, "--to", "facenet", capsys=capsys)[0] == 0      # weights from the config
    moved, fresh = by_content(ours), by_content(theirs)
    assert set(moved) == set(fresh) == set(dlib)
    for sha, vector in moved.items():
        np.testing.assert_allclose(vector, fresh[sha], atol=2e-5)
    assert migrate(ours, "--to", "dlib", capsys=capsys)[0] == 0
    for sha, vector in by_content(ours).items():
        np.testing.assert_allclose(vector, dlib[sha], atol=1e-6)


def _bytes(state: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(state.iterdir())
            if p.is_file() and p.name != "lock"}


def _not_inception(path: Path) -> None:
    torch.save(torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.Linear(8, 2)).state_dict(), path)


def _truncated(path: Path, weights: Path) -> None:
    path.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])


@pytest.mark.parametrize("case", ["unknown-model", "truncated", "other-network", "dlib-missing",
                                  "dlib-with-weights", "daemon-running"])
def test_bad_input_changes_nothing(library, tmp_path, facenet_weights, capsys, monkeypatch, case):
    """Each is one clear message and an exit code before the store is touched (its files keep
    their bytes)."""
    config = library.copy(tmp_path / "lib")
    state = config.state_dir
    before = _bytes(state)
    args = ["--to", "facenet", "--weights", str(tmp_path / "w.pt")]
    lock = None
    if case == "unknown-model":
        args = ["--to", "arcface"]
    elif case == "truncated":
        _truncated(tmp_path / "w.pt", facenet_weights)
    elif case == "other-network":
        _not_inception(tmp_path / "w.pt")
    elif case == "dlib-missing":
        import builtins
        real_import = builtins.__import__

        def no_dlib(name, *a, **k):
            if name == "dlib" or name.startswith("dlib."):
                raise ImportError("No module named 'dlib'")
            return real_import(name, *a, **k)
        monkeypatch.setattr(builtins, "__import__", no_dlib)
        args = ["--to", "dlib"]
    elif case == "dlib-with-weights":
        args = ["--to", "dlib", "--weights", str(facenet_weights)]
    elif case == "daemon-running":
        lock = StateLock(state)
        lock.acquire()
        args = ["--to", "facenet", "--weights", str(facenet_weights)]
    try:
        if case == "unknown-model":
            with pytest.raises(SystemExit) as exit_:
                migrate(config.source, *args)
            code = exit_.value.code
        else:
            code = migrate(config.source, *args)[0]
    finally:
        if lock is not None:
            lock.release()
    err = capsys.readouterr().err
    expected = {"unknown-model": (2, "invalid choice: 'arcface'"),
                "truncated": (4, "not a readable torch state dict"),
                "other-network": (4, "not an InceptionResnetV1 state dict"),
                "dlib-missing": (4, "the dlib embedder needs dlib"),
                "dlib-with-weights": (1, "--to dlib takes none"),
                "daemon-running": (1, f"pid {os.getpid()}")}[case]
    said = [line for line in err.splitlines() if line.startswith("facesortd")]
    assert code == expected[0] and len(said) == 1 and expected[1] in said[0], err
    assert _bytes(state) == before


def test_same_model_is_a_message_and_no_change(library, tmp_path, capsys):
    config = library.copy(tmp_path)
    before = store_rows(config.state_dir)
    code, report = migrate(config.source, "--to", "dlib", capsys=capsys)
    assert code == 0 and report["changed"] is False
    assert "already holds vectors of dlib-resnet-v1" in report["message"]
    assert store_rows(config.state_dir) == before


def test_dry_run_predicts_what_the_migration_does(library, tmp_path, facenet_weights, capsys):
    """A dry run embeds and reports the people after as a recluster computed in memory; nothing
    in force changes (model, vectors, people). The real run then reports the same people."""
    config = library.copy(tmp_path)
    before = store_rows(config.state_dir)
    code, dry = migrate(config.source, "--to", "facenet", "--weights", str(facenet_weights), "--dry-run",
                        capsys=capsys)
    assert code == 0 and dry["dry_run"] and not dry["changed"]
    assert "computed in memory" in dry["note"]
    assert store_rows(config.state_dir) == before
    assert assert_one_model(config.state_dir) == "dlib-resnet-v1"
    faces = real_faces = dry["faces_reembedded"]
    status = _status(config.source, capsys)             # status says what is staged
    staged = status["migration"]["staged"]
    assert list(staged) == [dry["model_after"]] and staged[dry["model_after"]].startswith(f"{faces} of")
    assert status["migration"]["last"] is None
    code, real = migrate(config.source, "--to", "facenet", "--weights", str(facenet_weights), capsys=capsys)
    assert code == 0 and real["changed"]
    assert real["faces_embedded_this_run"] == 0          # the dry run's vectors were kept staged
    status = _status(config.source, capsys)             # and, once done, the last migration
    assert status["migration"]["staged"] == {} and status["model_id"] == real["model_after"]
    assert "refuses to start (set embedder.name: auto)" in status["embedder"]["chosen"]  # name: dlib
    assert status["migration"]["last"]["model_after"] == real["model_after"]
    assert status["migration"]["last"]["faces_reembedded"] == real_faces
    for key in ("faces_reembedded", "people_before", "people_after", "people_kept",
                "people_unchanged", "people_changed", "people_gone", "unassigned_before",
                "unassigned_after"):
        assert real[key] == dry[key], key
    assert sorted(p["faces"] for p in real["people_new"]) == sorted(p["faces"] for p in dry["people_new"])


def test_resumes_after_the_daemon_ran_on_the_old_model(library, tmp_path, facenet_weights, capsys,
                                                      monkeypatch):
    """Interrupted, then the daemon adds photos and replaces one (its faces are deleted), then a
    photo's file disappears: the second migrate embeds the new faces, forgets the deleted ones,
    counts the missing photo and drops its faces. While it runs, and while it switches, any other
    reader of the store sees one model only."""
    from facesortd.app import migrate as migrate_mod
    from facesortd.people.service import IdentityService

    config = library.copy(tmp_path)
    text = config.source.read_text().replace("batch_size: 16", "batch_size: 4")
    config.source.write_text(text)
    state = config.state_dir
    calls = {"n": 0}
    real_load = migrate_mod.load_target

    def load_target(*a, **k):
        embedder = real_load(*a, **k)
        embed = embedder.embed

        def checked(faces):
            calls["n"] += 1
            assert assert_one_model(state) == "dlib-resnet-v1"     # mid-migration
            if calls["n"] == 3 and calls.get("stop", True):
                raise KeyboardInterrupt
            return embed(faces)
        embedder.embed = checked
        return embedder
    monkeypatch.setattr(migrate_mod, "load_target", load_target)
    assert migrate(config.source, "--to", "facenet", "--weights", str(facenet_weights))[0] == 130
    with sqlite3.connect(state / "facesortd.db") as conn:
        staged = conn.execute("SELECT COUNT(*) FROM staged_vectors").fetchone()[0]
        known = conn.execute("SELECT path FROM images WHERE status = 'done' ORDER BY id").fetchall()
    conn.close()
    assert staged == 8                                  # two batches of 4 kept

    # the daemon, on the old model: two new photos, one photo replaced at its inbox path
    library.add_photos(tmp_path, 4, 1, people=["Fujio_Cho", "JK_Rowling"])
    replaced = Path(known[0][0])
    shutil.copyfile(sorted((library.data_dir / "faces" / "David_Beckham").iterdir())[0], replaced)
    with sqlite3.connect(state / "facesortd.db") as conn:
        old_faces = [r[0] for r in conn.execute(
            "SELECT f.id FROM faces f JOIN images i ON i.id = f.image_id WHERE i.path = ?",
            (str(replaced),))]
    conn.close()
    assert cli.main(["run", "--once", "--config", str(config.source)]) == 0
    capsys.readouterr()
    with sqlite3.connect(state / "facesortd.db") as conn:
        assert conn.execute(f"SELECT COUNT(*) FROM staged_vectors WHERE face_id IN "
                            f"({','.join('?' * len(old_faces))})", old_faces).fetchone()[0] == 0
        new_faces = [r[0] for r in conn.execute(
            "SELECT id FROM faces WHERE id NOT IN (SELECT face_id FROM staged_vectors)")]
        # a photo that disappears (file and placement), with its faces
        gone_image, gone_path = conn.execute(
            "SELECT i.id, p.path FROM images i JOIN placements p ON p.image_id = i.id "
            "WHERE i.status = 'done' AND p.kind = 'main' ORDER BY i.id DESC LIMIT 1").fetchone()
        gone_faces = [r[0] for r in conn.execute("SELECT id FROM faces WHERE image_id = ?",
                                                 (gone_image,))]
    conn.close()
    Path(gone_path).unlink()
    assert len(new_faces) >= 3 and gone_faces

    seen_in_switch = []
    real_recluster = IdentityService.recluster

    def recluster(self, *a, **k):        # inside the switching transaction: others see the old store
        seen_in_switch.append(assert_one_model(state))
        return real_recluster(self, *a, **k)
    monkeypatch.setattr(IdentityService, "recluster", recluster)
    calls["stop"] = False
    code, report = migrate(config.source, "--to", "facenet", "--weights", str(facenet_weights), capsys=capsys)
    assert code == 0 and seen_in_switch == ["dlib-resnet-v1"]
    assert report["photos_missing"] == 1 and report["faces_dropped"] == len(gone_faces)
    assert report["missing_examples"][0]["image_id"] == gone_image
    model = assert_one_model(state)
    assert model.startswith("facenet-vggface2:")
    with sqlite3.connect(state / "facesortd.db") as conn:
        faces = {r[0] for r in conn.execute("SELECT id FROM faces")}
        assert conn.execute("SELECT COUNT(*) FROM staged_vectors").fetchone()[0] == 0
        assert conn.execute("SELECT status FROM images WHERE id = ?", (gone_image,)).fetchone() == ("error",)
    conn.close()
    assert set(new_faces) - set(gone_faces) <= faces and not set(gone_faces) & faces
    assert not set(old_faces) & faces


# -- SIGKILL at random moments ---------------------------------------------------------------------

def run_migrate(config: Path, staged_at_least: int, then: float) -> bool:
    """``python -m facesortd migrate --to dlib`` in its own process, SIGKILLed ``then`` seconds
    after it has staged ``staged_at_least`` vectors (the store is polled). True if it was killed
    while running."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-m", "facesortd", "migrate", "--config", str(config),
                             "--to", "dlib"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        while proc.poll() is None and _staged(config.parent / "state") < staged_at_least:
            time.sleep(0.005)
        try:
            proc.wait(then)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return True
        err = proc.stderr.read()
        assert proc.returncode == 0, err
        return False
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _staged(state: Path) -> int:
    """Faces with a new vector staged (0 again once the store switched)."""
    if not (state / "facesortd.db").exists():
        return 0
    with sqlite3.connect(state / "facesortd.db", timeout=10) as conn:
        n = conn.execute("SELECT COUNT(*) FROM staged_vectors").fetchone()[0]
    conn.close()
    return n


def outcome(state: Path) -> tuple:
    """What must equal an uninterrupted migration: vectors per face id, people and names."""
    with sqlite3.connect(state / "facesortd.db") as conn:
        faces = conn.execute("SELECT id, model_id, identity_id, pinned, rejected FROM faces "
                             "ORDER BY id").fetchall()
        people = conn.execute("SELECT id, name, merged_into FROM identities ORDER BY id").fetchall()
        meta = dict(conn.execute("SELECT key, value FROM meta WHERE key IN ('model_id', 'dim')"))
    conn.close()
    return faces, people, meta


def test_sigkill_at_random_moments_then_again_equals_one_run(library, tmp_path, facenet_weights, capsys):
    """Six kills land while a migration runs: at random points of the embedding (once a random
    number of vectors is staged, then a random fraction of a face's time later) and one once every
    vector is staged (the last commit, the switch, the recluster). After each the store opens and
    shows one model; a last run completes it, and the result is the one an uninterrupted
    migration of a copy gives: the same vectors per face id, people and names.

    Two equal facenet stores (copies of the library moved to facenet here) go back to dlib, run
    by dlib's own C++ (``dlib_runtime: dlib``, no torch to import: each process starts in about a
    second), one face per micro-batch so there are many commits to land between."""
    whole = library.copy(tmp_path / "whole")
    killed = library.copy(tmp_path / "killed")
    for config in (whole, killed):
        config.source.write_text(config.source.read_text().replace(
            "batch_size: 16", "batch_size: 1\n  dlib_runtime: dlib"))
        assert migrate(config.source, "--to", "facenet", "--weights", str(facenet_weights))[0] == 0
    source = outcome(whole.state_dir)[2]["model_id"]
    assert outcome(killed.state_dir) == outcome(whole.state_dir)
    capsys.readouterr()
    code, report = migrate(whole.source, "--to", "dlib", capsys=capsys)
    assert code == 0
    total = report["faces_reembedded"]
    per_face = report["seconds_embedding"] / total
    rng = random.Random(14)
    targets = sorted(rng.sample(range(total - 1), 5)) + [total]
    landed, staged = 0, []
    for target in targets:
        landed += run_migrate(killed.source, target, rng.uniform(0, per_face))
        assert assert_one_model(killed.state_dir) in (source, "dlib-resnet-v1")
        staged.append(_staged(killed.state_dir))
    assert landed >= 5, f"only {landed} of 6 kills landed during a migration (staged: {staged})"
    assert migrate(killed.source, "--to", "dlib", capsys=capsys)[0] == 0
    a, b = outcome(whole.state_dir), outcome(killed.state_dir)
    assert a == b and a[2]["model_id"] == "dlib-resnet-v1"
    va, vb = vectors_by_face(whole.state_dir), vectors_by_face(killed.state_dir)
    assert set(va) == set(vb)
    for face in va:
        np.testing.assert_array_equal(va[face], vb[face])
