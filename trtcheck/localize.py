"""From a failing comparison to the node where the target first departs from the reference.

1. The reference (ONNX Runtime, fp32) runs once with every tensor marked: its activations.
2. The target runs with probe tensors marked. Where marking is harmless (ONNX Runtime targets)
   every tensor is marked in one run and the origin is exact; where it changes what is measured
   (TensorRT fuses differently), `bisect.search_origin` marks one tensor per run.
3. Each intermediate tensor is held to the failing output's tolerance, made relative to the
   tensor's own magnitude: it diverges when its largest absolute error exceeds
   `tau * max|reference|`, with `tau = max(atol / max|reference output|, rtol)`, or when it is
   inf/nan where the reference is finite.
4. The origin's node is run alone on the target, fed the reference values of its inputs: if it
   still exceeds tolerance the culprit is *local*; otherwise the error was *inherited* and grew
   along the path (the trace shows how).
5. A range audit of the reference activations explains fp16/bf16 failures; for reduced
   precision targets a set of nodes to keep in fp32 is searched and verified with a final run.
6. A repro folder holds the culprit node as a model, its inputs and reference outputs, and the
   commands that reproduce it.
"""

from __future__ import annotations

import json
import math
import shlex
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper

from trtcheck.atomic import write_atomically, write_npz
from trtcheck.audit import LIMITS, RangeFinding, audit_activations
from trtcheck.backends import Backend, BackendOptions, get_backend, make_runner
from trtcheck.bisect import exact_origin, search_origin
from trtcheck.errors import BackendRunError, UsageError
from trtcheck.model import LoadedModel, load_model
from trtcheck.progress import step

Activations = dict[str, np.ndarray]


@dataclass(frozen=True)
class TracePoint:
    """One tensor on the path from the inputs through the culprit to the failing output."""

    index: int
    tensor: str
    node: str
    op: str
    error: float  # max |target - reference| / max |reference|
    max_abs_error: float
    max_abs_reference: float
    tolerance: float  # absolute: tau * max |reference|
    diverged: bool


@dataclass
class PrecisionFix:
    """Nodes to keep in fp32 so that the case passes, and whether a final run confirmed it."""

    keep_fp32: list[str]
    verified: bool
    rounds: int
    target_runs: int
    trt10_flags: str
    trt11_model: str | None = None


@dataclass
class Localization:
    output: str
    mode: str  # "exact" (every tensor marked once) or "search" (few tensors per run)
    tolerance_rel: float
    culprit_node: str
    culprit_op: str
    culprit_tensor: str
    culprit_index: int
    local: bool | None
    local_error: float | None
    boundary_verified: bool
    note: str
    target_runs: int
    runs: list[list[str]]
    probe_points: int
    trace: list[TracePoint]
    audit: list[RangeFinding]
    explanation: list[str]
    precision_fix: PrecisionFix | None = None
    repro_dir: str | None = None


@dataclass
class _Graph:
    """The model's float tensors in topological order, as integers for `bisect`."""

    names: list[str]
    producers: dict[str, onnx.NodeProto]
    index: dict[str, int] = field(default_factory=dict)
    feeds_of: dict[int, list[int]] = field(default_factory=dict)

    @classmethod
    def build(cls, model: onnx.ModelProto, float_tensors: set[str]) -> _Graph:
        producers: dict[str, onnx.NodeProto] = {}
        names: list[str] = []
        for node in model.graph.node:  # ONNX requires topological order
            for output in node.output:
                if output:
                    producers[output] = node
                    if output in float_tensors:
                        names.append(output)
        graph = cls(names, producers)
        graph.index = {name: i for i, name in enumerate(names)}
        for i, name in enumerate(names):
            graph.feeds_of[i] = sorted({graph.index[t] for t in graph._upstream_floats(name)})
        return graph

    def _upstream_floats(self, name: str) -> set[str]:
        """Float tensors feeding `name`'s producer, looking through non-float tensors."""
        found: set[str] = set()
        stack = [t for t in self.producers[name].input if t]
        seen: set[str] = set()
        while stack:
            tensor = stack.pop()
            if tensor in seen:
                continue
            seen.add(tensor)
            if tensor in self.index:
                found.add(tensor)
            elif tensor in self.producers:
                stack.extend(t for t in self.producers[tensor].input if t)
        return found

    def inputs_of(self, i: int) -> list[int]:
        return self.feeds_of[i]


