"""A person's move racing the placer's own (issue 19, item 4): whoever wins, the file ends where
the person put it, once, and the store agrees; nothing of the placer's is left behind.

The journal moves a file with an atomic ``renameat2(RENAME_NOREPLACE)`` where the filesystem has
one, else with a link and an unlink. The link path has a window (after the link, before the
unlink) that a thread cannot hit on purpose; those tests stop the placer exactly there by wrapping
``os.link`` as fsops calls it (the OS boundary: the real link is made, then the person's real
rename runs, then fsops goes on) on a run where renameat2 is unavailable, as on filesystems
without it. The threaded test races the real thing, many times.
"""

from __future__ import annotations

import os
import random
import threading
import time
from pathlib import Path

import pytest

from facesortd import fsops
from facesortd.library.journal import MOVED_AWAY, Op, content_id


@pytest.fixture
def no_renameat2(monkeypatch):
    """A run on which the atomic no-replace rename is not to be had (network shares, old C
    libraries): fsops moves by link and unlink."""
    monkeypatch.setattr(fsops, "_renameat2_looked", True)
    monkeypatch.setattr(fsops, "_renameat2", None)
    assert not fsops.rename_noreplace(Path("/nonexistent-a"), Path("/nonexistent-b"))


def after_link(monkeypatch, src: Path, then):
    """Run ``then()`` right after fsops' real link of ``src`` (once): the person acts in the window
    between the placer's link and its unlink."""
    real = os.link
    fired = []

    def link(a, b, *args, **kwargs):
        real(a, b, *args, **kwargs)
        if Path(a) == src and not fired:
            fired.append(b)
            then()

    monkeypatch.setattr(fsops.os, "link", link)
    return fired


def _placed(env, who: str = "Alice") -> tuple[int, Path, int]:
    alice, bob = env.fake.new_identity(env.store, who), env.fake.new_identity(env.store, "Bob")
    image = env.add("a.jpg", [alice])
    env.add("b.jpg", [bob])   # Bob has a folder
    env.placer.sync()
    return image, env.main(image), alice


