"""The TensorRT loader chains, checked without TensorRT, against Polygraphy's own CLI.

Nothing here imports `tensorrt`: Polygraphy's loaders are lazy, so a chain can be built and its
settings read on any machine. `polygraphy run ... --gen-script` also works without TensorRT and
serves as the oracle for which builder settings a set of flags means.
"""

from __future__ import annotations

import ast
import inspect
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from polygraphy.backend.trt import NetworkFromOnnxPath, PostprocessNetwork, Profile
from polygraphy.exception import PolygraphyException

from trtcheck.backend_names import get_backend
from trtcheck.backends import (
    BackendOptions,
    ConvertedOnnxPath,
    KeepLayersInFp32,
    default_target,
    make_runner,
    polygraphy_flags,
    tensorrt_usable,
    tensorrt_version,
    trt_chain,
)
from trtcheck.errors import EXIT_COULD_NOT_RUN, BackendUnavailableError
from trtcheck.model import LoadedModel, load_model
from trtcheck.precision import PrecisionPlan, emulate
from zoo.build import cnn, overflow_chain, two_heads

TRT_TARGETS = ("trt", "trt-fp16", "trt-bf16")
REDUCED_ONNX_TYPE = {"fp16": onnx.TensorProto.FLOAT16, "bf16": onnx.TensorProto.BFLOAT16}
IMAGE_SHAPE = (4, 3, 32, 32)

without_tensorrt = pytest.mark.skipif(
    tensorrt_usable(), reason="TensorRT is installed here; this checks the message shown without it"
)


def _load(tmp_path: Path, proto: onnx.ModelProto, name: str = "model.onnx") -> LoadedModel:
    path = tmp_path / name
    onnx.save(proto, str(path))
    return load_model(path)


def _chain(model: LoadedModel, target: str, options: BackendOptions):
    backend = get_backend(target)
    plan = PrecisionPlan(backend.precision, options.keep_fp32)
    return trt_chain(model, backend, plan, options, name=f"target:{target}")


def _precision_flags(config) -> dict[str, bool]:
    return {"fp16": config.fp16, "bf16": config.bf16}


def _profile_shapes(profile: Profile) -> dict[str, tuple[tuple[int, ...], ...]]:
    return {name: tuple(tuple(shape) for shape in shapes) for name, shapes in profile.items()}


# --- 1. The chain on TensorRT 10 and 11 ----------------------------------------------------------


@pytest.mark.parametrize("target", TRT_TARGETS)
@pytest.mark.parametrize("tf32", [False, True])
def test_trt10_chain_sets_builder_flags_for_the_target(tmp_path, target, tf32):
    model = _load(tmp_path, cnn())
    chain = _chain(model, target, BackendOptions(trt_major=10, tf32=tf32))
    precision = get_backend(target).precision

    assert chain.trt_major == 10
    assert _precision_flags(chain.config) == {
        "fp16": precision == "fp16", "bf16": precision == "bf16"}
    assert chain.config.tf32 is tf32
    # TensorRT 10 reads the original model and builds a weakly typed network.
    assert chain.onnx_path == str(model.path)
    assert isinstance(chain.network, NetworkFromOnnxPath)
    assert chain.network.path == str(model.path)
    assert chain.network.strongly_typed is False
    assert chain.config.precision_constraints is None


@pytest.mark.parametrize("target", TRT_TARGETS)
@pytest.mark.parametrize("tf32", [False, True])
def test_trt11_chain_is_strongly_typed_without_precision_flags(tmp_path, target, tf32):
    model = _load(tmp_path, cnn())
    options = BackendOptions(trt_major=11, tf32=tf32, work_dir=tmp_path / "work")
    chain = _chain(model, target, options)

    assert chain.trt_major == 11
    assert isinstance(chain.network, NetworkFromOnnxPath)
    assert chain.network.strongly_typed is True
    # Strongly typed networks take precision from tensor types, never from builder flags.
    assert _precision_flags(chain.config) == {"fp16": False, "bf16": False}
    assert chain.config.tf32 is tf32
    assert chain.config.precision_constraints is None
    # The network parses exactly what the chain says it parses.
    assert chain.network.path is chain.onnx_path
    if target == "trt":
        assert chain.onnx_path == str(model.path)
    else:
        assert isinstance(chain.onnx_path, ConvertedOnnxPath)


