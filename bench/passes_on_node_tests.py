"""Runs the whole trtcheck pass pipeline on every ONNX backend node test case.

What it proves, over the ~1,900 single-operator models of onnx's backend test suite:

1. no exception escapes `run_pipeline` (a pass that raises must be reported as "failed", a pass
   that breaks the model as "rolled-back"; neither may crash the pipeline);
2. the pipeline's own guard holds: wherever ONNX Runtime runs the original model, an
   independent check runs ONNX Runtime on the original and on the final model with the case's
   own inputs (test_data_set_0) and finds every output unchanged: same shapes and dtypes, NaNs
   in the same places, other non-finite values equal, and
   max |final - original| <= 1e-6 * max(1, max |original|); strings and other non-numeric
   outputs must be equal.

It also counts the passes rolled back or failed, by pass, with example cases and messages,
which shows where passes do not yet handle an operator. Cases whose original model gives
different outputs on two ONNX Runtime runs (random operators) cannot be checked numerically
and are counted apart; so are cases whose inputs cannot be loaded and cases over the per-case
time limit.

Cases come from `onnx.backend.test.loader.load_model_tests(kind="node")`: recent onnx builds
them in memory (`.model` and `.data_sets`); a case with a `.model_dir` is read from
model.onnx and test_data_set_0/input_*.pb instead (tensors, sequences, optionals and maps).
Each case runs in a pool of worker processes; a case over the time limit has its worker
killed.

Run it from the repository root, in the venv where trtcheck is installed:

    python bench/passes_on_node_tests.py
    python bench/passes_on_node_tests.py --filter resize --limit 20 --json passes.json

Exit code 0: no exception escaped `run_pipeline`, no worker crashed and the independent check
found no numeric change; 1 otherwise.
"""

from __future__ import annotations

import collections
import io
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _node_tests import (  # noqa: E402  (bench/ is not a package)
    CRASH,
    TIMEOUT_KIND,
    Job,
    bench_main,
    first_line,
    load_case,
    ort_outputs,
    where_raised,
)

TIMEOUT = 60.0  # seconds per case, pipeline and independent check together
TOLERANCE = 1e-6  # independent check: max abs diff <= TOLERANCE * max(1, max |original|)
EXAMPLES = 3  # example cases shown per rolled-back / failed pass

# Case outcomes (Record.kind).
DONE = "done"
NOT_LOADABLE = "inputs not loadable"
EXCEPTION = "exception escaped run_pipeline"
HARNESS_ERROR = "harness error"


@dataclass
class Record:
    index: int
    name: str
    kind: str = DONE
    detail: str | None = None  # why inputs are not loadable, the exception, ...
    traceback: str | None = None
    verified: bool = False
    reason_unverified: str | None = None
    # (pass, status, message) in pipeline order.
    outcomes: list[tuple[str, str, str | None]] = field(default_factory=list)
    nondeterministic: bool = False
    numeric_changes: list[str] = field(default_factory=list)
    input_mutated: bool = False
    seconds: float = 0.0


# --------------------------------------------------------------------------- independent check


def _as_float64(array: np.ndarray) -> np.ndarray | None:
    if array.dtype.kind in "biuf":
        return array.astype(np.float64)
    if array.dtype.kind == "c":
        return None
    try:  # ml_dtypes (float8, bfloat16, int4) convert; strings and objects do not
        return array.astype(np.float64) if array.dtype.kind == "V" else None
    except (TypeError, ValueError):
        return None


def _compare_arrays(original: np.ndarray, final: np.ndarray, where: str) -> list[str]:
    if original.shape != final.shape or original.dtype != final.dtype:
        return [f"{where}: {original.dtype}{list(original.shape)} became "
                f"{final.dtype}{list(final.shape)}"]
    if original.dtype.kind == "c":
        return (_compare_arrays(original.real, final.real, f"{where}.real")
                + _compare_arrays(original.imag, final.imag, f"{where}.imag"))
    ref, new = _as_float64(original), _as_float64(final)
    if ref is None or new is None:  # strings, objects: exact
        equal = np.array_equal(original, final)
        return [] if equal else [f"{where}: non-numeric values differ"]
    nan = np.isnan(ref)
    if not np.array_equal(nan, np.isnan(new)):
        return [f"{where}: NaNs in other places"]
    finite = np.isfinite(ref)
    if not np.array_equal(finite, np.isfinite(new)) or \
            not np.array_equal(ref[~finite & ~nan], new[~finite & ~nan]):
        return [f"{where}: infinities differ"]
    if not finite.any():
        return []
    worst = float(np.abs(ref[finite] - new[finite]).max())
    allowed = TOLERANCE * max(1.0, float(np.abs(ref[finite]).max()))
    return [] if worst <= allowed else [f"{where}: max abs diff {worst:.3g} > {allowed:.3g}"]


