"""`trtcheck fix` end to end: writes a verified model atomically, with a report."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

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


ZOO = Path(__file__).parents[1] / "zoo" / "real"
BERT_INPUTS = InputSettings(shapes={"input_ids": (1, 64), "attention_mask": (1, 64)},
                            ranges={"input_ids": (0, 511), "attention_mask": (1, 1)})


def _ort_outputs(path: Path, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feed)


def test_fix_keeps_external_data_and_the_outputs(tmp_path):
    source = ZOO / "bert_tiny_classic_extdata.onnx"
    result = fix_model(source, tmp_path / "fixed.onnx", inputs=BERT_INPUTS)
    assert result.pipeline.clean, [(o.name, o.message) for o in result.pipeline.outcomes]
    fixed = onnx.load(str(tmp_path / "fixed.onnx"), load_external_data=False)
    assert any(t.data_location == TensorProto.EXTERNAL for t in fixed.graph.initializer)
    assert (tmp_path / "fixed.onnx.data").is_file()
    assert (tmp_path / "fixed.onnx").stat().st_size < (tmp_path / "fixed.onnx.data").stat().st_size
    onnx.checker.check_model(str(tmp_path / "fixed.onnx"))
    feed = result.feeds.iterations[0]
    for before, after in zip(_ort_outputs(source, feed), _ort_outputs(tmp_path / "fixed.onnx",
                                                                      feed), strict=True):
        np.testing.assert_allclose(after, before, rtol=0, atol=1e-5 * np.abs(before).max())


def test_save_onnx_over_the_limit_writes_external_data_and_leaves_the_model_alone(tmp_path,
                                                                                monkeypatch):
    from trtcheck import atomic

    model = onnx.load(str(ZOO / "bert_tiny_classic.onnx"))
    before = model.SerializeToString(deterministic=True)
    monkeypatch.setattr(atomic, "EXTERNAL_DATA_BYTES", 10_000)  # stands in for 2 GB
    atomic.save_onnx(model, tmp_path / "big.onnx")
    assert model.SerializeToString(deterministic=True) == before
    assert (tmp_path / "big.onnx.data").stat().st_size > 100_000
    reloaded = onnx.load(str(tmp_path / "big.onnx"))
    for saved, original in zip(reloaded.graph.initializer, model.graph.initializer, strict=True):
        np.testing.assert_array_equal(numpy_helper.to_array(saved),
                                      numpy_helper.to_array(original))
    assert not [p for p in tmp_path.iterdir() if atomic.PARTIAL_TAG in p.name]


def test_fix_over_the_limit_offloads_weights_and_matches_the_in_memory_fix(tmp_path,
                                                                           monkeypatch):
    from trtcheck import atomic

    source = ZOO / "bert_tiny_classic.onnx"
    normal = fix_model(source, tmp_path / "normal.onnx", inputs=BERT_INPUTS)
    monkeypatch.setattr(atomic, "EXTERNAL_DATA_BYTES", 10_000)  # every model is "over 2 GB"
    big = fix_model(source, tmp_path / "big.onnx", inputs=BERT_INPUTS)
    assert big.pipeline.weights_folder is not None  # the passes ran on an offloaded copy
    assert [(o.name, o.status) for o in big.pipeline.outcomes] == \
        [(o.name, o.status) for o in normal.pipeline.outcomes]
    assert big.nodes_after == normal.nodes_after
    assert (tmp_path / "big.onnx.data").is_file()
    feed = normal.feeds.iterations[0]
    for a, b in zip(_ort_outputs(tmp_path / "normal.onnx", feed),
                    _ort_outputs(tmp_path / "big.onnx", feed), strict=True):
        np.testing.assert_array_equal(a, b)
