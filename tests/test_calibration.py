"""`trtcheck tolerances`: proposals that pass, refusals on faults, sizes, mixed scales, suites."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from tests.conftest import read_json
from trtcheck.calibration import MIN_QUANTILE_ELEMENTS, round_up
from trtcheck.suite import load_suite

ZOO = Path(__file__).resolve().parents[1] / "zoo"


def _proposals(report: dict) -> dict[str, dict]:
    return {p["output"]: p["tolerance"] for p in report["proposals"]}


def test_proposed_tolerances_then_pass(trtcheck_cli, tmp_path):
    run = trtcheck_cli("tolerances", ZOO / "detection_head.onnx", "--seeds", "3",
                       "--json", tmp_path / "t.json")
    assert run.code == 0, run.stderr
    proposals = _proposals(read_json(tmp_path / "t.json"))
    assert set(proposals) == {"boxes", "scores"}
    flags = ["--atol", *(f"{name}:{t['atol']}" for name, t in proposals.items()),
             "--rtol", "0"]
    for seed in ("1", "2", "3"):
        compared = trtcheck_cli("compare", ZOO / "detection_head.onnx", "--target", "onnxrt-fp16",
                                "--seed", seed, *flags)
        assert compared.code == 0, compared.stdout


def test_refuses_on_a_real_fp16_overflow_naming_the_output(trtcheck_cli, tmp_path):
    run = trtcheck_cli("tolerances", ZOO / "demo.onnx", "--target", "onnxrt-fp16", "--seeds", "2",
                       "--json", tmp_path / "t.json")
    assert run.code == 1
    assert "output energy: inf/nan in the target" in run.stdout
    assert "range audit: tensor energy/sumsq" in run.stdout
    report = read_json(tmp_path / "t.json")
    assert report["proposals"] == [] and len(report["faults"]) == 2


def test_keeping_the_overflow_in_fp32_calibrates(trtcheck_cli, tmp_path):
    run = trtcheck_cli("tolerances", ZOO / "demo.onnx", "--target", "onnxrt-fp16", "--seeds", "2",
                       "--keep-fp32", "energy/scale", "energy/sumsq", "energy/sqrt")
    assert run.code == 0, run.stdout + run.stderr
    assert "energy: max abs error" in run.stdout


def test_small_outputs_get_no_quantile(trtcheck_cli, tmp_path):
    # vit_tiny's logits have 16 elements: a quantile of them would be one of the 16 errors.
    run = trtcheck_cli("tolerances", ZOO / "real" / "vit_tiny_classic.onnx", "--target",
                       "onnxrt-bf16", "--seeds", "2", "--val-range", "image:[-1,1]",
                       "--input-shapes", "image:1x3x32x32",
                       "--json", tmp_path / "t.json")
    assert run.code == 0, run.stdout + run.stderr
    (logits,) = _proposals(read_json(tmp_path / "t.json")).values()
    assert logits["check_error_stat"] == "elemwise" and "error_quantile" not in logits
    assert MIN_QUANTILE_ELEMENTS > 16


def _mixed_scale_model(path: Path) -> Path:
    """detection_head, its boxes in pixels (x 320) beside its scores in one channels-last output."""
    model = onnx.load(str(ZOO / "detection_head.onnx"))
    graph = model.graph
    graph.initializer.append(numpy_helper.from_array(np.array(320.0, np.float32), "pixels"))
    graph.node.extend([
        helper.make_node("Mul", ["boxes", "pixels"], ["boxes_px"]),
        helper.make_node("Concat", ["boxes_px", "scores"], ["stacked"], axis=1),
        helper.make_node("Transpose", ["stacked"], ["detections"], perm=[0, 2, 3, 1]),
    ])
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info("detections", onnx.TensorProto.FLOAT,
                                                      [1, 16, 16, 7]))
    onnx.save(model, str(path))
    return path


def test_an_output_mixing_scales_gets_atol_for_small_channels_and_rtol_for_large(trtcheck_cli,
                                                                                  tmp_path):
    model = _mixed_scale_model(tmp_path / "mixed.onnx")
    run = trtcheck_cli("tolerances", model, "--target", "onnxrt-fp16", "--seeds", "2",
                       "--json", tmp_path / "t.json")
    assert run.code == 0, run.stdout + run.stderr
    report = read_json(tmp_path / "t.json")
    (proposal,) = report["proposals"]
    assert "mixes scales" in proposal["why"]
    if proposal["tolerance"] is None:  # no tight pair: the advice to split it
        assert "split it" in proposal["why"]
        return
    tolerance = proposal["tolerance"]
    assert tolerance["rtol"] > 0 and tolerance["atol"] < 0.05  # atol on the scores' scale
    compared = trtcheck_cli("compare", model, "--target", "onnxrt-fp16", "--seed", "2",
                            "--atol", str(tolerance["atol"]), "--rtol", str(tolerance["rtol"]))
    assert compared.code == 0, compared.stdout


SUITE = """\
# A comment that must survive.
[suite]
description = "calibration test"

[targets.fp16]
backend = "onnxrt-fp16"

[[case]]
name = "head"
model = "{model}"

[[case]]
name = "other"
model = "{model}"
# the other case keeps its table
[case.tolerance_by_target.fp16]
atol = 0.5
rtol = 0.0
"""


def test_write_suite_keeps_the_rest_and_the_suite_loads(trtcheck_cli, tmp_path):
    suite = tmp_path / "m.suite.toml"
    suite.write_text(SUITE.format(model=ZOO / "detection_head.onnx"))
    run = trtcheck_cli("tolerances", ZOO / "detection_head.onnx", "--target", "onnxrt-fp16",
                       "--seeds", "2", "--write-suite", suite, "--case", "head")
    assert run.code == 0, run.stdout + run.stderr
    text = suite.read_text()
    assert "# A comment that must survive." in text and "# the other case keeps its table" in text
    loaded = load_suite(suite)
    head, other = loaded.cases
    target = loaded.targets["fp16"]
    head_values = head.tolerances_for(target).values
    assert set(head_values["atol"]) == {"boxes", "scores"}
    assert all(value > 0 for value in head_values["atol"].values())
    assert head.measurements_for(target)[0].startswith("trtcheck tolerances over seeds 1-2")
    assert other.tolerances_for(target).values["atol"] == {"": 0.5}


def test_write_suite_errors_name_the_fix(trtcheck_cli, tmp_path):
    suite = tmp_path / "m.suite.toml"
    suite.write_text(SUITE.format(model=ZOO / "detection_head.onnx"))
    before = suite.read_text()
    missing = trtcheck_cli("tolerances", ZOO / "detection_head.onnx", "--target", "onnxrt-bf16",
                           "--seeds", "1", "--write-suite", suite, "--case", "head")
    assert missing.code == 2 and "--suite-target NAME" in missing.stderr
    no_case = trtcheck_cli("tolerances", ZOO / "detection_head.onnx", "--target", "onnxrt-fp16",
                           "--seeds", "1", "--write-suite", suite, "--case", "nope")
    assert no_case.code == 2 and "--case nope" in no_case.stderr
    assert suite.read_text() == before
    alone = trtcheck_cli("tolerances", ZOO / "detection_head.onnx", "--case", "head")
    assert alone.code == 2 and "go together" in alone.stderr


@pytest.mark.parametrize(("value", "expected"), [(0.000437 * 4, 0.0018), (0.1, 0.1),
                                                 (1.234e-5, 1.3e-5), (0.0, 0.0)])
def test_round_up_never_undercuts(value, expected):
    assert round_up(value) == pytest.approx(expected)
    assert round_up(value) >= value
