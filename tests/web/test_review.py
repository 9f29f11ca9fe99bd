"""Review at scale (issue 18) through Flask's test client: the review queue, confirming, hiding a
person, a person's faces most doubtful first, the photo with its faces."""

from __future__ import annotations

import re

import numpy as np
import pytest

from facesortd.library.placer import Placer

pytest.importorskip("dlib", reason="the dlib extra is installed by `make test`")


def _queue(review) -> list[dict]:
    out, page = [], 1
    while True:
        body = review.client.get(f"/api/review?page={page}").json
        out += body["faces"]
        if not body["more"]:
            return out
        page += 1


def test_the_queue_is_most_doubtful_first_and_confirmed_faces_leave_it_for_good(review):
    queue = _queue(review)
    assert len(queue) >= 10
    scores = [f["score"] for f in queue]
    assert scores == sorted(scores, reverse=True)
    first = queue[0]
    assert set(first) == {"face_id", "image_id", "person", "candidate", "score"}
    assert first["candidate"]["id"] != first["person"]["id"]
    page = review.client.get("/review").get_data(as_text=True)
    assert f'data-face="{first["face_id"]}"' in page and "Right person" in page

    assert review.post("/api/faces/confirm", {"faces": [first["face_id"]]}).status_code == 200
    assert first["face_id"] not in {f["face_id"] for f in _queue(review)}
    assert review.post("/api/recluster").status_code == 202          # still gone after a recluster
    assert first["face_id"] not in {f["face_id"] for f in _queue(review)}
    assert review.post("/api/undo").json["undone"][0]["op"] == "confirm"
    assert first["face_id"] in {f["face_id"] for f in _queue(review)}
    # moving to the candidate takes it out too (a moved face is pinned)
    second = _queue(review)[1]
    assert review.post("/api/faces/move", {"faces": [second["face_id"]],
                                           "to": second["candidate"]["id"]}).status_code == 200
    assert second["face_id"] not in {f["face_id"] for f in _queue(review)}
    loose = review.post("/api/faces/not-this-person", {"faces": [first["face_id"]]})
    assert loose.status_code == 200
    assert review.post("/api/faces/confirm", {"faces": [first["face_id"]]}).status_code == 409


def test_a_person_page_shows_the_most_doubtful_faces_first(review):
    person = review.people()["Paul_McCartney"]
    faces = review.client.get(f"/api/identities/{person}").json["faces"]
    doubts = [f["doubt"] for f in faces]
    assert None not in doubts and doubts == sorted(doubts, reverse=True)
    by_date = review.client.get(f"/api/identities/{person}?order=date").json["faces"]
    assert sorted(f["id"] for f in by_date) == sorted(f["id"] for f in faces)
    assert review.client.get(f"/api/identities/{person}?order=size").status_code == 400
    page = review.client.get(f"/people/{person}?order=date").get_data(as_text=True)
    assert "<strong>by date</strong>" in page


def test_a_hidden_person_leaves_the_overview_and_the_queue_and_its_photos_their_folder(review):
    config = review.app.config["FACESORTD_CONFIG"]
    placer = Placer(config, review.store)
    placer.sync()
    paul = review.people()["Paul_McCartney"]
    folder = config.library / f"Person_{paul:04d}"
    photos = sorted(p.name for p in folder.iterdir())
    assert photos
    assert review.post(f"/api/identities/{paul}/hide").json["hidden"] is True
    assert paul not in {p["id"] for p in review.client.get("/api/identities").json["identities"]}
    assert paul in {p["id"] for p in review.client.get("/api/identities?hidden=1").json["identities"]}
    assert paul not in {f["person"]["id"] for f in _queue(review)}
    assert f'data-identity="{paul}"' in review.client.get("/hidden").get_data(as_text=True)
    review.post("/api/recluster")                                    # kept through a recluster
    assert paul in {p["id"] for p in review.client.get("/api/identities?hidden=1").json["identities"]}
    placer.sync()
    assert not folder.exists() or not any(folder.iterdir())
    unknown = config.library / config.placement.unknown_dir
    assert set(photos) <= {p.name for p in unknown.iterdir()}
    assert review.post(f"/api/identities/{paul}/unhide").status_code == 200
    placer.sync()
    assert sorted(p.name for p in folder.iterdir()) == photos
    assert review.post(f"/api/identities/{paul}/hide").status_code == 200
    assert review.post("/api/undo").json["undone"][0]["op"] == "hide"
    assert paul in {p["id"] for p in review.client.get("/api/identities").json["identities"]}


