"""The report of `trtcheck fix`: what each pass changed, and the numeric proof."""

from __future__ import annotations

import math
from typing import Any

from rich.console import Console, ConsoleOptions, Group, RenderResult
from rich.table import Table
from rich.text import Text

from trtcheck.fix import FixResult
from trtcheck.passes.pipeline import PassOutcome

_STATUS_STYLE = {"changed": "green", "unchanged": "dim", "rolled-back": "red bold",
                 "failed": "red bold", "unverified": "yellow"}


def _change(value: float) -> str:
    return "inf" if math.isinf(value) else f"{value:.3g}"


def _op_changes(outcome: PassOutcome) -> str:
    return ", ".join(f"{op} {before}->{after}" for op, (before, after) in
                     outcome.op_changes.items())


class FixView:
    def __init__(self, result: FixResult) -> None:
        self.result = result

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        result = self.result
        table = Table(show_edge=False, header_style="bold")
        # Pass names are never cut or split; the other columns wrap at the console's width.
        longest = max((len(o.name) for o in result.pipeline.outcomes), default=4)
        table.add_column("pass", no_wrap=True, min_width=longest)
        for column in ("status", "nodes", "op changes", "max output change", "seconds"):
            table.add_column(column, overflow="fold")
        for outcome in result.pipeline.outcomes:
            worst = max(outcome.max_change.values(), default=None)
            table.add_row(
                outcome.name, Text(outcome.status, style=_STATUS_STYLE.get(outcome.status, "")),
                f"{sum(outcome.nodes_before.values())} -> {sum(outcome.nodes_after.values())}",
                _op_changes(outcome) or "-", "-" if worst is None else _change(worst),
                f"{outcome.seconds:.2f}")
        parts: list[Any] = [Text(f"{result.source}", style="bold", no_wrap=True,
                                 overflow="ignore"), table]
        for outcome in result.pipeline.outcomes:
            if outcome.message:
                parts.append(Text(f"  {outcome.name}: {outcome.message}",
                                  style=_STATUS_STYLE.get(outcome.status, "")))
        noise = result.pipeline.noise
        if noise is not None:
            parts.append(Text(
                f"noise floor: ONNX Runtime's own spread on the original "
                f"({', '.join(noise.settings) or 'no other run'}) is up to "
                f"{_change(noise.largest)}; a pass may change an output by max(rtol "
                f"{noise.rtol:g}, {noise.margin:g} x its spread), the spread's share at most "
                f"{noise.ceiling:g}"))
        if result.pipeline.final_change is not None:
            worst = max(result.pipeline.final_change.values(), default=0.0)
            parts.append(Text(f"result vs original: largest output change {_change(worst)} "
                              "(relative to each output's largest magnitude)"))
        else:
            parts.append(Text(f"unverified: {result.pipeline.reason_unverified}",
                              style="yellow"))
        written = f"wrote {result.output}" if result.output else "nothing written"
        parts.append(Text(f"{written}: {result.nodes_before} -> {result.nodes_after} nodes",
                          style="bold"))
        yield Group(*parts)


def fix_to_dict(result: FixResult) -> dict[str, Any]:
    def number(value: float) -> float | str:
        return "inf" if math.isinf(value) else value

    noise = result.pipeline.noise

    return {
        "schema": "trtcheck.fix",
        "schema_version": 1,
        "source": str(result.source),
        "output": str(result.output) if result.output else None,
        "nodes": {"before": result.nodes_before, "after": result.nodes_after},
        "verified": result.pipeline.verified,
        "reason_unverified": result.pipeline.reason_unverified,
        "passes": [
            {"name": o.name, "status": o.status, "message": o.message,
             "nodes_before": dict(o.nodes_before), "nodes_after": dict(o.nodes_after),
             "max_change": {k: number(v) for k, v in o.max_change.items()},
             "seconds": round(o.seconds, 4)}
            for o in result.pipeline.outcomes
        ],
        "noise_floor": None if noise is None else {
            "settings": list(noise.settings), "rtol": noise.rtol, "margin": noise.margin,
            "ceiling": noise.ceiling,
            "spread": {k: number(v) for k, v in noise.spread.items()},
            "allowed": {k: noise.allowed(k) for k in noise.spread}},
        "final_change": None if result.pipeline.final_change is None else {
            k: number(v) for k, v in result.pipeline.final_change.items()},
        "inputs": [{"name": d.name, "dtype": d.dtype, "shape": list(d.shape),
                    "range": list(d.value_range), "source": d.source, "range_from": d.origin,
                    "generator": d.generator}
                   for d in result.feeds.described],
    }
