"""`trtcheck lint` on models built here, against the TensorRT 10 and 11 tables."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.conftest import read_json
from trtcheck.lint import lint_model
from trtcheck.model import load_model
from trtcheck.trt_support import support_table
from zoo.build import cnn, overflow_chain


def model_of(nodes, inputs, outputs, initializers=(), opset=17, domains=()):
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(initializers))
    opsets = [helper.make_opsetid("", opset), *(helper.make_opsetid(d, 1) for d in domains)]
    return helper.make_model(graph, opset_imports=opsets)


def value(name, dtype, shape):
    return helper.make_tensor_value_info(name, dtype, shape)


def lint(save_model, model, major=10):
    return lint_model(load_model(save_model(model)), major)


def test_clean_model(save_model, trtcheck_cli):
    path = save_model(cnn())
    run = trtcheck_cli("lint", path, "--json", "lint.json")
    assert run.code == 0, run.stdout
    assert "clean" in run.stdout and "TensorRT 10.15" in run.stdout
    assert read_json(path.parent / "lint.json")["findings"] == []


def test_tables_cite_their_source():
    for major in (10, 11):
        source = support_table(major)["source"]
        assert source["repository"] == "onnx/onnx-tensorrt"
        assert len(source["commit"]) == 40 and f"TensorRT {major}." in source["header"]


def test_unsupported_op_and_custom_domain(save_model):
    x = value("x", TensorProto.INT32, [4])
    y = value("y", TensorProto.INT32, [4])
    z = value("z", TensorProto.INT32, [4])
    model = model_of([
        helper.make_node("BitwiseNot", ["x"], ["y"], name="not"),
        helper.make_node("MyOp", ["x"], ["z"], name="custom", domain="com.example"),
    ], [x], [y, z], opset=18, domains=("com.example",))
    findings = {f.node: f for f in lint(save_model, model).findings}
    assert "BitwiseNot is not supported by TensorRT 10.15" in findings["not"].reason
    assert "custom domain 'com.example'" in findings["custom"].reason
    assert all(f.severity == "error" for f in findings.values())


def _unsqueeze(axes_from_shape: bool):
    x = value("x", TensorProto.FLOAT, [2, 3])
    y = value("y", TensorProto.FLOAT, [2, 1, 3])
    if axes_from_shape:
        # axes = rank(x) - 1, computed from the static shape.
        nodes = [helper.make_node("Shape", ["x"], ["s"], name="shape"),
                 helper.make_node("Shape", ["s"], ["rank"], name="rank"),
                 helper.make_node("Sub", ["rank", "one"], ["axes"], name="axes")]
        inits = [numpy_helper.from_array(np.array([1], np.int64), "one")]
        inputs = [x]
    else:
        nodes, inits = [], []
        inputs = [x, value("axes", TensorProto.INT64, [1])]
    nodes.append(helper.make_node("Unsqueeze", ["x", "axes"], ["y"], name="unsqueeze"))
    return model_of(nodes, inputs, [y], inits)


def test_initializer_inputs_and_the_pass_that_fixes_them(save_model, trtcheck_cli, tmp_path):
    (computable,) = lint(save_model, _unsqueeze(True), major=11).findings
    assert computable.node == "unsqueeze" and computable.fixed_by == "initializer-inputs"
    assert "must be an initializer for TensorRT 11.0" in computable.reason
    (runtime,) = lint(save_model, _unsqueeze(False)).findings
    assert runtime.fixed_by is None and "depends on runtime data" in runtime.reason

    path = save_model(_unsqueeze(True), "computed.onnx")
    assert trtcheck_cli("lint", path).code == 1
    fixed = trtcheck_cli("fix", path, "-o", "fixed.onnx", "--passes", "initializer-inputs")
    assert fixed.code == 0, fixed.stdout + fixed.stderr
    after = trtcheck_cli("lint", tmp_path / "fixed.onnx")
    assert after.code == 0, after.stdout


def test_attribute_values(save_model):
    x = value("x", TensorProto.FLOAT, [1, 1, 4, 4])
    y = value("y", TensorProto.FLOAT, [1, 1, 8, 8])
    scales = numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")
    model = model_of([helper.make_node("Resize", ["x", "", "scales"], ["y"], name="resize",
                                       mode="cubic")], [x], [y], [scales])
    (finding,) = lint(save_model, model).findings
    assert "mode='cubic' is not supported" in finding.reason and "linear" in finding.reason


def test_opset_out_of_range_and_strings(save_model):
    x = value("x", TensorProto.STRING, [2])
    y = value("y", TensorProto.STRING, [2])
    model = model_of([helper.make_node("Identity", ["x"], ["y"], name="copy")], [x], [y],
                     opset=8)
    reasons = [f.reason for f in lint(save_model, model).findings]
    assert any("opset 8 is outside TensorRT 10.15's range 9-24" in r for r in reasons)
    assert any("'x' is a string tensor" in r for r in reasons)


def test_type_warnings_do_not_fail_unless_strict(save_model, trtcheck_cli):
    x = value("x", TensorProto.DOUBLE, [4])
    y = value("y", TensorProto.DOUBLE, [4])
    path = save_model(model_of([helper.make_node("Sqrt", ["x"], ["y"], name="sqrt")], [x], [y]))
    (finding,) = lint_model(load_model(path), 10).findings
    assert finding.severity == "warning" and "float64" in finding.reason
    assert trtcheck_cli("lint", path).code == 0
    assert trtcheck_cli("lint", path, "--strict").code == 1


def test_bad_model_is_one_line(trtcheck_cli, save_model):
    model = cnn()
    model.graph.node[0].input[0] = "nothing"
    run = trtcheck_cli("lint", save_model(model, "broken.onnx"))
    assert run.code == 2 and "onnx.checker" in run.stderr and "Traceback" not in run.stderr


@pytest.mark.tensorrt
def test_real_parser_agrees_on_a_clean_model(save_model):
    result = lint(save_model, cnn())
    assert result.parser_errors == [] and result.disagreements == []


def test_real_models_from_the_onnx_package():
    import os

    folder = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light")
    for name in ("light_resnet50.onnx", "light_densenet121.onnx"):
        result = lint_model(load_model(os.path.join(folder, name)), 10)
        assert result.errors == [], result.errors


def _nonzero_on_mask():
    # torchvision's detectors: NonZero(Greater(scores, threshold)), a bool mask.
    scores = value("scores", TensorProto.FLOAT, [8])
    indices = value("indices", TensorProto.INT64, [1, None])
    threshold = numpy_helper.from_array(np.array(0.5, np.float32), "threshold")
    return model_of([helper.make_node("Greater", ["scores", "threshold"], ["keep"], name="gt"),
                     helper.make_node("NonZero", ["keep"], ["indices"], name="/model/NonZero")],
                    [scores], [indices], [threshold])


def test_nonzero_on_a_bool_mask_is_clean_as_the_parser_says(save_model):
    # The doc's Supported Types column says FP32, FP16; the importer takes BOOL (see the table's
    # source.corrections), so the detector pattern is clean for both majors.
    for major in (10, 11):
        assert lint(save_model, _nonzero_on_mask(), major).findings == []
        (correction,) = support_table(major)["source"]["corrections"]
        assert correction["operator"] == "NonZero" and "BOOL" in correction["value"]


def test_uint8_into_an_op_is_an_error(save_model):
    # quantize_dynamic's embedding: Gather on uint8 weights, then DequantizeLinear of uint8.
    ids = value("ids", TensorProto.INT64, [2, 4])
    out = value("out", TensorProto.FLOAT, [2, 4, 8])
    table = numpy_helper.from_array(np.arange(80, dtype=np.uint8).reshape(10, 8), "table")
    scale = numpy_helper.from_array(np.array(0.1, np.float32), "scale")
    zero = numpy_helper.from_array(np.array(0, np.uint8), "zero")
    model = model_of([helper.make_node("Gather", ["table", "ids"], ["rows"], name="gather"),
                      helper.make_node("DequantizeLinear", ["rows", "scale", "zero"], ["out"],
                                       name="dq")], [ids], [out], [table, scale, zero])
    result = lint(save_model, model)
    assert {(f.node, f.severity) for f in result.findings} == {("gather", "error"),
                                                               ("dq", "error")}
    assert all("uint8" in f.reason for f in result.findings)
    summary = result.summary()
    assert summary is not None
    assert summary.startswith("TensorRT 10.15's ONNX parser rejects 2 nodes: DequantizeLinear "
                              "(1), Gather (1)")
    assert summary.endswith(f"see `trtcheck lint {result.model_path} --trt-major 10`")


def test_summary_counts_nodes_and_model_problems(save_model):
    assert lint(save_model, cnn()).summary() is None
    x = value("x", TensorProto.FLOAT, [4])
    y = value("y", TensorProto.FLOAT, [4])
    model = model_of([helper.make_node("MyOp", ["x"], ["t"], name="a", domain="com.example"),
                      helper.make_node("MyOp", ["t"], ["y"], name="b", domain="com.example")],
                     [x], [y], opset=8, domains=("com.example",))
    summary = lint(save_model, model).summary()
    assert summary is not None
    assert "rejects 2 nodes: MyOp (2) and rejects the model: opset 8 is outside" in summary


def test_weights_are_left_out_of_shape_inference_without_changing_findings(save_model,
                                                                          monkeypatch):
    # A large weight feeds a MatMul whose result reaches a float64 Reshape through inference, and
    # an Unsqueeze's axes are computed from a small initializer (its value is needed).
    x = value("x", TensorProto.FLOAT, [1, 64])
    y = value("y", TensorProto.FLOAT, [1, 1, 200, 100])
    weight = numpy_helper.from_array(np.ones((64, 20000), np.float32), "weight")
    shape = numpy_helper.from_array(np.array([1, 200, 100], np.int64), "shape")
    one = numpy_helper.from_array(np.array([1], np.int64), "one")
    model = model_of([helper.make_node("MatMul", ["x", "weight"], ["h"], name="mm"),
                      helper.make_node("Cast", ["h"], ["hd"], name="cast", to=TensorProto.DOUBLE),
                      helper.make_node("Reshape", ["hd", "shape"], ["r"], name="reshape"),
                      helper.make_node("Cast", ["r"], ["f"], name="back", to=TensorProto.FLOAT),
                      helper.make_node("Sub", ["one", "one"], ["axes"], name="axes"),
                      helper.make_node("Unsqueeze", ["f", "axes"], ["y"], name="unsqueeze")],
                     [x], [y], [weight, shape, one])
    loaded = load_model(save_model(model))
    findings = lint_model(loaded, 11).findings
    assert {(f.node, f.fixed_by) for f in findings} == {
        ("reshape", None), ("back", None), ("unsqueeze", "initializer-inputs")}
    import trtcheck.lint

    assert trtcheck.lint._without_weights(loaded.proto) is not loaded.proto
    monkeypatch.setattr(trtcheck.lint, "_WEIGHT_ELEMENTS", 10**9)
    assert trtcheck.lint._without_weights(loaded.proto) is loaded.proto
    assert lint_model(loaded, 11).findings == findings


# compare and bisect say when TensorRT will not take the model (for TensorRT and emulated targets).

ZOO = Path(__file__).parents[1] / "zoo" / "real"


def _op_counts(path: Path) -> Counter:
    return Counter(node.op_type for node in onnx.load(str(path)).graph.node)


def test_compare_reports_what_tensorrt_rejects_on_a_dynamically_quantized_bert(trtcheck_cli,
                                                                               tmp_path):
    import jsonschema

    model = ZOO / "bert_tiny_dynquant.onnx"  # onnxruntime.quantization.quantize_dynamic
    run = trtcheck_cli("compare", model, "--target", "onnxrt-fp16", "--input-shapes",
                       "input_ids:1x16", "attention_mask:1x16", "--json", "r.json",
                       "--report", "r.html")
    assert run.code in (0, 1), run.stderr
    report = read_json(tmp_path / "r.json")
    schema = Path(__file__).parents[1] / "trtcheck" / "report" / "compare.schema.json"
    # This section against its part of the schema (test_cli validates whole reports).
    jsonschema.validate(report["tensorrt_support"],
                        json.loads(schema.read_text())["properties"]["tensorrt_support"])
    support = report["tensorrt_support"]
    ops = _op_counts(model)
    # Every node of an op TensorRT has no importer for is counted (the graph is the oracle).
    assert support["rejected_ops"]["MatMulInteger"] == ops["MatMulInteger"] > 0
    assert support["rejected_ops"]["DynamicQuantizeLinear"] == ops["DynamicQuantizeLinear"] > 0
    assert support["parses"] is False and support["tensorrt_version"] == "10.15"
    assert support["error_count"] == sum(support["rejected_ops"].values())
    assert support["command"] == f"trtcheck lint {model} --trt-major 10"
    printed = " ".join(run.stdout.split())  # the line may be wrapped to the terminal width
    assert support["summary"] in printed
    assert (f"TensorRT 10.15's ONNX parser rejects {support['error_count']} nodes: MatMulInteger "
            f"({ops['MatMulInteger']}), DynamicQuantizeLinear") in printed
    assert "emulated target only" in support["summary"]
    import html

    assert html.escape(support["summary"]) in (tmp_path / "r.html").read_text()
    # TensorRT 11's table is used with --trt-major 11.
    trtcheck_cli("compare", model, "--target", "onnxrt-fp16", "--trt-major", "11",
                 "--input-shapes", "input_ids:1x16", "attention_mask:1x16", "--json", "r11.json",
                 "--work-dir", "work11")
    assert read_json(tmp_path / "r11.json")["tensorrt_support"]["tensorrt_version"] == "11.0"


def test_compare_is_quiet_about_tensorrt_when_it_parses_or_is_not_the_target(save_model,
                                                                             trtcheck_cli,
                                                                             tmp_path):
    path = save_model(cnn())
    emulated = trtcheck_cli("compare", path, "--target", "onnxrt-fp16", "--json", "e.json")
    support = read_json(tmp_path / "e.json")["tensorrt_support"]
    assert support["parses"] is True and support["summary"] is None
    assert support["rejected_ops"] == {} and "TensorRT 10.15" not in emulated.stdout
    trtcheck_cli("compare", path, "--target", "onnxrt", "--json", "o.json")
    assert read_json(tmp_path / "o.json")["tensorrt_support"] is None


def _overflow_with_dynamic_quantization():
    # The planted fp16 overflow, plus quantize_dynamic's DynamicQuantizeLinear on the input.
    model = overflow_chain()
    model.graph.node.append(helper.make_node("DynamicQuantizeLinear", ["x"], ["q", "qs", "qz"],
                                             name="quant/x"))
    model.graph.output.extend([value("q", TensorProto.UINT8, [1, 64]),
                               value("qs", TensorProto.FLOAT, []),
                               value("qz", TensorProto.UINT8, [])])
    return model


def test_bisect_says_its_precision_fix_cannot_be_built(save_model, trtcheck_cli, tmp_path):
    path = save_model(_overflow_with_dynamic_quantization())
    run = trtcheck_cli("bisect", path, "--target", "onnxrt-fp16", "--output", "y", "--json",
                       "b.json", "--report", "b.html")
    assert run.code == 1, run.stdout + run.stderr
    bisect = read_json(tmp_path / "b.json")["bisect"]
    assert bisect["precision_fix"] is not None and bisect["precision_fix"]["keep_fp32"]
    assert "DynamicQuantizeLinear (1)" in bisect["tensorrt_blocked"]
    printed = " ".join(run.stdout.split())
    warning = printed.index("TensorRT cannot parse this model, so the precision fix below "
                            "holds for the emulated target only")
    assert warning < printed.index("precision fix on the emulated target only: keep")
    assert "TensorRT cannot parse this model" in (tmp_path / "b.html").read_text()
    # Without the unsupported op the same bisection proposes its plan plainly.
    clean = save_model(overflow_chain(), "clean.onnx")
    plain = trtcheck_cli("bisect", clean, "--target", "onnxrt-fp16", "--json", "c.json",
                         "--repro", "repro-clean")
    assert read_json(tmp_path / "c.json")["bisect"]["tensorrt_blocked"] is None
    assert "TensorRT cannot parse" not in plain.stdout
