"""What keeps trtcheck no slower than Polygraphy at start-up (bench/compare_wall_time.py).

Wall time itself is measured by the bench, interleaved with Polygraphy on the same machine; these
tests pin down the causes, which do not depend on the machine's load.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from trtcheck.backend_names import get_backend
from trtcheck.backends import BackendOptions, onnxrt_session_source
from trtcheck.errors import ModelError
from trtcheck.model import load_model

ZOO = Path(__file__).resolve().parents[1] / "zoo"
HEAVY = ("onnx", "numpy", "onnxruntime", "polygraphy", "onnx_graphsurgeon", "rich")


def _imported(*args: str) -> set[str]:
    """Top-level packages `python -m trtcheck ARGS` imports (from -X importtime)."""
    run = subprocess.run([sys.executable, "-X", "importtime", "-m", "trtcheck", *args],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode in (0, 2), run.stderr[-2000:]
    return {line.rsplit("|", 1)[1].strip().split(".")[0]
            for line in run.stderr.splitlines() if line.startswith("import time:")}


@pytest.mark.parametrize("args", [("--help",), ("report", "merge", "--help"), ("lint", "--help")])
def test_help_imports_no_heavy_library(args):
    imported = _imported(*args)
    assert not imported & set(HEAVY), sorted(imported & set(HEAVY))


def test_a_subcommand_gets_its_arguments_when_used():
    # compare's help lists the backends, which come with their (heavy) module.
    run = subprocess.run([sys.executable, "-m", "trtcheck", "compare", "--help"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and "onnxrt-fp16" in run.stdout and "--val-range" in run.stdout
    bad = subprocess.run([sys.executable, "-m", "trtcheck", "fix", "m.onnx", "--passes", "x"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "-o/--output" in bad.stderr


def test_an_unmodified_fp32_model_is_read_by_onnx_runtime_from_its_path():
    model = load_model(ZOO / "real" / "bert_tiny_classic.onnx")
    # No serialising in Python, and no second copy of the weights in the parent's memory.
    assert onnxrt_session_source(model, get_backend("onnxrt"), BackendOptions()) == str(model.path)
    emulated = onnxrt_session_source(model, get_backend("onnxrt-fp16"), BackendOptions())
    assert isinstance(emulated, bytes)


def test_the_model_is_hashed_once_and_only_when_asked(monkeypatch):
    from trtcheck import model as model_module

    hashed: list[Path] = []
    real = model_module._hash_from
    monkeypatch.setattr(model_module, "_hash_from",
                        lambda path, *rest: hashed.append(path) or real(path, *rest))
    model = load_model(ZOO / "real" / "bert_tiny_classic.onnx")
    assert hashed == []
    expected = hashlib.sha256(model.path.read_bytes()).hexdigest()
    assert model.sha256 == expected and model.sha256 == expected
    assert hashed == [model.path]


@pytest.mark.parametrize("path", sorted((ZOO / "real").glob("*.onnx")), ids=lambda p: p.stem)
def test_emulation_reads_the_same_types_without_the_weights(path):
    import onnx

    from trtcheck.precision import _value_types

    proto = load_model(path).proto
    full = onnx.shape_inference.infer_shapes(proto, strict_mode=False).graph
    expected = {init.name: onnx.helper.make_tensor_type_proto(init.data_type, list(init.dims))
                for init in full.initializer}
    expected.update({value.name: value.type
                     for value in [*full.value_info, *full.output, *full.input]})
    assert _value_types(proto) == expected


def test_the_checker_reads_no_file_again_and_the_hash_runs_while_the_backends_run(
        monkeypatch):
    import onnx

    from trtcheck import core, isolation
    from trtcheck import model as model_module

    events: list[str] = []
    real_call, real_check, real_hash = (isolation._call_in_child, onnx.checker.check_model,
                                        model_module.sha256_of)

    def call(*args):
        events.append("fork")
        return real_call(*args)

    def check(model, *args, **kwargs):
        # Given the bytes load_model read, not the path (which the checker would read again).
        events.append("check " + type(model).__name__)
        return real_check(model, *args, **kwargs)

    monkeypatch.setattr(isolation, "_call_in_child", call)
    monkeypatch.setattr(onnx.checker, "check_model", check)
    monkeypatch.setattr(model_module, "sha256_of",
                        lambda path: events.append("hash") or real_hash(path))
    result = core.compare_model(core.CompareRequest(model=ZOO / "demo.onnx", target="onnxrt"))
    assert events[:2] == ["check bytes", "fork"] and events.count("check bytes") == 1
    assert events.count("hash") <= 1
    assert result.verdict == "pass"
    assert result.model_sha256 == hashlib.sha256((ZOO / "demo.onnx").read_bytes()).hexdigest()


def test_a_model_with_external_data_is_checked_from_its_folder(tmp_path, monkeypatch):
    import onnx

    model = onnx.load(str(ZOO / "demo.onnx"))
    onnx.save(model, str(tmp_path / "m.onnx"), save_as_external_data=True,
              location="m.data", size_threshold=0)
    seen: list[object] = []
    real_check = onnx.checker.check_model
    monkeypatch.setattr(onnx.checker, "check_model",
                        lambda m, *a, **k: seen.append(m) or real_check(m, *a, **k))
    assert load_model(tmp_path / "m.onnx").external_data
    # The path form: only it resolves (and so checks) the data file's location.
    assert seen == [str(tmp_path / "m.onnx")]
    (tmp_path / "m.data").unlink()
    with pytest.raises(ModelError, match="m.data"):
        load_model(tmp_path / "m.onnx")


def _count_children(monkeypatch) -> dict[str, list]:
    from trtcheck import isolation

    seen: dict[str, list] = {"start": [], "call": []}
    real_start, real_call = isolation.start, isolation._call_in_child

    def start(*args, what):
        seen["start"].append(what)
        return real_start(*args, what=what)

    def call(func, arguments, whats, timeout):
        seen["call"].append(whats)
        return real_call(func, arguments, whats, timeout)

    monkeypatch.setattr(isolation, "start", start)
    monkeypatch.setattr(isolation, "_call_in_child", call)
    return seen


def test_fp32_onnx_runtime_runs_start_before_the_model_is_loaded(monkeypatch, capsys):
    from trtcheck.cli import main

    seen = _count_children(monkeypatch)
    demo = str(ZOO / "demo.onnx")
    assert main(["compare", demo, "--reference", "onnxrt", "--target", "onnxrt"]) == 0
    assert seen == {"start": ["onnxrt (reference:onnxrt), onnxrt (target:onnxrt)"], "call": []}
    assert "PASS: 2 of 2" in capsys.readouterr().out

    seen["start"].clear()
    # An emulated target needs the loaded model: only the reference starts early.
    assert main(["compare", demo, "--target", "onnxrt-bf16", "--atol", "1"]) == 0
    assert seen == {"start": ["onnxrt (reference:onnxrt)"],
                    "call": [("onnxrt-bf16 (target:onnxrt-bf16)",)]}


def test_a_child_started_early_and_not_needed_is_stopped(monkeypatch, capsys):
    import multiprocessing

    from trtcheck.cli import main

    seen = _count_children(monkeypatch)
    code = main(["compare", str(ZOO / "demo.onnx"), "--reference", "onnxrt", "--target",
                 "onnxrt", "--input-shapes", "nosuchinput:1x3"])
    assert code == 2 and "nosuchinput" in capsys.readouterr().err
    assert len(seen["start"]) == 1 and seen["call"] == []
    assert not [child for child in multiprocessing.active_children() if child.is_alive()]


def test_a_compare_command_line_is_parsed_without_onnx():
    # The fp32 ONNX Runtime child forks once the command line is parsed (`run.started_early`):
    # onnx, imported before that, would be paid for before the child could start.
    code = ("import sys; from trtcheck.cli import build_parser; "
            "build_parser().parse_args(['compare', 'm.onnx', '--target', 'onnxrt']); "
            "print(sorted(m for m in ('onnx', 'onnxruntime', 'polygraphy', 'rich') "
            "if m in sys.modules))")
    assert _python(code) == "[]"


def test_the_early_child_builds_its_sessions_without_onnx():
    # Started before this process imports onnx, the child needs ONNX Runtime only.
    code = ("import sys, numpy as np\n"
            "from trtcheck import isolation\n"
            "from trtcheck.run import _sessions\n"
            "def prepare(*args):\n"
            "    run = _sessions(*args)\n"
            "    return lambda feeds: (len(run(feeds)), 'onnx' in sys.modules)\n"
            f"started = isolation.start(prepare, {str(ZOO / 'demo.onnx')!r}, ('a', 'b'), "
            "('cpu',), False, what='early')\n"
            "started.send([{'image': np.zeros((1, 3, 32, 32), np.float32)}])\n"
            "print(started.result())")
    assert _python(code) == "(2, False)"


def _python(code: str) -> str:
    """What `python -c CODE` prints, in a fresh interpreter (nothing imported yet)."""
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr
    return run.stdout.strip()


def test_the_cli_exits_without_teardown_yet_flushes_and_cleans_up(tmp_path):
    import tempfile

    process = subprocess.Popen(
        [sys.executable, "-m", "trtcheck", "compare", str(ZOO / "demo.onnx"), "--target",
         "onnxrt-fp16", "--json", "r.json"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode in (0, 1), stderr
    # The report is read when it is written, which imports ONNX Runtime for its version.
    assert json.loads((tmp_path / "r.json").read_text())["versions"]["onnxruntime"]
    assert "Same check with TensorRT" in stdout  # the last lines printed reached the pipe
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]
    assert set(Path(tempfile.gettempdir()).glob(f"trtcheck-work-{process.pid}-*")) == set()


def test_the_hash_made_while_waiting_stops_and_resumes(tmp_path):
    path = tmp_path / "big.onnx"
    onnx_bytes = (ZOO / "demo.onnx").read_bytes()
    path.write_bytes(onnx_bytes)
    model = load_model(path)
    model.hash_while(lambda: True)  # a small file: done while waiting
    assert model.__dict__["sha256"] == hashlib.sha256(onnx_bytes).hexdigest()
    big = tmp_path / "three-megabytes.bin"
    big.write_bytes(bytes(range(256)) * (3 * 4096 + 7))
    from trtcheck.model import LoadedModel

    partial = LoadedModel(big, model.proto, model.inputs, model.output_names)
    steps = iter([True, True, False])
    partial.hash_while(lambda: next(steps, False))
    assert partial.__dict__["_partial_hash"][1] == 2 << 20  # stopped after two megabytes
    later = partial.hash_later()  # what a result keeps: goes on from two megabytes
    assert later() == hashlib.sha256(big.read_bytes()).hexdigest()
    assert partial.sha256 == hashlib.sha256(big.read_bytes()).hexdigest()
