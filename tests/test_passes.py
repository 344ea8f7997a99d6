"""Each graph pass on small models built here, and the pipeline's verification and rollback."""

from __future__ import annotations

import contextlib
import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from trtcheck.errors import UsageError
from trtcheck.passes import PASSES, GraphPass, PassContext
from trtcheck.passes.pipeline import node_counts, run_pipeline, select_passes


def model_of(nodes, inputs, outputs, initializers=(), opset=17) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    onnx.checker.check_model(model)
    return model


def run(model: onnx.ModelProto, feeds) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def value(name, dtype, shape):
    return helper.make_tensor_value_info(name, dtype, shape)


X = value("x", TensorProto.FLOAT, [2, 3, 4])
Y = value("y", TensorProto.FLOAT, [2, 3, 4])


def test_remove_noops_keeps_the_output_name():
    shape = numpy_helper.from_array(np.array([2, 3, 4], np.int64), "same_shape")
    model = model_of([
        helper.make_node("Relu", ["x"], ["r"], name="relu"),
        helper.make_node("Identity", ["r"], ["i"], name="identity"),
        helper.make_node("Dropout", ["i"], ["d"], name="dropout"),
        helper.make_node("Cast", ["d"], ["c"], name="cast", to=TensorProto.FLOAT),
        helper.make_node("Reshape", ["c", "same_shape"], ["y"], name="reshape"),
    ], [X], [Y], [shape])
    model = onnx.shape_inference.infer_shapes(model)
    fixed = PASSES["remove-noops"].run(model, PassContext())
    assert [n.op_type for n in fixed.graph.node] == ["Relu"]
    assert fixed.graph.node[0].output[0] == "y" and fixed.graph.output[0].name == "y"
    x = np.random.default_rng(0).standard_normal((2, 3, 4)).astype(np.float32)
    np.testing.assert_array_equal(run(fixed, {"x": x})[0], run(model, {"x": x})[0])


def test_remove_noops_keeps_real_work():
    other_shape = numpy_helper.from_array(np.array([6, 4], np.int64), "other")
    y2 = value("y", TensorProto.FLOAT, [6, 4])
    model = model_of([
        helper.make_node("Cast", ["x"], ["h"], name="to_half", to=TensorProto.FLOAT16),
        helper.make_node("Cast", ["h"], ["f"], name="to_float", to=TensorProto.FLOAT),
        helper.make_node("Reshape", ["f", "other"], ["y"], name="reshape"),
    ], [X], [y2], [other_shape])
    model = onnx.shape_inference.infer_shapes(model)
    fixed = PASSES["remove-noops"].run(model, PassContext())
    assert [n.op_type for n in fixed.graph.node] == ["Cast", "Cast", "Reshape"]


def test_fold_constants_folds_constant_of_shape_weights():
    shape = numpy_helper.from_array(np.array([4, 4], np.int64), "w_shape")
    x = value("x", TensorProto.FLOAT, [2, 4])
    y = value("y", TensorProto.FLOAT, [2, 4])
    model = model_of([
        helper.make_node("ConstantOfShape", ["w_shape"], ["w"], name="make_w",
                         value=numpy_helper.from_array(np.array([0.5], np.float32))),
        helper.make_node("MatMul", ["x", "w"], ["y"], name="matmul"),
    ], [x], [y], [shape])
    fixed = PASSES["fold-constants"].run(model, PassContext())
    assert [n.op_type for n in fixed.graph.node] == ["MatMul"]
    (weight,) = fixed.graph.initializer
    np.testing.assert_array_equal(numpy_helper.to_array(weight), np.full((4, 4), 0.5, np.float32))


