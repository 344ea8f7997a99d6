"""Shared by the benches over onnx's backend node tests: cases, their inputs, a worker pool.

Cases come from `onnx.backend.test.loader.load_model_tests(kind="node")`: recent onnx builds
them in memory (`.model` and `.data_sets`); a case with a `.model_dir` is read from
model.onnx and test_data_set_0/input_*.pb instead (tensors, sequences, optionals and maps).

`run_all` runs one function per case in a pool of `WORKERS` spawned processes: a case over the
time limit has its worker killed, and a case that kills its worker is found by rerunning the
cases that were running beside it one at a time.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import multiprocessing
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import onnx
from onnx import numpy_helper

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a script from anywhere: trtcheck from this checkout
    sys.path.insert(0, str(REPO))

WORKERS = 2  # the machine these benches were written for has 2 cores
MAX_TASKS_PER_CHILD = 200  # bounds memory growth of long-lived workers

# Why a case has no result of its own (the `lost` callback of `run_all`).
TIMEOUT_KIND = "timed out"
CRASH = "worker crashed"

R = TypeVar("R")


@dataclass
class Job:
    index: int
    name: str
    model_dir: str | None = None
    model_bytes: bytes | None = None
    inputs: list[Any] | None = None  # in-memory values of data set 0, in graph input order
    alone: bool = False  # rerun on its own after a worker died beside it


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


def load_jobs(filter_text: str | None, limit: int | None) -> list[Job]:
    """One job per node test case whose name contains `filter_text`, at most `limit`."""
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


# --------------------------------------------------------------------------- running


def ort_outputs(model: onnx.ModelProto, feeds: dict[str, Any]) -> dict[str, Any]:
    """Runs `model` once on ONNX Runtime's CPU provider; outputs by name, in graph order."""
    import onnxruntime

    session = onnxruntime.InferenceSession(model.SerializeToString(),
                                           providers=["CPUExecutionProvider"])
    names = [output.name for output in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds), strict=True))


def init_worker() -> None:
    import onnxruntime
    from onnx_graphsurgeon.logger import G_LOGGER

    onnxruntime.set_default_logger_severity(3)
    G_LOGGER.severity = G_LOGGER.CRITICAL
    warnings.filterwarnings("ignore")
    np.seterr(all="ignore")


def _new_pool() -> cf.ProcessPoolExecutor:
    # spawn: workers start clean, without the parent's threads; each reimports once.
    return cf.ProcessPoolExecutor(WORKERS, mp_context=multiprocessing.get_context("spawn"),
                                  initializer=init_worker,
                                  max_tasks_per_child=MAX_TASKS_PER_CHILD)


def _kill_pool(pool: cf.ProcessPoolExecutor) -> None:
    """Kills this pool's own worker processes (by their Process objects) and drops the pool."""
    processes = list((pool._processes or {}).values())  # the executor keeps no public handle
    for process in processes:
        process.kill()
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        process.join(5)


def run_all(jobs: list[Job], run_case: Callable[[Job], R], timeout: float, progress: bool,
            lost: Callable[[Job, str, str, float], R]) -> list[R]:
    """Runs `run_case` (a module-level function) on jobs, at most WORKERS at a time.

    A job's start is its submission time. A job over `timeout` gets its worker killed; jobs
    that were running beside it are resubmitted. When a worker dies, the jobs that were running
    are rerun one at a time, so the one that kills its worker is found. A job without a result
    gets `lost(job, kind, detail, seconds)` with kind TIMEOUT_KIND or CRASH.
    """
    queue = collections.deque(jobs)
    solo: collections.deque[Job] = collections.deque()
    records: dict[int, R] = {}
    running: dict[cf.Future[R], tuple[Job, float]] = {}
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
                        records[job.index] = lost(job, CRASH, "the worker process died", 0.0)
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
                    records[job.index] = lost(job, TIMEOUT_KIND, f"over {timeout:g} s",
                                              now - start)
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


# --------------------------------------------------------------------------- report helpers


def first_line(text: str | None, width: int = 180) -> str:
    line = (text or "").strip().splitlines()[0] if (text or "").strip() else ""
    return line if len(line) <= width else line[: width - 3] + "..."


def where_raised(trace: str | None) -> str:
    """The innermost trtcheck frame and the innermost frame of a formatted traceback."""
    frames = [line.strip() for line in (trace or "").splitlines()
              if line.strip().startswith("File ")]
    ours = [f for f in frames if "/trtcheck/" in f]
    picked = [ours[-1]] if ours else []
    if frames and frames[-1] not in picked:
        picked.append(frames[-1])
    return " | ".join(picked)


def bench_main(argv: list[str] | None, description: str, what: str,
               run_case: Callable[[Job], R], timeout: float, lost: Callable[..., R],
               summarize: Callable[[list[R], float], dict[str, Any]],
               render: Callable[[dict[str, Any]], str]) -> dict[str, Any]:
    """The command line both node-test benches share: select cases, run them, print, save."""
    import argparse
    import json
    from dataclasses import asdict

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--limit", type=int, help="run only the first N (matching) cases")
    parser.add_argument("--filter", help="run only cases whose name contains SUBSTRING",
                        metavar="SUBSTRING")
    parser.add_argument("--json", type=Path, metavar="OUT",
                        help="write the summary and every case's record to OUT")
    args = parser.parse_args(argv)

    started = time.perf_counter()
    jobs = load_jobs(args.filter, args.limit)
    print(f"running {what} on {len(jobs)} node test case(s), {WORKERS} workers",
          file=sys.stderr, flush=True)
    records = run_all(jobs, run_case, timeout, progress=True, lost=lost)
    summary = summarize(records, time.perf_counter() - started)
    print(render(summary))
    if args.json:
        args.json.write_text(json.dumps(
            {"summary": summary, "cases": [asdict(record) for record in records]},
            indent=1, default=str) + "\n")
    return summary
