"""The quantizer makes Q/DQ models by TensorRT's rules, ONNX Runtime runs them, and they are cached.

Every model is quantized for real by ONNX Runtime's quantizer and run by its CPU session; the
fp32 model run by the same session is the reference.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import TensorProto, helper, numpy_helper

import trtcheck.quant.quantize as quantize_module
from trtcheck.errors import InputDataError, UsageError
from trtcheck.inputs import InputSettings
from trtcheck.model import load_model
from trtcheck.quant.calibration_data import (
    calibration_digest,
    load_calibration_set,
    synthetic_calibration_set,
)
from trtcheck.quant.quantize import (
    ORT_FP8_DISABLED_OPTIMIZERS,
    QuantSettings,
    quantize_model,
    quantized_model_path,
)
from zoo.build import channel_outlier_cnn, cnn, transformer_block

IMAGE = (1, 3, 32, 32)


def feeds(name: str, shape: tuple[int, ...], count: int, seed: int) -> list[dict[str, np.ndarray]]:
    """Draws from the distribution the zoo models are fed (uniform [0, 1))."""
    rng = np.random.default_rng(seed)
    return [{name: rng.random(shape, dtype=np.float32)} for _ in range(count)]


def run(model: onnx.ModelProto, feed: dict[str, np.ndarray], disabled: tuple[str, ...] = ()
        ) -> np.ndarray:
    session = onnxruntime.InferenceSession(model.SerializeToString(),
                                           providers=["CPUExecutionProvider"],
                                           disabled_optimizers=list(disabled))
    return session.run(None, feed)[0]


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def mean_cosine(reference: onnx.ModelProto, quantized: onnx.ModelProto,
                test_feeds: list[dict[str, np.ndarray]], disabled: tuple[str, ...] = ()) -> float:
    return float(np.mean([cosine(run(reference, feed), run(quantized, feed, disabled))
                          for feed in test_feeds]))


def producers(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {output: node for node in model.graph.node for output in node.output}


def initializers(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    return {init.name: init for init in model.graph.initializer}


def axis_of(node: onnx.NodeProto) -> int | None:
    return next((attr.i for attr in node.attribute if attr.name == "axis"), None)


def qdq_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    return [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]


@pytest.fixture
def loaded(tmp_path: Path):
    def load(proto: onnx.ModelProto, name: str = "model.onnx"):
        path = tmp_path / name
        onnx.save(proto, str(path))
        return load_model(path)

    return load


def test_int8_cnn_follows_tensorrt_rules(loaded):
    model = loaded(cnn())
    quantized = quantize_model(model, QuantSettings("int8"), feeds("image", IMAGE, 16, 0))
    made_by, inits = producers(quantized), initializers(quantized)
    expected_axis = {"trunk/conv1": 0, "trunk/conv2": 0, "head/gemm": 1}  # Gemm weight [K, N]
    for node in quantized.graph.node:
        if node.op_type not in ("Conv", "Gemm"):
            continue
        activation, weight = made_by[node.input[0]], made_by[node.input[1]]
        assert activation.op_type == "DequantizeLinear"
        assert made_by[activation.input[0]].op_type == "QuantizeLinear"
        assert inits[activation.input[1]].dims == []  # per tensor
        assert weight.op_type == "DequantizeLinear" and axis_of(weight) == expected_axis[node.name]
        quantized_weight = numpy_helper.to_array(inits[weight.input[0]])
        assert quantized_weight.dtype == np.int8
        output_channels = quantized_weight.shape[expected_axis[node.name]]
        assert list(inits[weight.input[1]].dims) == [output_channels]
        # The bias stays float, added by TensorRT in fp32: no int32 bias DequantizeLinear.
        assert node.input[2] in inits and inits[node.input[2]].data_type == TensorProto.FLOAT
    for node in qdq_nodes(quantized):
        zero_point = numpy_helper.to_array(inits[node.input[2]])
        assert zero_point.dtype == np.int8 and not zero_point.any()
    assert not any(init.data_type == TensorProto.INT32 for init in quantized.graph.initializer)
    assert mean_cosine(model.proto, quantized, feeds("image", IMAGE, 4, 99)) > 0.99


def test_transformer_block_quantizes_every_matmul_and_keeps_tensor_names(loaded):
    model = loaded(transformer_block())
    quantized = quantize_model(model, QuantSettings("int8"), feeds("x", (1, 16, 32), 16, 0))
    made_by, inits = producers(quantized), initializers(quantized)
    matmuls = [node for node in quantized.graph.node if node.op_type == "MatMul"]
    assert len(matmuls) == 8
    for node in matmuls:
        assert all(made_by[name].op_type == "DequantizeLinear" for name in node.input)
        weight = made_by[node.input[1]]
        if weight.input[0] in inits:  # a projection: per output channel, the last axis
            columns = inits[weight.input[0]].dims[-1]
            assert axis_of(weight) == 1 and list(inits[weight.input[1]].dims) == [columns]
    # ONNX Runtime would name gelu's scale `ffn/gelu_scale`, which the model already uses.
    original = {name for node in model.proto.graph.node for name in node.output}
    assert original <= set(made_by)
    assert made_by["ffn/gelu_scale"].op_type == "Mul"
    assert mean_cosine(model.proto, quantized, feeds("x", (1, 16, 32), 4, 99)) > 0.99


def test_weight_axis_is_the_output_channel_for_conv_transpose_and_transposed_gemm(loaded):
    rng = np.random.default_rng(0)
    weights = [numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)
               for name, shape in (("up.w", (4, 6, 3, 3)), ("fc.w", (5, 6)))]
    nodes = [helper.make_node("ConvTranspose", ["x", "up.w"], ["up"], name="up", strides=[2, 2]),
             helper.make_node("GlobalAveragePool", ["up"], ["gap"], name="gap"),
             helper.make_node("Flatten", ["gap"], ["flat"], name="flat"),
             helper.make_node("Gemm", ["flat", "fc.w"], ["y"], name="fc", transB=1)]
    graph = helper.make_graph(
        nodes, "axes", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5])], weights)
    model = loaded(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    quantized = quantize_model(model, QuantSettings("int8"), feeds("x", (1, 4, 8, 8), 4, 0))
    made_by, inits = producers(quantized), initializers(quantized)
    for node_name, axis, channels in (("up", 1, 6), ("fc", 0, 5)):
        node = next(n for n in quantized.graph.node if n.name == node_name)
        weight = made_by[node.input[1]]
        assert axis_of(weight) == axis and list(inits[weight.input[1]].dims) == [channels]
    assert mean_cosine(model.proto, quantized, feeds("x", (1, 4, 8, 8), 2, 9)) > 0.99


def test_channel_outlier_collapses_in_int8_and_exclude_repairs_it(loaded):
    calibration, test = feeds("image", IMAGE, 16, 0), feeds("image", IMAGE, 4, 99)
    plain = loaded(cnn(), "cnn.onnx")
    outlier = loaded(channel_outlier_cnn(), "outlier.onnx")
    # fp32 computes the same logits: the fault is int8's alone.
    assert cosine(run(plain.proto, test[0]), run(outlier.proto, test[0])) > 0.9999
    plain_cosine = mean_cosine(plain.proto, quantize_model(plain, QuantSettings("int8"),
                                                           calibration), test)
    collapsed = mean_cosine(outlier.proto, quantize_model(outlier, QuantSettings("int8"),
                                                          calibration), test)
    assert plain_cosine > 0.99 and collapsed < 0.9 and collapsed < plain_cosine - 0.1
    repaired_model = quantize_model(outlier, QuantSettings("int8", exclude=("trunk/conv2",)),
                                    calibration)
    conv2 = next(node for node in repaired_model.graph.node if node.name == "trunk/conv2")
    assert conv2.input[0] == "trunk/r1" and conv2.input[1] == "trunk.w2"
    assert mean_cosine(outlier.proto, repaired_model, test) > 0.99


def test_fp8_cnn_is_float8_qdq_scaled_by_amax_over_448(loaded):
    model = loaded(cnn())
    calibration = feeds("image", IMAGE, 8, 0)
    quantized = quantize_model(model, QuantSettings("fp8"), calibration)
    assert next(o.version for o in quantized.opset_import if o.domain in ("", "ai.onnx")) >= 19
    inits = initializers(quantized)
    assert len(qdq_nodes(quantized)) >= 12
    for node in qdq_nodes(quantized):
        assert inits[node.input[2]].data_type == TensorProto.FLOAT8E4M3FN
        assert not numpy_helper.to_array(inits[node.input[2]]).astype(np.float32).any()
    image_amax = max(float(np.abs(feed["image"]).max()) for feed in calibration)
    image_scale = float(numpy_helper.to_array(inits["image_scale"]))
    assert image_scale == pytest.approx(image_amax / 448, rel=1e-6)
    weight = numpy_helper.to_array(inits["trunk.w1"])
    weight_scale = numpy_helper.to_array(inits["trunk.w1_scale"])
    assert weight_scale == pytest.approx(np.abs(weight).reshape(8, -1).max(axis=1) / 448,
                                         rel=1e-5)
    test = feeds("image", IMAGE, 4, 99)
    assert mean_cosine(model.proto, quantized, test, ORT_FP8_DISABLED_OPTIMIZERS) > 0.99


def test_ort_drops_relu_before_fp8_quantize_unless_told_not_to(loaded):
    """When this fails, ONNX Runtime has fixed its rule and ORT_FP8_DISABLED_OPTIMIZERS can go."""
    model = loaded(cnn())
    quantized = quantize_model(model, QuantSettings("fp8"), feeds("image", IMAGE, 8, 0))
    test = feeds("image", IMAGE, 4, 99)
    assert mean_cosine(model.proto, quantized, test) < 0.95
    assert mean_cosine(model.proto, quantized, test, ORT_FP8_DISABLED_OPTIMIZERS) > 0.99


def test_given_amax_sets_scales_and_leaves_unranged_nodes_float(loaded):
    model = loaded(cnn())
    amax = {"image": 1.0, "trunk/r1": 3.5}
    quantized = quantize_model(model, QuantSettings("int8"), amax=amax)
    inits, made_by = initializers(quantized), producers(quantized)
    for name, value in amax.items():
        scale = float(numpy_helper.to_array(inits[f"{name}_scale"]))
        assert scale == pytest.approx(value / 127, rel=1e-6)
    gemm = next(node for node in quantized.graph.node if node.op_type == "Gemm")
    assert gemm.input[0] not in made_by or made_by[gemm.input[0]].op_type != "DequantizeLinear"
    with pytest.raises(InputDataError, match="name no input"):
        quantize_model(model, QuantSettings("int8"), amax={"no/such/tensor": 1.0})
    for value in (-1.0, float("nan"), float("inf")):
        with pytest.raises(InputDataError, match="must be a finite number"):
            quantize_model(model, QuantSettings("int8"), amax={"image": value})


def test_exactly_one_source_of_ranges_and_known_settings(loaded):
    model = loaded(cnn())
    with pytest.raises(UsageError, match="exactly one"):
        quantize_model(model, QuantSettings("int8"))
    with pytest.raises(UsageError, match="exactly one"):
        quantize_model(model, QuantSettings("int8"), feeds("image", IMAGE, 1, 0), {"image": 1.0})
    with pytest.raises(UsageError, match="not in model.onnx"):
        quantize_model(model, QuantSettings("int8", exclude=("trunk/nope",)),
                       feeds("image", IMAGE, 1, 0))
    with pytest.raises(UsageError, match="not one of"):
        QuantSettings("int4")
    with pytest.raises(UsageError, match="amax / 448"):
        QuantSettings("fp8", method="entropy")


@pytest.mark.parametrize("method", ["entropy", "percentile"])
def test_other_calibration_methods_stay_accurate_on_cnn(loaded, method):
    model = loaded(cnn())
    quantized = quantize_model(model, QuantSettings("int8", method=method),
                               feeds("image", IMAGE, 16, 0))
    assert mean_cosine(model.proto, quantized, feeds("image", IMAGE, 4, 99)) > 0.99


def test_model_with_external_data_is_quantized_without_writing_beside_it(tmp_path):
    folder = tmp_path / "user"
    folder.mkdir()
    onnx.save(cnn(), str(folder / "cnn.onnx"), save_as_external_data=True,
              all_tensors_to_one_file=True, location="cnn.onnx.data", size_threshold=0)
    model = load_model(folder / "cnn.onnx")
    assert model.has_external_data()
    quantized = quantize_model(model, QuantSettings("int8"), feeds("image", IMAGE, 4, 0))
    assert any(node.op_type == "DequantizeLinear" for node in quantized.graph.node)
    assert sorted(p.name for p in folder.iterdir()) == ["cnn.onnx", "cnn.onnx.data"]


def test_quantized_model_is_cached_by_model_data_and_settings(loaded, tmp_path, monkeypatch):
    model = loaded(cnn())
    calls = []
    real = quantize_module.quantize_model

    def counted(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(quantize_module, "quantize_model", counted)
    work = tmp_path / "work"
    calibration = feeds("image", IMAGE, 4, 0)
    first = quantized_model_path(model, QuantSettings("int8"), calibration, work)
    mtime = first.stat().st_mtime_ns
    again = quantized_model_path(model, QuantSettings("int8"), feeds("image", IMAGE, 4, 0), work)
    assert again == first and len(calls) == 1 and first.stat().st_mtime_ns == mtime
    assert any(n.op_type == "QuantizeLinear" for n in onnx.load(str(first)).graph.node)
    others = {
        quantized_model_path(model, QuantSettings("int8", per_channel=False), calibration, work),
        quantized_model_path(model, QuantSettings("int8", method="percentile"), calibration,
                             work),
        quantized_model_path(model, QuantSettings("int8", exclude=("head/gemm",)), calibration,
                             work),
        quantized_model_path(model, QuantSettings("fp8"), calibration, work),
        quantized_model_path(model, QuantSettings("int8"), feeds("image", IMAGE, 4, 1), work),
        quantized_model_path(model, QuantSettings("int8"), None, work, amax={"image": 1.0}),
    }
    assert len(others) == 6 and first not in others and len(calls) == 7
    assert not list(work.glob("*partial*"))


def save_npz(folder: Path, name: str, **arrays: np.ndarray) -> Path:
    folder.mkdir(exist_ok=True)
    np.savez(folder / name, **arrays)
    return folder / name


def test_calibration_folder_is_read_in_file_order_and_cast_losslessly(loaded, tmp_path):
    model = loaded(cnn(batch="batch"))
    folder = tmp_path / "calib"
    rng = np.random.default_rng(0)
    second = rng.random((3, 3, 32, 32))  # float64 and another batch size: both fine
    first = rng.random((2, 3, 32, 32)).astype(np.float32)
    save_npz(folder, "b.npz", image=second)
    save_npz(folder, "a.npz", image=first)
    (folder / "notes.txt").write_text("not a feed")
    loaded_feeds = load_calibration_set(folder, model)
    assert [feed["image"].shape[0] for feed in loaded_feeds] == [2, 3]
    assert loaded_feeds[1]["image"].dtype == np.float32
    np.testing.assert_array_equal(loaded_feeds[0]["image"], first)


@pytest.mark.parametrize("arrays, message", [
    ({"picture": np.zeros(IMAGE, np.float32)}, "key 'picture' is not an input"),
    ({"image": np.zeros(IMAGE, np.int32)}, "is int32 but the model takes float32"),
    ({"image": np.zeros((1, 3, 16, 16), np.float32)}, "has shape 1x3x16x16, the model takes "
                                                      "1x3x32x32"),
    ({"image": np.zeros((3, 32, 32), np.float32)}, "has shape 3x32x32"),
])
def test_bad_calibration_file_is_named_with_its_fix(loaded, tmp_path, arrays, message):
    model = loaded(cnn())
    folder = tmp_path / "calib"
    save_npz(folder, "000.npz", image=np.zeros(IMAGE, np.float32))
    save_npz(folder, "001.npz", **arrays)
    with pytest.raises(InputDataError, match=message) as raised:
        load_calibration_set(folder, model)
    assert "001.npz" in str(raised.value) and "\n" not in str(raised.value)


def test_empty_or_unreadable_calibration_sets(loaded, tmp_path):
    model = loaded(cnn())
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputDataError, match=r"calibration set .*empty.* is empty"):
        load_calibration_set(empty, model)
    from polygraphy.json import save_json

    no_iterations = tmp_path / "none.json"
    save_json([], str(no_iterations))
    with pytest.raises(InputDataError, match="none.json is empty"):
        load_calibration_set(no_iterations, model)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "x.npz").write_bytes(b"not a zip")
    with pytest.raises(InputDataError, match=r"x\.npz: not a readable \.npz"):
        load_calibration_set(broken, model)
    with pytest.raises(InputDataError, match="no such file or folder"):
        load_calibration_set(tmp_path / "missing", model)


def test_polygraphy_json_iterations_are_a_calibration_set(loaded, tmp_path):
    from polygraphy.json import save_json

    model = loaded(cnn())
    recorded = feeds("image", IMAGE, 3, 0)
    path = tmp_path / "inputs.json"
    save_json(recorded, str(path))
    loaded_feeds = load_calibration_set(path, model)
    assert calibration_digest(loaded_feeds) == calibration_digest(recorded)
    recorded[2]["image"] = recorded[2]["image"][:, :, :8]
    save_json(recorded, str(path))
    with pytest.raises(InputDataError, match=r"inputs\.json iteration 2: input 'image'"):
        load_calibration_set(path, model)


def test_shared_dynamic_dimension_must_agree_within_a_feed(loaded, tmp_path):
    inputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["n", 4]) for name in "ab"]
    output = helper.make_tensor_value_info("sum", TensorProto.FLOAT, ["n", 4])
    graph = helper.make_graph([helper.make_node("Add", ["a", "b"], ["sum"], name="add")],
                              "add", inputs, [output])
    model = loaded(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    folder = tmp_path / "calib"
    save_npz(folder, "ok.npz", a=np.zeros((2, 4), np.float32), b=np.ones((2, 4), np.float32))
    assert len(load_calibration_set(folder, model)) == 1
    save_npz(folder, "uneven.npz", a=np.zeros((2, 4), np.float32),
             b=np.ones((3, 4), np.float32))
    with pytest.raises(InputDataError, match="uneven.npz: inputs 'a' and 'b' share dimension 'n'"):
        load_calibration_set(folder, model)


def test_digest_sees_values_names_dtypes_and_order():
    base = feeds("image", IMAGE, 2, 0)
    digest = calibration_digest(base)
    assert calibration_digest(feeds("image", IMAGE, 2, 0)) == digest
    changed = feeds("image", IMAGE, 2, 0)
    changed[1]["image"][0, 0, 0, 0] += 1e-3
    assert calibration_digest(changed) != digest
    assert calibration_digest(base[::-1]) != digest
    assert calibration_digest([{"x": f["image"]} for f in base]) != digest
    assert calibration_digest([{"image": f["image"].astype(np.float64)} for f in base]) != digest


def test_synthetic_calibration_set_warns_and_calibrates(loaded):
    model = loaded(cnn())
    synthetic, warning = synthetic_calibration_set(model, InputSettings(seed=5), count=4)
    assert len(synthetic) == 4 and len({calibration_digest([f]) for f in synthetic}) == 4
    assert "not meaningful" in warning and "--calibration-data" in warning
    assert "seeds 5..8" in warning
    quantized = quantize_model(model, QuantSettings("int8"), synthetic)
    assert any(node.op_type == "QuantizeLinear" for node in quantized.graph.node)


def test_calibrated_amax_quantizes_again_to_the_same_scales(tmp_path):
    from trtcheck.quant.quantize import calibrated_amax
    from trtcheck.quant.trt_cache import cache_from_qdq

    path = tmp_path / "cnn.onnx"
    onnx.save(cnn(), str(path))
    model = load_model(path)
    feeds = [{"image": np.random.default_rng(seed).random((1, 3, 32, 32), dtype=np.float32)}
             for seed in range(4)]
    calibrated = quantize_model(model, QuantSettings("int8"), calibration=feeds)
    again = quantize_model(model, QuantSettings("int8"),
                           amax=calibrated_amax(model, QuantSettings("int8"), feeds))
    assert cache_from_qdq(again).scales == cache_from_qdq(calibrated).scales



def test_an_activation_that_is_always_zero_quantizes_the_same_both_ways(tmp_path):
    # EfficientNet has such tensors (a Conv input that is all zero on the calibration feeds):
    # its calibrated range is 0, which quantizing again with amax must take as it is.
    from onnx import TensorProto, helper, numpy_helper

    from trtcheck.quant.quantize import calibrated_amax
    from trtcheck.quant.trt_cache import cache_from_qdq

    weight = numpy_helper.from_array(np.ones((4, 3, 1, 1), np.float32), "w")
    nodes = [helper.make_node("Neg", ["x"], ["negative"]),
             helper.make_node("Relu", ["negative"], ["zero"]),
             helper.make_node("Conv", ["zero", "w"], ["y"], name="conv")]
    graph = helper.make_graph(nodes, "zero", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, [1, 3, 4, 4])], [helper.make_tensor_value_info(
            "y", TensorProto.FLOAT, [1, 4, 4, 4])], [weight])
    path = tmp_path / "zero.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    model = load_model(path)
    feeds = [{"x": np.random.default_rng(seed).random((1, 3, 4, 4), dtype=np.float32)}
             for seed in range(3)]
    amax = calibrated_amax(model, QuantSettings("int8"), feeds)
    assert amax["zero"] == 0.0
    calibrated = quantize_model(model, QuantSettings("int8"), calibration=feeds)
    again = quantize_model(model, QuantSettings("int8"), amax=amax)
    assert cache_from_qdq(again).scales == cache_from_qdq(calibrated).scales


def test_excluding_every_node_leaves_the_model_unquantized(tmp_path):
    from trtcheck.quant.quantize import calibrated_amax

    path = tmp_path / "cnn.onnx"
    onnx.save(cnn(), str(path))
    model = load_model(path)
    feeds = [{"image": np.random.default_rng(0).random((1, 3, 32, 32), dtype=np.float32)}]
    every = tuple(n.name for n in model.proto.graph.node if n.op_type in ("Conv", "Gemm"))
    amax = calibrated_amax(model, QuantSettings("int8"), feeds)
    unquantized = quantize_model(model, QuantSettings("int8", exclude=every), amax=amax)
    assert not {"QuantizeLinear", "DequantizeLinear"} & {n.op_type for n in unquantized.graph.node}
    assert len(unquantized.graph.node) == len(model.proto.graph.node)
