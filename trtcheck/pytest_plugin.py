"""pytest plugin (entry point `pytest11`): `pytest suites/` runs every case of every suite file.

Each case x target is an item named `suites/NAME.suite.toml::CASE[TARGET]`. Items fail with the
comparison table as text (no traceback) and the commands that reproduce them. The plugin holds
hooks and options only; the work is `trtcheck.core.check_case`.
"""

from __future__ import annotations

import functools
import json
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from io import StringIO
from pathlib import Path
from typing import Any

import pytest

# Kept here rather than imported: this module loads in every pytest run of the environment, and
# trtcheck.suite pulls in ONNX and Polygraphy.
SUITE_SUFFIX = ".suite.toml"
_TARGET_IN_ID = re.compile(r"\.suite\.toml::[^\[]+\[(?P<target>[^\]]+)\]$")


@functools.lru_cache(maxsize=1)
def _tensorrt_usable() -> bool:
    from trtcheck.backends import tensorrt_usable

    return tensorrt_usable()


def _install_hint() -> str:
    from trtcheck.backends import TRT_INSTALL_HINT

    return TRT_INSTALL_HINT


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("trtcheck", "trtcheck model suites")
    group.addoption("--trtcheck-target", action="append", default=[], metavar="NAME",
                    help="run only suite targets with this name or backend (repeatable)")
    group.addoption("--trtcheck-require-backend", action="append", default=[], choices=["trt"],
                    help="a missing backend fails its items instead of skipping them; a GPU "
                         "gate passes `trt` so that it cannot pass by skipping")
    group.addoption("--trtcheck-update-golden", action="store_true",
                    help="rewrite the goldens of the selected cases; their items still fail")
    group.addoption("--trtcheck-update-golden-new-only", action="store_true",
                    help="write goldens that do not exist yet; those items still fail")
    group.addoption("--trtcheck-artifacts", metavar="DIR", default=None,
                    help="folder for per-item JSON reports, .obtained.npz files and converted "
                         "models (default: <rootdir>/artifacts/trtcheck)")
    group.addoption("--trtcheck-golden-dir", metavar="DIR", default=None,
                    help="folder of golden outputs (default: <rootdir>/golden)")
    group.addoption("--trtcheck-bisect", action="store_true",
                    help="bisect failing items to their first divergent node; the report and "
                         "a repro folder (in the artifacts folder) say which and why")
    group.addoption("--trtcheck-summary", metavar="FILE.md", default=None,
                    help="write a Markdown summary, failures first (e.g. $GITHUB_STEP_SUMMARY)")


@dataclass
class TrtcheckSession:
    """State shared by the items of one pytest process."""

    golden_dir: Path
    artifacts: Path
    golden_mode: str
    require: frozenset[str]
    targets: tuple[str, ...]
    bisect: bool = False
    reference_cache: Any = None
    outcomes: dict[str, str] = field(default_factory=dict)


_SESSION = pytest.StashKey[TrtcheckSession]()


def pytest_configure(config: pytest.Config) -> None:
    from trtcheck import golden

    for marker in (
        "trtcheck: a trtcheck suite item (case x target)",
        "tensorrt: needs TensorRT and an NVIDIA GPU (skipped without them unless "
        "--trtcheck-require-backend trt)",
        "fp32: suite item whose target runs in fp32",
        "fp16: suite item whose target runs in fp16",
        "bf16: suite item whose target runs in bf16",
        "emulated: suite item whose target emulates reduced precision on ONNX Runtime",
    ):
        config.addinivalue_line("markers", marker)
    update = config.getoption("--trtcheck-update-golden")
    update_new = config.getoption("--trtcheck-update-golden-new-only")
    if update and update_new:
        raise pytest.UsageError("--trtcheck-update-golden and --trtcheck-update-golden-new-only "
                                "exclude each other; pick one")
    root = Path(config.rootpath)
    artifacts = config.getoption("--trtcheck-artifacts")
    golden_dir = config.getoption("--trtcheck-golden-dir")
    config.stash[_SESSION] = TrtcheckSession(
        golden_dir=Path(golden_dir) if golden_dir else root / "golden",
        artifacts=Path(artifacts) if artifacts else root / "artifacts" / "trtcheck",
        golden_mode=golden.UPDATE if update else golden.UPDATE_NEW if update_new else
        golden.CHECK,
        require=frozenset(config.getoption("--trtcheck-require-backend")),
        targets=tuple(config.getoption("--trtcheck-target")),
        bisect=config.getoption("--trtcheck-bisect"),
    )


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    if file_path.name.endswith(SUITE_SUFFIX):
        return SuiteFile.from_parent(parent, path=file_path)
    return None


