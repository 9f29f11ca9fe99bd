"""Corrections: each one holds through a recluster and a daemon restart, and undo restores it."""

from __future__ import annotations

import numpy as np
import pytest

from facesortd.app.daemon import Daemon
from facesortd.people import corrections as c
from facesortd.people.clustering import ClusterParams
from facesortd.people.service import IdentityService
from facesortd.store.database import Store

pytest.importorskip("dlib", reason="the dlib extra is installed by `make test`")


def state(store: Store) -> dict:
    """Everything a correction may change."""
    with store.read() as conn:
        q = lambda sql: sorted(conn.execute(sql).fetchall())  # noqa: E731
        return {"faces": q("SELECT id, identity_id, pinned, rejected FROM faces"),
                "identities": q("SELECT id, name, merged_into FROM identities"),
                "cannot_link": q("SELECT * FROM cannot_link"),
                "suggestions": q("SELECT id, status FROM suggestions")}


def identity(store: Store, face: int):
    with store.read() as conn:
        return conn.execute("SELECT identity_id FROM faces WHERE id = ?", (face,)).fetchone()[0]


def test_every_correction_survives_a_recluster_and_a_restart(library, tmp_path):
    config = library.copy(tmp_path)
    with Store.open(config.state_dir) as store:
        people = library.faces_by_person(store)
        ids = {p: library.main_identity(pairs) for p, pairs in people.items()}
        face = {p: [f for f, i in pairs if i == ids[p]] for p, pairs in people.items()}
        allyson, antonio, fujio, jk = (ids[p] for p in ("Allyson_Felix", "Antonio_Palocci",
                                                        "Fujio_Cho", "JK_Rowling"))
        c.rename(store, allyson, "Allyson Felix")
        c.merge(store, fujio, into=antonio)                      # a person's "these are one"
        split_off = c.split(store, jk, face["JK_Rowling"][:1])["identity"]
        paul = face["Paul_McCartney"]
        c.move_faces(store, paul[:1], allyson)                   # whatever the vectors say
        c.not_this_person(store, paul[1:2])
        c.reject(store, paul[2:3])
        fresh = c.move_faces(store, face["Allyson_Felix"][:1], "new")["identity"]
        decided = state(store)
        assert paul[2] not in store.vectors()[0]

    def check(store: Store) -> None:
        with store.read() as conn:
            assert conn.execute("SELECT name FROM identities WHERE id = ?", (allyson,)).fetchone()[0] == "Allyson Felix"
            assert conn.execute("SELECT merged_into FROM identities WHERE id = ?", (fujio,)).fetchone()[0] == antonio
            assert conn.execute("SELECT rejected, identity_id FROM faces WHERE id = ?", (paul[2],)).fetchone() == (1, None)
        assert all(identity(store, f) == antonio for f in face["Fujio_Cho"] + face["Antonio_Palocci"])
        assert identity(store, face["JK_Rowling"][0]) == split_off
        assert all(identity(store, f) == jk for f in face["JK_Rowling"][1:])
        assert identity(store, paul[0]) == allyson
        assert identity(store, paul[1]) != ids["Paul_McCartney"]
        assert identity(store, face["Allyson_Felix"][0]) == fresh
        assert all(identity(store, f) == allyson for f in face["Allyson_Felix"][1:])
        assert paul[2] not in store.vectors()[0]

    with Store.open(config.state_dir) as store:
        service = IdentityService(store, ClusterParams.for_embedder(0.43))
        service.recluster(); service.recluster()
        check(store)
    Daemon(config).run_once(timeout=300)                        # a restart, and a recluster
    with Store.open(config.state_dir) as store:
        check(store)
        # nothing a person decided was changed by the clustering (it may add suggestions)
        now, kept = state(store), ("identities", "cannot_link")
        assert {k: now[k] for k in kept} == {k: decided[k] for k in kept}
        pinned = lambda rows: {r[0]: r[1] for r in rows if r[2]}  # noqa: E731
        assert pinned(now["faces"]) == pinned(decided["faces"])