def _run(model: LoadedModel, backend: Backend, options: BackendOptions, feed: dict[str, Any],
         mark: list[str], name: str) -> Activations:
    from polygraphy.comparator import Comparator

    try:
        runner = make_runner(model, backend, options, name, mark=mark)
        with step(f"{name}: {backend.name}, {len(mark)} tensor(s) marked"):
            results = Comparator.run([runner], data_loader=[feed])
    except Exception as err:
        raise BackendRunError(f"{backend.name}: a probe run failed: "
                              f"{str(err).strip().splitlines()[0]}") from err
    ((_, iterations),) = results.items()
    return {key: np.asarray(value) for key, value in iterations[0].items()}


def _all_tensors(model: onnx.ModelProto) -> list[str]:
    return [output for node in model.graph.node for output in node.output if output]


def _relative_error(target: np.ndarray, reference: np.ndarray) -> tuple[float, float, float]:
    """(relative error, max abs error, max |reference|); inf when non-finite values differ."""
    ref64, tgt64 = reference.astype(np.float64), target.astype(np.float64)
    if ref64.shape != tgt64.shape:
        return math.inf, math.inf, float(np.abs(ref64).max()) if ref64.size else 0.0
    finite = np.isfinite(ref64)
    scale = float(np.abs(ref64[finite]).max()) if finite.any() else 0.0
    if (finite & ~np.isfinite(tgt64)).any():
        return math.inf, math.inf, scale
    with np.errstate(invalid="ignore"):
        diff = np.abs(tgt64[finite] - ref64[finite])
    worst = float(diff.max()) if diff.size else 0.0
    return (worst / scale if scale > 0 else worst), worst, scale


def _tau(atol: float, rtol: float, output_scale: float) -> float:
    relative_atol = atol / output_scale if output_scale > 0 else atol
    return max(relative_atol, rtol, 1e-12)


def _extract_node(model: onnx.ModelProto, node: onnx.NodeProto,
                  values: dict[str, np.ndarray]) -> onnx.ModelProto:
    """The node alone as a model: its non-weight inputs become graph inputs, weights stay."""
    weights = {t.name: t for t in model.graph.initializer}
    inputs, initializers = [], []
    for name in node.input:
        if not name:
            continue
        if name in weights:
            initializers.append(weights[name])
        else:
            array = values[name]
            inputs.append(helper.make_tensor_value_info(
                name, helper.np_dtype_to_tensor_dtype(array.dtype), list(array.shape)))
    outputs = [helper.make_tensor_value_info(
        name, helper.np_dtype_to_tensor_dtype(values[name].dtype), list(values[name].shape))
        for name in node.output if name and name in values]
    graph = helper.make_graph([node], f"{node.name or node.op_type}_alone", inputs, outputs,
                              initializers)
    extracted = helper.make_model(graph, opset_imports=list(model.opset_import))
    extracted.ir_version = model.ir_version
    return extracted


def run_all_tensors(model: LoadedModel, backend: Backend, options: BackendOptions,
                    feed: dict[str, np.ndarray]) -> Activations:
    """One run of `backend` with every tensor of the model marked as an output."""
    return _run(model, backend, options, feed, _all_tensors(model.proto), f"{backend.name}:all")


