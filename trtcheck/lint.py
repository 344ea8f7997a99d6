"""`trtcheck lint`: what TensorRT's ONNX parser will reject, found without TensorRT.

Checks come from the operator tables in trtcheck/lint_data (onnx-tensorrt's docs/operators.md of
each release, cited in the files): operator support, opset range, inputs that must be
initializers, allowed attribute values, input types, custom domains and string tensors. Where
TensorRT is installed, its real parser also runs and disagreements with the table are reported.
"""

from __future__ import annotations

import math
import shlex
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from trtcheck.model import LoadedModel
from trtcheck.passes.base import default_opset
from trtcheck.trt_support import support_table

ERROR, WARNING = "error", "warning"

# Domains TensorRT's parser reads itself; anything else needs a plugin.
_STANDARD_DOMAINS = ("", "ai.onnx")
# numpy dtype name -> the type names of the operator tables.
_TABLE_TYPE = {"float32": "FP32", "float16": "FP16", "bfloat16": "BF16", "float64": "DOUBLE",
               "int32": "INT32", "int64": "INT64", "int8": "INT8", "uint8": "UINT8",
               "bool": "BOOL", "int4": "INT4"}


@dataclass(frozen=True)
class Finding:
    """One problem: where (node name and op; empty for the model), why, and what fixes it."""

    node: str
    op: str
    reason: str
    severity: str = ERROR
    # The `trtcheck fix` pass that removes the problem, when one does.
    fixed_by: str | None = None


@dataclass
class LintResult:
    model_path: str
    trt_major: int
    # The release the table describes (e.g. "10.15"), its opset range, and where it comes from.
    version: str
    opset_range: tuple[int | None, int]
    source: dict[str, Any]
    findings: list[Finding]
    # Filled only where TensorRT is installed: the real parser's errors, and where it and the
    # table disagree.
    parser_errors: list[Finding] | None = None
    disagreements: list[str] = field(default_factory=list)

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == ERROR]

    @property
    def command(self) -> str:
        """The `trtcheck lint` command that lists these findings."""
        return shlex.join(["trtcheck", "lint", self.model_path, "--trt-major",
                           str(self.trt_major)])

    def rejected_ops(self) -> dict[str, int]:
        """Nodes with errors per op type, most frequent first (each node counted once)."""
        nodes = {(f.node, f.op) for f in self.errors if f.node}
        counts = Counter(op for _, op in nodes)
        return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))

    def summary(self) -> str | None:
        """One line saying what TensorRT's parser will reject, or None when nothing is."""
        if not self.errors:
            return None
        parts = []
        ops = self.rejected_ops()
        if ops:
            nodes = sum(ops.values())
            listed = ", ".join(f"{op} ({count})" for op, count in ops.items())
            parts.append(f"rejects {nodes} node{'s' if nodes != 1 else ''}: {listed}")
        model_level = [f.reason for f in self.errors if not f.node]
        if model_level:
            parts.append(f"rejects the model: {'; '.join(model_level)}")
        return (f"TensorRT {self.version}'s ONNX parser {' and '.join(parts)} (onnx-tensorrt's "
                f"operator table); see `{self.command}`")


def _dtype_name(tensor: gs.Tensor) -> str | None:
    try:
        return np.dtype(tensor.dtype).name if tensor.dtype is not None else None
    except TypeError:
        return None


def _attribute_text(value: Any) -> Any:
    return value.decode() if isinstance(value, bytes) else value


def _constant_computable(graph: gs.Graph, tensor: gs.Tensor) -> bool:
    from trtcheck.passes.tensorrt import constant_value

    try:
        return constant_value(graph, tensor) is not None
    except Exception:
        return False


def _node_findings(node: gs.Node, graph: gs.Graph, table: dict[str, Any], opset: int,
                   version: str) -> list[Finding]:
    name, op = node.name, node.op
    if (node.domain or "") not in _STANDARD_DOMAINS:
        return [Finding(name, op, f"custom domain '{node.domain}': TensorRT's parser needs a "
                                  "plugin registered for this op")]
    entry = table["operators"].get(op)
    if entry is None:
        return [Finding(name, op, f"{op} is not in TensorRT {version}'s ONNX operator table")]
    if not entry["supported"]:
        detail = f": {entry['restrictions']}" if entry["restrictions"] else ""
        return [Finding(name, op, f"{op} is not supported by TensorRT {version}{detail}")]
    findings = []
    constant_names = set(entry["initializer_inputs"])
    if constant_names:
        from trtcheck.passes.tensorrt import input_indices, is_constant

        for index in input_indices(node, constant_names, opset):
            tensor = node.inputs[index]
            if is_constant(tensor):
                continue
            computable = _constant_computable(graph, tensor)
            findings.append(Finding(
                name, op, f"input '{tensor.name}' must be an initializer for TensorRT "
                          f"{version}" + ("" if computable else "; it depends on runtime data, "
                                          "so no pass can make it one"),
                fixed_by="initializer-inputs" if computable else None))
    for attribute, allowed in entry["attribute_values"].items():
        if attribute in node.attrs:
            value = _attribute_text(node.attrs[attribute])
            if str(value) not in [str(a) for a in allowed]:
                findings.append(Finding(name, op, f"{attribute}={value!r} is not supported by "
                                                  f"TensorRT {version} (supported: "
                                                  f"{', '.join(map(str, allowed))})"))
    if entry["types"] and node.inputs:
        dtype = _dtype_name(node.inputs[0])
        table_type = _TABLE_TYPE.get(dtype or "")
        if table_type == "UINT8" and table_type not in entry["types"]:
            # The table's note: "UINT8 is only supported as network input or output tensor
            # types"; the importers of Gather, Q/DQ, Pad, Resize, ... reject it outright
            # (notInvalidType(..., {"UINT8"}) in onnx-tensorrt's onnxOpImporters.cpp).
            findings.append(Finding(name, op, f"input type uint8: TensorRT {version} takes uint8 "
                                              "only as a network input or output (or into a "
                                              "Cast), not into " + op))
        elif table_type is not None and table_type not in entry["types"] and not (
                op == "DequantizeLinear" and table_type == "INT32"):
            # An int32 DequantizeLinear is a quantized bias: `quant.qdq_lint` reports it, as an
            # error with its fix.
            findings.append(Finding(name, op, f"input type {dtype} is not among the types "
                                              f"TensorRT {version} lists for {op} "
                                              f"({', '.join(entry['types'])})", WARNING))
    return findings


