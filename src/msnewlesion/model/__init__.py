"""The CoactSeg network, its configuration, losses and checkpoint format."""

from msnewlesion.model.config import ModelConfig
from msnewlesion.model.network import CoactSeg, CoactSegOutput, build_network, lesion_probabilities, make_input

__all__ = ["CoactSeg", "CoactSegOutput", "ModelConfig", "build_network", "lesion_probabilities", "make_input"]
