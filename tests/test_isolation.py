"""Backend runs in a child process: real crashes and hangs become one item's error.

The faults are real: the child process really dies by SIGSEGV (a NULL read through ctypes) or
SIGABRT, or really never returns. They are planted in ONNX Runtime's Polygraphy runner, which the
forked child inherits, so the crash happens where a TensorRT or ONNX Runtime crash would.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from trtcheck import isolation
from trtcheck.backend_names import get_backend
from trtcheck.backends import BackendOptions
from trtcheck.core import CompareRequest, compare_model
from trtcheck.errors import BackendRunError, InputDataError
from trtcheck.model import load_model
from trtcheck.run import run_backend

pytestmark = pytest.mark.skipif(not isolation.fork_available(),
                                reason="backend isolation forks; this platform has no fork")

ZOO = Path(__file__).resolve().parents[1] / "zoo"
DEMO = ZOO / "demo.onnx"


def _segfault(*_args, **_kwargs):
    import ctypes

    ctypes.string_at(0)


def _abort(*_args, **_kwargs):
    os.abort()


def _hang(*_args, **_kwargs):
    time.sleep(3600)


@pytest.fixture
def demo() -> Path:
    if not DEMO.exists():
        subprocess.run([sys.executable, "-m", "zoo.build"], check=True,
                       cwd=ZOO.parent, capture_output=True)
    return DEMO


@pytest.fixture
def planted(monkeypatch):
    """Plants a fault in ONNX Runtime's runner; only forked children ever execute it."""
    from polygraphy.backend.onnxrt import OnnxrtRunner

    def plant(fault):
        monkeypatch.setattr(OnnxrtRunner, "infer_impl", fault)

    return plant


@pytest.mark.parametrize(("fault", "signal_name"), [(_segfault, "SIGSEGV"), (_abort, "SIGABRT")])
def test_a_crashing_backend_is_an_error_naming_the_signal(demo, planted, fault, signal_name):
    planted(fault)
    with pytest.raises(isolation.BackendCrashError, match=f"killed by signal {signal_name}") as err:
        compare_model(CompareRequest(model=demo, target="onnxrt-fp16"))
    assert err.value.exit_code == 3
    assert "\n" not in str(err.value)


def test_the_parent_survives_and_runs_on(demo, planted, monkeypatch):
    planted(_segfault)
    with pytest.raises(isolation.BackendCrashError):
        compare_model(CompareRequest(model=demo, target="onnxrt-fp16"))
    monkeypatch.undo()
    result = compare_model(CompareRequest(model=demo, target="onnxrt-fp16"))
    assert [diff.name for diff in result.outputs] == ["scores", "energy"]


def test_a_hanging_backend_is_stopped_at_the_timeout(demo, planted):
    planted(_hang)
    started = time.monotonic()
    with isolation.isolation(timeout=1.5), pytest.raises(isolation.BackendCrashError,
                                                         match=r"timed out after 1\.5 s"):
        compare_model(CompareRequest(model=demo, target="onnxrt-fp16"))
    assert time.monotonic() - started < 30


def test_isolated_results_equal_in_process_results_bit_for_bit(demo):
    model = load_model(demo)
    feed = {"image": np.random.default_rng(0).random((1, 3, 32, 32), dtype=np.float32)}
    backend = get_backend("onnxrt-fp16")
    _, isolated = run_backend(model, backend, BackendOptions(), [feed], "target")
    with isolation.isolation(enabled=False):
        _, in_process = run_backend(model, backend, BackendOptions(), [feed], "target")
    assert isolated[0].keys() == in_process[0].keys()
    for name in isolated[0]:
        np.testing.assert_array_equal(isolated[0][name], in_process[0][name])
        # Arrays come back writable, as in-process ones are.
        assert np.asarray(isolated[0][name]).flags.writeable


def test_errors_raised_in_the_child_keep_their_type_and_message(demo):
    model = load_model(demo)
    with pytest.raises(BackendRunError, match="onnxrt-fp16: failed to run the model"):
        run_backend(model, get_backend("onnxrt-fp16"), BackendOptions(),
                    [{"image": np.zeros((1, 3, 5, 5), np.float32)}], "target")

    def bad_input(*_args):
        raise InputDataError("image: bad")

    with pytest.raises(InputDataError, match="image: bad"):
        isolation.call(bad_input, what="test")


def test_the_cli_reports_a_crash_in_one_line_with_exit_3(demo, tmp_path):
    script = textwrap.dedent(f"""
        import ctypes, sys
        from polygraphy.backend.onnxrt import OnnxrtRunner
        OnnxrtRunner.infer_impl = lambda *a, **k: ctypes.string_at(0)
        from trtcheck.cli import main
        sys.exit(main(["compare", {str(demo)!r}, "--target", "onnxrt-fp16",
                       "--json", {str(tmp_path / "report.json")!r}]))
    """)
    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                               timeout=120, cwd=tmp_path)
    assert completed.returncode == 3, completed.stderr
    lines = completed.stderr.strip().splitlines()
    assert len(lines) == 1 and "killed by signal SIGSEGV" in lines[0], completed.stderr
    assert "Traceback" not in completed.stderr


