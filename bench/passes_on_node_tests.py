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

import argparse
import collections
import concurrent.futures as cf
import io
import json
import multiprocessing
import sys
import time
import traceback
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a script from anywhere: trtcheck from this checkout
    sys.path.insert(0, str(REPO))

WORKERS = 2  # the machine this bench was written for has 2 cores
TIMEOUT = 60.0  # seconds per case, pipeline and independent check together
MAX_TASKS_PER_CHILD = 200  # bounds memory growth of long-lived workers
TOLERANCE = 1e-6  # independent check: max abs diff <= TOLERANCE * max(1, max |original|)
EXAMPLES = 3  # example cases shown per rolled-back / failed pass

# Case outcomes (Record.kind).
DONE = "done"
NOT_LOADABLE = "inputs not loadable"
EXCEPTION = "exception escaped run_pipeline"
HARNESS_ERROR = "harness error"
TIMEOUT_KIND = "timed out"
CRASH = "worker crashed"


@dataclass
class Job:
    index: int
    name: str
    model_dir: str | None = None
    model_bytes: bytes | None = None
    inputs: list[Any] | None = None  # in-memory values of data set 0, in graph input order
    alone: bool = False  # rerun on its own after a worker died beside it


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


# --------------------------------------------------------------------------- loading inputs


def _from_proto_file(path: Path, value_type: onnx.TypeProto) -> Any:
    """Reads one input_N.pb as the proto its graph input's type says it holds."""
    data = path.read_bytes()
    which = value_type.WhichOneof("value")
    if which == "tensor_type":
        tensor = onnx.TensorProto()
        tensor.ParseFromString(data)
        return numpy_helper.to_array(tensor)
    if which == "sequence_type":
        sequence = onnx.SequenceProto()
        sequence.ParseFromString(data)
        return numpy_helper.to_list(sequence)
    if which == "optional_type":
        optional = onnx.OptionalProto()
        optional.ParseFromString(data)
        return numpy_helper.to_optional(optional)
    if which == "map_type":
        mapping = onnx.MapProto()
        mapping.ParseFromString(data)
        return numpy_helper.to_dict(mapping)
    raise TypeError(f"{path.name}: graph input type {which!r} is not supported")


def _to_feed_value(value: Any) -> Any:
    """An in-memory test value (array, proto, list, None) as ONNX Runtime takes it."""
    if value is None:
        return None
    if isinstance(value, onnx.TensorProto):
        return numpy_helper.to_array(value)
    if isinstance(value, onnx.SequenceProto):
        return numpy_helper.to_list(value)
    if isinstance(value, onnx.OptionalProto):
        return numpy_helper.to_optional(value)
    if isinstance(value, onnx.MapProto):
        return numpy_helper.to_dict(value)
    if isinstance(value, (list, tuple)):
        return [_to_feed_value(item) for item in value]
    if isinstance(value, dict):
        return {key: _to_feed_value(item) for key, item in value.items()}
    if isinstance(value, (np.ndarray, np.generic, bool, int, float)):
        return np.asarray(value)
    raise TypeError(f"unsupported input value of type {type(value).__name__}")


def _graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    initializers = {init.name for init in model.graph.initializer}
    initializers |= {init.values.name for init in model.graph.sparse_initializer}
    return [value for value in model.graph.input if value.name not in initializers]


def load_case(job: Job) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """The case's model and the feeds of its test_data_set_0; raises when they cannot be had."""
    if job.model_dir is not None:
        folder = Path(job.model_dir)
        model = onnx.load(str(folder / "model.onnx"))
        files = sorted((folder / "test_data_set_0").glob("input_*.pb"),
                       key=lambda p: int(p.stem.split("_")[-1]))
        inputs = _graph_inputs(model)
        if len(files) != len(inputs):
            raise ValueError(f"{len(files)} input file(s) for {len(inputs)} graph input(s)")
        values = [_from_proto_file(path, value.type)
                  for path, value in zip(files, inputs, strict=True)]
    else:
        assert job.model_bytes is not None and job.inputs is not None
        model = onnx.ModelProto()
        model.ParseFromString(job.model_bytes)
        inputs = _graph_inputs(model)
        if len(job.inputs) != len(inputs):
            raise ValueError(f"{len(job.inputs)} input value(s) for {len(inputs)} graph input(s)")
        values = [_to_feed_value(value) for value in job.inputs]
    return model, {value.name: data for value, data in zip(inputs, values, strict=True)}


