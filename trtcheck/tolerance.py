"""Tolerances: per-output criteria, their defaults per precision, and the user's requests."""

from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import dataclass, field, replace
from typing import Any

from trtcheck.errors import TrtcheckError, UsageError

ERROR_STATS = ("elemwise", "max", "mean", "median", "quantile")

# atol and rtol for fields the user leaves out when giving some of atol, rtol, the error statistic
# or its quantile: an explicit tolerance keeps Polygraphy's meaning (elementwise, both exceeded).
DEFAULT_TOLERANCES = {
    "fp32": (1e-4, 1e-4),
    "fp16": (1e-2, 1e-2),
    "bf16": (5e-2, 5e-2),
    "int8": (5e-2, 5e-2),
    "fp8": (1e-1, 1e-1),
}
# The fields that make a tolerance explicit (see `ToleranceRequest.resolve`).
_SIMPLE_FIELDS = ("atol", "rtol", "check_error_stat", "error_quantile")
# Unit roundoff (half the spacing of numbers near 1) of each target precision. A model holding
# int8 Q/DQ computes in int8 whatever the float type around it: a rounding before a Q that lands on
# the other side of a step moves the value by a whole step, 1/127 of the tensor's range, so its
# noise is taken as half of that, 2^-8 (as bf16's).
UNIT_ROUNDOFF = {"fp32": 2.0**-24, "fp16": 2.0**-11, "bf16": 2.0**-8, "int8": 2.0**-8,
                 "fp8": 2.0**-4}
# The smallest normal number of each float target type: below it, values lose their precision.
SMALLEST_NORMAL = {"fp32": 2.0**-126, "fp16": 2.0**-14, "bf16": 2.0**-126}
# The default when no tolerance is given, per target precision: noise is judged against the
# output's own magnitude (README, "Comparison"; bench/tolerance_confusion.py measures it):
# - atol = 8 unit roundoffs x the output's largest finite |reference| value (fp32: 1e-4 x);
# - at most 0.1% of the elements beyond atol (Polygraphy's quantile statistic, q = 0.999; on
#   outputs under 1,000 elements that is none, up to interpolation);
# - no element beyond 4 x atol, however few;
# - cosine similarity at least 0.9999 (fp32 0.99999): what an embedding needs to stay the same;
# - and, as for every tolerance, inf/nan where the reference is finite fails.
# Class scores (`output_roles`) are judged by what an application reads from them instead: the
# same top-1 class at every position, and a cosine floor that follows the precision's rounding
# (1 - 1e-4 x (u / u_fp16)^2: fp16 0.9999, bf16 and int8 0.9936; fp32 keeps 0.99999). The values
# are still measured and shown.
# int8 and fp8 targets (a Q/DQ model) are judged by similarity: their error is quantization
# noise spread over every element, which a signal-to-noise ratio measures and an elementwise limit
# does not (a few elements on a step edge move by a whole step). SNR at least 25 dB for int8 (a
# cosine of about 0.998), 15 dB for fp8 (three mantissa bits; about 0.984); class scores keep
# their top-1 with a cosine floor of 0.99 (int8) or 0.98 (fp8). The values are shown.
QUANTIZED_FLOORS = {"int8": (25.0, 0.99), "fp8": (15.0, 0.98)}
VALUES, TOP1, SIMILARITY = "values", "top1", "similarity"
_FP32_COSINE, _FP16_COSINE = 0.99999, 0.9999


def scaled_default(precision: str, class_scores: bool = False) -> dict[str, Any]:
    """The default rule's fields for outputs computed in `precision` (see the comment above)."""
    unit = UNIT_ROUNDOFF[precision]
    values_cosine = _FP32_COSINE if precision == "fp32" else _FP16_COSINE
    fields: dict[str, Any] = {
        "atol": 0.0, "rtol": 0.0, "check_error_stat": "quantile", "error_quantile": 0.999,
        "atol_of_max": 1e-4 if precision == "fp32" else 8 * unit, "max_error_factor": 4.0,
        "min_cosine": values_cosine}
    if class_scores:
        scaled = 1 - (1 - _FP16_COSINE) * (unit / UNIT_ROUNDOFF["fp16"]) ** 2
        fields.update(criterion=TOP1, min_cosine=min(values_cosine, scaled))
    return fields


def quantized_default(precision: str, class_scores: bool = False) -> dict[str, Any]:
    """The default rule's fields for an int8 or fp8 target (see `QUANTIZED_FLOORS`)."""
    snr, class_cosine = QUANTIZED_FLOORS[precision]
    fields = {**scaled_default(precision), "criterion": SIMILARITY, "min_cosine": None,
              "min_snr": snr}
    if class_scores:
        fields.update(criterion=TOP1, min_cosine=class_cosine, min_snr=None)
    return fields


