"""Precision emulation rounds exactly where the plan says, and nowhere else."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from trtcheck.errors import UsageError
from trtcheck.precision import PrecisionPlan, convert, emulate
from zoo.build import cnn, overflow_chain


def run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def add_model() -> onnx.ModelProto:
    """y = x + w, with a weight w that fp16 cannot represent exactly."""
    w = numpy_helper.from_array(np.full((1, 8), 1.0001, np.float32), "w")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])
    graph = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"], name="add")], "add",
                              [x], [y], [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("precision, dtype", [("fp16", np.float16),
                                              ("bf16", ml_dtypes.bfloat16)])
def test_inputs_weights_and_outputs_are_rounded(precision, dtype):
    x = np.linspace(0.1, 3.3, 8, dtype=np.float32).reshape(1, 8)
    (y,) = run(emulate(add_model(), PrecisionPlan(precision)), {"x": x})

    def rounded(a):
        return np.asarray(a).astype(dtype).astype(np.float32)

    w = np.full((1, 8), 1.0001, np.float32)
    np.testing.assert_array_equal(y, rounded(rounded(x) + rounded(w)))
    assert not np.array_equal(y, x + w)


def test_fp32_plan_is_the_original():
    model = add_model()
    assert emulate(model, PrecisionPlan("fp32")) is model


def test_keep_fp32_node_is_not_rounded():
    x = np.linspace(0.1, 3.3, 8, dtype=np.float32).reshape(1, 8)
    (y,) = run(emulate(add_model(), PrecisionPlan("fp16", frozenset({"add"}))), {"x": x})
    np.testing.assert_array_equal(y, x + np.float32(1.0001))


def test_overflow_appears_at_the_planted_node():
    model = overflow_chain(length=8, overflow_at=3)
    x = np.full((1, 64), 1.0, np.float32)
    (fp32,) = run(model, {"x": x})
    (fp16,) = run(emulate(model, PrecisionPlan("fp16")), {"x": x})
    (bf16,) = run(emulate(model, PrecisionPlan("bf16")), {"x": x})
    assert np.isfinite(fp32).all()
    assert np.isinf(fp16).all()
    assert np.isfinite(bf16).all()  # bf16 has fp32's exponent range


def test_keeping_overflowing_region_in_fp32_fixes_it():
    model = overflow_chain(length=8, overflow_at=3)
    x = np.full((1, 64), 1.0, np.float32)
    (fp32,) = run(model, {"x": x})
    # The 1e5-scaled tensor flows through add3 into mul4 (which scales back), so all three
    # must stay fp32; keeping only the producer would still round its output for mul4's input.
    keep = frozenset({"chain/mul3", "chain/add3", "chain/mul4"})
    (fixed,) = run(emulate(model, PrecisionPlan("fp16", keep)), {"x": x})
    assert np.isfinite(fixed).all()
    np.testing.assert_allclose(fixed, fp32, rtol=1e-2, atol=1e-2)
    (partial,) = run(emulate(model, PrecisionPlan("fp16", frozenset({"chain/mul3"}))), {"x": x})
    assert np.isinf(partial).all()


def test_emulated_cnn_is_valid_and_close():
    model = cnn(seed=2)
    emulated = emulate(model, PrecisionPlan("fp16"))
    onnx.checker.check_model(emulated)
    casts = sum(node.op_type == "Cast" for node in emulated.graph.node)
    assert casts >= 2 * len(model.graph.node)
    x = np.random.default_rng(0).random((1, 3, 32, 32), dtype=np.float32)
    (reference,) = run(model, {"image": x})
    (reduced,) = run(emulated, {"image": x})
    assert 0 < np.abs(reduced - reference).max() < 1e-2


def test_convert_gives_reduced_types_at_reduced_nodes():
    model = cnn(seed=2)
    converted = convert(model, PrecisionPlan("fp16", frozenset({"head/gemm"})))
    inferred = onnx.shape_inference.infer_shapes(converted, strict_mode=True)
    onnx.checker.check_model(inferred)
    types = {v.name: v.type.tensor_type.elem_type for v in inferred.graph.value_info}
    types.update({i.name: i.data_type for i in inferred.graph.initializer})
    assert inferred.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert inferred.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert types["trunk.w1__fp16"] == TensorProto.FLOAT16
    assert types["head.w"] == TensorProto.FLOAT  # read only by the fp32 node
    conv1 = next(n for n in inferred.graph.node if n.name == "trunk/conv1")
    assert types[conv1.output[0]] == TensorProto.FLOAT16


def test_bf16_upgrades_an_old_opset():
    model = add_model()
    model.opset_import[0].version = 12
    x = np.linspace(0.1, 3.3, 8, dtype=np.float32).reshape(1, 8)
    emulated = emulate(model, PrecisionPlan("bf16"))
    assert emulated.opset_import[0].version == 13
    (y,) = run(emulated, {"x": x})
    w = np.full((1, 8), 1.0001, np.float32)

    def rounded(a):
        return np.asarray(a).astype(ml_dtypes.bfloat16).astype(np.float32)

    np.testing.assert_array_equal(y, rounded(rounded(x) + rounded(w)))


def test_opset_upgrade_failure_is_a_usage_error(monkeypatch):
    from onnx import version_converter

    def refuse(model, version):
        raise RuntimeError("no adapter for op Foo")

    monkeypatch.setattr(version_converter, "convert_version", refuse)
    model = add_model()
    model.opset_import[0].version = 12
    with pytest.raises(UsageError, match="opset 12 and onnx.version_converter could not"):
        emulate(model, PrecisionPlan("bf16"))


def test_unknown_precision():
    with pytest.raises(UsageError, match="fp32, fp16, bf16"):
        PrecisionPlan("int8")


# --------------------------------------------------------------------------- rules (module doc)

FP16 = PrecisionPlan("fp16")
BF16 = PrecisionPlan("bf16")
REDUCED = [pytest.param(FP16, np.float16, id="fp16"),
           pytest.param(BF16, ml_dtypes.bfloat16, id="bf16")]


def build(nodes, inputs, outputs, initializers=(), opset=17, extra_opsets=()):
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(initializers))
    opsets = [helper.make_opsetid("", opset), *(helper.make_opsetid(d, v) for d, v in extra_opsets)]
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 8
    return model


def tensor(name, shape, elem_type=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, elem_type, shape)


def const(name, array):
    return numpy_helper.from_array(np.asarray(array), name)


def rounded(array, dtype=np.float16):
    return np.asarray(array, np.float32).astype(dtype).astype(np.float32)


def valid_fp16(model, feeds):
    """convert(fp16) passes the full checker and runs on ONNX Runtime; returns it and outputs.

    ONNX Runtime's CPU provider runs many fp16 ops in fp32 between Casts that it then merges, so
    a converted model's outputs are compared with tolerances, never bit for bit.
    """
    converted = convert(model, FP16)
    onnx.checker.check_model(converted, full_check=True)
    return converted, run(converted, feeds)


def node_named(model, name):
    return next(node for node in model.graph.node if node.name == name)


def casts_from(model, name):
    return [node for node in model.graph.node if node.op_type == "Cast" and name in node.input]


def inferred_types(model):
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    graph = inferred.graph
    types = {v.name: v.type.tensor_type.elem_type
             for v in [*graph.value_info, *graph.input, *graph.output]}
    types.update({init.name: init.data_type for init in graph.initializer})
    return types


def paddle_resize(opset=11):
    """Paddle2ONNX's Resize: roi and scales are empty float tensors from Constant nodes."""
    empty = numpy_helper.from_array(np.zeros((0,), np.float32))
    nodes = [
        helper.make_node("Relu", ["x"], ["r"], name="relu"),
        helper.make_node("Constant", [], ["roi"], name="roi", value=empty),
        helper.make_node("Constant", [], ["scales"], name="scales", value=empty),
        helper.make_node("Resize", ["r", "roi", "scales", "sizes"], ["y"], name="resize",
                         mode="nearest"),
    ]
    sizes = const("sizes", np.array([1, 1, 8, 8], np.int64))
    return build(nodes, [tensor("x", [1, 1, 4, 4])], [tensor("y", [1, 1, 8, 8])], [sizes],
                 opset=opset)


