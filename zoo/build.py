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


BUNDLED = {"demo.onnx": two_heads}


def main(argv: list[str] | None = None) -> int:
    out_dir = Path(argv[0]) if argv else HERE
    for file_name, build in BUNDLED.items():
        path = out_dir / file_name
        onnx.save(build(), str(path))
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
