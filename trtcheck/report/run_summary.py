"""What one pytest run counted (or several CI jobs together): JSON, Markdown and an HTML overview.

The entries are pytest's own test reports, each filed under the category pytest itself gives it
(`pytest_report_teststatus`: passed, failed, error, skipped, xfailed, xpassed), one entry per
counted report, so that the counts here are the ones on pytest's last line. Two refinements
are counted on top, never instead: crashes (errors whose backend process was killed by a signal
or timed out) and unexpected passes (strict expected failures that passed, which pytest counts
as failed). This module knows nothing of pytest: the plugin builds the entries, and
`trtcheck report merge` reads them back from `summary.json`.
"""

from __future__ import annotations

import html
import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

SUMMARY_FILE = "summary.json"
REPORT_PAGE = "report.html"
FORMAT = "trtcheck-run-summary"
FORMAT_VERSION = 1
# A failure's text is kept for the Markdown summary; beyond this it is cut (the JUnit file and
# the per-item JSON reports keep everything).
MESSAGE_LIMIT = 20_000

# pytest's categories, failures first.
CATEGORIES = ("failed", "error", "xpassed", "passed", "xfailed", "skipped")
# The names pytest's summary line (and `RunResult.parseoutcomes`) gives each category.
COUNT_NAMES = {"failed": "failed", "error": "errors", "xpassed": "xpassed", "passed": "passed",
               "xfailed": "xfailed", "skipped": "skipped"}
OTHER_TESTS = "(other tests)"


@dataclass(frozen=True)
class Entry:
    """One counted pytest report: a test's outcome in one phase (or a collection error)."""

    nodeid: str
    category: str  # one of CATEGORIES
    when: str = "call"  # setup, call, teardown or collect
    target: str | None = None  # the suite target, for trtcheck items
    tensorrt: bool = False  # marked `tensorrt`
    crash: bool = False  # an error whose backend process died or hung
    unexpected_pass: bool = False  # a strict expected failure that passed
    reason: str = ""  # why it was skipped or is expected to fail
    message: str = ""  # the failure's text
    report: str | None = None  # the item's JSON report, relative to the artifacts folder

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Entry:
        known = {name: data[name] for name in cls.__dataclass_fields__ if name in data}
        if known.get("category") not in CATEGORIES or not isinstance(known.get("nodeid"), str):
            raise ValueError(f"entry {data!r} has no nodeid or an unknown category")
        return cls(**known)


@dataclass
class RunSummary:
    """The counted reports of a run, and what is needed to find its other files again."""

    entries: list[Entry] = field(default_factory=list)
    deselected: int | None = 0  # None after a merge: each job deselects the others' items
    exit_status: int | None = None
    split: tuple[int, int] | None = None  # (group, splits) under pytest-split
    junitxml: str | None = None  # relative to the artifacts folder when inside it
    jobs: int = 1

    def counts(self) -> dict[str, int]:
        """The counts pytest makes, under its names, plus `crashes` and `unexpected_passes`."""
        by_category = Counter(entry.category for entry in self.entries)
        counts = {COUNT_NAMES[category]: by_category[category] for category in CATEGORIES}
        counts["crashes"] = sum(1 for entry in self.entries if entry.crash)
        counts["unexpected_passes"] = sum(1 for entry in self.entries if entry.unexpected_pass
                                          or entry.category == "xpassed")
        if self.deselected is not None:
            counts["deselected"] = self.deselected
        return counts

    @property
    def passed(self) -> bool:
        counts = self.counts()
        return not (counts["failed"] or counts["errors"])

    def per_target(self) -> dict[str, Counter[str]]:
        table: dict[str, Counter[str]] = {}
        for entry in self.entries:
            table.setdefault(entry.target or OTHER_TESTS, Counter())[entry.category] += 1
        return table

    def tensorrt_skipped(self) -> list[Entry]:
        return [entry for entry in self.entries if entry.tensorrt and entry.category == "skipped"]

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT, "format_version": FORMAT_VERSION, "counts": self.counts(),
            "tensorrt_not_checked": len(self.tensorrt_skipped()),
            "exit_status": self.exit_status, "jobs": self.jobs,
            "split": None if self.split is None else
            {"group": self.split[0], "splits": self.split[1]},
            "junitxml": self.junitxml, "deselected": self.deselected,
            "entries": [asdict(entry) for entry in self.entries],
        }

    @classmethod
    def from_dict(cls, data: Any) -> RunSummary:
        """Reads `to_dict`'s document; ValueError says what is wrong with it."""
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError(f"not a trtcheck run summary (no \"format\": \"{FORMAT}\")")
        if data.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"summary format version {data.get('format_version')!r}; this "
                             f"trtcheck reads version {FORMAT_VERSION}")
        split = data.get("split")
        return cls(entries=[Entry.from_dict(entry) for entry in data.get("entries", [])],
                   deselected=data.get("deselected"), exit_status=data.get("exit_status"),
                   split=(int(split["group"]), int(split["splits"])) if split else None,
                   junitxml=data.get("junitxml"), jobs=int(data.get("jobs", 1)))


