"""Every trtcheck command on every real model of a manifest: verdicts, culprits, time, memory.

What it measures: for each model of the given manifests (zoo/real/manifest.json, the tiny CI
zoo, or the full corpus built by bench/corpus/build.py), it runs five whole CLI commands, one
after the other, each as a subprocess from a temporary working directory (nothing is written
in the repository), with the manifest's input shapes and value ranges:

1. `trtcheck compare MODEL --target onnxrt-fp16` (ONNX Runtime fp32 reference, fp16 emulated
   target, default tolerances);
2. `trtcheck bisect MODEL --target onnxrt-fp16 --repro DIR` (default mode and the precision
   fix search): its wall time and peak memory are the ones in the table;
3. `trtcheck audit MODEL --precision fp16`;
4. `trtcheck lint MODEL`;
5. `trtcheck fix MODEL -o FIXED.onnx`.

Per command it records the exit code, the wall time (process start to exit, interpreter start-up
and imports included) and the peak memory of the command and the backend processes it forks
(the larger of `ru_maxrss` from `os.wait4` and the largest sum of PSS over its process group,
sampled every 20 ms), and reads the
command's `--json` report. A command that exceeds `--timeout` seconds is killed (its process
group) and shown as `timeout`.

Then it prints one table (columns: model, nodes, compare verdict, culprit, bisect mode, target
runs, bisect seconds, bisect peak MB, whether the bisect's fp32 precision fix was verified,
audit findings, lint errors/warnings, fix exit) and a summary:

- compare: PASS / FAIL / anything else;
- bisect: culprit found; statements consistent with compare (compare PASS -> bisect exit 0,
  nothing to bisect); crashes: exit 3, a traceback in stderr, a signal, a timeout, or an exit
  inconsistent with compare's verdict (exit 0 or 2 after compare FAIL, exit 1 after PASS);
- precision fixes verified / attempted (the `precision_fix` of the bisect report);
- audit: overflows and attention-mask fills (and underflows), lint errors, fix exits;
- every command that crashed (exit code outside 0/1 (and 0 after a FAIL for bisect), traceback,
  signal or timeout), with its first stderr line and its error line.

Exit code: 0 when no command crashed or timed out, 1 otherwise.

Run it from the repository root, in the project's venv:

    .venv/bin/python bench/real_models.py                       # the corpus, else zoo/real
    .venv/bin/python bench/real_models.py --manifest zoo/real/manifest.json --json zoo.json
    .venv/bin/python bench/real_models.py --only gpt2_classic bert_base_dynamo --timeout 1800
    .venv/bin/python bench/real_models.py --plain > table.md     # markdown table, no rich

The corpus manifest is $TRTCHECK_BENCH_CACHE/manifest.json (default
.cache/trtcheck-bench/corpus/manifest.json); while it is being built it may be missing, partial
(models listed whose file is not there yet: shown as `missing`, not run) or half-written
(unreadable JSON: the bench falls back to zoo/real with a warning). The RapidOCR and silero-vad
models of suites/pypi-models.suite.toml are expected in the corpus manifest; the bench says so
when some are not. Commands run one at a time (the numbers are meant for a 2-core machine);
the --json report is rewritten after every model, so a long run can be watched.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]
ZOO_MANIFEST = REPO / "zoo" / "real" / "manifest.json"
CORPUS_DIR = Path(os.environ.get("TRTCHECK_BENCH_CACHE",
                                 REPO / ".cache" / "trtcheck-bench" / "corpus"))
CORPUS_MANIFEST = CORPUS_DIR / "manifest.json"
PYPI_SUITE = REPO / "suites" / "pypi-models.suite.toml"
TRTCHECK = [sys.executable, "-m", "trtcheck"]
TARGET = "onnxrt-fp16"
TRACEBACK = "Traceback (most recent call last)"
STDERR_KEEP = 4000  # characters of stderr kept in the JSON report (head and tail)


# ---------------------------------------------------------------------------------------------
# Running one command, measured


@dataclass
class Run:
    """One finished (or killed) child process."""

    command: str  # compare, bisect, audit, lint, fix
    argv: list[str]
    exit_code: int | None  # None when killed on timeout; negative: killed by that signal
    seconds: float
    peak_rss_mb: float
    timed_out: bool = False
    traceback: bool = False
    stderr_first: str = ""  # first non-empty stderr line
    error_line: str = ""  # the JSON report's error, else the last non-empty stderr line
    stderr: str = ""
    report: dict[str, Any] | None = None  # the command's --json report (trimmed)

    @property
    def exit_text(self) -> str:
        if self.timed_out:
            return "timeout"
        if self.exit_code is not None and self.exit_code < 0:
            return f"signal {-self.exit_code}"
        if self.traceback:
            return f"crash (exit {self.exit_code})"
        return f"exit {self.exit_code}"


def _group_pss_kb(group: int) -> int:
    """Proportional set size, summed over the processes of a process group (Linux /proc).

    trtcheck runs backends in forked children that share pages with their parent: summing RSS
    would count those pages twice, and ru_maxrss is the largest single process, not the sum.
    """
    total = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
            # Fields after the command (which may hold spaces): state ppid pgrp ...
            if int(stat.rsplit(")", 1)[1].split()[2]) != group:
                continue
            for line in Path(entry.path, "smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
                    break
        except (OSError, ValueError, IndexError):
            continue
    return total


def run_measured(command: str, argv: list[str], cwd: Path, timeout: float,
                 json_path: Path | None = None) -> Run:
    """Runs argv in cwd; wall time and peak memory of the child and the processes it forks.

    Peak memory is the larger of the child's ru_maxrss (os.wait4) and the largest sum of PSS
    over its process group, sampled every 20 ms while it runs.
    """
    stdout_path, stderr_path = cwd / f"{command}.stdout", cwd / f"{command}.stderr"
    with open(stdout_path, "wb") as out, open(stderr_path, "wb") as err:
        started = time.perf_counter()
        proc = subprocess.Popen(argv, cwd=cwd, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                start_new_session=True)
        box: list[tuple[int, int, Any]] = []
        waiter = threading.Thread(target=lambda: box.append(os.wait4(proc.pid, 0)), daemon=True)
        waiter.start()
        peak_group_kb = 0
        try:
            deadline = time.monotonic() + timeout
            while waiter.is_alive() and time.monotonic() < deadline:
                peak_group_kb = max(peak_group_kb, _group_pss_kb(proc.pid))
                waiter.join(0.02)
        except BaseException:  # Ctrl-C, or SIGTERM (see main): take the child down too
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            raise
        timed_out = waiter.is_alive()
        if timed_out:
            # The child leads its own process group (start_new_session) and is not reaped yet,
            # so the group id is still ours: kill it and whatever it started.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            waiter.join()
        seconds = time.perf_counter() - started
    _, status, usage = box[0]
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
    stderr = stderr_path.read_text(errors="replace")
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    report = None
    if json_path is not None and json_path.exists():
        try:
            report = json.loads(json_path.read_text())
        except (OSError, ValueError):
            report = None
    error_line = ""
    if isinstance(report, dict) and report.get("error"):
        error_line = str(report["error"])
    elif lines:
        error_line = lines[-1]
    kept = stderr if len(stderr) <= STDERR_KEEP else (
        stderr[:STDERR_KEEP // 2] + "\n[...]\n" + stderr[-STDERR_KEEP // 2:])
    return Run(command=command, argv=[str(a) for a in argv],
               exit_code=None if timed_out else proc.returncode, seconds=seconds,
               peak_rss_mb=max(usage.ru_maxrss, peak_group_kb) / 1024.0,  # Linux: kilobytes
               timed_out=timed_out, traceback=TRACEBACK in stderr,
               stderr_first=lines[0] if lines else "", error_line=error_line, stderr=kept,
               report=report)


# ---------------------------------------------------------------------------------------------
# Manifests


def load_manifest(path: Path) -> list[dict[str, Any]]:
    entries = json.loads(path.read_text())
    if not isinstance(entries, list):
        raise ValueError(f"{path}: expected a JSON list of models")
    for entry in entries:
        entry["_manifest"] = str(path)
        entry["_path"] = str((path.parent / entry["path"]).resolve())
    return entries


def default_manifests() -> tuple[list[Path], list[str]]:
    """The corpus manifest when it is there and readable, else zoo/real's; and warnings."""
    if CORPUS_MANIFEST.exists():
        try:
            load_manifest(CORPUS_MANIFEST)
            return [CORPUS_MANIFEST], []
        except (OSError, ValueError, KeyError) as err:
            return [ZOO_MANIFEST], [f"corpus manifest {CORPUS_MANIFEST} is unreadable ({err}); "
                                    "using zoo/real instead"]
    return [ZOO_MANIFEST], [f"no corpus manifest at {CORPUS_MANIFEST}; using zoo/real"]


