"""The ingest pipeline end to end: real files, real watcher, real SQLite, the real dlib model."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
from PIL import Image

from facesortd.app.daemon import Daemon
from facesortd.errors import FacesortdError, StoreError
from facesortd.store.database import Store
from facesortd.store.lock import StateLock

pytest.importorskip("dlib", reason="the dlib extra is installed by `make test`")


def face_count(store: Store, image_id: int) -> int:
    return store._conn.execute("SELECT COUNT(*) FROM faces WHERE image_id=?", (image_id,)).fetchone()[0]


def test_aligned_mode_one_face_per_crop(tmp_path, data_dir, make_config, run_once, images):
    config = make_config(tmp_path, mode="aligned")
    crops = sorted((data_dir / "faces_cropped").rglob("*.jp*g"))[:6]
    for p in crops:
        shutil.copy(p, tmp_path / "inbox" / f"{p.parent.name}_{p.name}")
    counts = run_once(config)
    with Store.open(config.state_dir) as store:
        rows = images(store)
        assert len(rows) == len(crops)
        assert all(r[1] == "done" and face_count(store, r[3]) == 1 for r in rows.values())
        ids, matrix = store.vectors()
        assert matrix.shape == (len(crops), 128)
        assert np.allclose(np.linalg.norm(matrix, axis=1), 1.0, atol=1e-3)
    assert counts["faces"] == len(crops)


def test_detect_mode_mixed_sizes_many_faces_and_none(tmp_path, data_dir, make_config, run_once, images):
    """The old tool crashed on mixed sizes and several faces per photo: one run holds all."""
    config = make_config(tmp_path)
    inbox = tmp_path / "inbox"
    for p in (data_dir / "scenes").iterdir():
        shutil.copy(p, inbox / p.name)
    for p in (data_dir / "nonfaces").iterdir():
        shutil.copy(p, inbox / p.name)
    shutil.copy(data_dir / "faces" / "Barack_Obama" / "obama.jpg", inbox / "obama_big.jpg")
    run_once(config)
    with Store.open(config.state_dir) as store:
        rows = images(store)
        assert len(rows) == 16
        multi = [n for n in ("obama_and_biden.jpg", "bald_guys.jpg") if face_count(store, rows[n][3]) >= 2]
        assert multi == ["obama_and_biden.jpg", "bald_guys.jpg"]
        assert sum(face_count(store, r[3]) for r in rows.values()) >= 15
        for p in (data_dir / "nonfaces").iterdir():
            assert rows[p.name][1] == "noface", p.name
        assert rows["obama_big.jpg"][1] == "done"
        # boxes are in the original photo's pixels, inside it
        with Image.open(data_dir / "faces" / "Barack_Obama" / "obama.jpg") as im:
            w, h = im.size
        x1, y1, x2, y2 = store._conn.execute(
            "SELECT box_x1, box_y1, box_x2, box_y2 FROM faces WHERE image_id=?",
            (rows["obama_big.jpg"][3],)).fetchone()
        assert 0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h and (x2 - x1) > 100


def test_bad_inputs_quarantined_with_reason_good_files_processed(tmp_path, data_dir, make_config, run_once,
                                                                 images, bad_inputs):
    config = make_config(tmp_path)
    inbox = tmp_path / "inbox"
    expected = bad_inputs(inbox, data_dir)
    goods = sorted((data_dir / "faces" / "Winona_Ryder").iterdir())[:3]
    for p in goods:
        shutil.copy(p, inbox / p.name)
    run_once(config)
    quarantine = config.library / "_quarantine"
    with Store.open(config.state_dir) as store:
        rows = images(store)
        for name, word in expected.items():
            assert rows[name][1] == "error", name
            assert word in rows[name][2].lower(), (name, rows[name][2])
            assert (quarantine / name).exists(), name
            reason = (quarantine / f"{name}.reason.txt").read_text()
            assert rows[name][2] in reason
            assert not (inbox / name).exists()
        for p in goods:
            assert rows[p.name][1] == "done"
            # run --once places good files (placer.py): moved whole into the library
            placed = [q for q in config.library.rglob(p.name) if "_quarantine" not in q.parts]
            assert len(placed) == 1 and placed[0].read_bytes() == p.read_bytes()
            assert not (inbox / p.name).exists()


def test_quarantine_never_overwrites(tmp_path, data_dir, make_config, run_once):
    config = make_config(tmp_path)
    quarantine = config.library / "_quarantine"
    quarantine.mkdir(parents=True)
    (quarantine / "text.jpg").write_text("an earlier broken file\n")
    (tmp_path / "inbox" / "text.jpg").write_text("a new broken file\n")
    run_once(config)
    assert (quarantine / "text.jpg").read_text() == "an earlier broken file\n"
    assert (quarantine / "text_1.jpg").read_text() == "a new broken file\n"


def test_unusual_valid_images_are_processed(tmp_path, data_dir, make_config, run_once, images):
    config = make_config(tmp_path, extensions="[.jpg, .png, .gif, .webp]")
    inbox = tmp_path / "inbox"
    src = Image.open(data_dir / "scenes" / "obama_and_biden.jpg").convert("RGB")
    src.convert("CMYK").save(inbox / "cmyk.jpg")
    src.convert("P").save(inbox / "palette.png")
    rgba = src.convert("RGBA")
    rgba.putalpha(255)
    rgba.save(inbox / "alpha.png")
    frames = [src.convert("P"), src.convert("P").transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    frames[0].save(inbox / "anim.gif", save_all=True, append_images=frames[1:])
    frames[0].save(inbox / "anim.webp", save_all=True, append_images=frames[1:])
    rotated = src.transpose(Image.Transpose.ROTATE_90)  # stored sideways, EXIF says turn it back
    exif = Image.Exif()
    exif[0x0112] = 6
    rotated.save(inbox / "rotated.jpg", exif=exif)
    arr16 = (np.asarray(src.convert("L"), dtype=np.uint16) * 257)
    Image.fromarray(arr16).save(inbox / "gray16.png")
    run_once(config)
    with Store.open(config.state_dir) as store:
        rows = images(store)
        for name in ("cmyk.jpg", "palette.png", "alpha.png", "anim.gif", "anim.webp", "rotated.jpg",
                     "gray16.png"):
            assert rows[name][1] == "done", (name, rows[name][2])
            assert face_count(store, rows[name][3]) >= 1, name


def test_same_content_twice_is_embedded_once_and_restart_skips_done(tmp_path, data_dir, make_config,
                                                                    run_once, images):
    config = make_config(tmp_path)
    inbox = tmp_path / "inbox"
    photo = data_dir / "faces" / "Paul_McCartney"
    first = sorted(photo.iterdir())[0]
    shutil.copy(first, inbox / "a.jpg")
    shutil.copy(first, inbox / "copy_of_a.jpg")
    (inbox / "sub").mkdir()
    shutil.copy(first, inbox / "sub" / "again.jpg")
    counts = run_once(config)
    with Store.open(config.state_dir) as store:
        rows = images(store)
        statuses = sorted(r[1] for r in rows.values())
        assert statuses == ["done", "duplicate", "duplicate"]
        embedded = store._conn.execute("SELECT COUNT(DISTINCT vector) FROM faces").fetchone()[0]
        assert embedded == 1
    # a restart finds the same files in the inbox and does not ingest them again
    counts_again = run_once(config)
    assert counts_again == counts


def test_store_refuses_another_embedder(tmp_path, data_dir, make_config, run_once):
    config = make_config(tmp_path, mode="aligned")
    shutil.copy(next((data_dir / "faces_cropped").rglob("*.jp*g")), tmp_path / "inbox" / "x.jpg")
    run_once(config)
    with Store.open(config.state_dir) as store:
        with pytest.raises(StoreError) as info:
            store.bind_model("facenet-vggface2:0123456789ab", 512)
    # it names what made the store and the way to the configured model that keeps the people
    assert "dlib" in str(info.value) and "facesortd migrate --to facenet" in str(info.value)


def test_second_daemon_on_same_state_refused(tmp_path, make_config):
    config = make_config(tmp_path)
    first = StateLock(config.state_dir)     # what a running daemon holds
    first.acquire()
    try:
        with pytest.raises(FacesortdError) as info:
            Daemon(config).run_once(timeout=30)
        assert "in use" in str(info.value) and str(os.getpid()) in str(info.value)
    finally:
        first.release()


def test_one_unrecordable_image_does_not_lose_its_micro_batch(tmp_path, make_config, images):
    """Results are recorded in one transaction per micro-batch; when one image cannot be recorded
    (here: the model returned NaN for it), the batch is rolled back and recorded image by image,
    so only that image ends as an error and the others are stored with their faces."""
    from facesortd.inbox.jobs import Job
    from facesortd.ingest.ledger import Work
    from facesortd.ingest.pipeline import Pipeline

    config = make_config(tmp_path, mode="aligned")
    store = Store.open(config.state_dir)
    try:
        store.bind_model("test-model", 4)
        pipe = Pipeline(config, store, embedder=None)
        works = []
        for i, value in enumerate((0.5, float("nan"), 0.5)):
            path = tmp_path / "inbox" / f"{i}.jpg"
            path.write_bytes(b"x")
            pipe._ledger.in_flight.add(path)
            works.append(Work(job=Job(path, tmp_path / "inbox", "aligned", 1, 1), sha256=f"s{i}",
                               size=1, faces=[None], boxes=[(0.0, 0.0, 1.0, 1.0)], scores=[1.0],
                               vectors=[np.full(4, value, np.float32)]))
        face_ids = pipe._model.store_all(works)
        rows = images(store)
        assert len(face_ids) == 2
        assert [rows[f"{i}.jpg"][1] for i in range(3)] == ["done", "error", "done"]
        assert "could not record" in rows["1.jpg"][2] and "finite" in rows["1.jpg"][2]
        assert face_count(store, rows["1.jpg"][3]) == 0
        assert store.vectors()[1].shape == (2, 4)
        assert not pipe._ledger.in_flight and pipe.stats.files_done == 2 and pipe.stats.files_error == 1
    finally:
        store.close()
