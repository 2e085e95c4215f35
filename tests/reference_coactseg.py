"""An independent, test-only rendering of the published CoactSeg network in the official layout.

Module names follow the official checkpoint (``encoder.block_one.conv.0.weight`` ...), so a state
dict in that layout loads into it directly by name. The tests compare the package's converted
network against it.
"""

from __future__ import annotations

import torch
from torch import nn


def _stage(n_convs: int, c_in: int, c_out: int) -> nn.Module:
    block = nn.Module()
    layers: list[nn.Module] = []
    for i in range(n_convs):
        layers += [nn.Conv3d(c_in if i == 0 else c_out, c_out, 3, padding=1), nn.BatchNorm3d(c_out), nn.ReLU()]
    block.conv = nn.Sequential(*layers)
    return block


def _resample(c_in: int, c_out: int, up: bool) -> nn.Module:
    block = nn.Module()
    conv = nn.ConvTranspose3d(c_in, c_out, 2, stride=2) if up else nn.Conv3d(c_in, c_out, 2, stride=2)
    block.conv = nn.Sequential(conv, nn.BatchNorm3d(c_out), nn.ReLU())
    return block


class OfficialLayoutCoactSeg(nn.Module):
    def __init__(self, f: int = 16) -> None:
        super().__init__()
        e = self.encoder = nn.Module()
        e.block_one, e.block_one_dw = _stage(1, 3, f), _resample(f, 2 * f, False)
        e.block_two, e.block_two_dw = _stage(2, 2 * f, 2 * f), _resample(2 * f, 4 * f, False)
        e.block_three, e.block_three_dw = _stage(3, 4 * f, 4 * f), _resample(4 * f, 8 * f, False)
        e.block_four, e.block_four_dw = _stage(3, 8 * f, 8 * f), _resample(8 * f, 16 * f, False)
        e.block_five = _stage(3, 16 * f, 16 * f)
        d = self.decoder = nn.Module()
        d.block_five_up, d.block_six = _resample(16 * f, 8 * f, True), _stage(3, 8 * f, 8 * f)
        d.block_six_up, d.block_seven = _resample(8 * f, 4 * f, True), _stage(3, 4 * f, 4 * f)
        d.block_seven_up, d.block_eight = _resample(4 * f, 2 * f, True), _stage(2, 2 * f, 2 * f)
        d.block_eight_up = _resample(2 * f, f, True)
        d.block_nine_1, d.block_nine_2, d.block_nine_3 = _stage(1, f, f), _stage(1, f, f), _stage(1, f, f)
        d.block_c2f = _stage(1, 3 * f, f)
        d.out_conv_1, d.out_conv_2, d.out_conv_3 = (nn.Conv3d(f, 2, 1) for _ in range(3))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        e, d = self.encoder, self.decoder
        x1 = e.block_one.conv(x)
        x2 = e.block_two.conv(e.block_one_dw.conv(x1))
        x3 = e.block_three.conv(e.block_two_dw.conv(x2))
        x4 = e.block_four.conv(e.block_three_dw.conv(x3))
        x5 = e.block_five.conv(e.block_four_dw.conv(x4))
        y = d.block_six.conv(d.block_five_up.conv(x5) + x4)
        y = d.block_seven.conv(d.block_six_up.conv(y) + x3)
        y = d.block_eight.conv(d.block_seven_up.conv(y) + x2)
        y = d.block_eight_up.conv(y) + x1
        h1, h2, h3 = d.block_nine_1.conv(y), d.block_nine_2.conv(y), d.block_nine_3.conv(y)
        fused = d.block_c2f.conv(torch.cat((h2 - h1, h1, h3), dim=1))
        return d.out_conv_1(h1), d.out_conv_2(h2), d.out_conv_3(fused)
