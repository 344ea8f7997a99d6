"""Fitting the terminal views to the width they are printed at, without cutting what a user needs.

rich cuts a table cell that does not fit its column ("encoder/stage_3…"), so two outputs that
differ only at the end look identical, and it crops every printed line at the console's width.
Here, instead:

- the width is the terminal's, or `COLUMNS` when set (rich reads it), or a generous
  `NON_TERMINAL_WIDTH` for CI logs (rich's own fallback is 80);
- long names are shortened in the middle, on their `/` (else `.` and `:`) separators, so that the
  head and the distinguishing tail stay (`/encoder/…/mlp.3/Add_output_0`), and only when the
  table would not fit otherwise; two different names never read the same;
- every other column gets a fixed width no narrower than its longest word, so numbers wrap at
  their spaces and are never cut; when even that does not fit, the rows are stacked as lines.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from typing import Literal

from rich.cells import cell_len
from rich.console import RenderableType
from rich.padding import Padding
from rich.table import Table
from rich.text import Text

# CI logs keep long lines (and wrap them for display), so a non-terminal gets room for the
# whole comparison table with names of about 70 characters.
NON_TERMINAL_WIDTH = 200
ELLIPSIS = "…"
# Narrower name columns than this read worse than one row per output stacked as lines.
MIN_NAME_WIDTH = 16

Cell = str | Text
Justify = Literal["left", "right"]
_SEPARATORS = re.compile(r"([/.:])")
_PATH = re.compile(r"(/)")


def console_width(is_terminal: bool) -> int | None:
    """The width to give a rich `Console`: None lets rich use the terminal's or `COLUMNS`."""
    columns = os.environ.get("COLUMNS", "")
    if is_terminal or (columns.isdigit() and int(columns) > 0):
        return None
    return NON_TERMINAL_WIDTH


def shorten_names(names: Iterable[str], width: int) -> dict[str, str]:
    """Each name as shown in `width` columns: whole when it fits, else shortened in the middle.

    The head segment and as many tail segments as fit are kept; names that would then read the
    same keep the segments where they differ, even past `width`, and are shown whole if that
    is still not enough. A name is never cut at its end.
    """
    unique = list(dict.fromkeys(names))
    shown = {name: _shorten(name, width, ()) for name in unique}
    for _ in range(2):
        groups: dict[str, list[str]] = {}
        for name, text in shown.items():
            groups.setdefault(text, []).append(name)
        clashes = [group for group in groups.values() if len(group) > 1]
        if not clashes:
            return shown
        for group in clashes:
            for name in group:
                shown[name] = _shorten(name, width, _differing(name, group))
    groups = {}
    for name, text in shown.items():
        groups.setdefault(text, []).append(name)
    for group in groups.values():
        if len(group) > 1:
            shown.update({name: name for name in group})
    return shown


def _segments(name: str) -> list[str]:
    """'/a/b.c' -> ['/', 'a/', 'b.c']: each segment keeps the separator that ends it.

    Names are split on '/' when they have one ('/encoder/layer.0/Add'), else on '.' and ':'
    ('encoder.layer.0.weight'), so 'layer.0' stays one segment of a path.
    """
    parts = (_PATH if "/" in name else _SEPARATORS).split(name)
    segments = [text + sep for text, sep in zip(parts[::2], [*parts[1::2], ""], strict=True)]
    return [s for s in segments if s]


def _differing(name: str, group: Sequence[str]) -> set[int]:
    """Indices of `name`'s segments that differ from the same segment of another name."""
    own = _segments(name)
    differing: set[int] = set()
    for other in group:
        theirs = _segments(other)
        differing |= {i for i, segment in enumerate(own)
                      if i >= len(theirs) or theirs[i] != segment}
    return differing


