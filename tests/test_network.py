from __future__ import annotations

import pytest
import torch

from msnewlesion.model import CoactSeg, ModelConfig, lesion_probabilities, make_input
from msnewlesion.model.network import fold_batch_norm


def test_default_network_has_the_published_size() -> None:
    network = CoactSeg()
    assert sum(p.numel() for p in network.parameters()) == 9_484_502
    assert len(network.state_dict()) == 230


@pytest.mark.parametrize("width, expected", [(4, 594_650), (8, 2_373_614)])
def test_width_scales_the_network(width: int, expected: int) -> None:
    assert sum(p.numel() for p in CoactSeg(ModelConfig(width=width)).parameters()) == expected


def test_forward_gives_three_two_class_heads(tiny_config: ModelConfig) -> None:
    network = CoactSeg(tiny_config).eval()
    out = network(torch.randn(2, 3, 32, 32, 48))
    for logits in out:
        assert logits.shape == (2, 2, 32, 32, 48)
    assert out._fields == ("baseline", "followup", "new")


def test_new_lesion_head_sees_h2_minus_h1_then_h1_then_h3(tiny_config: ModelConfig) -> None:
    network = CoactSeg(tiny_config).eval()
    captured: dict[str, torch.Tensor] = {}

    def keep(name: str):
        def hook(_module, inputs, output):
            captured[name] = inputs[0] if name == "fusion" else output

        return hook

    network.head_baseline.features.register_forward_hook(keep("h1"))
    network.head_followup.features.register_forward_hook(keep("h2"))
    network.head_new.features.register_forward_hook(keep("h3"))
    network.head_new.fusion.register_forward_hook(keep("fusion"))
    with torch.no_grad():
        network(torch.randn(1, 3, 32, 32, 32))
    w = tiny_config.width
    fused_input = captured["fusion"]
    assert fused_input.shape[1] == 3 * w
    torch.testing.assert_close(fused_input[:, :w], captured["h2"] - captured["h1"])
    torch.testing.assert_close(fused_input[:, w : 2 * w], captured["h1"])
    torch.testing.assert_close(fused_input[:, 2 * w :], captured["h3"])


def test_skips_are_added_not_concatenated(tiny_config: ModelConfig) -> None:
    network = CoactSeg(tiny_config)
    w = tiny_config.width
    # a concatenating decoder would need 2× input channels after each up-sampling
    assert network.decoder.levels[0].units[0].conv.in_channels == 8 * w
    assert network.decoder.levels[2].units[0].conv.in_channels == 2 * w
    assert network.head_baseline.features.units[0].conv.in_channels == w


def test_dropout_only_acts_in_training(tiny_config: ModelConfig) -> None:
    network = CoactSeg(tiny_config)
    x = torch.randn(1, 3, 32, 32, 32)
    network.eval()
    with torch.no_grad():
        a, b = network(x).new, network(x).new
    torch.testing.assert_close(a, b)
    network.train()
    with torch.no_grad():
        c, d = network(x).new, network(x).new
    assert not torch.allclose(c, d)


def test_instance_norm_and_no_dropout_are_config_values() -> None:
    network = CoactSeg(ModelConfig(width=4, norm="instance", dropout=0.0, patch_size=(32, 32, 32)))
    assert isinstance(network.encoder.levels[0].units[0].norm, torch.nn.InstanceNorm3d)
    assert isinstance(network.encoder.dropout, torch.nn.Identity)
    assert network(torch.randn(1, 3, 32, 32, 32)).new.shape == (1, 2, 32, 32, 32)


def test_lesion_probabilities_is_softmax_channel_one() -> None:
    logits = torch.randn(3, 2, 4, 5, 6)
    torch.testing.assert_close(lesion_probabilities(logits), torch.softmax(logits, dim=1)[:, 1])
    with pytest.raises(ValueError, match="two-class"):
        lesion_probabilities(torch.randn(1, 3, 4, 4, 4))


def test_single_scan_input_is_x_x_zero() -> None:
    x = torch.randn(2, 8, 8, 8)
    stacked = make_input(x)
    assert stacked.shape == (2, 3, 8, 8, 8)
    torch.testing.assert_close(stacked[:, 0], x)
    torch.testing.assert_close(stacked[:, 1], x)
    assert torch.count_nonzero(stacked[:, 2]) == 0
    y = torch.randn(2, 8, 8, 8)
    torch.testing.assert_close(make_input(x, y)[:, 2], y - x)


def test_folding_batch_norms_keeps_the_outputs_and_the_original(tiny_config: ModelConfig) -> None:
    network = CoactSeg(tiny_config)
    network.train()
    with torch.no_grad():
        network(torch.randn(2, 3, 32, 32, 32))  # running statistics away from their defaults
    folded = fold_batch_norm(network)
    assert network.training  # the original is left as it was
    assert not any(isinstance(m, torch.nn.BatchNorm3d) for m in folded.modules())
    assert any(isinstance(m, torch.nn.BatchNorm3d) for m in network.modules())
    x = torch.randn(1, 3, 32, 32, 32)
    with torch.no_grad():
        for a, b in zip(network.eval()(x), folded(x), strict=True):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
