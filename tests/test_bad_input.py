"""Bad input: one line naming the file, key or node and the fix; exit 2; no traceback."""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

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


# Every case below is refused before any work, so no file of the folder may change.
def _files(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _string_input_model() -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("Identity", ["s"], ["o"])], "strings",
        [helper.make_tensor_value_info("s", onnx.TensorProto.STRING, [2])],
        [helper.make_tensor_value_info("o", onnx.TensorProto.STRING, [2])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _int_input_model() -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("Add", ["ids", "ids"], ["o"])], "ints",
        [helper.make_tensor_value_info("ids", onnx.TensorProto.INT64, [4])],
        [helper.make_tensor_value_info("o", onnx.TensorProto.INT64, [4])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    onnx.save(cnn(), str(tmp_path / "model.onnx"))
    onnx.save(cnn(batch="N"), str(tmp_path / "dyn.onnx"))
    onnx.save(_string_input_model(), str(tmp_path / "strings.onnx"))
    onnx.save(_int_input_model(), str(tmp_path / "ids.onnx"))
    (tmp_path / "empty.npz").write_bytes(b"")
    (tmp_path / "corrupt.npz").write_bytes(b"PK\x03\x04" + b"not a zip archive" * 8)
    np.savez(tmp_path / "in.npz", image=np.zeros((1, 3, 32, 32), np.float32))
    short = _with_external_weights(tmp_path, "weights.bin")
    data = tmp_path / "models" / "weights.bin"
    data.write_bytes(data.read_bytes()[:10])  # truncated, as by an interrupted copy
    assert short.is_file()
    (tmp_path / "out").mkdir()
    (tmp_path / "notes.txt").write_text("the user's notes\n")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "keep.txt").write_text("not trtcheck's\n")
    return tmp_path


BAD_INPUTS = [
    ("seed-negative", ["compare", "model.onnx", "--seed", "-1"], 2, "--seed"),
    ("seed-huge", ["compare", "model.onnx", "--seed", str(2**80)], 2, "--seed"),
    ("shape-huge", ["compare", "dyn.onnx", "--input-shapes", "image:100000000x3x32x32"], 2,
     "smaller --input-shapes"),
    ("int-range-huge", ["compare", "ids.onnx", "--val-range", "ids:[0,1e30]"], 2, "int64"),
    ("float-range-beyond-float32", ["compare", "model.onnx", "--val-range", "[0,1e300]"], 2,
     "float32"),
    ("npz-empty", ["compare", "model.onnx", "--inputs", "empty.npz"], 2, "empty.npz"),
    ("npz-corrupt", ["compare", "model.onnx", "--inputs", "corrupt.npz"], 2, "corrupt.npz"),
    ("string-input", ["compare", "strings.onnx"], 2, "'s'"),
    ("external-data-short", ["compare", "models/external.onnx"], 2, "trunk.w1"),
    ("json-is-dir", ["compare", "model.onnx", "--json", "out"], 2, "--json out"),
    ("json-under-a-file", ["compare", "model.onnx", "--json", "notes.txt/r.json"], 2,
     "is a file"),
    ("json-unwritable", ["compare", "model.onnx", "--json", "/proc/trtcheck.json"], 2,
     "--json /proc/trtcheck.json"),
    ("report-is-model", ["compare", "model.onnx", "--report", "model.onnx"], 2, "overwrite"),
    ("json-is-inputs", ["compare", "model.onnx", "--inputs", "in.npz", "--json", "in.npz"], 2,
     "overwrite"),
    ("save-inputs-is-dir", ["compare", "model.onnx", "--save-inputs", "out"], 2,
     "--save-inputs out"),
    ("same-output-twice", ["compare", "model.onnx", "--json", "r.json", "--save-outputs",
                           "r.json"], 2, "both"),
    ("work-dir-not-ours", ["compare", "model.onnx", "--work-dir", "mine"], 2, "--work-dir mine"),
    ("fix-output-dir", ["fix", "model.onnx", "-o", "out"], 2, "-o out"),
    ("fix-output-is-model", ["fix", "model.onnx", "-o", "model.onnx"], 2, "overwrite"),
    ("fix-json-is-model", ["fix", "model.onnx", "-o", "f.onnx", "--json", "model.onnx"], 2,
     "--json model.onnx"),
    ("bisect-repro-is-file", ["bisect", "model.onnx", "--repro", "notes.txt"], 2,
     "--repro notes.txt"),
    ("bisect-repro-is-model", ["bisect", "model.onnx", "--repro", "model.onnx"], 2, "--repro"),
    ("audit-json-dir", ["audit", "model.onnx", "--json", "out"], 2, "--json out"),
    ("lint-json-is-model", ["lint", "model.onnx", "--json", "model.onnx"], 2, "overwrite"),
]


@pytest.mark.parametrize("argv, code, fragment", [case[1:] for case in BAD_INPUTS],
                         ids=[case[0] for case in BAD_INPUTS])
def test_bad_input_is_one_line_and_changes_nothing(trtcheck_cli, workspace, argv, code,
                                                   fragment):
    before = _files(workspace)
    run = trtcheck_cli(*argv)
    assert_one_line_error(run, code, fragment)
    assert _files(workspace) == before


