from __future__ import annotations

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from msnewlesion.cli import app
from msnewlesion.model.checkpoint import load_model
from msnewlesion.model.convert import official_state_dict_shapes
from reference_coactseg import OfficialLayoutCoactSeg

TSV = Path(__file__).parent / "data" / "coactseg_official_state_dict.tsv"


def official_layout() -> dict[str, tuple[int, ...]]:
    shapes = {}
    for line in TSV.read_text().splitlines():
        name, shape = line.split("\t")
        shapes[name] = tuple(int(s) for s in shape.strip("[]").split(",") if s.strip())
    return shapes


def random_official_state_dict(seed: int = 7) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name, shape in official_layout().items():
        if name.endswith("num_batches_tracked"):
            state[name] = torch.tensor(1234, dtype=torch.long)
        elif name.endswith("running_var"):
            state[name] = torch.rand(shape, generator=generator) + 0.5
        else:
            state[name] = torch.randn(shape, generator=generator) * 0.1
    return state


def test_the_package_knows_the_official_layout() -> None:
    assert official_state_dict_shapes() == official_layout()
    assert len(official_layout()) == 230


@pytest.mark.slow
def test_converted_network_matches_the_reference_layout(tmp_path: Path, runner: CliRunner) -> None:
    state = random_official_state_dict()
    torch.save(state, tmp_path / "vnet_best_model.pth")
    result = runner.invoke(
        app, ["models", "convert-coactseg", str(tmp_path / "vnet_best_model.pth"), "-o", str(tmp_path / "official")]
    )
    assert result.exit_code == 0, result.output

    converted = load_model(tmp_path / "official")
    reference = OfficialLayoutCoactSeg().eval()
    reference.load_state_dict(state, strict=True)  # the same tensors, directly by name
    x = torch.randn(1, 3, 32, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ours = converted.network(x)
        theirs = reference(x)
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)

    config = converted.config
    assert config.spacing == (0.5, 0.75, 0.75)
    assert config.patch_size == (80, 80, 80)
    assert config.axis_order == "zyx"
    assert config.intensity_normalization == "zscore-brain-box" and config.box_margin == 15
    assert config.width == 16 and config.norm == "batch"
    assert len(config.extra["source_sha256"]) == 64


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda s: s.pop("decoder.block_c2f.conv.0.weight"), "1 missing: decoder.block_c2f.conv.0.weight"),
        (
            lambda s: s.__setitem__("decoder.out_conv_3.weight", torch.zeros(3, 16, 1, 1, 1)),
            r"misshaped: decoder.out_conv_3.weight has shape \[3, 16, 1, 1, 1\], expected \[2, 16, 1, 1, 1\]",
        ),
        (lambda s: s.__setitem__("decoder.block_ten.conv.0.weight", torch.zeros(1)), "1 unexpected"),
    ],
)
def test_damaged_checkpoints_are_refused_clearly(tmp_path: Path, runner: CliRunner, damage, message: str) -> None:
    state = random_official_state_dict()
    damage(state)
    torch.save(state, tmp_path / "broken.pth")
    result = runner.invoke(app, ["models", "convert-coactseg", str(tmp_path / "broken.pth"), "-o", str(tmp_path / "m")])
    assert result.exit_code == 1
    assert "error:" in result.output
    assert "Traceback" not in result.output
    import re

    assert re.search(message, " ".join(result.output.split())), result.output
    assert not (tmp_path / "m").exists()


class NotATensor:
    def __reduce__(self):
        return (print, ("this would run on load",))


def test_files_that_need_unpickling_code_are_refused(tmp_path: Path, runner: CliRunner) -> None:
    torch.save({"payload": NotATensor()}, tmp_path / "evil.pth")
    result = runner.invoke(app, ["models", "convert-coactseg", str(tmp_path / "evil.pth"), "-o", str(tmp_path / "m")])
    assert result.exit_code == 1
    assert "weights_only=True" in " ".join(result.output.split())
    assert "this would run on load" not in result.output
    assert not (tmp_path / "m").exists()


def test_missing_checkpoint(tmp_path: Path, runner: CliRunner) -> None:
    result = runner.invoke(app, ["models", "convert-coactseg", str(tmp_path / "nope.pth"), "-o", str(tmp_path / "m")])
    assert result.exit_code == 1
    assert "official checkpoint not found" in result.output
