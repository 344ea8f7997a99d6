"""Per-output comparison of a target against the reference, through Polygraphy's compare functions.

Polygraphy decides the tolerance verdicts (`SimpleCompareFunc`, `CosineSimilarityCompareFunc`,
`SnrCompareFunc`). Around it, this module does what Polygraphy does not:
- outputs are matched strictly by name (Polygraphy falls back to substrings and positions with
  only a warning, so `{logits, boxes}` against `{output_0, output_1}` would pass);
- zero outputs compared is an error, never a pass;
- a non-finite target value where the reference is finite fails whatever the tolerance (a `median`
  or `quantile` statistic would otherwise let a few infs through);
- it reports where the worst error is, how many elements exceed tolerance, the 99th percentile and
  the smallest tolerances that would pass;
- nothing passes vacuously: an output empty in both runs is not counted as checked, a constant or
  all-zero reference is a warning (Polygraphy reports the cosine of two zero vectors as 1.0; here
  it is undefined), and when no output carried signal the comparison is an error;
- integer and bool outputs are compared exactly (or by a declared agreement rate), never with
  float tolerances and cosine;
- declared detection outputs are paired by class and IoU (`trtcheck.detections`) before their
  values are compared, since their order after NMS/TopK means nothing.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, replace

import numpy as np

from trtcheck.detections import (
    DetectionMatch,
    DetectionSpec,
    aligned,
    check_specs,
    is_batched,
    match_detections,
)
from trtcheck.errors import TrtcheckError
from trtcheck.tolerance import TOP1, VALUES, Tolerance, Tolerances

# Polygraphy adds this to zero reference values before dividing; the same here keeps the relative
# errors shown equal to the ones it checks.
_EPSILON = 2.220446049250313e-16


class ComparisonError(TrtcheckError):
    """The two runs cannot be compared: outputs missing, extra, or none at all."""

    exit_code = 3


class NoSignalError(ComparisonError):
    """Every output was empty or constant in both runs: the inputs did not exercise the model."""


@dataclass(frozen=True)
class OutputDiff:
    """Everything the report shows about one output."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    tolerance: Tolerance
    passed: bool
    # Why it failed, one phrase each ("elemwise error exceeds atol/rtol", "3 non-finite values").
    failures: tuple[str, ...]
    elements: int
    exceeding: int
    nonfinite_mismatches: int
    max_abs_error: float
    max_abs_index: tuple[int, ...]
    reference_at_max: float
    target_at_max: float
    max_rel_error: float
    mean_abs_error: float
    p99_abs_error: float
    # None when undefined: either vector is all zero, or the output is compared exactly.
    cosine: float | None
    snr: float | None
    # Smallest atol (rtol) that passes with the other tolerance unchanged; None if none would.
    required_atol: float | None
    required_rtol: float | None
    iteration: int = 0
    # Small summaries of the whole error distribution, for reports that never hold tensors.
    histogram: ErrorHistogram | None = None
    sample: ErrorSample | None = None
    # "elementwise" (float tolerances), "exact" (integer and bool outputs: agreement rate),
    # "detections" (paired by class and IoU first; `detections` holds the pairing) or "top1"
    # (class scores: the top-1 class at every position decides; `top1_same` holds the count).
    method: str = "elementwise"
    # False when the output had no elements in either run: reported, not counted as checked.
    checked: bool = True
    # False when the reference was empty, all zero or constant: it says little about the model.
    signal: bool = True
    # What the verdict may hide: a constant or all-zero reference, an undefined cosine.
    warnings: tuple[str, ...] = ()
    detections: DetectionMatch | None = None
    # With method "top1": positions whose top-1 class agrees, and all positions.
    top1_same: tuple[int, int] | None = None

    @property
    def agreement(self) -> float | None:
        """Fraction of equal elements of an exactly compared output; None for float outputs."""
        if self.method != "exact" or not self.elements:
            return None
        return 1 - self.exceeding / self.elements


