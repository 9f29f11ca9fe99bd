"""/healthz and /metrics through the Flask test client, over a real store."""

from __future__ import annotations

import numpy as np
import pytest

from facesortd.config import parse_config
from facesortd.store.database import Store
from facesortd.telemetry import Telemetry, parse_prometheus
from facesortd.web import create_app


@pytest.fixture
def store(tmp_path):
    s = Store.open(tmp_path / "state")
    s.bind_model("dlib-resnet-v1", 128)
    image = s.add_image(tmp_path / "inbox" / "a.jpg", tmp_path / "inbox", "ab" * 32, 10, 1)
    v = np.ones(128, np.float32) / np.sqrt(128)
    s.add_faces(image, [((0, 0, 10, 10), 1.0, v), ((5, 5, 15, 15), 0.99, v)])
    s.add_image(tmp_path / "inbox" / "b.jpg", tmp_path / "inbox", None, 0, 1, status="error",
                error="the file is empty (0 bytes)")
    yield s
    s.close()


def make_app(tmp_path, store, telemetry=None, web="{}"):
    config = parse_config(f"web: {web}\n", tmp_path / "facesortd.yaml")
    return create_app(config, store, telemetry, test_config={"TESTING": True})


def test_healthz_and_metrics(tmp_path, store):
    telemetry = Telemetry()
    telemetry.file_finished("done")
    client = make_app(tmp_path, store, telemetry).test_client()
    r = client.get("/healthz")
    assert r.status_code == 200 and r.json["status"] == "ok" and r.json["problems"] == []
    r = client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    m = parse_prometheus(r.get_data(as_text=True))
    assert m['facesortd_store_images{status="done"}'] == 1
    assert m['facesortd_store_images{status="error"}'] == 1
    assert m["facesortd_store_faces"] == 2 and m["facesortd_store_faces_unassigned"] == 2
    assert m['facesortd_files_total{outcome="done"}'] == 1


def test_without_a_daemon_the_store_figures_are_still_served(tmp_path, store):
    client = make_app(tmp_path, store).test_client()
    m = parse_prometheus(client.get("/metrics").get_data(as_text=True))
    assert m["facesortd_store_faces"] == 2
    assert client.get("/healthz").json == {"status": "ok", "problems": []}


def test_unhealthy_daemon_and_closed_store_answer_503(tmp_path, store):
    telemetry = Telemetry()
    telemetry.up.set(0)
    telemetry.unhealthy_reason = "thread(s) stopped: facesortd-model"
    client = make_app(tmp_path, store, telemetry).test_client()
    r = client.get("/healthz")
    assert r.status_code == 503 and r.json["problems"] == ["thread(s) stopped: facesortd-model"]
    store.close()
    r = make_app(tmp_path, store).test_client().get("/healthz")
    assert r.status_code == 503 and r.json["problems"][0].startswith("store:")


def test_token_guards_everything_but_healthz(tmp_path, store):
    client = make_app(tmp_path, store, web="{host: 0.0.0.0, token: s3cret}").test_client()
    assert client.get("/healthz").status_code == 200
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.get("/metrics", headers={"Authorization": "Bearer s3cret"}).status_code == 200


def test_web_server_serves_stops_and_names_a_busy_port(tmp_path, store):
    import socket
    import urllib.request

    from facesortd.errors import FacesortdError
    from facesortd.app.supervisor import WebServer

    app = make_app(tmp_path, store, Telemetry())
    server = WebServer(app, "127.0.0.1", 0)
    server.start()
    try:
        with urllib.request.urlopen(server.url + "healthz", timeout=10) as r:
            assert r.status == 200
        with pytest.raises(FacesortdError, match=f"cannot listen on 127.0.0.1:{server.port}"):
            WebServer(app, "127.0.0.1", server.port)
    finally:
        server.stop()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", server.port), timeout=2)
