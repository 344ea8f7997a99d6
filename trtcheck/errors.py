"""Errors that trtcheck reports to a user as one line, each mapped to a documented exit code.

Exit codes (shared by every command):
  0  pass
  1  mismatch: the target's outputs differ from the reference beyond tolerance
  2  usage or input error: bad flags, unreadable model, unknown input names, bad tolerances
  3  could not run: a backend is unavailable (TensorRT missing) or failed while running
  4  internal error: a bug in trtcheck; the traceback is printed with a request to report it
  130  interrupted by Ctrl-C (SIGINT); 143 stopped by SIGTERM. Temporary files are removed.

An output path that cannot be written (the model itself, a folder, an unwritable folder) is
a usage error (2), found before any work is done.
"""

from __future__ import annotations

EXIT_PASS = 0
EXIT_MISMATCH = 1
EXIT_INPUT_ERROR = 2
EXIT_COULD_NOT_RUN = 3
EXIT_INTERNAL_ERROR = 4
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143

BUG_REPORT = ("this is a bug in trtcheck, not in the model or the flags; please report it with "
              "the traceback above and the command line")


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


class InternalError(TrtcheckError):
    """An unexpected exception inside trtcheck: a bug, reported with its traceback."""

    exit_code = EXIT_INTERNAL_ERROR


class Terminated(BaseException):  # noqa: N818 (like KeyboardInterrupt, not an Exception)
    """Raised by the CLI's SIGTERM handler so that `finally` blocks remove temporary files."""
