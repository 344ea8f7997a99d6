"""How every report writes a number: three significant digits, inf and nan spelled out."""

from __future__ import annotations

import math
from typing import Any


def fmt(value: Any, missing: str = "-") -> str:
    """`value` as a report shows it; strings (JSON's "inf"/"nan") pass through."""
    if value is None:
        return missing
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return f"{value:.3g}"
