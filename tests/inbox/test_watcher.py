"""The watcher with real files and real watchdog observers: what gets submitted, when, and once."""

from __future__ import annotations

import errno
import logging
import os
import threading
import time
from pathlib import Path
from typing import Callable, Optional

import pytest

from facesortd.config import InboxConfig, WatchConfig
from facesortd.inbox import watcher as watcher_mod
from facesortd.inbox.jobs import Job
from facesortd.inbox.watcher import Watcher

SETTLE_MS = 250
SETTLE_S = SETTLE_MS / 1000


class Intake:
    """Stands in for the pipeline's submit(): records jobs, or refuses them while ``full``."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.jobs: list[tuple[float, Job]] = []
        self.refused = 0
        self.full = False

    def __call__(self, job: Job) -> bool:
        with self.lock:
            if self.full:
                self.refused += 1
                return False
            self.jobs.append((time.monotonic(), job))
            return True

    def names(self) -> list[str]:
        with self.lock:
            return sorted(j.path.name for _, j in self.jobs)

    def job(self, name: str) -> Job:
        with self.lock:
            found = [j for _, j in self.jobs if j.path.name == name]
        assert len(found) == 1, f"{name} submitted {len(found)} times"
        return found[0]


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def quiet_for(intake: Intake, seconds: float = SETTLE_S * 3) -> list[str]:
    """What was submitted after waiting long enough for anything pending to have settled."""
    time.sleep(seconds)
    return intake.names()


def write(path: Path, data: bytes = b"\xff\xd8jpeg") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@pytest.fixture
def make_watcher(tmp_path):
    """Build (and always stop) a watcher over given inboxes with a short settle time."""
    made: list[Watcher] = []

    def make(*inboxes: Path, recursive: bool = True, exclude=(), intake: Optional[Intake] = None,
             start: bool = True, **watch) -> tuple[Watcher, Intake]:
        intake = intake or Intake()
        watch.setdefault("settle_ms", SETTLE_MS)
        watch.setdefault("rescan_interval_s", 0)
        w = Watcher([InboxConfig(path=p, recursive=recursive) for p in inboxes], WatchConfig(**watch),
                    intake, exclude=exclude)
        made.append(w)
        if start:
            w.start()
            assert w.wait_idle(10), "catch-up scan did not finish"
        return w, intake

    yield make
    for w in made:
        w.stop()


def test_slow_writer_is_taken_once_with_its_final_size(tmp_path, make_watcher):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    w, intake = make_watcher(inbox)
    target = inbox / "big.jpg"
    with open(target, "wb") as f:
        for _ in range(10):  # ~1 s of writing, pauses well under settle_ms
            f.write(b"x" * 1000)
            f.flush()
            last_write = time.monotonic()
            time.sleep(0.1)
            assert intake.names() == [], "taken while still growing"
    assert wait_for(lambda: intake.names() == ["big.jpg"])
    assert quiet_for(intake) == ["big.jpg"]
    job = intake.job("big.jpg")
    assert job.size == 10_000 and job.size == target.stat().st_size
    assert job.mtime_ns == target.stat().st_mtime_ns
    assert job.inbox == inbox and job.mode == "detect"
    with intake.lock:
        taken_at = intake.jobs[0][0]
    assert taken_at - last_write >= SETTLE_S * 0.9
    assert w.pending_count() == 0 and w.wait_idle(5)


def test_temp_names_dotfiles_and_other_extensions_are_ignored(tmp_path, make_watcher):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    w, intake = make_watcher(inbox, other_files="leave")
    for name in ("a.part", "b.jpg.tmp", "c.crdownload", ".hidden.jpg", "notes.txt", "movie.mp4",
                 ".sync/inside.jpg", "sub/.cache/deep.png"):
        write(inbox / name)
    write(inbox / "UPPER.JPG")
    write(inbox / "sub" / "ok.png")
    part = write(inbox / "upload.jpg.part", b"half")
    os.rename(part, inbox / "upload.jpg")  # the usual "write then rename" of uploaders
    assert wait_for(lambda: intake.names() == ["UPPER.JPG", "ok.png", "upload.jpg"])
    assert quiet_for(intake) == ["UPPER.JPG", "ok.png", "upload.jpg"]
    assert intake.job("upload.jpg").size == 4


def test_files_present_before_start_are_caught_up(tmp_path, make_watcher):
    inbox = tmp_path / "inbox"
    old = [write(inbox / f"old{i}.jpg") for i in range(50)] + [write(inbox / "a" / "b" / "nested.webp")]
    long_ago = time.time() - 3600
    for p in old:
        os.utime(p, (long_ago, long_ago))
    started = time.monotonic()
    w, intake = make_watcher(inbox)  # returns after wait_idle
    assert sorted(intake.names()) == sorted(p.name for p in old)
    with intake.lock:
        first = min(t for t, _ in intake.jobs)
        last = max(t for t, _ in intake.jobs)
    # Old files still get one confirming look settle_ms later, but one wait for all, not one each.
    assert first - started >= SETTLE_S * 0.9
    assert last - started < SETTLE_S + 2.0


def test_not_recursive_takes_only_the_top_folder(tmp_path, make_watcher):
    inbox = tmp_path / "inbox"
    write(inbox / "sub" / "before.jpg")
    write(inbox / "top_before.jpg")
    w, intake = make_watcher(inbox, recursive=False)
    write(inbox / "sub" / "after.jpg")
    write(inbox / "top_after.jpg")
    assert wait_for(lambda: intake.names() == ["top_after.jpg", "top_before.jpg"])
    w.rescan()
    assert quiet_for(intake) == ["top_after.jpg", "top_before.jpg"]


def test_polling_mode(tmp_path, make_watcher):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    w, intake = make_watcher(inbox, polling=True)
    write(inbox / "sub" / "polled.jpg")
    assert wait_for(lambda: intake.names() == ["polled.jpg"])


def test_full_queue_delays_files_but_never_loses_them(tmp_path, make_watcher):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    intake = Intake()
    intake.full = True
    w, _ = make_watcher(inbox, intake=intake)
    for i in range(3):
        write(inbox / f"p{i}.jpg")
    assert wait_for(lambda: intake.refused >= 3)  # settled, offered, refused; offered again
    assert w.pending_count() == 3 and not w.wait_idle(0.2)
    with intake.lock:
        intake.full = False
    assert wait_for(lambda: intake.names() == ["p0.jpg", "p1.jpg", "p2.jpg"])
    assert w.wait_idle(5) and w.pending_count() == 0
    assert quiet_for(intake) == ["p0.jpg", "p1.jpg", "p2.jpg"]


@pytest.mark.parametrize("trigger", ["rescan", "interval", "overflow"])
def test_a_missed_event_is_caught_by_a_rescan(tmp_path, make_watcher, monkeypatch, trigger):
    monkeypatch.setattr(Watcher, "_on_event", lambda self, event: None)  # every event is lost
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    w, intake = make_watcher(inbox, rescan_interval_s=1.0 if trigger == "interval" else 0)
    write(inbox / "missed.jpg")
    if trigger == "rescan":
        assert quiet_for(intake) == [], "events were supposed to be lost"
        w.rescan()
    elif trigger == "overflow":
        assert quiet_for(intake) == [], "events were supposed to be lost"
        logging.getLogger("watchdog.observers.inotify_c").warning(
            "Inotify queue overflowed; filesystem events were lost")
    assert wait_for(lambda: intake.names() == ["missed.jpg"])


def test_unchanged_file_is_not_resubmitted_unless_forgotten_or_changed(tmp_path, make_watcher):
    inbox = tmp_path / "inbox"
    photo = write(inbox / "p.jpg")
    w, intake = make_watcher(inbox)
    assert intake.names() == ["p.jpg"]
    w.rescan()
    assert w.wait_idle(5) and quiet_for(intake) == ["p.jpg"]
    w.forget(photo)  # e.g. the pipeline failed it, and it is still there
    w.rescan()
    assert wait_for(lambda: intake.names() == ["p.jpg", "p.jpg"])
    photo.write_bytes(b"new content")
    assert wait_for(lambda: intake.names() == ["p.jpg"] * 3)
    with intake.lock:
        assert intake.jobs[-1][1].size == len(b"new content")


def test_set_inboxes_watches_added_and_drops_removed_folders(tmp_path, make_watcher):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    write(b / "was_in_b.jpg")
    w, intake = make_watcher(a)
    w.set_inboxes([InboxConfig(path=a), InboxConfig(path=b, mode="aligned")])
    assert wait_for(lambda: intake.names() == ["was_in_b.jpg"])
    write(b / "new_in_b.jpg")
    assert wait_for(lambda: intake.names() == ["new_in_b.jpg", "was_in_b.jpg"])
    job = intake.job("new_in_b.jpg")
    assert job.inbox == b and job.mode == "aligned"
    w.set_inboxes([InboxConfig(path=b)])
    assert w.wait_idle(5)
    write(a / "in_removed_a.jpg")
    w.rescan()
    assert quiet_for(intake) == ["new_in_b.jpg", "was_in_b.jpg"]


def test_excluded_folder_inside_an_inbox_is_never_submitted(tmp_path, make_watcher):
    inbox = tmp_path / "inbox"
    library = inbox / "library"
    write(library / "Person_0001" / "sorted.jpg")
    w, intake = make_watcher(inbox, exclude=[library])
    write(library / "Person_0002" / "placed.jpg")
    write(inbox / "fresh.jpg")
    assert wait_for(lambda: intake.names() == ["fresh.jpg"])
    w.rescan()
    assert quiet_for(intake) == ["fresh.jpg"]


def test_symlinks_and_special_files_are_not_taken(tmp_path, make_watcher):
    inbox, elsewhere = tmp_path / "inbox", tmp_path / "elsewhere"
    write(elsewhere / "outside.jpg")
    inbox.mkdir()
    (inbox / "link.jpg").symlink_to(elsewhere / "outside.jpg")
    (inbox / "linked_dir").symlink_to(elsewhere, target_is_directory=True)
    os.mkfifo(inbox / "fifo.jpg")
    (inbox / "folder.jpg").mkdir()
    write(inbox / "real.jpg")
    w, intake = make_watcher(inbox)
    assert intake.names() == ["real.jpg"]
    (inbox / "link2.jpg").symlink_to(elsewhere / "outside.jpg")
    assert quiet_for(intake) == ["real.jpg"]


def test_missing_inbox_is_watched_once_it_appears(tmp_path, make_watcher, monkeypatch, caplog):
    monkeypatch.setattr(watcher_mod, "MISSING_RETRY_S", 0.3)
    inbox = tmp_path / "later"
    with caplog.at_level(logging.WARNING, logger="facesortd.watcher"):
        w, intake = make_watcher(inbox)
    assert "not there" in caplog.text
    write(inbox / "first.jpg")
    assert wait_for(lambda: intake.names() == ["first.jpg"])
    write(inbox / "live.jpg")  # now through the observer
    assert wait_for(lambda: intake.names() == ["first.jpg", "live.jpg"])
    # Deleted and made again while running: watched again, not a dead watch on the old folder.
    for p in inbox.iterdir():
        p.unlink()
    inbox.rmdir()
    assert wait_for(lambda: w.wait_idle(0.1))
    write(inbox / "again.jpg")
    assert wait_for(lambda: "again.jpg" in intake.names())


def test_threads_are_named_and_stop_is_idempotent(tmp_path, make_watcher):
    never_started, _ = make_watcher(tmp_path, start=False)
    never_started.stop()
    assert not never_started.wait_idle(0.1)
    before = set(threading.enumerate())
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    w, _ = make_watcher(inbox)
    ours = [t for t in threading.enumerate() if t not in before]
    assert ours and all(t.name.startswith("facesortd-watch") for t in ours), [t.name for t in ours]
    w.stop()
    w.stop()
    assert not any(t.is_alive() for t in ours)


def test_inotify_watch_limit_falls_back_to_polling(tmp_path, make_watcher, monkeypatch, caplog):
    class NoWatchesLeft(watcher_mod.Observer):  # what a full fs.inotify.max_user_watches looks like
        def schedule(self, *args, **kwargs):
            raise OSError(errno.ENOSPC, "inotify watch limit reached")

    monkeypatch.setattr(watcher_mod, "Observer", NoWatchesLeft)
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    with caplog.at_level(logging.WARNING, logger="facesortd.watcher"):
        w, intake = make_watcher(inbox)
    assert "polling it instead" in caplog.text
    write(inbox / "still_seen.jpg")
    assert wait_for(lambda: intake.names() == ["still_seen.jpg"])


def test_photos_companions_lone_raws_and_other_files(tmp_path, make_watcher, monkeypatch, caplog):
    """A companion with its photo beside it is no job (it travels with the photo); a RAW alone
    is a photo job once it waited for its twin; a sidecar alone is 'loose' (it may follow a photo
    placed already); anything else is an 'other' job, or with other_files: leave is logged once."""
    monkeypatch.setattr(watcher_mod, "ORPHAN_WAIT_S", 0.5)
    inbox = tmp_path / "inbox"
    for name in ("IMG_1.JPG", "IMG_1.CR3", "IMG_1.xmp", "IMG_1.JPG.json", "IMG_2.HEIC", "IMG_2.MOV",
                 "IMG_3.NEF", "IMG_4.xmp", "notes.pdf", "clip.mp4",
                 "IMG_5.HEIC.part", "IMG_5.MOV"):   # a photo still uploading: its MOV waits
        write(inbox / name)
    w, intake = make_watcher(inbox)
    assert wait_for(lambda: len(intake.names()) == 11)
    kinds = {name: intake.job(name).kind for name in quiet_for(intake)}
    assert kinds == {"IMG_1.JPG": "photo", "IMG_1.CR3": "companion", "IMG_1.xmp": "companion",
                     "IMG_1.JPG.json": "companion", "IMG_2.HEIC": "photo", "IMG_2.MOV": "companion",
                     "IMG_3.NEF": "photo", "IMG_4.xmp": "loose", "notes.pdf": "other",
                     "clip.mp4": "other", "IMG_5.MOV": "companion"}
    with intake.lock:
        at = {j.path.name: t for t, j in intake.jobs}
    assert at["IMG_3.NEF"] - at["IMG_1.JPG"] >= 0.4   # it waited for a twin
    # the photo leaves (placed without the XMP, which was still being written): the XMP is
    # looked at again, alone now, and offered as loose
    with intake.lock:
        intake.jobs.clear()
    os.unlink(inbox / "IMG_1.JPG")
    assert wait_for(lambda: "IMG_1.xmp" in intake.names())
    assert intake.job("IMG_1.xmp").kind == "loose"

    left = tmp_path / "left"
    write(left / "notes.pdf")
    with caplog.at_level(logging.INFO, logger="facesortd.watcher"):
        w2, intake2 = make_watcher(left, other_files="leave")
        assert quiet_for(intake2) == []
    assert sum("left in the inbox" in r.getMessage() for r in caplog.records) == 1
