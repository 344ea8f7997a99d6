"""No value disables a check: nan, inf and negatives are refused wherever a number sets a limit."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from trtcheck.errors import UsageError
from trtcheck.passes import PassContext
from trtcheck.passes.pipeline import run_pipeline
from trtcheck.tolerance import Tolerance, ToleranceRequest, check_tolerance_value
from zoo.build import cnn

BAD = ["nan", "inf", "-inf"]
ZOO_DETECTION_HEAD = Path(__file__).resolve().parents[1] / "zoo" / "detection_head.onnx"

# (subcommand, flag, values it must refuse). Every numeric flag of every subcommand; `=` keeps
# argparse from reading "-inf" as an option. lint has none (--trt-major is a choice of 10/11).
FLAGS = [
    *[(command, flag, values) for command in ("compare", "bisect") for flag, values in [
        ("--atol", [*BAD, "-1e-3", "logits:nan", "logits:-1"]),
        ("--rtol", [*BAD, "-1", "logits:inf"]),
        ("--error-quantile", [*BAD, "-0.1", "1.5"]),
        ("--cosine", [*BAD, "-1.5", "2"]),
        ("--snr", [*BAD, "logits:nan"]),
        ("--max-memory", ["nan", "inf", "-1G", "0"]),
        ("--timeout", [*BAD, "-1", "0"]),
    ]],
    ("fix", "--rtol", [*BAD, "-1e-6"]),
    ("fix", "--timeout", [*BAD, "0"]),
    ("audit", "--max-memory", ["nan", "inf", "-512M"]),
    ("audit", "--timeout", [*BAD, "-3"]),
]


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> str:
    import onnx

    path = tmp_path_factory.mktemp("model") / "cnn.onnx"
    onnx.save(cnn(), str(path))
    return str(path)


@pytest.mark.parametrize("command, flag, value", [
    (command, flag, value) for command, flag, values in FLAGS for value in values])
def test_flag_refuses_values_that_disable_it(trtcheck_cli, tmp_path, model, command, flag,
                                             value):
    extra = ["-o", "fixed.onnx"] if command == "fix" else []
    run = trtcheck_cli(command, model, *extra, f"{flag}={value}")
    assert run.code == 2, (run.code, run.stdout, run.stderr)
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in run.stderr, run.stderr
    assert flag in lines[0] and value.rpartition(":")[2].lstrip("-") in lines[0], lines[0]
    assert "must be" in lines[0] or "memory size" in lines[0], lines[0]
    assert not (tmp_path / "fixed.onnx").exists()


@pytest.mark.parametrize("command, flag, value", [
    ("compare", "--atol", "0"), ("compare", "--snr", "-20"), ("compare", "--cosine", "-1"),
    ("compare", "--error-quantile", "1"), ("fix", "--rtol", "0"), ("compare", "--timeout", "60"),
])
def test_flag_takes_boundary_values(trtcheck_cli, tmp_path, model, command, flag, value):
    extra = ["-o", "fixed.onnx"] if command == "fix" else ["--target", "onnxrt"]
    run = trtcheck_cli(command, model, *extra, f"{flag}={value}")
    assert run.code == 0, (run.code, run.stdout, run.stderr)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, -1.0, -1e-300, True, "0.1",
                                   None])
def test_check_refuses(value):
    with pytest.raises(UsageError, match=r"^what: must be"):
        check_tolerance_value("what", value)


def test_check_bounds_and_message():
    assert check_tolerance_value("x", 0) == 0.0 and check_tolerance_value("x", 2.5) == 2.5
    assert check_tolerance_value("q", 1, 0.0, 1.0) == 1.0
    with pytest.raises(UsageError, match=r"^q: must be a finite number between 0 and 1$"):
        check_tolerance_value("q", 1.01, 0.0, 1.0)
    with pytest.raises(UsageError, match=r"^t: must be a finite number > 0$"):
        check_tolerance_value("t", 0, 0.0, above_low=True)
    with pytest.raises(UsageError, match=r"^s: must be a finite number \(nan or inf would switch"):
        check_tolerance_value("s", math.inf, -math.inf)
    with pytest.raises(UsageError, match=r"must be a finite number >= 0 \(nan or inf"):
        check_tolerance_value("i", 10**400)


@pytest.mark.parametrize("fields", [
    {"atol": math.nan}, {"rtol": math.inf}, {"atol": -1.0}, {"error_quantile": 2.0},
    {"min_cosine": math.nan}, {"min_snr": math.inf}, {"min_snr": -math.inf},
])
def test_api_tolerances_refuse_them_too(fields):
    with pytest.raises(UsageError, match="must be a finite number"):
        Tolerance(**{"atol": 1e-3, "rtol": 1e-3, **fields})
    with pytest.raises(UsageError, match="must be a finite number"):
        ToleranceRequest({name: {"": value} for name, value in fields.items()}).resolve("fp16")


def test_pipeline_rtol_nan_would_let_every_change_through():
    feeds = [{"image": np.zeros((1, 3, 32, 32), np.float32)}]
    with pytest.raises(UsageError, match="rtol nan: must be a finite number"):
        run_pipeline(cnn(), [], PassContext(), feeds, rtol=math.nan)


def test_default_is_scaled_to_each_output_and_explicit_values_keep_their_meaning():
    scaled = ToleranceRequest().resolve("fp16").for_output("boxes")
    assert scaled.atol_of_max == 2**-8 and scaled.check_error_stat == "quantile"
    assert scaled.max_error_factor == 4 and scaled.min_cosine == 0.9999
    # Resolved against an output reaching 320 (box coordinates): atol 1.25; again: unchanged.
    assert scaled.scaled_to(320.0).atol == pytest.approx(1.25)
    assert scaled.scaled_to(320.0).scaled_to(320.0) == scaled.scaled_to(320.0)
    explicit = ToleranceRequest({"atol": {"": 0.01}}).resolve("fp16").for_output("boxes")
    assert (explicit.atol, explicit.rtol, explicit.check_error_stat) == (0.01, 1e-2, "elemwise")
    assert explicit.atol_of_max is None and explicit.max_error_factor is None
    assert explicit.min_cosine is None
    one = ToleranceRequest({"atol": {"boxes": 0.5}, "min_cosine": {"": 0.99}}).resolve("bf16")
    assert one.for_output("boxes").atol_of_max is None
    assert one.for_output("boxes").min_cosine == 0.99
    assert one.for_output("scores").atol_of_max == 2**-5
    assert one.for_output("scores").min_cosine == 0.99


def test_default_passes_fp16_noise_and_fails_a_few_elements_far_off():
    """The verdict and the bisect criterion on a real model's fp16 noise, then with a fault."""
    import onnx
    from polygraphy.comparator import IterationResult, RunResults

    from trtcheck.compare import compare_runs, tensor_verdict
    from trtcheck.run import run_onnx

    model = onnx.load(str(ZOO_DETECTION_HEAD))
    feed = {i.name: np.random.default_rng(0).random(
        [d.dim_value for d in i.type.tensor_type.shape.dim]).astype(np.float32)
        for i in model.graph.input}
    (reference,) = run_onnx(model, [feed])
    # Boxes scaled to pixels: fp16 rounding relative to the values, a few elements at 2 x atol.
    boxes = reference["boxes"] * 320
    rounded = boxes.astype(np.float16).astype(np.float32)
    tolerances = ToleranceRequest().resolve("fp16")

    def verdict(target):
        results = RunResults()
        results.append(("ref", [IterationResult({"boxes": boxes}, runner_name="ref")]))
        results.append(("tgt", [IterationResult({"boxes": target}, runner_name="tgt")]))
        (diff,) = compare_runs(results, "ref", "tgt", tolerances)
        assert diff.passed == (not tensor_verdict(target, boxes, diff.tolerance))
        return diff

    assert verdict(rounded).passed
    atol = 2**-8 * float(np.abs(boxes).max())
    one_off = rounded.copy()
    one_off.flat[7] += 2 * atol  # 1 of 1,024 elements past atol: within the 0.1% allowed
    assert verdict(one_off).passed
    far_off = rounded.copy()
    far_off.flat[7] += 5 * atol  # but never past 4 x atol
    diff = verdict(far_off)
    assert not diff.passed and "beyond 4 x atol" in diff.failures[-1]
