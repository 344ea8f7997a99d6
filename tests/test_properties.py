"""Property-based checks (hypothesis) over the CLI's arguments and over suite files.

Whatever the flags, values and paths, `trtcheck` ends with a documented exit code (0 pass,
1 mismatch, 2 usage or input error, 3 could not run), prints no traceback, and changes no file
except the outputs it was asked to write (and its own work and repro folders). Whatever a
suite file holds, `load_suite` returns a suite or raises a one-line `TrtcheckError`.

The CLI runs in-process (`trtcheck.cli.main`), so an example costs a model run, not an
interpreter start. `TRTCHECK_PROPERTY_EXAMPLES` sets the number of CLI examples (default 80;
examples are derandomised, so a CI run repeats the same ones).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import os
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from onnx import helper

from trtcheck.errors import TrtcheckError
from trtcheck.suite import load_suite
from zoo.build import cnn

CLI_EXAMPLES = int(os.environ.get("TRTCHECK_PROPERTY_EXAMPLES", "300"))
# Set TRTCHECK_PROPERTY_RANDOM=1 to explore new examples instead of repeating the same ones.
DERANDOMIZE = not os.environ.get("TRTCHECK_PROPERTY_RANDOM")
DOCUMENTED = {0, 1, 2, 3}
# Folders that trtcheck owns in the working directory (work files, bisection repros).
OWN_FOLDERS = ("trtcheck-work/", "trtcheck-repro/")


def _int_model() -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("Add", ["ids", "ids"], ["sum"])], "ids",
        [helper.make_tensor_value_info("ids", onnx.TensorProto.INT32, [3])],
        [helper.make_tensor_value_info("sum", onnx.TensorProto.INT32, [3])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _string_model() -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("Identity", ["s"], ["o"])], "strings",
        [helper.make_tensor_value_info("s", onnx.TensorProto.STRING, [2])],
        [helper.make_tensor_value_info("o", onnx.TensorProto.STRING, [2])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _pristine(folder: Path) -> dict[str, bytes]:
    onnx.save(cnn(), str(folder / "model.onnx"))
    onnx.save(cnn(batch="N"), str(folder / "dyn.onnx"))
    onnx.save(_int_model(), str(folder / "ids.onnx"))
    onnx.save(_string_model(), str(folder / "strings.onnx"))
    np.savez(folder / "in.npz", image=np.full((1, 3, 32, 32), 0.5, np.float32))
    np.savez(folder / "ids.npz", ids=np.array([1, 2**40, -5], np.int64))
    np.savez(folder / "wrong.npz", pixels=np.zeros((2, 2), np.float64))
    (folder / "empty.npz").write_bytes(b"")
    (folder / "corrupt.npz").write_bytes(b"PK\x03\x04" + b"\xff" * 64)
    (folder / "notes.txt").write_text("the user's notes\n")
    (folder / "empty.onnx").write_bytes(b"")
    (folder / "out").mkdir()
    (folder / "out" / "old.json").write_text("{}\n")
    return {str(p.relative_to(folder)): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _restore(folder: Path, pristine: dict[str, bytes]) -> None:
    for path in sorted(folder.rglob("*"), reverse=True):
        name = str(path.relative_to(folder))
        if path.is_dir() and not path.is_symlink():
            if not any(other.startswith(name + "/") for other in pristine):
                shutil.rmtree(path)
        elif name not in pristine:
            path.unlink()
    for name, data in pristine.items():
        target = folder / name
        if not target.is_file() or target.read_bytes() != data:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)


class Workspace:
    """A folder of models, inputs and user files, and their pristine contents."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.pristine = _pristine(folder)

    def __repr__(self) -> str:  # hypothesis prints it with each failing example
        return f"Workspace({self.folder})"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Workspace:
    return Workspace(tmp_path_factory.mktemp("property-cli"))


# --- strategies -----------------------------------------------------------------------------

def _number_text() -> st.SearchStrategy[str]:
    return st.one_of(
        # Usable values first: hypothesis draws earlier branches more, and shrinks towards them.
        st.sampled_from(["0.5", "1e-3", "0.01", "1", "10", "3"]),
        st.floats(allow_nan=True, allow_infinity=True).map(repr),
        st.integers(min_value=-2**70, max_value=2**70).map(str),
        st.sampled_from(["0", "1e-3", "-0.0", "1e308", "1e-320", "nan", "-inf", "abc", "", "1,2"]),
    )


