"""``facesortd people export FILE.json`` and ``facesortd people import FILE.json``: the people
file (``people.backup``) written from, and applied to, a state folder."""

from __future__ import annotations

import json
import os
from pathlib import Path

from facesortd.app.state import open_state
from facesortd.config import Config
from facesortd.errors import BadImage, FacesortdError
from facesortd.people.backup import BackupError, drawn_to_recreate, export_people, import_people
from facesortd.store.database import DB_NAME, Store, decode_path
from facesortd.web import drawing, queries

__all__ = ["people_export", "people_import"]


def people_export(config: Config, path: Path, dry_run: bool = False) -> dict:
    """Write the people file to ``path`` (a new file: an existing one is never replaced); a
    reader of the store, so it runs beside the daemon. Returns counts; ``dry_run`` writes nothing."""
    path = Path(path)
    if not (config.state_dir / DB_NAME).exists():
        raise FacesortdError(f"no store yet in {config.state_dir}: run `facesortd run` first")
    if path.exists():
        raise FacesortdError(f"{path} already exists; people export never replaces a file: "
                             "give a new name")
    if not path.parent.is_dir():
        raise FacesortdError(f"{path.parent} is not a folder")
    if not os.access(path.parent, os.W_OK):
        raise FacesortdError(f"cannot write in {path.parent}")
    with Store.open(config.state_dir, load_vectors=False) as store:
        doc = export_people(store)
    counts = {"people": len(doc["people"]), "named": sum(1 for p in doc["people"] if p["name"]),
              "faces": sum(len(p["faces"]) for p in doc["people"]),
              "pinned_faces": sum(f["pinned"] for p in doc["people"] for f in p["faces"]),
              "unassigned": len(doc["unassigned"]), "not_this_person": len(doc["not_this_person"]),
              "rejected": len(doc["rejected"]),
              "dismissed_suggestions": len(doc["dismissed_suggestions"]),
              "file": str(path), "dry_run": dry_run}
    if dry_run:
        return counts
    tmp = path.with_name(f".{path.name}.part")
    try:
        with open(tmp, "x", encoding="utf-8") as out:
            json.dump(doc, out, indent=1, ensure_ascii=False)
            out.write("\n")
            out.flush()
            os.fsync(out.fileno())
        os.link(tmp, path)          # fails, instead of replacing, if the name appeared meanwhile
    except FileExistsError:
        raise FacesortdError(f"{path} (or {tmp}) appeared while writing; nothing replaced") from None
    except OSError as exc:
        raise FacesortdError(f"cannot write {path}: {exc.strerror or exc}") from None
    finally:
        if tmp.exists():
            tmp.unlink()
    return counts


def read_people_file(path: Path) -> dict:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FacesortdError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise BackupError(f"cannot read {path}: {exc}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise BackupError(f"{path} is not valid JSON (line {exc.lineno}, column {exc.colno}: "
                          f"{exc.msg}); nothing was applied") from None


def people_import(config: Config, path: Path, dry_run: bool = False) -> dict:
    """Apply a people file to the state folder (the daemon must be stopped: it takes the lock),
    in one transaction, then move the files to their people's folders. Faces a person drew that
    this store lacks are cut from their photos and embedded with the store's model first (the
    detector would never find them). ``dry_run``: the report and the file operations it would
    do, nothing changed."""
    doc = read_people_file(path)
    try:
        with open_state(config, existing=True, load_vectors=False, replay=not dry_run) as state:
            wanted = drawn_to_recreate(state.store, doc)
            drawn, failed = ([], []) if dry_run else _embed_drawn(config, state.store, wanted)
            report = import_people(state.store, doc, dry_run=dry_run, drawn=drawn,
                                   preview=lambda: [op.describe() for op in
                                                    state.placer.sync(dry_run=True)])
            if dry_run:
                report["drawn_faces_to_recreate"] = len(wanted)
            report["drawn_faces_not_recreated"] = failed
            if not dry_run:
                report["file_operations"] = [op.describe() for op in state.placer.sync()]
    except BackupError as exc:
        raise BackupError(f"{path}: {exc}; nothing was applied") from None
    return report


def _embed_drawn(config: Config, store: Store, wanted: list[dict]) -> tuple[list, list]:
    """(image id, box, vector) of each drawn face embedded as the review page embeds one, and
    the ones that could not be (photo not on disk or unreadable, the model not available): those
    stay in the report's ``faces_not_found`` too."""
    done, failed, models = [], [], {}
    with store.read() as conn:
        files = {f["image_id"]: queries.image_files(conn, f["image_id"]) for f in wanted}
    for face in wanted:
        found = files[face["image_id"]]
        photo = next((p for p in map(decode_path, found[1] if found else ()) if p.is_file()), None)
        if photo is None:
            failed.append(dict(face, why="the photo's file is not on disk"))
            continue
        try:
            vector = drawing.embed_box(models, config, store.model_id, photo, tuple(face["box"]))
        except (BadImage, FacesortdError, OSError) as exc:
            failed.append(dict(face, why=str(exc)))
            continue
        done.append((face["image_id"], face["box"], vector))
    return done, failed
