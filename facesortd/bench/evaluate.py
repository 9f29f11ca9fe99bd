"""``facesortd eval DATASET_DIR...``: how well the real pipeline groups a labelled photo set.

Each DATASET_DIR holds one folder per person (``faces/Barack_Obama/*.jpg``); the true label of a
photo is ``<dataset>/<person>``. The photos are *copied* into the inbox of a temporary state dir
(the pipeline may set broken files aside; the dataset is never touched) under neutral names, the
real daemon runs (``run --once``: ingest, assign, recluster, place), and the result is scored with
``metrics.score`` twice: the store's identities, and the library folders the photos were put in.
``--stream`` instead feeds the files into a running daemon in random micro-batches (random order,
1..16 files, each batch ingested and assigned before the next) and scores the incremental result as
it stands, without a final recluster. ``--from-run DIR`` re-sorts the photos of an earlier
``--keep DIR`` run without embedding them again (``from_run``: its stored faces go through the real
identity service and placer), so other ``--eps`` values cost seconds instead of the embedding.

Scoring, per photo: the largest face found carries the photo's label; other faces (bystanders) are
clustered like any face but not scored; a photo without a face, or whose face is unassigned,
counts as a singleton (noise). In the library (``score_library``), a person folder is one cluster,
a photo in a special folder (``_unsorted``, ``_noface``...) or missing from the library is noise,
and a photo outside the folder of its largest face's identity is *misplaced*: the two scores then
disagree, which ``disagreement`` turns into the CLI's error. Public helpers (``ingest``,
``predictions``, ``rescore``) let tests ingest once and re-cluster the stored vectors at other eps
values.
"""

from __future__ import annotations

import logging
import os
import random
import re
import shutil
import sqlite3
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from itertools import groupby
from pathlib import Path
from typing import Iterable, Optional, Sequence, Union

import numpy as np

from facesortd.bench.metrics import bcubed, score
from facesortd.config import Config, load_config, parse_config
from facesortd.errors import FacesortdError
from facesortd.library.layout import identity_folders
from facesortd.people.clustering import ClusterParams
from facesortd.people.recluster import recluster
from facesortd.store.database import DB_NAME, ImageRow, Store, decode_path

__all__ = ["Ingested", "collect", "inbox_labels", "ingest", "from_run", "predictions", "rescore", "replay",
           "score_library", "disagreement", "evaluate", "agreement"]

log = logging.getLogger("facesortd.eval")

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"}


@dataclass(frozen=True)
class Ingested:
    """A finished eval run: its config (state dir) and the true label of each copied file name."""

    config: Config
    labels: dict[str, str]        # inbox file name -> "<dataset>/<person>"
    seconds: float


def collect(dataset_dirs: Sequence[Path]) -> list[tuple[Path, str]]:
    """(photo, label) for every image file one folder deep in each dataset dir."""
    out = []
    for root in map(Path, dataset_dirs):
        if not root.is_dir():
            raise FacesortdError(f"{root} is not a folder (expected one folder per person)")
        for person in sorted(p for p in root.iterdir() if p.is_dir()):
            for f in sorted(person.iterdir()):
                if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES:
                    out.append((f, f"{root.name}/{person.name}"))
    if not out:
        raise FacesortdError(f"no photos in person folders under {', '.join(map(str, dataset_dirs))}")
    return out


def _names(photos: list[tuple[Path, str]]) -> list[str]:
    """The neutral inbox name of each photo (its position in ``collect``'s order)."""
    return [f"img{k:05d}{path.suffix.lower()}" for k, (path, _) in enumerate(photos)]


def inbox_labels(dataset_dirs: Sequence[Path]) -> dict[str, str]:
    """The true label of each neutral inbox file name a run over ``dataset_dirs`` uses (a kept
    run's photos are named by their place in ``collect``'s order)."""
    photos = collect(dataset_dirs)
    return {name: label for name, (_, label) in zip(_names(photos), photos)}


def _config(root: Path, mode: str, embedder: str, stream: bool, eps: Optional[float],
            dlib_runtime: str = "torch") -> Config:
    (root / "inbox").mkdir(parents=True, exist_ok=True)
    # stream: no recluster at all, to score what incremental assignment alone reaches
    recluster = "  recluster_interval_s: 0\n  recluster_after_faces: 0\n" if stream else ""
    text = (f"state_dir: state\nlibrary: library\n"
            f"inboxes:\n  - path: inbox\n    mode: {mode}\n"
            "watch:\n  settle_ms: 100\n  rescan_interval_s: 0\n"
            f"embedder:\n  name: {embedder}\n  dlib_runtime: {dlib_runtime}\n"
            "  batch_size: 32\n  max_wait_ms: 50\n"
            f"clustering:\n  eps: {'auto' if eps is None else eps}\n{recluster}"
            "web:\n  enabled: false\nlog_level: warning\n")
    (root / "facesortd.yaml").write_text(text)
    return parse_config(text, root / "facesortd.yaml")


