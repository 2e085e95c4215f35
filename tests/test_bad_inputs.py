"""Every command, given a bad input or an unusable output, fails fast with one clear line.

One table, one test: for each case the command exits with code 1, writes exactly one line on
stderr that names the file and the problem, lets no exception escape (no traceback), and leaves
the folder it worked in exactly as it found it: inputs untouched, no partial output, no folder
created. Cases that failed differently before (issue 14) say which item they cover.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import pickle
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from analytic_model import save_analytic_model
from msnewlesion.cli import app
from msnewlesion.io import claim_output_folder

SHAPE = (24, 24, 24)


@dataclass(frozen=True)
class Folder:
    """Where a case writes its inputs; ``model`` is a tiny model folder kept elsewhere."""

    root: Path
    model: Path

    def image(self, name: str, *, seed: int = 0, affine: np.ndarray | None = None) -> Path:
        data = np.random.default_rng(seed).uniform(1.0, 2.0, SHAPE).astype(np.float32)
        return self._save(name, data, np.eye(4) if affine is None else affine)

    def mask(self, name: str, *, seed: int = 0, affine: np.ndarray | None = None) -> Path:
        data = (np.random.default_rng(seed).random(SHAPE) > 0.8).astype(np.uint8)
        return self._save(name, data, np.eye(4) if affine is None else affine)

    def probability_map(self, name: str) -> Path:
        data = np.random.default_rng(3).uniform(0.01, 0.9, SHAPE).astype(np.float32)
        return self._save(name, data, np.eye(4))

    def truncated(self, name: str) -> Path:
        """A .nii.gz cut short in a copy: its header reads, its voxels do not."""
        path = self.image(name)
        path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
        return path

    def huge_header(self, name: str) -> Path:
        """A header that claims 5000³ float32 voxels (500 GB) in a file of a few bytes."""
        header = nib.Nifti1Image(np.zeros((2, 2, 2), np.float32), np.eye(4)).header.copy()
        header.set_data_shape((5000, 5000, 5000))
        header.set_data_offset(352)
        raw = header.binaryblock + b"\0" * 4 + np.zeros(8, np.float32).tobytes()
        path = self.root / name
        path.write_bytes(gzip.compress(raw) if name.endswith(".gz") else raw)
        return path

    def zero_affine(self, name: str) -> Path:
        """An sform of zeros and pixdims of 0: nibabel would print a warning of its own while reading it."""
        header = nib.Nifti1Image(np.zeros(SHAPE, np.float32), np.eye(4)).header.copy()
        header["pixdim"][1:4] = 0
        header.set_sform(np.diag([0.0, 0.0, 0.0, 1.0]), code=1)
        header.set_qform(None, code=0)
        header.set_data_offset(352)
        data = np.random.default_rng(0).uniform(1, 2, SHAPE).astype(np.float32)
        path = self.root / name
        path.write_bytes(header.binaryblock + b"\0" * 4 + data.tobytes(order="F"))
        return path

    def file(self, name: str, content: bytes = b"not a folder\n") -> Path:
        path = self.root / name
        path.write_bytes(content)
        return path

    def manifest(self, rows: list[str]) -> Path:
        text = "subject,kind,baseline,followup,label,brain_mask,split\n" + "".join(f"{row}\n" for row in rows)
        return self.file("manifest.csv", text.encode())

    def bids(self, description: str | None = None) -> Path:
        root = self.root / "bids"
        for session in ("01", "02"):
            anat = root / "sub-01" / f"ses-{session}" / "anat"
            anat.mkdir(parents=True)
            data = np.random.default_rng(int(session)).uniform(1, 2, SHAPE).astype(np.float32)
            self._save(str((anat / f"sub-01_ses-{session}_FLAIR.nii.gz").relative_to(self.root)), data, np.eye(4))
        if description is not None:
            (root / "dataset_description.json").write_text(description)
        return root

    def _save(self, name: str, data: np.ndarray, affine: np.ndarray) -> Path:
        path = self.root / name
        nib.save(nib.Nifti1Image(data, affine), str(path))
        return path


@dataclass(frozen=True)
class Case:
    """``command`` writes the case's inputs and returns the command line; ``expected`` must all appear in the line."""

    name: str
    command: Callable[[Folder], list[str]]
    expected: tuple[str, ...]
    busy: str | None = None  # a folder (under the case's root) another run is writing into


def _predict(f: Folder, baseline: Path, followup: Path, output: str = "out", *extra: str) -> list[str]:
    return ["predict", str(baseline), str(followup), "-o", str(f.root / output), "--model", str(f.model),
            "--skull-strip", "none", "--quiet", *extra]  # fmt: skip


def _preprocess(f: Folder, baseline: Path, followup: Path, output: str = "out") -> list[str]:
    return ["preprocess", str(baseline), str(followup), "-o", str(f.root / output), "--skull-strip", "none", "-q"]


