"""``facesortd migrate --to MODEL``: re-embed every stored face with another model, keep the people.

The boxes stay (detection does not depend on the embedder) and every face keeps its id, so pins,
"not this person", rejections, names and merges carry over untouched. Each face is cut from its
photo exactly as the pipeline cut it at ingest (same decoding, same box, the target model's own
``prepare``) and its new vector is staged beside the one in force (``Store.stage_vectors``), a
micro-batch per transaction: killed at any moment, the next ``migrate`` continues from there, and
the daemon may run on the old model meanwhile (faces it adds are embedded next time; faces it
deletes take their staged rows with them). Once every face has a vector, one transaction switches
the store and reclusters with the new model's eps under every correction
(``Store.switching_model``): no search ever sees vectors of two models.

A photo whose file is gone (not where the placer put it, not in its inbox, no copy with the same
SHA-256) is counted and its faces are dropped, never guessed. ``dry_run`` embeds (the staged
vectors stay for a later run), then predicts the people with the same recluster computed in
memory, and changes nothing in force.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from facesortd.app.progress import Progress
from facesortd.app.state import State, open_state
from facesortd.config import Config
from facesortd.errors import BadImage, FacesortdError
from facesortd.ingest.imageio import sha256_file
from facesortd.ingest.worker import decode_request
from facesortd.models.base import Embedder
from facesortd.models.embedders import create_embedder
from facesortd.people.recluster import recluster
from facesortd.people.storage import load_constraints, rows_of
from facesortd.store.database import DB_NAME, Store, decode_path

__all__ = ["migrate", "MODELS"]

log = logging.getLogger("facesortd.migrate")

MODELS = ("facenet", "dlib")
_CHUNK = 1024          # faces read from the store at a time
_EXAMPLES = 20         # missing photos named in the report


@dataclass
class _Run:
    """What this run did, for the progress bar and the report."""

    done: int = 0
    total: int = 0
    embedded: int = 0
    model_seconds: float = 0.0     # inside the model's embed(): the rest is reading, decoding, cutting
    photos_missing: int = 0
    missing: list = field(default_factory=list)


def load_target(config: Config, to: str, weights: Optional[Path]) -> Embedder:
    """The target model, loaded (``ModelUnavailable`` for a bad weights file, a missing package)
    before anything touches the store."""
    if to not in MODELS:
        raise FacesortdError(f"--to {to}: unknown model; use {' or '.join(MODELS)}")
    if weights is not None and to != "facenet":
        raise FacesortdError("--weights is the facenet state dict; --to dlib takes none")
    update: dict[str, Any] = {"name": to}
    if weights is not None:
        update["weights"] = Path(weights).expanduser().resolve()
    elif to != "facenet":
        update["weights"] = None
    embedder = create_embedder(config.embedder.model_copy(update=update))
    embedder.load()
    return embedder


def migrate(config: Config, to: str, weights: Optional[Path] = None, dry_run: bool = False) -> dict:
    """Re-embed every face with ``to`` and switch the store to it (see the module doc); the
    report. Refuses (``StateBusy``, naming the pid) while a daemon holds the state folder."""
    if not (config.state_dir / DB_NAME).exists():
        raise FacesortdError(f"no store yet in {config.state_dir}: nothing to migrate")
    embedder = load_target(config, to, weights)
    model_id = embedder.model_id
    with open_state(config, existing=True, load_vectors=False, eps_of=to) as state:
        store = state.store
        current = store.model_id
        if current == model_id:
            last = store.meta("last_migration")
            return {"changed": False, "model": model_id,
                    "message": f"the store already holds vectors of {model_id}; nothing to do",
                    "last_migration": json.loads(last) if last else None}
        if current is None:
            return {"changed": False, "model": None,
                    "message": "the store holds no face yet; set embedder.name in the config"}
        store.unstage(keep=model_id)           # an abandoned migration to another model
        store.unstage(gone_of=model_id)        # photos gone last time: look again
        run = _Run()
        run.done, run.total = store.staged_progress(model_id)
        log.info("migrate: %d of %d faces to embed with %s (eps %.3f)", run.total - run.done,
                 run.total, model_id, state.identities.params.eps)
        t0 = time.perf_counter()
        with Progress(lambda: (run.done, run.total), unit=" faces"):
            _embed_all(config, store, embedder, model_id, run)
        seconds = time.perf_counter() - t0
        log.info("migrate: embedded %d faces in %.1f s (%.1f s of it in the model)", run.embedded,
                 seconds, run.model_seconds)
        report = {"changed": not dry_run, "dry_run": dry_run, "model_before": current,
                  "model_after": model_id, "eps": state.identities.params.eps,
                  "faces_embedded_this_run": run.embedded, "seconds_embedding": round(seconds, 1),
                  "seconds_in_model": round(run.model_seconds, 1),
                  "photos_missing": run.photos_missing, "missing_examples": run.missing}
        with store.read() as conn:
            report["faces_dropped"] = conn.execute(
                "SELECT COUNT(*) FROM staged_vectors WHERE model_id = ? AND vector IS NULL",
                (model_id,)).fetchone()[0]
        if dry_run:
            report.update(_predict(state, model_id))
            report["note"] = ("dry run: nothing switched; the people after are a recluster "
                              "computed in memory, not written. The new vectors stay staged (no "
                              "search reads them) for the real migrate.")
            return report
        return _switch(state, embedder, model_id, report)


# -- embedding ---------------------------------------------------------------------------------

def _embed_all(config: Config, store: Store, embedder: Embedder, model_id: str, run: _Run) -> None:
    """Stage a vector (or 'gone') for every face not staged yet, a micro-batch per commit."""
    batch = max(1, config.embedder.batch_size)
    ids: list[int] = []
    faces: list[Any] = []

    def flush() -> None:
        if ids:
            t0 = time.perf_counter()
            vectors = embedder.embed(faces)
            run.model_seconds += time.perf_counter() - t0
            store.stage_vectors(model_id, embedder.dim, ids, list(vectors))
            run.done += len(ids)
            run.embedded += len(ids)
            ids.clear()
            faces.clear()

    while True:
        rows = store.unstaged_faces(model_id, _CHUNK)
        if not rows:
            break
        by_image: dict[int, list[tuple[int, tuple]]] = {}
        for face_id, image_id, box in rows:
            by_image.setdefault(image_id, []).append((face_id, box))
        if len(rows) == _CHUNK and len(by_image) > 1:   # the last image may continue in the next chunk
            by_image.pop(rows[-1][1])
        for image_id, image_faces in by_image.items():
            cut = _cut_faces(config, store, embedder, image_id, image_faces, run)
            if cut is None:   # gone: staged as such at once (a NULL vector)
                gone = [f for f, _ in image_faces]
                store.stage_vectors(model_id, embedder.dim, gone, [None] * len(gone))
                run.done += len(gone)
                continue
            for face_id, face in cut:
                ids.append(face_id)
                faces.append(face)
                if len(ids) >= batch:
                    flush()
        flush()
        run.done, run.total = store.staged_progress(model_id)


def _cut_faces(config: Config, store: Store, embedder: Embedder, image_id: int,
               faces: list[tuple[int, tuple]], run: _Run) -> Optional[list[tuple[int, Any]]]:
    """Each face of one photo prepared for the target model as the pipeline did at ingest, or
    None when the photo's file is gone (or no longer decodes)."""
    with store.read() as conn:
        row = conn.execute("SELECT path, inbox, sha256 FROM images WHERE id = ?",
                           (image_id,)).fetchone()
        candidates = _candidates(conn, image_id) if row else []
    why = "no such image"
    path = None
    if row is not None:
        path, why = _find_file(candidates, row[2])
    if path is not None:
        try:
            aligned = _aligned(config, decode_path(row[1]), faces)
            return [(face_id, face) for face_id, face in
                    zip([f for f, _ in faces], _prepare(config, embedder, path, aligned, faces))]
        except BadImage as exc:
            why = f"{path} no longer decodes: {exc.reason}"
        except ValueError as exc:
            why = f"{path}: {exc}"
    run.photos_missing += 1
    if len(run.missing) < _EXAMPLES:
        run.missing.append({"image_id": image_id, "path": str(decode_path(row[0])) if row else None,
                            "why": why})
    log.warning("migrate: image %d: %s; its %d face(s) will be dropped", image_id, why, len(faces))
    return None