@pytest.mark.parametrize("plan, dtype", REDUCED)
def test_constant_fed_resize_with_empty_roi_and_scales(plan, dtype):
    """Rules 1 and 7: Constant nodes are not reduced and their empty outputs are never cast."""
    model = paddle_resize()
    x = np.linspace(0.1, 3.3, 16, dtype=np.float32).reshape(1, 1, 4, 4)
    (reference,) = run(model, {"x": x})
    emulated = emulate(model, plan)
    resize = node_named(emulated, "resize")
    assert list(resize.input[1:3]) == ["roi", "scales"]
    assert not casts_from(emulated, "roi") and not casts_from(emulated, "scales")
    (y,) = run(emulated, {"x": x})
    np.testing.assert_array_equal(y, rounded(reference, dtype))  # nearest: only copies values
    assert not np.array_equal(y, reference)


def test_constant_fed_resize_converts_to_a_valid_model():
    model = paddle_resize()
    x = np.linspace(0.1, 3.3, 16, dtype=np.float32).reshape(1, 1, 4, 4)
    (reference,) = run(model, {"x": x})
    converted, (y,) = valid_fp16(model, {"x": x})
    types = inferred_types(converted)
    assert types["roi"] == types["scales"] == TensorProto.FLOAT
    assert types[node_named(converted, "resize").input[0]] == TensorProto.FLOAT16
    np.testing.assert_allclose(y, reference, rtol=1e-3)


