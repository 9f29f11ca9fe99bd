"""The review app over a copy of the small real library, through Flask's test client."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from facesortd.config import parse_config
from facesortd.store.database import Store
from facesortd.web import Control, create_app, inline_control


@dataclass
class Review:
    """The app, its client, the store under it, and what the page asked of its control."""

    app: object
    client: object
    store: Store
    root: Path
    library: object   # the SmallLibrary it is a copy of
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
        by_person = self.library.faces_by_person(self.store)
        return {p: self.library.main_identity(pairs) for p, pairs in by_person.items()}

    def faces(self, person: str) -> list[int]:
        return [f for f, _ in self.library.faces_by_person(self.store)[person]]


@pytest.fixture
def open_review(library):
    """``open_review(root, web="{}")``: a Review over a copy of ``library`` in ``root``, with
    ``web`` as its config's ``web:`` section; the caller closes its store."""

    def open_(root: Path, web: str = "{}") -> Review:
        library.copy(root)
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
        return Review(app, app.test_client(), store, root, library, calls)

    return open_


@pytest.fixture
def review(open_review, tmp_path):
    """The review app (``Review``) over a fresh copy of ``library``."""
    r = open_review(tmp_path)
    yield r
    r.store.close()
