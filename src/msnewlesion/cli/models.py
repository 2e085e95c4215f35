"""``msnewlesion models``: the model registry, the Hugging Face Hub, and the official-checkpoint converter."""

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import typer
from rich import box
from rich.markup import escape
from rich.table import Table

from msnewlesion.cli.common import Command, cli_errors, console, info, progress_bars

if TYPE_CHECKING:
    from msnewlesion.hub import ModelEntry

app = typer.Typer(
    help=(
        "Models: the registry (built-in models, your folders, pinned Hugging Face Hub repositories), "
        "downloads and uploads, and the official CoactSeg checkpoint converter.\n\n"
        "Anywhere a model is asked for (`--model`), a registry name, a model folder or a Hub repository "
        "`owner/name[@revision]` can be given."
    ),
    no_args_is_help=True,
    rich_markup_mode="markdown",
)

def _sha256_value(value: Optional[str]) -> Optional[str]:
    from msnewlesion.errors import ModelError
    from msnewlesion.hub.download import normalize_sha256

    try:
        return None if value is None else normalize_sha256(value)
    except ModelError as error:  # refused while parsing, before the model is fetched
        raise typer.BadParameter(str(error)) from None


# Terminals at least this wide get the registry as one table; narrower ones get one block per model.
WIDE_TABLE = 120
OFFLINE_HELP = "Use only the Hugging Face cache, never the network (HF_HUB_OFFLINE=1 does the same)."


def _short(value: Optional[str], length: int = 12) -> str:
    if not value:
        return "-"
    return value if len(value) <= length else value[:length] + "…"


def _print_json(payload: Any) -> None:
    typer.echo(json.dumps(payload, indent=2))


def _source_text(entry: "ModelEntry") -> str:
    downloaded = entry.path is not None and entry.path.is_dir()
    return entry.source if downloaded or entry.source != "hub" else "hub (not downloaded)"


def _spacing_text(entry: "ModelEntry") -> str:
    return "×".join(f"{s:g}" for s in entry.spacing) if entry.spacing else "-"


def _registry_table(entries: list["ModelEntry"]) -> Table:
    table = Table(box=box.SIMPLE_HEAD)
    for column in ("name", "source", "repository", "revision", "sha256", "spacing (mm)", "licence"):
        table.add_column(column, overflow="fold")
    table.add_column("description", overflow="fold", ratio=1)
    for entry in entries:
        table.add_row(
            escape(entry.name),
            _source_text(entry),
            escape(entry.repo_id or "-"),
            _short(entry.revision),
            _short(entry.sha256),
            _spacing_text(entry),
            escape(entry.license or "-"),
            escape(entry.description or "-"),
        )
    return table


def _registry_block(entry: "ModelEntry") -> Table:
    # Narrow terminals: one block per model, with revision and checksum in full.
    block = Table.grid(padding=(0, 2))
    block.add_column(style="bold")
    block.add_column(overflow="fold")
    block.add_row(escape(entry.name), _source_text(entry))
    for label, value in (
        ("repository", entry.repo_id),
        ("revision", entry.revision),
        ("sha256", entry.sha256),
        ("spacing", f"{_spacing_text(entry)} mm" if entry.spacing else None),
        ("licence", entry.license),
        ("description", entry.description),
    ):
        block.add_row(f"  {label}", escape(value or "-"))
    block.add_row("", "")
    return block


@app.command("list", cls=Command)
@cli_errors
def list_command(
    json_output: bool = typer.Option(
        False, "--json", help="Print the registry as JSON (full revisions and checksums)."
    ),
) -> None:
    """Show the model registry: built-in models and the ones you added.

    For each model: name, source (builtin, hub, local), Hub repository, pinned revision, sha256 of the
    weights, voxel spacing the model expects, licence and description. Wide terminals get one table
    (revision and sha256 shortened), narrow ones a block per model; `--json` gives everything in full.
    Nothing is downloaded; a Hub entry not yet in the cache says so.

    **Example**

        msnewlesion models list
        msnewlesion models list --json | jq -r '.[].name'
    """
    from msnewlesion.hub import list_models, registry_path

    entries = list_models()
    if json_output:
        _print_json([entry.to_dict() for entry in entries])
        return
    if not entries:
        info(
            "no models yet: add one with `msnewlesion models add NAME FOLDER_OR_REPO`, or pass --model with a "
            f"model folder or a Hub repository (your entries live in {registry_path()})"
        )
        return
    if console.width >= WIDE_TABLE:
        console.print(_registry_table(entries))
    else:
        for entry in entries:
            console.print(_registry_block(entry))
    info(f"your entries are kept in {registry_path()}")