def test_renameat2_is_used_where_the_filesystem_has_it(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_bytes(b"x")
    b.write_bytes(b"y")
    with pytest.raises(FileExistsError):
        fsops.rename_noreplace(a, b)   # never replaces
    assert b.read_bytes() == b"y" and a.read_bytes() == b"x"
    assert fsops.move_exact(a, tmp_path / "c", tmp_path / ".tmp") == "rename"
    assert not a.exists() and (tmp_path / "c").read_bytes() == b"x"
    with pytest.raises(FileNotFoundError):
        fsops.move_exact(a, tmp_path / "d", tmp_path / ".tmp")
    assert not (tmp_path / "d").exists()


def test_person_moves_the_file_before_the_placer_does(env):
    """The source is gone when the journal comes to it: the operation is rolled back as moved
    away, nothing is created, the placement row still names the old path for the scan."""
    image, at, alice = _placed(env)
    person = env.library / "Bob" / "mine.jpg"
    os.rename(at, person)
    (out,) = env.placer.journal.run([[Op("move", at, env.library / "Carol" / "a.jpg", image, "main",
                                         content_id(person), "follow")]])
    assert out.moved_away and not out.taken and isinstance(out.error, FileNotFoundError)
    assert not (env.library / "Carol" / "a.jpg").exists() and person.is_file()
    assert [r[:2] for r in env.journal("rolled_back")] == [("move", "rolled_back")]
    assert MOVED_AWAY in env.journal("rolled_back")[0][2] and not env.journal("failed")
    assert env.main(image) == at


@pytest.mark.parametrize("rename_first", [True, False])
def test_person_moves_the_file_between_link_and_unlink(env, monkeypatch, no_renameat2, rename_first):
    """The link to the new place was made, then the person moved the file: the placer's link is
    the same file under a second name, so it goes again; the file is where the person put it,
    once (``rename_first`` False: the person then moves it on into a new folder of their own).
    """
    image, at, alice = _placed(env)
    dst = env.library / "Carol" / "a.jpg"
    person = env.library / "Bob" / "mine.jpg"
    sha = content_id(at)

    def person_moves():
        os.rename(at, person)
        if not rename_first:   # and on into a folder of their own
            (env.library / "Dora").mkdir()
            os.rename(person, env.library / "Dora" / "mine.jpg")

    fired = after_link(monkeypatch, at, person_moves)
    (out,) = env.placer.journal.run([[Op("move", at, dst, image, "main", sha, "follow")]])
    assert fired == [dst], "the window was not reached"
    assert out.moved_away and isinstance(out.error, fsops.MovedMeanwhile)
    final = person if rename_first else env.library / "Dora" / "mine.jpg"
    assert env.copies()[sha] == [final] and os.stat(final).st_nlink == 1
    assert not dst.exists()
    assert env.main(image) == at   # the row is not moved to dst: the scan finds it at ``final``
    assert not env.journal("failed") and not env.journal("planned")


def test_person_deletes_the_file_between_link_and_unlink(env, monkeypatch, no_renameat2):
    """Deleted in the window: the placer's link is now the file's only name; it stays (facesortd
    never removes the last name of a file) and the move counts as done."""
    image, at, alice = _placed(env)
    dst = env.library / "Carol" / "a.jpg"
    sha = content_id(at)
    after_link(monkeypatch, at, lambda: os.unlink(at))
    (out,) = env.placer.journal.run([[Op("move", at, dst, image, "main", sha, "follow")]])
    assert out.error is None and env.copies()[sha] == [dst]
    assert env.main(image) == dst


def test_hardlinked_elsewhere_is_not_mistaken_for_a_move(env, monkeypatch, no_renameat2):
    """A file that already had another name before the move (a hard-link backup, an album):
    deleting the source in the window must not make the placer remove its link (the other name
    was there before; the count of names tells)."""
    image, at, alice = _placed(env)
    backup = env.inbox.parent / "backup.jpg"
    os.link(at, backup)
    dst = env.library / "Carol" / "a.jpg"
    after_link(monkeypatch, at, lambda: os.unlink(at))
    (out,) = env.placer.journal.run([[Op("move", at, dst, image, "main", content_id(at), "follow")]])
    assert out.error is None and dst.is_file() and os.path.samefile(dst, backup)


def test_replay_tells_an_outside_move_from_its_own(env):
    """A move planned when the process died; before the restart the person moved the file: the
    replay neither completes nor fails it (rolled back as moved away), touches nothing, and the
    file stays where the person put it."""
    image, at, alice = _placed(env)
    dst = env.library / "Carol" / "a.jpg"
    (planned,) = env.placer.journal._plan([Op("move", at, dst, image, "main", content_id(at),
                                              "follow")])
    person = env.library / "Bob" / "mine.jpg"
    os.rename(at, person)
    assert env.placer.replay()["rolled_back"] == 1
    assert person.is_file() and not dst.exists()
    (row,) = env.journal("rolled_back")
    assert MOVED_AWAY in row[2] and not env.journal("failed")


def test_replay_leaves_a_file_put_at_the_source_by_someone_else(env):
    """Killed after the rename (the move is complete) and before 'done' was written; then the
    person put another file at the old path: the replay completes the move and leaves their file."""
    image, at, alice = _placed(env)
    dst = env.library / "Carol" / "a.jpg"
    sha = content_id(at)
    (planned,) = env.placer.journal._plan([Op("move", at, dst, image, "main", sha, "follow")])
    dst.parent.mkdir()
    os.rename(at, dst)
    at.write_bytes(b"the person's own file")
    assert env.placer.replay()["completed"] == 1
    assert at.read_bytes() == b"the person's own file" and content_id(dst) == sha
    assert env.main(image) == dst


def _face_identity(store, image_id: int) -> int:
    with store.read() as conn:
        return conn.execute("SELECT identity_id FROM faces WHERE image_id = ? AND rejected = 0 "
                            "ORDER BY (box_x2-box_x1)*(box_y2-box_y1) DESC", (image_id,)).fetchone()[0]


def test_a_move_racing_a_placement_ends_where_the_person_put_it(env):
    """50 times: the placer moves a photo (its person was renamed) on a thread while the person
    drags the same photo into Bob's folder. Whoever wins, afterwards the photo is in Bob's folder
    exactly once (if the placer won, the person's move found nothing and they moved it from its new
    place, as a person would), and after the next scan the store agrees: the row names that path,
    the face is Bob's, and another sync moves nothing."""
    rng = random.Random(19)
    bob = env.fake.new_identity(env.store, "Bob")
    people = [env.fake.new_identity(env.store, f"P{i}") for i in range(50)]
    images = [env.add(f"photo{i}.jpg", [p]) for i, p in enumerate(people)]
    env.add("bob.jpg", [bob])
    env.placer.sync(scan=True)
    wins = {"person": 0, "placer": 0}
    spent = 0.005   # how long a sync takes here, as measured
    for i, (image, person) in enumerate(zip(images, people)):
        at = env.main(image)
        sha = content_id(at)
        with env.store.transaction() as conn:
            conn.execute("UPDATE identities SET name = ? WHERE id = ?", (f"Renamed{i}", person))
        errors, took = [], []
        thread = threading.Thread(target=_try, args=(env.placer.sync, errors, took))
        thread.start()
        time.sleep(rng.uniform(0, 3 * spent))   # anywhere in (and around) the sync's time
        want = env.library / "Bob" / f"photo{i}.jpg"   # dragged: the name stays
        try:
            os.rename(at, want)
            wins["person"] += 1
        except FileNotFoundError:   # the placer's rename came first: the person finds it there
            thread.join()
            os.rename(env.library / f"Renamed{i}" / f"photo{i}.jpg", want)
            wins["placer"] += 1
        thread.join()
        assert not errors
        spent = min(spent, took[0]) if i else took[0]
        env.placer.sync(scan=True)
        assert env.copies()[sha] == [want]
        assert env.main(image) == want and _face_identity(env.store, image) == bob
    assert env.placer.sync(scan=True) == []
    assert len(env.copies()) == 51 and all(len(paths) == 1 for paths in env.copies().values())
    assert not env.journal("failed") and not env.journal("planned")
    assert wins["person"] and wins["placer"], wins   # both sides of the race were run


def _try(fn, errors: list, took: list) -> None:
    start = time.perf_counter()
    try:
        fn()
    except Exception as exc:   # reported to the test's thread
        errors.append(exc)
    finally:
        took.append(time.perf_counter() - start)


def test_a_photo_moved_during_a_full_scan_is_not_taken_for_deleted(env, monkeypatch):
    """The person drags a photo while a full scan walks the library: from the folder the walk
    reaches last into one it has listed already (stopped there at the OS boundary: the scan's
    os.scandir of that folder). The photo was moved, not deleted: it must not be marked removed
    (found by test_crash's outside moves; scan.py walks again before taking anything for deleted)."""
    image, at, alice = _placed(env)
    bob_folder = env.library / "Bob"
    real, walked = os.scandir, []

    def scandir(path="."):
        folder = Path(os.fsdecode(path))
        if folder == at.parent and bob_folder in walked and at.exists():
            os.rename(at, bob_folder / at.name)   # Bob's folder was listed already
        walked.append(folder)
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    # Bob's folder first: the walk is a stack, so it is listed before Alice's when pushed after
    env.placer.sync(scan=True)
    monkeypatch.setattr(os, "scandir", real)
    assert walked.index(bob_folder) < walked.index(at.parent), walked
    with env.store.read() as conn:
        removed = conn.execute("SELECT removed_at FROM images WHERE id = ?", (image,)).fetchone()[0]
    assert removed is None, "a photo moved during the scan was taken for deleted"


def test_a_photo_moved_onto_a_path_another_placed_photo_left(env):
    """Two placed photos with one name in two people's folders (IMG_1.jpg in Alice/ and Bob/).
    The person drags Bob's away into Carol's folder, then Alice's into Bob's folder, where it
    takes the very path Bob's row still names. A path that exists is not proof that it holds the
    row's file: after the scan Alice's photo is Bob's, Bob's photo is Carol's, nothing removed."""
    alice, bob, carol = (env.fake.new_identity(env.store, n) for n in ("Alice", "Bob", "Carol"))
    for who in (alice, bob, carol):
        env.add(f"{who}.jpg", [who])   # everyone keeps a folder
    (env.inbox / "a").mkdir()
    (env.inbox / "b").mkdir()
    (env.inbox / "a" / "IMG_1.jpg").write_bytes(b"alice's photo" * 20)
    (env.inbox / "b" / "IMG_1.jpg").write_bytes(b"bob's photo" * 21)
    a = env.fake.fabricate(env.store, env.inbox / "a" / "IMG_1.jpg", env.inbox, [alice])
    b = env.fake.fabricate(env.store, env.inbox / "b" / "IMG_1.jpg", env.inbox, [bob])
    env.placer.sync()
    a_at, b_at = env.main(a), env.main(b)
    assert (a_at.parent.name, b_at.parent.name, a_at.name, b_at.name) == \
        ("Alice", "Bob", "IMG_1.jpg", "IMG_1.jpg")
    os.rename(b_at, env.library / "Carol" / "IMG_1.jpg")
    os.rename(a_at, b_at)
    env.placer.sync(scan=True)
    with env.store.read() as conn:
        removed = conn.execute("SELECT COUNT(*) FROM images WHERE removed_at IS NOT NULL").fetchone()[0]
    assert removed == 0
    assert _face_identity(env.store, a) == bob and _face_identity(env.store, b) == carol
    assert env.main(a) == b_at and env.main(b) == env.library / "Carol" / "IMG_1.jpg"
