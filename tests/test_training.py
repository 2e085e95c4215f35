from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from msnewlesion.cli import app
from msnewlesion.errors import InputError, OutputExistsError
from msnewlesion.model.checkpoint import load_model
from msnewlesion.training import TrainConfig, read_manifest, train, validate_manifest
from msnewlesion.training.data import augment, batch_counts, batches, draw_batch, load_samples
from training_helpers import make_dataset

TINY = TrainConfig(iterations=12, batch_size=4, patch_size=32, width=4, val_every=6, save_every=4, relation_start=6)
TINY_FLAGS = ["--batch-size", "4", "--patch-size", "32", "--width", "4", "--device", "cpu", "--quiet"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("dataset"))


def subprocess_env() -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")


# --- manifest -------------------------------------------------------------------------------


def test_manifest_paths_are_relative_to_its_folder(dataset: Path) -> None:
    manifest = read_manifest(dataset)
    assert len(manifest.split("train")) == 6 and len(manifest.split("val")) == 2
    row = manifest.rows[0]
    assert row.baseline == dataset.parent / "long0_t1.nii.gz" and row.baseline.is_file()
    single = next(r for r in manifest.rows if r.kind == "single")
    assert single.followup is None and single.brain_mask is None
    assert validate_manifest(manifest) == []


def test_structural_problems_are_listed_at_once(tmp_path: Path) -> None:
    (tmp_path / "m.csv").write_text(
        "subject,kind,baseline,followup,label,brain_mask,split\n"
        "a,longitudinal,a1.nii.gz,,a.nii.gz,,train\n"
        "b,double,b.nii.gz,,b_l.nii.gz,,train\n"
        "c,single,c.nii.gz,c2.nii.gz,c_l.nii.gz,,test\n"
    )
    with pytest.raises(InputError) as error:
        read_manifest(tmp_path / "m.csv")
    message = str(error.value)
    assert "4 problem(s)" in message
    assert "line 2 (a): a longitudinal sample needs a follow-up image" in message
    assert "line 3 (b): kind 'double'" in message
    assert "line 4 (c): split 'test'" in message
    assert "line 4 (c): a single sample has its one image in 'baseline'" in message


def test_missing_columns_are_named(tmp_path: Path) -> None:
    (tmp_path / "m.csv").write_text("subject,image,label\na,a.nii.gz,b.nii.gz\n")
    with pytest.raises(InputError, match="lacks the column"):
        read_manifest(tmp_path / "m.csv")


def test_dry_run_lists_every_file_problem(tmp_path: Path, dataset: Path, runner: CliRunner) -> None:
    lines = dataset.read_text().splitlines()
    folder = dataset.parent
    # a label that is not binary, a missing file, and a follow-up on another grid
    nib.save(nib.Nifti1Image(np.full((48, 48, 48), 2, np.uint8), np.eye(4)), str(folder / "bad_label.nii.gz"))
    nib.save(nib.Nifti1Image(np.ones((40, 48, 48), np.float32), np.eye(4)), str(folder / "small.nii.gz"))
    broken = [
        lines[0],
        "x,longitudinal,long0_t1.nii.gz,small.nii.gz,long0_new.nii.gz,,train",
        "y,single,missing.nii.gz,,single0_lesions.nii.gz,,train",
        "z,single,single0.nii.gz,,bad_label.nii.gz,,train",
    ]
    (folder / "broken.csv").write_text("\n".join(broken) + "\n")
    result = runner.invoke(app, ["train", str(folder / "broken.csv"), "-o", str(tmp_path / "run"), "--dry-run"])
    assert result.exit_code == 1
    output = " ".join(result.output.split())
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 4 and all(str(folder / "broken.csv") in line for line in errors)  # one line each
    assert "line 2 (x): followup" in output and "is constant" in output
    assert "line 2 (x): followup is not on the baseline's grid (40×48×48 vs 48×48×48 voxels)" in output
    assert "line 3 (y): baseline not found" in output
    assert "line 4 (z): label" in output and "is not binary (values 2)" in output
    assert not (tmp_path / "run").exists()

    ok = runner.invoke(app, ["train", str(dataset), "-o", str(tmp_path / "run"), "--dry-run"])
    assert ok.exit_code == 0, ok.output
    assert "manifest OK: 8 samples: 3 longitudinal + 3 single for training, 2 for validation" in " ".join(
        ok.output.split()
    )


