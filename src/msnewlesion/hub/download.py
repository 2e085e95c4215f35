"""Fetching model folders from the Hugging Face Hub into its standard cache.

Everything goes through ``huggingface_hub``: files land in the Hub cache (``HF_HUB_CACHE``, else
``HF_HOME/hub``, else ``~/.cache/huggingface/hub``), the endpoint is ``HF_ENDPOINT``, and
``HF_HUB_OFFLINE=1`` makes every look-up local. Those variables are read by ``huggingface_hub``
when it is imported; this module reads its resolved settings (``huggingface_hub.constants``) at
each call.

Only ``config.json`` and ``model.safetensors`` are fetched, and the weights are read with
safetensors: nothing downloaded is ever unpickled.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from msnewlesion import __version__
from msnewlesion.errors import ModelError, parameter
from msnewlesion.progress import ProgressCallback
from msnewlesion.settings import CONFIG_FILE, WEIGHTS_FILE

__all__ = [
    "HubSpec",
    "ResolvedModel",
    "cached_model_folder",
    "download_model",
    "hub_cache_dir",
    "hub_endpoint",
    "is_offline",
    "parse_hub_spec",
    "sha256_of_file",
]

HUB_PREFIX = "hf://"
_COMMIT_HASH = re.compile(r"^[0-9a-f]{40}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
# owner/name as the Hub allows them; an optional @revision (branch, tag or commit).
_HUB_SPEC = re.compile(r"^(?P<repo_id>[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95})(?:@(?P<revision>[^\s@]+))?$")


@dataclass(frozen=True)
class ResolvedModel:
    """A model folder on this machine, ready for :func:`msnewlesion.model.checkpoint.load_model`.

    Parameters
    ----------
    path : Path
        The folder holding ``config.json`` and ``model.safetensors``.
    name : str
        The registry name, the Hub repository, or the model's own name for a plain folder.
    source : {"builtin", "hub", "local"}
        Where the model came from.
    repo_id, revision : str or None
        For Hub models, the repository and the commit hash the files were taken from.
    sha256 : str
        SHA-256 of ``model.safetensors``, measured on this machine.
    """

    path: Path
    name: str
    source: str
    repo_id: str | None
    revision: str | None
    sha256: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "source": self.source,
            "repo_id": self.repo_id,
            "revision": self.revision,
            "sha256": self.sha256,
            "path": str(self.path),
        }


@dataclass(frozen=True)
class HubSpec:
    """A Hub repository and an optional revision, parsed from ``owner/name[@revision]``."""

    repo_id: str
    revision: str | None = None

    def __str__(self) -> str:
        return self.repo_id if self.revision is None else f"{self.repo_id}@{self.revision}"


def parse_hub_spec(text: str) -> HubSpec | None:
    """Read ``owner/name``, ``owner/name@revision`` or ``hf://owner/name[@revision]``; None if it is neither.

    Examples
    --------
    >>> parse_hub_spec("msnewlesion/coactseg@v1")
    HubSpec(repo_id='msnewlesion/coactseg', revision='v1')
    >>> parse_hub_spec("demo") is None
    True
    """
    text = text.strip()
    if text.startswith(HUB_PREFIX):
        text = text[len(HUB_PREFIX) :]
    match = _HUB_SPEC.match(text)
    if match is None:
        return None
    repo_id = match["repo_id"]
    if "--" in repo_id or ".." in repo_id or repo_id.endswith((".git", ".")):
        return None
    return HubSpec(repo_id=repo_id, revision=match["revision"])


def normalize_sha256(value: str) -> str:
    """Lower-case a SHA-256 given by a user, refusing anything that is not 64 hex digits."""
    digest = value.strip().lower()
    if not _SHA256.match(digest):
        raise ModelError(f"not a SHA-256 checksum (64 hex digits): {value!r}")
    return digest


def sha256_of_file(path: str | os.PathLike[str], chunk_size: int = 1 << 20) -> str:
    """Hex SHA-256 of a file (symbolic links are followed, as the Hub cache uses them)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def hub_cache_dir() -> Path:
    """The Hub cache in use: ``HF_HUB_CACHE``, else ``HF_HOME/hub``, else ``~/.cache/huggingface/hub``."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE).expanduser()


def hub_endpoint() -> str:
    """The Hub address in use (``HF_ENDPOINT``, default ``https://huggingface.co``)."""
    from huggingface_hub import constants

    return constants.ENDPOINT


def is_offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` is set: then only the cache is used."""
    from huggingface_hub import constants

    return constants.is_offline_mode()


def _repo_cache_folder_name(repo_id: str) -> str:
    from huggingface_hub.file_download import repo_folder_name

    return repo_folder_name(repo_id=repo_id, repo_type="model")


def cached_model_folder(repo_id: str, revision: str) -> Path | None:
    """The cached snapshot folder holding both model files at ``revision``, without any network access.

    Returns None when either file is missing from the cache.
    """
    from huggingface_hub import try_to_load_from_cache

    folders = set()
    for filename in (CONFIG_FILE, WEIGHTS_FILE):
        found = try_to_load_from_cache(repo_id, filename, cache_dir=hub_cache_dir(), revision=revision)
        if not isinstance(found, str):
            return None
        folders.add(Path(found).parent)
    return folders.pop() if len(folders) == 1 else None


def _progress_relay(progress: ProgressCallback | None, stage: str) -> type:
    """A class ``huggingface_hub`` can use as ``tqdm_class``: it forwards kilobytes done and in all to ``progress``.

    It also keeps ``huggingface_hub``'s own bars off the terminal, where they would fight the CLI's.
    """

    class ProgressRelay:
        def __init__(self, *args: Any, total: int | None = None, initial: int = 0, **kwargs: Any) -> None:
            self.n = initial
            self.total = total

        def __enter__(self) -> ProgressRelay:
            return self

        def __exit__(self, *exc: object) -> None:
            self.close()

        def update(self, n: int | float | None = 1) -> None:
            self.n += int(n or 0)
            if progress is not None:
                total = max(int(self.total or 0), self.n)
                progress(stage, -(-self.n // 1024), -(-total // 1024))

        def set_postfix_str(self, *args: Any, **kwargs: Any) -> None:
            pass

        def set_description(self, *args: Any, **kwargs: Any) -> None:
            pass

        def refresh(self, *args: Any, **kwargs: Any) -> None:
            pass

        def close(self) -> None:
            pass

    return ProgressRelay


def _offline_instructions(spec: HubSpec, reason: str) -> str:
    cache = hub_cache_dir()
    folder = _repo_cache_folder_name(spec.repo_id)
    return (
        f"model {spec} is not in the Hugging Face cache ({cache}) and {reason}. "
        f"On a machine with internet, run `HF_HUB_CACHE=/tmp/msnewlesion-models msnewlesion models download {spec}`, "
        f"then copy the folder /tmp/msnewlesion-models/{folder} to {cache / folder} on this machine "
        "(or point HF_HUB_CACHE at the folder that holds the copy); "
        f"or give {parameter('model')} a local model folder (config.json + model.safetensors)"
    )


def _fetch(
    spec: HubSpec,
    filename: str,
    revision: str,
    *,
    offline: bool,
    force: bool,
    progress: ProgressCallback | None,
) -> Path:
    """One file from the Hub cache or the Hub, with every failure turned into a message saying what to do."""
    import httpx2
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        found = hf_hub_download(
            spec.repo_id,
            filename,
            revision=revision,
            cache_dir=hub_cache_dir(),
            endpoint=hub_endpoint(),
            local_files_only=offline,
            force_download=force,
            library_name="msnewlesion",
            library_version=__version__,
            tqdm_class=_progress_relay(progress, f"download {filename} (kB)"),
        )
    except LocalEntryNotFoundError as error:
        if offline or is_offline():
            reason = f"offline mode is on (HF_HUB_OFFLINE or {parameter('offline', True)})"
        else:
            cause = error.__cause__ or error
            reason = f"the Hub at {hub_endpoint()} could not be reached ({type(cause).__name__}: {cause})".replace(
                "\n", " "
            )
        raise ModelError(_offline_instructions(spec, reason)) from None
    except GatedRepoError:
        raise ModelError(
            f"Hub repository {spec.repo_id} is gated: accept its conditions on its web page, then log in with "
            "`hf auth login` (or set HF_TOKEN)"
        ) from None
    except RepositoryNotFoundError:
        raise ModelError(
            f"Hub repository {spec.repo_id} not found at {hub_endpoint()} (no local folder of that name either); "
            "check the spelling, or log in with `hf auth login` (or set HF_TOKEN) if it is private"
        ) from None
    except RevisionNotFoundError:
        raise ModelError(
            f"revision {revision!r} not found in Hub repository {spec.repo_id}: give a branch, tag or commit hash "
            "that exists there"
        ) from None
    except RemoteEntryNotFoundError:
        raise ModelError(
            f"Hub repository {spec.repo_id} (revision {revision}) has no {filename}: it is not an msnewlesion model "
            f"(a model repository holds {CONFIG_FILE} and {WEIGHTS_FILE})"
        ) from None
    except OfflineModeIsEnabled as error:
        raise ModelError(_offline_instructions(spec, f"offline mode is on ({error})")) from None
    except HfHubHTTPError as error:
        status = error.response.status_code if error.response is not None else "?"
        raise ModelError(f"the Hub refused to send {filename} of {spec} (HTTP {status}): {error}") from None
    except (httpx2.HTTPError, OSError) as error:
        raise ModelError(f"downloading {filename} of {spec} failed: {error}; run the command again") from None
    return Path(found)


def _commit_of(cached_file: Path, spec: HubSpec) -> str:
    # The Hub cache keeps every file under snapshots/<commit hash>/.
    commit = cached_file.parent.name
    if cached_file.parent.parent.name != "snapshots" or not _COMMIT_HASH.match(commit):
        raise ModelError(f"unexpected Hub cache layout for {spec}: {cached_file}")
    return commit


def download_model(
    repo_id: str,
    revision: str | None = None,
    *,
    sha256: str | None = None,
    name: str | None = None,
    offline: bool | None = None,
    force: bool = False,
    progress: ProgressCallback | None = None,
) -> ResolvedModel:
    """Fetch a model repository's ``config.json`` and ``model.safetensors`` into the Hub cache.

    The config is fetched first and checked against what this version can run, so a wrong repository
    fails before the weights are downloaded. Both files are taken from one commit: a branch or tag is
    resolved once and the commit hash is recorded in the result.

    Parameters
    ----------
    repo_id : str
        ``owner/name`` on the Hub.
    revision : str, optional
        Branch, tag or commit hash; ``main`` when not given.
    sha256 : str, optional
        Expected SHA-256 of ``model.safetensors``. A different file is an error (nothing is deleted).
    name : str, optional
        Name to report in the result (a registry name); defaults to ``repo_id``.
    offline : bool, optional
        Use only the cache. None follows ``HF_HUB_OFFLINE``.
    force : bool
        Download again even when the cache has the files.
    progress : ProgressCallback, optional
        Receives ``("download model.safetensors (kB)", kB done, kB in all)``.

    Returns
    -------
    ResolvedModel
        The cached snapshot folder and the commit it holds.

    Raises
    ------
    ModelError
        Unknown repository or revision, not a model repository, a config this version cannot run, a
        checksum mismatch, or neither the network nor the cache has the files (the message says what to do).

    Examples
    --------
    >>> model = download_model("msnewlesion/coactseg-demo", "main")  # doctest: +SKIP
    >>> model.revision  # doctest: +SKIP
    '3f2a...'
    """
    from msnewlesion.model.config import ModelConfig

    parsed = parse_hub_spec(repo_id)
    if parsed is None or parsed.repo_id != repo_id:
        raise ModelError(f"not a Hub repository name (owner/name): {repo_id!r}")
    spec = HubSpec(repo_id=repo_id, revision=revision)
    expected = normalize_sha256(sha256) if sha256 else None
    offline = is_offline() if offline is None else offline
    config_path = _fetch(spec, CONFIG_FILE, revision or "main", offline=offline, force=force, progress=progress)
    commit = _commit_of(config_path, spec)
    ModelConfig.load(config_path)
    weights_path = _fetch(spec, WEIGHTS_FILE, commit, offline=offline, force=force, progress=progress)
    measured = sha256_of_file(weights_path)
    if expected is not None and measured != expected:
        pinned = HubSpec(repo_id, commit)
        entry_name = name if name and name != repo_id else "NAME"
        raise ModelError(
            f"checksum mismatch for {WEIGHTS_FILE} of {pinned}: expected sha256 {expected}, the file has {measured} "
            f"({weights_path}); nothing was deleted. If the file is damaged, run "
            f"`msnewlesion models download {pinned} --force`; if the expected checksum is out of date, re-add the "
            f"entry with `msnewlesion models add {entry_name} {pinned} --replace`"
        )
    return ResolvedModel(
        path=config_path.parent,
        name=name or repo_id,
        source="hub",
        repo_id=repo_id,
        revision=commit,
        sha256=measured,
    )
