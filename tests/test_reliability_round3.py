"""Issue 24: no silent wrong results on stripped inputs, session order, partial coverage or headers; no
traceback on a full disk, a colour NIfTI or settings that cannot train; SIGTERM and SIGHUP handled like Ctrl-C.

The one-line refusals are rows of tests/test_bad_inputs.py; what needs a pipeline, a dataset or a
signal is here.
"""

from __future__ import annotations

import contextlib
import errno
import json
import signal
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from analytic_model import save_analytic_model
from msnewlesion.bids import BidsSelection, plan_participant
from msnewlesion.bids.discovery import natural_session_order
from msnewlesion.cli import app
from msnewlesion.errors import InputError
from msnewlesion.io import Volume, atomic_path, load_volume, save_volume, write_text
from msnewlesion.preprocess import PreprocessOptions, preprocess_pair
from msnewlesion.preprocess.intensity import clip_outliers
from msnewlesion.preprocess.skullstrip import brain_mask_warnings, looks_skull_stripped
from msnewlesion.training import TrainConfig
from preprocess_helpers import brain_value, grid_affine, phantom_value, sample

EXAMPLE = Path(__file__).parents[1] / "src" / "msnewlesion" / "data" / "example"


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # A 4 mm model keeps each prediction of the 3 mm phantom to a few seconds.
    return save_analytic_model(tmp_path_factory.mktemp("model") / "analytic", spacing=(4.0, 4.0, 4.0))


def _ellipsoid(shape: tuple[int, int, int], radii_voxels: tuple[float, float, float]) -> np.ndarray:
    index = np.indices(shape).astype(np.float64)
    centre = (np.asarray(shape) - 1) / 2.0
    return sum(((index[axis] - centre[axis]) / radii_voxels[axis]) ** 2 for axis in range(3)) <= 1.0


# ---------------------------------------------------------------------------------------------
# item 1: inputs that are skull-stripped already


def test_the_built_in_example_is_found_already_stripped() -> None:
    for name in ("baseline", "followup"):
        scan = load_volume(EXAMPLE / f"{name}.nii.gz")
        check = looks_skull_stripped(scan.data, scan.affine)
        assert check.stripped, check
        assert check.background_value == 0 and 1200 < check.tissue_ml < 1230  # the example's brain: 1,217 ml


def test_a_head_is_not_taken_for_a_stripped_brain() -> None:
    rng = np.random.default_rng(0)
    shape, affine = (60, 72, 60), np.diag([3.0, 3.0, 3.0, 1.0])
    brain = _ellipsoid(shape, (20, 24, 18))  # 3 mm voxels: about 980 ml
    head = _ellipsoid(shape, (27, 33, 26))  # about 2,620 ml with scalp and skull
    stripped = np.where(brain, 100.0 + rng.normal(0, 5, shape), 0.0)
    assert looks_skull_stripped(stripped, affine).stripped
    # The same brain inside a head whose scanner set the air to 0: bigger than any brain.
    with_skull = np.where(head, 40.0, 0.0) + stripped
    check = looks_skull_stripped(with_skull, affine)
    assert not check.stripped and check.tissue_ml > 2400
    # Noise in the air, as a raw scan has: no constant background.
    noisy = with_skull + np.where(head, 0.0, rng.uniform(0.5, 5.0, shape))
    assert not looks_skull_stripped(noisy, affine).stripped
    # A head cut by the field of view (a slab): the tissue touches the faces.
    slab = np.where(_ellipsoid(shape, (20, 24, 40)), 100.0, 0.0)
    assert looks_skull_stripped(slab, affine).border_fraction > 0.02


