"""Each metric of `compare_runs` checked against numpy on arrays with known errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
from polygraphy.comparator import IterationResult, RunResults

from trtcheck.compare import ComparisonError, compare_runs
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