def _two_rows(f: Folder) -> list[str]:
    """Two good single-scan rows (one to train on, one to validate with) and their files."""
    for name, seed in (("a", 0), ("b", 1)):
        f.image(f"{name}.nii.gz", seed=seed)
        f.mask(f"{name}_label.nii.gz", seed=seed)
    return ["a,single,a.nii.gz,,a_label.nii.gz,,train", "b,single,b.nii.gz,,b_label.nii.gz,,val"]


def _output_in_input_folder(f: Folder) -> list[str]:
    folder = f.root / "data"
    folder.mkdir()
    return _predict(f, f.image("data/t1.nii.gz"), f.image("data/new_lesions.nii.gz", seed=1), "data")


CASES = [
    # predict
    Case("predict: missing follow-up", lambda f: _predict(f, f.image("t1.nii.gz"), f.root / "t2.nii.gz"),
         ("follow-up FLAIR not found", "t2.nii.gz")),
    Case("predict: truncated gzip", lambda f: _predict(f, f.image("t1.nii.gz"), f.truncated("t2.nii.gz")),
         ("t2.nii.gz", "truncated")),
    Case("predict: header claims 5000³ voxels (item 5)",
         lambda f: _predict(f, f.image("t1.nii.gz"), f.huge_header("t2.nii.gz")), ("t2.nii.gz", "5000×5000×5000")),
    Case("predict: zero affine, no nibabel line (item 14)",
         lambda f: _predict(f, f.zero_affine("t1.nii"), f.image("t2.nii.gz")), ("t1.nii", "degenerate affine")),
    Case("predict: -o a regular file (item 2)",
         lambda f: (f.file("taken"), _predict(f, f.image("t1.nii.gz"), f.image("t2.nii.gz", seed=1), "taken"))[1],
         ("taken", "is a file, not a folder")),
    Case("predict: -o below a regular file (item 2)",
         lambda f: (f.file("taken"), _predict(f, f.image("t1.nii.gz"), f.image("t2.nii.gz", seed=1), "taken/out"))[1],
         ("taken/out", "taken is a file, not a folder")),
    Case("predict: an output would replace an input (item 3)", _output_in_input_folder,
         ("new_lesions.nii.gz", "it is one of the inputs")),
    Case("predict: another run writes into the folder (item 3)",
         lambda f: _predict(f, f.image("t1.nii.gz"), f.image("t2.nii.gz", seed=1)),
         ("another msnewlesion run", "other job", "out"), busy="out"),
    # preprocess
    Case("preprocess: -o a regular file (item 2)",
         lambda f: (f.file("taken"), _preprocess(f, f.image("t1.nii.gz"), f.image("t2.nii.gz", seed=1), "taken"))[1],
         ("taken", "is a file, not a folder")),
    Case("preprocess: -o below a regular file (item 2)",
         lambda f: (f.file("taken"), _preprocess(f, f.image("t1.nii.gz"), f.image("t2.nii.gz", seed=1), "taken/x"))[1],
         ("taken/x", "taken is a file, not a folder")),
    Case("preprocess: truncated gzip", lambda f: _preprocess(f, f.truncated("t1.nii.gz"), f.image("t2.nii.gz")),
         ("baseline FLAIR", "t1.nii.gz", "truncated")),
    Case("preprocess: another run writes into the folder (item 3)",
         lambda f: _preprocess(f, f.image("t1.nii.gz"), f.image("t2.nii.gz", seed=1)),
         ("another msnewlesion run", "out"), busy="out"),
    # evaluate
    Case("evaluate: a probability map without --threshold (item 10)",
         lambda f: ["evaluate", str(f.probability_map("pred.nii.gz")), str(f.mask("gt.nii.gz")), "-q"],
         ("pred.nii.gz", "0.01", "--threshold")),
    Case("evaluate: -o below a regular file (item 2)",
         lambda f: ["evaluate", str(f.mask("p.nii.gz")), str(f.mask("g.nii.gz", seed=1)), "-q",
                    "-o", str(f.file("taken") / "x.csv")],
         ("taken/x.csv", "taken is a file, not a folder")),
    Case("evaluate: masks on different grids",
         lambda f: ["evaluate", str(f.mask("p.nii.gz")), str(f.mask("g.nii.gz", affine=np.diag([2.0, 2, 2, 1]))), "-q"],
         ("not on the same grid", "p.nii.gz", "g.nii.gz")),
    Case("evaluate: an uncompressed header claims 5000³ voxels (item 5)",
         lambda f: ["evaluate", str(f.mask("p.nii.gz")), str(f.huge_header("g.nii")), "-q"],
         ("g.nii", "truncated or its header is wrong", "5000×5000×5000")),
    # train
    Case("train --dry-run: a truncated label (item 4)",
         lambda f: (f.image("a.nii.gz"), f.truncated("a_label.nii.gz"),
                    ["train", str(f.manifest(["a,single,a.nii.gz,,a_label.nii.gz,,train"])), "-o", str(f.root / "run"),
                     "--dry-run", "-q"])[2],
         ("manifest.csv", "line 2 (a)", "a_label.nii.gz", "truncated")),
    Case("train --dry-run: a subject twice (item 4)",
         lambda f: ["train", str(f.manifest([row.replace("b,", "a,", 1) for row in _two_rows(f)])), "-o",
                    str(f.root / "run"), "--dry-run", "-q"],
         ("manifest.csv", "subject 'a' is on lines 2, 3")),
    Case("train: a config value of the wrong type (item 12)",
         lambda f: ["train", str(f.manifest(_two_rows(f))), "-o", str(f.root / "run"), "-q",
                    "--config", str(f.file("train.yaml", b"iterations: 2\nlr: fast\n"))],
         ("train.yaml", "lr must be a number", "'fast'")),
    Case("train: -o below a regular file (item 2)",
         lambda f: ["train", str(f.manifest(_two_rows(f))), "-o", str(f.file("taken") / "run"), "-q"],
         ("taken/run", "taken is a file, not a folder")),
    # synth
    Case("synth: -o a regular file (item 2)",
         lambda f: ["synth", str(f.image("flair.nii.gz")), str(f.mask("lesions.nii.gz")), "-o", str(f.file("taken")),
                    "--mode", "remove", "-q"],
         ("taken", "is a file, not a folder")),
    Case("synth: lesions on another grid",
         lambda f: ["synth", str(f.image("flair.nii.gz")), str(f.mask("lesions.nii.gz", affine=np.diag([2, 2, 2, 1]))),
                    "-o", str(f.root / "out"), "--mode", "remove", "-q"],
         ("not on the same grid", "lesions.nii.gz")),
    Case("synth: no library names the flag (item 13)",
         lambda f: ["synth", str(f.image("flair.nii.gz")), str(f.mask("lesions.nii.gz")), "-o", str(f.root / "out"),
                    "-q"],
         ("pass --library", "--added 0")),
    # bids
    Case("bids: a malformed dataset_description.json (item 11)",
         lambda f: ["bids", str(f.bids('{"Name": "cohort",}')), str(f.root / "deriv"), "participant",
                    "--model", str(f.model), "-q"],
         ("dataset_description.json", "is not valid JSON")),
    Case("bids: the output folder below a regular file (item 2)",
         lambda f: ["bids", str(f.bids()), str(f.file("taken") / "deriv"), "participant", "--model", str(f.model),
                    "-q"],
         ("taken/deriv", "taken is a file, not a folder")),
    Case("bids: no BIDS folder",
         lambda f: ["bids", str(f.root / "nothing"), str(f.root / "deriv"), "group", "-q"],
         ("BIDS folder not found", "nothing")),
    # models convert-coactseg
    Case("convert-coactseg: random bytes (item 6)",
         lambda f: ["models", "convert-coactseg", str(f.file("random.pth", np.random.default_rng(0).bytes(2000))),
                    "-o", str(f.root / "model")],
         ("random.pth", "not a file of plain tensors", "weights_only=True")),
    Case("convert-coactseg: a pickle (item 6)",
         lambda f: ["models", "convert-coactseg", str(f.file("data.pkl", pickle.dumps({"a": 1}, protocol=4))),
                    "-o", str(f.root / "model")],
         ("data.pkl", "not a file of plain tensors")),
    Case("convert-coactseg: -o below a regular file (item 2)",
         lambda f: ["models", "convert-coactseg", str(f.file("random.pth", b"x")), "-o", str(f.file("taken") / "m")],
         ("taken/m", "taken is a file, not a folder")),
]  # fmt: skip


def _snapshot(root: Path) -> dict[str, str]:
    """Every file (by content) and folder under ``root``."""
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "folder"
        for path in sorted(root.rglob("*"))
    }


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_analytic_model(tmp_path_factory.mktemp("model") / "analytic")


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_a_bad_input_fails_with_one_line_and_leaves_everything_as_it_was(
    case: Case, model: Path, tmp_path: Path, runner: CliRunner
) -> None:
    folder = Folder(tmp_path, model)
    args = case.command(folder)
    before = _snapshot(tmp_path)
    busy = (
        claim_output_folder(tmp_path / case.busy, command="other job") if case.busy else contextlib.nullcontext()
    )
    with busy, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = runner.invoke(app, args)
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), result.exception  # nothing escaped: no traceback
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), lines[0]
    for text in case.expected:
        assert text in lines[0], (text, lines[0])
    assert "Traceback" not in result.output and "Aborted" not in result.output
    assert "weights_only=False" not in result.output  # never advise loading a refused file unsafely (item 6)
    assert not [w for w in caught if issubclass(w.category, UserWarning)], [str(w.message) for w in caught]
    assert _snapshot(tmp_path) == before  # inputs untouched, no partial output, no folder left behind
