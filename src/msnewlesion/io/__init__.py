"""Reading and writing: NIfTI with its geometry, atomic writes, and output folders checked and held.

- :mod:`msnewlesion.io.nifti`: :class:`Volume` (an array and its affine), reading and writing NIfTI.
- :mod:`msnewlesion.io.atomic`: every write atomic; a result of several files staged and moved into
  place with its manifest last; a shared file created exclusively and updated under a lock.
- :mod:`msnewlesion.io.outputs`: outputs checked before any work; one run per output folder.
"""

from msnewlesion.io.atomic import (
    NIFTI_SUFFIXES as NIFTI_SUFFIXES,
)
from msnewlesion.io.atomic import (
    STAGING_PREFIX as STAGING_PREFIX,
)
from msnewlesion.io.atomic import (
    atomic_directory,
    atomic_path,
    create_exclusively,
    exclusive_lock,
    staged_outputs,
    write_json,
    write_text,
)
from msnewlesion.io.nifti import (
    Volume,
    check_same_grid,
    describe_grid,
    grids_match,
    header_warnings,
    load_mask,
    load_volume,
    quiet_nibabel,
    read_error_reason,
    read_voxels,
    save_volume,
)
from msnewlesion.io.outputs import (
    LOCK_NAME as LOCK_NAME,
)
from msnewlesion.io.outputs import (
    SCRATCH_PREFIX as SCRATCH_PREFIX,
)
from msnewlesion.io.outputs import (
    OutputClaim,
    check_output_location,
    check_outputs_free,
    claim_output_folder,
)

__all__ = [
    "OutputClaim",
    "Volume",
    "atomic_directory",
    "atomic_path",
    "check_output_location",
    "check_outputs_free",
    "check_same_grid",
    "claim_output_folder",
    "create_exclusively",
    "describe_grid",
    "exclusive_lock",
    "grids_match",
    "header_warnings",
    "load_mask",
    "load_volume",
    "quiet_nibabel",
    "read_error_reason",
    "read_voxels",
    "save_volume",
    "staged_outputs",
    "write_json",
    "write_text",
]