def ingest(dataset_dirs: Sequence[Path], root: Path, mode: str = "detect", embedder: str = "dlib",
           stream: bool = False, seed: int = 0, eps: Optional[float] = None,
           timeout: float = 1800, dlib_runtime: str = "torch") -> Ingested:
    """Copy the photos into ``root``/inbox and run the real daemon over them (see module doc)."""
    from facesortd.app.daemon import Daemon

    photos = collect(dataset_dirs)
    root = Path(root)
    config = _config(root, mode, embedder, stream, eps, dlib_runtime)
    names = _names(photos)
    labels = {name: label for name, (_, label) in zip(names, photos)}
    t0 = time.perf_counter()
    if not stream:
        for name, (path, _) in zip(names, photos):
            shutil.copyfile(path, root / "inbox" / name)
        Daemon(config).run_once(timeout=timeout)
        return Ingested(config, labels, time.perf_counter() - t0)
    rng = random.Random(seed)
    order = list(range(len(photos)))
    rng.shuffle(order)
    daemon = Daemon(config)
    daemon.open()
    try:
        daemon.start()
        deadline = time.monotonic() + timeout
        fed = 0
        while fed < len(order):
            batch = order[fed:fed + rng.randint(1, 16)]
            for k in batch:
                # write under a temp name and rename: the watcher takes the whole file at once
                tmp = root / "inbox" / (names[k] + ".part")
                shutil.copyfile(photos[k][0], tmp)
                tmp.rename(root / "inbox" / names[k])
            fed += len(batch)
            while _recorded(daemon.store) < fed:
                if time.monotonic() > deadline:
                    raise FacesortdError("eval --stream did not finish in time")
                time.sleep(0.05)
            daemon.pipeline.drain(timeout)
            daemon.identities.drain(timeout)
        # the running daemon's placer loop would follow each batch; placing once at the end
        # reaches the same library, which is what gets scored
        daemon.placer.sync()
    finally:
        daemon.close()
    return Ingested(config, labels, time.perf_counter() - t0)


def from_run(kept: Path, dataset_dirs: Sequence[Path], root: Path,
             eps: Optional[float] = None) -> Ingested:
    """Sort the photos of an earlier ``--keep`` run again into ``root`` without embedding them:
    each photo is hard-linked (else copied) from where the kept run left it into a new inbox, its
    stored faces (boxes, scores, vectors) are recorded in a new store micro-batch by micro-batch,
    in the order and batches the kept run's pipeline recorded them, and each batch goes through
    the real identity service (reclusters every ``recluster_after_faces`` faces, and once at the
    end as ``run --once`` does) before the real placer moves the files into a new library. Only
    ``eps`` differs from the kept run (``None``: the embedder's tuned default). The kept folder is
    only read (its store over a read-only connection)."""
    from facesortd.library.placer import Placer
    from facesortd.models.embedders import tuned_eps
    from facesortd.people.service import service_for

    kept = Path(kept)
    if not (kept / "facesortd.yaml").is_file() or not (kept / "state").is_dir():
        raise FacesortdError(f"--from-run {kept}: not a folder kept by `facesortd eval --keep` "
                             "(no facesortd.yaml and state/ in it)")
    old = load_config(kept / "facesortd.yaml")
    photos = collect(dataset_dirs)
    names = _names(photos)
    labels = {name: label for name, (_, label) in zip(names, photos)}
    source = dict(zip(names, (path for path, _ in photos)))
    model, dim, images, faces = _read_kept(kept, old.state_dir)
    _check_same_photos(kept, images, source)
    where = _files_by_name([old.library, *(i.path for i in old.inboxes)], set(labels))
    mode, embedder = old.inboxes[0].mode, old.embedder.name
    root = Path(root)
    config = _config(root, mode, embedder, stream=False, eps=eps)
    inbox = config.inboxes[0].path
    t0 = time.perf_counter()
    with Store.open(config.state_dir) as store:
        store.bind_model(model, dim)
        service = service_for(store, config.clustering, tuned_eps(model))
        service.start()
        try:
            new_id: dict[int, int] = {}     # kept image id -> its id here
            waiting: list = []              # duplicates whose original is not recorded yet
            # one pipeline micro-batch = the images one add_ingested call recorded (same time)
            for _, batch in groupby(images, key=lambda im: im.created_at):
                items, later = [], []
                for im in batch:
                    name = _file_name(im.path)
                    if name not in where:
                        log.warning("%s: not in the kept run's library or inbox; left out", name)
                        continue
                    path = inbox / name
                    _link_or_copy(where[name], path)
                    st = path.stat()
                    if im.status in ("done", "noface"):
                        items.append((im.id, (path, inbox, im.sha256, st.st_size, st.st_mtime_ns,
                                              faces.get(im.id, []))))
                    else:
                        later.append((im, path, st))
                face_ids: list[int] = []
                for (old_id, _), (image_id, ids) in zip(items, store.add_ingested([i for _, i in items])):
                    new_id[old_id] = image_id
                    face_ids += ids
                todo, waiting = waiting + later, []
                for im, path, st in todo:
                    if im.status == "duplicate" and im.duplicate_of not in new_id:
                        waiting.append((im, path, st))
                    else:
                        _record_other(store, config, im, path, st, new_id)
                service.submit(face_ids)    # as the pipeline hands each stored batch over
                service.drain()
            for _image, path, _stat in waiting:    # originals never recorded: ingested on their own
                log.warning("%s: a duplicate of a photo the kept run did not record", path.name)
            service.drain()
            service.recluster(reason="run --once")
        finally:
            service.stop()
        Placer(config, store).sync()
    return Ingested(config, labels, time.perf_counter() - t0)


