"""Layer-wise quantization error on real Q/DQ models made by ONNX Runtime's quantizer and by hand.

The Q/DQ models come from `onnxruntime.quantization.quantize_static` (QDQ, per-channel symmetric
int8) and from a QAT-style model built with onnx-graphsurgeon (Q/DQ per consumer, fake-quantized
and int8 weights, other names), so pairing is checked against two producers' conventions.
"""

from __future__ import annotations

import io
import json
import math
import re
import secrets
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from rich.console import Console

from trtcheck.errors import InputDataError, ModelError
from trtcheck.model import LoadedModel, load_model
from trtcheck.quant.layerwise import (
    LayerError,
    layer_errors_to_dict,
    layerwise_error,
    pair_layers,
)
from zoo.build import channel_outlier_cnn, cnn, transformer_block

INPUTS = {"cnn": ("image", (1, 3, 32, 32)), "transformer_block": ("x", (1, 16, 32)),
          "channel_outlier_cnn": ("image", (1, 3, 32, 32))}
BUILDERS = {"cnn": cnn, "transformer_block": transformer_block,
            "channel_outlier_cnn": channel_outlier_cnn}


def _feeds(name: str, seed: int, count: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    input_name, shape = INPUTS[name]
    return [{input_name: rng.standard_normal(shape).astype(np.float32)} for _ in range(count)]


def _without_scale_names(model: onnx.ModelProto) -> onnx.ModelProto:
    """Renames tensors ending in '_scale': ONNX Runtime's quantizer names the scale of tensor T
    'T_scale' and then reads an existing tensor of that name as the scale (transformer_block has
    'ffn/gelu' and 'ffn/gelu_scale'), which breaks the model; `test_a_scale_read_from_a_...`."""
    renames = {name: name + "d" for node in model.graph.node for name in node.output
               if name.endswith(("_scale", "_zero_point"))}
    for node in model.graph.node:
        node.input[:] = [renames.get(name, name) for name in node.input]
        node.output[:] = [renames.get(name, name) for name in node.output]
    return model


def _quantize(name: str, folder: Path) -> tuple[LoadedModel, LoadedModel]:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.feeds = iter(_feeds(name, seed=0, count=4))

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.feeds, None)

    fp32_path, qdq_path = folder / f"{name}.onnx", folder / f"{name}_qdq.onnx"
    onnx.save(_without_scale_names(BUILDERS[name]()), str(fp32_path))
    quantize_static(str(fp32_path), str(qdq_path), Reader(), quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=QuantType.QInt8,
                    weight_type=QuantType.QInt8,
                    extra_options={"ActivationSymmetric": True, "WeightSymmetric": True,
                                   "QuantizeBias": False})
    return load_model(fp32_path), load_model(qdq_path)


@pytest.fixture(scope="module")
def quantized(tmp_path_factory) -> dict[str, tuple[LoadedModel, LoadedModel]]:
    folder = tmp_path_factory.mktemp("layerwise")
    return {name: _quantize(name, folder) for name in BUILDERS}


@pytest.fixture(scope="module")
def errors(quantized) -> dict[str, list[LayerError]]:
    return {name: layerwise_error(fp32, qdq, _feeds(name, seed=1, count=3))
            for name, (fp32, qdq) in quantized.items()}


