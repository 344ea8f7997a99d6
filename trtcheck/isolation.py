"""Backend runs in a child process: a crash or a hang is one item's error, not the run's end.

TensorRT engine builds do crash (SIGSEGV, SIGABRT) and ONNX Runtime can hang; in-process either
would take the whole CLI or pytest session down with no report. Every run therefore happens in a
forked child with a timeout:

- fork, not spawn: the child inherits the loaded model, the feeds and the imported libraries, so
  nothing is serialised on the way in and start-up costs a fork (milliseconds), not an import.
  The parent itself never initialises CUDA (only children run TensorRT), which is what makes
  forking safe for TensorRT.
- results come back once over a pipe as pickle protocol 5 with out-of-band buffers: each array
  is received straight into its own writable buffer, with no intermediate copy of the message.
- a child killed by a signal, one that exits without answering, and one that exceeds the timeout
  each become a `BackendCrashError` naming the signal or the timeout; the child is killed and
  reaped on every way out of the parent (timeout, Ctrl-C, SIGTERM turned into an exception),
  and on Linux it also dies with its parent (PR_SET_PDEATHSIG), so no engine build outlives a
  killed gate.

`multiprocessing` supplies the process and pipe handling; what it lacks (`Pool` and
`ProcessPoolExecutor` cannot kill one hung call, and turn a dead worker into a generic
BrokenProcessPool that forgets the signal) is the part written here.

Where fork is unavailable (Windows, macOS default), or with `--in-process`, runs stay in-process.
"""

from __future__ import annotations

import contextlib
import contextvars
import faulthandler
import multiprocessing
import os
import pickle
import signal
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any, TypeVar

from trtcheck.errors import BackendRunError, TrtcheckError

T = TypeVar("T")

# Long enough for a TensorRT engine build of a large model with fp16 tactics; a hang is caught
# within this time, a legitimately slow run needs --timeout (or `timeout` in the suite).
DEFAULT_TIMEOUT = 1800.0
_LONGEST_WAIT = 86400.0


class BackendCrashError(BackendRunError):
    """A backend process that was killed by a signal, exited without a result, or timed out."""


@dataclass(frozen=True)
class Isolation:
    """How backend runs are isolated: in a child process (with a timeout) or in-process."""

    enabled: bool = True
    timeout: float = DEFAULT_TIMEOUT


_SETTINGS: contextvars.ContextVar[Isolation] = contextvars.ContextVar(
    "trtcheck_isolation", default=Isolation())  # noqa: B039 - frozen, hence immutable


@contextlib.contextmanager
def isolation(enabled: bool | None = None, timeout: float | None = None) -> Iterator[Isolation]:
    """Sets how runs inside the block are isolated; None keeps the current setting."""
    current = _SETTINGS.get()
    settings = Isolation(current.enabled if enabled is None else enabled,
                         current.timeout if timeout is None else timeout)
    token = _SETTINGS.set(settings)
    try:
        yield settings
    finally:
        _SETTINGS.reset(token)


def fork_available() -> bool:
    return sys.platform.startswith("linux") and "fork" in multiprocessing.get_all_start_methods()


# Work the parent does while a child runs (imports it needs next): see `meanwhile`.
_MEANWHILE: contextvars.ContextVar[tuple[Callable[[], object], ...]] = contextvars.ContextVar(
    "trtcheck_meanwhile", default=())


@contextlib.contextmanager
def meanwhile(*work: Callable[[], object]) -> Iterator[None]:
    """Work for this process to do ahead of time while a backend child runs, in order.

    The parent only waits for its child, so what it needs afterwards (the report's imports, the
    model's hash) costs no wall time when done then, on another core. Each item runs at most
    once and only while the child is still working: what is left when the child answers is not
    done here (whoever needs it does it then), so it never delays a result. Errors are ignored:
    an item fails again where it is needed.
    """
    token = _MEANWHILE.set(_MEANWHILE.get() + work)
    try:
        yield
    finally:
        _MEANWHILE.reset(token)


# While a `meanwhile` item runs: whether the child still works. An item that can stop halfway
# (hashing a large file) asks it between steps, so that it never delays a result.
_STILL_BUSY: contextvars.ContextVar[Callable[[], bool]] = contextvars.ContextVar(
    "trtcheck_still_busy", default=lambda: False)


