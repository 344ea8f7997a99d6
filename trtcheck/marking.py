"""Which tensors a run can return, and marking them as outputs on a copy of the model.

Marking works on a copy: Polygraphy's `ModifyOutputs` edits the model it is given, which once
leaked marked outputs into a model used later (the TensorRT 11 conversion written by bisect kept
95 outputs instead of 1).
"""

from __future__ import annotations

from collections.abc import Sequence

import onnx


def markable_tensors(model: onnx.ModelProto) -> list[str]:
    """Tensors a run can return, in topological order.

    Outputs of `Constant` nodes are left out: ONNX Runtime folds them into initializers and never
    returns them (Polygraphy refuses to mark them too); they are exact on every backend anyway.
    """
    from polygraphy.backend.onnx.util import all_tensor_names

    return list(all_tensor_names(model))


def mark_outputs(model: onnx.ModelProto, mark: Sequence[str]) -> onnx.ModelProto:
    """A copy of `model` whose outputs are its own outputs followed by `mark`."""
    from polygraphy.backend.onnx import ModifyOutputs

    own = [output.name for output in model.graph.output]
    wanted = own + [name for name in dict.fromkeys(mark) if name not in set(own)]
    from trtcheck.model import copy_model  # CopyFrom fails over 2 GB

    return ModifyOutputs(copy_model(model), outputs=wanted)()
