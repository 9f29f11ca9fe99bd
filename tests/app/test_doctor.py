"""`facesortd doctor` on real folders, a real store, a real lock and a real socket."""

from __future__ import annotations

import hashlib
import io
import os
import socket
import sqlite3
import stat
from contextlib import closing

import pytest

from facesortd.app.doctor import TUNABLES, doctor, run_checks
from facesortd.cli import main
from facesortd.config import load_config, parse_config
from facesortd.library.placer import Placer
from facesortd.store import schema as store_schema
from facesortd.store.database import DB_NAME, Store
from facesortd.store.lock import StateLock


def write_config(root, embedder="dlib", extra=""):
    (root / "inbox").mkdir(exist_ok=True)
    text = (f"inboxes:\n  - path: inbox\n    mode: aligned\nembedder:\n  name: {embedder}\n"
            "web:\n  enabled: false\n" + extra)
    (root / "facesortd.yaml").write_text(text)
    return root / "facesortd.yaml"


def run(path) -> tuple[int, str]:
    out = io.StringIO()
    return doctor(path, out), out.getvalue()


def line(text: str, topic: str) -> str:
    found = [l for l in text.splitlines() if l[5:].startswith(topic)]
    assert found, f"no line for {topic}:\n{text}"
    return found[0]


@pytest.fixture(autouse=True)
def tunables(monkeypatch):
    monkeypatch.setenv("GLIBC_TUNABLES", TUNABLES)


def test_a_healthy_setup_passes(tmp_path):
    pytest.importorskip("dlib")
    rc, out = run(write_config(tmp_path))
    assert rc == 0, out
    for topic in ("config", "device", "weights", "state_dir", "library", "inboxes[0]", "disk",
                  "GLIBC_TUNABLES", "lock", "store"):
        assert line(out, topic).startswith("ok"), out
    assert out.rstrip().endswith("0 problem(s), 0 warning(s)")
    assert not (tmp_path / "state").exists(), "doctor must not create anything"


def test_a_broken_config_lists_every_problem(tmp_path):
    path = tmp_path / "facesortd.yaml"
    path.write_text("embedder:\n  batch_size: 0\nbogus: 1\n")
    rc, out = run(path)
    assert rc == 1
    assert "embedder.batch_size" in out and "bogus: unknown key" in out
    assert "2 problem(s)" in out