def _candidates(conn, image_id: int) -> list[Path]:
    """Where the photo may be now: where the placer put it, then where it arrived; then the
    same for the files recorded as its duplicates (same content)."""
    out: list[Path] = []
    for image in [image_id] + [r[0] for r in conn.execute(
            "SELECT id FROM images WHERE duplicate_of = ? ORDER BY id", (image_id,))]:
        out += [decode_path(r[0]) for r in conn.execute(
            "SELECT path FROM placements WHERE image_id = ? AND kind IN ('main', 'extra') "
            "ORDER BY kind = 'extra', id", (image,))]
        out += [decode_path(r[0]) for r in conn.execute("SELECT path FROM images WHERE id = ?",
                                                        (image,))]
    return list(dict.fromkeys(out))


def _find_file(candidates: list[Path], sha256: Optional[str]) -> tuple[Optional[Path], str]:
    """The first candidate holding the recorded content, or None and why."""
    changed = False
    for path in candidates:
        if not path.is_file():
            continue
        try:
            sha, _ = sha256_file(path)
        except BadImage:
            continue
        if sha256 is None or sha == sha256:
            return path, ""
        changed = True
    if changed:
        return None, "its file now holds other content (the boxes would not fit it)"
    return None, "its file is gone (" + ", ".join(str(p) for p in candidates[:3]) + ")"


