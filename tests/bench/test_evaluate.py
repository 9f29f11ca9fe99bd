"""``facesortd eval``: the real pipeline (MTCNN + dlib, detect mode) on ``faces/`` + ``faces_singletons/``
meets issue 3's targets. The photos are ingested once for the module; other eps values re-cluster
the stored vectors, and streaming replays them through the identity service in random order.
The library folders score what the store says, a photo moved by hand is caught, and ``--from-run``
sorts the kept run again (no embedding) to the same figures."""

from __future__ import annotations

import contextlib
import io
import json
import os

import pytest

import facesortd.bench.evaluate as evaluate_module
from facesortd.bench.evaluate import agreement, collect, ingest, predictions, replay, rescore, score_library
from facesortd.bench.metrics import bcubed, score
from facesortd.cli import main
from facesortd.errors import FacesortdError
from facesortd.people.clustering import ClusterParams

pytest.importorskip("dlib", reason="the dlib extra is installed by `make test`")

DEFAULT_EPS = 0.43   # DlibEmbedder.default_eps


@pytest.fixture(scope="module")
def batch(tmp_path_factory, data_dir):
    root = tmp_path_factory.mktemp("eval")
    run = ingest([data_dir / "faces", data_dir / "faces_singletons"], root, mode="detect",
                 embedder="dlib")
    true, pred = predictions(run.config.state_dir, run.labels)
    return run, true, pred


def _datasets(data_dir) -> list[str]:
    return [str(data_dir / "faces"), str(data_dir / "faces_singletons")]


def _tree(folder) -> list[tuple[str, int]]:
    """Every file under ``folder`` with its inode: the kept run's photos stay where they are."""
    return sorted((os.path.relpath(os.path.join(d, f), folder), os.stat(os.path.join(d, f)).st_ino)
                  for d, _, files in os.walk(folder) for f in files)


def _faces(run) -> int:
    from facesortd.store.database import Store

    with Store.open(run.config.state_dir, load_vectors=False) as store:
        return store.counts()["faces"]


def _eval(argv: list[str]) -> tuple[int, dict]:
    """``facesortd eval ...`` through the CLI: (exit code, the JSON it printed)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["eval", *argv])
    return code, json.loads(out.getvalue())


@pytest.fixture(scope="module")
def rerun(batch, data_dir, tmp_path_factory):
    """``eval --from-run`` over the module's run at the same eps, kept: (exit code, JSON, the
    kept run's photos and store file before, the new run's folder)."""
    run, _, _ = batch
    kept = run.config.library.parent
    db = os.stat(run.config.state_dir / "facesortd.db")
    before = _tree(run.config.library), (db.st_size, db.st_mtime_ns)
    new = tmp_path_factory.mktemp("rerun") / "kept"
    code, out = _eval([*_datasets(data_dir), "--from-run", str(kept), "--keep", str(new)])
    return code, out, before, new


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
    assert s["bcubed_f1"] >= 0.95        # measured 0.982 (-0.05), 0.982 (+0.05)


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


def test_from_run_sorts_the_kept_photos_again_to_the_same_figures(batch, rerun):
    run, true, pred = batch
    store = score(true, pred)
    code, out, before, new = rerun
    assert code == 0 and out["from_run"] == str(run.config.library.parent)
    assert out["photos"] == 300 and out["eps_used"] == DEFAULT_EPS
    # the same faces, other reclusters in between: the figures agree closely, not exactly
    assert abs(out["bcubed_f1"] - store.bcubed_f1) <= 0.01
    assert abs(out["pairwise_f1"] - store.pairwise_f1) <= 0.02
    assert out["faces"] == _faces(run)
    # ... and its own library is what its store says
    assert out["misplaced_photos"] == 0 and out["library"]["missing_photos"] == 0
    assert out["library"]["bcubed_f1"] == out["bcubed_f1"]
    # the photos were sorted into the new library; the kept run's photos and store untouched
    assert sum(len(f) for _, _, f in os.walk(new / "library")) >= 300
    assert not any((new / "inbox").iterdir())
    db = os.stat(run.config.state_dir / "facesortd.db")
    assert (_tree(run.config.library), (db.st_size, db.st_mtime_ns)) == before


def test_a_photo_moved_by_hand_to_another_person_fails_the_cli(batch, rerun, data_dir,
                                                               monkeypatch, capsys):
    """Between the run and the scoring, one photo is moved into another person's folder: the
    JSON still comes, the folders score lower than the store, stderr names the photo, exit 1."""
    _, _, _, kept = rerun
    real = evaluate_module.from_run
    moved = {}

    def then_move_one(*args, **kwargs):
        done = real(*args, **kwargs)
        people = sorted(d for d in done.config.library.iterdir()
                        if d.name.startswith("Person_") and len(list(d.iterdir())) >= 2)
        photo = min(people[0].iterdir())
        photo.rename(people[1] / photo.name)
        moved.update(photo=photo.name, to=people[1].name)
        return done

    monkeypatch.setattr(evaluate_module, "from_run", then_move_one)
    code = main(["eval", *_datasets(data_dir), "--from-run", str(kept)])
    cap = capsys.readouterr()
    out = json.loads(cap.out)
    assert code == 1
    assert out["misplaced_photos"] == 1
    assert out["misplaced_examples"][0]["photo"] == moved["photo"]
    assert out["misplaced_examples"][0]["folder"] == moved["to"]
    assert out["library"]["pairwise_f1"] < out["pairwise_f1"]
    assert "1 of 300 photos sit outside their identity's folder" in cap.err
    assert moved["photo"] in cap.err


def test_from_run_refuses_other_photos_and_stream(batch, data_dir, capsys):
    kept = str(batch[0].config.library.parent)
    assert main(["eval", str(data_dir / "faces_cropped"), "--from-run", kept]) == 1
    assert "give the same DATASET_DIRs" in capsys.readouterr().err
    assert main(["eval", *_datasets(data_dir), "--from-run", kept, "--stream"]) == 1
    assert "--stream does not apply" in capsys.readouterr().err


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


@pytest.mark.parametrize("runtime", ["torch", "dlib"])
def test_eval_config_carries_the_dlib_runtime(tmp_path, runtime):
    """facesortd eval --dlib-runtime: the run's config names the runtime that embeds."""
    config = evaluate_module._config(tmp_path, "detect", "dlib", stream=False, eps=None,
                                     dlib_runtime=runtime)
    assert config.embedder.name == "dlib" and config.embedder.dlib_runtime == runtime
