"""dlib's ResNet run by torch (models/dlibnet.py, models/dlibtorch.py) against dlib's own
``compute_face_descriptor``, with the real weights face_recognition_models ships (offline)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from facesortd.config import DetectorConfig, EmbedderConfig
from facesortd.errors import ModelUnavailable
from facesortd.ingest.imageio import decode, shrink
from facesortd.models import dlibnet
from facesortd.models.detect import FaceDetector
from facesortd.models.dlib import DlibEmbedder, _model_files
from facesortd.models.dlibtorch import TorchDlibResNet

pytest.importorskip("dlib")

BAR = 0.9999   # issue 15: the torch runtime's vectors are dlib's


@pytest.fixture(scope="module")
def resnet_file() -> Path:
    return _model_files()[1]


@pytest.fixture(scope="module")
def reference() -> DlibEmbedder:
    emb = DlibEmbedder(EmbedderConfig(name="dlib", dlib_runtime="dlib"))
    emb.load()
    return emb


@pytest.fixture(scope="module")
def torch_runtime() -> DlibEmbedder:
    emb = DlibEmbedder(EmbedderConfig(name="dlib", dlib_runtime="torch", device="cpu",
                                      batch_size=32))
    emb.load()
    return emb


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))


@pytest.fixture(scope="module")
def chips(data_dir, reference) -> dict[str, list[np.ndarray]]:
    """Every face chip the pipeline makes from shared/data: faces/ and scenes/ in detect mode
    (decoded like prepare.py does, MTCNN on the detector's copy, each box cut from the larger
    copy), faces_cropped/ in aligned mode (the whole image is the box)."""
    detector_cfg = DetectorConfig()
    detector = FaceDetector(detector_cfg)
    out: dict[str, list[np.ndarray]] = {}
    for name in ("faces", "scenes"):
        decoded = [decode(p, detector_cfg.crop_side()) for p in _images(data_dir / name)]
        small = [shrink(d.rgb, detector_cfg.max_side_px) for d in decoded]
        found = detector.detect([s[0] for s in small],
                                scales=[d.scale * s[1] for d, s in zip(decoded, small)])
        out[name] = [reference.prepare(d.rgb, tuple(v / d.scale for v in det.box))
                     for d, dets in zip(decoded, found) for det in dets]
    cropped = [decode(p).rgb for p in _images(data_dir / "faces_cropped")]
    out["faces_cropped"] = [reference.prepare(rgb, (0.0, 0.0, float(rgb.shape[1]), float(rgb.shape[0])))
                            for rgb in cropped]
    return out


def test_torch_vectors_are_dlibs_on_every_chip(chips, reference, torch_runtime):
    """cosine >= 0.9999 between the torch runtime's vectors and compute_face_descriptor's on
    every chip of faces/, scenes/ and faces_cropped/."""
    # faces/ has 275 photos (some with bystanders), scenes/ several faces each, 77 crops
    assert len(chips["faces"]) >= 275 and len(chips["scenes"]) >= 10
    assert len(chips["faces_cropped"]) == 77
    for name, group in chips.items():
        want = reference.embed(group)
        got = torch_runtime.embed(group)
        cos = np.sum(want * got, axis=1)
        worst = int(np.argmin(cos))
        assert cos[worst] >= BAR, f"{name}: chip {worst} of {len(group)} has cosine {cos[worst]:.7f}"
        assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_batches_and_single_chips_agree(chips, torch_runtime):
    group = chips["faces_cropped"][:40]
    together = torch_runtime.embed(group)        # two micro-batches (32 + 8)
    alone = np.concatenate([torch_runtime.embed([c]) for c in group[:3]])
    assert together.shape == (40, 128)
    assert np.sum(together[:3] * alone, axis=1).min() >= 0.999999


def test_fp16_keeps_dlibs_vectors(chips, resnet_file):
    """Why ``precision: auto`` is fp16 on CUDA: fp16 weights and activations stay on dlib's
    vectors (here in the CPU's fp16 arithmetic; the GPU's is not tested on this machine)."""
    group = chips["faces_cropped"][::8]
    net = dlibnet.load(resnet_file)
    x = torch.from_numpy(np.stack(group)).permute(0, 3, 1, 2).float()
    with torch.inference_mode():
        fp32 = torch.nn.functional.normalize(net(x), dim=1)
        fp16 = torch.nn.functional.normalize(net.half()(x.half()).float(), dim=1)
    assert (fp32 * fp16).sum(1).min().item() >= BAR


def test_describe_names_the_runtime(torch_runtime, reference):
    info = torch_runtime.describe()
    assert info["runtime"].startswith("torch") and info["device"] == "cpu"
    assert info["precision"] == "fp32" and info["memory_format"] == "channels_last"
    assert torch_runtime.model_id == reference.model_id == "dlib-resnet-v1"
    assert reference.describe()["runtime"].startswith("dlib")


def test_wrong_chip_is_named(torch_runtime, chips):
    good = chips["faces_cropped"][0]
    with pytest.raises(ValueError, match=r"face 1: expected a uint8 chip of shape \(150, 150, 3\)"):
        torch_runtime.embed([good, good[:100]])


def test_add_prev_pads_with_zeros():
    """dlib's add_prev: the larger size in every dimension, zeros outside either tensor."""
    a = torch.arange(2 * 3 * 3, dtype=torch.float32).reshape(1, 2, 3, 3)
    b = torch.ones(1, 1, 4, 4)
    out = dlibnet.add_padded(a.clone(), b)
    assert out.shape == (1, 2, 4, 4)
    want = torch.zeros(1, 2, 4, 4)
    want[:, :, :3, :3] += a
    want[:, :1] += 1
    assert torch.equal(out, want)


