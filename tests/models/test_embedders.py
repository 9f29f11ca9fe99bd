"""Embedders: facenet weight loading and its errors, bf16 accuracy, dlib identity quality on real
photos. The VGGFace2 weights cannot be downloaded here, so facenet runs on an untrained
InceptionResnetV1 whose BatchNorm statistics were measured on real faces (see ``weights``)."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pydantic import ValidationError

from facesortd.bench.model import bare_model_images_per_s
from facesortd.config import EmbedderConfig
from facesortd.errors import ModelUnavailable
from facesortd.models import torchsetup
from facesortd.models.dlib import DlibEmbedder
from facesortd.models.embedders import create_embedder, resolve_device
from facesortd.models.facenet import WEIGHTS_NAME, WEIGHTS_URL, FacenetEmbedder

facenet_pytorch = pytest.importorskip("facenet_pytorch")


def _faces_cropped(data_dir: Path, n: int) -> list[np.ndarray]:
    files = sorted((data_dir / "faces_cropped").glob("*/*"))
    step = max(1, len(files) // n)
    return [np.asarray(Image.open(f).convert("RGB")) for f in files[::step][:n]]


@pytest.fixture(scope="module")
def crops(data_dir) -> list[np.ndarray]:
    """Eight real face chips, prepared to 160x160 the way aligned mode feeds them."""
    prep = FacenetEmbedder(EmbedderConfig())
    return [prep.prepare(img, (0, 0, img.shape[1], img.shape[0])) for img in _faces_cropped(data_dir, 8)]


@pytest.fixture(scope="module")
def weights(tmp_path_factory, crops) -> Path:
    """An untrained InceptionResnetV1 (seed 0) with BatchNorm statistics measured on real faces.
    Freshly initialised BN maps every input to nearly the same vector (cosine 1.000 between any
    two faces), which would make any accuracy comparison meaningless."""
    torch.manual_seed(0)
    model = facenet_pytorch.InceptionResnetV1(pretrained=None, classify=False)
    for m in model.modules():
        if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            m.momentum = None            # cumulative average: one batch sets the statistics
    model.train()
    x = (torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float() - 127.5) / 128.0
    with torch.no_grad():
        model(x)
    path = tmp_path_factory.mktemp("weights") / "untrained.pt"
    torch.save(model.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def fp32(weights) -> FacenetEmbedder:
    emb = create_embedder(EmbedderConfig(weights=weights, device="cpu", precision="fp32"))
    emb.load()
    return emb


@pytest.fixture(scope="module")
def fp32_vectors(fp32, crops) -> np.ndarray:
    return fp32.embed(crops)


# -- the factory and devices ----------------------------------------------------------------------

def test_create_embedder_loads_nothing(tmp_path):
    emb = create_embedder(EmbedderConfig(weights=tmp_path / "not-there.pt"))
    assert isinstance(emb, FacenetEmbedder) and emb.describe()["loaded"] is False
    dl = create_embedder(EmbedderConfig(name="dlib"))
    assert isinstance(dl, DlibEmbedder) and dl.describe()["loaded"] is False
    assert (emb.dim, dl.dim) == (512, 128)


def test_resolve_device():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ModelUnavailable) as err:
        resolve_device("cuda:99")
    assert "cuda:99 does not exist" in str(err.value) and "auto" in str(err.value)


# -- facenet: loading -----------------------------------------------------------------------------

def test_facenet_embeds_deterministic_unit_vectors(weights, fp32, crops, fp32_vectors):
    v = fp32_vectors
    assert v.shape == (8, 512) and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(fp32.embed(crops), v)
    again = FacenetEmbedder(EmbedderConfig(weights=weights, device="cpu", precision="fp32"))
    np.testing.assert_allclose(again.embed(crops[:3]), v[:3], atol=1e-5)
    cos = v @ v.T
    assert cos[~np.eye(8, dtype=bool)].max() < 0.95, "different faces must give different vectors"
    assert fp32.embed([]).shape == (0, 512)


def test_facenet_reads_checkpoint_formats(weights, tmp_path, crops, fp32_vectors):
    """A training checkpoint {'state_dict': ...}, DataParallel's 'module.' prefix, and the
    classifier head of the published file (logits.*) all load into the same model."""
    state = torch.load(weights, weights_only=True)
    state = {"module." + k: v for k, v in state.items()}
    state["module.logits.weight"] = torch.zeros(8631, 512)
    state["module.logits.bias"] = torch.zeros(8631)
    path = tmp_path / "checkpoint.pt"
    torch.save({"epoch": 3, "state_dict": state}, path)
    emb = FacenetEmbedder(EmbedderConfig(weights=path, device="cpu", precision="fp32"))
    np.testing.assert_allclose(emb.embed(crops[:2]), fp32_vectors[:2], atol=1e-5)


def test_missing_weights_path_says_what_to_do(tmp_path):
    missing = tmp_path / "nope" / "vggface2.pt"
    emb = FacenetEmbedder(EmbedderConfig(weights=missing))
    with pytest.raises(ModelUnavailable) as err:
        emb.load()
    msg = str(err.value)
    assert str(missing) in msg and "embedder.weights" in msg and WEIGHTS_URL in msg
    assert "embedder.name: dlib" in msg


def test_failed_download_gives_instructions(empty_torch_home):
    emb = FacenetEmbedder(EmbedderConfig())
    with pytest.raises(ModelUnavailable) as err:
        emb.load()
    msg = str(err.value)
    assert str(empty_torch_home / "checkpoints" / WEIGHTS_NAME) in msg       # where to put it
    assert WEIGHTS_URL in msg                                               # where it comes from
    assert "embedder.weights" in msg                                        # or point at it
    assert "embedder.name: dlib" in msg and "pip install 'facesortd[dlib]'" in msg
    assert "name resolution" in msg                                         # why it failed


def test_download_then_cache(empty_torch_home, weights, monkeypatch, crops, fp32_vectors):
    """The download lands in facenet-pytorch's cache; the next start reads it from there."""
    import shutil

    calls = []

    def fake_download(url, dst, *args, **kwargs):
        calls.append(url)
        shutil.copyfile(weights, dst)

    monkeypatch.setattr("facenet_pytorch.models.inception_resnet_v1.download_url_to_file",
                        fake_download)
    first = FacenetEmbedder(EmbedderConfig(device="cpu", precision="fp32"))
    np.testing.assert_allclose(first.embed(crops[:1]), fp32_vectors[:1], atol=1e-5)
    assert calls == [WEIGHTS_URL]
    assert (empty_torch_home / "checkpoints" / WEIGHTS_NAME).is_file()
    second = FacenetEmbedder(EmbedderConfig(device="cpu", precision="fp32"))
    assert second.model_id == first.model_id and calls == [WEIGHTS_URL]