def localize(model: LoadedModel, reference: Backend, target: Backend, options: BackendOptions,
             feed: dict[str, np.ndarray], output: str, atol: float, rtol: float,
             repro_dir: Path | None = None, fix_precision: bool = True,
             mode: str = "auto") -> Localization:
    """Finds where `output`'s divergence starts; see the module docstring for the method.

    `mode` "auto" marks every tensor at once on ONNX Runtime targets ("exact") and searches
    with few marked tensors per run on TensorRT ("search"); "search" forces the latter, e.g. to
    see what a TensorRT bisection of this model will cost.
    """
    reference_values = run_all_tensors(model, reference, options, feed)
    values: dict[str, np.ndarray] = {**feed, **reference_values}
    floats = {name for name, array in reference_values.items()
              if np.issubdtype(array.dtype, np.floating)}
    if output not in floats:
        raise UsageError(f"output '{output}' is not a float tensor; bisection follows float "
                         "tensors only")
    graph = _Graph.build(model.proto, floats)
    failing = graph.index[output]
    tau = _tau(atol, rtol, _relative_error(reference_values[output],
                                           reference_values[output])[2])

    measured: dict[int, tuple[float, float, float]] = {}

    def judge(observed: Activations) -> dict[int, bool]:
        verdicts = {}
        for name, array in observed.items():
            if name in graph.index:
                i = graph.index[name]
                measured[i] = _relative_error(array, reference_values[name])
                verdicts[i] = measured[i][0] > tau
        return verdicts

    runs: list[list[str]] = []
    if mode not in ("auto", "exact", "search"):
        raise UsageError(f"bisect mode '{mode}' is unknown; use auto, exact or search")
    if mode == "exact" and target.family != "onnxrt":
        raise UsageError("exact bisection marks every tensor, which changes TensorRT's "
                         "fusions; use --bisect-mode search (the default for TensorRT)")
    if mode == "auto":
        mode = "exact" if target.family == "onnxrt" else "search"
    if mode == "exact":
        runs.append(list(graph.names))
        fails = judge(_run(model, target, options, feed, graph.names, "target:all"))
        if not fails.get(failing, False):
            raise UsageError(f"output '{output}' is within the derived tolerance in the probe "
                             "run; nothing to bisect")
        origin = exact_origin(failing, graph.inputs_of, fails)
        verified = all(not fails.get(i, False) for i in graph.inputs_of(origin))
        followed = [origin]
    else:
        def probe(tensors):
            names = [graph.names[i] for i in tensors]
            runs.append(names)
            return judge(_run(model, target, options, feed, names, f"target:probe{len(runs)}"))

        search = search_origin(failing, graph.inputs_of, probe)
        origin, followed, verified = search.origin, search.followed, True
    culprit_tensor = graph.names[origin]
    node = graph.producers[culprit_tensor]

    local, local_error = _local_check(model.proto, node, values, reference, target, options,
                                      culprit_tensor, tau, repro_dir)
    runs_count = len(runs) + (1 if local is not None else 0)
    trace = _trace(graph, origin, failing, followed, measured, reference_values, tau)
    precision = target.precision if target.precision != "fp32" else None
    producers = {name: (graph.producers[name].name or graph.producers[name].op_type)
                 for name in reference_values if name in graph.producers}
    audit = audit_activations({n: reference_values[n] for n in floats}, producers,
                              (precision,) if precision else ("fp16", "bf16"))
    explanation = _explain(culprit_tensor, node, values, audit, precision, local)
    note = ("boundary verified: every input of the culprit passes and its output fails; "
            "error is not monotone along a graph (it can vanish after ReLU or ArgMax), so the "
            "culprit is the first such node from which failing tensors reach the output"
            if verified else "boundary not verified")
    if mode == "search":
        note += (f"; searched with {len(runs)} run(s) marking few tensors each, as marking every "
                 "tensor would change TensorRT's fusions")
    result = Localization(
        output=output, mode=mode, tolerance_rel=tau, culprit_node=node.name,
        culprit_op=node.op_type, culprit_tensor=culprit_tensor, culprit_index=origin,
        local=local, local_error=local_error, boundary_verified=verified, note=note,
        target_runs=runs_count, runs=runs, probe_points=len(graph.names), trace=trace,
        audit=[f for f in audit if f.tensor in {p.tensor for p in trace}] or audit[:10],
        explanation=explanation, repro_dir=str(repro_dir) if repro_dir else None)
    if fix_precision and precision and node.name:
        result.precision_fix = _fix_precision(model, reference_values[output], target, options,
                                              feed, output, atol, rtol, result, audit, graph,
                                              repro_dir, reference)
    if repro_dir is not None:
        _write_readme(repro_dir, model, result, target, tau, values)
    return result


