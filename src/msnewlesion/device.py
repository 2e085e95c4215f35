"""Choosing the torch device from a user's ``--device`` value, and the precision networks run in there."""

from __future__ import annotations

import torch

from msnewlesion.errors import InputError, MsNewLesionError, parameter
from msnewlesion.settings import PRECISIONS, check_choice, check_device

__all__ = ["resolve_device", "resolve_precision"]


def resolve_device(name: str = "auto") -> torch.device:
    """Turn ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps`` into a usable :class:`torch.device`.

    ``auto`` picks CUDA, then Apple's MPS, then the CPU.

    Raises
    ------
    MsNewLesionError
        The device was named explicitly but is not available on this machine.
    """
    check_device(name)
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
                f"device {name!r} was asked for but this PyTorch build sees no CUDA GPU; use "
                f"{parameter('device', 'cpu')} (or auto)"
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


def resolve_precision(precision: str, device: torch.device, *, training: bool = False) -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device`` (None: plain fp32): the one precision policy.

    Training and inference share it; only ``auto`` depends on which of the two runs, as measured:

    ============  ==========================================  ==========================================
    device        ``auto`` for inference                      ``auto`` for training
    ============  ==========================================  ==========================================
    CUDA          fp32 on TF32 tensor cores (Ampere and       bf16 (fp16 with loss scaling where bf16 is
                  newer: faster than bf16 here), else fp16    unsupported): half the activation memory
    CPU           bf16 where the CPU has native bf16, else    fp32 (a resumed run stays bit-for-bit the
                  fp32                                        same; bf16 gradients would change it)
    MPS, others   fp32 (autocast support is partial)          fp32
    ============  ==========================================  ==========================================

    ``fp32``, ``bf16`` and ``fp16`` are what they say for both, except that fp16 is refused on the CPU
    and that training on MPS stays in fp32.

    Raises
    ------
    InputError
        An unknown precision, or fp16 on the CPU.
    """
    check_choice("precision", precision, PRECISIONS)
    if precision == "fp32":
        return None
    if device.type == "cuda":
        if precision == "fp16":
            return torch.float16
        if precision == "bf16":
            return torch.bfloat16
        if training:
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        # Ampere and newer run fp32 convolutions on tensor cores (TF32): on an H100 that was faster
        # than bf16 autocast for this network (0.38 s against 0.53 s for a 160×192×160 volume).
        major, _ = torch.cuda.get_device_capability(device)
        return None if major >= 8 and torch.backends.cudnn.allow_tf32 else torch.float16
    if device.type == "cpu":
        if precision == "fp16":
            raise InputError(f"fp16 is not supported on the CPU: use {parameter('precision', 'bf16')} or fp32")
        if precision == "bf16" or (not training and _cpu_has_native_bf16()):
            return torch.bfloat16
        return None
    if precision == "auto" or training:
        return None
    return torch.float16 if precision == "fp16" else torch.bfloat16


def _cpu_has_native_bf16() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())
