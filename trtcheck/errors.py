"""Errors that trtcheck reports to a user as one line, each mapped to a documented exit code.

Exit codes (shared by every command):
  0  pass
  1  mismatch: the target's outputs differ from the reference beyond tolerance
  2  usage or input error: bad flags, unreadable model, unknown input names, bad tolerances
  3  could not run: a backend is unavailable (TensorRT missing) or failed while running
"""

from __future__ import annotations

EXIT_PASS = 0
EXIT_MISMATCH = 1
EXIT_INPUT_ERROR = 2
EXIT_COULD_NOT_RUN = 3


class TrtcheckError(Exception):
    """Base error: its message is one line that says what is wrong and how to fix it."""

    exit_code = EXIT_INPUT_ERROR


class UsageError(TrtcheckError):
    """A flag or option value that cannot be used (bad tolerance, unknown backend, bad shape)."""


class ModelError(TrtcheckError):
    """A model file that is missing, unreadable, invalid or unsafe to load."""


class InputDataError(TrtcheckError):
    """Input feeds that do not fit the model (unknown names, missing shapes, unreadable files)."""


class BackendUnavailableError(TrtcheckError):
    """A backend that cannot run on this machine, such as TensorRT without the `tensorrt` module."""

    exit_code = EXIT_COULD_NOT_RUN


class BackendRunError(TrtcheckError):
    """A backend that was available but failed while building or running the model."""

    exit_code = EXIT_COULD_NOT_RUN