@dataclass(frozen=True)
class ErrorHistogram:
    """Counts of |target - reference| per log10 bin; exact zeros and non-finite counted apart."""

    log10_edges: tuple[float, ...]
    counts: tuple[int, ...]
    zeros: int
    nonfinite: int


@dataclass(frozen=True)
class ErrorSample:
    """A fixed-seed sample of (reference value, |error|) pairs, for error-vs-value plots."""

    reference: tuple[float, ...]
    abs_error: tuple[float, ...]


HISTOGRAM_BINS = 16
SAMPLE_SIZE = 256


def error_histogram(absdiff: np.ndarray) -> ErrorHistogram:
    flat = absdiff.ravel()
    finite = flat[np.isfinite(flat)]
    positive = finite[finite > 0]
    zeros = int((finite == 0).sum())
    nonfinite = int(flat.size - finite.size)
    if positive.size == 0:
        return ErrorHistogram((), (), zeros, nonfinite)
    logs = np.log10(positive)
    low, high = float(np.floor(logs.min())), float(np.ceil(logs.max()))
    if high <= low:
        high = low + 1
    counts, edges = np.histogram(logs, bins=HISTOGRAM_BINS, range=(low, high))
    return ErrorHistogram(tuple(round(float(e), 6) for e in edges), tuple(int(c) for c in counts),
                          zeros, nonfinite)


def error_sample(reference: np.ndarray, absdiff: np.ndarray) -> ErrorSample:
    flat_ref, flat_err = reference.astype(np.float64).ravel(), absdiff.ravel()
    if flat_ref.size > SAMPLE_SIZE:
        picks = np.random.default_rng(0).choice(flat_ref.size, SAMPLE_SIZE, replace=False)
        picks.sort()
        flat_ref, flat_err = flat_ref[picks], flat_err[picks]
    return ErrorSample(tuple(float(v) for v in flat_ref), tuple(float(v) for v in flat_err))


def _abs_rel(target: np.ndarray, reference: np.ndarray):
    if target.dtype == np.bool_ and reference.dtype == np.bool_:
        absdiff = np.logical_xor(target, reference).astype(np.float64)
    else:
        t64, r64 = target.astype(np.float64), reference.astype(np.float64)
        with np.errstate(invalid="ignore", over="ignore"):
            absdiff = np.asarray(np.abs(t64 - r64))  # an array even for 0-d tensors
        # Matching infinities agree (Polygraphy's infinities_compare_equal, set below too).
        absdiff[np.isinf(t64) & (t64 == r64)] = 0.0
    denominator = np.asarray(np.abs(reference.astype(np.float64)))
    denominator[denominator == 0] = _EPSILON
    with np.errstate(invalid="ignore", over="ignore"):
        reldiff = absdiff / denominator
    return absdiff, reldiff


def _failing_elements(absdiff, reldiff, tol: Tolerance) -> np.ndarray:
    # Polygraphy's elemwise rule: an element fails only if it exceeds both tolerances.
    return (np.isnan(absdiff) | (absdiff > tol.atol)) & (np.isnan(reldiff) | (reldiff > tol.rtol))


def _stat(values: np.ndarray, tol: Tolerance) -> float:
    # Polygraphy's own statistic functions, so "needs atol/rtol" agrees with its verdict.
    from polygraphy.comparator import util as comp_util

    if values.size == 0:
        return 0.0
    stat = tol.check_error_stat
    if stat in ("max", "elemwise"):
        return float(comp_util.compute_max(values))
    if stat == "mean":
        return float(comp_util.compute_mean(values))
    if stat == "median":
        return float(comp_util.compute_median(values))
    return float(comp_util.compute_quantile(values, tol.error_quantile))


