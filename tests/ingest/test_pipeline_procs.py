"""Decoding in worker processes (embedder.decode_processes) gives what decoding in threads gives:
the same faces and vectors, the same quarantine, and no process or thread left behind."""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest

from facesortd.config import parse_config
from facesortd.errors import ConfigError
from facesortd.ingest.pipeline import decode_processes_for
from facesortd.store.database import Store

pytest.importorskip("dlib", reason="the dlib extra is installed by `make test`")


def _faces_by_file(config) -> dict[str, list[tuple]]:
    """file name -> [(box, vector)] in face order, from the store after a run."""
    with Store.open(config.state_dir) as store:
        rows = store._conn.execute(
            "SELECT i.path, f.box_x1, f.box_y1, f.box_x2, f.box_y2, f.vector FROM faces f "
            "JOIN images i ON i.id = f.image_id ORDER BY f.id").fetchall()
    out: dict[str, list[tuple]] = {}
    for path, x1, y1, x2, y2, vector in rows:
        out.setdefault(Path(os.fsdecode(path)).name, []).append(
            ((x1, y1, x2, y2), np.frombuffer(vector, np.float32)))
    return out


@pytest.fixture
def statuses_of(images):
    """``statuses_of(config)``: file name -> (status, error) in that run's store."""

    def statuses(config) -> dict[str, tuple]:
        with Store.open(config.state_dir) as store:
            return {name: (r[1], r[2]) for name, r in images(store).items()}

    return statuses


@pytest.fixture
def twice(tmp_path, make_config, run_once):
    """``twice(fill, mode, embedder, extra)``: run the same inbox (``fill(inbox)``) once with
    decoding threads and once with two decoding processes; the two configs."""

    def run(fill, mode: str, embedder: str = "dlib", extra: str = ""):
        configs = []
        for processes in (0, 2):
            root = tmp_path / f"procs{processes}"
            root.mkdir()
            make_config(root, mode=mode, embedder=embedder)
            name = f"  name: {embedder}\n"
            text = (root / "facesortd.yaml").read_text().replace(
                name, f"{name}  decode_processes: {processes}\n{extra}")
            (root / "facesortd.yaml").write_text(text)
            config = parse_config(text, root / "facesortd.yaml")
            assert config.embedder.decode_processes == processes
            fill(root / "inbox")
            run_once(config)
            configs.append(config)
        return configs

    return run


def test_aligned_crops_same_vectors_with_processes(tmp_path, data_dir, twice, statuses_of):
    """dlib: whole decoded crops, cut by prepare() on the thread that drives the process."""
    crops = sorted((data_dir / "faces_cropped").rglob("*.jp*g"))[:10]

    def fill(inbox: Path) -> None:
        for p in crops:
            shutil.copy(p, inbox / f"{p.parent.name}_{p.name}")
        shutil.copy(crops[0], inbox / "same_content_again.jpg")

    threads, procs = twice(fill, "aligned")
    # Which of the two identical files is the original depends on which decoder finished first:
    # compare the pair as one entry.
    twin = f"{crops[0].parent.name}_{crops[0].name}"

    def paired(statuses: dict) -> dict:
        pair = sorted([statuses.pop(twin), statuses.pop("same_content_again.jpg")])
        return {**statuses, "pair": pair}

    assert paired(statuses_of(procs)) == paired(statuses_of(threads))
    assert sorted(s for s, _ in statuses_of(procs).values()).count("duplicate") == 1
    a, b = _faces_by_file(threads), _faces_by_file(procs)
    for faces in (a, b):
        faces[twin] = faces.pop(twin, None) or faces.pop("same_content_again.jpg")
    assert sorted(a) == sorted(b) and len(a) == len(crops)
    for name in a:
        for (box_a, vec_a), (box_b, vec_b) in zip(a[name], b[name], strict=True):
            assert box_a == box_b
            # dlib's ResNet on torch (embedder.dlib_runtime: torch): the same chip in micro-batches
            # of other sizes may take other convolution kernels, equal to float rounding only
            np.testing.assert_allclose(vec_a, vec_b, rtol=0, atol=1e-6)


def test_detect_mode_same_faces_and_same_quarantine_with_processes(tmp_path, data_dir, twice, statuses_of,
                                                                   bad_inputs):
    def fill(inbox: Path) -> None:
        for p in sorted((data_dir / "scenes").iterdir())[:3]:
            shutil.copy(p, inbox / p.name)
        shutil.copy(next((data_dir / "nonfaces").iterdir()), inbox / "nothing.jpg")
        bad_inputs(inbox, data_dir)

    threads, procs = twice(fill, "detect")
    expected = statuses_of(threads)
    assert statuses_of(procs) == expected          # same outcome and the same reason per file
    assert sum(1 for s, _ in expected.values() if s == "error") == 5
    for config in (threads, procs):
        quarantine = config.library / "_quarantine"
        assert sorted(p.name for p in quarantine.iterdir() if not p.name.endswith(".txt")) == \
            sorted(n for n, (s, _) in expected.items() if s == "error")
    a, b = _faces_by_file(threads), _faces_by_file(procs)
    assert sorted(a) == sorted(b) and sum(len(v) for v in a.values()) >= 3
    for name in a:
        for (box_a, vec_a), (box_b, vec_b) in zip(a[name], b[name], strict=True):
            assert box_a == pytest.approx(box_b)
            np.testing.assert_allclose(vec_a, vec_b, atol=1e-5)


