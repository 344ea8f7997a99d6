"""From a failing comparison to the node where the target first departs from the reference.

1. The failing output's tolerance is carried onto every float tensor (`debug.probes`: the same
   statistic and rtol as compare, atol scaled by the tensor's magnitude), so bisection follows
   exactly the failure compare reported.
2. Exact mode (ONNX Runtime targets, where marking is harmless) runs the reference and the target
   over every tensor in memory-bounded batches and finds the first origin from which failing
   tensors reach the output (`search.exact_origin`). Search mode (TensorRT, where marking changes
   fusions) marks few tensors per run (`search.search_origin`).
3. The origin's node is run alone on the target, fed the reference values of its inputs
   (`local_check`): local, or inherited along the path (the trace shows how).
4. A range audit of the reference activations explains fp16/bf16 failures (attention-mask fills
   told apart), and for reduced precision targets `precision_fix` grows a verified fp32 set.
5. `repro_folder` writes the culprit as a model with its inputs, and commands that run as written.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from trtcheck.backend_names import Backend, get_backend
from trtcheck.backends import BackendOptions, loaded_model, reusing_models
from trtcheck.debug.audit import LIMITS, RangeFinding, classify_mask_fills
from trtcheck.debug.local_check import LocalCheck, check_alone
from trtcheck.debug.origin import Found, find_origin
from trtcheck.debug.precision_fix import fix_precision as grow_fix
from trtcheck.debug.probes import Probe, TensorGraph, default_max_memory, run_batches
from trtcheck.debug.repro_folder import write_readme
from trtcheck.debug.results import Localization, TracePoint
from trtcheck.errors import UsageError
from trtcheck.marking import markable_tensors
from trtcheck.model import LoadedModel, load_model
from trtcheck.run import Feed, run_marked
from trtcheck.tolerance import Tolerance

MODES = ("auto", "exact", "search")


def describe_criterion(tolerance: Tolerance, output_scale: float) -> str:
    parts = [f"{tolerance.check_error_stat} atol={tolerance.atol:.3g} x max|ref| / "
             f"{output_scale:.3g} (the output's), rtol={tolerance.rtol:.3g}"]
    if tolerance.check_error_stat == "quantile":
        parts.append(f"quantile {tolerance.error_quantile:g}")
    if tolerance.max_error_factor is not None:
        parts.append(f"no element beyond {tolerance.max_error_factor:g}x atol")
    if tolerance.min_cosine is not None:
        parts.append(f"cosine >= {tolerance.min_cosine:g}")
    if tolerance.min_snr is not None:
        parts.append(f"SNR >= {tolerance.min_snr:g} dB")
    parts.append("any inf/nan where the reference is finite")
    return "; ".join(parts)


def _resolve_mode(mode: str, target: Backend) -> str:
    if mode not in MODES:
        raise UsageError(f"bisect mode '{mode}' is unknown; use {', '.join(MODES)}")
    if mode == "exact" and target.family != "onnxrt":
        raise UsageError("exact bisection marks every tensor, which changes TensorRT's "
                         "fusions; use --bisect-mode search (the default for TensorRT)")
    if mode == "auto":
        return "exact" if target.family == "onnxrt" else "search"
    return mode


def _trace(graph: TensorGraph, found: Found, failing: int) -> list[TracePoint]:
    """Measured tensors on a path input -> culprit -> failing output, in topological order.

    Backwards from the output the path takes the worst-measured input (the way the error
    came); backwards from the culprit, the worst too, down to the graph inputs.
    """
    measured = {graph.index[n]: m for n, m in found.measured.items() if n in graph.index}
    path: list[int] = []
    current: int | None = failing
    while current is not None:
        path.append(current)
        measured_inputs = [i for i in graph.inputs_of(current) if i in measured]
        if not measured_inputs:
            break
        current = max(measured_inputs, key=lambda i: (i in found.followed, measured[i].error))
    points = []
    for i in sorted(set(path) | set(found.followed) | {found.origin}):
        if i not in measured:
            continue
        m, node = measured[i], graph.node_of(i)
        points.append(TracePoint(i, graph.names[i], node.name, node.op_type, m.error,
                                 m.max_abs_error, m.scale, m.atol, m.failed))
    return points


def _explain(node: onnx.NodeProto, tensor: str, values: dict[str, np.ndarray],
             audit: list[RangeFinding], precision: str | None, local: LocalCheck) -> list[str]:
    lines = []
    touching = {tensor, *[t for t in node.input if t]}
    for finding in audit:
        if finding.tensor in touching and finding.precision == precision:
            lines.append(finding.describe())
    if precision in LIMITS and not any(f.kind == "overflow" for f in audit
                                       if f.tensor in touching and f.precision == precision):
        largest = max((float(np.abs(values[t][np.isfinite(values[t])]).max(initial=0.0))
                       for t in touching if t in values and values[t].size and
                       np.issubdtype(values[t].dtype, np.floating)), default=0.0)
        lines.append(f"the culprit's tensors stay within {precision}'s range (largest "
                     f"|value| {largest:.3g}): the error is rounding, not overflow")
    if local.local is False:
        lines.append("fed the reference values of its inputs, the culprit alone stays within "
                     "tolerance: the error was inherited and grew along the path")
    return lines


def make_probe(model: LoadedModel, reference: Backend, target: Backend, options: BackendOptions,
               feed: Feed, output: str, tolerance: Tolerance, output_reference: np.ndarray,
               max_memory: int | None = None, command: str = "") -> Probe:
    finite = output_reference[np.isfinite(output_reference)] if np.issubdtype(
        output_reference.dtype, np.floating) else output_reference
    scale = float(np.abs(finite.astype(np.float64)).max()) if finite.size else 0.0
    return Probe(model, reference, target, options, feed, output, tolerance, scale,
                 max_memory or default_max_memory(), command, output_reference)


def localize(probe: Probe, repro_dir: Path | None = None, fix_precision: bool = True,
             mode: str = "auto") -> Localization:
    """Finds where `probe.output`'s divergence starts; see the module docstring for the method."""
    with reusing_models():
        return _localize(probe, repro_dir, fix_precision, mode)