@app.command("download", cls=Command)
@cli_errors
def download_command(
    model: str = typer.Argument(
        ...,
        metavar="NAME|REPO[@REV]",
        help="A registry name or a Hub repository owner/name[@revision] (a model folder is printed as it is).",
    ),
    force: bool = typer.Option(False, "--force", help="Download again even if the Hugging Face cache has the files."),
    offline: bool = typer.Option(False, "--offline", help=OFFLINE_HELP),
    json_output: bool = typer.Option(False, "--json", help="Print name, revision, sha256 and folder as JSON."),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="No progress bar."),
) -> None:
    """Fetch a model into the Hugging Face cache and print its local folder.

    Files go to the standard Hub cache (HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache/huggingface/hub),
    taken from one commit: a branch or tag is resolved and the commit hash is reported. A registry entry
    is downloaded at its pinned commit and its weights' sha256 is checked. Built-in models and folders
    need no download: their folder is printed.

    To use a model on a machine without internet, download it elsewhere into a folder of your choice and
    copy that folder's `models--OWNER--NAME` into the offline machine's cache.

    **Example**

        msnewlesion models download our-lab/ms-newlesion@v2
        HF_HUB_CACHE=/media/usb/hf msnewlesion models download our-lab/ms-newlesion
    """
    from msnewlesion.hub import resolve_model

    with progress_bars(enabled=not quiet) as progress:
        resolved = resolve_model(model, offline=offline or None, force=force, progress=progress)
    if json_output:
        _print_json(resolved.to_dict())
        return
    where = f"{resolved.repo_id} at commit {resolved.revision}" if resolved.repo_id else resolved.source
    info(f"{resolved.name}: {where}, weights sha256 {resolved.sha256}")
    typer.echo(str(resolved.path))


@app.command("add", cls=Command)
@cli_errors
def add_command(
    name: str = typer.Argument(
        ..., metavar="NAME", help="The name to give the model (letters, digits, '.', '_', '-')."
    ),
    target: str = typer.Argument(
        ..., metavar="FOLDER|REPO[@REV]", help="A model folder, or a Hub repository owner/name[@revision]."
    ),
    revision: Optional[str] = typer.Option(
        None, "--revision", help="Branch, tag or commit of the Hub repository (default: main)."
    ),
    sha256: Optional[str] = typer.Option(
        None,
        "--sha256",
        callback=_sha256_value,
        help="Expected sha256 of model.safetensors; the model is refused if it differs.",
    ),
    replace: bool = typer.Option(False, "--replace", help="Overwrite an entry of the same name."),
    offline: bool = typer.Option(False, "--offline", help=OFFLINE_HELP),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="No progress bar."),
) -> None:
    """Add a model folder or a Hub repository to your registry, under a name.

    The model is checked before it is recorded: a folder is loaded; a Hub repository is downloaded (or
    taken from the cache), loaded, and pinned to the commit hash its revision points to now. The sha256
    of the weights is recorded, and checked each time the name is used. Entries are kept in
    `models.json` in MSNEWLESION_HOME (default ~/.config/msnewlesion).

    **Example**

        msnewlesion models convert-coactseg vnet_best_model.pth -o ~/models/coactseg-official
        msnewlesion models add official ~/models/coactseg-official
        msnewlesion models add lab-v2 our-lab/ms-newlesion --revision v2
        msnewlesion predict base.nii.gz fu.nii.gz -o out/ --model lab-v2
    """
    from msnewlesion.hub import add_model, registry_path

    with progress_bars(enabled=not quiet) as progress:
        entry = add_model(
            name, target, revision=revision, sha256=sha256, replace=replace, offline=offline or None, progress=progress
        )
    where = f"{entry.repo_id} at commit {entry.revision}" if entry.source == "hub" else str(entry.path)
    info(f"added {entry.name}: {where}, weights sha256 {entry.sha256} (registry: {registry_path()})")


