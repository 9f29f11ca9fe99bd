"""File moves that never overwrite and never lose a byte.

The rule everywhere in facesortd: a destination that exists is never replaced. ``os.link`` is the
atomic "create only if absent" for a whole file on one filesystem; across filesystems (or where hard
links are not supported) the bytes are copied into a new file opened with ``O_EXCL``, synced and
checked before the source is removed.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import logging
import os
import shutil
from pathlib import Path
from typing import Callable, Optional

log = logging.getLogger("facesortd.fsops")

_LINK_UNSUPPORTED = {errno.EXDEV, errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK}


def candidate_names(name: str):
    """``name``, then ``stem_1.ext``, ``stem_2.ext``... (rename_new)."""
    stem, ext = os.path.splitext(name)
    yield name
    n = 1
    while True:
        yield f"{stem}_{n}{ext}"
        n += 1


def move_no_overwrite(src: Path, dst_dir: Path, name: str | None = None) -> Path:
    """Move ``src`` into ``dst_dir`` under a free name (``name_1.jpg``... on collision).

    Returns the final path. The source is removed only after the destination is complete. A
    destination that is the source's own hard link is this move interrupted between link and
    unlink (a crash): the move is finished there instead of making a second copy.
    """
    dst_dir.mkdir(parents=True, exist_ok=True)
    for candidate in candidate_names(name or src.name):
        dst = dst_dir / candidate
        if os.path.lexists(dst):
            if _same_inode(src, dst):
                os.unlink(src)
                fsync_dir(src.parent)
                return dst
            continue
        try:
            _place(src, dst)
        except FileExistsError:
            continue  # lost a race for this name: try the next one
        os.unlink(src)
        fsync_dir(dst_dir)
        return dst
    raise AssertionError("unreachable")


def _same_inode(a: Path, b: Path) -> bool:
    try:
        sa, sb = os.lstat(a), os.lstat(b)
    except OSError:
        return False
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def write_new_text(path: Path, text: str) -> Path:
    """Write a small text file under a free name next to ``path`` (never overwriting)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for candidate in candidate_names(path.name):
        target = path.parent / candidate
        try:
            with open(target, "x", encoding="utf-8") as fh:
                fh.write(text)
            return target
        except FileExistsError:
            continue
    raise AssertionError("unreachable")


def _place(src: Path, dst: Path) -> None:
    """Make ``dst`` a complete copy of ``src`` (a hard link where possible); never replaces."""
    try:
        os.link(src, dst, follow_symlinks=False)
        return
    except OSError as exc:
        if exc.errno == errno.EEXIST:
            raise FileExistsError(dst) from exc
        if exc.errno not in _LINK_UNSUPPORTED:
            raise
    copy_verified(src, dst)


def copy_verified(src: Path, dst: Path) -> None:
    """Copy into a new file (O_EXCL), fsync, and check size and sha256 before returning."""
    want = sha256_of(src)
    try:
        with open(src, "rb") as fin, open(dst, "xb") as fout:
            shutil.copyfileobj(fin, fout, 1 << 20)
            fout.flush()
            os.fsync(fout.fileno())
        shutil.copystat(src, dst)
        if sha256_of(dst) != want:
            raise OSError(errno.EIO, f"copy of {src} to {dst} does not match the source")
    except FileExistsError:
        raise
    except BaseException:
        # Only our own incomplete copy is removed; the source is untouched.
        try:
            os.unlink(dst)
        except FileNotFoundError:
            pass
        raise


def place_exact(src: Path, dst: Path, tmp: Path, expect_sha256: str | None = None) -> str:
    """Make the absent path ``dst`` hold ``src``'s bytes: a hard link ("link"), else a verified copy
    written to ``tmp`` and renamed into place without replacing ("copy"). FileExistsError if
    ``dst`` exists. The caller unlinks ``src`` if it is moving the file."""
    try:
        os.link(src, dst, follow_symlinks=False)
        return "link"
    except OSError as exc:
        if exc.errno == errno.EEXIST:
            raise FileExistsError(dst) from exc
        if exc.errno not in _LINK_UNSUPPORTED:
            raise
    copy_exact(src, dst, tmp, expect_sha256)
    return "copy"


class MovedMeanwhile(FileNotFoundError):
    """The source of a move was moved away (or deleted) by someone else while facesortd moved it:
    the file stays where that person put it, and nothing of facesortd's is left behind."""


def move_exact(src: Path, dst: Path, tmp: Path, expect_sha256: str | None = None,
               try_rename: bool = True) -> str:
    """Move ``src`` to the absent path ``dst``, never replacing, never leaving two copies.

    One filesystem: ``renameat2(RENAME_NOREPLACE)``, atomic ("rename"): a person's move of the
    same file either wins (FileNotFoundError here, nothing done) or finds the file gone. Where the
    filesystem has no such rename (some network shares): a hard link, then the unlink of ``src``
    ("link"); another filesystem: a verified copy, then the unlink ("copy"). If ``src`` vanished
    between the two steps, someone moved or deleted it meanwhile: a link of ours that is no longer
    the file's only other name is removed again and MovedMeanwhile is raised (the file stays where
    that person put it); the last name of the file is never removed. ``try_rename=False``: the
    caller tried the rename already.
    """
    if try_rename and rename_noreplace(src, dst):
        return "rename"
    before = os.lstat(src)    # FileNotFoundError: moved away before we started
    how = place_exact(src, dst, tmp, expect_sha256)
    try:
        now = os.lstat(src)
    except FileNotFoundError:
        now = None
    if now is not None and (now.st_dev, now.st_ino) == (before.st_dev, before.st_ino):
        try:
            os.unlink(src)
            return how
        except FileNotFoundError:
            pass
    _moved_meanwhile(src, dst, before, how)
    return how


