"""The INT8 fix on real Q/DQ models quantized here (ONNX Runtime's quantizer) and run on its CPU.

channel_outlier_cnn's planted fault (channel 0 of trunk/conv1 is 1000x the others and undone by
trunk/conv2's weights) must be found and explained, by re-quantizing and by removing Q/DQ from
the given model; a healthy model needs no fix; a fix that cannot pass says so.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest

from trtcheck.errors import InputDataError, UsageError
from trtcheck.model import LoadedModel, load_model
from trtcheck.quant.int8_fix import Int8Fix, find_int8_fix, remove_quantization
from trtcheck.quant.quantize import ORT_FP8_DISABLED_OPTIMIZERS, QuantSettings, quantize_model
from zoo.build import channel_outlier_cnn, cnn, transformer_block

IMAGE = ("image", (1, 3, 32, 32))
SEQUENCE = ("x", (1, 16, 32))
COSINE = 0.999


def feeds(name: str, shape: tuple[int, ...], count: int, seed: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{name: rng.random(shape, dtype=np.float32)} for _ in range(count)]


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def cosine_at_least(floor: float) -> Callable[[dict, dict], bool]:
    def passes(reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray]) -> bool:
        return all(cosine(reference[name], candidate[name]) >= floor for name in reference)

    return passes


def run(model: onnx.ModelProto, feed: dict[str, np.ndarray]) -> np.ndarray:
    session = onnxruntime.InferenceSession(model.SerializeToString(),
                                           providers=["CPUExecutionProvider"],
                                           disabled_optimizers=list(ORT_FP8_DISABLED_OPTIMIZERS))
    return session.run(None, feed)[0]


def worst_cosine(fp32: onnx.ModelProto, model: onnx.ModelProto) -> float:
    """The lowest cosine of `model` against `fp32` on feeds neither calibrated nor searched on."""
    return min(cosine(run(fp32, feed), run(model, feed))
               for feed in feeds(*IMAGE, count=4, seed=99))


def saved(proto: onnx.ModelProto, path: Path) -> LoadedModel:
    onnx.save(proto, str(path))
    return load_model(path)


class Quantized:
    """An fp32 model, its Q/DQ model, the feeds it was calibrated on and how to re-quantize it."""

    def __init__(self, proto: onnx.ModelProto, folder: Path, name: str, inputs, precision: str):
        self.feeds = feeds(*inputs, count=8, seed=0)
        self.precision = precision
        self.fp32 = saved(proto, folder / f"{name}.onnx")
        self.qdq = saved(quantize_model(self.fp32, QuantSettings(precision), self.feeds),
                         folder / f"{name}.{precision}.onnx")

    def requantize(self, exclude: tuple[str, ...]) -> onnx.ModelProto:
        return quantize_model(self.fp32, QuantSettings(self.precision, exclude=exclude),
                              self.feeds)

    def fix(self, passes: Callable[[dict, dict], bool] | None = None, requantize: bool = True,
            **options) -> Int8Fix:
        return find_int8_fix(self.fp32, self.qdq, self.feeds, passes or cosine_at_least(COSINE),
                             self.requantize if requantize else None, **options)


@pytest.fixture(scope="module")
def outlier(tmp_path_factory) -> Quantized:
    return Quantized(channel_outlier_cnn(), tmp_path_factory.mktemp("fix"), "outlier", IMAGE,
                     "int8")


@pytest.fixture(scope="module")
def fixes(outlier) -> dict[str, Int8Fix]:
    return {"requantize": outlier.fix(), "remove": outlier.fix(requantize=False)}


@pytest.mark.parametrize("path", ["requantize", "remove"])
def test_the_outlier_fix_leaves_trunk_conv2_in_float_and_verifies(outlier, fixes, path):
    fix = fixes[path]
    assert fix.before["logits"] < 0.5  # int8 collapses as given
    assert "trunk/conv2" in [node.node for node in fix.excluded]
    assert {node.node for node in fix.excluded} <= {"trunk/conv1", "trunk/conv2"}
    assert fix.verified and fix.after["logits"] > COSINE
    # Initial run, a first doubling step, the verification; shrinking a single node runs nothing.
    assert fix.runs <= 4
    # The model returned is the fixed one: unseen feeds pass too.
    assert fix.model is not None
    assert worst_cosine(outlier.fp32.proto, fix.model) > COSINE


def test_the_reason_names_the_activation_its_producer_and_the_outlier_channel(fixes):
    conv2 = next(node for node in fixes["remove"].excluded if node.node == "trunk/conv2")
    assert conv2.qdq_node == "trunk/conv2" and conv2.op == "Conv"
    assert conv2.reason.startswith("input trunk/r1 (from trunk/conv1 via trunk/relu1): "
                                   "channel 0 spans ")
    spread = float(re.search(r"spans (\d+)x the others", conv2.reason).group(1))
    assert spread > 100  # the planted factor is 1000; the Relu and the feeds blur it
    # Every other channel's nonzero value rounds to 0 under the scale channel 0 sets.
    assert "rounds 100% of the other channels' nonzero values to 0" in conv2.reason
    # The weights that undo the factor are 1000x smaller in input channel 0, and round to 0.
    assert "weights trunk.w2" in conv2.reason and "input channel 0 is" in conv2.reason
    assert conv2.sqnr_db_isolated < 5


def test_the_exclusion_lists_requantize_to_a_passing_model(outlier, fixes):
    fix = fixes["requantize"]
    repaired = quantize_model(outlier.fp32, QuantSettings("int8",
                                                          exclude=tuple(fix.ort_nodes_to_exclude)),
                              outlier.feeds)
    assert worst_cosine(outlier.fp32.proto, repaired) > COSINE
    names = [node.name for node in outlier.fp32.proto.graph.node]
    for name, pattern in zip(fix.ort_nodes_to_exclude, fix.modelopt_nodes_to_exclude,
                             strict=True):
        # ModelOpt expands its patterns with re.match: each must name exactly its node.
        assert [other for other in names if re.match(pattern, other)] == [name]


def test_the_qdq_removed_model_is_valid_and_runs_like_fp32_where_removed(outlier, fixes):
    model = fixes["remove"].model
    onnx.checker.check_model(model, full_check=True)
    conv2 = next(node for node in model.graph.node if node.name == "trunk/conv2")
    weights = {tensor.name: tensor for tensor in model.graph.initializer}
    assert conv2.input[0] == "trunk/r1"  # the Q/DQ pair it alone read is gone
    assert weights[conv2.input[1]].data_type == onnx.TensorProto.FLOAT
    assert not any("trunk/r1_" in name for node in model.graph.node for name in node.output)
    assert sum(node.op_type == "QuantizeLinear" for node in model.graph.node) == 2  # the rest
    assert worst_cosine(outlier.fp32.proto, model) > COSINE


def dequantized_weights(qdq: onnx.ModelProto) -> dict[str, np.ndarray]:
    """int8 weights x their per-channel scales, by numpy: weight name -> float values."""
    from onnx import numpy_helper

    values = {tensor.name: numpy_helper.to_array(tensor) for tensor in qdq.graph.initializer}
    result = {}
    for node in qdq.graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0].endswith("_quantized"):
            weights, scale = values[node.input[0]], values[node.input[1]]
            axis = next(attr.i for attr in node.attribute if attr.name == "axis")
            shape = [-1 if dim == axis else 1 for dim in range(weights.ndim)]
            result[node.input[0][:-len("_quantized")]] = weights * scale.reshape(shape)
    return result


@pytest.mark.parametrize("precision", ["int8", "fp8"])
def test_removing_every_layers_quantization_leaves_the_fp32_graph(tmp_path, precision):
    from onnx import numpy_helper

    model = Quantized(cnn(), tmp_path, "cnn", IMAGE, precision)
    layers = [node.name for node in model.qdq.proto.graph.node
              if node.op_type in ("Conv", "Gemm")]
    unquantized = remove_quantization(model.qdq.proto, layers)
    onnx.checker.check_model(unquantized, full_check=True)
    assert not [node for node in unquantized.graph.node
                if node.op_type in ("QuantizeLinear", "DequantizeLinear")]
    # int8 weights are stored rounded: what is left is the fp32 graph with those weights
    # (fp8 keeps its float weights behind a Q/DQ pair: the fp32 model itself).
    expected = onnx.ModelProto()
    expected.CopyFrom(model.fp32.proto)
    dequantized = dequantized_weights(model.qdq.proto)
    assert bool(dequantized) == (precision == "int8")
    for tensor in expected.graph.initializer:
        if tensor.name in dequantized:
            tensor.CopyFrom(numpy_helper.from_array(dequantized[tensor.name], tensor.name))
    for feed in model.feeds[:2]:
        np.testing.assert_allclose(run(unquantized, feed), run(expected, feed),
                                   rtol=1e-5, atol=1e-5)
    assert len(model.qdq.proto.graph.node) > len(unquantized.graph.node)  # the given one is kept


def test_a_healthy_model_needs_no_fix(tmp_path):
    model = Quantized(cnn(), tmp_path, "cnn", IMAGE, "int8")
    fix = model.fix()
    assert fix.excluded == () and fix.verified and fix.runs == 1
    assert fix.before == fix.after and fix.before["logits"] > COSINE
    assert fix.ort_nodes_to_exclude == [] == fix.modelopt_nodes_to_exclude


def test_a_transformer_fix_verifies_and_no_member_can_be_dropped(tmp_path):
    model = Quantized(transformer_block(), tmp_path, "block", SEQUENCE, "int8")
    strict = cosine_at_least(0.99995)  # int8 gives 0.9998: some MatMuls must stay float
    fix = model.fix(strict, requantize=False)
    assert fix.verified and fix.excluded and fix.runs <= 24
    assert min(fix.after.values()) >= 0.99995 > min(fix.before.values())
    reference = [{"y": run(model.fp32.proto, feed)} for feed in model.feeds]
    kept = [node.qdq_node for node in fix.excluded]
    for dropped in kept:
        fewer = remove_quantization(model.qdq.proto, [name for name in kept if name != dropped])
        assert not all(strict(ref, {"y": run(fewer, feed)})
                       for ref, feed in zip(reference, model.feeds, strict=True)), dropped
    assert all(node.reason for node in fix.excluded)


def test_a_fix_that_cannot_pass_returns_the_best_candidate_unverified(outlier):
    fix = outlier.fix(lambda reference, candidate: False, max_runs=5)
    assert not fix.verified and fix.runs <= 5
    # The best candidate run (every layer in float) is far better than int8 as given.
    assert fix.excluded and fix.after["logits"] > 0.999 > fix.before["logits"]


def test_bad_arguments_are_one_line_errors(outlier):
    with pytest.raises(InputDataError, match="no input feeds"):
        find_int8_fix(outlier.fp32, outlier.qdq, [], cosine_at_least(COSINE))
    with pytest.raises(UsageError, match="node 'nowhere' to leave unquantized is not in"):
        remove_quantization(outlier.qdq.proto, ["nowhere"])


def test_every_requantization_of_one_model_shares_its_prepared_model(tmp_path, monkeypatch):
    # ONNX Runtime's pre-processing (symbolic shape inference) depends on the model alone, and
    # takes 7.5 s on ViT-B/16: the fix's candidates reuse it instead of each redoing it.
    from trtcheck.quant import quantize

    prepared: list[Path] = []
    real = quantize._prepare
    monkeypatch.setattr(quantize, "_prepare",
                        lambda model, work: prepared.append(model.path) or real(model, work))
    monkeypatch.setattr(quantize, "_PREPARED", {})
    case = Quantized(channel_outlier_cnn(), tmp_path, "outlier", IMAGE, "int8")
    fix = case.fix()
    assert fix.verified and fix.runs >= 2
    assert prepared == [case.fp32.path]
    # A file changed in place is prepared again.
    onnx.save(channel_outlier_cnn(), str(case.fp32.path))
    case.fp32 = load_model(case.fp32.path)
    case.requantize(())
    assert prepared == [case.fp32.path, case.fp32.path]
