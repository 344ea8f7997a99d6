"""The terminal view of a comparison, as rich renderables (plain text when not a TTY)."""

from __future__ import annotations

import math
from typing import Any

from rich.console import Console, ConsoleOptions, Group, RenderResult
from rich.text import Text

from trtcheck.compare import ErrorHistogram, OutputDiff
from trtcheck.core import ComparisonResult
from trtcheck.report.numbers import fmt
from trtcheck.report.widths import Cell, Justify, fitted_table, stacked_rows


def _fmt(value: float | None) -> str:
    return fmt(value, missing="none")


def _index(diff: OutputDiff) -> str:
    return "[" + ",".join(str(i) for i in diff.max_abs_index) + "]"


def _tolerance(diff: OutputDiff) -> str:
    if _is_integer(diff):  # compared exactly, whatever the float fields say
        minimum = diff.tolerance.min_agreement
        return "exact" if minimum is None else f"agreement>={minimum:g}"
    return diff.tolerance.describe()


class ComparisonView:
    """Header, one row per output, failure reasons, and the equivalent Polygraphy command."""

    def __init__(self, result: ComparisonResult) -> None:
        self.result = result

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        result = self.result
        # The line naming the model stays whole (printed uncropped), so the path can be copied;
        # the others wrap, so no input, seed or tolerance is lost at the console's width.
        header = Text(no_wrap=True, overflow="ignore")
        header.append(f"{result.model_path}", style="bold")
        header.append(f"  target {result.target.name} vs reference {result.reference.name}")
        inputs = ", ".join(
            f"{d.name} {d.dtype}{list(d.shape)} in [{d.value_range[0]:g}, {d.value_range[1]:g}]"
            f" ({d.origin or d.source})" for d in result.feeds.described)
        seed = f", seed {result.feeds.seed}" if result.feeds.seed is not None else ""
        parts: list = [header,
                       Text(f"inputs: {inputs}{seed}", style="dim", overflow="fold"),
                       Text(f"tolerance: {_tolerance_summary(result)}", style="dim",
                            overflow="fold")]

        rows: list[list[Cell]] = []
        for diff in result.outputs:
            verdict = _verdict_cell(diff)
            rows.append([
                diff.name, verdict, f"{_fmt(diff.max_abs_error)} @ {_index(diff)}",
                f"{_fmt(diff.reference_at_max)} -> {_fmt(diff.target_at_max)}",
                _fmt(diff.max_rel_error), _fmt(diff.mean_abs_error), _fmt(diff.p99_abs_error),
                _cosine_cell(diff), _exceeding_cell(diff),
                "-" if _is_integer(diff) else
                f"{_fmt(diff.required_atol)} | {_fmt(diff.required_rtol)}",
            ])
        if result.passes is not None:
            steps = ", ".join(f"{o.name} {o.status}" for o in result.passes.outcomes)
            nodes = len(result.passes.model.graph.node)
            parts.append(Text(f"target model after passes: {nodes} nodes ({steps})",
                              style="dim"))
        parts += _output_rows(rows, options.max_width)
        shown: set[str] = set()
        for diff in result.outputs:
            for reason in diff.failures:
                # A detection set's pairing failure is the same for each of its outputs.
                if reason.startswith("detections:") and reason in shown:
                    continue
                shown.add(reason)
                parts.append(Text(f"  {diff.name}: {reason}", style="red"))
            if not diff.passed and diff.histogram is not None:
                parts.append(Text(f"  {diff.name} |error|: {sparkline(diff.histogram)}",
                                  style="dim"))
        parts.extend(_notes(result.outputs))
        summary = Text(summary_line(result.verdict, result.outputs),
                       style="green bold" if result.verdict == "pass" else "red bold")
        parts.append(summary)
        parts.extend(_tensorrt_support_lines(result))
        parts.extend(Text(f"hint: {hint}", style="yellow") for hint in result.hints)
        yield Group(*parts)


def _tensorrt_support_lines(result: ComparisonResult) -> list[Text]:
    line = result.tensorrt_support_summary
    if line is None:
        return []
    return [Text(line, style="yellow" if result.tensorrt_support is None else "red bold")]


def _verdict_cell(diff: OutputDiff) -> Text:
    if not diff.checked:
        return Text("EMPTY", style="yellow bold")
    return Text("PASS", style="green bold") if diff.passed else Text("FAIL", style="red bold")


