"""Every choice a user can make, defined once: the allowed values of each setting and the names of things.

The options dataclasses check values against these lists when they are built, and the command line
builds its choices from them, so that a bad value is refused while the arguments are parsed and
``--help`` lists what is allowed. This module imports nothing heavy (no torch, no numpy): the command
line reads it before any work starts.
"""

from __future__ import annotations

import re
from collections.abc import Collection

__all__ = [
    "BEST_METRICS",
    "CONFIG_FILE",
    "CONNECTIVITIES",
    "DEFAULT_MODEL",
    "DEFAULT_TRANSFORM",
    "DEVICES",
    "DISTANCE_UNITS",
    "ENGINES",
    "IMAGE_INTERPOLATIONS",
    "INTENSITY_NORMALIZATIONS",
    "LR_SCHEDULES",
    "NORM_LAYERS",
    "PRECISIONS",
    "REGISTRATION_SPACES",
    "SESSION_PAIRINGS",
    "SKULL_STRIP_METHODS",
    "SKULL_STRIP_MODES",
    "SPLITS",
    "SYNTH_MODES",
    "TRANSFORMS",
    "WEIGHTS_FILE",
    "check_choice",
    "check_device",
    "choice_problem",
    "device_problem",
    "orientation_problem",
]

# --- Preprocessing ---------------------------------------------------------------------------------------
#: ``auto``: HD-BET 2 when its weights are in place, else HD-BET v1; ``none``: the inputs are already stripped.
SKULL_STRIP_METHODS = ("auto", "hd-bet", "hd-bet-v1", "none")
#: HD-BET v1's folds and mirroring; ``auto`` is fast on a CPU, accurate on a GPU.
SKULL_STRIP_MODES = ("auto", "fast", "accurate")
#: The common space of a pair; ``none``: the scans already share one grid (no registration).
REGISTRATION_SPACES = ("halfway", "baseline", "followup", "none")
#: antspyx rigid registration types.
TRANSFORMS = ("QuickRigid", "Rigid")
#: Rigid, not QuickRigid: on the real LIT pair both land within 1 mm and 1° of the data set's own
#: co-registration, but only Rigid matches its within-brain correlation (docs/preprocessing.md).
DEFAULT_TRANSFORM = "Rigid"
#: How images are resampled; masks are always resampled by nearest neighbour.
IMAGE_INTERPOLATIONS = ("bspline", "linear")
#: Intensity normalisations (``zscore-brain-box`` is the published CoactSeg recipe).
INTENSITY_NORMALIZATIONS = ("zscore-brain", "zscore-brain-box", "none")

# --- Running networks ------------------------------------------------------------------------------------
#: What runs a network's forward pass; ``auto`` is the engine measured fastest (PyTorch).
ENGINES = ("auto", "torch", "openvino")
#: Autocast precision of training and inference (one policy: :func:`msnewlesion.device.autocast_dtype`).
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
#: Where networks run; ``cuda:N`` stands for ``cuda:0``, ``cuda:1`` … (see :func:`device_problem`).
DEVICES = ("auto", "cpu", "cuda", "cuda:N", "mps")
#: Voxel connectivity that makes one lesion: by face, edge or corner (26) or by face only (6).
CONNECTIVITIES = (26, 6)

# --- Models ----------------------------------------------------------------------------------------------
#: The files of a model folder (and of a model repository on the Hugging Face Hub).
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
#: The model ``predict``, ``bids`` and ``preprocess`` use when none is named: a registry name.
DEFAULT_MODEL = "demo"
#: Normalisation layers of the network.
NORM_LAYERS = ("batch", "instance")

# --- Training, data sets and evaluation ------------------------------------------------------------------
#: Learning-rate schedules: constant (the reference code) or polynomial decay.
LR_SCHEDULES = ("constant", "poly")
#: Validation metrics that can pick a run's ``best/`` model.
BEST_METRICS = ("new_lesion_dice", "new_lesion_f1", "new_lesion_pooled_f1", "all_lesion_dice", "mean_dice")
#: The ``split`` column of a training manifest.
SPLITS = ("train", "val")
#: How ``synth`` makes new lesions.
SYNTH_MODES = ("remove", "add", "both", "none")
#: BIDS session pairs: each session against the one before it, or against the first.
SESSION_PAIRINGS = ("consecutive", "first")
#: Units of the surface distances in evaluation.
DISTANCE_UNITS = ("mm", "voxel")
#: What the reference of ``evaluate --classes`` holds: change-class codes, or a plain change mask.
CHANGE_REFERENCE_KINDS = ("classes", "change")

_CUDA_INDEX = re.compile(r"cuda:\d+")


def choice_problem(name: str, value: object, allowed: Collection[object]) -> str | None:
    """The message that refuses ``value`` for the setting ``name``, or None when it is allowed.

    Examples
    --------
    >>> choice_problem("space", "mni", REGISTRATION_SPACES)
    "space 'mni' is not one of: halfway, baseline, followup, none"
    >>> choice_problem("space", "halfway", REGISTRATION_SPACES) is None
    True
    """
    if value in allowed:
        return None
    return f"{name} {value!r} is not one of: {', '.join(str(a) for a in allowed)}"


def check_choice(name: str, value: object, allowed: Collection[object]) -> None:
    """Raise :class:`~msnewlesion.errors.OptionError` naming ``name`` and the allowed values unless ``value`` is one."""
    problem = choice_problem(name, value, allowed)
    if problem is not None:
        from msnewlesion.errors import OptionError

        raise OptionError(problem)


def device_problem(value: str, name: str = "device") -> str | None:
    """The message that refuses a device name, or None for ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.

    Only the spelling is checked here; whether the device exists is found when it is opened.

    Examples
    --------
    >>> device_problem("cuda:1") is None
    True
    >>> device_problem("gpu")
    "device 'gpu' is not one of: auto, cpu, cuda, cuda:N, mps"
    """
    normalized = value.strip().lower()
    if (normalized in DEVICES and normalized != "cuda:N".lower()) or _CUDA_INDEX.fullmatch(normalized):
        return None
    return choice_problem(name, value, DEVICES)


def orientation_problem(codes: str) -> str | None:
    """The message that refuses axis codes, or None for one of R/L, one of A/P and one of S/I in any order.

    Examples
    --------
    >>> orientation_problem("lps") is None
    True
    >>> orientation_problem("RAA")
    "orientation 'RAA' is not three axis codes with one of R/L, A/P and S/I (for example RAS or LPS)"
    """
    upper = str(codes).upper()
    opposite = {"L": "R", "P": "A", "I": "S"}
    if len(upper) == 3 and {opposite.get(c, c) for c in upper} == {"R", "A", "S"}:
        return None
    return f"orientation {codes!r} is not three axis codes with one of R/L, A/P and S/I (for example RAS or LPS)"


def check_device(value: str, name: str = "device") -> None:
    """Raise :class:`~msnewlesion.errors.OptionError` unless ``value`` names a device (see :func:`device_problem`)."""
    problem = device_problem(value, name)
    if problem is not None:
        from msnewlesion.errors import OptionError

        raise OptionError(problem)
