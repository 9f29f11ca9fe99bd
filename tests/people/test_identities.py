"""The identity service in the daemon: real store, real dlib model on real photos, real processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from facesortd.app.daemon import Daemon
from facesortd.cli import main
from facesortd.people import corrections
from facesortd.people.clustering import ClusterParams
from facesortd.people.service import IdentityService
from facesortd.store.database import Store

pytest.importorskip("dlib", reason="the dlib extra is installed by `make test`")

REPO = Path(__file__).resolve().parents[2]
P = ClusterParams(eps=0.5, min_samples=2, max_link=1.0, min_gap=1.0)


# ---------------------------------------------------------------- the daemon on real photos

def test_run_once_assigns_every_face_and_keeps_the_graph(library):
    with Store.open(library.root / "state") as store:
        by_person = library.faces_by_person(store)
        ids, _ = store.vectors()
        with store.read() as conn:
            meta = dict(conn.execute("SELECT key, value FROM meta"))
            edges = conn.execute("SELECT COUNT(*) FROM face_edges").fetchone()[0]
    assert sorted(by_person) == sorted(library.people)
    mains = {p: library.main_identity(pairs) for p, pairs in by_person.items()}
    assert len(set(mains.values())) == len(library.people)  # five people, five identities
    for person, pairs in by_person.items():
        assert sum(i == mains[person] for _, i in pairs) >= library.per_person - 1, person
    assert int(meta["graph_upto"]) == int(ids.max()) and float(meta["graph_radius"]) == 0.43
    assert edges >= len(library.people) * 3


def test_restart_with_20_percent_more_photos_keeps_every_id(library, tmp_path):
    config = library.copy(tmp_path)
    with Store.open(config.state_dir) as store:
        before = {f: i for pairs in library.faces_by_person(store).values() for f, i in pairs}
        mains = {p: library.main_identity(pairs)
                 for p, pairs in library.faces_by_person(store).items()}
    library.add_photos(tmp_path, library.per_person, 1, library.people[:4])    # 20 -> 24 photos
    Daemon(config).run_once(timeout=300)
    with Store.open(config.state_dir) as store:
        after = library.faces_by_person(store)
    assert {f: i for pairs in after.values() for f, i in pairs if f in before} == before
    for person in library.people[:4]:
        new = [i for f, i in after[person] if f not in before]
        assert new == [mains[person]], person


# --------------------------------------------------- the service on a real store, exact vectors

def line_store(root: Path) -> Store:
    store = Store.open(root)
    store.bind_model("line-test", 4)
    return store


def add(store: Store, points, same_image: bool = False) -> list[int]:
    """Faces at these positions on the first axis; one image each unless ``same_image``."""
    ids = []
    groups = [points] if same_image else [[p] for p in points]
    for k, group in enumerate(groups):
        image = store.add_image(f"/in/{time.monotonic_ns()}_{k}.jpg", "/in", None, 1, 1)
        vecs = [np.array([p, 0, 0, 0], np.float32) for p in group]
        ids += store.add_faces(image, [((0, 0, 10, 10), 0.99, v) for v in vecs])
    return ids


def identity_of(store: Store, face_ids) -> list:
    with store.read() as conn:
        got = dict(conn.execute(f"SELECT id, identity_id FROM faces WHERE id IN "
                                f"({','.join('?' * len(face_ids))})", list(face_ids)))
    return [got[f] for f in face_ids]


def test_bridge_face_between_two_named_people_is_a_suggestion_not_a_merge(tmp_path):
    with line_store(tmp_path) as store:
        service = IdentityService(store, P)
        a, b = add(store, [0.0, 0.3]), add(store, [1.0, 1.3])
        service.assign(a); service.assign(b)
        ia, ib = identity_of(store, a)[0], identity_of(store, b)[0]
        assert ia is not None and ib is not None and ia != ib
        corrections.rename(store, ia, "Ann"); corrections.rename(store, ib, "Bob")
        bridge = add(store, [0.65])
        service.assign(bridge)
        service.recluster()
        assert identity_of(store, a + b) == [ia, ia, ib, ib]
        with store.read() as conn:
            assert conn.execute("SELECT a, b, status FROM suggestions").fetchall() == [(ia, ib, "open")]
            assert conn.execute("SELECT COUNT(*) FROM identities WHERE merged_into IS NOT NULL").fetchone()[0] == 0


def test_bridge_between_unnamed_people_merges_into_the_older_id(tmp_path):
    with line_store(tmp_path) as store:
        service = IdentityService(store, P)
        a, b = add(store, [0.0, 0.3]), add(store, [1.0, 1.3])
        service.assign(a); service.assign(b)
        ia, ib = identity_of(store, a)[0], identity_of(store, b)[0]
        service.assign(add(store, [0.65]))
        assert set(identity_of(store, a + b)) == {min(ia, ib)}
        with store.read() as conn:
            assert conn.execute("SELECT merged_into FROM identities WHERE id = ?",
                                (max(ia, ib),)).fetchone()[0] == min(ia, ib)
            assert conn.execute("SELECT COUNT(*) FROM suggestions").fetchone()[0] == 0


def test_two_faces_of_one_photo_never_share_an_identity(tmp_path):
    with line_store(tmp_path) as store:
        service = IdentityService(store, P)
        pair = add(store, [0.0, 0.05], same_image=True)
        service.assign(pair)
        service.assign(add(store, [0.1, 0.2]))
        for _ in range(2):
            x, y = identity_of(store, pair)
            assert x is None or x != y
            service.recluster()


def test_a_face_moved_to_a_far_person_is_still_found_by_the_next_new_face(tmp_path):
    # the search skips people whose centre is far from a new face: a face moved by hand into a
    # person far away must widen that person's bound, or its neighbours would be missed
    with line_store(tmp_path) as store:
        service = IdentityService(store, P)
        a, b = add(store, [0.0, 0.3]), add(store, [5.0, 5.3])
        service.assign(a); service.assign(b)
        service.assign(add(store, [9.0]))         # b's bound is in place after this search
        ib = identity_of(store, b)[0]
        corrections.move_faces(store, [a[1]], ib)
        new = add(store, [0.75])                  # within eps of 0.3 only
        service.assign(new)
        with store.read() as conn:
            edges = conn.execute("SELECT a, b FROM face_edges WHERE b = ?", (new[0],)).fetchall()
        assert edges == [(a[1], new[0])]
        assert identity_of(store, new) == [ib]    # 0.3 is a core face of b now (pinned there)


def test_service_thread_assigns_and_reclusters_after_n_faces_and_sees_outside_corrections(tmp_path):
    changed = threading.Event()
    with line_store(tmp_path) as store:
        service = IdentityService(store, P, recluster_after_faces=4, on_changed=changed.set, poll_s=0.05)
        service.start()
        try:
            first = add(store, [0.0, 0.2])
            service.submit(first)
            assert service.drain(30) and changed.is_set() and service.last_counts is None
            service.submit(add(store, [0.4, 5.0]))
            assert service.drain(30) and service.last_counts["faces"] == 4
            identity = identity_of(store, first)[0]
            changed.clear()
            with Store.open(tmp_path) as other:      # another connection, as another process
                corrections.rename(other, identity, "Ann")
            assert changed.wait(10)
        finally:
            service.stop()


# ------------------------------------------------------------------------ facesortd recluster

def test_cli_recluster_here_and_in_the_running_daemon(library, tmp_path, capsys):
    config = library.copy(tmp_path)
    assert main(["recluster", "--config", str(config.source)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["faces"] >= len(library.people) * library.per_person
    assert out["faces_moved"] == 0 and out["created"] == 0

    log = open(tmp_path / "daemon.log", "w+")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-m", "facesortd", "run", "--config", str(config.source)],
                            stdout=subprocess.DEVNULL, stderr=log, env=env, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 120
        while "facesortd running" not in (tmp_path / "daemon.log").read_text():
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "daemon.log").read_text()
            time.sleep(0.2)
        assert main(["recluster", "--config", str(config.source)]) == 0
        assert json.loads(capsys.readouterr().out) == {"signalled_daemon": proc.pid}
        while "recluster (requested)" not in (tmp_path / "daemon.log").read_text():
            assert time.monotonic() < deadline, (tmp_path / "daemon.log").read_text()
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
