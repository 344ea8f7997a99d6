"""Layer-wise quantization error: which layers of a Q/DQ model lose the accuracy, and how much.

A Q/DQ model (ONNX Runtime's quantizer, ModelOpt, a QAT export) names its tensors its own way, so
its layers are paired with the fp32 model's by graph structure, never by name:

1. Each graph is read as its float view: a QuantizeLinear -> DequantizeLinear pair stands for
   the Q's input, a DequantizeLinear of a constant (int8/fp8 weights) is that constant
   dequantized, an Identity stands for its input, a Constant node is a constant. What remains are
   the compute nodes. A Q read by anything other than a DQ (QOperator format) is refused, and
   so is a Q/DQ whose scale or zero point is not a constant: ONNX Runtime's quantizer names
   tensor T's scale 'T_scale' and reads an existing tensor of that name instead (a broken model
   that fails only when run).
2. Graph inputs are paired by position. Then, in graph order (ONNX graphs are topologically
   sorted), each compute node of the Q/DQ model is paired with an unpaired fp32 node of the same
   op type, domain and attributes whose inputs are the same: the outputs of the already paired
   producers (same output index), the paired graph inputs, empty in the same places, and
   constants of the same shape (size-1 dims aside) and values. Integer constants must be equal;
   float constants may differ by quantization noise (relative L2 error up to
   `MAX_CONSTANT_ERROR`, which int4 per-channel weights pass and another model's weights do not).
   Structurally identical candidates (the q/k/v projections of attention) are told apart by the
   closest constants. Every node of each graph must find its counterpart, else `ModelError`.
3. A layer is a compute node of the Q/DQ model with at least one input fed by a DQ (a quantized
   activation or weight). Its output tensor (the first; before the next Q) is compared with its
   fp32 counterpart's.

Metrics (SQNR in dB and cosine, summed over all feeds):
- accumulated: the whole Q/DQ model run, every layer's output returned (marked as an output on a
  copy), against the fp32 model run the same way: the error a layer sees with everything
  upstream quantized too.
- isolated: the layer alone, with only its own Q/DQ (its input activations' Q/DQ and its weights'
  DQ), as a tiny model fed with the fp32 activations captured from the fp32 run. Upstream of a
  layer everything is fp32, so this needs no extra run of the whole model per layer; the fp32
  run itself is the reference (the same node without the Q/DQ on the same inputs).

Memory stays bounded by one feed: each feed runs the fp32 model, the Q/DQ model and every tiny
model, its statistics are added up, and its activations dropped. Everything runs on ONNX Runtime's
CPU provider, which executes Q/DQ with int8 (and float8) kernels.

ONNX Runtime's own `onnxruntime.quantization.qdq_loss_debug` pairs tensors by the suffixes its
quantizer gives them (`_QuantizeLinear_Input`, `_DequantizeLinear_Output`), so it finds nothing
in ModelOpt or QAT exports, compares every tensor rather than layers, has no isolated error, and
keeps every activation of every feed in memory; hence this module.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx

from trtcheck.errors import BackendRunError, InputDataError, ModelError

if TYPE_CHECKING:
    from trtcheck.model import LoadedModel

QUANTIZE, DEQUANTIZE = "QuantizeLinear", "DequantizeLinear"
# ONNX Runtime's contrib Q/DQ (16-bit types) live in com.microsoft.
_QDQ_DOMAINS = ("", "ai.onnx", "com.microsoft")
# Relative L2 error allowed between a dequantized constant and its fp32 original: int8 weights
# are about 0.01 off, int4 per-channel about 0.1; unrelated weights about 1.4.
MAX_CONSTANT_ERROR = 0.25

Operand = tuple[Any, ...]


@dataclass(frozen=True)
class LayerError:
    """The quantization error of one layer's output, accumulated and isolated."""

    node: str  # the layer's node name in the Q/DQ model (its output tensor if unnamed)
    fp32_node: str  # its counterpart in the fp32 model
    op: str
    tensor: str  # output tensor (Q/DQ model)
    sqnr_db_accumulated: float
    cosine_accumulated: float
    sqnr_db_isolated: float
    cosine_isolated: float
    order: int  # the layer's position among the layers in graph order (for plots along the graph)


