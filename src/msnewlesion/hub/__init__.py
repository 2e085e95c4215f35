"""Models by name: the registry, downloads from and uploads to the Hugging Face Hub, model cards.

>>> from msnewlesion.hub import resolve_model
>>> resolve_model("demo").path  # doctest: +SKIP
"""

from msnewlesion.hub.card import build_model_card
from msnewlesion.hub.download import (
    HubSpec,
    ResolvedModel,
    cached_model_folder,
    download_model,
    hub_cache_dir,
    hub_endpoint,
    is_offline,
    parse_hub_spec,
)
from msnewlesion.hub.registry import (
    ModelEntry,
    add_model,
    config_home,
    find_model,
    list_models,
    local_model_problem,
    registry_path,
    remove_model,
    resolve_model,
)
from msnewlesion.hub.upload import PreparedPush, PushResult, prepare_push, push_model

__all__ = [
    "HubSpec",
    "ModelEntry",
    "PreparedPush",
    "PushResult",
    "ResolvedModel",
    "add_model",
    "build_model_card",
    "cached_model_folder",
    "config_home",
    "download_model",
    "find_model",
    "hub_cache_dir",
    "hub_endpoint",
    "is_offline",
    "list_models",
    "local_model_problem",
    "parse_hub_spec",
    "prepare_push",
    "push_model",
    "registry_path",
    "remove_model",
    "resolve_model",
]
