"""Inference engines: what runs a network's forward pass on a batch of windows.

The sliding window (:mod:`msnewlesion.inference`) and the skull stripping
(:mod:`msnewlesion.preprocess.hdbet_v1`) decide *what* the network sees; an engine only runs the
forward pass. Two engines:

- ``torch``: the network itself, in eval mode, with autocast (bf16 on CPUs with native bf16 instructions)
  and channels-last tensors on the CPU.
- ``openvino``: the same network converted once to an OpenVINO model and compiled for the CPU with the
  same precision (the optional extra ``msnewlesion[openvino]``).

``auto`` takes the engine measured fastest for the device: PyTorch, on the CPU as well as on a GPU. Against
PyTorch with its batch norms folded into the convolutions, channels-last tensors and bf16 autocast (what
``torch`` runs), OpenVINO measured 0.8-1.25× on 2 cores of an AVX-512-bf16 CPU, slower than PyTorch for the
built-in width-8 models, and its first run pays a conversion (docs/performance.md). It stays a choice for
CPUs where it measures faster.

Converting a network (tracing it) takes seconds; compiling it for one input shape about a second. Both
are cached: the converted model on disk under :func:`cache_dir` (keyed by the network's weights, its
class and the OpenVINO version), the compiled model in OpenVINO's own ``CACHE_DIR`` beside it, and
compiled models in memory for the rest of the process (a BIDS run predicts many pairs). Conversion
goes through OpenVINO's PyTorch front end directly, not ``openvino.convert_model``, whose conversion
tool reports usage statistics over the network by default: nothing here sends anything anywhere.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from msnewlesion.errors import InputError
from msnewlesion.settings import ENGINES, check_choice

__all__ = [
    "BatchRunner",
    "cache_dir",
    "network_fingerprint",
    "openvino_available",
    "openvino_runner",
    "resolve_engine",
    "torch_runner",
]

#: A forward pass: a float32 batch in, the network's output tensors (float32, on the CPU for OpenVINO) out.
BatchRunner = Callable[[torch.Tensor], tuple[torch.Tensor, ...]]


def openvino_available() -> bool:
    """Whether the ``openvino`` package can be imported."""
    import importlib.util

    return importlib.util.find_spec("openvino") is not None


def resolve_engine(engine: str, device: torch.device) -> str:
    """The engine that ``engine`` means on ``device``: ``torch`` or ``openvino``.

    Raises
    ------
    InputError
        An unknown engine; OpenVINO asked for on a GPU, or asked for and not installed.

    Examples
    --------
    >>> resolve_engine("torch", torch.device("cpu"))
    'torch'
    """
    check_choice("engine", engine, ENGINES)
    if engine == "auto":
        return "torch"
    if engine == "openvino":
        if device.type != "cpu":
            raise InputError(
                f"the OpenVINO engine runs on the CPU, not on {device.type}: use engine torch with that device, "
                "or device cpu"
            )
        if not openvino_available():
            raise InputError(
                "the OpenVINO engine needs the openvino package, which is not installed: "
                "pip install 'msnewlesion[openvino]' (or use engine torch)"
            )
    return engine


def cache_dir() -> Path:
    """Where converted and compiled networks are kept: ``MSNEWLESION_CACHE_DIR``, else
    ``XDG_CACHE_HOME/msnewlesion``, else ``~/.cache/msnewlesion``."""
    if folder := os.environ.get("MSNEWLESION_CACHE_DIR"):
        return Path(folder)
    if xdg := os.environ.get("XDG_CACHE_HOME"):
        return Path(xdg) / "msnewlesion"
    return Path.home() / ".cache" / "msnewlesion"


def network_fingerprint(network: nn.Module) -> str:
    """A hex digest of a network's class and every tensor of its state (names, shapes, values)."""
    digest = hashlib.sha256(f"{type(network).__module__}.{type(network).__qualname__}".encode())
    for name, tensor in network.state_dict().items():
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------------------
# PyTorch


def torch_runner(network: nn.Module, device: torch.device, autocast_dtype: torch.dtype | None) -> BatchRunner:
    """The network itself (an eval-mode module on ``device``), channels-last on the CPU, under autocast."""
    channels_last = device.type == "cpu"
    if channels_last:
        network = network.to(memory_format=torch.channels_last_3d)  # type: ignore[call-overload]  # torch's stubs omit Module.to(memory_format=)

    def run(batch: torch.Tensor) -> tuple[torch.Tensor, ...]:
        batch = batch.to(device)
        if channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last_3d)
        with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
            output = network(batch)
        outputs = output if isinstance(output, tuple) else (output,)
        return tuple(o.float() for o in outputs)

    return run


