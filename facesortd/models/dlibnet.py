"""dlib's face-recognition ResNet read straight from ``dlib_face_recognition_resnet_model_v1.dat``
and rebuilt as a ``torch.nn.Module``: the same 128-d descriptors as ``compute_face_descriptor``,
batched, on any torch device. Nothing is converted or copied; the file face_recognition_models
ships is parsed at load (~0.1 s).

The network is dlib's ``anet_type`` (examples/dnn_face_recognition_ex.cpp)::

    loss_metric<fc_no_bias<128, avg_pool_everything<
      alevel0<alevel1<alevel2<alevel3<alevel4<
      max_pool<3,3,2,2, relu<affine<con<32,7,7,2,2, input_rgb_image_sized<150>>>>>>>>>>>>>

    alevel4 = 3 x ares<32>      alevel3 = ares_down<64>  + 3 x ares<64>
    alevel2 = ares_down<128> + 2 x ares<128>      alevel1 = ares_down<256> + 2 x ares<256>
    alevel0 = ares_down<256>
    block<N,s>   = affine<con<N,3,3,1,1, relu<affine<con<N,3,3,s,s, x>>>>>
    ares<N>      = relu<add_prev1<block<N,1, tag1<x>>>>             -> relu(block(x) + x)
    ares_down<N> = relu<add_prev2<avg_pool<2,2,2,2, skip1<tag2<block<N,2, tag1<x>>>>>>>
                                                                   -> relu(block(x) + avgpool(x))

``add_prev`` adds two tensors of different shapes by giving the output the larger size in every
dimension and treating what lies outside either input as zero (dlib's ``tt::add``): the skip path
has fewer channels after each ``ares_down``, and in alevel1 the 3x3 block output (a 3x3 stride-2
convolution without padding on 8x8) meets a 4x4 pooled skip, so the block's values fill the
top-left 3x3 of a 4x4 map. Convolutions and pools carry their padding in the file (0 for every
stride-2 layer, 1 for the 3x3 stride-1 convolutions). ``input_rgb_image_sized`` feeds an RGB
chip as ``(pixel - mean[c]) / 256`` with the means stored in the file (122.782, 117.001,
104.298); the first convolution has no padding, so that scaling folds exactly into its weights
and bias, and this module takes raw 0-255 pixel values.

The file format (dlib's ``serialize``; all of it is read and checked, the file must end where the
network does):

* integers (``int``, ``long``, versions, sizes): one control byte, low nibble = the number of
  bytes that follow, bit 7 = negative; then the magnitude, little-endian.
* ``float``/``double`` scalars: two such integers, mantissa and exponent (value = m * 2**e).
* ``std::string``: its length as an integer, then the bytes. ``bool``: the byte ``'0'`` or ``'1'``.
* ``tensor``: version 2, num_samples, k, nr, nc, then the values as little-endian IEEE float32.
  ``alias_tensor`` (a view into a layer's parameter tensor): version 1 and its four sizes.
* ``add_loss_layer``: version 1, the loss (``"loss_metric_2"``, margin, distance threshold), then
  the network. ``add_layer``: version 2, the layer below it, this layer's details, three bools,
  and three tensors (gradients and cached output; empty in a saved model). The add_layer on top
  of the input layer: version 3, the input layer, its details, three bools, three tensors, and
  the sample expansion factor. ``add_tag_layer`` and ``add_skip_layer``: version 1, the layer
  below. Because every layer writes the one below it first, the file holds all the versions
  outermost layer first (130 of them), then the input layer, then each layer's details
  innermost first (the first convolution first, the fc layer last).
* Details: ``"con_4"``, the parameters (filters [N,K,R,C] then N biases, one flat tensor),
  num_filters, nr, nc, stride y/x, padding y/x, the two alias tensors and four float multipliers;
  ``"affine_"``, the parameters (gamma then beta), two alias tensors and the mode;
  ``"max_pool_2"``/``"avg_pool_2"``: window nr, nc, stride y/x, padding y/x (0x0 = the whole
  map: ``avg_pool_everything``); ``"relu_"``, ``"add_prev_"``: the name only; ``"fc_2"``:
  outputs, inputs, the parameters ([inputs, outputs] row-major), two alias tensors, the bias
  mode and four multipliers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from facesortd.errors import ModelUnavailable

INPUT_SIZE = 150
DIM = 128

#: (filters, down) for the 14 residual blocks, input side first (alevel4 ... alevel0).
BLOCKS: tuple[tuple[int, bool], ...] = (
    ((32, False),) * 3 + ((64, True),) + ((64, False),) * 3 + ((128, True),) + ((128, False),) * 2
    + ((256, True),) + ((256, False),) * 2 + ((256, True),))


# -- reading ------------------------------------------------------------------------------------

class _Reader:
    """dlib's serialisation primitives over the bytes of one file."""

    def __init__(self, data: bytes, path: Path):
        self.data, self.pos, self.path = data, 0, path

    def fail(self, what: str) -> ModelUnavailable:
        return ModelUnavailable(f"{self.path}: not dlib's face-recognition ResNet as this version "
                                f"reads it ({what} at byte {self.pos}); reinstall "
                                "face_recognition_models, or set embedder.dlib_runtime: dlib")

    def int(self) -> int:
        if self.pos >= len(self.data):
            raise self.fail("the file ends early")
        control = self.data[self.pos]
        size = control & 0x0F
        if size > 8 or control & 0x70:
            raise self.fail(f"bad integer control byte {control:#x}")
        raw = self.data[self.pos + 1:self.pos + 1 + size]
        if len(raw) != size:
            raise self.fail("the file ends early")
        self.pos += 1 + size
        value = int.from_bytes(raw, "little")
        return -value if control & 0x80 else value

    def float(self) -> float:
        mantissa, exponent = self.int(), self.int()
        return float(mantissa) * 2.0 ** exponent if abs(exponent) < 32000 else float("nan")

    def bool(self) -> bool:
        byte = self.data[self.pos:self.pos + 1]
        if byte not in (b"0", b"1"):
            raise self.fail(f"expected a bool, found {byte!r}")
        self.pos += 1
        return byte == b"1"

    def string(self) -> str:
        size = self.int()
        if not 0 <= size <= 64:
            raise self.fail(f"implausible string length {size}")
        text = self.data[self.pos:self.pos + size]
        self.pos += size
        return text.decode("latin-1")

    def expect(self, name: str) -> None:
        found = self.string()
        if found != name:
            raise self.fail(f"expected layer {name!r}, found {found!r}")

    def version(self, allowed: tuple[int, ...], what: str) -> int:
        version = self.int()
        if version not in allowed:
            raise self.fail(f"{what} version {version}, expected one of {allowed}")
        return version

    def tensor(self) -> np.ndarray:
        self.version((2,), "tensor")
        shape = tuple(self.int() for _ in range(4))
        count = int(np.prod(shape))
        if min(shape) < 0 or self.pos + 4 * count > len(self.data):
            raise self.fail(f"tensor of shape {shape} does not fit in the file")
        values = np.frombuffer(self.data, "<f4", count, self.pos).astype(np.float32)
        self.pos += 4 * count
        return values.reshape(shape)

    def alias(self) -> tuple[int, ...]:
        self.version((1,), "alias_tensor")
        return tuple(self.int() for _ in range(4))


