"""Decoding: every broken file becomes BadImage with a reason; every odd-but-valid file decodes right."""

from __future__ import annotations

import hashlib
import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, features

from facesortd.errors import BadImage
from facesortd.ingest.imageio import Decoded, decode, decode_face_crop, sha256_file


@pytest.fixture(scope="module")
def real_jpeg(data_dir) -> Path:
    return data_dir / "faces" / "Barack_Obama" / "obama.jpg"  # 910 x 1137


def bad(path: Path, **kwargs) -> str:
    with pytest.raises(BadImage) as info:
        decode(path, **kwargs)
    return info.value.reason


def png_with_header_size(width: int, height: int) -> bytes:
    """A tiny real PNG whose IHDR claims width x height (what a decompression bomb looks like)."""
    buf = io.BytesIO()
    Image.new("1", (8, 8)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def halves(size=(200, 100), left=(255, 0, 0), right=(0, 0, 255), mode="RGB") -> Image.Image:
    w, h = size
    im = Image.new(mode, size, left)
    im.paste(right, (w // 2, 0, w, h))
    return im


# --- broken files ------------------------------------------------------------------------------

def test_empty_file(tmp_path):
    p = tmp_path / "empty.jpg"
    p.write_bytes(b"")
    assert "empty" in bad(p)


def test_truncated_jpeg(tmp_path, real_jpeg):
    data = real_jpeg.read_bytes()
    p = tmp_path / "half.jpg"
    p.write_bytes(data[: len(data) // 2])
    assert "truncated" in bad(p)
    with pytest.raises(BadImage, match="truncated"):
        decode_face_crop(p, 160)


def test_text_and_random_bytes_are_not_images(tmp_path):
    text = tmp_path / "notes.jpg"
    text.write_text("shopping list: eggs, milk\n" * 20)
    noise = tmp_path / "noise.png"
    noise.write_bytes(np.random.default_rng(1).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    assert "not a supported image" in bad(text)
    assert "not a supported image" in bad(noise)


def test_formats_outside_the_list_never_reach_their_decoder(tmp_path):
    eps = tmp_path / "trap.jpg"  # Pillow would hand an EPS file to Ghostscript
    eps.write_text("%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n")
    assert "not a supported image" in bad(eps)


def test_decompression_bomb_is_refused_from_its_header(tmp_path):
    p = tmp_path / "bomb.png"
    p.write_bytes(png_with_header_size(20000, 20000))
    assert p.stat().st_size < 200
    assert "decompression bomb" in bad(p)
    # Below Pillow's own limit, our max_pixels still refuses before decoding a pixel.
    q = tmp_path / "big.png"
    q.write_bytes(png_with_header_size(5000, 4000))
    reason = bad(q, max_pixels=10_000_000)
    assert "decompression bomb" in reason and "5000x4000" in reason


def test_corrupt_png_data(tmp_path):
    buf = io.BytesIO()
    halves().save(buf, "PNG")
    data = bytearray(buf.getvalue())
    idat = data.index(b"IDAT")
    data[idat + 8: idat + 40] = b"\xff" * 32
    p = tmp_path / "corrupt.png"
    p.write_bytes(bytes(data))
    assert bad(p)  # any reason, but BadImage


def test_missing_directory_and_unreadable(tmp_path, real_jpeg):
    assert "vanished" in bad(tmp_path / "gone.jpg")
    folder = tmp_path / "album.jpg"
    folder.mkdir()
    assert "directory" in bad(folder)
    with pytest.raises(BadImage, match="vanished"):
        sha256_file(tmp_path / "gone.jpg")
    if os.geteuid() == 0:
        return  # root reads any file whatever its mode; the cases above stand in for it
    locked = tmp_path / "locked.jpg"
    locked.write_bytes(real_jpeg.read_bytes())
    locked.chmod(0)
    try:
        assert "permission denied" in bad(locked)
    finally:
        locked.chmod(0o644)


def test_damaged_files_only_ever_raise_bad_image(tmp_path, real_jpeg):
    """Flip random bytes in real files: decoding either works or raises BadImage, nothing else."""
    rng = np.random.default_rng(7)
    buf = io.BytesIO()
    halves((64, 48)).save(buf, "PNG")
    for name, original in (("a.jpg", real_jpeg.read_bytes()), ("b.png", buf.getvalue())):
        for k in range(12):
            data = bytearray(original)
            spots = rng.integers(0, min(len(data), 2000), 6)
            for s in spots:
                data[s] = rng.integers(0, 256)
            p = tmp_path / f"{k}{name}"
            p.write_bytes(bytes(data))
            try:
                out = decode(p, max_side=256)
            except BadImage as exc:
                assert exc.reason
            else:
                assert out.rgb.dtype == np.uint8 and out.rgb.shape[2] == 3


# --- unusual but valid files -------------------------------------------------------------------

def opened(path: Path, attr: str):
    with Image.open(path) as im:
        return getattr(im, attr)


def check(out: Decoded, shape):
    assert out.rgb.shape == shape and out.rgb.dtype == np.uint8
    assert out.rgb.flags.c_contiguous


def test_cmyk_jpeg(tmp_path):
    p = tmp_path / "cmyk.jpg"
    halves().convert("CMYK").save(p, "JPEG", quality=95)
    assert opened(p, "mode") == "CMYK"
    out = decode(p)
    check(out, (100, 200, 3))
    assert np.allclose(out.rgb[50, 40], (255, 0, 0), atol=30)
    assert np.allclose(out.rgb[50, 160], (0, 0, 255), atol=30)


def test_16_bit_png_is_scaled_not_clipped(tmp_path):
    ramp = np.tile(np.linspace(0, 65535, 256).astype(np.uint16), (32, 1))
    p = tmp_path / "deep.png"
    Image.fromarray(ramp).save(p)
    assert opened(p, "mode").startswith("I")
    out = decode(p)
    check(out, (32, 256, 3))
    row = out.rgb[0, :, 0].astype(int)
    assert row[0] == 0 and row[-1] == 255
    assert abs(row[128] - 128) <= 2  # Pillow's own conversion would give 255 here
    assert np.all(np.diff(row) >= 0)
    assert np.array_equal(out.rgb[..., 0], out.rgb[..., 2])  # grey stays grey


def test_palette_png_with_transparency_lands_on_white(tmp_path):
    im = Image.new("P", (40, 20), 0)
    im.putpalette([0, 0, 0, 200, 30, 30] + [0] * 762)
    im.paste(1, (20, 0, 40, 20))
    p = tmp_path / "pal.png"
    im.save(p, transparency=0)
    out = decode(p)
    check(out, (20, 40, 3))
    assert tuple(out.rgb[10, 5]) == (255, 255, 255)  # transparent black -> white, not black
    assert tuple(out.rgb[10, 30]) == (200, 30, 30)


def test_rgba_and_la_png_are_composited_on_white(tmp_path):
    rgba = np.zeros((10, 30, 4), np.uint8)
    rgba[:, 10:20] = (255, 0, 0, 128)   # half-transparent red
    rgba[:, 20:] = (0, 128, 0, 255)     # opaque green
    p = tmp_path / "rgba.png"
    Image.fromarray(rgba, "RGBA").save(p)
    out = decode(p)
    check(out, (10, 30, 3))
    assert tuple(out.rgb[5, 5]) == (255, 255, 255)
    assert np.allclose(out.rgb[5, 15], (255, 127, 127), atol=2)
    assert tuple(out.rgb[5, 25]) == (0, 128, 0)
    la = tmp_path / "la.png"
    Image.fromarray(np.dstack([np.zeros((10, 10), np.uint8), np.zeros((10, 10), np.uint8)]),
                    "LA").save(la)
    assert tuple(decode(la).rgb[0, 0]) == (255, 255, 255)


def test_one_bit_and_greyscale(tmp_path):
    p = tmp_path / "bw.png"
    halves((16, 8), left=0, right=1, mode="1").save(p)
    out = decode(p)
    check(out, (8, 16, 3))
    assert tuple(out.rgb[0, 0]) == (0, 0, 0) and tuple(out.rgb[0, 15]) == (255, 255, 255)


def test_animated_gif_and_webp_give_the_first_frame(tmp_path):
    frames = [Image.new("RGB", (32, 24), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    gif = tmp_path / "anim.gif"
    frames[0].save(gif, save_all=True, append_images=frames[1:], duration=100, loop=0)
    assert opened(gif, "n_frames") == 3
    out = decode(gif)
    check(out, (24, 32, 3))
    assert np.allclose(out.rgb[12, 16], (255, 0, 0), atol=10)
    if not features.check("webp"):
        pytest.skip("Pillow built without WebP")
    webp = tmp_path / "anim.webp"
    frames[0].save(webp, save_all=True, append_images=frames[1:], duration=100, lossless=True)
    out = decode(webp)
    check(out, (24, 32, 3))
    assert np.allclose(out.rgb[12, 16], (255, 0, 0), atol=10)


def exif_rotated(path: Path, size, orientation: int, **save) -> None:
    im = halves(size)
    exif = im.getexif()
    exif[0x0112] = orientation
    im.save(path, "JPEG", exif=exif, quality=95, **save)


def test_exif_orientation_6_is_turned_upright(tmp_path):
    p = tmp_path / "phone.jpg"
    exif_rotated(p, (200, 100), 6)  # stored landscape, red left: shown portrait, red on top
    out = decode(p)
    check(out, (200, 100, 3))
    assert out.original_size == (100, 200) and out.scale == 1.0
    assert np.allclose(out.rgb[20, 50], (255, 0, 0), atol=40)
    assert np.allclose(out.rgb[180, 50], (0, 0, 255), atol=40)
    crop = decode_face_crop(p, 64)
    assert np.allclose(crop[5, 32], (255, 0, 0), atol=40)


def test_big_jpeg_is_drafted_and_scaled_with_the_right_scale(tmp_path):
    im = Image.new("RGB", (4000, 3000), (40, 40, 40))
    im.paste((255, 0, 0), (2000, 1000, 2400, 1400))
    p = tmp_path / "big.jpg"
    im.save(p, "JPEG", quality=90)
    out = decode(p, max_side=1024)  # a 1/4 draft (1000 x 750) is within DRAFT_SLACK: kept as is
    check(out, (750, 1000, 3))
    assert out.original_size == (4000, 3000)
    assert out.scale == pytest.approx(4.0)
    asked = decode(p, max_side=1200)  # 1/4 is too small here: 1/2 draft, then one resize
    check(asked, (900, 1200, 3))
    assert asked.scale == pytest.approx(4000 / 1200)
    x, y = 2200 / out.scale, 1200 / out.scale  # the red square's centre, mapped to the copy
    assert np.allclose(out.rgb[int(y), int(x)], (255, 0, 0), atol=40)
    assert np.allclose(out.rgb[50, 50], (40, 40, 40), atol=10)
    small = decode(p, max_side=300)  # draft at 1/8 (500 x 375), then one resize
    check(small, (225, 300, 3))
    assert small.scale == pytest.approx(4000 / 300)
    same = decode(p, max_side=5000)  # no upscaling
    check(same, (3000, 4000, 3))


def test_rotated_big_jpeg_maps_back_to_upright_full_size(tmp_path):
    p = tmp_path / "rotated.jpg"
    exif_rotated(p, (4000, 3000), 6)
    out = decode(p, max_side=1000)
    check(out, (1000, 750, 3))
    assert out.original_size == (3000, 4000)
    assert out.scale == pytest.approx(4.0)


def test_face_crop(data_dir, tmp_path):
    path = next((data_dir / "faces_cropped").glob("*/*.jpg"))
    crop = decode_face_crop(path, 160)
    assert crop.shape == (160, 160, 3) and crop.dtype == np.uint8 and crop.flags.c_contiguous
    with Image.open(path) as im:
        full = np.asarray(im.convert("RGB").resize((160, 160), Image.Resampling.BILINEAR))
        im.convert("L").resize((300, 200)).save(tmp_path / "grey.jpg")
    assert np.abs(crop.astype(int) - full.astype(int)).mean() < 3
    assert decode_face_crop(tmp_path / "grey.jpg", 160).shape == (160, 160, 3)  # grey, non-square: stretched
    with pytest.raises(BadImage, match="empty"):
        empty = tmp_path / "e.jpg"
        empty.write_bytes(b"")
        decode_face_crop(empty, 160)


def test_sha256_file(tmp_path):
    data = np.random.default_rng(3).integers(0, 256, 3 * 2**20 + 17, dtype=np.uint8).tobytes()
    p = tmp_path / "blob.bin"
    p.write_bytes(data)
    assert sha256_file(p) == (hashlib.sha256(data).hexdigest(), len(data))
    e = tmp_path / "empty"
    e.write_bytes(b"")
    assert sha256_file(e) == (hashlib.sha256(b"").hexdigest(), 0)