def _local_check(model: onnx.ModelProto, node: onnx.NodeProto, values: dict[str, np.ndarray],
                 reference: Backend, target: Backend, options: BackendOptions, tensor: str,
                 tau: float, repro_dir: Path | None) -> tuple[bool | None, float | None]:
    """Runs the node alone on the target with reference inputs; None when it cannot be."""
    if any(attr.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
           for attr in node.attribute):
        return None, None  # bodies refer to outer-scope tensors; not isolable
    if repro_dir is None:
        import tempfile

        with tempfile.TemporaryDirectory(prefix="trtcheck-culprit-") as scratch:
            return _local_check(model, node, values, reference, target, options, tensor, tau,
                                Path(scratch))
    alone = _extract_node(model, node, values)
    feed = {i.name: values[i.name] for i in alone.graph.input}
    folder = repro_dir
    path = folder / "culprit.onnx"
    write_atomically(path, lambda partial: onnx.save(alone, partial))
    write_npz(folder / "inputs.npz", feed)
    write_npz(folder / "reference_outputs.npz",
              {o.name: values[o.name] for o in alone.graph.output})
    from polygraphy.json import save_json

    write_atomically(folder / "inputs.json", lambda partial: save_json([feed], partial))
    try:
        alone_model = load_model(path)
        observed = _run(alone_model, target, replace(options, shapes={}), feed, [],
                        "target:culprit")
    except Exception:
        return None, None
    error = _relative_error(observed[tensor], values[tensor])[0]
    return error > tau, error


def _trace(graph: _Graph, origin: int, failing: int, followed: list[int],
           measured: dict[int, tuple[float, float, float]], reference: Activations,
           tau: float) -> list[TracePoint]:
    """Measured tensors on a path input -> culprit -> failing output, in topological order.

    Backwards from the output the path takes the worst-measured input (the way the error
    came); backwards from the culprit, the worst too, down to the graph inputs.
    """
    path: list[int] = []
    current: int | None = failing
    while current is not None:
        path.append(current)
        measured_inputs = [i for i in graph.inputs_of(current) if i in measured]
        if not measured_inputs:
            break
        current = max(measured_inputs, key=lambda i: (i in followed, measured[i][0]))
    points = []
    for i in sorted(set(path) | set(followed) | {origin}):
        if i not in measured:
            continue
        error, worst, scale = measured[i]
        node = graph.producers[graph.names[i]]
        points.append(TracePoint(i, graph.names[i], node.name, node.op_type, error, worst,
                                 scale, tau * scale, error > tau))
    return points


def _explain(tensor: str, node: onnx.NodeProto, values: dict[str, np.ndarray],
             audit: list[RangeFinding], precision: str | None, local: bool | None) -> list[str]:
    lines = []
    touching = {tensor, *[t for t in node.input if t]}
    for finding in audit:
        if finding.tensor in touching and finding.precision == precision:
            lines.append(finding.describe())
    if precision in LIMITS and not lines:
        largest = max((float(np.abs(values[t]).max()) for t in touching
                       if t in values and values[t].size and
                       np.issubdtype(values[t].dtype, np.floating)), default=0.0)
        lines.append(f"the culprit's tensors stay within {precision}'s range (largest "
                     f"|value| {largest:.3g}): the error is rounding, not overflow")
    if local is False:
        lines.append("fed the reference values of its inputs, the culprit alone stays within "
                     "tolerance: the error was inherited and grew along the path")
    return lines


def _consumers(model: onnx.ModelProto, tensor: str) -> list[str]:
    return [n.name for n in model.graph.node if tensor in n.input and n.name]


def _fix_precision(model: LoadedModel, reference_output: np.ndarray, target: Backend,
                   options: BackendOptions, feed: dict[str, np.ndarray], output: str,
                   atol: float, rtol: float, found: Localization, audit: list[RangeFinding],
                   graph: _Graph, repro_dir: Path | None, reference: Backend,
                   max_rounds: int = 8) -> PrecisionFix:
    """Grows a set of fp32 nodes from the culprit until the failing output passes."""
    keep = {found.culprit_node}
    # Tensors beyond the target precision's range overflow wherever a reduced node reads or
    # writes them: keep their producers and readers too.
    for finding in audit:
        if finding.kind == "overflow" and finding.precision == target.precision:
            producer = graph.producers.get(finding.tensor)
            if producer is not None and producer.name:
                keep.add(producer.name)
            keep.update(_consumers(model.proto, finding.tensor))
    runs, rounds, verified = 0, 0, False
    while rounds < max_rounds:
        rounds += 1
        planned = replace(options, keep_fp32=frozenset(keep))
        observed = _run(model, target, planned, feed, [], "target:plan")
        runs += 1
        error = _relative_error(observed[output], reference_output)
        if error[0] <= _tau(atol, rtol, error[2]):
            verified = True
            break
        try:
            again = localize(model, reference, target, planned, feed, output, atol, rtol,
                             fix_precision=False, mode=found.mode)
        except UsageError:
            break
        runs += again.target_runs
        if not again.culprit_node or again.culprit_node in keep:
            break
        keep.add(again.culprit_node)
    names = sorted(keep)
    trt10 = "--precision-constraints obey --layer-precisions " + " ".join(
        shlex.quote(f"{n}:float32") for n in names)
    trt11_model = None
    if repro_dir is not None and verified:
        from trtcheck.precision import PrecisionPlan, convert

        plan = PrecisionPlan(target.precision, frozenset(names))
        trt11_model = str(repro_dir / f"model.{target.precision}.keep-fp32.onnx")
        converted = convert(model.proto, plan)
        write_atomically(Path(trt11_model), lambda partial: onnx.save(converted, partial))
    return PrecisionFix(names, verified, rounds, runs, trt10, trt11_model)


