"""Publishing a model folder to the Hugging Face Hub, with a generated model card."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from msnewlesion import __version__
from msnewlesion.errors import ModelError, parameter
from msnewlesion.hub.card import build_model_card
from msnewlesion.hub.download import hub_endpoint, is_offline, parse_hub_spec
from msnewlesion.settings import CONFIG_FILE, WEIGHTS_FILE

__all__ = ["CARD_FILE", "PreparedPush", "PushResult", "prepare_push", "push_model"]

CARD_FILE = "README.md"


@dataclass(frozen=True)
class PreparedPush:
    """What a push would upload: the checked model folder and its model card."""

    model_dir: Path
    repo_id: str
    weights_sha256: str
    card: str

    @property
    def files(self) -> tuple[str, ...]:
        return (CONFIG_FILE, WEIGHTS_FILE, CARD_FILE)


@dataclass(frozen=True)
class PushResult:
    """The commit a push made."""

    repo_id: str
    branch: str
    commit: str
    commit_url: str
    weights_sha256: str

    def to_dict(self) -> dict[str, str]:
        return {
            "repo_id": self.repo_id,
            "branch": self.branch,
            "commit": self.commit,
            "commit_url": self.commit_url,
            "sha256": self.weights_sha256,
        }


def _check_repo_id(repo_id: str) -> str:
    spec = parse_hub_spec(repo_id)
    if spec is None or spec.revision is not None:
        raise ModelError(
            f"not a Hub repository name: {repo_id!r} (use owner/name; choose the branch with "
            f"{parameter('branch')}, not @)"
        )
    return spec.repo_id


def prepare_push(model_dir: str | Path, repo_id: str) -> PreparedPush:
    """Check a model folder (it must load strictly and declare a licence) and write its model card.

    Examples
    --------
    >>> prepared = prepare_push("models/lab-v2", "our-lab/ms-newlesion")  # doctest: +SKIP
    >>> print(prepared.card)  # doctest: +SKIP
    """
    from msnewlesion.model.checkpoint import load_model

    repo_id = _check_repo_id(repo_id)
    model_dir = Path(model_dir)
    model = load_model(model_dir)
    if not model.config.license.strip():
        raise ModelError(
            f'{model_dir / CONFIG_FILE} declares no licence: set its "license" field (for example "MIT" or '
            '"CC-BY-4.0") before publishing the model'
        )
    parameters = sum(p.numel() for p in model.network.parameters())
    card = build_model_card(
        model.config, repo_id=repo_id, weights_sha256=model.weights_sha256, parameter_count=parameters
    )
    return PreparedPush(model_dir=model_dir, repo_id=repo_id, weights_sha256=model.weights_sha256, card=card)


def push_model(
    model_dir: str | Path,
    repo_id: str,
    *,
    branch: str | None = None,
    private: bool = False,
    token: str | None = None,
    commit_message: str | None = None,
) -> PushResult:
    """Upload ``config.json``, ``model.safetensors`` and a generated ``README.md`` to a Hub repository.

    The folder is loaded first (a model that does not load is never uploaded). The repository is
    created if it does not exist, and so is the branch.

    Parameters
    ----------
    model_dir : path-like
        A model folder of this package.
    repo_id : str
        ``owner/name`` on the Hub.
    branch : str, optional
        Branch to commit to; ``main`` when not given.
    private : bool
        Create the repository as private (ignored when it exists).
    token : str, optional
        A Hub token with write access; defaults to ``HF_TOKEN`` or the one saved by ``hf auth login``.
    commit_message : str, optional
        Defaults to "Upload <model name> with msnewlesion <version>".

    Returns
    -------
    PushResult
        The commit hash and its address.

    Examples
    --------
    >>> result = push_model("models/lab-v2", "our-lab/ms-newlesion")  # doctest: +SKIP
    >>> result.commit  # doctest: +SKIP
    '5d1e...'
    """
    import httpx2
    from huggingface_hub import CommitOperationAdd, HfApi, get_token
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

    prepared = prepare_push(model_dir, repo_id)
    if is_offline():
        raise ModelError("offline mode is on (HF_HUB_OFFLINE): unset it to push a model to the Hub")
    token = token or get_token()
    if not token:
        raise ModelError(
            f"no Hugging Face token: pass {parameter('token')}, set HF_TOKEN, or run hf auth login (the token "
            "needs write access)"
        )
    branch = branch or "main"
    api = HfApi(endpoint=hub_endpoint(), token=token, library_name="msnewlesion", library_version=__version__)
    folder = prepared.model_dir
    operations = [
        CommitOperationAdd(path_in_repo=CONFIG_FILE, path_or_fileobj=str(folder / CONFIG_FILE)),
        CommitOperationAdd(path_in_repo=WEIGHTS_FILE, path_or_fileobj=str(folder / WEIGHTS_FILE)),
        CommitOperationAdd(path_in_repo=CARD_FILE, path_or_fileobj=prepared.card.encode("utf-8")),
    ]
    message = commit_message or f"Upload {folder.name} with msnewlesion {__version__}"
    try:
        api.create_repo(prepared.repo_id, private=True if private else None, exist_ok=True)
        if branch != "main":
            api.create_branch(prepared.repo_id, branch=branch, exist_ok=True)
        info = api.create_commit(prepared.repo_id, operations, commit_message=message, revision=branch)
    except RepositoryNotFoundError:
        raise ModelError(
            f"cannot write to Hub repository {prepared.repo_id}: it does not exist and could not be created, or the "
            "token has no write access to it"
        ) from None
    except HfHubHTTPError as error:
        status = error.response.status_code if error.response is not None else "?"
        hint = " (check that the token has write access)" if status in (401, 403) else ""
        raise ModelError(f"the Hub refused the upload to {prepared.repo_id} (HTTP {status}){hint}: {error}") from None
    except (httpx2.HTTPError, OSError) as error:
        raise ModelError(f"uploading to {prepared.repo_id} at {hub_endpoint()} failed: {error}") from None
    return PushResult(
        repo_id=prepared.repo_id,
        branch=branch,
        commit=info.oid,
        commit_url=info.commit_url,
        weights_sha256=prepared.weights_sha256,
    )
