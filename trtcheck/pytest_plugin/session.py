"""The plugin's state for one pytest process, and the reports it writes when the session ends.

Where files go (all resolved once, at configure time, so the working directory never matters):

- goldens: `--trtcheck-golden-dir` (relative to the directory pytest was started from), else the
  `trtcheck_golden_dir` ini option (relative to the rootdir), else `<rootdir>/golden`;
- artifacts: `--trtcheck-artifacts`, else `trtcheck_artifacts_dir`, else
  `<rootdir>/artifacts/trtcheck`;
- under both, a suite's files sit in a folder named by its key: the suite file's path relative
  to the rootdir without `.suite.toml` (`suites/models`), or its `[suite] name`.

The reports (`summary.json`, `report.html`, the `--trtcheck-summary` Markdown) are written at the
end of every session that ran trtcheck items or was given trtcheck's output options, whatever
the outcome (all errors, nothing collected, interrupted), from the reports pytest counted.
"""

from __future__ import annotations

import inspect
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from trtcheck.report.run_summary import (
    MESSAGE_LIMIT,
    REPORT_PAGE,
    SUMMARY_FILE,
    Entry,
    RunSummary,
    append_markdown,
    write_html,
)

if TYPE_CHECKING:
    from _pytest.reports import CollectReport, TestReport
    from _pytest.terminal import TerminalReporter

    from trtcheck.run import ReferenceCache
    from trtcheck.suite import Suite

SUITE_SUFFIX = ".suite.toml"
# Options whose value pytest reads as a path when it chooses the rootdir, if written with a space.
_VALUE_OPTIONS = ("--trtcheck-summary", "--trtcheck-artifacts", "--trtcheck-golden-dir",
                  "--trtcheck-target", "--trtcheck-require-backend")


def _timeout(text: str | None) -> float | None:
    from trtcheck.errors import UsageError
    from trtcheck.tolerance import check_tolerance_value

    if text is None:
        return None
    try:
        return check_tolerance_value(f"--trtcheck-timeout={text}", float(text), 0.0,
                                     above_low=True)
    except ValueError:
        raise pytest.UsageError(f"--trtcheck-timeout={text}: not a number of seconds") from None
    except UsageError as err:
        raise pytest.UsageError(str(err)) from None


class SuiteKeyError(Exception):
    """A suite file whose goldens would collide with another's or land outside the folder."""