def _is_integer(diff: OutputDiff) -> bool:
    return diff.dtype.startswith(("int", "uint", "bool"))


def _cosine_cell(diff: OutputDiff) -> str:
    if _is_integer(diff) or not diff.checked:
        return "-"  # integer and bool outputs are compared exactly, never by cosine
    if diff.cosine is None:
        return "undefined"  # a zero vector: see the warning below the table
    return f"{diff.cosine:.6f}" if not math.isnan(diff.cosine) else "nan"


def _exceeding_cell(diff: OutputDiff) -> str:
    if diff.method == "exact":
        return f"{diff.exceeding} of {diff.elements} differ"
    if diff.method == "detections":
        return f"{diff.exceeding} of {diff.elements} paired"
    if diff.method == "top1" and diff.top1_same is not None:
        same, positions = diff.top1_same
        return f"top-1 same at {same} of {positions}"
    return f"{diff.exceeding} of {diff.elements}"


def _notes(outputs: list[OutputDiff]) -> list[Text]:
    """Warnings per output, then each detection set's pairing (once per set)."""
    lines = [Text(f"  {diff.name}: warning: {warning}", style="yellow")
             for diff in outputs for warning in diff.warnings]
    shown = set()
    for diff in outputs:
        match = diff.detections
        if match is None or match.spec in shown:
            continue
        shown.add(match.spec)
        lines.append(Text(f"  {match.summary()}", style="dim" if diff.passed else "red"))
        for side, missed in (("only in the reference", match.unmatched_reference),
                             ("only in the target", match.unmatched_target)):
            for det in missed:
                label = "" if det.label is None else f"label {det.label:g} "
                box = ", ".join(f"{v:.4g}" for v in det.box)
                lines.append(Text(f"    {side}: #{','.join(map(str, det.index))} {label}"
                                  f"score {det.score:.4g} box [{box}]", style="dim"))
    return lines


def summary_line(verdict: str, outputs: list[OutputDiff]) -> str:
    """'PASS: 2 of 2 output(s) within tolerance; 1 empty in both runs: not checked'."""
    checked = [diff for diff in outputs if diff.checked]
    text = (f"{verdict.upper()}: {sum(diff.passed for diff in checked)} of {len(checked)} "
            "output(s) within tolerance")
    empty = len(outputs) - len(checked)
    return text + (f"; {empty} empty in both runs: not checked" if empty else "")


_COLUMNS: tuple[tuple[str, Justify], ...] = (
    ("output", "left"), ("verdict", "left"), ("max abs err @ index", "right"),
    ("ref -> target", "right"), ("max rel", "right"), ("mean abs", "right"),
    ("p99 abs", "right"), ("cosine", "right"), ("exceeding", "right"),
    ("needs atol | rtol", "right"))


def _output_rows(rows: list[list[Cell]], max_width: int) -> list[Any]:
    """One table row per output when the table fits, else each output stacked as lines."""
    headers = [name for name, _ in _COLUMNS]
    table = fitted_table(headers, [justify for _, justify in _COLUMNS], rows, [0], max_width,
                         header_style="bold")
    if table is not None:
        return [table]
    return stacked_rows(headers, rows, [0, 1], [0], max_width)


_BARS = " ▁▂▃▄▅▆▇█"


def sparkline(histogram: ErrorHistogram) -> str:
    """A one-line histogram of log10 |error|: '1e-07 ▁▃█▅▂ 1e-01, 12 exact, 3 inf/nan'."""
    parts = []
    if histogram.counts:
        peak = max(histogram.counts)
        bars = "".join(_BARS[min(len(_BARS) - 1, math.ceil(8 * c / peak))] if c else " "
                       for c in histogram.counts)
        parts.append(f"1e{histogram.log10_edges[0]:+.0f} {bars} 1e{histogram.log10_edges[-1]:+.0f}")
    if histogram.zeros:
        parts.append(f"{histogram.zeros} exact")
    if histogram.nonfinite:
        parts.append(f"{histogram.nonfinite} inf/nan")
    return ", ".join(parts)


def _tolerance_summary(result: ComparisonResult) -> str:
    by_text: dict[str, list[str]] = {}
    for diff in result.outputs:
        by_text.setdefault(_tolerance(diff), []).append(diff.name)
    if len(by_text) == 1:
        return next(iter(by_text))
    return "; ".join(f"{', '.join(names)}: {text}" for text, names in by_text.items())
