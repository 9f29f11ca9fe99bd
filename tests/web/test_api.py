"""The review API through Flask's test client, over a real store made by the real daemon."""

from __future__ import annotations

import pytest

pytest.importorskip("dlib", reason="the dlib extra is installed by `make test`")


def test_lists_people_largest_first_with_samples_and_pages(review):
    body = review.client.get("/api/identities").json
    assert body["total"] == len(body["identities"]) >= 4
    counts = [p["face_count"] for p in body["identities"]]
    assert counts == sorted(counts, reverse=True)
    first = body["identities"][0]
    assert first["display_name"] == f"Person_{first['id']:04d}" and first["name"] is None
    assert 1 <= len(first["sample_face_ids"]) <= 4
    one = review.client.get(f"/api/identities/{first['id']}").json
    assert one["face_count"] == first["face_count"] == len(one["faces"])
    assert {f["id"] for f in one["faces"]} >= set(first["sample_face_ids"])
    assert review.client.get("/api/identities?page=2").json["identities"] == []
    assert review.client.get(f"/api/identities?q=%23{first['id']}").json["total"] == 1
    assert review.client.get(f"/api/identities?q=Person_{first['id']:04d}").json["total"] == 1


@pytest.mark.parametrize("query", ["page=0", "page=abc", "page=-1", "page=99999999", "q=" + "x" * 101])
def test_bad_parameters_are_400_with_a_reason(review, query):
    r = review.client.get(f"/api/identities?{query}")
    assert r.status_code == 400 and ("page" in r.json["error"] or "q must" in r.json["error"])


def test_unknown_ids_are_404(review):
    people = review.people()
    some = next(iter(people.values()))
    assert review.client.get("/api/identities/999999").status_code == 404
    assert review.post("/api/identities/999999/rename", {"name": "X"}).status_code == 404
    assert review.post(f"/api/identities/{some}/merge", {"into": 999999}).status_code == 404
    assert review.post("/api/faces/move", {"faces": [999999], "to": some}).status_code == 404
    assert review.post("/api/suggestions/999999/accept").status_code == 404
    assert review.client.get("/thumb/999999.jpg").status_code == 404
    assert review.client.get("/image/999999").status_code == 404
    assert review.calls == []


@pytest.mark.parametrize("path,body", [
    ("/api/faces/move", {"faces": [], "to": "new"}),
    ("/api/faces/move", {"faces": ["1"], "to": "new"}),
    ("/api/faces/move", {"faces": [True], "to": "new"}),
    ("/api/faces/move", {"faces": [1], "to": "elsewhere"}),
    ("/api/faces/move", {"faces": 1, "to": "new"}),
    ("/api/faces/reject", {"faces": [1.5]}),
    ("/api/faces/not-this-person", {}),
    ("/api/identities/1/rename", {"name": 7}),
    ("/api/identities/1/rename", {"name": "n" * 201}),
    ("/api/identities/1/merge", {"into": "2"}),
    ("/api/identities/1/merge", [2]),
])
def test_malformed_bodies_are_400_and_change_nothing(review, path, body):
    before = review.client.get("/api/history").json
    r = review.post(path, body)
    assert r.status_code == 400, r.json
    assert r.json["error"]
    assert review.client.get("/api/history").json == before and review.calls == []


def test_changes_need_the_csrf_token_json_and_this_origin(review):
    url = f"/api/identities/{next(iter(review.people().values()))}/rename"
    assert review.client.post(url, json={"name": "A"}).status_code == 403
    r = review.client.post(url, json={"name": "A"}, headers={"X-CSRF-Token": "f" * 64})
    assert r.status_code == 403 and "CSRF" in r.json["error"]
    r = review.post(url, data="name=A", content_type="application/x-www-form-urlencoded")
    assert r.status_code == 415
    r = review.post(url, {"name": "A"}, headers={"Origin": "http://evil.example"})
    assert r.status_code == 403
    assert review.client.get(url).status_code == 405
    assert review.client.get("/api/history").json["history"] == []
    assert review.post(url, {"name": "A"}, headers={"Origin": "http://localhost"}).status_code == 200


