"""Engine files and the engine cache, without TensorRT.

Plan headers are written byte by byte from the layout `trtexec --getPlanVersionOnly` reads
(NVIDIA/TensorRT samples/common/sampleEngines.cpp, printPlanVersion): a little-endian uint32 tag
0x74727466, a uint32 serialization version, and the version at bytes 24-27. The cache's storage
layer is tested with real bytes and real processes; the engine build and deserialisation, which
need TensorRT, are the only steps stood in for, by plain functions passed to `CachedEngine`.
"""

from __future__ import annotations

import ctypes.util
import hashlib
import io
import json
import multiprocessing
import os
import struct
import subprocess
import sys
import time
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
import onnx
import pytest
from polygraphy.backend.trt import CreateConfig, EngineFromBytes, EngineFromPath, TrtRunner
from polygraphy.exception import PolygraphyException

from trtcheck.atomic import PARTIAL_TAG
from trtcheck.backend_names import get_backend
from trtcheck.backends import BackendOptions, tensorrt_usable, trt_chain
from trtcheck.engine.cache import (
    BuildSpec,
    CachedEngine,
    CacheUnavailable,
    DeviceIdentity,
    EngineCache,
    EngineCacheKey,
    build_spec,
    cached_chain,
    default_cache_root,
    identify_device,
    run_cache,
)
from trtcheck.engine.plan import (
    PlanBytes,
    engine_chain,
    engine_runner,
    inspect_plan_header,
    preflight_plan,
    read_plan_header,
)
from trtcheck.errors import EXIT_INPUT_ERROR, ModelError, UsageError
from trtcheck.model import load_model
from trtcheck.precision import PrecisionPlan
from zoo.build import cnn

ROOT = Path(__file__).resolve().parents[1]
TAG = 0x74727466
without_tensorrt = pytest.mark.skipif(
    tensorrt_usable(), reason="TensorRT is installed here; this checks the behaviour without it")


def plan_bytes(version: tuple[int, int, int, int], serialization: int = 0,
               body: bytes = b"\x00" * 64) -> bytes:
    """A plan header as printPlanVersion reads it, then an arbitrary body."""
    header = struct.pack("<II", TAG, serialization) + bytes(16) + bytes(version)
    assert len(header) == 28
    return header + body


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


# --- 4. Plan headers -----------------------------------------------------------------------------


def test_the_tag_is_the_characters_ftrt_on_disk():
    assert plan_bytes((10, 3, 0, 26))[:4] == b"ftrt"


@pytest.mark.parametrize("version", [(10, 0, 1, 6), (10, 3, 0, 26), (10, 8, 0, 43),
                                     (11, 1, 0, 106)])
def test_header_names_the_version_that_built_the_plan(tmp_path, version):
    path = write(tmp_path / "model.plan", plan_bytes(version))
    header = read_plan_header(path)
    assert header.magic_ok and header.serialization_version == 0 and header.offset == 0
    assert header.version == version
    assert header.tensorrt_version == ".".join(map(str, version))
    assert header.release == ".".join(map(str, version[:3]))
    assert header.size == path.stat().st_size


def test_only_the_header_is_read(tmp_path, monkeypatch):
    path = write(tmp_path / "big.plan", plan_bytes((10, 3, 0, 26), body=b"\xff" * 5_000_000))
    reads: list[int] = []
    real_open = open

    class Counting(io.FileIO):
        def read(self, size=-1):
            reads.append(size)
            return super().read(size)

    monkeypatch.setattr("builtins.open", lambda p, mode="r", *a, **k: Counting(p, "rb")
                        if mode == "rb" else real_open(p, mode, *a, **k))
    assert read_plan_header(path).version == (10, 3, 0, 26)
    assert reads == [28]


def test_unknown_serialization_version_is_a_plan_without_a_readable_version(tmp_path):
    path = write(tmp_path / "model.plan", plan_bytes((10, 3, 0, 26), serialization=7))
    header = read_plan_header(path)
    assert header.magic_ok and header.serialization_version == 7 and header.version is None
    preflight = preflight_plan(path, installed="10.3.0")
    assert preflight.note and "serialization version 7" in preflight.note


