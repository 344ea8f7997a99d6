"""The report of `trtcheck lint`."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from rich.console import Console, ConsoleOptions, Group, RenderResult
from rich.table import Table
from rich.text import Text

from trtcheck.lint import LintResult


class LintView:
    def __init__(self, result: LintResult) -> None:
        self.result = result

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        result = self.result
        source = result.source
        low, high = result.opset_range
        parts: list[Any] = [
            Text(result.model_path, style="bold", no_wrap=True, overflow="ignore"),
            Text(f"against the operator table of TensorRT {result.version} (opset "
                 f"{low}-{high}; onnx-tensorrt {source['path']} @ {source['commit'][:10]})",
                 style="dim"),
        ]
        if result.findings:
            table = Table(show_edge=False, header_style="bold")
            for column in ("severity", "node", "op", "reason", "fixed by"):
                table.add_column(column)
            for finding in result.findings:
                style = "red" if finding.severity == "error" else "yellow"
                table.add_row(Text(finding.severity, style=style), finding.node or "(model)",
                              finding.op or "-", finding.reason, finding.fixed_by or "-")
            parts.append(table)
        if result.parser_errors is not None:
            parts.append(Text(f"TensorRT's parser: {len(result.parser_errors)} error(s)"))
            parts += [Text(f"  disagreement: {d}", style="yellow") for d in result.disagreements]
        errors, warnings = len(result.errors), len(result.findings) - len(result.errors)
        fixable = sum(1 for f in result.findings if f.fixed_by)
        verdict = "clean" if not result.findings else (
            f"{errors} error(s), {warnings} warning(s); {fixable} fixable with `trtcheck fix`")
        parts.append(Text(verdict, style="green bold" if not errors else "red bold"))
        yield Group(*parts)


def lint_to_dict(result: LintResult) -> dict[str, Any]:
    return {
        "schema": "trtcheck.lint",
        "schema_version": 1,
        "model": result.model_path,
        "tensorrt_major": result.trt_major,
        "tensorrt_version": result.version,
        "source": result.source,
        "findings": [asdict(f) for f in result.findings],
        "parser_errors": None if result.parser_errors is None else [
            asdict(f) for f in result.parser_errors],
        "disagreements": result.disagreements,
    }
