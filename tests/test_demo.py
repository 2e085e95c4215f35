"""The README's main command: the full prediction on the built-in example pair with the built-in model."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from msnewlesion.cli import app
from msnewlesion.demo import example_pair
from msnewlesion.model.checkpoint import file_sha256, load_model

#: What the demo reaches on its example (measured: F1 1.00, 6 of 6 new lesions, no false positive);
#: the floor leaves room for other CPUs (bf16 or fp32) and library versions.
F1_FLOOR = 0.8


@pytest.mark.slow
def test_the_demo_finds_the_examples_new_lesions(tmp_path: Path, runner: CliRunner, monkeypatch) -> None:
    # the README's main command works offline: no host may be looked up while it runs
    real_getaddrinfo = socket.getaddrinfo

    def loopback_only(host, *args, **kwargs):
        if host not in ("localhost", "127.0.0.1", "::1"):
            raise OSError(f"the demo tried to reach {host}")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", loopback_only)
    result = runner.invoke(app, ["demo", "-o", str(tmp_path / "demo"), "--quiet", "--json"])
    assert result.exit_code == 0, result.output
    evaluation = json.loads(result.stdout)
    assert evaluation["n_ref_lesions"] == 6
    assert evaluation["lesion_f1"] >= F1_FLOOR
    assert evaluation["lesion_sensitivity"] >= F1_FLOOR
    assert "lesion-wise F1" in result.stderr

    pair = example_pair()
    output = nib.load(str(tmp_path / "demo" / "new_lesions.nii.gz"))
    followup = nib.load(str(pair.followup))
    assert output.shape == followup.shape and np.array_equal(output.affine, followup.affine)
    for name in ("lesions_baseline.nii.gz", "new_lesions.tsv", "summary.json", "qc.png", "demo_evaluation.json"):
        assert (tmp_path / "demo" / name).is_file(), name
    summary = json.loads((tmp_path / "demo" / "summary.json").read_text())
    assert summary["model"]["name"] == "demo" and summary["model"]["source"] == "builtin"


def test_the_demo_model_is_in_the_registry_and_says_what_it_is(runner: CliRunner) -> None:
    listed = json.loads(runner.invoke(app, ["models", "list", "--json"]).stdout)
    entries = listed if isinstance(listed, list) else listed["models"]
    demo = next(entry for entry in entries if entry["name"] == "demo")
    assert demo["source"] == "builtin"
    model = load_model(demo["path"])
    assert demo["sha256"] == file_sha256(Path(demo["path"]) / "model.safetensors") == model.weights_sha256
    assert "NOT a clinical model" in model.config.description
    assert "synthetic" in model.config.training_data.lower()
    assert model.config.width == 8 and model.config.spacing == (1.0, 1.0, 1.0)


def test_the_example_keeps_its_attribution() -> None:
    pair = example_pair()
    readme = (pair.baseline.parent / "README.md").read_text()
    assert "CC-BY" in readme and "Lesjak" in readme
    assert pair.info["new_lesions"]["count"] == 6
