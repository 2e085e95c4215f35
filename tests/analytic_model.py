"""A CoactSeg network with hand-set weights whose answers are known, for end-to-end tests.

Everything is zero except three straight paths through the full-resolution level:

- new-lesion head:      p = sigmoid(gain · relu(follow-up − baseline) − offset)
- baseline head:        p = sigmoid(gain · relu(baseline) − offset)
- follow-up head:       p = sigmoid(gain · relu(follow-up) − offset)

On z-scored images a voxel is called lesion where it is brighter than ``offset / gain`` standard
deviations (or, for new lesions, where it brightened by that much).
"""

from __future__ import annotations

from pathlib import Path

import torch

from msnewlesion.model import CoactSeg, ModelConfig
from msnewlesion.model.checkpoint import save_model


def _identity_tap(conv: torch.nn.Conv3d, out_channel: int, in_channel: int) -> None:
    centre = tuple(k // 2 for k in conv.kernel_size)
    conv.weight[(out_channel, in_channel, *centre)] = 1.0


def analytic_network(config: ModelConfig, gain: float = 8.0, offset: float = 20.0) -> CoactSeg:
    network = CoactSeg(config).eval()
    w = config.width
    with torch.no_grad():
        for parameter in network.parameters():
            parameter.zero_()
        for module in network.modules():
            if isinstance(module, torch.nn.BatchNorm3d):
                module.weight.fill_(1.0)
                module.running_mean.zero_()
                module.running_var.fill_(1.0)
        first = network.encoder.levels[0].units[0].conv
        _identity_tap(first, 0, 2)  # x1[0] = relu(difference)
        _identity_tap(first, 1, 0)  # x1[1] = relu(baseline)
        _identity_tap(first, 2, 1)  # x1[2] = relu(follow-up)
        _identity_tap(network.head_new.features.units[0].conv, 0, 0)
        _identity_tap(network.head_new.fusion.units[0].conv, 0, 2 * w)  # h3[0] in concat(h2 − h1, h1, h3)
        _identity_tap(network.head_baseline.features.units[0].conv, 0, 1)
        _identity_tap(network.head_followup.features.units[0].conv, 0, 2)
        for head in (network.head_new, network.head_baseline, network.head_followup):
            head.classifier.weight[1, 0, 0, 0, 0] = gain
            head.classifier.bias[1] = -offset
    return network


def save_analytic_model(folder: Path, *, spacing=(2.0, 2.0, 2.0), patch=32, width=4) -> Path:
    config = ModelConfig(
        name="analytic",
        width=width,
        patch_size=(patch,) * 3,
        spacing=spacing,
        description="hand-set weights for tests: flags voxels that brightened by 2.5 standard deviations",
        license="MIT",
    )
    return save_model(analytic_network(config), folder, overwrite=True)
