from __future__ import annotations

import datetime as dt
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import typer
from typer.testing import CliRunner

from analytic_model import save_analytic_model
from bids_helpers import BidsTree, build_bids_tree, save_flair
from msnewlesion import __version__
from msnewlesion.bids import (
    BidsSelection,
    pair_is_complete,
    pair_outputs,
    plan_dataset,
    plan_participant,
    run_participant_level,
    write_dataset_description,
)
from msnewlesion.cli import app
from msnewlesion.cli.bids import PAIR_ONLY_OPTIONS, spread_participant_labels
from msnewlesion.errors import InputError
from msnewlesion.predict import PredictOptions, open_model

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "bids"
FAST = [
    "--skull-strip",
    "none",
    "--transform",
    "QuickRigid",
    "--no-bias-correction",
    "--overlap",
    "0",
    "--precision",
    "fp32",
    "--device",
    "cpu",
    "--quiet",
]
VOXEL_MM3 = 27.0  # the tree's scans are 3 mm
# Every pair of the tree: sub-03's second pair names a FLAIR that is not there, sub-04's follow-up is corrupt.
DONE = {("01", "01", "02"), ("01", "02", "03"), ("02", "screening", "month12"), ("03", "01", "02")}
FAILED = {("03", "02", "03"): "follow-up FLAIR not found", ("04", "01", "02"): "could not read the voxels"}


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> BidsTree:
    return build_bids_tree(tmp_path_factory.mktemp("bids") / "cohort")


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # 3 mm like the tree, and 64³ windows: one or two windows per scan.
    return save_analytic_model(tmp_path_factory.mktemp("model") / "analytic", spacing=(3.0, 3.0, 3.0), patch=64)


def run_bids(*args: str) -> object:
    return CliRunner().invoke(app, ["bids", *args])


@pytest.fixture(scope="module")
def first_run(tree: BidsTree, model: Path) -> tuple[Path, object, dict]:
    output = tree.root / "derivatives" / "msnewlesion"
    result = run_bids(str(tree.root), str(output), "participant", "--model", str(model), "--json", *FAST)
    return output, result, json.loads(result.stdout)


def copy_of(output: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(output, tmp_path / "msnewlesion"))


def pair_of(tree: BidsTree, participant: str, baseline: str, followup: str, pairing: str = "consecutive"):
    plan = plan_participant(tree.root, participant, BidsSelection(session_pairs=pairing))
    return next(p for p in plan.pairs if (p.baseline.session, p.followup.session) == (baseline, followup))


# ---------------------------------------------------------------------------------------------
# discovery


@pytest.mark.slow
def test_sessions_are_ordered_by_acquisition_time_then_paired(tree: BidsTree) -> None:
    plans = {plan.participant: plan for plan in plan_dataset(tree.root)}
    assert list(plans) == ["01", "02", "03", "04"]  # derivatives/ and participants.tsv are not participants
    pairs = {label: [(p.baseline.session, p.followup.session) for p in plan.pairs] for label, plan in plans.items()}
    assert pairs == {
        "01": [("01", "02"), ("02", "03")],
        "02": [("screening", "month12")],  # by acq_time: by label, month12 would come first
        "03": [("01", "02"), ("02", "03")],
        "04": [("01", "02")],
    }
    assert plans["01"].session_order == plans["02"].session_order == "acq_time"
    assert plans["03"].session_order == "label (numbers)"  # only ses-03 has a time: the labels' natural order
    assert any("no acq_time for ses-01, ses-02" in note for note in plans["03"].notes)
    assert any("ses-month06 has no FLAIR" in note for note in plans["02"].notes)
    expected_days = (dt.datetime(2022, 2, 4, 8, 45) - dt.datetime(2021, 2, 1, 8, 15)).total_seconds() / 86400
    assert plans["02"].pairs[0].days_between == pytest.approx(expected_days, abs=0.01)
    assert plans["03"].pairs[0].days_between is None

    first = plan_participant(tree.root, "sub-01", BidsSelection(session_pairs="first"))
    assert [(p.baseline.session, p.followup.session) for p in first.pairs] == [("01", "02"), ("01", "03")]


