"""`trtcheck lint` on models built here, against the TensorRT 10 and 11 tables."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.conftest import read_json
from trtcheck.lint import lint_model
from trtcheck.model import load_model
from trtcheck.trt_support import support_table
from zoo.build import cnn


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