def pypi_suite_check(entries: list[dict[str, Any]], manifests: list[Path]) -> list[str]:
    """Warns when a corpus manifest lacks models of suites/pypi-models.suite.toml."""
    if not any(m.resolve() == CORPUS_MANIFEST.resolve() for m in manifests):
        return []
    try:
        suite = tomllib.loads(PYPI_SUITE.read_text())
    except (OSError, ValueError):
        return []
    # The corpus may name a model differently (ppocr_cls for the suite's ppocr_mobile_cls):
    # the sha256 of the .onnx decides, the name only when the suite pins no hash.
    names = {entry["name"] for entry in entries}
    hashes = {entry.get("sha256") for entry in entries}
    absent = [case.get("name", "?") for case in suite.get("case", [])
              if case.get("model_sha256") not in hashes and case.get("name") not in names]
    if not absent:
        return []
    return [f"the corpus manifest lacks {len(absent)} model(s) of {PYPI_SUITE.name}: "
            + ", ".join(absent)]


def input_flags(entry: dict[str, Any]) -> list[str]:
    """--input-shapes and --val-range from the manifest (integer ranges are inclusive)."""
    flags: list[str] = []
    shapes = entry.get("input_shapes") or {}
    if shapes:
        flags.append("--input-shapes")
        flags += [f"{name}:[{','.join(str(int(d)) for d in shape)}]"
                  for name, shape in shapes.items()]
    ranges = entry.get("val_ranges") or {}
    if ranges:
        flags.append("--val-range")
        flags += [f"{name}:[{low},{high}]" for name, (low, high) in ranges.items()]
    return flags


