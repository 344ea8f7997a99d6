"""The one place that runs a backend: comparisons, bisection probes and graph passes all come here.

One error policy for every run:
- a `TrtcheckError` (TensorRT missing, a bad plan) keeps its message and hint;
- anything else (ONNX Runtime's and Polygraphy's own exception types) becomes one
  `BackendRunError` line naming the backend and what failed; an exception with an empty message
  is named by its type.

Marked intermediate tensors are returned too (`marking` says which tensors a run can return and
marks them on a copy of the model).
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from trtcheck.errors import BackendRunError, TrtcheckError
from trtcheck.progress import step

if TYPE_CHECKING:
    import onnx

    from trtcheck.backend_names import Backend
    from trtcheck.backends import BackendOptions
    from trtcheck.inputs import Feeds
    from trtcheck.model import LoadedModel

Feed = dict[str, np.ndarray]
Activations = dict[str, np.ndarray]


@contextlib.contextmanager
def quiet_polygraphy(verbose: bool = False) -> Iterator[None]:
    """Keeps Polygraphy's own log off the terminal; trtcheck reports the results itself."""
    from polygraphy.logger import G_LOGGER

    previous = G_LOGGER.module_severity
    G_LOGGER.module_severity = G_LOGGER.INFO if verbose else G_LOGGER.CRITICAL
    try:
        yield
    finally:
        G_LOGGER.module_severity = previous


