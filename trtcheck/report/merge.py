"""`trtcheck report merge`: one set of reports for a run that was split over several CI jobs.

pytest-split shares a suite out over jobs; this writes one HTML report, one Markdown summary and
one JUnit file for all of them.

Each job's artifacts folder holds the `summary.json` the plugin wrote (pytest's counted reports,
the per-item JSON reports it points at, the job's pytest-split group) and, when the job ran
with `--junitxml` inside that folder, its JUnit file. The counts are summed from the entries,
so they are pytest's counts; a job missing from a split run is an error, not a smaller run.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

from trtcheck.errors import InputDataError
from trtcheck.report.run_summary import (
    REPORT_PAGE,
    SUMMARY_FILE,
    RunSummary,
    append_markdown,
    write_html,
)


@dataclass(frozen=True)
class Job:
    folder: Path
    summary: RunSummary

    @property
    def junit(self) -> Path | None:
        """The job's JUnit file; an absolute path from another machine is looked up here."""
        if not self.summary.junitxml:
            return None
        recorded = Path(self.summary.junitxml)
        for path in (self.folder / recorded, self.folder / recorded.name):
            if path.is_file():
                return path
        return None


def read_job(folder: Path) -> Job:
    path = folder / SUMMARY_FILE
    if not folder.is_dir():
        raise InputDataError(f"{folder}: not a folder; give the artifacts folders of the jobs "
                             "(their --trtcheck-artifacts)")
    try:
        data = json.loads(path.read_text())
        return Job(folder, RunSummary.from_dict(data))
    except FileNotFoundError:
        raise InputDataError(f"{path}: missing; is {folder} a --trtcheck-artifacts folder of a "
                             "pytest run that finished?") from None
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise InputDataError(f"{path}: unreadable run summary ({err}); take it from a job "
                             "of the same trtcheck version") from None


def _check_splits(jobs: list[Job]) -> None:
    splits = {job.summary.split for job in jobs}
    if splits == {None}:
        return
    if None in splits or len({split[1] for split in splits if split}) != 1:
        raise InputDataError("the folders come from different runs (with and without "
                             "--splits, or different --splits); merge the jobs of one run")
    total = next(split[1] for split in splits if split)
    groups = sorted(job.summary.split[0] for job in jobs if job.summary.split)
    missing = sorted(set(range(1, total + 1)) - set(groups))
    twice = sorted({g for g in groups if groups.count(g) > 1})
    if missing or twice:
        problem = (f"group(s) {', '.join(map(str, missing))} missing" if missing else
                   f"group(s) {', '.join(map(str, twice))} given twice")
        raise InputDataError(f"--splits {total}: {problem}; give each job's artifacts folder "
                             "once (a job that did not finish left no summary.json)")


def merge_jobs(jobs: list[Job]) -> RunSummary:
    """One summary for all jobs; its entries' report paths are the jobs' folders' + theirs."""
    _check_splits(jobs)
    merged = RunSummary(deselected=None, jobs=len(jobs))
    statuses = [job.summary.exit_status for job in jobs if job.summary.exit_status is not None]
    merged.exit_status = max(statuses) if statuses else None
    for job in jobs:
        for entry in job.summary.entries:
            report = None if entry.report is None else (job.folder / entry.report).as_posix()
            merged.entries.append(replace(entry, report=report))
    return merged


def merge_junit(paths: list[Path], output: Path) -> None:
    """Every job's test suites under one <testsuites>, with summed counts (junitparser)."""
    from junitparser import JUnitXml

    merged = JUnitXml()
    for path in paths:
        try:
            merged += JUnitXml.fromfile(str(path))
        except Exception as err:  # junitparser raises lxml/etree errors of several kinds
            raise InputDataError(f"{path}: not a JUnit XML file ({err})") from None
    merged.write(str(output))


def merge(folders: list[Path], output: Path) -> tuple[RunSummary, list[Path]]:
    """Writes summary.json, summary.md, report.html and junit.xml into `output`."""
    from trtcheck.atomic import write_atomically

    jobs = [read_job(folder) for folder in folders]
    if output.exists() and not output.is_dir():
        raise InputDataError(f"-o {output}: is a file; give a folder for the merged reports")
    for job in jobs:
        if output.resolve() == job.folder.resolve():
            raise InputDataError(f"-o {output}: is one of the jobs' folders; give another one")
    junits = [job.junit for job in jobs]
    if any(junits) and not all(junits):
        lacking = next(job.folder for job in jobs if job.junit is None)
        raise InputDataError(f"{lacking}: no JUnit file, while other jobs have one; run every "
                             "job with --junitxml inside its --trtcheck-artifacts folder")
    summary = merge_jobs(jobs)
    output.mkdir(parents=True, exist_ok=True)
    written = [output / SUMMARY_FILE, output / REPORT_PAGE, output / "summary.md"]
    text = json.dumps(summary.to_dict(), indent=2, allow_nan=False) + "\n"
    write_atomically(written[0], lambda partial: Path(partial).write_text(text))
    write_html(summary, Path(), written[1], f"trtcheck suites ({len(jobs)} jobs)")
    written[2].unlink(missing_ok=True)
    append_markdown(summary, written[2])
    if all(junits):
        junit = output / "junit.xml"
        merge_junit([path for path in junits if path is not None], junit)
        written.append(junit)
    return summary, written
