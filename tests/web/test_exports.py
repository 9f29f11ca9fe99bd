"""``POST /api/export`` and the manifest route (issue 16, item 1, the page's side) through Flask's
test client: a new dated folder under ``export.root``, never a path from the request."""

from __future__ import annotations

import csv
import io
import time

import pytest

pytest.importorskip("dlib", reason="the dlib extra is installed by `make test`")


def test_export_selected_goes_to_a_new_dated_folder_with_its_manifest(review, tmp_path):
    config = review.app.config["FACESORTD_CONFIG"]
    people = review.people()
    chosen = [people["Paul_McCartney"], people["JK_Rowling"]]
    elsewhere = tmp_path / "elsewhere"
    first = review.post("/api/export", {"people": chosen, "layout": "single",
                                        "to": str(elsewhere), "path": str(elsewhere)})
    assert first.status_code == 200, first.get_data(as_text=True)
    body = first.json
    folder = config.export.root / body["folder"]
    assert folder.parent == config.export.root and not elsewhere.exists()
    assert body["photos"] == 8 and sorted(body["people"].values()) == [4, 4]
    assert len([p for p in folder.iterdir() if p.suffix == ".jpg"]) == 8
    manifest = review.client.get(body["manifest_url"])
    assert manifest.status_code == 200 and manifest.mimetype == "text/csv"
    rows = list(csv.DictReader(io.StringIO(manifest.get_data(as_text=True))))
    assert len(rows) == 8 and all((folder / r["photo"]).is_file() for r in rows)
    second = review.post("/api/export", {"people": chosen[:1]}).json   # per-person, a new folder
    assert second["folder"] != body["folder"]
    assert len(list((config.export.root / second["folder"]).iterdir())) == 2   # person + manifest


@pytest.mark.parametrize("body, status", [
    ({"people": [999999]}, 404),
    ({"people": []}, 400),
    ({"people": ["../x"]}, 400),
    ({"people": [1], "layout": "../../etc"}, 400),
])
def test_export_refuses_bad_requests_and_writes_nothing(review, body, status):
    config = review.app.config["FACESORTD_CONFIG"]
    assert review.post("/api/export", body).status_code == status
    assert not config.export.root.exists()


def test_export_needs_the_csrf_token_and_the_manifest_route_takes_no_path(review):
    config = review.app.config["FACESORTD_CONFIG"]
    person = review.people()["Paul_McCartney"]
    assert review.client.post("/api/export", json={"people": [person]}).status_code == 403
    assert not config.export.root.exists()
    (config.state_dir / "manifest.csv").write_text("secret")
    for url in ("/exports/../state/manifest.csv", "/exports/..%2fstate/manifest.csv",
                "/exports/2026-01-01_000000/facesortd.db", "/exports/state/manifest.csv"):
        assert review.client.get(url).status_code == 404


def test_an_export_longer_than_the_wait_answers_202_and_is_polled_to_its_result(review):
    """``POST /api/export`` returns at once (202, how far it got) when the copying outlives
    ``WAIT_S`` (here 0 s); ``GET /api/export/<folder>`` answers the same until the result."""
    config = review.app.config["FACESORTD_CONFIG"]
    review.app.config["FACESORTD_EXPORT_WAIT_S"] = 0
    people = review.people()
    chosen = [people["Paul_McCartney"], people["JK_Rowling"]]
    first = review.post("/api/export", {"people": chosen})
    assert first.status_code in (200, 202), first.get_data(as_text=True)
    body = first.json
    if first.status_code == 202:
        assert body["running"] and body["total"] == 8 and 0 <= body["done"] <= 8
        assert body["status_url"] == f"/api/export/{body['folder']}"
    for _ in range(600):
        answer = review.client.get(f"/api/export/{body['folder']}")
        if answer.status_code != 202:
            break
        time.sleep(0.05)
    assert answer.status_code == 200, answer.get_data(as_text=True)
    done = answer.json
    assert not done["running"] and done["photos"] == 8 and done["folder"] == body["folder"]
    folder = config.export.root / done["folder"]
    assert review.client.get(done["manifest_url"]).status_code == 200
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        ["manifest.csv"] + list(done["people"]))
    assert review.client.get("/api/export/2026-01-01_000000").status_code == 404
    assert review.client.get("/api/export/..%2f..").status_code == 404


def test_a_running_export_stops_with_the_server_and_says_so(review):
    """``exports.stop(app)`` (the server's shutdown) stops the copying between two files and
    joins its thread; the status then says how far it got, and no manifest claims more."""
    from facesortd.web import exports

    config = review.app.config["FACESORTD_CONFIG"]
    review.app.config["FACESORTD_EXPORT_WAIT_S"] = 0
    people = review.people()
    body = review.post("/api/export", {"people": list(people.values())}).json
    exports.stop(review.app)
    job = review.app.extensions["facesortd"]["exports"][body["folder"]]
    assert not job.thread.is_alive()
    answer = review.client.get(f"/api/export/{body['folder']}")
    folder = config.export.root / body["folder"]
    if job.report is None:          # stopped before the last file
        assert answer.status_code == 409 and "stopped with the server" in answer.json["error"]
        assert not (folder / "manifest.csv").exists()
    else:                           # it had finished already: the whole result
        assert answer.status_code == 200 and (folder / "manifest.csv").is_file()