def _magnitude(values) -> float:
    """Largest finite |value| of a float array (0 for other dtypes): what `atol_of_max` scales."""
    array = np.asarray(values)
    if not np.issubdtype(array.dtype, np.floating) or array.size == 0:
        return 0.0
    finite = np.abs(array[np.isfinite(array)].astype(np.float64))
    return float(finite.max()) if finite.size else 0.0


def _beyond_cap(absdiff, reldiff, tol: Tolerance) -> int:
    """Elements beyond `max_error_factor` x (atol, rtol), by Polygraphy's elementwise rule."""
    if tol.max_error_factor is None:
        return 0
    factor = tol.max_error_factor
    return int(_failing_elements(absdiff, reldiff, replace(
        tol, atol=tol.atol * factor, rtol=tol.rtol * factor)).sum())


def _required(absdiff, reldiff, tol: Tolerance, nonfinite: int):
    if nonfinite or np.isnan(absdiff).any():
        return None, None
    if absdiff.size == 0:
        return 0.0, 0.0
    if tol.check_error_stat == "elemwise":
        over_rtol = reldiff > tol.rtol
        over_atol = absdiff > tol.atol
        req_atol = float(absdiff[over_rtol].max()) if over_rtol.any() else 0.0
        req_rtol = float(reldiff[over_atol].max()) if over_atol.any() else 0.0
        return req_atol, req_rtol
    stat_abs, stat_rel = _stat(absdiff, tol), _stat(reldiff, tol)
    if tol.max_error_factor is not None:  # the cap needs atol >= max error / factor too
        stat_abs = max(stat_abs, float(absdiff.max()) / tol.max_error_factor)
        stat_rel = max(stat_rel, float(reldiff.max()) / tol.max_error_factor)
    return (stat_abs if stat_rel > tol.rtol else 0.0), (stat_rel if stat_abs > tol.atol else 0.0)


def _describe(name: str, target: np.ndarray, reference: np.ndarray, tol: Tolerance,
              simple_ok: bool, cosine: float | None, snr: float | None,
              iteration: int) -> OutputDiff:
    if target.shape != reference.shape:
        return OutputDiff(
            name, tuple(reference.shape), str(reference.dtype), tol, False,
            (f"shape {tuple(target.shape)} differs from the reference's {tuple(reference.shape)}",),
            int(reference.size), int(reference.size), 0, math.nan, (), math.nan, math.nan,
            math.nan, math.nan, math.nan, cosine, snr, None, None, iteration,
        )
    if reference.size == 0:
        return _empty_diff(name, reference, tol, iteration)
    if is_exact(target, reference):
        return _exact_diff(name, target, reference, tol, iteration)
    absdiff, reldiff = _abs_rel(target, reference)
    failing = _failing_elements(absdiff, reldiff, tol)
    nonfinite = 0
    if np.issubdtype(target.dtype, np.floating):
        nonfinite = int((~np.isfinite(target) & np.isfinite(reference)).sum())
    if absdiff.size:
        worst = int(np.argmax(np.isnan(absdiff))) if np.isnan(absdiff).any() else int(
            np.argmax(absdiff))
        index = tuple(int(i) for i in np.unravel_index(worst, absdiff.shape))
        max_abs, max_rel = float(absdiff.flat[worst]), float(np.nanmax(reldiff))
        # "higher" keeps p99 = inf when infinities are among the top 1% (linear would give nan).
        mean_abs = float(np.nanmean(absdiff))
        p99 = float(np.nanquantile(absdiff, 0.99, method="higher"))
        ref_at, tgt_at = float(reference.flat[worst]), float(target.flat[worst])
    else:
        index, max_abs, max_rel, mean_abs, p99, ref_at, tgt_at = (), 0.0, 0.0, 0.0, 0.0, 0.0, 0.0
    failures = []
    top1 = None
    if tol.criterion == TOP1:
        top1 = top1_agreement(target, reference)
        failures += _top1_failures(top1, target, reference, tol)
    elif tol.criterion == VALUES:
        if not simple_ok:
            stat = (f"{tol.error_quantile:g} quantile" if tol.check_error_stat == "quantile"
                    else tol.check_error_stat)
            scaled = f" ({tol.atol_of_max:.3g} x max|ref|)" if tol.atol_of_max is not None else ""
            failures.append(f"{stat} error exceeds atol={tol.atol:.3g}{scaled}/rtol={tol.rtol:g}")
        beyond_cap = _beyond_cap(absdiff, reldiff, tol)
        if beyond_cap:
            failures.append(f"{beyond_cap} element(s) beyond {tol.max_error_factor:g} x atol = "
                            f"{tol.atol * (tol.max_error_factor or 1):.3g}")
    if nonfinite:
        failures.append(f"{nonfinite} non-finite value(s) where the reference is finite")
    if tol.min_cosine is not None and cosine is not None and not cosine >= tol.min_cosine:
        failures.append(f"cosine {cosine:.6f} < {tol.min_cosine:g}")
    if tol.min_snr is not None and not (snr is not None and snr >= tol.min_snr):
        failures.append(f"SNR {snr:.2f} dB < {tol.min_snr:g} dB")
    req_atol, req_rtol = _required(absdiff, reldiff, tol, nonfinite)
    return OutputDiff(
        name=name, shape=tuple(reference.shape), dtype=str(reference.dtype), tolerance=tol,
        passed=not failures, failures=tuple(failures), elements=int(absdiff.size),
        exceeding=int(failing.sum()), nonfinite_mismatches=nonfinite, max_abs_error=max_abs,
        max_abs_index=index, reference_at_max=ref_at, target_at_max=tgt_at, max_rel_error=max_rel,
        mean_abs_error=mean_abs, p99_abs_error=p99, cosine=cosine, snr=snr,
        required_atol=req_atol, required_rtol=req_rtol, iteration=iteration,
        histogram=error_histogram(absdiff), sample=error_sample(reference, absdiff),
        method={TOP1: "top1", VALUES: "elementwise"}.get(tol.criterion, tol.criterion),
        top1_same=top1,
    )