def _shorten(name: str, width: int, required: Iterable[int]) -> str:
    if cell_len(name) <= width:
        return name
    segments = _segments(name)
    head = next((i for i, s in enumerate(segments) if s.strip("/.:")), 0)
    keep = set(range(head + 1)) | {len(segments) - 1} | set(required)
    for index in range(len(segments) - 2, head, -1):
        if cell_len(_join(segments, keep | {index})) > width:
            break
        keep.add(index)
    text = _join(segments, keep)
    if cell_len(text) <= width or required:
        return text
    # Too long even as head/…/last: the last segment is what tells names apart.
    if len(segments) > 1 and cell_len(ELLIPSIS + segments[-2][-1] + segments[-1]) <= width:
        return _join(segments, {len(segments) - 1})
    # Too long even alone: keep the start and the end of its characters.
    tail = max((width - 1) * 2 // 3, 1)
    return name[:max(width - 1 - tail, 1)] + ELLIPSIS + name[-tail:]


def _join(segments: Sequence[str], keep: set[int]) -> str:
    """The kept segments, each run of skipped ones replaced by '…' and the separator it ended on."""
    out: list[str] = []
    skipped = ""
    for index, segment in enumerate(segments):
        if index not in keep:
            skipped = segment
            continue
        if skipped:
            out.append(ELLIPSIS + (skipped[-1] if _SEPARATORS.fullmatch(skipped[-1]) else ""))
            skipped = ""
        out.append(segment)
    return "".join(out)


def _plain(cell: Cell) -> str:
    return cell.plain if isinstance(cell, Text) else cell


def _natural(cells: Iterable[Cell]) -> int:
    return max((cell_len(line) for cell in cells for line in _plain(cell).splitlines()),
               default=1)


def _narrowest(cells: Iterable[Cell]) -> int:
    return max((cell_len(word) for cell in cells for word in _plain(cell).split()), default=1)


def fitted_table(headers: Sequence[str], justify: Sequence[Justify], rows: Sequence[Sequence[Cell]],
                 name_columns: Sequence[int], max_width: int, **table_options: object
                 ) -> Table | None:
    """A table of `rows` that fits `max_width`, or None when it cannot without cutting.

    Name columns (given as plain strings) are shortened by `shorten_names` when needed; every
    other column gets a fixed width between its longest word and its longest cell, so rich
    wraps its cells at spaces and never cuts them.
    """
    count = len(headers)
    columns = [[headers[i], *(row[i] for row in rows)] for i in range(count)]
    others = [i for i in range(count) if i not in name_columns]
    # Padding of one space on each side of every column, and a rule between columns.
    frame = 3 * count - 1
    least = {i: _narrowest(columns[i]) for i in others}
    room = max_width - frame - sum(least.values())
    natural_names = {i: _natural(columns[i][1:]) for i in name_columns}
    widths: dict[int, int] = {}
    shown: dict[int, dict[str, str]] = {}
    for i in name_columns:
        share = room * natural_names[i] // max(sum(natural_names.values()), 1)
        budget = max(min(natural_names[i], share), cell_len(headers[i]))
        if budget < min(natural_names[i], MIN_NAME_WIDTH):
            return None
        shown[i] = shorten_names((_plain(row[i]) for row in rows), budget)
        widths[i] = max(cell_len(headers[i]), _natural(shown[i].values()))
    spare = max_width - frame - sum(widths.values()) - sum(least.values())
    if spare < 0:
        return None
    slack = {i: _natural(columns[i]) - least[i] for i in others}
    for i in sorted(others, key=lambda i: slack[i]):
        widths[i] = least[i] + min(slack[i], spare)
        spare -= widths[i] - least[i]
    table = Table(show_edge=False, **table_options)  # type: ignore[arg-type]
    for i in range(count):
        table.add_column(headers[i], justify=justify[i], width=widths[i], overflow="fold",
                         no_wrap=i in name_columns)
    for row in rows:
        table.add_row(*(shown[i][_plain(cell)] if i in shown else cell
                        for i, cell in enumerate(row)))
    return table


def stacked_rows(headers: Sequence[str], rows: Sequence[Sequence[Cell]],
                 first_line: Sequence[int], name_columns: Sequence[int],
                 max_width: int) -> list[RenderableType]:
    """Rows as lines, for widths too narrow for the table.

    The `first_line` cells (names, verdict) go on one line, then `header value` pairs of the
    others, indented and wrapped at their spaces.
    """
    beside = sum(_natural(row[i] for row in rows) + 2 for i in first_line
                 if i not in name_columns)
    first_names = [i for i in name_columns if i in first_line]
    names_room = max(max_width - beside, MIN_NAME_WIDTH) // max(len(first_names), 1)
    # Names on the first line are shortened to share it; the others wrap whole.
    shown = {i: shorten_names((_plain(row[i]) for row in rows), names_room)
             for i in first_names}
    lines: list[RenderableType] = []
    for row in rows:
        first = Text(overflow="fold")
        for i in first_line:
            cell = Text(shown[i][_plain(row[i])]) if i in shown else row[i]
            if _plain(cell):
                first.append("  " if first.plain else "")
                first.append(cell)
        lines.append(first)
        rest = Text(overflow="fold")
        for i, cell in enumerate(row):
            if i in first_line or not _plain(cell):
                continue
            rest.append(", " if rest.plain else "")
            rest.append(f"{headers[i]} ", style="dim")
            rest.append(cell)
        if rest.plain:
            lines.append(Padding(rest, (0, 0, 0, 4), expand=False))
    return lines