def test_nodes_outside_the_default_domain_stay_fp32():
    """Rule 1: com.microsoft ops keep fp32 inputs and outputs."""
    nodes = [helper.make_node("Gelu", ["x"], ["g"], name="gelu", domain="com.microsoft"),
             helper.make_node("Add", ["g", "x"], ["y"], name="add")]
    model = build(nodes, [tensor("x", [2, 3])], [tensor("y", [2, 3])],
                  extra_opsets=[("com.microsoft", 1)])
    model.graph.value_info.append(tensor("g", [2, 3]))  # onnx cannot infer com.microsoft types
    x = np.linspace(-2, 2, 6, dtype=np.float32).reshape(2, 3)
    emulated = emulate(model, FP16)
    gelu = node_named(emulated, "gelu")
    assert list(gelu.input) == ["x"] and list(gelu.output) == ["g"]
    run(emulated, {"x": x})
    converted = convert(model, FP16)
    assert list(node_named(converted, "gelu").input) == ["x"]
    assert len(casts_from(converted, "g")) == 1  # Gelu's fp32 output is cast for the Add
    run(converted, {"x": x})


def test_if_reading_an_outer_scope_tensor():
    """Rules 1 and 8: If stays fp32, its bodies untouched, and the tensor they read stays fp32."""
    def branch(op, name):
        return helper.make_graph([helper.make_node(op, ["s"], [f"{name}_out"], name=name)], name,
                                 [], [tensor(f"{name}_out", [4])])

    nodes = [helper.make_node("Add", ["x", "w"], ["s"], name="add"),
             helper.make_node("If", ["cond"], ["z"], name="if",
                              then_branch=branch("Identity", "then"),
                              else_branch=branch("Neg", "else"))]
    w = const("w", np.full(4, 1.0001, np.float32))
    model = build(nodes, [tensor("x", [4]), tensor("cond", [], TensorProto.BOOL)],
                  [tensor("z", [4])], [w])
    x = np.linspace(0.1, 3.3, 4, dtype=np.float32)
    expected = rounded(rounded(x) + rounded(np.full(4, 1.0001, np.float32)))
    for cond in (True, False):
        feeds = {"x": x, "cond": np.array(cond)}
        (z,) = run(emulate(model, FP16), feeds)
        np.testing.assert_array_equal(z, expected if cond else -expected)
        converted, (z,) = valid_fp16(model, feeds)
        np.testing.assert_allclose(z, expected if cond else -expected, rtol=1e-3)
    if_node = node_named(converted, "if")
    assert if_node.attribute[0].g.node[0].input == ["s"]  # the body is untouched
    assert inferred_types(converted)["s"] == TensorProto.FLOAT
    assert inferred_types(converted)[node_named(converted, "add").output[0]] == TensorProto.FLOAT16