def _read_kept(kept: Path, state_dir: Path) -> tuple[str, int, list[ImageRow], dict[int, list]]:
    """The kept run's model and vector size, images (oldest first) and faces by image, read over
    a read-only connection: its store is neither migrated nor written."""
    uri = (Path(state_dir) / DB_NAME).absolute().as_uri() + "?mode=ro"
    try:
        conn = sqlite3.connect(uri, uri=True)
    except sqlite3.Error as exc:
        raise FacesortdError(f"--from-run {kept}: cannot read its store: {exc}") from None
    try:
        meta = dict(conn.execute("SELECT key, value FROM meta WHERE key IN ('model_id', 'dim')"))
        images = [ImageRow(r[0], decode_path(r[1]), decode_path(r[2]), *r[3:]) for r in
                  conn.execute("SELECT id, path, inbox, sha256, size, mtime_ns, status, error, "
                               "created_at, updated_at, duplicate_of FROM images ORDER BY id")]
        faces: dict[int, list] = {}
        for row in conn.execute("SELECT image_id, box_x1, box_y1, box_x2, box_y2, score, vector "
                                "FROM faces WHERE rejected = 0 ORDER BY id"):
            faces.setdefault(row[0], []).append(
                (tuple(row[1:5]), row[5], np.frombuffer(row[6], "<f4")))
    except sqlite3.Error as exc:
        raise FacesortdError(f"--from-run {kept}: cannot read its store: {exc}") from None
    finally:
        conn.close()
    if "model_id" not in meta or "dim" not in meta:
        raise FacesortdError(f"--from-run {kept}: its store holds no faces")
    return meta["model_id"], int(meta["dim"]), images, faces


def _check_same_photos(kept: Path, images, source: dict[str, Path]) -> None:
    """The kept run must have sorted these very photos under these names (same datasets, same
    order): every photo it recorded has the dataset file's name and size, and none is missing."""
    recorded = {_file_name(im.path): im for im in images}
    wrong = [n for n, im in recorded.items()
             if n not in source or source[n].stat().st_size != im.size]
    missing = [n for n in source if n not in recorded]
    if wrong or missing:
        example = (wrong or missing)[0]
        raise FacesortdError(
            f"--from-run {kept}: its photos are not these datasets' ({len(wrong)} differ, e.g. "
            f"{example}{' = ' + str(source[example]) if example in source else ''}; "
            f"{len(missing)} never recorded): give the same DATASET_DIRs, in the same order, as "
            "the kept run")


def _files_by_name(folders: Iterable[Path], names: set[str]) -> dict[str, Path]:
    """Where each photo is now, by its neutral name, under the given folders."""
    out: dict[str, Path] = {}
    for folder in folders:
        for dirpath, dirnames, filenames in os.walk(folder):
            dirnames.sort()
            for f in sorted(filenames):
                if f in names:
                    out.setdefault(f, Path(dirpath) / f)
    return out


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:       # another file system, or links not allowed
        shutil.copy2(src, dst)


