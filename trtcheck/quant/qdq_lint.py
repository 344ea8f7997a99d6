"""Q/DQ lint: the QuantizeLinear/DequantizeLinear patterns TensorRT rejects or runs badly.

`qdq_findings` applies these rules to each Q/DQ node (errors: the parser or builder rejects the
model; warnings: it builds, but not as the model intends):

1. A zero point that is not all zeros, or one computed at runtime: error (TensorRT quantizes
   symmetrically only).
2. A quantized type TensorRT does not take: error. The types are the DequantizeLinear row of
   the release's operator table (INT8, FP8 = FLOAT8E4M3FN, INT4, FP4); the importer rejects
   UINT8 (reported here on a Q; lint's table check reports it on a DQ); INT4 is for weights only
   and needs an even last dimension. A QuantizeLinear without
   a zero point quantizes to uint8 in ONNX (and ONNX Runtime) but to int8 in TensorRT: warning.
3. An int32 DequantizeLinear (ONNX Runtime's quantized Conv/Gemm bias): error; TensorRT's
   Dequantize takes quantized types only and adds the bias in float itself.
4. Per-channel scales on an activation, or on a weight along an axis other than its output
   channels (Conv 0, ConvTranspose 1, MatMul's B -1, Gemm's B 1 or 0 with transB): error.
5. Block quantization (opset 21 `block_size`) on an activation, along an axis other than the
   last two, or with a block size that does not divide the axis: error.
6. A scale that is zero, negative or not finite: error.
7. An op that runs in float between a DequantizeLinear and a QuantizeLinear (Softmax,
   LayerNormalization, Sigmoid, ...): warning, the Q/DQ pair only adds rounding.
8. A QuantizeLinear with no DequantizeLinear after it, or a DequantizeLinear whose input is
   neither a QuantizeLinear nor a constant: warning.
9. Activation scales that look uncalibrated (all equal, or a common default such as 1 or
   1/127): warning.

Sources:
- onnx-tensorrt docs/operators.md, as tabulated per release in trtcheck/lint_data
  ("y_zero_point must be 0", "x_zero_point must be zero"; DequantizeLinear types).
- onnx-tensorrt onnxOpImporters.cpp, QuantDequantLinearHelper (10.1 GA, commit 96e7811, and
  commit 0137504e): notInvalidType(..., {"UINT8"}); "TensorRT only supports symmetric
  quantization"; "Scale coefficients must all be positive"; "Activations-quantization does not
  support per-axis quantization"; "Only a single blocking dimension is allowed"; "Inferred block
  size is not an integer"; "Quantization to INT4 is not supported for tensors with an odd last
  dimension"; "TensorRT only allows FP8, INT8, and INT4 quantization".
- TensorRT developer guide, "Working with Quantized Types" (symmetric scheme; INT8, INT4
  weight-only, FP8E4M3, FP4E2M1) and "Explicit Quantization" (Q/DQ placement; quantizable
  pooling and residual Add fused with their DQ and Q; DQ propagated forward and Q backward across
  data-movement layers): https://docs.nvidia.com/deeplearning/tensorrt/latest/inference-library/
  work-quantized-types.html and .../quantized-types-explicit-quantization.html
- TensorRT API, IQuantizeLayer / IDequantizeLayer: zero points only zeros, scales strictly
  positive, block quantization blocked on the last or second-to-last dimension.
- int32 bias DequantizeLinear: onnx/onnx-tensorrt#850 ("Invalid Node -
  model.0.conv.bias_DequantizeLinear", a quantize_static model), microsoft/onnxruntime#14229
  ("only activation types allowed as input to this layer"), microsoft/onnxruntime#17738.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs
from onnx import TensorProto, helper

from trtcheck.lint import ERROR, WARNING, Finding
from trtcheck.passes.tensorrt import is_constant
from trtcheck.trt_support import support_table

_Q, _DQ = "QuantizeLinear", "DequantizeLinear"
_STANDARD_DOMAINS = ("", "ai.onnx")
# ONNX element type -> its name in the operator tables' DequantizeLinear types.
_TABLE_TYPE: dict[int, str] = {TensorProto.INT8: "INT8", TensorProto.FLOAT8E4M3FN: "FP8",
               TensorProto.INT4: "INT4", TensorProto.FLOAT4E2M1: "FP4"}
_FLOAT8: set[int] = {TensorProto.FLOAT8E4M3FN, TensorProto.FLOAT8E4M3FNUZ, TensorProto.FLOAT8E5M2,
           TensorProto.FLOAT8E5M2FNUZ}
# Ops TensorRT runs on quantized data between a DQ and a Q (weighted layers, pooling, the
# residual Add, the activations it fuses into a convolution) or moves Q/DQ across (data movement).
_QUANTIZED_OPS = frozenset({
    "Conv", "ConvTranspose", "MatMul", "Gemm", "MaxPool", "AveragePool", "GlobalAveragePool",
    "GlobalMaxPool", "Add", "Relu", "Clip", "Reshape", "Flatten", "Transpose", "Squeeze",
    "Unsqueeze", "Slice", "Concat", "Identity"})
# Ops that move quantized values without computing on them; a DQ may read their output.
_DATA_MOVEMENT = frozenset({"Gather", "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze",
                            "Slice", "Identity"})
# Scales a quantizer writes when it has no range to go by.
_DEFAULT_SCALES = {"1": 1.0, "1/127": 1 / 127, "1/128": 1 / 128, "1/255": 1 / 255,
                   "1/256": 1 / 256}
# Fewer activation Q nodes than this sharing one scale can be a coincidence.
_MIN_EQUAL_SCALES = 3

_FIX_SYMMETRIC = ("quantize symmetrically (ONNX Runtime: extra_options ActivationSymmetric and "
                  "WeightSymmetric True)")
_FIX_INT8 = ("quantize to symmetric int8 (ONNX Runtime: activation_type and weight_type "
             "QuantType.QInt8, extra_options ActivationSymmetric True)")
_FIX_BIAS = "keep biases in float (ONNX Runtime: extra_options QuantizeBias False)"
_FIX_EXCLUDE = ("leave it out of quantization (ONNX Runtime: op_types_to_quantize or "
                "nodes_to_exclude)")
_FIX_CALIBRATE = "calibrate on representative inputs (ONNX Runtime: a CalibrationDataReader)"


@dataclass(frozen=True)
class _Scope:
    """What every rule needs: the TensorRT release and the opset."""

    opset: int
    version: str
    # Table type names TensorRT quantizes to in this release.
    types: tuple[str, ...]


def qdq_findings(graph: gs.Graph, opset: int, trt_major: int) -> list[Finding]:
    """The Q/DQ problems of `graph` (rules in the module docstring) for TensorRT `trt_major`."""
    table = support_table(trt_major)
    version = table["source"]["header"].split(" supports")[0].removeprefix("TensorRT ")
    scope = _Scope(opset, version, tuple(table["operators"][_DQ]["types"]))
    findings: list[Finding] = []
    for node in graph.nodes:
        if (node.domain or "") not in _STANDARD_DOMAINS:
            continue
        if node.op in (_Q, _DQ):
            findings += _qdq_node_findings(node, scope)
        else:
            findings += _float_island(node, graph)
    return findings + _calibration_findings(graph)


def _qdq_node_findings(node: gs.Node, scope: _Scope) -> list[Finding]:
    findings = _type_findings(node, scope) + _scale_findings(node) + _axis_findings(node, scope)
    quantized = _quantized_type(node)
    # A uint8 zero point of 128 is the type's problem (reported on the Q), not another one.
    if quantized is None or _TABLE_TYPE.get(quantized) in scope.types:
        findings += _zero_point_findings(node)
    return findings + _dangling(node)


def _finding(node: gs.Node, why: str, fix: str, severity: str = ERROR) -> Finding:
    return Finding(node.name, node.op, f"{why}; fix: {fix}", severity)


def _onnx_type(tensor: gs.Tensor) -> int | None:
    dtype = tensor.dtype
    if dtype is None:
        return None
    if isinstance(dtype, int):  # graphsurgeon keeps types numpy lacks (float8) as ONNX enums
        return dtype
    try:
        return int(helper.np_dtype_to_tensor_dtype(np.dtype(dtype)))
    except (KeyError, TypeError, ValueError):
        return None


def _constant_array(tensor: gs.Tensor) -> np.ndarray | None:
    """The value of an initializer or Constant output; None when unknown (runtime or dropped)."""
    if not is_constant(tensor):
        return None
    constant = tensor if isinstance(tensor, gs.Constant) else tensor.inputs[0].attrs.get("value")
    if not isinstance(constant, gs.Constant):
        return None
    try:
        values = np.asarray(constant.values)
    except (ValueError, TypeError):  # lint_model drops large weights' values (its skeleton)
        return None
    return values if values.shape == tuple(constant.shape) else None


def _input(node: gs.Node, index: int) -> gs.Tensor | None:
    """Input `index` of `node`, None when absent or left empty."""
    if index < len(node.inputs) and node.inputs[index].name:
        return node.inputs[index]
    return None


def _producer(tensor: gs.Tensor) -> gs.Node | None:
    return tensor.inputs[0] if tensor.inputs else None


def _fed_by_q(node: gs.Node) -> bool:
    producer = _producer(node.inputs[0])
    return producer is not None and producer.op == _Q


def _source(node: gs.Node) -> gs.Tensor:
    """The float data `node` quantizes (for a DQ after a Q: the Q's input)."""
    producer = _producer(node.inputs[0])
    if node.op == _DQ and producer is not None and producer.op == _Q:
        return producer.inputs[0]
    return node.inputs[0]


def _quantizes_weight(node: gs.Node) -> bool:
    return is_constant(_source(node))


def _uses(tensor: gs.Tensor) -> list[tuple[gs.Node, int]]:
    """(consumer, input index) for each use of `tensor`."""
    return [(consumer, index) for consumer in tensor.outputs
            for index, used in enumerate(consumer.inputs) if used is tensor]


def _quantized_type(node: gs.Node) -> int | None:
    """The quantized type of a Q (zero point or output_dtype) or of a DQ's input."""
    if node.op == _DQ:
        return _onnx_type(node.inputs[0])
    zero_point = _input(node, 2)
    if zero_point is not None:
        return _onnx_type(zero_point)
    return node.attrs.get("output_dtype") or None


def _type_findings(node: gs.Node, scope: _Scope) -> list[Finding]:
    if node.op == _DQ and _fed_by_q(node):
        return []  # the Q before it decides the type (and is checked)
    quantized = _quantized_type(node)
    if node.op == _DQ and quantized == TensorProto.UINT8:
        return []  # lint's table check already rejects uint8 into DequantizeLinear (one line)
    if node.op == _Q and quantized is None:
        return [_finding(node, "no zero point: ONNX (and ONNX Runtime) quantize to uint8 by "
                               "default, TensorRT to int8, so they disagree on negative values",
                         "give it an int8 zero point of 0", WARNING)]
    if quantized is None:
        return []
    name = TensorProto.DataType.Name(quantized)
    if _TABLE_TYPE.get(quantized) not in scope.types:
        return [_unsupported_type(node, quantized, name, scope)]
    if quantized == TensorProto.INT4:
        return _int4_findings(node)
    return []


def _unsupported_type(node: gs.Node, quantized: int, name: str, scope: _Scope) -> Finding:
    why = (f"{name.lower()} quantization: TensorRT {scope.version} quantizes to "
           f"{', '.join(scope.types)} only")
    if quantized == TensorProto.INT32 and node.op == _DQ:
        bias = any(consumer.op in ("Conv", "ConvTranspose", "Gemm") and index == 2
                   for consumer, index in _uses(node.outputs[0]))
        what = "an int32 bias DequantizeLinear" if bias else "an int32 DequantizeLinear"
        return _finding(node, f"{what}: TensorRT's Dequantize takes quantized types only "
                              "(INT32 is not among them) and adds biases in float", _FIX_BIAS)
    if quantized in _FLOAT8:
        return _finding(node, why + " (FP8 is FLOAT8E4M3FN)", "quantize to FLOAT8E4M3FN")
    return _finding(node, why, _FIX_INT8)


def _int4_findings(node: gs.Node) -> list[Finding]:
    if not _quantizes_weight(node):
        return [_finding(node, "int4 activation: TensorRT quantizes only weights to int4",
                         "quantize activations to int8 or fp8")]
    shape = node.inputs[0].shape
    if shape and isinstance(shape[-1], int) and shape[-1] % 2:
        return [_finding(node, f"int4 weights with an odd last dimension ({shape[-1]}): "
                               "TensorRT packs two int4 values per byte", "pad the weights")]
    return []


def _zero_point_findings(node: gs.Node) -> list[Finding]:
    zero_point = _input(node, 2)
    if zero_point is None or _onnx_type(zero_point) in _FLOAT8:
        return []  # TensorRT does not read FP8 zero points
    values = _constant_array(zero_point)
    if values is None:
        if is_constant(zero_point):
            return []  # a constant whose values the lint did not load
        return [_finding(node, f"zero point '{zero_point.name}' is computed at runtime: "
                               "TensorRT needs a constant zero point of 0", _FIX_SYMMETRIC)]
    nonzero = np.flatnonzero(values.astype(np.float64))
    if not nonzero.size:
        return []
    example = values.reshape(-1)[nonzero[0]]
    what = (f"zero point {example}" if values.size == 1 else
            f"{nonzero.size} of {values.size} zero points are non-zero (e.g. {example})")
    return [_finding(node, f"{what}: TensorRT supports symmetric quantization only (zero "
                           "point 0)", _FIX_SYMMETRIC)]


def _scale_findings(node: gs.Node) -> list[Finding]:
    values = _constant_array(node.inputs[1])
    if values is None:
        return []
    values = values.astype(np.float64)
    if not np.isfinite(values).all():
        return [_finding(node, "the scale has non-finite values", _FIX_CALIBRATE)]
    if (values <= 0).any():
        smallest = values.min()
        return [_finding(node, f"scale {smallest:g}: TensorRT needs every scale strictly "
                               "positive", _FIX_CALIBRATE)]
    return []


def _axis_findings(node: gs.Node, scope: _Scope) -> list[Finding]:
    block_size = int(node.attrs.get("block_size", 0) or 0)
    if block_size:
        return _block_findings(node, block_size)
    scale_shape = node.inputs[1].shape
    count = int(np.prod(scale_shape)) if scale_shape is not None and all(
        isinstance(d, int) for d in scale_shape) else 1
    if count <= 1:
        return []
    if not _quantizes_weight(node):
        return [_finding(node, f"per-channel scales ({count}) on an activation: TensorRT "
                               "quantizes activations per tensor only",
                         "quantize activations per tensor (one scale)")]
    if scope.opset < 13:
        return [_finding(node, f"per-channel scales at opset {scope.opset}: the axis attribute "
                               "needs opset 13", "convert the model to opset 13 or later")]
    return _weight_axis_findings(node)


def _weight_axis_findings(node: gs.Node) -> list[Finding]:
    rank = len(_source(node).shape or ())
    if not rank:
        return []
    axis = int(node.attrs.get("axis", 1)) % rank
    dequantized = ([node.outputs[0]] if node.op == _DQ else
                   [c.outputs[0] for c in node.outputs[0].outputs if c.op == _DQ])
    for tensor in dequantized:
        for consumer, index in _uses(tensor):
            expected = _output_channel_axis(consumer, index, rank)
            if expected is not None and expected != axis:
                return [_finding(node, f"per-channel weight scales on axis {axis} of "
                                       f"{consumer.op} '{consumer.name}': TensorRT takes them "
                                       f"only on the output channels (axis {expected})",
                                 f"quantize the weights per channel on axis {expected}")]
    return []


def _output_channel_axis(consumer: gs.Node, index: int, rank: int) -> int | None:
    """The output-channel axis of `consumer`'s weight input `index`; None when not a weight."""
    if index != 1:
        return None
    if consumer.op == "Gemm":
        return 0 if consumer.attrs.get("transB", 0) else 1
    return {"Conv": 0, "ConvTranspose": 1, "MatMul": rank - 1}.get(consumer.op)


def _block_findings(node: gs.Node, block_size: int) -> list[Finding]:
    if not _quantizes_weight(node):
        return [_finding(node, "block quantization of an activation: TensorRT block-quantizes "
                               "only weights (INT4/FP4 weight-only)",
                         "quantize activations per tensor")]
    shape = node.inputs[0].shape or ()
    rank = len(shape)
    axis = int(node.attrs.get("axis", 1)) % rank if rank else 0
    if rank and axis < rank - 2:
        return [_finding(node, f"blocks along axis {axis}: TensorRT blocks only the last or "
                               "second-to-last dimension", f"block along axis {rank - 1} or "
                                                           f"{rank - 2}")]
    if rank and isinstance(shape[axis], int) and shape[axis] % block_size:
        return [_finding(node, f"block_size {block_size} does not divide axis {axis} "
                               f"({shape[axis]}): TensorRT needs whole blocks",
                         f"choose a block size that divides {shape[axis]}")]
    return []


def _dangling(node: gs.Node) -> list[Finding]:
    if node.op == _Q:
        if any(consumer.op == _DQ for consumer in node.outputs[0].outputs):
            return []
        return [_finding(node, "no DequantizeLinear after this QuantizeLinear: TensorRT "
                               "expects each Q to be followed by a DQ",
                         "add a DequantizeLinear after it, or remove it", WARNING)]
    source = _before_data_movement(node.inputs[0])
    producer = _producer(source)
    if is_constant(source) or (producer is not None and producer.op == _Q):
        return []
    origin = f"{producer.op} '{producer.name}'" if producer else "a network input"
    return [_finding(node, f"input '{source.name}' comes from {origin}, not from a "
                           "QuantizeLinear or a quantized constant",
                     "feed it from a QuantizeLinear (or quantize the producer's output)",
                     WARNING)]


def _before_data_movement(tensor: gs.Tensor) -> gs.Tensor:
    """`tensor` traced back through ops that only move data (a quantized embedding's Gather)."""
    producer = _producer(tensor)
    while producer is not None and producer.op in _DATA_MOVEMENT and producer.inputs:
        tensor = producer.inputs[0]
        producer = _producer(tensor)
    return tensor


def _float_island(node: gs.Node, graph: gs.Graph) -> list[Finding]:
    """Rule 7: `node` reads only DQ outputs, feeds only Qs, and TensorRT runs it in float."""
    if node.op in _QUANTIZED_OPS:
        return []
    data = [tensor for tensor in node.inputs if tensor.name and not is_constant(tensor)]
    if not data or any((p := _producer(t)) is None or p.op != _DQ for t in data):
        return []
    consumers = [consumer for out in node.outputs for consumer in out.outputs]
    graph_outputs = {tensor.name for tensor in graph.outputs}
    if not consumers or any(c.op != _Q for c in consumers) or any(
            out.name in graph_outputs for out in node.outputs):
        return []
    return [_finding(node, f"{node.op} runs in float between Q/DQ: the Q/DQ only adds rounding",
                     _FIX_EXCLUDE, WARNING)]


def _activation_scales(graph: gs.Graph) -> list[tuple[gs.Node, float]]:
    """(Q node, scale) for each per-tensor Q of an activation with a positive constant scale."""
    scales = []
    for node in graph.nodes:
        if node.op != _Q or _quantizes_weight(node):
            continue
        values = _constant_array(node.inputs[1])
        if values is not None and values.size == 1:
            value = float(values.reshape(-1)[0])
            if np.isfinite(value) and value > 0:
                scales.append((node, value))
    return scales


def _default_name(value: float) -> str | None:
    for name, default in _DEFAULT_SCALES.items():
        if np.float32(value) == np.float32(default):
            return name
    return None


def _calibration_findings(graph: gs.Graph) -> list[Finding]:
    scales = _activation_scales(graph)
    if len(scales) >= _MIN_EQUAL_SCALES and len({np.float32(v) for _, v in scales}) == 1:
        node, value = scales[0]
        return [_finding(node, f"all {len(scales)} activation scales are {value:.6g}: "
                               "calibrated scales differ from tensor to tensor, these look "
                               "uncalibrated", _FIX_CALIBRATE, WARNING)]
    findings = []
    for node, value in scales:
        name = _default_name(value)
        if name is not None:
            findings.append(_finding(node, f"scale {name}, a common default: it looks "
                                           "uncalibrated (a calibrated scale is the tensor's "
                                           "range / 127)", _FIX_CALIBRATE, WARNING))
    return findings