def test_reads_the_whole_file(resnet_file):
    w = dlibnet.read_weights(resnet_file)
    assert len(w.convs) == 29 and len(w.affines) == 29 and w.fc.shape == (128, 256)
    assert [round(m, 3) for m in w.mean] == [122.782, 117.001, 104.298]
    assert (w.convs[0].stride, w.convs[0].padding) == (2, 0)
    # dlib's con_ default: padding 0 at stride 2 (the 3x3 stride-2 convolutions shrink 8x8 to
    # 3x3 while the skip path pools it to 4x4: add_prev pads), half the kernel at stride 1
    assert {(c.stride, c.padding) for c in w.convs[1:]} == {(1, 1), (2, 0)}
    assert [(p.size, p.stride, p.padding) for p in w.pools] == \
        [(3, 2, 0)] + [(2, 2, 0)] * 4 + [(0, 1, 0)]


@pytest.mark.parametrize("damage", ["truncate", "version", "extra"])
def test_a_damaged_file_is_refused_readably(resnet_file, tmp_path, damage):
    data = bytearray(resnet_file.read_bytes())
    if damage == "truncate":
        data = data[:len(data) // 2]
    elif damage == "version":
        data[0x1E] = 7          # the fc layer's add_layer version (after the loss's two floats)
    else:
        data += b"\x00"
    bad = tmp_path / "resnet.dat"
    bad.write_bytes(bytes(data))
    with pytest.raises(ModelUnavailable, match="dlib_runtime: dlib"):
        dlibnet.read_weights(bad)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (none on this machine)")
def test_cuda_graph_gives_dlibs_vectors(chips, reference, resnet_file):
    group = chips["faces_cropped"][:20]
    runner = TorchDlibResNet(EmbedderConfig(name="dlib", device="cuda", batch_size=16), resnet_file)
    runner.load()
    assert runner.describe()["cuda_graphs"].startswith("on")
    got = runner.embed(group)                   # a full graphed batch and a padded one
    assert np.sum(reference.embed(group) * got, axis=1).min() >= BAR
