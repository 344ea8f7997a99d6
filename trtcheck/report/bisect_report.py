"""How a bisection reads: the culprit, why, the error trace, the precision fix, the repro."""

from __future__ import annotations

import math
from dataclasses import asdict
from typing import Any

from rich.console import Console, ConsoleOptions, Group, RenderResult
from rich.text import Text

from trtcheck.debug.audit import RangeFinding
from trtcheck.debug.results import Localization, PrecisionFix, TracePoint
from trtcheck.report.numbers import fmt
from trtcheck.report.widths import Cell, fitted_table, stacked_rows

# The trace is shown around the culprit and toward the output; the JSON has all of it.
_SHOWN_BEFORE, _SHOWN_AFTER = 3, 8


def _shown(trace: list[TracePoint], culprit: int) -> list[TracePoint | None]:
    """Rows to show, None where rows are elided."""
    position = next((k for k, p in enumerate(trace) if p.index == culprit), 0)
    start = max(position - _SHOWN_BEFORE, 0)
    end = min(position + _SHOWN_AFTER, len(trace))
    rows: list[TracePoint | None] = list(trace[start:end])
    if start > 0:
        rows.insert(0, None)
    if end < len(trace) - 1:
        rows += [None, trace[-1]]
    elif end == len(trace) - 1:
        rows.append(trace[-1])
    return rows


_TRACE_COLUMNS = ("#", "node", "op", "tensor", "max abs err", "atol", "max |ref|", "verdict")
_TRACE_TITLE = ("error along the path (each tensor held to the output's tolerance, atol scaled "
                "to its magnitude)")


def _trace_rows(rows: list[list[Cell]], max_width: int) -> list[Any]:
    """The trace as a table when it fits, else each tensor stacked as lines; names never cut."""
    table = fitted_table(_TRACE_COLUMNS, ["left"] * len(_TRACE_COLUMNS), rows, [1, 3], max_width,
                         header_style="bold", title=_TRACE_TITLE, title_justify="left")
    if table is not None:
        return [table]
    return [Text(_TRACE_TITLE, style="italic"),
            *stacked_rows(_TRACE_COLUMNS, rows, [0, 1, 7], [1, 3], max_width)]


class BisectView:
    def __init__(self, result: Localization) -> None:
        self.result = result

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        r = self.result
        how = {"exact": f"every tensor judged, in {r.batches} batch(es)",
               "search": "a few tensors marked per run",
               "quantized": "quantized layers ranked by their isolated error"}[r.mode]
        parts: list[Any] = [Text(f"bisect {r.output}: {r.target_runs} target run(s), {how}, "
                                 f"{r.probe_points} tensors", style="bold")]
        local = {True: "local", False: "inherited", None: "could not be run alone"}[r.local]
        alone = (f"alone with its own Q/DQ: cosine {fmt(1 - r.local_error)}"
                 if r.mode == "quantized" and r.local_error is not None else
                 f"alone on the target: error {fmt(r.local_error)} relative")
        parts.append(Text(f"culprit: {r.culprit_node or '(unnamed)'} ({r.culprit_op}) -> "
                          f"{r.culprit_tensor}  [{local}; {alone}]", style="red bold"))
        parts += [Text(f"  why: {line}") for line in r.explanation]
        parts.append(Text(f"  criterion: {r.criterion}", style="dim"))
        parts.append(Text(f"  {r.note}", style="dim"))
        rows: list[list[Cell]] = []
        for point in _shown(r.trace, r.culprit_index):
            if point is None:
                rows.append(["...", "", "", "", "", "", "", ""])
                continue
            verdict = Text("DIVERGED", style="red") if point.diverged else Text("ok", "green")
            if point.index == r.culprit_index:
                verdict = Text("CULPRIT", style="red bold")
            rows.append([str(point.index), point.node, point.op, point.tensor,
                         fmt(point.max_abs_error), fmt(point.tolerance),
                         fmt(point.max_abs_reference), verdict])
        if rows:
            parts += _trace_rows(rows, options.max_width)
        fix = r.precision_fix
        if fix is not None and r.tensorrt_blocked:
            # A plan for an engine that cannot be built: said before the plan, not after it.
            parts.append(Text(f"TensorRT cannot parse this model, so the precision fix below "
                              f"holds for the emulated target only: {r.tensorrt_blocked}",
                              style="red bold"))
        if fix is not None and fix.exclude_lists is not None:
            parts += _unquantized(fix)
        elif fix is not None:
            state = f"verified in {fix.rounds} round(s)" if fix.verified else "NOT verified"
            scope = " on the emulated target only" if r.tensorrt_blocked else ""
            parts.append(Text(f"precision fix{scope}: keep {', '.join(fix.keep_fp32)} in fp32 "
                              f"({state})", style="yellow" if r.tensorrt_blocked or not
                              fix.verified else "green"))
            if fix.remaining:
                parts.append(Text(f"  {fix.remaining}", style="yellow"))
            # Flags and paths to copy stay on one line (the views are printed uncropped).
            parts.append(Text(f"  emulated: --keep-fp32 {' '.join(fix.keep_fp32)}",
                              no_wrap=True, overflow="ignore"))
            parts.append(Text(f"  TensorRT 10: {fix.trt10_flags}", no_wrap=True,
                              overflow="ignore"))
            if fix.trt11_model:
                parts.append(Text(f"  TensorRT 11: {fix.trt11_model} (strongly typed)",
                                  no_wrap=True, overflow="ignore"))
        if r.repro_dir:
            parts.append(Text(f"repro: {r.repro_dir} (README.md holds the commands)"))
        yield Group(*parts)


