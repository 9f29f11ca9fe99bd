"""Moves that never overwrite: same filesystem (hard link + unlink) and the verified copy path."""

from __future__ import annotations

import errno
import os

import pytest

from facesortd import fsops


def test_move_into_empty_folder(tmp_path):
    src = tmp_path / "in" / "a.jpg"
    src.parent.mkdir()
    src.write_bytes(b"photo")
    dst = fsops.move_no_overwrite(src, tmp_path / "out")
    assert dst == tmp_path / "out" / "a.jpg"
    assert dst.read_bytes() == b"photo" and not src.exists()


def test_collision_gets_next_free_name(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.jpg").write_bytes(b"old")
    (out / "a_1.jpg").write_bytes(b"older")
    src = tmp_path / "a.jpg"
    src.write_bytes(b"new")
    dst = fsops.move_no_overwrite(src, out)
    assert dst.name == "a_2.jpg" and dst.read_bytes() == b"new"
    assert (out / "a.jpg").read_bytes() == b"old" and (out / "a_1.jpg").read_bytes() == b"older"


def test_cross_filesystem_path_copies_verifies_and_keeps_metadata(tmp_path, monkeypatch):
    def no_link(*args, **kwargs):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(fsops.os, "link", no_link)
    src = tmp_path / "b.png"
    src.write_bytes(os.urandom(3_000_000))
    os.utime(src, ns=(1_600_000_000_000_000_000, 1_600_000_000_000_000_000))
    data = src.read_bytes()
    dst = fsops.move_no_overwrite(src, tmp_path / "lib")
    assert dst.read_bytes() == data and not src.exists()
    assert dst.stat().st_mtime_ns == 1_600_000_000_000_000_000


def test_failed_copy_keeps_source_and_leaves_no_partial_file(tmp_path, monkeypatch):
    monkeypatch.setattr(fsops.os, "link", lambda *a, **k: (_ for _ in ()).throw(OSError(errno.EXDEV, "x")))
    monkeypatch.setattr(fsops.os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(errno.EIO, "disk")))
    src = tmp_path / "c.jpg"
    src.write_bytes(b"precious")
    with pytest.raises(OSError):
        fsops.move_no_overwrite(src, tmp_path / "lib")
    assert src.read_bytes() == b"precious"
    assert list((tmp_path / "lib").iterdir()) == []


def test_write_new_text_never_overwrites(tmp_path):
    first = fsops.write_new_text(tmp_path / "r.txt", "one")
    second = fsops.write_new_text(tmp_path / "r.txt", "two")
    assert first.read_text() == "one" and second.name == "r_1.txt" and second.read_text() == "two"


def test_move_interrupted_between_link_and_unlink_is_finished_not_duplicated(tmp_path):
    """A crash after os.link and before os.unlink leaves one file under two names: the next
    attempt completes that move instead of making name_1."""
    src = tmp_path / "in" / "broken.jpg"
    src.parent.mkdir()
    src.write_bytes(b"not really a jpeg")
    out = tmp_path / "q"
    out.mkdir()
    os.link(src, out / "broken.jpg")          # the state the crash left
    dst = fsops.move_no_overwrite(src, out)
    assert dst == out / "broken.jpg" and not src.exists()
    assert sorted(p.name for p in out.iterdir()) == ["broken.jpg"]
    other = tmp_path / "in" / "broken.jpg"    # same name, different file: a free name is taken
    other.write_bytes(b"another broken file")
    assert fsops.move_no_overwrite(other, out).name == "broken_1.jpg"
    assert (out / "broken.jpg").read_bytes() == b"not really a jpeg"