def test_auto_keeps_stripped_inputs_and_says_so(tmp_path: Path) -> None:
    options = PreprocessOptions(skull_strip="auto", registration="none", bias_correction=False, spacing=(2.0, 2.0, 2.0))
    pair = preprocess_pair(EXAMPLE / "baseline.nii.gz", EXAMPLE / "followup.nii.gz", options)
    record = pair.record["brain_mask"]
    assert record["method"].startswith("auto: inputs found already skull-stripped, kept as they are")
    assert record["already_stripped"]["baseline"]["stripped"] and record["already_stripped"]["followup"]["stripped"]
    # the whole brain kept (HD-BET on it kept 817 ml); on this 2 mm grid the inputs are read through their
    # 2 mm block means, whose edge blocks count as brain when any of their voxels is: about 4 % more
    assert 1190 < record["volume_ml"] < 1290
    assert pair.record["warnings"] == []


def test_a_mask_that_cuts_a_brain_sized_input_or_leaves_lesions_outside_is_warned_about() -> None:
    shape = (40, 40, 40)
    brain = _ellipsoid(shape, (15, 15, 15))
    image = np.where(brain, 100.0, 0.0) + np.random.default_rng(1).normal(0, 3, shape) * brain
    check = looks_skull_stripped(image, np.eye(4) * [4, 4, 4, 1])
    assert check.stripped
    kept = brain & (np.indices(shape)[2] < 28)  # the top of the brain cut away
    image_with_lesion = image.copy()
    image_with_lesion[18:24, 18:24, 24:32] = 400.0  # a bright lesion the cut went through
    fat = image.copy()
    fat[18:24, 18:24, 28:32] = 400.0  # bright, outside the mask, but not inside it: fat, a vessel
    warnings = brain_mask_warnings(check, 0.6 * check.tissue_ml, image_with_lesion, kept, (1.0, 1.0, 1.0))
    assert len(warnings) == 2
    assert "kept" in warnings[0] and "--skull-strip none" in warnings[0]
    assert "lesion-like" in warnings[1] and "continue inside the brain mask" in warnings[1]
    assert len(brain_mask_warnings(check, 0.6 * check.tissue_ml, fat, kept, (1.0, 1.0, 1.0))) == 1
    # A plausible mask of a brain with its lesions inside says nothing.
    assert brain_mask_warnings(check, check.tissue_ml, image, brain, (1.0, 1.0, 1.0)) == []


# ---------------------------------------------------------------------------------------------
# item 2: session order


@pytest.mark.parametrize(
    ("labels", "expected", "rule"),
    [
        (["post", "pre"], ["pre", "post"], "words"),
        (["followup", "baseline"], ["baseline", "followup"], "words"),
        (["fu2", "bl", "fu1"], ["bl", "fu1", "fu2"], "words"),
        (["10", "2", "1"], ["1", "2", "10"], "numbers"),
        (["m12", "m6", "baseline"], ["baseline", "m6", "m12"], "numbers"),
        (["20200115", "20190711"], ["20190711", "20200115"], "dates"),
        (["b", "a"], None, None),
        (["pre", "later"], None, None),
        (["2", "02"], None, None),
        (["m6", "y1"], None, None),
    ],
)
def test_session_labels_are_ordered_only_by_what_they_say(labels, expected, rule) -> None:
    found = natural_session_order(labels)
    assert found == ((expected, rule) if expected is not None else None)


def _sessions(root: Path, labels: list[str], sidecar_times: dict[str, str] | None = None) -> Path:
    for label in labels:
        anat = root / "sub-01" / f"ses-{label}" / "anat"
        anat.mkdir(parents=True)
        name = f"sub-01_ses-{label}_FLAIR"
        nib.save(nib.Nifti1Image(np.ones((4, 4, 4), np.float32), np.eye(4)), str(anat / f"{name}.nii.gz"))
        if sidecar_times and label in sidecar_times:
            (anat / f"{name}.json").write_text(json.dumps({"AcquisitionDateTime": sidecar_times[label]}))
    return root


def test_pre_and_post_run_as_pre_then_post(tmp_path: Path) -> None:
    plan = plan_participant(_sessions(tmp_path, ["post", "pre"]), "01")
    assert [(p.baseline.session, p.followup.session) for p in plan.pairs] == [("pre", "post")]
    assert plan.session_order == "label (words)" and not plan.problems


