"""The model registry: built-in models, the user's own entries, and turning a ``--model`` value into a folder.

Three kinds of entries, and nothing else:

* built-in models shipped in the package under ``msnewlesion/data/models/<name>/`` (only those whose
  folder really holds ``config.json`` and ``model.safetensors``);
* entries the user adds with ``msnewlesion models add``: a local model folder, or a Hub repository
  pinned to a commit, both with the SHA-256 of their weights, kept in ``models.json`` in the user's
  config folder (``MSNEWLESION_HOME``, else ``XDG_CONFIG_HOME/msnewlesion``, else ``~/.config/msnewlesion``).

Anywhere a model name is accepted, a model folder or a Hub repository (``owner/name[@revision]``) is too.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from msnewlesion.errors import ModelError, parameter
from msnewlesion.hub.download import (
    HUB_PREFIX,
    ResolvedModel,
    cached_model_folder,
    download_model,
    normalize_sha256,
    parse_hub_spec,
    sha256_of_file,
)
from msnewlesion.progress import ProgressCallback
from msnewlesion.settings import CONFIG_FILE, WEIGHTS_FILE

__all__ = [
    "BUILTIN_MODELS_DIR",
    "SOURCES",
    "ModelEntry",
    "add_model",
    "config_home",
    "find_model",
    "list_models",
    "local_model_problem",
    "registry_path",
    "remove_model",
    "resolve_model",
]

SOURCES = ("builtin", "hub", "local")
#: Where built-in models live inside the installed package.
BUILTIN_MODELS_DIR = Path(__file__).resolve().parent.parent / "data" / "models"
REGISTRY_FILE = "models.json"
REGISTRY_FORMAT_VERSION = 1
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass(frozen=True)
class ModelEntry:
    """One row of the registry.

    Parameters
    ----------
    name : str
        What to pass to ``--model``.
    source : {"builtin", "hub", "local"}
        Shipped with the package, a pinned Hub repository, or a folder on this machine.
    repo_id, revision : str or None
        For Hub entries, the repository and the commit hash it is pinned to.
    sha256 : str or None
        SHA-256 of ``model.safetensors``.
    description, license : str
        From the model's ``config.json``.
    spacing : tuple of 3 floats or None
        Voxel size in mm the model expects (x, y, z).
    path : Path or None
        The folder on this machine; for a Hub entry, its cached snapshot (None until downloaded).
    """

    name: str
    source: str
    repo_id: str | None
    revision: str | None
    sha256: str | None
    description: str
    spacing: tuple[float, float, float] | None
    license: str
    path: Path | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "source": self.source,
            "repo_id": self.repo_id,
            "revision": self.revision,
            "sha256": self.sha256,
            "description": self.description,
            "spacing": list(self.spacing) if self.spacing is not None else None,
            "license": self.license,
            "path": str(self.path) if self.path is not None else None,
        }


def config_home() -> Path:
    """The msnewlesion config folder: ``MSNEWLESION_HOME``, ``XDG_CONFIG_HOME/msnewlesion`` or ``~/.config/...``."""
    if home := os.environ.get("MSNEWLESION_HOME"):
        return Path(home).expanduser()
    if xdg := os.environ.get("XDG_CONFIG_HOME"):
        return Path(xdg).expanduser() / "msnewlesion"
    return Path.home() / ".config" / "msnewlesion"


def registry_path() -> Path:
    """The JSON file holding the user's registry entries."""
    return config_home() / REGISTRY_FILE


def _read_config_json(folder: Path) -> dict[str, Any]:
    try:
        data = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise ModelError(f"could not read {folder / CONFIG_FILE}: {error}") from None
    if not isinstance(data, dict):
        raise ModelError(f"{folder / CONFIG_FILE} must hold a JSON object")
    return data


def _spacing_of(value: Any) -> tuple[float, float, float] | None:
    if isinstance(value, list | tuple) and len(value) == 3:
        try:
            return (float(value[0]), float(value[1]), float(value[2]))
        except (TypeError, ValueError):
            return None
    return None


def _is_model_folder(folder: Path) -> bool:
    return (folder / CONFIG_FILE).is_file() and (folder / WEIGHTS_FILE).is_file()


def _builtin_entries() -> list[ModelEntry]:
    if not BUILTIN_MODELS_DIR.is_dir():
        return []
    entries = []
    for folder in sorted(BUILTIN_MODELS_DIR.iterdir()):
        if not (folder.is_dir() and _NAME.match(folder.name) and _is_model_folder(folder)):
            continue
        config = _read_config_json(folder)
        entries.append(
            ModelEntry(
                name=folder.name,
                source="builtin",
                repo_id=None,
                revision=None,
                sha256=sha256_of_file(folder / WEIGHTS_FILE),
                description=str(config.get("description", "")),
                spacing=_spacing_of(config.get("spacing")),
                license=str(config.get("license", "")),
                path=folder,
            )
        )
    return entries


