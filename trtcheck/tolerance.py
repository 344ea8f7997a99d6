"""Tolerances: per-output criteria, their defaults per precision, and the user's requests."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from trtcheck.errors import UsageError

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


def check_tolerance_value(what: str, value: float) -> float:
    """Raises `UsageError` unless `value` is a finite, non-negative number."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) \
            or value < 0:
        raise UsageError(f"{what} must be a finite number >= 0, got {value!r}")
    return float(value)