def test_trt11_chain_is_lazy_and_writes_nothing_until_called(tmp_path):
    model = _load(tmp_path, cnn())
    work = tmp_path / "work"
    _chain(model, "trt-fp16", BackendOptions(trt_major=11, work_dir=work))
    assert not work.exists()


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
@pytest.mark.parametrize("builder", [cnn, two_heads], ids=["cnn", "two_heads"])
def test_trt11_converted_model_is_valid_and_reduced(tmp_path, precision, builder):
    model = _load(tmp_path, builder())
    work = tmp_path / "work"
    chain = _chain(model, f"trt-{precision}", BackendOptions(trt_major=11, work_dir=work))

    written = chain.onnx_path()

    assert Path(written) == work / f"model.{precision}.onnx"
    assert sorted(p.name for p in work.iterdir()) == [f"model.{precision}.onnx"]  # no .partial
    converted = onnx.load(written)
    onnx.checker.check_model(converted)
    onnx.shape_inference.infer_shapes(converted, strict_mode=True)
    # Every float weight of the fp32 model is stored in the reduced type.
    assert model.proto.graph.initializer
    assert {init.data_type for init in model.proto.graph.initializer} == {
        onnx.TensorProto.FLOAT}
    assert {init.data_type for init in converted.graph.initializer} == {
        REDUCED_ONNX_TYPE[precision]}
    # The graph's interface is unchanged: fp32 in, fp32 out, same names.
    original_io = [(v.name, v.type.tensor_type.elem_type)
                   for v in [*model.proto.graph.input, *model.proto.graph.output]]
    converted_io = [(v.name, v.type.tensor_type.elem_type)
                    for v in [*converted.graph.input, *converted.graph.output]]
    assert converted_io == original_io
    assert {elem_type for _, elem_type in converted_io} == {onnx.TensorProto.FLOAT}
    # The reduced nodes really compute in the reduced type: Casts were added at the boundaries.
    assert any(node.op_type == "Cast" for node in converted.graph.node)
    assert not any(node.op_type == "Cast" for node in model.proto.graph.node)


def test_trt11_converted_fp16_model_passes_full_onnx_check(tmp_path):
    model = _load(tmp_path, two_heads())
    chain = _chain(model, "trt-fp16", BackendOptions(trt_major=11, work_dir=tmp_path / "w"))
    onnx.checker.check_model(onnx.load(chain.onnx_path()), full_check=True)


def test_trt11_converted_model_never_goes_beside_the_model(tmp_path):
    model = _load(tmp_path, cnn(), name="net.onnx")
    # A file of the converted model's old default name, which is the user's, not trtcheck's.
    (tmp_path / "net.fp16.onnx").write_bytes(b"mine")
    chain = _chain(model, "trt-fp16", BackendOptions(trt_major=11))
    written = Path(chain.onnx_path())
    assert written.parent != tmp_path and written.name == "net.fp16.onnx"
    assert written.parent.is_relative_to(tempfile.gettempdir()) and written.is_file()
    assert (tmp_path / "net.fp16.onnx").read_bytes() == b"mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["net.fp16.onnx", "net.onnx"]


def test_trt11_keep_fp32_stays_fp32_in_the_converted_model(tmp_path):
    model = _load(tmp_path, cnn())
    options = BackendOptions(trt_major=11, keep_fp32=frozenset({"head/gemm"}),
                             work_dir=tmp_path / "work")
    chain = _chain(model, "trt-fp16", options)
    # TensorRT 11 gets no layer constraints: the converted model carries the decision.
    assert chain.config.precision_constraints is None
    assert not isinstance(chain.network, PostprocessNetwork)

    converted = onnx.load(chain.onnx_path())
    types = {init.name: init.data_type for init in converted.graph.initializer}
    assert types["head.w"] == types["head.b"] == onnx.TensorProto.FLOAT
    assert types["trunk.w1__fp16"] == onnx.TensorProto.FLOAT16
    assert "trunk.w1" not in types


@pytest.mark.skipif(tensorrt_version() is not None, reason="TensorRT is installed here")
def test_trt_major_defaults_to_10_without_tensorrt(tmp_path):
    model = _load(tmp_path, cnn())
    chain = _chain(model, "trt-fp16", BackendOptions())
    assert chain.trt_major == 10
    assert chain.config.fp16 is True
    assert chain.network.strongly_typed is False