# ---------------------------------------------------------------------------------------------
# Per model


@dataclass
class ModelResult:
    name: str
    path: str
    manifest: str
    family: str
    nodes: int | None
    size_bytes: int | None
    missing: bool = False
    runs: dict[str, Run] = field(default_factory=dict)
    bisect_outcome: str = ""  # culprit, consistent, stated-error, crash, not-run
    crashes: list[dict[str, Any]] = field(default_factory=list)


def _trim_compare(report: dict[str, Any]) -> dict[str, Any]:
    keep = ("name", "passed", "failures", "max_abs_error", "max_rel_error", "cosine",
            "exceeding", "elements")
    return {"verdict": report.get("verdict"), "error": report.get("error"),
            "outputs": [{k: o.get(k) for k in keep} for o in report.get("outputs") or []],
            "timings_s": report.get("timings_s")}


def _trim_bisect(report: dict[str, Any]) -> dict[str, Any]:
    trimmed = _trim_compare(report)
    bisect = report.get("bisect")
    if isinstance(bisect, dict):
        trimmed["bisect"] = {k: v for k, v in bisect.items() if k not in ("runs", "trace")}
        trimmed["bisect"]["trace_length"] = len(bisect.get("trace") or [])
        trimmed["bisect"]["run_sizes"] = [len(r) for r in bisect.get("runs") or []]
    if "bisect_error" in report:
        trimmed["bisect_error"] = report["bisect_error"]
    return trimmed


def _trim_audit(report: dict[str, Any]) -> dict[str, Any]:
    findings = report.get("findings") or []
    return {"counts": audit_counts(report),
            "findings": [{k: f.get(k) for k in ("tensor", "node", "kind", "precision",
                                                "max_abs")} for f in findings]}


def _trim_lint(report: dict[str, Any]) -> dict[str, Any]:
    findings = report.get("findings") or []
    errors = sum(1 for f in findings if f.get("severity") == "error")
    return {"errors": errors, "warnings": len(findings) - errors,
            "tensorrt_version": report.get("tensorrt_version"),
            "findings": [{k: f.get(k) for k in ("severity", "node", "op", "reason", "fixed_by")}
                         for f in findings]}