def test_the_photo_view_draws_every_face_with_its_person(review):
    with review.store.read() as conn:
        image_id = conn.execute("SELECT image_id FROM faces GROUP BY image_id "
                                "ORDER BY COUNT(*) DESC LIMIT 1").fetchone()[0]
    data = review.client.get(f"/api/images/{image_id}").json
    assert data["faces"] and all(len(f["box"]) == 4 for f in data["faces"])
    page = review.client.get(f"/photo/{image_id}").get_data(as_text=True)
    placed = [[float(v) for v in m.split()] for m in re.findall(r'data-pct="([^"]+)"', page)]
    assert len(placed) == len(data["faces"])
    for left, top, width, height in placed:     # inside the photo, in per cent
        assert 0 <= left and 0 <= top and 0 < width and 0 < height
        assert left + width <= 100.5 and top + height <= 100.5
    for f in data["faces"]:
        assert f'data-face="{f["id"]}"' in page
        if f["person"]:
            assert f["person"]["display_name"] in page
    assert review.client.get("/photo/999999").status_code == 404
    assert review.client.get("/api/images/999999").status_code == 404


def test_a_face_drawn_on_a_photo_is_embedded_pinned_and_undone(review):
    """Drawn where the detector found Paul's face, the new face's vector is that face's (the same
    cut through the same model), pinned to the person named; undo takes it out again."""
    face = review.faces("Paul_McCartney")[0]
    with review.store.read() as conn:
        image_id, *box = conn.execute("SELECT image_id, box_x1, box_y1, box_x2, box_y2 FROM faces "
                                      "WHERE id = ?", (face,)).fetchone()
    ids, matrix = review.store.vectors()
    before = matrix[ids == face][0].copy()
    target = review.people()["JK_Rowling"]          # a person decides; the model does not
    r = review.post(f"/api/images/{image_id}/faces", {"box": box, "to": target})
    assert r.status_code == 200, r.json
    drawn = r.json["face"]
    ids, matrix = review.store.vectors()
    assert float(np.linalg.norm(matrix[ids == drawn][0] - before)) < 0.05
    with review.store.read() as conn:
        assert conn.execute("SELECT identity_id, pinned FROM faces WHERE id = ?",
                            (drawn,)).fetchone() == (target, 1)
    assert "changed" in review.calls
    shown = review.client.get(f"/api/images/{image_id}").json["faces"]
    assert drawn in {f["id"] for f in shown}
    assert review.post("/api/undo").json["undone"][0]["op"] == "add_face"
    assert drawn not in {f["id"] for f in review.client.get(f"/api/images/{image_id}").json["faces"]}
    assert drawn not in review.store.vectors()[0]
    # a new person from a drawn face; bad boxes are refused with a reason
    r = review.post(f"/api/images/{image_id}/faces", {"box": box, "to": "new"})
    assert r.status_code == 200 and r.json["identity"] not in review.people().values()
    for bad in ([1, 2, 3], [0, 0, 5, 5], ["a", 0, 10, 10], [-50, -50, -10, -10]):
        r = review.post(f"/api/images/{image_id}/faces", {"box": bad, "to": target})
        assert r.status_code == 400 and "box" in r.json["error"], bad
    assert review.post("/api/images/999999/faces", {"box": box, "to": target}).status_code == 404


def test_the_overview_sorts_by_size_name_or_most_doubtful_faces(review):
    def order(sort: str) -> list[int]:
        return [p["id"] for p in review.client.get(f"/api/identities?sort={sort}").json["identities"]]

    by_size = order("size")
    assert by_size == [p["id"] for p in review.client.get("/api/identities").json["identities"]]
    named = next(i for p, i in sorted(review.people().items()) if i != by_size[0])
    review.post(f"/api/identities/{named}/rename", {"name": "Aaron First"})
    assert order("name")[0] == named and sorted(order("name")) == sorted(by_size)
    assert review.client.get("/api/identities?sort=bogus").status_code == 400
    page = review.client.get("/?sort=name").get_data(as_text=True)
    assert "<strong>name</strong>" in page and 'data-sort="size"' in page
    # most doubtful faces first: the small library's faces all sit well inside their people, so
    # give a few of them the scores the identity service writes for doubtful faces
    from facesortd.people.doubt import DOUBTFUL, write_doubt
    assert order("doubt") == by_size          # nothing doubtful: the same as by size
    two, one, confirmed = by_size[-1], by_size[-2], by_size[-3]
    faces = {i: [f["id"] for f in review.client.get(f"/api/identities/{i}").json["faces"]]
             for i in (two, one, confirmed)}
    assert review.post("/api/faces/confirm", {"faces": faces[confirmed][:1]}).status_code == 200
    with review.store.transaction() as conn:
        write_doubt(conn, np.array([faces[two][0], faces[two][1], faces[one][0], faces[confirmed][0],
                                    faces[confirmed][1]]),
                    np.array([DOUBTFUL + 0.05, DOUBTFUL, 0.99, 0.99, DOUBTFUL - 0.01]),
                    np.array([one, one, two, two, two]))
    by_doubt = order("doubt")   # two doubtful faces, then one; confirmed and below the mark count not
    assert by_doubt == [two, one] + [i for i in by_size if i not in (two, one)]
    page = review.client.get("/?sort=doubt").get_data(as_text=True)
    assert "<strong>most doubtful faces</strong>" in page
