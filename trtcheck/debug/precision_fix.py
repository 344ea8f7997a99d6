"""A set of nodes to keep in fp32 that makes the failing output pass, verified by a run.

Seeds: the culprit; the producers and readers of tensors beyond the reduced type's range
(attention-mask fills excluded: they are harmless); the producers of tensors that mostly flush to
zero; reductions on the diverged path (deep sums lose most in reduced precision).

Each round runs the target with the plan and judges the output with compare's own criterion.
While it fails, the bisection runs again under the plan and the set grows from what it finds:
the new culprit; when the culprit is already kept (its inputs arrive rounded), the producers of
its inputs; and, from the second round on or when those add nothing, twice as many nodes as the
round before, diverged ones first and then those whose error is closest to their tolerance
(errors each within tolerance still add up), so a failure spread over many layers converges in
a few rounds (12 rounds reach 2,000 nodes).
When the rounds run out or nothing new can be added, the partial plan is kept and one line says
what still fails and by how much.
"""

from __future__ import annotations

import shlex
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import onnx

from trtcheck.atomic import save_onnx
from trtcheck.debug.audit import RangeFinding
from trtcheck.debug.origin import find_origin
from trtcheck.debug.probes import Probe, TensorGraph, measure
from trtcheck.debug.results import Localization, PrecisionFix
from trtcheck.errors import TrtcheckError
from trtcheck.report.numbers import fmt
from trtcheck.run import run_marked

if TYPE_CHECKING:
    pass

MAX_ROUNDS = 12
REDUCTIONS = frozenset({
    "ReduceSum", "ReduceMean", "ReduceSumSquare", "ReduceL2", "ReduceL1", "ReduceLogSumExp",
    "ReduceProd", "GlobalAveragePool", "LpNormalization", "LayerNormalization",
    "GroupNormalization", "InstanceNormalization", "Softmax", "LogSoftmax",
})


def _seeds(found: Localization, findings: list[RangeFinding], model: onnx.ModelProto,
           precision: str) -> set[str]:
    keep = {found.culprit_node}
    producers = {out: node.name for node in model.graph.node for out in node.output if out}
    readers: dict[str, list[str]] = {}
    for node in model.graph.node:
        for tensor in node.input:
            readers.setdefault(tensor, []).append(node.name)
    for finding in findings:
        if finding.precision != precision:
            continue
        if finding.kind == "overflow":
            keep.add(producers.get(finding.tensor, ""))
            keep.update(readers.get(finding.tensor, []))
        elif finding.kind == "underflow" and finding.flushed_to_zero > 0.5:
            keep.add(producers.get(finding.tensor, ""))
    keep.update(p.node for p in found.trace if p.diverged and p.op in REDUCTIONS)
    keep.discard("")
    return keep


def _grow(probe: Probe, graph: TensorGraph, keep: set[str], mode: str,
          round_number: int) -> tuple[set[str], int]:
    """Nodes to add after a failed round, and the target runs it took to find them."""
    found = find_origin(probe, graph, mode)
    origin_node = graph.node_of(found.origin)
    added: set[str] = set()
    if origin_node.name and origin_node.name not in keep:
        added.add(origin_node.name)
    else:
        for i in graph.inputs_of(found.origin):
            name = graph.node_of(i).name
            if name and name not in keep:
                added.add(name)
    if round_number >= 2 or not added:
        # Diverged nodes first, then the nodes closest to their tolerance: errors each within
        # tolerance can still add up past the output's.
        def closeness(name: str) -> float:
            m = found.measured[name]
            return m.max_abs_error / m.atol if m.atol > 0 else float(m.max_abs_error > 0)

        ranked = sorted((n for n in found.measured if n in graph.index),
                        key=lambda n: (not found.measured[n].failed, -closeness(n),
                                       graph.index[n]))
        budget = 1 << max(round_number - 1, 0)
        names = [graph.node_of(graph.index[n]).name for n in ranked]
        added.update([n for n in dict.fromkeys(names) if n and n not in keep][:budget])
    if not added:
        # Every node with a float output is kept: what still rounds are nodes that read floats
        # and write other types (QuantizeLinear rounds its input before it quantizes).
        readers = [node.name for node in probe.model.proto.graph.node
                   if node.name and node.name not in keep
                   and not any(out in graph.index for out in node.output)
                   and any(t in graph.index or t in probe.feed for t in node.input)]
        added.update(readers[:1 << max(round_number - 1, 0)])
    return added, len(found.runs)


def fix_precision(probe: Probe, found: Localization, graph: TensorGraph,
                  findings: list[RangeFinding], repro_dir: Path | None, mode: str) -> PrecisionFix:
    """Grows the fp32 set until the output passes (module docstring); never raises for a miss."""
    precision = probe.target.precision
    model = probe.model.proto
    keep = _seeds(found, findings, model, precision) | set(probe.options.keep_fp32)
    output_reference = probe.output_reference
    if output_reference is None:
        output_reference = run_marked(probe.model, probe.reference, probe.options, probe.feed,
                                      [], "reference:output")[probe.output]
    runs, rounds, verified, remaining = 0, 0, False, None
    while rounds < MAX_ROUNDS:
        rounds += 1
        planned = probe.with_options(replace(probe.options, keep_fp32=frozenset(keep)))
        try:
            observed = run_marked(probe.model, probe.target, planned.options, probe.feed, [],
                                  f"target:plan{rounds}")
        except TrtcheckError as err:
            remaining = f"the target could not run with the plan: {err}"
            break
        runs += 1
        outcome = measure(observed[probe.output], output_reference, probe, probe.output)
        if not outcome.failed:
            verified, remaining = True, None
            break
        remaining = (f"{probe.output} still fails with {len(keep)} node(s) in fp32: max abs "
                     f"error {fmt(outcome.max_abs_error)} against atol "
                     f"{fmt(probe.tolerance.atol)} (rtol {fmt(probe.tolerance.rtol)})")
        if rounds == MAX_ROUNDS:
            remaining += f" after {rounds} rounds"
            break
        try:
            added, cost = _grow(planned, graph, keep, mode, rounds)
        except TrtcheckError as err:
            remaining += f"; bisecting under the plan failed: {err}"
            break
        runs += cost
        if not added:
            remaining += "; the bisection under the plan finds nothing more to keep"
            break
        keep |= added
    names = sorted(keep)
    trt10 = "--precision-constraints obey --layer-precisions " + " ".join(
        shlex.quote(f"{n}:float32") for n in names)
    trt11_model = None
    if repro_dir is not None and verified:
        from trtcheck.precision import PrecisionPlan, convert

        converted = convert(model, PrecisionPlan(precision, frozenset(names)))
        trt11_model = str((repro_dir / f"model.{precision}.keep-fp32.onnx").resolve())
        save_onnx(converted, Path(trt11_model))
    return PrecisionFix(names, verified, rounds, runs, trt10, trt11_model, remaining)
