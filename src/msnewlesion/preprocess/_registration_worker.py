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


def _register(request: tuple[Any, ...]) -> tuple[str, Any]:
    import ants

    from msnewlesion.preprocess.registration import _ants_seed, ants_transform_matrix, to_ants_image

    fixed, moving, mask, transform, seed, outprefix = request
    try:
        with _ants_seed(seed):
            result = ants.registration(
                to_ants_image(*fixed),
                to_ants_image(*moving),
                type_of_transform=transform,
                mask=to_ants_image(mask, fixed[1]) if mask is not None else None,
                outprefix=outprefix,
            )
            return "ok", ants_transform_matrix(ants.read_transform(result["fwdtransforms"][0]))
    except (RuntimeError, ValueError, IndexError, OSError) as error:
        return "error", str(error).strip() or type(error).__name__
    except Exception:  # a bug: the parent raises it with this traceback
        return "bug", traceback.format_exc()


def main(requests: BinaryIO, answers: BinaryIO) -> None:
    """Serve registrations until ``requests`` closes."""
    while True:
        try:
            request = pickle.load(requests)
        except EOFError:
            return
        pickle.dump(_register(request), answers, protocol=pickle.HIGHEST_PROTOCOL)
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