def still_busy() -> bool:
    """In a `meanwhile` item: True while the child it overlaps still works."""
    return _STILL_BUSY.get()()


def _do_meanwhile(busy: Callable[[], bool]) -> None:
    """Does the pending `meanwhile` work item by item while `busy()` (the child still works)."""
    work = list(_MEANWHILE.get())
    token = _STILL_BUSY.set(busy)
    try:
        while work and busy():
            item = work.pop(0)
            _MEANWHILE.set(tuple(work))
            with contextlib.suppress(Exception):
                item()
    finally:
        _STILL_BUSY.reset(token)


def call(func: Callable[..., T], *args: Any, what: str) -> T:
    """`func(*args)` in a child process under the current settings; `what` names the run.

    Exceptions raised by `func` in the child come back as they are when they are trtcheck errors
    (their one-line message and exit code survive), otherwise as a `BackendRunError` line.
    """
    return call_each(func, [args], [what])[0]


def call_each(func: Callable[..., T], arguments: Sequence[tuple], whats: Sequence[str]) -> list[T]:
    """`func(*args)` for each of `arguments`, in order, in one child process.

    One fork instead of one per call (about 10 ms of CPU and 25 ms of wall time each on a small
    model). Each call has its own timeout, and a crash is reported under the `whats` of the call
    that was running; the first error stops the rest.
    """
    settings = _SETTINGS.get()
    if not settings.enabled or not fork_available():
        return [func(*args) for args in arguments]
    return _call_in_child(func, tuple(arguments), tuple(whats), settings.timeout)


class Started:
    """A child forked ahead of its arguments: it ran `prepare(*args)` and waits for the rest.

    `send(*rest)` hands it the rest, `result()` waits for its answer (the call's own timeout
    counts from `send`); `cancel()` stops a child that is not needed after all.
    """

    def __init__(self, child: Any, connection: Connection, what: str, timeout: float) -> None:
        self._child, self._connection = child, connection
        self.what, self._timeout = what, timeout
        self._sent_at: float | None = None
        self._ready = False

    def send(self, *args: Any, meanwhile: bool = True) -> None:
        """Hands the child the rest of its arguments; `meanwhile` work is done while it prepares.

        Arguments that fit in the connection's buffer go at once, and the work is done after
        (by `result`): the child starts the moment it is prepared. Larger ones block until the
        child reads them, which it does only when prepared: the work goes first then.
        """
        try:
            message = _encoded(("args", args))
            if meanwhile and _encoded_size(message) > _BUFFERED_BYTES:
                _do_meanwhile(lambda: not self._connection.poll(0))
            if self._connection.poll(0):
                self._ready = _receive(self._connection)[0] == "ready"
            _send_encoded(self._connection, message)
        except (OSError, EOFError):
            pass  # a child that died is reported by `result`
        self._sent_at = time.monotonic()

    def result(self, meanwhile: bool = True) -> Any:
        """The child's answer: what `prepare` returned, called on the arguments sent."""
        assert self._sent_at is not None, "send() first"
        deadline = self._sent_at + self._timeout
        try:
            if meanwhile:
                _do_meanwhile(lambda: not self._connection.poll(0))
            status, payload = _answer(self._connection, self._child, self.what, deadline,
                                      self._timeout)
            if status == "ready" and not self._ready:
                status, payload = _answer(self._connection, self._child, self.what, deadline,
                                          self._timeout)
        except BaseException:
            self.cancel()
            raise
        self._connection.close()
        if status == "error":
            raise payload
        return payload

    def cancel(self) -> None:
        self._connection.close()
        if self._child.is_alive():
            self._child.kill()
            self._child.join()


def start(prepare: Callable[..., Callable[..., Any]], *args: Any, what: str) -> Started | None:
    """Forks a child now that runs `prepare(*args)`, then waits for the rest of its arguments.

    What `prepare` returns is then called on them (`Started.send`), and its answer comes back as
    `call`'s does. Work that needs nothing from the parent (ONNX Runtime reading a model file)
    so runs while the parent still prepares the rest. None where runs are not isolated: the
    caller runs in-process then.
    """
    settings = _SETTINGS.get()
    if not settings.enabled or not fork_available():
        return None
    parent_end, child = _fork(_started_main, (prepare, args), what, duplex=True)
    return Started(child, parent_end, what, settings.timeout)