def top1_agreement(target: np.ndarray, reference: np.ndarray) -> tuple[int, int]:
    """(positions whose top-1 class along the last axis agrees, positions)."""
    if reference.ndim == 0 or reference.shape[-1] == 0:
        return 0, 0
    classes = reference.shape[-1]
    same = np.argmax(reference.reshape(-1, classes), axis=-1) == np.argmax(
        target.reshape(-1, classes), axis=-1)
    return int(same.sum()), int(same.size)


def _top1_failures(top1: tuple[int, int], target: np.ndarray, reference: np.ndarray,
                   tol: Tolerance) -> list[str]:
    same, positions = top1
    failures = []
    if same < positions:
        failures.append(f"top-1 class differs at {positions - same} of {positions} position(s)")
    magnitude = _magnitude(reference)
    # Values the target kept exactly were represented, however small.
    if tol.min_magnitude is not None and magnitude < tol.min_magnitude and not np.array_equal(
            target, reference):
        failures.append(f"every |value| is below {tol.min_magnitude:.3g} (max {magnitude:.3g}), "
                        "the target type's smallest normal: it cannot keep the classes apart")
    return failures


def cosine_similarity(target: np.ndarray, reference: np.ndarray) -> float | None:
    """Cosine similarity of the flattened arrays; None when either is all zero (undefined).

    Polygraphy's compare function says 1.0 for two zero vectors and 0.0 for one, which reads as
    a verdict on values that were never compared.
    """
    if not np.any(target) or not np.any(reference):
        return None
    t64, r64 = target.astype(np.float64).ravel(), reference.astype(np.float64).ravel()
    with np.errstate(all="ignore"):
        norms = float(np.linalg.norm(t64) * np.linalg.norm(r64))
        return float(np.dot(t64, r64) / norms) if norms > 0 else math.nan


