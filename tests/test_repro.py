"""The printed `polygraphy run` commands point at files that exist and hold what trtcheck ran.

TensorRT cannot run here, so each command is checked piece by piece: the files it names (model
by sha256, inputs as Polygraphy reads them), the reference half run by Polygraphy's own CLI, the
target half run with ONNX Runtime in TensorRT's place, and `--gen-script` for the TensorRT flags.
"""

from __future__ import annotations

import hashlib
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx

from tests.conftest import read_json
from zoo.build import cnn

ZOO = Path(__file__).parents[1] / "zoo" / "real"
POLYGRAPHY = str(Path(sys.executable).parent / "polygraphy")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _commands(report: dict) -> list[list[str]]:
    """The printed command (or pair joined by &&) as argument lists."""
    return [shlex.split(part) for part in report["polygraphy_command"].split(" && ")]


def _value(argv: list[str], flag: str) -> str:
    return argv[argv.index(flag) + 1]


def _polygraphy(argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    assert argv[:2] == ["polygraphy", "run"]
    return subprocess.run([POLYGRAPHY, *argv[1:]], capture_output=True, text=True, cwd=cwd,
                          timeout=300)


def _without_target(argv: list[str], target_flags: list[str]) -> list[str]:
    """The target half with ONNX Runtime in TensorRT's place, and its tolerance flags loosened
    to ONNX Runtime's own noise (the flags themselves are checked by --gen-script)."""
    kept = argv[:3] + ["--onnxrt"]
    skip_values = False
    for arg in argv[3:]:
        if arg in target_flags:
            continue
        if arg.startswith("--"):
            skip_values = arg.startswith("--trt-") or arg in (
                "--atol", "--rtol", "--check-error-stat", "--error-quantile",
                "--cosine-similarity-threshold", "--compare", "--snr-threshold")
            if skip_values:
                continue
        elif skip_values:
            continue
        kept.append(arg)
    return [*kept, "--atol", "1e-4", "--rtol", "1e-3"]


def _runs(path: Path) -> dict[str, dict[str, np.ndarray]]:
    from polygraphy.comparator import RunResults

    return {name: {k: np.asarray(v) for k, v in iterations[0].items()}
            for name, iterations in RunResults.load(str(path)).items()}


def test_recorded_npz_inputs_are_written_as_the_json_the_command_loads(trtcheck_cli, tmp_path):
    from polygraphy.json import load_json

    model = ZOO / "mobilenet_v3_tiny_dynamo.onnx"
    # float64 as numpy records by default: trtcheck feeds it as the model's float32.
    image = np.random.default_rng(0).uniform(-1, 1, (1, 3, 64, 64))
    np.savez(tmp_path / "recorded.npz", image=image)
    run = trtcheck_cli("compare", model, "--target", "onnxrt-fp16", "--inputs", "recorded.npz",
                       "--json", "r.json", "--save-outputs", "runs.json")
    assert run.code in (0, 1), run.stderr
    report = read_json(tmp_path / "r.json")
    (argv,) = _commands(report)
    assert argv[2] == str(model) and _sha256(model) == report["model"]["sha256"]
    loaded = _value(argv, "--load-inputs")
    assert (tmp_path / loaded).parent == tmp_path / "trtcheck-work"
    (feed,) = load_json(str(tmp_path / loaded))
    assert feed["image"].dtype == np.float32
    np.testing.assert_array_equal(feed["image"], image.astype(np.float32))
    # The reference half, run by Polygraphy: the same outputs as trtcheck's reference run.
    reference = _polygraphy(["polygraphy", "run", str(model), "--onnxrt", "--load-inputs", loaded,
                             "--save-outputs", "polygraphy.json"], tmp_path)
    assert reference.returncode == 0, reference.stderr
    (polygraphy_run,) = _runs(tmp_path / "polygraphy.json").values()
    ours = _runs(tmp_path / "runs.json")["reference:onnxrt"]
    assert polygraphy_run.keys() == ours.keys()
    for name, array in ours.items():
        np.testing.assert_allclose(polygraphy_run[name], array, rtol=1e-5, atol=1e-6)


def test_passes_command_pair_runs_the_original_reference_and_the_fixed_target(trtcheck_cli,
                                                                              tmp_path):
    model = ZOO / "bert_tiny_dynamo_noopt.onnx"  # a torch.export without onnx optimisation
    run = trtcheck_cli("compare", model, "--target", "onnxrt-fp16", "--passes", "fold-constants",
                       "--input-shapes", "input_ids:1x16", "attention_mask:1x16", "--json",
                       "r.json")
    assert run.code in (0, 1), run.stderr
    report = read_json(tmp_path / "r.json")
    first, second = _commands(report)
    assert "the reference (ONNX Runtime) runs the original model" in report["polygraphy_note"]
    assert "the reference (ONNX Runtime) runs the original model" in " ".join(run.stdout.split())
    # Reference: ONNX Runtime on the original model, its outputs saved for the target's run.
    assert first[2] == str(model) and _sha256(model) == report["model"]["sha256"]
    assert "--onnxrt" in first and "--trt" not in first
    outputs = _value(first, "--save-outputs")
    assert _value(second, "--load-outputs") == outputs
    # Target: TensorRT on the fixed model trtcheck ran, which the passes changed.
    fixed = tmp_path / second[2]
    assert fixed == tmp_path / "trtcheck-work" / "bert_tiny_dynamo_noopt.fixed.onnx"
    assert "--trt" in second and "--fp16" in second and "--onnxrt" not in second
    assert _sha256(fixed) != _sha256(model)
    assert len(onnx.load(str(fixed)).graph.node) < len(onnx.load(str(model)).graph.node)
    assert _value(first, "--load-inputs") == _value(second, "--load-inputs")
    # Both halves run: Polygraphy's reference on the original, then the fixed model (ONNX
    # Runtime standing in for TensorRT) compared with the outputs the first half saved.
    done = _polygraphy(first, tmp_path)
    assert done.returncode == 0, done.stderr
    compared = _polygraphy(_without_target(second, ["--trt", "--fp16"]), tmp_path)
    assert compared.returncode == 0, compared.stdout + compared.stderr
    assert "PASSED" in compared.stdout + compared.stderr
    # The TensorRT half's flags parse (no TensorRT needed for --gen-script).
    script = _polygraphy([*second, "--gen-script", "-"], tmp_path)
    assert script.returncode == 0, script.stderr
    assert "fp16=True" in script.stdout and "RunResults.load" in script.stdout


def test_tensorrt_11_pair_compares_the_converted_engine_with_the_original_model(save_model,
                                                                               trtcheck_cli,
                                                                               tmp_path):
    path = save_model(cnn(seed=2))
    run = trtcheck_cli("compare", path, "--target", "onnxrt-fp16", "--trt-major", "11",
                       "--json", "r.json")
    assert run.code in (0, 1), run.stderr
    report = read_json(tmp_path / "r.json")
    first, second = _commands(report)
    # ONNX Runtime's reference runs the fp32 original, never the converted fp16 model.
    assert first[2] == str(path) and _sha256(path) == report["model"]["sha256"]
    assert "--onnxrt" in first and "--onnxrt" not in second
    converted = tmp_path / second[2]
    assert converted == tmp_path / "trtcheck-work" / "model.fp16.onnx"
    assert second[3:5] == ["--trt", "--strongly-typed"] and "--fp16" not in second
    assert any(init.data_type == onnx.TensorProto.FLOAT16
               for init in onnx.load(str(converted)).graph.initializer)
    assert "converted to fp16 for TensorRT 11" in report["polygraphy_note"]
    assert _polygraphy(first, tmp_path).returncode == 0
    script = _polygraphy([*second, "--gen-script", "-"], tmp_path)
    assert script.returncode == 0, script.stderr
    assert "strongly_typed=True" in script.stdout
    # The converted model on ONNX Runtime, against the original's saved outputs: fp16 rounding.
    compared = _polygraphy(_without_target(second, ["--trt", "--strongly-typed"])[:-4]
                           + ["--atol", "0.05", "--rtol", "0.05"], tmp_path)
    assert compared.returncode == 0, compared.stdout + compared.stderr


def test_a_single_command_when_both_sides_run_the_same_model(save_model, trtcheck_cli, tmp_path):
    path = save_model(cnn())
    trtcheck_cli("compare", path, "--target", "onnxrt-fp16", "--json", "r.json")
    report = read_json(tmp_path / "r.json")
    (argv,) = _commands(report)
    assert argv[2] == str(path) and "--trt" in argv and "--onnxrt" in argv
    # The note only says that Polygraphy checks the class scores by their values.
    assert report["polygraphy_note"].startswith("Polygraphy has no top-1 check")
    assert "--load-inputs" not in argv
