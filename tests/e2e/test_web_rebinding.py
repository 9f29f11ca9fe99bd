"""DNS rebinding against the real server: ``facesortd web --port 0`` (config port 8765, bound to
127.0.0.1, no token: the default) over a copy of the small real library.

The attack as a browser makes it, once a web site has rebound its own name to 127.0.0.1: the
site's name as ``Host`` and ``Origin``. Raw HTTP first (the page, the CSRF token, a photo, a
rename: all refused, the store and the files unchanged afterwards; every allowed name served),
then real headless Chromium told ``--host-resolver-rules="MAP attacker.test 127.0.0.1"``: it
opens ``http://attacker.test:<port>/`` and gets no page and no token, and a script of that origin
gets nothing either, while the same script on ``http://127.0.0.1:<port>/`` gets everything.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("dlib", reason="the dlib extra is installed by `make test`")

REPO = Path(__file__).resolve().parents[2]
ATTACKER = "attacker.test"


class Served:
    """``facesortd web --port 0`` in a subprocess; its output goes to a file (no pipe to drain)."""

    def __init__(self, root: Path):
        self.root = root
        self.log_path = root / "web.log"
        env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "facesortd", "web", "--config", str(root / "facesortd.yaml"),
                 "--port", "0"], cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while True:
            m = re.search(r"^facesortd review page on http://127\.0\.0\.1:(\d+)/$", self.log(), re.M)
            if m:
                self.port = int(m.group(1))
                break
            assert self.proc.poll() is None and time.monotonic() < deadline, self.log()
            time.sleep(0.1)

    def log(self) -> str:
        return self.log_path.read_text()

    def request(self, method: str, path: str, host: str, body=None, headers=None):
        """(status, headers, body bytes) of one request to 127.0.0.1 that names ``host``."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            data = None if body is None else json.dumps(body).encode()
            conn.request(method, path, body=data, headers={
                "Host": host, **({"Content-Type": "application/json"} if data else {}),
                **(headers or {})})
            r = conn.getresponse()
            return r.status, dict(r.getheaders()), r.read()
        finally:
            conn.close()

    def stop(self) -> int:
        try:
            if self.proc.poll() is None:
                self.proc.terminate()
            return self.proc.wait(60)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="module")
def served(library, tmp_path_factory):
    root = tmp_path_factory.mktemp("rebinding")
    library.copy(root, extra="  allowed_hosts: [photos.test]\n")
    server = Served(root)
    yield server
    assert server.stop() == 0, server.log()


def store_rows(root: Path) -> dict:
    conn = sqlite3.connect(f"file:{root / 'state' / 'facesortd.db'}?mode=ro", uri=True, timeout=10)
    try:
        tables = [t for (t,) in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        return {t: conn.execute(f"SELECT * FROM {t}").fetchall() for t in tables}
    finally:
        conn.close()


def files(root: Path) -> list[tuple[str, int]]:
    return sorted((str(p.relative_to(root)), p.stat().st_size) for d in ("library", "inbox")
                  for p in (root / d).rglob("*") if p.is_file())


def target(root: Path) -> tuple[int, int, int]:
    """(identity, one of its faces, that face's photo) of JK_Rowling, read beside the server."""
    conn = sqlite3.connect(f"file:{root / 'state' / 'facesortd.db'}?mode=ro", uri=True, timeout=10)
    try:
        face, identity, image = conn.execute(
            "SELECT f.id, f.identity_id, f.image_id FROM faces f JOIN images i ON i.id = f.image_id "
            "WHERE f.rejected = 0 AND f.identity_id IS NOT NULL AND i.path LIKE '%JK_Rowling__%' "
            "ORDER BY f.id").fetchone()
    finally:
        conn.close()
    return identity, face, image


def test_the_attack_requests_are_refused_and_change_nothing(served):
    identity, face, image = target(served.root)
    _, _, token_body = served.request("GET", "/api/csrf", f"127.0.0.1:{served.port}")
    csrf = json.loads(token_body)["csrf_token"]   # the attacker would not have it; still refused
    rows, on_disk = store_rows(served.root), files(served.root)
    for host in (f"{ATTACKER}:8799", f"{ATTACKER}:{served.port}", ATTACKER):
        origin = {"Origin": f"http://{host}"}
        for method, path, body in [
                ("GET", "/", None), ("GET", "/api/csrf", None), ("GET", f"/image/{image}", None),
                ("POST", f"/api/identities/{identity}/rename", {"name": "pwned"}),
                ("GET", f"/thumb/{face}.jpg", None), ("GET", "/healthz", None),
                ("GET", "/metrics", None), ("GET", "/static/review.js", None),
                ("GET", f"/people/{identity}", None), ("POST", "/api/undo", {})]:
            status, headers, data = served.request(method, path, host, body,
                                                   {**origin, "X-CSRF-Token": csrf})
            assert status == 421, (host, method, path, status)
            assert headers["Content-Type"] == "application/json" and len(data) < 300
            assert csrf.encode() not in data and b"web.allowed_hosts" in data
    time.sleep(1.0)   # a change would reach the placer within its 0.3 s debounce
    assert store_rows(served.root) == rows and files(served.root) == on_disk
    assert served.log().count(f"refused a request for Host '{ATTACKER}:8799'") == 1


def test_each_allowed_name_is_served(served):
    identity, face, image = target(served.root)
    port = served.port
    for i, host in enumerate([f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}",
                              "photos.test", f"photos.test:{port}"]):
        status, _, page = served.request("GET", "/", host)
        assert status == 200 and b"<html" in page, host
        status, _, body = served.request("GET", "/api/csrf", host)
        assert status == 200, host
        csrf = json.loads(body)["csrf_token"]
        assert csrf.encode() in page
        status, headers, photo = served.request("GET", f"/image/{image}", host)
        assert status == 200 and headers["Content-Type"] == "image/jpeg" and len(photo) > 1000
        assert headers["Cache-Control"].startswith("private")
        status, headers, _ = served.request("GET", f"/thumb/{face}.jpg", host)
        assert status == 200 and headers["Cache-Control"].startswith("private")
        status, _, body = served.request("POST", f"/api/identities/{identity}/rename", host,
                                         {"name": f"Joanne {i}"},
                                         {"X-CSRF-Token": csrf, "Origin": f"http://{host}"})
        assert status == 200 and json.loads(body)["name"] == f"Joanne {i}", (host, body)
    # the files follow the last rename
    folder = served.root / "library" / "Joanne 4"
    deadline = time.monotonic() + 30
    while not (folder.is_dir() and len(list(folder.iterdir())) >= 3):
        assert time.monotonic() < deadline, files(served.root)
        time.sleep(0.1)