def tensor_verdict(target: np.ndarray, reference: np.ndarray, tol: Tolerance) -> bool:
    """Whether `target` fails `tol` against `reference`: the rules `compare_runs` applies.

    The same statistic and thresholds as Polygraphy's SimpleCompareFunc (with infinities
    comparing equal), a non-finite target value where the reference is finite always fails, and
    the cosine / SNR minimums when set. Bisection judges every intermediate tensor with this.
    """
    if target.shape != reference.shape:
        return True
    if reference.size == 0:
        return False  # nothing to compare; the shapes agree
    if is_exact(target, reference):
        return not _agrees(int((target != reference).sum()), reference.size, tol)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        if np.issubdtype(target.dtype, np.floating) and (
                ~np.isfinite(target) & np.isfinite(reference)).any():
            return True
        # The scaled default's atol follows the tensor's magnitude (a no-op once carried).
        tol = tol.scaled_to(_magnitude(reference))
        absdiff, reldiff = _abs_rel(target, reference)
        if tol.criterion == TOP1:
            if _top1_failures(top1_agreement(target, reference), target, reference, tol):
                return True
        elif tol.criterion != VALUES:
            pass  # similarity: the cosine and SNR minimums below decide
        elif _beyond_cap(absdiff, reldiff, tol):
            return True
        elif tol.check_error_stat == "elemwise":
            if _failing_elements(absdiff, reldiff, tol).any():
                return True
        else:
            stat_abs, stat_rel = _stat(absdiff, tol), _stat(reldiff, tol)
            if (math.isnan(stat_abs) or stat_abs > tol.atol) and (
                    math.isnan(stat_rel) or stat_rel > tol.rtol):
                return True
        cosine = cosine_similarity(target, reference)
        # An undefined cosine (a zero tensor) leaves the verdict to the elementwise criteria.
        if tol.min_cosine is not None and cosine is not None and not cosine >= tol.min_cosine:
            return True
        if tol.min_snr is not None:
            noise = float(np.mean((target.astype(np.float64) - reference.astype(np.float64)) ** 2))
            signal = float(np.mean(reference.astype(np.float64) ** 2))
            snr = 10 * math.log10(signal / noise) if noise > 0 and signal > 0 else (
                math.inf if noise == 0 else -math.inf)
            if not snr >= tol.min_snr:
                return True
    return False


EMPTY_WARNING = "empty in both runs: not checked"


def is_exact(target: np.ndarray, reference: np.ndarray) -> bool:
    """Integer and bool outputs (labels, indices, token ids, masks) are compared exactly."""
    return {np.dtype(target.dtype).kind, np.dtype(reference.dtype).kind} <= {"i", "u", "b"}


def _agrees(differing: int, elements: int, tol: Tolerance) -> bool:
    minimum = 1.0 if tol.min_agreement is None else tol.min_agreement
    return not elements or 1 - differing / elements >= minimum


def agreement_text(differing: int, elements: int) -> str:
    """'agreement 99.5%, 2 of 400 differ'; rounded down, so a difference never shows as 100%."""
    percent = math.floor(1000 * (elements - differing) / elements) / 10 if elements else 100.0
    return f"agreement {percent:g}%, {differing} of {elements} differ"


def _exact_diff(name: str, target: np.ndarray, reference: np.ndarray, tol: Tolerance,
                iteration: int) -> OutputDiff:
    differing = target != reference
    absdiff, reldiff = _abs_rel(target, reference)
    worst = int(np.argmax(absdiff))
    failures: tuple[str, ...] = ()
    if not _agrees(int(differing.sum()), reference.size, tol):
        required = ("compared exactly" if tol.min_agreement is None else
                    f"at least {100 * tol.min_agreement:g}% required")
        failures = (f"{agreement_text(int(differing.sum()), reference.size)} ({required})",)
    return OutputDiff(
        name=name, shape=tuple(reference.shape), dtype=str(reference.dtype), tolerance=tol,
        passed=not failures, failures=failures, elements=int(reference.size),
        exceeding=int(differing.sum()), nonfinite_mismatches=0,
        max_abs_error=float(absdiff.flat[worst]),
        max_abs_index=tuple(int(i) for i in np.unravel_index(worst, absdiff.shape)),
        reference_at_max=float(reference.flat[worst]), target_at_max=float(target.flat[worst]),
        max_rel_error=float(reldiff.max()), mean_abs_error=float(absdiff.mean()),
        p99_abs_error=float(np.quantile(absdiff, 0.99, method="higher")), cosine=None, snr=None,
        required_atol=None, required_rtol=None, iteration=iteration,
        histogram=error_histogram(absdiff), sample=error_sample(reference, absdiff),
        method="exact",
    )


