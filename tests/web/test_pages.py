"""The review pages, the access token, thumbnails and photos, and ``facesortd web`` serving alone."""

from __future__ import annotations

import io
import json
import os
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from PIL import Image

pytest.importorskip("dlib", reason="the dlib extra is installed by `make test`")

from facesortd.app.review import ReviewServer  # noqa: E402
from facesortd.config import parse_config  # noqa: E402
from facesortd.errors import ConfigError, FacesortdError  # noqa: E402
from facesortd.web import create_app  # noqa: E402

TOKEN = "s3cret-token-for-tests"


@pytest.fixture
def guarded(open_review, tmp_path):
    r = open_review(tmp_path, web=f"{{host: 0.0.0.0, token: {TOKEN}}}")
    yield r
    r.store.close()


def test_every_page_renders_with_its_people_and_a_strict_policy(review):
    people = review.people()
    pages = ["/", "/?q=Person", f"/people/{people['JK_Rowling']}", "/unassigned",
             "/suggestions", "/history"]
    for url in pages:
        r = review.client.get(url)
        assert r.status_code == 200, url
        csp = r.headers["Content-Security-Policy"]
        assert "default-src 'none'" in csp and "script-src 'self'" in csp and "http" not in csp
        assert r.headers["X-Frame-Options"] == "DENY"
        html = r.get_data(as_text=True)
        assert 'name="csrf-token"' in html and "<script>" not in html and "style=" not in html
        assert "http://" not in html and "https://" not in html   # nothing from outside
    overview = review.client.get("/").get_data(as_text=True)
    for identity in people.values():
        assert f'href="/people/{identity}"' in overview
    person = review.client.get(f"/people/{people['JK_Rowling']}").get_data(as_text=True)
    for face in review.faces("JK_Rowling"):
        assert f'data-face="{face}"' in person and f"/thumb/{face}.jpg" in person


def test_page_errors_are_pages(review):
    r = review.client.get("/people/999999")
    assert r.status_code == 404 and "no person with id 999999" in r.get_data(as_text=True)
    assert review.client.get("/?page=abc").status_code == 400
    assert review.client.get("/no/such/page").status_code == 404
    assert review.client.get("/api/no/such").json["status"] == 404


def test_a_merged_person_page_leads_to_the_one_it_went_into(review):
    people = review.people()
    a, b = people["Fujio_Cho"], people["Paul_McCartney"]
    assert review.post(f"/api/identities/{a}/merge", {"into": b}).status_code == 200
    r = review.client.get(f"/people/{a}")
    assert r.status_code == 302 and r.headers["Location"].endswith(f"/people/{b}")


def test_thumbnails_are_face_crops_cached_on_disk_with_caching_headers(review):
    face = review.faces("Paul_McCartney")[0]
    r = review.client.get(f"/thumb/{face}.jpg")
    assert r.status_code == 200 and r.mimetype == "image/jpeg"
    assert "max-age=31536000" in r.headers["Cache-Control"] and r.headers["ETag"]
    picture = Image.open(io.BytesIO(r.data))
    # the face square (never upscaled, at most 160 px), not the 250 px photo
    assert picture.format == "JPEG" and 48 <= picture.size[0] <= 160
    assert abs(picture.size[0] - picture.size[1]) <= 2
    cached = list((review.root / "state" / "thumbs").rglob(f"{face}.jpg"))
    assert len(cached) == 1 and cached[0].read_bytes() == r.data
    again = review.client.get(f"/thumb/{face}.jpg", headers={"If-None-Match": r.headers["ETag"]})
    assert again.status_code == 304 and not again.data


