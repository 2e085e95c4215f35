"""Inference engines: the choice, the fallback, the cache and the agreement of OpenVINO with PyTorch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from msnewlesion import engines
from msnewlesion.cli import app
from msnewlesion.errors import InputError
from msnewlesion.inference import SlidingWindowOptions, sliding_window_predict

openvino = pytest.importorskip("openvino")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A fresh disk cache, and an empty in-memory one."""
    monkeypatch.setenv("MSNEWLESION_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(engines, "_COMPILED", {})
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def trained():
    """The built-in model (trained) and a 64×64×48 piece of the built-in example pair, z-scored in the brain."""
    from msnewlesion.demo import example_pair
    from msnewlesion.hub import resolve_model
    from msnewlesion.io import load_volume
    from msnewlesion.model.checkpoint import load_model

    pair = example_pair()
    box = (slice(40, 104), slice(60, 124), slice(50, 98))
    images = []
    for path in (pair.baseline, pair.followup):
        data = load_volume(path).data[box].astype(np.float32)
        brain = data > 0
        images.append(np.where(brain, (data - data[brain].mean()) / data[brain].std(), 0).astype(np.float32))
    return load_model(resolve_model("demo").path).network, images[0], images[1], images[0] != 0


def test_auto_is_pytorch_the_engine_measured_fastest(monkeypatch) -> None:
    assert engines.openvino_available()  # installed with the test extra: auto still takes PyTorch
    assert engines.resolve_engine("auto", torch.device("cpu")) == "torch"
    assert engines.resolve_engine("openvino", torch.device("cpu")) == "openvino"
    assert engines.resolve_engine("auto", torch.device("cuda")) == "torch"
    assert engines.resolve_engine("torch", torch.device("cpu")) == "torch"
    with pytest.raises(InputError, match="OpenVINO engine runs on the CPU, not on cuda"):
        engines.resolve_engine("openvino", torch.device("cuda"))
    with pytest.raises(InputError, match="not one of: auto, torch, openvino"):
        engines.resolve_engine("onnx", torch.device("cpu"))


def test_without_openvino_auto_falls_back_and_asking_for_it_says_what_to_install(monkeypatch) -> None:
    monkeypatch.setattr(engines, "openvino_available", lambda: False)
    assert engines.resolve_engine("auto", torch.device("cpu")) == "torch"
    with pytest.raises(InputError, match=r"pip install 'msnewlesion\[openvino\]'"):
        engines.resolve_engine("openvino", torch.device("cpu"))


def test_predict_refuses_a_missing_engine_before_any_work(monkeypatch, tmp_path) -> None:
    import msnewlesion.predict as predict

    monkeypatch.setattr(engines, "openvino_available", lambda: False)
    monkeypatch.setattr(predict, "preprocess_pair", lambda *a, **k: pytest.fail("preprocessing ran first"))
    image = tmp_path / "t.nii.gz"
    import nibabel as nib

    nib.save(nib.Nifti1Image(np.ones((8, 8, 8), np.float32), np.eye(4)), str(image))
    result = CliRunner().invoke(
        app, ["predict", str(image), str(image), "-o", str(tmp_path / "out"), "--engine", "openvino", "--quiet"]
    )
    assert result.exit_code == 1 and "msnewlesion[openvino]" in result.stderr
    assert "Traceback" not in result.output and not (tmp_path / "out").exists()


@pytest.mark.slow
def test_openvino_agrees_with_pytorch_on_a_trained_network(trained, cache) -> None:
    network, baseline, followup, brain = trained
    maps = {}
    for engine in ("torch", "openvino"):
        for precision in ("fp32", "bf16"):
            options = SlidingWindowOptions(patch_size=(48, 48, 48), engine=engine, precision=precision)
            maps[engine, precision] = sliding_window_predict(network, baseline, followup, options=options,
                                                             brain_mask=brain)  # fmt: skip
    for head in ("baseline", "followup", "new"):
        # the same computation in fp32: equal up to rounding
        torch_fp32, openvino_fp32 = getattr(maps["torch", "fp32"], head), getattr(maps["openvino", "fp32"], head)
        assert np.abs(torch_fp32 - openvino_fp32).max() < 1e-3
        # in bf16 each engine rounds its own way; the masks agree
        a, b = getattr(maps["torch", "bf16"], head) > 0.5, getattr(maps["openvino", "bf16"], head) > 0.5
        assert (a.sum() + b.sum()) == 0 or 2 * (a & b).sum() / (a.sum() + b.sum()) >= 0.95
    assert (maps["torch", "fp32"].followup > 0.5).any()  # the heads found lesions here: the check is not vacuous


@pytest.mark.slow
def test_the_converted_network_is_cached_on_disk_and_reused(trained, cache, monkeypatch) -> None:
    network, baseline, followup, brain = trained
    options = SlidingWindowOptions(patch_size=(32, 32, 32), engine="openvino", precision="fp32")
    first = sliding_window_predict(network, baseline, followup, options=options, brain_mask=brain)
    written = sorted(p.name for p in (cache / "openvino").glob("*/model.*"))
    assert written == ["model.bin", "model.xml"]
    assert any((cache / "openvino" / "compiled").iterdir())  # OpenVINO's compiled-model cache
    # a new process has nothing in memory: the disk cache serves it, with no conversion
    monkeypatch.setattr(engines, "_COMPILED", {})
    from openvino.frontend.pytorch import ts_decoder

    monkeypatch.setattr(ts_decoder, "TorchScriptPythonDecoder", lambda *a, **k: pytest.fail("converted again"))
    again = sliding_window_predict(network, baseline, followup, options=options, brain_mask=brain)
    np.testing.assert_array_equal(first.new, again.new)


@pytest.mark.slow
def test_conversion_sends_no_telemetry(trained, cache, monkeypatch) -> None:
    import openvino_telemetry

    def refuse(*args, **kwargs):
        raise AssertionError("OpenVINO telemetry was started")

    monkeypatch.setattr(openvino_telemetry.Telemetry, "__init__", refuse)
    network, baseline, followup, _ = trained
    options = SlidingWindowOptions(patch_size=(32, 32, 32), engine="openvino", precision="fp32")
    sliding_window_predict(network, baseline[:32, :32, :32], followup[:32, :32, :32], options=options)


@pytest.mark.slow
def test_the_skull_stripping_network_runs_through_openvino_too(cache) -> None:
    from msnewlesion.preprocess.hdbet_v1 import HdBetV1Settings, hdbet_v1_brain_probability

    head = np.zeros((48, 64, 64), np.float32)
    head[8:40, 12:52, 12:52] = 1.0
    head += np.random.default_rng(0).normal(scale=0.05, size=head.shape).astype(np.float32)
    head = (head - head.mean()) / head.std()
    settings = HdBetV1Settings(precision="fp32")
    with_torch = hdbet_v1_brain_probability([head], settings=settings, engine="torch")
    with_openvino = hdbet_v1_brain_probability([head], settings=settings, engine="openvino")
    assert with_openvino.shape == head.shape
    assert np.abs(with_torch - with_openvino).max() < 1e-2  # a deep net with instance norms: fp32 rounding
    a, b = with_torch > 0.5, with_openvino > 0.5
    assert a.any() and 2 * (a & b).sum() / (a.sum() + b.sum()) > 0.99
