"""Engine files as targets: a plan's header read without TensorRT, and a runner for the engine.

The header layout is TensorRT's own, as `trtexec --getPlanVersionOnly` reads it ("Works without
deserialization of the plan"): `printPlanVersion` in samples/common/sampleEngines.cpp of
NVIDIA/TensorRT, unchanged from the 10.0 release (commit 147005ff) to 11.1 (commit 82d1dca8):

    bytes 0-3    uint32 kPLAN_FILE_TAG 0x74727466, little-endian: the characters "ftrt"
    bytes 4-7    uint32 serialization version; 0 is the only one trtexec reads a version from
    bytes 24-27  the TensorRT that built the plan: major, minor, patch, build, one byte each

The rest of the plan is TensorRT's (libnvinfer, closed source) and is never read here. Plans of
TensorRT 9 and earlier, and safety-runtime plans, carry no readable version this way.

A plan runs only on the TensorRT release that built it ("By default, TensorRT engines are
compatible only with the version of TensorRT used to build them", TensorRT's Engine
Compatibility docs), unless it was built version-compatible, which the header does not say: the
caller says so (`version_compatible`), and a newer TensorRT is then accepted.

Ultralytics writes `.engine` files with its metadata first ([uint32 length][JSON][plan]);
TensorRT rejects those ("magicTag != kPLAN_MAGIC_TAG"). Here they are recognised, and the
engine is read from after the metadata.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trtcheck.errors import ModelError

PLAN_TAG = struct.pack("<I", 0x74727466)  # b"ftrt"
HEADER_BYTES = 28
_VERSION_AT = 24
# Ultralytics' metadata is a few hundred bytes of JSON; a larger "length" is not metadata.
_MAX_METADATA_BYTES = 1 << 20
_UNSET: Any = object()


@dataclass(frozen=True)
class PlanHeader:
    """What the first bytes of a file say about it, read without TensorRT.

    `magic_ok` is False for a file that is not a plan; `problem` then says what it is.
    `version` is (major, minor, patch, build), None when the serialization version is one
    trtexec does not read. `offset` is where the plan starts (after Ultralytics' metadata).
    """

    path: Path
    size: int
    magic_ok: bool
    serialization_version: int | None = None
    version: tuple[int, int, int, int] | None = None
    offset: int = 0
    problem: str | None = None

    @property
    def tensorrt_version(self) -> str | None:
        """The full version that built the plan, e.g. "10.3.0.26"."""
        return ".".join(map(str, self.version)) if self.version else None

    @property
    def release(self) -> str | None:
        """major.minor.patch, the part that must match the TensorRT that runs the plan."""
        return ".".join(map(str, self.version[:3])) if self.version else None


def _looks_like_onnx(head: bytes) -> bool:
    """A ModelProto starts with ir_version (field 1, varint) and then another of its fields."""
    if len(head) < 3 or head[0] != 0x08 or not 3 <= head[1] <= 30:
        return False
    # producer_name, producer_version, domain, model_version, doc_string, graph, opset_import
    return head[2] in (0x12, 0x1A, 0x22, 0x28, 0x32, 0x3A, 0x42)


def _printable(data: bytes) -> str:
    return "".join(chr(b) if 32 <= b < 127 else "." for b in data)


def _what_it_is(head: bytes, size: int) -> str:
    if size == 0:
        return "the file is empty"
    if head.startswith(PLAN_TAG):
        return f"it has {size} bytes, fewer than the {HEADER_BYTES} of a plan's header"
    if _looks_like_onnx(head):
        return ("it is an ONNX model; give it as the model, or build its engine with "
                "trtexec --onnx=MODEL --saveEngine=model.plan")
    if head.startswith(b"PK\x03\x04"):
        return "it is a ZIP archive"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        text = ""
    if text.strip() and all(c.isprintable() or c.isspace() for c in text):
        return f"it is text ({text[:20].strip()!r}...)"
    first = head[:4]
    return (f"it starts with {first.hex(' ')} ('{_printable(first)}'), not TensorRT's plan tag "
            f"{PLAN_TAG.hex(' ')} ('ftrt')")


def _ultralytics_offset(path: Path, head: bytes, size: int) -> int | None:
    """Where the plan starts after Ultralytics' [uint32 length][JSON] prefix, if it has one."""
    if len(head) < 4:
        return None
    (length,) = struct.unpack_from("<I", head)
    start = 4 + length
    if not 0 < length <= _MAX_METADATA_BYTES or start + HEADER_BYTES > size:
        return None
    with open(path, "rb") as file:
        file.seek(4)
        metadata = file.read(length)
        tag = file.read(len(PLAN_TAG))
    if tag != PLAN_TAG:
        return None
    try:
        return start if isinstance(json.loads(metadata), dict) else None
    except (UnicodeDecodeError, ValueError):
        return None


def _parse(path: Path, header: bytes, size: int, offset: int) -> PlanHeader:
    (serialization,) = struct.unpack_from("<I", header, len(PLAN_TAG))
    version = None
    if serialization == 0:
        major, minor, patch, build = header[_VERSION_AT:_VERSION_AT + 4]
        version = (major, minor, patch, build)
    return PlanHeader(path, size, True, serialization, version, offset)


def inspect_plan_header(path: Path) -> PlanHeader:
    """Reads `path`'s plan header; a file that is not a plan gives `magic_ok=False` and why.

    Raises `ModelError` only when the file cannot be read at all.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as file:
            head = file.read(HEADER_BYTES)
    except OSError as err:
        raise ModelError(f"{path}: cannot read the engine file ({err.strerror}); "
                         "check the path") from err
    if head.startswith(PLAN_TAG) and len(head) == HEADER_BYTES:
        return _parse(path, head, size, 0)
    offset = _ultralytics_offset(path, head, size)
    if offset is not None:
        with open(path, "rb") as file:
            file.seek(offset)
            return _parse(path, file.read(HEADER_BYTES), size, offset)
    return PlanHeader(path, size, False, problem=_what_it_is(head, size))


def read_plan_header(path: Path) -> PlanHeader:
    """The plan header of `path`; raises a one-line `ModelError` if the file is not a plan."""
    header = inspect_plan_header(path)
    if not header.magic_ok:
        raise ModelError(f"{header.path}: not a TensorRT engine: {header.problem}; give a plan "
                         "written by trtexec --saveEngine or polygraphy convert")
    return header


def _release_numbers(version: str) -> tuple[int, ...]:
    numbers = []
    for part in version.split(".")[:3]:
        digits = "".join(c for c in part if c.isdigit())
        if not digits:
            break
        numbers.append(int(digits))
    return tuple(numbers)


def _install_hint(release: str) -> str:
    return f"pip install 'tensorrt=={release}'"


@dataclass(frozen=True)
class PlanPreflight:
    """A plan's header against the TensorRT installed here; `note` is for the report."""

    header: PlanHeader
    installed: str | None
    note: str | None


def preflight_plan(path: Path, installed: str | None = _UNSET,
                   version_compatible: bool = False) -> PlanPreflight:
    """Checks, without deserialising it, that `path` is a plan this TensorRT can run.

    `installed` is the TensorRT version here (default: detected; None: not installed).
    Raises `ModelError` for a file that is not a plan, and for a plan built by another
    TensorRT release than the installed one (a newer one is accepted when the plan was built
    `version_compatible`). Without TensorRT the note names the release the plan needs.
    """
    if installed is _UNSET:
        from trtcheck.backends import tensorrt_version

        installed = tensorrt_version()
    header = read_plan_header(path)
    built = header.release
    if built is None:
        note = (f"{header.path}: plan serialization version {header.serialization_version}, "
                "from which the TensorRT that built it cannot be read; TensorRT checks it when "
                "it loads the plan")
        return PlanPreflight(header, installed, note)
    if installed is None:
        note = (f"{header.path}: built by TensorRT {header.tensorrt_version}; TensorRT is not "
                f"installed here, and running it needs TensorRT {built} ({_install_hint(built)}) "
                "on a GPU like the one that built it")
        return PlanPreflight(header, installed, note)
    built_numbers = header.version[:3] if header.version else ()
    here = _release_numbers(installed)
    if built_numbers[:len(here)] == here:
        return PlanPreflight(header, installed, None)
    if version_compatible and here > built_numbers:
        note = (f"{header.path}: built version-compatible by TensorRT {built}, run by the newer "
                f"TensorRT {installed} installed here")
        return PlanPreflight(header, installed, note)
    raise ModelError(
        f"{header.path}: built by TensorRT {built}, installed {installed}: engines run only on "
        f"the TensorRT release that built them; rebuild it with this TensorRT (trtexec "
        f"--onnx=MODEL --saveEngine={header.path.name}) or run it where TensorRT {built} is "
        f"installed ({_install_hint(built)})")


class PlanBytes:
    """A lazy loader for `EngineFromBytes`: the plan's bytes, after any metadata before it."""

    def __init__(self, path: Path, offset: int = 0) -> None:
        self.path = Path(path)
        self.offset = offset

    def __call__(self) -> bytes:
        with open(self.path, "rb") as file:
            file.seek(self.offset)
            return file.read()


@dataclass
class EngineChain:
    """The Polygraphy loaders of an engine-file target, inspectable before anything runs."""

    preflight: PlanPreflight
    engine: Any
    runner: Any


def engine_chain(path: Path, name: str, installed: str | None = _UNSET,
                 version_compatible: bool = False) -> EngineChain:
    """Checks `path`'s header, then builds its lazy chain; nothing here imports `tensorrt`.

    A plain plan is streamed from its path by `EngineFromPath`; one after Ultralytics' metadata
    is read into memory past that metadata and given to `EngineFromBytes`.
    """
    from polygraphy.backend.trt import EngineFromBytes, EngineFromPath, TrtRunner

    preflight = preflight_plan(path, installed, version_compatible)
    header = preflight.header
    engine: Any
    if header.offset:
        engine = EngineFromBytes(PlanBytes(header.path, header.offset))
    else:
        engine = EngineFromPath(str(header.path))
    return EngineChain(preflight, engine, TrtRunner(engine, name=name))


def engine_runner(path: Path, name: str, installed: str | None = _UNSET,
                  version_compatible: bool = False) -> Any:
    """Polygraphy's `TrtRunner` for the prebuilt engine at `path` (see `engine_chain`)."""
    return engine_chain(path, name, installed, version_compatible).runner