@pytest.mark.parametrize("major", [10, 11])
def test_chain_is_wired_config_to_engine_to_runner(tmp_path, major):
    model = _load(tmp_path, cnn())
    chain = _chain(model, "trt-fp16", BackendOptions(trt_major=major, work_dir=tmp_path / "w"))
    # Private attributes of Polygraphy 0.53: the engine builds this network with this config.
    assert chain.engine._network is chain.network
    assert chain.engine._config is chain.config
    assert chain.runner._engine_or_context is chain.engine
    assert chain.runner.name == "target:trt-fp16"


# --- 2. Dynamic shapes ---------------------------------------------------------------------------


@pytest.mark.parametrize("major", [10, 11])
def test_dynamic_batch_gets_one_fixed_profile(tmp_path, major):
    model = _load(tmp_path, cnn(batch="N"))
    options = BackendOptions(trt_major=major, shapes={"image": IMAGE_SHAPE}, work_dir=tmp_path)
    chain = _chain(model, "trt-fp16", options)

    (profile,) = chain.config.profiles
    assert _profile_shapes(profile) == {"image": (IMAGE_SHAPE, IMAGE_SHAPE, IMAGE_SHAPE)}


def test_static_model_gets_no_profile(tmp_path):
    model = _load(tmp_path, cnn(batch=1))
    # A shape for a static input is not a reason for a profile.
    options = BackendOptions(trt_major=10, shapes={"image": (1, 3, 32, 32)})
    chain = _chain(model, "trt-fp16", options)
    # Polygraphy stands in a single empty Profile for "none given" (it derives one at build time).
    assert all(len(profile) == 0 for profile in chain.config.profiles)


def test_dynamic_model_without_shapes_gets_no_profile(tmp_path):
    model = _load(tmp_path, cnn(batch="N"))
    chain = _chain(model, "trt", BackendOptions(trt_major=10))
    assert all(len(profile) == 0 for profile in chain.config.profiles)


# --- 3. keep_fp32 on TensorRT 10 -----------------------------------------------------------------


def test_trt10_keep_fp32_obeys_constraints_and_pins_layers(tmp_path):
    model = _load(tmp_path, cnn())
    keep = frozenset({"head/gemm", "trunk/conv1"})
    chain = _chain(model, "trt-fp16", BackendOptions(trt_major=10, keep_fp32=keep))

    assert chain.config.fp16 is True
    assert chain.config.precision_constraints == "obey"
    assert isinstance(chain.network, PostprocessNetwork)
    func = chain.network._func
    assert isinstance(func, KeepLayersInFp32)
    assert func.node_names == keep
    # PostprocessNetwork calls `func(network=...)`; the keyword must bind.
    inspect.signature(func).bind(network=object())
    # The postprocessing wraps the original model's parser.
    inner = chain.network._network
    assert isinstance(inner, NetworkFromOnnxPath) and inner.path == str(model.path)
    assert chain.engine._network is chain.network


def test_trt10_keep_fp32_does_nothing_for_fp32(tmp_path):
    model = _load(tmp_path, cnn())
    chain = _chain(model, "trt", BackendOptions(trt_major=10, keep_fp32=frozenset({"head/gemm"})))
    assert chain.config.precision_constraints is None
    assert isinstance(chain.network, NetworkFromOnnxPath)


@pytest.mark.parametrize(
    ("layer", "expected"),
    [
        ("node", True),
        ("node_1", True),
        ("node/sub", True),
        ("node/sub/deeper_2", True),
        ("node2", False),
        ("nodes", False),
        ("xnode", False),
        ("other", False),
        ("other_1", False),
        ("", False),
    ],
)
def test_keep_layers_matches_node_names(layer, expected):
    assert KeepLayersInFp32(frozenset({"node"})).matches(layer) is expected


def test_keep_layers_matches_any_kept_node():
    keep = KeepLayersInFp32(frozenset({"a/conv", "b"}))
    assert keep.matches("a/conv_3") and keep.matches("b/x")
    assert not keep.matches("a") and not keep.matches("a/conv2")


def _renamed(proto: onnx.ModelProto, renames: dict[str, str]) -> onnx.ModelProto:
    for node in proto.graph.node:
        node.name = renames.get(node.name, node.name)
    return proto