def _trim_fix(report: dict[str, Any]) -> dict[str, Any]:
    trimmed = {k: report.get(k) for k in ("nodes", "verified", "reason_unverified",
                                          "final_change")}
    trimmed["passes"] = [{k: p.get(k) for k in ("name", "status", "message", "seconds")}
                         for p in report.get("passes") or []]
    return trimmed


TRIM = {"compare": _trim_compare, "bisect": _trim_bisect, "audit": _trim_audit,
        "lint": _trim_lint, "fix": _trim_fix}


def audit_counts(report: dict[str, Any] | None) -> dict[str, int]:
    counts = {"overflow": 0, "mask-fill": 0, "underflow": 0, "other": 0}
    for finding in (report or {}).get("findings") or []:
        kind = finding.get("kind")
        counts[kind if kind in counts else "other"] += 1
    return counts


def run_model(entry: dict[str, Any], timeout: float, progress: bool,
              tolerance: float | None = None) -> ModelResult:
    model = Path(entry["_path"])
    result = ModelResult(name=entry["name"], path=str(model), manifest=entry["_manifest"],
                         family=str(entry.get("family", "")), nodes=entry.get("nodes"),
                         size_bytes=entry.get("size_bytes"))
    if not model.exists():
        result.missing = True
        result.bisect_outcome = "not-run"
        return result
    flags = input_flags(entry)
    # Tighter tolerances make compare fail on (nearly) every model, so bisect runs on all.
    tolerances = ["--atol", str(tolerance), "--rtol", str(tolerance)] if tolerance else []
    with tempfile.TemporaryDirectory(prefix=f"trtcheck-bench-{entry['name']}-") as tmp:
        work = Path(tmp)
        commands = {
            "compare": [*TRTCHECK, "compare", model, "--target", TARGET, *flags, *tolerances,
                        "--json", work / "compare.json"],
            "bisect": [*TRTCHECK, "bisect", model, "--target", TARGET, *flags, *tolerances,
                       "--repro", work / "repro", "--json", work / "bisect.json"],
            "audit": [*TRTCHECK, "audit", model, "--precision", "fp16", *flags,
                      "--json", work / "audit.json"],
            "lint": [*TRTCHECK, "lint", model, "--json", work / "lint.json"],
            "fix": [*TRTCHECK, "fix", model, "-o", work / "fixed.onnx", *flags,
                    "--json", work / "fix.json"],
        }
        for command, argv in commands.items():
            if progress:
                print(f"  {entry['name']}: {command} ...", file=sys.stderr, flush=True)
            run = run_measured(command, [str(a) for a in argv], work, timeout,
                               work / f"{command}.json")
            if run.report is not None:
                run.report = TRIM[command](run.report)
            result.runs[command] = run
            if progress:
                print(f"  {entry['name']}: {command} {run.exit_text} in {run.seconds:.1f} s, "
                      f"peak {run.peak_rss_mb:.0f} MB", file=sys.stderr, flush=True)
    classify(result)
    return result


def _crash(result: ModelResult, run: Run, why: str) -> None:
    result.crashes.append({"command": run.command, "why": why, "exit": run.exit_text,
                           "stderr_first": run.stderr_first, "error_line": run.error_line,
                           "argv": " ".join(run.argv)})


def classify(result: ModelResult) -> None:
    """Finds crashes, and what the bisect amounts to next to compare's verdict."""
    compare = result.runs.get("compare")
    for command, run in result.runs.items():
        if run.timed_out:
            _crash(result, run, "timeout")
        elif run.exit_code is not None and run.exit_code < 0:
            _crash(result, run, f"killed by signal {-run.exit_code}")
        elif run.traceback:
            _crash(result, run, "traceback in stderr")
        elif run.exit_code == 3:
            _crash(result, run, "exit 3 (could not run)")
        elif command != "bisect" and run.exit_code not in (0, 1):
            _crash(result, run, f"unexpected {run.exit_text}")
    bisect = result.runs.get("bisect")
    if bisect is None or compare is None:
        result.bisect_outcome = "not-run"
        return
    report = bisect.report or {}
    culprit = (report.get("bisect") or {}).get("culprit")
    crashed = any(c["command"] == "bisect" for c in result.crashes)
    if crashed:
        result.bisect_outcome = "crash"
    elif compare.exit_code == 1 and bisect.exit_code == 1 and culprit:
        result.bisect_outcome = "culprit"
    elif compare.exit_code == 0 and bisect.exit_code == 0:
        result.bisect_outcome = "consistent"
    elif compare.exit_code == 1 and bisect.exit_code == 1 and report.get("bisect_error"):
        result.bisect_outcome = "stated-error"  # a bisect_error with exit 1: not a crash
    elif compare.exit_code not in (0, 1):
        result.bisect_outcome = "compare-failed"  # compare's own problem is listed for it
    elif compare.exit_code == 1 and bisect.exit_code == 1:
        result.bisect_outcome = "crash"
        _crash(result, bisect, "exit 1 without a culprit or a bisect_error in its report")
    else:
        result.bisect_outcome = "crash"
        _crash(result, bisect, f"inconsistent: {bisect.exit_text} after compare "
                               f"{compare.exit_text}"
               + (f" ({report.get('bisect_error')})" if report.get("bisect_error") else ""))


