"""XMP sidecars (``placement.xmp_sidecars``): the people in each placed photo as face tags that
other photo tools read, in a file beside the photo; the photo itself is never written.

A sidecar holds Metadata Working Group face regions (``mwg-rs:Regions``: one ``Face`` region per
named person with a normalised, centre-based ``stArea`` box and ``AppliedToDimensions`` in pixels)
and the names as keywords (``dc:subject`` and ``lr:hierarchicalSubject`` ``People|Name``). Only
named people are written: ``Person_0003`` is a folder name of ours that changes with clustering and
would become a stray person in every tool that imports it. The XMP is made by exiv2 (pyexiv2) in
memory, never by hand.

A sidecar is a placement row of its photo's group: kind ``companion`` (so the placer moves it with
the photo on every follow, renames it with rename_new, retires it on undo and replays it like any
companion) with the action ``xmp:<digest>``, which tells ours from a user's own companion (whose
action is the placement's: move, copy...) and holds the digest of what it was made from (the
photo's bytes, the named boxes). ``Sidecars.sync`` runs at the end of each placer sync: it hashes
each placed photo's inputs and renders only the sidecars whose digest changed; a sidecar the
journal has not placed yet is written to a hidden temporary name, synced, and moved into place by
the journal; a changed one is replaced atomically (temporary name, fsync, rename). A name held by
a file that is not ours is never written (logged once). A sidecar of ours that something else
edited (its recorded mtime and hash no longer match) becomes the user's: from then on a plain
companion (action ``move``), moved with its photo and put back with it by undo, never rewritten.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

from facesortd import fsops
from facesortd.config import Config
from facesortd.formats import FORMATS
from facesortd.library.journal import Journal, Op, content_id
from facesortd.store.database import Store, encode_path
from facesortd.store.identity_rows import live_map

log = logging.getLogger("facesortd.xmp")

KIND = "companion"   # a placement of the photo's group (placer.py moves, renames and undoes it)
PREFIX = "xmp:"      # placements.action of our sidecars: xmp:<digest of their inputs>
FORMAT = "1"         # part of the digest: bump when the same inputs are to be written otherwise

# an empty XMP packet: exiv2 recognises XMP data by its packet header
_EMPTY = (b'<?xpacket begin="\xef\xbb\xbf" id="W5M0MpCehiHzreSzNTczkc9d"?>'
          b'<x:xmpmeta xmlns:x="adobe:ns:meta/"></x:xmpmeta><?xpacket end="w"?>')
_REGIONS = "Xmp.mwg-rs.Regions/mwg-rs:"


@dataclass(frozen=True)
class Region:
    """One named face: the person's name and the box in upright pixels (x1, y1, x2, y2)."""

    name: str
    box: tuple[float, float, float, float]


@dataclass(frozen=True)
class _Ours:
    image_id: int
    path: str      # text, not Path: a sync looks at every photo and pathlib costs more than os.path
    digest: str
    sha256: Optional[str]
    mtime_ns: Optional[int]


def sidecar_name(pattern: str, photo_name: str) -> str:
    """The sidecar's name for the photo placed as ``photo_name`` (``IMG_1_1.JPG`` with
    ``{name}{ext}.xmp``: ``IMG_1_1.JPG.xmp``)."""
    name, ext = os.path.splitext(photo_name)
    return pattern.format(name=name, ext=ext)


def digest(sha256: Optional[str], regions: list[Region]) -> str:
    """What a sidecar is made of, hashed: the photo's bytes (its size) and the named boxes."""
    text = repr((FORMAT, sha256, [(r.name, r.box) for r in regions]))   # floats: repr is exact
    return hashlib.blake2b(text.encode("utf-8"), digest_size=12).hexdigest()


