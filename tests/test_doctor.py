"""`facesortd doctor` on real folders, a real store, a real lock and a real socket."""

from __future__ import annotations

import io
import os
import socket
import stat

import pytest

from facesortd.cli import main
from facesortd.config import parse_config
from facesortd.daemon import StateLock
from facesortd.doctor import TUNABLES, doctor, run_checks
from facesortd.store import Store


def write_config(root, embedder="dlib", extra=""):
    (root / "inbox").mkdir(exist_ok=True)
    text = (f"inboxes:\n  - path: inbox\n    mode: aligned\nembedder:\n  name: {embedder}\n"
            "web:\n  enabled: false\n" + extra)
    (root / "facesortd.yaml").write_text(text)
    return root / "facesortd.yaml"


def run(path) -> tuple[int, str]:
    out = io.StringIO()
    return doctor(path, out), out.getvalue()


def line(text: str, topic: str) -> str:
    found = [l for l in text.splitlines() if l[5:].startswith(topic)]
    assert found, f"no line for {topic}:\n{text}"
    return found[0]


@pytest.fixture(autouse=True)
def tunables(monkeypatch):
    monkeypatch.setenv("GLIBC_TUNABLES", TUNABLES)


def test_a_healthy_setup_passes(tmp_path):
    pytest.importorskip("dlib")
    rc, out = run(write_config(tmp_path))
    assert rc == 0, out
    for topic in ("config", "device", "weights", "state_dir", "library", "inboxes[0]", "disk",
                  "GLIBC_TUNABLES", "lock", "store"):
        assert line(out, topic).startswith("ok"), out
    assert out.rstrip().endswith("0 problem(s), 0 warning(s)")
    assert not (tmp_path / "state").exists(), "doctor must not create anything"


def test_a_broken_config_lists_every_problem(tmp_path):
    path = tmp_path / "facesortd.yaml"
    path.write_text("embedder:\n  batch_size: 0\nbogus: 1\n")
    rc, out = run(path)
    assert rc == 1
    assert "embedder.batch_size" in out and "bogus: unknown key" in out
    assert "2 problem(s)" in out


def test_cli_exit_code_and_missing_inbox_warning(tmp_path, capsys):
    path = write_config(tmp_path)
    (tmp_path / "inbox").rmdir()
    assert main(["doctor", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert line(out, "inboxes[0]").startswith("WARN") and f"mkdir -p {tmp_path / 'inbox'}" in out


def test_unset_tunables_warn(tmp_path, monkeypatch):
    monkeypatch.delenv("GLIBC_TUNABLES")
    rc, out = run(write_config(tmp_path))
    assert rc == 0 and line(out, "GLIBC_TUNABLES").startswith("WARN")
    assert f"export GLIBC_TUNABLES={TUNABLES}" in out


def test_folder_problems(tmp_path):
    path = write_config(tmp_path)
    (tmp_path / "library").write_text("not a folder")
    (tmp_path / "inbox").chmod(0o777)
    rc, out = run(path)
    assert rc == 1
    assert line(out, "library").startswith("FAIL") and "is not a folder" in out
    assert line(out, "inboxes[0]").startswith("WARN") and "writable by everyone" in out


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_a_folder_this_user_cannot_write(tmp_path):
    path = write_config(tmp_path)
    (tmp_path / "inbox").chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        rc, out = run(path)
    finally:
        (tmp_path / "inbox").chmod(0o755)
    assert rc == 1 and line(out, "inboxes[0]").startswith("FAIL") and "chown" in out


def test_store_of_another_model_and_the_lock(tmp_path):
    path = write_config(tmp_path)
    with Store.open(tmp_path / "state") as store:
        store.bind_model("facenet-vggface2:0123456789ab", 512)
    lock = StateLock(tmp_path / "state")
    lock.acquire()
    try:
        rc, out = run(path)
    finally:
        lock.release()
    assert rc == 1
    assert line(out, "store").startswith("FAIL") and "facenet-vggface2" in out
    assert f"held by a running facesortd (pid {os.getpid()})" in line(out, "lock")


def test_a_web_port_in_use(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        path = write_config(tmp_path, extra="")
        path.write_text(path.read_text().replace("enabled: false", f"enabled: true\n  port: {port}"))
        rc, out = run(path)
    assert rc == 1 and line(out, "web").startswith("FAIL") and str(port) in out


def test_facenet_device_and_weights(tmp_path, monkeypatch):
    import torch

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    config = parse_config("inboxes: [{path: inbox}]\nembedder: {name: facenet, device: auto}\n"
                          "web: {enabled: false}\n", tmp_path / "facesortd.yaml")
    findings = {f.topic: f for f in run_checks(config)}
    if torch.cuda.is_available():
        assert findings["device"].level == "ok" and "cuda" in findings["device"].message
    else:
        assert findings["device"].level == "warn" and "no CUDA device" in findings["device"].message
    assert findings["weights"].level == "warn" and str(tmp_path / "torch") in findings["weights"].fix
    weights = tmp_path / "w.pt"
    config = parse_config(f"inboxes: [{{path: inbox}}]\nembedder: {{name: facenet, weights: {weights}}}\n",
                          tmp_path / "facesortd.yaml")
    findings = {f.topic: f for f in run_checks(config)}
    assert findings["weights"].level == "fail" and "is not a file" in findings["weights"].message
    if not torch.cuda.is_available():
        config = parse_config("inboxes: [{path: inbox}]\nembedder: {name: facenet, device: cuda}\n",
                              tmp_path / "facesortd.yaml")
        device = {f.topic: f for f in run_checks(config)}["device"]
        assert device.level == "fail" and "cuda does not exist" in device.message