def _record_other(store: Store, config: Config, im, path: Path, st: os.stat_result,
                  new_id: dict[int, int]) -> None:
    """A duplicate or a broken photo of the kept run, recorded as the pipeline's ledger does."""
    inbox = config.inboxes[0].path
    if im.status == "duplicate":
        image_id = store.add_image(path, inbox, im.sha256, st.st_size, st.st_mtime_ns)
        store.mark_duplicate(image_id, new_id[im.duplicate_of])
        new_id[im.id] = image_id
        return
    # 'error' (set aside in the quarantine folder) or 'pending' (never finished): recorded as
    # broken and set aside; both are noise in either score
    store.record_error(path, inbox, None, st.st_size, st.st_mtime_ns, im.error or "not finished")
    where = config.library / config.placement.quarantine_dir
    where.mkdir(parents=True, exist_ok=True)
    path.rename(where / path.name)


def _recorded(store: Store) -> int:
    with store.read() as conn:
        return conn.execute("SELECT COUNT(*) FROM images WHERE status != 'pending'").fetchone()[0]


def _largest_faces(conn) -> dict[str, tuple[int, int]]:
    """File name -> (face id, identity or -1) of its largest face; duplicates take the original's."""
    rows = conn.execute(
        "SELECT i.path, f.id, COALESCE(f.identity_id, -1), "
        "(f.box_x2 - f.box_x1) * (f.box_y2 - f.box_y1) AS area "
        "FROM images i JOIN faces f ON f.image_id = COALESCE(i.duplicate_of, i.id) "
        "WHERE f.rejected = 0 ORDER BY i.path, area DESC, f.id").fetchall()   # as the placer
    out: dict[str, tuple[int, int]] = {}
    for path, face, identity, _ in rows:
        out.setdefault(_file_name(path), (face, identity))
    return out


def _file_name(path: Union[str, bytes, Path]) -> str:
    return Path(path if isinstance(path, (str, Path)) else path.decode(errors="replace")).name


def predictions(state_dir: Path, labels: dict[str, str],
                face_label: Optional[dict[int, int]] = None) -> tuple[list[str], np.ndarray]:
    """(true labels, predicted identity per photo) from the store; ``face_label`` overrides the
    stored identity of faces (a re-clustering)."""
    with Store.open(state_dir, load_vectors=False) as store, store.read() as conn:
        largest = _largest_faces(conn)
    names = sorted(labels)
    pred = np.full(len(names), -1, np.int64)
    for k, name in enumerate(names):
        if name in largest:
            face, identity = largest[name]
            pred[k] = face_label.get(face, -1) if face_label is not None else identity
    return [labels[n] for n in names], pred


def _specials(config: Config) -> tuple[str, ...]:
    pc = config.placement
    return (pc.unknown_dir, pc.noface_dir, pc.quarantine_dir, pc.group_dir, pc.duplicates_dir)


_VARIANT = re.compile(r"^(.*)_\d+(\.[^.]*)$")   # rename_new's img00012_1.jpg


def library_folders(library: Path, names: Iterable[str]) -> dict[str, list[str]]:
    """Photo name -> the library folders (first path part under the library, ``.`` for its root)
    holding it, as a user sees them; a rename_new variant counts as the photo."""
    wanted, out = set(names), {}
    for dirpath, dirnames, filenames in os.walk(library):
        dirnames.sort()
        rel = Path(dirpath).relative_to(library).parts
        for f in sorted(filenames):
            name = f if f in wanted else _VARIANT.sub(r"\1\2", f)
            if name in wanted:
                out.setdefault(name, []).append(rel[0] if rel else ".")
    return out


def expected_folders(config: Config, names: Iterable[str]) -> dict[str, Optional[str]]:
    """Photo name -> the library folder its store rows put it in under eval's placement (largest
    face; one folder per live identity, as ``placement_layout.identity_folders`` names them):
    the quarantine for a broken photo, ``_noface`` without a face, ``_unsorted`` for an unassigned
    face. None where no folder is right: never recorded, or a face on a merged identity."""
    pc = config.placement
    with Store.open(config.state_dir, load_vectors=False) as store, store.read() as conn:
        largest = _largest_faces(conn)
        status = {_file_name(path): st
                  for path, st in conn.execute("SELECT path, status FROM images")}
        people = conn.execute("SELECT id, name, merged_into FROM identities").fetchall()
    live = {i: name for i, name, into in people if into is None}
    folders = identity_folders(live, _specials(config))
    out: dict[str, Optional[str]] = {}
    for name in names:
        st = status.get(name, "missing")
        if st == "error":
            out[name] = pc.quarantine_dir
        elif st == "duplicate" and pc.on_conflict == "skip_identical":
            out[name] = pc.duplicates_dir
        elif st not in ("done", "noface", "duplicate"):
            out[name] = None
        elif name not in largest:
            out[name] = pc.noface_dir
        else:
            identity = largest[name][1]
            folder = folders.get(identity)
            out[name] = pc.unknown_dir if identity == -1 else folder.name if folder else None
    return out


