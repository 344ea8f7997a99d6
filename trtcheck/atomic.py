"""Writes that never leave a half-written file behind: write beside the target, then rename."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def write_atomically(path: Path, write: Callable[[str], object]) -> None:
    """Calls `write(partial_path)` on a temporary file in `path`'s folder, then renames it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, partial = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix,
                                       dir=path.parent)
    os.close(handle)
    try:
        write(partial)
        # mkstemp creates the file private (0600); the result gets the usual permissions.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(partial, 0o666 & ~umask)
        os.replace(partial, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(partial)
        raise


def write_npz(path: Path, arrays: dict) -> None:
    """Writes `arrays` (name -> ndarray) as a compressed .npz, atomically."""
    import numpy as np

    # The temporary name keeps the .npz suffix, so numpy does not append another.
    def save(partial: str) -> None:
        np.savez_compressed(partial, **arrays)

    write_atomically(path, save)


# Protobuf cannot serialise more than 2 GB; larger models keep their weights beside them.
_EXTERNAL_DATA_BYTES = 1_800_000_000


def save_onnx(model, path: Path) -> None:
    """Writes an ONNX model atomically, its weights in `NAME.data` beside it if over 2 GB."""
    import onnx

    path = Path(path)
    if model.ByteSize() > _EXTERNAL_DATA_BYTES:
        write_atomically(path, lambda partial: onnx.save(
            model, partial, save_as_external_data=True, location=f"{path.name}.data"))
    else:
        write_atomically(path, lambda partial: onnx.save(model, partial))