def render(regions: list[Region], size: tuple[int, int]) -> bytes:
    """The sidecar's bytes: MWG face regions and person keywords, made by exiv2."""
    import pyexiv2

    width, height = size
    data: dict[str, object] = {
        _REGIONS + "AppliedToDimensions": 'type="Struct"',
        _REGIONS + "AppliedToDimensions/stDim:w": str(width),
        _REGIONS + "AppliedToDimensions/stDim:h": str(height),
        _REGIONS + "AppliedToDimensions/stDim:unit": "pixel",
        _REGIONS + "RegionList": 'type="Bag"',
    }
    for n, region in enumerate(regions, 1):
        x1, y1, x2, y2 = (_clamp(v, limit) for v, limit in
                          zip(region.box, (width, height, width, height)))
        item = f"{_REGIONS}RegionList[{n}]"
        data[item] = 'type="Struct"'
        data[item + "/mwg-rs:Name"] = region.name
        data[item + "/mwg-rs:Type"] = "Face"
        data[item + "/mwg-rs:Area"] = 'type="Struct"'
        # MWG: x, y is the centre of the box; all four are fractions of AppliedToDimensions
        data[item + "/mwg-rs:Area/stArea:x"] = _fraction((x1 + x2) / 2, width)
        data[item + "/mwg-rs:Area/stArea:y"] = _fraction((y1 + y2) / 2, height)
        data[item + "/mwg-rs:Area/stArea:w"] = _fraction(x2 - x1, width)
        data[item + "/mwg-rs:Area/stArea:h"] = _fraction(y2 - y1, height)
        data[item + "/mwg-rs:Area/stArea:unit"] = "normalized"
    names = sorted(set(r.name for r in regions))
    data["Xmp.dc.subject"] = 'type="Bag"'
    data["Xmp.lr.hierarchicalSubject"] = 'type="Bag"'
    for n, name in enumerate(names, 1):
        data[f"Xmp.dc.subject[{n}]"] = name
        data[f"Xmp.lr.hierarchicalSubject[{n}]"] = "People|" + name.replace("|", "/")
    with pyexiv2.ImageData(_EMPTY) as xmp:
        xmp.modify_xmp(data)
        return xmp.get_bytes()


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) of the photo as displayed (EXIF orientation applied), the frame its face
    boxes are in; read from the header (Pillow, else exiv2 for what Pillow cannot open, RAW)."""
    try:
        from PIL import Image

        with Image.open(path, formats=FORMATS) as im:
            width, height = im.size
            orientation = im.getexif().get(0x0112)
    except Exception:  # not a format Pillow opens: exiv2 reads the header only
        import pyexiv2

        with pyexiv2.ImageData(Path(path).read_bytes()) as img:
            width, height = img.get_pixel_width(), img.get_pixel_height()
            orientation = img.read_exif().get("Exif.Image.Orientation")
    if str(orientation) in ("5", "6", "7", "8"):
        width, height = height, width
    return int(width), int(height)


def _clamp(value: float, limit: int) -> float:
    return min(max(float(value), 0.0), float(limit))


def _fraction(value: float, whole: int) -> str:
    return f"{value / whole:.6f}" if whole else "0"


class Sidecars:
    """Keeps one XMP sidecar beside each placed photo that has named people in it (``sync``)."""

    def __init__(self, store: Store, journal: Journal):
        self.config: Optional[Config] = None   # the placer's, given to each sync (reloads)
        self.store = store
        self.journal = journal
        self._told: set[str] = set()     # names held by others, each logged once
        self._off_checked = False          # with sidecars off: ours retired once per start

    def sync(self, config: Config, dry_run: bool = False) -> dict[str, int]:
        """Write, rewrite, rename or retire sidecars so that each says what the store says now
        (``config``: the placer's, as reloaded). Returns counts (written, rewritten, renamed,
        retired, released, skipped); a dry run counts what it would do and logs it."""
        self.config = config
        counts = dict.fromkeys(("written", "rewritten", "renamed", "retired", "released",
                                "skipped"), 0)
        pc = self.config.placement
        if not pc.xmp_sidecars:
            if not self._off_checked:
                self._off_checked = not dry_run
                for ours in self._ours().values():   # turned off: ours go (a user's stay)
                    self._retire(ours, counts, dry_run)
            return counts
        self._off_checked = False
        mains, regions, shas = self._load()
        ours = self._ours()
        for image_id in sorted(set(regions) | set(ours)):   # a photo with neither: nothing to do
            try:
                self._one(image_id, mains.get(image_id), regions.get(image_id, []),
                          shas.get(image_id), ours.get(image_id), counts, dry_run)
            except (OSError, RuntimeError) as exc:   # one photo's trouble never stops the others
                log.error("XMP sidecar of image %d: %s", image_id, exc)
        changed = {k: v for k, v in counts.items() if v}
        if changed:
            log.info("%sXMP sidecars: %s", "dry run: " if dry_run else "",
                     ", ".join(f"{v} {k}" for k, v in changed.items()))
        return counts

    # -- one photo -----------------------------------------------------------------------------
    def _one(self, image_id: int, main: Optional[str], regions: list[Region],
             sha: Optional[str], ours: Optional[_Ours], counts: dict[str, int],
             dry_run: bool) -> None:
        try:
            st = os.lstat(ours.path) if ours is not None else None
        except FileNotFoundError:
            st = None
            if not dry_run:   # deleted by hand: written again below if it is still wanted
                self._drop(ours)
            ours = None
        if main is None or not regions:   # not placed (any more), or no named person in it
            if ours is not None:
                self._retire(ours, counts, dry_run)
            return
        folder, photo = os.path.split(main)
        want = os.path.join(folder, sidecar_name(self.config.placement.xmp_sidecar_name, photo))
        wanted = digest(sha, regions)
        if ours is None:
            if os.path.lexists(want):
                self._skip(want, counts)
                return
            if dry_run or self._write_new(image_id, main, want, regions, wanted, counts):
                counts["written"] += 1
            return
        if not self._still_ours(ours, st, main, regions, wanted, counts, dry_run):
            return
        if ours.path != want:   # the pattern changed, or a rename_new name: the wanted name if free
            if os.path.lexists(want):
                self._skip(want, counts)
            else:
                if not dry_run:
                    self.journal.execute(Op("move", Path(ours.path), Path(want), image_id, KIND,
                                            ours.sha256, "sidecar", PREFIX + ours.digest))
                    ours = _Ours(image_id, want, ours.digest, ours.sha256, ours.mtime_ns)
                counts["renamed"] += 1
        if ours.digest != wanted:
            if not dry_run:
                self._rewrite(ours, main, regions, wanted)
            counts["rewritten"] += 1

    def _still_ours(self, ours: _Ours, st: os.stat_result, main: str, regions: list[Region],
                    wanted: str, counts: dict[str, int], dry_run: bool) -> bool:
        """Is the file the one we wrote? Its mtime says so cheaply; else its hash (a copy to
        another filesystem, or a crash between our rename and our row). One edited by another
        tool is released: the user's companion from now on."""
        if ours.mtime_ns is not None and st.st_mtime_ns == ours.mtime_ns:
            return True
        now = content_id(Path(ours.path))
        if now == ours.sha256:
            if not dry_run:
                self._record(ours.image_id, ours.path, ours.digest, now)
            return True
        if ours.digest != wanted:   # our rename landed, our row did not: the bytes tell
            data = render(regions, image_size(main))
            if hashlib.sha256(data).hexdigest() == now:
                if not dry_run:
                    self._record(ours.image_id, ours.path, wanted, now)
                return True
        counts["released"] += 1
        log.warning("%s was changed by another program; it is yours now: it moves with its photo "
                    "but facesortd no longer writes it", ours.path)
        if not dry_run:
            with self.store.transaction() as conn:
                conn.execute("UPDATE placements SET action = 'move', sha256 = ?, mtime_ns = NULL, "
                             "updated_at = ? WHERE image_id = ? AND path = ? AND kind = ?",
                             (now, time.time(), ours.image_id, encode_path(ours.path), KIND))
        return False

    # -- writing -------------------------------------------------------------------------------
    def _write_new(self, image_id: int, main: str, want: str, regions: list[Region],
                   wanted: str, counts: dict[str, int]) -> bool:
        """A new sidecar: synced under a hidden name of ours, then placed by the journal (a crash
        leaves it planned: replay completes it or rolls it back)."""
        data = render(regions, image_size(main))
        tmp = self._tmp(want, image_id)
        _write_synced(tmp, data)
        sha = hashlib.sha256(data).hexdigest()
        try:
            self.journal.execute(Op("move", tmp, Path(want), image_id, KIND, sha, "sidecar",
                                    PREFIX + wanted))
        except FileExistsError:   # someone's file appeared there meanwhile
            self._skip(want, counts)
            return False
        finally:
            if os.path.lexists(tmp):
                os.unlink(tmp)
        self._record(image_id, want, wanted, sha)
        return True

    def _rewrite(self, ours: _Ours, main: str, regions: list[Region], wanted: str) -> None:
        """Replace our sidecar atomically: new bytes synced under a hidden name, renamed over it,
        the folder synced, then the row (a crash between the two: ``_still_ours`` sees our bytes)."""
        data = render(regions, image_size(main))
        sha = hashlib.sha256(data).hexdigest()
        if sha != ours.sha256:
            tmp = self._tmp(ours.path, ours.image_id)
            _write_synced(tmp, data)
            os.replace(tmp, ours.path)
            fsops.fsync_dir(tmp.parent)
        self._record(ours.image_id, ours.path, wanted, sha)

    @staticmethod
    def _tmp(beside: str, image_id: int) -> Path:
        """Our hidden temporary name (one per photo: a leftover of a crash is ours to remove)."""
        tmp = Path(beside).with_name(f".facesortd-xmp-{image_id}.tmp")
        if os.path.lexists(tmp):
            os.unlink(tmp)
        return tmp

    def _record(self, image_id: int, path: str, wanted: str, sha: str) -> None:
        mtime = os.lstat(path).st_mtime_ns
        with self.store.transaction() as conn:
            conn.execute("UPDATE placements SET action = ?, sha256 = ?, mtime_ns = ?, "
                         "updated_at = ? WHERE image_id = ? AND path = ? AND kind = ?",
                         (PREFIX + wanted, sha, mtime, time.time(), image_id, encode_path(path),
                          KIND))

    def _retire(self, ours: _Ours, counts: dict[str, int], dry_run: bool) -> None:
        counts["retired"] += 1
        if not dry_run:   # the journal checks the recorded hash: one edited by hand stays
            try:
                self.journal.execute(Op("retire", Path(ours.path), None, ours.image_id, KIND,
                                        ours.sha256, "sidecar", PREFIX + ours.digest))
            except OSError as exc:
                log.warning("XMP sidecar %s left as it is: %s", ours.path, exc)
            fsops.prune_empty(Path(ours.path).parent, self.config.library)

    def _drop(self, ours: _Ours) -> None:
        with self.store.transaction() as conn:
            conn.execute("DELETE FROM placements WHERE image_id = ? AND path = ? AND kind = ?",
                         (ours.image_id, encode_path(ours.path), KIND))

    def _skip(self, path: str, counts: dict[str, int]) -> None:
        counts["skipped"] += 1
        if path not in self._told:
            self._told.add(path)
            log.warning("%s is not facesortd's (a file of yours or another program's): no XMP "
                        "sidecar written there", path)

    # -- store reads ---------------------------------------------------------------------------
    def _load(self) -> tuple[dict[int, str], dict[int, list[Region]], dict[int, Optional[str]]]:
        """Each placed photo's main file and its hash, and the named faces (largest first) of
        those with any."""
        with self.store.read() as conn:
            mains, shas = {}, {}
            for image_id, path, sha in conn.execute(
                    "SELECT p.image_id, p.path, i.sha256 FROM placements p "
                    "JOIN images i ON i.id = p.image_id WHERE p.kind = 'main' AND i.status = 'done'"):
                mains[image_id], shas[image_id] = _text(path), sha
            labels = {}   # identity -> the name its faces are written under (merges followed)
            for iid, name in conn.execute("SELECT id, name FROM identities WHERE merged_into IS "
                                          "NULL AND hidden = 0"):
                if name and name.strip():
                    labels[iid] = name.strip()
            labels.update({merged: labels[live] for merged, live in live_map(conn).items()
                           if live in labels})
            regions: dict[int, list[Region]] = defaultdict(list)
            for image_id, x1, y1, x2, y2, identity in conn.execute(
                    "SELECT image_id, box_x1, box_y1, box_x2, box_y2, identity_id FROM faces "
                    "WHERE rejected = 0 AND identity_id IS NOT NULL "
                    "ORDER BY image_id, (box_x2 - box_x1) * (box_y2 - box_y1) DESC, id"):
                name = labels.get(identity)
                if name is not None and image_id in mains:
                    regions[image_id].append(Region(name, (x1, y1, x2, y2)))
        return mains, dict(regions), shas

    def _ours(self) -> dict[int, _Ours]:
        with self.store.read() as conn:
            rows = conn.execute("SELECT image_id, path, action, sha256, mtime_ns FROM placements "
                                "WHERE kind = ? AND action LIKE ? AND image_id IS NOT NULL "
                                "ORDER BY id", (KIND, PREFIX + "%")).fetchall()
        return {r[0]: _Ours(r[0], _text(r[1]), r[2][len(PREFIX):], r[3], r[4])
                for r in rows}


def _text(value: Union[str, bytes]) -> str:
    """A stored path as text (the store keeps an undecodable name as bytes)."""
    return os.fsdecode(value) if isinstance(value, bytes) else value


def _write_synced(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
