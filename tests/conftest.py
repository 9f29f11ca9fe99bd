"""Shared fixtures: the real data folder, a check that no thread is left behind, and the small real
library (5 people × 4 photos) that the people, web and end-to-end tests work on copies of."""

from __future__ import annotations

import os
import shutil
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import pytest

from facesortd.config import Config, parse_config

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("FACESORTD_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """``../shared/data``: real labeled photos (see its README)."""
    if not (DATA / "faces").is_dir():
        pytest.fail(f"test data not found at {DATA}; set FACESORTD_DATA to the shared/data folder")
    return DATA


@pytest.fixture(autouse=True)
def no_leaked_threads():
    """Every thread a test starts must be stopped and joined before the test ends."""
    before = set(threading.enumerate())
    yield
    leaked = [t for t in threading.enumerate() if t not in before and t.is_alive()]
    for t in leaked:
        t.join(timeout=5)
    leaked = [t for t in leaked if t.is_alive()]
    assert not leaked, f"threads left running: {[t.name for t in leaked]}"


# -- the small real library ------------------------------------------------------------------

@dataclass(frozen=True)
class SmallLibrary:
    """An ingested run (config, inbox, state) of ``per_person`` real photos of each of ``people``,
    named ``<person>__<file>``; never changed: a test that changes it works on a ``copy``."""

    root: Path
    data_dir: Path
    people: tuple[str, ...] = ("Allyson_Felix", "Antonio_Palocci", "Fujio_Cho", "JK_Rowling",
                               "Paul_McCartney")
    per_person: int = 4

    def config(self, root: Path, extra: str = "") -> Config:
        """The config of a run in ``root`` (detect mode, dlib, web off), written there."""
        (root / "inbox").mkdir(parents=True, exist_ok=True)
        text = ("inboxes:\n  - path: inbox\n    mode: detect\n"
                "watch:\n  settle_ms: 100\n  rescan_interval_s: 0\n"
                "embedder:\n  name: dlib\n  batch_size: 16\n  max_wait_ms: 50\n"
                "web:\n  enabled: false\n" + extra)
        (root / "facesortd.yaml").write_text(text)
        return parse_config(text, root / "facesortd.yaml")

    def add_photos(self, root: Path, first: int, count: int, people=None) -> None:
        """Photos ``first`` .. ``first + count`` of each person into ``root``'s inbox."""
        for person in people or self.people:
            for f in sorted((self.data_dir / "faces" / person).iterdir())[first:first + count]:
                shutil.copyfile(f, root / "inbox" / f"{person}__{f.name}")

    def copy(self, dst: Path, extra: str = "") -> Config:
        """An independent copy: its own inbox, library and store, whose paths point into ``dst``
        (a copy that still pointed at this one's files could move them); its config."""
        src = self.root
        shutil.copytree(src / "inbox", dst / "inbox")
        shutil.copytree(src / "state", dst / "state")
        if (src / "library").is_dir():
            shutil.copytree(src / "library", dst / "library", symlinks=True)
        with sqlite3.connect(dst / "state" / "facesortd.db") as conn:
            old, new = str(src), str(dst)
            for table, column in (("images", "path"), ("images", "inbox"), ("placements", "path"),
                                  ("journal", "src"), ("journal", "dst")):
                conn.execute(f"UPDATE {table} SET {column} = ? || substr({column}, ?) "
                             f"WHERE substr({column}, 1, ?) = ?", (new, len(old) + 1, len(old), old))
        conn.close()
        return self.config(dst, extra)

    @staticmethod
    def faces_by_person(store) -> dict[str, list[tuple[int, Optional[int]]]]:
        """person -> [(face id, identity id)] of the largest face of each of their photos."""
        with store.read() as conn:
            rows = conn.execute(
                "SELECT i.path, f.id, f.identity_id, (f.box_x2-f.box_x1)*(f.box_y2-f.box_y1) AS area "
                "FROM faces f JOIN images i ON i.id = f.image_id WHERE f.rejected = 0 "
                "ORDER BY i.path, area DESC").fetchall()
        seen, out = set(), {}
        for path, face, identity, _ in rows:
            if path in seen:
                continue
            seen.add(path)
            out.setdefault(Path(path).name.split("__")[0], []).append((face, identity))
        return out

    @staticmethod
    def main_identity(pairs) -> int:
        """The identity most of ``pairs`` (from ``faces_by_person``) are in."""
        ids = [i for _, i in pairs if i is not None]
        values, counts = np.unique(ids, return_counts=True)
        return int(values[np.argmax(counts)])


@pytest.fixture(scope="session")
def library(tmp_path_factory, data_dir) -> SmallLibrary:
    """The small real library (MTCNN + dlib), ingested once per session by the real daemon."""
    from facesortd.app.daemon import Daemon

    lib = SmallLibrary(tmp_path_factory.mktemp("library"), data_dir)
    config = lib.config(lib.root)
    lib.add_photos(lib.root, 0, lib.per_person)
    Daemon(config).run_once(timeout=600)
    return lib


# -- store rows without the model ------------------------------------------------------------

@pytest.fixture(scope="session")
def fake_ingest():
    """tests/fake_ingest.py: ``open_store(config)``, ``new_identity(store, name)``,
    ``fabricate(store, path, inbox, identities)`` and the fake model's ``DIM``; the crash test's
    driver runs the same code in its own process."""
    import fake_ingest

    return fake_ingest


# -- no facenet weights, no internet ---------------------------------------------------------------

@pytest.fixture
def empty_torch_home(tmp_path, monkeypatch) -> Path:
    """No cached weights anywhere, and the internet edge (facenet-pytorch's download) fails."""
    import urllib.error

    import torch

    home = tmp_path / "torch-home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)  # an earlier set_dir() would override it

    def offline(url, dst, *args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr("facenet_pytorch.models.inception_resnet_v1.download_url_to_file", offline)
    return home


@pytest.fixture(scope="session")
def facenet_weights(tmp_path_factory, data_dir) -> Path:
    """facenet's weights as the tests use them (the VGGFace2 file cannot be downloaded here): an
    untrained InceptionResnetV1 (seed 0), BatchNorm statistics measured on real face crops
    (freshly initialised BatchNorm maps every face to nearly the same vector)."""
    import facenet_pytorch
    import torch
    from PIL import Image

    crops = []
    for person in sorted((data_dir / "faces_cropped").iterdir())[:3]:
        for f in sorted(person.iterdir())[:6]:
            crops.append(np.asarray(Image.open(f).convert("RGB").resize((160, 160))))
    torch.manual_seed(0)
    model = facenet_pytorch.InceptionResnetV1(pretrained=None, classify=False)
    for m in model.modules():
        if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            m.momentum = None
    model.train()
    with torch.no_grad():
        model((torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float() - 127.5) / 128.0)
    path = tmp_path_factory.mktemp("weights") / "untrained.pt"
    torch.save(model.state_dict(), path)
    return path
