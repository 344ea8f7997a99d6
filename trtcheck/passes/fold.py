"""Shape inference and constant folding."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from trtcheck.passes.base import GraphPass, PassContext, export_like, import_graph, is_onnx_op


def infer_shapes(model: onnx.ModelProto, context: PassContext) -> onnx.ModelProto:
    """Makes input dimensions static where shapes were given, then infers every tensor's shape.

    - Each input named in the context gets that static shape (its fixed dimensions must agree).
    - ONNX shape inference with data propagation fills value_info, which later passes (folding
      `Shape` nodes, removing no-op `Reshape`s) and TensorRT's parser use.
    """
    updated = onnx.ModelProto()
    updated.CopyFrom(model)
    for value in updated.graph.input:
        shape = context.shapes.get(value.name)
        if shape is None:
            continue
        dims = value.type.tensor_type.shape.dim
        if len(dims) != len(shape):
            raise ValueError(f"input '{value.name}' has rank {len(dims)}, the given shape "
                             f"{list(shape)} has rank {len(shape)}")
        for dim, size in zip(dims, shape, strict=True):
            if dim.HasField("dim_value") and dim.dim_value > 0 and dim.dim_value != size:
                raise ValueError(f"input '{value.name}' has fixed dimension {dim.dim_value} where "
                                 f"the given shape has {size}")
            dim.Clear()
            dim.dim_value = size
    return onnx.shape_inference.infer_shapes(updated, strict_mode=False, data_prop=True)


def split_sliced_shapes(graph: gs.Graph) -> None:
    """Rewrites each `Shape(start, end)` as `Shape` followed by `Slice`, in place.

    onnx-graphsurgeon 0.6's shape folding (fold_shape, fold_shape_gather, fold_shape_slice)
    ignores Shape's start/end attributes (opset 15+) and folds the whole input shape, which
    corrupts every shape computation downstream. The Shape + Slice form means the same and is
    folded correctly, so this runs before any graphsurgeon folding.
    """
    for node in list(graph.nodes):
        if not is_onnx_op(node, "Shape") or not ({"start", "end"} & set(node.attrs)):
            continue
        start = int(node.attrs.pop("start", 0))
        end = node.attrs.pop("end", None)
        full = gs.Variable(f"{node.outputs[0].name}__full_shape", dtype=np.int64)
        sliced = node.outputs[0]
        node.outputs[0] = full
        bounds = [gs.Constant(f"{sliced.name}__start", np.array([start], np.int64)),
                  gs.Constant(f"{sliced.name}__end", np.array(
                      [np.iinfo(np.int64).max if end is None else int(end)], np.int64)),
                  gs.Constant(f"{sliced.name}__axes", np.array([0], np.int64))]
        graph.nodes.append(gs.Node("Slice", name=f"{node.name}__slice" if node.name else "",
                                   inputs=[full, *bounds], outputs=[sliced]))
    graph.toposort()


def fold_constants(model: onnx.ModelProto, context: PassContext) -> onnx.ModelProto:
    """Folds every subgraph whose inputs are known into constants (onnx-graphsurgeon + ORT).

    - Includes `Shape` of tensors with static shapes, hence shape-computing subgraphs, and
      weights produced at run time by `ConstantOfShape` and friends.
    - Partitions the graph recursively, so a part ONNX Runtime cannot evaluate does not stop the
      rest from folding.
    - `Shape` with start/end becomes `Shape` + `Slice` first (onnx-graphsurgeon 0.6 folds it
      wrongly otherwise); the pair folds to the same constant.
    - `If` nodes are left to the `inline-if` pass.
    - Removes what folding leaves unused (cleanup) and sorts the nodes topologically.
    """
    graph = import_graph(model)
    graph.toposort()
    split_sliced_shapes(graph)
    graph.fold_constants(fold_shapes=True, partitioning="recursive", error_ok=True,
                         flatten_subgraphs=False)
    return export_like(graph, model)


INFER_SHAPES = GraphPass("infer-shapes", infer_shapes)
FOLD_CONSTANTS = GraphPass("fold-constants", fold_constants)