def _empty_diff(name: str, reference: np.ndarray, tol: Tolerance, iteration: int) -> OutputDiff:
    return OutputDiff(
        name, tuple(reference.shape), str(reference.dtype), tol, True, (), 0, 0, 0, 0.0, (), 0.0,
        0.0, 0.0, 0.0, 0.0, None, None, None, None, iteration,
        method="exact" if is_exact(reference, reference) else "elementwise", checked=False,
        signal=False, warnings=(EMPTY_WARNING,))


def _value_text(value: object) -> str:
    return f"{value:g}" if isinstance(value, (float, np.floating)) else str(value)


def _reference_notes(target: np.ndarray, reference: np.ndarray) -> tuple[tuple[str, ...], bool]:
    """Warnings about what the reference can tell, and whether it carried signal."""
    flat = reference.ravel()
    if flat.size == 0:
        return (), False
    first = flat[0]
    constant = bool(np.all(flat == first))  # False with a NaN: NaN is signal enough
    if constant and not first:
        zero = "False" if reference.dtype == np.bool_ else "zero"
        return (f"the reference is all {zero}: cosine is undefined and a target near it passes "
                "any absolute tolerance; do the inputs exercise this output?",), False
    if constant and flat.size > 1:
        return (f"the reference is constant ({_value_text(first)} in all {flat.size} elements): "
                "do the inputs exercise this output?",), False
    if target.shape == reference.shape and not np.any(target):
        return ("the target is all zero: cosine is undefined",), True
    return (), True


def _snr(target: np.ndarray, reference: np.ndarray) -> float:
    noise = float(np.mean((target.astype(np.float64) - reference.astype(np.float64)) ** 2))
    signal = float(np.mean(reference.astype(np.float64) ** 2))
    if noise > 0 and signal > 0:
        return 10 * math.log10(signal / noise)
    return math.inf if noise == 0 else -math.inf


def _describe_pairs(name: str, target: np.ndarray, reference: np.ndarray, tol: Tolerance,
                    iteration: int) -> OutputDiff:
    """`_describe` for arrays Polygraphy never saw (aligned detections), by the same rules."""
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        simple_ok = not tensor_verdict(target, reference,
                                       replace(tol, min_cosine=None, min_snr=None))
        snr = _snr(target, reference) if tol.min_snr is not None and reference.size else None
        return _describe(name, target, reference, tol, simple_ok,
                         cosine_similarity(target, reference), snr, iteration)


def _detection_diffs(spec: DetectionSpec, reference: dict[str, np.ndarray],
                     target: dict[str, np.ndarray], per_output: dict[str, Tolerance],
                     iteration: int) -> dict[str, OutputDiff]:
    """One diff per output of a detection set, failed by the pairing or by its own values.

    Each output's paired values are held to its own tolerance (labels, equal by construction,
    exactly).
    """
    match = match_detections(spec, reference, target)
    batched = is_batched(spec, reference)
    diffs = {}
    for name in spec.outputs:
        tol = per_output[name]
        full_reference = np.asarray(reference[name])
        if not match.reference_count and not match.target_count:
            diffs[name] = replace(_empty_diff(name, full_reference, tol, iteration),
                                  method="detections", detections=match,
                                  warnings=("no detections in either run: not checked",))
            continue
        diff = _describe_pairs(name, aligned(target[name], match.target_index, batched),
                               aligned(reference[name], match.reference_index, batched), tol,
                               iteration)
        index = diff.max_abs_index
        if index:  # back from the pair's number to the reference's own position
            row, detection = match.reference_index[index[0]]
            index = ((row, detection) if batched else (detection,)) + index[1:]
        failures = match.failures + diff.failures
        diffs[name] = replace(diff, shape=tuple(full_reference.shape), passed=not failures,
                              failures=failures, max_abs_index=index, method="detections",
                              checked=True, signal=True, warnings=(), detections=match)
    return diffs


