"""``facesortd eval``: the real pipeline (MTCNN + dlib, detect mode) on ``faces/`` + ``faces_singletons/``
meets issue 3's targets. The photos are ingested once for the module; other eps values re-cluster
the stored vectors, and streaming replays them through the identity service in random order.
The library folders score what the store says."""

from __future__ import annotations

import json

import pytest

from facesortd.cli import main
from facesortd.clustering import ClusterParams
from facesortd.errors import FacesortdError
from facesortd.evaluate import (agreement, collect, ingest, predictions, replay, rescore,
                                score_library)
from facesortd.metrics import bcubed, score

pytest.importorskip("dlib", reason="the dlib extra is installed by `make test`")

DEFAULT_EPS = 0.43   # DlibEmbedder.default_eps


@pytest.fixture(scope="module")
def batch(tmp_path_factory, data_dir):
    root = tmp_path_factory.mktemp("eval")
    run = ingest([data_dir / "faces", data_dir / "faces_singletons"], root, mode="detect",
                 embedder="dlib")
    true, pred = predictions(run.config.state_dir, run.labels)
    return run, true, pred


def test_batch_quality_at_the_default_eps(batch):
    run, true, pred = batch
    s = score(true, pred)
    assert s.n_items == 300 and s.n_true == 50
    assert s.bcubed_f1 >= 0.97           # measured 0.982
    assert s.pairwise_precision >= 0.97  # chaining would show here first
    assert 24 <= s.n_clusters <= 32      # 25 people (singletons are noise or their own)
    assert s.noise_fraction < 0.15


@pytest.mark.parametrize("delta", [-0.05, 0.05])
def test_quality_holds_within_005_of_the_default_eps(batch, delta):
    run, _, _ = batch
    s = rescore(run.config.state_dir, run.labels, ClusterParams.for_embedder(DEFAULT_EPS, DEFAULT_EPS + delta))
    assert s["bcubed_f1"] >= 0.95        # measured 0.985 (-0.05), 0.982 (+0.05)


def test_stream_arrival_ends_where_batch_does(batch, tmp_path):
    run, true, pred = batch
    for seed in (0, 1):
        faces = replay(run.config.state_dir, tmp_path / f"stream{seed}", ClusterParams.for_embedder(DEFAULT_EPS),
                       seed=seed)
        _, stream = predictions(run.config.state_dir, run.labels, faces)
        assert agreement(pred, stream) >= 0.98      # measured 1.000 and 0.998
        assert bcubed(true, stream)[2] >= 0.97


def test_library_folders_score_what_the_store_says(batch):
    run, true, pred = batch
    store = score(true, pred)
    got = score_library(run.config, run.labels)
    lib = got["library"]
    assert got["misplaced_photos"] == 0 and lib["missing_photos"] == 0
    assert lib["bcubed_f1"] == round(store.bcubed_f1, 4)
    assert lib["pairwise_f1"] == round(store.pairwise_f1, 4)
    assert lib["person_folders"] == store.n_clusters


def test_cli_eval_aligned_mode_prints_the_figures(data_dir, capsys):
    assert main(["eval", str(data_dir / "faces_cropped"), "--mode", "aligned"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["photos"] == len(collect([data_dir / "faces_cropped"])) and out["identities_true"] == 5
    assert out["mode"] == "aligned" and out["arrival"] == "batch"
    assert out["bcubed_f1"] >= 0.9 and 0 <= out["noise_fraction"] < 0.2
    assert set(out) >= {"identities_found", "pairwise_precision", "pairwise_recall", "pairwise_f1",
                        "bcubed_precision", "bcubed_recall"}
    assert out["misplaced_photos"] == 0 and out["library"]["missing_photos"] == 0
    assert out["library"]["bcubed_f1"] == out["bcubed_f1"]


def test_eval_refuses_a_folder_without_person_folders(tmp_path):
    (tmp_path / "loose.jpg").write_bytes(b"x")
    with pytest.raises(FacesortdError, match="no photos in person folders"):
        collect([tmp_path])
    assert main(["eval", str(tmp_path / "missing")]) == 1