@dataclass
class Conv:
    weight: np.ndarray        # [out, in, kh, kw]
    bias: np.ndarray          # [out]
    stride: int
    padding: int


@dataclass
class Affine:
    gamma: np.ndarray
    beta: np.ndarray


@dataclass
class Pool:
    size: int                 # 0: the whole map
    stride: int
    padding: int


@dataclass
class DlibResNetWeights:
    """What the file holds, in network order (input side first)."""
    mean: tuple[float, float, float]              # input_rgb_image_sized's per-channel means
    convs: list[Conv] = field(default_factory=list)     # 1 + 2 per block
    affines: list[Affine] = field(default_factory=list)  # one per convolution
    pools: list[Pool] = field(default_factory=list)     # max pool, the 4 skip pools, the last
    fc: Optional[np.ndarray] = None                # [128, 256] (torch's Linear layout)


def _layer_stack() -> list[str]:
    """``anet_type``'s layers, input side first, as the kinds the file's versions tell apart:
    ``layer`` (add_layer), ``tag``/``skip`` (no details); the details each layer reads follow
    from the name after the colon."""
    stack = ["input_layer:con", "layer:affine", "layer:relu", "layer:max_pool"]
    for _, down in BLOCKS:
        stack += ["tag", "layer:con", "layer:affine", "layer:relu", "layer:con", "layer:affine"]
        if down:
            stack += ["tag", "skip", "layer:avg_pool"]
        stack += ["layer:add_prev", "layer:relu"]
    return stack + ["layer:avg_pool", "layer:fc"]


