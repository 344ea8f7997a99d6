"""What a pass is: a named function from model to model, with its rules in its docstring."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import onnx
import onnx_graphsurgeon as gs

from trtcheck.model import copy_model


@dataclass(frozen=True)
class PassContext:
    """What passes may need beyond the model: static shapes the user gave for inputs."""

    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class GraphPass:
    """A named, documented model -> model function. `run` must not modify its argument."""

    name: str
    run: Callable[[onnx.ModelProto, PassContext], onnx.ModelProto]

    @property
    def rules(self) -> str:
        return (self.run.__doc__ or "").strip()


# The default ONNX domain. Passes rewrite only ops of this domain: a custom-domain `Identity` or
# `Cast` means whatever its runtime says, not what the ONNX operator does.
ONNX_DOMAINS = ("", "ai.onnx")


def is_onnx_op(node: gs.Node, *ops: str) -> bool:
    """Whether `node` is an op of the default ONNX domain (one of `ops`, if given)."""
    return (node.domain or "") in ONNX_DOMAINS and (not ops or node.op in ops)


class PassNotApplicable(Exception):
    """A pass that cannot work on this model (reported as skipped, not as a failure)."""


def _has_optional_values(graph: onnx.GraphProto) -> bool:
    values = [*graph.input, *graph.output, *graph.value_info]
    return any(value.type.HasField("optional_type") for value in values)


def import_graph(model: onnx.ModelProto) -> gs.Graph:
    """Imports `model` into onnx-graphsurgeon, refusing what its exporter cannot write back.

    The model itself is never modified.

    onnx-graphsurgeon 0.6 imports optional-typed values but its exporter raises on them
    (UnboundLocalError in export_value_info_proto), so such models are skipped up front.
    """
    if _has_optional_values(model.graph):
        raise PassNotApplicable("the model has optional-typed values, which onnx-graphsurgeon "
                                "cannot export")
    # onnx-graphsurgeon 0.6 keeps the imported TensorProtos (LazyValues) and its exporter renames
    # them in place (`export_tensor_proto`), which would edit the caller's model: import a copy.
    return gs.import_onnx(copy_model(model))


def export_like(graph: gs.Graph, original: onnx.ModelProto) -> onnx.ModelProto:
    """Exports `graph` keeping the original's IR version, opsets and metadata."""
    graph.cleanup().toposort()
    exported = gs.export_onnx(graph, do_type_check=False)
    exported.ir_version = original.ir_version
    del exported.opset_import[:]
    exported.opset_import.extend(original.opset_import)
    exported.producer_name = original.producer_name
    exported.producer_version = original.producer_version
    del exported.metadata_props[:]
    exported.metadata_props.extend(original.metadata_props)
    if exported.ir_version < 4:
        # Before IR 4 every initializer must also be a graph input; folding adds initializers.
        declared = {value.name for value in exported.graph.input}
        for tensor in exported.graph.initializer:
            if tensor.name not in declared:
                exported.graph.input.append(onnx.helper.make_tensor_value_info(
                    tensor.name, tensor.data_type, list(tensor.dims)))
    return exported


def default_opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
