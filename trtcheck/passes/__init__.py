"""Graph passes over onnx-graphsurgeon, each proven harmless by running ONNX Runtime around it.

`PASSES` lists every pass in pipeline order; `pipeline.run_pipeline` applies a selection, verifies
each against the previous model and rolls back any that changes an output or raises.
"""

from trtcheck.passes.base import GraphPass, PassContext
from trtcheck.passes.cleanup import REMOVE_NOOPS
from trtcheck.passes.fold import FOLD_CONSTANTS, INFER_SHAPES
from trtcheck.passes.tensorrt import INITIALIZER_INPUTS, INLINE_IF, NARROW_INT64

PASSES: dict[str, GraphPass] = {
    p.name: p
    for p in (INFER_SHAPES, FOLD_CONSTANTS, INLINE_IF, INITIALIZER_INPUTS, REMOVE_NOOPS,
              NARROW_INT64)
}

__all__ = ["PASSES", "GraphPass", "PassContext"]
