"""Is the culprit wrong by itself? Run its node alone on the target, fed reference inputs.

The node becomes a model of its own (`extract_node`): each distinct non-weight input once as a
graph input (a node may read one tensor twice, `Mul(s, s)`), weights as initializers, outputs
typed from the reference. Nodes holding subgraphs refer to outer-scope tensors and cannot be run
alone: the check is skipped (None).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx
from onnx import helper

from trtcheck.atomic import save_onnx, write_atomically, write_npz
from trtcheck.errors import TrtcheckError
from trtcheck.model import load_model
from trtcheck.run import run_marked

if TYPE_CHECKING:
    from trtcheck.debug.probes import Probe


@dataclass(frozen=True)
class LocalCheck:
    local: bool | None  # None: could not be run alone
    error: float | None
    reason: str | None = None


def extract_node(model: onnx.ModelProto, node: onnx.NodeProto,
                 values: dict[str, np.ndarray]) -> onnx.ModelProto:
    """The node alone as a model: its non-weight inputs become graph inputs, weights stay."""
    weights = {t.name: t for t in model.graph.initializer}
    constants = {n.output[0]: n for n in model.graph.node if n.op_type == "Constant" and n.output}
    inputs, initializers, kept_constants = [], [], []
    for name in dict.fromkeys(t for t in node.input if t):
        if name in weights:
            initializers.append(weights[name])
        elif name in constants:
            kept_constants.append(constants[name])  # exporters' Constant nodes stay as they are
        else:
            array = values[name]
            inputs.append(helper.make_tensor_value_info(
                name, helper.np_dtype_to_tensor_dtype(array.dtype), list(array.shape)))
    outputs = [helper.make_tensor_value_info(
        name, helper.np_dtype_to_tensor_dtype(values[name].dtype), list(values[name].shape))
        for name in node.output if name and name in values]
    alone = onnx.NodeProto()
    alone.CopyFrom(node)
    # Outputs nobody asked for stay unnamed, as ONNX allows for optional outputs.
    for index, name in enumerate(alone.output):
        if name not in values:
            alone.output[index] = ""
    graph = helper.make_graph([*kept_constants, alone], f"{node.name or node.op_type}_alone",
                              inputs, outputs, initializers)
    extracted = helper.make_model(graph, opset_imports=list(model.opset_import))
    extracted.ir_version = model.ir_version
    return extracted


def check_alone(probe: Probe, node: onnx.NodeProto, values: dict[str, np.ndarray],
                tensor: str, repro_dir: Path | None) -> LocalCheck:
    """Runs `node` alone on the target with reference inputs; writes the repro files."""
    if any(attr.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
           for attr in node.attribute):
        return LocalCheck(None, None, "the node holds subgraphs that read outer-scope tensors")
    if tensor not in values:
        return LocalCheck(None, None, "the reference did not return the culprit's output")
    if repro_dir is None:
        with tempfile.TemporaryDirectory(prefix="trtcheck-culprit-") as scratch:
            return check_alone(probe, node, values, tensor, Path(scratch))
    alone = extract_node(probe.model.proto, node, values)
    try:
        onnx.checker.check_model(alone)
    except onnx.checker.ValidationError as err:
        return LocalCheck(None, None, f"the node alone is not a valid model: {err}")
    feed = {i.name: values[i.name] for i in alone.graph.input}
    path = repro_dir / "culprit.onnx"
    save_onnx(alone, path)
    write_npz(repro_dir / "inputs.npz", feed)
    write_npz(repro_dir / "reference_outputs.npz",
              {o.name: values[o.name] for o in alone.graph.output})
    from polygraphy.json import save_json

    write_atomically(repro_dir / "inputs.json", lambda partial: save_json([feed], partial))
    from trtcheck.debug.probes import measure

    try:
        alone_model = load_model(path)
        observed = run_marked(alone_model, probe.target, replace(probe.options, shapes={}),
                              feed, [], "target:culprit")
    except TrtcheckError as err:
        return LocalCheck(None, None, str(err))
    verdict = measure(observed[tensor], values[tensor], probe, tensor)
    return LocalCheck(verdict.failed, verdict.error)