def _aligned(config: Config, inbox: Path, faces: list[tuple[int, tuple]]) -> bool:
    """Was the photo one face crop at ingest (aligned mode)? Its inbox's mode says; for an inbox
    no longer in the config: one face whose box starts at the origin (the whole image)."""
    for box in config.inboxes:
        if box.path == inbox:
            return box.mode == "aligned"
    return len(faces) == 1 and tuple(faces[0][1][:2]) == (0.0, 0.0)


def _prepare(config: Config, embedder: Embedder, path: Path, aligned: bool,
             faces: list[tuple[int, tuple]]) -> list[Any]:
    """The model's input for each face, decoded and cut as it was made: an aligned photo's own
    face (its box the whole image, at the origin) as the pipeline's aligned mode does
    (``ingest.prepare.Preparer.request``/``_fill``); any other face, detected or drawn on the
    photo view, from the copy faces are cut from (``model_stage._detect``, ``web.drawing``)."""
    whole = [aligned and tuple(box[:2]) == (0.0, 0.0) for _, box in faces]
    out: list[Any] = [None] * len(faces)
    if any(whole):
        crop_size = getattr(embedder, "crop_size", None)
        if crop_size:
            rgb, _, _ = decode_request(path, "crop", crop_size)
            face = rgb
        else:
            rgb, _, _ = decode_request(path, "full", None)
            h, w = rgb.shape[:2]
            face = embedder.prepare(rgb, (0.0, 0.0, float(w), float(h)))
        out = [face if w_ else None for w_ in whole]
    if not all(whole):
        rgb, scale, _ = decode_request(path, "full", config.detector.crop_side())
        for k, (_, box) in enumerate(faces):
            if not whole[k]:
                out[k] = embedder.prepare(rgb, tuple(v / scale for v in box))
    return out


# -- who is who, before and after ----------------------------------------------------------------

def _people(conn) -> tuple[np.ndarray, np.ndarray, dict[int, Optional[str]]]:
    """(face ids, identity or -1) of the faces that count (not rejected), by id; identity -> name."""
    rows = conn.execute("SELECT id, COALESCE(identity_id, -1) FROM faces WHERE rejected = 0 "
                        "ORDER BY id").fetchall()
    arr = np.array(rows, np.int64).reshape(-1, 2)
    names = dict(conn.execute("SELECT id, name FROM identities WHERE merged_into IS NULL"))
    return arr[:, 0], arr[:, 1], names


