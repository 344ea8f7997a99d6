"""Q/DQ lint (trtcheck/quant/qdq_lint.py) on hand-built Q/DQ models and ONNX Runtime's quantizer."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.conftest import read_json
from trtcheck.lint import ERROR, WARNING, Finding, lint_model
from trtcheck.model import load_model
from trtcheck.quant.qdq_lint import qdq_findings
from zoo.build import cnn


def qdq_lint(model: onnx.ModelProto, trt_major: int = 10) -> list[Finding]:
    """The Q/DQ findings of `model`, read as lint_model reads it (types from shape inference)."""
    onnx.checker.check_model(model)
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    graph = gs.import_onnx(onnx.shape_inference.infer_shapes(model))
    return qdq_findings(graph, opset, trt_major)


def by_node(findings: list[Finding]) -> dict[str, list[Finding]]:
    nodes: dict[str, list[Finding]] = {}
    for finding in findings:
        nodes.setdefault(finding.node, []).append(finding)
    return nodes


def const(name: str, values, dtype=np.float32) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(values, dtype), name)


def model_of(nodes, inputs, outputs, initializers, opset: int = 17) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "qdq", inputs, outputs, initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def qdq_pair(tensor: str, scale: str, zero_point: str, prefix: str, **attrs) -> list:
    """Q then DQ of `tensor`, named `{prefix}/q` and `{prefix}/dq`; output `{prefix}/x`."""
    return [helper.make_node("QuantizeLinear", [tensor, scale, zero_point], [f"{prefix}/q8"],
                             name=f"{prefix}/q", **attrs),
            helper.make_node("DequantizeLinear", [f"{prefix}/q8", scale, zero_point],
                             [f"{prefix}/x"], name=f"{prefix}/dq", **attrs)]


def quantized_conv(act_zero_point=0, act_scale=0.05, act_type=np.int8, weight_axis=0,
                   int32_bias=False) -> onnx.ModelProto:
    """image -> Q/DQ -> Conv(DQ(int8 weights per channel), bias) -> Q/DQ -> out."""
    rng = np.random.default_rng(0)
    inits = [const("act.scale", act_scale), const("act.zp", act_zero_point, act_type),
             const("w.q", rng.integers(-127, 128, (4, 3, 3, 3)), np.int8),
             const("w.scale", np.full(4 if weight_axis == 0 else 3, 0.01)),
             const("w.zp", np.zeros(4 if weight_axis == 0 else 3), np.int8),
             const("out.scale", 0.2), const("out.zp", 0, np.int8)]
    nodes = [*qdq_pair("image", "act.scale", "act.zp", "act"),
             helper.make_node("DequantizeLinear", ["w.q", "w.scale", "w.zp"], ["w"], name="w/dq",
                              axis=weight_axis)]
    conv_inputs = ["act/x", "w"]
    if int32_bias:
        inits += [const("b.q", [10, -3, 7, 0], np.int32), const("b.scale", np.full(4, 5e-4)),
                  const("b.zp", np.zeros(4), np.int32)]
        nodes.append(helper.make_node("DequantizeLinear", ["b.q", "b.scale", "b.zp"], ["b"],
                                      name="b/dq", axis=0))
        conv_inputs.append("b")
    nodes += [helper.make_node("Conv", conv_inputs, ["conv"], name="conv", pads=[1, 1, 1, 1]),
              *qdq_pair("conv", "out.scale", "out.zp", "out")]
    image = helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 8, 8])
    out = helper.make_tensor_value_info("out/x", TensorProto.FLOAT, [1, 4, 8, 8])
    return model_of(nodes, [image], [out], inits)


def test_a_symmetric_int8_model_is_clean():
    assert qdq_lint(quantized_conv()) == []


def test_non_zero_zero_point_is_an_error_on_q_and_dq():
    nodes = by_node(qdq_lint(quantized_conv(act_zero_point=3)))
    assert set(nodes) == {"act/q", "act/dq"}
    for (finding,) in nodes.values():
        assert finding.severity == ERROR and "zero point 3" in finding.reason
        assert "symmetric" in finding.reason and "ActivationSymmetric" in finding.reason


def test_uint8_is_an_error_on_the_q_once():
    findings = qdq_lint(quantized_conv(act_zero_point=128, act_type=np.uint8))
    (finding,) = findings  # the zero point of 128 is uint8's, not a second problem
    assert (finding.node, finding.severity) == ("act/q", ERROR)
    assert "uint8 quantization: TensorRT 10.15 quantizes to INT8, FP8, FP4, INT4 only" in (
        finding.reason) and "QuantType.QInt8" in finding.reason


def test_int32_bias_dequantize_is_an_error_with_the_quantizer_option():
    (finding,) = qdq_lint(quantized_conv(int32_bias=True))
    assert (finding.node, finding.op, finding.severity) == ("b/dq", "DequantizeLinear", ERROR)
    assert "int32 bias DequantizeLinear" in finding.reason
    assert "QuantizeBias False" in finding.reason


def _weight_dq(op: str, weight_shape: tuple[int, ...], axis: int, **attrs) -> onnx.ModelProto:
    """A per-channel int8 weight DQ on `axis` feeding input 1 of `op`."""
    channels = weight_shape[axis]
    inits = [const("w.q", np.ones(weight_shape), np.int8), const("w.scale", np.full(channels, .1)),
             const("w.zp", np.zeros(channels), np.int8)]
    nodes = [helper.make_node("DequantizeLinear", ["w.q", "w.scale", "w.zp"], ["w"], name="w/dq",
                              axis=axis),
             helper.make_node(op, ["x", "w"], ["y"], name="op", **attrs)]
    x_shape = {"Conv": [1, 4, 5, 5], "ConvTranspose": [1, 4, 5, 5]}.get(op, [2, 4])
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [f"d{i}" for i in x_shape])
    return model_of(nodes, [x], [y], inits)


@pytest.mark.parametrize(("op", "shape", "attrs", "good", "bad"), [
    ("Conv", (6, 4, 3, 3), {}, 0, 1),
    ("ConvTranspose", (4, 6, 3, 3), {}, 1, 0),
    ("MatMul", (4, 6), {}, 1, 0),
    ("Gemm", (4, 6), {}, 1, 0),
    ("Gemm", (6, 4), {"transB": 1}, 0, 1),
])
def test_per_channel_weights_only_on_the_output_channels(op, shape, attrs, good, bad):
    assert qdq_lint(_weight_dq(op, shape, good, **attrs)) == []
    (finding,) = qdq_lint(_weight_dq(op, shape, bad, **attrs))
    assert (finding.node, finding.severity) == ("w/dq", ERROR)
    assert f"on axis {bad} of {op} 'op'" in finding.reason
    assert f"output channels (axis {good})" in finding.reason


def test_per_channel_activation_is_an_error():
    inits = [const("s", [0.1, 0.2, 0.3]), const("zp", [0, 0, 0], np.int8)]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])
    y = helper.make_tensor_value_info("act/x", TensorProto.FLOAT, [1, 3, 4, 4])
    findings = qdq_lint(model_of(qdq_pair("x", "s", "zp", "act", axis=1), [x], [y], inits))
    assert {f.node for f in findings} == {"act/q", "act/dq"}
    assert all(f.severity == ERROR and "per-channel scales (3) on an activation" in f.reason
               for f in findings)


def test_block_quantization_only_on_weights_along_the_last_two_axes():
    inits = [const("w.q", np.ones((4, 8, 2, 2)), np.int8),
             const("w.s", np.full((4, 2, 2, 2), 0.1)),
             const("m.q", np.ones((8, 6)), np.int8), const("m.s", np.full((2, 6), 0.1)),
             const("x.s", np.full((1, 2, 4), 0.1)), const("x.zp", np.zeros((1, 2, 4)), np.int8)]
    nodes = [helper.make_node("DequantizeLinear", ["w.q", "w.s"], ["w"], name="conv_w/dq",
                              axis=1, block_size=4),
             helper.make_node("DequantizeLinear", ["m.q", "m.s"], ["m"], name="matmul_w/dq",
                              axis=0, block_size=4),
             *qdq_pair("x", "x.s", "x.zp", "act", axis=1, block_size=2)]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 4])
    outputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, shape) for name, shape in
               (("w", [4, 8, 2, 2]), ("m", [8, 6]), ("act/x", [1, 4, 4]))]
    nodes_found = by_node(qdq_lint(model_of(nodes, [x], outputs, inits, opset=21)))
    assert "matmul_w/dq" not in nodes_found  # axis 0 of a 2-D weight: the second-to-last
    (conv_w,) = nodes_found["conv_w/dq"]
    assert conv_w.severity == ERROR and "only the last or second-to-last" in conv_w.reason
    for node in ("act/q", "act/dq"):
        (activation,) = nodes_found[node]
        assert "block quantization of an activation" in activation.reason


def test_softmax_between_qdq_runs_in_float():
    inits = [const("s", 0.05), const("zp", 0, np.int8), const("s2", 1 / 127.5),
             const("zp2", 0, np.int8)]
    nodes = [*qdq_pair("x", "s", "zp", "in"),
             helper.make_node("Softmax", ["in/x"], ["p"], name="softmax", axis=-1),
             *qdq_pair("p", "s2", "zp2", "out")]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 10])
    y = helper.make_tensor_value_info("out/x", TensorProto.FLOAT, [2, 10])
    (finding,) = qdq_lint(model_of(nodes, [x], [y], inits))
    assert (finding.node, finding.op, finding.severity) == ("softmax", "Softmax", WARNING)
    assert "runs in float between Q/DQ: the Q/DQ only adds rounding" in finding.reason


def _relu_chain(scales: list[float]) -> onnx.ModelProto:
    """x -> (Q/DQ -> Relu) per scale -> y: one activation Q per scale."""
    nodes, inits, tensor = [], [const("zp", 0, np.int8)], "x"
    for index, scale in enumerate(scales):
        inits.append(const(f"s{index}", scale))
        nodes += [*qdq_pair(tensor, f"s{index}", "zp", f"a{index}"),
                  helper.make_node("Relu", [f"a{index}/x"], [f"r{index}"], name=f"relu{index}")]
        tensor = f"r{index}"
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])
    y = helper.make_tensor_value_info(tensor, TensorProto.FLOAT, [1, 8])
    return model_of(nodes, [x], [y], inits)


def test_scales_that_look_uncalibrated():
    assert qdq_lint(_relu_chain([0.031, 0.047, 0.012])) == []
    (equal,) = qdq_lint(_relu_chain([0.05, 0.05, 0.05]))
    assert (equal.node, equal.severity) == ("a0/q", WARNING)
    assert "all 3 activation scales are 0.05" in equal.reason
    (default,) = qdq_lint(_relu_chain([0.031, 1 / 127, 0.012]))
    assert (default.node, default.severity) == ("a1/q", WARNING)
    assert "scale 1/127, a common default" in default.reason


@pytest.mark.parametrize("bad_scale", [0.0, float("inf"), -0.1])
def test_zero_negative_or_non_finite_scale_is_an_error(bad_scale):
    findings = by_node(qdq_lint(_relu_chain([0.031, bad_scale, 0.012])))
    assert set(findings) == {"a1/q", "a1/dq"}
    assert all(f.severity == ERROR and "scale" in f.reason
               for node in findings.values() for f in node)


def test_dangling_q_and_dq_are_warnings():
    inits = [const("s", 0.05), const("zp", 0, np.int8)]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["x8"], name="lonely/q"),
             helper.make_node("DequantizeLinear", ["i8", "s", "zp"], ["y"], name="lonely/dq")]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4]),
              helper.make_tensor_value_info("i8", TensorProto.INT8, [4])]
    outputs = [helper.make_tensor_value_info("x8", TensorProto.INT8, [4]),
               helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])]
    findings = by_node(qdq_lint(model_of(nodes, inputs, outputs, inits)))
    (q,) = findings["lonely/q"]
    (dq,) = findings["lonely/dq"]
    assert q.severity == dq.severity == WARNING
    assert "no DequantizeLinear after this QuantizeLinear" in q.reason
    assert "comes from a network input" in dq.reason


def test_dq_of_a_gathered_int8_constant_is_not_dangling():
    # A quantized embedding: Gather on an int8 table, then DQ; Gather only moves the values.
    inits = [const("table", np.arange(40).reshape(10, 4), np.int8), const("s", 0.05),
             const("zp", 0, np.int8)]
    nodes = [helper.make_node("Gather", ["table", "ids"], ["rows"], name="gather"),
             helper.make_node("DequantizeLinear", ["rows", "s", "zp"], ["y"], name="dq")]
    ids = helper.make_tensor_value_info("ids", TensorProto.INT64, [3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 4])
    assert qdq_lint(model_of(nodes, [ids], [y], inits)) == []


def test_q_without_zero_point_disagrees_with_onnx_runtime():
    nodes = [helper.make_node("QuantizeLinear", ["x", "s"], ["x8"], name="q"),
             helper.make_node("DequantizeLinear", ["x8", "s"], ["y"], name="dq")]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])
    (finding,) = qdq_lint(model_of(nodes, [x], [y], [const("s", 0.05)]))
    assert (finding.node, finding.severity) == ("q", WARNING)
    assert "uint8 by default, TensorRT to int8" in finding.reason


# ONNX Runtime's quantizer on the zoo's CNN.

def _calibration_reader():
    from onnxruntime.quantization import CalibrationDataReader

    class RandomImages(CalibrationDataReader):
        def __init__(self) -> None:
            rng = np.random.default_rng(0)
            self.feeds = iter([{"image": rng.standard_normal((1, 3, 32, 32), np.float32)}
                               for _ in range(4)])

        def get_next(self):
            return next(self.feeds, None)

    return RandomImages()


def ort_quantized_cnn(tmp_path, name: str, **options):
    from onnxruntime.quantization import QuantFormat, quantize_static

    source, target = tmp_path / "cnn.onnx", tmp_path / name
    onnx.save(cnn(), str(source))
    quantize_static(str(source), str(target), _calibration_reader(),
                    quant_format=QuantFormat.QDQ, per_channel=True, **options)
    return target


def test_onnx_runtime_symmetric_int8_without_bias_quantization_is_clean(tmp_path):
    from onnxruntime.quantization import QuantType

    path = ort_quantized_cnn(tmp_path, "symmetric.onnx", activation_type=QuantType.QInt8,
                             weight_type=QuantType.QInt8, extra_options={
                                 "QuantizeBias": False, "ActivationSymmetric": True,
                                 "WeightSymmetric": True})
    result = lint_model(load_model(path), 10)
    assert sum(n.op_type == "QuantizeLinear" for n in onnx.load(str(path)).graph.node) >= 5
    assert result.findings == []


@pytest.mark.parametrize("activation_type", ["default", "QUInt8"])
def test_onnx_runtime_defaults_are_rejected(tmp_path, activation_type):
    from onnxruntime.quantization import QuantType

    options = {} if activation_type == "default" else {
        "activation_type": getattr(QuantType, activation_type)}
    path = ort_quantized_cnn(tmp_path, "defaults.onnx", **options)
    model = onnx.load(str(path))
    bias_dqs = {n.name for n in model.graph.node
                if n.op_type == "DequantizeLinear" and n.output[0] in ("trunk.b1", "trunk.b2",
                                                                        "head.b")}
    findings = lint_model(load_model(path), 10).errors
    bias = {f.node for f in findings if "int32 bias DequantizeLinear" in f.reason}
    assert bias == bias_dqs and len(bias) == 3
    if activation_type == "QUInt8":
        flagged = {f.node for f in findings if "uint8 quantization" in f.reason}
        expected = {n.name for n in model.graph.node if n.op_type == "QuantizeLinear"}
    else:  # asymmetric int8: the Q/DQ nodes whose zero point the quantizer made non-zero
        flagged = {f.node for f in findings if "zero point" in f.reason}
        zero_points = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
        expected = {n.name for n in model.graph.node if n.name not in bias_dqs and
                    n.op_type in ("QuantizeLinear", "DequantizeLinear") and
                    zero_points[n.input[2]].any()}
    assert flagged == expected and len(expected) >= 5

def test_cli_shows_qdq_findings(tmp_path, trtcheck_cli):
    path = ort_quantized_cnn(tmp_path, "defaults.onnx")
    run = trtcheck_cli("lint", path, "--json", "lint.json")
    assert run.code == 1, run.stdout + run.stderr
    assert "zero point" in run.stdout and "int32 bias" in run.stdout
    findings = read_json(tmp_path / "lint.json")["findings"]
    bias = [f for f in findings if "QuantizeBias False" in f["reason"]]
    assert {f["node"] for f in bias} == {"head.b_DequantizeLinear", "trunk.b1_DequantizeLinear",
                                         "trunk.b2_DequantizeLinear"}
    assert all(f["severity"] == "error" for f in bias)