@pytest.mark.parametrize("content, expected", [
    ({"conv.weight": torch.zeros(3)}, "not an InceptionResnetV1 state dict"),
    ("text", "not a readable torch state dict"),
    ([1, 2, 3], "not a state dict of tensors"),
])
def test_wrong_weights_file_is_readable(tmp_path, content, expected):
    path = tmp_path / "wrong.pt"
    if content == "text":
        path.write_text("this is not a model\n")
    else:
        torch.save(content, path)
    with pytest.raises(ModelUnavailable) as err:
        FacenetEmbedder(EmbedderConfig(weights=path)).load()
    assert expected in str(err.value) and str(path) in str(err.value)
    assert len(str(err.value)) < 600


def test_wrong_shapes_are_readable(weights, tmp_path):
    state = torch.load(weights, weights_only=True)
    state["last_linear.weight"] = torch.zeros(128, 1792)
    path = tmp_path / "shapes.pt"
    torch.save(state, path)
    with pytest.raises(ModelUnavailable, match="wrong shapes.*last_linear.weight"):
        FacenetEmbedder(EmbedderConfig(weights=path)).load()


def test_model_id_follows_the_weights_file(weights, tmp_path, fp32):
    torch.manual_seed(1)
    other = tmp_path / "other.pt"
    torch.save(facenet_pytorch.InceptionResnetV1().state_dict(), other)
    a, b = fp32.model_id, FacenetEmbedder(EmbedderConfig(weights=other)).model_id
    assert a != b
    for mid in (a, b):
        prefix, digest = mid.split(":")
        assert prefix == "facenet-vggface2" and len(digest) == 12 and int(digest, 16) >= 0


# -- facenet: inputs, precision, settings ---------------------------------------------------------

def test_prepare_matches_facenet_pytorch_extract_face(data_dir):
    img = np.asarray(Image.open(next((data_dir / "faces" / "Allyson_Felix").glob("*.jpg"))).convert("RGB"))
    emb = FacenetEmbedder(EmbedderConfig())
    for box in [(30.6, 25.2, 118.9, 131.7), (-10, -5, 90, 200)]:     # inside, and over the edges
        ours = emb.prepare(img, box)
        ref = facenet_pytorch.extract_face(Image.fromarray(img), np.array(box), 160, margin=0)
        assert ours.shape == (160, 160, 3) and ours.dtype == np.uint8
        np.testing.assert_array_equal(ours, ref.permute(1, 2, 0).numpy().astype(np.uint8))
    with pytest.raises(ValueError, match="empty"):
        emb.prepare(img, (200, 200, 300, 300))


