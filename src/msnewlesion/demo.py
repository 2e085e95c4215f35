"""The built-in example pair and the demo run: the whole prediction on data that ships with the package.

The example is a longitudinal pair made with :mod:`msnewlesion.synth` from a real FLAIR of the
Ljubljana (LIT) cross-sectional MS database (CC-BY; see ``data/example/README.md``), so its new
lesions are known exactly and the demo can score itself.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from msnewlesion.errors import MsNewLesionError
from msnewlesion.io import load_mask, write_json
from msnewlesion.metrics import CaseResult, EvaluationOptions, evaluate_case
from msnewlesion.predict import PredictOptions, open_model, predict_pair, write_prediction
from msnewlesion.progress import ProgressCallback

__all__ = ["EXAMPLE_DIR", "DemoResult", "ExamplePair", "example_pair", "run_demo"]

EXAMPLE_DIR = Path(__file__).resolve().parent / "data" / "example"
#: The built-in model the demo scores the example with, whatever the default model
#: (:data:`msnewlesion.settings.DEFAULT_MODEL`) is: the example's documented F1 is this model's.
DEMO_MODEL = "demo"


@dataclass(frozen=True)
class ExamplePair:
    """The files of the built-in example."""

    baseline: Path
    followup: Path
    new_lesions: Path
    info: dict[str, Any]


def example_pair() -> ExamplePair:
    """The built-in example pair, its known new lesions and how it was made.

    Raises
    ------
    MsNewLesionError
        The package was installed without its data files.
    """
    files = {name: EXAMPLE_DIR / f"{name}.nii.gz" for name in ("baseline", "followup", "new_lesions")}
    missing = [str(path) for path in files.values() if not path.is_file()]
    if missing:
        raise MsNewLesionError(
            f"the built-in example is missing ({', '.join(missing)}): reinstall msnewlesion with its package data"
        )
    info_file = EXAMPLE_DIR / "example.json"
    info = json.loads(info_file.read_text(encoding="utf-8")) if info_file.is_file() else {}
    return ExamplePair(files["baseline"], files["followup"], files["new_lesions"], info)


@dataclass(frozen=True)
class DemoResult:
    outputs: dict[str, Path]
    evaluation: CaseResult
    summary: dict[str, Any]


def run_demo(
    output: str | os.PathLike[str],
    *,
    device: str = "auto",
    overwrite: bool = False,
    skull_strip: str = "none",
    skull_strip_mode: str = "auto",
    engine: str = "auto",
    progress: ProgressCallback | None = None,
) -> DemoResult:
    """Predict new lesions on the example pair with the ``demo`` model and score them.

    Runs the full prediction (preprocessing included; the example is already skull-stripped, so
    skull stripping is off unless ``skull_strip`` asks for it), writes the usual outputs to
    ``output`` plus ``demo_evaluation.json``, and compares the new-lesion mask with the example's
    known new lesions.
    """
    pair = example_pair()
    model, provenance = open_model(DEMO_MODEL, device=device)
    options = PredictOptions(
        skull_strip=skull_strip, skull_strip_mode=skull_strip_mode, engine=engine, device=device
    )
    prediction = predict_pair(pair.baseline, pair.followup, model, options, provenance=provenance, progress=progress)
    outputs = write_prediction(prediction, output, inputs=[pair.baseline, pair.followup], overwrite=overwrite)
    reference = load_mask(pair.new_lesions, what="the example's new lesions")
    evaluation = evaluate_case(
        prediction.new_lesions.data, reference.data, reference.spacing, EvaluationOptions(), case="example"
    )
    evaluation_file = Path(output) / "demo_evaluation.json"
    write_json(evaluation_file, {"reference": str(pair.new_lesions), **evaluation.as_dict(lesions=True)})
    outputs["evaluation"] = evaluation_file
    return DemoResult(outputs=outputs, evaluation=evaluation, summary=prediction.summary)
