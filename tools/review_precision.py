"""How often the review queue's first faces are real mistakes, against faces drawn at random.

    facesortd eval DATASET_DIR... --keep RUN        # sort labelled photos, keep the store
    python tools/review_precision.py RUN DATASET_DIR... [--first 20] [--draws 10000] [--seed 0]

Issue 18's "Done when". A photo's label is its dataset folder (``faces/Paul_McCartney``) and it
is carried by the photo's largest face, as ``facesortd eval`` scores; other faces (bystanders) have
no label and are skipped. A person's label is the one most of its labelled faces carry; a labelled
face whose label is another is a *mistake*. The queue is read as ``GET /api/review`` serves it
(``web.queries.review``), page by page, until ``--first`` labelled faces; the random draws take
``--first`` labelled faces from the same pool (the faces the queue ranks: assigned, not confirmed,
people not hidden), ``--draws`` times. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np

from facesortd.bench.evaluate import inbox_labels
from facesortd.store.database import DB_NAME, decode_path
from facesortd.web import queries


def labelled_faces(conn, labels: dict[str, str]) -> dict[int, str]:
    """face id -> label of the largest face of each labelled photo (ties: the lower id)."""
    out: dict[int, str] = {}
    seen: set[int] = set()
    for image_id, path, face in conn.execute(
            "SELECT i.id, i.path, f.id FROM images i JOIN faces f ON f.image_id = i.id "
            "WHERE f.rejected = 0 ORDER BY i.id, (f.box_x2 - f.box_x1) * (f.box_y2 - f.box_y1) DESC, f.id"):
        if image_id in seen:
            continue
        seen.add(image_id)
        label = labels.get(decode_path(path).name)
        if label is not None:
            out[face] = label
    return out


def measure(run: Path, dataset_dirs: list[Path], first: int = 20, draws: int = 10_000,
            seed: int = 0) -> dict:
    conn = queries.connect(run / "state" / DB_NAME)
    try:
        label_of = labelled_faces(conn, inbox_labels(dataset_dirs))
        person_of = dict(conn.execute("SELECT id, identity_id FROM faces "
                                      "WHERE identity_id IS NOT NULL AND rejected = 0"))
        votes: dict[int, Counter] = {}
        for face, label in label_of.items():
            if face in person_of:
                votes.setdefault(person_of[face], Counter())[label] += 1
        truth = {person: c.most_common(1)[0][0] for person, c in votes.items()}
        mistake = {f: label_of[f] != truth[person_of[f]] for f in label_of if f in person_of}
        queue, skipped, page = [], 0, 1
        while len(queue) < first:
            body = queries.review(conn, page)
            for row in body["faces"]:
                if row["face_id"] in mistake:
                    queue.append(row["face_id"])
                else:
                    skipped += 1
            if not body["more"]:
                break
            page += 1
        pool = [r[0] for r in conn.execute(
            "SELECT d.face_id FROM face_doubt d JOIN faces f ON f.id = d.face_id "
            "JOIN identities i ON i.id = f.identity_id "
            "WHERE f.pinned = 0 AND f.rejected = 0 AND i.hidden = 0") if r[0] in mistake]
    finally:
        conn.close()
    head = queue[:first]
    wrong = np.array([mistake[f] for f in pool], bool)
    rng = np.random.default_rng(seed)
    k = min(first, len(pool))
    random_hits = np.array([wrong[rng.choice(len(pool), k, replace=False)].sum() for _ in range(draws)])
    queue_hits = sum(mistake[f] for f in head)
    random_share = float(random_hits.mean() / k) if k else 0.0
    queue_share = queue_hits / len(head) if head else 0.0
    return {
        "run": str(run), "first": len(head), "draws": draws,
        "pool_labelled_faces": len(pool), "pool_mistakes": int(wrong.sum()),
        "queue_mistakes": int(queue_hits), "queue_share": round(queue_share, 4),
        "random_mean_share": round(random_share, 4),
        "ratio": round(queue_share / random_share, 2) if random_share else None,
        "random_at_least_as_many": round(float((random_hits >= queue_hits).mean()), 5),
        "mistake_positions": [i + 1 for i, f in enumerate(head) if mistake[f]],
        "unlabelled_skipped": skipped,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="a folder kept by `facesortd eval --keep`")
    parser.add_argument("dataset", type=Path, nargs="+", help="the eval's DATASET_DIRs, in order")
    parser.add_argument("--first", type=int, default=20)
    parser.add_argument("--draws", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(json.dumps(measure(args.run, args.dataset, args.first, args.draws, args.seed), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