def _read_user_records() -> dict[str, dict[str, Any]]:
    path = registry_path()
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise ModelError(
            f"the model registry {path} is unreadable ({error}); fix or delete it (it only lists models added "
            "with `msnewlesion models add`)"
        ) from None
    models = data.get("models") if isinstance(data, dict) else None
    if not isinstance(models, dict) or not all(isinstance(r, dict) for r in models.values()):
        raise ModelError(f"the model registry {path} is malformed: expected {{'models': {{NAME: {{...}}}}}}")
    if int(data.get("format_version", 1)) > REGISTRY_FORMAT_VERSION:
        raise ModelError(f"the model registry {path} was written by a newer msnewlesion; upgrade msnewlesion")
    return models


def _write_user_records(records: dict[str, dict[str, Any]]) -> Path:
    from msnewlesion.io import write_json

    path = registry_path()
    write_json(path, {"format_version": REGISTRY_FORMAT_VERSION, "models": dict(sorted(records.items()))})
    return path


def _entry_from_record(name: str, record: dict[str, Any]) -> ModelEntry:
    source = record.get("source")
    if source not in ("hub", "local"):
        raise ModelError(f"registry entry {name!r} in {registry_path()} has an unknown source {source!r}")
    repo_id = record.get("repo_id") if source == "hub" else None
    revision = record.get("revision") if source == "hub" else None
    if source == "hub":
        path = cached_model_folder(repo_id, revision) if repo_id and revision else None
    else:
        path = Path(record["path"]) if record.get("path") else None
    return ModelEntry(
        name=name,
        source=source,
        repo_id=repo_id,
        revision=revision,
        sha256=record.get("sha256"),
        description=str(record.get("description", "")),
        spacing=_spacing_of(record.get("spacing")),
        license=str(record.get("license", "")),
        path=path,
    )


def list_models() -> list[ModelEntry]:
    """Every model the registry knows: built-ins first, then the user's entries, by name.

    Nothing here touches the network.

    Examples
    --------
    >>> [entry.name for entry in list_models()]  # doctest: +SKIP
    ['demo', 'official']
    """
    user = [_entry_from_record(name, record) for name, record in sorted(_read_user_records().items())]
    return _builtin_entries() + user


def find_model(name: str) -> ModelEntry | None:
    """The registry entry called ``name``, or None."""
    for entry in list_models():
        if entry.name == name:
            return entry
    return None


def _check_model_folder(folder: Path) -> None:
    if not folder.is_dir():
        raise ModelError(f"model folder not found: {folder}")
    missing = [name for name in (CONFIG_FILE, WEIGHTS_FILE) if not (folder / name).is_file()]
    if missing:
        raise ModelError(
            f"{folder} is not a model folder: it lacks {' and '.join(missing)} "
            f"(a model folder holds {CONFIG_FILE} and {WEIGHTS_FILE})"
        )


def _resolve_folder(folder: Path, *, name: str | None, source: str, expected_sha256: str | None) -> ResolvedModel:
    from msnewlesion.model.config import ModelConfig

    _check_model_folder(folder)
    config = ModelConfig.load(folder / CONFIG_FILE)
    measured = sha256_of_file(folder / WEIGHTS_FILE)
    if expected_sha256 is not None and measured != expected_sha256:
        raise ModelError(
            f"the weights of model {name!r} changed since it was registered: {folder / WEIGHTS_FILE} has sha256 "
            f"{measured}, the registry recorded {expected_sha256}; nothing was changed. If the new weights are "
            f"intended, run `msnewlesion models add {name} {folder} --replace`"
        )
    return ResolvedModel(
        path=folder, name=name or config.name, source=source, repo_id=None, revision=None, sha256=measured
    )


def _resolve_entry(
    entry: ModelEntry, *, offline: bool | None, force: bool, progress: ProgressCallback | None
) -> ResolvedModel:
    if entry.source == "hub":
        if not (entry.repo_id and entry.revision):
            raise ModelError(f"registry entry {entry.name!r} in {registry_path()} lacks its repository or revision")
        return download_model(
            entry.repo_id,
            entry.revision,
            sha256=entry.sha256,
            name=entry.name,
            offline=offline,
            force=force,
            progress=progress,
        )
    if entry.path is None or not entry.path.is_dir():
        raise ModelError(
            f"the folder of model {entry.name!r} is gone ({entry.path}); add it again with "
            f"`msnewlesion models add {entry.name} FOLDER --replace`, or remove it with "
            f"`msnewlesion models remove {entry.name}`"
        )
    return _resolve_folder(
        entry.path,
        name=entry.name,
        source=entry.source,
        expected_sha256=entry.sha256 if entry.source == "local" else None,
    )


