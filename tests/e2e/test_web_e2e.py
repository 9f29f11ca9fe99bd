"""The review page end to end in real headless Chromium (Playwright over Debian's ``chromium``).

The real daemon (``facesortd run``: MTCNN + dlib, action move, web page on a free port) sorts real
photos; then a person, in the browser, renames someone, moves one face to another person (picked
by name from the list), splits a shift-click range of faces off as a new person, merges two people,
and selects all and clears. After each action the test waits for the page to reload and for the
placer, and checks the files on disk: every photo in the folder it now belongs in (the new name,
the new person, the merge target), emptied folders gone, and every input photo still in the
library exactly once, unchanged. Any console error (a CSP
violation is one) or uncaught page error fails the test.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import sqlite3
import time
from collections import Counter
from pathlib import Path
from typing import Callable

import pytest

pytest.importorskip("dlib", reason="the dlib extra is installed by `make test`")

PEOPLE = ("Allyson_Felix", "Antonio_Palocci", "Fujio_Cho", "JK_Rowling", "Paul_McCartney")
PER_PERSON = 4
NEW_NAME = "Ada Example"
WAIT_S = 30.0
NO_FACE = "nonface__dog.jpg"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def make_root(root: Path, data_dir: Path) -> dict[str, str]:
    """Config and inbox; returns file name -> sha256 of every photo put in."""
    (root / "inbox").mkdir(parents=True)
    (root / "facesortd.yaml").write_text(
        "state_dir: state\nlibrary: library\n"
        "inboxes:\n  - path: inbox\n    mode: detect\n"
        "watch:\n  settle_ms: 100\n  rescan_interval_s: 0\n"
        "embedder:\n  name: dlib\n  batch_size: 16\n  max_wait_ms: 50\n"
        "placement:\n  action: move\n"
        "web:\n  enabled: true\n  host: 127.0.0.1\n  port: 0\n"
        "log_level: info\n")
    put = {}
    dog = data_dir / "nonfaces" / "dog.jpg"       # no face found: a face drawn on it later
    shutil.copyfile(dog, root / "inbox" / NO_FACE)
    put[NO_FACE] = sha256(dog)
    for person in PEOPLE:
        for f in sorted((data_dir / "faces" / person).iterdir())[:PER_PERSON]:
            name = f"{person}__{f.name}"
            shutil.copyfile(f, root / "inbox" / name)
            put[name] = sha256(f)
    return put


def library_files(library: Path) -> dict[str, list[Path]]:
    """Folder (relative to the library) -> the files in it."""
    out: dict[str, list[Path]] = {}
    for p in sorted(library.rglob("*")):
        if p.is_file():
            out.setdefault(str(p.parent.relative_to(library)), []).append(p)
    return out


def wait_for(what: str, check: Callable[[], bool], timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        time.sleep(0.1)


def all_sorted(root: Path, put: dict[str, str]) -> bool:
    """Every photo put in is in the library exactly once, unchanged, and none left in the inbox."""
    if any(p.is_file() for p in (root / "inbox").rglob("*")):
        return False
    found = [p for files in library_files(root / "library").values() for p in files]
    return sorted(p.name for p in found) == sorted(put) and \
        Counter(sha256(p) for p in found) == Counter(put.values())


def folder_of(root: Path) -> dict[str, str]:
    """File name -> the library folder it is in."""
    return {p.name: folder for folder, files in library_files(root / "library").items()
            for p in files}


def store_faces(root: Path) -> list[tuple[int, int | None, str, int]]:
    """(face id, identity, file name, faces in that photo) of every face, from the store opened
    read-only: which faces to pick (moving the only face of a photo moves the photo)."""
    conn = sqlite3.connect(f"file:{root / 'state' / 'facesortd.db'}?mode=ro", uri=True, timeout=10)
    try:
        rows = conn.execute(
            "SELECT f.id, f.identity_id, i.path, (SELECT COUNT(*) FROM faces g WHERE "
            "g.image_id = f.image_id AND g.rejected = 0) FROM faces f "
            "JOIN images i ON i.id = f.image_id WHERE f.rejected = 0 ORDER BY f.id").fetchall()
    finally:
        conn.close()
    return [(face, ident, Path(os.fsdecode(path)).name, n) for face, ident, path, n in rows]


def store_images(root: Path) -> list[tuple[int, str]]:
    """(image id, file name) of every image, from the store opened read-only."""
    conn = sqlite3.connect(f"file:{root / 'state' / 'facesortd.db'}?mode=ro", uri=True, timeout=10)
    try:
        return [(i, Path(os.fsdecode(p)).name) for i, p in conn.execute("SELECT id, path FROM images")]
    finally:
        conn.close()


def settled(root: Path, put: dict[str, str], quiet_s: float = 2.0) -> dict[str, str]:
    """Wait until every photo is in the library and nothing moved for ``quiet_s`` (the placer's
    debounce is 1 s); returns file name -> folder."""
    wait_for("every photo sorted into the library", lambda: all_sorted(root, put), 120)
    last, since = folder_of(root), time.monotonic()
    while time.monotonic() - since < quiet_s:
        time.sleep(0.2)
        now = folder_of(root)
        if now != last:
            last, since = now, time.monotonic()
    return last


class Browser:
    """One Chromium page that records console errors and uncaught page errors."""

    def __init__(self, page, base: str):
        self.page, self.base, self.errors = page, base, []
        page.set_default_timeout(20_000)
        page.on("console", lambda m: self.errors.append(f"console: {m.text} ({m.location})")
                if m.type == "error" else None)
        page.on("pageerror", lambda exc: self.errors.append(f"page error: {exc}"))

    def open(self, path: str) -> None:
        response = self.page.goto(self.base + path.lstrip("/"))
        assert response is not None and response.status == 200, (path, response and response.status)
        self.thumbs_loaded()

    def thumbs_loaded(self) -> None:
        """Every picture on the page arrived and decoded (served by id, allowed by the CSP)."""
        self.page.wait_for_function(
            "() => Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)")

    def count(self) -> str:
        return self.page.inner_text("[data-count]")

    def face(self, face_id: int):
        return self.page.locator(f'.faces.selectable .face[data-face="{face_id}"]')

    def shown(self) -> list[int]:
        """The faces on the page, in its order."""
        return [int(x) for x in self.page.eval_on_selector_all(
            ".faces.selectable .face", "els => els.map(e => e.dataset.face)")]

    def selected(self) -> list[int]:
        return [int(x) for x in self.page.eval_on_selector_all(
            ".face.selected", "els => els.map(e => e.dataset.face)")]

    def reloads_after(self, action: Callable[[], None], url: str = "**") -> None:
        """Run a click that sends an action; the page reloads (or moves on) once it succeeded."""
        from playwright.sync_api import TimeoutError as PlaywrightTimeout
        try:
            with self.page.expect_navigation(url=url, timeout=20_000):
                action()
        except PlaywrightTimeout:
            status = self.page.locator("#status")
            said = status.inner_text() if status.is_visible() else "(nothing)"
            raise AssertionError(f"the page did not reload after the action; it says: {said}") from None
        self.page.wait_for_load_state("load")
        self.thumbs_loaded()


def folder_name(root: Path, identity: int) -> str:
    conn = sqlite3.connect(f"file:{root / 'state' / 'facesortd.db'}?mode=ro", uri=True, timeout=10)
    try:
        name = conn.execute("SELECT name FROM identities WHERE id = ?", (identity,)).fetchone()[0]
    finally:
        conn.close()
    return name or f"Person_{identity:04d}"


def face_row(root: Path, face: int) -> tuple[int | None, int]:
    """(identity, pinned) of a face, from the store opened read-only."""
    conn = sqlite3.connect(f"file:{root / 'state' / 'facesortd.db'}?mode=ro", uri=True, timeout=10)
    try:
        return conn.execute("SELECT identity_id, pinned FROM faces WHERE id = ?", (face,)).fetchone()
    finally:
        conn.close()


def review_queue(ui: "Browser", root: Path, expect: dict[str, str], photo: dict[int, str],
                 a: int, hidden: int) -> None:
    """Issue 18 in the browser: confirm and move from the review queue (the moved face's photo
    then in the candidate's folder), a correction made with the keyboard alone, a person hidden
    (their photos to _unsorted/) and shown again, the photo view's labelled boxes, and a face
    drawn on a photo without one and named (the photo then in that person's folder)."""
    page = ui.page
    alone = {f for f, _, _, n in store_faces(root) if n == 1}

    def rows() -> list[tuple[int, str]]:
        return [(int(f), c) for f, c in page.eval_on_selector_all(
            ".review-row", "els => els.map(e => [e.dataset.face, e.dataset.candidate])")]

    ui.open("/review")
    queue = rows()
    assert len(queue) >= 3, queue
    # confirm the first: pinned where it is, out of the queue, its photo where it was
    confirmed = queue[0][0]
    ui.reloads_after(lambda: page.click(f'.review-row[data-face="{confirmed}"] [data-review-action="confirm"]'))
    assert confirmed not in [f for f, _ in rows()] and face_row(root, confirmed)[1] == 1
    # move one (the only face of its photo) to the candidate shown: the photo follows
    face, candidate = next((f, int(c)) for f, c in rows() if c and f in alone)
    ui.reloads_after(lambda: page.click(f'.review-row[data-face="{face}"] [data-review-action="move"]'))
    assert face not in [f for f, _ in rows()] and face_row(root, face) == (candidate, 1)
    expect[photo[face]] = folder_name(root, candidate)
    wait_for("the moved face's photo in the candidate's folder", lambda: folder_of(root) == expect)

    # keyboard only: ? lists the keys, j walks to a face alone in its photo, t takes it out
    page.keyboard.press("?")
    assert page.locator("#keys").is_visible() and "not this person" in page.inner_text("#keys")
    page.keyboard.press("Escape")
    assert not page.locator("#keys").is_visible()
    focused = lambda: int(page.evaluate("document.activeElement.dataset.face"))  # noqa: E731
    for _ in range(len(rows())):
        if focused() in alone:
            break
        page.keyboard.press("j")
    out = focused()
    assert out in alone
    ui.reloads_after(lambda: page.keyboard.press("t"))
    assert face_row(root, out) == (None, 0) and out not in [f for f, _ in rows()]
    expect[photo[out]] = "_unsorted"
    wait_for("the face taken out: its photo in _unsorted/", lambda: folder_of(root) == expect)

    # hide a person: off the overview, their photos to _unsorted/; unhide from the Hidden list
    ui.open(f"/people/{hidden}")
    ui.reloads_after(lambda: page.click('[data-action="hide"]'))
    ui.open("/")
    assert page.locator(f'.person-card[data-identity="{hidden}"]').count() == 0
    theirs = [n for n, folder in expect.items() if folder == f"Person_{hidden:04d}"]
    assert theirs
    hidden_expect = {**expect, **{n: "_unsorted" for n in theirs}}
    wait_for("a hidden person's photos in _unsorted/", lambda: folder_of(root) == hidden_expect)
    ui.open("/hidden")
    ui.reloads_after(lambda: page.click(f'.person-card[data-identity="{hidden}"] [data-action="unhide"]'))
    assert page.locator(f'.person-card[data-identity="{hidden}"]').count() == 0
    wait_for("an unhidden person's photos back in their folder", lambda: folder_of(root) == expect)

    # the photo view: every face box drawn and labelled with its person; a click selects it
    some = next(f for f, ident, _, _ in store_faces(root) if ident == a)
    ui.open(f"/people/{a}")
    page.click(f'.face[data-face="{some}"] a.photo')
    page.wait_for_url(re.compile(r"/photo/\d+"))
    ui.thumbs_loaded()
    box = page.locator(f'.photo-frame .face.box[data-face="{some}"]')
    assert NEW_NAME in box.inner_text()
    frame, drawn = page.locator(".photo-frame").bounding_box(), box.bounding_box()
    assert drawn["width"] > 10 and frame["x"] <= drawn["x"] and \
        drawn["x"] + drawn["width"] <= frame["x"] + frame["width"] + 1
    box.click()
    assert ui.selected() == [some]

    # a face the detector missed: drawn on the photo, named A; the photo then in A's folder
    assert expect[NO_FACE] == "_noface"
    image_id = next(i for i, name in store_images(root) if name == NO_FACE)
    ui.open(f"/photo/{image_id}")
    assert page.locator(".photo-frame .face.box").count() == 0
    frame = page.locator(".photo-frame").bounding_box()
    x, y, w, h = frame["x"], frame["y"], frame["width"], frame["height"]
    page.mouse.move(x + 0.3 * w, y + 0.2 * h)
    page.mouse.down()
    page.mouse.move(x + 0.6 * w, y + 0.6 * h, steps=5)
    page.mouse.up()
    assert page.locator('[data-form="draw"]').is_visible()
    page.fill("[data-draw-target]", NEW_NAME)
    page.wait_for_selector(f'#people-list option[value="{NEW_NAME} #{a}"]', state="attached")
    ui.reloads_after(lambda: page.click('[data-form="draw"] button[type=submit]'))
    assert page.locator(".photo-frame .face.box").count() == 1
    assert NEW_NAME in page.inner_text(".photo-frame .face.box .label")
    expect[NO_FACE] = NEW_NAME
    wait_for("the photo with a drawn face in its person's folder", lambda: folder_of(root) == expect)


def test_review_page_in_chromium_moves_the_files(tmp_path, data_dir, sync_playwright, launch_chromium,
                                                 start_daemon):
    root = tmp_path / "run"
    put = make_root(root, data_dir)
    daemon = start_daemon(root)
    try:
        base = daemon.url()
        before = settled(root, put)

        # Four people with 4+ faces, each the only face in its photo (so the photo follows it).
        faces = store_faces(root)
        people = sorted({ident for _, ident, _, _ in faces if ident is not None})
        faces_of = {i: [f for f, ident, _, _ in faces if ident == i] for i in people}
        photo = {f: name for f, _, name, _ in faces}
        usable = [i for i in people if len(faces_of[i]) >= 4 and all(
            n == 1 for _, ident, _, n in faces if ident == i)]
        assert len(usable) >= 4, f"the daemon did not form 4 clean people: {faces}; {before}"
        a, b, c, d = usable[:4]
        files_in = {i: sorted(photo[f] for f in faces_of[i]) for i in usable}
        for i in usable:
            assert {before[n] for n in files_in[i]} == {f"Person_{i:04d}"}, (i, before)
        expect = dict(before)

        with sync_playwright() as pw:
            chromium = launch_chromium(pw)
            try:
                page = chromium.new_page(viewport={"width": 1280, "height": 900})
                ui = Browser(page, base)

                # The overview: every person, their thumbnails; a screenshot for the record.
                ui.open("/")
                cards = page.locator(".person-card")
                assert cards.count() == len(people)
                shot = tmp_path / "overview.png"
                page.screenshot(path=str(shot), full_page=True)
                print(f"overview screenshot: {shot}")
                assert shot.stat().st_size > 10_000

                # Open person A from the overview; select all, clear; rename.
                page.click(f'.person-card[data-identity="{a}"] a')
                page.wait_for_url(f"**/people/{a}")
                ui.thumbs_loaded()
                n_a = page.locator(".faces.selectable .face").count()
                assert n_a == len(faces_of[a]) and ui.count() == "0 selected"
                page.click('[data-select="all"]')
                assert ui.count() == f"{n_a} selected" and len(ui.selected()) == n_a
                page.click('[data-select="none"]')
                assert ui.count() == "0 selected" and ui.selected() == []
                page.fill("[data-name]", NEW_NAME)
                ui.reloads_after(lambda: page.click('[data-form="rename"] button[type=submit]'))
                assert NEW_NAME in page.inner_text("h1")
                for name in files_in[a]:
                    expect[name] = NEW_NAME
                wait_for(f"A's photos in {NEW_NAME}/", lambda: folder_of(root) == expect)
                assert not (root / "library" / f"Person_{a:04d}").exists()

                # Person B: one face clicked, moved to A picked by name from the suggestions.
                ui.open(f"/people/{b}")
                moved = faces_of[b][0]
                ui.face(moved).click()
                assert ui.selected() == [moved] and ui.count() == "1 selected"
                target = page.locator("[data-toolbar] [data-target]")
                target.fill(NEW_NAME)
                page.wait_for_selector(f'#people-list option[value="{NEW_NAME} #{a}"]',
                                       state="attached")
                ui.reloads_after(lambda: page.click('[data-action="move"]'))
                assert page.locator(f'.face[data-face="{moved}"]').count() == 0
                expect[photo[moved]] = NEW_NAME
                wait_for(f"the moved photo in {NEW_NAME}/", lambda: folder_of(root) == expect)

                # Person D: a shift-click range of three faces (in the page's order: most doubtful
                # first) split off as a new person.
                ui.open(f"/people/{d}")
                shown = ui.shown()
                assert sorted(shown) == sorted(faces_of[d])
                ui.face(shown[0]).click()
                ui.face(shown[2]).click(modifiers=["Shift"])
                assert ui.selected() == shown[:3] and ui.count() == "3 selected"
                ui.reloads_after(lambda: page.click('[data-action="move-new"]'),
                                 url=re.compile(r"/people/\d+$"))
                new = int(page.url.rsplit("/", 1)[1])
                assert new not in people and page.locator(".faces .face").count() == 3
                for face in shown[:3]:
                    expect[photo[face]] = f"Person_{new:04d}"
                wait_for("the split photos in their new person's folder",
                         lambda: folder_of(root) == expect)

                # Person C merged into B: its name typed and Enter pressed at once (the page
                # waits for the list of people to know who that is); the page moves on to B.
                ui.open(f"/people/{c}")
                page.fill("[data-merge-target]", f"Person_{b:04d}")
                ui.reloads_after(lambda: page.press("[data-merge-target]", "Enter"),
                                 url=re.compile(rf"/people/{b}$"))
                merged = len(faces_of[b]) - 1 + len(faces_of[c])   # B gave one face to A
                assert page.locator(".faces .face").count() == merged
                for name in files_in[c]:
                    expect[name] = f"Person_{b:04d}"
                wait_for("C's photos in B's folder", lambda: folder_of(root) == expect)
                assert not (root / "library" / f"Person_{c:04d}").exists()

                # The overview again: A under the new name, C gone, the new person there.
                ui.open("/")
                names = page.locator(".person-card .name").all_inner_texts()
                assert NEW_NAME in names and f"Person_{c:04d}" not in names
                assert f"Person_{new:04d}" in names
                page.screenshot(path=str(tmp_path / "overview-after.png"), full_page=True)

                review_queue(ui, root, expect, photo, a, new)
                assert ui.errors == [], ui.errors
            finally:
                chromium.close()

        # Nothing lost or doubled, nothing left behind, and the daemon stops cleanly.
        assert all_sorted(root, put) and folder_of(root) == expect
    finally:
        rc = daemon.stop()
    assert rc == 0, "\n".join(daemon.log[-30:])