def test_undo_restores_each_operation_exactly(library, tmp_path):
    config = library.copy(tmp_path)
    with Store.open(config.state_dir) as store:
        people = library.faces_by_person(store)
        ids = {p: library.main_identity(pairs) for p, pairs in people.items()}
        faces = {p: [f for f, i in pairs if i == ids[p]] for p, pairs in people.items()}
        a, b, d = ids["Allyson_Felix"], ids["Antonio_Palocci"], ids["JK_Rowling"]
        ops = [
            lambda: c.rename(store, a, "Ann"),
            lambda: c.merge(store, b, into=a),
            lambda: c.split(store, d, faces["JK_Rowling"][:2]),
            lambda: c.move_faces(store, faces["Paul_McCartney"][:2], "new"),
            lambda: c.move_faces(store, faces["Fujio_Cho"][:1], d),
            lambda: c.not_this_person(store, faces["Fujio_Cho"][1:3]),
            lambda: c.reject(store, faces["Paul_McCartney"][2:]),
        ]
        n_vectors = len(store.vectors()[0])
        for op in ops:
            before = state(store)
            op()
            assert state(store) != before
            undone = c.undo(store)
            assert len(undone) == 1
            after = state(store)
            # identities a correction created stay (ids are never reused), empty
            assert {k: v for k, v in after.items() if k != "identities"} == \
                {k: v for k, v in before.items() if k != "identities"}
            assert set(before["identities"]) <= set(after["identities"])
            assert len(store.vectors()[0]) == n_vectors
        assert c.undo(store) == []
        # undo reverses only the last one; --last N the last N
        c.rename(store, a, "One"); c.rename(store, b, "Two"); c.rename(store, d, "Three")
        assert [u["args"]["name"] for u in c.undo(store)] == ["Three"]
        assert [u["args"]["name"] for u in c.undo(store, last=5)] == ["Two", "One"]
        assert [h["op"] for h in c.history(store, 3)] == ["rename"] * 3


def test_bad_requests_change_nothing(library, tmp_path):
    config = library.copy(tmp_path)
    with Store.open(config.state_dir) as store:
        people = library.faces_by_person(store)
        a = library.main_identity(people["Allyson_Felix"])
        b = library.main_identity(people["Antonio_Palocci"])
        before = state(store)
        for bad in (lambda: c.rename(store, 99999, "x"),
                    lambda: c.rename(store, a, "../etc"),
                    lambda: c.move_faces(store, [99999], a),
                    lambda: c.move_faces(store, [], a),
                    lambda: c.merge(store, a, into=a),
                    lambda: c.split(store, a, [f for f, _ in people["Antonio_Palocci"]]),
                    lambda: c.accept_suggestion(store, 12345)):
            with pytest.raises(c.CorrectionError):
                bad()
        assert state(store) == before
        c.merge(store, b, into=a)
        with pytest.raises(c.CorrectionError, match=f"merged into {a}"):
            c.rename(store, b, "late")


def test_suggestions_accept_merges_into_the_named_one_and_dismiss_sticks(tmp_path):
    with Store.open(tmp_path) as store:
        store.bind_model("line-test", 4)
        params = ClusterParams(eps=0.5, min_samples=2, max_link=1.0, min_gap=1.0)
        service = IdentityService(store, params)
        groups = []
        for points in ([0.0, 0.3], [1.0, 1.3], [0.65]):
            ids = []
            for p in points:
                image = store.add_image(f"/in/{p}.jpg", "/in", None, 1, 1)
                ids += store.add_faces(image, [((0, 0, 9, 9), 0.9, np.array([p, 0, 0, 0], np.float32))])
            groups.append(ids)
        service.assign(groups[0]); service.assign(groups[1])
        ia, ib = identity(store, groups[0][0]), identity(store, groups[1][0])
        c.rename(store, ib, "Bob")
        service.assign(groups[2])
        with store.read() as conn:
            (sid, a, b, status), = conn.execute("SELECT id, a, b, status FROM suggestions").fetchall()
        assert status == "open" and {a, b} == {ia, ib}
        c.dismiss_suggestion(store, sid)
        service.recluster()
        with store.read() as conn:
            assert conn.execute("SELECT status FROM suggestions").fetchall() == [("dismissed",)]
        c.undo(store)
        c.accept_suggestion(store, sid)
        assert {identity(store, f) for f in groups[0] + groups[1]} == {ib}
        service.recluster()
        assert {identity(store, f) for f in groups[0] + groups[1]} == {ib}