def test_converted_model_never_replaces_a_file_beside_the_model(trtcheck_cli, workspace):
    (workspace / "model.fp16.onnx").write_bytes(b"the user's file of that name")
    before = _files(workspace)
    run = trtcheck_cli("compare", "model.onnx", "--target", "onnxrt-fp16", "--trt-major", "11",
                       "--json", "out/r.json")
    assert run.code == 0, run.stderr
    after = _files(workspace)
    written = {name for name in after if name not in before}
    assert written == {"out/r.json", "trtcheck-work/model.fp16.onnx",
                       "trtcheck-work/TRTCHECK-WORK-FOLDER.txt"}
    assert {name: after[name] for name in before} == before
    # The printed TensorRT 11 command reads the file that was written.
    assert "trtcheck-work/model.fp16.onnx" in read_json(workspace / "out/r.json")[
        "polygraphy_command"]
    # A second run replaces its own converted model in its own (marked) folder.
    again = trtcheck_cli("compare", "model.onnx", "--target", "onnxrt-fp16", "--trt-major", "11")
    assert again.code == 0, again.stderr


def test_stale_partial_files_of_a_killed_run_are_removed(trtcheck_cli, workspace):
    # What SIGKILL during `fix -o fixed.onnx` leaves: a visible, clearly temporary file whose
    # process is gone. One of a live process (this test's) and look-alikes stay.
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True, check=True)
    dead = int(finished.stdout)
    stale = workspace / f"fixed.onnx.trtcheck-partial-{dead}-abc123.onnx"
    live = workspace / f"fixed.onnx.trtcheck-partial-{os.getpid()}-def456.onnx"
    other = workspace / f"other.onnx.trtcheck-partial-{dead}-abc123.onnx"
    for path in (stale, live, other):
        path.write_bytes(b"\0" * 1000)
    run = trtcheck_cli("fix", "model.onnx", "-o", "fixed.onnx")
    assert run.code in (0, 1), run.stderr
    onnx.checker.check_model(str(workspace / "fixed.onnx"))
    assert not stale.exists() and live.exists() and other.exists()
    assert not [p for p in workspace.iterdir()
                if p.name.startswith("fixed.onnx.") and p not in (live,)]


def _slow_model() -> onnx.ModelProto:
    """A chain of 1024x1024 MatMuls (one shared weight) that ONNX Runtime takes seconds on."""
    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(
        (rng.standard_normal((1024, 1024)) / 32).astype(np.float32), "w")
    nodes, current = [], "x"
    for index in range(400):
        nodes.append(helper.make_node("MatMul", [current, "w"], [f"m{index}"]))
        nodes.append(helper.make_node("Tanh", [f"m{index}"], [f"t{index}"]))
        current = f"t{index}"
    graph = helper.make_graph(
        nodes, "slow", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [256, 1024])],
        [helper.make_tensor_value_info(current, onnx.TensorProto.FLOAT, [256, 1024])], [weight])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _wait_until_running(process: subprocess.Popen, timeout: float = 120.0) -> None:
    """Waits until trtcheck has imported ONNX Runtime, i.e. is inside its command's work."""
    deadline = time.monotonic() + timeout
    maps = Path(f"/proc/{process.pid}/maps")
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        with contextlib.suppress(OSError):
            if "onnxruntime_pybind11_state" in maps.read_text():
                time.sleep(0.5)
                return
        time.sleep(0.1)
    raise AssertionError("trtcheck did not start running the model in time")


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs Linux /proc")
@pytest.mark.parametrize("signum, code, fragment", [
    (signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "SIGTERM")])
def test_interrupt_is_one_line_and_leaves_no_files(tmp_path, signum, code, fragment):
    onnx.save(_slow_model(), str(tmp_path / "slow.onnx"))
    before = _files(tmp_path)
    process = subprocess.Popen(
        [sys.executable, "-m", "trtcheck", "compare", "slow.onnx", "--target", "onnxrt-fp16",
         "--trt-major", "11", "--json", "r.json", "--save-outputs", "o.json"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_until_running(process)
    started = time.monotonic()
    process.send_signal(signum)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == code, (stdout, stderr)
    assert time.monotonic() - started < 30
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0], stderr
    assert "Traceback" not in stdout + stderr
    assert _files(tmp_path) == before
    assert set(Path(tempfile.gettempdir()).glob(f"trtcheck-work-{process.pid}-*")) == set()


def test_internal_error_exits_4_with_traceback_and_a_bug_report_line(monkeypatch, capsys,
                                                                      save_model):
    from trtcheck import cli

    path = save_model(cnn())

    def broken_lint(args):
        raise RuntimeError("planted bug")

    monkeypatch.setattr(cli, "run_lint", broken_lint)
    assert cli.main(["lint", str(path)]) == 4
    err = capsys.readouterr().err
    assert "Traceback" in err and "RuntimeError: planted bug" in err
    assert "bug in trtcheck" in err.strip().splitlines()[-1]