def check_signal(diffs: list[OutputDiff]) -> None:
    """Raises `NoSignalError` when every output passed without carrying signal.

    An output carries no signal when it is empty in both runs or its reference is all zero or
    constant: random inputs often leave a detector with no detections or a classifier with one
    answer, and a pass over those says nothing about the model. A failure is still reported.
    """
    if any(diff.signal for diff in diffs) or not all(diff.passed for diff in diffs):
        return
    reasons = "; ".join(f"{diff.name}: {diff.warnings[0] if diff.warnings else 'no signal'}"
                        for diff in diffs)
    raise NoSignalError(
        f"no output carried signal, so a pass would mean nothing ({reasons}); the inputs do not "
        "exercise the model: give realistic inputs (--val-range NAME:[LO,HI] per input, or "
        "recorded ones with --inputs FILE.npz)")


def _check_names(reference_outputs, target_outputs, reference_name: str, target_name: str):
    missing = [name for name in reference_outputs if name not in target_outputs]
    extra = [name for name in target_outputs if name not in reference_outputs]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing from {target_name}: {', '.join(missing)}")
        if extra:
            parts.append(f"only in {target_name}: {', '.join(extra)}")
        raise ComparisonError(
            f"outputs do not match by name ({'; '.join(parts)}); outputs are never matched by "
            "position, so rename them in the target model or mark the same outputs in both"
        )
    if not reference_outputs:
        raise ComparisonError(
            f"{reference_name} produced no outputs, so nothing was compared; check the model's "
            "graph outputs"
        )


def _exact_name(output_name, index, iter_result):
    return [output_name] if output_name in iter_result else None


def compare_runs(run_results, reference_name: str, target_name: str,
                 tolerances: Tolerances, detections: tuple[DetectionSpec, ...] = (),
                 require_signal: bool = True) -> list[OutputDiff]:
    """Compares every output of every iteration; returns the worst iteration of each output.

    Outputs named by `detections` are paired by class and IoU first. With `require_signal`, a
    pass where no output carried signal raises `NoSignalError` (exit 3).
    """
    from polygraphy.comparator import Comparator
    from polygraphy.comparator.compare import (
        CosineSimilarityCompareFunc,
        SimpleCompareFunc,
        SnrCompareFunc,
    )

    reference_iterations = run_results[reference_name]
    target_iterations = run_results[target_name]
    names = list(reference_iterations[0].keys())
    check_specs(detections, tuple(names))
    for ref_it, tgt_it in zip(reference_iterations, target_iterations, strict=True):
        _check_names(list(ref_it.keys()), list(tgt_it.keys()), reference_name, target_name)
    per_output = {name: tolerances.for_output(name).scaled_to(
        max(_magnitude(it[name]) for it in reference_iterations)) for name in names}

    def per(field_name: str, fallback=None):
        return {name: getattr(tol, field_name) if getattr(tol, field_name) is not None else fallback
                for name, tol in per_output.items()}

    simple = SimpleCompareFunc(
        atol=per("atol"), rtol=per("rtol"), check_error_stat=per("check_error_stat"),
        error_quantile=per("error_quantile"), infinities_compare_equal=True,
        find_output_func=_exact_name,
    )
    # Cosine is always shown; it only decides the verdict when a minimum is set.
    cosine = CosineSimilarityCompareFunc(
        cosine_similarity_threshold=per("min_cosine", -1.0), find_output_func=_exact_name)
    ref_index = list(run_results.keys()).index(reference_name)
    tgt_index = list(run_results.keys()).index(target_name)
    # Target first: Polygraphy's rtol is relative to the second runner, which must be the reference.
    # Empty outputs make Polygraphy's statistics warn "Mean of empty slice"; they are reported.
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        simple_results, cosine_results = Comparator.compare_accuracy(
            run_results, comparisons=[(tgt_index, ref_index)], compare_func=[simple, cosine])
    snr_results = None
    if any(tol.min_snr is not None for tol in per_output.values()):
        snr = SnrCompareFunc(snr_threshold=per("min_snr", -math.inf), find_output_func=_exact_name)
        # Reference first here: SNR takes the first runner as the signal.
        with np.errstate(all="ignore"):
            (snr_results,) = Comparator.compare_accuracy(
                run_results, comparisons=[(ref_index, tgt_index)], compare_func=[snr])

    diffs = _worst_per_output(run_results, reference_name, target_name, names, per_output,
                              simple_results, cosine_results, snr_results, detections)
    if require_signal:
        check_signal(diffs)
    return diffs