_OUTPUT_NAMES = st.sampled_from(["", "logits:", "nope:", ":"])
_PATHS = st.sampled_from([
    "new.json", "out/new.json", "deep/er/r.json", "new.json", "model.onnx", "in.npz",
    "notes.txt", "out", "out/old.json", "r.html", "notes.txt/r.json", "/proc/trtcheck.json",
    ".", "", "trtcheck-work", "trtcheck-repro/x", "ids.npz",
])
_MODELS = st.sampled_from(["model.onnx"] * 4 + ["dyn.onnx", "ids.onnx", "strings.onnx",
                                                 "missing.onnx", "out", "notes.txt", "empty.onnx"])
_BACKENDS = st.sampled_from(["onnxrt", "onnxrt-fp16", "onnxrt-bf16", "trt-fp16", "fp8", ""])


def _shape_text() -> st.SearchStrategy[str]:
    dims = st.lists(st.one_of(st.integers(-2, 4), st.integers(10**6, 10**20)), min_size=0,
                    max_size=5)
    return st.one_of(
        st.sampled_from(["image:1x3x32x32", "image:2x3x32x32", "ids:3"]),
        st.tuples(st.sampled_from(["image:", "ids:", "nope:", ""]), dims).map(
            lambda pair: pair[0] + "x".join(map(str, pair[1]))))


def _range_text() -> st.SearchStrategy[str]:
    return st.tuples(st.sampled_from(["", "image:", "ids:", "nope:"]), _number_text(),
                     _number_text()).map(lambda t: f"{t[0]}[{t[1]},{t[2]}]")


_VALUE_FLAGS: dict[str, st.SearchStrategy[list[str]]] = {
    "--seed": _number_text().map(lambda v: [v]),
    "--atol": st.tuples(_OUTPUT_NAMES, _number_text()).map(lambda t: ["".join(t)]),
    "--rtol": st.tuples(_OUTPUT_NAMES, _number_text()).map(lambda t: ["".join(t)]),
    "--cosine": _number_text().map(lambda v: [v]),
    "--snr": _number_text().map(lambda v: [v]),
    "--error-quantile": _number_text().map(lambda v: [v]),
    "--check-error-stat": st.sampled_from(["elemwise", "max", "mean", "quantile", "worst"]).map(
        lambda v: [v]),
    "--input-shapes": _shape_text().map(lambda v: [v]),
    "--val-range": _range_text().map(lambda v: [v]),
    "--inputs": st.sampled_from(["in.npz", "ids.npz", "wrong.npz", "empty.npz", "corrupt.npz",
                                 "missing.npz", "notes.txt", "out"]).map(lambda v: [v]),
    "--target": _BACKENDS.map(lambda v: [v]),
    "--reference": _BACKENDS.map(lambda v: [v]),
    "--trt-major": st.sampled_from(["10", "11", "9", "x"]).map(lambda v: [v]),
    "--keep-fp32": st.sampled_from(["trunk/conv1", "no/such/node"]).map(lambda v: [v]),
    "--passes": st.sampled_from(["fold-constants", "no-such-pass"]).map(lambda v: [v]),
    "--max-memory": st.sampled_from(["512M", "1K", "nan", "1e400G", "-1G", "2G"]).map(
        lambda v: [v]),
    "--timeout": _number_text().map(lambda v: [v]),
    "--precision": st.sampled_from(["fp16", "bf16", "fp8"]).map(lambda v: [v]),
    "--json": _PATHS.map(lambda v: [v]),
    "--report": _PATHS.map(lambda v: [v]),
    "--save-outputs": _PATHS.map(lambda v: [v]),
    "--save-inputs": _PATHS.map(lambda v: [v]),
    "--work-dir": _PATHS.map(lambda v: [v]),
    "--repro": _PATHS.map(lambda v: [v]),
    "-o": _PATHS.map(lambda v: [v]),
}
# Flags that name files trtcheck is asked to write (folders for --repro and --work-dir).
_OUTPUT_FLAGS = {"--json", "--report", "--save-outputs", "--save-inputs", "-o", "--repro",
                 "--work-dir"}
