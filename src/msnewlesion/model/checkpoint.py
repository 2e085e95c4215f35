"""The model folder: ``config.json`` and ``model.safetensors``.

Weights are safetensors only: loading a model never unpickles anything.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from msnewlesion.errors import ModelError
from msnewlesion.io import atomic_directory
from msnewlesion.model.config import ModelConfig
from msnewlesion.model.network import CoactSeg
from msnewlesion.settings import CONFIG_FILE, WEIGHTS_FILE

__all__ = [
    "LoadedModel",
    "check_state_dict",
    "file_sha256",
    "load_model",
    "save_model",
    "write_model_files",
]

@dataclass(frozen=True)
class LoadedModel:
    """A network ready to run, with where it came from."""

    network: CoactSeg
    config: ModelConfig
    path: Path
    weights_sha256: str


def file_sha256(path: str | Path, chunk_size: int = 1 << 20) -> str:
    """Hex SHA-256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def check_state_dict(
    tensors: Mapping[str, torch.Tensor],
    expected: Mapping[str, torch.Tensor | torch.Size | tuple[int, ...]],
    *,
    source: str,
) -> None:
    """Raise :class:`ModelError` naming every missing, unexpected or misshaped tensor."""

    def shape_of(value: torch.Tensor | torch.Size | tuple[int, ...]) -> tuple[int, ...]:
        return tuple(value.shape) if isinstance(value, torch.Tensor) else tuple(value)

    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    misshaped = [
        f"{name} has shape {list(shape_of(tensors[name]))}, expected {list(shape_of(expected[name]))}"
        for name in sorted(set(expected) & set(tensors))
        if shape_of(tensors[name]) != shape_of(expected[name])
    ]
    if not (missing or unexpected or misshaped):
        return

    def listing(label: str, items: list[str]) -> str:
        shown = ", ".join(items[:5]) + (f" and {len(items) - 5} more" if len(items) > 5 else "")
        return f"{len(items)} {label}: {shown}"

    parts = []
    if missing:
        parts.append(listing("missing", missing))
    if unexpected:
        parts.append(listing("unexpected", unexpected))
    if misshaped:
        parts.append(listing("misshaped", misshaped))
    raise ModelError(f"the tensors in {source} do not match the network: " + "; ".join(parts))


def save_model(
    network: CoactSeg,
    directory: str | Path,
    *,
    config: ModelConfig | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``config.json`` and ``model.safetensors`` into ``directory``, atomically.

    Parameters
    ----------
    network : CoactSeg
        The network whose weights (and running statistics) to save.
    directory : path-like
        The model folder to create.
    config : ModelConfig, optional
        Defaults to ``network.config``; its architecture fields must match the network.
    overwrite : bool
        Replace an existing folder (only once the new one is complete).
    """
    with atomic_directory(directory, overwrite=overwrite) as temporary:
        write_model_files(network, temporary, config=config)
    return Path(directory)


def write_model_files(network: CoactSeg, directory: str | Path, *, config: ModelConfig | None = None) -> None:
    """Write ``config.json`` and ``model.safetensors`` into an existing folder (no atomicity of its own)."""
    config = config or network.config
    architecture = ("width", "norm", "in_channels", "num_classes")
    if any(getattr(config, key) != getattr(network.config, key) for key in architecture):
        raise ModelError("the config to save does not describe this network's architecture")
    tensors = {name: value.detach().to("cpu").contiguous().clone() for name, value in network.state_dict().items()}
    directory = Path(directory)
    config.save(directory / CONFIG_FILE)
    save_file(tensors, str(directory / WEIGHTS_FILE), metadata={"format": "pt", "model": config.name})


def load_model(directory: str | Path, *, device: torch.device | str = "cpu") -> LoadedModel:
    """Load a model folder strictly: the config must be valid and every tensor must match.

    Raises
    ------
    ModelError
        The folder, config or weights are missing, malformed, or do not match each other.

    Examples
    --------
    >>> model = load_model("my-model/")  # doctest: +SKIP
    >>> model.config.spacing  # doctest: +SKIP
    (1.0, 1.0, 1.0)
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise ModelError(f"model folder not found: {directory}")
    config = ModelConfig.load(directory / CONFIG_FILE)
    weights = directory / WEIGHTS_FILE
    if not weights.is_file():
        raise ModelError(f"model weights not found: {weights} (a model folder holds {CONFIG_FILE} and {WEIGHTS_FILE})")
    try:
        tensors = load_file(str(weights), device="cpu")
    except (SafetensorError, OSError, ValueError) as error:
        raise ModelError(f"could not read {weights}: {error}") from None
    first_conv = tensors.get("encoder.levels.0.units.0.conv.weight")
    if first_conv is not None and first_conv.shape[0] != config.width:
        raise ModelError(
            f"{directory / CONFIG_FILE} says width={config.width} but {weights.name} holds a network of "
            f"width {first_conv.shape[0]}: the config and the weights do not belong together"
        )
    network = CoactSeg(config)
    check_state_dict(tensors, network.state_dict(), source=str(weights))
    network.load_state_dict(tensors, strict=True)
    network.eval().to(device)
    return LoadedModel(network=network, config=config, path=directory, weights_sha256=file_sha256(weights))