def score_library(config: Config, labels: dict[str, str], examples: int = 5) -> dict:
    """Score the library folders as a user sees them (module doc) and compare each photo's folder
    with the one its store rows call for: ``{"library": figures, "misplaced_photos": n,
    "misplaced_examples": [...]}``."""
    names = sorted(labels)
    found = library_folders(config.library, names)
    expected = expected_folders(config, names)
    special = set(_specials(config)) | {"."}
    cluster: dict[str, int] = {}
    pred = np.full(len(names), -1, np.int64)
    misplaced, missing = [], []
    for k, name in enumerate(names):
        where = found.get(name)
        if not where:
            missing.append(name)
            continue
        if where[0] not in special:
            pred[k] = cluster.setdefault(where[0], len(cluster))
        wrong = [f for f in where if f != expected[name]]
        if wrong:
            misplaced.append({"photo": name, "folder": wrong[0], "expected": expected[name],
                              "label": labels[name]})
    figures = score([labels[n] for n in names], pred).as_dict()
    sizes = Counter(pred[pred != -1].tolist())
    return {
        "library": {
            "person_folders": len(cluster),
            "largest_folder": max(sizes.values(), default=0),
            "noise_fraction": round(figures["noise_fraction"], 4),
            **{k: round(v, 4) for k, v in figures.items() if k.startswith(("pairwise", "bcubed"))},
            "missing_photos": len(missing), "missing_examples": missing[:examples],
        },
        "misplaced_photos": len(misplaced),
        "misplaced_examples": misplaced[:examples],
    }


def disagreement(figures: dict) -> Optional[str]:
    """The CLI's error when the library is not what the store says (None when it is)."""
    lib, n, gone = figures["library"], figures["misplaced_photos"], figures["library"]["missing_photos"]
    if not n and not gone:
        return None
    said = []
    if n:
        said.append(f"{n} of {figures['photos']} photos sit outside their identity's folder (e.g. "
                    + "; ".join(f"{e['photo']} in {e['folder']}/, its identity's folder is "
                                f"{e['expected'] + '/' if e['expected'] else 'none'}"
                                for e in figures["misplaced_examples"][:3]) + ")")
    if gone:
        said.append(f"{gone} photos are missing from the library (e.g. "
                    f"{', '.join(lib['missing_examples'][:3])})")
    return ("the library folders disagree with the store: " + "; ".join(said)
            + f". BCubed F1: store {figures['bcubed_f1']}, folders {lib['bcubed_f1']}; "
            f"pairwise F1: store {figures['pairwise_f1']}, folders {lib['pairwise_f1']}")


def rescore(state_dir: Path, labels: dict[str, str], params: ClusterParams) -> dict:
    """Cluster the stored vectors from scratch with ``params`` (no ingest) and score it."""
    with Store.open(state_dir) as store:
        ids, matrix = store.vectors()
        with store.read() as conn:
            img = dict(conn.execute("SELECT id, image_id FROM faces WHERE rejected = 0"))
        res = recluster(ids, matrix, np.array([img[int(f)] for f in ids], np.int64), params)
    face_label = dict(zip(ids.tolist(), res.identity.tolist()))
    true, pred = predictions(state_dir, labels, face_label)
    return score(true, pred).as_dict()