def _op(node: onnx.NodeProto) -> str | None:
    """QuantizeLinear / DequantizeLinear / Identity / Constant, or None for a compute node."""
    if node.domain in _QDQ_DOMAINS and node.op_type in (QUANTIZE, DEQUANTIZE):
        return node.op_type
    if node.domain in ("", "ai.onnx") and node.op_type in ("Identity", "Constant"):
        return node.op_type
    return None


def _name(node: onnx.NodeProto) -> str:
    return node.name or node.output[0]


@dataclass
class _Constant:
    """A constant's value, read (or dequantized) on first use: weights are compared only once."""

    load: Callable[[], np.ndarray]
    _value: np.ndarray | None = None

    @property
    def value(self) -> np.ndarray:
        if self._value is None:
            self._value = np.asarray(self.load())
        return self._value


@dataclass
class _FloatView:
    """A graph with its Q/DQ pairs, Identity and Constant nodes read away (steps 1 of the doc)."""

    graph: onnx.GraphProto
    nodes: list[onnx.NodeProto] = field(default_factory=list)  # compute nodes, graph order
    alias: dict[str, str] = field(default_factory=dict)  # stripped tensor -> what it stands for
    constants: dict[str, _Constant] = field(default_factory=dict)
    inputs: list[str] = field(default_factory=list)
    producer: dict[str, tuple[int, int]] = field(default_factory=dict)  # -> (node, output index)
    readers: dict[Operand, list[int]] = field(default_factory=dict)
    dequantized: set[str] = field(default_factory=set)  # outputs of DQ nodes (raw names)
    raw_producer: dict[str, onnx.NodeProto] = field(default_factory=dict)

    def operand(self, name: str) -> Operand:
        """What an input reads: ('empty',), ('constant', name), ('input', i), ('node', j, k)."""
        if not name:
            return ("empty",)
        name = self.alias.get(name, name)
        if name in self.constants:
            return ("constant", name)
        if name in self.producer:
            return ("node", *self.producer[name])
        if name in self.inputs:
            return ("input", self.inputs.index(name))
        raise ModelError(f"tensor '{name}' is read but never produced; the model is not "
                         "topologically sorted or is missing a node: re-export it")

    def operands(self, node: onnx.NodeProto) -> list[Operand]:
        inputs = list(node.input)
        while inputs and not inputs[-1]:  # trailing empty optional inputs mean nothing
            inputs.pop()
        return [self.operand(name) for name in inputs]


def _evaluate(node: onnx.NodeProto, feeds: dict[str, np.ndarray]) -> np.ndarray:
    """The first output of one node, by ONNX's reference implementation (any type, axis, block)."""
    from onnx.reference import ReferenceEvaluator

    return np.asarray(next(iter(ReferenceEvaluator(node).run(None, feeds))))


def _dequantized(view: _FloatView, node: onnx.NodeProto) -> _Constant:
    """DequantizeLinear of constants, evaluated when first compared."""
    def load() -> np.ndarray:
        return _evaluate(node, {name: view.constants[view.alias.get(name, name)].value
                                for name in node.input if name})

    return _Constant(load)