def test_embed_rejects_other_shapes(fp32):
    with pytest.raises(ValueError, match=r"face 1: expected a uint8 array of shape \(160, 160, 3\)"):
        fp32.embed([np.zeros((160, 160, 3), np.uint8), np.zeros((150, 150, 3), np.uint8)])


def test_bf16_stays_close_to_fp32(weights, crops, fp32_vectors):
    """bf16 autocast (chosen by precision: auto on CPUs with native bf16) against fp32 on real
    faces. Measured: cosine 0.9994-0.9996 per face; distances between faces move < 0.01."""
    bf16 = FacenetEmbedder(EmbedderConfig(weights=weights, device="cpu", precision="bf16"))
    got = bf16.embed(crops[:4])
    assert bf16.describe()["precision"] == "bf16"
    assert bf16.describe()["memory_format"] == "channels_last"
    want = fp32_vectors[:4]
    assert (got * want).sum(axis=1).min() >= 0.999
    d_bf16 = np.linalg.norm(got[:, None] - got[None], axis=2)
    d_fp32 = np.linalg.norm(want[:, None] - want[None], axis=2)
    assert np.abs(d_bf16 - d_fp32).max() < 0.02


def test_describe_reports_the_settings_in_force(weights, fp32):
    info = fp32.describe()
    assert info["device"] == "cpu" and info["precision"] == "fp32" and not info["autocast"]
    assert info["model_id"] == fp32.model_id and info["weights"] == str(weights)
    assert info["threads"] <= torchsetup.usable_cores()
    auto = FacenetEmbedder(EmbedderConfig(weights=weights, device="cpu"))
    auto._choose_settings(torch.device("cpu"))
    assert (auto._amp is torch.bfloat16) == torchsetup.cpu_has_fast_bf16()


def test_bare_model_throughput_is_measured(fp32):
    ips = bare_model_images_per_s(fp32, batch_size=2, seconds=0)
    assert ips > 0


# -- dlib -----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def dlib_embedder() -> DlibEmbedder:
    pytest.importorskip("dlib")
    emb = DlibEmbedder(EmbedderConfig(name="dlib"))
    emb.load()
    return emb


def _centre_box(img: np.ndarray) -> tuple[float, float, float, float]:
    h, w = img.shape[:2]
    return (0.25 * w, 0.25 * h, 0.75 * w, 0.75 * h)


def test_dlib_separates_people(data_dir, dlib_embedder):
    """6 people x 4 LFW photos, centre box (LFW frames are centred on the face). Measured:
    same-person 0.30 on average, different people 0.56, nearest neighbour right 24/24; at
    default_eps (0.43) all same-person pairs and 4% of different-person pairs are within reach."""
    people = sorted(p for p in (data_dir / "faces").iterdir()
                    if len(list(p.glob("*.jpg"))) >= 4 and p.name != "Barack_Obama")[:6]
    chips, labels = [], []
    for person in people:
        for f in sorted(person.glob("*.jpg"))[:4]:
            img = np.asarray(Image.open(f).convert("RGB"))
            chips.append(dlib_embedder.prepare(img, _centre_box(img)))
            labels.append(person.name)
    assert all(c.shape == (150, 150, 3) and c.dtype == np.uint8 for c in chips)
    v = dlib_embedder.embed(chips)
    assert v.shape == (24, 128) and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    y = np.array(labels)
    d = np.linalg.norm(v[:, None] - v[None], axis=2)
    same, other = y[:, None] == y[None], ~np.eye(len(y), dtype=bool)
    s, o = d[same & other], d[~same]
    assert s.mean() + 0.15 < o.mean()
    eps = dlib_embedder.default_eps
    assert (s <= eps).mean() >= 0.85 and (o <= eps).mean() <= 0.10
    np.fill_diagonal(d, np.inf)
    assert (y[d.argmin(axis=1)] == y).mean() >= 0.9


def test_dlib_prepare_is_thread_safe(data_dir, dlib_embedder):
    img = np.asarray(Image.open(next((data_dir / "faces" / "JK_Rowling").glob("*.jpg"))).convert("RGB"))
    want = dlib_embedder.prepare(img, _centre_box(img))
    results, errors = [], []

    def work():
        try:
            results.extend(dlib_embedder.prepare(img, _centre_box(img)) for _ in range(10))
        except Exception as exc:      # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 40
    assert all(np.array_equal(r, want) for r in results)


def test_dlib_missing_package_says_how_to_install(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "dlib", None)   # import dlib -> ImportError
    with pytest.raises(ModelUnavailable, match=r"pip install 'facesortd\[dlib\]'"):
        DlibEmbedder(EmbedderConfig(name="dlib")).load()


