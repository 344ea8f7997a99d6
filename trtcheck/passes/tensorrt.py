"""Fixes for patterns TensorRT's ONNX parser rejects or handles poorly."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from trtcheck.passes.base import (
    GraphPass,
    PassContext,
    default_opset,
    export_like,
    import_graph,
    is_onnx_op,
)
from trtcheck.passes.fold import split_sliced_shapes
from trtcheck.trt_support import initializer_inputs as table_initializer_inputs

# Inputs TensorRT needs as initializers, beyond those its support tables list: shape-like
# parameters it reads at build time.
_REDUCE_OPS = ("ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax",
               "ReduceMean", "ReduceMin", "ReduceProd", "ReduceSum", "ReduceSumSquare")
_MUST_BE_CONSTANT: dict[str, set[str]] = {
    "Slice": {"axes"},
    "Pad": {"pads", "axes"},
    "Resize": {"scales", "sizes"},
    "Split": {"split"},
    "TopK": {"K"},
    "Squeeze": {"axes"},
    "Unsqueeze": {"axes"},
    **{op: {"axes"} for op in _REDUCE_OPS},
}


def _schema(node: gs.Node, opset: int) -> onnx.defs.OpSchema | None:
    try:
        return onnx.defs.get_schema(node.op, opset, node.domain or "")
    except onnx.defs.SchemaError:
        return None


def input_indices(node: gs.Node, names: set[str], opset: int) -> list[int]:
    schema = _schema(node, opset)
    if schema is None:
        return []
    return [i for i, formal in enumerate(schema.inputs)
            if formal.name in names and i < len(node.inputs) and node.inputs[i].name]


def is_constant(tensor: gs.Tensor) -> bool:
    """An initializer, or the output of a `Constant` node (TensorRT reads both as weights)."""
    return isinstance(tensor, gs.Constant) or bool(
        tensor.inputs and is_onnx_op(tensor.inputs[0], "Constant"))


def constant_value(graph: gs.Graph, tensor: gs.Tensor) -> np.ndarray | None:
    """Evaluates `tensor` if it depends on no runtime data (only constants and static shapes)."""
    sub = graph.copy()
    target = sub.tensors()[tensor.name]
    sub.outputs = [target]
    sub.cleanup(remove_unused_graph_inputs=True).toposort()
    split_sliced_shapes(sub)
    sub.fold_constants(fold_shapes=True, error_ok=True, flatten_subgraphs=False)
    folded = sub.tensors().get(tensor.name)
    if isinstance(folded, gs.Constant):
        return np.asarray(folded.values)
    return None


def make_initializer_inputs(model: onnx.ModelProto, context: PassContext) -> onnx.ModelProto:
    """Replaces computed inputs that TensorRT requires as initializers by their constant value.

    - Covers the inputs that TensorRT's support tables mark "must be an initializer" and the
      shape parameters it reads at build time: Slice axes, Pad pads/axes, Resize scales/sizes,
      Split split, TopK K, Squeeze/Unsqueeze axes, Reduce* axes.
    - An input is replaced only when it is computable without runtime data: from constants and
      the shapes of inputs whose shapes are static (run `infer-shapes` with --input-shapes to
      make them so). Otherwise it is left alone and `trtcheck lint` reports it.
    - Only the subgraph feeding each such input is evaluated; the rest is not folded.
    """
    graph = import_graph(model)
    graph.toposort()
    opset = default_opset(model)
    for node in list(graph.nodes):
        if not is_onnx_op(node):
            continue
        names = _MUST_BE_CONSTANT.get(node.op, set()) | table_initializer_inputs(node.op)
        for index in input_indices(node, names, opset):
            tensor = node.inputs[index]
            if is_constant(tensor):
                continue
            value = constant_value(graph, tensor)
            if value is not None:
                node.inputs[index] = gs.Constant(f"{tensor.name}__const", value)
    return export_like(graph, model)


def _type_slots(schema: onnx.defs.OpSchema, node: gs.Node) -> dict[str, list[tuple[str, int]]]:
    """Type variable -> the node's (input|output, index) slots that use it."""
    slots: dict[str, list[tuple[str, int]]] = {}
    for kind, formals, actual in (("input", schema.inputs, node.inputs),
                                  ("output", schema.outputs, node.outputs)):
        for index in range(len(actual)):
            formal = formals[min(index, len(formals) - 1)] if formals else None
            if formal is None:
                continue
            slots.setdefault(formal.type_str, []).append((kind, index))
    return slots


