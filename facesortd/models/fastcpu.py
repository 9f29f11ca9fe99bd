"""A folded copy of InceptionResnetV1 for CPU inference: the same fp32 arithmetic in fewer passes.

Eval-mode BatchNorm is an affine map per channel, so it folds exactly into the convolution (or
linear layer) before it; each block's residual ``scale`` folds into its last 1x1 convolution; and
the 1x1 convolutions that open a block's branches from the same input run as one wider
convolution. What remains is convolutions with a bias, in-place ReLU, in-place residual adds.
Only float rounding differs from the original (measured cosine >= 0.99999 on real faces).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def _fold(convs: Sequence[nn.Conv2d], bns: Sequence[nn.BatchNorm2d]) -> nn.Conv2d:
    """One convolution with a bias computing ``cat([bn(conv(x)) for conv, bn], 1)``; the fold is
    done in float64 so it adds no rounding of its own beyond the final cast."""
    first = convs[0]
    weights, biases = [], []
    for conv, bn in zip(convs, bns):
        assert conv.bias is None and bn.affine and not bn.training
        assert (conv.kernel_size, conv.stride, conv.padding, conv.dilation, conv.groups) == \
            (first.kernel_size, first.stride, first.padding, first.dilation, first.groups)
        scale = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
        weights.append(conv.weight.double() * scale[:, None, None, None])
        biases.append(bn.bias.double() - bn.running_mean.double() * scale)
    weight, bias = torch.cat(weights), torch.cat(biases)
    out = nn.Conv2d(first.in_channels, weight.shape[0], first.kernel_size, first.stride,
                    first.padding, first.dilation, first.groups, bias=True)
    with torch.no_grad():
        out.weight.copy_(weight.to(first.weight.dtype))
        out.bias.copy_(bias.to(first.weight.dtype))
    return out.requires_grad_(False)


def _scaled(conv: nn.Conv2d, scale: float) -> nn.Conv2d:
    """``conv`` with weight and bias multiplied by the residual ``scale`` (in float64)."""
    out = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                    conv.padding, conv.dilation, conv.groups, bias=True)
    with torch.no_grad():
        out.weight.copy_((conv.weight.double() * scale).to(conv.weight.dtype))
        out.bias.copy_((conv.bias.double() * scale).to(conv.weight.dtype))
    return out.requires_grad_(False)


class ConvReLU(nn.Module):
    """A BasicConv2d (conv, BatchNorm, ReLU), or several sharing one input, as one conv + ReLU."""

    def __init__(self, *basics: nn.Module):
        super().__init__()
        self.conv = _fold([b.conv for b in basics], [b.bn for b in basics])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu_(self.conv(x))


class Residual(nn.Module):
    """Block35/Block17/Block8: branches whose first 1x1 convolutions run as one, then
    ``relu(x + scale * conv2d(cat(branches)))`` with ``scale`` folded into ``conv2d``."""

    def __init__(self, block: nn.Module):
        super().__init__()
        branches = [block.branch0, block.branch1] + ([block.branch2] if hasattr(block, "branch2") else [])
        heads = [b if not isinstance(b, nn.Sequential) else b[0] for b in branches]
        self.head = ConvReLU(*heads)
        self.splits = [h.conv.out_channels for h in heads]
        self.tails = nn.ModuleList(
            nn.Sequential(*(ConvReLU(m) for m in b[1:])) if isinstance(b, nn.Sequential)
            else nn.Identity() for b in branches)
        self.conv2d = _scaled(block.conv2d, block.scale)
        self.relu = not getattr(block, "noReLU", False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = torch.split(self.head(x), self.splits, dim=1)
        out = self.conv2d(torch.cat([tail(p) for tail, p in zip(self.tails, parts)], 1))
        out.add_(x)
        return torch.relu_(out) if self.relu else out


class Mixed6a(nn.Module):
    """Mixed_6a folded (no two convolutions share a kernel, so nothing merges)."""

    def __init__(self, block: nn.Module):
        super().__init__()
        self.branch0 = ConvReLU(block.branch0)
        self.branch1 = nn.Sequential(*(ConvReLU(m) for m in block.branch1))
        self.branch2 = block.branch2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat((self.branch0(x), self.branch1(x), self.branch2(x)), 1)


class Mixed7a(nn.Module):
    """Mixed_7a folded, its three opening 1x1 convolutions run as one."""

    def __init__(self, block: nn.Module):
        super().__init__()
        branches = (block.branch0, block.branch1, block.branch2)
        self.head = ConvReLU(*(b[0] for b in branches))
        self.splits = [b[0].conv.out_channels for b in branches]
        self.tails = nn.ModuleList(nn.Sequential(*(ConvReLU(m) for m in b[1:])) for b in branches)
        self.pool = block.branch3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = torch.split(self.head(x), self.splits, dim=1)
        return torch.cat([tail(p) for tail, p in zip(self.tails, parts)] + [self.pool(x)], 1)


class FoldedInceptionResnetV1(nn.Module):
    """InceptionResnetV1 (``classify=False``, eval mode) with BatchNorm, scales and shared-input
    1x1 convolutions folded; returns the same L2-normalised 512-d embeddings."""

    def __init__(self, model: nn.Module):
        super().__init__()
        if model.training or getattr(model, "classify", False):
            raise ValueError("folding needs an InceptionResnetV1 in eval mode with classify=False")
        self.stem = nn.Sequential(
            ConvReLU(model.conv2d_1a), ConvReLU(model.conv2d_2a), ConvReLU(model.conv2d_2b),
            model.maxpool_3a, ConvReLU(model.conv2d_3b), ConvReLU(model.conv2d_4a),
            ConvReLU(model.conv2d_4b))
        self.blocks = nn.Sequential(
            *(Residual(b) for b in model.repeat_1), Mixed6a(model.mixed_6a),
            *(Residual(b) for b in model.repeat_2), Mixed7a(model.mixed_7a),
            *(Residual(b) for b in model.repeat_3), Residual(model.block8))
        lin, bn = model.last_linear, model.last_bn
        scale = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
        self.last = nn.Linear(lin.in_features, lin.out_features, bias=True).requires_grad_(False)
        with torch.no_grad():
            self.last.weight.copy_((lin.weight.double() * scale[:, None]).to(lin.weight.dtype))
            self.last.bias.copy_((bn.bias.double() - bn.running_mean.double() * scale)
                                 .to(lin.weight.dtype))
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(x))
        x = self.last(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))
        return F.normalize(x, p=2, dim=1)
