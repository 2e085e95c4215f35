from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from msnewlesion.errors import ModelError, OutputExistsError
from msnewlesion.model import CoactSeg, ModelConfig
from msnewlesion.model.checkpoint import load_model, save_model


def trained_looking(config: ModelConfig) -> CoactSeg:
    network = CoactSeg(config)
    # make the running statistics non-default so the round trip is really checked
    network.train()
    with torch.no_grad():
        network(torch.randn(2, 3, 32, 32, 32))
    return network.eval()


def test_round_trip_is_exact(tmp_path: Path, tiny_config: ModelConfig) -> None:
    config = tiny_config.replace(
        description="unit test", training_data="none", license="MIT", threshold=0.4, spacing=(0.5, 0.75, 0.75)
    )
    network = trained_looking(config)
    save_model(network, tmp_path / "model")
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == ["config.json", "model.safetensors"]

    loaded = load_model(tmp_path / "model")
    assert loaded.config == config
    original, restored = network.state_dict(), loaded.network.state_dict()
    assert original.keys() == restored.keys()
    for name in original:
        assert torch.equal(original[name], restored[name]), name
    x = torch.randn(1, 3, 32, 32, 32)
    with torch.no_grad():
        for a, b in zip(network(x), loaded.network(x), strict=True):
            assert torch.equal(a, b)
    assert len(loaded.weights_sha256) == 64


def test_config_json_holds_what_a_user_needs(tmp_path: Path, tiny_config: ModelConfig) -> None:
    save_model(CoactSeg(tiny_config), tmp_path / "model")
    data = json.loads((tmp_path / "model" / "config.json").read_text())
    for key in (
        "architecture",
        "width",
        "norm",
        "spacing",
        "patch_size",
        "intensity_normalization",
        "threshold",
        "description",
        "training_data",
        "license",
    ):
        assert key in data
    assert data["spacing"] == [1.0, 1.0, 1.0] and data["patch_size"] == [32, 32, 32]


def test_config_that_does_not_match_the_weights_is_named(tmp_path: Path, tiny_config: ModelConfig) -> None:
    save_model(CoactSeg(tiny_config), tmp_path / "model")
    config_file = tmp_path / "model" / "config.json"
    data = json.loads(config_file.read_text())
    data["width"] = 8
    config_file.write_text(json.dumps(data))
    with pytest.raises(ModelError, match=r"says width=8 but model\.safetensors holds a network of width 4"):
        load_model(tmp_path / "model")
    data["width"] = 4
    data["norm"] = "instance"
    config_file.write_text(json.dumps(data))
    with pytest.raises(ModelError, match=r"unexpected: .*running_mean"):
        load_model(tmp_path / "model")


def test_missing_and_unexpected_tensors_are_named(tmp_path: Path, tiny_config: ModelConfig) -> None:
    save_model(CoactSeg(tiny_config), tmp_path / "model")
    weights = tmp_path / "model" / "model.safetensors"
    tensors = load_file(str(weights))
    del tensors["head_new.classifier.bias"]
    tensors["extra.weight"] = torch.zeros(1)
    save_file(tensors, str(weights))
    with pytest.raises(ModelError) as error:
        load_model(tmp_path / "model")
    assert "1 missing: head_new.classifier.bias" in str(error.value)
    assert "1 unexpected: extra.weight" in str(error.value)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"format_version": 99}, "newer than this msnewlesion"),
        ({"favourite_colour": "blue"}, "keys this msnewlesion version does not know: favourite_colour"),
        ({"norm": "group"}, "norm 'group' is not one of: batch, instance"),
        ({"patch_size": [30, 30, 30]}, "multiples of 16"),
    ],
)
def test_configs_this_version_cannot_run_are_refused(
    tmp_path: Path, tiny_config: ModelConfig, change: dict, message: str
) -> None:
    save_model(CoactSeg(tiny_config), tmp_path / "model")
    config_file = tmp_path / "model" / "config.json"
    config_file.write_text(json.dumps(json.loads(config_file.read_text()) | change))
    with pytest.raises(ModelError, match=message):
        load_model(tmp_path / "model")


def test_missing_folder_and_weights(tmp_path: Path, tiny_config: ModelConfig) -> None:
    with pytest.raises(ModelError, match="model folder not found"):
        load_model(tmp_path / "nowhere")
    save_model(CoactSeg(tiny_config), tmp_path / "model")
    (tmp_path / "model" / "model.safetensors").unlink()
    with pytest.raises(ModelError, match="model weights not found"):
        load_model(tmp_path / "model")


def test_existing_model_folder_is_kept_unless_overwrite(tmp_path: Path, tiny_config: ModelConfig) -> None:
    first = CoactSeg(tiny_config)
    save_model(first, tmp_path / "model")
    with pytest.raises(OutputExistsError):
        save_model(CoactSeg(tiny_config), tmp_path / "model")
    second = CoactSeg(tiny_config)
    save_model(second, tmp_path / "model", overwrite=True)
    restored = load_model(tmp_path / "model").network.state_dict()
    assert torch.equal(restored["head_new.classifier.weight"], second.state_dict()["head_new.classifier.weight"])
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # no temporary folders left behind