def write_tiny(path: Path, zooms: tuple[float, float, float]) -> Path:
    return save_flair(path, np.ones((4, 4, 4), np.float32), np.diag([*zooms, 1.0]))


def test_flair_choice_rule_and_pattern(tmp_path: Path) -> None:
    root = tmp_path / "bids"
    anat = {s: root / "sub-01" / f"ses-{s}" / "anat" for s in ("01", "02", "03")}
    write_tiny(anat["01"] / "sub-01_ses-01_acq-2D_FLAIR.nii.gz", (1, 1, 4))
    write_tiny(anat["01"] / "sub-01_ses-01_acq-3D_FLAIR.nii.gz", (1, 1, 1))
    write_tiny(anat["02"] / "sub-01_ses-02_acq-2D_FLAIR.nii.gz", (1, 1, 4))
    write_tiny(anat["03"] / "sub-01_ses-03_acq-2D_run-1_FLAIR.nii.gz", (1, 1, 4))
    write_tiny(anat["03"] / "sub-01_ses-03_acq-2D_run-2_FLAIR.nii.gz", (1, 1, 4))
    write_tiny(anat["03"] / "sub-01_ses-03_T1w.nii.gz", (1, 1, 1))
    # sub-02: both acquisitions at both sessions, so the finest voxels decide.
    for session in ("01", "02"):
        folder = root / "sub-02" / f"ses-{session}" / "anat"
        write_tiny(folder / f"sub-02_ses-{session}_acq-A_FLAIR.nii", (1, 1, 3))
        write_tiny(folder / f"sub-02_ses-{session}_acq-B_FLAIR.nii", (1, 1, 1))

    plan = plan_participant(root, "01")
    chosen = [s.path.name for s in plan.sessions]
    # The acquisition every session has beats the finer one that only ses-01 has; then the last run.
    assert chosen == [
        "sub-01_ses-01_acq-2D_FLAIR.nii.gz",
        "sub-01_ses-02_acq-2D_FLAIR.nii.gz",
        "sub-01_ses-03_acq-2D_run-2_FLAIR.nii.gz",
    ]
    assert any("chose sub-01_ses-03_acq-2D_run-2_FLAIR.nii.gz" in note for note in plan.notes)
    assert [s.path.name for s in plan_participant(root, "02").sessions] == [
        "sub-02_ses-01_acq-B_FLAIR.nii",
        "sub-02_ses-02_acq-B_FLAIR.nii",
    ]
    # Entities of the chosen FLAIR carry into the derivative names.
    assert pair_outputs("out", plan.pairs[1])["new_lesions"].name == (
        "sub-01_ses-03_acq-2D_run-2_space-orig_label-newlesion_desc-since02_mask.nii.gz"
    )

    patterned = plan_participant(root, "01", BidsSelection(flair_pattern="*_acq-3D_*"))
    assert [s.path.name for s in patterned.sessions] == ["sub-01_ses-01_acq-3D_FLAIR.nii.gz"]
    assert patterned.pairs == []
    assert any("ses-02: no FLAIR matches `flair_pattern`" in note for note in patterned.notes)
    assert any("need two sessions with a FLAIR" in note for note in patterned.notes)


def test_session_order_rules(tmp_path: Path) -> None:
    root = tmp_path / "bids"
    for session in ("1", "2", "10"):
        write_tiny(root / "sub-01" / f"ses-{session}" / "anat" / f"sub-01_ses-{session}_FLAIR.nii.gz", (1, 1, 1))
    for session in ("a", "b"):
        write_tiny(root / "sub-02" / f"ses-{session}" / "anat" / f"sub-02_ses-{session}_FLAIR.nii.gz", (1, 1, 1))
    # sessions.tsv gives the times when scans.tsv does not; any number of second digits, a time zone.
    (root / "sub-02" / "sub-02_sessions.tsv").write_text(
        "session_id\tacq_time\nses-a\t2020-05-01T12:00:00.1234567+02:00\nses-b\t2019-01-01T10:00:00Z\n"
    )
    numbers = plan_participant(root, "01")
    assert [s.session for s in numbers.sessions] == ["1", "2", "10"]  # numbers compare as numbers
    by_time = plan_participant(root, "02")
    assert [(p.baseline.session, p.followup.session) for p in by_time.pairs] == [("b", "a")]
    expected = (dt.datetime(2020, 5, 1, 10, 0, 0, 123456) - dt.datetime(2019, 1, 1, 10)).total_seconds() / 86400
    assert by_time.pairs[0].days_between == pytest.approx(expected, abs=0.01)


