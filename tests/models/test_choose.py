"""``embedder.name: auto``: the store's model, else facenet when its weights are here or download,
else dlib with one warning, else facenet's own instructions (exit 4)."""

from __future__ import annotations

import json
import logging
import shutil

import pytest

from facesortd.config import EmbedderConfig
from facesortd.errors import ModelUnavailable
from facesortd.models import embedders
from facesortd.models.embedders import choose_embedder, load_embedder

AUTO = EmbedderConfig(name="auto", device="cpu")


def test_explicit_names_are_kept():
    assert choose_embedder(EmbedderConfig(name="dlib"), "facenet-vggface2:abc").name == "dlib"
    choice = choose_embedder(EmbedderConfig(name="facenet"))
    assert choice.name == "facenet" and "in the config" in choice.reason


def test_a_store_keeps_its_model(empty_torch_home):
    dlib = choose_embedder(AUTO, "dlib-resnet-v1")
    assert dlib.name == "dlib" and "dlib-resnet-v1" in dlib.reason and "migrate" in dlib.reason
    facenet = choose_embedder(AUTO, "facenet-vggface2:0123456789ab")
    assert facenet.name == "facenet" and not facenet.may_fall_back   # its load says what is missing
    with pytest.raises(ModelUnavailable, match="not one this version knows"):
        choose_embedder(AUTO, "arcface-r100")


def test_weights_in_the_cache_or_the_config_mean_facenet(empty_torch_home, tmp_path):
    assert choose_embedder(AUTO).may_fall_back   # nothing here yet
    cached = empty_torch_home / "checkpoints" / "20180402-114759-vggface2.pt"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"weights")
    choice = choose_embedder(AUTO)
    assert choice.name == "facenet" and str(cached) in choice.reason and not choice.may_fall_back
    cached.unlink()
    # a weights path in the config is a request for facenet: a wrong one is an error, not dlib
    missing = AUTO.model_copy(update={"weights": tmp_path / "nope.pt"})
    assert choose_embedder(missing).name == "facenet"
    with pytest.raises(ModelUnavailable, match="nope.pt"):
        load_embedder(missing)


def test_no_weights_and_no_download_falls_back_to_dlib_with_one_warning(empty_torch_home, caplog):
    pytest.importorskip("dlib", reason="the dlib extra is installed by `make test`")
    with caplog.at_level(logging.WARNING, logger="facesortd.models.embedders"):
        embedder, choice = load_embedder(AUTO)
    assert embedder.name == "dlib" and choice.name == "dlib"
    assert embedder.model_id == "dlib-resnet-v1"
    warnings = [r.getMessage() for r in caplog.records
                if r.levelno == logging.WARNING and r.name == "facesortd.models.embedders"]
    assert len(warnings) == 1
    line = warnings[0]
    assert "\n" not in line and "using dlib" in line
    # why facenet was not there, and how to get it: the text embedder.name: facenet stops with
    assert "name resolution" in line and "20180402-114759-vggface2.pt" in line
    assert str(empty_torch_home / "checkpoints") in line and "embedder.weights" in line
    assert choice.fell_back and "name resolution" in choice.fell_back


def test_without_dlib_auto_stops_with_facenets_instructions(empty_torch_home, monkeypatch):
    monkeypatch.setattr(embedders, "dlib_installed", lambda: False)
    choice = choose_embedder(AUTO)
    assert choice.name == "facenet" and not choice.may_fall_back
    with pytest.raises(ModelUnavailable) as err:
        load_embedder(AUTO)
    assert "could not be downloaded" in str(err.value) and "facesortd[dlib]" in str(err.value)


def test_a_downloadable_facenet_wins_over_dlib(empty_torch_home, monkeypatch, facenet_weights):
    """Weights that download are used: facenet, no warning (an untrained state dict stands in)."""
    monkeypatch.setattr("facenet_pytorch.models.inception_resnet_v1.download_url_to_file",
                        lambda url, dst, *a, **k: shutil.copyfile(facenet_weights, dst))
    embedder, choice = load_embedder(AUTO.model_copy(update={"precision": "fp32"}))
    assert embedder.name == "facenet" and choice.fell_back is None
    assert embedder.model_id.startswith("facenet-vggface2:")


def test_run_once_with_auto_offline_sorts_with_dlib_and_says_why(empty_torch_home, tmp_path,
                                                                  data_dir, capsys):
    """A fresh machine without the facenet weights or internet: the default config sorts faces
    (dlib), `status` says which model auto chose and why; weights that appear later do not
    switch a store that holds dlib vectors."""
    pytest.importorskip("dlib", reason="the dlib extra is installed by `make test`")
    from facesortd.cli import main

    inbox = tmp_path / "inbox"
    inbox.mkdir()
    people = ("Ben_Affleck", "Madonna")
    for person in people:
        for p in sorted((data_dir / "faces_cropped" / person).glob("*.jp*g"))[:3]:
            shutil.copyfile(p, inbox / f"{person}__{p.name}")
    config = tmp_path / "facesortd.yaml"
    config.write_text("inboxes:\n  - path: inbox\n    mode: aligned\nwatch:\n  settle_ms: 50\n"
                      "  rescan_interval_s: 0\nweb:\n  enabled: false\n")   # embedder: the default
    assert main(["run", "--once", "--config", str(config)]) == 0
    folders = {}
    for f in (tmp_path / "library").rglob("*.jp*g"):
        folders.setdefault(f.parent.name, set()).add(f.name.split("__")[0])
    assert sorted(map(sorted, folders.values())) == [["Ben_Affleck"], ["Madonna"]]
    capsys.readouterr()

    assert main(["status", "--json", "--config", str(config)]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["model_id"] == "dlib-resnet-v1" and status["embedder"]["name"] == "dlib"
    assert "store holds vectors of dlib-resnet-v1" in status["embedder"]["chosen"]

    cached = empty_torch_home / "checkpoints" / "20180402-114759-vggface2.pt"
    cached.parent.mkdir(parents=True, exist_ok=True)   # the failed download made the folder
    cached.write_bytes(b"facenet weights arrive later")
    assert main(["run", "--once", "--config", str(config)]) == 0   # still dlib: no refusal
    capsys.readouterr()
    assert main(["status", "--json", "--config", str(config)]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["model_id"] == "dlib-resnet-v1" and status["embedder"]["name"] == "dlib"