def test_a_killed_cli_takes_its_backend_child_with_it(demo, tmp_path):
    """SIGKILL of trtcheck itself leaves no orphaned backend run (PR_SET_PDEATHSIG)."""
    marker = tmp_path / "child.pid"
    script = textwrap.dedent(f"""
        import os, sys, time
        from pathlib import Path
        from polygraphy.backend.onnxrt import OnnxrtRunner
        def hang(*a, **k):
            Path({str(marker)!r}).write_text(str(os.getpid()))
            time.sleep(3600)
        OnnxrtRunner.infer_impl = hang
        from trtcheck.cli import main
        sys.exit(main(["compare", {str(demo)!r}, "--target", "onnxrt-fp16"]))
    """)
    parent = subprocess.Popen([sys.executable, "-c", script], cwd=tmp_path,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert marker.exists(), "the backend child never started"
    child_pid = int(marker.read_text())
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 10
    while _alive(child_pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(child_pid)


def _alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except FileNotFoundError:
        return False
    return status != "Z"


# --- pytest items: a crash or a hang is that item's error, and the session goes on ----------

pytest_plugins = ["pytester"]

CRASH_SUITE = """
[targets.fp16]
backend = "onnxrt-fp16"

[[case]]
name = "crashes"
model = "crash_me.onnx"

[[case]]
name = "hangs"
model = "hang_me.onnx"
timeout = 2

[[case]]
name = "healthy"
model = "healthy.onnx"
"""

# Planted in the pytest process; only the forked backend runs execute it, on the feeds of the
# two faulty models (named by their input).
CRASH_CONFTEST = """
import ctypes, time
from polygraphy.backend.onnxrt import OnnxrtRunner

original = OnnxrtRunner.infer_impl

def infer_impl(self, feed_dict, *args, **kwargs):
    if "crash_me" in feed_dict:
        ctypes.string_at(0)
    if "hang_me" in feed_dict:
        time.sleep(3600)
    return original(self, feed_dict, *args, **kwargs)

OnnxrtRunner.infer_impl = infer_impl
"""


def _relu_model(input_name: str):
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", [input_name], ["y"])], "g",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_a_crashing_and_a_hanging_item_do_not_end_the_session(pytester):
    import onnx

    for name in ("crash_me", "hang_me", "healthy"):
        onnx.save(_relu_model(name), str(pytester.path / f"{name}.onnx"))
    pytester.makefile(".suite.toml", models=CRASH_SUITE)
    pytester.makeconftest(CRASH_CONFTEST)
    # The healthy case's golden first (writing a golden fails its item, by design).
    pytester.runpytest_subprocess("--trtcheck-update-golden-new-only", "-k", "healthy")
    junit = pytester.path / "junit.xml"
    started = time.monotonic()
    result = pytester.runpytest_subprocess(f"--junitxml={junit}", timeout=300)
    assert time.monotonic() - started < 120
    output = result.stdout.str()
    assert "Fatal Python error" not in output + result.stderr.str()
    result.assert_outcomes(passed=1, errors=2)
    assert "killed by signal SIGSEGV" in output
    assert "timed out after 2 s" in output
    text = junit.read_text()
    assert 'tests="3"' in text and "SIGSEGV" in text and "timed out" in text
    summary = json.loads((pytester.path / "artifacts" / "trtcheck" / "summary.json").read_text())
    assert summary["counts"]["crashes"] == 2 and summary["counts"]["passed"] == 1


HANG_SUITE = """
[targets.fp16]
backend = "onnxrt-fp16"

[[case]]
name = "hangs"
model = "hang_me.onnx"
"""


def test_the_pytest_timeout_option_bounds_runs_and_rejects_values_that_disable_it(pytester):
    import onnx

    onnx.save(_relu_model("hang_me"), str(pytester.path / "hang_me.onnx"))
    pytester.makefile(".suite.toml", models=HANG_SUITE)
    pytester.makeconftest(CRASH_CONFTEST)
    result = pytester.runpytest_subprocess("--trtcheck-timeout=1.5", timeout=120)
    result.assert_outcomes(errors=1)
    assert "timed out after 1.5 s" in result.stdout.str()
    for bad in ("inf", "nan", "0", "-3", "soon"):
        refused = pytester.runpytest_subprocess(f"--trtcheck-timeout={bad}", timeout=120)
        assert refused.ret == pytest.ExitCode.USAGE_ERROR, bad
        assert "--trtcheck-timeout" in refused.stderr.str()


def _crash_in_target(self, *args, **kwargs):
    """ONNX Runtime's runner, crashing for the target only (the reference runs first)."""
    if self.name.startswith("target:"):
        _segfault()
    return _ORIGINAL_INFER(self, *args, **kwargs)


def _original_infer():
    from polygraphy.backend.onnxrt import OnnxrtRunner

    return OnnxrtRunner.infer_impl


_ORIGINAL_INFER = _original_infer()


@pytest.fixture
def child_calls(monkeypatch) -> list:
    """The `whats` of every forked child, in order (the real children still run)."""
    calls: list = []
    real = isolation._call_in_child

    def counted(func, arguments, whats, timeout):
        calls.append(whats)
        return real(func, arguments, whats, timeout)

    monkeypatch.setattr(isolation, "_call_in_child", counted)
    return calls


def test_one_child_runs_both_and_a_crash_names_the_run_that_crashed(demo, planted, child_calls):
    calls = child_calls
    result = compare_model(CompareRequest(model=demo, target="onnxrt-fp16"))
    assert [diff.name for diff in result.outputs] == ["scores", "energy"]
    assert calls == [("onnxrt (reference:onnxrt)", "onnxrt-fp16 (target:onnxrt-fp16)")]

    planted(_crash_in_target)
    with pytest.raises(isolation.BackendCrashError,
                       match=r"^onnxrt-fp16 \(target:onnxrt-fp16\): .*SIGSEGV"):
        compare_model(CompareRequest(model=demo, target="onnxrt-fp16"))


def _sleep_then_time(seconds: float) -> float:
    time.sleep(seconds)
    return time.monotonic()


def test_each_call_in_one_child_has_its_own_timeout():
    with isolation.isolation(timeout=1.5):
        # Two calls of 0.8 s: 1.6 s in all, more than one timeout, less than two.
        done = isolation.call_each(_sleep_then_time, [(0.8,), (0.8,)], ["first", "second"])
        assert len(done) == 2 and done[0] < done[1]
        with pytest.raises(isolation.BackendCrashError, match=r"^second: timed out after 1\.5 s"):
            isolation.call_each(_sleep_then_time, [(0.1,), (3600,)], ["first", "second"])


def _raise_input_error(text: str) -> None:
    raise InputDataError(text)


def test_an_error_in_one_call_stops_the_rest():
    with pytest.raises(InputDataError, match="first failed"):
        isolation.call_each(_raise_input_error, [("first failed",), ("second ran",)],
                            ["first", "second"])


def test_meanwhile_work_runs_in_the_parent_while_the_child_runs():
    seen: list[tuple[int, float]] = []

    def work() -> None:
        seen.append((os.getpid(), time.monotonic()))

    with isolation.meanwhile(work):
        (child_done,) = isolation.call_each(_sleep_then_time, [(1.0,)], ["sleeper"])
        isolation.call_each(_sleep_then_time, [(0.0,)], ["again"])
    # Once, in this process, before the child had finished its run.
    assert len(seen) == 1 and seen[0][0] == os.getpid() and seen[0][1] < child_done
    with isolation.isolation(enabled=False), isolation.meanwhile(work):
        isolation.call_each(_sleep_then_time, [(0.0,)], ["in-process"])
    assert len(seen) == 1, "in-process there is no child to wait for: nothing is done ahead"


def test_meanwhile_work_left_when_the_child_answers_is_not_done():
    seen: list[str] = []
    with isolation.meanwhile(lambda: time.sleep(1.0), lambda: seen.append("late")):
        started = time.monotonic()
        isolation.call_each(_sleep_then_time, [(0.1,)], ["quick"])
    # The first item outlasted the child, so the second was dropped rather than delay the result.
    assert seen == [] and time.monotonic() - started < 1.9


def test_a_kept_reference_run_is_reused_by_the_next_target(demo, child_calls):
    from trtcheck.run import ReferenceCache

    calls = child_calls
    cache = ReferenceCache()
    first = compare_model(CompareRequest(model=demo, target="onnxrt-fp16"), reference_cache=cache)
    second = compare_model(CompareRequest(model=demo, target="onnxrt-bf16"), reference_cache=cache)
    assert calls == [("onnxrt (reference:onnxrt)", "onnxrt-fp16 (target:onnxrt-fp16)"),
                     ("onnxrt-bf16 (target:onnxrt-bf16)",)]
    assert first.model_sha256 == second.model_sha256 == load_model(demo).sha256


def _mapped_blocks_for_a_large_allocation() -> int:
    """How many blocks glibc maps with mmap (not from the heap) for a 64 MB allocation."""
    import ctypes

    class MallInfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
            "fordblks", "keepcost")]

    mallinfo2 = ctypes.CDLL(None).mallinfo2
    mallinfo2.restype = MallInfo2
    before = mallinfo2().hblks
    block = bytearray(64 << 20)
    after = mallinfo2().hblks
    del block
    return after - before


def test_a_child_serves_large_allocations_from_its_heap():
    # ONNX Runtime's copies of the weights then reuse freed pages instead of faulting in new
    # ones (isolation._keep_freed_memory); the parent, which may live long, is left alone.
    import ctypes

    if not hasattr(ctypes.CDLL(None), "mallinfo2"):
        pytest.skip("the allocator setting is glibc's (2.33 or later); this libc has no "
                    "mallinfo2 to observe it")
    assert _mapped_blocks_for_a_large_allocation() == 1
    assert isolation.call(_mapped_blocks_for_a_large_allocation, what="allocation") == 0