# --------------------------------------------------------------------------- independent check


def _ort_outputs(model: onnx.ModelProto, feeds: dict[str, Any]) -> dict[str, Any]:
    import onnxruntime

    session = onnxruntime.InferenceSession(model.SerializeToString(),
                                           providers=["CPUExecutionProvider"])
    names = [output.name for output in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds), strict=True))


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


def _init_worker() -> None:
    import onnxruntime
    from onnx_graphsurgeon.logger import G_LOGGER

    onnxruntime.set_default_logger_severity(3)
    G_LOGGER.severity = G_LOGGER.CRITICAL
    warnings.filterwarnings("ignore")
    np.seterr(all="ignore")


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
            first = _ort_outputs(original, feeds)
            if compare_outputs(first, _ort_outputs(original, feeds)):
                record.nondeterministic = True
            else:
                try:
                    final = _ort_outputs(result.model, feeds)
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


# --------------------------------------------------------------------------- scheduling


def load_jobs(filter_text: str | None, limit: int | None) -> list[Job]:
    from onnx.backend.test.loader import load_model_tests

    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")  # the generators' own overflow / divide warnings
        cases = load_model_tests(kind="node")
    jobs: list[Job] = []
    for case in cases:
        if filter_text and filter_text not in case.name:
            continue
        if limit is not None and len(jobs) >= limit:
            break
        index = len(jobs)
        if case.model_dir:
            jobs.append(Job(index, case.name, model_dir=str(case.model_dir)))
        elif case.model is not None and case.data_sets:
            jobs.append(Job(index, case.name, model_bytes=case.model.SerializeToString(),
                            inputs=list(case.data_sets[0][0])))
        else:  # neither a folder nor in-memory data: left to load_case to report
            jobs.append(Job(index, case.name, model_bytes=b"", inputs=None))
    return jobs


def _new_pool() -> cf.ProcessPoolExecutor:
    # spawn: workers start clean, without the parent's threads; each reimports once.
    return cf.ProcessPoolExecutor(WORKERS, mp_context=multiprocessing.get_context("spawn"),
                                  initializer=_init_worker,
                                  max_tasks_per_child=MAX_TASKS_PER_CHILD)


def _kill_pool(pool: cf.ProcessPoolExecutor) -> None:
    """Kills this pool's own worker processes (by their Process objects) and drops the pool."""
    processes = list((pool._processes or {}).values())  # the executor keeps no public handle
    for process in processes:
        process.kill()
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        process.join(5)


