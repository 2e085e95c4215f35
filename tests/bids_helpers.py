"""A small BIDS dataset built from the real LIT scans in tests/data/lit, for the BIDS-App tests.

The scans are block-averaged to about 3 mm so that a whole cohort runs in seconds. New lesions are
real lesion shapes from ``lit/lesion_masks`` (same MNI grid as the FLAIRs) painted bright into the
later sessions, so every pair's new-lesion count is known. Each session's head is moved a few mm
(only the affine changes), so the registration has real work to do.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

LIT = Path(__file__).parent / "data" / "lit"


def block_average(data: np.ndarray, affine: np.ndarray, factors: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Average ``factors`` blocks of voxels; the affine follows (block centres)."""
    f = np.asarray(factors)
    shape = (np.asarray(data.shape) // f) * f
    cropped = data[: shape[0], : shape[1], : shape[2]].astype(np.float64)
    blocks = cropped.reshape(shape[0] // f[0], f[0], shape[1] // f[1], f[1], shape[2] // f[2], f[2])
    scale = np.eye(4)
    scale[:3, :3] = np.diag(f)
    scale[:3, 3] = (f - 1) / 2.0
    return blocks.mean(axis=(1, 3, 5)).astype(np.float32), affine @ scale


def moved(affine: np.ndarray, shift_mm: tuple[float, float, float]) -> np.ndarray:
    """The same grid with the head placed ``shift_mm`` elsewhere in scanner space."""
    result = affine.copy()
    result[:3, 3] += shift_mm
    return result


def save_flair(path: Path, data: np.ndarray, affine: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = nib.Nifti1Image(data.astype(np.float32), affine)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    nib.save(image, str(path))
    return path


def write_scans_tsv(session_dir: Path, rows: list[tuple[str, str]]) -> Path:
    participant, session = session_dir.parent.name, session_dir.name
    path = session_dir / f"{participant}_{session}_scans.tsv"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("filename\tacq_time\n" + "".join(f"{name}\t{time}\n" for name, time in rows))
    return path


def new_lesion_components(brain: np.ndarray, existing: np.ndarray, affine: np.ndarray, count: int) -> list[np.ndarray]:
    """``count`` real lesion shapes (3 mm) well inside the brain, apart from each other and from ``existing``."""
    chosen: list[np.ndarray] = []
    taken = ndimage.binary_dilation(existing, iterations=3)
    inside = ndimage.binary_erosion(brain, iterations=2)
    for path in sorted((LIT / "lesion_masks").glob("*.nii.gz")):
        mask = np.asarray(nib.load(str(path)).dataobj) > 0
        coarse, _ = block_average(mask.astype(np.float32), affine, (3, 3, 3))
        labels, found = ndimage.label(coarse > 0.5, np.ones((3, 3, 3)))
        sizes = ndimage.sum_labels(np.ones_like(labels), labels, index=np.arange(1, found + 1))
        for index in np.argsort(-sizes, kind="stable"):
            component = labels == index + 1
            if not 15 <= component.sum() <= 60 or not inside[component].all() or taken[component].any():
                continue
            chosen.append(component)
            taken |= ndimage.binary_dilation(component, iterations=3)
            break  # one lesion per patient mask: shapes from several patients
        if len(chosen) == count:
            return chosen
    raise RuntimeError("not enough separate lesion shapes in tests/data/lit/lesion_masks")


def painted(image: np.ndarray, brain: np.ndarray, lesions: list[np.ndarray]) -> np.ndarray:
    """``image`` with each lesion set 5 brain standard deviations above the brain's mean."""
    value = image[brain].mean() + 5.0 * image[brain].std()
    result = image.copy()
    for lesion in lesions:
        result[lesion] = value
    return result


@dataclass
class BidsTree:
    root: Path
    new_lesions: dict[tuple[str, str, str], int] = field(default_factory=dict)
    new_voxels: dict[tuple[str, str, str], int] = field(default_factory=dict)
    acq_times: dict[tuple[str, str], str] = field(default_factory=dict)


def build_bids_tree(root: Path) -> BidsTree:
    """sub-01: three sessions (scans.tsv times); sub-02: screening/month12 ordered by time (label order
    is the reverse) and a session without FLAIR; sub-03: the real raw longitudinal pair on its own grids
    plus a session whose FLAIR scans.tsv lists but is not there; sub-04: a corrupt follow-up file."""
    tree = BidsTree(root)
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset_description.json").write_text(
        json.dumps({"Name": "LIT test cohort", "BIDSVersion": "1.10.0", "DatasetType": "raw"})
    )
    (root / "participants.tsv").write_text("participant_id\nsub-01\nsub-02\nsub-03\nsub-04\n")

    # sub-01 from LIT patient07: ses-02 gains two lesions, ses-03 one more.
    image = nib.load(str(LIT / "cross_sectional" / "patient07" / "flair.nii.gz"))
    base, affine = block_average(np.asarray(image.dataobj, np.float32), image.affine, (3, 3, 3))
    own = (
        block_average(
            (np.asarray(nib.load(str(LIT / "cross_sectional" / "patient07" / "lesions.nii.gz")).dataobj) > 0).astype(
                np.float32
            ),
            image.affine,
            (3, 3, 3),
        )[0]
        > 0
    )
    brain = base > 0
    first, second, third = new_lesion_components(brain, own, image.affine, 3)
    sessions = {
        "01": (base, (0.0, 0.0, 0.0), "2019-01-10T09:00:00"),
        "02": (painted(base, brain, [first, second]), (4.0, -3.0, 2.0), "2019-07-11T09:30:00"),
        "03": (painted(base, brain, [first, second, third]), (-2.5, 3.5, -4.0), "2020-01-09T10:00:00"),
    }
    for session, (data, shift, time) in sessions.items():
        name = f"sub-01_ses-{session}_FLAIR.nii.gz"
        save_flair(root / "sub-01" / f"ses-{session}" / "anat" / name, data, moved(affine, shift))
        write_scans_tsv(root / "sub-01" / f"ses-{session}", [(f"anat/{name}", time)])
        tree.acq_times[("01", session)] = time
    tree.new_lesions |= {("01", "01", "02"): 2, ("01", "02", "03"): 1, ("01", "01", "03"): 3}
    tree.new_voxels |= {
        ("01", "01", "02"): int(first.sum() + second.sum()),
        ("01", "02", "03"): int(third.sum()),
        ("01", "01", "03"): int(first.sum() + second.sum() + third.sum()),
    }

    # sub-02 from LIT patient26: screening before month12 by date, though "month12" sorts first.
    image = nib.load(str(LIT / "cross_sectional" / "patient26" / "flair.nii.gz"))
    base, affine = block_average(np.asarray(image.dataobj, np.float32), image.affine, (3, 3, 3))
    own = (
        block_average(
            (np.asarray(nib.load(str(LIT / "cross_sectional" / "patient26" / "lesions.nii.gz")).dataobj) > 0).astype(
                np.float32
            ),
            image.affine,
            (3, 3, 3),
        )[0]
        > 0
    )
    brain = base > 0
    (lesion,) = new_lesion_components(brain, own, image.affine, 1)
    for session, data, shift, time in (
        ("screening", base, (1.5, 2.0, -3.0), "2021-02-01T08:15:00"),
        ("month12", painted(base, brain, [lesion]), (-3.0, 1.0, 2.5), "2022-02-04T08:45:00"),
    ):
        name = f"sub-02_ses-{session}_FLAIR.nii.gz"
        save_flair(root / "sub-02" / f"ses-{session}" / "anat" / name, data, moved(affine, shift))
        write_scans_tsv(root / "sub-02" / f"ses-{session}", [(f"anat/{name}", time)])
        tree.acq_times[("02", session)] = time
    save_flair(root / "sub-02" / "ses-month06" / "anat" / "sub-02_ses-month06_T1w.nii.gz", base, affine)
    tree.new_lesions[("02", "screening", "month12")] = 1
    tree.new_voxels[("02", "screening", "month12")] = int(lesion.sum())

    # sub-03: the real raw longitudinal pair, each on its own scanner grid; ses-03 not fetched.
    for session, study in (("01", "study1"), ("02", "study2")):
        image = nib.load(str(LIT / "longitudinal" / "patient01" / f"{study}_FLAIR.nii.gz"))
        data, affine = block_average(np.asarray(image.dataobj, np.float32), image.affine, (4, 4, 1))
        save_flair(root / "sub-03" / f"ses-{session}" / "anat" / f"sub-03_ses-{session}_FLAIR.nii.gz", data, affine)
    write_scans_tsv(root / "sub-03" / "ses-03", [("anat/sub-03_ses-03_FLAIR.nii.gz", "2017-05-02T11:00:00")])

    # sub-04: a follow-up whose file was cut short in a copy.
    source = root / "sub-02" / "ses-screening" / "anat" / "sub-02_ses-screening_FLAIR.nii.gz"
    for session in ("01", "02"):
        target = root / "sub-04" / f"ses-{session}" / "anat" / f"sub-04_ses-{session}_FLAIR.nii.gz"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(source.read_bytes())
    corrupt = root / "sub-04" / "ses-02" / "anat" / "sub-04_ses-02_FLAIR.nii.gz"
    raw = gzip.decompress(corrupt.read_bytes())
    corrupt.write_bytes(gzip.compress(raw)[: len(gzip.compress(raw)) // 3])
    return tree
