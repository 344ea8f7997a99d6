"""Planted faults, localized to the planted node on the emulated fp16 target."""

from __future__ import annotations

import json
import math
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.conftest import read_json
from trtcheck.backend_names import get_backend
from trtcheck.backends import BackendOptions
from trtcheck.debug.localize import localize, make_probe
from trtcheck.model import load_model
from trtcheck.run import quiet_polygraphy, run_marked
from trtcheck.tolerance import Tolerance
from zoo.build import overflow_chain

REFERENCE, FP16 = get_backend("onnxrt"), get_backend("onnxrt-fp16")


def graph_model(steps, size=64, name="g") -> onnx.ModelProto:
    """`steps`: (node name, op, [inputs], output, constant or None) in order; x -> y."""
    nodes, inits = [], []
    for node_name, op, inputs, output, constant in steps:
        if constant is not None:
            inits.append(numpy_helper.from_array(np.array(constant, np.float32),
                                                 f"{node_name}.c"))
            inputs = [*inputs, f"{node_name}.c"]
        nodes.append(helper.make_node(op, inputs, [output], name=node_name))
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, size])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, size])
    model = helper.make_model(helper.make_graph(nodes, name, [x], [y], inits),
                              opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model


def run_localize(save_model, model, x, atol=1e-2, rtol=1e-2, **kwargs):
    loaded = load_model(save_model(model))
    with quiet_polygraphy():
        reference = run_marked(loaded, REFERENCE, BackendOptions(), {"x": x}, [], "ref")["y"]
        probe = make_probe(loaded, REFERENCE, FP16, BackendOptions(), {"x": x}, "y",
                           Tolerance(atol, rtol), reference)
        return localize(probe, **kwargs)


def uniform(low, high, size=64, seed=0):
    return np.random.default_rng(seed).uniform(low, high, (1, size)).astype(np.float32)


def test_fp16_overflow_in_the_middle_of_a_long_chain(save_model, tmp_path):
    model = overflow_chain(length=150, overflow_at=77)  # 300 nodes
    result = run_localize(save_model, model, uniform(0, 1), repro_dir=tmp_path / "repro")
    assert result.culprit_node == "chain/mul77"
    assert result.local is True and math.isinf(result.local_error)
    assert result.boundary_verified and result.mode == "exact"
    assert result.target_runs == 2  # every tensor in one run, plus the culprit alone
    assert any("reaches" in line and "beyond fp16's 65504" in line for line in result.explanation)
    fix = result.precision_fix
    # 150 fp16 roundings also add up under compare's elementwise check: the fix keeps the
    # overflow and grows along the path until a run passes.
    assert fix.verified and "chain/mul77" in fix.keep_fp32 and len(fix.keep_fp32) <= 64
    assert "chain/mul77:float32" in fix.trt10_flags


@pytest.mark.parametrize("mode", ["exact", "search"])
def test_runs_over_one_shared_data_file_find_the_same_culprit(save_model, monkeypatch, mode):
    # A large model's marked copies refer to one data file of its weights rather than each
    # carrying them (backends.SHARED_WEIGHTS_BYTES); lowered here so that a small model does.
    from trtcheck import backends
    from trtcheck.atomic import session_work_folder

    model = overflow_chain(length=40, overflow_at=21)
    alone = run_localize(save_model, model, uniform(0, 1), mode=mode)
    from trtcheck import model as model_module

    written: list[Path] = []
    offload = model_module.offload_weights

    def counted(proto, folder):
        written.append(folder)
        return offload(proto, folder)

    monkeypatch.setattr(model_module, "offload_weights", counted)
    monkeypatch.setattr(backends, "SHARED_WEIGHTS_BYTES", 0)
    shared = run_localize(save_model, model, uniform(0, 1), mode=mode)
    assert (shared.culprit_node, shared.trace) == (alone.culprit_node, alone.trace) \
        and shared.culprit_node == "chain/mul21"
    # One data file per model run (the reference and its fp16 emulation), however many runs;
    # removed when the bisection ends.
    assert len(written) == 2 and shared.target_runs >= 2
    assert all(folder.parent == session_work_folder() and not folder.exists()
               for folder in written)


def test_catastrophic_cancellation(save_model):
    model = graph_model([
        ("scale", "Mul", ["x"], "a", 1.0),
        ("shift", "Add", ["a"], "b", 1e4),
        ("cancel", "Sub", ["b"], "c", 1e4),
        ("double", "Mul", ["c"], "y", 2.0),
    ])
    result = run_localize(save_model, model, uniform(0, 1))
    assert result.culprit_node == "cancel" and result.local is True
    shift = next(p for p in result.trace if p.node == "shift")
    assert not shift.diverged  # 1e4 + x rounds by ~4, small relative to 1e4
    assert "rounding, not overflow" in " ".join(result.explanation)


def _vanishing_model():
    # planted: x * -1e5 overflows fp16 to -inf; ReLU turns it back into 0 (error vanishes);
    # the skip connection carries it to the output.
    return graph_model([
        ("planted", "Mul", ["x"], "f", -1e5),
        ("relu", "Relu", ["f"], "r", None),
        ("c1", "Add", ["r"], "r1", 1.0),
        ("c2", "Mul", ["r1"], "r2", 1.0),
        ("c3", "Add", ["r2"], "r3", 0.5),
        ("skip", "Mul", ["f"], "s", 1e-5),
        ("join", "Add", ["r3", "s"], "y", None),
    ])


@pytest.mark.parametrize("mode", ["exact", "search"])
def test_error_that_vanishes_after_relu(save_model, mode):
    result = run_localize(save_model, _vanishing_model(), uniform(0.7, 1), mode=mode,
                          fix_precision=False)
    assert result.culprit_node == "planted" and result.local is True
    if mode == "exact":
        # The trace follows the error the way it came: around the ReLU, through the skip.
        assert [p.node for p in result.trace if p.diverged] == ["planted", "skip", "join"]
    else:
        # Bisection lands after the ReLU; the boundary's failing input leads back to "planted".
        assert result.target_runs <= math.ceil(math.log2(7)) + 3


def test_inherited_divergence(save_model):
    rng = np.random.default_rng(0)
    steps = []
    current = "x"
    for i in range(40):
        output = "y" if i == 39 else f"t{i}"
        steps.append((f"mul{i}", "Mul", [current], output, 1 + rng.uniform(-0.3, 0.3)))
        current = output
    result = run_localize(save_model, graph_model(steps, size=256), uniform(0.5, 1, 256, seed=1),
                          atol=2e-3, rtol=2e-3, fix_precision=False)
    assert result.local is False
    assert "inherited" in " ".join(result.explanation)
    before = [p for p in result.trace if p.index < result.culprit_index]
    assert before and not before[-1].diverged and result.trace[-1].diverged
    assert result.trace[-1].max_abs_error > result.trace[-1].tolerance


def test_search_mode_budget_on_real_graphs(save_model):
    for length in (50, 150, 500):  # 100, 300 and 1000 nodes
        model = overflow_chain(length=length, overflow_at=length // 3)
        result = run_localize(save_model, model, uniform(0, 1), mode="search",
                              fix_precision=False)
        nodes = 2 * length
        assert result.culprit_node == f"chain/mul{length // 3}"
        assert result.target_runs <= math.ceil(math.log2(nodes)) + 3
        assert all(len(marked) <= 9 for marked in result.runs)


def test_cli_bisect_json_and_repro_folder(save_model, trtcheck_cli, tmp_path):
    import jsonschema

    path = save_model(overflow_chain(length=30, overflow_at=12), "chain.onnx")
    run = trtcheck_cli("bisect", path, "--json", "r.json", "--repro", "repro")
    assert run.code == 1, run.stderr
    assert "culprit: chain/mul12 (Mul)" in run.stdout and "precision fix: keep" in run.stdout
    report = read_json(tmp_path / "r.json")
    schema = json.loads((Path(__file__).parents[1] / "trtcheck" / "report" /
                         "compare.schema.json").read_text())
    jsonschema.validate(report, schema)
    bisect = report["bisect"]
    assert bisect["culprit"]["node"] == "chain/mul12" and bisect["culprit"]["local"] is True
    assert bisect["target_runs"] == 2 and bisect["trace"]
    repro = tmp_path / "repro"
    assert {p.name for p in repro.iterdir()} >= {"culprit.onnx", "inputs.npz", "inputs.json",
                                                 "reference_outputs.npz", "README.md"}
    # The README's commands run as written from another working directory: the culprit alone
    # fails (local), the whole model on its recorded inputs fails and bisects to the same node,
    # and the fix's command passes.
    readme = (repro / "README.md").read_text()
    commands = [ln for ln in readme.splitlines() if ln.startswith("trtcheck compare ")]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    culprit_line, whole_synthetic, whole_recorded, fix_line = commands
    assert "culprit.onnx" in culprit_line and "--keep-fp32" in fix_line
    for line, code in ((culprit_line, 1), (whole_synthetic, 1), (whole_recorded, 1),
                       (fix_line, 0)):
        again = subprocess.run([sys.executable, "-m", "trtcheck", *shlex.split(line)[1:]],
                               capture_output=True, text=True, cwd=elsewhere, timeout=300)
        assert again.returncode == code, line + again.stdout + again.stderr
        if "--bisect" in line:
            assert "culprit: chain/mul12 (Mul)" in again.stdout
    # The plan it proposes makes the whole model pass.
    keep = bisect["precision_fix"]["keep_fp32"]
    fixed = trtcheck_cli("compare", path, "--target", "onnxrt-fp16", "--keep-fp32", *keep)
    assert fixed.code == 0, fixed.stdout


def test_nothing_to_bisect(save_model, trtcheck_cli):
    from zoo.build import cnn

    run = trtcheck_cli("compare", save_model(cnn()), "--bisect", "--repro", "repro")
    assert run.code == 0 and "culprit:" not in run.stdout


def test_audit_cli(save_model, trtcheck_cli, tmp_path):
    path = save_model(overflow_chain(length=10, overflow_at=4))
    run = trtcheck_cli("audit", path, "--json", "audit.json")
    assert run.code == 1
    assert "fp16 overflow: tensor chain/m4 reaches" in run.stdout
    findings = read_json(tmp_path / "audit.json")["findings"]
    assert {f["precision"] for f in findings} == {"fp16"}
    from zoo.build import cnn

    assert trtcheck_cli("audit", save_model(cnn(), "cnn.onnx")).code == 0


def test_bisect_reuses_the_comparisons_loaded_and_emulated_models(save_model, monkeypatch,
                                                                  capsys, tmp_path):
    # Loading and emulating a large model each cost about as much as running it.
    from trtcheck import model as model_module
    from trtcheck import precision
    from trtcheck.cli import main

    path = save_model(overflow_chain(length=30, overflow_at=12), "chain.onnx")
    monkeypatch.chdir(tmp_path)
    calls: list[str] = []
    emulated: list[onnx.ModelProto] = []
    load, emulate = model_module.load_model, precision.emulate
    monkeypatch.setattr(model_module, "load_model",
                        lambda *a, **k: calls.append("load") or load(*a, **k))
    monkeypatch.setattr(precision, "emulate",
                        lambda proto, *a, **k: emulated.append(proto) or emulate(proto, *a, **k))
    assert main(["bisect", str(path), "--no-precision-fix", "--repro", "repro"]) == 1
    assert "culprit: chain/mul12 (Mul)" in capsys.readouterr().out
    assert calls == ["load"]
    # The model once, by the comparison; besides it only the culprit alone (one node).
    assert emulated[0] is not emulated[1] and len(emulated[1].graph.node) == 1
    assert len(emulated) == 2


@pytest.mark.parametrize("name", ["bert_tiny_classic_extdata", "gpt2_tiny_dynamo"])
def test_real_exports_bisect_the_same_over_one_shared_data_file(name, monkeypatch):
    # A real export with its weights in external data, and a dynamo export with Constant nodes
    # and masks: the light copies over the shared data file find the same culprit and trace.
    from trtcheck import backends
    from trtcheck.cli import build_parser, request_from_args
    from trtcheck.core import compare_model
    from trtcheck.debug import localize_comparison

    zoo = Path(__file__).resolve().parents[1] / "zoo" / "real"
    entry = {e["name"]: e for e in json.loads((zoo / "manifest.json").read_text())}[name]
    argv = ["compare", str(zoo / entry["path"]), "--target", "onnxrt-fp16", "--atol", "1e-6",
            "--rtol", "1e-6", "--input-shapes",
            *[f"{k}:{'x'.join(map(str, v))}" for k, v in entry["input_shapes"].items()],
            "--val-range", *[f"{k}:[{a},{b}]" for k, (a, b) in entry["val_ranges"].items()]]

    def bisected(threshold: int):
        monkeypatch.setattr(backends, "SHARED_WEIGHTS_BYTES", threshold)
        with backends.reusing_models():
            result = compare_model(request_from_args(build_parser().parse_args(argv)))
            assert result.verdict == "fail"
            found = localize_comparison(result, fix_precision=False)
        return found.culprit_node, found.trace

    from trtcheck import model as model_module

    offloads: list[Path] = []
    offload = model_module.offload_weights
    monkeypatch.setattr(model_module, "offload_weights",
                        lambda proto, folder: offloads.append(folder) or offload(proto, folder))
    normal = bisected(backends.SHARED_WEIGHTS_BYTES)  # these tiny models stay under it
    assert offloads == []
    assert bisected(0) == normal and len(offloads) == 2
