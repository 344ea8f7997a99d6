"""`trtcheck fix` end to end: writes a verified model atomically, with a report."""

from __future__ import annotations

import os

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from tests.conftest import read_json
from trtcheck.fix import fix_model
from trtcheck.inputs import InputSettings
from trtcheck.sources import resolve
from trtcheck.suite import ModelSource
from zoo.build import cnn

LIGHT = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light")


def test_fix_light_model_writes_a_smaller_equal_model(trtcheck_cli, tmp_path):
    source = os.path.join(LIGHT, "light_squeezenet.onnx")
    run = trtcheck_cli("fix", source, "-o", "fixed.onnx", "--json", "fix.json")
    assert run.code == 0, run.stdout + run.stderr
    report = read_json(tmp_path / "fix.json")
    assert report["nodes"]["before"] > report["nodes"]["after"]
    fold = next(p for p in report["passes"] if p["name"] == "fold-constants")
    assert fold["status"] == "changed" and fold["nodes_before"].get("ConstantOfShape", 0) > 0
    assert "ConstantOfShape" not in fold["nodes_after"]
    assert report["final_change"] == {"softmaxout_1": 0.0}
    fixed = tmp_path / "fixed.onnx"
    onnx.checker.check_model(str(fixed))
    x = np.random.default_rng(3).random((1, 3, 224, 224), dtype=np.float32)
    before = ort.InferenceSession(source, providers=["CPUExecutionProvider"])
    after = ort.InferenceSession(str(fixed), providers=["CPUExecutionProvider"])
    np.testing.assert_array_equal(after.run(None, {"data_0": x})[0],
                                  before.run(None, {"data_0": x})[0])
    assert "fold-constants" in run.stdout and "wrote" in run.stdout


def test_rapidocr_detection_folds_to_half_bit_identically(tmp_path):
    source = resolve(ModelSource(
        "pypi", "rapidocr-onnxruntime==1.4.4",
        "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
        "d2a7720d45a54257208b1e13e36a8479894cb74155a5efe29462512d42f49da9", "pypi:rapidocr"))
    result = fix_model(source, tmp_path / "det.onnx",
                       inputs=InputSettings(shapes={"x": (1, 3, 96, 96)}))
    assert (result.nodes_before, result.nodes_after) == (672, 330)
    assert result.pipeline.final_change == {"sigmoid_0.tmp_0": 0.0}
    assert result.pipeline.clean


def test_static_shapes(trtcheck_cli, save_model, tmp_path):
    path = save_model(cnn(batch="N"))
    run = trtcheck_cli("fix", path, "-o", "static.onnx", "--input-shapes", "image:2x3x32x32",
                       "--static")
    assert run.code == 0, run.stdout + run.stderr
    fixed = onnx.load(str(tmp_path / "static.onnx"))
    assert [d.dim_value for d in fixed.graph.input[0].type.tensor_type.shape.dim] == [2, 3, 32, 32]
    kept = trtcheck_cli("fix", path, "-o", "dynamic.onnx", "--input-shapes", "image:2x3x32x32")
    assert kept.code == 0
    dims = onnx.load(str(tmp_path / "dynamic.onnx")).graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "N"


def test_bad_input(trtcheck_cli, save_model, tmp_path):
    path = save_model(cnn())
    same = trtcheck_cli("fix", path, "-o", path)
    assert same.code == 2 and "overwrite the input" in same.stderr
    unknown = trtcheck_cli("fix", path, "-o", "x.onnx", "--passes", "fold")
    assert unknown.code == 2 and "unknown pass(es) fold" in unknown.stderr
    dynamic = trtcheck_cli("fix", save_model(cnn(batch="N"), "dyn.onnx"), "-o", "x.onnx")
    assert dynamic.code == 2 and "--input-shapes image:1x3x32x32" in dynamic.stderr
    assert not (tmp_path / "x.onnx").exists()


def test_unverifiable_model_needs_no_verify(trtcheck_cli, save_model, tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["t"], name="copy"),
                               helper.make_node("Mystery", ["t"], ["y"], name="custom",
                                                domain="com.example")], "g", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("com.example", 1)])
    path = save_model(model)
    refused = trtcheck_cli("fix", path, "-o", "out.onnx")
    assert refused.code == 3 and "cannot verify" in refused.stderr
    assert not (tmp_path / "out.onnx").exists()
    waived = trtcheck_cli("fix", path, "-o", "out.onnx", "--no-verify")
    assert waived.code == 0, waived.stdout + waived.stderr
    assert [n.op_type for n in onnx.load(str(tmp_path / "out.onnx")).graph.node] == ["Mystery"]