def first_line(err: BaseException) -> str:
    """The first line of an exception's message, or its type when the message is empty."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _run_error(backend_name: str, what: str, err: BaseException,
               hint: str = "; --verbose shows the traceback") -> TrtcheckError:
    if isinstance(err, TrtcheckError):
        return err
    return BackendRunError(f"{backend_name}: {what}: {first_line(err)}{hint}")


@dataclass(frozen=True)
class BackendRun:
    """One run of one backend on every feed: what `run_backend` takes."""

    model: LoadedModel
    backend: Backend
    options: BackendOptions
    iterations: Sequence[Feed]
    name: str
    mark: Sequence[str] = ()


def run_backend(model: LoadedModel, backend: Backend, options: BackendOptions,
                iterations: Sequence[Feed], name: str,
                mark: Sequence[str] = ()) -> tuple[str, list[Any]]:
    """Runs `backend` on every feed; returns its RunResults entry (runner name, iterations).

    `mark` names intermediate tensors to return besides the model's outputs. The run happens in
    a child process with a timeout (`trtcheck.isolation`): a crash or a hang becomes an error.
    """
    return run_backends([BackendRun(model, backend, options, iterations, name, mark)])[0]


def run_backends(runs: Sequence[BackendRun]) -> list[tuple[str, list[Any]]]:
    """`run_backend` for each of `runs`, in order, in one child process (one fork for all).

    Each run keeps its own timeout and its own name in a crash's message. Leading runs that a
    child `started_early` covers run there while this process prepares the others (an emulated
    model, say), which then run in a child of their own once that one has answered.
    """
    from trtcheck import isolation

    started, count = _take_started(runs)
    rest = runs[count:]
    if started is not None:
        # `meanwhile` work waits for the last child, the longer wait when there are others.
        started.send(runs[0].iterations, meanwhile=not rest)
        if not rest:
            return started.result()
        try:
            arguments = _prepared(rest)
        except BaseException:
            started.cancel()
            raise
        early = started.result(meanwhile=False)
    else:
        arguments, early = _prepared(rest), []
    if not rest:
        return early
    return early + isolation.call_each(_run_backend_here, arguments,
                                       [f"{run.backend.name} ({run.name})" for run in rest])


def _prepared(runs: Sequence[BackendRun]) -> list[tuple]:
    """`_run_backend_here`'s arguments for each run, with its session's model built here."""
    from trtcheck.backends import prepare_in_parent

    arguments = []
    for run in runs:
        try:
            source = prepare_in_parent(run.model, run.backend, run.options, run.mark)
        except Exception as err:
            raise _run_error(run.backend.name, "could not build", err) from err
        arguments.append((run.model, run.backend, run.options, run.iterations, run.name,
                          run.mark, source))
    return arguments


def _run_backend_here(model: LoadedModel, backend: Backend, options: BackendOptions,
                      iterations: Sequence[Feed], name: str, mark: Sequence[str],
                      source: bytes | str | None) -> tuple[str, list[Any]]:
    from polygraphy.comparator import Comparator

    from trtcheck.backends import make_runner

    try:
        runner = make_runner(model, backend, options, name, mark=mark, source=source)
    except Exception as err:
        raise _run_error(backend.name, "could not build", err) from err
    try:
        results = Comparator.run([runner], data_loader=list(iterations))
    except Exception as err:
        raise _run_error(backend.name, "failed to run the model", err) from err
    ((runner_name, ran),) = results.items()
    return runner_name, ran


# Children started before the model was loaded, by the runs they cover: (the model file, backend,
# providers, runner name) -> the child and how many leading runs it covers.
_STARTED: ContextVar[dict[tuple[str, ...], Any] | None] = ContextVar("trtcheck_started",
                                                                      default=None)


# The backend `started_early` runs: fp32 ONNX Runtime, which reads the model file itself.
EARLY_BACKEND = "onnxrt"


@contextlib.contextmanager
def started_early(path: Path, runner_names: Sequence[str], providers: Sequence[str] = ("cpu",),
                  verbose: bool = False) -> Iterator[None]:
    """Starts `EARLY_BACKEND` runs of the model file `path` now, before the model is loaded.

    ONNX Runtime reads the file itself, so a child imports it and builds its sessions while
    this process imports, loads, validates and feeds the model (0.4 s of BERT-base's start-up);
    `run_backends` hands that child the feeds when it reaches the runs named here. Nothing heavy
    is imported before the fork. A child not used by the end of the block is stopped.
    """
    from trtcheck import isolation

    started = None
    if runner_names and Path(path).is_file():
        what = ", ".join(f"{EARLY_BACKEND} ({name})" for name in runner_names)
        started = isolation.start(_sessions, str(path), tuple(runner_names), tuple(providers),
                                  verbose, what=what)
    if started is None:
        yield
        return
    keys = [_started_key(path, EARLY_BACKEND, providers, n) for n in runner_names]
    token = _STARTED.set({**(_STARTED.get() or {}), keys[0]: (started, keys)})
    try:
        yield
    finally:
        _STARTED.reset(token)
        started.cancel()


def _started_key(path: Path, backend: str, providers: Sequence[str], name: str
                 ) -> tuple[str, ...]:
    return (str(Path(path).resolve()), backend, ",".join(providers), name)


def _take_started(runs: Sequence[BackendRun]) -> tuple[Any, int]:
    """The child started for the leading runs of `runs`, and how many it covers (once only)."""
    if not runs or runs[0].mark:
        return None, 0
    first, started_runs = runs[0], _STARTED.get() or {}
    if any(run.backend.name != EARLY_BACKEND for run in runs[:1]):
        return None, 0
    entry = started_runs.get(_started_key(first.model.path, first.backend.name,
                                          first.options.providers, first.name))
    if entry is None:
        return None, 0
    started, keys = entry
    covered = [_started_key(r.model.path, r.backend.name, r.options.providers, r.name)
               for r in runs[:len(keys)] if not r.mark]
    if covered != keys:
        return None, 0
    del started_runs[keys[0]]
    return started, len(keys)


@contextlib.contextmanager
def _stderr_dropped(drop: bool) -> Iterator[None]:
    """Drops what is written to file descriptor 2 (ONNX Runtime's own C++ log) inside the block.

    A child started early reads a model not yet validated: ONNX Runtime would log a broken
    model's error before trtcheck reports it in one line (the checker's, or the session's).
    """
    if not drop:
        yield
        return
    import os

    saved = os.dup(2)
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _sessions(path: str, names: tuple[str, ...], providers: tuple[str, ...], verbose: bool):
    """In a child started early: builds each run's ONNX Runtime session; returns the run."""
    from trtcheck.backends import BackendOptions, _onnxrt_runner

    options = BackendOptions(providers=providers)

    def build(name: str) -> Any:
        try:
            return _onnxrt_runner(path, options, name, now=True)
        except Exception as err:
            raise _run_error(EARLY_BACKEND, "could not build", err) from err

    # One after the other: in threads (ONNX Runtime releases the GIL) they compete for the
    # cores with this process's parent, which loads and checks the model meanwhile, and were no
    # faster on BERT-base with 2 cores.
    with quiet_polygraphy(verbose), _stderr_dropped(not verbose):
        runners = [build(name) for name in names]

    def run(iterations: Sequence[Feed]) -> list[tuple[str, list[Any]]]:
        from polygraphy.comparator import Comparator

        try:
            with quiet_polygraphy(verbose):
                results = Comparator.run(runners, data_loader=list(iterations))
        except Exception as err:
            raise _run_error(EARLY_BACKEND, "failed to run the model", err) from err
        return list(results.items())

    return run


def run_marked(model: LoadedModel, backend: Backend, options: BackendOptions, feed: Feed,
               mark: Sequence[str], name: str) -> Activations:
    """One run of `backend` on one feed with `mark` returned too: name -> array."""
    with step(f"{name}: {backend.name}, {len(mark)} tensor(s) marked"):
        _, ran = run_backend(model, backend, options, [feed], name, mark)
    return {key: np.asarray(value) for key, value in ran[0].items()}


# ONNX Runtime settings whose outputs differ from the default's by rounding only: the same model
# run again, and with fewer graph optimizations (other fusions and kernels). A graph pass changes
# which fusions and kernels ONNX Runtime picks in the same way, so the spread across these is
# the noise a pass's verification must allow (`passes.pipeline`).
ORT_SETTINGS = {"default": "ORT_ENABLE_ALL", "rerun": "ORT_ENABLE_ALL",
                "basic": "ORT_ENABLE_BASIC", "disabled": "ORT_DISABLE_ALL"}


def run_onnx(model: onnx.ModelProto, iterations: Sequence[Feed],
             weights_folder: Path | None = None) -> list[Activations]:
    """ONNX Runtime on CPU straight from a proto, for verifying graph passes (no Polygraphy).

    `weights_folder` holds the external data the model refers to (`model.offload_weights`).
    Raises `BackendRunError`; callers that expect failures (a pass that broke the model) catch it.
    """
    return run_onnx_settings(model, iterations, ("default",), weights_folder)["default"]


def run_onnx_settings(model: onnx.ModelProto, iterations: Sequence[Feed],
                      settings: Sequence[str],
                      weights_folder: Path | None = None) -> dict[str, list[Activations]]:
    """`run_onnx` under each of `settings` (names in `ORT_SETTINGS`), in one child process."""
    from trtcheck import isolation
    from trtcheck.atomic import session_file

    with session_file(model, weights_folder) as source:
        return isolation.call(_run_onnx_here, source, iterations, tuple(settings),
                              what="onnxrt (graph pass check)")


def _run_onnx_here(source: bytes | str, iterations: Sequence[Feed],
                   settings: tuple[str, ...]) -> dict[str, list[Activations]]:
    import onnxruntime

    onnxruntime.set_default_logger_severity(3)
    sessions: dict[str, Any] = {}
    results: dict[str, list[Activations]] = {}
    for setting in settings:
        level = ORT_SETTINGS[setting]
        try:
            if level not in sessions:
                options = onnxruntime.SessionOptions()
                options.graph_optimization_level = getattr(onnxruntime.GraphOptimizationLevel,
                                                           level)
                sessions[level] = onnxruntime.InferenceSession(
                    source, options, providers=["CPUExecutionProvider"])
            session = sessions[level]
            names = [output.name for output in session.get_outputs()]
            results[setting] = [dict(zip(names, session.run(names, feed), strict=True))
                                for feed in iterations]
        except Exception as err:
            if setting == settings[0]:
                raise _run_error("onnxrt", "failed to run the model", err, hint="") from err
            # The other settings only measure noise; one that cannot run measures nothing.
    return results


def feeds_key(iterations: Sequence[Feed]) -> str:
    digest = hashlib.sha256()
    for feed in iterations:
        for name, array in sorted(feed.items()):
            digest.update(name.encode())
            digest.update(str(array.dtype).encode() + str(array.shape).encode())
            digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


class ReferenceCache:
    """Reference runs kept for reuse: every target of a suite case shares one reference run."""

    def __init__(self) -> None:
        self._runs: dict[tuple[object, ...], tuple[str, list[Any]]] = {}

    def get_or_run(self, model: LoadedModel, backend: Backend, options: BackendOptions,
                   feeds: Feeds, name: str) -> tuple[str, list[Any]]:
        reference = BackendRun(model, backend, options, feeds.iterations, name)
        key = self._key(reference)
        if key not in self._runs:
            self._runs[key] = run_backends([reference])[0]
        return self._runs[key]

    def run_with(self, reference: BackendRun, target: BackendRun
                 ) -> tuple[tuple[str, list[Any]], tuple[str, list[Any]]]:
        """The reference's run (reused when kept) and the target's, in one child process."""
        key = self._key(reference)
        if key in self._runs:
            return self._runs[key], run_backends([target])[0]
        self._runs[key], ran = run_backends([reference, target])
        return self._runs[key], ran

    @staticmethod
    def _key(run: BackendRun) -> tuple[object, ...]:
        # The file's identity, not its sha256: hashing a large model before the run would cost
        # as much as loading it (`LoadedModel.sha256` is computed while the backends run).
        stat = run.model.path.stat()
        return (str(run.model.path.resolve()), stat.st_size, stat.st_mtime_ns, run.backend.name,
                ",".join(run.options.providers), feeds_key(run.iterations), run.name)