def float_view(model: onnx.ModelProto) -> _FloatView:
    """The compute graph of `model` with Q/DQ stripped (rules in the module docstring)."""
    from onnx import numpy_helper

    graph = model.graph
    view = _FloatView(graph)
    for tensor in graph.initializer:
        view.constants[tensor.name] = _Constant(partial(numpy_helper.to_array, tensor))
    view.inputs = [value.name for value in graph.input if value.name not in view.constants]
    quantized: dict[str, str] = {}  # Q output -> the tensor the Q reads
    for node in graph.node:
        view.raw_producer.update((name, node) for name in node.output)
        kind = _op(node)
        if kind == "Constant":
            view.constants[node.output[0]] = _Constant(partial(_evaluate, node, {}))
        elif kind == "Identity":
            view.alias[node.output[0]] = view.alias.get(node.input[0], node.input[0])
        elif kind == QUANTIZE:
            _check_parameters(view, node)
            quantized[node.output[0]] = view.alias.get(node.input[0], node.input[0])
        elif kind == DEQUANTIZE:
            _check_parameters(view, node)
            _strip_dequantize(view, node, quantized)
        else:
            _add_compute_node(view, node, quantized)
    return view


def _check_parameters(view: _FloatView, node: onnx.NodeProto) -> None:
    """A Q/DQ's scale and zero point must be constants: anything else is a broken model."""
    for name in node.input[1:]:
        if name and view.alias.get(name, name) not in view.constants:
            producer = view.raw_producer.get(name)
            source = f"node '{_name(producer)}' ({producer.op_type})" if producer else "an input"
            raise ModelError(
                f"{node.op_type} '{_name(node)}' takes its scale or zero point '{name}' from "
                f"{source}, not from a constant: the quantizer gave its scale the name of an "
                "existing tensor (ONNX Runtime's does for a tensor named '<other tensor>_scale'); "
                "rename that tensor in the fp32 model and quantize it again")


def _strip_dequantize(view: _FloatView, node: onnx.NodeProto, quantized: dict[str, str]) -> None:
    source = view.alias.get(node.input[0], node.input[0])
    view.dequantized.add(node.output[0])
    if source in quantized:
        view.alias[node.output[0]] = quantized[source]
    elif source in view.constants:
        view.constants[node.output[0]] = _dequantized(view, node)
    else:
        raise ModelError(f"DequantizeLinear '{_name(node)}' reads '{source}', which is neither "
                         "a QuantizeLinear output nor a constant; only Q/DQ pairs and quantized "
                         "weights are supported")


def _add_compute_node(view: _FloatView, node: onnx.NodeProto, quantized: dict[str, str]) -> None:
    for name in node.input:
        if view.alias.get(name, name) in quantized:
            raise ModelError(f"node '{_name(node)}' ({node.op_type}) reads the int8 output of a "
                             "QuantizeLinear: QOperator format; export the model in QDQ format")
    index = len(view.nodes)
    view.nodes.append(node)
    for operand in dict.fromkeys(view.operands(node)):
        if operand[0] in ("node", "input"):
            view.readers.setdefault(operand, []).append(index)
    for position, name in enumerate(node.output):
        if name:
            view.producer[name] = (index, position)