def test_port_0_is_served_at_localhost_on_the_port_it_chose(served):
    """The config says 8765; ``--port 0`` chose another: the name a user types works with it."""
    assert served.port != 8765
    url = f"http://localhost:{served.port}/api/identities"
    with urllib.request.urlopen(url, timeout=30) as r:
        assert r.status == 200 and json.loads(r.read())["total"] >= 4
    status, _, _ = served.request("GET", "/api/identities", "localhost:8765")
    assert status == 421   # the configured port is not the one it listens on


ATTACK = """async ([identity, image, stolen]) => {
  const out = {};
  const page = await fetch('/');
  out.page = [page.status, await page.text()];
  const csrf = await fetch('/api/csrf');
  out.csrf = [csrf.status, await csrf.text()];
  let token = stolen;
  try { token = JSON.parse(out.csrf[1]).csrf_token || stolen; } catch (e) {}
  const photo = await fetch('/image/' + image);
  out.photo = [photo.status, (await photo.arrayBuffer()).byteLength,
               photo.headers.get('content-type')];
  const rename = await fetch('/api/identities/' + identity + '/rename', {
    method: 'POST', headers: {'Content-Type': 'application/json', 'X-CSRF-Token': token},
    body: JSON.stringify({name: 'pwned'})});
  out.rename = [rename.status, await rename.text()];
  return out;
}"""


def test_chromium_on_a_rebound_name_gets_no_page_no_token_and_no_photo(served, sync_playwright,
                                                                       launch_chromium):
    identity, _, image = target(served.root)
    port = served.port
    _, _, body = served.request("GET", "/api/csrf", f"127.0.0.1:{port}")
    csrf = json.loads(body)["csrf_token"]
    rows, on_disk = store_rows(served.root), files(served.root)
    with sync_playwright() as pw:
        chromium = launch_chromium(pw, f"--host-resolver-rules=MAP {ATTACKER} 127.0.0.1")
        try:
            page = chromium.new_page()
            page.set_default_timeout(20_000)
            # The user's browser opens the attacker's rebound name: no page, no token.
            response = page.goto(f"http://{ATTACKER}:{port}/")
            assert response is not None and response.status == 421
            text = page.content()
            assert "web.allowed_hosts" in text and csrf not in text and "csrf" not in text.lower()
            # A script of that origin (what the attacker's page runs after rebinding): each
            # request reaches the server (a status, not a network error) and is refused, even
            # with a token it could not have got.
            got = page.evaluate(ATTACK, [identity, image, csrf])
            assert got["page"][0] == got["csrf"][0] == got["photo"][0] == got["rename"][0] == 421, got
            assert csrf not in got["page"][1] + got["csrf"][1] and got["photo"][1] < 300
            time.sleep(1.0)
            assert store_rows(served.root) == rows and files(served.root) == on_disk

            # The same script on the page's own address gets everything: the test is real.
            response = page.goto(f"http://127.0.0.1:{port}/")
            assert response is not None and response.status == 200 and csrf in page.content()
            got = page.evaluate(ATTACK, [identity, image, ""])
            assert got["csrf"][0] == 200 and json.loads(got["csrf"][1])["csrf_token"] == csrf
            assert got["photo"][0] == 200 and got["photo"][1] > 1000, got["photo"]
            assert got["rename"][0] == 200 and json.loads(got["rename"][1])["name"] == "pwned"
        finally:
            chromium.close()