_COMMON = ["--seed", "--input-shapes", "--val-range", "--inputs", "--json"]
_FLAGS_BY_COMMAND = {
    "compare": [*_COMMON, "--atol", "--rtol", "--cosine", "--snr", "--error-quantile",
                "--check-error-stat", "--target", "--reference", "--trt-major", "--keep-fp32",
                "--passes", "--timeout", "--report", "--save-outputs", "--save-inputs",
                "--work-dir"],
    "bisect": [*_COMMON, "--repro", "--max-memory", "--atol", "--target"],
    "audit": [*_COMMON, "--precision", "--max-memory"],
    "fix": [*_COMMON, "-o", "--rtol", "--passes"],
    "lint": ["--json", "--trt-major"],
}


@st.composite
def cli_arguments(draw) -> list[str]:
    command = draw(st.sampled_from(["compare"] * 6 + ["fix"] * 2 + ["audit", "lint", "bisect"]))
    argv = [command, draw(_MODELS)]
    flags = draw(st.lists(st.sampled_from(_FLAGS_BY_COMMAND[command]), max_size=5))
    if command == "bisect" and "--target" not in flags:
        # Keep bisections on emulated targets (fast, no TensorRT needed to get that far), and
        # make some of them fail so that there is something to bisect.
        argv += ["--target", "onnxrt-fp16", *draw(st.sampled_from([[], ["--rtol", "0"]]))]
    if command == "fix" and draw(st.integers(0, 4)):
        argv += ["-o", draw(st.sampled_from(["fixed.onnx", "out/fixed.onnx"]))]
    for flag in flags:
        argv += [flag, *draw(_VALUE_FLAGS[flag])]
    return argv


def _allowed_changes(argv: list[str]) -> tuple[set[str], tuple[str, ...]]:
    """Files the command may write: the named outputs, and everything in named folders."""
    files: set[str] = set()
    folders = list(OWN_FOLDERS)
    for flag, value in zip(argv, argv[1:], strict=False):
        if flag in _OUTPUT_FLAGS and value:
            normal = os.path.normpath(value)
            files.add(normal)
            folders.append(normal.rstrip("/") + "/")
    return files, tuple(folders)


CLI_OUTCOMES: Counter[str] = Counter()


def _run_cli(argv: list[str]) -> tuple[int, str]:
    from trtcheck.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 2
    return code, out.getvalue() + err.getvalue()


