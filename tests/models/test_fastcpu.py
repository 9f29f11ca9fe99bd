"""The folded CPU model (fastcpu.py) against facenet-pytorch's own InceptionResnetV1, eager fp32:
the same embeddings on real face crops and random inputs, and the setting that turns it off."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pydantic import ValidationError

from facesortd.config import EmbedderConfig
from facesortd.models.facenet import FacenetEmbedder

facenet_pytorch = pytest.importorskip("facenet_pytorch")
from facesortd.models.fastcpu import FoldedInceptionResnetV1  # noqa: E402


@pytest.fixture(scope="module")
def faces(data_dir) -> np.ndarray:
    """24 real face crops (every person in faces_cropped) as uint8 (160, 160, 3)."""
    files = sorted((data_dir / "faces_cropped").glob("*/*"))
    files = files[::max(1, len(files) // 24)][:24]
    return np.stack([np.asarray(Image.open(f).convert("RGB").resize(
        (160, 160), Image.Resampling.BILINEAR)) for f in files])


def _standardize(faces: np.ndarray) -> torch.Tensor:
    """facenet-pytorch's fixed_image_standardization on an NCHW float batch."""
    return (torch.from_numpy(faces).permute(0, 3, 1, 2).float() - 127.5) / 128.0


@pytest.fixture(scope="module")
def weights(tmp_path_factory, faces) -> Path:
    """An untrained InceptionResnetV1 whose BatchNorm layers all do something: running statistics
    measured on real faces (fresh ones map every face to one vector) and random scales and shifts
    (fresh ones are 1 and 0, so a fold that dropped either would still pass)."""
    torch.manual_seed(0)
    model = facenet_pytorch.InceptionResnetV1(pretrained=None, classify=False)
    bns = [m for m in model.modules() if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d))]
    for bn in bns:
        bn.momentum = None
    model.train()
    with torch.no_grad():
        model(_standardize(faces[:16]))
        for bn in bns:
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.normal_(0.0, 0.1)
    path = tmp_path_factory.mktemp("weights") / "affine.pt"
    torch.save(model.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def eager(weights) -> torch.nn.Module:
    """The model exactly as facenet-pytorch builds it: eval mode, fp32, contiguous NCHW."""
    model = facenet_pytorch.InceptionResnetV1(pretrained=None, classify=False)
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return model.eval()


def _inputs(faces: np.ndarray) -> torch.Tensor:
    """The real faces, then 8 uniform random images in [-1, 1] and 4 standard normal ones."""
    gen = torch.Generator().manual_seed(1)
    return torch.cat([_standardize(faces), torch.rand((8, 3, 160, 160), generator=gen) * 2 - 1,
                      torch.randn((4, 3, 160, 160), generator=gen)])


@pytest.fixture(scope="module")
def eager_vectors(eager, faces) -> torch.Tensor:
    """The eager model's embeddings of ``_inputs(faces)``: the reference every test compares to."""
    with torch.inference_mode():
        return eager(_inputs(faces))


def _agreement(want: torch.Tensor, got: torch.Tensor) -> tuple[float, float]:
    """(min cosine, max absolute difference) between two batches of embeddings."""
    cos = torch.nn.functional.cosine_similarity(want, got, dim=1)
    return float(cos.min()), float((want - got).abs().max())


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_folded_model_matches_eager_fp32(eager, eager_vectors, faces, layout):
    """Measured: min cosine 0.9999998, max abs difference ~1e-6 on unit vectors."""
    folded = FoldedInceptionResnetV1(eager).to(memory_format=layout)
    with torch.inference_mode():
        got = folded(_inputs(faces).contiguous(memory_format=layout))
    want = eager_vectors
    cos, diff = _agreement(want, got)
    assert cos >= 0.99999, (cos, diff)
    assert diff < 1e-4, (cos, diff)
    # the check can tell faces apart: distinct faces are far from each other
    assert float((want[0] * want[1:len(faces)]).sum(1).max()) < 0.999


def test_cpu_embedder_folds_by_default_and_matches_eager(weights, eager_vectors, faces):
    emb = FacenetEmbedder(EmbedderConfig(weights=weights, device="cpu", precision="fp32"))
    got = torch.from_numpy(emb.embed(list(faces)))
    assert isinstance(emb._model, FoldedInceptionResnetV1)
    info = emb.describe()
    assert info["fold"].startswith("on") and info["precision"] == "fp32" and not info["autocast"]
    want = eager_vectors[:len(faces)]
    cos, diff = _agreement(want, got)
    assert cos >= 0.99999, (cos, diff)
    assert diff < 1e-4, (cos, diff)


def test_fold_setting_keeps_the_model_as_built(weights, faces):
    off = FacenetEmbedder(EmbedderConfig(weights=weights, device="cpu", fold=False))
    off.load()
    assert isinstance(off._model, facenet_pytorch.InceptionResnetV1)
    assert off.describe()["fold"] == "off (embedder.fold: false)"
    assert EmbedderConfig().fold is True
    with pytest.raises(ValidationError, match="fold"):
        EmbedderConfig(fold="sometimes")


def test_folding_refuses_a_training_or_classifying_model(eager):
    model = facenet_pytorch.InceptionResnetV1(pretrained=None, classify=False).train()
    with pytest.raises(ValueError, match="eval mode"):
        FoldedInceptionResnetV1(model)
    classify = facenet_pytorch.InceptionResnetV1(pretrained=None, classify=True, num_classes=3).eval()
    with pytest.raises(ValueError, match="classify=False"):
        FoldedInceptionResnetV1(classify)