def test_trt10_keep_fp32_does_not_pin_a_different_node_with_a_longer_name(tmp_path):
    model = _load(tmp_path, _renamed(cnn(), {"trunk/relu1": "trunk/conv1_relu"}))
    assert "trunk/conv1_relu" in {node.name for node in model.proto.graph.node}
    chain = _chain(model, "trt-fp16",
                   BackendOptions(trt_major=10, keep_fp32=frozenset({"trunk/conv1"})))
    func = chain.network._func
    assert func.matches("trunk/conv1")
    # onnx-tensorrt names this layer after its own node, which the plan runs in fp16.
    assert not func.matches("trunk/conv1_relu")


# --- 4. Polygraphy's CLI as the oracle -----------------------------------------------------------


def _generated_loaders(model_path: Path, flags: list[str], tmp_path: Path):
    """Runs `polygraphy run --gen-script`; returns CreateTrtConfig's kwargs and the profiles."""
    polygraphy = Path(sys.executable).parent / "polygraphy"
    script = tmp_path / "generated.py"
    completed = subprocess.run(
        [str(polygraphy), "run", str(model_path), *flags, "--onnxrt", "--gen-script", str(script)],
        capture_output=True, text=True, timeout=120,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    tree = ast.parse(script.read_text())
    configs = [node for node in ast.walk(tree) if isinstance(node, ast.Call)
               and isinstance(node.func, ast.Name) and node.func.id == "CreateTrtConfig"]
    assert len(configs) == 1, script.read_text()
    kwargs = {kw.arg: kw.value for kw in configs[0].keywords}
    literal = {name: ast.literal_eval(value) for name, value in kwargs.items()
               if name != "profiles"}
    profiles = []
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr == "add"):
            name = ast.literal_eval(node.args[0])
            shapes = {kw.arg: tuple(ast.literal_eval(kw.value)) for kw in node.keywords}
            profiles.append({name: (shapes["min"], shapes["opt"], shapes["max"])})
    assert ("profiles" in kwargs) == bool(profiles)
    return literal, profiles


def _assert_config_agrees(config, generated: dict) -> None:
    # Polygraphy leaves out settings at their defaults (False, or None for the constraints).
    assert set(generated) <= {"fp16", "bf16", "tf32", "precision_constraints"}, generated
    assert config.fp16 is generated.get("fp16", False)
    assert config.bf16 is generated.get("bf16", False)
    assert config.tf32 is generated.get("tf32", False)
    assert config.precision_constraints == generated.get("precision_constraints")


@pytest.mark.parametrize(("flag", "target"), [("--fp16", "trt-fp16"), ("--bf16", "trt-bf16")])
def test_polygraphy_cli_agrees_on_reduced_precision(tmp_path, flag, target):
    model = _load(tmp_path, cnn())
    generated, profiles = _generated_loaders(model.path, ["--trt", flag], tmp_path)
    assert generated[flag.removeprefix("--")] is True
    assert profiles == []

    chain = _chain(model, target, BackendOptions(trt_major=10))
    _assert_config_agrees(chain.config, generated)
    assert chain.config.fp16 is (flag == "--fp16")
    assert chain.config.bf16 is (flag == "--bf16")
    assert chain.config.tf32 is False


def test_polygraphy_cli_agrees_on_dynamic_shapes(tmp_path):
    model = _load(tmp_path, cnn(batch="N"))
    shape = "image:[4,3,32,32]"
    flags = ["--trt", "--fp16", "--trt-min-shapes", shape, "--trt-opt-shapes", shape,
             "--trt-max-shapes", shape]
    generated, profiles = _generated_loaders(model.path, flags, tmp_path)
    assert profiles == [{"image": (IMAGE_SHAPE, IMAGE_SHAPE, IMAGE_SHAPE)}]

    chain = _chain(model, "trt-fp16",
                   BackendOptions(trt_major=10, shapes={"image": IMAGE_SHAPE}))
    _assert_config_agrees(chain.config, generated)
    assert [_profile_shapes(profile) for profile in chain.config.profiles] == profiles


@pytest.mark.parametrize(
    ("target", "options"),
    [
        ("trt", BackendOptions(trt_major=10)),
        ("trt", BackendOptions(trt_major=10, tf32=True)),
        ("trt-fp16", BackendOptions(trt_major=10)),
        ("trt-bf16", BackendOptions(trt_major=10, tf32=True)),
        ("trt-fp16", BackendOptions(trt_major=10, keep_fp32=frozenset({"head/gemm"}))),
        ("trt-bf16", BackendOptions(trt_major=10, keep_fp32=frozenset({"trunk/conv1"}))),
    ],
    ids=["fp32", "fp32-tf32", "fp16", "bf16-tf32", "fp16-keep", "bf16-keep"],
)
def test_our_polygraphy_flags_mean_our_chain_config(tmp_path, target, options):
    """The repro flags, fed to Polygraphy, give the builder settings our chain uses."""
    model = _load(tmp_path, cnn())
    flags = polygraphy_flags(get_backend(target), options, options.trt_major)
    generated, _ = _generated_loaders(model.path, flags, tmp_path)
    _assert_config_agrees(_chain(model, target, options).config, generated)


