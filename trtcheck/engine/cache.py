"""The engine cache of `trt*` targets: engines reused while nothing they depend on changed.

An engine is not portable across TensorRT releases or GPUs, and it changes with the model, the
builder settings and the optimisation profile; the key holds all of them, and any change makes
another digest, so a stale engine is never found (it is rebuilt). Under the root
($TRTCHECK_ENGINE_CACHE, else $TRTCHECK_CACHE/engines, else ~/.cache/trtcheck/engines):

    <digest>/engine.plan    the serialized engine
    <digest>/timing.cache   the tactic timing cache of the build that made it
    <digest>/key.json       the key, readable: what the engine was built from and for
    timing/<device>.cache   the timing cache every build on one TensorRT and GPU loads and extends

An entry is written in a staging folder and renamed into place whole, so a reader finds a
complete entry or none; of two processes storing one key, the second finds the first's entry
and drops its own. An entry is removed by renaming it away first.

The GPU is identified through the CUDA driver's C API (cuDeviceGetName, cuDeviceGetAttribute):
`polygraphy.cuda` wraps only the runtime's memory and stream calls, and cuda-python is not a
dependency. Besides the name and compute capability, the key holds the attributes that tell
two boards of one name apart (SM count, memory, ECC). The query runs where the engine is built,
in the child that `isolation` forks, never before a fork (CUDA does not survive one). When the
GPU or TensorRT's version cannot be read, nothing is cached and the reason is logged: a wrong
key would hand an engine to a GPU it was not built for.
"""

from __future__ import annotations

import builtins
import contextlib
import copy
import ctypes
import dataclasses
import errno
import hashlib
import io
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trtcheck.atomic import PARTIAL_TAG, remove_stale_partials, write_atomically, write_text
from trtcheck.engine.plan import PLAN_TAG
from trtcheck.errors import UsageError

if TYPE_CHECKING:
    import argparse

    from trtcheck.backend_names import Backend
    from trtcheck.backends import BackendOptions, TrtChain
    from trtcheck.model import LoadedModel

LOG = logging.getLogger(__name__)

ENGINE_CACHE_ENV = "TRTCHECK_ENGINE_CACHE"
# trtcheck.sources.CACHE_ENV, not imported: that module pulls in urllib and zipfile.
_DOWNLOAD_CACHE_ENV = "TRTCHECK_CACHE"
ENGINE_FILE, TIMING_FILE, KEY_FILE = "engine.plan", "timing.cache", "key.json"
TIMING_FOLDER = "timing"
# Bumped when the key's meaning changes, so that older entries are not found.
KEY_FORMAT = 1
_DIGEST_LENGTH = 64


def default_cache_root() -> Path:
    """$TRTCHECK_ENGINE_CACHE, else $TRTCHECK_CACHE/engines, else ~/.cache/trtcheck/engines."""
    configured = os.environ.get(ENGINE_CACHE_ENV)
    if configured:
        return Path(configured).expanduser()
    downloads = os.environ.get(_DOWNLOAD_CACHE_ENV)
    base = Path(downloads).expanduser() if downloads else Path.home() / ".cache" / "trtcheck"
    return base / "engines"


def _canonical(value: Any) -> Any:
    """`value` as plain JSON data: mappings sorted by key, tuples and sets as lists."""
    if isinstance(value, Mapping):
        return {str(k): _canonical(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (set, frozenset)):
        return sorted(_canonical(v) for v in value)
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"an engine cache key holds JSON data only, not {type(value).__name__}")