def test_photos_are_served_by_id_only(review):
    face = review.faces("Paul_McCartney")[0]
    with review.store.read() as conn:
        image, path = conn.execute("SELECT f.image_id, COALESCE(p.path, i.path) FROM faces f "
                                   "JOIN images i ON i.id = f.image_id LEFT JOIN placements p "
                                   "ON p.image_id = i.id AND p.kind = 'main' WHERE f.id = ?",
                                   (face,)).fetchone()
    r = review.client.get(f"/image/{image}")
    assert r.status_code == 200 and r.mimetype == "image/jpeg"
    with open(path, "rb") as f:
        assert r.data == f.read()
    for attempt in ("/image/..%2F..%2Fetc%2Fpasswd", "/image/../../etc/passwd", "/thumb/-1.jpg",
                    "/thumb/1.png", "/image/1.5", "/thumb/%2Fetc%2Fpasswd.jpg", "/image/0x10",
                    "/static/../../facesortd.yaml"):
        r = review.client.get(attempt)
        assert r.status_code == 404, attempt
        assert b"root:" not in r.data and b"inboxes" not in r.data


def test_off_loopback_every_request_needs_the_token(guarded):
    c = guarded.client
    assert c.get("/healthz").status_code == 200
    r = c.get("/api/identities")
    assert r.status_code == 401 and "token" in r.json["error"]
    assert c.get("/thumb/1.jpg").status_code == 401
    r = c.get("/people/1")
    assert r.status_code == 302 and "/login?next=/people/1" in r.headers["Location"]
    assert c.get("/api/identities", headers={"Authorization": "Bearer nope"}).status_code == 401
    ok = c.get("/api/identities", headers={"Authorization": f"Bearer {TOKEN}"})
    assert ok.status_code == 200 and ok.json["total"] >= 4


def test_the_login_form_sets_a_cookie_that_is_not_the_token(guarded):
    c = guarded.client
    form = c.get("/login?next=/unassigned")
    assert form.status_code == 200
    csrf = form.get_data(as_text=True).split('name="csrf" value="')[1].split('"')[0]
    r = c.post("/login", data={"token": "wrong", "csrf": csrf, "next": "/unassigned"})
    assert r.status_code == 401 and c.get("/api/identities").status_code == 401
    r = c.post("/login", data={"token": TOKEN, "csrf": "bad", "next": "/"})
    assert r.status_code == 403
    r = c.post("/login", data={"token": TOKEN, "csrf": csrf, "next": "//evil.example/x"})
    assert r.status_code == 302 and r.headers["Location"] == "/"
    cookie = r.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and TOKEN not in cookie
    assert c.get("/unassigned").status_code == 200
    assert c.get("/api/identities").status_code == 200
    # a change still needs the CSRF token, which is tied to the access token
    people = guarded.people()
    url = f"/api/identities/{people['JK_Rowling']}/rename"
    assert c.post(url, json={"name": "JK"}).status_code == 403
    assert guarded.post(url, {"name": "JK"}).status_code == 200
    assert c.post("/logout", headers={"X-CSRF-Token": guarded.csrf}, json={}).status_code == 200
    assert c.get("/api/identities").status_code == 401


def test_an_app_off_loopback_without_a_token_refuses_to_start(tmp_path, review):
    config = parse_config("web: {enabled: false, host: 0.0.0.0}\n", tmp_path / "facesortd.yaml")
    with pytest.raises(ConfigError, match="web.token"):
        create_app(config, review.store)


def _http(url: str, body=None, csrf: str = ""):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method="GET" if body is None else "POST",
                                 headers={"Content-Type": "application/json", "X-CSRF-Token": csrf})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def test_facesortd_web_alone_makes_files_follow_a_rename(library, tmp_path):
    config = library.copy(tmp_path)
    config = parse_config((tmp_path / "facesortd.yaml").read_text()
                          .replace("enabled: false", "enabled: false\n  port: 0"),
                          tmp_path / "facesortd.yaml")
    server = ReviewServer(config)
    server.open()
    try:
        server.start()
        people = {p: library.main_identity(v)
                  for p, v in library.faces_by_person(server.store).items()}
        url = server.web.url
        csrf = _http(url + "api/csrf")["csrf_token"]
        _http(f"{url}api/identities/{people['JK_Rowling']}/rename", {"name": "Joanne"}, csrf)
        folder = tmp_path / "library" / "Joanne"
        for _ in range(100):
            if folder.is_dir() and len(list(folder.iterdir())) >= 3:
                break
            server.stop.wait(0.1)
        names = sorted(p.name for p in folder.iterdir())
        assert len(names) >= 3 and all(n.startswith("JK_Rowling__") for n in names)
        with pytest.raises(urllib.error.HTTPError) as refused:
            _http(f"{url}api/identities/{people['JK_Rowling']}/rename", {"name": "x"})
        refused.value.close()   # an HTTPError holds the connection open: the server's thread waits on it
        assert refused.value.code == 403
        # a second server on the same store is refused while this one holds it
        with pytest.raises(FacesortdError, match="daemon is running"):
            ReviewServer(config).open()
    finally:
        server.close()