@settings(max_examples=CLI_EXAMPLES, deadline=None, derandomize=DERANDOMIZE, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(argv=cli_arguments())
def test_cli_any_arguments_exit_documented_without_traceback_or_stray_writes(workspace, argv):
    folder, pristine = workspace.folder, workspace.pristine
    previous = Path.cwd()
    os.chdir(folder)
    try:
        before = _snapshot(folder)
        code, output = _run_cli(argv)
        after = _snapshot(folder)
    finally:
        os.chdir(previous)
        _restore(folder, pristine)
    CLI_OUTCOMES[f"{argv[0]} exit {code}"] += 1
    event(f"{argv[0]} exit {code}")
    assert code in DOCUMENTED, (argv, code, output)
    assert "Traceback" not in output, (argv, output)
    files, folders = _allowed_changes(argv)
    changed = {name for name in set(before) | set(after) if before.get(name) != after.get(name)}
    stray = {name for name in changed if name not in files and not name.startswith(folders)}
    assert not stray, (argv, stray)
    # Nothing is left under a temporary name, whatever the outcome.
    assert not [name for name in after if ".trtcheck-partial-" in name], (argv, after)


def test_cli_outcomes_were_varied(workspace):
    """The property test's examples reached both a pass and an input error.

    Under pytest-xdist the property test may have run in another worker: it runs here then.
    """
    if not CLI_OUTCOMES:
        test_cli_any_arguments_exit_documented_without_traceback_or_stray_writes(
            workspace=workspace)
    codes = {int(key.rsplit(" ", 1)[1]) for key in CLI_OUTCOMES}
    print(f"CLI examples: {sum(CLI_OUTCOMES.values())}; outcomes: {dict(CLI_OUTCOMES)}")
    assert {0, 2} <= codes


# --- suite files ----------------------------------------------------------------------------

def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    return "{" + ", ".join(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"


_KEYS = st.sampled_from([
    "name", "description", "timeout", "backend", "providers", "tf32", "keep_fp32", "reference",
    "targets", "inputs", "tolerance", "tolerance_by_target", "atol", "rtol", "model",
    "model_sha256", "passes", "expected_failure", "reason", "golden", "seed", "shapes",
    "float_range", "ranges", "recorded", "outputs", "cosine", "snr", "fp16", "case", "x",
])
_SCALARS = st.one_of(
    st.integers(min_value=-2**63, max_value=2**63 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.sampled_from(["model.onnx", "../..", "onnxrt-fp16", "onnxrt", "fp16", "", "a b", "1e-3",
                     "pypi:pkg==1#m.onnx", "https://x/y.onnx", "trunk/conv1", "..", "/abs"]),
    st.text(max_size=8),
)
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(_KEYS, inner, max_size=4)),
    max_leaves=12,
)


@st.composite
def near_valid_suites(draw) -> str:
    """A valid suite with a few keys set to drawn values: validation beyond the first key."""
    document: dict = {
        "suite": {"name": "vision"},
        "targets": {"fp16": {"backend": "onnxrt-fp16"}},
        "defaults": {"tolerance": {"atol": 1e-2}, "inputs": {"float_range": [0.0, 1.0]}},
        "case": [{"name": "cnn", "model": "model.onnx"}],
    }
    tables = [document["suite"], document["targets"]["fp16"], document["defaults"],
              document["defaults"]["tolerance"], document["defaults"]["inputs"],
              document["case"][0]]
    for _ in range(draw(st.integers(1, 3))):
        # A table replaced by a drawn value stays in the document as that value.
        table = draw(st.sampled_from(tables))
        table[draw(_KEYS)] = draw(_VALUES)
    return "\n".join(f"{key} = {_toml_value(value)}" for key, value in document.items()) + "\n"


@st.composite
def suite_documents(draw) -> str:
    document = {
        "suite": draw(st.dictionaries(_KEYS, _VALUES, max_size=3)),
        "targets": draw(st.dictionaries(st.sampled_from(["fp16", "ref", "bad name", "trt"]),
                                        st.dictionaries(_KEYS, _VALUES, max_size=3),
                                        max_size=2)),
        "defaults": draw(st.dictionaries(_KEYS, _VALUES, max_size=3)),
        "case": draw(st.lists(st.dictionaries(_KEYS, _VALUES, max_size=5), max_size=3)),
    }
    keep = draw(st.sets(st.sampled_from(list(document)), min_size=1))
    text = "\n".join(f"{key} = {_toml_value(value)}" for key, value in document.items()
                     if key in keep) + "\n"
    if draw(st.booleans()) and len(text) > 2:
        # Some raw damage too: a cut, or a stray byte, wherever it lands.
        cut = draw(st.integers(0, len(text) - 1))
        damage = draw(st.sampled_from(["", "[", "\"", "=", "\x00", "]]", "\udcff"]))
        text = text[:cut] + damage + text[cut:]
    return text


@settings(max_examples=1000, deadline=None, derandomize=DERANDOMIZE, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                 HealthCheck.function_scoped_fixture])
@given(text=st.one_of(near_valid_suites(), suite_documents()))
def test_any_suite_file_loads_or_fails_in_one_line(tmp_path, text):
    folder = tmp_path / "suites"
    folder.mkdir(exist_ok=True)
    if not (folder / "model.onnx").exists():
        onnx.save(cnn(), str(folder / "model.onnx"))
    path = folder / "any.suite.toml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    before = _snapshot(tmp_path)
    try:
        suite = load_suite(path)
    except TrtcheckError as err:
        event(f"suite error exit {err.exit_code}")
        assert err.exit_code in DOCUMENTED
        assert "\n" not in str(err).strip(), str(err)
        assert str(path) in str(err), str(err)
    else:
        event("suite loaded")
        assert suite.path == path
    assert _snapshot(tmp_path) == before
