"""pytest plugin (entry point `pytest11`): `pytest suites/` runs every case of every suite file.

Each case x target is an item named `suites/NAME.suite.toml::CASE[TARGET]`. This module holds
the options and hooks only, each a few lines that delegate: the items are in
`trtcheck.pytest_plugin.items`, the session's state and its reports (terminal, JSON, HTML,
Markdown) in `trtcheck.pytest_plugin.session`, and the work is `trtcheck.core.check_case`.
It loads in every pytest run of the environment, so it imports neither ONNX nor Polygraphy.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from trtcheck.pytest_plugin import items as _items
from trtcheck.pytest_plugin.session import SUITE_SUFFIX, TrtcheckSession

if TYPE_CHECKING:
    from collections.abc import Generator

    from _pytest.reports import TestReport
    from _pytest.terminal import TerminalReporter

_MARKERS = (
    "trtcheck: a trtcheck suite item (case x target)",
    "tensorrt: needs TensorRT and an NVIDIA GPU (skipped without them unless "
    "--trtcheck-require-backend trt)",
    "fp32: suite item whose target runs in fp32",
    "fp16: suite item whose target runs in fp16",
    "bf16: suite item whose target runs in bf16",
    "int8: suite item whose target runs a Q/DQ model in int8",
    "fp8: suite item whose target runs a Q/DQ model in fp8 (e4m3)",
    "emulated: suite item whose target emulates reduced precision on ONNX Runtime",
)


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
                    help="folder for the run's summary.json and report.html, per-item JSON "
                         "reports, .obtained.npz files and converted models (default: the "
                         "trtcheck_artifacts_dir ini option, else <rootdir>/artifacts/trtcheck)")
    group.addoption("--trtcheck-golden-dir", metavar="DIR", default=None,
                    help="folder of golden outputs (default: the trtcheck_golden_dir ini "
                         "option, else <rootdir>/golden)")
    group.addoption("--trtcheck-bisect", action="store_true",
                    help="bisect failing items to their first divergent node; the report and "
                         "a repro folder (in the artifacts folder) say which and why")
    group.addoption("--trtcheck-summary", metavar="FILE.md", default=None,
                    help="append a Markdown summary, failures first; write it with '=' "
                         "(--trtcheck-summary=\"$GITHUB_STEP_SUMMARY\")")
    group.addoption("--trtcheck-timeout", metavar="SECONDS", default=None,
                    help="stop a backend run (engine build included) after this long, an error "
                         "of that item; a suite's `timeout` wins (default 1800)")
    group.addoption("--trtcheck-in-process", action="store_true",
                    help="run backends in pytest's own process, not a child process (for "
                         "debuggers; a backend crash then ends the whole run)")
    parser.addini("trtcheck_golden_dir", "trtcheck's golden folder, relative to the rootdir "
                  "(default: golden)", default="")
    parser.addini("trtcheck_artifacts_dir", "trtcheck's artifacts folder, relative to the "
                  "rootdir (default: artifacts/trtcheck)", default="")


def pytest_configure(config: pytest.Config) -> None:
    for marker in _MARKERS:
        config.addinivalue_line("markers", marker)
    state = TrtcheckSession.from_config(config)
    config.stash[_items.SESSION] = state
    # The session counts reports through its own hooks (pytest passes them no config).
    config.pluginmanager.register(state, "trtcheck-session")


def pytest_sessionstart(session: pytest.Session) -> None:
    if not hasattr(session.config, "workerinput"):
        session.config.stash[_items.SESSION].start()


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    if file_path.name.endswith(SUITE_SUFFIX):
        return _items.SuiteFile.from_parent(parent, path=file_path)
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    _items.select_targets(config, items)
    _items.gate_tensorrt_tests(config, items)


def pytest_runtest_setup(item: pytest.Item) -> None:
    _items.require_tensorrt(item)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item,
                              call: pytest.CallInfo[None]) -> Generator[None, TestReport,
                                                                        TestReport]:
    report = yield
    _items.plain_setup_error(item, call, report)
    return report


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    session.config.stash[_items.SESSION].finish(session.config, exitstatus)


def pytest_terminal_summary(terminalreporter: TerminalReporter, exitstatus: int,
                            config: pytest.Config) -> None:
    config.stash[_items.SESSION].terminal_summary(terminalreporter)