@app.command("remove", cls=Command)
@cli_errors
def remove_command(name: str = typer.Argument(..., metavar="NAME", help="A name you added with `models add`.")) -> None:
    """Remove one of your entries from the registry. The model's files are left where they are.

    **Example**

        msnewlesion models remove lab-v2
    """
    from msnewlesion.hub import remove_model

    entry = remove_model(name)
    kept = f" (the folder {entry.path} is kept)" if entry.source == "local" else ""
    info(f"removed {entry.name}{kept}")


@app.command("push", cls=Command)
@cli_errors
def push_command(
    model_dir: Path = typer.Argument(
        ..., metavar="MODEL_DIR", help="Model folder to publish (config.json + model.safetensors)."
    ),
    repo: str = typer.Argument(..., metavar="REPO", help="Hub repository owner/name; created if it does not exist."),
    branch: Optional[str] = typer.Option(
        None, "--branch", "--revision", help="Branch to commit to (created if needed); default main."
    ),
    private: bool = typer.Option(False, "--private", help="Create the repository as private."),
    token: Optional[str] = typer.Option(
        None, "--token", help="Hub token with write access (default: HF_TOKEN or the one saved by `hf auth login`)."
    ),
    message: Optional[str] = typer.Option(None, "--message", help="Commit message."),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Check the folder and print the model card, without uploading anything."
    ),
    json_output: bool = typer.Option(False, "--json", help="Print repository, branch, commit and sha256 as JSON."),
) -> None:
    """Publish a model folder on the Hugging Face Hub with a generated model card, and print the commit.

    The folder is loaded first (a model that does not load is never uploaded) and its config.json must
    declare a licence. Uploaded: config.json, model.safetensors, and a README.md model card with YAML
    front matter (licence, tags, library) saying what the model was trained on, the spacing it expects,
    that it is not a clinical model, and how to use it with msnewlesion.

    **Example**

        msnewlesion models push models/lab-v2 our-lab/ms-newlesion --dry-run
        msnewlesion models push models/lab-v2 our-lab/ms-newlesion --private
    """
    from msnewlesion.hub import prepare_push, push_model

    if dry_run:
        prepared = prepare_push(model_dir, repo)
        info(f"would upload {', '.join(prepared.files)} from {model_dir} to {prepared.repo_id}; the model card:")
        typer.echo(prepared.card)
        return
    result = push_model(model_dir, repo, branch=branch, private=private, token=token, commit_message=message)
    if json_output:
        _print_json(result.to_dict())
        return
    info(f"pushed {model_dir} to {result.repo_id} ({result.branch}): {result.commit_url}")
    info(
        f"pin it with: msnewlesion models add NAME {result.repo_id} --revision {result.commit} "
        f"--sha256 {result.weights_sha256}"
    )
    typer.echo(result.commit)


@app.command("convert-coactseg", cls=Command)
@cli_errors
def convert_coactseg(
    checkpoint: Path = typer.Argument(
        ..., help="The official CoactSeg state dict (vnet_best_model.pth from github.com/ycwu1997/CoactSeg)."
    ),
    output: Path = typer.Option(
        ..., "-o", "--output", help="Model folder to create (config.json + model.safetensors)."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace the output folder if it exists."),
) -> None:
    """Convert the official CoactSeg checkpoint into a model folder of this package.

    The file is read with torch.load(weights_only=True), so nothing in it can run code, and it is
    loaded strictly: every one of its 230 tensors must map onto the network and fill it. The
    folder records the official model's spacing (0.5×0.75×0.75 mm in x, y, z), patch size (80)
    and intensity normalisation, so predict feeds it the way it was trained.

    **Example**

        msnewlesion models convert-coactseg vnet_best_model.pth -o models/coactseg-official
    """
    from msnewlesion.io import check_output_location, check_outputs_free
    from msnewlesion.model.convert import convert_official_checkpoint

    # Before the checkpoint is read: the output must be a folder that can be written.
    check_output_location(output, kind="folder", what="model folder")
    check_outputs_free([output], inputs=[checkpoint], overwrite=overwrite)
    destination = convert_official_checkpoint(checkpoint, output, overwrite=overwrite)
    info(f"converted {checkpoint} → {destination} (use it with --model {destination})")
