"""The review page's "Export selected…": ``POST /api/export`` copies every photo of the people
ticked on the overview into a new dated folder under ``export.root`` (``library.export``), and
``GET /exports/<folder>/manifest.csv`` serves that export's manifest. The page never sends a path:
the folder is named here, and the manifest route takes only a name this module makes.

The copying runs on a thread of its own, one export at a time: one done within ``WAIT_S`` answers
the POST with its result; a longer one answers 202 at once and ``GET /api/export/<folder>`` tells
how far it got, then the result (the page polls it), so a large export never holds a request
open past a proxy's timeout. ``stop(app)`` (the server's shutdown) stops one running and joins it.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from flask import Blueprint, Flask, Response, abort, current_app, jsonify, send_file, url_for

from facesortd.library.export import ExportError, check_target, export, plan
from facesortd.web.api import _body, _int
from facesortd.web.context import state
from facesortd.web.security import error, require

bp = Blueprint("exports", __name__)

MAX_PEOPLE = 1000
FOLDER = re.compile(r"\d{4}-\d{2}-\d{2}_\d{6}(?:_\d{1,4})?")
WAIT_S = 5.0          # an export done within this answers the POST itself (app config can lower it)
_LOCK = threading.Lock()


class _Stopped(Exception):
    pass


@dataclass
class _Job:
    """One export on its thread: how far it got, then its report or why it stopped."""

    folder: Path
    total: int
    missing: list
    done: int = 0
    report: Optional[dict] = None
    error: Optional[str] = None
    stop: threading.Event = field(default_factory=threading.Event)
    thread: Optional[threading.Thread] = None

    def run(self, items: list, layout: str) -> None:
        def on_file(n: int) -> None:
            self.done = n
            if self.stop.is_set():
                raise _Stopped

        try:
            self.report = export(items, self.folder, layout=layout, action="copy", on_file=on_file)
        except _Stopped:
            self.error = (f"the export to {self.folder} stopped with the server after {self.done} "
                          f"of {self.total} photo(s); no manifest was written")
        except ExportError as exc:
            self.error = str(exc)
        except OSError as exc:
            self.error = f"cannot write the export in {self.folder}: {exc.strerror or exc}"


def _jobs(app: Flask) -> dict[str, _Job]:
    return app.extensions["facesortd"].setdefault("exports", {})


def stop(app: Flask, timeout: float = 30.0) -> None:
    """Stop a running export (between two files) and join its thread: the server is going."""
    with _LOCK:
        jobs = list(_jobs(app).values())
    for job in jobs:
        job.stop.set()
    for job in jobs:
        if job.thread is not None:
            job.thread.join(timeout)


def _root() -> Path:
    return current_app.config["FACESORTD_CONFIG"].export.root


def _new_folder(root: Path) -> Path:
    """A new dated folder under ``root`` (``2026-12-02_104512``, then ``..._1`` the same second)."""
    root.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y-%m-%d_%H%M%S", time.gmtime())
    for n in range(10_000):
        folder = root / (stamp if n == 0 else f"{stamp}_{n}")
        try:
            folder.mkdir()
            return folder
        except FileExistsError:
            continue
    raise ExportError(f"no free folder name under {root} for {stamp}")


@bp.post("/api/export")
def start_export():
    body = _body()
    people = body.get("people")
    require(isinstance(people, list) and 0 < len(people) <= MAX_PEOPLE,
            f"'people' must be a list of 1 to {MAX_PEOPLE} person ids")
    ids = list(dict.fromkeys(_int(p, "each person") for p in people))
    layout = body.get("layout", "per-person")
    require(layout in ("per-person", "single"), "'layout' must be \"per-person\" or \"single\"")
    store = state("store")
    with store.read() as conn:
        live = {r[0] for r in conn.execute("SELECT id FROM identities WHERE merged_into IS NULL")}
    unknown = [i for i in ids if i not in live]
    if unknown:
        return error(404, f"no such person (or merged into another): {unknown[:10]}")
    config = current_app.config["FACESORTD_CONFIG"]
    app = current_app._get_current_object()   # type: ignore[attr-defined]
    with _LOCK:
        running = [j for j in _jobs(app).values() if j.thread is not None and j.thread.is_alive()]
        if running:
            return error(409, f"an export is running ({running[0].folder.name}: {running[0].done} "
                              f"of {running[0].total} photo(s)); start the next when it is done")
        try:
            root = check_target(config, _root())
            items, missing = plan(store, ids)
            folder = _new_folder(root)
        except ExportError as exc:
            return error(409, str(exc))
        except OSError as exc:
            return error(409, f"cannot write the export under {_root()}: {exc.strerror or exc}")
        job = _Job(folder, len(items), missing)
        job.thread = threading.Thread(target=job.run, args=(items, layout), daemon=True,
                                      name=f"facesortd-export-{folder.name}")
        _jobs(app)[folder.name] = job
        job.thread.start()
    job.thread.join(float(current_app.config.get("FACESORTD_EXPORT_WAIT_S", WAIT_S)))
    return _answer(job)


@bp.get("/api/export/<folder>")
def export_status(folder: str):
    job = _jobs(current_app).get(folder) if FOLDER.fullmatch(folder) else None
    if job is None:
        return error(404, f"no export {folder!r} since the server started")
    return _answer(job)


def _answer(job: _Job) -> Response:
    """The export's state: 202 and how far while it runs; its result (200) or error (409)."""
    name = job.folder.name
    if job.thread is not None and job.thread.is_alive():
        response = jsonify({"ok": True, "running": True, "folder": name, "path": str(job.folder),
                            "status_url": url_for("exports.export_status", folder=name),
                            "done": job.done, "total": job.total})
        response.status_code = 202
        return response
    if job.error is not None or job.report is None:
        return error(409, job.error or "the export stopped")
    report = job.report
    manifest = Path(report["manifest"]).name
    return jsonify({"ok": True, "running": False, "folder": name, "path": str(job.folder),
                    "manifest_url": url_for("exports.manifest", folder=name, name=manifest),
                    "photos": report["photos"], "people": report["people"],
                    "missing": job.missing, "failed": report["failed"]})


@bp.get("/exports/<folder>/<name>")
def manifest(folder: str, name: str):
    if not FOLDER.fullmatch(folder) or not re.fullmatch(r"manifest(?:_\d{1,4})?\.csv", name):
        abort(404)
    path = _root() / folder / name
    if not path.is_file():
        abort(404)
    return send_file(path, mimetype="text/csv", as_attachment=False, max_age=0)