def test_infer_shapes_makes_given_dims_static():
    x = value("x", TensorProto.FLOAT, ["N", 3])
    y = value("y", TensorProto.FLOAT, ["N", 3])
    model = model_of([helper.make_node("Relu", ["x"], ["y"], name="relu")], [x], [y])
    fixed = PASSES["infer-shapes"].run(model, PassContext(shapes={"x": (5, 3)}))
    dims = [d.dim_value for d in fixed.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [5, 3]
    with pytest.raises(ValueError, match="fixed dimension 3"):
        PASSES["infer-shapes"].run(model, PassContext(shapes={"x": (5, 4)}))


def _if_model(condition: bool) -> onnx.ModelProto:
    out_then = value("t", TensorProto.FLOAT, [2, 3, 4])
    out_else = value("e", TensorProto.FLOAT, [2, 3, 4])
    then_graph = helper.make_graph([helper.make_node("Relu", ["x"], ["t"], name="then_relu")],
                                   "then", [], [out_then])
    else_graph = helper.make_graph([helper.make_node("Neg", ["x"], ["e"], name="else_neg")],
                                   "else", [], [out_else])
    cond = numpy_helper.from_array(np.array(condition), "cond")
    return model_of([helper.make_node("If", ["cond"], ["y"], name="branch",
                                      then_branch=then_graph, else_branch=else_graph)],
                    [X], [Y], [cond])


@pytest.mark.parametrize("condition, op", [(True, "Relu"), (False, "Neg")])
def test_inline_if_takes_the_constant_branch(condition, op):
    model = _if_model(condition)
    fixed = PASSES["inline-if"].run(model, PassContext())
    assert "If" not in node_counts(fixed) and op in node_counts(fixed)
    x = np.random.default_rng(1).standard_normal((2, 3, 4)).astype(np.float32)
    np.testing.assert_array_equal(run(fixed, {"x": x})[0], run(model, {"x": x})[0])


def test_narrow_int64_where_the_schema_allows():
    data = value("data", TensorProto.FLOAT, [10, 4])
    out = value("y", TensorProto.FLOAT, [3, 4])
    shaped = value("z", TensorProto.FLOAT, [4, 3])
    inits = [numpy_helper.from_array(np.array([0, 5, 9], np.int64), "indices"),
             numpy_helper.from_array(np.array([4, 3], np.int64), "shape")]
    model = model_of([
        helper.make_node("Gather", ["data", "indices"], ["y"], name="gather"),
        helper.make_node("Reshape", ["y", "shape"], ["z"], name="reshape"),
    ], [data], [out, shaped], inits)
    fixed = PASSES["narrow-int64"].run(model, PassContext())
    types = {i.name: i.data_type for i in fixed.graph.initializer}
    assert types == {"indices__int32": TensorProto.INT32, "shape": TensorProto.INT64}
    onnx.checker.check_model(fixed, full_check=True)


def test_narrow_int64_narrows_shared_type_variables_together():
    x = value("x", TensorProto.FLOAT, [10])
    y = value("y", TensorProto.FLOAT, [4])
    inits = [numpy_helper.from_array(np.array([2], np.int64), "starts"),
             numpy_helper.from_array(np.array([6], np.int64), "ends")]
    model = model_of([helper.make_node("Slice", ["x", "starts", "ends"], ["y"], name="slice")],
                     [x], [y], inits)
    fixed = PASSES["narrow-int64"].run(model, PassContext())
    assert {i.data_type for i in fixed.graph.initializer} == {TensorProto.INT32}
    onnx.checker.check_model(fixed, full_check=True)
    big = model_of([helper.make_node("Slice", ["x", "starts", "ends"], ["y"], name="slice")],
                   [x], [y], [inits[0], numpy_helper.from_array(np.array([2**40], np.int64),
                                                                "ends")])
    kept = PASSES["narrow-int64"].run(big, PassContext())
    assert {i.data_type for i in kept.graph.initializer} == {TensorProto.INT64}


def test_initializer_inputs_computes_shape_derived_axes():
    # Slice axes computed from the input's rank: Shape -> Shape -> Sub -> ... -> axes.
    x = value("x", TensorProto.FLOAT, [2, 8])
    y = value("y", TensorProto.FLOAT, [2, 4])
    inits = [numpy_helper.from_array(np.array([1], np.int64), "one"),
             numpy_helper.from_array(np.array([0], np.int64), "starts"),
             numpy_helper.from_array(np.array([4], np.int64), "ends")]
    model = model_of([
        helper.make_node("Shape", ["x"], ["shape"], name="shape"),
        helper.make_node("Shape", ["shape"], ["rank"], name="rank"),
        helper.make_node("Sub", ["rank", "one"], ["axes"], name="last_axis"),
        helper.make_node("Slice", ["x", "starts", "ends", "axes"], ["y"], name="slice"),
    ], [x], [y], inits)
    fixed = PASSES["initializer-inputs"].run(model, PassContext())
    slice_node = next(n for n in fixed.graph.node if n.op_type == "Slice")
    constants = {i.name: numpy_helper.to_array(i) for i in fixed.graph.initializer}
    assert slice_node.input[3] in constants
    np.testing.assert_array_equal(constants[slice_node.input[3]], [1])
    assert "Sub" not in node_counts(fixed)


def test_initializer_inputs_leaves_runtime_values():
    x = value("x", TensorProto.FLOAT, [2, 8])
    k = value("k", TensorProto.INT64, [1])
    values = value("values", TensorProto.FLOAT, [2, None])
    indices = value("indices", TensorProto.INT64, [2, None])
    model = model_of([helper.make_node("TopK", ["x", "k"], ["values", "indices"], name="topk")],
                     [x, k], [values, indices])
    fixed = PASSES["initializer-inputs"].run(model, PassContext())
    assert fixed.graph.node[0].input[1] == "k"


def _feeds(model, seed=0):
    rng = np.random.default_rng(seed)
    feeds = {}
    initializers = {i.name for i in model.graph.initializer}
    for inp in model.graph.input:
        if inp.name in initializers:
            continue
        dims = [d.dim_value for d in inp.type.tensor_type.shape.dim]
        feeds[inp.name] = rng.standard_normal(dims).astype(np.float32)
    return [feeds]


def test_pipeline_rolls_back_a_pass_that_changes_outputs(monkeypatch):
    model = model_of([helper.make_node("Relu", ["x"], ["y"], name="relu")], [X], [Y])

    def harmful(m, context):
        """Turns Relu into Abs."""
        changed = onnx.ModelProto()
        changed.CopyFrom(m)
        changed.graph.node[0].op_type = "Abs"
        return changed

    def crashing(m, context):
        """Raises."""
        raise RuntimeError("boom")

    passes = {"harmful": GraphPass("harmful", harmful), "crashing": GraphPass("crashing", crashing),
              **PASSES}
    monkeypatch.setattr("trtcheck.passes.pipeline.PASSES", passes)
    result = run_pipeline(model, ["harmful", "crashing", "remove-noops"], PassContext(),
                          _feeds(model))
    harm, crash, noop = result.outcomes
    assert harm.status == "rolled-back" and "changed output 'y' by" in harm.message
    assert harm.max_change["y"] > 0.1
    assert crash.status == "failed" and crash.message == "RuntimeError: boom"
    assert noop.status == "unchanged"
    assert node_counts(result.model) == {"Relu": 1}
    assert result.final_change == {"y": 0.0} and not result.clean


def test_pipeline_order_and_names():
    assert select_passes(["remove-noops", "fold-constants"]) == ["fold-constants", "remove-noops"]
    with pytest.raises(UsageError, match="unknown pass.*fold-constants"):
        select_passes(["fold"])
    for graph_pass in PASSES.values():
        assert graph_pass.rules, f"{graph_pass.name} documents its rules"


LIGHT = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light")


@pytest.mark.parametrize("name", ["squeezenet", "shufflenet", "inception_v1"])
def test_light_models_fold_constant_of_shape_weights_bit_identically(name):
    model = onnx.load(os.path.join(LIGHT, f"light_{name}.onnx"))
    before = node_counts(model)
    result = run_pipeline(model, select_passes(None), PassContext(), _feeds(model))
    assert result.clean, [(o.name, o.message) for o in result.outcomes]
    after = node_counts(result.model)
    assert before["ConstantOfShape"] > 0 and after["ConstantOfShape"] == 0
    assert result.final_change and max(result.final_change.values()) == 0.0


def test_docs_describe_every_pass():
    from pathlib import Path

    docs = (Path(__file__).parents[1] / "docs" / "passes.md").read_text()
    for graph_pass in PASSES.values():
        assert f"## `{graph_pass.name}`" in docs
        assert graph_pass.rules.replace("\n    ", "\n") in docs, graph_pass.name


def test_fold_constants_respects_shape_start_and_end():
    # onnx-graphsurgeon alone folds Shape(start=1) of a [3,4,5] tensor to [3,4,5].
    x = value("x", TensorProto.FLOAT, [3, 4, 5])
    y = value("y", TensorProto.INT64, [2])
    model = model_of([helper.make_node("Shape", ["x"], ["y"], name="shape", start=1)], [x], [y])
    fixed = PASSES["fold-constants"].run(model, PassContext())
    assert len(fixed.graph.node) == 0
    np.testing.assert_array_equal(numpy_helper.to_array(fixed.graph.initializer[0]), [4, 5])


def test_inline_if_with_unnamed_nodes_keeps_names_unique():
    model = _if_model(True)
    model.graph.node[0].name = ""
    model.graph.node[0].attribute[1].g.node[0].name = ""  # the then-branch Relu
    model.graph.node[0].attribute[0].g.node[0].name = ""
    fixed = PASSES["inline-if"].run(model, PassContext())
    names = [n.name for n in fixed.graph.node if n.name]
    assert len(names) == len(set(names))
    onnx.checker.check_model(fixed)


def test_optional_values_are_skipped_not_failed():
    optional = helper.make_value_info(
        "x", helper.make_optional_type_proto(helper.make_tensor_type_proto(TensorProto.FLOAT,
                                                                           [2])))
    y = value("y", TensorProto.BOOL, [])
    model = model_of([helper.make_node("OptionalHasElement", ["x"], ["y"], name="has")],
                     [optional], [y], opset=18)
    result = run_pipeline(model, ["fold-constants"], PassContext(),
                          [{"x": np.zeros(2, np.float32)}])
    (outcome,) = result.outcomes
    assert outcome.status == "skipped" and "optional-typed" in outcome.message
    assert result.clean


def test_relative_change_on_sequences_and_strings():
    from trtcheck.passes.pipeline import relative_change

    before = [{"seq": [np.ones(2), np.zeros(3)], "text": np.array(["a", "b"]),
               "x": np.array([1.0, 2.0])}]
    same = [{"seq": [np.ones(2), np.zeros(3)], "text": np.array(["a", "b"]),
             "x": np.array([1.0, 2.0 + 2e-7])}]
    changed = [{"seq": [np.ones(2)], "text": np.array(["a", "c"]), "x": np.array([1.0, 2.0])}]
    assert relative_change(before, same) == {"seq": 0.0, "text": 0.0, "x": pytest.approx(1e-7)}
    assert relative_change(before, changed) == {"seq": float("inf"), "text": float("inf"),
                                                "x": 0.0}


def _custom_domain_model() -> onnx.ModelProto:
    """Ops with default-domain names in a custom domain: no pass may treat them as ONNX's."""
    shape = numpy_helper.from_array(np.array([2, 3, 4], np.int64), "shape")
    true = numpy_helper.from_array(np.array(True), "cond")
    branch = helper.make_graph([helper.make_node("Relu", ["x"], ["b"], name="inner")], "then",
                               [], [value("b", TensorProto.FLOAT, [2, 3, 4])])
    nodes = [
        helper.make_node("Identity", ["x"], ["a"], name="identity", domain="com.example"),
        helper.make_node("Cast", ["a"], ["c"], name="cast", to=TensorProto.FLOAT,
                         domain="com.example"),
        helper.make_node("Reshape", ["c", "shape"], ["d"], name="reshape", domain="com.example"),
        helper.make_node("Dropout", ["d"], ["e"], name="dropout", domain="com.example"),
        helper.make_node("If", ["cond"], ["f"], name="if", domain="com.example",
                         then_branch=branch, else_branch=branch),
        helper.make_node("Add", ["e", "f"], ["y"], name="add"),
    ]
    graph = helper.make_graph(nodes, "g", [X], [Y], [shape, true])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                   helper.make_opsetid("com.example", 1)])