def _sha256_json(data: Any) -> str:
    text = json.dumps(_canonical(data), sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class EngineCacheKey:
    """Everything an engine depends on; `digest` names its entry."""

    model_sha256: str
    tensorrt_version: str
    gpu_name: str
    compute_capability: str
    builder_settings: Mapping[str, Any] = field(default_factory=dict)
    profile: Mapping[str, Any] = field(default_factory=dict)
    gpu_attributes: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        data = _canonical(dataclasses.asdict(self))
        return {"format": KEY_FORMAT, **data}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> EngineCacheKey:
        names = [f.name for f in dataclasses.fields(cls)]
        if data.get("format") != KEY_FORMAT or not set(names) <= set(data):
            raise ValueError("not an engine cache key of this trtcheck")
        return cls(**{name: data[name] for name in names})

    @property
    def digest(self) -> str:
        return _sha256_json(self.to_json())

    @property
    def device_digest(self) -> str:
        """Names the timing cache that builds on this TensorRT and GPU share."""
        return _sha256_json([KEY_FORMAT, self.tensorrt_version, self.gpu_name,
                             self.compute_capability, self.gpu_attributes])[:32]


# --- The GPU, through the CUDA driver -------------------------------------------------------------


class CacheUnavailable(Exception):  # noqa: N818 (a reason, not a failure: the build goes on)
    """Why engines cannot be cached here (no GPU, no driver, unknown TensorRT version)."""


@dataclass(frozen=True)
class DeviceIdentity:
    name: str
    compute_capability: str
    attributes: Mapping[str, int]


# CUdevice_attribute values from cuda.h (frozen in the driver's ABI).
_CC_MAJOR, _CC_MINOR = 75, 76
_KEY_ATTRIBUTES = {"multiprocessors": 16, "integrated": 18, "ecc": 32, "memory_bus_bits": 37,
                   "l2_cache_bytes": 38}
_DRIVER_LIBRARY = "nvcuda.dll" if sys.platform == "win32" else "libcuda.so.1"


def _driver_call(driver: Any, function: str, *args: Any) -> None:
    status = getattr(driver, function)(*args)
    if status != 0:
        raise CacheUnavailable(f"the CUDA driver's {function} failed with CUresult {status}")


def identify_device(ordinal: int = 0, library: str = _DRIVER_LIBRARY) -> DeviceIdentity:
    """The name, compute capability and distinguishing attributes of CUDA device `ordinal`.

    Device 0 is the one TensorRT builds for unless the process selected another. Raises
    `CacheUnavailable` with the reason when the driver or the device cannot be read.
    """
    try:
        driver = ctypes.CDLL(library)
    except OSError as err:
        raise CacheUnavailable(f"the CUDA driver ({library}) cannot be loaded: {err}") from err
    _driver_call(driver, "cuInit", 0)
    device = ctypes.c_int()
    _driver_call(driver, "cuDeviceGet", ctypes.byref(device), ordinal)
    name = ctypes.create_string_buffer(256)
    _driver_call(driver, "cuDeviceGetName", name, len(name), device)
    value = ctypes.c_int()

    def attribute(code: int) -> int:
        _driver_call(driver, "cuDeviceGetAttribute", ctypes.byref(value), code, device)
        return value.value

    memory = ctypes.c_size_t()
    _driver_call(driver, "cuDeviceTotalMem_v2", ctypes.byref(memory), device)
    attributes = {label: attribute(code) for label, code in _KEY_ATTRIBUTES.items()}
    attributes["memory_bytes"] = memory.value
    return DeviceIdentity(name.value.decode(errors="replace").strip(),
                          f"{attribute(_CC_MAJOR)}.{attribute(_CC_MINOR)}", attributes)


# --- The store ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CacheEntry:
    """One stored engine; `key` is None when its key.json cannot be read."""

    digest: str
    folder: Path
    key: EngineCacheKey | None
    size: int
    last_used: float


def _write_bytes(path: Path, data: bytes) -> None:
    write_atomically(path, lambda partial: Path(partial).write_bytes(data))


def _read_key(folder: Path) -> EngineCacheKey | None:
    try:
        return EngineCacheKey.from_json(json.loads((folder / KEY_FILE).read_text()))
    except (OSError, ValueError, TypeError):
        return None


class EngineCache:
    """Engines and timing caches under `root`, one folder per key digest."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = Path(root) if root is not None else default_cache_root()

    def folder(self, key: EngineCacheKey) -> Path:
        return self.root / key.digest

    def timing_cache_path(self, key: EngineCacheKey) -> Path:
        """The timing cache shared by builds on `key`'s TensorRT and GPU."""
        return self.root / TIMING_FOLDER / f"{key.device_digest}.cache"

    def load(self, key: EngineCacheKey) -> bytes | None:
        """The stored engine for `key`, or None; a hit counts as a use (see `list`)."""
        folder = self.folder(key)
        stored = _read_key(folder)
        if stored is None or stored.digest != key.digest:
            return None
        try:
            plan = (folder / ENGINE_FILE).read_bytes()
        except OSError:
            return None
        if not plan.startswith(PLAN_TAG):
            return None
        with contextlib.suppress(OSError):
            os.utime(folder / ENGINE_FILE)
        return plan

    def timing_cache(self, key: EngineCacheKey) -> bytes | None:
        with contextlib.suppress(OSError):
            return self.timing_cache_path(key).read_bytes()
        return None

    def store(self, key: EngineCacheKey, plan: bytes, timing_cache: bytes | None = None) -> Path:
        """Stores `plan` (and the build's timing cache) under `key`; returns the entry's folder.

        If another process stored a valid entry for `key` first, that one is kept.
        """
        final = self.folder(key)
        self.root.mkdir(parents=True, exist_ok=True)
        remove_stale_partials(final)
        staging = Path(tempfile.mkdtemp(prefix=f"{final.name}{PARTIAL_TAG}{os.getpid()}-",
                                        dir=self.root))
        try:
            _write_bytes(staging / ENGINE_FILE, plan)
            if timing_cache is not None:
                _write_bytes(staging / TIMING_FILE, timing_cache)
            write_text(staging / KEY_FILE, json.dumps(key.to_json(), indent=2) + "\n")
            self._publish(staging, final, key)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        if timing_cache is not None:
            _write_bytes(self.timing_cache_path(key), timing_cache)
        return final

    def _publish(self, staging: Path, final: Path, key: EngineCacheKey) -> None:
        try:
            os.rename(staging, final)
            return
        except OSError as err:
            if err.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
        if self.load(key) is not None:
            return  # another process stored this key first: its entry stands
        self._remove(final)  # a damaged entry: replaced
        with contextlib.suppress(OSError):
            os.rename(staging, final)

    def _remove(self, folder: Path) -> None:
        doomed = folder.with_name(f"{folder.name}{PARTIAL_TAG}{os.getpid()}-removing")
        try:
            os.rename(folder, doomed)
        except FileNotFoundError:
            return
        shutil.rmtree(doomed, ignore_errors=True)

    def list(self) -> list[CacheEntry]:
        """Every entry, most recently used first."""
        entries = []
        with contextlib.suppress(FileNotFoundError):
            for folder in self.root.iterdir():
                if len(folder.name) == _DIGEST_LENGTH and folder.is_dir():
                    entries.append(self._entry(folder))
        return sorted(entries, key=lambda entry: entry.last_used, reverse=True)

    def _entry(self, folder: Path) -> CacheEntry:
        size = sum(f.stat().st_size for f in folder.iterdir() if f.is_file())
        try:
            last_used = (folder / ENGINE_FILE).stat().st_mtime
        except OSError:
            last_used = folder.stat().st_mtime
        return CacheEntry(folder.name, folder, _read_key(folder), size, last_used)

    def clear(self, everything: bool = False, older_than_days: float | None = None,
              digests: Iterable[str] = ()) -> builtins.list[CacheEntry]:
        """Removes all entries, those unused for `older_than_days`, or those named by digest.

        A digest may be given by its first characters, as `list` shows them. `everything` also
        removes the shared timing caches and staging folders of processes that are gone.
        """
        entries = self.list()
        chosen = {entry.digest: entry for entry in self._matching(entries, digests)}
        if everything:
            chosen = {entry.digest: entry for entry in entries}
        if older_than_days is not None:
            cutoff = time.time() - older_than_days * 86400
            chosen.update((e.digest, e) for e in entries if e.last_used < cutoff)
        for entry in chosen.values():
            self._remove(entry.folder)
        if everything:
            shutil.rmtree(self.root / TIMING_FOLDER, ignore_errors=True)
            self._remove_stale_staging()
        return builtins.list(chosen.values())

    def _remove_stale_staging(self) -> None:
        """Staging and half-removed folders of processes that are gone."""
        with contextlib.suppress(FileNotFoundError):
            names = {child.name.split(PARTIAL_TAG)[0] for child in self.root.iterdir()
                     if PARTIAL_TAG in child.name}
            for name in names:
                remove_stale_partials(self.root / name)

    def _matching(self, entries: Sequence[CacheEntry],
                  digests: Iterable[str]) -> builtins.list[CacheEntry]:
        found = []
        for prefix in digests:
            matches = [entry for entry in entries if entry.digest.startswith(prefix.lower())]
            if len(prefix) < 6 or len(matches) != 1:
                problem = "matches several entries" if len(matches) > 1 else "matches no entry"
                if len(prefix) < 6:
                    problem = "is too short (give at least 6 characters)"
                raise UsageError(f"engine cache {self.root}: key {prefix!r} {problem}; "
                                 "`trtcheck cache list` shows the keys")
            found += matches
        return found


# --- The loader that plugs into trt_chain ---------------------------------------------------------


@dataclass(frozen=True)
class BuildSpec:
    """What an engine is built from, known before any GPU is touched; the device comes later."""

    model_sha256: str
    builder_settings: Mapping[str, Any]
    profile: Mapping[str, Any]

    def key(self, tensorrt_version: str, device: DeviceIdentity) -> EngineCacheKey:
        return EngineCacheKey(self.model_sha256, tensorrt_version, device.name,
                              device.compute_capability, self.builder_settings, self.profile,
                              device.attributes)


def _profile_of(config: Any) -> dict[str, Any]:
    """`CreateConfig`'s profiles: input -> [min, opt, max] (`input#N` past the first)."""
    profile: dict[str, Any] = {}
    used = [p for p in (getattr(config, "profiles", None) or []) if len(p)]
    for index, shapes in enumerate(used):
        for name, triple in shapes.items():
            profile[name if index == 0 else f"{name}#{index}"] = [list(s) for s in triple]
    return profile


def build_spec(chain: TrtChain, model: LoadedModel, backend: Backend, options: BackendOptions,
               mark: Sequence[str] = ()) -> BuildSpec:
    """The spec of `trt_chain(model, backend, ...)`'s engine.

    The settings are the `polygraphy run` flags of the target (precision, tf32, kept layers),
    what those flags do not carry (kept nodes on TensorRT 11, marked outputs), and the versions
    of trtcheck and Polygraphy, whose conversion and defaults shape the network and config.
    """
    import polygraphy

    import trtcheck
    from trtcheck.backends import polygraphy_flags

    settings = {
        "target": backend.name,
        "trt_major": chain.trt_major,
        "polygraphy_flags": polygraphy_flags(backend, options, chain.trt_major),
        "keep_fp32": sorted(options.keep_fp32),
        "marked_outputs": list(mark),
        "trtcheck": trtcheck.__version__,
        "polygraphy": polygraphy.__version__,
    }
    return BuildSpec(model.sha256, settings, _profile_of(chain.config))


class CachedEngine:
    """A lazy engine loader: the cached engine for its key, or one built, stored and loaded.

    It stands where `trt_chain` puts `EngineFromNetwork(network, config)`. The build is
    Polygraphy's `EngineBytesFromNetwork` with the device's shared timing cache loaded and the
    extended one saved; the engine is deserialised by `EngineFromBytes`. `outcome` says what
    the last call did ("reused", "built", or "not cached: <reason>"), also logged.
    """

    def __init__(self, network: Any, config: Any, spec: BuildSpec, cache: EngineCache,
                 identify: Callable[[], DeviceIdentity] = identify_device,
                 version: Callable[[], str | None] | None = None,
                 build: Callable[[bytes | None], tuple[bytes, bytes | None]] | None = None,
                 deserialize: Callable[[bytes], Any] | None = None) -> None:
        self.network = network
        self.config = config
        self.spec = spec
        self.cache = cache
        self._identify = identify
        self._version = version
        self._build = build or self._build_with_polygraphy
        self._deserialize = deserialize or _deserialize_with_polygraphy
        self.outcome: str | None = None

    def key(self) -> EngineCacheKey:
        """This engine's key on this machine; raises `CacheUnavailable` with the reason."""
        if self._version is None:
            from trtcheck.backends import tensorrt_version

            version = tensorrt_version()
        else:
            version = self._version()
        if not version:
            raise CacheUnavailable("the installed TensorRT's version cannot be read")
        return self.spec.key(version, self._identify())

    def __call__(self) -> Any:
        try:
            key = self.key()
        except CacheUnavailable as reason:
            self.outcome = f"not cached: {reason}"
            LOG.warning("engine cache disabled: %s", reason)
            built, _ = self._build(None)
            return self._deserialize(built)
        plan = self.cache.load(key)
        if plan is not None:
            self.outcome = "reused"
        else:
            plan, timing = self._build(self.cache.timing_cache(key))
            self.cache.store(key, plan, timing)
            self.outcome = "built"
        LOG.info("engine cache %s: %s", key.digest[:12], self.outcome)
        return self._deserialize(plan)

    def _build_with_polygraphy(self, timing_cache: bytes | None) -> tuple[bytes, bytes | None]:
        from polygraphy.backend.trt import EngineBytesFromNetwork

        from trtcheck.atomic import session_work_folder

        config = copy.copy(self.config)
        # CreateConfig keeps `load_timing_cache` as `timing_cache_path`; a file-like one is read
        # without the lock file Polygraphy would create beside a path inside the cache.
        config.timing_cache_path = io.BytesIO(timing_cache) if timing_cache else None
        with tempfile.TemporaryDirectory(prefix="timing-", dir=session_work_folder()) as work:
            saved = Path(work) / TIMING_FILE
            plan = EngineBytesFromNetwork(self.network, config=config,
                                          save_timing_cache=str(saved))()
            return bytes(plan), (saved.read_bytes() if saved.is_file() else None)


def _deserialize_with_polygraphy(plan: bytes) -> Any:
    from polygraphy.backend.trt import EngineFromBytes

    return EngineFromBytes(plan)()


def cached_chain(chain: TrtChain, spec: BuildSpec, cache: EngineCache) -> TrtChain:
    """`chain` with its engine loaded through `cache`; still nothing imports `tensorrt`."""
    from polygraphy.backend.trt import TrtRunner

    engine = CachedEngine(chain.network, chain.config, spec, cache)
    return dataclasses.replace(chain, engine=engine,
                               runner=TrtRunner(engine, name=chain.runner.name))


# --- `trtcheck cache list|clear` ------------------------------------------------------------------


def add_cache_arguments(cache: argparse.ArgumentParser) -> None:
    """Adds `list|clear` to the CLI's `cache` subcommand; `run_cache` runs it."""
    actions = cache.add_subparsers(dest="cache_command", required=True, metavar="list|clear")
    listing = actions.add_parser("list", help="the stored engines, most recently used first")
    listing.add_argument("--json", action="store_true", help="print JSON")
    clear = actions.add_parser("clear", help="remove stored engines")
    clear.add_argument("keys", nargs="*", metavar="KEY", help="entries to remove, by the key "
                       "`cache list` shows (its first characters are enough)")
    clear.add_argument("--all", action="store_true", help="remove every entry and timing cache")
    clear.add_argument("--older-than", type=float, metavar="DAYS",
                       help="remove entries not used for DAYS days")
    for parser in (listing, clear):
        parser.add_argument("--cache-dir", type=Path, metavar="DIR",
                            help=f"the cache folder (default: ${ENGINE_CACHE_ENV} or "
                                 "~/.cache/trtcheck/engines)")


def _size(nbytes: int) -> str:
    return f"{nbytes / 1e6:.1f} MB" if nbytes >= 100_000 else f"{nbytes / 1e3:.1f} kB"


def _when(timestamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(timestamp))


def _entry_json(entry: CacheEntry) -> dict[str, Any]:
    return {"key": entry.digest, "folder": str(entry.folder), "size": entry.size,
            "last_used": entry.last_used, "fields": entry.key.to_json() if entry.key else None}


def _entry_line(entry: CacheEntry) -> str:
    key = entry.key
    if key is None:
        what = "(unreadable key.json)"
    else:
        what = (f"model {key.model_sha256[:12]}  {key.builder_settings.get('target', '?'):<9}  "
                f"TensorRT {key.tensorrt_version}  {key.gpu_name} (sm {key.compute_capability})")
    return f"{entry.digest[:12]}  {what}  {_size(entry.size)}  used {_when(entry.last_used)}"


def run_cache(args: argparse.Namespace) -> int:
    """Runs `trtcheck cache list|clear`; returns the exit code."""
    cache = EngineCache(getattr(args, "cache_dir", None))
    if args.cache_command == "list":
        entries = cache.list()
        if getattr(args, "json", False):
            print(json.dumps([_entry_json(e) for e in entries], indent=2))
            return 0
        for entry in entries:
            print(_entry_line(entry))
        total = sum(entry.size for entry in entries)
        print(f"{len(entries)} engine(s), {_size(total)}, in {cache.root}")
        return 0
    if not (args.all or args.older_than is not None or args.keys):
        raise UsageError("trtcheck cache clear: say what to clear: --all, --older-than DAYS, or "
                         "the KEYs that `trtcheck cache list` shows")
    if args.older_than is not None:
        from trtcheck.tolerance import check_tolerance_value

        check_tolerance_value(f"--older-than {args.older_than:g} (days)", args.older_than)
    removed = cache.clear(everything=args.all, older_than_days=args.older_than,
                          digests=args.keys)
    print(f"removed {len(removed)} engine(s), {_size(sum(e.size for e in removed))}, from "
          f"{cache.root}")
    return 0
