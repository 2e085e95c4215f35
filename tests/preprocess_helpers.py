"""Fixtures for the preprocessing tests: an analytic head phantom and a stand-in HD-BET model folder."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy.spatial.transform import Rotation

from msnewlesion.io import Volume

LIT_PAIR = Path(__file__).parent / "data" / "lit" / "longitudinal" / "patient01"

# Blobs of the phantom: centre (mm, RAS), radius (mm), intensity change. Many, small and placed at
# random (fixed seed), so the image has texture at several scales, a registration has one sharp answer,
# and a flipped or transposed axis shows.
_BLOB_RNG = np.random.default_rng(20231008)
_BLOBS = [
    (tuple(_BLOB_RNG.uniform(-1, 1, 3) * (38.0, 50.0, 36.0)), float(_BLOB_RNG.uniform(2.0, 5.0)), float(change))
    for change in _BLOB_RNG.choice([-0.5, -0.3, 0.3, 0.5, 0.7], size=150)
]
_HEAD_RADII = np.array([62.0, 76.0, 60.0])
_BRAIN_RADII = np.array([50.0, 64.0, 48.0])


def rigid(angles_degrees: tuple[float, float, float], translation_mm: tuple[float, float, float]) -> np.ndarray:
    """A 4×4 rigid transform: rotation about x, y, z (degrees, applied in that order), then a shift."""
    matrix = np.eye(4)
    matrix[:3, :3] = Rotation.from_euler("xyz", angles_degrees, degrees=True).as_matrix()
    matrix[:3, 3] = translation_mm
    return matrix


def phantom_value(points: np.ndarray) -> np.ndarray:
    """Intensity of the head phantom at world points (N×3, RAS mm): scalp 0.3, brain about 1, blobs, air 0."""
    head = np.sum((points / _HEAD_RADII) ** 2, axis=1)
    brain = np.sum((points / _BRAIN_RADII) ** 2, axis=1)
    value = 0.3 / (1.0 + np.exp((np.sqrt(head) - 1.0) * 40.0))
    inside = 1.0 / (1.0 + np.exp((np.sqrt(brain) - 1.0) * 40.0))
    texture = np.zeros(len(points))
    for centre, radius, change in _BLOBS:
        distance2 = np.sum((points - np.asarray(centre)) ** 2, axis=1)
        texture += change * np.exp(-distance2 / (2.0 * radius**2))
    value = value + inside * (0.7 + texture)
    return np.where(head <= 1.0, value, 0.0)  # air is exactly 0 outside the head's ellipsoid


def brain_value(points: np.ndarray) -> np.ndarray:
    """The phantom's brain (the inner ellipsoid) at world points."""
    return np.sum((points / _BRAIN_RADII) ** 2, axis=1) <= 1.0


def grid_affine(shape: tuple[int, int, int], spacing: tuple[float, float, float], codes: str = "RAS") -> np.ndarray:
    """An axis-aligned affine with the given axis codes whose field of view is centred on the origin."""
    units = {"R": (1, 0, 0), "L": (-1, 0, 0), "A": (0, 1, 0), "P": (0, -1, 0), "S": (0, 0, 1), "I": (0, 0, -1)}
    affine = np.eye(4)
    affine[:3, :3] = np.array([units[c] for c in codes], dtype=float).T * np.asarray(spacing)
    affine[:3, 3] = -affine[:3, :3] @ ((np.asarray(shape) - 1) / 2.0)
    return affine


def sample(function, shape: tuple[int, int, int], affine: np.ndarray, world_map: np.ndarray | None = None):
    """Evaluate a function of world points on a grid; ``world_map`` maps the grid's world to the function's."""
    index = np.indices(shape).reshape(3, -1).T.astype(np.float64)
    points = (affine[:3, :3] @ index.T).T + affine[:3, 3]
    if world_map is not None:
        points = (world_map[:3, :3] @ points.T).T + world_map[:3, 3]
    return function(points).reshape(shape)


def phantom_volume(
    shape: tuple[int, int, int],
    spacing: tuple[float, float, float],
    codes: str = "RAS",
    *,
    pose: np.ndarray | None = None,
    affine: np.ndarray | None = None,
    scale: float = 500.0,
) -> Volume:
    """The phantom on a grid, as a scanner would store it (uint16-like values).

    ``pose`` is the map from this scan's world to the phantom's (the head's position in this session).
    """
    affine = grid_affine(shape, spacing, codes) if affine is None else affine
    data = (scale * sample(phantom_value, shape, affine, pose)).astype(np.float32)
    header = nib.Nifti1Header()
    header.set_qform(affine, code=1)
    header.set_sform(affine, code=1)
    return Volume(data, affine, header)


def save_nifti(volume: Volume, path: Path, dtype=np.float32) -> Path:
    image = nib.Nifti1Image(np.asarray(volume.data).astype(dtype), volume.affine, header=volume.header)
    nib.save(image, str(path))
    return path