def test_participant_labels_in_every_bids_app_spelling() -> None:
    assert BidsSelection(participant_labels=["sub-01", "02", "01"]).participant_labels == ("01", "02")
    with pytest.raises(InputError, match="not a BIDS label"):
        BidsSelection(participant_labels=["01_02"])
    values = {"--model", "-m", "--device"}
    words = ["b", "o", "participant", "--participant_label", "01", "sub-02", "--device", "cpu"]
    assert spread_participant_labels(words, values) == [
        "b", "o", "participant", "--participant-label", "01", "--participant-label", "sub-02", "--device", "cpu",
    ]  # fmt: skip
    # Labels before the positional arguments: the last words go back to being BIDS_DIR OUTPUT_DIR LEVEL.
    assert spread_participant_labels(["--participant-label", "01", "02", "b", "o", "group"], values) == [
        "--participant-label", "01", "--participant-label", "02", "b", "o", "group",
    ]  # fmt: skip
    assert spread_participant_labels(["-m", "x", "b", "o", "group", "--participant-label=01", "02"], values) == [
        "-m", "x", "b", "o", "group", "--participant-label", "01", "--participant-label", "02",
    ]  # fmt: skip


def test_every_predict_option_exists_on_bids() -> None:
    commands = typer.main.get_command(app).commands
    options = {
        command: {name: p for p in commands[command].params if p.param_type_name == "option" for name in p.opts}
        for command in ("predict", "bids")
    }
    predict, bids = options["predict"], options["bids"]
    shared = set(predict) - set(PAIR_ONLY_OPTIONS)
    assert shared - set(bids) == set()
    # The prediction settings are the very same declarations; --overwrite, --json and --quiet say what
    # they do for a dataset.
    for name in shared - {"--overwrite", "--json", "--quiet", "-q"}:
        assert bids[name].default == predict[name].default, name
        assert bids[name].help == predict[name].help, name
    # --participant_label (the BIDS-App spelling) is read as --participant-label: one name in --help.
    assert {"--participant-label", "--session-pairs", "--flair-pattern"} <= set(bids)
    assert "**Example" in commands["bids"].help


# ---------------------------------------------------------------------------------------------
# the participant level