def compare_values(original: Any, final: Any, where: str) -> list[str]:
    """Differences between two ONNX Runtime output values (arrays, sequences, optionals)."""
    if original is None or final is None:
        return [] if original is None and final is None else [f"{where}: optional presence differs"]
    if isinstance(original, (list, tuple)) or isinstance(final, (list, tuple)):
        if not isinstance(original, (list, tuple)) or not isinstance(final, (list, tuple)) or \
                len(original) != len(final):
            return [f"{where}: sequence structure differs"]
        return [diff for i, (a, b) in enumerate(zip(original, final, strict=True))
                for diff in compare_values(a, b, f"{where}[{i}]")]
    if isinstance(original, dict) or isinstance(final, dict):
        if not isinstance(original, dict) or not isinstance(final, dict) or \
                set(original) != set(final):
            return [f"{where}: map keys differ"]
        return [diff for key in original
                for diff in compare_values(original[key], final[key], f"{where}[{key!r}]")]
    return _compare_arrays(np.asarray(original), np.asarray(final), where)


def compare_outputs(original: dict[str, Any], final: dict[str, Any]) -> list[str]:
    if list(original) != list(final):
        return [f"outputs {list(original)} became {list(final)}"]
    return [diff for name in original for diff in compare_values(original[name], final[name], name)]


# --------------------------------------------------------------------------- worker


def _lost(job: Job, kind: str, detail: str, seconds: float) -> Record:
    return Record(job.index, job.name, kind=kind, detail=detail, seconds=seconds)


def run_case(job: Job) -> Record:
    """Loads one case, runs the pipeline on it and checks the result independently."""
    from trtcheck.passes import PassContext
    from trtcheck.passes.pipeline import run_pipeline, select_passes

    record = Record(job.index, job.name)
    started = time.perf_counter()
    try:
        try:
            model, feeds = load_case(job)
        except Exception as err:
            record.kind, record.detail = NOT_LOADABLE, f"{type(err).__name__}: {err}"
            return record
        pristine = model.SerializeToString()
        try:
            result = run_pipeline(model, select_passes(None), PassContext(), [feeds])
        except Exception as err:
            record.kind, record.detail = EXCEPTION, f"{type(err).__name__}: {err}"
            record.traceback = traceback.format_exc()
            return record
        record.input_mutated = model.SerializeToString() != pristine
        record.verified, record.reason_unverified = result.verified, result.reason_unverified
        record.outcomes = [(o.name, o.status, o.message) for o in result.outcomes]
        if result.verified:
            original = onnx.ModelProto()
            original.ParseFromString(pristine)
            first = ort_outputs(original, feeds)
            if compare_outputs(first, ort_outputs(original, feeds)):
                record.nondeterministic = True
            else:
                try:
                    final = ort_outputs(result.model, feeds)
                except Exception as err:
                    record.numeric_changes = [
                        f"ONNX Runtime cannot run the final model: {str(err).splitlines()[0]}"]
                else:
                    record.numeric_changes = compare_outputs(first, final)
    except Exception as err:
        record.kind, record.detail = HARNESS_ERROR, f"{type(err).__name__}: {err}"
        record.traceback = traceback.format_exc()
    finally:
        record.seconds = time.perf_counter() - started
    return record


# --------------------------------------------------------------------------- report


def summarize(records: list[Record], seconds: float) -> dict[str, Any]:
    by_kind = collections.Counter(record.kind for record in records)
    done = [record for record in records if record.kind == DONE]
    status_counts: dict[str, collections.Counter[str]] = {}
    rolled: dict[str, list[tuple[str, str | None]]] = {}
    failed: dict[str, list[tuple[str, str | None]]] = {}
    for record in done:
        for name, status, message in record.outcomes:
            status_counts.setdefault(name, collections.Counter())[status] += 1
            if status == "rolled-back":
                rolled.setdefault(name, []).append((record.name, message))
            elif status == "failed":
                failed.setdefault(name, []).append((record.name, message))
    return {
        "total": len(records),
        "inputs_not_loadable": [(r.name, r.detail) for r in records if r.kind == NOT_LOADABLE],
        "timed_out": [r.name for r in records if r.kind == TIMEOUT_KIND],
        "verified": sum(record.verified for record in done),
        "unverified": sum(not record.verified for record in done),
        "changed": sum(any(status == "changed" for _n, status, _m in record.outcomes)
                       for record in done),
        "status_counts": {name: dict(counts) for name, counts in status_counts.items()},
        "rolled_back": rolled,
        "failed": failed,
        "exceptions": [(r.name, r.detail, where_raised(r.traceback))
                       for r in records if r.kind == EXCEPTION],
        "crashes": [r.name for r in records if r.kind == CRASH],
        "harness_errors": [(r.name, r.detail, where_raised(r.traceback))
                           for r in records if r.kind == HARNESS_ERROR],
        "nondeterministic": [r.name for r in done if r.nondeterministic],
        "numeric_changes": [(r.name, r.numeric_changes) for r in done if r.numeric_changes],
        "input_mutated": [r.name for r in done if r.input_mutated],
        "by_kind": dict(by_kind),
        "seconds": seconds,
    }