class SuiteFile(pytest.File):
    """A `*.suite.toml` file: one item per case and target."""

    def collect(self):
        from trtcheck.suite import SuiteError, load_suite

        try:
            suite = load_suite(self.path)
        except SuiteError as err:
            yield SuiteErrorItem.from_parent(self, name="suite-file", message=str(err))
            return
        for case in suite.cases:
            for target_name in case.targets:
                target = suite.targets[target_name]
                item = CaseItem.from_parent(self, name=f"{case.name}[{target_name}]",
                                            suite=suite, case=case, target=target)
                item.add_marker("trtcheck")
                item.add_marker(target.precision)
                if target.family == "trt":
                    item.add_marker("tensorrt")
                elif target.precision != "fp32":
                    item.add_marker("emulated")
                for marker in case.markers:
                    item.add_marker(marker)
                if case.error is None:
                    expected = case.expected_failure_for(target)
                    if expected is not None:
                        # strict: a case that starts passing must leave the broken list.
                        item.add_marker(pytest.mark.xfail(reason=expected.reason, strict=True,
                                                          raises=CaseFailure))
                yield item


class CaseFailure(Exception):
    """An item whose comparison or golden check failed; carries the report text."""


class BackendMissing(Exception):
    """A required backend that is not available: an error, never an expected failure."""


class GoldenFailure(Exception):
    """An item whose reference outputs do not match its golden (or whose golden is missing)."""


