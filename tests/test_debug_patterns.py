"""Bisect and audit on the graph patterns real exporters emit, each of which once broke them."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.conftest import read_json
from trtcheck.backend_names import get_backend
from trtcheck.backends import BackendOptions
from trtcheck.compare import compare_runs, tensor_verdict
from trtcheck.core import CompareRequest, compare_model
from trtcheck.debug.localize import localize, localize_comparison, make_probe
from trtcheck.inputs import InputSettings
from trtcheck.model import load_model
from trtcheck.run import quiet_polygraphy, run_marked
from trtcheck.tolerance import Tolerance, ToleranceRequest

REFERENCE, FP16 = get_backend("onnxrt"), get_backend("onnxrt-fp16")
F = TensorProto.FLOAT


def _model(nodes, inputs, outputs, inits=(), opset=17):
    model = helper.make_model(helper.make_graph(nodes, "g", inputs, outputs, list(inits)),
                              opset_imports=[helper.make_opsetid("", opset)])
    onnx.checker.check_model(model, full_check=True)
    return model


def constant_chain() -> onnx.ModelProto:
    """Constant c=1000 -> Mul(x, c) -> Mul(t, c): the classic torch exporter's pattern."""
    constant = helper.make_node("Constant", [], ["c"], name="c_node",
                                value=helper.make_tensor("cv", F, [], [1000.0]))
    return _model([constant, helper.make_node("Mul", ["x", "c"], ["t"], name="mul1"),
                   helper.make_node("Mul", ["t", "c"], ["y"], name="mul2")],
                  [helper.make_tensor_value_info("x", F, [1, 4])],
                  [helper.make_tensor_value_info("y", F, [1, 4])])


def squares() -> onnx.ModelProto:
    """x -> s = x * 300 -> Mul(s, s) overflows fp16: a node that reads one tensor twice."""
    init = numpy_helper.from_array(np.array(300.0, np.float32), "k")
    return _model([helper.make_node("Mul", ["x", "k"], ["s"], name="scale"),
                   helper.make_node("Mul", ["s", "s"], ["sq"], name="square"),
                   helper.make_node("Sqrt", ["sq"], ["y"], name="root")],
                  [helper.make_tensor_value_info("x", F, [1, 8])],
                  [helper.make_tensor_value_info("y", F, [1, 8])], [init])


def _compare(path, **kwargs):
    request = CompareRequest(model=path, target="onnxrt-fp16", **kwargs)
    return compare_model(request)


def test_constant_nodes_bisect_and_audit(save_model, trtcheck_cli, tmp_path):
    path = save_model(constant_chain(), "const.onnx")
    run = trtcheck_cli("bisect", path, "--json", "r.json", "--repro", "repro")
    assert run.code == 1, run.stderr
    bisect = read_json(tmp_path / "r.json")["bisect"]
    assert bisect["culprit"]["node"] == "mul2" and bisect["culprit"]["local"] is True
    assert bisect["precision_fix"]["verified"]
    # culprit.onnx keeps the Constant node it reads, and is a valid model.
    culprit = onnx.load(str(tmp_path / "repro" / "culprit.onnx"))
    onnx.checker.check_model(culprit, full_check=True)
    assert [n.op_type for n in culprit.graph.node] == ["Constant", "Mul"]
    audit = trtcheck_cli("audit", path)
    assert audit.code == 1 and "fp16 overflow: tensor y reaches" in audit.stdout


def test_node_reading_one_tensor_twice(save_model, trtcheck_cli, tmp_path):
    path = save_model(squares(), "squares.onnx")
    run = trtcheck_cli("bisect", path, "--val-range", "[1,2]", "--json", "r.json", "--repro",
                       "repro")
    assert run.code == 1, run.stderr
    assert read_json(tmp_path / "r.json")["bisect"]["culprit"]["node"] == "square"
    culprit = onnx.load(str(tmp_path / "repro" / "culprit.onnx"))
    onnx.checker.check_model(culprit, full_check=True)
    assert [i.name for i in culprit.graph.input] == ["s"]
    alone = trtcheck_cli("compare", tmp_path / "repro" / "culprit.onnx", "--target",
                         "onnxrt-fp16", "--inputs", tmp_path / "repro" / "inputs.npz")
    assert alone.code == 1, alone.stderr