@pytest.mark.slow
def test_outputs_are_where_the_docs_say(first_run) -> None:
    output = first_run[0]
    subject = output / "sub-01"
    documented = [  # docs/bids.md, "Example tree"
        "dataset_description.json",
        ".bidsignore",
        "logs/sub-01.log",
        "logs/sub-01_status.json",
        "sub-01/ses-01/anat/sub-01_ses-01_space-orig_label-lesion_desc-before02_mask.nii.gz",
        "sub-01/ses-01/anat/sub-01_ses-01_space-orig_label-lesion_desc-before02_mask.json",
        "sub-01/ses-02/anat/sub-01_ses-02_space-orig_label-newlesion_desc-since01_mask.nii.gz",
        "sub-01/ses-02/anat/sub-01_ses-02_space-orig_label-newlesion_desc-since01_mask.json",
        "sub-01/ses-02/anat/sub-01_ses-02_space-orig_label-lesion_desc-since01_mask.nii.gz",
        "sub-01/ses-02/anat/sub-01_ses-02_desc-since01_newlesions.tsv",
        "sub-01/ses-02/anat/sub-01_ses-02_space-orig_label-lesionchange_desc-since01_dseg.nii.gz",
        "sub-01/ses-02/anat/sub-01_ses-02_space-orig_label-lesionchange_desc-since01_dseg_itksnap.txt",
        "sub-01/ses-02/anat/sub-01_ses-02_space-orig_label-lesionchange_desc-since01_dseg.lut",
        "sub-01/ses-02/anat/sub-01_ses-02_desc-since01_lesionchanges.tsv",
        "sub-01/ses-02/anat/sub-01_ses-02_desc-since01_summary.json",
        "sub-01/ses-02/anat/sub-01_ses-02_space-orig_label-lesion_desc-before03_mask.nii.gz",
        "sub-01/ses-03/anat/sub-01_ses-03_space-orig_label-newlesion_desc-since02_mask.nii.gz",
        "sub-01/figures/sub-01_ses-02_desc-since01_qc.png",
        "sub-01/figures/sub-01_ses-03_desc-since02_qc.png",
        "sub-02/ses-month12/anat/sub-02_ses-month12_space-orig_label-newlesion_desc-sincescreening_mask.nii.gz",
        "sub-02/ses-screening/anat/sub-02_ses-screening_space-orig_label-lesion_desc-beforemonth12_mask.nii.gz",
    ]
    missing = [name for name in documented if not (output / name).is_file()]
    assert missing == []
    assert not list(output.rglob(".msnewlesion-partial-*"))  # no staging folder left behind
    assert len(list(subject.rglob("*_summary.json"))) == 2

    description = json.loads((output / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative"
    tool, model_entry = description["GeneratedBy"]
    assert (tool["Name"], tool["Version"]) == ("msnewlesion", __version__)
    summary = json.loads((subject / "ses-02/anat/sub-01_ses-02_desc-since01_summary.json").read_text())
    sha = summary["model"]["weights_sha256"]
    assert model_entry["Name"] == "analytic" and sha in model_entry["Description"] and sha in tool["Description"]
    assert description["DatasetLinks"] == {"raw": "../../"}  # the raw dataset, relative to the derivatives
    assert "*_summary.json" in (output / ".bidsignore").read_text()


@pytest.mark.slow
def test_masks_lie_on_each_sessions_grid_and_find_the_new_lesions(first_run, tree: BidsTree) -> None:
    output, _, _ = first_run
    for participant, baseline, followup in sorted(DONE):
        pair = pair_of(tree, participant, baseline, followup)
        outputs = pair_outputs(output, pair)
        for key, scan in (
            ("new_lesions", pair.followup),
            ("lesions_followup", pair.followup),
            ("lesions_baseline", pair.baseline),
        ):
            mask, source = nib.load(str(outputs[key])), nib.load(str(scan.path))
            assert mask.shape == source.shape and np.array_equal(mask.affine, source.affine), (key, pair.name)
            sidecar = json.loads(outputs[f"{key}_sidecar"].read_text())
            assert sidecar["Sources"] == [pair.baseline.uri, pair.followup.uri]
            assert sidecar["SpatialReference"] == scan.uri and sidecar["Type"] == "Lesion"
        summary = json.loads(outputs["summary"].read_text())
        assert (
            summary["bids"]["baseline"]
            == f"sub-{participant}/ses-{baseline}/anat/sub-{participant}_ses-{baseline}_FLAIR.nii.gz"
        )
        assert summary["bids"]["days_between"] == pair.days_between
        assert summary["outputs"]["new_lesions"] == outputs["new_lesions"].relative_to(output).as_posix()
        key = (participant, baseline, followup)
        if key in tree.new_lesions:  # painted real lesion shapes: known count and volume
            new = np.asarray(nib.load(str(outputs["new_lesions"])).dataobj) > 0
            assert summary["new_lesions"]["count"] == tree.new_lesions[key], pair.name
            assert new.sum() == pytest.approx(tree.new_voxels[key], rel=0.3), pair.name
            assert summary["new_lesions"]["volume_mm3"] == pytest.approx(new.sum() * VOXEL_MM3)
            table = pd.read_csv(outputs["table"], sep="\t")
            assert len(table) == tree.new_lesions[key]


@pytest.mark.slow
def test_a_failure_is_isolated_logged_and_sets_the_exit_code(first_run, tree: BidsTree) -> None:
    output, result, report = first_run
    assert result.exit_code == 1
    statuses = {
        (p["participant"], p["baseline_session"], p["followup_session"]): (p["status"], p["reason"])
        for participant in report["participants"]
        for p in participant["pairs"]
    }
    assert {k for k, (status, _) in statuses.items() if status == "done"} == DONE
    for key, reason in FAILED.items():
        assert statuses[key][0] == "failed" and reason in statuses[key][1]
        participant, baseline, followup = key
        assert f"sub-{participant} ses-{baseline} -> ses-{followup} failed: {reason}" in result.stderr
        log = (output / "logs" / f"sub-{participant}.log").read_text()
        assert f"ERROR   sub-{participant} ses-{baseline} -> ses-{followup} failed: {reason}" in log
        assert not pair_is_complete(output, pair_of(tree, *key))
    assert report["counts"] == {"done": 4, "skipped": 0, "failed": 2}
    status = json.loads((output / "logs" / "sub-04_status.json").read_text())
    assert [p["status"] for p in status["pairs"]] == ["failed"]
    assert "ses-month06 has no FLAIR" in (output / "logs" / "sub-02.log").read_text()


@pytest.mark.slow
def test_a_rerun_skips_finished_work(first_run, tree: BidsTree, model: Path) -> None:
    output, _, _ = first_run
    summaries = sorted(output.rglob("*_summary.json"))
    before = {path: (path.read_bytes(), path.stat().st_mtime_ns) for path in summaries}
    result = run_bids(
        str(tree.root),
        str(output),
        "participant",
        "--participant_label",
        "sub-01",
        "02",
        "--model",
        str(model),
        "--json",
        *FAST,
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert [p["participant"] for p in report["participants"]] == ["01", "02"]
    assert report["counts"] == {"done": 0, "skipped": 3, "failed": 0}
    assert {path: (path.read_bytes(), path.stat().st_mtime_ns) for path in summaries} == before
    assert "complete already, skipped" in (output / "logs" / "sub-01.log").read_text()


@pytest.mark.slow
def test_unknown_participant_fails_alone(first_run, tree: BidsTree, model: Path) -> None:
    output, _, _ = first_run
    result = run_bids(
        str(tree.root), str(output), "participant", "--participant-label", "01", "99", "--model", str(model), *FAST
    )
    assert result.exit_code == 1
    assert "sub-99 is not in" in result.stderr
    assert "sub-99 is not in" in (output / "logs" / "sub-99.log").read_text()
    assert "0 done, 2 complete already, 0 failed" in result.stderr


@pytest.mark.slow
def test_partial_outputs_never_look_complete(
    first_run, tree: BidsTree, model: Path, tmp_path: Path, monkeypatch
) -> None:
    output = copy_of(first_run[0], tmp_path)
    pair = pair_of(tree, "02", "screening", "month12")
    outputs = pair_outputs(output, pair)
    loaded, provenance = open_model(str(model), device="cpu")
    options = PredictOptions(
        skull_strip="none", transform="QuickRigid", bias_correction=False, overlap=0.0, precision="fp32", device="cpu"
    )
    selection = BidsSelection(participant_labels=["02"])

    def disk_full(*args, **kwargs):
        raise OSError("No space left on device")

    # --overwrite redoes a complete pair; a crash while writing leaves it incomplete, not stale-but-complete.
    monkeypatch.setattr("msnewlesion.predict.save_qc_figure", disk_full)
    crashed = run_participant_level(
        tree.root, output, loaded, provenance=provenance, options=options, selection=selection, overwrite=True
    )
    assert crashed.failed and crashed.pairs[0].reason == "OSError: No space left on device"
    assert not outputs["summary"].exists() and not pair_is_complete(output, pair)
    assert outputs["new_lesions"].exists()  # the earlier mask is still there, but nothing says it is complete
    assert "Traceback" in (output / "logs" / "sub-02.log").read_text()  # unexpected errors keep their traceback
    monkeypatch.undo()

    resumed = run_participant_level(
        tree.root, output, loaded, provenance=provenance, options=options, selection=selection
    )
    assert [p.status for p in resumed.pairs] == ["done"] and not resumed.failed
    assert pair_is_complete(output, pair)
    assert (
        json.loads(outputs["summary"].read_text())["new_lesions"]["count"]
        == tree.new_lesions[("02", "screening", "month12")]
    )


# ---------------------------------------------------------------------------------------------
# the group level


@pytest.mark.slow
def test_group_outputs_list_every_pair(first_run, tree: BidsTree) -> None:
    output, _, _ = first_run
    result = run_bids(str(tree.root), str(output), "group", "--json")
    assert result.exit_code == 0, result.output
    table = pd.read_csv(output / "group_newlesions.tsv", sep="\t", dtype=str, keep_default_na=False)
    rows = {(r.participant_id[4:], r.baseline_session_id[4:], r.followup_session_id[4:]): r for r in table.itertuples()}
    assert set(rows) == DONE | set(FAILED)
    assert len(json.loads(result.stdout)) == len(table) == 6
    for key in DONE:
        assert rows[key].status == "done" and (output / rows[key].qc).is_file()
    for key, count in tree.new_lesions.items():
        if key in rows:
            assert int(rows[key].new_lesion_count) == count
    for key, reason in FAILED.items():
        assert rows[key].status == "failed" and reason in rows[key].reason and rows[key].new_lesion_count == "n/a"
    assert float(rows[("02", "screening", "month12")].days_between) == pytest.approx(368.02, abs=0.01)
    assert rows[("03", "01", "02")].days_between == "n/a"
    assert float(rows[("01", "01", "02")].followup_lesion_volume_mm3) > 0
    assert (output / "group_newlesions.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (output / "group_newlesions.html").read_text()
    assert page.count("<tr class=") == 6 and page.count('alt="QC"') == 4
    for key in DONE:
        assert f'href="{rows[key].qc}"' in page
    assert "could not read the voxels" in page

    # change classes per pair, and a timeline for sub-01, the one participant with three sessions
    for key in DONE:
        counts = json.loads((output / rows[key].summary).read_text())["lesion_changes"]["counts"]
        assert int(rows[key].new_or_enlarging_count) == counts["new_or_enlarging"]
        assert int(rows[key].change_resolved_count) == counts["resolved"]
        assert (output / rows[key].lesion_changes).is_file()
    timeline = pd.read_csv(output / "sub-01" / "sub-01_timeline.tsv", sep="\t", dtype=str, keep_default_na=False)
    assert timeline["session_id"].tolist() == ["ses-01", "ses-02", "ses-03"]
    assert timeline["since_session_id"].tolist() == ["n/a", "ses-01", "ses-02"]
    assert timeline["lesion_volume_mm3"].tolist() == [
        rows[("01", "01", "02")].baseline_lesion_volume_mm3,
        rows[("01", "01", "02")].followup_lesion_volume_mm3,
        rows[("01", "02", "03")].followup_lesion_volume_mm3,
    ]
    assert timeline["new_or_enlarging_count"].tolist()[1:] == [
        rows[("01", "01", "02")].new_or_enlarging_count, rows[("01", "02", "03")].new_or_enlarging_count
    ]  # fmt: skip
    assert not (output / "sub-02" / "sub-02_timeline.tsv").exists()  # two sessions: no timeline
    assert 'href="sub-01/sub-01_timeline.tsv"' in page and (output / "group_timelines.png").is_file()


@pytest.mark.slow
def test_group_includes_pairs_of_another_pairing(first_run, tree: BidsTree, model: Path, tmp_path: Path) -> None:
    output = copy_of(first_run[0], tmp_path)
    result = run_bids(
        str(tree.root),
        str(output),
        "participant",
        "--participant-label",
        "01",
        "--session-pairs",
        "first",
        "--model",
        str(model),
        "--json",
        *FAST,
    )
    assert result.exit_code == 0, result.output
    statuses = [(p["followup_session"], p["status"]) for p in json.loads(result.stdout)["participants"][0]["pairs"]]
    assert statuses == [("02", "skipped"), ("03", "done")]  # ses-01 -> ses-02 is the same pair in both pairings
    summary = json.loads(pair_outputs(output, pair_of(tree, "01", "01", "03", "first"))["summary"].read_text())
    assert summary["new_lesions"]["count"] == tree.new_lesions[("01", "01", "03")]
    assert summary["bids"]["session_pairs"] == "first"

    result = run_bids(str(tree.root), str(output), "group", "--participant-label", "01")
    assert result.exit_code == 0, result.output
    table = pd.read_csv(output / "group_newlesions.tsv", sep="\t", dtype=str)
    assert list(zip(table.baseline_session_id, table.followup_session_id, table.status, strict=True)) == [
        ("ses-01", "ses-02", "done"),
        ("ses-01", "ses-03", "done"),
        ("ses-02", "ses-03", "done"),
    ]


# ---------------------------------------------------------------------------------------------
# the shared dataset_description.json


def fake_model(sha: str) -> SimpleNamespace:
    return SimpleNamespace(weights_sha256=sha, config=SimpleNamespace(name="fake", description="a test model"))


def _describe_as_version(output: str, bids: str, version: str, start) -> None:
    import msnewlesion.bids.description as core

    core.__version__ = version
    start.wait()
    write_dataset_description(output, bids, fake_model("a" * 64))


def test_concurrent_jobs_share_dataset_description_safely(tmp_path: Path) -> None:
    bids = tmp_path / "bids"
    (bids / "sub-01").mkdir(parents=True)
    output = tmp_path / "out"
    context = multiprocessing.get_context("fork")
    start = context.Event()
    versions = [f"9.{i}.0" for i in range(6)]
    jobs = [context.Process(target=_describe_as_version, args=(str(output), str(bids), v, start)) for v in versions]
    for job in jobs:
        job.start()
    start.set()
    for job in jobs:
        job.join(60)
    assert [job.exitcode for job in jobs] == [0] * len(jobs)
    description = json.loads((output / "dataset_description.json").read_text())
    recorded = [e["Version"] for e in description["GeneratedBy"] if e["Name"] == "msnewlesion"]
    assert sorted(recorded) == versions  # every job's version, none lost, none twice
    assert [e["Name"] for e in description["GeneratedBy"]].count("fake") == 1
    assert not [p.name for p in output.iterdir() if ".partial-" in p.name]

    with pytest.raises(InputError, match="results of another model"):
        write_dataset_description(output, bids, fake_model("b" * 64))
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "dataset_description.json").write_text(json.dumps({"GeneratedBy": [{"Name": "fMRIPrep"}]}))
    with pytest.raises(InputError, match="another derivative dataset"):
        write_dataset_description(tmp_path / "other", bids, fake_model("a" * 64))


@pytest.mark.slow
def test_outputs_never_go_into_the_raw_dataset(tree: BidsTree) -> None:
    with pytest.raises(InputError, match="the output folder is the BIDS folder"):
        run_participant_level(tree.root, tree.root, fake_model("a" * 64))
    with pytest.raises(InputError, match="`brain_mask` fits one pair"):
        run_participant_level(
            tree.root,
            tree.root / "derivatives" / "x",
            fake_model("a" * 64),
            options=PredictOptions(brain_mask=Path("m.nii.gz")),
        )
    result = run_bids(str(tree.root / "nothing"), str(tree.root / "out"), "participant")
    assert result.exit_code == 1 and "BIDS folder not found" in result.output


# ---------------------------------------------------------------------------------------------
# examples/bids


def test_example_scripts_parse() -> None:
    for script in ("run_local.sh", "slurm_array.sh", "submit_slurm.sh"):
        completed = subprocess.run(["bash", "-n", str(EXAMPLES / script)], capture_output=True, text=True, check=False)
        assert completed.returncode == 0, (script, completed.stderr)
        assert os.access(EXAMPLES / script, os.X_OK), script


@pytest.mark.slow
def test_local_example_runs_every_participant_then_the_group(
    first_run, tree: BidsTree, model: Path, tmp_path: Path
) -> None:
    output = copy_of(first_run[0], tmp_path)
    environment = dict(os.environ, JOBS="2", THREADS="1", MSNEWLESION=f"{sys.executable} -m msnewlesion")
    completed = subprocess.run(
        ["bash", str(EXAMPLES / "run_local.sh"), str(tree.root), str(output), "--model", str(model), *FAST],
        capture_output=True,
        text=True,
        env=environment,
        timeout=300,
        check=False,
    )
    assert completed.returncode == 1, completed.stderr  # sub-03 and sub-04 still fail
    assert "some participants failed" in completed.stderr
    for participant in ("01", "02", "03"):
        assert "complete already, skipped" in (output / "logs" / f"sub-{participant}.log").read_text()
    table = pd.read_csv(output / "group_newlesions.tsv", sep="\t")
    assert len(table) == 6 and (table.status == "done").sum() == 4
