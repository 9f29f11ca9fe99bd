"""What phones and cameras drop: HEIC (pillow-heif), AVIF, camera RAW, the broken and oversized
samples of ../shared/data/camera/, and HEIC face photos made from real ones at test time."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from facesortd.cli import main
from facesortd.errors import BadImage
from facesortd.formats import AVIF_READABLE, FORMATS
from facesortd.ingest.imageio import NoPreview, decode, decode_face_crop
from facesortd.store.database import Store
from facesortd.telemetry import Telemetry

pillow_heif = pytest.importorskip("pillow_heif")


@pytest.fixture(scope="module")
def camera(data_dir) -> Path:
    return data_dir / "camera"


def test_heic_samples_decode_upright_on_the_primary_image(camera):
    assert "HEIF" in FORMATS
    d = decode(camera / "xiaomi.heic", max_side=1024)
    assert d.original_size == (2592, 1944) and max(d.rgb.shape[:2]) <= 1024
    assert d.scale == pytest.approx(2592 / d.rgb.shape[1])
    burst = decode(camera / "bird_burst.heic")   # 4 images: the primary one is analysed
    assert burst.rgb.shape == (720, 1280, 3)
    grey = decode(camera / "L_exif_xmp_iptc.heic")
    assert grey.rgb.shape == (64, 64, 3)


def test_heic_orientation_and_date_as_for_jpeg(tmp_path, data_dir):
    from facesortd.library.layout import photo_date

    src = sorted((data_dir / "faces" / "JK_Rowling").iterdir())[0]
    with Image.open(src) as im:
        exif = im.getexif()
        exif[274] = 6                                   # rotate 90 degrees clockwise to show
        exif.get_ifd(0x8769)[36867] = "2019:07:04 10:11:12"
        im.save(tmp_path / "o.jpg", exif=exif, quality=95)
        im.save(tmp_path / "o.heic", exif=exif.tobytes(), quality=95)
    jpeg, heic = decode(tmp_path / "o.jpg"), decode(tmp_path / "o.heic")
    assert heic.original_size == jpeg.original_size
    assert np.abs(heic.rgb.astype(int) - jpeg.rgb.astype(int)).mean() < 4   # same way up
    crop = decode_face_crop(tmp_path / "o.heic", 64)
    assert crop.shape == (64, 64, 3)
    assert photo_date(tmp_path / "o.heic", 0) == ("2019", "07", "04")


def test_broken_heic_refused_with_a_reason(tmp_path, camera):
    with pytest.raises(BadImage, match="not a supported image"):
        decode(camera / "corrupted.heic")
    with pytest.raises(BadImage, match="truncated"):   # its second image runs past the end
        decode(camera / "truncated.heic")
    cut = tmp_path / "cut.heic"
    cut.write_bytes((camera / "xiaomi.heic").read_bytes()[:400_000])
    with pytest.raises(BadImage, match="truncated"):   # libheif would decode grey tiles
        decode(cut)


def test_200mp_heic_refused_before_decoding(camera):
    """Refused from its header: the process's peak memory stays near what importing costs (a
    decoded 200 MP photo would be 600 MB of RGB alone)."""
    code = ("import resource, sys; from pathlib import Path\n"
            "from facesortd.errors import BadImage\n"
            "from facesortd.ingest.imageio import decode\n"
            "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
            "try:\n    decode(Path(sys.argv[1]), max_side=1024)\nexcept BadImage as e:\n"
            "    print(e.reason)\n"
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)\n")
    out = subprocess.run([sys.executable, "-c", code, str(camera / "200MP.heic")],
                         capture_output=True, text=True, check=True).stdout.splitlines()
    assert "decompression bomb" in out[0]
    assert int(out[1]) < 64 * 1024, f"peak RSS grew by {int(out[1]) // 1024} MB"


@pytest.mark.skipif(not AVIF_READABLE, reason="this Pillow was built without AVIF")
def test_avif_decodes(tmp_path, data_dir):
    src = sorted((data_dir / "faces" / "JK_Rowling").iterdir())[0]
    with Image.open(src) as im:
        im.save(tmp_path / "a.avif", quality=90)
    assert decode(tmp_path / "a.avif").original_size == Image.open(src).size


def test_stripped_raw_has_no_preview_not_broken(camera):
    for name in ("Nikon.nef", "CanonRaw.cr2", "CanonRaw.cr3"):
        with pytest.raises(NoPreview, match="RAW file without a readable preview"):
            decode(camera / name)


def test_raw_analysed_on_its_embedded_preview(tmp_path, data_dir, monkeypatch):
    """No real RAW with a preview is among the samples: rawpy is stood in for, to check the
    preview is what gets decoded and that LibRaw's flip turns it upright."""
    rawpy = pytest.importorskip("rawpy")
    src = sorted((data_dir / "faces" / "JK_Rowling").iterdir())[0]
    with Image.open(src) as im:
        buf = io.BytesIO()
        im.crop((0, 0, 150, 100)).save(buf, "JPEG", quality=95)

    class Raw:
        class sizes:
            flip = 6
            width, height = 6000, 4000

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def extract_thumb(self):
            return type("Thumb", (), {"format": rawpy.ThumbFormat.JPEG, "data": buf.getvalue()})

    monkeypatch.setattr(rawpy, "imread", lambda f: Raw())
    (tmp_path / "x.cr3").write_bytes(b"stand-in")
    d = decode(tmp_path / "x.cr3")
    assert d.original_size == (100, 150)   # 150x100 preview, turned 90 degrees upright