class SuiteErrorItem(pytest.Item):
    """Stands for a suite file that cannot be loaded, so the error shows as one failed item."""

    def __init__(self, *, message: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.message = message

    def runtest(self) -> None:
        raise CaseFailure(self.message)

    def repr_failure(self, excinfo, style=None):
        return str(excinfo.value)

    def reportinfo(self):
        return self.path, 0, f"{self.path.name}: suite file error"


class CaseItem(pytest.Item):
    """One case on one target."""

    def __init__(self, *, suite: Any, case: Any, target: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.suite = suite
        self.case = case
        self.target = target

    @property
    def state(self) -> TrtcheckSession:
        return self.config.stash[_SESSION]

    def setup(self) -> None:
        if self.target.family == "trt" and not _tensorrt_usable():
            if "trt" in self.state.require:
                raise BackendMissing(
                    f"{self.target.name}: TensorRT is required (--trtcheck-require-backend trt) "
                    f"but is not importable here; {_install_hint()}")
            pytest.skip(f"{self.target.name} needs TensorRT and an NVIDIA GPU, not available "
                        f"here; {_install_hint()}")

    def runtest(self) -> None:
        from trtcheck.core import ReferenceCache, check_case
        from trtcheck.errors import TrtcheckError

        state = self.state
        if state.reference_cache is None:
            state.reference_cache = ReferenceCache()
        update = f"pytest '{self.nodeid}' --trtcheck-update-golden" + (
            "-new-only" if not self._golden_exists() else "")
        try:
            outcome = check_case(
                self.case, self.target, suite_name=self.suite.name, golden_dir=state.golden_dir,
                golden_mode=state.golden_mode, update_command=update, artifacts=state.artifacts,
                reference_cache=state.reference_cache)
        except TrtcheckError as err:
            raise CaseFailure(f"{self.nodeid}: {err}\nreproduce: pytest '{self.nodeid}'") from err
        localization = self._bisect(outcome) if state.bisect else None
        self._write_report(outcome, localization)
        if outcome.golden.status != "pass":
            # Not a CaseFailure: an expected failure of the target must not hide a reference
            # that drifted from its golden, or a golden that is missing.
            raise GoldenFailure(self._failure_text(outcome))
        if not outcome.passed:
            raise CaseFailure(self._failure_text(outcome, localization))

    def _bisect(self, outcome: Any) -> Any:
        from trtcheck.debug import localize_comparison
        from trtcheck.errors import TrtcheckError
        from trtcheck.run import quiet_polygraphy

        if outcome.comparison.verdict == "pass":
            return None
        repro = self.state.artifacts / self.suite.name / self.case.name / (
            f"{self.target.name}-repro")
        repro.mkdir(parents=True, exist_ok=True)
        try:
            with quiet_polygraphy():
                return localize_comparison(outcome.comparison, repro_dir=repro)
        except TrtcheckError as err:
            outcome.notes.append(f"bisect: {err}")
            return None
        except Exception as err:  # the comparison's failure stands; bisect's bug is a note
            outcome.notes.append(f"bisect: internal error ({type(err).__name__}: {err})")
            return None

    def _golden_exists(self) -> bool:
        from trtcheck.golden import GoldenPaths

        return GoldenPaths.for_case(self.state.golden_dir, self.suite.name,
                                    self.case.name).exists()

    def _write_report(self, outcome: Any, localization: Any) -> None:
        from trtcheck.atomic import write_atomically
        from trtcheck.report.bisect_report import localization_to_dict
        from trtcheck.report.json_report import result_to_dict

        document = {
            "item": self.nodeid,
            "passed": outcome.passed,
            "golden": {"status": outcome.golden.status, "message": outcome.golden.message},
            "notes": outcome.notes,
            "comparison": result_to_dict(outcome.comparison),
        }
        if localization is not None:
            document["comparison"]["bisect"] = localization_to_dict(localization)
        path = self.state.artifacts / self.suite.name / self.case.name / f"{self.target.name}.json"
        text = json.dumps(document, indent=2, allow_nan=False) + "\n"
        write_atomically(path, lambda partial: Path(partial).write_text(text))
        # Travels with the test report (also across xdist workers) to the HTML report.
        self.user_properties.append(("trtcheck_report", str(path)))

    def _failure_text(self, outcome: Any, localization: Any = None) -> str:
        from rich.console import Console

        from trtcheck.report.bisect_report import BisectView
        from trtcheck.report.terminal import ComparisonView

        buffer = StringIO()
        # markup=False: node ids like "case[target]" are not rich markup tags.
        console = Console(file=buffer, width=160, no_color=True, highlight=False, markup=False,
                          force_terminal=False)
        comparison = outcome.comparison.verdict.upper()
        console.print(f"{self.nodeid}: target vs reference {comparison}; reference vs golden "
                      f"{outcome.golden.status.upper()}", soft_wrap=True)
        console.print(ComparisonView(outcome.comparison))
        if localization is not None:
            console.print(BisectView(localization))
        if outcome.golden.status != "pass":
            console.print(f"golden: {outcome.golden.message}", soft_wrap=True)
        for note in outcome.notes:
            console.print(note, soft_wrap=True)
        console.print(f"with TensorRT: {outcome.comparison.polygraphy_command}", soft_wrap=True)
        console.print(f"same comparison: {outcome.comparison.trtcheck_command}", soft_wrap=True)
        console.print(f"reproduce: pytest '{self.nodeid}'", soft_wrap=True)
        return buffer.getvalue().rstrip()

    def repr_failure(self, excinfo, style=None):
        if isinstance(excinfo.value, (CaseFailure, GoldenFailure, BackendMissing)):
            return str(excinfo.value)
        return super().repr_failure(excinfo, style=style)

    def reportinfo(self):
        return self.path, max(self.case.line - 1, 0), f"{self.case.name}[{self.target.name}]"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    state = config.stash[_SESSION]
    if state.targets:
        known = {name for item in items if isinstance(item, CaseItem)
                 for name in (item.target.name, item.target.backend)}
        unknown = [name for name in state.targets if name not in known]
        if unknown and known:
            raise pytest.UsageError(
                f"--trtcheck-target {', '.join(unknown)} matches no target of the collected "
                f"suites; they have: {', '.join(sorted(known))}")
        kept: list[pytest.Item] = []
        dropped: list[pytest.Item] = []
        for item in items:
            selected = not isinstance(item, CaseItem) or item.target.name in state.targets or \
                item.target.backend in state.targets
            (kept if selected else dropped).append(item)
        if dropped:
            config.hook.pytest_deselected(items=dropped)
            items[:] = kept
    _gate_tensorrt_tests(config, items)


def _gate_tensorrt_tests(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Plain tests marked `tensorrt` skip without TensorRT (failing instead is done at setup)."""
    if _tensorrt_usable() or "trt" in config.stash[_SESSION].require:
        return
    for item in items:
        if not isinstance(item, CaseItem) and "tensorrt" in item.keywords:
            item.add_marker(pytest.mark.skip(
                reason=f"needs TensorRT and an NVIDIA GPU, not available here; {_install_hint()}"))


def pytest_runtest_setup(item: pytest.Item) -> None:
    if isinstance(item, CaseItem) or "tensorrt" not in item.keywords or _tensorrt_usable():
        return
    if "trt" in item.config.stash[_SESSION].require:
        raise BackendMissing("--trtcheck-require-backend trt: TensorRT is not importable on "
                             f"this machine; {_install_hint()}")


_CATEGORIES = ("failed", "error", "xpassed", "passed", "xfailed", "skipped")


def _outcomes(terminalreporter: Any) -> dict[str, tuple[str, Any]]:
    """Suite nodeid -> (category, report), the worst category when an item has several."""
    found: dict[str, tuple[str, Any]] = {}
    for category in reversed(_CATEGORIES):
        for report in terminalreporter.stats.get(category, []):
            nodeid = getattr(report, "nodeid", "")
            if _TARGET_IN_ID.search(nodeid):
                found[nodeid] = (category, report)
    return found


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    outcomes = _outcomes(terminalreporter)
    if not outcomes:
        return
    per_target: dict[str, Counter[str]] = defaultdict(Counter)
    for nodeid, (category, _) in outcomes.items():
        match = _TARGET_IN_ID.search(nodeid)
        assert match is not None
        per_target[match["target"]][category] += 1
    terminalreporter.section("trtcheck: items per target")
    width = max(len(name) for name in per_target)
    for target in sorted(per_target):
        counts = per_target[target]
        parts = ", ".join(f"{counts[c]} {c}" for c in _CATEGORIES if counts[c])
        terminalreporter.write_line(f"{target:<{width}}  {parts}")
    if hasattr(config, "workerinput"):
        return
    summary = config.getoption("--trtcheck-summary")
    if summary:
        _write_markdown(Path(summary), outcomes, per_target)
    page = _write_html(config.stash[_SESSION].artifacts, outcomes)
    if page is not None:
        terminalreporter.write_line(f"trtcheck HTML report: {page}")


def _write_html(artifacts: Path, outcomes: dict[str, tuple[str, Any]]) -> Path | None:
    from trtcheck.atomic import write_atomically
    from trtcheck.report.html_report import render

    items = []
    for nodeid, (_category, report) in sorted(outcomes.items()):
        path = dict(getattr(report, "user_properties", [])).get("trtcheck_report")
        if not path or not Path(path).is_file():
            continue
        document = json.loads(Path(path).read_text())
        extra = {"golden": document["golden"], "notes": document["notes"],
                 "pytest_command": f"pytest '{nodeid}'"}
        items.append((nodeid, document["comparison"], extra))
    if not items:
        return None
    page = artifacts / "report.html"
    text = render(items, "trtcheck suites")
    write_atomically(page, lambda partial: Path(partial).write_text(text))
    return page


def _write_markdown(path: Path, outcomes: dict[str, tuple[str, Any]],
                    per_target: dict[str, Counter[str]]) -> None:
    from trtcheck.atomic import write_atomically

    lines = ["## trtcheck", "", "| target | " + " | ".join(_CATEGORIES) + " |",
             "|---|" + "---|" * len(_CATEGORIES)]
    for target in sorted(per_target):
        lines.append(f"| {target} | " + " | ".join(str(per_target[target][c]) for c in
                                                  _CATEGORIES) + " |")
    failures = [(nodeid, report) for nodeid, (category, report) in sorted(outcomes.items())
                if category in ("failed", "error", "xpassed")]
    if failures:
        lines += ["", "### Failures", ""]
        for nodeid, report in failures:
            text = getattr(report, "longreprtext", "") or "unexpectedly passed (xpass strict)"
            lines += [f"<details><summary><code>{nodeid}</code></summary>", "", "```",
                      text.strip(), "```", "", "</details>", ""]
    else:
        lines += ["", "No failures."]
    text = "\n".join(lines) + "\n"
    existing = path.read_text() if path.is_file() else ""
    # $GITHUB_STEP_SUMMARY may already hold other steps' summaries: append.
    write_atomically(path, lambda partial: Path(partial).write_text(existing + text))
