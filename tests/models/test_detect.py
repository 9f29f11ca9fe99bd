"""MTCNN on real photos: several faces, no faces, mixed sizes in one batch, original coordinates."""

from __future__ import annotations

import numpy as np
import pytest

from facesortd.config import DetectorConfig
from facesortd.ingest.imageio import decode
from facesortd.models.detect import Detection, FaceDetector

# Looked at by eye: every scene except john1.jpeg shows at least two people facing the camera.
ONE_FACE_SCENES = {"john1.jpeg"}


@pytest.fixture(scope="module")
def detector() -> FaceDetector:
    det = FaceDetector(DetectorConfig(min_probability=0.95, min_face_px=20))
    det.load()
    return det


@pytest.fixture(scope="module")
def scenes(data_dir):
    paths = sorted((data_dir / "scenes").iterdir())
    return {p.name: decode(p, max_side=640) for p in paths}


@pytest.fixture(scope="module")
def scene_faces(detector, scenes):
    """All scenes, of six different sizes, through one ``detect`` call."""
    decoded = list(scenes.values())
    found = detector.detect([d.rgb for d in decoded], [d.scale for d in decoded])
    return dict(zip(scenes, found))


def iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    area = lambda r: (r[2] - r[0]) * (r[3] - r[1])  # noqa: E731
    return inter / (area(a) + area(b) - inter)


def assert_same_faces(got: list[Detection], want: list[Detection], min_iou: float = 0.8):
    assert len(got) == len(want), (got, want)
    for w in want:
        best = max(got, key=lambda g: iou(g.box, w.box))
        assert iou(best.box, w.box) >= min_iou, (best, w)
        assert best.score == pytest.approx(w.score, abs=0.01)


def test_scenes_with_several_people_give_several_faces(scenes, scene_faces):
    assert len({d.rgb.shape for d in scenes.values()}) >= 5  # really a mixed batch
    for name, faces in scene_faces.items():
        if name in ONE_FACE_SCENES:
            assert len(faces) == 1, name
        else:
            assert len(faces) >= 2, (name, faces)
    assert len(scene_faces["obama_and_biden.jpg"]) >= 2
    assert len(scene_faces["bald_guys.jpg"]) >= 15  # a wall of faces


def test_boxes_are_in_original_pixels_inside_the_image_best_first(scenes, scene_faces):
    for name, faces in scene_faces.items():
        w, h = scenes[name].original_size
        for f in faces:
            x1, y1, x2, y2 = f.box
            assert 0 <= x1 < x2 <= w + 1e-6 and 0 <= y1 < y2 <= h + 1e-6, (name, f)
            assert 0.95 <= f.score <= 1.0
        assert [f.score for f in faces] == sorted((f.score for f in faces), reverse=True)
    # obama_and_biden.jpg is 2000 px wide, decoded at 640: its faces lie beyond x = 640.
    assert scenes["obama_and_biden.jpg"].scale == pytest.approx(3.125)
    assert max(f.box[2] for f in scene_faces["obama_and_biden.jpg"]) > 1000


def test_animals_and_objects_give_no_face(detector, data_dir):
    default = FaceDetector()  # min_face_px 40, min_probability 0.95: the shipped settings
    default._mtcnn = detector._mtcnn  # share the loaded networks
    decoded = [decode(p, max_side=640) for p in sorted((data_dir / "nonfaces").iterdir())]
    found = default.detect([d.rgb for d in decoded], [d.scale for d in decoded])
    assert found == [[] for _ in decoded]  # MTCNN returns none of these even at probability 0.95


def test_padded_batch_matches_each_image_alone(detector, scenes):
    names = ["2008_001322.jpg", "2009_004587.jpg", "kit_with_rose.jpg"]  # 3 shapes, 7 faces
    one_bucket = FaceDetector(detector.config, bucket_px=4096)  # pad all three to one shape
    one_bucket._mtcnn = detector._mtcnn
    padded = one_bucket.detect([scenes[n].rgb for n in names], [scenes[n].scale for n in names])
    for name, faces in zip(names, padded):
        alone = detector.detect([scenes[name].rgb], [scenes[name].scale])[0]
        assert len(alone) >= 2
        assert_same_faces(faces, alone)