def test_marking_does_not_leak_into_the_model(save_model, tmp_path):
    path = save_model(constant_chain(), "const.onnx")
    model = load_model(path)
    before = model.proto.SerializeToString()
    with quiet_polygraphy():
        result = _compare(path)
        localization = localize_comparison(result, model=model, repro_dir=tmp_path / "repro")
    assert model.proto.SerializeToString() == before
    converted = onnx.load(localization.precision_fix.trt11_model)
    assert [o.name for o in converted.graph.output] == ["y"]


@pytest.mark.parametrize("tolerance", [
    Tolerance(1e-2, 1e-2), Tolerance(1e-3, 0.0, "max"), Tolerance(1e-4, 1e-4, "mean"),
    Tolerance(1e-3, 1e-3, "quantile", 0.9), Tolerance(1.0, 1.0, min_cosine=0.999999),
])
def test_tensor_verdict_is_compares_verdict(save_model, tolerance):
    from zoo.build import transformer_block

    path = save_model(transformer_block(), "block.onnx")
    request = ToleranceRequest({k: {"": v} for k, v in tolerance.__dict__.items()
                                if v is not None})
    with quiet_polygraphy():
        result = _compare(path, tolerances=request,
                          inputs=InputSettings(float_range=(-3.0, 3.0)))
    runs = result.run_results
    for diff in result.outputs:
        target = np.asarray(runs["target:onnxrt-fp16"][0][diff.name])
        reference = np.asarray(runs["reference:onnxrt"][0][diff.name])
        assert tensor_verdict(target, reference, diff.tolerance) == (not diff.passed)
    assert compare_runs  # the function whose rules tensor_verdict restates


def test_compare_fail_always_bisects(save_model, tmp_path):
    """An elementwise failure on small values, which a max-relative rule would call a pass."""
    rng = np.random.default_rng(0)
    weights = numpy_helper.from_array(rng.uniform(0.9, 1.1, (1, 256)).astype(np.float32), "w")
    offset = numpy_helper.from_array(np.full((1, 256), 0.001, np.float32), "b")
    model = _model([helper.make_node("Mul", ["x", "w"], ["t"], name="scale"),
                    helper.make_node("Sub", ["t", "x"], ["d"], name="cancel"),
                    helper.make_node("Add", ["d", "b"], ["y"], name="shift")],
                   [helper.make_tensor_value_info("x", F, [1, 256])],
                   [helper.make_tensor_value_info("y", F, [1, 256])], [weights, offset])
    path = save_model(model, "cancel.onnx")
    with quiet_polygraphy():
        result = _compare(path, tolerances=ToleranceRequest({"atol": {"": 1e-4},
                                                            "rtol": {"": 1e-2}}),
                          inputs=InputSettings(float_range=(100.0, 200.0)))
        assert result.verdict == "fail"
        localization = localize_comparison(result, fix_precision=False)
    assert localization.culprit_node in {"scale", "cancel", "shift"}


