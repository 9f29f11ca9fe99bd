"""``POST /api/export`` and the manifest route (issue 16, item 1, the page's side) through Flask's
test client: a new dated folder under ``export.root``, never a path from the request."""

from __future__ import annotations

import csv
import io

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