def _localize(probe: Probe, repro_dir: Path | None, fix_precision: bool,
              mode: str) -> Localization:
    mode = _resolve_mode(mode, probe.target)
    graph = TensorGraph.build(probe.model.proto, probe.feed)
    if probe.output not in graph.index:
        raise UsageError(f"output '{probe.output}' is not a float tensor computed by the model; "
                         "bisection follows float tensors only: pick a failing float output with "
                         "--output NAME")
    found = find_origin(probe, graph, mode)
    failing = graph.index[probe.output]
    culprit_tensor = graph.names[found.origin]
    node = graph.producers[culprit_tensor]

    # The culprit's own inputs and outputs from the reference, for the local check and repro.
    wanted = [t for t in [*node.input, *node.output] if t and t not in probe.feed
              and t not in {i.name for i in probe.model.proto.graph.initializer}]
    markable = set(markable_tensors(probe.model.proto))
    missing = [t for t in wanted if t in markable and t not in found.reference_values]
    values: dict[str, np.ndarray] = {**probe.feed, **{
        t: found.reference_values[t] for t in wanted if t in found.reference_values}}
    if missing:
        values.update(run_marked(probe.model, probe.reference, probe.options, probe.feed,
                                 [t for t in wanted if t in markable], "reference:culprit"))
    local = check_alone(probe, node, values, culprit_tensor, repro_dir)
    runs_count = len(found.runs) + (1 if local.local is not None else 0)
    precision = probe.target.precision if probe.target.precision != "fp32" else None
    explanation = _explain(node, culprit_tensor, values, found.findings, precision, local)
    trace = _trace(graph, found, failing)
    note = found.note + (
        "boundary verified: every input of the culprit passes and its output fails; error is "
        "not monotone along a graph (it can vanish after ReLU or ArgMax), so the culprit is the "
        "first such node from which failing tensors reach the output"
        if found.verified else "boundary not verified")
    if mode == "search":
        note += (f"; searched with {len(found.runs)} run(s) marking few tensors each, as marking "
                 "every tensor would change TensorRT's fusions")
    else:
        note += f"; every tensor judged, in {found.batches} memory-bounded batch(es)"
    on_path = {p.tensor for p in trace}
    shown_audit = [f for f in found.findings if f.tensor in on_path or f.kind != "underflow"]
    result = Localization(
        output=probe.output, mode=mode,
        criterion=describe_criterion(probe.tolerance, probe.output_scale),
        culprit_node=node.name, culprit_op=node.op_type, culprit_tensor=culprit_tensor,
        culprit_index=found.origin, local=local.local, local_error=local.error,
        boundary_verified=found.verified, note=note, target_runs=runs_count, runs=found.runs,
        probe_points=len(graph.names), trace=trace, audit=shown_audit[:50],
        explanation=explanation, repro_dir=str(repro_dir) if repro_dir else None,
        batches=found.batches)
    if fix_precision and precision:
        result.precision_fix = grow_fix(probe, result, graph, found.findings, repro_dir, mode)
    if repro_dir is not None:
        write_readme(repro_dir, probe, result, values)
    return result