def _renamed(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, str]]:
    """A copy with every tensor and node given a random name; also new node name -> old."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    graph = copy.graph
    tensors: dict[str, str] = {}

    def new(name: str) -> str:
        if name and name not in tensors:
            tensors[name] = "t" + secrets.token_hex(6)
        return tensors.get(name, name)

    for value in [*graph.input, *graph.output, *graph.value_info, *graph.initializer]:
        value.name = new(value.name)
    nodes: dict[str, str] = {}
    for node in graph.node:
        node.input[:] = [new(name) for name in node.input]
        node.output[:] = [new(name) for name in node.output]
        if node.name:
            nodes[node.name] = "n" + secrets.token_hex(6)
            node.name = nodes[node.name]
    # Initializer order means nothing either.
    initializers = list(graph.initializer)[::-1]
    del graph.initializer[:]
    graph.initializer.extend(initializers)
    return copy, {new_name: old for old, new_name in nodes.items()}


def _saved(model: onnx.ModelProto, path: Path) -> LoadedModel:
    onnx.save(model, str(path))
    return load_model(path)


def _per_channel_scale(weights: np.ndarray, axis: int) -> np.ndarray:
    others = tuple(i for i in range(weights.ndim) if i != axis)
    return (np.abs(weights).max(axis=others) / 127).astype(np.float32)


def _qat_model(fp32: onnx.ModelProto, feeds: list[dict[str, np.ndarray]]) -> onnx.ModelProto:
    """A QAT-style export made with onnx-graphsurgeon: only Conv/Gemm quantized, one Q/DQ pair
    per consumer, the first layer's weights fake-quantized (Q->DQ on fp32 weights), the others
    int8 with a DQ; activation scales from the fp32 run's max |x|."""
    import onnx_graphsurgeon as gs
    import onnxruntime

    from trtcheck.marking import mark_outputs

    graph = gs.import_onnx(fp32)
    layers = [node for node in graph.nodes if node.op in ("Conv", "Gemm")]
    activations = [node.inputs[0].name for node in layers]
    session = onnxruntime.InferenceSession(mark_outputs(fp32, activations).SerializeToString(),
                                           providers=["CPUExecutionProvider"])
    runs = [dict(zip([o.name for o in session.get_outputs()], session.run(None, feed),
                     strict=True)) | feed for feed in feeds]
    for k, node in enumerate(layers):
        amax = max(float(np.abs(run[activations[k]]).max()) for run in runs)
        scale = gs.Constant(f"act{k}.s", np.array(amax / 127, np.float32))
        zero = gs.Constant(f"act{k}.z", np.array(0, np.int8))
        quantized = gs.Variable(f"act{k}.q", dtype=np.int8)
        dequantized = gs.Variable(f"act{k}.dq", dtype=np.float32)
        graph.nodes += [gs.Node("QuantizeLinear", inputs=[node.inputs[0], scale, zero],
                                outputs=[quantized]),
                        gs.Node("DequantizeLinear", inputs=[quantized, scale, zero],
                                outputs=[dequantized])]
        node.inputs[0] = dequantized
        weights = node.inputs[1].values
        axis = 0 if node.op == "Conv" else 1
        w_scale = gs.Constant(f"w{k}.s", _per_channel_scale(weights, axis))
        w_zero = gs.Constant(f"w{k}.z", np.zeros(weights.shape[axis], np.int8))
        fake = gs.Variable(f"w{k}.dq", dtype=np.float32)
        if k == 0:
            int8 = gs.Variable(f"w{k}.q", dtype=np.int8)
            graph.nodes += [gs.Node("QuantizeLinear", inputs=[node.inputs[1], w_scale, w_zero],
                                    outputs=[int8], attrs={"axis": axis})]
        else:
            shape = [1] * weights.ndim
            shape[axis] = -1
            steps = np.round(weights / w_scale.values.reshape(shape))
            int8 = gs.Constant(f"w{k}.int8", np.clip(steps, -127, 127).astype(np.int8))
        graph.nodes.append(gs.Node("DequantizeLinear", inputs=[int8, w_scale, w_zero],
                                   outputs=[fake], attrs={"axis": axis}))
        node.inputs[1] = fake
    graph.cleanup().toposort()
    return gs.export_onnx(graph)


def _dq_fed_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of the compute nodes that read a DequantizeLinear's output, read off the graph."""
    dequantized = {name for node in model.graph.node if node.op_type == "DequantizeLinear"
                   for name in node.output}
    return [node.name for node in model.graph.node
            if node.op_type not in ("QuantizeLinear", "DequantizeLinear")
            and dequantized.intersection(node.input)]