def _worst_per_output(run_results, reference_name, target_name, names, per_output,
                      simple_results, cosine_results, snr_results,
                      detections: tuple[DetectionSpec, ...] = ()) -> list[OutputDiff]:
    reference_iterations = run_results[reference_name]
    target_iterations = run_results[target_name]
    pair = (target_name, reference_name)
    worst: dict[str, OutputDiff] = {}
    signal: set[str] = set()
    for iteration, (ref_it, tgt_it) in enumerate(zip(reference_iterations, target_iterations,
                                                     strict=True)):
        grouped: dict[str, OutputDiff] = {}
        for spec in detections:
            grouped.update(_detection_diffs(spec, ref_it, tgt_it, per_output, iteration))
        for name in names:
            if name in grouped:
                _keep_worse(worst, _with_notes(grouped[name], tgt_it[name], ref_it[name]), signal)
                continue
            snr_value = None
            if snr_results is not None and per_output[name].min_snr is not None:
                snr_value = float(snr_results[(reference_name, target_name)][iteration][name].snr)
            cosine_result = cosine_results[pair][iteration][name]
            target, reference = np.asarray(tgt_it[name]), np.asarray(ref_it[name])
            cosine: float | None = float(getattr(cosine_result, "cosine_similarity", math.nan))
            if target.shape == reference.shape and (not np.any(target) or not np.any(reference)):
                cosine = None  # Polygraphy's 1.0 (or 0.0) for zero vectors; see module docstring
            # All-NaN or empty slices are reported as nan, not warned about.
            with np.errstate(all="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                diff = _describe(
                    name, target, reference, per_output[name],
                    bool(simple_results[pair][iteration][name]), cosine, snr_value, iteration,
                )
            _keep_worse(worst, _with_notes(diff, target, reference), signal)
    return [replace(worst[name], signal=name in signal) for name in names]


def _with_notes(diff: OutputDiff, target, reference) -> OutputDiff:
    if not diff.checked:
        return diff
    notes, signal = _reference_notes(np.asarray(target), np.asarray(reference))
    return replace(diff, warnings=diff.warnings + notes, signal=signal)


def _keep_worse(worst: dict[str, OutputDiff], diff: OutputDiff, signal: set[str]) -> None:
    """Keeps the worse of two iterations' diffs: failed, then checked, then the larger error."""
    if diff.signal:
        signal.add(diff.name)
    previous = worst.get(diff.name)
    if previous is None or (previous.passed, not previous.checked, -previous.max_abs_error) > (
            diff.passed, not diff.checked, -diff.max_abs_error):
        worst[diff.name] = diff