def read_weights(path: Path) -> DlibResNetWeights:
    """Parse ``dlib_face_recognition_resnet_model_v1.dat`` (see the module docstring)."""
    r = _Reader(Path(path).read_bytes(), Path(path))
    r.version((1,), "add_loss_layer")
    loss = r.string()
    if loss != "loss_metric_2":
        raise r.fail(f"loss {loss!r}, expected 'loss_metric_2'")
    r.float(), r.float()                                    # margin, distance threshold
    stack = _layer_stack()
    input_version = 0
    for kind in reversed(stack):                            # outermost first
        if kind.startswith("input_layer"):
            input_version = r.version((2, 3), "add_layer (on the input layer)")
        elif kind.startswith("layer"):
            r.version((2,), "add_layer")
        else:
            r.version((1,), f"add_{kind}_layer")
    # the input layer, then every layer's details, innermost first
    r.expect("input_rgb_image_sized")
    mean = (r.float(), r.float(), r.float())
    rows, cols = r.int(), r.int()
    if (rows, cols) != (INPUT_SIZE, INPUT_SIZE):
        raise r.fail(f"input size {rows}x{cols}, expected {INPUT_SIZE}x{INPUT_SIZE}")
    weights = DlibResNetWeights(mean=mean)
    for kind in stack:
        if kind in ("tag", "skip"):
            continue
        _read_details(r, kind.split(":")[1], weights)
        r.bool(), r.bool(), r.bool()       # setup called, gradient stale, output disabled
        r.tensor(), r.tensor(), r.tensor()  # gradients and cached output (empty when saved)
        if kind.startswith("input_layer") and input_version >= 3:
            r.int()                        # sample expansion factor
    if r.pos != len(r.data):
        raise r.fail(f"{len(r.data) - r.pos} bytes left after the network")
    _check_shapes(r, weights)
    return weights


def _read_details(r: _Reader, kind: str, w: DlibResNetWeights) -> None:
    if kind == "con":
        r.expect("con_4")
        params = r.tensor().reshape(-1)
        out, kh, kw, sy, sx, py, px = (r.int() for _ in range(7))
        filters, biases = r.alias(), r.alias()
        for _ in range(4):
            r.float()                          # learning-rate and weight-decay multipliers
        if kh != kw or sy != sx or py != px or filters[0] != out or biases[1] != out:
            raise r.fail(f"unexpected convolution {out} {kh}x{kw} stride {sy},{sx} pad {py},{px}")
        n = int(np.prod(filters))
        if params.size != n + out:
            raise r.fail(f"convolution parameters {params.size}, expected {n + out}")
        w.convs.append(Conv(params[:n].reshape(filters), params[n:], sy, py))
    elif kind == "affine":
        r.expect("affine_")
        params = r.tensor().reshape(-1)
        gamma, beta = r.alias(), r.alias()
        r.int()                                # mode: CONV_MODE
        k = gamma[1]
        if params.size != 2 * k or beta[1] != k:
            raise r.fail(f"affine parameters {params.size} for {k} channels")
        w.affines.append(Affine(params[:k], params[k:]))
    elif kind in ("max_pool", "avg_pool"):
        r.expect(f"{kind}_2")
        nr, nc, sy, sx, py, px = (r.int() for _ in range(6))
        if nr != nc or sy != sx or py != px:
            raise r.fail(f"unexpected {kind} {nr}x{nc} stride {sy},{sx} pad {py},{px}")
        w.pools.append(Pool(nr, sy, py))
    elif kind in ("relu", "add_prev"):
        r.expect(f"{kind}_")
    elif kind == "fc":
        r.expect("fc_2")
        outputs, inputs = r.int(), r.int()
        params = r.tensor().reshape(-1)
        r.alias(), r.alias()
        bias_mode = r.int()
        for _ in range(4):
            r.float()
        if params.size != inputs * outputs:
            raise r.fail(f"fc parameters {params.size} for {inputs}x{outputs} (bias mode "
                         f"{bias_mode}; this network's fc has no bias)")
        w.fc = np.ascontiguousarray(params.reshape(inputs, outputs).T)