def _compare(ids: np.ndarray, before: np.ndarray, after_ids: np.ndarray, after: np.ndarray,
             names: dict[int, Optional[str]]) -> dict:
    """The report's people: kept, changed (with counts), new, gone, and the unassigned faces.
    ``before``/``after``: identity per face (-1 none; in a prediction, <= -2 a new person);
    faces missing from ``after_ids`` were dropped (their photo is gone)."""
    present, rows = rows_of(after_ids, ids)
    now = np.full(len(ids), _DROPPED, np.int64)
    now[present] = after[rows[present]]
    changed, gone = [], []
    kept = unchanged = 0
    for who in np.unique(before[before >= 0]).tolist():
        was = before == who
        has = after == who
        lost = int((was & (now != who)).sum())
        gained = int(has.sum()) - int((was & (now == who)).sum())
        if not has.any():
            gone.append({"id": who, "name": names.get(who), "faces_before": int(was.sum())})
            continue
        kept += 1
        if lost or gained:
            changed.append({"id": who, "name": names.get(who), "faces_before": int(was.sum()),
                            "faces_after": int(has.sum()), "gained": gained, "lost": lost})
        else:
            unchanged += 1
    old = set(np.unique(before[before >= 0]).tolist())
    labels, counts = np.unique(after[after != -1], return_counts=True)
    fresh = [{"id": (int(x) if x >= 0 else None), "faces": int(c)}
             for x, c in zip(labels.tolist(), counts.tolist()) if x not in old]
    return {"people_before": len(old), "people_after": len(labels), "people_kept": kept,
            "people_unchanged": unchanged, "people_changed": changed, "people_new": fresh,
            "people_gone": gone, "unassigned_before": int((before == -1).sum()),
            "unassigned_after": int((after == -1).sum())}


_DROPPED = -(2 ** 62)    # a face whose photo was gone: in no identity, not unassigned either


def _predict(state: State, model_id: str) -> dict:
    """A dry run's after-state: the recluster the switch would run, computed in memory over the
    staged vectors (photos gone left out), under the same corrections and eps."""
    store = state.store
    ids, matrix = store.staged_vectors(model_id)
    with store.read() as conn:
        before_ids, before, names = _people(conn)
        constraints = load_constraints(conn)
        image_of = dict(conn.execute("SELECT id, image_id FROM faces WHERE rejected = 0"))
        staged = conn.execute("SELECT COUNT(*) FROM staged_vectors WHERE model_id = ? AND vector "
                              "IS NOT NULL", (model_id,)).fetchone()[0]
    present, rows = rows_of(before_ids, ids)
    prev = np.where(present, before[rows], -1)
    img = np.array([image_of[int(f)] for f in ids], np.int64)
    result = recluster(ids, matrix, img, state.identities.params, constraints, prev)
    out = _compare(before_ids, before, ids, result.identity, names)
    out["faces_reembedded"] = int(staged)
    return out


def _switch(state: State, embedder: Embedder, model_id: str, report: dict) -> dict:
    """The one transaction: new vectors in force, faces of gone photos dropped, recluster with the
    new eps, the report kept in meta 'last_migration' (all or nothing)."""
    store = state.store
    with store.read() as conn:
        before_ids, before, names = _people(conn)
    t0 = time.perf_counter()
    with store.switching_model(model_id, embedder.dim) as switched:
        result = state.identities.recluster(reason="facesortd migrate")
        with store.read() as conn:
            after_ids, after, names_after = _people(conn)
            report["faces_reembedded"] = conn.execute("SELECT COUNT(*) FROM faces").fetchone()[0]
        report.update(_compare(before_ids, before, after_ids, after, {**names, **names_after}))
        if report["faces_dropped"] != len(switched["faces_dropped"]):
            raise RuntimeError("the faces dropped changed while the store was switching")
        report["recluster"] = result.counts()
        report["note"] = _config_note(state.config, embedder, model_id)
        report["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        store.set_meta("last_migration", json.dumps(report, sort_keys=True))
    report["seconds_switching"] = round(time.perf_counter() - t0, 2)
    log.info("migrate: the store now holds vectors of %s (%d faces, %d people)", model_id,
             report["faces_reembedded"], report["people_after"])
    return report


def _config_note(config: Config, embedder: Embedder, model_id: str) -> str:
    """What the config needs so the daemon runs the new model (it refuses any other)."""
    name = embedder.name
    note = f"the daemon must now run {name}: embedder.name auto (it keeps the store's model) or {name}"
    if name == "facenet":
        weights = embedder.describe().get("weights")
        note += f", with embedder.weights pointing at {weights} (model {model_id})"
    if config.clustering.eps != "auto":
        note += (f"; clustering.eps is {config.clustering.eps} in the config, which was chosen "
                 f"for the old model: consider auto ({embedder.default_eps} for {name})")
    return note
