"""Plots as inline SVG (matplotlib, Agg), drawn from report documents, never from tensors."""

from __future__ import annotations

import io
import math
from typing import Any

_WIDTH, _HEIGHT = 5.2, 2.6


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # Same bytes for the same data: no date or random ids in the SVG.
    plt.rcParams["svg.hashsalt"] = "trtcheck"
    figure, axes = plt.subplots(figsize=(_WIDTH, _HEIGHT), dpi=100)
    axes.grid(True, alpha=0.3)
    return plt, figure, axes


def _svg(plt: Any, figure: Any) -> str:
    buffer = io.StringIO()
    figure.tight_layout()
    figure.savefig(buffer, format="svg", metadata={"Date": None})
    plt.close(figure)
    text = buffer.getvalue()
    return text[text.index("<svg"):]


def _number(value: Any) -> float:
    # Report documents spell infinities and NaN as strings; float() reads both forms.
    return float(value)


def error_histogram(histogram: dict[str, Any], name: str) -> str:
    """Bars over log10 |error|, with exact matches and inf/nan as separate bars."""
    plt, figure, axes = _figure()
    edges, counts = histogram["log10_edges"], histogram["counts"]
    labels, heights, colors = [], [], []
    if histogram["zeros"]:
        labels.append("0")
        heights.append(histogram["zeros"])
        colors.append("#5b8")
    for low, count in zip(edges[:-1], counts, strict=False):
        labels.append(f"{low:.1f}")
        heights.append(count)
        colors.append("#48c")
    if histogram["nonfinite"]:
        labels.append("inf/nan")
        heights.append(histogram["nonfinite"])
        colors.append("#d44")
    positions = list(range(len(heights)))
    axes.bar(positions, heights, color=colors, width=0.9)
    step = max(1, len(labels) // 8)
    axes.set_xticks(positions[::step], labels[::step], fontsize=7)
    axes.set_xlabel("log10 |target - reference|", fontsize=8)
    axes.set_ylabel("elements", fontsize=8)
    axes.set_title(f"{name}: error histogram", fontsize=9)
    return _svg(plt, figure)


def error_vs_reference(sample: dict[str, Any], name: str, atol: float, rtol: float) -> str:
    """|error| against the reference value (sampled), with the tolerance envelope."""
    plt, figure, axes = _figure()
    reference = [_number(v) for v in sample["reference"]]
    error = [_number(v) for v in sample["abs_error"]]
    finite = [(r, e) for r, e in zip(reference, error, strict=True)
              if math.isfinite(r) and math.isfinite(e)]
    floor = min((e for _, e in finite if e > 0), default=1e-12) / 10
    xs = [r for r, _ in finite]
    axes.scatter(xs, [max(e, floor) for _, e in finite], s=6, color="#48c", label="sampled")
    infinite = [r for r, e in zip(reference, error, strict=True)
                if math.isfinite(r) and not math.isfinite(e)]
    if infinite:
        top = max((e for _, e in finite), default=1.0) * 10 or 1.0
        axes.scatter(infinite, [top] * len(infinite), s=12, color="#d44", marker="^",
                     label="inf/nan")
    if xs:
        low, high = min(xs), max(xs)
        grid = [low + (high - low) * k / 50 for k in range(51)]
        axes.plot(grid, [max(atol, rtol * abs(x), floor) for x in grid], color="#d80",
                  linewidth=1, label="tolerance")
    axes.set_yscale("log")
    axes.set_xlabel("reference value", fontsize=8)
    axes.set_ylabel("|error|", fontsize=8)
    axes.set_title(f"{name}: error against reference value", fontsize=9)
    axes.legend(fontsize=7)
    return _svg(plt, figure)


def bisect_trace(trace: list[dict[str, Any]], culprit_index: int, output: str) -> str:
    """Each tensor's max abs error over the atol carried onto it, against its topological index."""
    plt, figure, axes = _figure()
    tolerance = 1.0

    def ratio(point: dict[str, Any]) -> float:
        error, atol = _number(point["max_abs_error"]), _number(point["tolerance"])
        return error / atol if atol > 0 else (math.inf if error > 0 else 0.0)

    points = [(p["index"], ratio(p)) for p in trace]
    finite = [e for _, e in points if math.isfinite(e) and e > 0]
    # Infinite errors are drawn on a line above everything else, in red.
    top = max([*finite, tolerance]) * 10
    floor = min([*finite, tolerance]) / 10
    xs = [i for i, _ in points]
    ys = [min(max(e, floor), top) if math.isfinite(e) else top for _, e in points]
    axes.plot(xs, ys, marker="o", markersize=3, linewidth=1, color="#48c")
    infinite = [(i, top) for i, e in points if not math.isfinite(e)]
    if infinite:
        axes.scatter(*zip(*infinite, strict=True), color="#d44", marker="^", s=24, zorder=3,
                     label="inf/nan")
    axes.axhline(tolerance, color="#d80", linewidth=1, label="carried atol")
    axes.axvline(culprit_index, color="#d44", linewidth=1, linestyle="--", label="culprit")
    axes.set_yscale("log")
    axes.set_xlabel("tensor (topological index)", fontsize=8)
    axes.set_ylabel("max abs error / atol", fontsize=8)
    axes.set_title(f"bisection of {output}: error along the path", fontsize=9)
    axes.legend(fontsize=7)
    return _svg(plt, figure)


def layerwise_sqnr(layers: list[dict[str, Any]], name: str, poor_db: float = 20.0) -> str:
    """Each quantized layer's SQNR, accumulated and isolated, along graph order.

    `layers` are `layer_errors_to_dict` rows in any order (their `order` places them); the
    worst isolated layer is marked in red, and infinite SQNR (an exact layer) is drawn on a line
    above the others.
    """
    plt, figure, axes = _figure()
    rows = sorted(layers, key=lambda row: row["order"])
    xs = [row["order"] for row in rows]
    series = {key: [_number(row[key]) for row in rows]
              for key in ("sqnr_db_accumulated", "sqnr_db_isolated")}
    finite = [v for values in series.values() for v in values if math.isfinite(v)]
    top = max([*finite, poor_db]) + 5
    bottom = min([*finite, poor_db]) - 5
    for key, label, color in (("sqnr_db_isolated", "isolated", "#48c"),
                              ("sqnr_db_accumulated", "accumulated", "#d80")):
        ys = [min(max(v, bottom), top) if not math.isnan(v) else math.nan for v in series[key]]
        axes.plot(xs, ys, marker="o", markersize=3, linewidth=1, color=color, label=label)
    isolated = [(v, x) for v, x in zip(series["sqnr_db_isolated"], xs, strict=True)
                if not math.isnan(v)]
    if isolated:
        worst, at = min(isolated)
        axes.scatter([at], [max(worst, bottom)], color="#d44", s=36, zorder=3,
                     label="worst isolated")
    axes.axhline(poor_db, color="#d44", linewidth=1, linestyle="--", label=f"{poor_db:g} dB")
    if len(rows) <= 16:
        axes.set_xticks(xs, [row["node"] for row in rows], fontsize=6, rotation=45, ha="right")
    axes.set_xlabel("layer (graph order)", fontsize=8)
    axes.set_ylabel("SQNR (dB)", fontsize=8)
    axes.set_title(f"{name}: quantization error per layer", fontsize=9)
    axes.legend(fontsize=7)
    return _svg(plt, figure)