# --- config ---------------------------------------------------------------------------------


def test_defaults_are_the_papers() -> None:
    config = TrainConfig()
    assert (config.patch_size, config.batch_size, config.lr, config.iterations) == (80, 8, 1e-2, 20_000)
    assert (config.relation_start, config.seed, config.longitudinal_fraction) == (10_000, 1337, 0.5)
    assert (config.new_lesion_weight, config.relation_weight, config.width) == (1.0, 1.0, 16)


def test_yaml_config_and_flag_overrides(tmp_path: Path) -> None:
    (tmp_path / "train.yaml").write_text("iterations: 500\nlr: 0.001\n")
    config = TrainConfig.load(tmp_path / "train.yaml").replace(iterations=50, width=None)
    assert config.iterations == 50 and config.lr == 0.001 and config.width == 16
    (tmp_path / "bad.yaml").write_text("iterations: 10\nlearning_rate: 0.1\n")
    with pytest.raises(InputError, match="unknown settings: learning_rate"):
        TrainConfig.load(tmp_path / "bad.yaml")
    with pytest.raises(InputError, match="multiple of 16"):
        TrainConfig(patch_size=40)


# --- sampling -------------------------------------------------------------------------------


def test_batches_mix_both_kinds_and_depend_only_on_seed_iteration_and_rank(dataset: Path) -> None:
    rows = read_manifest(dataset).split("train")
    samples = load_samples(rows, 32)
    longitudinal = [s for s in samples if s.longitudinal]
    single = [s for s in samples if not s.longitudinal]
    config = TrainConfig(batch_size=8, patch_size=32)
    assert batch_counts(config, True, True) == (4, 4)
    assert batch_counts(config, False, True) == (0, 8)
    a = draw_batch(longitudinal, single, config, iteration=7)
    b = draw_batch(longitudinal, single, config, iteration=7)
    c = draw_batch(longitudinal, single, config, iteration=8)
    d = draw_batch(longitudinal, single, config, iteration=7, rank=1)
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.target, b.target)
    assert not torch.equal(a.inputs, c.inputs) and not torch.equal(a.inputs, d.inputs)
    assert a.inputs.shape == (8, 3, 32, 32, 32)
    assert a.longitudinal.tolist() == [True] * 4 + [False] * 4
    # single scans are fed as (x, x, 0)
    singles = a.inputs[4:]
    assert torch.equal(singles[:, 0], singles[:, 1]) and torch.count_nonzero(singles[:, 2]) == 0
    # the lesion-weighted crop holds label voxels (every training sample has lesions)
    assert all(int(t.sum()) > 0 for t in a.target)


def test_prefetching_threads_draw_the_same_batches(dataset: Path) -> None:
    samples = load_samples(read_manifest(dataset).split("train"), 32)
    longitudinal = [s for s in samples if s.longitudinal]
    single = [s for s in samples if not s.longitudinal]
    config = TrainConfig(batch_size=4, patch_size=32)
    serial = list(batches(longitudinal, single, config, start=3, stop=9, workers=0))
    threaded = list(batches(longitudinal, single, config, start=3, stop=9, workers=3))
    assert [i for i, _ in serial] == [i for i, _ in threaded] == list(range(4, 10))
    for (_, a), (_, b) in zip(serial, threaded, strict=True):
        assert torch.equal(a.inputs, b.inputs) and torch.equal(a.target, b.target)


def test_augmentation_includes_the_identity_and_keeps_time_points_aligned() -> None:
    rng = np.random.default_rng(0)
    base = np.random.default_rng(1).normal(size=(8, 8, 8)).astype(np.float32)
    follow = base + 1.0
    label = (base > 1).astype(np.uint8)
    config = TrainConfig(flip_rot90=True)
    identities = 0
    for _ in range(200):
        b, f, (y,) = augment(base, follow, [label], rng, config)
        np.testing.assert_allclose(f - b, 1.0, atol=1e-6)  # the same change at both time points
        np.testing.assert_array_equal(y, (b > 1).astype(np.uint8))  # and on the label
        identities += bool(np.array_equal(b, base))
    assert identities > 0  # the reference code's combination never shows the original orientation