def _onnx_file(tmp_path: Path) -> Path:
    path = tmp_path / "model.onnx"
    onnx.save(cnn(), str(path))
    return path


@pytest.mark.parametrize(("make", "says"), [
    (lambda d: write(d / "empty.plan", b""), "the file is empty"),
    (_onnx_file, "it is an ONNX model"),
    (lambda d: write(d / "noise.plan", np.random.default_rng(3).bytes(4096)), "not TensorRT's "
     "plan tag 66 74 72 74 ('ftrt')"),
    (lambda d: write(d / "short.plan", plan_bytes((10, 3, 0, 26))[:20]), "20 bytes, fewer than "
     "the 28"),
    (lambda d: write(d / "config.pbtxt", b'name: "resnet"\nplatform: "tensorrt_plan"\n'),
     "it is text"),
    (lambda d: write(d / "model.zip", b"PK\x03\x04" + bytes(60)), "a ZIP archive"),
])
def test_a_file_that_is_not_a_plan_is_one_line_naming_it(tmp_path, make, says):
    path = make(tmp_path)
    assert not inspect_plan_header(path).magic_ok
    with pytest.raises(ModelError) as caught:
        read_plan_header(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: not a TensorRT engine: ")
    assert says in message and "\n" not in message
    assert caught.value.exit_code == EXIT_INPUT_ERROR


def test_random_bytes_never_pass_as_a_plan(tmp_path):
    rng = np.random.default_rng(0)
    for index in range(200):
        data = rng.bytes(int(rng.integers(0, 200)))
        if data[:4] == b"ftrt":
            continue
        assert not inspect_plan_header(write(tmp_path / f"{index}.bin", data)).magic_ok


def test_a_missing_engine_file_is_one_line(tmp_path):
    with pytest.raises(ModelError, match=r"missing\.plan: cannot read the engine file"):
        read_plan_header(tmp_path / "missing.plan")


def _ultralytics(plan: bytes) -> bytes:
    metadata = json.dumps({"description": "Ultralytics YOLO", "imgsz": [640, 640]}).encode()
    return struct.pack("<I", len(metadata)) + metadata + plan


def test_an_ultralytics_engine_is_read_after_its_metadata(tmp_path):
    plan = plan_bytes((10, 8, 0, 43), body=b"engine body")
    path = write(tmp_path / "yolo.engine", _ultralytics(plan))
    header = read_plan_header(path)
    assert header.version == (10, 8, 0, 43)
    assert header.offset == path.stat().st_size - len(plan)
    assert PlanBytes(path, header.offset)() == plan


def test_a_length_prefix_without_a_plan_after_it_is_not_a_plan(tmp_path):
    path = write(tmp_path / "fake.engine", _ultralytics(b"not a plan at all" * 4))
    assert not inspect_plan_header(path).magic_ok


# --- 4. Preflight: the version that built the plan against the installed one ---------------------


def test_without_tensorrt_the_note_names_the_release_the_plan_needs(tmp_path):
    path = write(tmp_path / "model.plan", plan_bytes((10, 3, 0, 26)))
    preflight = preflight_plan(path, installed=None)
    assert preflight.note == (
        f"{path}: built by TensorRT 10.3.0.26; TensorRT is not installed here, and running it "
        "needs TensorRT 10.3.0 (pip install 'tensorrt==10.3.0') on a GPU like the one that "
        "built it")


@without_tensorrt
def test_preflight_detects_that_tensorrt_is_absent(tmp_path):
    path = write(tmp_path / "model.plan", plan_bytes((11, 1, 0, 106)))
    preflight = preflight_plan(path)
    assert preflight.installed is None
    assert preflight.note and "TensorRT is not installed here" in preflight.note
    assert "TensorRT 11.1.0" in preflight.note


@pytest.mark.parametrize("installed", ["10.3.0", "10.3.0.26", "10.3.0.30"])
def test_the_same_release_passes_without_a_note(tmp_path, installed):
    path = write(tmp_path / "model.plan", plan_bytes((10, 3, 0, 26)))
    assert preflight_plan(path, installed=installed).note is None


@pytest.mark.parametrize("installed", ["10.8.0", "10.3.1", "11.1.0.106", "10.2.0"])
def test_another_release_is_an_error_that_says_how_to_fix_it(tmp_path, installed):
    path = write(tmp_path / "model.plan", plan_bytes((10, 3, 0, 26)))
    with pytest.raises(ModelError) as caught:
        preflight_plan(path, installed=installed)
    message = str(caught.value)
    assert message.startswith(f"{path}: built by TensorRT 10.3.0, installed {installed}: engines "
                              "run only on the TensorRT release that built them; rebuild it")
    assert "--saveEngine=model.plan" in message and "pip install 'tensorrt==10.3.0'" in message
    assert "\n" not in message


def test_a_version_compatible_plan_runs_on_a_newer_tensorrt_only(tmp_path):
    path = write(tmp_path / "model.plan", plan_bytes((10, 3, 0, 26)))
    newer = preflight_plan(path, installed="10.8.0", version_compatible=True)
    assert newer.note and "version-compatible" in newer.note
    with pytest.raises(ModelError, match="built by TensorRT 10.3.0, installed 10.2.0"):
        preflight_plan(path, installed="10.2.0", version_compatible=True)


# --- 4. The engine target's loader chain ----------------------------------------------------------


def test_engine_chain_streams_the_plan_through_polygraphy(tmp_path):
    path = write(tmp_path / "model.plan", plan_bytes((10, 3, 0, 26)))
    chain = engine_chain(path, "target:engine", installed=None)
    assert isinstance(chain.engine, EngineFromPath) and chain.engine._path == str(path)
    assert isinstance(chain.runner, TrtRunner) and chain.runner.name == "target:engine"
    assert chain.runner._engine_or_context is chain.engine
    assert chain.preflight.header.version == (10, 3, 0, 26)


def test_engine_chain_reads_an_ultralytics_plan_past_its_metadata(tmp_path):
    plan = plan_bytes((10, 8, 0, 43))
    path = write(tmp_path / "yolo.engine", _ultralytics(plan))
    chain = engine_chain(path, "target", installed=None)
    assert isinstance(chain.engine, EngineFromBytes)
    assert chain.engine._serialized_engine() == plan


def test_engine_runner_refuses_a_non_plan_before_building_anything(tmp_path):
    with pytest.raises(ModelError, match="it is an ONNX model"):
        engine_runner(_onnx_file(tmp_path), "target", installed=None)


def test_engine_runner_refuses_a_plan_of_another_release(tmp_path):
    path = write(tmp_path / "model.plan", plan_bytes((10, 3, 0, 26)))
    with pytest.raises(ModelError, match="installed 10.8.0"):
        engine_runner(path, "target", installed="10.8.0")


def test_nothing_imports_tensorrt_until_the_runner_runs(tmp_path):
    path = write(tmp_path / "model.plan", plan_bytes((10, 3, 0, 26)))
    script = (
        "import sys\n"
        "from trtcheck.engine.plan import engine_runner\n"
        f"runner = engine_runner({str(path)!r}, 'target', installed=None)\n"
        "assert type(runner).__name__ == 'TrtRunner', runner\n"
        "print('tensorrt' in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


@without_tensorrt
def test_running_an_engine_without_tensorrt_names_tensorrt(tmp_path):
    path = write(tmp_path / "model.plan", plan_bytes((10, 3, 0, 26)))
    runner = engine_runner(path, "target", installed=None)
    with pytest.raises(PolygraphyException, match="tensorrt"):
        runner.activate()
    assert not runner.is_active


# --- 5. Cache keys -------------------------------------------------------------------------------


def key(**changes) -> EngineCacheKey:
    fields = {
        "model_sha256": "a" * 64, "tensorrt_version": "10.8.0.43", "gpu_name": "NVIDIA L4",
        "compute_capability": "8.9",
        "builder_settings": {"target": "trt-fp16", "polygraphy_flags": ["--trt", "--fp16"],
                             "keep_fp32": []},
        "profile": {"image": [[1, 3, 32, 32], [4, 3, 32, 32], [8, 3, 32, 32]]},
        "gpu_attributes": {"multiprocessors": 58, "ecc": 1, "memory_bytes": 23_000_000_000},
    }
    fields.update(changes)
    return EngineCacheKey(**fields)


@pytest.mark.parametrize("changes", [
    {"model_sha256": "b" * 64},
    {"tensorrt_version": "10.8.0.44"},
    {"gpu_name": "NVIDIA A10"},
    {"compute_capability": "8.6"},
    {"builder_settings": {"target": "trt-fp16", "polygraphy_flags": ["--trt", "--fp16", "--tf32"],
                          "keep_fp32": []}},
    {"builder_settings": {"target": "trt-fp16", "polygraphy_flags": ["--trt", "--fp16"],
                          "keep_fp32": ["head/gemm"]}},
    {"profile": {"image": [[1, 3, 32, 32], [4, 3, 32, 32], [16, 3, 32, 32]]}},
    {"profile": {}},
    {"gpu_attributes": {"multiprocessors": 58, "ecc": 0, "memory_bytes": 23_000_000_000}},
], ids=lambda c: next(iter(c)))
def test_the_digest_changes_with_every_field(changes):
    assert key(**changes).digest != key().digest


def test_the_digest_ignores_dict_order_and_tuple_or_list():
    reordered = key(builder_settings={"keep_fp32": [], "polygraphy_flags": ("--trt", "--fp16"),
                                      "target": "trt-fp16"},
                    profile={"image": ((1, 3, 32, 32), (4, 3, 32, 32), (8, 3, 32, 32))})
    assert reordered.digest == key().digest


def test_the_digest_is_stable_across_processes():
    script = ("import sys; sys.path.insert(0, 'tests'); from test_engines import key; "
              "print(key().digest)")
    digests = {subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                              cwd=ROOT, env={**os.environ, "PYTHONHASHSEED": seed},
                              timeout=120).stdout.strip() for seed in ("1", "2")}
    assert digests == {key().digest}
    assert len(key().digest) == 64 and int(key().digest, 16) >= 0


def test_a_key_survives_json():
    assert EngineCacheKey.from_json(json.loads(json.dumps(key().to_json()))).digest == key().digest


# --- 5. The store --------------------------------------------------------------------------------

PLAN = plan_bytes((10, 8, 0, 43), body=np.random.default_rng(1).bytes(300_000))
TIMING = b"timing cache " * 1000


def test_store_then_load_gives_the_same_bytes(tmp_path):
    cache = EngineCache(tmp_path / "cache")
    folder = cache.store(key(), PLAN, TIMING)
    assert folder == tmp_path / "cache" / key().digest
    assert sorted(p.name for p in folder.iterdir()) == ["engine.plan", "key.json", "timing.cache"]
    assert (folder / "timing.cache").read_bytes() == TIMING
    assert json.loads((folder / "key.json").read_text()) == key().to_json()
    assert cache.load(key()) == PLAN
    assert cache.timing_cache(key()) == TIMING
    assert not [p for p in (tmp_path / "cache").rglob("*") if PARTIAL_TAG in p.name]


@pytest.mark.parametrize("changes", [{"tensorrt_version": "10.9.0"}, {"compute_capability": "9.0"},
                                     {"profile": {}}, {"model_sha256": "c" * 64}])
def test_any_change_misses(tmp_path, changes):
    cache = EngineCache(tmp_path)
    cache.store(key(), PLAN, TIMING)
    assert cache.load(key(**changes)) is None


def test_the_timing_cache_is_shared_by_one_device_only(tmp_path):
    cache = EngineCache(tmp_path)
    cache.store(key(), PLAN, TIMING)
    # Another model on the same TensorRT and GPU starts from the same timing cache...
    assert cache.timing_cache(key(model_sha256="d" * 64)) == TIMING
    # ...another GPU or TensorRT does not.
    assert cache.timing_cache(key(compute_capability="9.0")) is None
    assert cache.timing_cache(key(tensorrt_version="10.9.0")) is None


@pytest.mark.parametrize("damage", ["garbage plan", "bad key.json", "other key.json"])
def test_a_damaged_entry_misses_and_is_replaced(tmp_path, damage):
    cache = EngineCache(tmp_path)
    folder = cache.store(key(), PLAN, TIMING)
    if damage == "garbage plan":
        (folder / "engine.plan").write_bytes(b"\x00" * 100)
    elif damage == "bad key.json":
        (folder / "key.json").write_text("{")
    else:
        (folder / "key.json").write_text(json.dumps(key(gpu_name="other").to_json()))
    assert cache.load(key()) is None
    cache.store(key(), PLAN, TIMING)
    assert cache.load(key()) == PLAN


def test_a_hit_counts_as_a_use(tmp_path):
    cache = EngineCache(tmp_path)
    folder = cache.store(key(), PLAN)
    os.utime(folder / "engine.plan", (1, 1))
    assert cache.list()[0].last_used == 1
    cache.load(key())
    assert time.time() - cache.list()[0].last_used < 60


def _store_after_barrier(root: str, barrier, writer: int, rounds: int) -> None:
    cache = EngineCache(Path(root))
    for index in range(rounds):
        barrier.wait()
        mark = bytes([writer]) * 200_000
        cache.store(key(model_sha256=f"{index:064x}"), PLAN[:28] + mark, mark * 2)


def _read_while_writing(root: str, rounds: int, seen) -> None:
    cache = EngineCache(Path(root))
    deadline = time.time() + 60
    while time.time() < deadline and len(seen) < rounds:
        for index in range(rounds):
            plan = cache.load(key(model_sha256=f"{index:064x}"))
            if plan is not None:
                body = plan[28:]
                assert len(body) == 200_000 and body in (b"\x01" * 200_000, b"\x02" * 200_000)
                seen[index] = True


def test_two_processes_storing_one_key_leave_one_whole_entry(tmp_path):
    rounds = 12
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(2)
    seen = context.Manager().dict()
    writers = [context.Process(target=_store_after_barrier, args=(str(tmp_path), barrier, w,
                                                                  rounds)) for w in (1, 2)]
    reader = context.Process(target=_read_while_writing, args=(str(tmp_path), rounds, seen))
    for process in [reader, *writers]:
        process.start()
    for process in [*writers, reader]:
        process.join(120)
        assert process.exitcode == 0
    cache = EngineCache(tmp_path)
    assert len(cache.list()) == rounds and len(seen) == rounds
    for entry in cache.list():
        plan = (entry.folder / "engine.plan").read_bytes()
        timing = (entry.folder / "timing.cache").read_bytes()
        writer = plan[28]
        # Both files of an entry come from the same writer: never a mix of two stores.
        assert plan[28:] == bytes([writer]) * 200_000 and timing == bytes([writer]) * 400_000
    assert not [p for p in tmp_path.rglob("*") if PARTIAL_TAG in p.name]


# --- 5. list and clear ---------------------------------------------------------------------------


def _three_entries(root: Path) -> tuple[EngineCache, list[EngineCacheKey]]:
    cache = EngineCache(root)
    keys = [key(model_sha256=f"{i:064x}") for i in range(3)]
    now = time.time()
    for age_days, entry_key in zip((0, 10, 40), keys, strict=True):
        folder = cache.store(entry_key, PLAN, TIMING)
        stamp = now - age_days * 86400
        os.utime(folder / "engine.plan", (stamp, stamp))
    return cache, keys


def test_list_shows_keys_sizes_and_last_use_newest_first(tmp_path):
    cache, keys = _three_entries(tmp_path)
    entries = cache.list()
    assert [entry.digest for entry in entries] == [k.digest for k in keys]
    assert [entry.key.model_sha256 for entry in entries if entry.key] == [
        k.model_sha256 for k in keys]
    expected_size = len(PLAN) + len(TIMING) + (entries[0].folder / "key.json").stat().st_size
    assert {entry.size for entry in entries} == {expected_size}
    ages = [(time.time() - entry.last_used) / 86400 for entry in entries]
    assert ages == sorted(ages) and round(ages[2]) == 40


def test_clear_older_than(tmp_path):
    cache, keys = _three_entries(tmp_path)
    removed = cache.clear(older_than_days=5)
    assert {entry.digest for entry in removed} == {keys[1].digest, keys[2].digest}
    assert [entry.digest for entry in cache.list()] == [keys[0].digest]
    assert cache.load(keys[0]) == PLAN and cache.load(keys[1]) is None


def test_clear_by_key_prefix(tmp_path):
    cache, keys = _three_entries(tmp_path)
    removed = cache.clear(digests=[keys[1].digest[:12]])
    assert [entry.digest for entry in removed] == [keys[1].digest]
    assert {entry.digest for entry in cache.list()} == {keys[0].digest, keys[2].digest}


@pytest.mark.parametrize(("prefix", "says"), [("abc", "too short"), ("0" * 12, "matches no entry")])
def test_clear_by_a_bad_key_is_a_usage_error(tmp_path, prefix, says):
    cache, _ = _three_entries(tmp_path)
    with pytest.raises(UsageError, match=says):
        cache.clear(digests=[prefix])
    assert len(cache.list()) == 3


def test_clear_all_removes_entries_and_timing_caches(tmp_path):
    cache, _ = _three_entries(tmp_path)
    assert (tmp_path / "timing").is_dir()
    assert len(cache.clear(everything=True)) == 3
    assert cache.list() == [] and list(tmp_path.iterdir()) == []


def test_the_default_root_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("TRTCHECK_ENGINE_CACHE", raising=False)
    monkeypatch.delenv("TRTCHECK_CACHE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_root() == tmp_path / "home" / ".cache" / "trtcheck" / "engines"
    monkeypatch.setenv("TRTCHECK_CACHE", str(tmp_path / "downloads"))
    assert default_cache_root() == tmp_path / "downloads" / "engines"
    monkeypatch.setenv("TRTCHECK_ENGINE_CACHE", str(tmp_path / "engines"))
    assert default_cache_root() == tmp_path / "engines"
    assert EngineCache().root == tmp_path / "engines"


# --- 5. The cached engine loader ------------------------------------------------------------------

DEVICE = DeviceIdentity("NVIDIA L4", "8.9", {"multiprocessors": 58})
SPEC = BuildSpec("e" * 64, {"target": "trt-fp16"}, {})


class Builds:
    """Stands in for TensorRT's build: a plan per call, and the timing cache it was given."""

    def __init__(self) -> None:
        self.given: list[bytes | None] = []

    def __call__(self, timing: bytes | None) -> tuple[bytes, bytes]:
        self.given.append(timing)
        count = len(self.given)
        return plan_bytes((10, 8, 0, 43), body=b"build %d" % count), b"timing %d" % count


def _loader(cache: EngineCache, builds: Builds, spec: BuildSpec = SPEC,
            device: DeviceIdentity = DEVICE) -> CachedEngine:
    return CachedEngine("network", "config", spec, cache, identify=lambda: device,
                        version=lambda: "10.8.0.43", build=builds, deserialize=lambda b: b)


def test_cached_engine_builds_once_then_reuses(tmp_path):
    cache, builds = EngineCache(tmp_path), Builds()
    first = _loader(cache, builds)
    assert first() == plan_bytes((10, 8, 0, 43), body=b"build 1") and first.outcome == "built"
    again = _loader(cache, builds)
    assert again() == plan_bytes((10, 8, 0, 43), body=b"build 1") and again.outcome == "reused"
    assert builds.given == [None]


@pytest.mark.parametrize("change", ["spec", "device"])
def test_cached_engine_rebuilds_when_the_key_changes(tmp_path, change):
    cache, builds = EngineCache(tmp_path), Builds()
    _loader(cache, builds)()
    spec = BuildSpec("e" * 64, {"target": "trt-bf16"}, {}) if change == "spec" else SPEC
    device = DeviceIdentity("NVIDIA H100", "9.0", {"multiprocessors": 132}) \
        if change == "device" else DEVICE
    loader = _loader(cache, builds, spec, device)
    assert loader().endswith(b"build 2") and loader.outcome == "built"
    # Same TensorRT and GPU: the second build starts from the first one's timing cache.
    assert builds.given == [None, b"timing 1" if change == "spec" else None]
    assert len(cache.list()) == 2


def test_cached_engine_without_a_known_gpu_builds_and_stores_nothing(tmp_path):
    cache, builds = EngineCache(tmp_path / "cache"), Builds()

    def unknown() -> DeviceIdentity:
        raise CacheUnavailable("the CUDA driver (libcuda.so.1) cannot be loaded: not found")

    loader = CachedEngine("network", "config", SPEC, cache, identify=unknown,
                          version=lambda: "10.8.0", build=builds, deserialize=lambda b: b)
    assert loader().endswith(b"build 1") and loader().endswith(b"build 2")
    assert loader.outcome == ("not cached: the CUDA driver (libcuda.so.1) cannot be loaded: "
                              "not found")
    assert not (tmp_path / "cache").exists()


def test_cached_engine_without_a_tensorrt_version_stores_nothing(tmp_path):
    builds = Builds()
    loader = CachedEngine("n", "c", SPEC, EngineCache(tmp_path / "c"), identify=lambda: DEVICE,
                          version=lambda: None, build=builds, deserialize=lambda b: b)
    loader()
    assert loader.outcome == "not cached: the installed TensorRT's version cannot be read"
    assert not (tmp_path / "c").exists()


def test_identify_device_without_the_driver_gives_the_reason():
    with pytest.raises(CacheUnavailable, match=r"the CUDA driver \(libcuda-absent\.so\.0\) "
                                               "cannot be loaded"):
        identify_device(library="libcuda-absent.so.0")


@pytest.mark.skipif(ctypes.util.find_library("cuda") is not None,
                    reason="a CUDA driver is installed here; this checks a machine without one")
def test_identify_device_on_this_machine_without_a_driver():
    with pytest.raises(CacheUnavailable, match="CUDA driver"):
        identify_device()


# --- 5. Plugging into trt_chain ------------------------------------------------------------------


def _model(tmp_path: Path, batch: int | str = 1):
    path = tmp_path / "model.onnx"
    onnx.save(cnn(batch=batch), str(path))
    return load_model(path)


def _trt_chain(model, target: str, options: BackendOptions):
    backend = get_backend(target)
    plan = PrecisionPlan(backend.precision, options.keep_fp32)
    return trt_chain(model, backend, plan, options, name=f"target:{target}")


def test_cached_chain_wraps_the_chains_network_and_config(tmp_path):
    model = _model(tmp_path)
    options = BackendOptions(trt_major=10)
    chain = _trt_chain(model, "trt-fp16", options)
    spec = build_spec(chain, model, get_backend("trt-fp16"), options)
    cached = cached_chain(chain, spec, EngineCache(tmp_path / "cache"))
    assert isinstance(cached.engine, CachedEngine)
    assert cached.engine.network is chain.network and cached.engine.config is chain.config
    assert cached.runner._engine_or_context is cached.engine
    assert cached.runner.name == "target:trt-fp16" and cached.config is chain.config
    assert spec.model_sha256 == hashlib.sha256(model.path.read_bytes()).hexdigest()
    assert spec.builder_settings["polygraphy_flags"] == ["--trt", "--fp16"]


def test_build_spec_holds_the_profile_and_differs_per_setting(tmp_path):
    model = _model(tmp_path, batch="N")
    backend = get_backend("trt-fp16")
    specs = {}
    for label, options in {
        "plain": BackendOptions(trt_major=10, shapes={"image": (4, 3, 32, 32)}),
        "batch 8": BackendOptions(trt_major=10, shapes={"image": (8, 3, 32, 32)}),
        "tf32": BackendOptions(trt_major=10, tf32=True, shapes={"image": (4, 3, 32, 32)}),
        "keep": BackendOptions(trt_major=11, keep_fp32=frozenset({"head/gemm"}),
                               shapes={"image": (4, 3, 32, 32)}, work_dir=tmp_path / "w"),
    }.items():
        chain = _trt_chain(model, "trt-fp16", options)
        specs[label] = build_spec(chain, model, backend, options)
    assert specs["plain"].profile == {"image": [[4, 3, 32, 32]] * 3}
    digests = {label: spec.key("10.8.0", DEVICE).digest for label, spec in specs.items()}
    assert len(set(digests.values())) == len(digests)
    marked = build_spec(_trt_chain(model, "trt-fp16", BackendOptions(trt_major=10)), model,
                        backend, BackendOptions(trt_major=10), mark=["trunk/r1"])
    assert marked.builder_settings["marked_outputs"] == ["trunk/r1"]


def test_polygraphy_keeps_the_timing_cache_where_the_loader_sets_it():
    # CachedEngine hands its timing cache to a copy of the chain's CreateConfig through this
    # attribute; a Polygraphy that renames it fails here, not silently on a GPU.
    config = CreateConfig(fp16=True, load_timing_cache="/some/path")
    assert config.timing_cache_path == "/some/path"


@without_tensorrt
def test_a_cached_chain_without_tensorrt_fails_naming_tensorrt_and_stores_nothing(tmp_path):
    model = _model(tmp_path)
    options = BackendOptions(trt_major=10)
    chain = _trt_chain(model, "trt", options)
    cached = cached_chain(chain, build_spec(chain, model, get_backend("trt"), options),
                          EngineCache(tmp_path / "cache"))
    with pytest.raises(PolygraphyException, match="tensorrt"):
        cached.runner.activate()
    assert cached.engine.outcome and cached.engine.outcome.startswith("not cached: ")
    assert not (tmp_path / "cache").exists()


# --- 5. trtcheck cache list|clear ----------------------------------------------------------------


def _cli(*argv: str) -> tuple[int, str]:
    from trtcheck.cli import build_parser

    out = io.StringIO()
    with redirect_stdout(out):
        code = run_cache(build_parser().parse_args(list(argv)))
    return code, out.getvalue()


def test_cache_list_and_clear_commands(tmp_path):
    cache, keys = _three_entries(tmp_path)
    code, text = _cli("cache", "list", "--cache-dir", str(tmp_path))
    lines = text.splitlines()
    assert code == 0 and len(lines) == 4
    assert lines[0].startswith(keys[0].digest[:12]) and "TensorRT 10.8.0.43" in lines[0]
    assert "NVIDIA L4 (sm 8.9)" in lines[0] and lines[3].startswith("3 engine(s)")

    code, text = _cli("cache", "list", "--json", "--cache-dir", str(tmp_path))
    listed = json.loads(text)
    assert [entry["key"] for entry in listed] == [k.digest for k in keys]
    assert listed[0]["fields"] == keys[0].to_json()

    code, text = _cli("cache", "clear", "--older-than", "30", "--cache-dir", str(tmp_path))
    assert code == 0 and text.startswith("removed 1 engine(s)")
    code, text = _cli("cache", "clear", keys[0].digest[:8], "--cache-dir", str(tmp_path))
    assert text.startswith("removed 1 engine(s)")
    assert [entry.digest for entry in cache.list()] == [keys[1].digest]
    code, text = _cli("cache", "clear", "--all", "--cache-dir", str(tmp_path))
    assert text.startswith("removed 1 engine(s)") and cache.list() == []


@pytest.mark.parametrize(("argv", "says"), [
    ((), "say what to clear"),
    (("--older-than", "-1"), r"--older-than -1 \(days\): must be a finite number >= 0"),
    (("--older-than", "nan"), r"--older-than nan \(days\): must be a finite number"),
])
def test_cache_clear_without_a_choice_is_a_usage_error(tmp_path, argv, says):
    with pytest.raises(UsageError, match=says):
        _cli("cache", "clear", *argv, "--cache-dir", str(tmp_path))


# --- 6. trtcheck compare --target-engine ---------------------------------------------------------


@pytest.mark.skipif(tensorrt_usable(), reason="TensorRT is installed here; this checks the "
                                              "message shown without it")
def test_compare_with_a_prebuilt_engine_names_the_tensorrt_it_needs(trtcheck_cli, save_model,
                                                                    tmp_path):
    from zoo.build import cnn

    model = save_model(cnn(), "cnn.onnx")
    (tmp_path / "model.plan").write_bytes(plan_bytes((10, 3, 0, 26)))
    run = trtcheck_cli("compare", model, "--target-engine", "model.plan")
    assert run.code == 3, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "built by TensorRT 10.3.0.26" in lines[0]
    assert "pip install 'tensorrt==10.3.0'" in lines[0]
    # An ONNX file given as the engine is one line, exit 2, before anything runs.
    run = trtcheck_cli("compare", model, "--target-engine", model)
    assert run.code == 2 and "not a TensorRT engine: it is an ONNX model" in run.stderr
    run = trtcheck_cli("compare", model, "--target-engine", "model.plan", "--target",
                       "onnxrt-fp16")
    assert run.code == 2 and "a TensorRT engine runs on a trt target" in run.stderr