# -- device settings: the CUDA choices are checked on the CPU (no GPU on the build machines) -------

@pytest.mark.parametrize("precision, amp", [("auto", torch.float16), ("fp16", torch.float16),
                                            ("bf16", torch.bfloat16), ("fp32", None)])
def test_cuda_settings_are_chosen_at_load(weights, precision, amp):
    emb = FacenetEmbedder(EmbedderConfig(weights=weights, device="cpu", precision=precision))
    before = torch.backends.cudnn.benchmark
    try:
        emb._choose_settings(torch.device("cuda"))
        assert emb._amp is amp
        assert emb._channels_last and emb._pinned
        assert torch.backends.cudnn.benchmark  # fixed 160x160 input: autotune once
    finally:
        torch.backends.cudnn.benchmark = before


def test_pinned_batch_buffer_is_reused_and_grows(weights, crops, fp32_vectors, monkeypatch):
    """The CUDA host path (one pinned uint8 buffer, refilled per batch) on the CPU: pinning needs
    a GPU, so ``pin_memory`` is the one thing replaced; the vectors must not change."""
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self: self)
    emb = FacenetEmbedder(EmbedderConfig(weights=weights, device="cpu", precision="fp32",
                                         batch_size=2))
    emb.load()
    emb._pinned = True
    np.testing.assert_allclose(emb.embed(crops[:2]), fp32_vectors[:2], atol=1e-5)
    first = emb._host.buffer.data_ptr()
    np.testing.assert_allclose(emb.embed(crops[2:4]), fp32_vectors[2:4], atol=1e-5)
    assert emb._host.buffer.data_ptr() == first                  # refilled, not reallocated
    np.testing.assert_allclose(emb.embed(crops[:5]), fp32_vectors[:5], atol=1e-5)
    assert emb._host.buffer.shape[0] >= 5                        # grew for a bigger batch


def test_contiguous_layout_gives_the_same_vectors(weights, crops, fp32_vectors):
    """channels_last is a speed setting only: the plain NCHW path must embed identically."""
    emb = FacenetEmbedder(EmbedderConfig(weights=weights, device="cpu", precision="fp32"))
    emb.load()
    emb._channels_last = False
    emb._model = emb._model.to(memory_format=torch.contiguous_format)
    np.testing.assert_allclose(emb.embed(crops[:3]), fp32_vectors[:3], atol=1e-4)
    assert emb.describe()["memory_format"] == "contiguous"


def test_bare_model_throughput_median_and_mean(fp32):
    from facesortd.bench.model import bare_model_throughput
    figures = bare_model_throughput(fp32, batch_size=2, seconds=0)
    assert figures["median"] > 0 and figures["mean"] > 0


def test_pinned_path_names_a_wrong_face(weights, monkeypatch):
    """The pinned batch is filled with one np.stack; a bad face still gets its own message."""
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self: self)
    emb = FacenetEmbedder(EmbedderConfig(weights=weights, device="cpu", precision="fp32",
                                         batch_size=2))
    emb.load()
    emb._pinned = True
    good = np.zeros((160, 160, 3), np.uint8)
    for bad in (np.zeros((160, 160, 3), np.float32), np.zeros((150, 160, 3), np.uint8)):
        with pytest.raises(ValueError, match=r"face 1: expected a uint8 array"):
            emb.embed([good, bad])


def test_cuda_graph_failure_falls_back_to_eager(weights, crops, fp32_vectors, caplog):
    """Capture needs CUDA: on the CPU it fails for real, and embedding must go on eagerly."""
    emb = FacenetEmbedder(EmbedderConfig(weights=weights, device="cpu", precision="fp32",
                                         batch_size=4))
    emb.load()
    assert emb.describe()["cuda_graphs"] == "off (not CUDA)"
    with caplog.at_level("WARNING", logger="facesortd.embedders.facenet"):
        emb._capture_graph()
    assert emb._graphed is None
    assert emb.describe()["cuda_graphs"].startswith("failed, eager: ")
    assert [r.message for r in caplog.records if "CUDA graph" in r.message][0].startswith(
        "CUDA graph capture failed, embedding eagerly")
    np.testing.assert_allclose(emb.embed(crops[:3]), fp32_vectors[:3], atol=1e-5)


def test_cuda_graphs_setting(weights):
    off = FacenetEmbedder(EmbedderConfig(weights=weights, device="cpu", cuda_graphs=False))
    off._capture_graph()
    assert off._graphed is None and off._graph_state == "off (embedder.cuda_graphs: false)"
    assert EmbedderConfig().cuda_graphs is True
    with pytest.raises(ValidationError, match="cuda_graphs"):
        EmbedderConfig(cuda_graphs="sometimes")