# --------------------------------------------------------------------------------------------------------
# OpenVINO

_COMPILED: dict[tuple[str, tuple[int, ...], str, int], Any] = {}
_LOCK = threading.Lock()


def _openvino_model(network: nn.Module, example: torch.Tensor, fingerprint: str):  # -> openvino.Model
    """The network as an OpenVINO model: read from the disk cache, or converted (and cached)."""
    import openvino as ov

    folder = cache_dir() / "openvino" / f"{fingerprint[:32]}-openvino{ov.__version__.split('-')[0]}"
    xml = folder / "model.xml"
    core = ov.Core()
    if xml.is_file() and xml.with_suffix(".bin").is_file():
        with contextlib.suppress(Exception):  # a damaged cache entry is converted again below
            return core.read_model(str(xml))
    from openvino.frontend import FrontEndManager
    from openvino.frontend.pytorch.ts_decoder import TorchScriptPythonDecoder

    # OpenVINO's front end reads the network by tracing it; PyTorch's warnings about tracing (deprecation,
    # shape checks made constant) concern that mechanism, not the converted network, so they stay quiet.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        decoder = TorchScriptPythonDecoder(network, example_input=(example,))
    frontend = FrontEndManager().load_by_framework("pytorch")
    model = frontend.convert(frontend.load(decoder))
    with contextlib.suppress(OSError):  # a read-only cache only costs the conversion next time
        folder.mkdir(parents=True, exist_ok=True)
        temporary = folder / f".model-{os.getpid()}-{threading.get_ident()}.xml"
        ov.save_model(model, str(temporary), compress_to_fp16=False)
        os.replace(temporary.with_suffix(".bin"), xml.with_suffix(".bin"))
        os.replace(temporary, xml)
    return model


def openvino_runner(
    network: nn.Module,
    batch_shape: tuple[int, ...],
    autocast_dtype: torch.dtype | None,
    *,
    threads: int | None = None,
) -> BatchRunner:
    """The network compiled by OpenVINO for the CPU, for batches of exactly ``batch_shape``.

    ``autocast_dtype`` ``torch.bfloat16`` compiles with bf16 inference precision, None with f32.
    Smaller batches are padded to the compiled shape (the padding's outputs are dropped).

    Examples
    --------
    >>> run = openvino_runner(network, (2, 3, 80, 80, 80), torch.bfloat16)  # doctest: +SKIP
    >>> [o.shape for o in run(torch.zeros(1, 3, 80, 80, 80))]  # doctest: +SKIP
    [torch.Size([1, 2, 80, 80, 80]), torch.Size([1, 2, 80, 80, 80]), torch.Size([1, 2, 80, 80, 80])]
    """
    import openvino as ov

    if autocast_dtype not in (None, torch.bfloat16):
        raise InputError(f"the OpenVINO engine runs in fp32 or bf16 on the CPU, not {autocast_dtype}")
    precision = "bf16" if autocast_dtype is torch.bfloat16 else "f32"
    threads = threads or torch.get_num_threads()
    fingerprint = network_fingerprint(network)
    key = (fingerprint, tuple(batch_shape), precision, threads)
    with _LOCK:
        compiled = _COMPILED.get(key)
        if compiled is None:
            model = _openvino_model(network, torch.zeros(batch_shape), fingerprint)
            model.reshape(list(batch_shape))
            config = {"INFERENCE_PRECISION_HINT": precision, "INFERENCE_NUM_THREADS": threads}
            blobs = cache_dir() / "openvino" / "compiled"
            with contextlib.suppress(OSError):
                blobs.mkdir(parents=True, exist_ok=True)
                config["CACHE_DIR"] = str(blobs)
            compiled = ov.Core().compile_model(model, "CPU", config)
            _COMPILED[key] = compiled
    request = compiled.create_infer_request()
    size = batch_shape[0]

    def run(batch: torch.Tensor) -> tuple[torch.Tensor, ...]:
        count = batch.shape[0]
        array = np.ascontiguousarray(batch.detach().cpu().numpy(), dtype=np.float32)
        if count < size:
            array = np.concatenate([array, np.zeros((size - count, *array.shape[1:]), np.float32)])
        results = request.infer({0: array})
        return tuple(torch.from_numpy(np.array(results[output])[:count]) for output in compiled.outputs)

    return run
