"""``facesortd export --people ... --to DIR``: the photos of chosen people out of the library
(``library.export``), with a progress bar on a terminal. A reader of the store: it runs beside
the daemon."""

from __future__ import annotations

import threading
from pathlib import Path

from facesortd.app.progress import Progress
from facesortd.config import Config
from facesortd.errors import FacesortdError
from facesortd.library.export import Action, Layout, check_target, export, plan, resolve_people
from facesortd.store.database import DB_NAME, Store

__all__ = ["export_people"]


def export_people(config: Config, people: list[str], to: Path, layout: Layout = "per-person",
                  action: Action = "copy", dry_run: bool = False) -> dict:
    """Export every photo of ``people`` (names or ``#ID``) to ``to``; returns the report."""
    if not (config.state_dir / DB_NAME).exists():
        raise FacesortdError(f"no store yet in {config.state_dir}: run `facesortd run` first")
    target = check_target(config, to)
    with Store.open(config.state_dir, load_vectors=False) as store:
        ids = resolve_people(store, people)
        items, missing = plan(store, ids)
    done = [0]
    lock = threading.Lock()

    def on_file(n: int) -> None:
        with lock:
            done[0] = n

    def counts() -> tuple[int, int]:
        with lock:
            return done[0], len(items)

    with Progress(counts, unit=" photos"):
        report = export(items, target, layout=layout, action=action, dry_run=dry_run,
                        on_file=on_file)
    report["missing"] = missing
    return report