def render(summary: dict[str, Any]) -> str:
    import onnxruntime

    import trtcheck
    from trtcheck.passes import PASSES

    out = io.StringIO()

    def line(text: str = "") -> None:
        out.write(text + "\n")

    def row(label: str, value: object) -> None:
        line(f"  {label:<56}{value!s:>8}")

    line(f"trtcheck {trtcheck.__version__} pass pipeline on ONNX backend node tests "
         f"(onnx {onnx.__version__}, onnxruntime {onnxruntime.__version__})")
    row("total cases", summary["total"])
    row("inputs not loadable", len(summary["inputs_not_loadable"]))
    row(f"timed out (> {TIMEOUT:g} s)", len(summary["timed_out"]))
    row("ORT runs the original (verified)", summary["verified"])
    row("ORT cannot run the original (unverified)", summary["unverified"])
    row("cases where at least one pass changed the model", summary["changed"])
    row("passes rolled back", sum(len(v) for v in summary["rolled_back"].values()))
    row("passes failed", sum(len(v) for v in summary["failed"].values()))
    row("unhandled exceptions escaping run_pipeline (must be 0)", len(summary["exceptions"]))
    row("worker crashes (must be 0)", len(summary["crashes"]))
    row("numeric changes, independent check (must be 0)", len(summary["numeric_changes"]))
    row("nondeterministic originals (not checked)", len(summary["nondeterministic"]))
    row("input model modified by run_pipeline", len(summary["input_mutated"]))
    row("harness errors", len(summary["harness_errors"]))
    row("wall time", f"{summary['seconds']:.1f} s")

    line()
    statuses = ("changed", "unchanged", "rolled-back", "failed", "skipped", "unverified")
    line(f"  {'pass':<20}" + "".join(f"{s:>13}" for s in statuses))
    for name in PASSES:
        counts = summary["status_counts"].get(name, {})
        line(f"  {name:<20}" + "".join(f"{counts.get(s, 0):>13}" for s in statuses))

    for title, key in (("Rolled back", "rolled_back"), ("Failed", "failed")):
        if summary[key]:
            line()
            line(f"{title} passes (first {EXAMPLES} cases each):")
            for name, cases in summary[key].items():
                line(f"  {name}: {len(cases)} case(s)")
                for case, message in cases[:EXAMPLES]:
                    line(f"    {case}: {first_line(message)}")
    if summary["exceptions"]:
        line()
        line("Unhandled exceptions escaping run_pipeline:")
        for case, detail, where in summary["exceptions"]:
            line(f"  {case}: {first_line(detail)}")
            line(f"    at {where}")
    if summary["crashes"]:
        line()
        line("Worker crashes: " + ", ".join(summary["crashes"]))
    if summary["numeric_changes"]:
        line()
        line("Numeric changes found by the independent check:")
        for case, diffs in summary["numeric_changes"]:
            line(f"  {case}: {'; '.join(diffs)}")
    if summary["harness_errors"]:
        line()
        line("Harness errors (bugs in this bench):")
        for case, detail, where in summary["harness_errors"]:
            line(f"  {case}: {first_line(detail)}  at {where}")
    for title, key in (("Inputs not loadable", "inputs_not_loadable"),):
        if summary[key]:
            line()
            line(f"{title}:")
            for case, detail in summary[key]:
                line(f"  {case}: {first_line(detail)}")
    for title, key in (("Timed out", "timed_out"), ("Nondeterministic originals",
                                                    "nondeterministic"),
                       ("Input model modified by run_pipeline", "input_mutated")):
        if summary[key]:
            line()
            line(f"{title}: " + ", ".join(summary[key]))
    return out.getvalue().rstrip("\n")


def main(argv: list[str] | None = None) -> int:
    summary = bench_main(argv, __doc__.splitlines()[0], "the pass pipeline", run_case,
                         TIMEOUT, _lost, summarize, render)
    failed = summary["exceptions"] or summary["crashes"] or summary["numeric_changes"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
