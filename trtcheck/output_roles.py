"""What the graph says about its outputs: which are class scores, and what the model computes in.

Both decide the default tolerances (`tolerance.ToleranceRequest.resolve`):

- **Class scores**: an output made by a Softmax or LogSoftmax over its last axis, or by a linear
  head (Gemm, or MatMul with an optional bias Add, whose weight is a constant), with at most
  layout-only ops after it (Reshape, Flatten, Squeeze, Unsqueeze, Identity, Cast, Q/DQ). What an
  application reads from them is the top class at each position; their values move by more than
  an embedding's when a precision coarser than fp16 rounds them, while the decision stays.
- **Quantized models**: a model holding int8 QuantizeLinear/DequantizeLinear (or the integer ops
  of dynamic quantization) computes part of its graph in int8, whatever the target's float type:
  its noise is an int8 step (1/127 of a tensor's range) wherever rounding before a Q lands on the
  other side of a step.

The walk is structural and cheap (no shape inference); it errs towards "not class scores", which
keeps an output under the stricter values rule.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import onnx

# Ops that only move, relabel or re-type an output's values: the role of what is before them holds.
_LAYOUT_OPS = frozenset({"Identity", "Cast", "Reshape", "Flatten", "Squeeze", "Unsqueeze",
                         "QuantizeLinear", "DequantizeLinear", "Dropout"})
_SCORE_NORMALIZERS = frozenset({"Softmax", "LogSoftmax"})
# Ops through which a constant weight reaches a linear head (quantized or pre-transposed).
_WEIGHT_PATH_OPS = frozenset({"DequantizeLinear", "Transpose", "Identity", "Cast", "Reshape"})
# Integer and quantization ops: a model holding one computes part of its graph in int8 (or fp8).
_QUANTIZED_OPS = frozenset({"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear",
                            "MatMulInteger", "ConvInteger", "QLinearConv", "QLinearMatMul"})
_FLOAT_TYPES = frozenset({1, 10, 11, 16})  # FLOAT, FLOAT16, DOUBLE, BFLOAT16 (TensorProto)


def class_score_outputs(model: onnx.ModelProto) -> dict[str, str]:
    """Outputs holding class scores (see the module docstring) -> why, naming the node."""
    graph = model.graph
    producers = {output: node for node in graph.node for output in node.output}
    constants = _constant_names(graph)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)
    found = {}
    for output in graph.output:
        if output.type.tensor_type.elem_type not in _FLOAT_TYPES:
            continue
        node = _past_layout_ops(output.name, producers)
        if node is None:
            continue
        why = _score_reason(node, producers, constants, opset, _rank(output))
        if why is not None:
            found[output.name] = why
    return found


def quantized_type(model: onnx.ModelProto) -> str | None:
    """"fp8" or "int8" when the model computes part of its graph quantized, else None."""
    from onnx import TensorProto

    ops = {node.op_type for node in model.graph.node if node.domain in ("", "ai.onnx")}
    if not ops & _QUANTIZED_OPS:
        return None
    float8 = {TensorProto.FLOAT8E4M3FN, TensorProto.FLOAT8E4M3FNUZ, TensorProto.FLOAT8E5M2,
              TensorProto.FLOAT8E5M2FNUZ}
    typed = [init.data_type for init in model.graph.initializer]
    typed += [vi.type.tensor_type.elem_type for vi in model.graph.value_info]
    return "fp8" if float8 & set(typed) else "int8"


def _rank(value_info: onnx.ValueInfoProto) -> int | None:
    tensor = value_info.type.tensor_type
    return len(tensor.shape.dim) if tensor.HasField("shape") else None


def _constant_names(graph: onnx.GraphProto) -> set[str]:
    names = {init.name for init in graph.initializer}
    names.update(out for node in graph.node if node.op_type == "Constant" for out in node.output)
    return names


def _past_layout_ops(name: str, producers: dict) -> onnx.NodeProto | None:
    node = producers.get(name)
    while node is not None and node.op_type in _LAYOUT_OPS and node.input:
        node = producers.get(node.input[0])
    return node


def _is_constant(name: str, producers: dict, constants: set[str]) -> bool:
    while name not in constants:
        node = producers.get(name)
        if node is None or node.op_type not in _WEIGHT_PATH_OPS or not node.input:
            return False
        name = node.input[0]
    return True


def _score_reason(node: onnx.NodeProto, producers: dict, constants: set[str], opset: int,
                  rank: int | None) -> str | None:
    if node.op_type in _SCORE_NORMALIZERS:
        axis = next((a.i for a in node.attribute if a.name == "axis"), -1 if opset >= 13 else 1)
        # Before opset 13 the op flattens from `axis`: on a 2-D output axis 1 is the last one.
        last = axis == -1 or (rank is not None and axis == rank - 1)
        return f"{node.op_type} over the last axis ({_name(node)})" if last else None
    if node.op_type == "Add" and len(node.input) == 2:
        # A MatMul head's bias: the other input is the constant.
        for head, bias in ((node.input[0], node.input[1]), (node.input[1], node.input[0])):
            matmul = _matmul_of(head, producers)
            if matmul is not None and _is_constant(bias, producers, constants):
                return _score_reason(matmul, producers, constants, opset, rank)
        return None
    if node.op_type in ("Gemm", "MatMul", "MatMulInteger") and len(node.input) >= 2 and (
            _is_constant(node.input[1], producers, constants)):
        return f"a linear head ({node.op_type} {_name(node)})"
    return None


def _matmul_of(name: str, producers: dict) -> onnx.NodeProto | None:
    """The MatMul making `name`; dynamic quantization's MatMulInteger -> Cast -> Mul included."""
    node = producers.get(name)
    while node is not None and node.op_type in ("Mul", "Cast") and node.input:
        node = producers.get(node.input[0])
    return node if node is not None and node.op_type in ("MatMul", "MatMulInteger") else None


def _name(node: onnx.NodeProto) -> str:
    return node.name or node.output[0]