def test_integer_failing_output_is_a_usage_error(save_model, trtcheck_cli, tmp_path):
    init = numpy_helper.from_array(np.array(70000.0, np.float32), "k")
    model = _model([helper.make_node("Mul", ["x", "k"], ["t"], name="scale"),
                    helper.make_node("ArgMax", ["t"], ["idx"], name="argmax", axis=1,
                                     keepdims=0)],
                   [helper.make_tensor_value_info("x", F, [1, 8])],
                   [helper.make_tensor_value_info("idx", TensorProto.INT64, [1])], [init])
    path = save_model(model, "argmax.onnx")
    # Every product overflows fp16 to inf, so the target's argmax is 0; the reference's is 7.
    np.savez(tmp_path / "x.npz", x=np.linspace(1.0, 2.0, 8, dtype=np.float32).reshape(1, 8))
    bisect = trtcheck_cli("bisect", path, "--inputs", "x.npz", "--json", "r.json", "--repro",
                          "repro")
    assert bisect.code == 2 and "not float tensors" in bisect.stderr
    assert "--min-agreement" in bisect.stderr and "--detections" in bisect.stderr
    assert len(bisect.stderr.strip().splitlines()) == 1 and "Traceback" not in bisect.stderr
    # compare --bisect keeps the comparison's verdict, with the bisect error beside it.
    compared = trtcheck_cli("compare", path, "--inputs", "x.npz", "--bisect", "--json",
                            "c.json", "--report", "c.html", "--repro", "repro")
    assert compared.code == 1
    document = read_json(tmp_path / "c.json")
    assert document["verdict"] == "fail" and "not float tensors" in document["bisect_error"]
    assert "bisect failed" in (tmp_path / "c.html").read_text()


def test_output_flag_picks_the_output(save_model, trtcheck_cli, tmp_path):
    from zoo.build import two_heads

    path = save_model(two_heads(), "heads.onnx")
    passing = trtcheck_cli("bisect", path, "--output", "scores", "--repro", "repro")
    assert passing.code == 2 and "within tolerance" in passing.stderr
    missing = trtcheck_cli("bisect", path, "--output", "nope", "--repro", "repro")
    assert missing.code == 2 and "no output of that name" in missing.stderr
    chosen = trtcheck_cli("bisect", path, "--output", "energy", "--json", "r.json",
                          "--repro", "repro")
    assert chosen.code == 1 and read_json(tmp_path / "r.json")["bisect"]["output"] == "energy"


def test_batches_bound_memory_and_agree(save_model):
    from zoo.build import overflow_chain

    path = save_model(overflow_chain(length=40, overflow_at=25), "chain.onnx")
    model = load_model(path)
    feed = {"x": np.random.default_rng(0).uniform(0, 1, (1, 64)).astype(np.float32)}
    with quiet_polygraphy():
        expected = run_marked(model, REFERENCE, BackendOptions(), feed, [], "ref")["y"]
        results = [localize(make_probe(model, REFERENCE, FP16, BackendOptions(), feed, "y",
                                       Tolerance(1e-2, 1e-2), expected, max_memory=budget),
                            fix_precision=False)
                   for budget in (1 << 30, 2 * 64 * 4 * 8)]  # everything; a few tensors a batch
    one, many = results
    assert one.batches == 1 and many.batches >= 10
    assert one.culprit_node == many.culprit_node == "chain/mul25"
    assert [p.diverged for p in one.trace] == [p.diverged for p in many.trace]


def attention(fill: float, mask_row: list[float], multiply: bool = False) -> onnx.ModelProto:
    """scores + bias -> Softmax, the bias built from a mask as exporters build it.

    `Where(mask, 0, fill)` (torch's SDPA mask), or `(1 - mask) * fill` (older BERT/GPT-2 code).
    """
    inits = [numpy_helper.from_array(np.array(1.0, np.float32), "one"),
             numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
             numpy_helper.from_array(np.array(fill, np.float32), "fill"),
             numpy_helper.from_array(np.array([mask_row], np.float32), "mask")]
    if multiply:
        build = [helper.make_node("Sub", ["one", "mask"], ["inverted"], name="invert"),
                 helper.make_node("Mul", ["inverted", "fill"], ["bias"], name="bias")]
    else:
        build = [helper.make_node("Cast", ["mask"], ["keep"], name="to_bool",
                                  to=TensorProto.BOOL),
                 helper.make_node("Where", ["keep", "zero", "fill"], ["bias"], name="bias")]
    nodes = [*build, helper.make_node("Add", ["scores", "bias"], ["masked"], name="add_mask"),
             helper.make_node("Softmax", ["masked"], ["probs"], name="softmax", axis=-1)]
    return _model(nodes, [helper.make_tensor_value_info("scores", F, [2, len(mask_row)])],
                  [helper.make_tensor_value_info("probs", F, [2, len(mask_row)])], inits)