@pytest.mark.parametrize("name", list(PASSES))
def test_passes_leave_custom_domain_ops_alone(name):
    model = _custom_domain_model()
    fixed = PASSES[name].run(model, PassContext())
    def custom(m: onnx.ModelProto) -> list[tuple[str, str]]:
        return sorted((n.name, n.op_type) for n in m.graph.node if n.domain == "com.example")

    assert custom(fixed) == custom(model)  # folding may reorder them (toposort), not drop them


def test_remove_noops_still_removes_onnx_identity_next_to_a_custom_one():
    model = _custom_domain_model()
    model.graph.node.insert(0, helper.make_node("Identity", ["x"], ["x2"], name="onnx_identity"))
    model.graph.node[1].input[0] = "x2"
    fixed = PASSES["remove-noops"].run(model, PassContext())
    assert [n.name for n in fixed.graph.node if n.op_type == "Identity"] == ["identity"]


ZOO = os.path.join(os.path.dirname(__file__), os.pardir, "zoo", "real")


@pytest.mark.parametrize("model_name", ["bert_tiny_classic", "gpt2_tiny_dynamo",
                                        "mobilenet_v3_tiny_qdq", "ssdlite_tiny_classic"])
def test_no_pass_mutates_its_input(model_name):
    model = onnx.load(os.path.join(ZOO, f"{model_name}.onnx"))
    before = model.SerializeToString(deterministic=True)
    # Shapes make infer-shapes and initializer-inputs rewrite more of the graph.
    shapes = {i.name: tuple(d.dim_value or 1 for d in i.type.tensor_type.shape.dim)
              for i in model.graph.input}
    for name, graph_pass in PASSES.items():
        # A pass may refuse a model; it still must not edit it.
        with contextlib.suppress(Exception):
            graph_pass.run(model, PassContext(shapes=shapes))
        assert model.SerializeToString(deterministic=True) == before, name