# -- end to end ---------------------------------------------------------------------------------

PEOPLE = ("Allyson_Felix", "JK_Rowling", "Paul_McCartney")


def test_camera_samples_and_heic_faces_through_run_once(tmp_path, data_dir, camera, make_config,
                                                        run_once, images, capsys):
    """HEIC face photos land with the people of their JPEG originals, each with its companions
    (a Live Photo's MOV and AAE; a JPEG's RAW twin and XMP); the broken and oversized samples are
    quarantined with a reason; a lone RAW without a readable preview goes to _noface; sidecars
    with no photo and other files to _other."""
    pytest.importorskip("dlib", reason="the dlib extra is installed by `make test`")
    config = make_config(tmp_path, extensions="[.jpg, .heic]")
    inbox = tmp_path / "inbox"
    groups = {}
    for person in PEOPLE:
        for f in sorted((data_dir / "faces" / person).iterdir())[:3]:
            stem = f"{person}__{f.stem}"
            shutil.copyfile(f, inbox / f"{stem}.jpg")
            with Image.open(f) as im:
                im.save(inbox / f"{stem}_h.heic", quality=90)
            groups[f"{stem}_h.heic"] = [f"{stem}_h.MOV", f"{stem}_h.AAE"]          # Live Photo
            shutil.copyfile(camera / "QuickTime.mov", inbox / f"{stem}_h.MOV")
            shutil.copyfile(camera / "PLIST.aae", inbox / f"{stem}_h.AAE")
    twin = f"{PEOPLE[0]}__{sorted((data_dir / 'faces' / PEOPLE[0]).iterdir())[0].stem}"
    groups[f"{twin}.jpg"] = [f"{twin}.CR3", f"{twin}.xmp"]                          # RAW + JPEG
    shutil.copyfile(camera / "CanonRaw.cr3", inbox / f"{twin}.CR3")
    shutil.copyfile(camera / "XMP.xmp", inbox / f"{twin}.xmp")
    samples = sorted(p.name for p in camera.iterdir() if p.name != "README.md")
    for name in samples:
        shutil.copyfile(camera / name, inbox / name)
    groups["truncated.heic"] = ["truncated.xmp"]          # a broken photo keeps its sidecar
    shutil.copyfile(camera / "XMP.xmp", inbox / "truncated.xmp")
    (inbox / "docs").mkdir()
    (inbox / "docs" / "notes.pdf").write_bytes(b"%PDF-1.4 not a photo")
    want = {p.relative_to(inbox): p.read_bytes() for p in inbox.rglob("*") if p.is_file()}
    run_once(config)
    lib = config.library
    placed = {p.name: p.relative_to(lib).parent for p in lib.rglob("*")
              if p.is_file() and not p.name.endswith(".reason.txt")}
    assert len(placed) == len(want) and not any(p.is_file() for p in inbox.rglob("*"))
    for person in PEOPLE:
        for f in sorted((data_dir / "faces" / person).iterdir())[:3]:
            folder = placed[f"{person}__{f.stem}.jpg"]
            assert not str(folder).startswith("_"), (f, folder)
            assert placed[f"{person}__{f.stem}_h.heic"] == folder, f
    for photo, companions in groups.items():
        assert all(placed[c] == placed[photo] for c in companions), (photo, companions)
        for c in companions:
            assert (lib / placed[c] / c).read_bytes() == want[Path(c)]
    with Store.open(config.state_dir) as store:
        rows = images(store)
        metrics = Telemetry().render(store)
    # 11 groups (9 Live Photos, 1 RAW + JPEG pair: 2 companions each; a broken HEIC's XMP);
    # 3 sidecars alone and a PDF
    assert 'facesortd_store_files{kind="groups"} 11.0' in metrics
    assert 'facesortd_store_files{kind="companions"} 21.0' in metrics
    assert 'facesortd_store_files{kind="other"} 4.0' in metrics
    assert main(["status", "--config", str(tmp_path / "facesortd.yaml")]) == 0
    assert "files: companions 21, groups 11, other 4" in capsys.readouterr().out
    for name, word in (("200MP.heic", "decompression bomb"), ("corrupted.heic", "not a supported"),
                       ("truncated.heic", "truncated")):
        assert rows[name][1] == "error" and word in rows[name][2], rows[name]
        assert placed[name] == Path("_quarantine")
        assert word in (lib / "_quarantine" / f"{name}.reason.txt").read_text()
    for name in ("Nikon.nef", "CanonRaw.cr2", "CanonRaw.cr3"):   # alone: analysed, not broken
        assert rows[name][1] == "noface" and "RAW file without a readable preview" in rows[name][2]
        assert placed[name] == Path("_noface")
        assert (lib / "_noface" / name).read_bytes() == (camera / name).read_bytes()
    for name in ("xiaomi.heic", "pug.heic", "bird_burst.heic", "L_exif_xmp_iptc.heic", "DNG.dng"):
        assert rows[name][1] == "noface" and placed[name] == Path("_noface"), rows[name]
    for name in ("PLIST.aae", "QuickTime.mov", "XMP.xmp"):   # no photo of that name: other files
        assert rows[name][1] == "other" and placed[name] == Path("_other"), rows[name]
    assert (lib / "_other" / "docs" / "notes.pdf").read_bytes() == want[Path("docs/notes.pdf")]