def count_line(counts: dict[str, int]) -> str:
    """`1 failed (1 unexpected pass), 2 errors (1 crash), 3 passed, ...`, zeros included."""
    parts = []
    for category in CATEGORIES:
        name = COUNT_NAMES[category]
        part = f"{counts[name]} {name}"
        if name == "failed" and counts["unexpected_passes"] - counts["xpassed"]:
            extra = counts["unexpected_passes"] - counts["xpassed"]
            part += f" ({extra} unexpected pass{'es' if extra != 1 else ''})"
        if name == "errors" and counts["crashes"]:
            part += f" ({counts['crashes']} crash{'es' if counts['crashes'] != 1 else ''})"
        parts.append(part)
    if "deselected" in counts:
        parts.append(f"{counts['deselected']} deselected")
    return ", ".join(parts)


def tensorrt_warning(summary: RunSummary) -> str | None:
    """The sentence a reader must not miss when TensorRT items were skipped."""
    skipped = summary.tensorrt_skipped()
    if not skipped:
        return None
    reasons = Counter(entry.reason for entry in skipped)
    reason, _ = reasons.most_common(1)[0]
    noun = "item" if len(skipped) == 1 else "items"
    return (f"TensorRT was not checked: {len(skipped)} TensorRT {noun} skipped"
            + (f" ({reason})" if reason else ""))


def _reasons(entries: list[Entry]) -> list[tuple[str, int]]:
    return sorted(Counter(entry.reason or "(no reason given)" for entry in entries).items(),
                  key=lambda pair: (-pair[1], pair[0]))


def _problems(summary: RunSummary) -> list[Entry]:
    return [entry for entry in summary.entries if entry.category in ("failed", "error")]


def markdown(summary: RunSummary, title: str = "trtcheck") -> str:
    """A GitHub step summary: the warning, the counts, a table per target, then the details."""
    counts = summary.counts()
    lines = [f"## {title}", ""]
    warning = tensorrt_warning(summary)
    if warning:
        lines += [f"> [!WARNING]\n> **{warning}**", ""]
    verdict = "PASSED" if summary.passed else "FAILED"
    jobs = f" over {summary.jobs} jobs" if summary.jobs > 1 else ""
    lines += [f"**{verdict}**{jobs}: {count_line(counts)}", ""]
    per_target = summary.per_target()
    if per_target:
        lines += ["| target | " + " | ".join(COUNT_NAMES[c] for c in CATEGORIES) + " |",
                  "|---|" + "---|" * len(CATEGORIES)]
        for target in sorted(per_target):
            row = per_target[target]
            lines.append(f"| {target} | " + " | ".join(str(row[c]) for c in CATEGORIES) + " |")
    problems = _problems(summary)
    if problems:
        lines += ["", "### Failures and errors", ""]
        for entry in problems:
            label = "crash" if entry.crash else "unexpected pass" if entry.unexpected_pass \
                else entry.category if entry.when in ("call", "collect") else \
                f"{entry.category} in {entry.when}"
            lines += [f"<details><summary><code>{html.escape(entry.nodeid)}</code>: {label}"
                      "</summary>", "", "```text", entry.message.strip().replace("```", "'''"),
                      "```", "", "</details>", ""]
    else:
        lines += ["", "No failures."]
    for category, heading in (("xfailed", "Expected failures"), ("skipped", "Skipped")):
        entries = [entry for entry in summary.entries if entry.category == category]
        if entries:
            lines += ["", f"### {heading}", ""]
            lines += [f"- {count} × {reason}" for reason, count in _reasons(entries)]
    xpassed = [entry for entry in summary.entries if entry.category == "xpassed"]
    if xpassed:
        lines += ["", "### Unexpected passes", ""]
        lines += [f"- `{entry.nodeid}`: {entry.reason}" for entry in xpassed]
    return "\n".join(lines) + "\n"