def _write_readme(folder: Path, model: LoadedModel, result: Localization, target: Backend,
                  tau: float, values: dict[str, np.ndarray]) -> None:
    scale = float(np.abs(values[result.culprit_tensor]).max()) if values[
        result.culprit_tensor].size else 0.0
    atol = f"{tau * scale:.3g}"
    flags = {"fp16": " --fp16", "bf16": " --bf16"}.get(target.precision, "")
    lines = [
        f"# Repro: {result.culprit_node or result.culprit_op} ({result.culprit_op})", "",
        f"From `{model.path}`, output `{result.output}`. The culprit node alone is "
        "`culprit.onnx`; `inputs.npz` / `inputs.json` hold the reference values of its inputs "
        "and `reference_outputs.npz` what ONNX Runtime computes from them in fp32.", "",
        f"- local: {result.local} (error {result.local_error}, tolerance {tau:.3g} relative)",
        *[f"- {line}" for line in result.explanation], "",
        "Reproduce on the emulated or real target:", "", "```sh",
        f"trtcheck compare culprit.onnx --target {target.name} --inputs inputs.npz "
        f"--atol {atol} --rtol 0",
        f"polygraphy run culprit.onnx --trt{flags} --onnxrt --load-inputs inputs.json "
        f"--atol {atol} --rtol 0",
        "```", "",
    ]
    fix = result.precision_fix
    if fix is not None:
        lines += [f"Precision fix ({'verified' if fix.verified else 'not verified'} after "
                  f"{fix.rounds} round(s)): keep {', '.join(fix.keep_fp32)} in fp32.", "",
                  "```sh",
                  f"trtcheck compare {model.path} --target {target.name} --keep-fp32 "
                  + " ".join(shlex.quote(n) for n in fix.keep_fp32),
                  f"polygraphy run {model.path} --trt{flags} {fix.trt10_flags} --onnxrt"
                  "   # TensorRT 10",
                  "```", ""]
        if fix.trt11_model:
            lines += [f"TensorRT 11 (strongly typed): `{Path(fix.trt11_model).name}` is the "
                      "model converted with this plan; build it with `polygraphy run "
                      f"{Path(fix.trt11_model).name} --trt --strongly-typed --onnxrt`.", ""]
    text = "\n".join(lines)
    write_atomically(folder / "README.md", lambda partial: Path(partial).write_text(text))
    summary = json.dumps({"culprit": result.culprit_node, "local": result.local}, indent=2)
    write_atomically(folder / "culprit.json", lambda partial: Path(partial).write_text(summary))


def localize_comparison(result: Any, model: LoadedModel | None = None,
                        repro_dir: Path | None = None, fix_precision: bool = True,
                        output: str | None = None, mode: str = "auto") -> Localization:
    """Bisects the first failing output of a `ComparisonResult`."""
    failing = [d for d in result.outputs if not d.passed]
    if output is not None:
        failing = [d for d in result.outputs if d.name == output]
    if not failing:
        raise UsageError("every output is within tolerance; nothing to bisect")
    diff = failing[0]
    model = model or load_model(result.model_path)
    feed = result.feeds.iterations[diff.iteration]
    return localize(model, get_backend(result.reference.name), get_backend(result.target.name),
                    result.options, feed, diff.name, diff.tolerance.atol, diff.tolerance.rtol,
                    repro_dir, fix_precision, mode)
