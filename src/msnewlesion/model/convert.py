"""Converting the official CoactSeg checkpoint into this package's model format.

The official file (``vnet_best_model.pth`` in the ``ycwu1997/CoactSeg`` repository) is a plain
state dict of 230 tensors named after the reference code's modules. It is read with
``torch.load(weights_only=True)`` (no arbitrary unpickling), every name is mapped to this
package's network, and the result is loaded strictly: every tensor used, every parameter filled.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import torch

from msnewlesion.errors import InputError, ModelError
from msnewlesion.model.checkpoint import check_state_dict, file_sha256, save_model
from msnewlesion.model.config import ModelConfig
from msnewlesion.model.network import CoactSeg

__all__ = [
    "OFFICIAL_CONFIG",
    "convert_official_checkpoint",
    "official_name",
    "official_state_dict_shapes",
    "official_to_native",
]

OFFICIAL_CONFIG = ModelConfig(
    name="coactseg-official",
    width=16,
    norm="batch",
    dropout=0.5,
    spacing=(0.5, 0.75, 0.75),
    orientation="RAS",
    axis_order="zyx",
    patch_size=(80, 80, 80),
    intensity_normalization="zscore-brain-box",
    box_margin=15,
    threshold=0.5,
    description=(
        "The official CoactSeg checkpoint (Wu et al., 'CoactSeg: Learning from Heterogeneous Data for New "
        "Multiple Sclerosis Lesion Segmentation', MICCAI 2023), converted to safetensors by msnewlesion."
    ),
    training_data=(
        "MICCAI-21 (MSSEG-2) training split: 32 two-time-point FLAIR pairs with new-lesion labels, "
        "resampled to 0.5×0.75×0.75 mm (x, y, z); plus MS-23v1: 30 single-time-point 3D FLAIRs with all-lesion "
        "labels at 0.8 mm. Inputs were HD-BET skull-stripped, cropped to the brain box + 15 voxels and z-scored "
        "over that box."
    ),
    license="MIT (the CoactSeg reference code and checkpoint, github.com/ycwu1997/CoactSeg)",
    extra={"source": "github.com/ycwu1997/CoactSeg: model/CoactSeg_reg/vnet/vnet_best_model.pth"},
)

_ENCODER_BLOCKS = {
    "block_one": "encoder.levels.0",
    "block_one_dw": "encoder.downs.0",
    "block_two": "encoder.levels.1",
    "block_two_dw": "encoder.downs.1",
    "block_three": "encoder.levels.2",
    "block_three_dw": "encoder.downs.2",
    "block_four": "encoder.levels.3",
    "block_four_dw": "encoder.downs.3",
    "block_five": "encoder.levels.4",
}
_DECODER_BLOCKS = {
    "block_five_up": "decoder.ups.0",
    "block_six": "decoder.levels.0",
    "block_six_up": "decoder.ups.1",
    "block_seven": "decoder.levels.1",
    "block_seven_up": "decoder.ups.2",
    "block_eight": "decoder.levels.2",
    "block_eight_up": "decoder.ups.3",
    "block_nine_1": "head_baseline.features",
    "block_nine_2": "head_followup.features",
    "block_nine_3": "head_new.features",
    "block_c2f": "head_new.fusion",
}
_CLASSIFIERS = {
    "out_conv_1": "head_baseline.classifier",
    "out_conv_2": "head_followup.classifier",
    "out_conv_3": "head_new.classifier",
}
_BLOCKS = {f"encoder.{k}": v for k, v in _ENCODER_BLOCKS.items()} | {
    f"decoder.{k}": v for k, v in _DECODER_BLOCKS.items()
}
# In the reference code every block keeps its layers in one Sequential named ``conv``: stage s has
# its convolution at index 3s, its batch norm at 3s + 1 and its ReLU at 3s + 2.
_LAYER = re.compile(r"^(?P<block>.+)\.conv\.(?P<index>\d+)\.(?P<param>[a-z_]+)$")
_CLASSIFIER = re.compile(r"^decoder\.(?P<head>out_conv_[123])\.(?P<param>weight|bias)$")


def official_to_native(name: str) -> str:
    """This package's parameter name for an official checkpoint's tensor name.

    Raises
    ------
    KeyError
        The name is not one the official network has.
    """
    match = _CLASSIFIER.match(name)
    if match:
        return f"{_CLASSIFIERS[match['head']]}.{match['param']}"
    match = _LAYER.match(name)
    if not match or match["block"] not in _BLOCKS:
        raise KeyError(name)
    native_block = _BLOCKS[match["block"]]
    stage, position = divmod(int(match["index"]), 3)
    if position == 2:
        raise KeyError(name)  # ReLUs have no tensors
    layer = "conv" if position == 0 else "norm"
    if native_block.split(".")[1] in ("downs", "ups"):
        if stage != 0:
            raise KeyError(name)
        return f"{native_block}.{layer}.{match['param']}"
    return f"{native_block}.units.{stage}.{layer}.{match['param']}"


_NATIVE_STAGE = re.compile(r"^(?P<block>.+)\.units\.(?P<stage>\d+)\.(?P<layer>conv|norm)\.(?P<param>[a-z_]+)$")
_NATIVE_RESAMPLE = re.compile(r"^(?P<block>.+\.(?:downs|ups)\.\d)\.(?P<layer>conv|norm)\.(?P<param>[a-z_]+)$")


def official_name(native: str) -> str:
    """The official checkpoint's tensor name for one of this package's parameter names."""
    blocks = {v: k for k, v in _BLOCKS.items()}
    classifiers = {v: k for k, v in _CLASSIFIERS.items()}
    head, _, param = native.rpartition(".")
    if head in classifiers:
        return f"decoder.{classifiers[head]}.{param}"
    match = _NATIVE_STAGE.match(native) or _NATIVE_RESAMPLE.match(native)
    if not match or match["block"] not in blocks:
        raise KeyError(native)
    stage = int(match.groupdict().get("stage") or 0)
    index = 3 * stage + (0 if match["layer"] == "conv" else 1)
    return f"{blocks[match['block']]}.conv.{index}.{match['param']}"


def official_state_dict_shapes() -> dict[str, tuple[int, ...]]:
    """Names and shapes of the 230 tensors of the official checkpoint."""
    network = CoactSeg(OFFICIAL_CONFIG)
    return {official_name(name): tuple(tensor.shape) for name, tensor in network.state_dict().items()}


def _load_failure(error: Exception) -> str:
    """torch.load's reason in one line, without its advice to load with ``weights_only=False``.

    That advice would run any code the file holds: exactly what reading with ``weights_only=True``
    refuses, so it must never reach the user as the way out.
    """
    text = str(error)
    if "WeightsUnpickler error:" in text:
        detail = text.split("WeightsUnpickler error:", 1)[1].strip().splitlines()[0].strip()
        detail = detail.split(". ")[0].rstrip(".")  # torch goes on to explain how to allow-list the object
        return f"it is not a file of plain tensors (the safe reader stopped at: {detail or 'an unknown object'})"
    lines = [line.strip() for line in text.splitlines() if line.strip() and "weights_only" not in line]
    return lines[0].rstrip(".") if lines else type(error).__name__


def _read_official(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise InputError(f"official checkpoint not found: {path}")
    try:
        with warnings.catch_warnings():
            # torch warns about the pickle protocol before failing: the error says all there is to say.
            warnings.simplefilter("ignore")
            loaded = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises UnpicklingError, RuntimeError, EOFError...
        raise ModelError(
            f"could not read {path} as a PyTorch state dict of tensors: {_load_failure(error)}; it was read with "
            "weights_only=True, which never runs code from the file: give the official vnet_best_model.pth"
        ) from None
    if isinstance(loaded, dict) and "state_dict" in loaded and isinstance(loaded["state_dict"], dict):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise ModelError(f"{path} does not hold a state dict of tensors (found {type(loaded).__name__})")
    # Checkpoints saved from nn.DataParallel prefix every name with "module."
    if loaded and all(key.startswith("module.") for key in loaded):
        loaded = {key[len("module.") :]: value for key, value in loaded.items()}
    return loaded


def convert_official_checkpoint(
    source: str | Path,
    destination: str | Path,
    *,
    overwrite: bool = False,
    config: ModelConfig = OFFICIAL_CONFIG,
) -> Path:
    """Convert the official CoactSeg ``.pth`` into a model folder of this package.

    Parameters
    ----------
    source : path-like
        The official state dict (``vnet_best_model.pth``).
    destination : path-like
        The model folder to write (``config.json`` + ``model.safetensors``).
    overwrite : bool
        Replace an existing destination.
    config : ModelConfig
        Metadata to record; defaults to what is known of the official model.

    Raises
    ------
    ModelError
        The file is not a state dict, or a tensor is missing, unexpected or misshaped.

    Examples
    --------
    >>> convert_official_checkpoint("vnet_best_model.pth", "models/coactseg-official")  # doctest: +SKIP
    """
    source = Path(source)
    official = _read_official(source)
    check_state_dict(official, official_state_dict_shapes(), source=f"{source} (official CoactSeg layout)")
    native = {official_to_native(name): tensor for name, tensor in official.items()}
    network = CoactSeg(config)
    network.load_state_dict(native, strict=True)
    provenance = dict(config.extra, source_file=source.name, source_sha256=file_sha256(source))
    return save_model(network, destination, config=config.replace(extra=provenance), overwrite=overwrite)