def _e(text: Any) -> str:
    return html.escape(str(text))


def html_overview(summary: RunSummary) -> str:
    """The top of the HTML report: warning, counts, per target, and what has no section below."""
    counts = summary.counts()
    parts = []
    warning = tensorrt_warning(summary)
    if warning:
        parts.append(f'<div class="box warn"><b>{_e(warning)}</b></div>')
    verdict = '<span class="pass">PASSED</span>' if summary.passed else \
        '<span class="fail">FAILED</span>'
    jobs = f" over {summary.jobs} jobs" if summary.jobs > 1 else ""
    parts.append(f"<p><b>{verdict}</b>{_e(jobs)}: {_e(count_line(counts))}</p>")
    per_target = summary.per_target()
    if per_target:
        head = "".join(f"<th>{_e(COUNT_NAMES[c])}</th>" for c in CATEGORIES)
        rows = "".join(f'<tr><td class="l">{_e(t)}</td>' + "".join(
            f"<td>{per_target[t][c]}</td>" for c in CATEGORIES) + "</tr>"
            for t in sorted(per_target))
        parts.append(f'<table><tr><th class="l">target</th>{head}</tr>{rows}</table>')
    # Failures and errors without a comparison section (suite file errors, plain tests).
    bare = [entry for entry in _problems(summary) if entry.report is None]
    if bare:
        parts.append("<h3>Failures and errors</h3>" + "".join(
            f"<details><summary><code>{_e(entry.nodeid)}</code> "
            f"{'crash' if entry.crash else entry.category}</summary><pre>{_e(entry.message)}"
            "</pre></details>" for entry in bare))
    for category, heading in (("xfailed", "Expected failures"), ("skipped", "Skipped")):
        entries = [entry for entry in summary.entries if entry.category == category]
        if entries:
            items = "".join(f"<li>{count} &times; {_e(reason)}</li>"
                            for reason, count in _reasons(entries))
            parts.append(f"<h3>{heading}</h3><ul>{items}</ul>")
    return "".join(parts)


def write_html(summary: RunSummary, folder: Path, page: Path, title: str) -> Path:
    """The HTML report of `summary`, with a section per item whose JSON report is in `folder`."""
    from trtcheck.atomic import write_atomically
    from trtcheck.report.html_report import render

    items = []
    seen: set[str] = set()
    for entry in summary.entries:
        if entry.report is None or entry.report in seen:
            continue
        seen.add(entry.report)
        path = folder / entry.report
        try:
            document = json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # a lost item report: the item still counts in the overview
        outcome = "crash" if entry.crash else entry.category
        extra = {"golden": document.get("golden"), "notes": document.get("notes", []),
                 "pytest_command": f"pytest '{entry.nodeid}'", "outcome": outcome}
        items.append((entry.nodeid, document["comparison"], extra))
    text = render(items, title, overview=html_overview(summary))
    write_atomically(page, lambda partial: Path(partial).write_text(text))
    return page


def append_markdown(summary: RunSummary, path: Path, title: str = "trtcheck") -> None:
    """Appends: $GITHUB_STEP_SUMMARY may already hold other steps' summaries."""
    from trtcheck.atomic import write_atomically

    existing = path.read_text() if path.is_file() else ""
    text = existing + markdown(summary, title)
    write_atomically(path, lambda partial: Path(partial).write_text(text))
