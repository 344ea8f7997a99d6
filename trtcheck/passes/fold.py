"""Shape inference and constant folding."""

from __future__ import annotations

import onnx
import onnx_graphsurgeon as gs

from trtcheck.passes.base import GraphPass, PassContext, export_like


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


def fold_constants(model: onnx.ModelProto, context: PassContext) -> onnx.ModelProto:
    """Folds every subgraph whose inputs are known into constants (onnx-graphsurgeon + ORT).

    - Includes `Shape` of tensors with static shapes, hence shape-computing subgraphs, and
      weights produced at run time by `ConstantOfShape` and friends.
    - Partitions the graph recursively, so a part ONNX Runtime cannot evaluate does not stop the
      rest from folding.
    - `If` nodes are left to the `inline-if` pass.
    - Removes what folding leaves unused (cleanup) and sorts the nodes topologically.
    """
    graph = gs.import_onnx(model)
    graph.toposort()
    graph.fold_constants(fold_shapes=True, partitioning="recursive", error_ok=True,
                         flatten_subgraphs=False)
    return export_like(graph, model)


INFER_SHAPES = GraphPass("infer-shapes", infer_shapes)
FOLD_CONSTANTS = GraphPass("fold-constants", fold_constants)
