"""``facesortd bench web``: how fast the review pages render over a big store (issue 5: the
overview and a person page under 300 ms with 100k faces).

It builds a real store in a temp state dir (the real schema; images and faces in bulk SQL, the
corrections through ``corrections``), then times each page and API route with Flask's test client:
the server side only (routing, the request's read-only SQLite connection, the queries, the template
or JSON), no network and no browser. Every response must be a 200 with the content the route
promises, so a broken page cannot produce a fast figure. A thumbnail is timed too, cut from a real
photo: the first request (decode, crop, cache write) and the cached hits.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional
from urllib.parse import quote

import numpy as np
from PIL import Image

from facesortd.config import parse_config
from facesortd.errors import FacesortdError
from facesortd.people import corrections
from facesortd.people.doubt import doubt, write_doubt
from facesortd.store.database import Store, encode_path
from facesortd.web import create_app, queries

__all__ = ["build_store", "bench_web", "default_photo", "TARGET_MS"]

TARGET_MS = 300.0
FIRST = ("Anna", "Ben", "Clara", "David", "Emma", "Felix", "Grace", "Hugo", "Ida", "Jonas",
         "Karin", "Leo", "Maria", "Nils", "Olga", "Paul", "Rosa", "Sven", "Tara", "Umar")
LAST = ("Berg", "Costa", "Dahl", "Eriksen", "Fischer", "Garcia", "Hansen", "Ito", "Jansen",
        "Kowalski", "Lund", "Moreau", "Novak", "Olsen", "Petrov", "Quinn", "Rossi", "Silva")


def _name(i: int) -> str:
    return f"{FIRST[i % len(FIRST)]} {LAST[(i // len(FIRST)) % len(LAST)]}" + \
        (f" {i // (len(FIRST) * len(LAST)) + 1}" if i >= len(FIRST) * len(LAST) else "")


def _sizes(rng: np.random.Generator, people: int, assigned: int) -> np.ndarray:
    """Long-tailed person sizes (Zipf, exponent 1: one person in thousands of photos, most in a
    handful), each at least 2 (min_samples), summing to ``assigned``."""
    weights = 1.0 / np.arange(1, people + 1)
    sizes = np.maximum(2, np.floor(weights / weights.sum() * assigned)).astype(np.int64)
    sizes[0] += assigned - sizes.sum()
    return sizes[rng.permutation(people)]


def build_store(state_dir: Path, inbox: Path, faces: int = 100_000, dim: int = 512,
                seed: int = 0) -> Store:
    """A store of ``faces`` faces over ~faces/40 people (long-tailed, some named), 10% unassigned,
    1% rejected, ~1.4 faces per photo, faces/320 open suggestions and a history of corrections."""
    if faces < 2000:
        raise FacesortdError("bench web needs at least 2000 faces")
    rng = np.random.default_rng(seed)
    store = Store.open(state_dir, load_vectors=False)
    store.bind_model(f"bench-{dim}d", dim)
    people = max(100, faces // 40)
    rejected, unassigned = faces // 100, faces // 10
    sizes = _sizes(rng, people, faces - rejected - unassigned)
    labels = np.concatenate([np.repeat(np.arange(people), sizes), np.full(unassigned, -1),
                             np.full(rejected, -2)])[rng.permutation(faces)]   # -2: rejected
    per_image = rng.choice([1, 2, 3], size=faces, p=[0.7, 0.2, 0.1])
    image_of = np.repeat(np.arange(faces), per_image)[:faces]   # image index of each face
    images = int(image_of[-1]) + 1
    now = time.time()
    with store.transaction() as conn:
        conn.executemany(
            "INSERT INTO images (id, path, inbox, sha256, size, mtime_ns, status, created_at, "
            "updated_at) VALUES (?, ?, ?, ?, ?, ?, 'done', ?, ?)",
            ((i + 1, encode_path(inbox / f"{2015 + i % 10}" / f"IMG_{i:07d}.jpg"),
              encode_path(inbox), f"{i:064x}", 3_000_000 + i, int(now * 1e9) - i, now, now)
             for i in range(images)))
        conn.executemany("INSERT INTO identities (id, name, created_at) VALUES (?, NULL, ?)",
                         ((i + 1, now) for i in range(people)))
        step = 8192
        for s in range(0, faces, step):
            block = rng.standard_normal((min(step, faces - s), dim), dtype=np.float32)
            block /= np.linalg.norm(block, axis=1, keepdims=True)
            x1, y1 = rng.uniform(0, 3600, len(block)), rng.uniform(0, 2600, len(block))
            side = rng.uniform(60, 400, len(block))
            conn.executemany(
                "INSERT INTO faces (image_id, box_x1, box_y1, box_x2, box_y2, score, vector, "
                "model_id, identity_id, rejected, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                ((int(image_of[s + k]) + 1, x1[k], y1[k], x1[k] + side[k], y1[k] + side[k],
                  0.95 + 0.05 * k / step, block[k].tobytes(), f"bench-{dim}d",
                  int(labels[s + k]) + 1 if labels[s + k] >= 0 else None, int(labels[s + k] == -2),
                  now) for k in range(len(block))))
        order = _people_by_size(conn)
        named = order[:30] + [i for i in order[30:] if rng.random() < 0.1]
        conn.executemany("UPDATE identities SET name = ? WHERE id = ?",
                         ((_name(k), ident) for k, ident in enumerate(named)))
        pairs = set()
        while len(pairs) < max(20, faces // 320):
            a, b = sorted(int(v) for v in rng.choice(order, 2, replace=False))
            pairs.add((a, b))
        conn.executemany("INSERT INTO suggestions (a, b, distance, status) "
                         "VALUES (?, ?, ?, 'open')",
                         ((a, b, float(rng.uniform(0.35, 0.7))) for a, b in sorted(pairs)))
    _corrections(store)
    return store


def _doubt(store: Store) -> float:
    """The review queue's scores of every assigned face, computed as a recluster does
    (``people.doubt`` over the whole matrix); hides a few people. Returns the seconds taken."""
    t = time.perf_counter()
    ids, matrix = store.vectors()
    with store.read() as conn:
        of = dict(conn.execute("SELECT id, identity_id FROM faces WHERE identity_id IS NOT NULL "
                               "AND rejected = 0"))
    ident = np.array([of.get(int(f), -1) for f in ids], np.int64)
    rows, score, cand = doubt(matrix, ident, eps=0.9)
    with store.transaction() as conn:
        write_doubt(conn, ids[rows], score, cand, replace_all=True)
    seconds = time.perf_counter() - t
    with store.read() as conn:
        order = _people_by_size(conn)
    for k in range(10):
        corrections.hide(store, order[-1 - 3 * k])
    return seconds


def _people_by_size(conn: sqlite3.Connection) -> list[int]:
    return [r[0] for r in conn.execute(
        "SELECT f.identity_id FROM faces f JOIN identities i ON i.id = f.identity_id WHERE "
        "f.rejected = 0 AND i.merged_into IS NULL AND i.hidden = 0 GROUP BY f.identity_id "
        "ORDER BY COUNT(*) DESC, "
        "f.identity_id")]


def _corrections(store: Store) -> None:
    """76 corrections of every kind through the shared operations (so history rows are real),
    including one merge into the largest person (a big undo payload), and two undone."""
    with store.read() as conn:
        order = _people_by_size(conn)
        loose = [r[0] for r in conn.execute("SELECT id FROM faces WHERE identity_id IS NULL AND "
                                            "rejected = 0 ORDER BY id LIMIT 200")]
        sugg = [r[0] for r in conn.execute("SELECT id FROM suggestions ORDER BY id")]

    def members(ident: int, n: int) -> list[int]:
        with store.read() as conn:
            return [r[0] for r in conn.execute("SELECT id FROM faces WHERE identity_id = ? AND "
                                               "rejected = 0 ORDER BY id LIMIT ?", (ident, n))]

    # each kind of correction on its own ranks of people (all exist: there are at least 100)
    corrections.merge(store, order[20], order[0])
    for k in range(20):
        corrections.rename(store, order[50 + k], _name(1000 + k))
    for k in range(10):
        corrections.merge(store, order[70 + 2 * k], order[71 + 2 * k])
        corrections.move_faces(store, loose[5 * k:5 * k + 5], order[1 + k])
        corrections.not_this_person(store, members(order[30 + k], 2))
        corrections.dismiss_suggestion(store, sugg[k])
    for k in range(5):
        corrections.split(store, order[40 + k], members(order[40 + k], 3))
        corrections.reject(store, loose[100 + 3 * k:103 + 3 * k])
        corrections.move_faces(store, loose[150 + 2 * k:152 + 2 * k], "new")
    corrections.undo(store, last=2)


def default_photo() -> Optional[Path]:
    """The largest photo in the shared test data (``$FACESORTD_DATA``, else ``../shared/data``)."""
    repo = Path(__file__).resolve().parents[2]
    root = Path(os.environ.get("FACESORTD_DATA", repo.parent / "shared" / "data"))
    photos = sorted((root / "faces").glob("*/*.jpg"))
    if not photos:
        return None
    return max(photos, key=lambda p: (p.stat().st_size, str(p)))


def _point_at_photo(store: Store, face_id: int, photo: Path, inbox: Path) -> tuple[int, int]:
    """Copy ``photo`` into the inbox and make it the file of ``face_id``'s image, the face box
    being the centre third of the photo. Returns the photo's size."""
    inbox.mkdir(parents=True, exist_ok=True)
    copy = inbox / f"bench_photo{photo.suffix.lower()}"
    shutil.copyfile(photo, copy)
    with Image.open(copy) as im:
        w, h = im.size
    side = min(w, h) / 3
    with store.transaction() as conn:
        conn.execute("UPDATE images SET path = ? WHERE id = "
                     "(SELECT image_id FROM faces WHERE id = ?)", (encode_path(copy), face_id))
        conn.execute("UPDATE faces SET box_x1 = ?, box_y1 = ?, box_x2 = ?, box_y2 = ? WHERE id = ?",
                     ((w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2, face_id))
    return w, h


def _ms(times: list[float]) -> dict:
    a = np.asarray(times) * 1000
    return {"median_ms": round(float(np.median(a)), 2),
            "p95_ms": round(float(np.percentile(a, 95)), 2),
            "min_ms": round(float(a.min()), 2), "max_ms": round(float(a.max()), 2)}


def _get(client, url: str, check: Callable) -> tuple[float, int]:
    """(seconds, bytes) of one GET; raises unless it is a 200 with what the route promises."""
    t = time.perf_counter()
    response = client.get(url)
    seconds = time.perf_counter() - t
    body = response.get_data()
    if response.status_code != 200 or not body or not check(response):
        raise FacesortdError(f"bench web: GET {url} gave {response.status_code}, "
                             f"{len(body)} bytes: {body[:200]!r}")
    return seconds, len(body)


def _html(marker: bytes) -> Callable:
    return lambda r: (r.mimetype == "text/html" and marker in r.get_data()
                      and b"</html>" in r.get_data())


def _routes(info: dict) -> dict[str, tuple[str, Callable]]:
    big, last_faces = info["largest_identity"]["id"], info["largest_pages"]
    last_people = info["people_pages"]
    thumbs = _html(b"/thumb/")
    full = max(1, min(info["review_queue"], queries.REVIEW_MAX) // queries.REVIEW_PER_PAGE)
    mid = max(1, full // 2)
    return {
        "GET /": ("/", thumbs),
        "GET /?page=<last>": (f"/?page={last_people}", thumbs),
        "GET /?q=<a name>": (f"/?q={quote(info['search'])}", _html(b'class="person-card"')),
        "GET /people/<largest>": (f"/people/{big}", thumbs),
        "GET /people/<largest>?page=<last>": (f"/people/{big}?page={last_faces}", thumbs),
        "GET /unassigned": ("/unassigned", thumbs),
        "GET /suggestions": ("/suggestions", _html(b"data-suggestion=")),
        "GET /history": ("/history", _html(b"moved faces")),
        "GET /api/identities": ("/api/identities", lambda r: len(
            r.get_json()["identities"]) == queries.PEOPLE_PER_PAGE),
        "GET /api/identities/<largest>": (f"/api/identities/{big}", lambda r: len(
            r.get_json()["faces"]) == queries.FACES_PER_PAGE),
        "GET /?sort=name": ("/?sort=name", thumbs),
        "GET /?sort=doubt": ("/?sort=doubt", thumbs),
        "GET /people/<largest>?order=date": (f"/people/{big}?order=date", thumbs),
        "GET /review": ("/review", _html(b'class="review-row"')),
        "GET /review?page=<middle>": (f"/review?page={mid}", _html(b'class="review-row"')),
        "GET /api/review": ("/api/review", lambda r: len(
            r.get_json()["faces"]) == queries.REVIEW_PER_PAGE),
        "GET /api/review?page=<last full>": (f"/api/review?page={full}", lambda r: len(
            r.get_json()["faces"]) == queries.REVIEW_PER_PAGE),
        "GET /hidden": ("/hidden", _html(b'data-action="unhide"')),
        "GET /photo/<id>": (f"/photo/{info['photo_image']}", _html(b'class="face box')),
        "GET /api/images/<id>": (f"/api/images/{info['photo_image']}",
                                 lambda r: len(r.get_json()["faces"]) >= 1),
    }


def _describe(store: Store) -> dict:
    with store.read() as conn:
        one = lambda sql: conn.execute(sql).fetchone()[0]  # noqa: E731
        order = _people_by_size(conn)
        big = conn.execute("SELECT COUNT(*) FROM faces WHERE identity_id = ? AND rejected = 0",
                           (order[0],)).fetchone()[0]
        # a last name, as a person would search it: several people match
        search = conn.execute("SELECT name FROM identities WHERE id = ?",
                              (order[0],)).fetchone()[0].split()[-1]
        return {"faces": one("SELECT COUNT(*) FROM faces"),
                "images": one("SELECT COUNT(*) FROM images"),
                "people": len(order), "identity_rows": one("SELECT COUNT(*) FROM identities"),
                "named": one("SELECT COUNT(*) FROM identities WHERE name IS NOT NULL "
                             "AND merged_into IS NULL"),
                "unassigned_faces": one("SELECT COUNT(*) FROM faces WHERE identity_id IS NULL "
                                        "AND rejected = 0"),
                "rejected_faces": one("SELECT COUNT(*) FROM faces WHERE rejected = 1"),
                "open_suggestions": one("SELECT COUNT(*) FROM suggestions WHERE status = 'open'"),
                "history_rows": one("SELECT COUNT(*) FROM history"),
                "review_queue": one("SELECT COUNT(*) FROM face_doubt d JOIN faces f ON f.id = "
                                    "d.face_id JOIN identities i ON i.id = f.identity_id WHERE "
                                    "f.pinned = 0 AND f.rejected = 0 AND i.hidden = 0"),
                "hidden": one("SELECT COUNT(*) FROM identities WHERE hidden = 1"),
                "largest_identity": {"id": order[0], "faces": big},
                "people_pages": -(-len(order) // queries.PEOPLE_PER_PAGE),
                "largest_pages": -(-big // queries.FACES_PER_PAGE), "search": search}


def bench_web(faces: int = 100_000, repeats: int = 20, dim: int = 512, seed: int = 0,
              photo: Optional[Path] = None, keep: Optional[Path] = None) -> dict:
    """Build the store, time every route ``repeats`` times after one warm-up, and the thumbnail."""
    photo = photo or default_photo()
    if photo is None or not photo.is_file():
        raise FacesortdError("bench web: no photo for the thumbnail; pass --photo FILE")
    tmp = tempfile.TemporaryDirectory(prefix="facesortd-bench-web-") if keep is None else None
    root = Path(tmp.name) if tmp else keep
    if keep is not None and (keep / "state").exists():
        raise FacesortdError(f"bench web: {keep / 'state'} exists; --keep needs a new folder")
    try:
        root.mkdir(parents=True, exist_ok=True)
        config = parse_config("web:\n  enabled: true\n", root / "facesortd.yaml")
        t = time.perf_counter()
        store = build_store(config.state_dir, config.inboxes[0].path, faces, dim, seed)
        build_s = time.perf_counter() - t
        doubt_s = round(_doubt(store), 2)
        try:
            info = _describe(store)
            # the photo view and the thumbnail need a real file: one face's image points at one
            with store.read() as conn:
                face_id = conn.execute("SELECT MIN(id) FROM faces WHERE identity_id = ? AND "
                                       "rejected = 0", (info["largest_identity"]["id"],)).fetchone()[0]
                info["photo_image"] = conn.execute("SELECT image_id FROM faces WHERE id = ?",
                                                   (face_id,)).fetchone()[0]
            info["photo_px"] = list(_point_at_photo(store, face_id, photo, config.inboxes[0].path))
            app = create_app(config, store)
            client = app.test_client()
            routes = {}
            for label, (url, check) in _routes(info).items():
                _get(client, url, check)   # warm-up: templates compiled, OS file cache warm
                runs = [_get(client, url, check) for _ in range(repeats)]
                stats = _ms([s for s, _ in runs])
                routes[label] = {"url": url, **stats, "bytes": runs[-1][1],
                                 "under_target": stats["median_ms"] < TARGET_MS}
            thumb = _bench_thumb(client, store, face_id, photo, info["photo_px"], repeats)
        finally:
            store.close()
        return {"method": "Flask test client (app.test_client()): server-side render only, a "
                          "new read-only SQLite connection per request as served; no network, "
                          "no browser",
                "target_ms": TARGET_MS, "repeats": repeats, "dim": dim, "model_id": f"bench-{dim}d",
                "store_build_s": round(build_s, 2),
                "doubt_scores_s": doubt_s,
                "db_mib": round((config.state_dir / "facesortd.db").stat().st_size / 2 ** 20, 1),
                "sqlite": sqlite3.sqlite_version,
                "store": info,
                "routes": routes,
                "all_under_target": all(r["under_target"] for r in routes.values()),
                "thumbnail": thumb}
    finally:
        if tmp:
            tmp.cleanup()


def _bench_thumb(client, store: Store, face_id: int, photo: Path, size: list, repeats: int) -> dict:
    """The first request of a thumbnail (decode, crop, cache write), again with the cache file
    removed each time, and the cached hits."""
    url = f"/thumb/{face_id}.jpg"
    is_jpeg = lambda r: r.mimetype == "image/jpeg" and r.get_data()[:2] == b"\xff\xd8"  # noqa: E731
    cached = Path(store.path).parent / "thumbs" / f"{face_id // 1000:04d}" / f"{face_id}.jpg"
    first, nbytes = _get(client, url, is_jpeg)
    misses = []
    for _ in range(max(1, repeats // 2)):
        cached.unlink()
        misses.append(_get(client, url, is_jpeg)[0])
    hits = [_get(client, url, is_jpeg)[0] for _ in range(repeats)]
    return {"url": url, "photo": photo.name, "photo_px": list(size), "thumb_bytes": nbytes,
            "first_miss_ms": round(first * 1000, 2),
            "miss": _ms(misses), "hit": _ms(hits)}