def _perturb_largest_weight(model: onnx.ModelProto, context: PassContext) -> onnx.ModelProto:
    """Scales the largest float weight by 1 + 1e-4: a real, small change of the computation."""
    changed = onnx.ModelProto()
    changed.CopyFrom(model)
    floats = [t for t in changed.graph.initializer if t.data_type == TensorProto.FLOAT]
    largest = max(floats, key=lambda t: np.prod(t.dims))
    values = numpy_helper.to_array(largest) * np.float32(1 + 1e-4)
    largest.CopyFrom(numpy_helper.from_array(values, largest.name))
    return changed


def _zoo_feeds(model_name: str) -> list[dict[str, np.ndarray]]:
    import json

    with open(os.path.join(ZOO, "manifest.json")) as stream:
        manifest = json.load(stream)
    entries = manifest if isinstance(manifest, list) else manifest["models"]
    entry = next(e for e in entries if e["name"] == model_name)
    rng = np.random.default_rng(0)
    return [{name: rng.integers(low, high + 1, shape).astype(np.int64)
             for name, shape in entry["input_shapes"].items()
             for low, high in [entry["val_ranges"][name]]}]


@pytest.mark.parametrize("model_name", ["bert_tiny_classic", "gpt2_tiny_classic"])
def test_onnx_runtime_noise_is_allowed_and_a_perturbed_weight_rolled_back(model_name,
                                                                        monkeypatch):
    model = onnx.load(os.path.join(ZOO, f"{model_name}.onnx"))
    passes = {**PASSES, "perturb": GraphPass("perturb", _perturb_largest_weight)}
    monkeypatch.setattr("trtcheck.passes.pipeline.PASSES", passes)
    # rtol 0: only the measured noise floor may let infer-shapes' kernel noise through.
    result = run_pipeline(model, ["infer-shapes", "fold-constants", "perturb"], PassContext(),
                          _zoo_feeds(model_name), rtol=0.0)
    infer, fold, perturb = result.outcomes
    noise = result.noise
    assert noise is not None and noise.settings == ("rerun", "basic", "disabled")
    assert noise.largest > 0  # ONNX Runtime with fewer optimizations rounds differently
    assert max(infer.max_change.values()) > 0, "infer-shapes changes the kernels ORT picks"
    assert infer.status == "changed" and fold.status == "changed", (infer.message, fold.message)
    assert perturb.status == "rolled-back" and "ONNX Runtime's own spread" in perturb.message
    worst = max(perturb.max_change, key=perturb.max_change.get)
    assert perturb.max_change[worst] > 10 * noise.allowed(worst)


def test_noise_floor_allowance_rules():
    from trtcheck.passes.pipeline import NoiseFloor

    noise = NoiseFloor({"a": 0.0, "b": 2e-7, "c": 1.0, "d": float("inf")}, ("rerun",), 1e-6)
    assert noise.allowed("a") == 1e-6  # the rtol floor
    assert noise.allowed("b") == pytest.approx(2e-6)  # 10 x the spread
    assert noise.allowed("c") == noise.ceiling  # instability is not noise
    assert noise.allowed("d") == 1e-6  # runs that disagree on NaNs say nothing of rounding