def _moved_meanwhile(src: Path, dst: Path, before: os.stat_result, how: str) -> None:
    """``src`` is not the file we placed at ``dst`` any more: moved away, deleted or replaced by
    someone else between our link (or copy) and our unlink. Returns when ``dst`` must stay (the
    file's last name, or a copy we cannot prove redundant); raises MovedMeanwhile when ``dst``, our
    own link made a moment ago, was removed again because the file has another name now."""
    if how == "link":
        try:
            st = os.lstat(dst)
        except FileNotFoundError:
            st = None
        ours = st is not None and (st.st_dev, st.st_ino) == (before.st_dev, before.st_ino)
        # names before our link: before.st_nlink; ours added one; a move elsewhere keeps the count,
        # a delete lowers it. More names than before our link: the file lives on elsewhere.
        if ours and st.st_nlink > before.st_nlink:
            os.unlink(dst)
            fsync_dir(dst.parent)
            raise MovedMeanwhile(errno.ENOENT, f"{src} was moved away outside facesortd while it was "
                                 "being moved; it stays where it was put", str(src))
    log.warning("%s vanished while it was being moved to %s (moved or deleted outside facesortd); "
                "the file is kept at %s", src, dst, dst)


_AT_FDCWD = -100
_RENAME_NOREPLACE = 1
_renameat2: Optional[Callable[..., int]] = None
_renameat2_looked = False


def _libc_renameat2() -> Optional[Callable[..., int]]:
    global _renameat2, _renameat2_looked
    if not _renameat2_looked:
        _renameat2_looked = True
        try:
            fn = ctypes.CDLL(None, use_errno=True).renameat2
        except (OSError, AttributeError):   # not glibc 2.28+ (or not Linux)
            fn = None
        if fn is not None:
            fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
            fn.restype = ctypes.c_int
        _renameat2 = fn
    return _renameat2


def rename_noreplace(src: Path, dst: Path) -> bool:
    """Atomically rename ``src`` to ``dst`` unless ``dst`` exists (FileExistsError) or ``src``
    does not (FileNotFoundError). False where this cannot be done in one step: no renameat2 in
    the C library or kernel, a filesystem without RENAME_NOREPLACE, or two filesystems."""
    fn = _libc_renameat2()
    if fn is None:
        return False
    if fn(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), _RENAME_NOREPLACE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EXDEV, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM):
        return False
    if err == errno.EEXIST:
        raise FileExistsError(errno.EEXIST, os.strerror(err), str(dst))
    raise OSError(err, os.strerror(err), str(src))


def copy_exact(src: Path, dst: Path, tmp: Path, expect_sha256: str | None = None) -> None:
    """Copy ``src`` to the absent path ``dst`` through ``tmp`` (copy, fsync, verify, rename).

    ``dst`` never holds a partial file; a crash leaves at most ``tmp``, which the journal removes.
    With ``expect_sha256`` a source that changed since it was hashed is refused (OSError).
    """
    copy_verified(src, tmp)
    try:
        if expect_sha256 is not None and sha256_of(tmp) != expect_sha256:
            raise OSError(errno.EIO, f"{src} changed since it was recorded; not copied")
        rename_no_replace(tmp, dst)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    fsync_dir(dst.parent)


def rename_no_replace(src: Path, dst: Path) -> None:
    """Rename within one filesystem, never replacing ``dst`` (link + unlink; plain rename after an
    existence check where the filesystem has no hard links)."""
    try:
        os.link(src, dst, follow_symlinks=False)
    except OSError as exc:
        if exc.errno == errno.EEXIST:
            raise FileExistsError(dst) from exc
        if exc.errno not in _LINK_UNSUPPORTED:
            raise
        if os.path.lexists(dst):
            raise FileExistsError(dst) from None
        os.rename(src, dst)  # no hard links here: the check above is the best this filesystem offers
        return
    os.unlink(src)


def sha256_and_size(path: Path) -> tuple[str, int]:
    """(hex sha256, byte count) of a file's bytes, read in 1 MiB chunks (OSError as it comes)."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    return sha256_and_size(path)[0]


def prune_empty(folder: Path, top: Path) -> None:
    """Remove ``folder`` and its parents while they are empty, up to (not including) ``top``: the
    folders a move or retire left empty (an old person's folder after a rename). A folder with
    anything in it stays."""
    while folder != top and top in folder.parents:
        try:
            folder.rmdir()
        except OSError:
            return
        folder = folder.parent


def fsync_dir(path: Path) -> None:
    """Make a folder's new entries durable (best effort: some filesystems refuse)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