def test_camera_files_dropped_into_a_running_daemon(tmp_path, data_dir, camera, make_config):
    """The daemon takes what a phone drops while it runs: a Live Photo (HEIC + MOV) placed as one,
    an edit file that comes after its photo was placed follows it, the broken and oversized
    samples are quarantined with the daemon going on, a lone RAW goes to _noface, a sidecar alone
    and a PDF to _other."""
    pytest.importorskip("dlib", reason="the dlib extra is installed by `make test`")
    import threading
    import time

    from facesortd.app.daemon import Daemon

    config = make_config(tmp_path, extensions="[.jpg, .heic]")
    inbox, lib = tmp_path / "inbox", config.library
    daemon = Daemon(config)
    thread = threading.Thread(target=daemon.run_forever, name="test-daemon")
    thread.start()

    def where(name: str, timeout: float = 60.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [p for p in lib.rglob(name) if p.is_file()] if lib.exists() else []
            if found:
                return found[0].parent.relative_to(lib)
            time.sleep(0.1)
        raise AssertionError(f"{name} was not placed; library: {sorted(map(str, lib.rglob('*')))}")

    try:
        with Image.open(sorted((data_dir / "faces" / "JK_Rowling").iterdir())[0]) as im:
            im.save(inbox / "IMG_0412.HEIC.part", "HEIF", quality=90)
        shutil.copyfile(camera / "QuickTime.mov", inbox / "IMG_0412.MOV")
        os.rename(inbox / "IMG_0412.HEIC.part", inbox / "IMG_0412.HEIC")
        for name in ("corrupted.heic", "truncated.heic", "200MP.heic", "Nikon.nef", "XMP.xmp"):
            shutil.copyfile(camera / name, inbox / name)
        (inbox / "notes.pdf").write_bytes(b"%PDF-1.4")
        folder = where("IMG_0412.HEIC")
        assert str(folder) in ("_unsorted",) or not str(folder).startswith("_")
        assert where("IMG_0412.MOV") == folder
        for name in ("corrupted.heic", "truncated.heic", "200MP.heic"):
            assert where(name) == Path("_quarantine")
        assert where("Nikon.nef") == Path("_noface")
        assert where("XMP.xmp") == where("notes.pdf") == Path("_other")
        shutil.copyfile(camera / "PLIST.aae", inbox / "IMG_0412.AAE")   # edited on the phone later
        assert where("IMG_0412.AAE") == folder
        assert thread.is_alive() and not any(p.is_file() for p in inbox.rglob("*"))
    finally:
        daemon._stop.set()
        thread.join(60)
    assert not thread.is_alive()