# --- training runs --------------------------------------------------------------------------


@pytest.mark.slow
def test_short_cpu_training_lowers_the_loss_and_writes_usable_models(tmp_path: Path, dataset: Path) -> None:
    config = TrainConfig(
        iterations=40, batch_size=4, patch_size=32, width=4, val_every=20, save_every=20, relation_start=1000
    )
    result = train(dataset, tmp_path / "run", config, device="cpu")
    with open(tmp_path / "run" / "log.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["iteration"]) for r in rows] == list(range(1, 41))
    losses = [float(r["loss"]) for r in rows]
    assert np.mean(losses[-10:]) < np.mean(losses[:10]) - 0.05
    assert rows[19]["val_new_lesion_dice"] != "" and rows[18]["val_new_lesion_dice"] == ""

    for folder in (result.last, result.best):
        model = load_model(folder)
        assert model.config.width == 4 and model.config.patch_size == (32, 32, 32)
        assert model.config.spacing == (1.0, 1.0, 1.0)
        assert "3 two-time-point pair(s)" in model.config.training_data
    assert (result.best / "validation.json").is_file()
    summary = json.loads((tmp_path / "run" / "train_summary.json").read_text())
    assert summary["iterations"] == 40 and summary["ranks_in_sync"] is True

    with pytest.raises(OutputExistsError, match="`resume=True`"):
        train(dataset, tmp_path / "run", config, device="cpu")


def _train_command(manifest: Path, run: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "msnewlesion",
        "train",
        str(manifest),
        "-o",
        str(run),
        "--iterations",
        "30",
        "--save-every",
        "5",
        "--val-every",
        "10",
        *TINY_FLAGS,
        *extra,
    ]


@pytest.mark.slow
def test_a_killed_run_resumes_to_the_same_weights(tmp_path: Path, dataset: Path) -> None:
    env = subprocess_env()
    reference = subprocess.run(
        _train_command(dataset, tmp_path / "uninterrupted"), env=env, capture_output=True, text=True
    )
    assert reference.returncode == 0, reference.stderr

    process = subprocess.Popen(
        _train_command(dataset, tmp_path / "killed"), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    state = tmp_path / "killed" / "last" / "training_state.pt"
    deadline = time.monotonic() + 120
    while not state.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    stopped_at = int(torch.load(state, weights_only=True)["iteration"])
    assert stopped_at < 30

    resumed = subprocess.run(
        _train_command(dataset, tmp_path / "killed", "--resume"), env=env, capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stderr

    a = load_model(tmp_path / "uninterrupted" / "last").network.state_dict()
    b = load_model(tmp_path / "killed" / "last").network.state_dict()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    with open(tmp_path / "killed" / "log.csv") as handle:
        iterations = [int(r["iteration"]) for r in csv.DictReader(handle)]
    assert iterations == list(range(1, 31))  # rows past the checkpoint were replaced, none doubled


def test_resume_needs_a_checkpoint(tmp_path: Path, dataset: Path) -> None:
    with pytest.raises(InputError, match="nothing to resume"):
        train(dataset, tmp_path / "empty", TINY, resume=True, device="cpu")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_two_processes_with_ddp_keep_identical_weights(tmp_path: Path, dataset: Path) -> None:
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(_free_port()),
        "-m",
        "msnewlesion",
        "train",
        str(dataset),
        "-o",
        str(tmp_path / "ddp"),
        "--iterations",
        "6",
        "--save-every",
        "3",
        "--val-every",
        "6",
        *TINY_FLAGS,
    ]
    completed = subprocess.run(command, env=subprocess_env(), capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]
    summary = json.loads((tmp_path / "ddp" / "train_summary.json").read_text())
    assert summary["world_size"] == 2
    assert len(summary["rank_weight_checksums"]) == 2
    assert summary["ranks_in_sync"] is True
    assert load_model(tmp_path / "ddp" / "last").config.width == 4


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_training_on_cuda_with_mixed_precision(tmp_path: Path, dataset: Path) -> None:
    config = TrainConfig(iterations=6, batch_size=4, patch_size=32, width=4, val_every=6, save_every=6)
    result = train(dataset, tmp_path / "cuda", config, device="cuda")
    summary = json.loads((tmp_path / "cuda" / "train_summary.json").read_text())
    assert summary["device"].startswith("cuda") and summary["precision"] in ("bfloat16", "float16")
    assert load_model(result.last).config.width == 4


def test_a_time_limit_stops_cleanly_for_a_later_resume(tmp_path: Path, dataset: Path) -> None:
    config = TrainConfig(iterations=5, batch_size=2, patch_size=32, width=4, val_every=100, save_every=100)
    stopped = train(dataset, tmp_path / "run", config, device="cpu", time_limit=0.0)
    assert stopped.iterations_done == 1 and stopped.iterations == 5
    summary = json.loads((tmp_path / "run" / "train_summary.json").read_text())
    assert summary["stopped_by_time_limit"] is True
    assert int(torch.load(tmp_path / "run" / "last" / "training_state.pt", weights_only=True)["iteration"]) == 1
    resumed = train(dataset, tmp_path / "run", None, resume=True, device="cpu")
    assert resumed.iterations_done == 5


# --- all-lesion labels of pairs, crops anywhere, fine-tuning ---------------------------------


@pytest.fixture(scope="module")
def dataset_with_lesions(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny data set, with each pair's all-lesion masks in the optional manifest columns."""
    folder = tmp_path_factory.mktemp("lesions")
    manifest = make_dataset(folder)
    with open(manifest, newline="") as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        row["baseline_lesions"] = row["followup_lesions"] = ""
        if row["kind"] == "longitudinal":
            new = np.asarray(nib.load(str(folder / row["label"])).dataobj) > 0
            baseline = np.asarray(nib.load(str(folder / row["baseline"])).dataobj)
            # the helper paints old lesions +4 above the background at both time points, new ones at the follow-up
            old = (baseline > 3.0) & ~new
            for column, mask in (("baseline_lesions", old), ("followup_lesions", old | new)):
                name = f"{row['subject']}_{column}.nii.gz"
                nib.save(nib.Nifti1Image(mask.astype(np.uint8), np.eye(4)), str(folder / name))
                row[column] = name
    with open(manifest, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return manifest


def test_pairs_with_all_lesion_masks_carry_them_into_the_batches(dataset_with_lesions: Path) -> None:
    manifest = read_manifest(dataset_with_lesions)
    assert validate_manifest(manifest) == []
    pairs = [r for r in manifest.rows if r.longitudinal]
    assert all(r.baseline_lesions is not None and r.has_all_lesion_labels for r in pairs)
    samples = load_samples(manifest.split("train"), 32)
    longitudinal = [s for s in samples if s.longitudinal]
    single = [s for s in samples if not s.longitudinal]
    batch = draw_batch(longitudinal, single, TrainConfig(batch_size=8, patch_size=32), iteration=3)
    assert batch.lesions is not None and batch.lesions.shape == (2, 8, 32, 32, 32)
    assert batch.lesions_known.tolist() == [True] * 8
    for index in range(4):  # pairs: the follow-up's lesions hold the new ones and the baseline's
        new, before, after = batch.target[index], batch.lesions[0, index], batch.lesions[1, index]
        assert torch.all(after >= torch.maximum(new, before)) and not torch.any((new > 0) & (before > 0))
    for index in range(4, 8):  # single scans: their label at both time points
        assert torch.equal(batch.lesions[0, index], batch.target[index])
        assert torch.equal(batch.lesions[1, index], batch.target[index])
    # without the columns a pair does not supervise the all-lesion heads
    plain = load_samples(read_manifest(make_dataset_dir(dataset_with_lesions)).split("train"), 32)
    batch = draw_batch([s for s in plain if s.longitudinal], [s for s in plain if not s.longitudinal],
                       TrainConfig(batch_size=8, patch_size=32), iteration=3)  # fmt: skip
    assert batch.lesions_known.tolist() == [False] * 4 + [True] * 4


def make_dataset_dir(manifest: Path) -> Path:
    """The same tiny data set without the optional columns, in a sibling folder."""
    return make_dataset(manifest.parent.parent / "plain")


def test_manifest_lesion_columns_are_checked(tmp_path: Path) -> None:
    (tmp_path / "m.csv").write_text(
        "subject,kind,baseline,followup,label,brain_mask,split,baseline_lesions,followup_lesions\n"
        "a,longitudinal,a1.nii.gz,a2.nii.gz,a.nii.gz,,train,a_b.nii.gz,\n"
        "b,single,b.nii.gz,,b_l.nii.gz,,train,b_b.nii.gz,b_f.nii.gz\n"
    )
    with pytest.raises(InputError) as error:
        read_manifest(tmp_path / "m.csv")
    message = str(error.value)
    assert "line 2 (a): give both baseline_lesions and followup_lesions, or neither" in message
    assert "line 3 (b): a single sample has its all-lesion mask in 'label'" in message


def test_random_crops_reach_the_whole_brain_and_time_points_get_their_own_jitter(dataset: Path) -> None:
    from msnewlesion.training.data import sample_patch

    sample = next(s for s in load_samples(read_manifest(dataset).split("train"), 32) if s.longitudinal)
    rng = np.random.default_rng(0)
    lesion_starts = {tuple(np.argwhere(sample_patch(sample, 16, rng, 0)[2][0])[0]) for _ in range(20)}
    assert all(lesion_starts)  # lesion-centred crops always hold lesion voxels
    random_crops = [sample_patch(sample, 16, rng, 0, random_crop_fraction=1.0)[2][0] for _ in range(40)]
    assert any(not crop.any() for crop in random_crops)  # some crops fall far from every lesion

    base = np.random.default_rng(1).normal(size=(8, 8, 8)).astype(np.float32)
    config = TrainConfig(flip_rot90=False, time_point_jitter=0.2)
    b, f, _ = augment(base, base.copy(), [np.zeros((8, 8, 8), np.uint8)], np.random.default_rng(2), config)
    assert not np.allclose(b, f)  # each time point its own scale and offset
    assert np.corrcoef(b.ravel(), f.ravel())[0, 1] > 0.999  # but the same anatomy


def test_init_from_starts_from_another_models_weights(tmp_path: Path, dataset: Path) -> None:
    first = train(dataset, tmp_path / "first", TrainConfig(iterations=2, batch_size=4, patch_size=32, width=4,
                                                           val_every=2, save_every=2), device="cpu")  # fmt: skip
    start = load_model(first.last).network.state_dict()
    tuned = TrainConfig(iterations=1, batch_size=4, patch_size=32, width=4, val_every=1, save_every=1, lr=1e-9,
                        init_from=str(first.last))  # fmt: skip
    second = train(dataset, tmp_path / "second", tuned, device="cpu")
    weights = load_model(second.last).network.state_dict()
    name = "encoder.levels.0.units.0.conv.weight"
    assert name in weights
    assert torch.allclose(weights[name], start[name], atol=1e-6)  # a 1e-9 step from the start, not from scratch
    assert load_model(second.last).config.extra["training"]["init_from"] == str(first.last)

    wider = TrainConfig(iterations=1, batch_size=4, patch_size=32, width=8, init_from=str(first.last))
    with pytest.raises(InputError, match=r"width 4 \(this run: 8\)"):
        train(dataset, tmp_path / "third", wider, device="cpu")


def test_pairs_played_backwards_have_no_new_lesion_and_swapped_lesion_masks(dataset_with_lesions: Path) -> None:
    from msnewlesion.training.data import swap_time_points

    rng = np.random.default_rng(0)
    base, follow = rng.normal(size=(2, 8, 8, 8)).astype(np.float32)
    new, before, after = (rng.random((3, 8, 8, 8)) > 0.7).astype(np.uint8)
    b, f, (n, lb, lf) = swap_time_points(base, follow, [new, before, after])
    assert b is follow and f is base and not n.any() and lb is after and lf is before

    samples = load_samples(read_manifest(dataset_with_lesions).split("train"), 32)
    longitudinal = [s for s in samples if s.longitudinal]
    single = [s for s in samples if not s.longitudinal]
    config = TrainConfig(batch_size=8, patch_size=32, swap_fraction=1.0)
    for iteration in range(1, 4):
        batch = draw_batch(longitudinal, single, config, iteration=iteration)
        for index in range(4):  # the pairs, all played backwards: nothing new, the later lesions are the fewer
            assert not batch.target[index].any()
            assert torch.all(batch.lesions[0, index] >= batch.lesions[1, index])
        assert torch.equal(batch.lesions[0, 4:], batch.target[4:])  # single scans are left alone
