"""The review page's "Export selected…": ``POST /api/export`` copies every photo of the people
ticked on the overview into a new dated folder under ``export.root`` (``library.export``), and
``GET /exports/<folder>/manifest.csv`` serves that export's manifest. The page never sends a path:
the folder is named here, and the manifest route takes only a name this module makes."""

from __future__ import annotations

import re
import time
from pathlib import Path

from flask import Blueprint, abort, current_app, jsonify, send_file, url_for

from facesortd.library.export import ExportError, check_target, export, plan
from facesortd.web.api import _body, _int
from facesortd.web.context import state
from facesortd.web.security import error, require

bp = Blueprint("exports", __name__)

MAX_PEOPLE = 1000
FOLDER = re.compile(r"\d{4}-\d{2}-\d{2}_\d{6}(?:_\d{1,4})?")


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
    try:
        root = check_target(config, _root())
        items, missing = plan(store, ids)
        folder = _new_folder(root)
        report = export(items, folder, layout=layout, action="copy")
    except ExportError as exc:
        return error(409, str(exc))
    except OSError as exc:
        return error(409, f"cannot write the export under {_root()}: {exc.strerror or exc}")
    manifest = Path(report["manifest"]).name
    return jsonify({"ok": True, "folder": folder.name, "path": str(folder),
                    "manifest_url": url_for("exports.manifest", folder=folder.name, name=manifest),
                    "photos": report["photos"], "people": report["people"], "missing": missing,
                    "failed": report["failed"]})


@bp.get("/exports/<folder>/<name>")
def manifest(folder: str, name: str):
    if not FOLDER.fullmatch(folder) or not re.fullmatch(r"manifest(?:_\d{1,4})?\.csv", name):
        abort(404)
    path = _root() / folder / name
    if not path.is_file():
        abort(404)
    return send_file(path, mimetype="text/csv", as_attachment=False, max_age=0)
