"""Precision plans (which nodes run in reduced precision) and their two ONNX realisations.

A plan says "everything runs in fp16 (or bf16) except these nodes". It is realised:
- by `emulate`, for the ONNX Runtime targets: the model still computes in fp32, but every float
  tensor a reduced node reads or writes is rounded through the reduced type by a Cast pair, so
  overflow (|x| > 65504 becomes inf in fp16) and rounding appear where TensorRT would show them;
- by `convert`, for TensorRT 11 (strongly typed only): reduced nodes really take and produce fp16
  or bf16 tensors, with Casts at the boundaries to fp32 nodes and graph outputs;
- by builder flags plus per-layer fp32 constraints on TensorRT 10 (see `backends`).

Polygraphy's own `ConvertToFp16` (onnxconverter-common) produced models ORT rejects on a plain
Conv/Gemm graph, so it is not used here.

Limits of the emulation: nodes inside If/Loop/Scan bodies are left as they are (the node holding
the body counts as one node), and composite ops (LSTM, GRU, LayerNormalization, ...) round only at
their boundaries, while TensorRT may also compute their inner steps in reduced precision.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from trtcheck.errors import UsageError

PRECISIONS = ("fp32", "fp16", "bf16")

_ONNX_TYPE = {"fp16": onnx.TensorProto.FLOAT16, "bf16": onnx.TensorProto.BFLOAT16}
# ONNX Runtime and numpy have no native bfloat16; ml_dtypes (an onnx dependency) provides one.
_NUMPY_TYPE = {"fp16": np.dtype(np.float16), "bf16": onnx.helper.tensor_dtype_to_np_dtype(
    onnx.TensorProto.BFLOAT16)}
# The Cast to bfloat16 exists from opset 13 on; older models are upgraded first.
_MIN_OPSET = {"fp16": 6, "bf16": 13}

# Inputs that stay fp32 whatever the plan: TensorRT reads them as shape parameters, not as data,
# and ONNX requires float32 for Resize/Upsample scales.
_PARAMETER_INPUTS = {"Resize": {1, 2}, "Upsample": {1}}
# Ops whose output float type comes from an attribute rather than from their inputs.
_TYPE_ATTRIBUTE = {
    "Cast": "to",
    "EyeLike": "dtype",
    "RandomNormal": "dtype",
    "RandomUniform": "dtype",
    "RandomNormalLike": "dtype",
    "RandomUniformLike": "dtype",
}


@dataclass(frozen=True)
class PrecisionPlan:
    """Which nodes compute in `precision`; `keep_fp32` names the nodes that stay in fp32."""

    precision: str = "fp32"
    keep_fp32: frozenset[str] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise UsageError(
                f"precision '{self.precision}' is unknown; use one of {', '.join(PRECISIONS)}"
            )

    @property
    def reduced(self) -> bool:
        return self.precision != "fp32"

    def is_reduced(self, node_name: str) -> bool:
        return self.reduced and node_name not in self.keep_fp32

    def check_nodes(self, model: onnx.ModelProto) -> None:
        """Raises `UsageError` if `keep_fp32` names a node that the model does not have."""
        names = {node.name for node in model.graph.node}
        unknown = sorted(self.keep_fp32 - names)
        if unknown:
            raise UsageError(
                f"--keep-fp32 names node(s) {', '.join(unknown)} that are not in the model; "
                "use node names as shown by Netron or `polygraphy inspect model`"
            )

    def at_supported_opset(self, model: onnx.ModelProto) -> onnx.ModelProto:
        """Returns `model`, upgraded with onnx.version_converter if its opset lacks the Cast."""
        needed = _MIN_OPSET[self.precision] if self.reduced else 0
        opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
        if opset >= needed:
            return model
        from onnx import version_converter

        try:
            return version_converter.convert_version(model, needed)
        except Exception as err:
            raise UsageError(
                f"{self.precision} needs opset >= {needed} for its Cast; the model is opset "
                f"{opset} and onnx.version_converter could not upgrade it ({err}); convert it "
                "yourself or use fp16") from err


def _is_fp32(tensor: gs.Tensor) -> bool:
    # Tensors whose type shape inference could not find have dtype None; exotic types are ints.
    try:
        return tensor.dtype is not None and np.dtype(tensor.dtype) == np.float32
    except TypeError:
        return False


def _typed_graph(model: onnx.ModelProto) -> gs.Graph:
    # Shape inference fills in the dtypes of intermediate tensors, which the passes below need.
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    return gs.import_onnx(inferred)


def _data_inputs(node: gs.Node):
    skip = _PARAMETER_INPUTS.get(node.op, set())
    for index, tensor in enumerate(node.inputs):
        if index not in skip and tensor.name and _is_fp32(tensor):
            yield index, tensor


class _Rewrite:
    """A typed graph being rewritten for a plan: its reduced nodes, and Casts to add."""

    def __init__(self, model: onnx.ModelProto, plan: PrecisionPlan, tag: str) -> None:
        self.model = plan.at_supported_opset(model)
        self.graph = _typed_graph(self.model)
        self.tag = f"{tag}_{plan.precision}"
        self.reduced_type = _ONNX_TYPE[plan.precision]
        self.reduced_dtype = _NUMPY_TYPE[plan.precision]
        self.reduced_nodes = [node for node in self.graph.nodes if plan.is_reduced(node.name)]
        self.count = 0

    def cast(self, source: gs.Tensor, to: int, dtype: np.dtype, out: gs.Tensor | None = None):
        self.count += 1
        if out is None:
            out = gs.Variable(f"{source.name}__{self.tag}{self.count}", dtype=dtype,
                              shape=source.shape)
        self.graph.nodes.append(
            gs.Node("Cast", name=f"trtcheck_{self.tag}_{self.count}", attrs={"to": to},
                    inputs=[source], outputs=[out])
        )
        return out

    def to_reduced(self, source: gs.Tensor, out: gs.Tensor | None = None) -> gs.Tensor:
        return self.cast(source, self.reduced_type, self.reduced_dtype, out)

    def to_fp32(self, source: gs.Tensor, out: gs.Tensor | None = None) -> gs.Tensor:
        return self.cast(source, onnx.TensorProto.FLOAT, np.dtype(np.float32), out)

    def export(self) -> onnx.ModelProto:
        exported = gs.export_onnx(self.graph, do_type_check=False)
        exported.ir_version = self.model.ir_version
        del exported.opset_import[:]
        exported.opset_import.extend(self.model.opset_import)
        # Stale value_info from the typed graph would contradict the new tensor types.
        del exported.graph.value_info[:]
        return exported


def emulate(model: onnx.ModelProto, plan: PrecisionPlan) -> onnx.ModelProto:
    """Returns a copy of `model` in which reduced nodes round every float tensor they touch.

    Rules: each fp32 output of a reduced node is rounded in place (every consumer and graph output
    sees the rounded value, as in TensorRT); each fp32 input of a reduced node that another reduced
    node did not produce (graph inputs, weights, outputs of fp32 nodes) is rounded for the reduced
    consumers only. Weights are rounded by Cast pairs that ONNX Runtime folds at session start.
    """
    if not plan.reduced:
        return model
    rewrite = _Rewrite(model, plan, "round")
    rounded: set[str] = set()
    for node in rewrite.reduced_nodes:
        for index, tensor in enumerate(node.outputs):
            if not _is_fp32(tensor):
                continue
            raw = gs.Variable(f"{tensor.name}__unrounded", dtype=np.float32, shape=tensor.shape)
            node.outputs[index] = raw
            rewrite.to_fp32(rewrite.to_reduced(raw), out=tensor)
            rounded.add(tensor.name)

    _replace_boundary_inputs(rewrite.reduced_nodes, rounded,
                             lambda tensor: rewrite.to_fp32(rewrite.to_reduced(tensor)))
    rewrite.graph.toposort()
    return rewrite.export()


def convert(model: onnx.ModelProto, plan: PrecisionPlan) -> onnx.ModelProto:
    """Returns a copy of `model` whose reduced nodes compute in the plan's type (for TensorRT 11).

    Rules: fp32 tensors produced by reduced nodes become reduced; weights read only by reduced
    nodes are stored reduced; other fp32 tensors read by reduced nodes get a Cast to the reduced
    type; reduced tensors read by fp32 nodes or leaving the graph get a Cast back to fp32, so the
    graph's inputs and outputs keep their types. Cast/EyeLike/Random* nodes that produce fp32 are
    retyped. Resize/Upsample scales stay fp32.

    Limitation: many ONNX ops (Conv among them) accept bfloat16 only from opset 22, so a bf16
    conversion of an older-opset model fails `onnx.checker`'s full check even where TensorRT's
    parser takes it; fp16 conversions are valid at every opset.
    """
    if not plan.reduced:
        return model
    rewrite = _Rewrite(model, plan, "to")
    reduced_ids = {id(node) for node in rewrite.reduced_nodes}
    graph_outputs = {tensor.name for tensor in rewrite.graph.outputs}

    # 1. Outputs of reduced nodes become reduced; fp32 readers get a Cast back.
    produced: set[str] = set()
    for node in rewrite.reduced_nodes:
        attribute = _TYPE_ATTRIBUTE.get(node.op)
        if attribute and node.attrs.get(attribute) == onnx.TensorProto.FLOAT:
            node.attrs[attribute] = rewrite.reduced_type
        if node.op == "ConstantOfShape" and "value" in node.attrs:
            value = node.attrs["value"]
            if isinstance(value, gs.Constant) and value.values.dtype == np.float32:
                node.attrs["value"] = gs.Constant(value.name,
                                                  value.values.astype(rewrite.reduced_dtype))
        for index, tensor in enumerate(node.outputs):
            if not _is_fp32(tensor):
                continue
            reduced = gs.Variable(f"{tensor.name}__{plan.precision}",
                                  dtype=rewrite.reduced_dtype, shape=tensor.shape)
            fp32_readers = [c for c in list(tensor.outputs) if id(c) not in reduced_ids]
            for consumer in list(tensor.outputs):
                if id(consumer) in reduced_ids:
                    consumer.inputs[consumer.inputs.index(tensor)] = reduced
            node.outputs[index] = reduced
            if fp32_readers or tensor.name in graph_outputs:
                rewrite.to_fp32(reduced, out=tensor)
            produced.add(reduced.name)

    # 2. fp32 inputs of reduced nodes that no reduced node produced.
    def reduced_copy(tensor: gs.Tensor) -> gs.Tensor:
        only_reduced_readers = all(id(c) in reduced_ids for c in tensor.outputs)
        if isinstance(tensor, gs.Constant) and only_reduced_readers:
            return gs.Constant(f"{tensor.name}__{plan.precision}",
                               tensor.values.astype(rewrite.reduced_dtype))
        return rewrite.to_reduced(tensor)

    _replace_boundary_inputs(rewrite.reduced_nodes, produced, reduced_copy)
    rewrite.graph.cleanup().toposort()
    return rewrite.export()


def _replace_boundary_inputs(reduced_nodes: list[gs.Node], already_reduced: set[str],
                             make_copy: Callable[[gs.Tensor], gs.Tensor]) -> None:
    """Feeds reduced nodes a reduced copy of each fp32 input that no reduced node produced.

    One copy per tensor, shared by all its reduced readers; fp32 readers keep the original.
    """
    copies: dict[str, gs.Tensor] = {}
    for node in reduced_nodes:
        for index, tensor in list(_data_inputs(node)):
            if tensor.name in already_reduced:
                continue
            if tensor.name not in copies:
                copies[tensor.name] = make_copy(tensor)
            node.inputs[index] = copies[tensor.name]
