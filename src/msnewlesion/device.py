"""Choosing the torch device from a user's ``--device`` value."""

from __future__ import annotations

import torch

from msnewlesion.errors import MsNewLesionError


def resolve_device(name: str = "auto") -> torch.device:
    """Turn ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps`` into a usable :class:`torch.device`.

    ``auto`` picks CUDA, then Apple's MPS, then the CPU.

    Raises
    ------
    MsNewLesionError
        The device was named explicitly but is not available on this machine.
    """
    name = name.strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise MsNewLesionError(
                f'device {name!r} was asked for but this PyTorch build sees no CUDA GPU; use `device="cpu"` (or auto)'
            )
        device = torch.device(name)
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise MsNewLesionError(f"device {name!r}: only {torch.cuda.device_count()} CUDA device(s) are visible")
        return device
    if name == "mps":
        if not _mps_available():
            raise MsNewLesionError("device 'mps' was asked for but Apple's MPS backend is not available here")
        return torch.device("mps")
    raise MsNewLesionError(f"unknown device {name!r}: choose one of auto, cpu, cuda, cuda:N, mps")


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())
