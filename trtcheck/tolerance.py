"""Tolerances: per-output criteria, their defaults per precision, and the user's requests."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from trtcheck.errors import TrtcheckError, UsageError

ERROR_STATS = ("elemwise", "max", "mean", "median", "quantile")

# Starting points per target precision; suites replace them with measured tolerances.
DEFAULT_TOLERANCES = {
    "fp32": (1e-4, 1e-4),
    "fp16": (1e-2, 1e-2),
    "bf16": (5e-2, 5e-2),
}


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


@dataclass(frozen=True)
class Tolerances:
    """Per-output criteria: `per_output` overrides `default` field by field."""

    default: Tolerance
    per_output: dict[str, dict[str, float | str]] = field(default_factory=dict)

    def for_output(self, name: str) -> Tolerance:
        overrides = self.per_output.get(name, {})
        merged = {**self.default.__dict__, **overrides}
        return Tolerance(**merged)

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

    Fields left out take the target precision's defaults (`compare.DEFAULT_TOLERANCES`).
    """

    values: dict[str, dict[str, Any]] = field(default_factory=dict)

    def resolve(self, precision: str) -> Tolerances:
        atol, rtol = DEFAULT_TOLERANCES[precision]
        defaults: dict[str, Any] = {"atol": atol, "rtol": rtol}
        per_output: dict[str, dict[str, Any]] = {}
        for field_name, by_output in self.values.items():
            for output, value in by_output.items():
                if output == "":
                    defaults[field_name] = value
                else:
                    per_output.setdefault(output, {})[field_name] = value
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