def noise_precision(target_precision: str, quantized: str | None) -> str:
    """The coarser of the target's float type and the model's own quantization (int8)."""
    if quantized is not None and quantized in UNIT_ROUNDOFF and (
            UNIT_ROUNDOFF[quantized] > UNIT_ROUNDOFF[target_precision]):
        return quantized
    return target_precision


SCALED_DEFAULTS = {precision: scaled_default(precision) for precision in ("fp32", "fp16", "bf16")}


@dataclass(frozen=True)
class Tolerance:
    """The criteria one output is checked against."""

    atol: float
    rtol: float
    check_error_stat: str = "elemwise"
    error_quantile: float = 0.99
    min_cosine: float | None = None
    min_snr: float | None = None
    # Integer and bool outputs are compared exactly: the fraction of equal elements must reach
    # this (None: every element).
    min_agreement: float | None = None
    # atol as a fraction of the output's largest finite |reference| value: `compare` raises
    # `atol` to it per output (`scaled_to`), bisection per tensor (the default's magnitude rule).
    atol_of_max: float | None = None
    # No element may exceed this many times atol (and rtol), whatever the statistic lets through.
    max_error_factor: float | None = None
    # What decides besides the cosine and SNR minimums: the values (atol, rtol and the
    # statistic), for class scores the top-1 class along the last axis at every position, or
    # nothing more (similarity: quantized targets). The values are measured and shown always.
    criterion: str = VALUES
    # With `TOP1`: a reference whose every |value| is below this cannot be told apart by the
    # target's float type (its smallest normal): the check fails rather than compare rounding.
    min_magnitude: float | None = None

    def __post_init__(self) -> None:
        # The front ends check with the flag or file:line first; this catches API callers.
        check_tolerance_value(f"atol {self.atol!r}", self.atol)
        check_tolerance_value(f"rtol {self.rtol!r}", self.rtol)
        check_tolerance_value(f"error_quantile {self.error_quantile!r}", self.error_quantile,
                              0.0, 1.0)
        if self.min_cosine is not None:
            check_tolerance_value(f"min_cosine {self.min_cosine!r}", self.min_cosine, -1.0, 1.0)
        if self.min_snr is not None:
            check_tolerance_value(f"min_snr {self.min_snr!r}", self.min_snr, -math.inf)
        if self.min_agreement is not None:
            check_tolerance_value(f"min_agreement {self.min_agreement!r}", self.min_agreement,
                                  0.0, 1.0)
        if self.atol_of_max is not None:
            check_tolerance_value(f"atol_of_max {self.atol_of_max!r}", self.atol_of_max)
        if self.max_error_factor is not None:
            check_tolerance_value(f"max_error_factor {self.max_error_factor!r}",
                                  self.max_error_factor, 1.0)
        if self.criterion not in (VALUES, TOP1, SIMILARITY):
            raise UsageError(f"criterion {self.criterion!r}: must be one of {VALUES!r}, "
                             f"{TOP1!r}, {SIMILARITY!r}")
        if self.min_magnitude is not None:
            check_tolerance_value(f"min_magnitude {self.min_magnitude!r}", self.min_magnitude)

    def scaled_to(self, magnitude: float) -> Tolerance:
        """This tolerance for values whose largest finite |value| is `magnitude`.

        atol becomes at least `atol_of_max x magnitude`; applying it twice changes nothing, so a
        tolerance already scaled to an output can be carried onto a tensor and scaled again.
        """
        if self.atol_of_max is None or not math.isfinite(magnitude):
            return self
        return replace(self, atol=max(self.atol, self.atol_of_max * magnitude))

    def describe(self) -> str:
        """One line: the statistic, atol (and how it scales), rtol, the other minimums."""
        if self.criterion == TOP1:
            return f"class scores: top-1 at every position, cos>={self.min_cosine:g}"
        if self.criterion == SIMILARITY:
            return f"similarity: snr>={self.min_snr:g}dB" + (
                f", cos>={self.min_cosine:g}" if self.min_cosine is not None else "")
        if self.check_error_stat == "quantile":
            text = f"{self.error_quantile:g} quantile"
        else:
            text = self.check_error_stat
        text += f" atol={self.atol:.3g}"
        if self.atol_of_max is not None:
            text += f" ({self.atol_of_max:.3g} x max|ref|)"
        text += f" rtol={self.rtol:g}"
        if self.max_error_factor is not None:
            text += f", none beyond {self.max_error_factor:g}x atol,"
        if self.min_cosine is not None:
            text += f" cos>={self.min_cosine:g}"
        if self.min_snr is not None:
            text += f" snr>={self.min_snr:g}dB"
        return text