def test_loop_reading_an_outer_scope_tensor():
    """Rules 1 and 8: a Loop body adding an outer-scope tensor to its carried value."""
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"], name="body/cond"),
         helper.make_node("Add", ["acc_in", "s"], ["acc_out"], name="body/add")],
        "body", [tensor("i", [], TensorProto.INT64), tensor("cond_in", [], TensorProto.BOOL),
                 tensor("acc_in", [4])],
        [tensor("cond_out", [], TensorProto.BOOL), tensor("acc_out", [4])])
    nodes = [helper.make_node("Mul", ["x", "w"], ["s"], name="mul"),
             helper.make_node("Loop", ["trips", "", "x"], ["acc"], name="loop", body=body)]
    inits = [const("w", np.full(4, 3.0001, np.float32)), const("trips", np.array(3, np.int64))]
    model = build(nodes, [tensor("x", [4])], [tensor("acc", [4])], inits)
    x = np.linspace(0.1, 3.3, 4, dtype=np.float32)
    (reference,) = run(model, {"x": x})
    (emulated,) = run(emulate(model, FP16), {"x": x})
    _, (converted,) = valid_fp16(model, {"x": x})
    np.testing.assert_allclose(emulated, reference, rtol=2e-3)
    assert not np.array_equal(emulated, reference)
    np.testing.assert_allclose(converted, emulated, rtol=2e-3)


def test_sequence_outputs_are_left_alone():
    """Rule 1: SequenceConstruct reads fp32 tensors; the sequence output keeps its type."""
    nodes = [helper.make_node("Add", ["x", "w"], ["a"], name="add"),
             helper.make_node("SequenceConstruct", ["a", "x"], ["seq"], name="seq")]
    seq = helper.make_tensor_sequence_value_info("seq", TensorProto.FLOAT, [4])
    model = build(nodes, [tensor("x", [4])], [seq], [const("w", np.full(4, 1.0001, np.float32))])
    x = np.linspace(0.1, 3.3, 4, dtype=np.float32)
    for plan, dtype in ((FP16, np.float16), (BF16, ml_dtypes.bfloat16)):
        (items,) = run(emulate(model, plan), {"x": x})
        np.testing.assert_array_equal(items[1], x)
        np.testing.assert_array_equal(items[0], rounded(rounded(x, dtype) + rounded(
            np.full(4, 1.0001, np.float32), dtype), dtype))
    converted, (items,) = valid_fp16(model, {"x": x})
    assert list(node_named(converted, "seq").input) == ["a", "x"]
    np.testing.assert_array_equal(items[1], x)


def test_if_with_optional_outputs():
    """Rule 1: an If whose branches return optionals (one empty) runs emulated and converted."""
    optional = helper.make_optional_type_proto(helper.make_tensor_type_proto(TensorProto.FLOAT,
                                                                               [4]))
    then_branch = helper.make_graph(
        [helper.make_node("Optional", ["s"], ["then_out"], name="then/opt")], "then", [],
        [helper.make_value_info("then_out", optional)])
    else_branch = helper.make_graph(
        [helper.make_node("Optional", [], ["else_out"], name="else/opt",
                          type=helper.make_tensor_type_proto(TensorProto.FLOAT, [4]))],
        "else", [], [helper.make_value_info("else_out", optional)])
    nodes = [helper.make_node("Mul", ["x", "x"], ["s"], name="square"),
             helper.make_node("If", ["cond"], ["maybe"], name="if", then_branch=then_branch,
                              else_branch=else_branch)]
    model = build(nodes, [tensor("x", [4]), tensor("cond", [], TensorProto.BOOL)],
                  [helper.make_value_info("maybe", optional)], opset=18)
    x = np.linspace(0.1, 3.3, 4, dtype=np.float32)
    for plan in (FP16, BF16):
        (some,) = run(emulate(model, plan), {"x": x, "cond": np.array(True)})
        (none,) = run(emulate(model, plan), {"x": x, "cond": np.array(False)})
        assert some.shape == (4,) and none is None
    _, (some,) = valid_fp16(model, {"x": x, "cond": np.array(True)})
    np.testing.assert_allclose(some, x * x, rtol=2e-3)