@pytest.mark.parametrize("name", list(BUILDERS))
def test_every_quantized_layer_pairs_with_its_fp32_node(quantized, name):
    fp32, qdq = quantized[name]
    # The weights are int8, so pairing compares them through their DequantizeLinear.
    assert all(numpy_helper.to_array(init).dtype == np.int8
               for init in qdq.proto.graph.initializer if init.name.endswith(".w_quantized"))
    pairs = pair_layers(fp32.proto, qdq.proto)
    # ONNX Runtime's quantizer keeps node names, so the structural pairing must be the identity,
    # over every node that reads a DQ (transformer_block: q/k/v told apart by their weights).
    assert pairs == [(node, node) for node in _dq_fed_nodes(qdq.proto)]
    assert len(pairs) >= 7


@pytest.mark.parametrize("name", list(BUILDERS))
def test_pairing_does_not_depend_on_names(quantized, name):
    fp32, qdq = quantized[name]
    renamed_qdq, qdq_names = _renamed(qdq.proto)
    renamed_fp32, fp32_names = _renamed(fp32.proto)
    pairs = pair_layers(renamed_fp32, renamed_qdq)
    assert [(qdq_names[q], fp32_names[f]) for q, f in pairs] == pair_layers(fp32.proto, qdq.proto)


def test_a_renamed_model_measures_the_same_errors(quantized, errors, tmp_path):
    fp32, qdq = quantized["transformer_block"]
    renamed, names = _renamed(qdq.proto)
    rows = layerwise_error(fp32, _saved(renamed, tmp_path / "renamed.onnx"),
                           _feeds("transformer_block", seed=1, count=3))
    got = {row.fp32_node: (row.sqnr_db_isolated, row.sqnr_db_accumulated, names[row.node])
           for row in rows}
    want = {row.fp32_node: (row.sqnr_db_isolated, row.sqnr_db_accumulated, row.node)
            for row in errors["transformer_block"]}
    assert got.keys() == want.keys()
    for node, (isolated, accumulated, qdq_node) in got.items():
        assert qdq_node == want[node][2]
        assert isolated == pytest.approx(want[node][0], abs=1e-3)
        assert accumulated == pytest.approx(want[node][1], abs=1e-3)


def test_a_qat_style_model_pairs_like_onnxruntimes(quantized, tmp_path):
    fp32, ort_qdq = quantized["channel_outlier_cnn"]
    qat, names = _renamed(_qat_model(fp32.proto, _feeds("channel_outlier_cnn", 0, 4)))
    pairs = pair_layers(fp32.proto, qat)
    ort_pairs = dict(pair_layers(fp32.proto, ort_qdq.proto))
    assert [(names[q], f) for q, f in pairs] == [(q, f) for q, f in ort_pairs.items()
                                                 if q in ("trunk/conv1", "trunk/conv2",
                                                          "head/gemm")]
    # Only Conv/Gemm are quantized here, and trunk/r1's per-tensor scale still collapses conv2.
    rows = layerwise_error(fp32, _saved(qat, tmp_path / "qat.onnx"),
                           _feeds("channel_outlier_cnn", seed=1, count=3))
    assert [row.fp32_node for row in rows][0] == "trunk/conv2"
    assert rows[0].sqnr_db_isolated < 10 < 25 < min(row.sqnr_db_isolated for row in rows[1:])


def test_the_outlier_channel_makes_trunk_conv2_the_worst_layer(errors):
    rows = errors["channel_outlier_cnn"]
    worst, *others = rows
    assert (worst.fp32_node, worst.op) == ("trunk/conv2", "Conv")
    assert worst.sqnr_db_isolated < 10
    assert min(row.sqnr_db_isolated for row in others) > worst.sqnr_db_isolated + 20
    # The same network without the outlier quantizes conv2 as well as the other layers.
    plain = {row.fp32_node: row for row in errors["cnn"]}
    assert plain["trunk/conv2"].sqnr_db_isolated > 30
    assert min(row.sqnr_db_isolated for row in errors["cnn"]) > 30


