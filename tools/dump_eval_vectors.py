"""Save the stored vectors of a kept ``facesortd eval --keep DIR`` run, with each photo's true label.

``python tools/dump_eval_vectors.py DIR DATASET_DIR... --out FILE.npz`` writes, per stored face (not
rejected): ``vectors`` (float16, as stored but half the size), ``image`` (an index per photo),
``largest`` (True for the photo's largest face, the one eval scores), and per photo ``person`` (an
index into ``people``, the ``<dataset>/<person>`` labels). ``tests/data/lfw_dev_dlib.npz`` is this
file for ``../shared/data/lfw_dev`` with the dlib embedder: real vectors for the identity tests,
which cannot embed 6,453 photos in the suite's time.
"""

from __future__ import annotations

import argparse
import sqlite3
from pathlib import Path

import numpy as np


def main() -> None:
    from facesortd.bench.evaluate import collect

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, help="the folder an `eval --keep` run kept")
    ap.add_argument("dataset", type=Path, nargs="+")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    photos = collect(args.dataset)
    # eval copies photo k of collect() to img{k:05d}{ext}
    label_of = {f"img{k:05d}{p.suffix.lower()}": label for k, (p, label) in enumerate(photos)}
    db = args.run / "state" / "facesortd.db"
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    rows = conn.execute(
        "SELECT i.path, f.vector, (f.box_x2 - f.box_x1) * (f.box_y2 - f.box_y1) AS area "
        "FROM images i JOIN faces f ON f.image_id = i.id WHERE f.rejected = 0 "
        "ORDER BY i.path, area DESC, f.id").fetchall()
    people = sorted(set(label_of.values()))
    index = {p: k for k, p in enumerate(people)}
    image_of: dict[str, int] = {}
    vectors, image, largest, person = [], [], [], []
    for path, blob, _ in rows:
        name = Path(path if isinstance(path, str) else path.decode()).name
        first = name not in image_of
        if first:
            image_of[name] = len(image_of)
            person.append(index[label_of[name]])
        vectors.append(np.frombuffer(blob, "<f4"))
        image.append(image_of[name])
        largest.append(first)
    np.savez_compressed(args.out, vectors=np.array(vectors, np.float16), image=np.array(image, np.int32),
                        largest=np.array(largest), person=np.array(person, np.int32),
                        people=np.array(people))
    print(f"{args.out}: {len(vectors)} faces of {len(image_of)} photos, {len(people)} people")


if __name__ == "__main__":
    main()