def test_attribute_typed_outputs_stay_fp32():
    """Rule 2: EyeLike (its type would follow its input) stays fp32; Cast keeps its `to`."""
    nodes = [helper.make_node("EyeLike", ["x"], ["eye"], name="eye"),
             helper.make_node("Add", ["eye", "x"], ["y"], name="add"),
             helper.make_node("Cast", ["y"], ["yi"], name="cast", to=TensorProto.INT32)]
    model = build(nodes, [tensor("x", [3, 3])], [tensor("y", [3, 3]),
                                                 tensor("yi", [3, 3], TensorProto.INT32)])
    x = np.arange(9, dtype=np.float32).reshape(3, 3) * 0.25  # exact in fp16
    converted, (y, yi) = valid_fp16(model, {"x": x})
    types = inferred_types(converted)
    assert types["eye"] == TensorProto.FLOAT
    assert list(node_named(converted, "eye").input) == ["x"]
    cast = node_named(converted, "cast")
    assert types[cast.input[0]] == TensorProto.FLOAT16  # reads the reduced Add directly
    (emulated_y, emulated_yi) = run(emulate(model, FP16), {"x": x})
    np.testing.assert_array_equal(y, emulated_y)
    np.testing.assert_array_equal(yi, emulated_yi)


def test_layer_normalization_keeps_its_stash_typed_outputs():
    """Rule 2's exception: LayerNormalization reduces Y while Mean stays float (stash_type)."""
    nodes = [helper.make_node("LayerNormalization", ["x", "scale", "bias"], ["y", "mean"],
                              name="ln", axis=-1)]
    inits = [const("scale", np.ones(4, np.float32)), const("bias", np.zeros(4, np.float32))]
    model = build(nodes, [tensor("x", [2, 4])], [tensor("y", [2, 4]), tensor("mean", [2, 1])],
                  inits)
    converted = convert(model, FP16)
    onnx.checker.check_model(converted, full_check=True)
    types = inferred_types(converted)
    ln = node_named(converted, "ln")
    assert types[ln.input[0]] == types[ln.output[0]] == TensorProto.FLOAT16
    assert ln.output[1] == "mean" and types["mean"] == TensorProto.FLOAT


def test_non_max_suppression_keeps_fp32_inputs():
    """Rule 3: boxes, scores and thresholds are tensor(float) in the schema: never reduced."""
    nodes = [helper.make_node("Mul", ["boxes_in", "one"], ["boxes"], name="mul"),
             helper.make_node("NonMaxSuppression", ["boxes", "scores", "max", "iou", "thresh"],
                              ["selected"], name="nms")]
    inits = [const("one", np.array(1.0, np.float32)), const("max", np.array([3], np.int64)),
             const("iou", np.array([0.5], np.float32)),
             const("thresh", np.array([0.0001], np.float32))]
    model = build(nodes, [tensor("boxes_in", [1, 4, 4]), tensor("scores", [1, 1, 4])],
                  [tensor("selected", [None, 3], TensorProto.INT64)], inits)
    rng = np.random.default_rng(0)
    corners = rng.random((1, 4, 2), dtype=np.float32)
    feeds = {"boxes_in": np.concatenate([corners, corners + 0.3], axis=2),
             "scores": rng.random((1, 1, 4), dtype=np.float32)}
    (reference,) = run(model, feeds)
    emulated = emulate(model, FP16)
    assert list(node_named(emulated, "nms").input) == ["boxes", "scores", "max", "iou", "thresh"]
    assert numpy_helper.to_array(next(i for i in emulated.graph.initializer
                                      if i.name == "thresh")) == np.float32(0.0001)
    np.testing.assert_array_equal(run(emulated, feeds)[0], reference)
    converted, (selected,) = valid_fp16(model, feeds)
    types = inferred_types(converted)
    assert all(types[name] == TensorProto.FLOAT for name in node_named(converted, "nms").input
               if name not in ("max",))
    np.testing.assert_array_equal(selected, reference)


def test_dynamic_quantize_linear_reads_fp32():
    """Rule 3: DynamicQuantizeLinear's input is tensor(float); a reduced producer is cast back."""
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"),
             helper.make_node("DynamicQuantizeLinear", ["r"], ["q", "scale", "zero"], name="dql")]
    model = build(nodes, [tensor("x", [2, 3])],
                  [tensor("q", [2, 3], TensorProto.UINT8), tensor("scale", []),
                   tensor("zero", [], TensorProto.UINT8)])
    x = np.linspace(-1, 2.7, 6, dtype=np.float32).reshape(2, 3)
    emulated = emulate(model, FP16)
    assert list(node_named(emulated, "dql").input) == ["r"]  # rounded in place by the Relu
    run(emulated, {"x": x})
    converted, _ = valid_fp16(model, {"x": x})
    assert list(node_named(converted, "dql").input) == ["r"]
    assert inferred_types(converted)["r"] == TensorProto.FLOAT


