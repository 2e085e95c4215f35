"""The model registry, Hub downloads and uploads, against a stand-in Hub on 127.0.0.1.

The real ``huggingface_hub`` client code runs in every test; only its endpoint, cache and token
location are pointed at temporary places. No test reaches beyond this machine: host-name look-ups
other than the loopback are refused.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import yaml
from huggingface_hub import constants
from safetensors.torch import load_file
from typer.testing import CliRunner

from hub_server import StandInHub
from msnewlesion.cli import app
from msnewlesion.cli.common import console
from msnewlesion.errors import ModelError
from msnewlesion.hub import (
    HubSpec,
    add_model,
    build_model_card,
    download_model,
    list_models,
    parse_hub_spec,
    push_model,
    registry_path,
    remove_model,
    resolve_model,
)
from msnewlesion.hub import registry as registry_module
from msnewlesion.hub.download import sha256_of_file
from msnewlesion.model import CoactSeg, ModelConfig
from msnewlesion.model.checkpoint import load_model, save_model
from msnewlesion.settings import DEFAULT_MODEL

REPO = "lab/tiny-coactseg"


@pytest.fixture(autouse=True)
def _loopback_only(monkeypatch: pytest.MonkeyPatch) -> None:
    real_getaddrinfo = socket.getaddrinfo

    def loopback_only(host, *args, **kwargs):
        if host not in ("127.0.0.1", "localhost", "::1", b"127.0.0.1"):
            raise socket.gaierror(f"tests must not reach {host!r}")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", loopback_only)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty msnewlesion config folder, Hub cache and token store; no built-in models."""
    monkeypatch.setenv("MSNEWLESION_HOME", str(tmp_path / "msnewlesion-home"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", True)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "hf-token"))
    for variable in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setattr(registry_module, "BUILTIN_MODELS_DIR", tmp_path / "no-builtins")
    return tmp_path


def _point_client_at(monkeypatch: pytest.MonkeyPatch, endpoint: str) -> None:
    # huggingface_hub reads HF_ENDPOINT at import time into these two constants.
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}")


@pytest.fixture
def hub(home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[StandInHub]:
    with StandInHub() as server:
        _point_client_at(monkeypatch, server.endpoint)
        yield server


def make_model(folder: Path, seed: int, **config_changes) -> Path:
    torch.manual_seed(seed)
    config = ModelConfig(
        name=f"tiny-{seed}",
        width=4,
        patch_size=(32, 32, 32),
        spacing=(0.5, 0.75, 0.75),
        license="MIT",
        description=f"unit-test model {seed}",
        training_data="random weights",
    ).replace(**config_changes)
    return save_model(CoactSeg(config), folder)


def model_files(folder: Path) -> dict[str, bytes]:
    return {name: (folder / name).read_bytes() for name in ("config.json", "model.safetensors")}


@pytest.fixture
def two_versions(tmp_path: Path, hub: StandInHub) -> dict[str, tuple[str, Path]]:
    """REPO with an old commit and a newer one on main, each with its own weights."""
    old = make_model(tmp_path / "old", seed=1)
    new = make_model(tmp_path / "new", seed=2)
    old_commit = hub.add_commit(REPO, model_files(old), message="v1")
    new_commit = hub.add_commit(REPO, model_files(new), message="v2")
    return {"old": (old_commit, old), "new": (new_commit, new)}


def weights_sha(folder: Path) -> str:
    return sha256_of_file(folder / "model.safetensors")


def weight_requests(hub: StandInHub) -> list:
    return [r for r in hub.requests if r.server == "cdn"]


# parsing --------------------------------------------------------------------------------------------------------------


def test_hub_specs_are_told_apart_from_names_and_paths() -> None:
    assert parse_hub_spec("lab/model") == HubSpec("lab/model", None)
    assert parse_hub_spec("lab/model@v2") == HubSpec("lab/model", "v2")
    assert parse_hub_spec("hf://lab/model@" + "a" * 40) == HubSpec("lab/model", "a" * 40)
    for not_a_repo in ("demo", "./lab/model", "/abs/path", "lab/model/extra", "a--b/c", "lab/..", ""):
        assert parse_hub_spec(not_a_repo) is None, not_a_repo
    with pytest.raises(ModelError, match="not a Hub repository name"):
        download_model("hf://lab/model")


# downloads ------------------------------------------------------------------------------------------------------------


def test_a_bare_repo_resolves_to_the_commit_downloaded_and_lands_in_the_hub_cache(
    two_versions: dict, hub: StandInHub, home: Path
) -> None:
    new_commit, new_folder = two_versions["new"]
    reports = []
    resolved = resolve_model(REPO, progress=lambda stage, done, total: reports.append((stage, done, total)))

    assert resolved.source == "hub"
    assert resolved.repo_id == REPO
    assert resolved.revision == new_commit
    assert resolved.sha256 == weights_sha(new_folder)
    assert resolved.path == home / "hf-cache" / "models--lab--tiny-coactseg" / "snapshots" / new_commit
    loaded = load_model(resolved.path)
    expected = load_file(str(new_folder / "model.safetensors"))
    assert all(torch.equal(loaded.network.state_dict()[k], v) for k, v in expected.items())
    kilobytes = -(-(new_folder / "model.safetensors").stat().st_size // 1024)
    assert reports[-1] == ("download model.safetensors (kB)", kilobytes, kilobytes)
    # the weights came through the CDN redirect
    assert [r.method for r in weight_requests(hub)] == ["GET"]

    again = resolve_model(REPO)
    assert again == resolved
    assert len(weight_requests(hub)) == 1, "a cached model must not be downloaded again"


def test_a_revision_pins_the_model_even_when_main_moves(two_versions: dict, hub: StandInHub) -> None:
    old_commit, old_folder = two_versions["old"]
    new_commit, new_folder = two_versions["new"]

    assert resolve_model(f"{REPO}@{old_commit}").sha256 == weights_sha(old_folder)
    assert resolve_model(f"{REPO}@{old_commit[:10]}").revision == old_commit

    entry = add_model("lab-v1", REPO, revision=old_commit)
    assert (entry.source, entry.repo_id, entry.revision) == ("hub", REPO, old_commit)
    assert entry.sha256 == weights_sha(old_folder)
    pinned = resolve_model("lab-v1")
    assert (pinned.name, pinned.revision, pinned.sha256) == ("lab-v1", old_commit, weights_sha(old_folder))

    # a branch given to `add` is pinned to the commit it points to now
    hub.repos[REPO].branches["stable"] = new_commit
    assert add_model("lab-stable", f"{REPO}@stable").revision == new_commit
    hub.add_commit(REPO, model_files(old_folder), branch="stable", message="rollback")
    assert resolve_model("lab-stable").sha256 == weights_sha(new_folder)


def test_a_checksum_mismatch_is_an_error_that_deletes_nothing(two_versions: dict, hub: StandInHub) -> None:
    new_commit, new_folder = two_versions["new"]
    wrong = "0" * 64
    with pytest.raises(ModelError) as error:
        add_model("tampered", REPO, sha256=wrong)
    message = str(error.value)
    assert "checksum mismatch" in message
    assert wrong in message and weights_sha(new_folder) in message
    assert "nothing was deleted" in message
    assert not registry_path().exists(), "a model that failed its check must not be registered"

    cached = resolve_model(f"{REPO}@{new_commit}").path / "model.safetensors"
    assert cached.is_file() and sha256_of_file(cached) == weights_sha(new_folder)

    # a registry entry whose recorded checksum no longer matches the download
    add_model("lab", REPO)
    records = json.loads(registry_path().read_text())
    records["models"]["lab"]["sha256"] = wrong
    registry_path().write_text(json.dumps(records))
    with pytest.raises(ModelError, match=f"checksum mismatch.*models add lab {REPO}@{new_commit} --replace"):
        resolve_model("lab")
    assert cached.is_file()


def test_offline_use_of_a_downloaded_model_needs_no_network(
    two_versions: dict, hub: StandInHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    old_commit, old_folder = two_versions["old"]
    online = resolve_model(REPO)
    add_model("lab-v1", REPO, revision=old_commit)
    seen = len(hub.requests)

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert resolve_model(REPO) == online
    assert resolve_model("lab-v1").sha256 == weights_sha(old_folder)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    assert resolve_model(REPO, offline=True) == online
    assert len(hub.requests) == seen, "offline resolution must not send a single request"


def test_a_cache_copied_from_another_machine_works_offline(home: Path, tmp_path: Path) -> None:
    # The Hub cache layout, as copied with `cp -rL` (plain files, no symbolic links).
    folder = make_model(tmp_path / "model", seed=3)
    commit = "c0ffee" + "0" * 34
    repo_cache = home / "hf-cache" / "models--lab--copied"
    (repo_cache / "refs").mkdir(parents=True)
    (repo_cache / "refs" / "main").write_text(commit)
    shutil.copytree(folder, repo_cache / "snapshots" / commit)

    resolved = resolve_model("lab/copied", offline=True)
    assert (resolved.revision, resolved.sha256) == (commit, weights_sha(folder))
    assert resolve_model(f"lab/copied@{commit}", offline=True).path == repo_cache / "snapshots" / commit


def test_offline_without_the_model_in_the_cache_says_exactly_what_to_do(home: Path) -> None:
    with pytest.raises(ModelError) as error:
        resolve_model("lab/missing@v3", offline=True)
    message = str(error.value)
    cache = home / "hf-cache"
    assert "offline mode is on" in message
    assert "msnewlesion models download lab/missing@v3" in message
    assert "/tmp/msnewlesion-models/models--lab--missing" in message
    assert str(cache / "models--lab--missing") in message
    assert "give `model` a local model folder" in message  # the parameter; the command line says --model
    assert "\n" not in message


def test_a_server_that_is_not_the_hub_and_an_empty_cache_give_the_same_instructions(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What a captive portal or a misconfigured proxy looks like: answers without the Hub's headers.
    with StandInHub() as portal:
        portal.resolve = lambda *args: (200, {}, b"<html>log in first</html>")
        _point_client_at(monkeypatch, portal.endpoint)
        with pytest.raises(ModelError) as error:
            resolve_model("lab/model")
    message = str(error.value)
    assert f"the Hub at {portal.endpoint} could not be reached" in message
    assert "msnewlesion models download lab/model" in message
    assert "models--lab--model" in message


def test_unknown_repository_revision_or_file_are_named(two_versions: dict, hub: StandInHub) -> None:
    with pytest.raises(ModelError, match="Hub repository lab/absent not found"):
        resolve_model("lab/absent")
    with pytest.raises(ModelError, match="revision 'nope' not found in Hub repository lab/tiny-coactseg"):
        resolve_model(f"{REPO}@nope")
    hub.add_commit("lab/readme-only", {"README.md": b"# hello\n"})
    with pytest.raises(ModelError, match=r"has no config\.json: it is not an msnewlesion model"):
        resolve_model("lab/readme-only")


def test_a_config_this_version_cannot_run_stops_before_the_weights_are_downloaded(
    tmp_path: Path, hub: StandInHub
) -> None:
    files = model_files(make_model(tmp_path / "model", seed=4))
    config = json.loads(files["config.json"])
    config["format_version"] = 99
    files["config.json"] = json.dumps(config).encode()
    hub.add_commit("lab/future", files)
    with pytest.raises(ModelError, match="newer than this msnewlesion understands"):
        resolve_model("lab/future")
    assert weight_requests(hub) == []


# the registry ---------------------------------------------------------------------------------------------------------


def test_unknown_name_lists_what_exists_and_touches_no_network(hub: StandInHub, tmp_path: Path) -> None:
    add_model("mine", str(make_model(tmp_path / "mine", seed=5)))
    with pytest.raises(ModelError) as error:
        resolve_model("nosuchmodel")
    message = str(error.value)
    assert "unknown model 'nosuchmodel'" in message
    assert "registry names: mine" in message
    assert "owner/name[@revision]" in message and "msnewlesion models list" in message
    assert hub.requests == []


def test_a_local_folder_is_accepted_wherever_a_name_is(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, runner: CliRunner
) -> None:
    folder = make_model(tmp_path / "models" / "converted", seed=6)
    expected_sha = weights_sha(folder)

    by_path = resolve_model(str(folder))
    assert (by_path.source, by_path.path, by_path.sha256, by_path.name) == ("local", folder, expected_sha, "tiny-6")
    monkeypatch.chdir(tmp_path)
    assert resolve_model("models/converted").path == folder
    assert resolve_model("./models/converted").path == folder

    entry = add_model("converted", "models/converted")
    assert (entry.source, entry.path, entry.sha256) == ("local", folder, expected_sha)
    assert resolve_model("converted").path == folder

    result = runner.invoke(app, ["models", "download", str(folder)])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().splitlines()[-1] == str(folder)


def test_a_registered_folder_whose_weights_changed_is_refused(home: Path, tmp_path: Path) -> None:
    folder = make_model(tmp_path / "mine", seed=7)
    add_model("mine", str(folder))
    replacement = make_model(tmp_path / "other", seed=8)
    shutil.copy(replacement / "model.safetensors", folder / "model.safetensors")
    with pytest.raises(ModelError, match="changed since it was registered"):
        resolve_model("mine")
    assert weights_sha(folder) == weights_sha(replacement), "the user's file must be left as it is"
    assert add_model("mine", str(folder), replace=True).sha256 == weights_sha(replacement)
    assert resolve_model("mine").sha256 == weights_sha(replacement)


def test_registry_entries_are_checked_stored_and_removed(home: Path, tmp_path: Path) -> None:
    folder = make_model(tmp_path / "mine", seed=9)
    with pytest.raises(ModelError, match="invalid model name"):
        add_model("lab/model", str(folder))
    with pytest.raises(ModelError, match=r"lacks model\.safetensors"):
        incomplete = tmp_path / "incomplete"
        incomplete.mkdir()
        shutil.copy(folder / "config.json", incomplete / "config.json")
        add_model("broken", str(incomplete))
    with pytest.raises(ModelError, match="`revision` applies to Hub repositories"):
        add_model("mine", str(folder), revision="main")
    with pytest.raises(ModelError, match="neither a model folder"):
        add_model("mine", "no such thing")

    add_model("mine", str(folder))
    stored = json.loads((home / "msnewlesion-home" / "models.json").read_text())
    assert stored["models"]["mine"] == {
        "source": "local",
        "path": str(folder),
        "sha256": weights_sha(folder),
        "description": "unit-test model 9",
        "spacing": [0.5, 0.75, 0.75],
        "license": "MIT",
    }
    with pytest.raises(ModelError, match="already in the registry"):
        add_model("mine", str(folder))
    [entry] = list_models()
    assert (entry.name, entry.spacing, entry.license, entry.description) == (
        "mine",
        (0.5, 0.75, 0.75),
        "MIT",
        "unit-test model 9",
    )
    assert remove_model("mine").path == folder
    assert list_models() == []
    assert folder.is_dir(), "removing an entry must keep the model's files"
    with pytest.raises(ModelError, match="no model 'mine' in the registry"):
        remove_model("mine")

    registry_path().write_text("{not json")
    with pytest.raises(ModelError, match="unreadable"):
        list_models()


def test_built_in_models_are_discovered_from_their_folders_only(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    builtins = tmp_path / "package-models"
    make_model(builtins / "demo", seed=10)
    (builtins / "empty").mkdir()
    make_model(builtins / "half", seed=11)
    (builtins / "half" / "model.safetensors").unlink()
    monkeypatch.setattr(registry_module, "BUILTIN_MODELS_DIR", builtins)

    [demo] = list_models()
    assert (demo.name, demo.source, demo.repo_id, demo.revision) == ("demo", "builtin", None, None)
    assert demo.sha256 == weights_sha(builtins / "demo")
    assert demo.path == builtins / "demo"
    resolved = resolve_model(DEFAULT_MODEL)
    assert (resolved.source, resolved.path) == ("builtin", builtins / "demo")
    with pytest.raises(ModelError, match="is a built-in model"):
        add_model("demo", str(builtins / "demo"))
    with pytest.raises(ModelError, match="cannot be removed"):
        remove_model("demo")
    # a registry name wins over a folder of the same name; a path reaches the folder
    monkeypatch.chdir(tmp_path)
    make_model(tmp_path / "demo", seed=12)
    assert resolve_model("demo").source == "builtin"
    assert resolve_model("./demo").path == tmp_path / "demo"


def test_the_package_lists_only_built_in_models_that_exist(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MSNEWLESION_HOME", str(tmp_path))
    entries = list_models()
    for entry in entries:
        assert entry.source == "builtin"
        assert entry.repo_id is None and entry.revision is None
        assert entry.sha256 == weights_sha(entry.path)
    demo_weights = registry_module.BUILTIN_MODELS_DIR / DEFAULT_MODEL / "model.safetensors"
    assert (DEFAULT_MODEL in [e.name for e in entries]) == demo_weights.is_file()


# pushing --------------------------------------------------------------------------------------------------------------


def test_push_uploads_the_folder_and_a_model_card_and_the_result_downloads_back(
    hub: StandInHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = make_model(tmp_path / "model", seed=13)
    result = push_model(folder, "lab/published", token=hub.token, private=True)

    uploaded = hub.files_at("lab/published")
    assert uploaded["config.json"] == (folder / "config.json").read_bytes()
    assert uploaded["model.safetensors"] == (folder / "model.safetensors").read_bytes()
    assert hub.repos["lab/published"].private
    assert result.commit == hub.repos["lab/published"].branches["main"]
    assert result.weights_sha256 == weights_sha(folder)

    card = uploaded["README.md"].decode()
    front = yaml.safe_load(card.split("---\n")[1])
    assert front["license"] == "mit"
    assert front["library_name"] == "msnewlesion"
    assert {"multiple-sclerosis", "mri", "lesion-segmentation"} <= set(front["tags"])
    for fact in (
        "Not a clinical model",
        "random weights",
        "0.5 × 0.75 × 0.75 mm (x, y, z)",
        "msnewlesion predict baseline.nii.gz followup.nii.gz -o results/ --model lab/published",
        weights_sha(folder),
    ):
        assert fact in card, fact

    with pytest.raises(ModelError, match="if it is private"):
        resolve_model(f"lab/published@{result.commit}")
    monkeypatch.setenv("HF_TOKEN", hub.token)
    downloaded = resolve_model(f"lab/published@{result.commit}")
    assert downloaded.sha256 == weights_sha(folder)
    assert load_model(downloaded.path).config == load_model(folder).config

    branch = push_model(folder, "lab/published", token=hub.token, branch="dev")
    assert branch.branch == "dev" and "dev" in hub.repos["lab/published"].branches


def test_push_refuses_a_folder_that_does_not_load_or_lacks_a_licence_before_any_request(
    hub: StandInHub, tmp_path: Path
) -> None:
    folder = make_model(tmp_path / "model", seed=14)
    other = make_model(tmp_path / "wider", seed=15, width=8)
    shutil.copy(other / "model.safetensors", folder / "model.safetensors")
    with pytest.raises(ModelError, match="do not belong together"):
        push_model(folder, "lab/broken", token=hub.token)
    unlicensed = make_model(tmp_path / "unlicensed", seed=16, license="")
    with pytest.raises(ModelError, match="declares no licence"):
        push_model(unlicensed, "lab/unlicensed", token=hub.token)
    with pytest.raises(ModelError, match="owner/name"):
        push_model(unlicensed, "lab/model@v1", token=hub.token)
    assert hub.requests == []


def test_push_without_a_valid_token_says_how_to_get_one(hub: StandInHub, tmp_path: Path) -> None:
    folder = make_model(tmp_path / "model", seed=17)
    with pytest.raises(ModelError, match="no Hugging Face token: pass `token`, set HF_TOKEN"):
        push_model(folder, "lab/model")
    with pytest.raises(ModelError, match="HTTP 401"):
        push_model(folder, "lab/model", token="hf_wrong")
    assert "lab/model" not in hub.repos


def test_model_card_licences_map_to_hub_identifiers(tiny_config: ModelConfig) -> None:
    card = build_model_card(tiny_config.replace(license="Lab licence 1.0"), repo_id="a/b", weights_sha256="f" * 64)
    front = yaml.safe_load(card.split("---\n")[1])
    assert (front["license"], front["license_name"]) == ("other", "lab-licence-1.0")
    card = build_model_card(tiny_config.replace(license="CC BY-NC 4.0"), repo_id="a/b", weights_sha256="f" * 64)
    assert yaml.safe_load(card.split("---\n")[1])["license"] == "cc-by-nc-4.0"


# the command line -----------------------------------------------------------------------------------------------------


def test_cli_add_list_download_and_push(
    two_versions: dict, hub: StandInHub, runner: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    old_commit, old_folder = two_versions["old"]
    result = runner.invoke(app, ["models", "add", "lab-v1", REPO, "--revision", old_commit, "-q"])
    assert result.exit_code == 0, result.output

    listed = runner.invoke(app, ["models", "list", "--json"])
    assert listed.exit_code == 0, listed.output
    [entry] = json.loads(listed.stdout)
    assert entry["name"] == "lab-v1" and entry["revision"] == old_commit
    assert entry["sha256"] == weights_sha(old_folder) and entry["spacing"] == [0.5, 0.75, 0.75]
    monkeypatch.setattr(console, "width", 200)
    table = runner.invoke(app, ["models", "list"])
    assert table.exit_code == 0
    for text in ("lab-v1", REPO, old_commit[:12], weights_sha(old_folder)[:12], "0.5×0.75×0.75", "MIT"):
        assert text in table.stdout, text
    monkeypatch.setattr(console, "width", 80)
    narrow = runner.invoke(app, ["models", "list"])
    for text in (old_commit, weights_sha(old_folder), "0.5×0.75×0.75 mm", "unit-test model 1"):
        assert text in narrow.stdout, text

    downloaded = runner.invoke(app, ["models", "download", "lab-v1", "-q"])
    assert downloaded.exit_code == 0, downloaded.output
    assert downloaded.stdout.strip().endswith(old_commit)

    unknown = runner.invoke(app, ["models", "download", "nosuchmodel"])
    assert unknown.exit_code == 1
    assert "unknown model 'nosuchmodel'" in unknown.output and "Traceback" not in unknown.output

    dry = runner.invoke(app, ["models", "push", str(old_folder), "lab/new", "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert dry.stdout.startswith("---\nlicense: mit\n")
    assert "lab/new" not in hub.repos

    pushed = runner.invoke(app, ["models", "push", str(old_folder), "lab/new", "--token", hub.token])
    assert pushed.exit_code == 0, pushed.output
    assert pushed.stdout.strip() == hub.repos["lab/new"].branches["main"]

    removed = runner.invoke(app, ["models", "remove", "lab-v1"])
    assert removed.exit_code == 0
    assert json.loads(runner.invoke(app, ["models", "list", "--json"]).stdout) == []


@pytest.mark.slow
def test_cli_honours_hf_environment_variables_in_a_fresh_process(home: Path, tmp_path: Path) -> None:
    folder = make_model(tmp_path / "model", seed=18)
    environment = {
        key: value for key, value in os.environ.items() if not key.startswith(("HF_", "HUGGING", "MSNEWLESION"))
    }
    environment.update(
        HF_ENDPOINT="http://127.0.0.1:9",  # the discard port: nothing answers there
        HF_HOME=str(tmp_path / "hf-home"),
        HF_HUB_DISABLE_TELEMETRY="1",
        MSNEWLESION_HOME=str(tmp_path / "home"),
    )

    def msnewlesion(*args: str, **extra: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "msnewlesion", "models", *args],
            env={**environment, **extra},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    with StandInHub() as server:
        commit = server.add_commit(REPO, model_files(folder))
        online = msnewlesion("download", REPO, "--json", HF_ENDPOINT=server.endpoint)
    assert online.returncode == 0, online.stderr
    downloaded = json.loads(online.stdout)
    assert downloaded["revision"] == commit
    assert downloaded["path"] == str(tmp_path / "hf-home" / "hub" / "models--lab--tiny-coactseg" / "snapshots" / commit)

    # the stand-in is gone: offline mode serves the cache, and names what is missing
    offline = msnewlesion("download", REPO, HF_HUB_OFFLINE="1")
    assert offline.returncode == 0, offline.stderr
    assert offline.stdout.strip() == downloaded["path"]
    missing = msnewlesion("download", "lab/other", HF_HUB_OFFLINE="1")
    assert missing.returncode == 1
    assert "msnewlesion models download lab/other" in missing.stderr
    assert "Traceback" not in missing.stderr
