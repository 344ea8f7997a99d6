"""The INT8 fix: a small set of nodes to leave unquantized that brings the outputs within tolerance.

Search (`find_int8_fix`):
1. The given Q/DQ model is run first; if it already passes, the fix is empty (one run).
2. Layers are ranked by `layerwise_error`'s isolated SQNR, worst first. The isolated error is a
   layer's own loss with fp32 inputs, so it points at the cause rather than at the layers
   downstream that only inherit the error (the accumulated error grows along the graph).
3. Grow: leave unquantized the first 1, 2, 4, ... layers of the ranking until the outputs pass,
   then bisect between the last failing step and it for the shortest passing prefix. Doubling and
   bisecting find it in about 2 log2(layers) runs, where adding layers one at a time takes as
   many runs as the fix has layers.
4. Shrink: try dropping each member, the least bad first and the worst last (the worst is the
   likeliest to be needed), keeping a drop whenever the rest still passes. What is left is
   minimal in the sense that no single member can go (`Int8Fix.minimal`; False when the runs
   ran out first). A set already run is never run again.
5. Verify: the model for the final set is built again and run, so `verified` is about the very
   model returned. At most `max_runs` candidate models are built and run in all (one is kept for
   the verification); a search that runs out returns `verified=False` and the best candidate
   (highest worst-output cosine) it ran.

A candidate model is built by `requantize` (the quantizer again, with `exclude` = the fp32 node
names: ranges of the other tensors come out the same) when trtcheck quantized the model itself,
otherwise by `remove_quantization` on the given Q/DQ model (a user's or a QAT export).

Candidates run on ONNX Runtime's CPU provider with `ORT_FP8_DISABLED_OPTIMIZERS` disabled: in
fp8 its "ReluQuantRewrite" drops a Relu before a float8 Q (wrong: float8 holds negatives), which
would make every candidate fail; for int8 the rule fires only where it is exact (a uint8 zero
point at its minimum), so disabling it always changes no result. `layerwise_error`'s isolated
models start at the Q, so the ranking is not affected by that rule either. In fp8 few layers
need a fix: e4m3 keeps a value 1000x below the scale's top with 3 mantissa bits where int8
rounds it to 0.

Each excluded node is explained (`ExcludedNode.reason`) from the fp32 values of its quantized
inputs on the feeds, quantized with the model's own scales: an activation's channel spread (axis
1, or the reduced axis of MatMul/Gemm), its outliers (max over the 99.9th percentile), the share
of its nonzero values the per-tensor scale rounds to 0; a weight's spread across the channels
its per-output-channel scales do not separate and the share of it rounded to 0. Without such a
finding, the layer's isolated SQNR and rank are the reason.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from trtcheck.errors import BackendRunError, ModelError, UsageError

if TYPE_CHECKING:
    import onnx

    from trtcheck.model import LoadedModel
    from trtcheck.quant.layerwise import LayerError, Pairing

Outputs = dict[str, np.ndarray]
Passes = Callable[[Outputs, Outputs], bool]

# A channel whose absmax is this many times the median channel's sets a per-tensor scale alone.
CHANNEL_SPREAD = 10.0
# max |x| this many times the 99.9th percentile: a few values set the scale for all the others.
OUTLIER_SPREAD = 10.0
# Share of an input's nonzero values rounded to 0 that is worth naming (weights: a smaller share
# already matters, each one is used at every position).
ZEROED_ACTIVATIONS = 0.25
ZEROED_WEIGHTS = 0.05
# ModelOpt expands `nodes_to_exclude` with re.match (anchored at the start only).
_MODELOPT_END = "$"


@dataclass(frozen=True)
class ExcludedNode:
    """One node the fix leaves unquantized, and why its quantization loses the accuracy."""

    node: str  # node name in the fp32 model (what ORT's quantizer and ModelOpt exclude by)
    qdq_node: str  # its counterpart in the Q/DQ model (layer-wise pairing)
    op: str
    reason: str
    sqnr_db_isolated: float


@dataclass(frozen=True)
class Int8Fix:
    """The nodes to leave unquantized, whether that passed, and the model that does it."""

    excluded: tuple[ExcludedNode, ...]
    verified: bool  # the final run with them unquantized passes `passes`
    runs: int  # candidate models built and run (the given one included)
    seconds: float
    before: dict[str, float]  # output -> cosine vs fp32, quantized as given
    after: dict[str, float]  # output -> cosine vs fp32, with the exclusions
    ort_nodes_to_exclude: list[str]  # onnxruntime.quantization quantize_static(nodes_to_exclude=)
    modelopt_nodes_to_exclude: list[str]  # ModelOpt's nodes_to_exclude: anchored, escaped names
    model: onnx.ModelProto | None = field(default=None, repr=False)
    # The quantized layers ranked by isolated error, when the search ranked them.
    layers: tuple[LayerError, ...] = ()
    # Whether dropping any one member was tried and failed (False: the runs ran out first).
    minimal: bool = True


@dataclass
class _Candidate:
    layers: tuple[int, ...]  # positions in the ranking
    passed: bool
    score: float  # the worst output's cosine
    cosines: dict[str, float]
    model: onnx.ModelProto | None


@dataclass
class _Search:
    """The state of one search: what was run, and how to build and judge a candidate."""

    ranked: list[LayerError]
    build: Callable[[tuple[int, ...]], onnx.ModelProto]
    judge: Callable[[onnx.ModelProto], tuple[bool, dict[str, float]]]
    max_runs: int
    runs: int = 0
    tried: dict[frozenset[int], _Candidate] = field(default_factory=dict)

    def can_run(self, reserve: int = 1) -> bool:
        return self.runs + reserve < self.max_runs

    def run(self, layers: tuple[int, ...]) -> _Candidate:
        key = frozenset(layers)
        if key not in self.tried:
            model = self.build(layers)
            passed, cosines = self.judge(model)
            self.runs += 1
            self.tried[key] = _Candidate(layers, passed, _worst(cosines), cosines, model)
        return self.tried[key]

    def best(self) -> _Candidate:
        return max(self.tried.values(), key=lambda candidate: (candidate.score,
                                                               -len(candidate.layers)))


def _worst(cosines: dict[str, float]) -> float:
    values = [value for value in cosines.values() if not math.isnan(value)]
    return min(values) if len(values) == len(cosines) else -math.inf


def find_int8_fix(fp32: LoadedModel, qdq: LoadedModel, feeds: Sequence[dict[str, np.ndarray]],
                  passes: Passes,
                  requantize: Callable[[tuple[str, ...]], onnx.ModelProto] | None = None,
                  max_runs: int = 24) -> Int8Fix:
    """The nodes of `qdq` to leave unquantized so that its outputs pass (search in the doc).

    `feeds` are keyed by the fp32 model's input names; `passes(reference, candidate)` judges one
    feed's outputs (keyed by the fp32 model's output names) and must hold on every feed.
    `requantize(fp32 node names)` makes the Q/DQ model again without those nodes' quantization;
    without it, Q/DQ are removed from `qdq` itself (`remove_quantization`).
    """
    started = time.perf_counter()
    if max_runs < 1:
        raise UsageError(f"max_runs is {max_runs}; the INT8 fix needs at least one run")
    from trtcheck.quant.layerwise import check_feeds

    check_feeds(fp32, feeds)
    reference = _run_model(fp32.proto, fp32, feeds, f"{fp32.path} (fp32)")

    def judge(model: onnx.ModelProto) -> tuple[bool, dict[str, float]]:
        outputs = _run_model(model, fp32, feeds, f"{qdq.path} (candidate)")
        return (all(passes(ref, got) for ref, got in zip(reference, outputs, strict=True)),
                _cosines(reference, outputs))

    given, before = judge(qdq.proto)
    if given:
        return Int8Fix((), True, 1, time.perf_counter() - started, before, before, [], [],
                       qdq.proto)
    from trtcheck.quant.layerwise import layerwise_error, pair

    ranked = layerwise_error(fp32, qdq, feeds)
    search = _Search(ranked, _builder(qdq, ranked, requantize), judge, max_runs, runs=1)
    search.tried[frozenset()] = _Candidate((), False, _worst(before), before, qdq.proto)
    chosen, minimal = _shrink(search, _narrow(search, _grow(search)))
    if chosen is None:
        result = search.best()
        verified = False
    else:
        search.tried.pop(frozenset(chosen))  # the verification builds and runs it once more
        result = search.run(chosen)
        verified = result.passed
    excluded = _explain(fp32, qdq, pair(fp32.proto, qdq.proto), ranked, result.layers, feeds)
    names = [node.node for node in excluded]
    return Int8Fix(excluded, verified, search.runs, time.perf_counter() - started, before,
                   result.cosines, names, [re.escape(name) + _MODELOPT_END for name in names],
                   result.model, tuple(ranked), minimal and verified)


def _grow(search: _Search) -> tuple[int, ...] | None:
    """The shortest passing prefix of 1, 2, 4, ... ranked layers, or None within the budget."""
    count = 1
    while search.can_run():
        size = min(count, len(search.ranked))
        candidate = search.run(tuple(range(size)))
        if candidate.passed:
            return candidate.layers
        if size == len(search.ranked):
            return None
        count *= 2
    return None


def _narrow(search: _Search, chosen: tuple[int, ...] | None) -> tuple[int, ...] | None:
    """The shortest passing prefix, bisected between the failed doubling step and `chosen`.

    log2 runs, where shrinking member by member costs one run each.
    """
    if chosen is None:
        return None
    failing, passing = len(chosen) // 2, len(chosen)
    while passing - failing > 1 and search.can_run():
        middle = (failing + passing) // 2
        if search.run(tuple(range(middle))).passed:
            passing = middle
        else:
            failing = middle
    return tuple(range(passing))


def _shrink(search: _Search, chosen: tuple[int, ...] | None
            ) -> tuple[tuple[int, ...] | None, bool]:
    """`chosen` without each member whose absence still passes, the least bad tried first.

    Also whether every member was tried (the set is minimal) before the runs ran out.
    """
    if chosen is None:
        return None, False
    for member in sorted(chosen, reverse=True):
        rest = tuple(layer for layer in chosen if layer != member)
        if frozenset(rest) not in search.tried and not search.can_run():
            return chosen, False
        if search.run(rest).passed:
            chosen = rest
    return chosen, True


def _builder(qdq: LoadedModel, ranked: list[LayerError],
             requantize: Callable[[tuple[str, ...]], onnx.ModelProto] | None
             ) -> Callable[[tuple[int, ...]], onnx.ModelProto]:
    def build(layers: tuple[int, ...]) -> onnx.ModelProto:
        if requantize is None:
            return remove_quantization(qdq.proto, [ranked[k].node for k in layers])
        return requantize(tuple(ranked[k].fp32_node for k in layers))

    return build


def _run_model(model: onnx.ModelProto, fp32: LoadedModel, feeds: Sequence[dict[str, np.ndarray]],
               what: str, marked: Sequence[str] = ()) -> list[Outputs]:
    """Each feed's outputs, keyed by the fp32 model's names (inputs and outputs by position)."""
    from trtcheck.marking import mark_outputs
    from trtcheck.quant.layerwise import qdq_session
    from trtcheck.run import first_line

    session = qdq_session(mark_outputs(model, marked) if marked else model, what)
    inputs = [value.name for value in session.get_inputs()]
    outputs = [value.name for value in session.get_outputs()]
    names = [*fp32.output_names, *outputs[len(fp32.output_names):]]
    results = []
    for feed in feeds:
        try:
            values = session.run(outputs, {name: feed[fp32.input_names[k]]
                                           for k, name in enumerate(inputs)})
        except Exception as err:
            raise BackendRunError(f"onnxrt failed to run {what}: {first_line(err)}") from err
        results.append(dict(zip(names, values, strict=True)))
    return results


def _cosines(reference: list[Outputs], outputs: list[Outputs]) -> dict[str, float]:
    """Each output's cosine against fp32 over all feeds (1.0 when both are all zeros)."""
    from trtcheck.compare import cosine_similarity

    result = {}
    for name in reference[0]:
        want = np.concatenate([np.ravel(feed[name]) for feed in reference])
        got = np.concatenate([np.ravel(feed[name]) for feed in outputs])
        cosine = cosine_similarity(got, want)
        result[name] = (float(np.array_equal(got, want)) if cosine is None else cosine)
    return result


