"""The CoactSeg network (Wu et al., MICCAI 2023).

A five-level 3D U-Net with additive skips feeds one shared full-resolution feature map to
three heads: all lesions at the baseline, all lesions at the follow-up, and new lesions.
The new-lesion head sees the other two heads' features through ``concat(h2 − h1, h1, h3)``.
The input has three channels: baseline, follow-up, follow-up − baseline; a single scan ``x``
is fed as ``(x, x, 0)``.
"""

from __future__ import annotations

import copy
from typing import NamedTuple

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from msnewlesion.model.config import ModelConfig

__all__ = ["CoactSeg", "CoactSegOutput", "build_network", "fold_batch_norm", "lesion_probabilities", "make_input"]

#: Convolutions per stage, from the reference implementation.
ENCODER_DEPTHS = (1, 2, 3, 3, 3)
DECODER_DEPTHS = (3, 3, 2)  # levels 4, 3 and 2 (after each up-sampling)


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm3d(channels)
    if kind == "instance":
        return nn.InstanceNorm3d(channels, affine=True)
    raise ValueError(f"unknown norm layer {kind!r}")


class ConvNormAct(nn.Module):
    """Conv3d 3³ (padding 1, bias) → norm → ReLU."""

    def __init__(self, in_channels: int, out_channels: int, norm: str) -> None:
        super().__init__()
        self.conv = nn.Conv3d(in_channels, out_channels, kernel_size=3, padding=1)
        self.norm = _norm(norm, out_channels)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.conv(x)))


class ConvStage(nn.Module):
    """``depth`` ConvNormAct units in a row."""

    def __init__(self, in_channels: int, out_channels: int, depth: int, norm: str) -> None:
        super().__init__()
        self.units = nn.ModuleList(
            ConvNormAct(in_channels if i == 0 else out_channels, out_channels, norm) for i in range(depth)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for unit in self.units:
            x = unit(x)
        return x


class Resample(nn.Module):
    """Stride-2 kernel-2 convolution (down) or transposed convolution (up) → norm → ReLU."""

    def __init__(self, in_channels: int, out_channels: int, norm: str, *, up: bool) -> None:
        super().__init__()
        conv = nn.ConvTranspose3d if up else nn.Conv3d
        self.conv = conv(in_channels, out_channels, kernel_size=2, stride=2)
        self.norm = _norm(norm, out_channels)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.conv(x)))


