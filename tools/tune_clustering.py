"""Tune and check clustering on real photos: dlib descriptors of ``faces/`` + ``faces_singletons/``.

Run ``python tools/tune_clustering.py [DATA_DIR]``. It computes (once; cached in
/tmp/facesortd_dlib_vectors.npz) a dlib descriptor for *every* face the HOG detector finds, then
prints an eps sweep of BCubed F1 for plain DBSCAN (largest face per image, as in
``dlib_reference_dev.txt``) and for ``facesortd.people.recluster.recluster`` (every face stored, as the
daemon does), with raw and L2-normalised vectors, plus a streaming-vs-batch figure.

Scoring: the largest face of each image carries the folder label; the other faces of an image are
bystanders, clustered like any face but left out of the scores. Images without a face count as
singletons, like DBSCAN noise and unassigned faces.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CACHE = Path("/tmp/facesortd_dlib_vectors.npz")
SETS = ("faces", "faces_singletons")


@dataclass(frozen=True)
class DlibFaces:
    """Every detected face: vectors [F,128] as dlib returns them, the image index, the box area."""

    vectors: np.ndarray
    image_index: np.ndarray      # int64[F], index into ``paths``
    area: np.ndarray             # int64[F]
    paths: tuple[str, ...]       # one per image, relative to the data dir
    labels: tuple[str, ...]      # one per image: "<set>/<Person_Name>"

    @property
    def largest(self) -> np.ndarray:
        """Indices of the largest face of each image that has one."""
        order = np.lexsort((-self.area, self.image_index))
        first = np.r_[True, np.diff(self.image_index[order]) != 0]
        return order[first]


def _model_path(name: str) -> str:
    # face_recognition_models imports pkg_resources, which recent setuptools dropped: find the
    # package's files without importing it.
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("pip install face_recognition_models dlib-bin")
    return str(Path(list(spec.submodule_search_locations)[0]) / "models" / name)


def compute(data_dir: Path) -> DlibFaces:
    import dlib
    from PIL import Image

    detector = dlib.get_frontal_face_detector()
    shaper = dlib.shape_predictor(_model_path("shape_predictor_5_face_landmarks.dat"))
    net = dlib.face_recognition_model_v1(_model_path("dlib_face_recognition_resnet_model_v1.dat"))
    paths, labels, vecs, img_idx, areas = [], [], [], [], []
    for set_name in SETS:
        for person in sorted(p for p in (data_dir / set_name).iterdir() if p.is_dir()):
            for f in sorted(person.iterdir()):
                if f.suffix.lower() not in (".jpg", ".jpeg", ".png"):
                    continue
                img = np.asarray(Image.open(f).convert("RGB"))
                i = len(paths)
                paths.append(str(f.relative_to(data_dir)))
                labels.append(f"{set_name}/{person.name}")
                for rect in detector(img, 1):
                    shape = shaper(img, rect)
                    vecs.append(np.asarray(net.compute_face_descriptor(img, shape, 0), np.float32))
                    img_idx.append(i)
                    areas.append(rect.width() * rect.height())
    return DlibFaces(np.stack(vecs), np.asarray(img_idx, np.int64), np.asarray(areas, np.int64),
                     tuple(paths), tuple(labels))


def load(data_dir: Path, cache: Path = CACHE) -> DlibFaces:
    """Descriptors from the cache when it was made from the same file list, else computed."""
    if cache.exists():
        z = np.load(cache, allow_pickle=False)
        faces = DlibFaces(z["vectors"], z["image_index"], z["area"],
                          tuple(z["paths"].tolist()), tuple(z["labels"].tolist()))
        listed = sorted(str(p.relative_to(data_dir)) for s in SETS for p in (data_dir / s).glob("*/*"))
        if sorted(faces.paths) == [p for p in listed if Path(p).suffix.lower() in (".jpg", ".jpeg", ".png")]:
            return faces
    faces = compute(data_dir)
    tmp = cache.with_suffix(".tmp.npz")
    np.savez(tmp, vectors=faces.vectors, image_index=faces.image_index, area=faces.area,
             paths=np.asarray(faces.paths), labels=np.asarray(faces.labels))
    tmp.replace(cache)
    return faces


def vectors(faces: DlibFaces, normalised: bool) -> np.ndarray:
    x = faces.vectors.astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True) if normalised else x


def score_largest(faces: DlibFaces, face_labels: np.ndarray) -> tuple[float, float, float]:
    """BCubed (P, R, F1) over images: the label of each image's largest face, -1 without a face."""
    from facesortd.bench.metrics import bcubed

    pred = np.full(len(faces.paths), -1, np.int64)
    largest = faces.largest
    pred[faces.image_index[largest]] = face_labels[largest]
    return bcubed(list(faces.labels), pred)


