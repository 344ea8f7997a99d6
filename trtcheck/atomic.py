"""The one place trtcheck writes files: output paths checked before any work, atomic writes.

A file is written under a temporary name in its destination folder, then renamed over the
destination, so a reader never sees half a file. The temporary name is visible and says what it
is (`NAME.trtcheck-partial-PID-XXXX`), and it is removed on any exception, Ctrl-C included (the
CLI turns SIGTERM into an exception too). Only SIGKILL can leave one behind; the next write to
the same destination removes those whose process is gone.

Work files (converted models, fixed models) go to a work folder: one the user named, which
trtcheck marks as its own, or a per-process folder in the system's temp directory, removed at
exit. Nothing is written beside the user's model.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from trtcheck.errors import UsageError

PARTIAL_TAG = ".trtcheck-partial-"
# A work folder that trtcheck created carries this file; others are not written into.
WORK_MARKER = "TRTCHECK-WORK-FOLDER.txt"
_MARKER_TEXT = ("trtcheck writes converted and fixed models here and replaces them on the next "
                "run; nothing else in this folder is written by trtcheck.\n")


def _partial_pattern(name: str) -> re.Pattern[str]:
    return re.compile(re.escape(name) + re.escape(PARTIAL_TAG) + r"(\d+)-")


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def remove_stale_partials(path: Path) -> list[Path]:
    """Removes temporary files for `path` left by trtcheck processes that no longer exist.

    Only names of trtcheck's own pattern for this destination are touched, and only when the
    process id in the name is not running (a SIGKILL'd `trtcheck fix`, for instance).
    """
    pattern = _partial_pattern(path.name)
    removed: list[Path] = []
    try:
        entries = list(path.parent.iterdir())
    except OSError:
        return removed
    for entry in entries:
        match = pattern.match(entry.name)
        if match is None or _process_alive(int(match.group(1))):
            continue
        with contextlib.suppress(OSError):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
            removed.append(entry)
    return removed


def _partial_prefix(path: Path) -> str:
    return f"{path.name}{PARTIAL_TAG}{os.getpid()}-"


def write_atomically(path: Path, write: Callable[[str], object]) -> None:
    """Calls `write(partial_path)` on a temporary file in `path`'s folder, then renames it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(path)
    handle, partial = tempfile.mkstemp(prefix=_partial_prefix(path), suffix=path.suffix,
                                       dir=path.parent)
    os.close(handle)
    try:
        write(partial)
        # mkstemp creates the file private (0600); the result gets the usual permissions.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(partial, 0o666 & ~umask)
        os.replace(partial, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(partial)


def write_text(path: Path, text: str) -> None:
    """Writes `text` to `path` atomically."""
    write_atomically(path, lambda partial: Path(partial).write_text(text))


def write_npz(path: Path, arrays: dict) -> None:
    """Writes `arrays` (name -> ndarray) as a compressed .npz, atomically."""
    import numpy as np

    # The temporary name keeps the .npz suffix, so numpy does not append another.
    def save(partial: str) -> None:
        np.savez_compressed(partial, **arrays)

    write_atomically(path, save)


# Protobuf cannot serialise more than 2 GB; larger models keep their weights beside them.
EXTERNAL_DATA_BYTES = 1_800_000_000
# Tensors of at least this many bytes go to the data file (onnx.save's own threshold).
_EXTERNAL_TENSOR_BYTES = 1024


def fits_in_protobuf(model) -> bool:
    """Whether `model` serialises as one message, under `EXTERNAL_DATA_BYTES`."""
    # ByteSize serialises the model to count it (upb): weights over the limit by their shapes
    # alone need no count.
    return weight_bytes(model) <= EXTERNAL_DATA_BYTES and model.ByteSize() <= EXTERNAL_DATA_BYTES


def serialized_if_fits(model) -> bytes | None:
    """`model` serialised, or None when it is over `EXTERNAL_DATA_BYTES`.

    One serialisation: asking the size first (`fits_in_protobuf`) costs one of its own (0.6 s
    on ViT-B/16's 330 MB, once per bisection probe). Weights over the limit by their shapes
    alone are not serialised at all (that would take as much memory again as the model).
    """
    if weight_bytes(model) > EXTERNAL_DATA_BYTES:
        return None
    data = model.SerializeToString()
    return data if len(data) <= EXTERNAL_DATA_BYTES else None


def weight_bytes(model) -> int:
    """The bytes the model's initializers hold inside the file, by their shapes and types.

    Reads no tensor data (cheap at any size); at most the serialised size for a valid model.
    """
    import math

    import onnx

    from trtcheck.model import all_initializers

    total = 0
    for tensor in all_initializers(model.graph):
        if (tensor.data_location == onnx.TensorProto.EXTERNAL
                or tensor.data_type == onnx.TensorProto.STRING):
            continue
        bits = _PACKED_BITS.get(onnx.TensorProto.DataType.Name(tensor.data_type)) or (
            onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize * 8)
        total += math.prod(tensor.dims) * bits // 8
    return total


# Types stored several to a byte (numpy's stand-ins for them take a byte each).
_PACKED_BITS = {"UINT4": 4, "INT4": 4, "FLOAT4E2M1": 4, "UINT2": 2, "INT2": 2}


def _external_bytes(tensor, weights_folder: Path | None) -> bytes:
    from onnx.external_data_helper import ExternalDataInfo

    info = ExternalDataInfo(tensor)
    with open(Path(weights_folder or ".") / info.location, "rb") as data:
        data.seek(info.offset or 0)
        return data.read(info.length) if info.length else data.read()


def _write_with_external_data(model, model_path: Path, data_name: str,
                              weights_folder: Path | None) -> None:
    """Writes `model` to `model_path`, its tensors of 1 KB or more to `data_name` beside it.

    `onnx.save(save_as_external_data=True)` clears the weights out of the model it is given;
    here they are put back, so the caller's model is unchanged. Tensors already external (their
    data in `weights_folder`) are copied into the new data file.
    """
    import onnx

    from trtcheck.model import all_initializers

    # Each moved tensor with what to put back: its bytes (None if it was external already), its
    # external-data entries, and whether data_location was set at all (proto2 keeps that bit).
    moved: list[tuple[onnx.TensorProto, bytes | None, list[tuple[str, str]], bool]] = []
    try:
        with open(model_path.parent / data_name, "wb") as data:
            for tensor in all_initializers(model.graph):
                external = tensor.data_location == onnx.TensorProto.EXTERNAL
                raw = _external_bytes(tensor, weights_folder) if external else tensor.raw_data
                if not external and len(raw) < _EXTERNAL_TENSOR_BYTES:
                    continue
                moved.append((tensor, None if external else raw,
                              [(entry.key, entry.value) for entry in tensor.external_data],
                              tensor.HasField("data_location")))
                offset = data.tell()
                data.write(raw)
                tensor.ClearField("raw_data")
                del tensor.external_data[:]
                for key, value in (("location", data_name), ("offset", str(offset)),
                                   ("length", str(len(raw)))):
                    entry = tensor.external_data.add()
                    entry.key, entry.value = key, value
                tensor.data_location = onnx.TensorProto.EXTERNAL
        onnx.save(model, str(model_path))
    finally:
        for tensor, inline, previous, had_location in reversed(moved):
            del tensor.external_data[:]
            if inline is None:
                for key, value in previous:
                    entry = tensor.external_data.add()
                    entry.key, entry.value = key, value
            else:
                tensor.raw_data = inline
                tensor.data_location = onnx.TensorProto.DEFAULT
                if not had_location:
                    tensor.ClearField("data_location")


def save_onnx(model, path: Path, external_data: bool = False,
              weights_folder: Path | None = None) -> None:
    """Writes an ONNX model atomically, its weights in `NAME.data` if asked or over 2 GB.

    With external data, both files are written in a temporary folder beside `path` and renamed
    into place, the weights first, so that the model never points at a half-written file.
    `weights_folder` is where the model's own external data lives, if it has any.
    """
    path = Path(path)
    data = None if external_data or weights_folder is not None else serialized_if_fits(model)
    if data is not None:
        write_atomically(path, lambda partial: Path(partial).write_bytes(data))
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(path)
    staging = Path(tempfile.mkdtemp(prefix=_partial_prefix(path), dir=path.parent))
    try:
        data_name = f"{path.name}.data"
        _write_with_external_data(model, staging / path.name, data_name, weights_folder)
        os.replace(staging / data_name, path.parent / data_name)
        os.replace(staging / path.name, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def session_source(model, path: Path) -> bytes | str:
    """What an ONNX Runtime session loads for `model`: its serialised bytes, or a path.

    ONNX Runtime takes bytes only under protobuf's 2 GB limit ("Failed to serialize proto"), so a
    larger model is saved to `path` (a work file) with its weights beside it, and the path is
    returned.
    """
    data = serialized_if_fits(model)
    if data is not None:
        return data
    save_onnx(model, path, external_data=True)
    return str(path)


@contextlib.contextmanager
def session_file(model, weights_folder: Path | None = None) -> Iterator[bytes | str]:
    """`session_source` for one run; the files it writes are removed when the block ends.

    A model whose weights are external in `weights_folder` (see `model.offload_weights`) is
    written there, so that ONNX Runtime finds them beside it.
    """
    import onnx

    if weights_folder is not None:
        handle, name = tempfile.mkstemp(prefix="session-", suffix=".onnx", dir=weights_folder)
        os.close(handle)
        try:
            onnx.save(model, name)
            yield name
        finally:
            Path(name).unlink(missing_ok=True)
        return
    data = serialized_if_fits(model)
    if data is not None:
        yield data
        return
    folder = Path(tempfile.mkdtemp(prefix="session-", dir=session_work_folder()))
    try:
        save_onnx(model, folder / "model.onnx", external_data=True)
        yield str(folder / "model.onnx")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and a.samefile(b))
    except OSError:
        return False


def _nearest_existing(folder: Path) -> Path:
    folder = folder.absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def _folder_problem(folder: Path) -> str | None:
    """Why files cannot be created in `folder` (created on demand), or None."""
    existing = _nearest_existing(folder)
    if not existing.is_dir():
        return f"{existing} is a file, not a folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"folder {existing} is not writable"
    if existing == folder.absolute():
        # Root passes os.access everywhere; a probe also catches read-only and special filesystems.
        try:
            handle, probe = tempfile.mkstemp(prefix=f"probe{PARTIAL_TAG}{os.getpid()}-",
                                             dir=existing)
        except OSError as err:
            return f"cannot create files in {existing} ({err.strerror})"
        os.close(handle)
        os.unlink(probe)
    return None


def check_output_path(flag: str, path: Path | None, inputs: Iterable[Path | None] = ()) -> None:
    """Raises `UsageError` (exit 2) unless `path` can be written as a new or replaced file.

    Checked before any work: not one of `inputs` (the model, recorded inputs), not an existing
    folder, and a folder that can hold it.
    """
    if path is None:
        return
    path = Path(path)
    for source in inputs:
        if source is not None and _same_file(path, Path(source)):
            raise UsageError(f"{flag} {path}: the output would overwrite the input {source}; "
                             "write it to another path")
    if path.is_dir() or path.name in ("", ".", ".."):
        raise UsageError(f"{flag} {path}: is a folder; give a file name (inside it, if that "
                         "is where it should go)")
    problem = _folder_problem(path.parent)
    if problem is not None:
        raise UsageError(f"{flag} {path}: {problem}; pick another path")


def check_output_folder(flag: str, path: Path | None, inputs: Iterable[Path | None] = ()) -> None:
    """Raises `UsageError` (exit 2) unless `path` is a folder trtcheck can create or write in."""
    if path is None:
        return
    path = Path(path)
    for source in inputs:
        if source is not None and _same_file(path, Path(source)):
            raise UsageError(f"{flag} {path}: that is the input {source}, not a folder; name a "
                             "folder (it is created if missing)")
    if path.exists() and not path.is_dir():
        raise UsageError(f"{flag} {path}: is a file, not a folder; name a folder (it is created "
                         "if missing)")
    problem = _folder_problem(path)
    if problem is not None:
        raise UsageError(f"{flag} {path}: {problem}; pick another folder")


def check_distinct(named: Iterable[tuple[str, Path | None]]) -> None:
    """Raises `UsageError` when two output flags name the same file."""
    seen: dict[Path, str] = {}
    for flag, path in named:
        if path is None:
            continue
        key = Path(path).absolute().resolve()
        if key in seen:
            raise UsageError(f"{seen[key]} and {flag} both name {path}; give each its own file")
        seen[key] = flag


def check_work_folder(flag: str, path: Path) -> None:
    """Raises `UsageError` unless `path` is new, empty, or a work folder trtcheck created."""
    check_output_folder(flag, path)
    if path.is_dir() and not (path / WORK_MARKER).is_file() and any(path.iterdir()):
        raise UsageError(f"{flag} {path}: this folder has files that trtcheck did not write; "
                         "name a new or empty folder")


def prepare_work_folder(path: Path) -> Path:
    """Creates `path` as trtcheck's work folder (marked as such) and returns it."""
    path.mkdir(parents=True, exist_ok=True)
    marker = path / WORK_MARKER
    if not marker.is_file():
        write_text(marker, _MARKER_TEXT)
    return path


_SESSION_FOLDER: dict[int, Path] = {}


def session_work_folder() -> Path:
    """A work folder in the system temp directory for this process, removed at exit."""
    pid = os.getpid()
    if pid not in _SESSION_FOLDER:
        folder = Path(tempfile.mkdtemp(prefix=f"trtcheck-work-{pid}-"))
        _SESSION_FOLDER[pid] = folder
        atexit.register(_remove_session_folder, pid)
    return _SESSION_FOLDER[pid]


def _remove_session_folder(pid: int) -> None:
    # A forked child inherits the atexit list; only the creating process removes the folder.
    if os.getpid() == pid and pid in _SESSION_FOLDER:
        shutil.rmtree(_SESSION_FOLDER.pop(pid), ignore_errors=True)
