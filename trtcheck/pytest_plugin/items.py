"""Suite files and their items: one item per case and target, `FILE.suite.toml::CASE[TARGET]`.

An item's check (model, backends, golden) runs in its setup, so anything that stops the check,
a model that cannot be loaded, a backend that fails, crashes or hangs, a bad case, is a pytest
*error*; the test itself then fails only for what it measured: a reference that drifted from
its golden, or a target whose outputs differ from the reference. An expected failure
(`[[case.expected_failure]]`) is an `xfail(raises=Mismatch, strict=True)`: it covers a numeric
mismatch of the declared targets (and outputs, if it names some), never an error.

Items fail with the comparison table as text (no traceback) and the commands that reproduce
them. Heavy modules (ONNX, Polygraphy) are imported when an item runs, not when pytest starts.
"""

from __future__ import annotations

import functools
import json
from io import StringIO
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from trtcheck.pytest_plugin.session import SuiteKeyError, TrtcheckSession

if TYPE_CHECKING:
    from collections.abc import Iterator

    from _pytest._code.code import ExceptionInfo, TerminalRepr
    from _pytest.reports import TestReport

    from trtcheck.core import CaseOutcome
    from trtcheck.debug.results import Localization
    from trtcheck.suite import Case, ExpectedFailure, Suite, TargetSpec

SESSION = pytest.StashKey[TrtcheckSession]()


@functools.lru_cache(maxsize=1)
def tensorrt_usable() -> bool:
    from trtcheck.backends import tensorrt_usable as usable

    return usable()


def install_hint() -> str:
    from trtcheck.backends import TRT_INSTALL_HINT

    return TRT_INSTALL_HINT


class Mismatch(Exception):
    """The target's outputs differ from the reference: the only thing an expected failure covers."""


class UndeclaredMismatch(Exception):
    """A mismatch in outputs that the item's expected failure does not name."""


class GoldenFailure(Exception):
    """The reference's outputs do not match the golden (or the golden is missing)."""


class CaseError(Exception):
    """The check could not be made (bad case, unreadable model, failed or crashed backend)."""


class BackendMissing(Exception):
    """A required backend that is not available: an error, never an expected failure."""


_REPORTED = (Mismatch, UndeclaredMismatch, GoldenFailure, CaseError, BackendMissing)


def _state(config: pytest.Config) -> TrtcheckSession:
    return config.stash[SESSION]


class SuiteFile(pytest.File):
    """A `*.suite.toml` file: one item per case and target."""

    def collect(self) -> Iterator[pytest.Item]:
        from trtcheck.suite import SuiteError, load_suite

        try:
            suite = load_suite(self.path)
            key = _state(self.config).suite_key(suite)
        except (SuiteError, SuiteKeyError) as err:
            yield SuiteErrorItem.from_parent(self, name="suite-file", message=str(err))
            return
        for case in suite.cases:
            for target_name in case.targets:
                yield CaseItem.from_parent(self, name=f"{case.name}[{target_name}]", suite=suite,
                                           key=key, case=case, target=suite.targets[target_name])