def test_rename_merge_move_and_undo(review):
    people = review.people()
    felix, palocci = people["Allyson_Felix"], people["Antonio_Palocci"]
    r = review.post(f"/api/identities/{felix}/rename", {"name": "Allyson Felix"})
    assert r.status_code == 200 and r.json["name"] == "Allyson Felix"
    assert review.calls == ["changed"]
    found = review.client.get("/api/identities?q=allyson").json["identities"]
    assert [p["id"] for p in found] == [felix] and found[0]["display_name"] == "Allyson Felix"
    assert review.post(f"/api/identities/{felix}/rename", {"name": "a/b"}).status_code == 409
    assert review.post(f"/api/identities/{felix}/merge", {"into": felix}).status_code == 409

    face = review.faces("Antonio_Palocci")[0]
    r = review.post("/api/faces/move", {"faces": [face], "to": felix})
    assert r.status_code == 200 and r.json["identity"] == felix
    moved = review.client.get(f"/api/identities/{felix}").json["faces"]
    assert face in [f["id"] for f in moved] and next(f for f in moved if f["id"] == face)["pinned"]

    r = review.post(f"/api/identities/{palocci}/merge", {"into": felix})
    assert r.status_code == 200
    assert review.client.get(f"/api/identities/{palocci}").json["merged_into"] == felix
    assert palocci not in [p["id"] for p in review.client.get("/api/identities").json["identities"]]
    assert review.post(f"/api/identities/{palocci}/rename", {"name": "X"}).status_code == 409

    done = review.client.get("/api/history").json["history"]
    assert [h["op"] for h in done] == ["merge", "move_faces", "rename"]
    assert [h["summary"] for h in done] == [
        f"#{palocci} merged into Allyson Felix (#{felix})",
        f"1 face moved to Allyson Felix (#{felix})", f"#{felix} named “Allyson Felix”"]
    history_page = review.client.get("/history").get_data(as_text=True)
    assert f"merged into Allyson Felix (#{felix})" in history_page
    for expected in ("merge", "move_faces", "rename"):
        r = review.post("/api/undo")
        assert r.status_code == 200 and r.json["undone"][0]["op"] == expected
    assert review.post("/api/undo").status_code == 409
    assert review.people()["Antonio_Palocci"] == palocci
    assert review.client.get(f"/api/identities/{felix}").json["name"] is None


def test_new_person_not_this_person_and_not_a_face(review):
    jk = review.faces("JK_Rowling")
    r = review.post("/api/faces/move", {"faces": jk[:2], "to": "new"})
    assert r.status_code == 200
    new = r.json["identity"]
    assert review.client.get(f"/api/identities/{new}").json["face_count"] == 2

    r = review.post("/api/faces/not-this-person", {"faces": [jk[0]]})
    assert r.status_code == 200
    unassigned = review.client.get("/api/unassigned").json
    assert jk[0] in [f["id"] for f in unassigned["faces"]]

    r = review.post("/api/faces/reject", {"faces": [jk[0]]})
    assert r.status_code == 200
    assert jk[0] not in [f["id"] for f in review.client.get("/api/unassigned").json["faces"]]
    assert review.post("/api/faces/reject", {"faces": [jk[0]]}).status_code == 404
    assert review.calls == ["changed"] * 3


def test_suggestions_accept_and_dismiss(review):
    people = review.people()
    a, b, c = people["Fujio_Cho"], people["Paul_McCartney"], people["JK_Rowling"]
    with review.store.transaction() as conn:
        conn.executemany("INSERT INTO suggestions (a, b, distance, status) VALUES (?, ?, ?, 'open')",
                         [(a, b, 0.41), (a, c, 0.45)])
    listed = review.client.get("/api/suggestions").json["suggestions"]
    assert [(s["a"]["id"], s["b"]["id"]) for s in listed] == [(a, b), (a, c)]
    assert listed[0]["a"]["face_count"] >= 1 and listed[0]["distance"] == 0.41
    r = review.post(f"/api/suggestions/{listed[1]['id']}/dismiss")
    assert r.status_code == 200
    r = review.post(f"/api/suggestions/{listed[0]['id']}/accept")
    assert r.status_code == 200 and r.json["identity"] == a
    assert review.client.get("/api/suggestions").json["suggestions"] == []
    assert review.post(f"/api/suggestions/{listed[0]['id']}/accept").status_code == 409


def test_recluster_runs_and_keeps_corrections(review):
    people = review.people()
    review.post(f"/api/identities/{people['Fujio_Cho']}/rename", {"name": "Fujio Cho"})
    r = review.post("/api/recluster")
    assert r.status_code == 202 and r.json["ok"]
    assert "recluster" in review.calls
    named = review.client.get("/api/identities?q=Fujio").json["identities"]
    assert [p["id"] for p in named] == [people["Fujio_Cho"]]
