"""Each metric of `compare_runs` checked against numpy on arrays with known errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
from onnx import TensorProto, helper
from polygraphy.comparator import IterationResult, RunResults

from tests.conftest import read_json
from trtcheck.compare import (
    ComparisonError,
    NoSignalError,
    agreement_text,
    compare_runs,
    tensor_verdict,
)
from trtcheck.tolerance import Tolerance, Tolerances

REF, TGT = "reference:onnxrt", "target:onnxrt-fp16"


def runs(reference: dict[str, np.ndarray], target: dict[str, np.ndarray]) -> RunResults:
    results = RunResults()
    results.append((REF, [IterationResult(reference, runner_name=REF)]))
    results.append((TGT, [IterationResult(target, runner_name=TGT)]))
    return results


def tolerances(**fields) -> Tolerances:
    return Tolerances(Tolerance(**{"atol": 1e-3, "rtol": 1e-3, **fields}))


@pytest.fixture
def pair():
    rng = np.random.default_rng(0)
    reference = rng.standard_normal((4, 50)).astype(np.float32)
    target = reference + rng.normal(0, 1e-3, reference.shape).astype(np.float32)
    target[2, 17] += 0.5  # the planted worst element
    return reference, target


def test_metrics_match_numpy(pair):
    reference, target = pair
    (diff,) = compare_runs(runs({"y": reference}, {"y": target}), REF, TGT, tolerances())
    absdiff = np.abs(target.astype(np.float64) - reference.astype(np.float64))
    reldiff = absdiff / np.abs(reference.astype(np.float64))
    assert diff.max_abs_index == (2, 17)
    assert diff.max_abs_error == pytest.approx(absdiff.max())
    assert diff.reference_at_max == pytest.approx(reference[2, 17])
    assert diff.target_at_max == pytest.approx(target[2, 17])
    assert diff.max_rel_error == pytest.approx(reldiff.max())
    assert diff.mean_abs_error == pytest.approx(absdiff.mean())
    assert diff.p99_abs_error == pytest.approx(np.quantile(absdiff, 0.99, method="higher"))
    cosine = np.dot(target.ravel().astype(np.float64), reference.ravel()) / (
        np.linalg.norm(target.astype(np.float64)) * np.linalg.norm(reference.astype(np.float64)))
    assert diff.cosine == pytest.approx(cosine, abs=1e-7)
    exceeding = ((absdiff > 1e-3) & (reldiff > 1e-3)).sum()
    assert diff.exceeding == exceeding > 0
    assert diff.elements == reference.size
    assert not diff.passed


@pytest.mark.parametrize("stat", ["elemwise", "max", "mean", "median", "quantile"])
def test_required_tolerances_are_the_boundary(pair, stat):
    reference, target = pair
    results = runs({"y": reference}, {"y": target})
    (strict,) = compare_runs(results, REF, TGT, tolerances(atol=1e-9, rtol=1e-9,
                                                           check_error_stat=stat))
    assert not strict.passed
    needed = strict.required_atol
    assert needed is not None and needed > 0
    (at_boundary,) = compare_runs(results, REF, TGT, tolerances(atol=needed, rtol=1e-9,
                                                                check_error_stat=stat))
    assert at_boundary.passed, at_boundary.failures
    (below,) = compare_runs(results, REF, TGT, tolerances(atol=needed * 0.999, rtol=1e-9,
                                                          check_error_stat=stat))
    assert not below.passed
    needed_rtol = strict.required_rtol
    (rtol_boundary,) = compare_runs(results, REF, TGT, tolerances(atol=1e-9, rtol=needed_rtol,
                                                                  check_error_stat=stat))
    assert rtol_boundary.passed


def test_inf_where_reference_is_finite_fails_any_tolerance():
    reference = np.ones((100,), np.float32)
    target = reference.copy()
    target[3] = np.inf
    (diff,) = compare_runs(runs({"y": reference}, {"y": target}), REF, TGT,
                           tolerances(atol=1e30, rtol=1e30, check_error_stat="median"))
    assert not diff.passed
    assert diff.nonfinite_mismatches == 1
    assert diff.max_abs_index == (3,)
    assert diff.required_atol is None and diff.required_rtol is None


def test_matching_infinities_agree():
    reference = np.array([1.0, np.inf, -np.inf], np.float32)
    (diff,) = compare_runs(runs({"y": reference}, {"y": reference.copy()}), REF, TGT,
                           tolerances())
    assert diff.passed and diff.max_abs_error == 0.0


def test_cosine_and_snr_thresholds_decide_when_set(pair):
    reference, target = pair
    results = runs({"y": reference}, {"y": target})
    (loose,) = compare_runs(results, REF, TGT, tolerances(atol=1.0, rtol=1.0))
    assert loose.passed and loose.snr is None
    (cos,) = compare_runs(results, REF, TGT, tolerances(atol=1.0, rtol=1.0, min_cosine=0.99999))
    assert not cos.passed and "cosine" in cos.failures[0]
    (snr,) = compare_runs(results, REF, TGT, tolerances(atol=1.0, rtol=1.0, min_snr=60.0))
    noise = np.mean((reference.astype(np.float64) - target) ** 2)
    expected = 10 * math.log10(np.mean(reference.astype(np.float64) ** 2) / noise)
    assert snr.snr == pytest.approx(expected, rel=1e-4)
    assert not snr.passed and "SNR" in snr.failures[0]


def test_per_output_overrides():
    reference = {"a": np.zeros(4, np.float32), "b": np.zeros(4, np.float32)}
    target = {"a": np.full(4, 0.1, np.float32), "b": np.full(4, 0.1, np.float32)}
    tol = Tolerances(Tolerance(atol=1e-3, rtol=1e-3), {"b": {"atol": 0.2}})
    a, b = compare_runs(runs(reference, target), REF, TGT, tol)
    assert (a.name, a.passed) == ("a", False)
    assert (b.name, b.passed) == ("b", True)


def test_outputs_are_matched_by_name_never_by_position():
    reference = {"logits": np.zeros(3, np.float32), "boxes": np.zeros(3, np.float32)}
    target = {"output_0": np.zeros(3, np.float32), "output_1": np.zeros(3, np.float32)}
    with pytest.raises(ComparisonError, match="missing from target:onnxrt-fp16: logits, boxes"):
        compare_runs(runs(reference, target), REF, TGT, tolerances())


def test_extra_target_output_is_an_error():
    reference = {"y": np.zeros(3, np.float32)}
    target = {"y": np.zeros(3, np.float32), "debug": np.zeros(3, np.float32)}
    with pytest.raises(ComparisonError, match="only in target:onnxrt-fp16: debug"):
        compare_runs(runs(reference, target), REF, TGT, tolerances())


def test_zero_outputs_compared_is_an_error():
    with pytest.raises(ComparisonError, match="nothing was compared"):
        compare_runs(runs({}, {}), REF, TGT, tolerances())


def test_shape_mismatch_fails_with_reason():
    (diff,) = compare_runs(runs({"y": np.zeros((2, 3), np.float32)},
                                {"y": np.zeros((3, 2), np.float32)}), REF, TGT, tolerances())
    assert not diff.passed and "shape (3, 2)" in diff.failures[0]


def test_integer_and_bool_outputs():
    reference = {"ids": np.array([1, 2, 3], np.int64), "mask": np.array([True, False])}
    target = {"ids": np.array([1, 2, 4], np.int64), "mask": np.array([True, False])}
    ids, mask = compare_runs(runs(reference, target), REF, TGT, tolerances(atol=0, rtol=0))
    assert not ids.passed and ids.max_abs_index == (2,) and ids.exceeding == 1
    assert mask.passed


def test_output_empty_in_both_runs_is_reported_not_checked(pair):
    reference, target = pair
    empty = np.zeros((0, 4), np.float32)
    diffs = compare_runs(runs({"y": reference, "none": empty}, {"y": target, "none": empty}),
                         REF, TGT, tolerances(atol=1.0, rtol=1.0))
    y, none = diffs
    assert y.checked and y.signal
    assert not none.checked and not none.signal and none.passed
    assert none.warnings == ("empty in both runs: not checked",) and none.cosine is None


def test_all_outputs_empty_is_an_error():
    empty = {"boxes": np.zeros((0, 4), np.float32), "ids": np.zeros((0,), np.int64)}
    with pytest.raises(NoSignalError, match="do not exercise the model") as raised:
        compare_runs(runs(empty, dict(empty)), REF, TGT, tolerances())
    assert raised.value.exit_code == 3
    assert "boxes: empty in both runs" in str(raised.value)


def test_all_outputs_constant_is_an_error_but_a_difference_still_fails():
    constant = {"probs": np.full(8, 0.125, np.float32), "zeros": np.zeros(3, np.float32)}
    with pytest.raises(NoSignalError, match=r"constant \(0.125 in all 8 elements\)"):
        compare_runs(runs(constant, dict(constant)), REF, TGT, tolerances())
    moved = {"probs": np.full(8, 0.5, np.float32), "zeros": np.zeros(3, np.float32)}
    probs, _ = compare_runs(runs(constant, moved), REF, TGT, tolerances())
    assert not probs.passed  # a mismatch is reported as one, signal or not


def test_zero_reference_warns_and_has_no_cosine(pair):
    reference, target = pair
    zeros = np.zeros(16, np.float32)
    signal = {"y": reference}
    # Polygraphy says cosine 1.0 here; a minimum cosine must neither pass nor fail on it.
    y, zero = compare_runs(runs({**signal, "z": zeros}, {"y": target, "z": zeros.copy()}),
                           REF, TGT, tolerances(atol=1.0, rtol=1.0, min_cosine=0.999))
    assert zero.cosine is None and zero.passed and not zero.signal
    assert "all zero" in zero.warnings[0] and "cosine is undefined" in zero.warnings[0]
    assert y.cosine is not None and y.signal and not y.warnings
    # A target that leaves zero still fails by the elementwise rule.
    _, moved = compare_runs(runs({**signal, "z": zeros}, {"y": target, "z": zeros + 0.5}),
                            REF, TGT, tolerances(min_cosine=0.999))
    assert not moved.passed and moved.cosine is None


def test_zero_target_warns():
    reference = np.linspace(1, 2, 10, dtype=np.float32)
    (diff,) = compare_runs(runs({"y": reference}, {"y": np.zeros(10, np.float32)}), REF, TGT,
                           tolerances())
    assert not diff.passed and diff.cosine is None
    assert diff.warnings == ("the target is all zero: cosine is undefined",)


def test_integer_outputs_by_agreement_rate():
    rng = np.random.default_rng(0)
    reference = rng.integers(0, 1000, 400).astype(np.int64)
    target = reference.copy()
    target[[7, 300]] += 1
    (strict,) = compare_runs(runs({"ids": reference}, {"ids": target}), REF, TGT,
                             tolerances(atol=10.0, rtol=10.0))
    # Float tolerances do not apply: 1 off is a different token.
    assert not strict.passed and strict.method == "exact"
    assert strict.failures == ("agreement 99.5%, 2 of 400 differ (compared exactly)",)
    assert strict.cosine is None and strict.agreement == pytest.approx(0.995)
    (loose,) = compare_runs(runs({"ids": reference}, {"ids": target}), REF, TGT,
                            tolerances(min_agreement=0.99))
    assert loose.passed
    (tight,) = compare_runs(runs({"ids": reference}, {"ids": target}), REF, TGT,
                            tolerances(min_agreement=0.999))
    assert "at least 99.9% required" in tight.failures[0]


def test_agreement_never_rounds_a_difference_to_100_percent():
    assert agreement_text(1, 1_000_000) == "agreement 99.9%, 1 of 1000000 differ"
    assert agreement_text(0, 5) == "agreement 100%, 0 of 5 differ"


def test_tensor_verdict_on_the_new_states():
    zeros = np.zeros((2, 3), np.float32)
    with_cosine = Tolerance(atol=1e-3, rtol=1e-3, min_cosine=0.99)
    # Two zero tensors agree; the undefined cosine does not make them diverge.
    assert not tensor_verdict(zeros, zeros.copy(), with_cosine)
    assert tensor_verdict(zeros + 1, zeros, with_cosine)
    empty = np.zeros((0, 3), np.float32)
    assert not tensor_verdict(empty, empty.copy(), with_cosine)
    ids = np.arange(100, dtype=np.int64)
    off = ids.copy()
    off[5] = 0
    assert tensor_verdict(off, ids, Tolerance(atol=100, rtol=100))
    assert not tensor_verdict(off, ids, Tolerance(atol=0, rtol=0, min_agreement=0.99))


def test_cli_all_empty_outputs_exit_3(save_model, trtcheck_cli, tmp_path):
    # NonZero of x > 2 with x in [0, 1]: the shape a detector's outputs take when nothing is found.
    graph = helper.make_graph(
        [helper.make_node("Greater", ["x", "two"], ["big"]),
         helper.make_node("NonZero", ["big"], ["where"])],
        "empty", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 4])],
        [helper.make_tensor_value_info("where", TensorProto.INT64, [2, None])],
        [helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])])
    model = save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    run = trtcheck_cli("compare", model, "--target", "onnxrt-fp16", "--json", "r.json")
    assert run.code == 3, run.stdout + run.stderr
    assert "do not exercise the model" in run.stderr and "--val-range" in run.stderr
    errors = [line for line in run.stderr.splitlines() if line.startswith("trtcheck: error")]
    assert len(errors) == 1 and "Traceback" not in run.stderr
    assert "RuntimeWarning" not in run.stderr
    assert read_json(tmp_path / "r.json")["verdict"] == "error"
    fed = trtcheck_cli("compare", model, "--target", "onnxrt-fp16", "--val-range", "x:[0,4]")
    assert fed.code == 0, fed.stderr