def _looks_like_path(spec: str) -> bool:
    return spec.startswith((".", "~", os.sep)) or (os.altsep is not None and spec.startswith(os.altsep))


def local_model_problem(spec: str) -> str | None:
    """Why ``spec`` cannot name a model: a local-looking path that does not exist; None when it may be one.

    A path looks local when it starts with ``.``, ``~`` or ``/``, ends with ``config.json``, has more
    parts than ``owner/name``, or starts with a folder that exists here (``models/typo`` beside a
    ``models/`` folder). Such a spec fails at once instead of being tried on the Hub, which takes a
    while to answer that the repository does not exist; ``hf://owner/name`` still forces the Hub.

    Examples
    --------
    >>> local_model_problem("./no-such-model")
    'model folder ./no-such-model does not exist'
    >>> local_model_problem("someone/ms-model@v1") is None
    True
    """
    spec = str(spec).strip()
    if not spec or spec.startswith(HUB_PREFIX):
        return None
    folder = Path(spec).expanduser()
    if folder.exists():
        return None
    if _looks_like_path(spec) or folder.name == CONFIG_FILE:
        return f"model folder {spec} does not exist"
    if len(folder.parts) < 2:
        return None  # a registry name, or nothing this check can tell
    if parse_hub_spec(spec) is None:
        return f"model folder {spec} does not exist (and it is not a Hub repository owner/name[@revision])"
    if folder.parent.is_dir():
        return (
            f"model folder {spec} does not exist ({folder.parent} is a folder here); for a Hub repository of that "
            f"name write {HUB_PREFIX}{spec}"
        )
    return None


def _unknown_model_message(spec: str) -> str:
    names = [entry.name for entry in list_models()]
    known = f"registry names: {', '.join(names)}" if names else "the registry is empty"
    return (
        f"unknown model {spec!r}: not a registry name ({known}), not a model folder, and not a Hub repository "
        "(owner/name[@revision]); see `msnewlesion models list`, or pass a folder holding "
        f"{CONFIG_FILE} and {WEIGHTS_FILE}"
    )


def resolve_model(
    spec: str,
    *,
    offline: bool | None = None,
    progress: ProgressCallback | None = None,
    force: bool = False,
) -> ResolvedModel:
    """Turn what a user passed as ``--model`` into a model folder on this machine.

    ``spec`` is tried, in order, as a registry name, an existing folder, then a Hub repository
    ``owner/name[@revision]`` (``hf://owner/name`` forces the Hub). A folder that shares a registry
    name is reached with a path (``./demo``). Hub models are downloaded into the Hub cache if needed.

    Parameters
    ----------
    spec : str
        A registry name (``"demo"``), a model folder, or a Hub repository.
    offline : bool, optional
        Use only the Hub cache. None follows ``HF_HUB_OFFLINE``.
    progress : ProgressCallback, optional
        Download progress.
    force : bool
        Download Hub models again even when the cache has them.

    Returns
    -------
    ResolvedModel
        The folder, where it came from, the commit for Hub models and the measured SHA-256 of the weights.

    Raises
    ------
    ModelError
        Unknown name, not a model folder, a config this version cannot run, a checksum that does not match
        the registry, or a Hub model that neither the network nor the cache can provide.

    Examples
    --------
    >>> resolve_model("demo").path  # doctest: +SKIP
    PosixPath('.../msnewlesion/data/models/demo')
    >>> resolve_model("models/coactseg-official").source  # doctest: +SKIP
    'local'
    >>> resolve_model("someone/ms-model@v1").revision  # doctest: +SKIP
    '0b7c...'
    """
    spec = str(spec).strip()
    if not spec:
        raise ModelError("no model given: pass a registry name, a model folder or a Hub repository")
    if spec.startswith(HUB_PREFIX):
        hub = parse_hub_spec(spec)
        if hub is None:
            raise ModelError(f"not a Hub repository (hf://owner/name[@revision]): {spec!r}")
        return download_model(hub.repo_id, hub.revision, offline=offline, force=force, progress=progress)
    if _NAME.match(spec) and not _looks_like_path(spec):
        entry = find_model(spec)
        if entry is not None:
            return _resolve_entry(entry, offline=offline, force=force, progress=progress)
    folder = Path(spec).expanduser()
    if folder.is_dir():
        return _resolve_folder(folder.resolve(), name=None, source="local", expected_sha256=None)
    if folder.exists():
        raise ModelError(f"{folder} is a file: pass the model folder holding {CONFIG_FILE} and {WEIGHTS_FILE}")
    problem = local_model_problem(spec)
    if problem is not None:
        raise ModelError(problem)
    hub = parse_hub_spec(spec)
    if hub is not None and not _looks_like_path(spec):
        return download_model(hub.repo_id, hub.revision, offline=offline, force=force, progress=progress)
    raise ModelError(_unknown_model_message(spec))