def replay(state_dir: Path, dst_dir: Path, params: ClusterParams, seed: int = 0,
           max_batch: int = 16) -> dict[int, int]:
    """Stream the vectors of one store into a new one through the real identity service: images
    in random order, random micro-batches of 1..``max_batch`` images, each submitted to the
    service's thread like the pipeline does. Returns {face id in ``state_dir``: identity or -1}.
    (Arrival order without re-embedding: the embedder is deterministic, the order is what matters.)"""
    from facesortd.people.service import IdentityService

    with Store.open(state_dir, load_vectors=False) as src, src.read() as conn:
        model, dim = conn.execute("SELECT value FROM meta WHERE key = 'model_id'").fetchone()[0], \
            int(conn.execute("SELECT value FROM meta WHERE key = 'dim'").fetchone()[0])
        images = conn.execute("SELECT id, path, inbox, size, mtime_ns FROM images "
                              "WHERE status = 'done' ORDER BY id").fetchall()
        faces: dict[int, list] = {}
        for row in conn.execute("SELECT image_id, id, box_x1, box_y1, box_x2, box_y2, score, vector "
                                "FROM faces WHERE rejected = 0 ORDER BY id"):
            faces.setdefault(row[0], []).append(row[1:])
    rng = random.Random(seed)
    rng.shuffle(images)
    old_of: dict[int, int] = {}
    with Store.open(dst_dir) as dst:
        dst.bind_model(model, dim)
        service = IdentityService(dst, params)
        service.start()
        try:
            k = 0
            while k < len(images):
                n = rng.randint(1, max_batch)
                batch, k = images[k:k + n], k + n
                new_ids: list[int] = []
                for image_id, path, inbox, size, mtime in batch:
                    rows = faces.get(image_id, [])
                    new = dst.add_faces(dst.add_image(path, inbox, None, size, mtime), [
                        (tuple(r[1:5]), r[5], np.frombuffer(r[6], "<f4")) for r in rows])
                    old_of.update(zip(new, (r[0] for r in rows)))
                    new_ids += new
                service.submit(new_ids)
                service.drain()
        finally:
            service.stop()
        with dst.read() as conn:
            got = dict(conn.execute("SELECT id, COALESCE(identity_id, -1) FROM faces"))
    return {old_of[f]: lab for f, lab in got.items()}


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    """BCubed F1 between two groupings of the same photos (1.0 = the same partition); -1 (noise)
    is a singleton on both sides."""
    return bcubed([f"n{k}" if x == -1 else str(x) for k, x in enumerate(a)], b)[2]


def evaluate(dataset_dirs: Sequence[Path], mode: str = "detect", embedder: str = "dlib",
             stream: bool = False, seed: int = 0, eps: Optional[float] = None,
             keep: Optional[Path] = None, from_run_dir: Optional[Path] = None,
             dlib_runtime: str = "torch") -> dict:
    """Run (or, with ``from_run_dir``, re-sort a kept run), score and return the JSON figures of
    ``facesortd eval``: the store's at the top level, the library folders' under ``library``."""
    from facesortd.models.embedders import tuned_eps

    if from_run_dir is not None and stream:
        raise FacesortdError("--from-run replays the kept run's arrival order; --stream does not apply")
    tmp = None
    if keep is None:
        tmp = tempfile.mkdtemp(prefix="facesortd-eval-")
        root = Path(tmp)
    else:
        root = Path(keep)
        if root.exists() and any(root.iterdir()):
            raise FacesortdError(f"--keep {root}: the folder must be new or empty")
    try:
        if from_run_dir is not None:
            run = from_run(from_run_dir, dataset_dirs, root, eps=eps)
            mode, embedder = run.config.inboxes[0].mode, run.config.embedder.name
        else:
            run = ingest(dataset_dirs, root, mode, embedder, stream=stream, seed=seed, eps=eps,
                         dlib_runtime=dlib_runtime)
        true, pred = predictions(run.config.state_dir, run.labels)
        figures = score(true, pred).as_dict()
        library = score_library(run.config, run.labels)
        with Store.open(run.config.state_dir, load_vectors=False) as store:
            counts = store.counts()
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    default_eps = tuned_eps(run.config.embedder.name)
    return {
        "datasets": [str(d) for d in dataset_dirs], "mode": mode, "embedder": embedder,
        "dlib_runtime": run.config.embedder.dlib_runtime if embedder == "dlib" else None,
        "arrival": "stream" if stream else "batch", "seed": seed if stream else None,
        "eps": "auto" if eps is None else eps,
        "eps_used": ClusterParams.for_embedder(default_eps, run.config.clustering.eps).eps,
        "from_run": None if from_run_dir is None else str(from_run_dir),
        "photos": len(true), "faces": counts["faces"],
        "identities_found": figures["n_clusters"], "identities_true": figures["n_true"],
        "noise_fraction": round(figures["noise_fraction"], 4),
        **{k: round(v, 4) for k, v in figures.items()
           if k.startswith(("pairwise", "bcubed"))},
        "seconds": round(run.seconds, 1),
        **library,
    }