def test_cli_exit_code_and_missing_inbox_warning(tmp_path, capsys):
    path = write_config(tmp_path)
    (tmp_path / "inbox").rmdir()
    assert main(["doctor", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert line(out, "inboxes[0]").startswith("WARN") and f"mkdir -p {tmp_path / 'inbox'}" in out


def test_unset_tunables_warn(tmp_path, monkeypatch):
    monkeypatch.delenv("GLIBC_TUNABLES")
    rc, out = run(write_config(tmp_path))
    assert rc == 0 and line(out, "GLIBC_TUNABLES").startswith("WARN")
    assert f"export GLIBC_TUNABLES={TUNABLES}" in out


def test_folder_problems(tmp_path):
    path = write_config(tmp_path)
    (tmp_path / "library").write_text("not a folder")
    (tmp_path / "inbox").chmod(0o777)
    rc, out = run(path)
    assert rc == 1
    assert line(out, "library").startswith("FAIL") and "is not a folder" in out
    assert line(out, "inboxes[0]").startswith("WARN") and "writable by everyone" in out


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_a_folder_this_user_cannot_write(tmp_path):
    path = write_config(tmp_path)
    (tmp_path / "inbox").chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        rc, out = run(path)
    finally:
        (tmp_path / "inbox").chmod(0o755)
    assert rc == 1 and line(out, "inboxes[0]").startswith("FAIL") and "chown" in out


def test_store_of_another_model_and_the_lock(tmp_path):
    path = write_config(tmp_path)
    with Store.open(tmp_path / "state") as store:
        store.bind_model("facenet-vggface2:0123456789ab", 512)
    lock = StateLock(tmp_path / "state")
    lock.acquire()
    try:
        rc, out = run(path)
    finally:
        lock.release()
    assert rc == 1
    assert line(out, "store").startswith("FAIL") and "facenet-vggface2" in out
    assert f"held by a running facesortd (pid {os.getpid()})" in line(out, "lock")


def test_a_web_port_in_use(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        path = write_config(tmp_path, extra="")
        path.write_text(path.read_text().replace("enabled: false", f"enabled: true\n  port: {port}"))
        rc, out = run(path)
    assert rc == 1 and line(out, "web").startswith("FAIL") and str(port) in out


@pytest.mark.parametrize("runtime", ["torch", "dlib"])
def test_dlib_device_names_the_runtime(tmp_path, runtime):
    """dlib's ResNet runs where embedder.device says through torch, on one core in dlib's own."""
    import torch

    config = parse_config("inboxes: [{path: inbox}]\n"
                          f"embedder: {{name: dlib, dlib_runtime: {runtime}}}\n"
                          "web: {enabled: false}\n", tmp_path / "facesortd.yaml")
    device = {f.topic: f for f in run_checks(config)}["device"]
    assert device.level == "ok"
    if runtime == "dlib":
        assert "one CPU core" in device.message
    elif not torch.cuda.is_available():
        assert "runs on the CPU through torch" in device.message


def test_facenet_device_and_weights(tmp_path, monkeypatch):
    import torch

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    config = parse_config("inboxes: [{path: inbox}]\nembedder: {name: facenet, device: auto}\n"
                          "web: {enabled: false}\n", tmp_path / "facesortd.yaml")
    findings = {f.topic: f for f in run_checks(config)}
    if torch.cuda.is_available():
        assert findings["device"].level == "ok" and "cuda" in findings["device"].message
    else:
        assert findings["device"].level == "warn" and "no CUDA device" in findings["device"].message
    assert findings["weights"].level == "warn" and str(tmp_path / "torch") in findings["weights"].fix
    weights = tmp_path / "w.pt"
    config = parse_config(f"inboxes: [{{path: inbox}}]\nembedder: {{name: facenet, weights: {weights}}}\n",
                          tmp_path / "facesortd.yaml")
    findings = {f.topic: f for f in run_checks(config)}
    assert findings["weights"].level == "fail" and "is not a file" in findings["weights"].message
    if not torch.cuda.is_available():
        config = parse_config("inboxes: [{path: inbox}]\nembedder: {name: facenet, device: cuda}\n",
                              tmp_path / "facesortd.yaml")
        device = {f.topic: f for f in run_checks(config)}["device"]
        assert device.level == "fail" and "cuda does not exist" in device.message


def test_auto_says_which_model_and_why(tmp_path, empty_torch_home):
    """embedder.name: auto: no weights here and dlib installed → facenet if it downloads, else
    dlib, all fine; a store of dlib vectors keeps dlib; the checks below follow the choice."""
    pytest.importorskip("dlib")
    path = write_config(tmp_path, embedder="auto")
    rc, out = run(path)
    assert rc == 0, out
    assert line(out, "embedder").startswith("ok") and "else dlib (installed)" in out
    assert line(out, "weights").startswith("ok") and "runs dlib" in line(out, "weights")
    with Store.open(tmp_path / "state") as store:
        store.bind_model("dlib-resnet-v1", 128)
    rc, out = run(path)
    assert rc == 0, out
    assert "dlib: auto: the store holds vectors of dlib-resnet-v1" in line(out, "embedder")
    assert line(out, "weights").startswith("ok") and "dlib models in" in line(out, "weights")
    # an explicit other model against that store: the fix names migrate
    rc, out = run(write_config(tmp_path, embedder="facenet"))
    assert rc == 1 and "facesortd migrate --to facenet" in out


# -- the store's people and the library ----------------------------------------------------------

@pytest.fixture
def placed_library(fake_ingest):
    """``placed_library(root, schema)``: a config and a store at ``schema`` with seven real photos
    placed by the real placer: a1 and a2 of Alice (1), b1 of 2, c1 of 3, d1 of 4, e1 of 5 (6 holds
    none) and n1 without a face; their faces are made up (``fake_ingest``)."""
    return lambda root, schema=store_schema.SCHEMA_VERSION: _placed_library(fake_ingest, root, schema)


def _placed_library(fake, root, schema: int):
    path = write_config(root)
    config = load_config(path)
    config.state_dir.mkdir()
    conn = sqlite3.connect(config.state_dir / DB_NAME, isolation_level=None,
                           check_same_thread=False)
    store_schema.migrate(conn, target=schema)
    store = Store(conn, config.state_dir / DB_NAME)   # as it is: Store.open would migrate it
    try:
        store.bind_model("dlib-resnet-v1", fake.DIM)
        people = [fake.new_identity(store, "Alice")] + [fake.new_identity(store) for _ in range(5)]
        for name, person in [("a1", 0), ("a2", 0), ("b1", 1), ("c1", 2), ("d1", 3), ("e1", 4),
                             ("n1", None)]:
            photo = config.inboxes[0].path / f"{name}.jpg"
            photo.write_bytes(os.urandom(100) + name.encode())
            fake.fabricate(store, photo, photo.parent, [] if person is None else [people[person]])
        assert len(Placer(config, store).sync()) == 7
    finally:
        store.close()
    return path, config


def state_files(config) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(config.state_dir.iterdir())}


def test_a_healthy_store_and_library_are_all_clear(tmp_path, placed_library):
    pytest.importorskip("dlib")
    path, _ = placed_library(tmp_path)
    rc, out = run(path)
    assert rc == 0, out
    assert "7 placed photo(s), each in its person's folder" in line(out, "placement")
    assert "6 people (0 merged into others)" in line(out, "people")
    for topic in ("store", "people", "placement", "person folders"):
        assert line(out, topic).startswith("ok"), out
    assert "placed files" not in out
    assert out.rstrip().endswith("0 problem(s), 0 warning(s)")


def test_a_store_the_old_merge_bug_broke_is_reported_with_counts_and_left_as_it_is(tmp_path,
                                                                                   placed_library):
    path, config = placed_library(tmp_path, schema=5)
    library = config.library
    with closing(sqlite3.connect(config.state_dir / DB_NAME)) as conn, conn:
        # what the old bug left: 2 -> 3 -> 4 with faces on 2 and 3, a cycle 5 <-> 6 with faces
        # on 5, a merge into no identity; the old placer followed the chain into Person_0004
        conn.execute("INSERT INTO identities (id, merged_into, created_at) VALUES (7, NULL, 0)")
        conn.executemany("UPDATE identities SET merged_into = ? WHERE id = ?",
                         [(3, 2), (4, 3), (6, 5), (5, 6), (99, 7)])
        for name, person in [("b1", 2), ("c1", 3)]:
            old = library / f"Person_{person:04d}" / f"{name}.jpg"
            new = library / "Person_0004" / f"{name}.jpg"
            old.rename(new)
            old.parent.rmdir()
            conn.execute("UPDATE placements SET path = ? WHERE path = ?", (str(new), str(old)))
    before = state_files(config)

    rc, out = run(path)
    assert rc == 0, out     # warnings: the daemon starts and repairs it
    people = [l for l in out.splitlines() if l[5:].startswith("people")]
    assert len(people) == 2 and all(l.startswith("WARN") for l in people), out
    assert "3 faces sit on 3 merged identities" in people[0]
    assert ("merged_into is broken for 6 identities: 3 chained (pointing at a merged identity), "
            "2 on cycles, 1 dangling") in people[1]
    assert "e.g. cycle 5 -> 6 -> 5; chain 2 -> 3 -> 4" in people[1]
    assert "the store is at schema 5: the next daemon start" in out
    assert ("(merged identities that hold faces made people again: 3; merges into no identity "
            "dropped: 1)") in out
    placement = line(out, "placement")
    assert placement.startswith("WARN") and "2 of 7 placed photo(s)" in placement
    assert "Person_0004/b1.jpg (wanted in Person_0002/)" in placement
    assert "Person_0004/c1.jpg (wanted in Person_0003/)" in placement
    assert "files follow at the next placement" in out
    folders = line(out, "person folders")
    assert folders.startswith("WARN") and "1 folder(s)" in folders
    assert "Person_0004 (3 photos of 3 people)" in folders
    assert state_files(config) == before, "doctor must not change the store"
    with closing(sqlite3.connect(config.state_dir / DB_NAME)) as conn:
        assert store_schema.schema_version(conn) == 5


def test_a_photo_moved_by_hand_into_another_persons_folder(tmp_path, placed_library):
    path, config = placed_library(tmp_path)
    (config.library / "Alice" / "a1.jpg").rename(config.library / "Person_0002" / "a1.jpg")
    _, out = run(path)
    moved = line(out, "placed files")
    assert moved.startswith("WARN") and "1 placed photo(s) are not where the placer put them" in moved
    assert "Alice/a1.jpg (now at Person_0002/a1.jpg, the folder of another person)" in moved
    assert "move it back" in out
    assert line(out, "placement").startswith("ok") and line(out, "person folders").startswith("ok")


def test_a_correction_the_placer_has_not_followed_yet(tmp_path, placed_library):
    path, config = placed_library(tmp_path)
    with closing(sqlite3.connect(config.state_dir / DB_NAME)) as conn, conn:
        conn.execute("UPDATE faces SET identity_id = 1 WHERE identity_id = 4")   # d1 is Alice
    lock = StateLock(config.state_dir)
    lock.acquire()
    try:
        _, out = run(path)
    finally:
        lock.release()
    placement = line(out, "placement")
    assert placement.startswith("WARN") and "Person_0004/d1.jpg (wanted in Alice/)" in placement
    assert "the running daemon moves them at its next placement" in out
    with Store.open(config.state_dir) as store:
        follow = [op.src for op in Placer(config, store).sync(dry_run=True) if op.reason == "follow"]
        assert follow == [config.library / "Person_0004" / "d1.jpg"], "what doctor says = dry run"
        Placer(config, store).sync()
    _, out = run(path)
    assert line(out, "placement").startswith("ok") and (config.library / "Alice" / "d1.jpg").exists()


def test_broken_people_at_schema_6_fail(tmp_path, placed_library):
    path, config = placed_library(tmp_path)
    with closing(sqlite3.connect(config.state_dir / DB_NAME)) as conn, conn:
        for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'").fetchall():
            conn.execute(f"DROP TRIGGER {name}")
        conn.execute("UPDATE identities SET merged_into = 1 WHERE id = 2")
    rc, out = run(path)
    assert rc == 1 and line(out, "people").startswith("FAIL") and "report a bug" in out
