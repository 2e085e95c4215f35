"""The child process that runs antsRegistration for :func:`msnewlesion.preprocess.registration.register_rigid`.

It reads pickled requests on stdin and writes pickled answers on stdout, one registration at a
time, until stdin closes. The parent starts it with ``python -c`` calling :func:`serve`.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
import sys
import traceback
from typing import Any, BinaryIO


def _die_with_parent() -> None:
    # Linux: the registration stops when the process that asked for it dies, even killed outright.
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def run_ants_registration(arguments: list[str]) -> None:
    """antsRegistration itself, inside antspyx's library (no program is started); raises on failure."""
    from ants.internal import get_lib_fn, process_arguments

    code = get_lib_fn("antsRegistration")(process_arguments(arguments))
    if code:
        raise RuntimeError(f"Registration failed with error code {code}")


def _register(request: tuple[Any, ...]) -> tuple[str, Any]:
    import ants
    from ants.internal import get_pointer_string

    from msnewlesion.preprocess.registration import ants_transform_matrix, registration_arguments, to_ants_image

    fixed, moving, mask, transform, seed, outprefix, verbose = request
    try:
        images = [to_ants_image(*fixed), to_ants_image(*moving)]
        if mask is not None:
            images.append(to_ants_image(mask, fixed[1]))
        names = [get_pointer_string(image) for image in images]  # the images stay referenced until the end
        arguments = registration_arguments(
            transform,
            names[0],
            names[1],
            names[2] if mask is not None else None,
            outprefix,
            seed,
            spacing=tuple(images[0].spacing),
            voxels=int(fixed[0].size),
            verbose=verbose,
        )
        run_ants_registration(arguments)
        return "ok", ants_transform_matrix(ants.read_transform(outprefix + "0GenericAffine.mat"))
    except (RuntimeError, ValueError, IndexError, OSError) as error:
        return "error", str(error).strip() or type(error).__name__
    except Exception:  # a bug: the parent raises it with this traceback
        return "bug", traceback.format_exc()


def _flush_c_stdio() -> None:
    # antsRegistration writes its log through C's stdio, which buffers it when writing to a pipe.
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL(None).fflush(None)


def main(requests: BinaryIO, answers: BinaryIO) -> None:
    """Serve registrations until ``requests`` closes."""
    while True:
        try:
            request = pickle.load(requests)
        except EOFError:
            return
        answer = _register(request)
        _flush_c_stdio()  # the log of this registration reaches the parent before its answer
        pickle.dump(answer, answers, protocol=pickle.HIGHEST_PROTOCOL)
        answers.flush()


def serve() -> None:
    """The child's entry point: serve this process's stdin and stdout."""
    # The parent answers Ctrl-C (it kills this process); an interrupted child would only print a traceback.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_parent()
    # Answers get the real stdout to themselves; anything a library prints goes to stderr.
    answers = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    main(sys.stdin.buffer, answers)