# ---------------------------------------------------------------------------------------------
# Table and summary

COLUMNS = ("model", "nodes", "compare", "culprit", "mode", "target runs", "bisect s",
           "bisect MB", "fix verified", "audit", "lint E/W", "fix")


def _short(text: str, width: int = 70) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[:width - 3] + "..."


def row(result: ModelResult) -> list[str]:
    nodes = "-" if result.nodes is None else str(result.nodes)
    if result.missing:
        return [result.name, nodes, "missing", "-", "-", "-", "-", "-", "-", "-", "-", "-"]
    compare = result.runs["compare"]
    verdict = {0: "PASS", 1: "FAIL"}.get(compare.exit_code, compare.exit_text) \
        if not compare.timed_out and not compare.traceback else compare.exit_text
    bisect = result.runs["bisect"]
    report = bisect.report or {}
    info = report.get("bisect") or {}
    culprit_info = info.get("culprit") or {}
    if result.bisect_outcome == "culprit":
        culprit = f"{culprit_info.get('node')} [{culprit_info.get('op')}]"
    elif report.get("bisect_error"):
        culprit = ("crash: " if result.bisect_outcome == "crash" else "error: ") + _short(
            report["bisect_error"])
    elif result.bisect_outcome == "consistent":
        culprit = "- (nothing to bisect)"
    elif bisect.timed_out:
        culprit = "timeout"
    elif result.bisect_outcome == "crash":
        culprit = f"crash ({bisect.exit_text}): {_short(bisect.error_line, 60)}"
    else:
        culprit = f"{bisect.exit_text}: {_short(bisect.error_line, 60)}"
    fix_info = info.get("precision_fix")
    fix_verified = "-" if not isinstance(fix_info, dict) else (
        "yes" if fix_info.get("verified") else "no")
    if isinstance(fix_info, dict):
        fix_verified += f" ({len(fix_info.get('keep_fp32') or [])} fp32)"
    audit = result.runs["audit"]
    if audit.report is not None and audit.exit_code in (0, 1) and not audit.traceback:
        counts = audit.report["counts"]
        audit_text = (f"{counts['overflow']} ovf, {counts['mask-fill']} mask, "
                      f"{counts['underflow']} udf")
    else:
        audit_text = audit.exit_text
    lint = result.runs["lint"]
    lint_text = (f"{lint.report['errors']}/{lint.report['warnings']}"
                 if lint.report is not None and lint.exit_code in (0, 1) and not lint.traceback
                 else lint.exit_text)
    fix = result.runs["fix"]
    fix_text = str(fix.exit_code) if fix.exit_code in (0, 1, 2) and not fix.traceback \
        else fix.exit_text
    if fix.report is not None and fix.exit_code == 1:
        bad = [p["name"] for p in fix.report["passes"] if p["status"] in ("rolled-back",
                                                                          "failed")]
        if bad:
            fix_text += f" ({','.join(bad)})"
    return [result.name, nodes, verdict, culprit, str(info.get("mode") or "-"),
            str(info.get("target_runs", "-")), f"{bisect.seconds:.1f}",
            f"{bisect.peak_rss_mb:.0f}", fix_verified, audit_text, lint_text, fix_text]


