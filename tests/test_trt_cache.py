"""TensorRT calibration caches: the format bit for bit, bad files, Q/DQ models, model checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from trtcheck.errors import EXIT_INPUT_ERROR, InputDataError, ModelError, UsageError
from trtcheck.quant.trt_cache import (
    CalibrationCache,
    cache_from_qdq,
    check_cache_against_model,
    header_for,
    read_cache,
    write_cache,
)
from zoo.build import cnn

CALIBRATION_SEEDS = range(8)


def _bits(value: float) -> str:
    """numpy's own big-endian float32 bits: an oracle independent of the module's struct code."""
    return np.array([value], dtype=">f4").tobytes().hex()


def _from_bits(hex_text: str) -> float:
    return float(np.frombuffer(bytes.fromhex(hex_text), dtype=">f4")[0])


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _calibration_feeds() -> list[dict[str, np.ndarray]]:
    return [{"image": np.random.default_rng(seed).standard_normal((1, 3, 32, 32))
             .astype(np.float32)} for seed in CALIBRATION_SEEDS]


@pytest.fixture(scope="module")
def ort_qdq_cnn(tmp_path_factory) -> onnx.ModelProto:
    """zoo's cnn quantized by ONNX Runtime: QDQ, symmetric int8 activations, per-channel weights."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Feeds(CalibrationDataReader):
        def __init__(self) -> None:
            self.feeds = iter(_calibration_feeds())

        def get_next(self):
            return next(self.feeds, None)

    folder = tmp_path_factory.mktemp("qdq")
    onnx.save(cnn(), folder / "cnn.onnx")
    quantize_static(folder / "cnn.onnx", folder / "cnn.qdq.onnx", Feeds(),
                    quant_format=QuantFormat.QDQ, activation_type=QuantType.QInt8,
                    weight_type=QuantType.QInt8, per_channel=True,
                    extra_options={"ActivationSymmetric": True, "WeightSymmetric": True})
    return onnx.load(folder / "cnn.qdq.onnx")


def _activation_q_scales(model: onnx.ModelProto) -> dict[str, float]:
    """The scale of every QuantizeLinear whose input is not an initializer, read directly."""
    inits = {tensor.name: numpy_helper.to_array(tensor) for tensor in model.graph.initializer}
    return {node.input[0]: float(inits[node.input[1]]) for node in model.graph.node
            if node.op_type == "QuantizeLinear" and node.input[0] not in inits}


def test_reads_a_real_format_cache_bit_for_bit(tmp_path):
    path = _write(tmp_path / "calib.cache",
                  "TRT-8501-EntropyCalibration2\n"
                  "image: 3c000000\n"
                  "/conv1/Conv_output_0: 3c010a14\n"
                  "input:0: 3f800000\n"
                  "(Unnamed Layer* 8) [Constant]_output: 39137939\n")
    cache = read_cache(path)
    assert cache.header == "TRT-8501-EntropyCalibration2"
    assert cache.scales == {"image": 0.0078125, "/conv1/Conv_output_0": _from_bits("3c010a14"),
                            "input:0": 1.0,
                            "(Unnamed Layer* 8) [Constant]_output": _from_bits("39137939")}
    assert cache.amax()["image"] == 127 * 0.0078125


def test_writes_the_float32_bits_tensorrt_reads(tmp_path):
    scales = {"image": 0.0078125, "a": 1 / 127, "b": 3.0e-5}
    write_cache(tmp_path / "out.cache", CalibrationCache("TRT-100300-MinMaxCalibration", scales))
    lines = (tmp_path / "out.cache").read_text().splitlines()
    assert lines == ["TRT-100300-MinMaxCalibration", "image: 3c000000",
                     f"a: {_bits(1 / 127)}", f"b: {_bits(3.0e-5)}"]


def test_round_trip_is_byte_and_bit_exact(tmp_path):
    rng = np.random.default_rng(0)
    # Scales over the whole float32 range, subnormals and the largest finite one included.
    values = np.concatenate([np.exp(rng.uniform(-80, 80, 200)),
                             [1e-45, 1.17e-38, 3.4028235e38]]).astype(np.float32)
    original = "".join(["TRT-100300-LegacyCalibration\n",
                        *(f"t{index}: {_bits(value)}\n" for index, value in enumerate(values))])
    cache = read_cache(_write(tmp_path / "in.cache", original))
    write_cache(tmp_path / "out.cache", cache)
    assert (tmp_path / "out.cache").read_text() == original
    again = read_cache(tmp_path / "out.cache")
    assert again == cache and again.header == "TRT-100300-LegacyCalibration"
    assert [np.float32(scale).tobytes() for scale in again.scales.values()] == \
        [value.tobytes() for value in values]