def test_facesortd_web_command_reclusters_on_sigusr1_and_stops_on_sigterm(library, tmp_path):
    """`facesortd recluster` signals whoever holds the state folder: `facesortd web` too."""
    import os
    import signal
    import subprocess
    import sys
    import time

    library.copy(tmp_path)
    cfg = tmp_path / "facesortd.yaml"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "facesortd", "web", "--config", str(cfg),
                             "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env)
    try:
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if "review page on http" in line and line.startswith("facesortd"):
                break
        url = lines[-1].split(" on ")[1].strip()
        assert _http(url + "api/identities")["total"] >= 4
        out = subprocess.run([sys.executable, "-m", "facesortd", "recluster", "--config", str(cfg)],
                             capture_output=True, text=True, timeout=60)
        assert json.loads(out.stdout) == {"signalled_daemon": proc.pid}
        deadline = time.monotonic() + 30
        for line in proc.stdout:
            lines.append(line)
            if "recluster (requested)" in line or time.monotonic() > deadline:
                break
        assert any("recluster (requested)" in line for line in lines), "".join(lines)
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_heic_photos_show_on_the_page(review):
    """A HEIC photo (as an iPhone drops it) is sent as an upright JPEG copy; its faces' thumbnails
    are cut from it as from any other photo."""
    from facesortd.store.database import encode_path

    face = review.faces("JK_Rowling")[0]
    with review.store.read() as conn:
        image, path = conn.execute("SELECT f.image_id, p.path FROM faces f JOIN placements p "
                                   "ON p.image_id = f.image_id AND p.kind = 'main' WHERE f.id = ?",
                                   (face,)).fetchone()
    jpeg = Path(os.fsdecode(path))
    heic = jpeg.with_suffix(".heic")
    with Image.open(jpeg) as im:
        size = im.size
        im.save(heic, quality=90)
    with review.store.transaction() as conn:
        conn.execute("UPDATE placements SET path = ? WHERE path = ?", (encode_path(heic), path))
    jpeg.unlink()
    r = review.client.get(f"/image/{image}")
    assert r.status_code == 200 and r.mimetype == "image/jpeg"
    assert Image.open(io.BytesIO(r.data)).size == size
    again = review.client.get(f"/image/{image}", headers={"If-None-Match": r.headers["ETag"]})
    assert again.status_code == 304
    r = review.client.get(f"/thumb/{face}.jpg")
    assert r.status_code == 200 and Image.open(io.BytesIO(r.data)).format == "JPEG"


def test_the_history_page_says_what_each_correction_did_and_where_it_was_made(review):
    """Corrections read from the library folder are marked so; a deletion, a merge and a drawn
    face read as sentences, not JSON."""
    from facesortd.people import corrections

    people = review.people()
    store = review.store
    with store.read() as conn:
        image = conn.execute("SELECT image_id FROM faces WHERE id = ?",
                             (review.faces("JK_Rowling")[0],)).fetchone()[0]
    corrections.merge(store, people["Fujio_Cho"], people["Antonio_Palocci"], origin="library")
    corrections.remove_images(store, [image])
    corrections.confirm(store, review.faces("Paul_McCartney")[:2])
    html = review.client.get("/history").get_data(as_text=True)
    assert f"#{people['Fujio_Cho']} merged into" in html
    assert "merged into" in html and html.count("(in the library folder)") == 2
    assert "1 photo deleted from the library: never placed again" in html
    assert "2 faces confirmed in their person" in html
    assert "removed photos" in html and "{&#34;" not in html and '{"' not in html