@pytest.mark.parametrize("name", list(BUILDERS))
def test_accumulated_error_is_at_least_the_isolated_error(errors, name):
    rows = sorted(errors[name], key=lambda row: row.order)
    # The first layer reads the graph input: nothing upstream, so both measure the same run.
    assert rows[0].sqnr_db_accumulated == pytest.approx(rows[0].sqnr_db_isolated, abs=0.1)
    for row in rows:
        assert row.sqnr_db_accumulated <= row.sqnr_db_isolated + 0.1, row
        assert row.cosine_accumulated <= row.cosine_isolated + 1e-6, row
    assert any(row.sqnr_db_accumulated < row.sqnr_db_isolated - 1 for row in rows[1:])


def test_ranked_worst_first_with_consistent_metrics(errors):
    for rows in errors.values():
        isolated = [row.sqnr_db_isolated for row in rows]
        assert isolated == sorted(isolated)
        assert sorted(row.order for row in rows) == list(range(len(rows)))
        for row in rows:
            # SQNR and cosine agree: for small noise, 1 - cos ~ 10^(-SQNR/10) / 2.
            if row.sqnr_db_isolated > 20:
                assert 1 - row.cosine_isolated < 10 ** (-row.sqnr_db_isolated / 10)


def _fp32_of(model_name: str, tmp_path: Path, **kwargs) -> LoadedModel:
    return _saved(_without_scale_names(BUILDERS[model_name](**kwargs)),
                  tmp_path / f"{model_name}.onnx")


@pytest.mark.parametrize(("fp32_name", "kwargs", "qdq_name", "says"), [
    ("cnn", {"seed": 1}, "cnn", "'trunk/conv1' (Conv) of the Q/DQ model has no counterpart"),
    ("cnn", {}, "channel_outlier_cnn", "'trunk/conv1' (Conv) of the Q/DQ model has no "),
    ("cnn", {}, "transformer_block", "'attn/ln' (LayerNormalization) of the Q/DQ model has no"),
    ("transformer_block", {"seq": 8}, "transformer_block", "'attn/q_split' (Reshape) of the Q/DQ"),
], ids=["other-weights", "outlier-weights", "other-graph", "other-reshape"])
def test_a_model_that_is_not_a_qdq_of_the_fp32_one_is_refused(quantized, tmp_path, fp32_name,
                                                              kwargs, qdq_name, says):
    fp32 = _fp32_of(fp32_name, tmp_path, **kwargs)
    qdq = quantized[qdq_name][1]
    with pytest.raises(ModelError, match=re.escape(says)) as raised:
        pair_layers(fp32.proto, qdq.proto)
    assert "\n" not in str(raised.value)
    with pytest.raises(ModelError) as raised:
        layerwise_error(fp32, qdq, _feeds(fp32_name, seed=1, count=1))
    assert str(raised.value).startswith(f"{qdq.path} vs {fp32.path}: ")


def test_an_fp32_model_is_not_a_qdq_model(quantized):
    fp32, _ = quantized["cnn"]
    with pytest.raises(ModelError, match="not a Q/DQ model"):
        pair_layers(fp32.proto, fp32.proto)


def test_a_scale_read_from_a_computed_tensor_is_refused(quantized):
    """What ONNX Runtime's quantizer writes for transformer_block as built (see
    `_without_scale_names`): a Q whose scale is another node's output."""
    fp32, qdq = quantized["cnn"]
    broken = onnx.ModelProto()
    broken.CopyFrom(qdq.proto)
    quantize = next(node for node in broken.graph.node if node.input[0] == "trunk/r1")
    quantize.input[1] = "trunk/c1"
    with pytest.raises(ModelError, match=r"takes its scale or zero point 'trunk/c1' from node "
                                         r"'trunk/conv1' \(Conv\)"):
        pair_layers(fp32.proto, broken)


