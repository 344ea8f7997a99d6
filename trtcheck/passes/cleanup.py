"""Removal of nodes that compute nothing."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from trtcheck.passes.base import GraphPass, PassContext, export_like, import_graph, is_onnx_op


def _dtype(tensor: gs.Tensor) -> np.dtype | None:
    try:
        return np.dtype(tensor.dtype) if tensor.dtype is not None else None
    except TypeError:
        return None


def _is_noop(node: gs.Node, graph_outputs: list[gs.Tensor]) -> bool:
    if not is_onnx_op(node):
        return False
    if node.op == "Identity":
        return True
    if node.op == "Dropout":
        training = node.inputs[2] if len(node.inputs) > 2 and node.inputs[2].name else None
        if training is not None and not (isinstance(training, gs.Constant)
                                         and not np.asarray(training.values).any()):
            return False  # training mode may be on
        # The mask output, when something reads it, is not a no-op.
        return len(node.outputs) < 2 or not (node.outputs[1].outputs
                                              or node.outputs[1] in graph_outputs)
    if node.op == "Cast":
        source = _dtype(node.inputs[0])
        target = onnx.helper.tensor_dtype_to_np_dtype(node.attrs["to"]) if "to" in node.attrs \
            else None
        return source is not None and target is not None and source == np.dtype(target)
    if node.op == "Reshape":
        data, shape = node.inputs[0], node.inputs[1]
        if not isinstance(shape, gs.Constant) or data.shape is None:
            return False
        if not all(isinstance(d, int) and d >= 0 for d in data.shape):
            return False
        requested = [int(v) for v in np.asarray(shape.values).ravel()]
        if len(requested) != len(data.shape):
            return False
        allow_zero = bool(node.attrs.get("allowzero", 0))
        resolved = [data.shape[i] if v == 0 and not allow_zero else v
                    for i, v in enumerate(requested)]
        known = [v for v in resolved if v != -1]
        if resolved.count(-1) == 1:
            missing = int(np.prod(data.shape)) // max(int(np.prod(known)), 1)
            resolved = [missing if v == -1 else v for v in resolved]
        return list(resolved) == list(data.shape)
    return False


def _bypass(graph: gs.Graph, node: gs.Node) -> bool:
    """Connects a no-op's input straight to its readers; False when that would lose a name."""
    source, result = node.inputs[0], node.outputs[0]
    graph_outputs = {id(t) for t in graph.outputs}
    graph_inputs = {id(t) for t in graph.inputs}
    if id(result) in graph_outputs:
        # The graph output's name must survive: the producer of `source` writes `result`
        # instead, unless `source` is itself a graph input/output or a constant.
        producer = source.inputs[0] if source.inputs else None
        if producer is None or id(source) in graph_outputs or id(source) in graph_inputs:
            return False
        for reader in list(source.outputs):
            if reader is not node:
                reader.inputs[reader.inputs.index(source)] = result
        producer.outputs[producer.outputs.index(source)] = result
        node.outputs.clear()
        node.inputs.clear()
        return True
    for reader in list(result.outputs):
        for index, tensor in enumerate(reader.inputs):
            if tensor is result:
                reader.inputs[index] = source
    node.outputs.clear()
    node.inputs.clear()
    return True


def remove_noops(model: onnx.ModelProto, context: PassContext) -> onnx.ModelProto:
    """Removes nodes whose output equals their input.

    - Only ops of the default ONNX domain: a custom-domain `Identity` may do anything.
    - `Identity`.
    - `Dropout` at inference (no `training_mode`, or a constant false one) whose mask is unused.
    - `Cast` to the type its input already has.
    - `Reshape` to the shape its input already has (static shapes; 0 and -1 resolved).
    - A no-op that writes a graph output keeps the output's name: its producer writes it.
    """
    graph = import_graph(model)
    for node in list(graph.nodes):
        if node.inputs and node.outputs and _is_noop(node, graph.outputs):
            _bypass(graph, node)
    return export_like(graph, model)


REMOVE_NOOPS = GraphPass("remove-noops", remove_noops)