def _fork(main: Callable[..., None], args: tuple, name: str,
          duplex: bool = False) -> tuple[Connection, Any]:
    """Forks a child running `main(connection, *args)`; returns this side's end and the child."""
    context = multiprocessing.get_context("fork")
    parent_end, child_end = context.Pipe(duplex=duplex)
    # A one-way pipe returns (reader, writer): the parent reads, the child writes.
    child = context.Process(target=main, args=(child_end, *args), daemon=True,
                            name=f"trtcheck: {name}")
    with warnings.catch_warnings():
        # Python 3.12+ warns that forking a multi-threaded process may deadlock the child; the
        # child here only runs the backend and writes to its pipe, never a lock another thread
        # may hold (the progress spinner's console).
        warnings.simplefilter("ignore", DeprecationWarning)
        child.start()
    child_end.close()
    return parent_end, child


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _call_in_child(func: Callable[..., T], arguments: tuple[tuple, ...], whats: tuple[str, ...],
                   timeout: float) -> list[T]:
    receiver, child = _fork(_child_main, (func, arguments), ", ".join(whats))
    deadline = time.monotonic() + timeout
    answered = False
    results: list[T] = []
    try:
        _do_meanwhile(lambda: not receiver.poll(0))
        for what in whats:
            status, payload = _answer(receiver, child, what, deadline, timeout)
            # After an error the child sends nothing more and exits by itself.
            answered = status == "error" or len(results) == len(whats) - 1
            if status == "error":
                raise payload
            results.append(payload)
            deadline = time.monotonic() + timeout
        return results
    finally:
        receiver.close()
        if not answered:
            if child.is_alive():
                child.kill()
            child.join()
        # A child that answered is exiting; tearing down a large address space takes tens of
        # ms, so it is not waited for here: multiprocessing reaps it at the next start or exit.


def _answer(receiver: Connection, child: Any, what: str, deadline: float,
            timeout: float) -> tuple[str, Any]:
    """The child's answer for one call: ("ok", result) or ("error", exception it raised).

    A child that died or ran past `deadline` raises `BackendCrashError` naming `what`.
    """
    ready: list = []
    # poll() takes at most 2**31-1 ms (about 24 days); a longer --timeout waits in steps.
    while not ready and (remaining := deadline - time.monotonic()) > 0:
        ready = wait([receiver, child.sentinel], min(remaining, _LONGEST_WAIT))
    # A child that answered and then exited makes both ready: the answer is read first.
    if receiver in ready:
        try:
            status, payload = _receive(receiver)
        except (EOFError, OSError):
            status, payload = "died", None
    elif ready:
        status, payload = "died", None
    else:
        status, payload = "timeout", None
    if status == "died":
        child.join(max(0.0, min(5.0, deadline - time.monotonic())))
        raise BackendCrashError(_death_message(what, child.exitcode))
    if status == "timeout":
        raise BackendCrashError(
            f"{what}: timed out after {timeout:g} s and was stopped; a hang in the backend, "
            "or a run that needs longer: raise --timeout (suites: timeout = SECONDS)")
    return status, payload


def _death_message(what: str, exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        name = _signal_name(-exitcode)
        return (f"{what}: the backend process was killed by signal {name} ({-exitcode}); "
                "this is a crash inside the backend (TensorRT or ONNX Runtime), not a mismatch; "
                "--in-process --verbose runs it in trtcheck's own process to debug it")
    return (f"{what}: the backend process exited with status {exitcode} without a result; "
            "--in-process --verbose runs it in trtcheck's own process to debug it")


# --- the child's side -------------------------------------------------------------------------

def _die_with_parent() -> None:
    """Linux: the kernel kills this child when its parent dies, even by SIGKILL."""
    with contextlib.suppress(Exception):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL)


# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4


