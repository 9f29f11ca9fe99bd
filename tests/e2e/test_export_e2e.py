"""The overview's "Export selected…" in real headless Chromium (issue 16, item 1): tick two people,
export them as one folder, follow the link to the manifest; the photos are in a new dated folder
under ``export.root`` and the library is as it was. ``facesortd web``'s server, in process, over
a copy of the small real library. Any console or page error fails the test."""

from __future__ import annotations

import csv
import hashlib
import io
from pathlib import Path

import pytest

from facesortd.app.review import ReviewServer
from facesortd.config import parse_config

pytest.importorskip("dlib", reason="the dlib extra is installed by `make test`")


def _tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_export_selected_people_from_the_overview(library, tmp_path, sync_playwright, launch_chromium):
    library.copy(tmp_path)
    path = tmp_path / "facesortd.yaml"
    config = parse_config(path.read_text().replace("enabled: false", "enabled: false\n  port: 0"), path)
    before = _tree(config.library)
    server = ReviewServer(config)
    server.open()
    server.web.app.config["FACESORTD_EXPORT_WAIT_S"] = 0   # the POST answers 202: the page polls
    errors: list[str] = []
    answers: list[tuple[str, int]] = []
    try:
        server.start()
        people = {p: library.main_identity(v) for p, v in library.faces_by_person(server.store).items()}
        chosen = [people["Paul_McCartney"], people["Fujio_Cho"]]
        with sync_playwright() as pw:
            chromium = launch_chromium(pw)
            try:
                page = chromium.new_page()
                page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
                page.on("pageerror", lambda e: errors.append(str(e)))
                page.on("response", lambda r: answers.append((r.url, r.status))
                        if "/api/export" in r.url else None)
                assert page.goto(server.web.url).ok
                page.click("[data-export-open]")                 # nothing ticked: says so
                assert "Tick the people" in page.inner_text("#status")
                for identity in chosen:
                    page.check(f'input[data-pick="{identity}"]')
                assert page.inner_text("[data-export-count]") == "2 ticked"
                page.click("[data-export-open]")
                page.select_option("[data-export-layout]", "single")
                page.click("[data-export-start]")
                link = page.wait_for_selector("a[data-export-manifest]", timeout=60_000)
                folder = config.export.root / link.get_attribute("data-export-manifest")
                assert "8 photo(s) exported to" in page.inner_text("[data-export-result]")
                response = page.request.get(server.web.url.rstrip("/") + link.get_attribute("href"))
                assert response.ok
                rows = list(csv.DictReader(io.StringIO(response.text())))
            finally:
                chromium.close()
    finally:
        server.close()
    assert errors == []
    (post, status), polls = answers[0], answers[1:]
    assert post.endswith("/api/export") and status in (200, 202)
    if status == 202:     # the export outlived the POST: the page asked how far until it was done
        assert polls and all(u.endswith(f"/api/export/{folder.name}") for u, _ in polls)
        assert polls[-1][1] == 200 and all(s == 202 for _, s in polls[:-1])
    assert folder.parent == config.export.root and (folder / "manifest.csv").is_file()
    assert len(rows) == 8
    for row in rows:
        assert row["photo"].startswith(row["person"] + " - ")
        assert hashlib.sha256((folder / row["photo"]).read_bytes()).hexdigest() == row["sha256"]
    assert {r["person"] for r in rows} == {f"Person_{i:04d}" for i in chosen}
    assert _tree(config.library) == before
