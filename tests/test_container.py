"""The container files name the package's version, so that an image built without build arguments says the truth.

Building and running the image needs root, buildah and the network: container/test.sh does it by hand
(docs/containers.md).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

import msnewlesion

ROOT = Path(__file__).resolve().parents[1]


def test_dockerfile_labels_the_package_version_by_default() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    match = re.search(r"^ARG VERSION=(\S+)$", dockerfile, re.MULTILINE)
    assert match, "the Dockerfile must give ARG VERSION a default"
    assert match.group(1) == msnewlesion.__version__
    assert 'ENTRYPOINT ["msnewlesion"]' in dockerfile


def test_apptainer_definition_reads_the_archive_of_this_version() -> None:
    definition = (ROOT / "container" / "msnewlesion.def").read_text()
    match = re.search(r"^\s*ARCHIVE=(\S+)$", definition, re.MULTILINE)
    assert match, "the definition must give ARCHIVE a default"
    assert match.group(1) == f"msnewlesion-{msnewlesion.__version__}.oci.tar"


def test_build_context_holds_what_the_package_build_reads() -> None:
    # .dockerignore lets through only what it names: pyproject.toml's readme must be among them.
    allowed = {line[1:] for line in (ROOT / ".dockerignore").read_text().splitlines() if line.startswith("!")}
    assert {"pyproject.toml", "README.md", "src"} <= allowed


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash is needed to parse the script")
def test_container_test_script_parses() -> None:
    completed = subprocess.run(
        ["bash", "-n", str(ROOT / "container" / "test.sh")], capture_output=True, text=True, check=False
    )
    assert completed.returncode == 0, completed.stderr
