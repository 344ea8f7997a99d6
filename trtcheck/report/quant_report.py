"""How a layer-wise quantization error reads: the layers ranked worst first, fitted to the width.

The table follows the comparison table's rules (`widths`): node names are shortened in the middle
only when the table would not fit otherwise, numbers are never cut, and a terminal too narrow for
the table gets one layer per pair of lines.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from rich.console import Console, ConsoleOptions, Group, RenderResult
from rich.text import Text

from trtcheck.report.numbers import fmt
from trtcheck.report.widths import Cell, Justify, console_width, fitted_table, stacked_rows

if TYPE_CHECKING:
    from trtcheck.quant.layerwise import LayerError

# Below this SQNR a layer's int8 error is no longer noise-like: a well-scaled int8 tensor of
# Gaussian-like values measures 35-45 dB, and 20 dB is an error of 10% of the signal's RMS.
POOR_SQNR_DB = 20.0

_COLUMNS: tuple[tuple[str, Justify], ...] = (
    ("#", "right"), ("node", "left"), ("op", "left"),
    ("SQNR dB iso", "right"), ("cosine iso", "right"),
    ("SQNR dB acc", "right"), ("cosine acc", "right"))
_NOTE = ("iso(lated): the layer alone with its own Q/DQ, fed the fp32 activations; acc(umulated): "
         "in the whole Q/DQ model, every error upstream included")


def _sqnr_cell(value: float) -> Text:
    poor = math.isnan(value) or value < POOR_SQNR_DB
    return Text(fmt(value), style="red bold" if poor else "")


def _cosine_cell(value: float) -> str:
    return "undefined" if math.isnan(value) else f"{value:.6f}"


def _cells(rank: int, row: LayerError) -> list[Cell]:
    return [str(rank), row.node, row.op,
            _sqnr_cell(row.sqnr_db_isolated), _cosine_cell(row.cosine_isolated),
            _sqnr_cell(row.sqnr_db_accumulated), _cosine_cell(row.cosine_accumulated)]


class LayerwiseView:
    """The ranked table of `layerwise_error`'s rows, in the order given; `limit` rows at most."""

    def __init__(self, rows: Sequence[LayerError], limit: int | None = None) -> None:
        self.rows = list(rows)
        self.limit = limit

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        shown = self.rows[:self.limit] if self.limit is not None else self.rows
        poor = sum(1 for row in self.rows
                   if math.isnan(row.sqnr_db_isolated) or row.sqnr_db_isolated < POOR_SQNR_DB)
        parts: list[Any] = [
            Text(f"layer-wise quantization error: {len(self.rows)} layer(s), worst first by "
                 f"isolated SQNR; {poor} below {POOR_SQNR_DB:g} dB",
                 style="red bold" if poor else "bold"),
            Text(_NOTE, style="dim", overflow="fold")]
        rows = [_cells(rank, row) for rank, row in enumerate(shown, 1)]
        headers = [name for name, _ in _COLUMNS]
        table = fitted_table(headers, [justify for _, justify in _COLUMNS], rows, [1],
                             options.max_width, header_style="bold")
        parts += [table] if table is not None else stacked_rows(headers, rows, [0, 1, 2], [1],
                                                                 options.max_width)
        if len(shown) < len(self.rows):
            parts.append(Text(f"... {len(self.rows) - len(shown)} more layer(s); the JSON "
                              "report has all of them", style="dim"))
        yield Group(*parts)


def print_layer_errors(rows: Sequence[LayerError], console: Console | None = None,
                       limit: int | None = None) -> None:
    """Prints the ranked table on `console` (stdout at the terminal's width by default)."""
    if console is None:
        console = Console(highlight=False, markup=False,
                          width=console_width(sys.stdout.isatty()))
    console.print(LayerwiseView(rows, limit))