def test_labels_that_say_nothing_stop_the_participant_unless_the_order_is_given(tmp_path: Path) -> None:
    root = _sessions(tmp_path, ["b", "a"])
    plan = plan_participant(root, "01")
    assert plan.pairs == [] and len(plan.problems) == 1
    assert "cannot tell the time order of ses-a, ses-b" in plan.problems[0] and "`session_order`" in plan.problems[0]
    given = plan_participant(root, "01", BidsSelection(session_order=["ses-b,ses-a"]))
    assert [(p.baseline.session, p.followup.session) for p in given.pairs] == [("b", "a")]
    assert given.session_order == "given"
    missing = plan_participant(root, "01", BidsSelection(session_order="b"))
    assert "ses-a not in `session_order` (b)" in missing.problems[0]
    with pytest.raises(InputError, match="names a session twice"):
        BidsSelection(session_order="a,b,a")


def test_sidecar_acquisition_times_order_sessions(tmp_path: Path) -> None:
    root = _sessions(tmp_path, ["a", "b"], {"a": "2021-03-01T10:00:00", "b": "2019-06-01T09:00:00"})
    plan = plan_participant(root, "01")
    assert plan.session_order == "acq_time"
    assert [(p.baseline.session, p.followup.session) for p in plan.pairs] == [("b", "a")]
    assert plan.pairs[0].days_between == pytest.approx(639.04, abs=0.01)


def test_the_bids_cli_orders_pre_before_post_and_writes_the_order(
    tmp_path: Path, model: Path, runner: CliRunner
) -> None:
    shape, affine = (46, 56, 44), grid_affine((46, 56, 44), (3.0, 3.0, 3.0))
    scans = {"pre": phantom_value, "post": lambda p: phantom_value(p) + 1.5 * (np.sum((p - [12, -10, 8]) ** 2, 1) < 64)}
    for label, function in scans.items():
        anat = tmp_path / "bids" / "sub-01" / f"ses-{label}" / "anat"
        anat.mkdir(parents=True)
        data = (500 * sample(function, shape, affine)).astype(np.float32)
        nib.save(nib.Nifti1Image(data, affine), str(anat / f"sub-01_ses-{label}_FLAIR.nii.gz"))
    (tmp_path / "bids" / "dataset_description.json").write_text('{"Name": "t", "BIDSVersion": "1.9.0"}')
    output = tmp_path / "deriv"
    result = runner.invoke(
        app,
        ["bids", str(tmp_path / "bids"), str(output), "participant", "--model", str(model), "--no-preprocess", "-q"],
    )
    assert result.exit_code == 0, result.output
    summary = output / "sub-01" / "ses-post" / "anat" / "sub-01_ses-post_desc-sincepre_summary.json"
    record = json.loads(summary.read_text())["bids"]
    assert record["session_order"] == "label (words)" and record["sessions_in_order"] == ["pre", "post"]
    status = json.loads((output / "logs" / "sub-01_status.json").read_text())
    assert status["sessions_in_order"] == ["pre", "post"]
    assert json.loads(summary.read_text())["new_lesions"]["count"] == 1


# ---------------------------------------------------------------------------------------------
# item 3: coverage


