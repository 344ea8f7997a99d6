"""Hand-built ONNX models with fixed seeds, for the demo, the tests and the benches.

`python -m zoo.build` rewrites the bundled models in zoo/; anyone can rebuild them bit for bit.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
HERE = Path(__file__).parent


def _model(nodes, inputs, outputs, initializers, name: str) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, name, inputs, outputs, initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="trtcheck-zoo", producer_version="1")
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def _init(name: str, array: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.ascontiguousarray(array), name)


def _conv_trunk(rng: np.random.Generator, prefix: str = "trunk"):
    """Conv-Relu-Conv-Relu-GlobalAveragePool-Flatten: [N,3,32,32] -> [N,16]."""
    inits = [
        _init(f"{prefix}.w1", (rng.standard_normal((8, 3, 3, 3)) * 0.3).astype(np.float32)),
        _init(f"{prefix}.b1", (rng.standard_normal(8) * 0.1).astype(np.float32)),
        _init(f"{prefix}.w2", (rng.standard_normal((16, 8, 3, 3)) * 0.2).astype(np.float32)),
        _init(f"{prefix}.b2", (rng.standard_normal(16) * 0.1).astype(np.float32)),
    ]
    nodes = [
        helper.make_node("Conv", ["image", f"{prefix}.w1", f"{prefix}.b1"], [f"{prefix}/c1"],
                         name=f"{prefix}/conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", [f"{prefix}/c1"], [f"{prefix}/r1"], name=f"{prefix}/relu1"),
        helper.make_node("Conv", [f"{prefix}/r1", f"{prefix}.w2", f"{prefix}.b2"],
                         [f"{prefix}/c2"], name=f"{prefix}/conv2", pads=[1, 1, 1, 1],
                         strides=[2, 2]),
        helper.make_node("Relu", [f"{prefix}/c2"], [f"{prefix}/r2"], name=f"{prefix}/relu2"),
        helper.make_node("GlobalAveragePool", [f"{prefix}/r2"], [f"{prefix}/gap"],
                         name=f"{prefix}/gap"),
        helper.make_node("Flatten", [f"{prefix}/gap"], [f"{prefix}/features"],
                         name=f"{prefix}/flatten"),
    ]
    return nodes, inits, f"{prefix}/features"


def _image_input(batch: int | str = 1):
    return helper.make_tensor_value_info("image", TensorProto.FLOAT, [batch, 3, 32, 32])


def cnn(seed: int = 0, batch: int | str = 1) -> onnx.ModelProto:
    """A small CNN classifier: image [N,3,32,32] -> logits [N,10]. Passes fp16 comfortably."""
    rng = np.random.default_rng(seed)
    nodes, inits, features = _conv_trunk(rng)
    inits += [_init("head.w", (rng.standard_normal((16, 10)) * 0.5).astype(np.float32)),
              _init("head.b", (rng.standard_normal(10) * 0.1).astype(np.float32))]
    nodes.append(helper.make_node("Gemm", [features, "head.w", "head.b"], ["logits"],
                                  name="head/gemm"))
    out = helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, 10])
    return _model(nodes, [_image_input(batch)], [out], inits, "cnn")


def channel_outlier_cnn(seed: int = 0, factor: float = 1000.0) -> onnx.ModelProto:
    """`cnn` with one channel of trunk/conv1's output `factor` x the others, undone by conv2.

    Channel 0 of conv1 (weights and bias) is scaled by `factor` and conv2's weights that read it
    by 1 / `factor`: ReLU commutes with a positive scale, so fp32 computes the same logits as
    `cnn(seed)`. A per-tensor int8 scale on trunk/r1 is set by that channel, and the other
    seven round to zero: int8 collapses where fp32 is fine (the INT8 fix's planted fault).
    """
    model = cnn(seed)
    weights = {init.name: init for init in model.graph.initializer}

    def rescale(name: str, index: tuple, by: float) -> None:
        array = numpy_helper.to_array(weights[name]).copy()
        array[index] *= by
        weights[name].CopyFrom(_init(name, array))

    rescale("trunk.w1", (0,), factor)
    rescale("trunk.b1", (0,), factor)
    rescale("trunk.w2", (slice(None), 0), 1.0 / factor)
    model.graph.name = "channel_outlier_cnn"
    onnx.checker.check_model(model, full_check=True)
    return model


def _energy_head(features: str, scale: float):
    """Scales features by `scale`, sums their squares and takes the square root.

    With scale 2000 the sum of squares reaches ~1e7 (fp16 overflows at 65504) while the root,
    the output, stays ~3e3: fine in fp32, inf in fp16.
    """
    inits = [_init("energy.scale", np.array(scale, np.float32))]
    nodes = [
        helper.make_node("Mul", [features, "energy.scale"], ["energy/scaled"],
                         name="energy/scale"),
        helper.make_node("ReduceSumSquare", ["energy/scaled"], ["energy/sumsq"],
                         name="energy/sumsq", axes=[1], keepdims=1),
        helper.make_node("Sqrt", ["energy/sumsq"], ["energy"], name="energy/sqrt"),
    ]
    return nodes, inits


def two_heads(seed: int = 0) -> onnx.ModelProto:
    """A CNN with two outputs: `scores` (softmax, passes fp16) and `energy` (overflows fp16)."""
    rng = np.random.default_rng(seed)
    nodes, inits, features = _conv_trunk(rng)
    inits += [_init("scores.w", (rng.standard_normal((16, 10)) * 0.5).astype(np.float32)),
              _init("scores.b", (rng.standard_normal(10) * 0.1).astype(np.float32))]
    nodes += [
        helper.make_node("Gemm", [features, "scores.w", "scores.b"], ["scores/logits"],
                         name="scores/gemm"),
        helper.make_node("Softmax", ["scores/logits"], ["scores"], name="scores/softmax", axis=1),
    ]
    energy_nodes, energy_inits = _energy_head(features, 2000.0)
    outputs = [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 10]),
               helper.make_tensor_value_info("energy", TensorProto.FLOAT, [1, 1])]
    return _model(nodes + energy_nodes, [_image_input()], outputs, inits + energy_inits,
                  "two_heads")


def overflow_chain(length: int = 12, overflow_at: int = 6, seed: int = 0) -> onnx.ModelProto:
    """A chain of Mul/Add nodes on x [1,64]; node `chain/mul{overflow_at}` scales by 1e5.

    The next node scales back by 1e-5, so fp32 stays finite while fp16 overflows to inf at the
    planted node.
    """
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    current = "x"
    for i in range(length):
        if i == overflow_at:
            gain = np.float32(1e5)
        elif i == overflow_at + 1:
            gain = np.float32(1e-5)
        else:
            gain = np.float32(1.0 + 0.01 * rng.standard_normal())
        inits.append(_init(f"chain.g{i}", np.array(gain, np.float32)))
        inits.append(_init(f"chain.b{i}", (0.01 * rng.standard_normal(64)).astype(np.float32)))
        nodes.append(helper.make_node("Mul", [current, f"chain.g{i}"], [f"chain/m{i}"],
                                      name=f"chain/mul{i}"))
        out = "y" if i == length - 1 else f"chain/a{i}"
        nodes.append(helper.make_node("Add", [f"chain/m{i}", f"chain.b{i}"], [out],
                                      name=f"chain/add{i}"))
        current = out
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])
    return _model(nodes, [x], [y], inits, "overflow_chain")


def transformer_block(seed: int = 0, seq: int = 16, dim: int = 32, heads: int = 2):
    """A pre-norm transformer encoder block: x [1,seq,dim] -> y [1,seq,dim].

    LayerNorm, multi-head self-attention (MatMul, Softmax), residual, LayerNorm, a GELU feed
    forward (GELU written with Erf so that opset 17 holds it), residual.
    """
    rng = np.random.default_rng(seed)
    head_dim = dim // heads

    def weight(name: str, shape: tuple[int, ...], scale: float) -> str:
        inits.append(_init(name, (rng.standard_normal(shape) * scale).astype(np.float32)))
        return name

    def const(name: str, value) -> str:
        inits.append(_init(name, np.asarray(value)))
        return name

    inits: list[onnx.TensorProto] = []
    nodes = []

    def node(op: str, inputs: list[str], name: str, **attrs) -> str:
        nodes.append(helper.make_node(op, inputs, [name], name=name, **attrs))
        return name

    ln1 = node("LayerNormalization", ["x", const("ln1.g", np.ones(dim, np.float32)),
                                      const("ln1.b", np.zeros(dim, np.float32))], "attn/ln",
               axis=-1, epsilon=1e-5)
    split_shape = const("attn.heads_shape", np.array([1, seq, heads, head_dim], np.int64))
    projected = {}
    for part in ("q", "k", "v"):
        mm = node("MatMul", [ln1, weight(f"attn.w{part}", (dim, dim), dim ** -0.5)],
                  f"attn/{part}_proj")
        shaped = node("Reshape", [mm, split_shape], f"attn/{part}_split")
        perm = [0, 2, 3, 1] if part == "k" else [0, 2, 1, 3]
        projected[part] = node("Transpose", [shaped], f"attn/{part}_heads", perm=perm)
    scores = node("MatMul", [projected["q"], projected["k"]], "attn/scores")
    scaled = node("Mul", [scores, const("attn.scale", np.array(head_dim ** -0.5, np.float32))],
                  "attn/scale")
    probs = node("Softmax", [scaled], "attn/softmax", axis=-1)
    context = node("MatMul", [probs, projected["v"]], "attn/context")
    merged = node("Transpose", [context], "attn/merge_heads", perm=[0, 2, 1, 3])
    flat = node("Reshape", [merged, const("attn.merge_shape", np.array([1, seq, dim], np.int64))],
                "attn/merge")
    attn_out = node("MatMul", [flat, weight("attn.wo", (dim, dim), dim ** -0.5)], "attn/out")
    res1 = node("Add", ["x", attn_out], "attn/residual")
    ln2 = node("LayerNormalization", [res1, const("ln2.g", np.ones(dim, np.float32)),
                                      const("ln2.b", np.zeros(dim, np.float32))], "ffn/ln",
               axis=-1, epsilon=1e-5)
    up = node("Add", [node("MatMul", [ln2, weight("ffn.w1", (dim, 4 * dim), dim ** -0.5)],
                           "ffn/up"), weight("ffn.b1", (4 * dim,), 0.1)], "ffn/up_bias")
    erf = node("Erf", [node("Mul", [up, const("gelu.rsqrt2", np.array(2 ** -0.5, np.float32))],
                            "ffn/gelu_scale")], "ffn/gelu_erf")
    gate = node("Add", [erf, const("gelu.one", np.array(1.0, np.float32))], "ffn/gelu_one")
    gelu = node("Mul", [node("Mul", [up, gate], "ffn/gelu_mul"),
                        const("gelu.half", np.array(0.5, np.float32))], "ffn/gelu")
    down = node("MatMul", [gelu, weight("ffn.w2", (4 * dim, dim), (4 * dim) ** -0.5)], "ffn/down")
    nodes.append(helper.make_node("Add", [res1, down], ["y"], name="ffn/residual"))
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, seq, dim])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, seq, dim])
    return _model(nodes, [x], [y], inits, "transformer_block")


def detection_head(seed: int = 0, classes: int = 3) -> onnx.ModelProto:
    """An FPN-style detection head on two feature maps.

    coarse [1,16,8,8] -> Conv, Relu, Resize x2 -> Concat with fine [1,8,16,16] -> Conv 1x1 ->
    Sigmoid -> Slice into boxes [1,4,16,16] and scores [1,classes,16,16].
    """
    rng = np.random.default_rng(seed)
    channels = 4 + classes
    inits = [
        _init("det.w1", (rng.standard_normal((16, 16, 3, 3)) * 0.15).astype(np.float32)),
        _init("det.b1", (rng.standard_normal(16) * 0.1).astype(np.float32)),
        _init("det.scales", np.array([1.0, 1.0, 2.0, 2.0], np.float32)),
        _init("det.w2", (rng.standard_normal((channels, 24, 1, 1)) * 0.3).astype(np.float32)),
        _init("det.b2", (rng.standard_normal(channels) * 0.1).astype(np.float32)),
        _init("det.box_start", np.array([0], np.int64)),
        _init("det.box_end", np.array([4], np.int64)),
        _init("det.score_end", np.array([channels], np.int64)),
        _init("det.axis", np.array([1], np.int64)),
    ]
    nodes = [
        helper.make_node("Conv", ["coarse", "det.w1", "det.b1"], ["det/c1"], name="det/conv1",
                         pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["det/c1"], ["det/r1"], name="det/relu1"),
        helper.make_node("Resize", ["det/r1", "", "det.scales"], ["det/up"], name="det/upsample",
                         mode="nearest"),
        helper.make_node("Concat", ["det/up", "fine"], ["det/merged"], name="det/concat", axis=1),
        helper.make_node("Conv", ["det/merged", "det.w2", "det.b2"], ["det/logits"],
                         name="det/predict"),
        helper.make_node("Sigmoid", ["det/logits"], ["det/probs"], name="det/sigmoid"),
        helper.make_node("Slice", ["det/probs", "det.box_start", "det.box_end", "det.axis"],
                         ["boxes"], name="det/boxes"),
        helper.make_node("Slice", ["det/probs", "det.box_end", "det.score_end", "det.axis"],
                         ["scores"], name="det/scores"),
    ]
    inputs = [helper.make_tensor_value_info("coarse", TensorProto.FLOAT, [1, 16, 8, 8]),
              helper.make_tensor_value_info("fine", TensorProto.FLOAT, [1, 8, 16, 16])]
    outputs = [helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [1, 4, 16, 16]),
               helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, classes, 16, 16])]
    return _model(nodes, inputs, outputs, inits, "detection_head")


def lstm_cell(seed: int = 0, steps: int = 10, features: int = 8, hidden: int = 16):
    """One LSTM layer over a sequence: x [steps,1,features] -> y [steps,1,1,hidden], y_h."""
    rng = np.random.default_rng(seed)
    inits = [
        _init("lstm.W", (rng.standard_normal((1, 4 * hidden, features)) * 0.3).astype(
            np.float32)),
        _init("lstm.R", (rng.standard_normal((1, 4 * hidden, hidden)) * 0.3).astype(np.float32)),
        _init("lstm.B", (rng.standard_normal((1, 8 * hidden)) * 0.1).astype(np.float32)),
    ]
    nodes = [helper.make_node("LSTM", ["x", "lstm.W", "lstm.R", "lstm.B"], ["y", "y_h"],
                              name="lstm", hidden_size=hidden)]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [steps, 1, features])
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [steps, 1, 1, hidden]),
               helper.make_tensor_value_info("y_h", TensorProto.FLOAT, [1, 1, hidden])]
    return _model(nodes, [x], outputs, inits, "lstm_cell")


BUNDLED = {
    "demo.onnx": two_heads,
    "transformer_block.onnx": transformer_block,
    "detection_head.onnx": detection_head,
    "lstm_cell.onnx": lstm_cell,
    "cnn_dynamic_batch.onnx": lambda: cnn(seed=4, batch="batch"),
    "channel_outlier_cnn.onnx": channel_outlier_cnn,
}


def main(argv: list[str] | None = None) -> int:
    out_dir = Path(argv[0]) if argv else HERE
    for file_name, build in BUNDLED.items():
        path = out_dir / file_name
        onnx.save(build(), str(path))
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