class SuiteErrorItem(pytest.Item):
    """Stands for a suite file that cannot be used, so that it shows as one error."""

    def __init__(self, *, message: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.message = message

    def setup(self) -> None:
        raise CaseError(self.message)

    def runtest(self) -> None:
        raise AssertionError("unreachable: setup raises")

    def repr_failure(self, excinfo: ExceptionInfo[BaseException],
                     style: Any = None) -> str | TerminalRepr:
        return str(excinfo.value)

    def reportinfo(self) -> tuple[Path, int, str]:
        return self.path, 0, f"{self.path.name}: suite file error"


class CaseItem(pytest.Item):
    """One case on one target."""

    def __init__(self, *, suite: Suite, key: str, case: Case, target: TargetSpec,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.suite = suite
        self.key = key
        self.case = case
        self.target = target
        self.outcome: CaseOutcome | None = None
        self.localization: Localization | None = None
        self.user_properties.append(("trtcheck_target", target.name))
        self.add_marker("trtcheck")
        self.add_marker(target.precision)
        if target.family == "trt":
            self.add_marker("tensorrt")
        elif target.precision != "fp32":
            self.add_marker("emulated")
        for marker in case.markers:
            self.add_marker(marker)
        expected = self.expected_failure
        if expected is not None:
            # strict: a case that starts passing must leave the broken list.
            self.add_marker(pytest.mark.xfail(reason=expected.reason, strict=True,
                                              raises=Mismatch))

    @property
    def state(self) -> TrtcheckSession:
        return _state(self.config)

    @property
    def expected_failure(self) -> ExpectedFailure | None:
        return None if self.case.error is not None else self.case.expected_failure_for(
            self.target)

    @property
    def report_path(self) -> Path:
        return self.state.work_folder(self.key, self.case.name) / f"{self.target.name}.json"

    def setup(self) -> None:
        if self.target.family == "trt" and not tensorrt_usable():
            if "trt" in self.state.require:
                raise BackendMissing(
                    f"{self.target.name}: TensorRT is required (--trtcheck-require-backend trt) "
                    f"but is not importable here; {install_hint()}")
            pytest.skip(f"{self.target.name} needs TensorRT and an NVIDIA GPU, not available "
                        f"here; {install_hint()}")
        import contextlib

        from trtcheck.backends import reusing_models
        from trtcheck.isolation import isolation

        # With --trtcheck-bisect the bisection reuses the check's loaded and emulated models;
        # they are let go when the item is done.
        with isolation(enabled=not self.state.in_process, timeout=self.state.timeout), (
                reusing_models() if self.state.bisect else contextlib.nullcontext()):
            self.outcome = self._check()
            if self.state.bisect:
                self.localization = self._bisect(self.outcome)
        self._write_report(self.outcome, self.localization)

    def _check(self) -> CaseOutcome:
        from trtcheck.core import ReferenceCache, check_case
        from trtcheck.errors import TrtcheckError

        state = self.state
        if state.reference_cache is None:
            state.reference_cache = ReferenceCache()
        update = f"pytest '{self.nodeid}' --trtcheck-update-golden" + (
            "-new-only" if not self._golden_exists() else "")
        try:
            return check_case(
                self.case, self.target, suite_name=self.key, golden_dir=state.golden_dir,
                golden_mode=state.golden_mode, update_command=update, artifacts=state.artifacts,
                reference_cache=state.reference_cache)
        except TrtcheckError as err:
            crash = _is_crash(err)
            self.user_properties.append(("trtcheck_outcome", "crash" if crash else "error"))
            message = f"{self.nodeid}: {err}\nreproduce: pytest '{self.nodeid}'"
            self._write_error_report(message, crash)
            raise CaseError(message) from err

    def runtest(self) -> None:
        outcome = self.outcome
        assert outcome is not None, "setup ran the check"
        if outcome.golden.status != "pass":
            # Not a Mismatch: an expected failure of the target must not hide a reference
            # that drifted from its golden, or a golden that is missing.
            raise GoldenFailure(self._failure_text(outcome))
        if outcome.comparison.verdict == "pass":
            return
        text = self._failure_text(outcome, self.localization)
        expected = self.expected_failure
        failing = sorted(d.name for d in outcome.comparison.outputs if not d.passed)
        if expected is not None and expected.outputs is not None:
            undeclared = [name for name in failing if name not in expected.outputs]
            if undeclared:
                raise UndeclaredMismatch(
                    f"{text}\nexpected failure '{expected.reason}' covers outputs "
                    f"{', '.join(sorted(expected.outputs))}; {', '.join(undeclared)} fail(s) too")
        raise Mismatch(text)

    def _bisect(self, outcome: CaseOutcome) -> Localization | None:
        from trtcheck.debug import localize_comparison
        from trtcheck.errors import TrtcheckError
        from trtcheck.run import quiet_polygraphy

        if outcome.comparison.verdict == "pass":
            return None
        repro = self.state.work_folder(self.key, self.case.name) / f"{self.target.name}-repro"
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

        return GoldenPaths.for_case(self.state.golden_dir, self.key, self.case.name).exists()

    def _write_document(self, document: dict[str, Any]) -> None:
        from trtcheck.atomic import write_atomically

        path = self.report_path
        text = json.dumps(document, indent=2, allow_nan=False) + "\n"
        write_atomically(path, lambda partial: Path(partial).write_text(text))
        # Travels with the test report (also across xdist workers) to the run's reports.
        self.user_properties.append(("trtcheck_report", str(path)))

    def _write_report(self, outcome: CaseOutcome, localization: Localization | None) -> None:
        from trtcheck.report.bisect_report import localization_to_dict
        from trtcheck.report.json_report import result_to_dict

        comparison = result_to_dict(outcome.comparison)
        if localization is not None:
            comparison["bisect"] = localization_to_dict(localization)
        document = {
            "item": self.nodeid,
            "passed": outcome.passed,
            "golden": {"status": outcome.golden.status, "message": outcome.golden.message},
            "notes": outcome.notes,
            "comparison": comparison,
        }
        self._write_document(document)

    def _write_error_report(self, message: str, crash: bool) -> None:
        """Replaces the last run's report of this item, which would otherwise be stale."""
        from trtcheck.report.json_report import error_to_dict

        model = self.case.model.location if self.case.model is not None else None
        self._write_document({"item": self.nodeid, "passed": False, "golden": None,
                              "notes": ["crash"] if crash else [],
                              "comparison": error_to_dict(message, model, {})})

    def _failure_text(self, outcome: CaseOutcome, localization: Localization | None = None) -> str:
        from rich.console import Console

        from trtcheck.report.bisect_report import BisectView
        from trtcheck.report.terminal import ComparisonView
        from trtcheck.report.widths import console_width

        buffer = StringIO()
        # markup=False: node ids like "case[target]" are not rich markup tags.
        console = Console(file=buffer, width=console_width(False), no_color=True,
                          highlight=False, markup=False, force_terminal=False)
        comparison = outcome.comparison.verdict.upper()
        console.print(f"{self.nodeid}: target vs reference {comparison}; reference vs golden "
                      f"{outcome.golden.status.upper()}", soft_wrap=True)
        # crop=False: the lines that name files and commands are printed whole.
        console.print(ComparisonView(outcome.comparison), crop=False)
        if localization is not None:
            console.print(BisectView(localization), crop=False)
        if outcome.golden.status != "pass":
            console.print(f"golden: {outcome.golden.message}", soft_wrap=True)
        for note in outcome.notes:
            console.print(note, soft_wrap=True)
        console.print(f"with TensorRT: {outcome.comparison.polygraphy_command}", soft_wrap=True)
        console.print(f"same comparison: {outcome.comparison.trtcheck_command}", soft_wrap=True)
        console.print(f"reproduce: pytest '{self.nodeid}'", soft_wrap=True)
        return buffer.getvalue().rstrip()

    def repr_failure(self, excinfo: ExceptionInfo[BaseException],
                     style: Any = None) -> str | TerminalRepr:
        if isinstance(excinfo.value, _REPORTED):
            return str(excinfo.value)
        return super().repr_failure(excinfo, style=style)

    def reportinfo(self) -> tuple[Path, int, str]:
        return self.path, max(self.case.line - 1, 0), f"{self.case.name}[{self.target.name}]"


def plain_setup_error(item: pytest.Item, call: pytest.CallInfo[None],
                      report: TestReport) -> None:
    """An item's own error in setup reads as its message, like a failure, not a traceback."""
    if call.when == "setup" and call.excinfo is not None and isinstance(
            item, (CaseItem, SuiteErrorItem)) and isinstance(call.excinfo.value, _REPORTED) \
            and report.failed:
        report.longrepr = str(call.excinfo.value)


def _is_crash(err: Exception) -> bool:
    """A backend process killed by a signal, or stopped after its timeout."""
    from trtcheck.isolation import BackendCrashError

    return isinstance(err, BackendCrashError)


def select_targets(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Keeps the items of the `--trtcheck-target` names (target or backend), deselects others."""
    state = _state(config)
    if not state.targets:
        return
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


def gate_tensorrt_tests(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Plain tests marked `tensorrt` skip without TensorRT (failing instead is done at setup)."""
    if tensorrt_usable() or "trt" in _state(config).require:
        return
    for item in items:
        if not isinstance(item, CaseItem) and "tensorrt" in item.keywords:
            item.add_marker(pytest.mark.skip(
                reason=f"needs TensorRT and an NVIDIA GPU, not available here; {install_hint()}"))


def require_tensorrt(item: pytest.Item) -> None:
    """A plain `tensorrt` test under `--trtcheck-require-backend trt` errors without TensorRT."""
    if isinstance(item, CaseItem) or "tensorrt" not in item.keywords or tensorrt_usable():
        return
    if "trt" in _state(item.config).require:
        raise BackendMissing("--trtcheck-require-backend trt: TensorRT is not importable on "
                             f"this machine; {install_hint()}")