def test_a_followup_showing_half_the_brain_is_reported_and_the_rest_marked_not_assessed(
    tmp_path: Path, model: Path, runner: CliRunner
) -> None:
    shape, affine = (48, 56, 44), grid_affine((48, 56, 44), (3.0, 3.0, 3.0))
    baseline = (500 * sample(phantom_value, shape, affine)).astype(np.float32)
    followup = baseline.copy()
    followup[:, :, shape[2] // 2 :] = 0  # the follow-up shows the lower half of the head
    paths = []
    for name, data in (("t1.nii.gz", baseline), ("t2.nii.gz", followup)):
        nib.save(nib.Nifti1Image(data, affine), str(tmp_path / name))
        paths.append(str(tmp_path / name))
    output = tmp_path / "out"
    result = runner.invoke(app, ["predict", *paths, "-o", str(output), "--model", str(model), "--no-preprocess", "-q"])
    assert result.exit_code == 0, result.output
    summary = json.loads((output / "summary.json").read_text())
    coverage = summary["coverage"]
    assert 0.4 < coverage["baseline_brain_seen_by_followup"] < 0.6
    assert coverage["followup_brain_seen_by_baseline"] == 1.0
    assert any("shows only" in w and "not assessed" in w for w in summary["warnings"])
    assert "shows only" in result.stderr
    not_assessed = nib.load(str(output / "not_assessed_baseline.nii.gz"))
    assert not_assessed.shape == shape and np.allclose(not_assessed.affine, affine)
    marked = np.asarray(not_assessed.dataobj).astype(bool)
    assert marked[:, :, : shape[2] // 2 - 2].sum() == 0 and marked[:, :, shape[2] // 2 + 2 :].sum() > 1000
    assert summary["outputs"]["not_assessed_baseline"] == "not_assessed_baseline.nii.gz"


def test_a_pair_that_covers_each_other_writes_no_not_assessed_mask(
    tmp_path: Path, model: Path, runner: CliRunner
) -> None:
    shape, affine = (46, 56, 44), grid_affine((46, 56, 44), (3.0, 3.0, 3.0))
    data = (500 * sample(phantom_value, shape, affine)).astype(np.float32)
    for name in ("t1.nii.gz", "t2.nii.gz"):
        nib.save(nib.Nifti1Image(data, affine), str(tmp_path / name))
    output = tmp_path / "out"
    result = runner.invoke(
        app,
        ["predict", str(tmp_path / "t1.nii.gz"), str(tmp_path / "t2.nii.gz"), "-o", str(output), "--model",
         str(model), "--no-preprocess", "-q"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads((output / "summary.json").read_text())
    assert summary["coverage"]["baseline_brain_seen_by_followup"] == 1.0
    assert not list(output.glob("not_assessed*")) and "not_assessed_baseline" not in summary["outputs"]


# ---------------------------------------------------------------------------------------------
# item 4: qform and sform


def _qform_sform_image(path: Path) -> Path:
    data = (500 * sample(phantom_value, (46, 56, 44), grid_affine((46, 56, 44), (3.0, 3.0, 3.0)))).astype(np.float32)
    image = nib.Nifti1Image(data, None)
    qform = grid_affine((46, 56, 44), (3.0, 3.0, 3.0))
    sform = qform.copy()
    sform[:3, 3] += (4.0, 0.0, 0.0)
    image.set_qform(qform, code=1)
    image.set_sform(sform, code=2)
    nib.save(image, str(path))
    return path


def test_disagreeing_qform_and_sform_are_warned_about_and_kept_in_the_outputs(
    tmp_path: Path, model: Path, runner: CliRunner
) -> None:
    baseline = _qform_sform_image(tmp_path / "t1.nii.gz")
    followup = _qform_sform_image(tmp_path / "t2.nii.gz")
    output = tmp_path / "out"
    result = runner.invoke(
        app, ["predict", str(baseline), str(followup), "-o", str(output), "--model", str(model), "--no-preprocess",
              "-q"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    warnings = json.loads((output / "summary.json").read_text())["warnings"]
    header = [w for w in warnings if "qform and sform" in w]
    assert len(header) == 2 and "4.0 mm apart" in header[0] and "uses the sform (code 2)" in header[0]
    source = nib.load(str(baseline))
    for name in ("new_lesions.nii.gz", "lesions_baseline.nii.gz", "lesions_followup.nii.gz"):
        written = nib.load(str(output / name))
        for mine, theirs in zip(written.header.get_qform(coded=True), source.header.get_qform(coded=True), strict=True):
            assert np.allclose(mine, theirs)
        for mine, theirs in zip(written.header.get_sform(coded=True), source.header.get_sform(coded=True), strict=True):
            assert np.allclose(mine, theirs)


# ---------------------------------------------------------------------------------------------
# item 6: loaders, write errors, training settings


def test_nifti1_pairs_are_read_and_written_back_as_nifti(tmp_path: Path) -> None:
    data = np.random.default_rng(0).uniform(1, 2, (6, 7, 8)).astype(np.float32)
    affine = np.diag([1.5, 1.5, 2.0, 1.0])
    nib.save(nib.Nifti1Pair(data, affine), str(tmp_path / "scan.hdr"))
    for name in ("scan.hdr", "scan.img"):
        volume = load_volume(tmp_path / name)
        assert np.array_equal(volume.data, data) and np.allclose(volume.affine, affine)
    save_volume(volume, tmp_path / "out.nii.gz")
    assert np.allclose(nib.load(str(tmp_path / "out.nii.gz")).affine, affine)


def test_a_write_error_names_the_output_not_a_hidden_temporary(tmp_path: Path, monkeypatch) -> None:
    def full_disk(self: Path, text: str, encoding: str | None = None) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_text", full_disk)
    with pytest.raises(OSError, match="No space left on device") as caught:
        write_text(tmp_path / "table.tsv", "a\tb\n")
    assert caught.value.filename == str(tmp_path / "table.tsv")
    assert list(tmp_path.iterdir()) == []


def _full_disk(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


@contextlib.contextmanager
def _failing_atomic_path(path):
    """:func:`msnewlesion.io.atomic_path` on a full disk: the write fails halfway."""
    with atomic_path(path) as temporary:
        yield temporary
        temporary.write_bytes(b"\x89PNG half")
        raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_at_the_end_of_predict_is_one_line_and_leaves_nothing(
    tmp_path: Path, model: Path, runner: CliRunner, monkeypatch
) -> None:
    import msnewlesion.report

    shape, affine = (46, 56, 44), grid_affine((46, 56, 44), (3.0, 3.0, 3.0))
    data = (500 * sample(phantom_value, shape, affine)).astype(np.float32)
    for name in ("t1.nii.gz", "t2.nii.gz"):
        nib.save(nib.Nifti1Image(data, affine), str(tmp_path / name))
    output = tmp_path / "out"

    # The QC picture is written after the masks and the table: a disk that fills up there.
    monkeypatch.setattr(msnewlesion.report, "atomic_path", _failing_atomic_path)
    result = runner.invoke(
        app, ["predict", str(tmp_path / "t1.nii.gz"), str(tmp_path / "t2.nii.gz"), "-o", str(output), "--model",
              str(model), "--no-preprocess", "-q"],
    )  # fmt: skip
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "No space left on device" in lines[0] and str(output / "qc.png") in lines[0] and "free space" in lines[0]
    assert not output.exists()  # the run created it; nothing half-written stays


def test_a_full_disk_on_evaluate_s_second_csv_removes_the_first(tmp_path: Path, runner: CliRunner, monkeypatch) -> None:
    import msnewlesion.metrics as metrics

    mask = np.zeros((12, 12, 12), np.uint8)
    mask[3:6, 3:6, 3:6] = 1
    for name in ("p.nii.gz", "g.nii.gz"):
        nib.save(nib.Nifti1Image(mask, np.eye(4)), str(tmp_path / name))
    monkeypatch.setattr(metrics, "write_lesion_details_csv", _full_disk)
    result = runner.invoke(
        app, ["evaluate", str(tmp_path / "p.nii.gz"), str(tmp_path / "g.nii.gz"), "-o", str(tmp_path / "r.csv"),
              "--lesions-csv", str(tmp_path / "l.csv"), "-q"],
    )  # fmt: skip
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    assert "No space left on device" in result.stderr and "Traceback" not in result.output
    assert not (tmp_path / "r.csv").exists() and not (tmp_path / "l.csv").exists()


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"patch_size": 16, "batch_size": 1}, "batch_size 1 with patch_size 16 leaves batch norm one value"),
        ({"patch_size": 16, "batch_size": 4, "norm": "instance"}, "patch_size 16 leaves instance norm one voxel"),
    ],
)
def test_training_settings_that_cannot_train_are_refused_when_read(settings, message) -> None:
    with pytest.raises(InputError, match=message):
        TrainConfig(**settings)
    TrainConfig(patch_size=16, batch_size=2)
    TrainConfig(patch_size=32, batch_size=1, norm="instance")


# ---------------------------------------------------------------------------------------------
# the small ones: a few wild voxels


def test_a_few_voxels_at_1e30_are_clipped_with_a_warning_and_the_pair_still_registers(tmp_path: Path) -> None:
    shape, affine = (48, 56, 44), grid_affine((48, 56, 44), (3.0, 3.0, 3.0))
    baseline = (500 * sample(phantom_value, shape, affine)).astype(np.float32)
    shifted = affine.copy()
    shifted[:3, 3] += (2.0, -1.0, 1.5)
    followup = (500 * sample(phantom_value, shape, shifted)).astype(np.float32)
    followup[20:25, 30, 20] = 1e30
    clipped, warning = clip_outliers(followup, "follow-up FLAIR t2.nii.gz")
    assert clipped.max() < 1e4 and warning is not None and "5 voxels" in warning
    options = PreprocessOptions(skull_strip="none", bias_correction=False, transform="QuickRigid", spacing=(3, 3, 3))
    pair = preprocess_pair(Volume(baseline, affine), Volume(followup, shifted), options)
    assert pair.record["registration"]["head_correlation"] > 0.9
    assert any("far outside its intensity range" in w for w in pair.record["warnings"])


def test_z_scored_inputs_with_negative_values_register(tmp_path: Path) -> None:
    """msnewlesion's own preprocessed output fed back in: antsRegistration returned shifts of 10⁹ mm for it."""
    shape, affine = (48, 56, 44), grid_affine((48, 56, 44), (3.0, 3.0, 3.0))

    def z_scored(grid_affine_: np.ndarray) -> np.ndarray:
        image, brain = sample(phantom_value, shape, grid_affine_), sample(brain_value, shape, grid_affine_)
        return np.where(brain, (image - image[brain].mean()) / image[brain].std(), 0.0).astype(np.float32)

    shifted = affine.copy()
    shifted[:3, 3] += (2.0, -1.0, 1.5)  # another grid over the same head
    options = PreprocessOptions(skull_strip="none", bias_correction=False, transform="QuickRigid", spacing=(3, 3, 3))
    pair = preprocess_pair(Volume(z_scored(affine), affine), Volume(z_scored(shifted), shifted), options)
    assert pair.record["registration"]["displacement_at_baseline_centre_mm"] < 0.5
    assert pair.record["registration"]["head_correlation"] > 0.85


# ---------------------------------------------------------------------------------------------
# item 5: SIGTERM and SIGHUP


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize(("stop", "code"), [(signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_sigterm_and_sighup_stop_like_ctrl_c(tmp_path: Path, stop: signal.Signals, code: int) -> None:
    from test_reliability import _gone, _registration_run

    # An ignored signal is inherited across exec (`nohup` ignores SIGHUP), and a run leaves ignored signals ignored.
    previous = signal.signal(stop, signal.SIG_DFL)
    try:
        process, output, system_tmp, worker = _registration_run(tmp_path)
    finally:
        signal.signal(stop, previous)
    process.send_signal(stop)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == code, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert lines == [f"error: terminated ({stop.name}); finished outputs are kept, nothing half-written was left"]
    assert _gone(worker, within=5)
    assert not output.exists()  # lock and scratch removed, and the folder the run made
    assert list(system_tmp.iterdir()) == []
