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