@dataclass(frozen=True)
class Tolerances:
    """Per-output criteria: `per_output` overrides `default` field by field."""

    default: Tolerance
    # None switches a field of the default off for that output (the scaled rule's atol_of_max).
    per_output: dict[str, dict[str, float | str | None]] = field(default_factory=dict)

    def for_output(self, name: str) -> Tolerance:
        overrides = self.per_output.get(name, {})
        merged = {**self.default.__dict__, **overrides}
        return Tolerance(**merged)

    def with_atols(self, atols: dict[str, float]) -> Tolerances:
        """The same tolerances with these outputs' atol fixed (the scaled default, resolved)."""
        per_output = {name: dict(fields) for name, fields in self.per_output.items()}
        for name, atol in atols.items():
            per_output.setdefault(name, {})["atol"] = atol
        return Tolerances(self.default, per_output)

    def check(self, output_names: tuple[str, ...]) -> None:
        """Raises `UsageError` for overrides naming outputs the model does not have."""
        for name in self.per_output:
            if name not in output_names:
                raise UsageError(
                    f"a tolerance names output '{name}', which the model does not have; "
                    f"its outputs are: {', '.join(output_names)}"
                )

    def as_dict(self, output_names: tuple[str, ...]) -> dict[str, dict[str, float | str | None]]:
        return {name: dict(self.for_output(name).__dict__) for name in output_names}


@dataclass(frozen=True)
class ToleranceRequest:
    """Tolerances as the user gave them: field -> {output name or "" for all -> value}.

    Fields left out take the target precision's defaults (see `resolve`).
    """

    values: dict[str, dict[str, Any]] = field(default_factory=dict)

    def resolve(self, precision: str, class_scores: Collection[str] = (),
                quantized: str | None = None) -> Tolerances:
        """The tolerances for a target of `precision`.

        Outputs with none of atol, rtol, error statistic or quantile given get the magnitude-scaled
        default (`scaled_default`) of the coarser of `precision` and the model's own quantization
        (`quantized`, see `output_roles`), with the class-score rule for `class_scores`; given
        ones keep their exact meaning, with `DEFAULT_TOLERANCES` for the fields left out. A given
        cosine or SNR minimum replaces or adds to either.
        """
        atol, rtol = DEFAULT_TOLERANCES[precision]
        explicit: dict[str, Any] = {"atol": atol, "rtol": rtol}
        for_all = {name: by_output[""] for name, by_output in self.values.items()
                   if "" in by_output}
        scaled = not any(name in for_all for name in _SIMPLE_FIELDS)
        noise = noise_precision(precision, quantized)
        quantized_target = precision in QUANTIZED_FLOORS

        def rule(class_scores: bool = False) -> dict[str, Any]:
            if quantized_target:
                return quantized_default(precision, class_scores)
            return scaled_default(noise, class_scores)

        defaults = {**(rule() if scaled else explicit), **for_all}
        per_output: dict[str, dict[str, Any]] = {}
        for field_name, by_output in self.values.items():
            for output, value in by_output.items():
                if output != "":
                    per_output.setdefault(output, {})[field_name] = value
        if scaled:
            # An output given an explicit tolerance leaves the scaled rule entirely.
            unscaled = {**Tolerance(atol, rtol).__dict__, **explicit, **for_all}
            for overrides in per_output.values():
                if any(name in overrides for name in _SIMPLE_FIELDS):
                    overrides.update({**unscaled, **overrides})
            top1 = {**rule(class_scores=True), "min_magnitude": SMALLEST_NORMAL.get(precision)}
            for name in class_scores:
                overrides = per_output.setdefault(name, {})
                if not any(field in overrides for field in _SIMPLE_FIELDS):
                    # A cosine or SNR minimum the user gave stays.
                    overrides.update({**top1, **for_all, **overrides})
        return Tolerances(Tolerance(**defaults), per_output)


def check_tolerance_value(what: str, value: object, low: float = 0.0, high: float = math.inf, *,
                          above_low: bool = False,
                          error: type[TrtcheckError] = UsageError) -> float:
    """Returns `value` as a float if it is a finite number in [low, high]; raises `error` if not.

    The one check for every tolerance, margin, threshold and limit, from flags and suite files
    alike: nan compares false with everything and inf passes everything, so either would switch a
    check off silently. `what` names where the value came from (`--rtol nan`,
    `s.suite.toml:12: case 'a': 'golden.atol' = inf`); `above_low` excludes `low` itself.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise error(f"{what}: must be a number, got {type(value).__name__} {value!r}")
    try:
        number = float(value)
    except OverflowError:  # an int beyond float's range
        number = math.inf
    if math.isfinite(number) and (low < number if above_low else low <= number) and number <= high:
        return number
    if math.isfinite(low) and math.isfinite(high):
        bounds = f" between {_text(low)} and {_text(high)}"
    elif math.isfinite(low):
        bounds = f" > {_text(low)}" if above_low else f" >= {_text(low)}"
    elif math.isfinite(high):
        bounds = f" <= {_text(high)}"
    else:
        bounds = ""
    why = "" if math.isfinite(number) else " (nan or inf would switch the check off)"
    raise error(f"{what}: must be a finite number{bounds}{why}")


def _text(bound: float) -> str:
    return str(int(bound)) if float(bound).is_integer() and abs(bound) < 2**53 else f"{bound:g}"