def test_facenet_crops_same_vectors_with_processes(tmp_path, data_dir, twice):
    """facenet: crops resized straight to 160x160 in the process (the GPU's hot path)."""
    torch = pytest.importorskip("torch")
    irv1 = pytest.importorskip("facenet_pytorch").InceptionResnetV1
    torch.manual_seed(0)
    torch.save(irv1(pretrained=None, classify=False).state_dict(), tmp_path / "w.pt")
    crops = sorted((data_dir / "faces_cropped").rglob("*.jp*g"))[:6]

    def fill(inbox: Path) -> None:
        for p in crops:
            shutil.copy(p, inbox / f"{p.parent.name}_{p.name}")

    threads, procs = twice(fill, "aligned", embedder="facenet",
                           extra=f"  weights: {tmp_path / 'w.pt'}\n  precision: fp32\n")
    a, b = _faces_by_file(threads), _faces_by_file(procs)
    assert sorted(a) == sorted(b) and len(a) == len(crops)
    for name in a:
        (box_a, vec_a), = a[name]
        (box_b, vec_b), = b[name]
        assert box_a == box_b == (0.0, 0.0, 160.0, 160.0)
        np.testing.assert_allclose(vec_a, vec_b, atol=1e-5)


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads /proc")
def test_processes_load_no_torch_and_end_with_the_pipeline(tmp_path, data_dir, open_pipeline, jobs_of,
                                                           process_gone, copy_crops):
    import torch  # noqa: F401  (this process has torch; its decoding processes must not)

    config, store, pipe = open_pipeline(tmp_path, 2)
    copy_crops(data_dir, tmp_path / "inbox", 0, 4)
    try:
        pipe.start()
        pids = pipe._prep.pool.pids()
        assert len(pids) == 2 and pipe.workers_description() == "2 processes"
        for job in jobs_of(tmp_path / "inbox"):
            assert pipe.submit(job)
        assert pipe.drain(60)
        for pid in pids:
            maps = Path(f"/proc/{pid}/maps").read_text()
            assert "libtorch" not in maps and "libgomp" not in maps, pid
    finally:
        pipe.stop()
        store.close()
    assert pipe.stats.files_done == 4
    assert all(process_gone(pid) for pid in pids)


def test_a_killed_decoding_process_is_replaced_and_no_file_is_lost(tmp_path, data_dir, open_pipeline,
                                                                   jobs_of, process_gone, copy_crops, images):
    config, store, pipe = open_pipeline(tmp_path, 1)
    names = copy_crops(data_dir, tmp_path / "inbox", 0, 8)
    try:
        pipe.start()
        (first,) = pipe._prep.pool.pids()
        os.kill(first, signal.SIGKILL)
        assert pipe._prep.pool._workers[0].proc.wait(10) == -signal.SIGKILL
        for job in jobs_of(tmp_path / "inbox"):
            assert pipe.submit(job)
        assert pipe.drain(60)
        (second,) = pipe._prep.pool.pids()
        assert second != first
        statuses = {name: r[1] for name, r in images(store).items()}
    finally:
        pipe.stop()
        store.close()
    assert statuses == {name: "done" for name in names}
    assert process_gone(second)


def test_decode_processes_setting(tmp_path):
    assert decode_processes_for("auto", on_cpu=True) == 0
    from facesortd.models.torchsetup import usable_cores
    assert decode_processes_for("auto", on_cpu=False) == max(2, usable_cores() - 4)
    assert decode_processes_for(3, on_cpu=True) == 3
    for bad in ("-1", "65", "many", "true", "2.5"):
        with pytest.raises(ConfigError, match="embedder.decode_processes"):
            parse_config(f"embedder:\n  decode_processes: {bad}\n", tmp_path / "f.yaml")
    assert parse_config("embedder:\n  decode_processes: 4\n",
                        tmp_path / "f.yaml").embedder.decode_processes == 4


def test_decoding_processes_outlive_sigterm_so_the_daemon_can_drain(tmp_path, data_dir, open_pipeline,
                                                                    jobs_of, process_gone, copy_crops):
    """systemd sends SIGTERM to the whole cgroup: the decoding processes leave it to the daemon,
    which drains (with their help) and then ends them."""
    config, store, pipe = open_pipeline(tmp_path, 1)
    copy_crops(data_dir, tmp_path / "inbox", 0, 3)
    try:
        pipe.start()
        (pid,) = pipe._prep.pool.pids()
        os.kill(pid, signal.SIGTERM)
        os.kill(pid, signal.SIGINT)
        for job in jobs_of(tmp_path / "inbox"):
            assert pipe.submit(job)
        assert pipe.drain(60)
        assert pipe._prep.pool.pids() == [pid] and pipe._prep.pool._workers[0].proc.poll() is None
    finally:
        pipe.stop()
        store.close()
    assert pipe.stats.files_done == 3 and process_gone(pid)