def summarize(results: list[ModelResult]) -> dict[str, Any]:
    ran = [r for r in results if not r.missing]
    compare_exits = [r.runs["compare"].exit_code for r in ran]
    outcomes = [r.bisect_outcome for r in ran]
    fixes = [((r.runs["bisect"].report or {}).get("bisect") or {}).get("precision_fix")
             for r in ran]
    attempted = [f for f in fixes if isinstance(f, dict)]
    audits = [audit_counts(r.runs["audit"].report) for r in ran]
    lint_reports = [r.runs["lint"].report for r in ran if r.runs["lint"].report]
    crashes = [{"model": r.name, **c} for r in ran for c in r.crashes]
    return {
        "models": len(results),
        "ran": len(ran),
        "missing": [r.name for r in results if r.missing],
        "compare": {"pass": compare_exits.count(0), "fail": compare_exits.count(1),
                    "other": len(ran) - compare_exits.count(0) - compare_exits.count(1)},
        "bisect": {"culprit": outcomes.count("culprit"),
                   "consistent": outcomes.count("consistent"),
                   "stated_error": outcomes.count("stated-error"),
                   "compare_failed": outcomes.count("compare-failed"),
                   "crash": outcomes.count("crash")},
        "precision_fix": {"attempted": len(attempted),
                          "verified": sum(1 for f in attempted if f.get("verified"))},
        "audit": {"overflow": sum(a["overflow"] for a in audits),
                  "mask_fill": sum(a["mask-fill"] for a in audits),
                  "underflow": sum(a["underflow"] for a in audits),
                  "models_with_overflow": sum(1 for a in audits if a["overflow"])},
        "lint": {"models_with_errors": sum(1 for rep in lint_reports if rep["errors"]),
                 "errors": sum(rep["errors"] for rep in lint_reports),
                 "warnings": sum(rep["warnings"] for rep in lint_reports)},
        "fix": {"clean": sum(1 for r in ran if r.runs["fix"].exit_code == 0),
                "rolled_back": sum(1 for r in ran if r.runs["fix"].exit_code == 1)},
        "crashes": crashes,
        "timeouts": sum(1 for c in crashes if c["why"] == "timeout"),
    }


def summary_lines(summary: dict[str, Any]) -> list[str]:
    s = summary
    lines = [
        f"models: {s['models']} ({s['ran']} run"
        + (f", {len(s['missing'])} missing: {', '.join(s['missing'])}" if s["missing"] else "")
        + ")",
        f"compare: {s['compare']['pass']} PASS, {s['compare']['fail']} FAIL, "
        f"{s['compare']['other']} other",
        f"bisect: {s['bisect']['culprit']} culprit found, {s['bisect']['consistent']} consistent "
        f"with compare (PASS, nothing to bisect), {s['bisect']['stated_error']} stated error, "
        f"{s['bisect']['compare_failed']} after a compare that could not run, "
        f"{s['bisect']['crash']} crash(es)",
        f"precision fixes: {s['precision_fix']['verified']} verified / "
        f"{s['precision_fix']['attempted']} attempted",
        f"audit (fp16): {s['audit']['mask_fill']} mask fill(s) vs {s['audit']['overflow']} "
        f"overflow(s) ({s['audit']['models_with_overflow']} model(s) with an overflow), "
        f"{s['audit']['underflow']} underflow(s)",
        f"lint: {s['lint']['errors']} error(s), {s['lint']['warnings']} warning(s) "
        f"({s['lint']['models_with_errors']} model(s) with errors)",
        f"fix: {s['fix']['clean']} clean (exit 0), {s['fix']['rolled_back']} with a pass rolled "
        "back (exit 1)",
        f"crashed commands: {len(s['crashes'])}"
        + (f" ({s['timeouts']} timeout(s))" if s["timeouts"] else ""),
    ]
    for crash in s["crashes"]:
        lines.append(f"  {crash['model']} {crash['command']}: {crash['why']}; stderr: "
                     f"{crash['stderr_first'] or '(empty)'}")
        if crash["error_line"] and crash["error_line"] != crash["stderr_first"]:
            lines.append(f"      error: {_short(crash['error_line'], 160)}")
        lines.append(f"      command: {crash['argv']}")
    return lines


