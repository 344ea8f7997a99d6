"""Bad input: one line naming the file, key or node and the fix; exit 2; no traceback."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from tests.conftest import read_json
from trtcheck.backends import tensorrt_usable
from zoo.build import cnn, overflow_chain


def assert_one_line_error(run, code: int, *fragments: str) -> None:
    assert run.code == code, (run.code, run.stdout, run.stderr)
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr
    assert "Traceback" not in run.stderr + run.stdout
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_missing_file(trtcheck_cli):
    assert_one_line_error(trtcheck_cli("compare", "nope.onnx"), 2, "nope.onnx", "no such file")


def test_not_an_onnx_file(trtcheck_cli, tmp_path):
    (tmp_path / "notes.onnx").write_text("these are my notes, not a model\n")
    assert_one_line_error(trtcheck_cli("compare", "notes.onnx"), 2, "notes.onnx", "not")


def test_empty_protobuf_is_not_a_model(trtcheck_cli, tmp_path):
    (tmp_path / "empty.onnx").write_bytes(b"")
    assert_one_line_error(trtcheck_cli("compare", "empty.onnx"), 2, "empty.onnx",
                          "not an ONNX model")


def test_truncated_model(trtcheck_cli, save_model, tmp_path):
    data = save_model(cnn()).read_bytes()
    (tmp_path / "cut.onnx").write_bytes(data[: len(data) // 2])
    assert_one_line_error(trtcheck_cli("compare", "cut.onnx"), 2, "cut.onnx", "truncated")


def test_model_rejected_by_checker(trtcheck_cli, save_model):
    model = cnn()
    model.graph.node[0].input[0] = "no_such_tensor"
    path = save_model(model, "broken.onnx")
    assert_one_line_error(trtcheck_cli("compare", path), 2, "broken.onnx", "onnx.checker")


def _with_external_weights(tmp_path: Path, location: str) -> Path:
    model = cnn()
    weight = model.graph.initializer[0]
    array = numpy_helper.to_array(weight)
    data_path = (tmp_path / "models" / location).resolve()
    data_path.parent.mkdir(parents=True, exist_ok=True)
    data_path.write_bytes(array.tobytes())
    weight.ClearField("raw_data")
    weight.data_location = onnx.TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", str(array.nbytes))):
        entry = weight.external_data.add()
        entry.key, entry.value = key, value
    path = tmp_path / "models" / "external.onnx"
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(model.SerializeToString())
    return path


def test_external_data_escaping_model_folder(trtcheck_cli, tmp_path):
    path = _with_external_weights(tmp_path, "../outside/weights.bin")
    assert_one_line_error(trtcheck_cli("compare", path), 2, "external.onnx", "outside",
                          "trunk.w1")


def test_external_data_inside_folder_loads(trtcheck_cli, tmp_path):
    path = _with_external_weights(tmp_path, "weights.bin")
    run = trtcheck_cli("compare", path, "--target", "onnxrt")
    assert run.code == 0, run.stderr


def test_unknown_backend(trtcheck_cli, save_model):
    run = trtcheck_cli("compare", save_model(cnn()), "--target", "tensorrt-fp8")
    assert_one_line_error(run, 2, "tensorrt-fp8", "onnxrt-fp16")


@pytest.mark.parametrize("flag, value, fragment", [
    ("--atol", "-1", "--atol -1"),
    ("--atol", "abc", "not a number"),
    ("--rtol", "nan", "--rtol nan"),
    ("--rtol", "logits:inf", "finite"),
    ("--check-error-stat", "worst", "elemwise"),
    ("--cosine", "2", "between"),
])
def test_bad_tolerance(trtcheck_cli, save_model, flag, value, fragment):
    run = trtcheck_cli("compare", save_model(cnn()), flag, value)
    assert_one_line_error(run, 2, fragment)


def test_tolerance_for_unknown_output(trtcheck_cli, save_model):
    run = trtcheck_cli("compare", save_model(cnn()), "--atol", "boxes:0.1")
    assert_one_line_error(run, 2, "'boxes'", "logits")


def test_input_name_not_in_model(trtcheck_cli, save_model):
    run = trtcheck_cli("compare", save_model(cnn()), "--val-range", "images:[0,1]")
    assert_one_line_error(run, 2, "'images'", "image")


def test_dynamic_dimensions_without_shapes(trtcheck_cli, save_model):
    run = trtcheck_cli("compare", save_model(cnn(batch="N")))
    assert_one_line_error(run, 2, "'image'", "--input-shapes image:1x3x32x32")


def test_shape_that_contradicts_the_model(trtcheck_cli, save_model):
    run = trtcheck_cli("compare", save_model(cnn(batch="N")), "--input-shapes", "image:2x3x16x16")
    assert_one_line_error(run, 2, "image", "fixed dimensions")


def test_recorded_inputs_with_wrong_names(trtcheck_cli, save_model, tmp_path):
    np.savez(tmp_path / "in.npz", pixels=np.zeros((1, 3, 32, 32), np.float32))
    run = trtcheck_cli("compare", save_model(cnn()), "--inputs", "in.npz")
    assert_one_line_error(run, 2, "'pixels'", "image")


def test_recorded_inputs_with_wrong_dtype(trtcheck_cli, save_model, tmp_path):
    np.savez(tmp_path / "in.npz", image=np.zeros((1, 3, 32, 32), np.int64))
    run = trtcheck_cli("compare", save_model(cnn()), "--inputs", "in.npz")
    assert_one_line_error(run, 2, "int64", "float32")


def test_keep_fp32_names_unknown_node(trtcheck_cli, save_model):
    run = trtcheck_cli("compare", save_model(overflow_chain()), "--keep-fp32", "chain/mul99")
    assert_one_line_error(run, 2, "chain/mul99")


def test_bf16_on_old_opset_is_upgraded(trtcheck_cli, save_model):
    model = cnn()
    model.opset_import[0].version = 11
    run = trtcheck_cli("compare", save_model(model), "--target", "onnxrt-bf16")
    assert run.code == 0, run.stdout + run.stderr


def test_bad_flag_is_one_line(trtcheck_cli, save_model):
    run = trtcheck_cli("compare", save_model(cnn()), "--no-such-flag")
    assert_one_line_error(run, 2, "--no-such-flag", "--help")


@pytest.mark.skipif(tensorrt_usable(), reason="TensorRT is installed here; this checks the "
                    "message shown without it")
def test_tensorrt_target_without_tensorrt(trtcheck_cli, save_model, tmp_path):
    run = trtcheck_cli("compare", save_model(cnn()), "--target", "trt-fp16", "--json", "r.json")
    assert_one_line_error(run, 3, "trt-fp16", "pip install")
    assert read_json(tmp_path / "r.json")["verdict"] == "error"


def test_failed_run_leaves_no_partial_files(trtcheck_cli, save_model, tmp_path):
    run = trtcheck_cli("compare", save_model(cnn(batch="N")), "--save-outputs", "o.json")
    assert run.code == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]