def plain_dbscan(faces: DlibFaces, eps: float, normalised: bool = False, min_samples: int = 2) -> np.ndarray:
    """The reference: scikit-learn DBSCAN over the largest face of each image only."""
    from sklearn.cluster import DBSCAN

    largest = faces.largest
    labels = np.full(len(faces.vectors), -1, np.int64)
    labels[largest] = DBSCAN(eps=eps, min_samples=min_samples).fit_predict(vectors(faces, normalised)[largest])
    return labels


def ours(faces: DlibFaces, eps: float, normalised: bool = False, min_samples: int = 2) -> np.ndarray:
    """facesortd's recluster over every detected face (bystanders included)."""
    from facesortd.people.clustering import TUNED_EPS, ClusterParams
    from facesortd.people.recluster import recluster

    default = TUNED_EPS["dlib-normalised" if normalised else "dlib"]
    params = ClusterParams.for_embedder(default, eps, min_samples)
    return recluster(np.arange(len(faces.vectors)), vectors(faces, normalised), faces.image_index,
                     params).identity


def sweep(faces: DlibFaces, normalised: bool = False,
          deltas=(-0.15, -0.10, -0.05, 0.0, 0.05, 0.10, 0.15)) -> dict[str, dict[float, float]]:
    """BCubed F1 of plain DBSCAN and of ours at default eps + each delta."""
    from facesortd.people.clustering import TUNED_EPS

    default = TUNED_EPS["dlib-normalised" if normalised else "dlib"]
    out: dict[str, dict[float, float]] = {"plain": {}, "ours": {}}
    for delta in deltas:
        eps = round(default + delta, 4)
        out["plain"][delta] = score_largest(faces, plain_dbscan(faces, eps, normalised))[2]
        out["ours"][delta] = score_largest(faces, ours(faces, eps, normalised))[2]
    return out


def stream_vs_batch(faces: DlibFaces, seed: int = 0, normalised: bool = False,
                    max_batch_images: int = 16) -> tuple[float, float, float]:
    """Photos arrive in random order, in random micro-batches of 1..max_batch_images images.

    Returns (BCubed F1 of the streamed grouping against the batch one, streamed F1, batch F1).
    """
    from facesortd.bench.metrics import bcubed
    from facesortd.people.assign import FaceIndex, assign_incremental
    from facesortd.people.clustering import TUNED_EPS, ClusterParams
    from facesortd.people.recluster import recluster

    x = vectors(faces, normalised)
    params = ClusterParams.for_embedder(TUNED_EPS["dlib-normalised" if normalised else "dlib"])
    n = len(x)
    batch = recluster(np.arange(n), x, faces.image_index, params).identity
    rng = np.random.default_rng(seed)
    images = rng.permutation(len(faces.paths))
    index, next_id, pos = FaceIndex.empty(x.shape[1]), 0, 0
    while pos < len(images):
        k = int(rng.integers(1, max_batch_images + 1))
        rows = np.flatnonzero(np.isin(faces.image_index, images[pos:pos + k]))
        pos += k
        if len(rows):
            res = assign_incremental(index, rows, x[rows], faces.image_index[rows], params)
            index, new_of = index.apply(res, x[rows], faces.image_index[rows], next_id)
            next_id += len(new_of)
    stream = np.full(n, -1, np.int64)
    stream[index.ids] = index.identity
    truth = [f"c{b}" if b != -1 else f"noise{i}" for i, b in enumerate(batch)]
    agree = bcubed(truth, stream)[2]
    return agree, score_largest(faces, stream)[2], score_largest(faces, batch)[2]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data_dir", nargs="?", type=Path,
                        default=Path(__file__).resolve().parents[2] / "shared" / "data")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from facesortd.people.clustering import TUNED_EPS

    t0 = time.perf_counter()
    faces = load(args.data_dir)
    print(f"{len(faces.paths)} images, {len(faces.vectors)} faces "
          f"({len(faces.largest)} images with a face) in {time.perf_counter() - t0:.1f} s")
    norms = np.linalg.norm(faces.vectors, axis=1)
    print(f"dlib vector norms: min {norms.min():.3f} median {np.median(norms):.3f} max {norms.max():.3f}")
    for normalised in (False, True):
        default = TUNED_EPS["dlib-normalised" if normalised else "dlib"]
        table = sweep(faces, normalised)
        print(f"\n{'L2-normalised' if normalised else 'raw'} vectors, default eps {default} "
              "(BCubed F1; plain = DBSCAN on the largest face; ours = recluster on every face)")
        print("   eps   plain    ours")
        for delta in table["plain"]:
            print(f"  {default + delta:.2f}  {table['plain'][delta]:.3f}  {table['ours'][delta]:.3f}")
        for seed in (0, 1, 2):
            agree, s_f1, b_f1 = stream_vs_batch(faces, seed, normalised)
            print(f"  streaming vs batch (seed {seed}): agreement BCubed F1 {agree:.3f}; "
                  f"streamed {s_f1:.3f}, batch {b_f1:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