def test_feeds_must_cover_the_fp32_inputs(quantized):
    fp32, qdq = quantized["cnn"]
    with pytest.raises(InputDataError, match="no value for input 'image'"):
        layerwise_error(fp32, qdq, [{"x": np.zeros((1, 3, 32, 32), np.float32)}])
    with pytest.raises(InputDataError, match="no input feeds"):
        layerwise_error(fp32, qdq, [])


def test_json_rows_are_standard_json(errors):
    rows = errors["channel_outlier_cnn"]
    documents = layer_errors_to_dict(rows)
    assert [doc["node"] for doc in documents] == [row.node for row in rows]
    assert json.loads(json.dumps(documents, allow_nan=False)) == documents
    exact = LayerError("n", "n", "Relu", "t", math.inf, 1.0, math.nan, math.nan, 0)
    assert layer_errors_to_dict([exact])[0]["sqnr_db_accumulated"] == "inf"
    assert layer_errors_to_dict([exact])[0]["sqnr_db_isolated"] == "nan"


def _rendered(rows: list[LayerError], width: int) -> str:
    from trtcheck.report.quant_report import print_layer_errors

    buffer = io.StringIO()
    print_layer_errors(rows, Console(file=buffer, width=width, no_color=True), limit=5)
    return buffer.getvalue()


@pytest.mark.parametrize("width", [200, 80, 50])
def test_the_table_fits_the_width_and_keeps_names_whole(errors, width):
    rows = errors["transformer_block"]
    text = _rendered(rows, width)
    assert max(len(line.rstrip()) for line in text.splitlines()) <= width
    positions = [text.index(f" {row.node} ") for row in rows[:5]]
    assert positions == sorted(positions)  # worst first, as ranked
    assert f"{len(rows) - 5} more layer(s)" in text
    assert text.count("below 20 dB") == 1


def test_the_sqnr_plot_is_a_stable_svg(errors):
    from trtcheck.report.plots import layerwise_sqnr

    documents = layer_errors_to_dict(errors["channel_outlier_cnn"])
    documents[0] = {**documents[0], "sqnr_db_accumulated": "inf"}
    svg = layerwise_sqnr(documents, "channel_outlier_cnn")
    assert svg.startswith("<svg") and svg.rstrip().endswith("</svg>")
    assert svg == layerwise_sqnr(list(reversed(documents)), "channel_outlier_cnn")



def test_a_mask_filled_with_minus_infinity_pairs(tmp_path):
    # BERT's attention mask: Where(mask, scores, -inf) before the softmax; -inf - -inf is nan,
    # so identical constants must be matched as equal before any distance is taken.
    from onnx import TensorProto, helper, numpy_helper

    from trtcheck.quant.quantize import QuantSettings, quantize_model

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((8, 8)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.standard_normal((8, 8)).astype(np.float32), "w2"),
             numpy_helper.from_array(np.tril(np.ones((4, 8), bool)), "mask"),
             numpy_helper.from_array(np.array(-np.inf, np.float32), "fill")]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["scores"], name="q"),
             helper.make_node("Where", ["mask", "scores", "fill"], ["masked"], name="mask"),
             helper.make_node("Softmax", ["masked"], ["probs"], name="softmax", axis=-1),
             helper.make_node("MatMul", ["probs", "w2"], ["y"], name="out")]
    graph = helper.make_graph(nodes, "masked", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, [1, 4, 8])], [helper.make_tensor_value_info(
            "y", TensorProto.FLOAT, [1, 4, 8])], inits)
    path = tmp_path / "masked.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    fp32 = load_model(path)
    feeds = [{"x": rng.standard_normal((1, 4, 8)).astype(np.float32)} for _ in range(3)]
    qdq_path = tmp_path / "masked.qdq.onnx"
    onnx.save(quantize_model(fp32, QuantSettings("int8"), calibration=feeds), str(qdq_path))
    pairs = dict(pair_layers(fp32.proto, load_model(qdq_path).proto))
    assert pairs["q"] == "q" and pairs["out"] == "out"