def test_amax_divides_back_to_the_exact_scale(tmp_path):
    cache = CalibrationCache("TRT-8501-EntropyCalibration2",
                             {"a": _from_bits("3c010a14"), "b": _from_bits("3d895e44")})
    assert all(cache.amax()[name] / 127 == scale for name, scale in cache.scales.items())


BAD_CACHES = [
    ("", 1, "empty calibration cache"),
    ("calibration table\nx: 3c000000\n", 1, "not a TensorRT calibration cache header"),
    ("TRT-8501-Percentile\nx: 3c000000\n", 1, "not a TensorRT calibration cache header"),
    ("TRT-8501-EntropyCalibration2\n", 2, "no tensor lines"),
    ("TRT-8501-EntropyCalibration2\nx: 3c000000\ny 3c000000\n", 3, "not a 'tensor_name: hex'"),
    ("TRT-8501-EntropyCalibration2\nx: 0x3c00\n", 2, "not a 'tensor_name: hex'"),
    ("TRT-8501-EntropyCalibration2\nx: 3c0000001\n", 2, "not a 'tensor_name: hex'"),
    ("TRT-8501-EntropyCalibration2\nx: 7fc00000\n", 2, "finite and positive"),
    ("TRT-8501-EntropyCalibration2\nx: 7f800000\n", 2, "finite and positive"),
    ("TRT-8501-EntropyCalibration2\nx: 00000000\n", 2, "finite and positive"),
    ("TRT-8501-EntropyCalibration2\nx: bf800000\n", 2, "finite and positive"),
    ("TRT-8501-EntropyCalibration2\nx: 3c000000\nx: 3d000000\n", 3, "first on line 2"),
]


@pytest.mark.parametrize(("text", "line", "fragment"), BAD_CACHES)
def test_a_bad_cache_is_one_line_naming_file_and_line(tmp_path, text, line, fragment):
    path = _write(tmp_path / "bad.cache", text)
    with pytest.raises(InputDataError) as raised:
        read_cache(path)
    message = str(raised.value)
    assert raised.value.exit_code == EXIT_INPUT_ERROR
    assert message.startswith(f"{path}:{line}: ") and "\n" not in message
    assert fragment in message


def test_a_binary_or_missing_file_is_an_input_error(tmp_path):
    path = tmp_path / "engine.plan"
    path.write_bytes(b"\xff\xfe\x00ftrt")
    with pytest.raises(InputDataError, match=rf"^{path}:1: not a text file"):
        read_cache(path)
    with pytest.raises(InputDataError, match="cannot read the calibration cache"):
        read_cache(tmp_path / "absent.cache")


def test_cache_from_an_ort_qdq_model_has_each_activation_q_scale(ort_qdq_cnn):
    cache = cache_from_qdq(ort_qdq_cnn)
    q_scales = _activation_q_scales(ort_qdq_cnn)
    # ONNX Runtime renames the quantized graph output: its fp32 value is read as
    # logits_QuantizeLinear_Input, and the cache names it logits, as the fp32 model does.
    assert q_scales.pop("logits_QuantizeLinear_Input") == cache.scales["logits"]
    assert {name: cache.scales[name] for name in q_scales} == q_scales
    assert set(cache.scales) == {*q_scales, "logits"}
    fp32_names = {*(node.output[0] for node in cnn().graph.node), "image"}
    assert set(cache.scales) <= fp32_names
    # Prequantized per-channel weights come with a DequantizeLinear only: nothing left out.
    assert cache.notes == ()


def test_the_input_scale_is_the_calibration_data_amax(ort_qdq_cnn):
    """The cache's scale for the input is ONNX Runtime's min/max over the calibration feeds."""
    amax = max(float(np.abs(feed["image"]).max()) for feed in _calibration_feeds())
    assert cache_from_qdq(ort_qdq_cnn).amax()["image"] == pytest.approx(amax, rel=1e-6)


def test_a_cache_from_the_qdq_model_fits_both_models(ort_qdq_cnn, tmp_path):
    cache = cache_from_qdq(ort_qdq_cnn, header=header_for("8.6.1"))
    write_cache(tmp_path / "model.cache", cache)
    read_back = read_cache(tmp_path / "model.cache")
    assert read_back == cache and read_back.header == "TRT-8601-EntropyCalibration2"
    assert check_cache_against_model(read_back, ort_qdq_cnn) == []
    assert check_cache_against_model(read_back, cnn()) == []