def _tensor_findings(graph: gs.Graph) -> list[Finding]:
    findings = []
    for tensor in graph.tensors().values():
        dtype = tensor.dtype
        if dtype is not None and (dtype == onnx.TensorProto.STRING or _dtype_name(tensor) in (
                "object", "str")):
            findings.append(Finding("", "", f"tensor '{tensor.name}' is a string tensor; "
                                            "TensorRT has no string type"))
    return findings


# Initializers with more elements than this keep their type and shape but not their values in the
# model the lint reads: shape arithmetic (what `initializer-inputs` folds) uses small tensors only.
_WEIGHT_ELEMENTS = 1 << 14


def _is_weight(tensor: onnx.TensorProto) -> bool:
    # Counted from dims: upb's ByteSize() serialises the tensor to measure it.
    return math.prod(tensor.dims) > _WEIGHT_ELEMENTS


def _without_weights(proto: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `proto` without the values of its large initializers.

    Shape inference serialises the whole model, weights included (0.6 s of 1.1 s on a 330 MB
    ViT-B/16); the lint reads types, so the weights are left out of that copy.
    """
    if not any(_is_weight(t) for t in proto.graph.initializer):
        return proto  # infer_shapes leaves its argument as it is
    skeleton = onnx.ModelProto()
    for name in ("ir_version", "producer_name", "producer_version", "domain", "model_version"):
        setattr(skeleton, name, getattr(proto, name))
    skeleton.opset_import.extend(proto.opset_import)
    skeleton.functions.extend(proto.functions)
    graph, source = skeleton.graph, proto.graph
    graph.name = source.name
    for field_name in ("node", "input", "output", "value_info", "sparse_initializer"):
        getattr(graph, field_name).extend(getattr(source, field_name))
    for tensor in source.initializer:
        if not _is_weight(tensor):
            graph.initializer.append(tensor)
        else:
            stub = graph.initializer.add()
            stub.name, stub.data_type = tensor.name, tensor.data_type
            stub.dims.extend(tensor.dims)
    return skeleton


def lint_model(model: LoadedModel, trt_major: int = 10, with_parser: bool = True) -> LintResult:
    """Checks `model` against TensorRT `trt_major`'s operator table.

    With `with_parser`, TensorRT's own parser also runs where TensorRT is installed (compare skips
    it: its TensorRT target parses the model anyway).
    """
    table = support_table(trt_major)
    version = table["source"]["header"].split(" supports")[0].removeprefix("TensorRT ")
    opset = default_opset(model.proto)
    findings: list[Finding] = []
    low, high = table["opset"]["min"], table["opset"]["max"]
    if (low is not None and opset < low) or opset > high:
        findings.append(Finding("", "", f"opset {opset} is outside TensorRT {version}'s range "
                                        f"{low}-{high}; convert it with onnx.version_converter"))
    inferred = onnx.shape_inference.infer_shapes(_without_weights(model.proto), strict_mode=False)
    # graphsurgeon warns for each tensor of a type numpy lacks (float8 in an fp8 Q/DQ model).
    previous, gs.logger.G_LOGGER.severity = gs.logger.G_LOGGER.severity, gs.logger.G_LOGGER.ERROR
    try:
        graph = gs.import_onnx(inferred)
    finally:
        gs.logger.G_LOGGER.severity = previous
    graph.toposort()
    findings += _tensor_findings(graph)
    for node in graph.nodes:
        findings += _node_findings(node, graph, table, opset, version)
    from trtcheck.quant.qdq_lint import qdq_findings

    findings += qdq_findings(graph, opset, trt_major)
    result = LintResult(str(model.path), trt_major, version, (low, high), table["source"],
                        findings)
    if with_parser:
        _compare_with_parser(result, model)
    return result


def _compare_with_parser(result: LintResult, model: LoadedModel) -> None:
    """Runs TensorRT's own ONNX parser, where installed, and records disagreements.

    It cannot run without TensorRT, so it is kept small and defensive.
    """
    from trtcheck.backends import tensorrt_usable

    if not tensorrt_usable():
        return
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.ERROR)
    builder = trt.Builder(logger)
    flags = 0
    if hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH"):
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    parser.parse_from_file(str(model.path))
    errors = []
    for index in range(parser.num_errors):
        error = parser.get_error(index)
        node_name = error.node_name() if hasattr(error, "node_name") else str(error.node())
        op = error.node_operator() if hasattr(error, "node_operator") else ""
        errors.append(Finding(node_name, op, f"TensorRT parser: {error.desc()}"))
    result.parser_errors = errors
    table_nodes = {f.node for f in result.errors if f.node}
    parser_nodes = {f.node for f in errors if f.node}
    for node in sorted(parser_nodes - table_nodes):
        result.disagreements.append(f"{node}: the parser rejects it, the table does not")
    for node in sorted(table_nodes - parser_nodes):
        result.disagreements.append(f"{node}: the table flags it, the parser accepts it")