def _attributes(node: onnx.NodeProto) -> list[tuple[str, bytes]]:
    graphs = (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
    return sorted((a.name, a.SerializeToString()) for a in node.attribute if a.type not in graphs)


def _constant_distance(quantized: np.ndarray, reference: np.ndarray) -> float | None:
    """Relative L2 error of a (dequantized) constant against the fp32 one; None if not it."""
    if quantized.size != reference.size or \
            np.squeeze(quantized).shape != np.squeeze(reference).shape:
        return None
    floats = (np.issubdtype(quantized.dtype, np.floating),
              np.issubdtype(reference.dtype, np.floating))
    if not all(floats):
        return 0.0 if not any(floats) and np.array_equal(quantized.ravel(),
                                                         reference.ravel()) else None
    if np.array_equal(quantized.ravel(), reference.ravel(), equal_nan=True):
        return 0.0  # also a mask fill of -inf, which no distance can measure (inf - inf)
    if not (np.isfinite(quantized).all() and np.isfinite(reference).all()):
        return None
    difference = quantized.astype(np.float64).ravel() - reference.astype(np.float64).ravel()
    noise = float(np.linalg.norm(difference))
    if noise == 0.0:
        return 0.0
    signal = float(np.linalg.norm(reference.astype(np.float64)))
    distance = noise / signal if signal > 0 else math.inf
    return distance if distance <= MAX_CONSTANT_ERROR else None


@dataclass
class Pairing:
    """The Q/DQ model's compute nodes paired with the fp32 model's, and its layers."""

    qdq: _FloatView
    fp32: _FloatView
    pairs: dict[int, int]  # Q/DQ compute node index -> fp32 compute node index
    layers: list[int]  # Q/DQ compute node indices fed by a DQ, graph order

    def fp32_tensor(self, operand: Operand) -> str:
        """The fp32 model's tensor for an operand of the Q/DQ model (a node output or input)."""
        if operand[0] == "input":
            return self.fp32.inputs[operand[1]]
        return self.fp32.nodes[self.pairs[operand[1]]].output[operand[2]]

    def layer_pairs(self) -> list[tuple[str, str]]:
        return [(_name(self.qdq.nodes[i]), _name(self.fp32.nodes[self.pairs[i]]))
                for i in self.layers]


def _expected(pairs: dict[int, int], operand: Operand) -> Operand:
    return ("node", pairs[operand[1]], operand[2]) if operand[0] == "node" else operand


def _match_score(pairing: Pairing, node: onnx.NodeProto, expected: list[Operand],
                 candidate: onnx.NodeProto) -> float | None:
    """How far `candidate`'s constants are from `node`'s, or None if it is not its counterpart."""
    if (candidate.op_type, candidate.domain) != (node.op_type, node.domain) or \
            len(candidate.output) != len(node.output) or \
            _attributes(candidate) != _attributes(node):
        return None
    theirs = pairing.fp32.operands(candidate)
    if len(theirs) != len(expected):
        return None
    score = 0.0
    for ours, their in zip(expected, theirs, strict=True):
        if ours[0] != "constant":
            if ours != their:
                return None
            continue
        if their[0] != "constant":
            return None
        distance = _constant_distance(pairing.qdq.constants[ours[1]].value,
                                      pairing.fp32.constants[their[1]].value)
        if distance is None:
            return None
        score += distance
    return score


def _candidates(fp32: _FloatView, expected: list[Operand], op_type: str) -> list[int]:
    tensor = next((operand for operand in expected if operand[0] in ("node", "input")), None)
    if tensor is not None:
        return fp32.readers.get(tensor, [])
    return [j for j, node in enumerate(fp32.nodes) if node.op_type == op_type]


def _pair_node(pairing: Pairing, index: int, taken: set[int]) -> int:
    node = pairing.qdq.nodes[index]
    expected = [_expected(pairing.pairs, operand) for operand in pairing.qdq.operands(node)]
    best: tuple[float, int] | None = None
    for candidate in _candidates(pairing.fp32, expected, node.op_type):
        if candidate in taken:
            continue
        score = _match_score(pairing, node, expected, pairing.fp32.nodes[candidate])
        if score is not None and (best is None or score < best[0]):
            best = (score, candidate)
    if best is None:
        raise ModelError(f"node '{_name(node)}' ({node.op_type}) of the Q/DQ model has no "
                         "counterpart in the fp32 model (no node of that op reads the same "
                         "inputs and weights): the two models differ there; compare the Q/DQ "
                         "model with the fp32 model it was made from")
    return best[1]


def pair(fp32: onnx.ModelProto, qdq: onnx.ModelProto) -> Pairing:
    """Pairs every compute node of `qdq` with one of `fp32` (algorithm in the module docstring)."""
    pairing = Pairing(float_view(qdq), float_view(fp32), {}, [])
    if len(pairing.qdq.inputs) != len(pairing.fp32.inputs):
        raise ModelError(f"the Q/DQ model has {len(pairing.qdq.inputs)} graph input(s), the fp32 "
                         f"model {len(pairing.fp32.inputs)}; pass the fp32 model the Q/DQ model "
                         "was made from")
    taken: set[int] = set()
    for index, node in enumerate(pairing.qdq.nodes):
        match = _pair_node(pairing, index, taken)
        pairing.pairs[index] = match
        taken.add(match)
        if any(name in pairing.qdq.dequantized for name in node.input):
            pairing.layers.append(index)
    left = [node for j, node in enumerate(pairing.fp32.nodes) if j not in taken]
    if left:
        raise ModelError(f"{len(left)} node(s) of the fp32 model have no counterpart in the Q/DQ "
                         f"model, first '{_name(left[0])}' ({left[0].op_type}); pass the fp32 "
                         "model the Q/DQ model was made from")
    if not pairing.layers:
        raise ModelError("the model has no DequantizeLinear feeding a compute node: it is not a "
                         "Q/DQ model; quantize it first")
    return pairing


def pair_layers(fp32: onnx.ModelProto, qdq: onnx.ModelProto) -> list[tuple[str, str]]:
    """(Q/DQ node, fp32 node) for each quantized layer, in graph order; `ModelError` if unrelated.

    Pairs by graph structure, never by names (see the module docstring). An unnamed node is
    named by its first output tensor.
    """
    return pair(fp32, qdq).layer_pairs()


@dataclass
class _Isolated:
    """One layer alone with its own Q/DQ, and which fp32 tensor feeds each of its inputs."""

    model: onnx.ModelProto
    feeds: dict[str, str]  # tiny model input -> fp32 model tensor


def _isolated(pairing: Pairing, qdq_model: onnx.ModelProto, index: int) -> _Isolated:
    """The layer's node with the Q/DQ, Identity and constants upstream of it, up to activations."""
    view = pairing.qdq
    layer = view.nodes[index]
    initializers = {tensor.name: tensor for tensor in view.graph.initializer}
    nodes: dict[int, onnx.NodeProto] = {}
    kept: dict[str, onnx.TensorProto] = {}
    feeds: dict[str, str] = {}
    positions = {id(node): k for k, node in enumerate(view.graph.node)}
    pending = [name for name in layer.input if name]
    while pending:
        name = pending.pop()
        producer = view.raw_producer.get(name)
        if name in initializers:
            kept[name] = initializers[name]
        elif producer is not None and _op(producer) is not None:
            nodes[positions[id(producer)]] = producer
            pending += [source for source in producer.input if source]
        elif name not in feeds:
            # An activation computed upstream (or a graph input): the fp32 value is fed.
            operand = view.operand(name)
            if operand[0] not in ("node", "input"):
                raise ModelError(f"layer '{_name(layer)}': tensor '{name}' has no fp32 "
                                 "counterpart to feed its isolated copy with")
            feeds[name] = pairing.fp32_tensor(operand)
    graph = onnx.helper.make_graph(
        [*(nodes[k] for k in sorted(nodes)), layer], f"isolated {_name(layer)}",
        [onnx.ValueInfoProto(name=name) for name in feeds],
        [onnx.ValueInfoProto(name=layer.output[0])], list(kept.values()))
    model = onnx.helper.make_model(graph, opset_imports=list(qdq_model.opset_import))
    model.functions.extend(qdq_model.functions)
    model.ir_version = qdq_model.ir_version
    return _Isolated(model, feeds)


def _typed(isolated: _Isolated, values: dict[str, np.ndarray]) -> onnx.ModelProto:
    """The tiny model with its inputs typed from the fp32 values that feed them."""
    model = onnx.ModelProto()
    model.CopyFrom(isolated.model)
    del model.graph.input[:]
    for name, source in isolated.feeds.items():
        dtype = onnx.helper.np_dtype_to_tensor_dtype(values[source].dtype)
        model.graph.input.append(onnx.helper.make_tensor_value_info(name, dtype, None))
    return model


@dataclass
class _Tally:
    """Sums over every feed of one layer's reference and quantized output, in float64."""

    signal: float = 0.0  # sum(ref^2)
    noise: float = 0.0  # sum((ref - q)^2)
    dot: float = 0.0
    power: float = 0.0  # sum(q^2)

    def add(self, reference: np.ndarray, quantized: np.ndarray, what: str) -> None:
        if reference.size != quantized.size:
            raise ModelError(f"{what}: the Q/DQ output has shape {list(quantized.shape)}, the "
                             f"fp32 one {list(reference.shape)}; the models do not match")
        ref = reference.astype(np.float64).ravel()
        got = quantized.astype(np.float64).ravel()
        self.signal += float(ref @ ref)
        self.noise += float((ref - got) @ (ref - got))
        self.dot += float(ref @ got)
        self.power += float(got @ got)

    def sqnr_db(self) -> float:
        if math.isnan(self.signal + self.noise):
            return math.nan
        if self.noise == 0.0:
            return math.inf
        return 10 * math.log10(self.signal / self.noise) if self.signal > 0 else -math.inf

    def cosine(self) -> float:
        if self.signal == 0.0 and self.power == 0.0:
            return 1.0  # both all zeros: the same tensor
        norms = math.sqrt(self.signal * self.power)
        return self.dot / norms if norms > 0 else math.nan


def qdq_session(model: onnx.ModelProto, what: str) -> Any:
    """An ONNX Runtime CPU session of a Q/DQ (or fp32) model, as the quantization tools run it.

    Without `ORT_FP8_DISABLED_OPTIMIZERS` (a rule that drops a Relu before a float8 Q; exact for
    int8, so always off), and with threads that do not spin after a run: spinning threads take
    the cores from numpy's statistics between runs (10x slower on ResNet-18 with 2 cores).
    """
    import onnxruntime

    from trtcheck.atomic import session_file
    from trtcheck.quant.quantize import ORT_FP8_DISABLED_OPTIMIZERS
    from trtcheck.run import first_line

    onnxruntime.set_default_logger_severity(3)
    options = onnxruntime.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        with session_file(model) as source:
            return onnxruntime.InferenceSession(
                source, options, providers=["CPUExecutionProvider"],
                disabled_optimizers=list(ORT_FP8_DISABLED_OPTIMIZERS))
    except Exception as err:
        raise BackendRunError(f"onnxrt could not load {what}: {first_line(err)}") from err


def _run(session: Any, feed: dict[str, np.ndarray], what: str) -> dict[str, np.ndarray]:
    from trtcheck.run import first_line

    names = [output.name for output in session.get_outputs()]
    try:
        return dict(zip(names, session.run(names, feed), strict=True))
    except Exception as err:
        raise BackendRunError(f"onnxrt failed to run {what}: {first_line(err)}") from err


def check_feeds(fp32: LoadedModel, feeds: Sequence[dict[str, np.ndarray]]) -> None:
    """Raises `InputDataError` unless there are feeds and each gives every fp32 input."""
    if not feeds:
        raise InputDataError(f"{fp32.path}: no input feeds given; give at least one")
    for number, feed in enumerate(feeds):
        missing = [name for name in fp32.input_names if name not in feed]
        if missing:
            raise InputDataError(f"{fp32.path}: feed {number} has no value for input "
                                 f"'{missing[0]}'; give every input of the fp32 model")


@dataclass
class _Runs:
    """The sessions of one layer-wise measurement and the tallies they add to."""

    pairing: Pairing
    fp32: Any
    qdq: Any
    isolated: list[_Isolated]
    accumulated_tallies: list[_Tally]
    isolated_tallies: list[_Tally]
    tiny_sessions: dict[int, Any] = field(default_factory=dict)


def _start(fp32: LoadedModel, qdq: LoadedModel, pairing: Pairing) -> _Runs:
    from trtcheck.marking import mark_outputs

    isolated = [_isolated(pairing, qdq.proto, index) for index in pairing.layers]
    inputs = set(pairing.fp32.inputs)
    fp32_marks = [pairing.fp32.nodes[pairing.pairs[i]].output[0] for i in pairing.layers]
    fp32_marks += [name for tiny in isolated for name in tiny.feeds.values() if name not in inputs]
    qdq_marks = [pairing.qdq.nodes[i].output[0] for i in pairing.layers]
    return _Runs(pairing,
                 qdq_session(mark_outputs(fp32.proto, fp32_marks), f"{fp32.path} (fp32)"),
                 qdq_session(mark_outputs(qdq.proto, qdq_marks), f"{qdq.path} (Q/DQ)"),
                 isolated, [_Tally() for _ in pairing.layers], [_Tally() for _ in pairing.layers])


def _add_feed(runs: _Runs, qdq: LoadedModel, feed: dict[str, np.ndarray]) -> None:
    pairing = runs.pairing
    qdq_feed = {name: feed[pairing.fp32.inputs[k]] for k, name in enumerate(pairing.qdq.inputs)}
    reference = {**feed, **_run(runs.fp32, dict(feed), "the fp32 model")}
    quantized = _run(runs.qdq, qdq_feed, f"{qdq.path}")
    for k, index in enumerate(pairing.layers):
        node = pairing.qdq.nodes[index]
        expected = reference[pairing.fp32.nodes[pairing.pairs[index]].output[0]]
        what = f"{qdq.path}: layer '{_name(node)}'"
        runs.accumulated_tallies[k].add(expected, quantized[node.output[0]], what)
        tiny = runs.isolated[k]
        if k not in runs.tiny_sessions:
            runs.tiny_sessions[k] = qdq_session(_typed(tiny, reference), f"{what} alone")
        alone = _run(runs.tiny_sessions[k],
                     {name: reference[source] for name, source in tiny.feeds.items()},
                     f"{what} alone")
        runs.isolated_tallies[k].add(expected, alone[node.output[0]], what)


def _rank_key(row: LayerError) -> tuple[bool, float, int]:
    return (math.isnan(row.sqnr_db_isolated), row.sqnr_db_isolated, row.order)


def layerwise_error(fp32: LoadedModel, qdq: LoadedModel,
                    feeds: Sequence[dict[str, np.ndarray]]) -> list[LayerError]:
    """Each quantized layer's error, accumulated and isolated, ranked worst first (isolated SQNR).

    `feeds` are keyed by the fp32 model's input names (the Q/DQ model's inputs are paired by
    position). Raises `ModelError` when `qdq` is not a Q/DQ model of `fp32`.
    """
    check_feeds(fp32, feeds)
    try:
        pairing = pair(fp32.proto, qdq.proto)
    except ModelError as err:
        raise ModelError(f"{qdq.path} vs {fp32.path}: {err}") from err
    runs = _start(fp32, qdq, pairing)
    for feed in feeds:
        _add_feed(runs, qdq, feed)
    rows = []
    for k, index in enumerate(pairing.layers):
        node = pairing.qdq.nodes[index]
        accumulated, isolated = runs.accumulated_tallies[k], runs.isolated_tallies[k]
        rows.append(LayerError(
            node=_name(node), fp32_node=_name(pairing.fp32.nodes[pairing.pairs[index]]),
            op=node.op_type, tensor=node.output[0],
            sqnr_db_accumulated=accumulated.sqnr_db(), cosine_accumulated=accumulated.cosine(),
            sqnr_db_isolated=isolated.sqnr_db(), cosine_isolated=isolated.cosine(), order=k))
    return sorted(rows, key=_rank_key)


def _number(value: float) -> float | str:
    """JSON has no inf/nan: spelled as strings, as every trtcheck report does."""
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return value


def layer_errors_to_dict(rows: Sequence[LayerError]) -> list[dict[str, Any]]:
    """The rows as JSON-ready dicts (inf and nan as strings), in the order given."""
    return [{key: _number(value) if isinstance(value, float) else value
             for key, value in asdict(row).items()} for row in rows]
