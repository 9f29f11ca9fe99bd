"""What the ingest tests share: a run's config, one daemon pass, the images table, files that must
be set aside, and a pipeline with decoding processes fed real face crops."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from facesortd.inbox.jobs import Job
from facesortd.store.database import Store


@pytest.fixture(scope="session")
def make_config():
    """``make_config(root, mode, embedder, extra, extensions)``: a run's config, written to
    ``root/facesortd.yaml``, its inbox made."""
    from facesortd.config import parse_config

    def make(root: Path, mode: str = "detect", embedder: str = "dlib", extra: str = "",
             extensions: str = "[.jpg, .jpeg, .png, .webp, .bmp, .tif, .tiff]"):
        (root / "inbox").mkdir(exist_ok=True)
        text = (f"inboxes:\n  - path: inbox\n    mode: {mode}\n"
                f"watch:\n  settle_ms: 100\n  rescan_interval_s: 0\n  extensions: {extensions}\n"
                f"embedder:\n  name: {embedder}\n  batch_size: 16\n  max_wait_ms: 50\n"
                "web:\n  enabled: false\n" + extra)
        (root / "facesortd.yaml").write_text(text)
        return parse_config(text, root / "facesortd.yaml")

    return make


@pytest.fixture(scope="session")
def run_once():
    """``run_once(config)``: the real daemon's ``run --once``; its counts."""
    from facesortd.app.daemon import Daemon

    def run(config) -> dict:
        return Daemon(config).run_once(timeout=300)

    return run


@pytest.fixture(scope="session")
def images():
    """``images(store)``: file name -> (path, status, error, id) of every image row."""

    def rows(store: Store) -> dict[str, object]:
        found = store._conn.execute("SELECT path, status, error, id FROM images").fetchall()
        return {Path(os.fsdecode(r[0])).name: r for r in found}

    return rows


@pytest.fixture(scope="session")
def bad_inputs():
    """``bad_inputs(inbox, data_dir)``: writes a file of each broken kind into ``inbox``; each
    one's name and a word its recorded reason must contain."""

    def write(inbox: Path, data_dir: Path) -> dict[str, str]:
        good = (data_dir / "faces" / "John_Bolton").iterdir().__next__().read_bytes()
        (inbox / "empty.jpg").write_bytes(b"")
        (inbox / "truncated.jpg").write_bytes(good[: len(good) // 2])
        (inbox / "text.jpg").write_text("this is not a picture\n")
        (inbox / "random.png").write_bytes(np.random.default_rng(1).bytes(5000))
        Image.new("1", (20000, 20000)).save(inbox / "bomb.png")
        return {"empty.jpg": "empty", "truncated.jpg": "truncated", "text.jpg": "image",
                "random.png": "image", "bomb.png": "pixels"}

    return write


# -- a pipeline with decoding processes --------------------------------------------------------

@pytest.fixture(scope="session")
def open_pipeline(make_config):
    """``open_pipeline(root, processes)``: (config, store, pipeline) for aligned crops in
    ``root/inbox`` with ``processes`` decoding processes, not started; the caller stops and closes."""
    from facesortd.ingest.pipeline import Pipeline
    from facesortd.models.embedders import create_embedder

    def open_(root: Path, processes: int):
        config = make_config(root, mode="aligned")
        store = Store.open(config.state_dir)
        embedder = create_embedder(config.embedder)
        embedder.load()
        store.bind_model(embedder.model_id, embedder.dim)
        return config, store, Pipeline(config, store, embedder, decode_processes=processes)

    return open_


@pytest.fixture(scope="session")
def jobs_of():
    """``jobs_of(inbox)``: an aligned-mode job for each file in ``inbox``, in name order."""

    def jobs(inbox: Path) -> list[Job]:
        return [Job(p, inbox, "aligned", p.stat().st_size, p.stat().st_mtime_ns)
                for p in sorted(inbox.iterdir())]

    return jobs


@pytest.fixture(scope="session")
def process_gone():
    """``process_gone(pid)``: True once no process has that id."""
    return lambda pid: not Path(f"/proc/{pid}").exists()


@pytest.fixture(scope="session")
def copy_crops():
    """``copy_crops(data_dir, inbox, start, count)``: real face crops ``start`` .. ``start +
    count`` into ``inbox``; their names there."""

    def copy(data_dir: Path, inbox: Path, start: int, count: int) -> list[str]:
        crops = sorted((data_dir / "faces_cropped").rglob("*.jp*g"))[start:start + count]
        for p in crops:
            shutil.copy(p, inbox / f"{p.parent.name}_{p.name}")
        return [f"{p.parent.name}_{p.name}" for p in crops]

    return copy