def _fits_int32(tensor: gs.Tensor) -> bool:
    # `dtype` first: `values` would load a weight that may be external (over 2 GB).
    if not isinstance(tensor, gs.Constant) or tensor.dtype != np.int64:
        return False
    values = np.asarray(tensor.values)
    info = np.iinfo(np.int32)
    return bool(values.size == 0 or (values.min() >= info.min and values.max() <= info.max))


# Inputs whose schema allows int32 but which ONNX's shape inference (run by ONNX Runtime when it
# loads a model) reads as int64 anyway ("ParseData type mismatch"): Pad-18's axes.
_READ_AS_INT64 = {("Pad", "axes")}


def narrow_int64(model: onnx.ModelProto, context: PassContext) -> onnx.ModelProto:
    """Stores int64 constants as int32 where the values fit and the op accepts int32 there.

    TensorRT has limited int64 support and casts int64 weights down itself, with warnings.
    - A constant input is narrowed only if the op's ONNX schema allows int32 for that input's
      type variable, no output of the node shares that variable (its type would change), and
      every other input sharing it is an int64 constant that fits too (they are narrowed
      together, e.g. Slice's starts/ends/axes/steps).
    - Constants read by several nodes get one int32 copy; the int64 original stays for readers
      that need it.
    """
    graph = import_graph(model)
    opset = default_opset(model)
    narrowed: dict[str, gs.Constant] = {}
    for node in graph.nodes:
        # Other domains have their own opset versions; the default one's says nothing of them.
        schema = _schema(node, opset) if is_onnx_op(node) else None
        if schema is None:
            continue
        allowed = {c.type_param_str: set(c.allowed_type_strs) for c in schema.type_constraints}
        for type_var, slots in _type_slots(schema, node).items():
            if "tensor(int32)" not in allowed.get(type_var, set()):
                continue
            if any(kind == "output" for kind, _ in slots) or any(
                    (node.op, schema.inputs[min(i, len(schema.inputs) - 1)].name)
                    in _READ_AS_INT64 for _, i in slots):
                continue
            tensors = [node.inputs[i] for _, i in slots if node.inputs[i].name]
            if not tensors or not all(_fits_int32(t) for t in tensors):
                continue
            for _, index in slots:
                tensor = node.inputs[index]
                if not tensor.name:
                    continue
                if tensor.name not in narrowed:
                    narrowed[tensor.name] = gs.Constant(
                        f"{tensor.name}__int32", np.asarray(tensor.values).astype(np.int32))
                node.inputs[index] = narrowed[tensor.name]
    return export_like(graph, model)


def inline_if(model: onnx.ModelProto, context: PassContext) -> onnx.ModelProto:
    """Replaces each `If` whose condition is a constant by the branch it always takes.

    - The branch's nodes move into the parent graph (renamed if a name is taken); an Identity
      per output keeps the `If` node's output names (`remove-noops` removes it where it can).
    - Conditions that become constant only after folding need `fold-constants` first (it runs
      earlier in the default order).
    """
    graph = import_graph(model)
    taken = {node.name for node in graph.nodes if node.name}

    def unique(name: str) -> str:
        candidate, count = name, 1
        while candidate in taken:
            count += 1
            candidate = f"{name}_{count}"
        taken.add(candidate)
        return candidate

    for node in list(graph.nodes):
        if not is_onnx_op(node, "If") or not isinstance(node.inputs[0], gs.Constant):
            continue
        condition = bool(np.asarray(node.inputs[0].values).ravel()[0])
        branch: gs.Graph = node.attrs["then_branch" if condition else "else_branch"]
        prefix = node.name or "if"
        for inner in branch.nodes:
            # ONNX allows any number of unnamed nodes, but no two with the same name.
            if inner.name:
                inner.name = unique(inner.name if inner.name not in taken
                                    else f"{prefix}/{inner.name}")
            graph.nodes.append(inner)
        outputs = list(node.outputs)
        node.outputs.clear()
        node.inputs.clear()
        # Identity keeps the If's output names; `remove-noops` drops it where it can.
        for index, result in enumerate(outputs):
            graph.nodes.append(gs.Node("Identity", name=unique(f"{prefix}/out{index}"),
                                       inputs=[branch.outputs[index]], outputs=[result]))
    return export_like(graph, model)


INITIALIZER_INPUTS = GraphPass("initializer-inputs", make_initializer_inputs)
NARROW_INT64 = GraphPass("narrow-int64", narrow_int64)
INLINE_IF = GraphPass("inline-if", inline_if)