def add_model(
    name: str,
    target: str,
    *,
    revision: str | None = None,
    sha256: str | None = None,
    replace: bool = False,
    offline: bool | None = None,
    progress: ProgressCallback | None = None,
) -> ModelEntry:
    """Register a local model folder or a Hub repository under ``name``.

    The model is checked before it is recorded: a folder is loaded; a Hub repository is downloaded
    (or found in the cache), loaded, and pinned to the commit hash it resolved to. The SHA-256 of the
    weights is recorded (and must equal ``sha256`` when given), so the name keeps meaning these weights.

    Parameters
    ----------
    name : str
        The new registry name (letters, digits, ``.``, ``_``, ``-``).
    target : str
        A model folder, or ``owner/name[@revision]`` on the Hub.
    revision : str, optional
        Branch, tag or commit of a Hub repository (instead of ``@revision``).
    sha256 : str, optional
        Expected SHA-256 of ``model.safetensors``.
    replace : bool
        Overwrite an existing entry of that name.
    offline : bool, optional
        Use only the Hub cache. None follows ``HF_HUB_OFFLINE``.
    progress : ProgressCallback, optional
        Download progress.

    Returns
    -------
    ModelEntry
        The entry as recorded.

    Examples
    --------
    >>> add_model("official", "models/coactseg-official")  # doctest: +SKIP
    >>> add_model("lab-v2", "our-lab/ms-newlesion", revision="v2")  # doctest: +SKIP
    """
    from msnewlesion.model.checkpoint import load_model

    if not _NAME.match(name):
        raise ModelError(
            f"invalid model name {name!r}: use up to 64 letters, digits, '.', '_' or '-', starting with a letter or "
            "digit (no '/', which marks Hub repositories)"
        )
    if any(entry.name == name for entry in _builtin_entries()):
        raise ModelError(f"{name!r} is a built-in model; choose another name")
    records = _read_user_records()
    if name in records and not replace:
        raise ModelError(
            f"model {name!r} is already in the registry ({registry_path()}); pass {parameter('replace', True)} "
            "to change it"
        )
    expected = normalize_sha256(sha256) if sha256 else None

    folder = Path(target).expanduser()
    hub = None if folder.is_dir() else parse_hub_spec(target)
    if folder.is_dir() and not target.startswith(HUB_PREFIX):
        if revision is not None:
            raise ModelError(f"{parameter('revision')} applies to Hub repositories, not to a local folder")
        folder = folder.resolve()
        resolved = _resolve_folder(folder, name=name, source="local", expected_sha256=expected)
        load_model(folder)
        record: dict[str, Any] = {"source": "local", "path": str(folder)}
    elif hub is not None:
        if revision is not None and hub.revision is not None and revision != hub.revision:
            raise ModelError(
                f"two revisions given: {hub.revision!r} in {target!r} and {parameter('revision')} {revision!r}"
            )
        resolved = download_model(
            hub.repo_id, revision or hub.revision, sha256=expected, name=name, offline=offline, progress=progress
        )
        load_model(resolved.path)
        record = {"source": "hub", "repo_id": hub.repo_id, "revision": resolved.revision}
    else:
        raise ModelError(
            f"{target!r} is neither a model folder (holding {CONFIG_FILE} and {WEIGHTS_FILE}) nor a Hub repository "
            "(owner/name[@revision])"
        )
    config = _read_config_json(resolved.path)
    record.update(
        sha256=resolved.sha256,
        description=str(config.get("description", "")),
        spacing=list(_spacing_of(config.get("spacing")) or []) or None,
        license=str(config.get("license", "")),
    )
    records[name] = record
    _write_user_records(records)
    return _entry_from_record(name, record)


def remove_model(name: str) -> ModelEntry:
    """Remove a user entry from the registry (the model's files are left where they are).

    Examples
    --------
    >>> remove_model("official").path  # doctest: +SKIP
    PosixPath('/data/models/coactseg-official')
    """
    records = _read_user_records()
    if name not in records:
        if any(entry.name == name for entry in _builtin_entries()):
            raise ModelError(f"{name!r} is a built-in model and cannot be removed")
        raise ModelError(f"no model {name!r} in the registry ({registry_path()}); see `msnewlesion models list`")
    entry = _entry_from_record(name, records.pop(name))
    _write_user_records(records)
    return entry