class Encoder(nn.Module):
    def __init__(self, in_channels: int, width: int, norm: str, dropout: float) -> None:
        super().__init__()
        channels = [width * 2**level for level in range(5)]
        self.levels = nn.ModuleList()
        self.downs = nn.ModuleList()
        previous = in_channels
        for level, (out, depth) in enumerate(zip(channels, ENCODER_DEPTHS, strict=True)):
            self.levels.append(ConvStage(previous, out, depth, norm))
            if level < 4:
                self.downs.append(Resample(out, channels[level + 1], norm, up=False))
            previous = channels[level + 1] if level < 4 else out
        self.dropout = nn.Dropout3d(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for level, stage in enumerate(self.levels):
            x = stage(x)
            if level < 4:
                features.append(x)
                x = self.downs[level](x)
        features.append(self.dropout(x))
        return features


class Decoder(nn.Module):
    """Up-samples the bottleneck back to full resolution, adding each encoder level's features."""

    def __init__(self, width: int, norm: str) -> None:
        super().__init__()
        channels = [width * 2**level for level in range(5)]
        self.ups = nn.ModuleList(
            Resample(channels[level + 1], channels[level], norm, up=True) for level in (3, 2, 1, 0)
        )
        self.levels = nn.ModuleList(
            ConvStage(channels[level], channels[level], depth, norm)
            for level, depth in zip((3, 2, 1), DECODER_DEPTHS, strict=True)
        )

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = features[4]
        for step, up in enumerate(self.ups):
            x = up(x) + features[3 - step]
            if step < len(self.levels):
                x = self.levels[step](x)
        return x


class LesionHead(nn.Module):
    """One conv unit on the shared features, dropout, then a 1×1×1 classifier."""

    def __init__(self, width: int, norm: str, dropout: float, num_classes: int) -> None:
        super().__init__()
        self.features = ConvStage(width, width, 1, norm)
        self.dropout = nn.Dropout3d(dropout) if dropout > 0 else nn.Identity()
        self.classifier = nn.Conv3d(width, num_classes, kernel_size=1)


class NewLesionHead(LesionHead):
    """Like :class:`LesionHead`, with a fusion unit over ``concat(h2 − h1, h1, h3)`` before the classifier."""

    def __init__(self, width: int, norm: str, dropout: float, num_classes: int) -> None:
        super().__init__(width, norm, dropout, num_classes)
        self.fusion = ConvStage(3 * width, width, 1, norm)


class CoactSegOutput(NamedTuple):
    """Two-class logits of the three heads, each of shape (N, 2, X, Y, Z)."""

    baseline: torch.Tensor
    followup: torch.Tensor
    new: torch.Tensor


class CoactSeg(nn.Module):
    """The CoactSeg network.

    Parameters
    ----------
    config : ModelConfig
        Width, norm layer and dropout are read from it.

    Examples
    --------
    >>> import torch
    >>> from msnewlesion.model import CoactSeg, ModelConfig, lesion_probabilities
    >>> net = CoactSeg(ModelConfig(width=4)).eval()
    >>> out = net(torch.zeros(1, 3, 32, 32, 32))
    >>> lesion_probabilities(out.new).shape
    torch.Size([1, 32, 32, 32])
    """

    def __init__(self, config: ModelConfig | None = None) -> None:
        super().__init__()
        self.config = config or ModelConfig()
        width, norm, dropout = self.config.width, self.config.norm, self.config.dropout
        self.encoder = Encoder(self.config.in_channels, width, norm, dropout)
        self.decoder = Decoder(width, norm)
        self.head_baseline = LesionHead(width, norm, dropout, self.config.num_classes)
        self.head_followup = LesionHead(width, norm, dropout, self.config.num_classes)
        self.head_new = NewLesionHead(width, norm, dropout, self.config.num_classes)

    def forward(self, x: torch.Tensor) -> CoactSegOutput:
        shared = self.decoder(self.encoder(x))
        h1 = self.head_baseline.dropout(self.head_baseline.features(shared))
        h2 = self.head_followup.dropout(self.head_followup.features(shared))
        h3 = self.head_new.dropout(self.head_new.features(shared))
        fused = self.head_new.fusion(torch.cat((h2 - h1, h1, h3), dim=1))
        return CoactSegOutput(
            baseline=self.head_baseline.classifier(h1),
            followup=self.head_followup.classifier(h2),
            new=self.head_new.classifier(fused),
        )


def build_network(config: ModelConfig) -> CoactSeg:
    """A freshly initialised network for ``config``."""
    return CoactSeg(config)


def fold_batch_norm(network: CoactSeg) -> CoactSeg:
    """A copy for inference with every batch norm folded into the convolution before it.

    In eval mode a batch norm is a per-channel affine map, so it can be merged into the weights of
    the (transposed) convolution that feeds it: the same outputs up to rounding (about 1e-7), with one
    pass less over every activation. Instance norms depend on the input and are kept.
    """
    folded = copy.deepcopy(network).eval()
    for module in folded.modules():
        if isinstance(module, ConvNormAct | Resample) and isinstance(module.norm, nn.BatchNorm3d):
            transposed = isinstance(module.conv, nn.ConvTranspose3d)
            module.conv = fuse_conv_bn_eval(module.conv, module.norm, transpose=transposed)
            module.norm = nn.Identity()
    return folded


def lesion_probabilities(logits: torch.Tensor) -> torch.Tensor:
    """Lesion probability (softmax channel 1) from two-class logits of shape (N, 2, ...)."""
    if logits.shape[1] != 2:
        raise ValueError(f"expected two-class logits in dimension 1, got shape {tuple(logits.shape)}")
    # softmax over two classes, channel 1, is the sigmoid of the logit difference
    return torch.sigmoid(logits[:, 1] - logits[:, 0])


def make_input(baseline: torch.Tensor, followup: torch.Tensor | None = None) -> torch.Tensor:
    """Stack (baseline, follow-up, follow-up − baseline) along dimension 1.

    Both tensors have shape (N, X, Y, Z) or (N, 1, X, Y, Z). Without a follow-up, a single scan
    ``x`` becomes ``(x, x, 0)``.
    """
    if followup is None:
        followup = baseline
    if baseline.dim() == 4:
        baseline, followup = baseline.unsqueeze(1), followup.unsqueeze(1)
    return torch.cat((baseline, followup, followup - baseline), dim=1)