@dataclass(eq=False)  # hashed by identity: pytest's plugin manager keeps it in sets
class TrtcheckSession:
    """State shared by the items of one pytest process; registered as a plugin to count."""

    rootdir: Path
    golden_dir: Path
    artifacts: Path
    golden_mode: str
    require: frozenset[str] = frozenset()
    targets: tuple[str, ...] = ()
    bisect: bool = False
    summary_path: Path | None = None
    # Backend runs: in a child process (unless in_process) stopped after `timeout` seconds.
    timeout: float | None = None
    in_process: bool = False
    # Reports are written even without suite items (explicit output options or ini settings).
    always_report: bool = False
    reference_cache: ReferenceCache | None = None
    summary: RunSummary = field(default_factory=RunSummary)
    suite_keys: dict[str, Path] = field(default_factory=dict)
    saw_suites: bool = False
    written: list[Path] = field(default_factory=list)
    config: pytest.Config | None = field(default=None, repr=False)

    @classmethod
    def from_config(cls, config: pytest.Config) -> TrtcheckSession:
        from trtcheck import golden

        _check_rootdir(config)
        update = config.getoption("--trtcheck-update-golden")
        update_new = config.getoption("--trtcheck-update-golden-new-only")
        if update and update_new:
            raise pytest.UsageError("--trtcheck-update-golden and "
                                    "--trtcheck-update-golden-new-only exclude each other; "
                                    "pick one")
        root = Path(config.rootpath)
        invoked = Path(config.invocation_params.dir)
        summary = config.getoption("--trtcheck-summary")
        summary_path = invoked / summary if summary else None
        if summary_path is not None and summary_path.is_dir():
            raise pytest.UsageError(f"--trtcheck-summary={summary} is a folder; give the "
                                    "Markdown file to write (or append to)")
        explicit = any(config.getoption(o) for o in ("--trtcheck-artifacts",
                                                      "--trtcheck-summary")) or any(
            config.getini(name) for name in ("trtcheck_artifacts_dir", "trtcheck_golden_dir"))
        return cls(
            rootdir=root,
            golden_dir=_folder(config, "--trtcheck-golden-dir", "trtcheck_golden_dir", "golden"),
            artifacts=_folder(config, "--trtcheck-artifacts", "trtcheck_artifacts_dir",
                              "artifacts/trtcheck"),
            golden_mode=golden.UPDATE if update else golden.UPDATE_NEW if update_new else
            golden.CHECK,
            require=frozenset(config.getoption("--trtcheck-require-backend")),
            targets=tuple(config.getoption("--trtcheck-target")),
            bisect=config.getoption("--trtcheck-bisect"),
            timeout=_timeout(config.getoption("--trtcheck-timeout")),
            in_process=config.getoption("--trtcheck-in-process"),
            summary_path=summary_path,
            always_report=explicit,
            summary=RunSummary(split=_split(config), junitxml=None),
            config=config,
        )

    # --- suites ------------------------------------------------------------------------------

    def suite_key(self, suite: Suite) -> str:
        """The folder name of `suite`'s goldens and artifacts; unique among collected suites."""
        from trtcheck.golden import check_suite_key

        path = Path(suite.path).resolve()
        if suite.named:
            key, how = suite.name, f"[suite] name = \"{suite.name}\""
        else:
            try:
                relative = path.relative_to(self.rootdir.resolve())
            except ValueError:
                raise SuiteKeyError(
                    f"{suite.path}: the suite file is outside pytest's rootdir {self.rootdir}, "
                    "so its goldens have no place; give it a [suite] name, or run pytest from "
                    "a folder that holds it") from None
            key = relative.as_posix()[: -len(SUITE_SUFFIX)] if relative.name.endswith(
                SUITE_SUFFIX) else relative.with_suffix("").as_posix()
            how = "its path"
        try:
            check_suite_key(key)
        except ValueError as err:
            raise SuiteKeyError(f"{suite.path}: {err}; give it a plain [suite] name") from None
        other = self.suite_keys.setdefault(key, path)
        if other != path:
            raise SuiteKeyError(
                f"{suite.path}: its goldens would be {self.golden_dir / key}, which {other} "
                f"already uses (key '{key}', from {how}); give one of them another "
                "[suite] name")
        return key

    def work_folder(self, key: str, case: str) -> Path:
        return self.artifacts / key / case

    # --- counting: hooks of this object, registered as a plugin --------------------------------

    def pytest_runtest_logreport(self, report: TestReport) -> None:
        """Files a test report under the category pytest gives it (nothing for a passed setup)."""
        config = self.config
        assert config is not None
        category = config.hook.pytest_report_teststatus(report=report, config=config)[0]
        if not category or not getattr(report, "count_towards_summary", True):
            return
        properties = dict(report.user_properties)
        reason = ""
        if category == "xfailed" or category == "xpassed":
            reason = str(getattr(report, "wasxfail", ""))
        elif category == "skipped" and isinstance(report.longrepr, (tuple, list)):
            reason = str(report.longrepr[2]).removeprefix("Skipped: ")
        message = "" if category in ("passed", "skipped", "xfailed") else report.longreprtext
        # pytest's own text for a strict expected failure that passed (longreprtext would
        # start with the xdist worker's name).
        unexpected = category == "failed" and str(report.longrepr).startswith("[XPASS(strict)]")
        target = properties.get("trtcheck_target")
        self.saw_suites = self.saw_suites or target is not None
        self.summary.entries.append(Entry(
            nodeid=report.nodeid, category=category, when=report.when or "call",
            target=str(target) if target is not None else None,
            tensorrt="tensorrt" in report.keywords,
            crash=category == "error" and properties.get("trtcheck_outcome") == "crash",
            unexpected_pass=unexpected, reason=reason, message=message[:MESSAGE_LIMIT],
            report=self._relative(properties.get("trtcheck_report"))))

    def pytest_collectreport(self, report: CollectReport) -> None:
        """A collection error or skip counts as pytest counts it (an error, a skip)."""
        if report.failed or report.skipped:
            category = "error" if report.failed else "skipped"
            reason = str(report.longrepr[2]).removeprefix("Skipped: ") if isinstance(
                report.longrepr, (tuple, list)) else ""
            self.summary.entries.append(Entry(
                nodeid=report.nodeid, category=category, when="collect", reason=reason,
                message=report.longreprtext[:MESSAGE_LIMIT] if report.failed else ""))
        self.saw_suites = self.saw_suites or report.nodeid.endswith(SUITE_SUFFIX)

    def pytest_deselected(self, items: list[pytest.Item]) -> None:
        if self.summary.deselected is not None:
            self.summary.deselected += len(items)

    def _relative(self, path: object) -> str | None:
        if not path:
            return None
        try:
            return Path(str(path)).resolve().relative_to(self.artifacts.resolve()).as_posix()
        except ValueError:
            return str(path)

    # --- reports -----------------------------------------------------------------------------

    def start(self) -> None:
        """Removes the last run's reports first, so that a run killed midway leaves none."""
        if self.always_report:
            for name in (SUMMARY_FILE, REPORT_PAGE):
                (self.artifacts / name).unlink(missing_ok=True)

    def finish(self, config: pytest.Config, exit_status: int) -> None:
        """Writes summary.json, report.html and the Markdown summary (controller only)."""
        if hasattr(config, "workerinput") or config.option.collectonly:
            return
        if not (self.saw_suites or self.always_report):
            return
        from trtcheck.atomic import write_atomically

        self.summary.exit_status = int(exit_status)
        xmlpath = getattr(config.option, "xmlpath", None)
        if xmlpath:
            self.summary.junitxml = self._relative(Path(config.invocation_params.dir, xmlpath))
        text = json.dumps(self.summary.to_dict(), indent=2, allow_nan=False) + "\n"
        summary_json = self.artifacts / SUMMARY_FILE
        write_atomically(summary_json, lambda partial: Path(partial).write_text(text))
        page = write_html(self.summary, self.artifacts, self.artifacts / REPORT_PAGE,
                          "trtcheck suites")
        self.written = [summary_json, page]
        if self.summary_path is not None:
            append_markdown(self.summary, self.summary_path)
            self.written.append(self.summary_path)

    def terminal_summary(self, reporter: TerminalReporter) -> None:
        from trtcheck.report.run_summary import CATEGORIES, OTHER_TESTS, tensorrt_warning

        per_target = {target: counts for target, counts in self.summary.per_target().items()
                      if target != OTHER_TESTS}
        if per_target:
            reporter.section("trtcheck: items per target")
            width = max(len(name) for name in per_target)
            for target in sorted(per_target):
                counts = per_target[target]
                parts = ", ".join(f"{counts[c]} {c}" for c in CATEGORIES if counts[c])
                reporter.write_line(f"{target:<{width}}  {parts}")
        warning = tensorrt_warning(self.summary)
        if warning:
            reporter.write_line(f"trtcheck: {warning}", yellow=True, bold=True)
        for path in self.written:
            if path.name == REPORT_PAGE:
                reporter.write_line(f"trtcheck HTML report: {path}")
            elif path.name == SUMMARY_FILE:
                reporter.write_line(f"trtcheck summary: {path}")