def remove_quantization(qdq: onnx.ModelProto, qdq_nodes: Sequence[str]) -> onnx.ModelProto:
    """A copy of `qdq` in which the nodes named `qdq_nodes` compute in float.

    Rules:
    1. An input read through DequantizeLinear(QuantizeLinear(x)) (Identity between them allowed)
       reads x itself; the pair stays for the other nodes that read it.
    2. An input read through a DequantizeLinear of a constant (int8, fp8 or int32 weights)
       reads a new float initializer holding the dequantized values.
    3. Q/DQ nodes and initializers nothing reads any more are removed; the graph is sorted
       topologically. Everything else is kept as it is.
    A strongly typed TensorRT build then runs those nodes in float. Raises `UsageError` for a
    name that is not a node of `qdq`.
    """
    from onnx import numpy_helper

    from trtcheck.model import copy_model
    from trtcheck.quant.layerwise import float_view

    model = copy_model(qdq)
    view = float_view(model)
    nodes = {node.name or node.output[0]: node for node in model.graph.node}
    taken = {tensor.name for tensor in model.graph.initializer} | set(view.producer)
    for name in qdq_nodes:
        if name not in nodes:
            raise UsageError(f"node '{name}' to leave unquantized is not in the Q/DQ model; "
                             "name a node of its graph")
        node = nodes[name]
        for position, tensor in enumerate(node.input):
            if tensor not in view.dequantized:
                continue
            if tensor in view.alias:  # DQ(Q(x)): x
                node.input[position] = view.alias[tensor]
                continue
            # DQ of a constant: its float values become an initializer of their own.
            node.input[position] = _unused_name(f"{tensor}_float", taken)
            model.graph.initializer.append(numpy_helper.from_array(
                np.asarray(view.constants[tensor].value), node.input[position]))
    return _cleaned(model)


