"""The terminal view of a comparison, as rich renderables (plain text when not a TTY)."""

from __future__ import annotations

import math

from rich.console import Console, ConsoleOptions, Group, RenderResult
from rich.table import Table
from rich.text import Text

from trtcheck.compare import ErrorHistogram, OutputDiff
from trtcheck.core import ComparisonResult
from trtcheck.report.numbers import fmt


def _fmt(value: float | None) -> str:
    return fmt(value, missing="none")


def _index(diff: OutputDiff) -> str:
    return "[" + ",".join(str(i) for i in diff.max_abs_index) + "]"


def _tolerance(diff: OutputDiff) -> str:
    tol = diff.tolerance
    text = f"{tol.check_error_stat} atol={tol.atol:g} rtol={tol.rtol:g}"
    if tol.min_cosine is not None:
        text += f" cos>={tol.min_cosine:g}"
    if tol.min_snr is not None:
        text += f" snr>={tol.min_snr:g}dB"
    return text


class ComparisonView:
    """Header, one row per output, failure reasons, and the equivalent Polygraphy command."""

    def __init__(self, result: ComparisonResult) -> None:
        self.result = result

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        result = self.result
        # Lines that name files and settings stay whole, so they can be copied.
        header = Text(no_wrap=True, overflow="ignore")
        header.append(f"{result.model_path}", style="bold")
        header.append(f"  target {result.target.name} vs reference {result.reference.name}")
        inputs = ", ".join(
            f"{d.name} {d.dtype}{list(d.shape)} in [{d.value_range[0]:g}, {d.value_range[1]:g}]"
            f" ({d.origin or d.source})" for d in result.feeds.described)
        seed = f", seed {result.feeds.seed}" if result.feeds.seed is not None else ""
        parts: list = [header,
                       Text(f"inputs: {inputs}{seed}", style="dim", no_wrap=True,
                            overflow="ignore"),
                       Text(f"tolerance: {_tolerance_summary(result)}", style="dim",
                            no_wrap=True, overflow="ignore")]

        table = Table(show_edge=False, header_style="bold")
        for column, justify in (("output", "left"), ("verdict", "left"),
                                ("max abs err @ index", "right"), ("ref -> target", "right"),
                                ("max rel", "right"), ("mean abs", "right"), ("p99 abs", "right"),
                                ("cosine", "right"), ("exceeding", "right"),
                                ("needs atol | rtol", "right")):
            table.add_column(column, justify=justify)  # type: ignore[arg-type]
        for diff in result.outputs:
            verdict = Text("PASS", style="green bold") if diff.passed else Text(
                "FAIL", style="red bold")
            table.add_row(
                diff.name, verdict, f"{_fmt(diff.max_abs_error)} @ {_index(diff)}",
                f"{_fmt(diff.reference_at_max)} -> {_fmt(diff.target_at_max)}",
                _fmt(diff.max_rel_error), _fmt(diff.mean_abs_error), _fmt(diff.p99_abs_error),
                f"{diff.cosine:.6f}" if not math.isnan(diff.cosine) else "nan",
                f"{diff.exceeding} of {diff.elements}",
                f"{_fmt(diff.required_atol)} | {_fmt(diff.required_rtol)}",
            )
        if result.passes is not None:
            steps = ", ".join(f"{o.name} {o.status}" for o in result.passes.outcomes)
            nodes = len(result.passes.model.graph.node)
            parts.append(Text(f"target model after passes: {nodes} nodes ({steps})",
                              style="dim"))
        parts.append(table)
        for diff in result.outputs:
            for reason in diff.failures:
                parts.append(Text(f"  {diff.name}: {reason}", style="red"))
            if not diff.passed and diff.histogram is not None:
                parts.append(Text(f"  {diff.name} |error|: {sparkline(diff.histogram)}",
                                  style="dim"))
        passed = sum(diff.passed for diff in result.outputs)
        summary = Text(
            f"{result.verdict.upper()}: {passed} of {len(result.outputs)} output(s) within "
            "tolerance", style="green bold" if result.verdict == "pass" else "red bold")
        parts.append(summary)
        parts.extend(Text(f"hint: {hint}", style="yellow") for hint in result.hints)
        yield Group(*parts)


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