def test_downscaled_copy_maps_back_to_full_size_boxes(detector, data_dir):
    path = data_dir / "faces" / "Barack_Obama" / "obama.jpg"  # 910 x 1137
    full = decode(path)
    half = decode(path, max_side=(max(full.original_size) + 1) // 2)
    assert half.scale == pytest.approx(2.0, rel=0.01)
    big = FaceDetector(DetectorConfig(min_face_px=150))  # the face is ~250 px: fewer levels
    big._mtcnn = detector._mtcnn
    on_full = big.detect([full.rgb])[0]
    on_half = big.detect([half.rgb], [half.scale])[0]
    assert len(on_full) == len(on_half) == 1
    assert np.allclose(on_half[0].box, on_full[0].box, atol=6 * half.scale)
    assert iou(on_half[0].box, on_full[0].box) > 0.9
    back = on_half[0].scaled(1 / half.scale)  # into the pixels of the decoded copy
    assert back.box[2] <= half.rgb.shape[1] and back.box[3] <= half.rgb.shape[0]


def test_min_face_px_counts_original_pixels(detector, scenes, scene_faces):
    crowd = scenes["2007_007763.jpg"]  # seven faces, 25 to 40 px wide
    all_faces = scene_faces["2007_007763.jpg"]
    assert len(all_faces) >= 5
    sizes = sorted(min(f.width, f.height) for f in all_faces)
    cut = sizes[len(sizes) // 2] + 0.5
    strict = FaceDetector(DetectorConfig(min_probability=0.95, min_face_px=int(cut) + 1))
    strict._mtcnn = detector._mtcnn
    kept = strict.detect([crowd.rgb])[0]
    assert 0 < len(kept) < len(all_faces)
    assert all(min(f.width, f.height) >= int(cut) + 1 for f in kept)
    # The same image said to be a 3x downscale: every face is 3x larger in original pixels.
    tripled = strict.detect([crowd.rgb], [3.0])[0]
    assert len(tripled) == len(all_faces)


def test_no_faces_tiny_images_and_empty_batches(detector):
    rng = np.random.default_rng(0)
    black = np.zeros((480, 640, 3), np.uint8)
    noise = rng.integers(0, 256, (300, 200, 3), dtype=np.uint8)
    tiny = np.full((10, 12, 3), 128, np.uint8)
    assert detector.detect([]) == []
    assert detector.detect([black, noise, tiny]) == [[], [], []]


def test_rejects_what_is_not_an_rgb_image(detector):
    with pytest.raises(ValueError):
        detector.detect([np.zeros((100, 100), np.uint8)])
    with pytest.raises(ValueError):
        detector.detect([np.zeros((100, 100, 3), np.float32)])
    with pytest.raises(ValueError):
        detector.detect([np.zeros((100, 100, 3), np.uint8)], [1.0, 2.0])


def test_same_faces_as_facenet_pytorchs_own_mtcnn(detector, scenes, scene_faces):
    """The reworked stages (one roi_align per stage, a halving pyramid) find what the stock
    detector finds, in the same places."""
    from facenet_pytorch import MTCNN
    from PIL import Image

    stock = MTCNN(keep_all=True, min_face_size=20, thresholds=list(detector.thresholds))
    ious, missed, extra = [], 0, 0
    for name, decoded in scenes.items():
        boxes, probs = stock.detect(Image.fromarray(decoded.rgb))
        want = [] if boxes is None else [
            tuple(b * decoded.scale) for b, p in zip(boxes, probs) if p >= 0.95
            and min(b[2] - b[0], b[3] - b[1]) * decoded.scale >= 20]
        got = [f.box for f in scene_faces[name]]
        for w in want:
            best = max((iou(g, w) for g in got), default=0.0)
            ious.append(best) if best >= 0.5 else None
            missed += best < 0.5
        extra += sum(max((iou(g, w) for w in want), default=0.0) < 0.5 for g in got)
    assert len(ious) >= 40
    assert missed <= 0.05 * (len(ious) + missed) and extra <= 0.05 * (len(ious) + missed)
    assert float(np.median(ious)) >= 0.9
