"""Regression tests for the reliability issue (14): outputs checked and held up front, every problem of
a manifest at once, masks that are not masks refused, configs typed, messages that fit their reader,
and an interrupted run that stops at once and leaves nothing behind.

The table of bad inputs over every command is in test_bad_inputs.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from scipy import ndimage
from typer.testing import CliRunner

from msnewlesion.cli import app
from msnewlesion.cli.common import flag_spelling, flags_of
from msnewlesion.errors import InputError, OutputExistsError, OutputInUseError, parameter, spelling_parameters
from msnewlesion.io import LOCK_NAME, check_output_location, check_outputs_free, claim_output_folder, load_volume
from msnewlesion.predict import PredictOptions
from msnewlesion.training import TrainConfig


def _save(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> Path:
    nib.save(nib.Nifti1Image(data, np.eye(4) if affine is None else affine), str(path))
    return path


# ---------------------------------------------------------------------------------------------
# items 2 and 3: outputs checked before any work and held for the run


def test_an_output_that_cannot_be_written_is_refused_up_front(tmp_path: Path) -> None:
    regular = tmp_path / "regular"
    regular.write_text("x")
    with pytest.raises(InputError, match="is a file, not a folder"):
        check_output_location(regular, kind="folder")
    with pytest.raises(InputError, match=f"cannot create the output {regular / 'a' / 'b'}: {regular} is a file"):
        check_output_location(regular / "a" / "b")
    with pytest.raises(InputError, match="is a folder: give a file name"):
        check_output_location(tmp_path, kind="file")
    with pytest.raises(InputError, match="regular is a file"):
        check_outputs_free([regular / "results.csv"])
    check_output_location(tmp_path / "new" / "deeper" / "x.csv")  # missing folders are fine: they are made
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(InputError, match="no permission to write into"):
            check_output_location(locked / "out", kind="folder")


def test_a_claimed_folder_refuses_a_second_run_until_released(tmp_path: Path) -> None:
    out = tmp_path / "new" / "out"
    with claim_output_folder(out, command="predict") as claim:
        assert (out / LOCK_NAME).is_file()
        with pytest.raises(OutputInUseError) as busy, claim_output_folder(out, command="preprocess"):
            pytest.fail("a second run got the folder")
        assert f"(predict, process {os.getpid()} on" in str(busy.value) and str(out) in str(busy.value)
        scratch = claim.scratch
        (scratch / "registration.mat").write_text("x")
    assert not scratch.exists() and not (out / LOCK_NAME).exists()
    assert not (tmp_path / "new").exists()  # made by the claim and left empty: removed, parents too
    with claim_output_folder(out, command="predict"):
        (out / "result.txt").write_text("done")
    assert sorted(p.name for p in out.iterdir()) == ["result.txt"]


def test_a_claim_clears_what_killed_runs_left_and_nothing_else(tmp_path: Path) -> None:
    out = tmp_path / "out"
    (out / ".msnewlesion-scratch-dead" / "msnewlesion-registration-x").mkdir(parents=True)
    (out / ".new_lesions.partial-1a2b3c4d.nii.gz").write_bytes(b"half")
    (out / ".preprocess.partial-0000").mkdir()
    (out / "notes.txt").write_text("mine")
    (out / ".hidden_but_mine").write_text("mine")
    with claim_output_folder(out):
        pass
    assert sorted(p.name for p in out.iterdir()) == [".hidden_but_mine", "notes.txt"]


def test_claims_check_outputs_and_inputs_before_creating_anything(tmp_path: Path) -> None:
    source = tmp_path / "data" / "t1.nii.gz"
    source.parent.mkdir()
    source.write_bytes(b"input")
    with (
        pytest.raises(InputError, match="it is one of the inputs"),
        claim_output_folder(source.parent, outputs=[source], inputs=[source]),
    ):
        pytest.fail("claimed")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "summary.json").write_text("{}")
    with (
        pytest.raises(OutputExistsError, match="`overwrite=True`"),
        claim_output_folder(tmp_path / "out", outputs=[tmp_path / "out" / "summary.json"]),
    ):
        pytest.fail("claimed")
    assert source.read_bytes() == b"input" and not (tmp_path / "out" / LOCK_NAME).exists()


def test_predict_checks_its_outputs_before_loading_anything(tmp_path: Path, runner: CliRunner) -> None:
    folder = tmp_path / "data"
    folder.mkdir()
    baseline = _save(folder / "t1.nii.gz", np.ones((8, 8, 8), np.float32))
    trap = _save(folder / "new_lesions.nii.gz", np.ones((8, 8, 8), np.float32))
    # The model does not exist: an error about it would mean the work began before the outputs were checked.
    started = time.perf_counter()
    result = runner.invoke(app, ["predict", str(baseline), str(trap), "-o", str(folder), "--model", "no-such"])
    assert result.exit_code == 1
    assert "it is one of the inputs" in result.stderr and "no-such" not in result.stderr
    assert time.perf_counter() - started < 5


# ---------------------------------------------------------------------------------------------
# item 4: train --dry-run lists every problem at once


def test_dry_run_lists_field_file_value_and_duplicate_problems_in_one_run(tmp_path: Path, runner: CliRunner) -> None:
    shape = (16, 16, 16)
    image = np.random.default_rng(0).uniform(1, 2, shape).astype(np.float32)
    label = (image > 1.8).astype(np.uint8)
    for name, data in {
        "img": image, "lab": label, "nan": np.where(image > 1.5, np.nan, image).astype(np.float32),
        "flat": np.ones(shape, np.float32), "three": label * 3, "small": np.ones((8, 8, 8), np.uint8),
    }.items():  # fmt: skip
        _save(tmp_path / f"{name}.nii.gz", data)
    truncated = tmp_path / "cut.nii.gz"
    whole = (tmp_path / "lab.nii.gz").read_bytes()
    truncated.write_bytes(whole[: len(whole) // 2])  # the header reads, the voxels do not
    rows = [
        "a,sideways,img.nii.gz,,lab.nii.gz,,train",  # a field problem
        "b,single,gone.nii.gz,,lab.nii.gz,,train",  # a missing file
        "c,single,img.nii.gz,,cut.nii.gz,,train",  # a truncated gzip: "Aborted." before
        "d,single,nan.nii.gz,,lab.nii.gz,,train",
        "e,single,flat.nii.gz,,lab.nii.gz,,train",
        "f,single,img.nii.gz,,three.nii.gz,,val",
        "f,single,img.nii.gz,,small.nii.gz,,val",  # the same subject again, and another grid
    ]
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("subject,kind,baseline,followup,label,brain_mask,split\n" + "\n".join(rows) + "\n")
    result = runner.invoke(app, ["train", str(manifest), "-o", str(tmp_path / "run"), "--dry-run", "-q"])
    assert result.exit_code == 1 and "Aborted" not in result.output
    lines = result.stderr.splitlines()
    assert all(line.startswith(f"error: {manifest}: ") for line in lines), lines
    expected = [
        "line 2 (a): kind 'sideways' is not longitudinal or single",
        "subject 'f' is on lines 7, 8",
        "line 3 (b): baseline not found",
        "line 4 (c): could not read the voxels of label",
        "the file is truncated or corrupt",
        "line 5 (d): baseline",
        "line 6 (e): baseline",
        "line 7 (f): label",
        "line 8 (f): label is not on the baseline's grid",
    ]
    for text in expected:
        assert sum(text in line for line in lines) >= 1, (text, lines)
    assert any("holds NaN" in line for line in lines) and any("is constant" in line for line in lines)
    assert any("is not binary (values 0, 3)" in line for line in lines)
    assert len(lines) == 8 and not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------------------------
# item 10: evaluate cuts a probability map only where told


def test_evaluate_binarises_a_probability_map_only_at_the_threshold_given(tmp_path: Path, runner: CliRunner) -> None:
    probability = ndimage.gaussian_filter(np.random.default_rng(1).random((20, 20, 20)), 2).astype(np.float32)
    probability = (probability - probability.min()) / np.ptp(probability) * 0.89 + 0.01
    prediction = _save(tmp_path / "pred.nii.gz", probability)
    reference = _save(tmp_path / "gt.nii.gz", (probability > 0.5).astype(np.uint8))
    refused = runner.invoke(app, ["evaluate", str(prediction), str(reference), "-q"])
    assert refused.exit_code == 1 and "pass --threshold" in refused.stderr
    scored = runner.invoke(app, ["evaluate", str(prediction), str(reference), "--threshold", "0.5", "--json", "-q"])
    assert scored.exit_code == 0, scored.output
    assert json.loads(scored.stdout)["cases"][0]["dice"] == 1.0
    # a label map (whole numbers above 0) is still a mask, as documented
    labels = _save(tmp_path / "labels.nii.gz", ((probability > 0.5) * 7).astype(np.int16))
    assert runner.invoke(app, ["evaluate", str(labels), str(reference), "-q"]).exit_code == 0


# ---------------------------------------------------------------------------------------------
# item 11: bids group level


def test_the_group_level_fails_when_no_pair_has_results(tmp_path: Path, runner: CliRunner) -> None:
    bids = tmp_path / "bids"
    for session in ("01", "02"):
        anat = bids / "sub-01" / f"ses-{session}" / "anat"
        anat.mkdir(parents=True)
        _save(anat / f"sub-01_ses-{session}_FLAIR.nii.gz", np.ones((8, 8, 8), np.float32))
    (bids / "dataset_description.json").write_text(json.dumps({"Name": "x", "BIDSVersion": "1.10.0"}))
    output = tmp_path / "deriv"
    output.mkdir()
    result = runner.invoke(app, ["bids", str(bids), str(output), "group"])
    assert result.exit_code == 1
    assert "error: none of the 1 pairs" in result.stderr
    table = pd.read_csv(output / "group_newlesions.tsv", sep="\t")
    assert list(table.status) == ["missing"]  # the table is still written: it says what is missing
    # every pair failed (the case): the same
    (output / "logs").mkdir()
    status = {"pairs": [{"baseline_session": "01", "followup_session": "02", "status": "failed", "reason": "bad"}]}
    (output / "logs" / "sub-01_status.json").write_text(json.dumps(status))
    result = runner.invoke(app, ["bids", str(bids), str(output), "group"])
    assert result.exit_code == 1 and "error: none of the 1 pairs" in result.stderr
    assert list(pd.read_csv(output / "group_newlesions.tsv", sep="\t").status) == ["failed"]


# ---------------------------------------------------------------------------------------------
# item 12: training config values get their declared types


def test_config_values_written_as_text_are_read_as_numbers_and_bad_ones_named(tmp_path: Path) -> None:
    config = tmp_path / "train.yaml"
    config.write_text("lr: 1e-3\niterations: 2e3\nflip_rot90: no\nmodel_name: 7\n")
    loaded = TrainConfig.load(config)
    assert (loaded.lr, loaded.iterations, loaded.flip_rot90, loaded.model_name) == (0.001, 2000, False, "7")
    assert isinstance(loaded.iterations, int) and isinstance(loaded.lr, float)
    assert TrainConfig(lr="1e-3").lr == 0.001  # type: ignore[arg-type]
    for text, message in (
        ("lr: fast\n", "lr must be a number, got 'fast'"),
        ("iterations: 1.5\n", "iterations must be a whole number, got 1.5"),
        ("flip_rot90: maybe\n", "flip_rot90 must be true or false"),
        ("batch_size: true\n", "batch_size must be a whole number, got True"),
    ):
        config.write_text(text)
        with pytest.raises(InputError) as error:
            TrainConfig.load(config)
        assert str(config) in str(error.value) and message in str(error.value), str(error.value)
        assert "not supported between" not in str(error.value)


# ---------------------------------------------------------------------------------------------
# item 13: the core names parameters, the command line names flags


def test_core_errors_name_parameters_and_the_command_line_names_its_flags() -> None:
    with pytest.raises(InputError) as error:
        PredictOptions(threshold=2.0)
    assert "`threshold` must be between 0 and 1" in str(error.value) and "--" not in str(error.value)

    from msnewlesion.cli.predict import predict
    from msnewlesion.cli.synth import synth

    # No message is rewritten: while a command runs, the core writes its flags in the first place.
    with spelling_parameters(flag_spelling(flags_of(predict))):
        with pytest.raises(InputError) as error:
            PredictOptions(threshold=2.0)
        assert str(error.value) == "--threshold must be between 0 and 1, got 2.0"
        assert parameter("overwrite", True) == "--overwrite"
        assert parameter("transform", "Rigid") == "--transform Rigid"
        assert parameter("preprocess", False) == "--no-preprocess"
        assert parameter("skull_strip", "none") == "--skull-strip none"
        assert parameter("registration", "baseline") == "--space baseline"  # the one documented mapping
        assert parameter("library") == "library"  # no such option on predict: the name
    with spelling_parameters(flag_spelling(flags_of(synth))):
        assert parameter("added_lesions", 0) == "--added 0"
        assert parameter("library_locations", False) == "--any-white-matter"
    assert parameter("overwrite", True) == "`overwrite=True`"  # a library caller again


# ---------------------------------------------------------------------------------------------
# item 14: what the user sees besides the error


def test_help_has_no_raw_markup_and_the_usage_names_the_arguments(runner: CliRunner) -> None:
    top = runner.invoke(app, ["--help"])
    assert "[bold]" not in top.output and "[/]" not in top.output
    assert "msnewlesion COMMAND --help" in top.output
    usages = {
        ("predict",): "predict [OPTIONS] BASELINE FOLLOWUP",
        ("bids",): "bids [OPTIONS] BIDS_DIR OUTPUT_DIR LEVEL",
        ("evaluate",): "evaluate [OPTIONS] [PRED] [GT]",
        ("models", "convert-coactseg"): "convert-coactseg [OPTIONS] CHECKPOINT",
    }
    for command, usage in usages.items():
        text = " ".join(runner.invoke(app, [*command, "--help"]).output.split())
        assert usage in text and "{" not in text.split("Usage:")[1].split("\n")[0], text[:200]


def test_reading_a_header_that_nibabel_repairs_prints_nothing_but_our_error(tmp_path: Path, capfd) -> None:
    header = nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.eye(4)).header.copy()
    header["pixdim"][1:4] = 0
    header.set_sform(np.diag([0.0, 0.0, 0.0, 1.0]), code=1)
    header.set_data_offset(352)
    path = tmp_path / "zero.nii"
    path.write_bytes(header.binaryblock + b"\0" * 4 + np.ones(64, np.float32).tobytes())
    with pytest.raises(InputError, match="degenerate affine"):
        load_volume(path, what="baseline FLAIR")
    assert capfd.readouterr().err == ""  # nibabel's "pixdim[1,2,3] should be non-zero" stays silent


# ---------------------------------------------------------------------------------------------
# item 8: an interrupted registration


def _interruptible() -> None:
    # Ctrl-C as a terminal delivers it to a foreground command: an ignored SIGINT is inherited across exec,
    # and some library imported earlier in the suite leaves this process ignoring it.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _registration_run(tmp_path: Path) -> tuple[subprocess.Popen, Path, Path, int]:
    """Start ``preprocess`` on a pair whose Rigid registration takes long; return once antsRegistration runs."""
    rng = np.random.default_rng(0)
    smooth = ndimage.gaussian_filter(rng.random((160, 160, 160), dtype=np.float32), 4)
    baseline = _save(tmp_path / "t1.nii", smooth)
    followup = _save(tmp_path / "t2.nii", np.roll(smooth, 3, axis=0))
    output, scratch_tmp = tmp_path / "out", tmp_path / "system-tmp"
    scratch_tmp.mkdir()
    environment = dict(os.environ, TMPDIR=str(scratch_tmp), ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS="1")
    process = subprocess.Popen(
        [sys.executable, "-m", "msnewlesion", "preprocess", str(baseline), str(followup), "-o", str(output),
         "--skull-strip", "none", "--no-bias-correction", "--space", "baseline", "--transform", "Rigid", "-q"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment,
        preexec_fn=_interruptible,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    worker = None
    while worker is None and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.2)
        if list(output.glob(".msnewlesion-scratch-*/msnewlesion-registration-*")):
            worker = _child_running(process.pid, "_registration_worker")
    assert worker is not None, process.communicate()
    time.sleep(5)  # the worker imports antspyx, then antsRegistration runs for tens of seconds
    assert process.poll() is None, "the registration ended before it could be interrupted"
    return process, output, scratch_tmp, worker


def _child_running(parent: int, name: str) -> int | None:
    for entry in Path("/proc").iterdir():
        try:
            status = (entry / "status").read_text()
            command = (entry / "cmdline").read_bytes().decode(errors="replace")
        except (OSError, ValueError):
            continue
        if name in command and f"\nPPid:\t{parent}\n" in status:
            return int(entry.name)
    return None


def _gone(pid: int, within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            return True
        if "\nState:\tZ" in state:
            return True
        time.sleep(0.1)
    return False


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_ctrl_c_during_the_registration_stops_at_once_and_leaves_nothing(tmp_path: Path) -> None:
    process, output, system_tmp, worker = _registration_run(tmp_path)
    started = time.monotonic()
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=30)
    assert time.monotonic() - started < 3, "Ctrl-C waited for antsRegistration to finish"
    assert process.returncode == 130 and "interrupted" in stderr
    assert _gone(worker, within=5)
    assert not output.exists()  # the run made it and leaves it empty: removed
    assert list(system_tmp.iterdir()) == []


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_killed_run_leaves_its_scratch_in_the_output_folder_and_a_rerun_clears_it(
    tmp_path: Path, runner: CliRunner
) -> None:
    process, output, system_tmp, worker = _registration_run(tmp_path)
    process.kill()
    process.wait(timeout=30)
    assert _gone(worker, within=10)  # the registration dies with the run
    assert list(system_tmp.iterdir()) == []  # nothing in the system's temporary folder
    assert list(output.glob(".msnewlesion-scratch-*"))
    rerun = runner.invoke(
        app, ["preprocess", str(tmp_path / "gone.nii"), str(tmp_path / "t2.nii"), "-o", str(output), "-q",
              "--skull-strip", "none"],
    )  # fmt: skip
    assert rerun.exit_code == 1 and "baseline FLAIR not found" in rerun.stderr
    assert list(output.iterdir()) == []  # the rerun held the folder and cleared the killed run's scratch