def _keep_freed_memory() -> None:
    """glibc: serves large allocations from the heap and keeps what is freed for reuse.

    ONNX Runtime builds a session by copying the weights several times over (the file's
    bytes, the parsed proto, the tensors, prepacked copies), each copy a fresh large block
    that glibc maps with mmap and unmaps when freed, so that every page of the next copy is
    faulted in and zeroed again: half of building BERT-base's two sessions was kernel time
    (0.59 s of 1.0 s). A child lives for one call and exits, so it keeps its freed memory
    instead: the two sessions took 0.66 s, at a lower peak (580 MB against 677 MB), the second
    one reusing the first one's pages. Only children: a parent (a pytest session) lives long.
    """
    with contextlib.suppress(Exception):
        import ctypes

        mallopt = ctypes.CDLL(None).mallopt
        mallopt(_M_MMAP_MAX, 0)
        mallopt(_M_TRIM_THRESHOLD, 2**31 - 1)


def _child_main(sender: Connection, func: Callable[..., Any], arguments: tuple[tuple, ...]
                ) -> None:
    _child_setup()
    try:
        for args in arguments:
            if not _answer_one(sender, func, args):
                break
    finally:
        _child_exit(sender)


def _started_main(connection: Connection, prepare: Callable[..., Callable[..., Any]],
                  args: tuple) -> None:
    _child_setup()
    try:
        try:
            then = prepare(*args)
        except BaseException as err:  # noqa: BLE001 - answered once the arguments arrive
            failure = err

            def then(*_rest: Any) -> Any:
                raise failure
        _send(connection, ("ready", None))
        _, rest = _receive(connection)
        _answer_one(connection, then, rest)
    finally:
        _child_exit(connection)


def _child_setup() -> None:
    # Ctrl-C reaches the whole process group: the parent handles it and stops this child.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _die_with_parent()
    _keep_freed_memory()
    # pytest's faulthandler, inherited, would print a Python stack for a crash that the parent
    # reports in one line; --in-process shows it where it helps.
    faulthandler.disable()
    # Fresh stream objects on the same descriptors: the inherited ones (a rich live display's
    # proxies, buffered writers) may have been locked by another thread at the fork, and the
    # backend's own log (Polygraphy's, with --verbose) must not wait on a lock nobody releases.
    sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115 - lives until _exit
    sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115


def _child_exit(connection: Connection) -> None:
    connection.close()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    # No atexit handlers, no flushing of buffers inherited from the parent.
    os._exit(0)


def _answer_one(sender: Connection, func: Callable[..., Any], args: tuple) -> bool:
    """Runs one call and sends its answer; False when it was an error (the rest is not run)."""
    try:
        message: tuple[str, Any] = ("ok", func(*args))
    except TrtcheckError as err:
        message = ("error", err)
    except BaseException as err:  # noqa: BLE001 - anything the backend raised becomes one line
        from trtcheck.run import first_line

        message = ("error", BackendRunError(f"{first_line(err)}; --verbose shows the traceback"))
    try:
        _send(sender, message)
    except Exception as err:  # noqa: BLE001 - e.g. an error that does not pickle
        _send(sender, ("error", BackendRunError(f"could not return the result: {err}")))
        return False
    return message[0] == "ok"


# What a connection takes without blocking, well under a socket pair's buffer on Linux.
_BUFFERED_BYTES = 32 * 1024


def _encoded(message: tuple[str, Any]) -> tuple[bytes, list[memoryview]]:
    """The message as pickle-5 bytes and its out-of-band buffers (arrays, not copied)."""
    buffers: list[pickle.PickleBuffer] = []
    header = pickle.dumps(message, protocol=5, buffer_callback=buffers.append)
    return header, [buffer.raw() for buffer in buffers]


def _encoded_size(encoded: tuple[bytes, list[memoryview]]) -> int:
    header, raws = encoded
    return len(header) + sum(raw.nbytes for raw in raws)


def _send_encoded(sender: Connection, encoded: tuple[bytes, list[memoryview]]) -> None:
    header, raws = encoded
    sender.send((header, [raw.nbytes for raw in raws]))
    for raw in raws:
        sender.send_bytes(raw)


def _send(sender: Connection, message: tuple[str, Any]) -> None:
    _send_encoded(sender, _encoded(message))


def _receive(receiver: Connection) -> tuple[str, Any]:
    header, sizes = receiver.recv()
    buffers = []
    for size in sizes:
        buffer = bytearray(size)
        if size:
            receiver.recv_bytes_into(buffer)
        else:
            receiver.recv_bytes()
        buffers.append(buffer)
    return pickle.loads(header, buffers=buffers)