def test_audit_tells_mask_fills_from_overflow(save_model, trtcheck_cli, tmp_path):
    lowest = float(np.finfo(np.float32).min)
    path = save_model(attention(lowest, [1, 1, 1, 0, 0]), "mask.onnx")
    run = trtcheck_cli("audit", path, "--precision", "fp16", "--json", "a.json")
    assert run.code == 0, run.stdout
    kinds = {(f["tensor"], f["kind"]) for f in read_json(tmp_path / "a.json")["findings"]}
    assert kinds == {("bias", "mask-fill"), ("masked", "mask-fill")}, kinds
    assert "harmless before Softmax" in run.stdout
    # The emulated fp16 target agrees: the masked probabilities are 0, the output passes.
    assert trtcheck_cli("compare", path).code == 0
    # (1 - mask) * lowest is 0 * -inf = NaN in fp16, and a row masked entirely is NaN too:
    # real failures, still overflows.
    for name, model in (("multiplied.onnx", attention(lowest, [1, 1, 1, 0, 0], multiply=True)),
                        ("all_masked.onnx", attention(lowest, [0, 0, 0, 0, 0]))):
        run = trtcheck_cli("audit", save_model(model, name), "--precision", "fp16", "--json",
                           "b.json")
        assert run.code == 1, name
        findings = read_json(tmp_path / "b.json")["findings"]
        assert {f["kind"] for f in findings} == {"overflow"}, name
        assert trtcheck_cli("compare", tmp_path / name).code == 1


def test_audit_json_is_valid(save_model, trtcheck_cli, tmp_path):
    path = save_model(constant_chain(), "const.onnx")
    trtcheck_cli("audit", path, "--json", "a.json")
    assert json.loads((tmp_path / "a.json").read_text())["findings"]


def test_paddle_resize_from_constant_nodes_bisects(save_model, trtcheck_cli, tmp_path):
    """Resize(x, roi, scales=<empty Constant>, sizes) after an overflow: compare, bisect, fix."""
    empty = numpy_helper.from_array(np.zeros((0,), np.float32))
    gain = numpy_helper.from_array(np.array(1e5, np.float32), "gain")
    shrink = numpy_helper.from_array(np.array(1e-5, np.float32), "shrink")
    sizes = numpy_helper.from_array(np.array([1, 1, 8, 8], np.int64), "sizes")
    nodes = [helper.make_node("Mul", ["x", "gain"], ["big"], name="amplify"),
             helper.make_node("Constant", [], ["roi"], name="roi", value=empty),
             helper.make_node("Constant", [], ["scales"], name="scales", value=empty),
             helper.make_node("Resize", ["big", "roi", "scales", "sizes"], ["up"],
                              name="resize", mode="nearest"),
             helper.make_node("Mul", ["up", "shrink"], ["y"], name="attenuate")]
    model = _model(nodes, [helper.make_tensor_value_info("x", F, [1, 1, 4, 4])],
                   [helper.make_tensor_value_info("y", F, [1, 1, 8, 8])],
                   [gain, shrink, sizes], opset=11)
    path = save_model(model, "paddle.onnx")
    run = trtcheck_cli("bisect", path, "--json", "r.json", "--repro", "repro")
    assert run.code == 1, run.stderr
    bisect = read_json(tmp_path / "r.json")["bisect"]
    assert bisect["culprit"]["node"] == "amplify"
    assert bisect["precision_fix"]["verified"]
    assert trtcheck_cli("audit", path).code == 1
