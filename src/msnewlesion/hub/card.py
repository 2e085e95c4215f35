"""The model card (``README.md``) written beside a model pushed to the Hub."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import yaml

if TYPE_CHECKING:
    from msnewlesion.model.config import ModelConfig

__all__ = ["CARD_TAGS", "build_model_card", "hub_license"]

CARD_TAGS = (
    "msnewlesion",
    "coactseg",
    "medical-imaging",
    "mri",
    "flair",
    "multiple-sclerosis",
    "lesion-segmentation",
    "longitudinal",
    "3d",
    "pytorch",
    "safetensors",
)

# Licence identifiers the Hub accepts in a model card, for the licences a model is likely to carry.
_HUB_LICENSES = {
    "apache-2.0",
    "mit",
    "bsd-2-clause",
    "bsd-3-clause",
    "cc0-1.0",
    "cc-by-4.0",
    "cc-by-sa-4.0",
    "cc-by-nc-4.0",
    "cc-by-nc-sa-4.0",
    "cc-by-nc-nd-4.0",
    "gpl-3.0",
    "lgpl-3.0",
    "agpl-3.0",
    "mpl-2.0",
    "unlicense",
    "openrail",
}

_CITATION = (
    "Wu Y, Wu Z, Shi H, Picker B, Chong W, Cai J. CoactSeg: Learning from Heterogeneous Data for New "
    "Multiple Sclerosis Lesion Segmentation. MICCAI 2023. Code: https://github.com/ycwu1997/CoactSeg"
)


def hub_license(text: str) -> tuple[str, str | None]:
    """The Hub licence identifier for a licence written in a config, and a ``license_name`` when it is "other".

    Examples
    --------
    >>> hub_license("MIT")
    ('mit', None)
    >>> hub_license("Apache 2.0")
    ('apache-2.0', None)
    >>> hub_license("Our lab licence v1")
    ('other', 'our-lab-licence-v1')
    """
    slug = re.sub(r"[^a-z0-9.]+", "-", text.strip().lower()).strip("-")
    if slug in _HUB_LICENSES:
        return slug, None
    return "other", slug or "unspecified"


def _spacing_text(spacing: tuple[float, float, float]) -> str:
    return " × ".join(f"{s:g}" for s in spacing) + " mm (x, y, z)"


def build_model_card(
    config: ModelConfig,
    *,
    repo_id: str,
    weights_sha256: str,
    parameter_count: int | None = None,
) -> str:
    """Write the ``README.md`` of a model repository: YAML front matter, what the model is, how to use it.

    Parameters
    ----------
    config : ModelConfig
        The model's configuration (name, description, training data, licence, spacing, ...).
    repo_id : str
        The Hub repository the card is for (used in the usage examples).
    weights_sha256 : str
        SHA-256 of ``model.safetensors``.
    parameter_count : int, optional
        Number of network parameters, shown when given.

    Returns
    -------
    str
        Markdown with YAML front matter (``license``, ``library_name``, ``tags``, ``pipeline_tag``).

    Examples
    --------
    >>> from msnewlesion.model import ModelConfig
    >>> card = build_model_card(ModelConfig(license="MIT"), repo_id="lab/model", weights_sha256="0" * 64)
    >>> card.splitlines()[0]
    '---'
    >>> "library_name: msnewlesion" in card
    True
    """
    license_id, license_name = hub_license(config.license)
    front_matter: dict[str, object] = {"license": license_id}
    if license_name is not None:
        front_matter["license_name"] = license_name
    front_matter.update({"library_name": "msnewlesion", "pipeline_tag": "image-segmentation", "tags": list(CARD_TAGS)})
    description = config.description.strip() or (
        "A CoactSeg network that finds new multiple sclerosis lesions in a pair of FLAIR MRI scans "
        "(baseline and follow-up) of the same patient."
    )
    training = config.training_data.strip() or "Not recorded in this model's config.json."
    network = f"CoactSeg, width {config.width} (levels {config.width}–{config.width * 16} channels), {config.norm} norm"
    if parameter_count is not None:
        network += f", {parameter_count:,} parameters"
    lines = [
        "---",
        yaml.safe_dump(front_matter, sort_keys=False, allow_unicode=True).rstrip(),
        "---",
        "",
        f"# {config.name}",
        "",
        description,
        "",
        f"> **Not a clinical model.** {config.clinical_use.strip() or 'Research use only.'} Its outputs have not "
        "been validated for diagnosis or treatment decisions; a qualified reader must check every result.",
        "",
        "## What it does",
        "",
        "Given the baseline and follow-up FLAIR scans of one patient, the network's three heads give the "
        "lesions at each time point and the lesions that are new at follow-up (the CoactSeg method). "
        "[msnewlesion](https://github.com/msnewlesion/msnewlesion) runs it, maps the masks back to each "
        "scan's own grid, and writes lesion tables and a picture to check.",
        "",
        "## Training data",
        "",
        training,
        "",
        "## What the model expects",
        "",
        "| | |",
        "|---|---|",
        f"| voxel spacing | {_spacing_text(config.spacing)} |",
        f"| orientation | {config.orientation}, arrays in {config.axis_order} order |",
        f"| patch size | {' × '.join(str(p) for p in config.patch_size)} voxels |",
        f"| intensity normalisation | `{config.intensity_normalization}` |",
        f"| threshold | {config.threshold:g} |",
        f"| network | {network} |",
        "",
        "msnewlesion resamples each scan to this spacing and back, and normalises intensities, by itself.",
        "",
        "## Files",
        "",
        "| file | holds |",
        "|---|---|",
        "| `config.json` | the architecture and how to feed the network |",
        f"| `model.safetensors` | the weights (safetensors; sha256 `{weights_sha256}`) |",
        "",
        "## How to use it",
        "",
        "```bash",
        "pip install msnewlesion",
        f"msnewlesion predict baseline.nii.gz followup.nii.gz -o results/ --model {repo_id}",
        "```",
        "",
        "To pin this exact version, register it under a name of your own with the commit shown on this "
        "repository's history; the checksum makes every later download verify the weights:",
        "",
        "```bash",
        f"msnewlesion models add my-model {repo_id} --revision COMMIT --sha256 {weights_sha256}",
        "msnewlesion predict baseline.nii.gz followup.nii.gz -o results/ --model my-model",
        "```",
        "",
        "For a machine without internet, `msnewlesion models download` it elsewhere and copy the Hugging Face "
        "cache folder over (see the msnewlesion documentation, docs/models.md).",
        "",
        "## Licence",
        "",
        f"{config.license.strip()}",
        "",
        "## Citation",
        "",
        _CITATION,
        "",
    ]
    return "\n".join(lines)