def _folder(config: pytest.Config, option: str, ini: str, default: str) -> Path:
    """An option's folder (relative to the invocation dir), else the ini's (to the rootdir)."""
    value = config.getoption(option)
    if value:
        path, what = Path(config.invocation_params.dir) / value, f"{option}={value}"
    else:
        setting = config.getini(ini)
        path = Path(config.rootpath) / (setting or default)
        what = f"{ini} = {setting}" if setting else f"the default {path}"
    if path.exists() and not path.is_dir():
        raise pytest.UsageError(f"{what}: {path} is a file, not a folder; point it at a folder")
    return path.resolve()


def _split(config: pytest.Config) -> tuple[int, int] | None:
    """(group, splits) when pytest-split shares this suite out over several jobs."""
    splits, group = config.getoption("splits", None), config.getoption("group", None)
    return (int(group), int(splits)) if splits and group else None


def _check_rootdir(config: pytest.Config) -> None:
    """Refuses a rootdir that a trtcheck option's value moved.

    pytest chooses its rootdir (and finds its ini file) before it loads plugins, so in
    `--trtcheck-summary FILE` it does not yet know that FILE is a value: an existing FILE is
    taken as a test path, and the rootdir becomes a folder above both (GitHub's
    $GITHUB_STEP_SUMMARY moves it out of the repository). The `=` form is read as one argument.
    Goldens would then be looked for in the wrong place, so this stops with the fix instead.
    """
    args = list(config.invocation_params.args)
    spaced = [(flag, value) for flag, value in zip(args, args[1:], strict=False)
              if flag in _VALUE_OPTIONS and (Path(config.invocation_params.dir) / value).exists()]
    if not spaced:
        return
    expected = _rootdir_without(config)
    if expected is None or expected == Path(config.rootpath):
        return
    flag, value = spaced[0]
    raise pytest.UsageError(
        f"{flag} {value}: pytest read {value} as a test path when it chose its rootdir "
        f"({config.rootpath} instead of {expected}), since it reads its own options before "
        f"trtcheck's; write {flag}={value}")


def _rootdir_without(config: pytest.Config) -> Path | None:
    """The rootdir pytest chooses for the same arguments read with trtcheck's options known."""
    try:
        from _pytest.config.findpaths import determine_setup

        wanted = {"inifile": config.option.inifilename,
                  "override_ini": config.option.override_ini,
                  "args": [str(a) for a in config.option.file_or_dir],
                  "rootdir_cmd_arg": config.option.rootdir or None,
                  "invocation_dir": Path(config.invocation_params.dir)}
        parameters = inspect.signature(determine_setup).parameters
        return Path(determine_setup(**{k: v for k, v in wanted.items() if k in parameters})[0])
    except Exception:  # pytest's internals moved: keep the run rather than guess
        return None