def print_table(rows: list[list[str]], plain: bool, columns: list[str] | None = None,
                numeric: tuple[str, ...] = ("nodes", "target runs", "bisect s", "bisect MB")) \
        -> None:
    """Prints `rows` under `columns` (default: this bench's) as markdown or a rich table."""
    columns = columns or COLUMNS
    if plain:
        print("| " + " | ".join(columns) + " |")
        print("|" + "|".join("---" for _ in columns) + "|")
        for cells in rows:
            print("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
        return
    from rich.console import Console
    from rich.table import Table

    width = shutil.get_terminal_size((240, 40)).columns if sys.stdout.isatty() else 260
    table = Table(header_style="bold", show_lines=False)
    for column in columns:
        table.add_column(column, justify="right" if column in numeric else "left",
                         overflow="fold", no_wrap=column == "model")
    for cells in rows:
        table.add_row(*cells)
    Console(width=width, highlight=False).print(table)


def write_json(path: Path, manifests: list[Path], timeout: float, warnings: list[str],
               results: list[ModelResult], done: bool) -> None:
    document = {
        "bench": "real_models",
        "complete": done,
        "manifests": [str(m) for m in manifests],
        "target": TARGET,
        "timeout_s": timeout,
        "python": sys.executable,
        "warnings": warnings,
        "columns": list(COLUMNS),
        "rows": [row(r) for r in results],
        "summary": summarize(results),
        "models": [{**{k: v for k, v in asdict(r).items() if k != "runs"},
                    "runs": {c: asdict(run) for c, run in r.runs.items()}} for r in results],
    }
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(document, indent=1, default=str))
    tmp.replace(path)


def _terminate(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)  # unwinds through run_measured, which kills the child


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manifest", type=Path, nargs="+", action="extend",
                        help="manifest(s) to run (default: the corpus manifest if readable, "
                             "else zoo/real/manifest.json)")
    parser.add_argument("--only", nargs="+", action="extend", metavar="NAME",
                        help="run only these models")
    parser.add_argument("--timeout", type=float, default=900.0,
                        help="seconds per command before it is killed (default 900)")
    parser.add_argument("--json", type=Path, metavar="OUT", help="write everything here")
    parser.add_argument("--plain", action="store_true",
                        help="print a plain markdown table instead of a rich one")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    parser.add_argument("--tolerance", type=float, default=None, metavar="V",
                        help="compare and bisect with --atol V --rtol V (e.g. 1e-4, so that "
                             "bisect runs on every model); default: the target's defaults")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)

    warnings: list[str] = []
    if args.manifest:
        manifests = [m.resolve() for m in args.manifest]
    else:
        manifests, warnings = default_manifests()
    entries: list[dict[str, Any]] = []
    for manifest in manifests:
        try:
            entries += load_manifest(manifest)
        except (OSError, ValueError, KeyError) as err:
            print(f"real_models: cannot read {manifest}: {err}", file=sys.stderr)
            return 2
    warnings += pypi_suite_check(entries, manifests)
    if args.only:
        unknown = sorted(set(args.only) - {e["name"] for e in entries})
        if unknown:
            print(f"real_models: not in the manifest(s): {', '.join(unknown)}", file=sys.stderr)
            return 2
        entries = [e for e in entries if e["name"] in args.only]
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)

    results: list[ModelResult] = []
    started = time.perf_counter()
    for index, entry in enumerate(entries, 1):
        if not args.quiet:
            print(f"[{index}/{len(entries)}] {entry['name']} ({entry.get('nodes')} nodes, "
                  f"{(entry.get('size_bytes') or 0) / 2**20:.1f} MB)", file=sys.stderr,
                  flush=True)
        results.append(run_model(entry, args.timeout, progress=not args.quiet,
                                 tolerance=args.tolerance))
        if args.json:
            write_json(args.json, manifests, args.timeout, warnings, results, done=False)

    tolerance = f"atol = rtol = {args.tolerance:g}" if args.tolerance else "default tolerances"
    print(f"trtcheck on {len(results)} model(s) from {', '.join(str(m) for m in manifests)}; "
          f"target {TARGET}, {tolerance}; timeout {args.timeout:g} s per command; "
          f"{time.perf_counter() - started:.0f} s in all")
    for warning in warnings:
        print(f"warning: {warning}")
    print_table([row(r) for r in results], args.plain)
    summary = summarize(results)
    print()
    for line in summary_lines(summary):
        print(line)
    if args.json:
        write_json(args.json, manifests, args.timeout, warnings, results, done=True)
    return 1 if summary["crashes"] else 0


if __name__ == "__main__":
    sys.exit(main())