def _qdq(name: str, tensor: str, scale: str, zero_point: str | None, out: str):
    inputs = [tensor, scale] + ([zero_point] if zero_point else [])
    return [helper.make_node("QuantizeLinear", inputs, [f"{name}_q"], name=f"{name}/q"),
            helper.make_node("DequantizeLinear", [f"{name}_q", *inputs[1:]], [out],
                             name=f"{name}/dq")]


def _mixed_precision_model() -> onnx.ModelProto:
    """x -(int8, scale from a Constant)-> Relu -(float8)-> Sigmoid -(uint8)-> Tanh -(per-channel
    int8)-> y, with an int8 QuantizeLinear on a weight too."""
    f32 = TensorProto.FLOAT
    inits = [
        numpy_helper.from_array(np.array(0, np.int8), "zp8"),
        numpy_helper.from_array(np.array(0.05, np.float32), "s_fp8"),
        helper.make_tensor("zp_fp8", TensorProto.FLOAT8E4M3FN, [], [0.0]),
        numpy_helper.from_array(np.array(0.01, np.float32), "s_u8"),
        numpy_helper.from_array(np.array(128, np.uint8), "zp_u8"),
        numpy_helper.from_array(np.full(4, 0.02, np.float32), "s_channels"),
        numpy_helper.from_array(np.zeros(4, np.int8), "zp_channels"),
        numpy_helper.from_array(np.ones((1, 4, 2, 2), np.float32), "w"),
        numpy_helper.from_array(np.array(0.01, np.float32), "s_w"),
    ]
    nodes = [helper.make_node("Constant", [], ["s_x"], value_float=0.25, name="scale_x"),
             *_qdq("x", "x", "s_x", "zp8", "x_dq"),
             helper.make_node("Relu", ["x_dq"], ["r"], name="relu"),
             *_qdq("r", "r", "s_fp8", "zp_fp8", "r_dq"),
             helper.make_node("Sigmoid", ["r_dq"], ["s"], name="sigmoid"),
             *_qdq("s", "s", "s_u8", "zp_u8", "s_dq"),
             helper.make_node("Tanh", ["s_dq"], ["t"], name="tanh"),
             *_qdq("w", "w", "s_w", "zp8", "w_dq"),
             helper.make_node("Add", ["t", "w_dq"], ["a"], name="add"),
             helper.make_node("QuantizeLinear", ["a", "s_channels", "zp_channels"], ["a_q"],
                              name="a/q", axis=1),
             helper.make_node("DequantizeLinear", ["a_q", "s_channels", "zp_channels"], ["y"],
                              name="a/dq", axis=1)]
    shape = [1, 4, 2, 2]
    graph = helper.make_graph(nodes, "mixed", [helper.make_tensor_value_info("x", f32, shape)],
                              [helper.make_tensor_value_info("y", f32, shape)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    model.ir_version = 9
    onnx.checker.check_model(model, full_check=True)
    return model


def test_only_per_tensor_int8_activations_enter_a_cache_each_other_with_a_note():
    import onnxruntime

    model = _mixed_precision_model()
    # ONNX Runtime runs it: the notes describe a model that is valid, not a malformed one.
    session = onnxruntime.InferenceSession(model.SerializeToString(),
                                           providers=["CPUExecutionProvider"])
    session.run(None, {"x": np.ones((1, 4, 2, 2), np.float32)})
    cache = cache_from_qdq(model)
    assert cache.scales == {"x": 0.25}
    notes = "\n".join(cache.notes)
    assert len(cache.notes) == 4
    assert "'r'" in notes and "FLOAT8E4M3FN" in notes
    assert "'s'" in notes and "UINT8" in notes
    assert "'a'" in notes and "4 scales" in notes
    assert "1 QuantizeLinear node(s) on weights left out" in notes


def test_a_model_without_int8_activation_q_is_a_model_error():
    with pytest.raises(ModelError, match="no per-tensor int8 activation QuantizeLinear"):
        cache_from_qdq(cnn())
    with pytest.raises(UsageError, match="not a TensorRT calibration cache header"):
        cache_from_qdq(_mixed_precision_model(), header="TRT-10-Entropy")


def test_check_reports_a_renamed_tensor_both_ways(ort_qdq_cnn):
    scales = dict(cache_from_qdq(ort_qdq_cnn).scales)
    scales["trunk/relu1_out"] = scales.pop("trunk/r1")
    renamed = CalibrationCache("TRT-8501-EntropyCalibration2", scales)
    for model in (cnn(), ort_qdq_cnn):
        warnings = check_cache_against_model(renamed, model)
        assert len(warnings) == 2, warnings
        assert "'trunk/relu1_out' is not in the model (renamed? the model has 'trunk/r1')" \
            in warnings[0]
        assert "activation 'trunk/r1'" in warnings[1] and "no scale in the cache" in warnings[1]


def test_check_groups_tensorrt_internal_names_and_reports_changed_scales(ort_qdq_cnn):
    scales = dict(cache_from_qdq(ort_qdq_cnn).scales)
    bits_of = {name: int(_bits(scale), 16) for name, scale in scales.items()}
    scales["trunk/c1"] = _from_bits(f"{bits_of['trunk/c1'] + 1:08x}")  # 1 ulp: the same
    scales["trunk/c2"] = _from_bits(f"{bits_of['trunk/c2'] + 2:08x}")  # 2 ulps: changed
    scales["(Unnamed Layer* 8) [Constant]_output"] = 0.5
    scales["ONNXTRT_Broadcast_97_output"] = 0.5
    warnings = check_cache_against_model(CalibrationCache(header_for("10.3"), scales),
                                         ort_qdq_cnn)
    assert len(warnings) == 2, warnings
    assert warnings[0].startswith("2 cache tensor(s) named by TensorRT itself")
    assert warnings[1].startswith("'trunk/c2': the model's QuantizeLinear scale")


def test_check_on_an_fp32_model_lists_its_activations_not_its_constants():
    model = cnn()
    one_entry = CalibrationCache("TRT-8501-EntropyCalibration2", {"image": 0.01})
    missing = check_cache_against_model(one_entry, model)
    named = {warning.split("'")[1] for warning in missing}
    assert named == {node.output[0] for node in model.graph.node}
    assert all("no scale in the cache" in warning for warning in missing)


def test_header_for_a_tensorrt_version():
    assert header_for("10.3.0") == "TRT-100300-EntropyCalibration2"
    assert header_for("8.5.1.7", "MinMaxCalibration") == "TRT-8501-MinMaxCalibration"
    with pytest.raises(UsageError, match="cannot make a calibration cache header"):
        header_for("ten")


@pytest.mark.parametrize(("method", "algorithm"), [("minmax", "MinMaxCalibration"),
                                                   ("entropy", "EntropyCalibration2")])
def test_quantize_cache_requantize_gives_the_same_scales_and_outputs(tmp_path, method, algorithm):
    """Calibrate, keep the scales as a cache, quantize again from the cache alone: same model."""
    import onnxruntime

    from trtcheck.model import load_model
    from trtcheck.quant.quantize import QuantSettings, quantize_model

    onnx.save(cnn(), tmp_path / "cnn.onnx")
    model, settings = load_model(tmp_path / "cnn.onnx"), QuantSettings("int8", method=method)
    calibrated = quantize_model(model, settings, calibration=_calibration_feeds())
    cache = cache_from_qdq(calibrated, header=header_for("10.3.0", algorithm))
    write_cache(tmp_path / "cnn.cache", cache)
    from_cache = quantize_model(model, settings, amax=read_cache(tmp_path / "cnn.cache").amax())

    again = cache_from_qdq(from_cache)
    assert again.scales.keys() == cache.scales.keys() and len(cache.scales) >= 3
    # amax = scale x 127 is exact in float64; a quantizer that rounds amax to float32 before
    # dividing by 127 gets about 1 scale in 130 back 1 ulp off (measured), never more.
    ulps = {name: abs(int(_bits(again.scales[name]), 16) - int(_bits(scale), 16))
            for name, scale in cache.scales.items()}
    assert max(ulps.values()) <= 1, ulps
    assert check_cache_against_model(cache, from_cache) == []
    sessions = [onnxruntime.InferenceSession(proto.SerializeToString(),
                                             providers=["CPUExecutionProvider"])
                for proto in (calibrated, from_cache)]
    for seed in range(100, 104):
        feed = {"image": np.random.default_rng(seed).standard_normal((1, 3, 32, 32))
                .astype(np.float32)}
        first, second = (session.run(None, feed)[0] for session in sessions)
        if not any(ulps.values()):
            assert np.array_equal(first, second)
        else:  # a 1-ulp scale may round one int8 value the other way
            cosine = float(np.dot(first.ravel(), second.ravel())
                           / (np.linalg.norm(first) * np.linalg.norm(second)))
            assert cosine > 0.9999