# --- 5, 6. Without TensorRT ----------------------------------------------------------------------


@without_tensorrt
@pytest.mark.parametrize("target", TRT_TARGETS)
def test_make_runner_without_tensorrt_says_how_to_install(tmp_path, target):
    model = _load(tmp_path, cnn())
    with pytest.raises(BackendUnavailableError) as caught:
        make_runner(model, get_backend(target), BackendOptions(), "target")
    message = str(caught.value)
    assert "pip install" in message
    assert message.startswith(f"{target}:")
    assert "onnxrt-fp16" in message  # the way forward without a GPU
    assert caught.value.exit_code == EXIT_COULD_NOT_RUN == 3


def test_make_runner_for_onnxrt_needs_no_tensorrt(tmp_path):
    from polygraphy.backend.onnxrt import OnnxrtRunner

    model = _load(tmp_path, cnn())
    runner = make_runner(model, get_backend("onnxrt-fp16"), BackendOptions(), "target")
    assert isinstance(runner, OnnxrtRunner) and runner.name == "target"


@without_tensorrt
@pytest.mark.parametrize("major", [10, 11])
def test_activating_the_chain_without_tensorrt_names_tensorrt(tmp_path, major):
    model = _load(tmp_path, cnn())
    chain = _chain(model, "trt-fp16", BackendOptions(trt_major=major, work_dir=tmp_path / "w"))
    with pytest.raises(PolygraphyException, match="tensorrt"):
        chain.runner.activate()
    assert not chain.runner.is_active


@without_tensorrt
def test_default_target_without_tensorrt_is_emulated_fp16():
    target, reason = default_target()
    assert target == "onnxrt-fp16"
    assert "TensorRT" in reason
    assert get_backend(target).emulated


# --- 7. polygraphy_flags -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "options", "major", "expected"),
    [
        ("onnxrt", BackendOptions(), 10, ["--onnxrt"]),
        ("onnxrt", BackendOptions(tf32=True), 10, ["--onnxrt"]),
        ("onnxrt", BackendOptions(providers=("cuda", "cpu")), 10,
         ["--onnxrt", "--providers", "cuda", "cpu"]),
        ("onnxrt-fp16", BackendOptions(), 10, ["--trt", "--fp16"]),
        ("onnxrt-bf16", BackendOptions(), None, ["--trt", "--bf16"]),
        ("trt", BackendOptions(), 10, ["--trt"]),
        ("trt", BackendOptions(tf32=True), 10, ["--trt", "--tf32"]),
        ("trt-fp16", BackendOptions(), 11, ["--trt", "--fp16"]),
        ("trt-bf16", BackendOptions(tf32=True), 10, ["--trt", "--bf16", "--tf32"]),
        ("trt-fp16", BackendOptions(keep_fp32=frozenset({"b", "a/x"})), 10,
         ["--trt", "--fp16", "--precision-constraints", "obey",
          "--layer-precisions", "a/x:float32", "b:float32"]),
        ("onnxrt-fp16", BackendOptions(keep_fp32=frozenset({"n"})), None,
         ["--trt", "--fp16", "--precision-constraints", "obey", "--layer-precisions",
          "n:float32"]),
        # TensorRT 11 keeps nodes in fp32 through the converted model, not through flags.
        ("trt-fp16", BackendOptions(keep_fp32=frozenset({"n"})), 11, ["--trt", "--fp16"]),
        # An fp32 target has nothing to keep.
        ("trt", BackendOptions(keep_fp32=frozenset({"n"})), 10, ["--trt"]),
    ],
)
def test_polygraphy_flags(target, options, major, expected):
    assert polygraphy_flags(get_backend(target), options, major) == expected


# --- 8. Emulation shows fp16 overflow, not bf16 --------------------------------------------------