def _unquantized(fix: PrecisionFix) -> list[Any]:
    """A quantized target's fix: the nodes to leave unquantized, as each quantizer takes them."""
    state = "verified" if fix.verified else "NOT verified"
    if fix.verified and not fix.minimal:
        state += ", perhaps not minimal"
    parts: list[Any] = [Text(f"INT8 fix: leave {', '.join(fix.keep_fp32)} unquantized ({state}, "
                             f"{fix.target_runs} run(s))",
                             style="green" if fix.verified else "yellow")]
    if fix.remaining:
        parts.append(Text(f"  {fix.remaining}", style="yellow"))
    for quantizer, names in (fix.exclude_lists or {}).items():
        parts.append(Text(f"  {quantizer} nodes_to_exclude: {names!r}", no_wrap=True,
                          overflow="ignore"))
    if fix.trt11_model:
        parts.append(Text(f"  TensorRT (10 or 11, strongly typed): {fix.trt11_model}",
                          no_wrap=True, overflow="ignore"))
    return parts


def _finding(finding: RangeFinding) -> dict[str, Any]:
    return {**asdict(finding), "description": finding.describe()}


def localization_to_dict(r: Localization) -> dict[str, Any]:
    def number(value: float | None) -> float | str | None:
        if value is None:
            return None
        return "inf" if math.isinf(value) else ("nan" if math.isnan(value) else value)

    return {
        "output": r.output,
        "mode": r.mode,
        "culprit": {"node": r.culprit_node, "op": r.culprit_op, "tensor": r.culprit_tensor,
                    "index": r.culprit_index, "local": r.local,
                    "local_error": number(r.local_error)},
        "target_runs": r.target_runs,
        "runs": r.runs,
        "probe_points": r.probe_points,
        "criterion": r.criterion,
        "batches": r.batches,
        "boundary_verified": r.boundary_verified,
        "note": r.note,
        "explanation": r.explanation,
        "trace": [{**asdict(p), "error": number(p.error), "tolerance": number(p.tolerance),
                   "max_abs_error": number(p.max_abs_error)} for p in r.trace],
        "audit": [_finding(f) for f in r.audit],
        "precision_fix": None if r.precision_fix is None else asdict(r.precision_fix),
        "tensorrt_blocked": r.tensorrt_blocked,
        "repro_dir": r.repro_dir,
    }
