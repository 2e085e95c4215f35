"""The CoactSeg network, its configuration, losses and checkpoint format.

The network's names are imported on first use: :mod:`msnewlesion.model.config` (and whatever only needs
it) stays importable without loading torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from msnewlesion.model.config import ModelConfig
    from msnewlesion.model.network import CoactSeg, CoactSegOutput, build_network, lesion_probabilities, make_input

__all__ = ["CoactSeg", "CoactSegOutput", "ModelConfig", "build_network", "lesion_probabilities", "make_input"]

_HOMES = {name: "msnewlesion.model.network" for name in __all__} | {"ModelConfig": "msnewlesion.model.config"}


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_HOMES[name]), name)