def localize_comparison(result: Any, model: LoadedModel | None = None,
                        repro_dir: Path | None = None, fix_precision: bool = True,
                        output: str | None = None, mode: str = "auto",
                        max_memory: int | None = None) -> Localization:
    """Bisects a failing output of a `ComparisonResult`: `output`, or the first failing float one.

    Raises `UsageError` (exit 2) when nothing can be bisected, saying why and what to try.
    """
    failing = [d for d in result.outputs if not d.passed]
    if output is not None:
        chosen = [d for d in result.outputs if d.name == output]
        if not chosen:
            raise UsageError(f"--output {output}: the model has no output of that name; its "
                             f"outputs are: {', '.join(d.name for d in result.outputs)}")
        if chosen[0].passed:
            raise UsageError(f"--output {output}: that output is within tolerance; failing "
                             f"outputs are: {', '.join(d.name for d in failing) or 'none'}")
        failing = chosen
    if not failing:
        raise UsageError("every output is within tolerance; nothing to bisect")
    floats = [d for d in failing if np.issubdtype(np.dtype(d.dtype), np.floating)]
    if not floats:
        raise UsageError(
            f"the failing output(s) {', '.join(d.name for d in failing)} are not float tensors, "
            "and bisection follows float tensors: check the float tensors they are computed from "
            "(e.g. the scores before ArgMax/TopK) with --output on a model that exposes them; "
            "integer and bool outputs are compared exactly, so a declared rate such as "
            "--min-agreement OUT:0.99 accepts a few flips at near-ties, and detections after "
            "NMS/TopK are compared as sets with --detections")
    diff = floats[0]
    model = model or loaded_model(result.model_path)
    feed = result.feeds.iterations[diff.iteration]
    reference = get_backend(result.reference.name)
    target = get_backend(result.target.name)
    reference_values = result.run_results[f"reference:{reference.name}"][diff.iteration]
    probe = make_probe(model, reference, target, result.options, feed, diff.name,
                       diff.tolerance, np.asarray(reference_values[diff.name]), max_memory,
                       result.trtcheck_command)
    localization = localize(probe, repro_dir, fix_precision, mode)
    if result.tensorrt_support is not None:
        localization.tensorrt_blocked = result.tensorrt_support_summary
    return localization


def audit_model(path: Path, inputs: Any, precisions: tuple[str, ...],
                max_memory: int | None = None,
                warn: Callable[[str], None] | None = None) -> list[RangeFinding]:
    """Runs the model on ONNX Runtime in fp32, every tensor in memory-bounded batches, and audits.

    Attention-mask fills are classified apart (`debug.audit`). `warn` gets each warning about
    the inputs fed (a range guessed, not found in the graph).
    """
    from trtcheck.inputs import make_feeds
    from trtcheck.run import quiet_polygraphy

    with quiet_polygraphy():
        model = load_model(path)
        feeds = make_feeds(model, inputs)
        if warn is not None:
            for warning in feeds.warnings:
                warn(warning)
        feed = feeds.iterations[0]
        reference = get_backend("onnxrt")
        probe = Probe(model, reference, reference, BackendOptions(), feed, "", Tolerance(0, 0),
                      0.0, max_memory or default_max_memory())
        graph = TensorGraph.build(model.proto, feed)
        batched, _ = run_batches(probe, graph, graph.names, judge=False,
                                 audit_precisions=precisions)
    return classify_mask_fills(batched.findings, model.proto, batched.harmless_masks)