def _unused_name(name: str, taken: set[str]) -> str:
    number, candidate = 1, name
    while candidate in taken:
        candidate, number = f"{name}_{number}", number + 1
    taken.add(candidate)
    return candidate


def _cleaned(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model` without what nothing reads, sorted (onnx-graphsurgeon's cleanup and toposort)."""
    from onnx_graphsurgeon.logger import G_LOGGER

    from trtcheck.passes.base import PassNotApplicable, export_like, import_graph

    previous = G_LOGGER.severity
    G_LOGGER.severity = G_LOGGER.CRITICAL  # "cannot convert FLOAT8E4M3FN" (kept as it is)
    try:
        return export_like(import_graph(model), model)
    except PassNotApplicable as err:
        raise ModelError(f"the Q/DQ model cannot be edited: {err}") from err
    finally:
        G_LOGGER.severity = previous


# --- Explanations ---------------------------------------------------------------------------

@dataclass(frozen=True)
class _Input:
    """One quantized input of a layer: its fp32 tensor, the Q/DQ that quantize it, its role."""

    position: int
    fp32_tensor: str  # the fp32 model's tensor (an activation or a weight)
    quantize: onnx.NodeProto | None  # the Q that rounds it (None for a stored int8 weight)
    dequantize: onnx.NodeProto
    weight: bool


def _quantized_inputs(pairing: Pairing, index: int) -> list[_Input]:
    view, node = pairing.qdq, pairing.qdq.nodes[index]
    fp32_node = pairing.fp32.nodes[pairing.pairs[index]]
    found = []
    for position, tensor in enumerate(node.input):
        if tensor not in view.dequantized:
            continue
        dequantize = view.raw_producer[tensor]
        quantize = view.raw_producer.get(dequantize.input[0])
        if quantize is not None and quantize.op_type != "QuantizeLinear":
            quantize = None
        weight = view.operand(tensor)[0] == "constant"
        source = fp32_node.input[position] if weight else pairing.fp32_tensor(
            view.operand(tensor))
        found.append(_Input(position, source, quantize, dequantize, weight))
    return found


def _explain(fp32: LoadedModel, qdq: LoadedModel, pairing: Pairing, ranked: list[LayerError],
             layers: tuple[int, ...], feeds: Sequence[dict[str, np.ndarray]]
             ) -> tuple[ExcludedNode, ...]:
    """An `ExcludedNode` per layer, in ranking order, its reason measured on the feeds."""
    if not layers:
        return ()
    index_of = {(node.name or node.output[0]): k for k, node in enumerate(pairing.qdq.nodes)}
    inputs = {k: _quantized_inputs(pairing, index_of[ranked[k].node]) for k in layers}
    activations = sorted({item.fp32_tensor for found in inputs.values() for item in found
                          if not item.weight} - set(fp32.input_names))
    values = _run_model(fp32.proto, fp32, feeds, f"{fp32.path} (fp32)", activations)
    excluded = []
    for k in sorted(layers):
        row = ranked[k]
        findings = [_finding(pairing, item, values, feeds, row.op) for item in inputs[k]]
        reason = "; ".join(text for text in findings if text) or (
            f"isolated SQNR {row.sqnr_db_isolated:.1f} dB, the "
            f"{_ordinal(k + 1)}worst of {len(ranked)} layers")
        excluded.append(ExcludedNode(row.fp32_node, row.node, row.op, reason,
                                     row.sqnr_db_isolated))
    return tuple(excluded)


def _ordinal(number: int) -> str:
    if number == 1:
        return ""
    suffix = {1: "st", 2: "nd", 3: "rd"}.get(number % 10 if number % 100 not in (11, 12, 13)
                                             else 0, "th")
    return f"{number}{suffix} "


def _finding(pairing: Pairing, item: _Input, values: list[Outputs],
             feeds: Sequence[dict[str, np.ndarray]], op: str) -> str:
    if item.weight:
        return _weight_finding(pairing, item)
    arrays = [np.asarray(feed.get(item.fp32_tensor, run.get(item.fp32_tensor)))
              for feed, run in zip(feeds, values, strict=True)]
    return _activation_finding(pairing, item, arrays, op)


def _parameters(pairing: Pairing, node: onnx.NodeProto) -> dict[str, np.ndarray]:
    view = pairing.qdq
    return {name: view.constants[view.alias.get(name, name)].value
            for name in node.input[1:] if name}


def _rounded_to_zero(pairing: Pairing, node: onnx.NodeProto, x: np.ndarray) -> np.ndarray:
    """Which elements of `x` the Q/DQ's own QuantizeLinear (scale, zero point, axis) makes 0."""
    import onnx
    from onnx.reference import ReferenceEvaluator

    parameters = _parameters(pairing, node)
    values = {"::x": x, "::scale": parameters[node.input[1]]}
    zero_point = parameters.get(node.input[2]) if len(node.input) > 2 else None
    if zero_point is not None:
        values["::zero_point"] = zero_point
    quantize = onnx.helper.make_node("QuantizeLinear", list(values), ["::q"])
    quantize.attribute.extend(node.attribute)
    quantized = next(iter(ReferenceEvaluator(quantize).run(None, values)))
    offset = np.asarray(zero_point).astype(np.float64) if zero_point is not None else 0.0
    return np.asarray(quantized).astype(np.float64) == offset


def _precision(pairing: Pairing, node: onnx.NodeProto) -> str:
    zero_point = _parameters(pairing, node).get(node.input[2]) if len(node.input) > 2 else None
    dtype = str(zero_point.dtype) if zero_point is not None else "uint8"
    return "fp8" if "float8" in dtype else dtype


def _channel_axis(op: str, position: int, rank: int) -> int | None:
    """The axis a per-tensor scale mixes channels along: the reduced one for MatMul/Gemm."""
    if rank < 2:
        return None
    if op == "MatMul":
        return rank - 1 if position == 0 else rank - 2
    return 1


def _origin(pairing: Pairing, tensor: str) -> str:
    """'trunk/r1 (from trunk/conv1 via trunk/relu1)': the tensor and the layer that makes it."""
    producers = {name: node for node in pairing.fp32.nodes for name in node.output}
    chain: list[str] = []
    current = producers.get(tensor)
    while current is not None and len(chain) < 4:
        chain.append(current.name or current.output[0])
        if current.op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul"):
            break
        computed = [name for name in current.input if name in producers]
        current = producers.get(computed[0]) if len(computed) == 1 else None
    if not chain:
        return tensor
    if len(chain) == 1:
        return f"{tensor} (from {chain[0]})"
    return f"{tensor} (from {chain[-1]} via {' and '.join(reversed(chain[:-1]))})"


def _activation_finding(pairing: Pairing, item: _Input, arrays: list[np.ndarray],
                        op: str) -> str:
    if item.quantize is None:
        return ""
    axis = _channel_axis(op, item.position, arrays[0].ndim)
    magnitude = np.concatenate([np.abs(a.astype(np.float64)).ravel() for a in arrays])
    parameters = _parameters(pairing, item.quantize)
    scale = np.asarray(parameters[item.quantize.input[1]]).astype(np.float64)
    precision = _precision(pairing, item.quantize)
    zeroed = [_rounded_to_zero(pairing, item.quantize, a) & (a != 0) for a in arrays]
    nonzero = [a != 0 for a in arrays]
    origin = f"input {_origin(pairing, item.fp32_tensor)}"
    scale_text = f"a per-tensor {precision} scale ({_number(float(scale.max()))})"
    if axis is not None and arrays[0].shape[axis] > 1:
        per_channel = np.max([np.abs(a).max(axis=tuple(d for d in range(a.ndim) if d != axis))
                              for a in arrays], axis=0).astype(np.float64)
        typical = float(np.median(per_channel))
        outliers = np.flatnonzero(per_channel >= CHANNEL_SPREAD * max(typical, 1e-30))
        if typical > 0 and len(outliers) and len(outliers) <= len(per_channel) // 2:
            others = [np.delete(z, outliers, axis=axis) for z in zeroed]
            others_nonzero = [np.delete(n, outliers, axis=axis) for n in nonzero]
            share = _share(others, others_nonzero)
            ratio = float(per_channel[outliers].max()) / typical
            return (f"{origin}: {_channels(outliers)} {'spans' if len(outliers) == 1 else 'span'}"
                    f" {ratio:.0f}x the others (max |x| {_number(float(per_channel.max()))} vs "
                    f"{_number(typical)}); {scale_text} rounds {share:.0%} of the other "
                    "channels' nonzero values to 0")
    share = _share(zeroed, nonzero)
    top = float(magnitude.max()) if magnitude.size else 0.0
    percentile = float(np.percentile(magnitude, 99.9)) if magnitude.size else 0.0
    if percentile > 0 and top >= OUTLIER_SPREAD * percentile:
        return (f"{origin}: outliers, max |x| {_number(top)} is {top / percentile:.0f}x its "
                f"99.9th percentile ({_number(percentile)}); {scale_text} rounds {share:.0%} of "
                "its nonzero values to 0")
    if share >= ZEROED_ACTIVATIONS:
        return f"{origin}: {scale_text} rounds {share:.0%} of its nonzero values to 0"
    return ""


def _weight_finding(pairing: Pairing, item: _Input) -> str:
    weights = np.asarray(pairing.fp32.constants[item.fp32_tensor].value)
    if item.quantize is None or weights.ndim < 2 or not np.issubdtype(weights.dtype, np.floating):
        return _stored_weight_finding(pairing, item, weights)
    zeroed = _rounded_to_zero(pairing, item.quantize, weights) & (weights != 0)
    return _weight_text(pairing, item, weights, zeroed)


def _stored_weight_finding(pairing: Pairing, item: _Input, weights: np.ndarray) -> str:
    """Weights stored quantized (DQ of int8): the fp32 weights through the DQ's own scales."""
    if weights.ndim < 2 or not np.issubdtype(weights.dtype, np.floating):
        return ""
    dequantized = np.asarray(pairing.qdq.constants[item.dequantize.output[0]].value)
    if dequantized.shape != weights.shape:
        return ""
    return _weight_text(pairing, item, weights, (dequantized == 0) & (weights != 0))


def _weight_text(pairing: Pairing, item: _Input, weights: np.ndarray, zeroed: np.ndarray) -> str:
    share = float(zeroed.sum()) / max(int(np.count_nonzero(weights)), 1)
    if share < ZEROED_WEIGHTS:
        return ""
    node = item.quantize if item.quantize is not None else item.dequantize
    scale = np.asarray(_parameters(pairing, node)[node.input[1]])
    axis = next((a.i for a in node.attribute if a.name == "axis"), 1) % weights.ndim \
        if scale.size > 1 else None
    scales = "per-output-channel" if axis is not None else "per-tensor"
    across = next(d for d in (0, 1) if d != axis)
    ranges = np.abs(weights).max(axis=tuple(d for d in range(weights.ndim) if d != across))
    text = (f"weights {item.fp32_tensor}: the {scales} {_precision(pairing, node)} scales round "
            f"{share:.0%} of them to 0")
    typical = float(np.median(ranges))
    small = np.flatnonzero(ranges * CHANNEL_SPREAD <= typical)
    if len(small) and len(small) <= len(ranges) // 2 and float(ranges[small].max()) > 0:
        ratio = typical / float(ranges[small].max())
        text += (f", {'input ' if across == 1 else ''}{_channels(small)} "
                 f"{'is' if len(small) == 1 else 'are'} {ratio:.0f}x smaller than the others "
                 f"(max |w| {_number(float(ranges[small].max()))} vs {_number(typical)})")
    return text


def _share(zeroed: list[np.ndarray], nonzero: list[np.ndarray]) -> float:
    total = sum(int(n.sum()) for n in nonzero)
    return sum(int(z.sum()) for z in zeroed) / total if total else 0.0


def _channels(indices: np.ndarray) -> str:
    shown = ", ".join(str(int(i)) for i in indices[:3])
    more = f" and {len(indices) - 3} more" if len(indices) > 3 else ""
    return f"channel{'s' if len(indices) > 1 else ''} {shown}{more}"


def _number(value: float) -> str:
    return f"{value:.3g}"
