"""A review app over a copy of the small real library (5 people × 4 photos, MTCNN + dlib), and
the real headless Chromium the browser tests drive through Playwright."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from identity_fixtures import copy_library, faces_by_person, main_identity

from facesortd.config import parse_config
from facesortd.store.database import Store
from facesortd.web import Control, create_app, inline_control

CHROMIUM = Path(os.environ.get("FACESORTD_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@dataclass
class Review:
    """The app, its client, the store under it, and what the page asked of its control."""

    app: object
    client: object
    store: Store
    root: Path
    calls: list = field(default_factory=list)

    @property
    def csrf(self) -> str:
        return self.client.get("/api/csrf").json["csrf_token"]

    def post(self, path: str, body=None, **kwargs):
        headers = {"X-CSRF-Token": self.csrf, **kwargs.pop("headers", {})}
        if "data" not in kwargs:
            kwargs["json"] = {} if body is None else body
        return self.client.post(path, headers=headers, **kwargs)

    def people(self) -> dict[str, int]:
        """person -> the identity most of their photos' largest faces are in."""
        return {p: main_identity(pairs) for p, pairs in faces_by_person(self.store).items()}

    def faces(self, person: str) -> list[int]:
        return [f for f, _ in faces_by_person(self.store)[person]]


def open_review(library: Path, root: Path, web: str = "{}") -> Review:
    copy_library(library, root)
    path = root / "facesortd.yaml"
    path.write_text(path.read_text().replace("web:\n  enabled: false\n", f"web: {web}\n"))
    config = parse_config(path.read_text(), path)
    store = Store.open(config.state_dir)
    calls: list = []
    inline = inline_control(config, store)

    def recluster() -> None:
        calls.append("recluster")
        inline.request_recluster()

    control = Control(changed=lambda: calls.append("changed"), request_recluster=recluster)
    app = create_app(config, store, control=control, test_config={"TESTING": True})
    return Review(app, app.test_client(), store, root, calls)


def browser_or_skip():
    """Playwright's sync API, or fail under CI (the Makefile installs both) / skip elsewhere."""
    missing = []
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sync_playwright = None
        missing.append("playwright (pip install -e '.[test]')")
    if not os.access(CHROMIUM, os.X_OK):
        missing.append(f"chromium at {CHROMIUM} (apt-get install chromium; `make install-test` "
                       "does it)")
    if missing:
        message = "the browser test needs " + " and ".join(missing)
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message + " (CI is set: it must run there)")
        pytest.skip(message)
    return sync_playwright