def test_resize_roi_is_a_parameter():
    """Rule 4: Resize roi stays fp32 although its constraint admits float16."""
    nodes = [helper.make_node("Resize", ["x", "roi", "", "sizes"], ["y"], name="resize",
                              mode="linear", coordinate_transformation_mode="tf_crop_and_resize")]
    inits = [const("roi", np.array([0, 0, 0.1, 0.1, 1, 1, 0.9, 0.9], np.float32)),
             const("sizes", np.array([1, 1, 3, 3], np.int64))]
    model = build(nodes, [tensor("x", [1, 1, 4, 4])], [tensor("y", [1, 1, 3, 3])], inits,
                  opset=13)
    x = np.linspace(0.1, 3.3, 16, dtype=np.float32).reshape(1, 1, 4, 4)
    converted, _ = valid_fp16(model, {"x": x})
    assert node_named(converted, "resize").input[1] == "roi"
    assert inferred_types(converted)["roi"] == TensorProto.FLOAT
    emulated = emulate(model, FP16)
    assert node_named(emulated, "resize").input[1] == "roi"
    assert numpy_helper.to_array(next(i for i in emulated.graph.initializer
                                      if i.name == "roi"))[2] == np.float32(0.1)
    run(emulated, {"x": x})


def test_shape_arithmetic_stays_fp32():
    """Rule 5: float math on a shape feeding Reshape is not rounded (2049 is not an fp16)."""
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"),
             helper.make_node("Shape", ["r"], ["shape"], name="shape"),
             helper.make_node("Cast", ["shape"], ["shape_f"], name="to_float",
                              to=TensorProto.FLOAT),
             helper.make_node("Mul", ["shape_f", "one"], ["scaled"], name="scale"),
             helper.make_node("Cast", ["scaled"], ["new_shape"], name="to_int",
                              to=TensorProto.INT64),
             helper.make_node("Reshape", ["r", "new_shape"], ["y"], name="reshape")]
    model = build(nodes, [tensor("x", [1, 2049])], [tensor("y", [1, 2049])],
                  [const("one", np.array(1.0, np.float32))])
    x = np.linspace(-1, 1, 2049, dtype=np.float32).reshape(1, 2049)
    for plan, dtype in ((FP16, np.float16), (BF16, ml_dtypes.bfloat16)):
        emulated = emulate(model, plan)
        assert list(node_named(emulated, "scale").output) == ["scaled"]
        (y,) = run(emulated, {"x": x})
        np.testing.assert_array_equal(y, rounded(np.maximum(x, 0), dtype))
    converted, _ = valid_fp16(model, {"x": x})
    assert inferred_types(converted)["scaled"] == TensorProto.FLOAT


def test_shape_reads_the_tensor_in_its_own_type():
    """Rule 6: Shape takes a reduced tensor as it is: no Cast back, nothing rounded for it."""
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"),
             helper.make_node("Shape", ["r"], ["shape"], name="shape"),
             helper.make_node("Shape", ["x"], ["x_shape"], name="x_shape")]
    model = build(nodes, [tensor("x", [2, 3])], [tensor("shape", [2], TensorProto.INT64),
                                                 tensor("x_shape", [2], TensorProto.INT64)])
    converted = convert(model, FP16)
    onnx.checker.check_model(converted, full_check=True)
    assert sum(node.op_type == "Cast" for node in converted.graph.node) == 1  # x for the Relu
    assert node_named(converted, "shape").input == [node_named(converted, "relu").output[0]]
    assert node_named(converted, "x_shape").input == ["x"]
    emulated = emulate(model, FP16)
    assert sum(node.op_type == "Cast" for node in emulated.graph.node) == 4  # x in, r out
    assert node_named(emulated, "x_shape").input == ["x"]


