"""End-to-end `trtcheck compare` on models the tests build, run as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from polygraphy.comparator import RunResults

from tests.conftest import read_json
from trtcheck.backends import tensorrt_usable
from zoo.build import cnn, overflow_chain, two_heads


def test_passing_cnn_on_emulated_fp16(save_model, trtcheck_cli, tmp_path):
    model = save_model(cnn(seed=3))
    run = trtcheck_cli("compare", model, "--target", "onnxrt-fp16", "--json", "r.json")
    assert run.code == 0, run.stderr
    report = read_json(tmp_path / "r.json")
    assert report["verdict"] == "pass"
    (logits,) = report["outputs"]
    assert logits["name"] == "logits" and logits["passed"]
    # fp16 rounding is visible but small: the emulation really ran in reduced precision.
    assert 0 < logits["max_abs_error"] < 1e-2
    assert "PASS" in run.stdout


def test_planted_fp16_overflow_fails_fp16_and_passes_fp32(save_model, trtcheck_cli, tmp_path):
    model = save_model(overflow_chain(length=10, overflow_at=4))
    fp16 = trtcheck_cli("compare", model, "--target", "onnxrt-fp16", "--json", "fp16.json")
    fp32 = trtcheck_cli("compare", model, "--target", "onnxrt", "--json", "fp32.json")
    assert fp16.code == 1, fp16.stderr
    assert fp32.code == 0, fp32.stderr
    (y16,) = read_json(tmp_path / "fp16.json")["outputs"]
    assert not y16["passed"]
    assert y16["nonfinite_mismatches"] == 64
    assert y16["target_at_max"] in ("inf", "-inf", "nan")
    assert y16["required_atol"] is None  # no tolerance passes a non-finite value
    (y32,) = read_json(tmp_path / "fp32.json")["outputs"]
    assert y32["passed"] and y32["max_abs_error"] == 0.0


def test_two_outputs_one_passes_one_fails(save_model, trtcheck_cli, tmp_path):
    model = save_model(two_heads())
    run = trtcheck_cli("compare", model, "--target", "onnxrt-fp16", "--json", "r.json")
    assert run.code == 1
    report = read_json(tmp_path / "r.json")
    verdicts = {out["name"]: out["passed"] for out in report["outputs"]}
    assert verdicts == {"scores": True, "energy": False}
    assert report["verdict"] == "fail"
    assert "energy: 1 non-finite value(s) where the reference is finite" in run.stdout
    bisect_hint, overflow_hint = report["hints"]
    assert "--bisect" in bisect_hint
    assert overflow_hint.startswith("energy: inf/nan only in the fp16 target")
    assert "--keep-fp32" in overflow_hint


def test_nonfinite_fails_whatever_the_tolerance(save_model, trtcheck_cli, tmp_path):
    model = save_model(two_heads())
    run = trtcheck_cli("compare", model, "--target", "onnxrt-fp16", "--atol", "energy:1e30",
                       "--rtol", "energy:1e30", "--check-error-stat", "energy:median",
                       "--json", "r.json")
    assert run.code == 1
    energy = read_json(tmp_path / "r.json")["outputs"][1]
    assert energy["name"] == "energy" and not energy["passed"]
    assert energy["tolerance"]["atol"] == 1e30
    assert energy["tolerance"]["check_error_stat"] == "median"


def test_per_output_tolerance_decides_verdict(save_model, trtcheck_cli, tmp_path):
    model = save_model(cnn(seed=3))
    strict = trtcheck_cli("compare", model, "--target", "onnxrt-fp16", "--atol", "logits:1e-9",
                          "--rtol", "logits:1e-9", "--json", "strict.json")
    assert strict.code == 1
    logits = read_json(tmp_path / "strict.json")["outputs"][0]
    # The reported minimum tolerance really is the boundary.
    needed = logits["required_atol"]
    loose = trtcheck_cli("compare", model, "--target", "onnxrt-fp16", "--atol", f"{needed!r}",
                         "--rtol", "1e-9", "--json", "loose.json")
    assert loose.code == 0, loose.stdout


def test_saved_outputs_are_polygraphy_run_results(save_model, trtcheck_cli, tmp_path):
    model = save_model(cnn(seed=5))
    run = trtcheck_cli("compare", model, "--target", "onnxrt-fp16", "--save-outputs", "out.json",
                       "--save-inputs", "in.json")
    assert run.code == 0, run.stderr
    results = RunResults.load(str(tmp_path / "out.json"))
    assert list(results.keys()) == ["reference:onnxrt", "target:onnxrt-fp16"]
    reference_logits = results["reference:onnxrt"][0]["logits"]
    # The saved reference equals a direct ONNX Runtime run on the saved inputs.
    from polygraphy.json import load_json

    feeds = load_json(str(tmp_path / "in.json"))
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    (expected,) = session.run(None, dict(feeds[0]))
    np.testing.assert_array_equal(np.asarray(reference_logits), expected)
    # Polygraphy's own CLI reads the file back and compares the two runs.
    polygraphy = Path(sys.executable).parent / "polygraphy"
    loaded = subprocess.run([str(polygraphy), "run", "--load-outputs", str(tmp_path / "out.json"),
                             "--atol", "0.01", "--rtol", "0.01"],
                            capture_output=True, text=True, timeout=300)
    assert loaded.returncode == 0, loaded.stdout + loaded.stderr


def test_recorded_inputs_reproduce_synthetic_run(save_model, trtcheck_cli, tmp_path):
    model = save_model(cnn(seed=5))
    first = trtcheck_cli("compare", model, "--target", "onnxrt-fp16", "--seed", "7",
                         "--save-inputs", "in.json", "--json", "a.json")
    replay = trtcheck_cli("compare", model, "--target", "onnxrt-fp16", "--inputs", "in.json",
                          "--json", "b.json")
    assert first.code == replay.code == 0
    a, b = read_json(tmp_path / "a.json"), read_json(tmp_path / "b.json")
    assert a["outputs"][0]["max_abs_error"] == b["outputs"][0]["max_abs_error"]
    assert b["config"]["inputs"][0]["source"] == "recorded"
    # The npz form gives the same inputs too.
    from polygraphy.json import load_json

    feed = load_json(str(tmp_path / "in.json"))[0]
    np.savez(tmp_path / "in.npz", **{k: np.asarray(v) for k, v in feed.items()})
    npz = trtcheck_cli("compare", model, "--target", "onnxrt-fp16", "--inputs", "in.npz",
                       "--json", "c.json")
    assert npz.code == 0
    assert read_json(tmp_path / "c.json")["outputs"][0]["max_abs_error"] == \
        a["outputs"][0]["max_abs_error"]


def test_dynamic_batch_with_shapes(save_model, trtcheck_cli, tmp_path):
    model = save_model(cnn(seed=1, batch="N"))
    run = trtcheck_cli("compare", model, "--target", "onnxrt-fp16", "--input-shapes",
                       "image:3x3x32x32", "--val-range", "image:[-1,1]", "--json", "r.json")
    assert run.code == 0, run.stderr
    report = read_json(tmp_path / "r.json")
    assert report["outputs"][0]["shape"] == [3, 10]
    assert report["config"]["inputs"][0]["range"] == [-1.0, 1.0]
    assert "--trt-min-shapes 'image:[3,3,32,32]'" in report["polygraphy_command"]


def test_default_target_is_announced(save_model, trtcheck_cli):
    run = trtcheck_cli("compare", save_model(cnn()))
    expected = "trt-fp16" if tensorrt_usable() else "onnxrt-fp16"
    assert f"target {expected}:" in run.stdout.splitlines()[0]


def test_printed_polygraphy_command_is_valid_for_polygraphy(save_model, trtcheck_cli, tmp_path):
    model = save_model(two_heads())
    trtcheck_cli("compare", model, "--target", "onnxrt-fp16", "--atol", "1e-3", "scores:0.05",
                 "--cosine", "0.99", "--json", "r.json")
    command = read_json(tmp_path / "r.json")["polygraphy_command"]
    import shlex

    argv = shlex.split(command)
    assert argv[:2] == ["polygraphy", "run"] and "--fp16" in argv and "--trt" in argv
    argv[0] = str(Path(sys.executable).parent / "polygraphy")
    # --gen-script parses every flag and prints the loader chain without needing TensorRT.
    generated = subprocess.run([*argv, "--gen-script", "-"], capture_output=True, text=True,
                               cwd=tmp_path, timeout=300)
    assert generated.returncode == 0, generated.stderr
    assert "fp16=True" in generated.stdout
    assert "'scores': 0.05" in generated.stdout


@pytest.mark.tensorrt
def test_trt_fp16_target_on_gpu(save_model, trtcheck_cli, tmp_path):
    model = save_model(cnn(seed=3))
    run = trtcheck_cli("compare", model, "--target", "trt-fp16", "--json", "r.json")
    assert run.code == 0, run.stdout + run.stderr
    assert read_json(tmp_path / "r.json")["config"]["target"]["backend"] == "trt-fp16"


def test_json_report_matches_schema(save_model, trtcheck_cli, tmp_path):
    import jsonschema

    schema_path = Path(__file__).parents[1] / "trtcheck" / "report" / "compare.schema.json"
    schema = json.loads(schema_path.read_text())
    model = save_model(two_heads())
    trtcheck_cli("compare", model, "--target", "onnxrt-fp16", "--snr", "20", "--json", "r.json")
    report = read_json(tmp_path / "r.json")
    jsonschema.validate(report, schema)
    assert report["outputs"][0]["snr"] is not None
    assert set(report["versions"]) >= {"polygraphy", "onnx", "onnxruntime", "tensorrt"}
    assert report["config"]["seed"] == 1
    error_run = trtcheck_cli("compare", "missing.onnx", "--json", "e.json")
    assert error_run.code == 2
    error_report = read_json(tmp_path / "e.json")
    jsonschema.validate(error_report, schema)
    assert error_report["verdict"] == "error" and "missing.onnx" in error_report["error"]


def test_tensorrt_11_command_uses_the_converted_model(save_model, trtcheck_cli, tmp_path):
    import onnx

    model = save_model(two_heads())
    # The converted model's name beside the model is the user's file; it is never replaced.
    (tmp_path / "model.fp16.onnx").write_bytes(b"the user's own file")
    run = trtcheck_cli("compare", model, "--target", "onnxrt-fp16", "--trt-major", "11",
                       "--json", "out/r.json")
    assert run.code == 1
    import shlex

    # A pair: ONNX Runtime on the original saves its outputs, TensorRT builds the converted model
    # and compares with them (tests/test_repro.py runs both halves).
    command = read_json(tmp_path / "out" / "r.json")["polygraphy_command"]
    argv = shlex.split(command.split(" && ")[1])
    # Written to trtcheck's own work folder (marked as such), printed in the command.
    converted = tmp_path / "trtcheck-work" / "model.fp16.onnx"
    assert tmp_path / argv[2] == converted and "--strongly-typed" in argv and "--fp16" not in argv
    assert (tmp_path / "model.fp16.onnx").read_bytes() == b"the user's own file"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["r.json"]
    assert sorted(p.name for p in converted.parent.iterdir()) == [
        "TRTCHECK-WORK-FOLDER.txt", "model.fp16.onnx"]
    loaded = onnx.load(str(converted))
    onnx.checker.check_model(loaded)
    assert any(init.data_type == onnx.TensorProto.FLOAT16 for init in loaded.graph.initializer)
    argv[0] = str(Path(sys.executable).parent / "polygraphy")
    generated = subprocess.run([*argv, "--gen-script", "-"], capture_output=True, text=True,
                               cwd=tmp_path, timeout=300)
    assert generated.returncode == 0, generated.stderr
    assert "strongly_typed=True" in generated.stdout


def test_keeping_the_overflowing_nodes_in_fp32_passes(save_model, trtcheck_cli, tmp_path):
    model = save_model(two_heads())
    run = trtcheck_cli("compare", model, "--target", "onnxrt-fp16", "--keep-fp32", "energy/scale",
                       "energy/sumsq", "energy/sqrt", "--json", "r.json")
    assert run.code == 0, run.stdout
    report = read_json(tmp_path / "r.json")
    assert report["config"]["keep_fp32"] == ["energy/scale", "energy/sqrt", "energy/sumsq"]
    assert "--keep-fp32" not in report["polygraphy_command"]
    assert "--layer-precisions energy/scale:float32" in report["polygraphy_command"]


def test_printed_trtcheck_command_repeats_the_comparison(save_model, trtcheck_cli, tmp_path):
    import shlex

    model = save_model(cnn(batch="N"))
    first = trtcheck_cli("compare", model, "--target", "onnxrt-bf16", "--input-shapes",
                         "image:2x3x32x32", "--val-range", "[-2,2]", "--seed", "9", "--atol",
                         "logits:0.5", "--cosine", "0.9", "--json", "a.json")
    a = read_json(tmp_path / "a.json")
    argv = shlex.split(a["trtcheck_command"])
    assert argv[:2] == ["trtcheck", "compare"]
    again = trtcheck_cli(*argv[1:], "--json", "b.json")
    assert again.code == first.code == 0, again.stderr
    b = read_json(tmp_path / "b.json")
    assert b["outputs"] == a["outputs"] and b["config"] == a["config"]