def run_all(jobs: list[Job], timeout: float, progress: bool) -> list[Record]:
    """Runs jobs at most WORKERS at a time, so a job's start is its submission time.

    A job over `timeout` gets its worker killed; jobs that were running beside it are resubmitted.
    When a worker dies, the jobs that were running are rerun one at a time, so the one that
    kills its worker is found.
    """
    queue = collections.deque(jobs)
    solo: collections.deque[Job] = collections.deque()
    records: dict[int, Record] = {}
    running: dict[cf.Future[Record], tuple[Job, float]] = {}
    pool = _new_pool()
    last_shown = 0
    try:
        while queue or solo or running:
            if solo:
                if not running:
                    job = solo.popleft()
                    running[pool.submit(run_case, job)] = (job, time.monotonic())
            else:
                while queue and len(running) < WORKERS:
                    job = queue.popleft()
                    running[pool.submit(run_case, job)] = (job, time.monotonic())
            done, _ = cf.wait(list(running), timeout=0.5, return_when=cf.FIRST_COMPLETED)
            broken: list[Job] = []
            for future in done:
                job, _start = running.pop(future)
                try:
                    records[job.index] = future.result()
                except cf.process.BrokenProcessPool:
                    broken.append(job)
            if broken:
                for job in broken:
                    if job.alone:  # it ran on its own: it killed its worker
                        records[job.index] = Record(job.index, job.name, kind=CRASH,
                                                    detail="the worker process died")
                    else:
                        job.alone = True
                        solo.append(job)
                for job, _start in running.values():
                    job.alone = True
                    solo.append(job)
                running.clear()
                _kill_pool(pool)
                pool = _new_pool()
                continue
            now = time.monotonic()
            expired = [f for f, (_job, start) in running.items() if now - start > timeout]
            if expired:
                for future in expired:
                    job, start = running.pop(future)
                    records[job.index] = Record(job.index, job.name, kind=TIMEOUT_KIND,
                                                detail=f"over {timeout:g} s",
                                                seconds=now - start)
                for job, _start in running.values():
                    queue.appendleft(job)
                running.clear()
                _kill_pool(pool)
                pool = _new_pool()
            if progress and len(records) - last_shown >= 100:
                last_shown = len(records)
                print(f"  {len(records)}/{len(jobs)} cases done", file=sys.stderr, flush=True)
    finally:
        if running:  # interrupted
            _kill_pool(pool)
        else:
            pool.shutdown(wait=True)
    return [records[job.index] for job in jobs]


# --------------------------------------------------------------------------- report


def _first_line(text: str | None, width: int = 180) -> str:
    line = (text or "").strip().splitlines()[0] if (text or "").strip() else ""
    return line if len(line) <= width else line[: width - 3] + "..."


def _where_raised(trace: str | None) -> str:
    """The innermost trtcheck frame and the innermost frame of a formatted traceback."""
    frames = [line.strip() for line in (trace or "").splitlines()
              if line.strip().startswith("File ")]
    ours = [f for f in frames if "/trtcheck/" in f]
    picked = [ours[-1]] if ours else []
    if frames and frames[-1] not in picked:
        picked.append(frames[-1])
    return " | ".join(picked)


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
        "exceptions": [(r.name, r.detail, _where_raised(r.traceback))
                       for r in records if r.kind == EXCEPTION],
        "crashes": [r.name for r in records if r.kind == CRASH],
        "harness_errors": [(r.name, r.detail, _where_raised(r.traceback))
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
                    line(f"    {case}: {_first_line(message)}")
    if summary["exceptions"]:
        line()
        line("Unhandled exceptions escaping run_pipeline:")
        for case, detail, where in summary["exceptions"]:
            line(f"  {case}: {_first_line(detail)}")
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
            line(f"  {case}: {_first_line(detail)}  at {where}")
    for title, key in (("Inputs not loadable", "inputs_not_loadable"),):
        if summary[key]:
            line()
            line(f"{title}:")
            for case, detail in summary[key]:
                line(f"  {case}: {_first_line(detail)}")
    for title, key in (("Timed out", "timed_out"), ("Nondeterministic originals",
                                                    "nondeterministic"),
                       ("Input model modified by run_pipeline", "input_mutated")):
        if summary[key]:
            line()
            line(f"{title}: " + ", ".join(summary[key]))
    return out.getvalue().rstrip("\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, help="run only the first N (matching) cases")
    parser.add_argument("--filter", help="run only cases whose name contains SUBSTRING",
                        metavar="SUBSTRING")
    parser.add_argument("--json", type=Path, metavar="OUT",
                        help="write the summary and every case's record to OUT")
    args = parser.parse_args(argv)

    started = time.perf_counter()
    jobs = load_jobs(args.filter, args.limit)
    print(f"running the pass pipeline on {len(jobs)} node test case(s), {WORKERS} workers",
          file=sys.stderr, flush=True)
    records = run_all(jobs, TIMEOUT, progress=True)
    summary = summarize(records, time.perf_counter() - started)
    print(render(summary))
    if args.json:
        args.json.write_text(json.dumps(
            {"summary": summary, "cases": [asdict(record) for record in records]},
            indent=1, default=str) + "\n")
    failed = summary["exceptions"] or summary["crashes"] or summary["numeric_changes"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