def test_constants_are_rounded_by_value():
    """Rule 7: weights are rounded or converted by value; shared ones get a copy."""
    emulated = emulate(add_model(), FP16)
    assert not casts_from(emulated, "w")
    (w,) = [numpy_helper.to_array(i) for i in emulated.graph.initializer if i.name == "w"]
    np.testing.assert_array_equal(w, rounded(np.full((1, 8), 1.0001)))
    converted = convert(add_model(), FP16)
    assert {i.name: i.data_type for i in converted.graph.initializer} == {
        "w__fp16": TensorProto.FLOAT16}

    shared = add_model()
    shared.graph.node.append(helper.make_node("Sub", ["w", "x"], ["z"], name="sub"))
    shared.graph.output.append(tensor("z", [1, 8]))
    converted = convert(shared, PrecisionPlan("fp16", frozenset({"sub"})))
    assert {i.name: i.data_type for i in converted.graph.initializer} == {
        "w": TensorProto.FLOAT, "w__fp16": TensorProto.FLOAT16}
    onnx.checker.check_model(converted, full_check=True)


def test_graph_outputs_read_by_reduced_nodes_keep_their_type():
    """Rule 8: a reduced tensor that is also a graph output is cast back under its name."""
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"),
             helper.make_node("Neg", ["r"], ["y"], name="neg")]
    model = build(nodes, [tensor("x", [2])], [tensor("r", [2]), tensor("y", [2])])
    converted, (r, y) = valid_fp16(model, {"x": np.array([1.0001, -2], np.float32)})
    assert [v.type.tensor_type.elem_type for v in converted.graph.output] == [TensorProto.FLOAT] * 2
    assert node_named(converted, "neg").input == [node_named(converted, "relu").output[0]]
    np.testing.assert_array_equal(y, -r)


def test_a_node_reading_one_tensor_twice():
    """Rule 9: Mul(s, s) reads one shared copy."""
    model = build([helper.make_node("Mul", ["s", "s"], ["y"], name="square")],
                  [tensor("s", [4])], [tensor("y", [4])])
    s = np.array([1.0001, 2.0002, 200.03, 0.1], np.float32)
    for plan, dtype in ((FP16, np.float16), (BF16, ml_dtypes.bfloat16)):
        emulated = emulate(model, plan)
        assert len(casts_from(emulated, "s")) == 1
        square = node_named(emulated, "square")
        assert square.input[0] == square.input[1] != "s"
        (y,) = run(emulated, {"s": s})
        np.testing.assert_array_equal(y, rounded(rounded(s, dtype) * rounded(s, dtype), dtype))
    converted, (y,) = valid_fp16(model, {"s": s})
    assert len(casts_from(converted, "s")) == 1
    np.testing.assert_allclose(y, s * s, rtol=2e-3)


@pytest.mark.parametrize("keep", [frozenset(), frozenset({"castlike"}), frozenset({"relu"})])
def test_cast_like_follows_its_target(keep):
    """Rules 3 and 6: CastLike's output takes its target's type, reduced or not."""
    nodes = [helper.make_node("Relu", ["x"], ["h"], name="relu"),
             helper.make_node("CastLike", ["two", "h"], ["c"], name="castlike"),
             helper.make_node("Mul", ["h", "c"], ["y"], name="mul")]
    model = build(nodes, [tensor("x", [4])], [tensor("y", [4])],
                  [const("two", np.array(2.0001, np.float32))], opset=19)
    x = np.array([1.0001, -2, 3.3, 700.07], np.float32)
    plan = PrecisionPlan("fp16", keep)
    converted = convert(model, plan)
    onnx.checker.check_model(converted, full_check=True)
    (y,) = run(converted, {"x": x})
    (emulated,) = run(emulate(model, plan), {"x": x})
    h = np.maximum(x, 0)
    if "relu" not in keep:
        h = rounded(h)
    # Mul is reduced: it reads a rounded copy of c unless CastLike already made it reduced.
    np.testing.assert_array_equal(emulated, rounded(rounded(h) * rounded(np.float32(2.0001))))
    np.testing.assert_allclose(y, emulated, rtol=2e-3)


def test_bf16_takes_ops_onnx_gave_bfloat16_in_a_later_opset():
    """Rule 3: Conv admits bfloat16 only from opset 22, but a bf16 plan reduces it at 17."""
    model = cnn(seed=2)
    assert model.opset_import[0].version == 17
    converted = convert(model, BF16)
    assert {i.data_type for i in converted.graph.initializer} == {TensorProto.BFLOAT16}
    x = np.random.default_rng(0).random((1, 3, 32, 32), dtype=np.float32)
    (reference,) = run(model, {"image": x})
    (emulated,) = run(emulate(model, BF16), {"image": x})
    assert 0 < np.abs(emulated - reference).max() < 0.1