def _check_shapes(r: _Reader, w: DlibResNetWeights) -> None:
    expect = [(32, 3, 7)] + [(n, c, 3) for i, (n, _) in enumerate(BLOCKS)
                             for c in ((BLOCKS[i - 1][0] if i else 32), n)]
    found = [(c.weight.shape[0], c.weight.shape[1], c.weight.shape[2]) for c in w.convs]
    if found != expect or len(w.affines) != len(w.convs) or len(w.pools) != 6 \
            or w.fc is None or w.fc.shape != (DIM, 256):
        raise r.fail("the layers do not form dlib's anet_type")
    if any(a.gamma.shape[0] != c.weight.shape[0] for a, c in zip(w.affines, w.convs)):
        raise r.fail("an affine layer's size differs from its convolution's")


# -- the torch module ---------------------------------------------------------------------------

def _conv(conv: Conv, affine: Affine, mean: Optional[tuple[float, float, float]] = None) -> nn.Conv2d:
    """``affine(con(x))`` as one convolution with a bias (folded in float64). With ``mean``, the
    input scaling ``(x - mean) / 256`` folds in too (exact only without padding)."""
    weight, bias = conv.weight.astype(np.float64), conv.bias.astype(np.float64)
    if mean is not None:
        assert conv.padding == 0, "the input scaling folds into an unpadded convolution only"
        weight = weight / 256.0
        bias = bias - (weight * np.asarray(mean)[None, :, None, None]).sum(axis=(1, 2, 3))
    gamma, beta = affine.gamma.astype(np.float64), affine.beta.astype(np.float64)
    # built on the meta device: no random initialisation of weights about to be replaced
    out = nn.Conv2d(weight.shape[1], weight.shape[0], weight.shape[2], conv.stride, conv.padding,
                    bias=True, device="meta")
    out.weight = nn.Parameter(torch.from_numpy(
        (weight * gamma[:, None, None, None]).astype(np.float32)), requires_grad=False)
    out.bias = nn.Parameter(torch.from_numpy((bias * gamma + beta).astype(np.float32)),
                            requires_grad=False)
    return out


def add_padded(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """dlib's ``add_prev``: the sum at the larger size of each dimension, zeros outside either."""
    if a.shape == b.shape:
        return a.add_(b)
    shape = [max(x, y) for x, y in zip(a.shape, b.shape)]

    def grow(t: torch.Tensor) -> torch.Tensor:
        n, c, h, w = t.shape
        if [n, c, h, w] == shape:
            return t
        return F.pad(t, (0, shape[3] - w, 0, shape[2] - h, 0, shape[1] - c))
    return grow(a).add_(grow(b))


class Block(nn.Module):
    """``ares``/``ares_down``: relu(affine(con(relu(affine(con(x))))) + skip(x))."""

    def __init__(self, conv1: nn.Conv2d, conv2: nn.Conv2d, pool: Optional[Pool]):
        super().__init__()
        self.conv1, self.conv2 = conv1, conv2
        self.pool = pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv2(torch.relu_(self.conv1(x)))
        skip = x if self.pool is None else \
            F.avg_pool2d(x, self.pool.size, self.pool.stride, self.pool.padding)
        return torch.relu_(add_padded(y, skip))


class DlibResNet(nn.Module):
    """dlib's ``anet_type`` with every affine folded into its convolution. Takes float NCHW
    pixel values 0-255 (RGB, 150x150) and returns dlib's raw 128-d descriptors (not normalised)."""

    def __init__(self, weights: DlibResNetWeights):
        super().__init__()
        convs, affines, pools = weights.convs, weights.affines, weights.pools
        self.stem = _conv(convs[0], affines[0], weights.mean)
        self.stem_pool = pools[0]
        blocks, skip_pools = [], iter(pools[1:5])
        for i, (_, down) in enumerate(BLOCKS):
            blocks.append(Block(_conv(convs[1 + 2 * i], affines[1 + 2 * i]),
                                _conv(convs[2 + 2 * i], affines[2 + 2 * i]),
                                next(skip_pools) if down else None))
        self.blocks = nn.Sequential(*blocks)
        if pools[5].size != 0:
            raise ModelUnavailable("the last pooling layer is not avg_pool_everything")
        self.fc = nn.Linear(256, DIM, bias=False, device="meta")
        self.fc.weight = nn.Parameter(torch.from_numpy(weights.fc), requires_grad=False)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.stem_pool
        x = F.max_pool2d(torch.relu_(self.stem(x)), p.size, p.stride, p.padding)
        x = self.blocks(x)
        return self.fc(x.mean(dim=(2, 3)))


def load(path: Path) -> DlibResNet:
    """The network in ``path`` as an eval-mode module on the CPU (fp32, contiguous)."""
    return DlibResNet(read_weights(path))
