"""Finding the origin of a failure: exact (every tensor, in batches) or search (few per run)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from trtcheck.debug.audit import LIMITS, RangeFinding, classify_mask_fills
from trtcheck.debug.probes import (
    ByteBudget,
    Measure,
    Probe,
    SearchProber,
    TensorGraph,
    run_batches,
)
from trtcheck.debug.search import exact_origin, search_origin

if TYPE_CHECKING:
    from trtcheck.backend_names import Backend


@dataclass
class Found:
    """The search's outcome before it is explained."""

    origin: int
    followed: list[int]
    verified: bool
    runs: list[list[str]]
    measured: dict[str, Measure]
    findings: list[RangeFinding]
    batches: int
    note: str
    # Reference values kept on the way (within a share of the memory budget), by tensor.
    reference_values: dict = field(default_factory=dict)


def audit_precisions(target: Backend) -> tuple[str, ...]:
    return (target.precision,) if target.precision in LIMITS else ("fp16", "bf16")


def find_origin(probe: Probe, graph: TensorGraph, mode: str) -> Found:
    """Runs the search; the failing output is known to fail (compare said so)."""
    failing = graph.index[probe.output]
    if mode == "exact":
        # A sixth of the budget keeps reference values, which often spares the culprit's own
        # reference run later (its inputs are kept when it lies early in the graph).
        batched, kept = run_batches(probe, graph, graph.names, judge=True,
                                    audit_precisions=audit_precisions(probe.target),
                                    keep=ByteBudget(probe.max_memory // 6))
        graph.drop(batched.not_float)
        failing = graph.index[probe.output]
        fails = {graph.index[name]: m.failed for name, m in batched.measured.items()
                 if name in graph.index}
        note = ""
        if not fails.get(failing, False):
            # Marking outputs can change ONNX Runtime's kernels; compare's verdict stands.
            fails[failing] = True
            note = (f"{probe.output} passed in the probe runs (marked outputs change ONNX "
                    "Runtime's kernels) but failed in compare, whose verdict stands; ")
        origin = exact_origin(failing, graph.inputs_of, fails)
        verified = all(not fails.get(i, False) for i in graph.inputs_of(origin))
        findings = classify_mask_fills(batched.findings, probe.model.proto,
                                       batched.harmless_masks)
        return Found(origin, [origin], verified, batched.batches, batched.measured, findings,
                     len(batched.batches), note, kept)
    # The audit needs only the reference: its batches do not touch the target.
    # The reference values it returns, within a third of the budget, spare probes a reference run.
    audited, kept = run_batches(probe, graph, graph.names, judge=False,
                                audit_precisions=audit_precisions(probe.target),
                                keep=ByteBudget(probe.max_memory // 3))
    graph.drop(audited.not_float)
    findings = classify_mask_fills(audited.findings, probe.model.proto, audited.harmless_masks)
    prober = SearchProber(probe, graph, kept)
    search = search_origin(graph.index[probe.output], graph.inputs_of, prober)
    return Found(search.origin, search.followed, True, prober.runs, prober.measured, findings,
                 len(audited.batches), "", kept)