def _run_ort(proto: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def test_emulated_fp16_overflows_where_bf16_does_not():
    model = overflow_chain()
    x = np.random.default_rng(0).standard_normal((1, 64)).astype(np.float32)

    reference = _run_ort(model, x)
    fp16 = _run_ort(emulate(model, PrecisionPlan("fp16")), x)
    bf16 = _run_ort(emulate(model, PrecisionPlan("bf16")), x)

    assert np.isfinite(reference).all()
    assert np.isinf(fp16).any()
    # bf16 has fp32's exponent range: finite, and only rounded (8 bits of mantissa).
    assert np.isfinite(bf16).all()
    assert not np.array_equal(bf16, reference)
    np.testing.assert_allclose(bf16, reference, atol=0.1, rtol=0.05)


def test_emulated_fp16_keeping_the_overflowing_nodes_stays_finite():
    model = overflow_chain(length=12, overflow_at=6)
    x = np.random.default_rng(0).standard_normal((1, 64)).astype(np.float32)
    keep = frozenset({"chain/mul6", "chain/add6", "chain/mul7"})
    kept = _run_ort(emulate(model, PrecisionPlan("fp16", keep)), x)
    assert np.isfinite(kept).all()
    np.testing.assert_allclose(kept, _run_ort(model, x), atol=0.05, rtol=0.05)


@pytest.mark.parametrize(("target", "mark"), [("onnxrt-fp16", ()), ("onnxrt", ("hidden",))])
def test_models_over_the_protobuf_limit_run_from_a_path_with_equal_outputs(tmp_path, monkeypatch,
                                                                           target, mark):
    from trtcheck import atomic
    from trtcheck.backends import onnxrt_session_source
    from trtcheck.run import run_backend

    model = _load(tmp_path, cnn())
    hidden = next(n.output[0] for n in model.proto.graph.node if n.op_type == "Relu")
    mark = tuple(hidden for _ in mark)
    options = BackendOptions(work_dir=tmp_path / "work")
    feed = {"image": np.random.default_rng(0).random((1, 3, 32, 32), dtype=np.float32)}
    backend = get_backend(target)
    _, small = run_backend(model, backend, options, [feed], "small", mark)
    assert isinstance(onnxrt_session_source(model, backend, options, mark), bytes)

    monkeypatch.setattr(atomic, "EXTERNAL_DATA_BYTES", 1_000)  # stands in for 2 GB
    source = onnxrt_session_source(model, backend, options, mark)
    assert isinstance(source, str) and Path(source).parent == tmp_path / "work"
    assert Path(source + ".data").is_file()  # the weights beside it, as external data
    _, big = run_backend(model, backend, options, [feed], "big", mark)
    assert set(big[0].keys()) == set(small[0].keys()) >= set(mark)
    for name in small[0]:
        np.testing.assert_array_equal(big[0][name], small[0][name])


REAL_ZOO = Path(__file__).resolve().parents[1] / "zoo" / "real"


@pytest.mark.parametrize("path", sorted(REAL_ZOO.glob("*.onnx"))[:3], ids=lambda p: p.stem)
def test_weight_bytes_count_the_weights_without_reading_them(path):
    import onnx

    from trtcheck.atomic import serialized_if_fits, weight_bytes

    model = onnx.load(str(path))
    held = sum(len(t.raw_data) or onnx.numpy_helper.to_array(t).nbytes
               for t in model.graph.initializer)
    assert weight_bytes(model) == held
    data = serialized_if_fits(model)
    assert data is not None and len(data) == model.ByteSize() > held


def test_int4_weights_count_two_to_a_byte_and_a_model_over_the_limit_is_not_serialised(
        monkeypatch):
    import onnx

    from trtcheck import atomic

    weights = onnx.helper.make_tensor("w", onnx.TensorProto.INT4, [1000], b"\x11" * 500, raw=True)
    graph = onnx.helper.make_graph([], "g", [], [onnx.helper.make_tensor_value_info(
        "w", onnx.TensorProto.INT4, [1000])], [weights])
    model = onnx.helper.make_model(graph)
    assert atomic.weight_bytes(model) == len(model.graph.initializer[0].raw_data) == 500
    monkeypatch.setattr(atomic, "EXTERNAL_DATA_BYTES", 499)
    assert atomic.serialized_if_fits(model) is None and not atomic.fits_in_protobuf(model)
    monkeypatch.setattr(atomic, "EXTERNAL_DATA_BYTES", model.ByteSize())
    assert atomic.serialized_if_fits(model) == model.SerializeToString()