def write_standin_hdbet(folder: Path, spacing_mm: float) -> Path:
    """A tiny nnU-Net model folder laid out like HD-BET's weights (dataset.json, plans.json, fold_all/…).

    Its network is hand-set to a threshold: after nnU-Net's z-scoring of the image, a voxel is brain
    when its z-score exceeds 0.5 (conv identity → ReLU → decoder identity on the skip → ReLU → logit
    z − 0.5). So the mask it returns is known, and a flipped or transposed axis anywhere between our
    code and nnU-Net's reader shows.
    """
    import torch
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    architecture = {
        "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
        "arch_kwargs": {
            "n_stages": 2,
            "features_per_stage": [2, 2],
            "conv_op": "torch.nn.modules.conv.Conv3d",
            "kernel_sizes": [[3, 3, 3], [3, 3, 3]],
            "strides": [[1, 1, 1], [2, 2, 2]],
            "n_conv_per_stage": [1, 1],
            "n_conv_per_stage_decoder": [1],
            "conv_bias": True,
            "norm_op": None,
            "norm_op_kwargs": None,
            "dropout_op": None,
            "dropout_op_kwargs": None,
            "nonlin": "torch.nn.ReLU",
            "nonlin_kwargs": {"inplace": True},
        },
        "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
    }
    plans = {
        "dataset_name": "Dataset999_HDBETStandIn",
        "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": [spacing_mm] * 3,
        "original_median_shape_after_transp": [64, 64, 64],
        "image_reader_writer": "SimpleITKIO",
        "transpose_forward": [0, 1, 2],
        "transpose_backward": [0, 1, 2],
        "configurations": {
            "3d_fullres": {
                "data_identifier": "nnUNetPlans_3d_fullres",
                "preprocessor_name": "DefaultPreprocessor",
                "batch_size": 1,
                "patch_size": [32, 32, 32],
                "median_image_size_in_voxels": [64, 64, 64],
                "spacing": [spacing_mm] * 3,
                "normalization_schemes": ["ZScoreNormalization"],
                "use_mask_for_norm": [False],
                "resampling_fn_data": "resample_data_or_seg_to_shape",
                "resampling_fn_seg": "resample_data_or_seg_to_shape",
                "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
                "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
                "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
                "resampling_fn_probabilities_kwargs": {
                    "is_seg": False,
                    "order": 1,
                    "order_z": 0,
                    "force_separate_z": None,
                },
                "architecture": architecture,
                "batch_dice": False,
            }
        },
        "experiment_planner_used": "ExperimentPlanner",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {
            "0": {
                "max": 1.0,
                "mean": 0.5,
                "median": 0.5,
                "min": 0.0,
                "percentile_00_5": 0.0,
                "percentile_99_5": 1.0,
                "std": 0.2,
            }
        },
    }
    dataset = {
        "channel_names": {"0": "MRI"},
        "labels": {"background": 0, "brain": 1},
        "numTraining": 1,
        "file_ending": ".nii.gz",
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "plans.json").write_text(json.dumps(plans, indent=2))
    (folder / "dataset.json").write_text(json.dumps(dataset, indent=2))

    network = get_network_from_plans(
        architecture["network_class_name"],
        architecture["arch_kwargs"],
        architecture["_kw_requires_import"],
        1,
        2,
        deep_supervision=False,
    )
    with torch.no_grad():
        for parameter in network.parameters():
            parameter.zero_()
        network.encoder.stages[0][0].convs[0].conv.weight[0, 0, 1, 1, 1] = 1.0
        decoder_conv = network.decoder.stages[0].convs[0].conv
        # The decoder concatenates (upsampled, skip): the skip's first channel comes after the upsampled ones.
        decoder_conv.weight[0, decoder_conv.in_channels // 2, 1, 1, 1] = 1.0
        network.decoder.seg_layers[0].weight[1, 0] = 1.0
        network.decoder.seg_layers[0].bias[1] = -0.5
    (folder / "fold_all").mkdir(exist_ok=True)
    torch.save(
        {
            "network_weights": network.state_dict(),
            "trainer_name": "nnUNetTrainer",
            "init_args": {"configuration": "3d_fullres"},
            "inference_allowed_mirroring_axes": (0, 1, 2),
        },
        folder / "fold_all" / "checkpoint_final.pth",
    )
    return folder


def standin_expected_mask(data: np.ndarray) -> np.ndarray:
    """What the stand-in network calls brain: z-score (over the non-zero box, as nnU-Net crops) above 0.5."""
    nonzero = np.argwhere(data != 0)
    box = tuple(slice(a, b + 1) for a, b in zip(nonzero.min(axis=0), nonzero.max(axis=0), strict=True))
    values = data[box].astype(np.float64)
    mask = np.zeros(data.shape, dtype=bool)
    mask[box] = (values - values.mean()) / values.std() > 0.5
    return mask
