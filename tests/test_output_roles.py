"""Class-score outputs and quantized models, read from the graph, and the default rule they get."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from polygraphy.comparator import IterationResult, RunResults

from trtcheck.backend_names import get_backend
from trtcheck.backends import BackendOptions
from trtcheck.compare import compare_runs
from trtcheck.debug.probes import Probe
from trtcheck.model import load_model
from trtcheck.output_roles import class_score_outputs, quantized_type
from trtcheck.tolerance import TOP1, VALUES, ToleranceRequest
from zoo.build import cnn, transformer_block

RNG = np.random.default_rng(0)


def _model(nodes, inputs, outputs, inits=(), opset=17):
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    onnx.checker.check_model(model)
    return model


def _value(name, shape, elem=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, elem, shape)


def _weight(name, shape):
    return numpy_helper.from_array(RNG.standard_normal(shape).astype(np.float32), name)


def test_a_gemm_head_is_class_scores_and_an_encoder_output_is_not():
    assert class_score_outputs(cnn()) == {"logits": "a linear head (Gemm head/gemm)"}
    assert class_score_outputs(transformer_block()) == {}


def test_the_classic_exporters_matmul_add_head_with_constant_nodes():
    # torch's classic exporter: MatMul + Add, the weight from a Constant node, then a Reshape.
    weight = helper.make_node("Constant", [], ["w"], value=_weight("w", (8, 5)))
    bias = helper.make_node("Constant", [], ["b"], value=_weight("b", (5,)))
    shape = helper.make_node("Constant", [], ["s"], value=numpy_helper.from_array(
        np.array([2, 5], np.int64), "s"))
    nodes = [weight, bias, shape, helper.make_node("MatMul", ["x", "w"], ["m"], name="fc"),
             helper.make_node("Add", ["b", "m"], ["a"]),
             helper.make_node("Reshape", ["a", "s"], ["scores"])]
    model = _model(nodes, [_value("x", [2, 8])], [_value("scores", [2, 5])])
    assert class_score_outputs(model) == {"scores": "a linear head (MatMul fc)"}


def test_softmax_over_the_last_axis_only():
    last = _model([helper.make_node("Softmax", ["x"], ["p"], name="sm", axis=-1)],
                  [_value("x", [1, 40, 100])], [_value("p", [1, 40, 100])])
    assert class_score_outputs(last) == {"p": "Softmax over the last axis (sm)"}
    # A segmentation map's softmax over channels: the classes are not on the last axis.
    channels = _model([helper.make_node("Softmax", ["x"], ["p"], axis=1)],
                      [_value("x", [1, 3, 8, 8])], [_value("p", [1, 3, 8, 8])])
    assert class_score_outputs(channels) == {}
    # A Sigmoid is independent scores (multi-label, a detector's objectness), not one class.
    sigmoid = _model([helper.make_node("Sigmoid", ["x"], ["p"])], [_value("x", [1, 4])],
                     [_value("p", [1, 4])])
    assert class_score_outputs(sigmoid) == {}


def test_a_head_whose_weight_is_computed_is_not_a_linear_head():
    nodes = [helper.make_node("MatMul", ["x", "y"], ["m"])]
    model = _model(nodes, [_value("x", [2, 8]), _value("y", [8, 5])], [_value("m", [2, 5])])
    assert class_score_outputs(model) == {}


def test_quantized_heads_and_the_models_quantization():
    # A Q/DQ head (ONNX Runtime's and ModelOpt's QDQ format): the weight through DequantizeLinear.
    qweight = numpy_helper.from_array(RNG.integers(-127, 127, (5, 8)).astype(np.int8), "qw")
    inits = [qweight, numpy_helper.from_array(np.array(0.01, np.float32), "s"),
             numpy_helper.from_array(np.array(0, np.int8), "z")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
             helper.make_node("DequantizeLinear", ["qw", "s", "z"], ["w"]),
             helper.make_node("Gemm", ["xd", "w"], ["logits"], name="head", transB=1)]
    qdq = _model(nodes, [_value("x", [1, 8])], [_value("logits", [1, 5])], inits)
    assert class_score_outputs(qdq) == {"logits": "a linear head (Gemm head)"}
    assert quantized_type(qdq) == "int8"
    assert quantized_type(cnn()) is None
    # Dynamic quantization (quantize_dynamic): MatMulInteger -> Cast -> Mul (scales) -> Add.
    inits = [numpy_helper.from_array(RNG.integers(-127, 127, (8, 5)).astype(np.int8), "qw"),
             numpy_helper.from_array(np.array(0, np.int8), "wz"), _weight("b", (5,))]
    nodes = [helper.make_node("DynamicQuantizeLinear", ["x"], ["xq", "xs", "xz"]),
             helper.make_node("MatMulInteger", ["xq", "qw", "xz", "wz"], ["mi"], name="head"),
             helper.make_node("Cast", ["mi"], ["mf"], to=TensorProto.FLOAT),
             helper.make_node("Mul", ["mf", "xs"], ["ms"]),
             helper.make_node("Add", ["ms", "b"], ["logits"])]
    dynamic = _model(nodes, [_value("x", [1, 8])], [_value("logits", [1, 5])], inits)
    assert class_score_outputs(dynamic) == {"logits": "a linear head (MatMulInteger head)"}
    assert quantized_type(dynamic) == "int8"


def _diffs(reference, target, precision="bf16", class_scores=("logits",), quantized=None,
           request=None):
    results = RunResults()
    for side, values in (("reference", reference), ("target", target)):
        results.append((side, [IterationResult({"logits": values}, runner_name=side)]))
    tolerances = (request or ToleranceRequest()).resolve(precision, class_scores, quantized)
    return compare_runs(results, "reference", "target", tolerances)


def _logits(shape=(4, 1000)):
    return RNG.standard_normal(shape).astype(np.float32) * 4


def test_class_scores_pass_on_their_decision_and_fail_when_it_changes():
    reference = _logits()
    # bf16-like rounding noise a little over the values rule's atol on a few logits.
    noisy = reference * (1 + RNG.standard_normal(reference.shape).astype(np.float32) * 0.02)
    top = reference.argmax(-1)
    noisy[np.arange(4), top] = reference[np.arange(4), top] + 0.01
    (values,) = _diffs(reference, noisy, class_scores=())
    assert not values.passed and values.method == "elementwise"
    (diff,) = _diffs(reference, noisy)
    assert diff.passed and diff.method == "top1" and diff.top1_same == (4, 4)
    assert diff.tolerance.criterion == TOP1 and diff.tolerance.min_cosine == pytest.approx(0.9936)
    # The same noise with one position's winner moved: the decision changed.
    flipped = noisy.copy()
    flipped[2, top[2]] = reference[2].max() - 50
    (diff,) = _diffs(reference, flipped)
    assert not diff.passed and diff.top1_same == (3, 4)
    assert diff.failures[0] == "top-1 class differs at 1 of 4 position(s)"


def test_class_scores_keep_fp16s_cosine_floor_and_catch_a_collapse():
    reference = _logits((1, 10))
    (diff,) = _diffs(reference, reference * 0.2 + 1.0, precision="fp16")
    # The top-1 survives an affine collapse; the cosine floor does not.
    assert diff.top1_same == (1, 1) and not diff.passed
    assert any(reason.startswith("cosine") for reason in diff.failures)
    assert diff.tolerance.min_cosine == pytest.approx(0.9999)


def test_class_scores_below_fp16s_smallest_normal_fail():
    reference = _logits((1, 16)) * 1e-8
    (diff,) = _diffs(reference, reference, precision="fp16")
    assert diff.passed  # identical: nothing to judge
    (diff,) = _diffs(reference, reference * 1.0001, precision="fp16")
    assert not diff.passed and "smallest normal" in diff.failures[0]


def test_explicit_tolerances_and_a_given_cosine_keep_their_meaning():
    reference = _logits()
    noisy = reference + 0.5
    (diff,) = _diffs(reference, noisy, request=ToleranceRequest({"atol": {"logits": 0.1}}))
    assert diff.method == "elementwise" and not diff.passed
    (diff,) = _diffs(reference, reference * 1.001,
                     request=ToleranceRequest({"min_cosine": {"": 0.5}}))
    assert diff.tolerance.criterion == TOP1 and diff.tolerance.min_cosine == 0.5


def test_a_quantized_model_on_fp16_gets_int8s_noise_floor():
    reference = RNG.standard_normal((1, 64)).astype(np.float32)
    # One int8 step (1/127 of the range) on a few values: a rounding before a Q flipped.
    target = reference.copy()
    target[0, :3] += np.abs(reference).max() / 127
    assert not _diffs(reference, target, precision="fp16", class_scores=())[0].passed
    (diff,) = _diffs(reference, target, precision="fp16", class_scores=(), quantized="int8")
    assert diff.tolerance.atol_of_max == pytest.approx(8 * 2**-8)
    assert not any("atol" in reason for reason in diff.failures)


def test_bisect_holds_the_tensors_before_a_class_score_output_to_values(save_model):
    tolerance = ToleranceRequest().resolve("bf16", ("logits",)).for_output("logits")
    probe = Probe(load_model(save_model(cnn())), get_backend("onnxrt"), get_backend("onnxrt-bf16"),
                  BackendOptions(), {}, "logits", tolerance, 10.0, max_memory=2**28)
    assert probe.tolerance_for(10.0, "logits").criterion == TOP1
    carried = probe.tolerance_for(5.0, "features")
    assert carried.criterion == VALUES and carried.min_magnitude is None


def test_cli_reports_class_scores_and_the_polygraphy_difference(trtcheck_cli, save_model):
    path = save_model(cnn(), "cnn.onnx")
    run = trtcheck_cli("compare", path, "--target", "onnxrt-bf16", "--json", "r.json")
    assert run.code == 0, run.stderr
    text = " ".join(run.stdout.split())  # a log's width wraps the table's cells
    assert "class scores: top-1 at every position" in text
    assert "top-1 same at 1 of 1" in text
    assert "Polygraphy has no top-1 check" in text
    (output,) = json.loads((path.parent / "r.json").read_text())["outputs"]
    assert output["method"] == "top1" and output["top1_same"] == [1, 1]


def test_the_repeat_command_keeps_the_class_score_rule(trtcheck_cli, save_model, tmp_path):
    import shlex

    path = save_model(cnn(), "cnn.onnx")
    trtcheck_cli("compare", path, "--target", "onnxrt-bf16", "--json", "first.json")
    command = json.loads((tmp_path / "first.json").read_text())["trtcheck_command"]
    assert "--atol" not in command  # the rule comes from the graph, not from flags
    again = trtcheck_cli(*shlex.split(command)[1:], "--json", "again.json")
    assert again.code == 0, again.stderr
    (output,) = json.loads((tmp_path / "again.json").read_text())["outputs"]
    assert output["method"] == "top1"
