"""Probe runs: the reference and the target with intermediate tensors marked, judged, then dropped.

A bisection needs a verdict per tensor, not the tensors: each run marks a batch of tensors, the
batch is judged (and audited) as soon as both runs return, and the arrays are released before
the next batch. Batches are sized from each tensor's byte size (shape inference on the fed
shapes; the largest size seen so far where inference cannot tell) so that the arrays held at
once stay within a memory budget, whatever the model's size.

Only tensors a run can return are marked: not graph inputs, weights or `Constant` outputs, which
are exact on every backend (see `run.markable_tensors`).

The criterion: every tensor is held to the failing output's tolerance (`compare.tensor_verdict`:
the same statistic, rtol, cosine and SNR minimums), with atol scaled by the tensor's magnitude,
`atol_t = atol * max|reference_t| / max|reference_output|`: an error as large, relative to the
values it rides on, as the output is allowed. On the failing output itself this is exactly
compare's check.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np
import onnx

from trtcheck.compare import tensor_verdict
from trtcheck.debug.audit import (
    RangeFinding,
    audit_tensor,
    masked_positions,
    masked_probabilities_zero,
    softmax_outputs,
)
from trtcheck.marking import markable_tensors
from trtcheck.run import Activations, Feed, run_marked
from trtcheck.tolerance import TOP1, VALUES, Tolerance

if TYPE_CHECKING:
    from trtcheck.backend_names import Backend
    from trtcheck.backends import BackendOptions
    from trtcheck.model import LoadedModel

# Arrays held at once during a batch: the reference's and the target's (ONNX Runtime hands its
# outputs over without a lasting copy; measured on ViT-B/16, GPT-2 and BERT-base: a batch of B
# bytes raised the peak by about 1.5 B).
_COPIES_PER_BATCH = 2
_MIB = 1 << 20


def default_max_memory() -> int:
    """A quarter of the memory available now, between 256 MiB and 1.5 GiB."""
    available = 0
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024
                    break
    except OSError:
        pass
    if not available:
        available = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    return int(min(max(available // 4, 256 * _MIB), 1536 * _MIB))


@dataclass(frozen=True)
class Probe:
    """One bisection of one output of one model on one target: what every run needs."""

    model: LoadedModel
    reference: Backend
    target: Backend
    options: BackendOptions
    feed: Feed
    output: str
    tolerance: Tolerance
    # max |reference| of the failing output (finite values), the scale atol is carried from.
    output_scale: float
    max_memory: int
    # The `trtcheck compare` command of the failing comparison, for the repro folder.
    command: str = ""
    # The failing output as the reference computed it without marks (compare's run): a fix is
    # verified against this, since marking can change ONNX Runtime's kernels (Q/DQ fusion).
    output_reference: np.ndarray | None = None

    def with_options(self, options: BackendOptions) -> Probe:
        return replace(self, options=options)

    def tolerance_for(self, reference_scale: float, tensor: str | None = None) -> Tolerance:
        """The output's tolerance carried onto a tensor whose largest |value| is given.

        A class-score output's top-1 criterion is for that output only: the tensors before it
        are held to the values rule its tolerance carries (atol, statistic, cosine floor).
        """
        tolerance = self.tolerance
        if tensor != self.output and tolerance.criterion == TOP1:
            tolerance = replace(tolerance, criterion=VALUES, min_magnitude=None)
        if self.output_scale > 0:
            atol = tolerance.atol * reference_scale / self.output_scale
        else:
            atol = tolerance.atol
        return replace(tolerance, atol=atol)


@dataclass(frozen=True)
class Measure:
    """One tensor's verdict and the numbers behind it."""

    failed: bool
    max_abs_error: float
    # max |reference| over finite values.
    scale: float
    atol: float

    @property
    def error(self) -> float:
        """Max |target - reference| relative to max |reference| (inf when non-finite)."""
        return self.max_abs_error / self.scale if self.scale > 0 else self.max_abs_error


def measure(target: np.ndarray, reference: np.ndarray, probe: Probe, tensor: str) -> Measure:
    scale = _scale(reference)
    tolerance = probe.tolerance_for(scale, tensor)
    failed = tensor_verdict(target, reference, tolerance)
    if target.shape != reference.shape:
        return Measure(True, math.inf, scale, tolerance.atol)
    ref64, tgt64 = reference.astype(np.float64), target.astype(np.float64)
    finite = np.isfinite(ref64)
    if (finite & ~np.isfinite(tgt64)).any():
        return Measure(failed, math.inf, scale, tolerance.atol)
    with np.errstate(invalid="ignore"):
        diff = np.abs(tgt64[finite] - ref64[finite])
    return Measure(failed, float(diff.max()) if diff.size else 0.0, scale, tolerance.atol)


def _scale(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)] if np.issubdtype(values.dtype, np.floating) else values
    return float(np.abs(finite.astype(np.float64)).max()) if finite.size else 0.0


@dataclass
class TensorGraph:
    """The model's float tensors in topological order, as integers for `debug.search`."""

    names: list[str]
    producers: dict[str, onnx.NodeProto]
    index: dict[str, int] = field(default_factory=dict)
    feeds_of: dict[int, list[int]] = field(default_factory=dict)
    # Estimated bytes per tensor, None where shape inference could not tell.
    sizes: dict[str, int | None] = field(default_factory=dict)

    @classmethod
    def build(cls, model: onnx.ModelProto, feed: Feed) -> TensorGraph:
        types = _inferred_types(model, feed)
        markable = set(markable_tensors(model))
        producers: dict[str, onnx.NodeProto] = {}
        names: list[str] = []
        for node in model.graph.node:  # ONNX requires topological order
            for output in node.output:
                if not output:
                    continue
                producers[output] = node
                dtype = types.get(output, (None, None))[0]
                if output in markable and (dtype is None or np.issubdtype(dtype, np.floating)):
                    names.append(output)
        graph = cls(names, producers)
        graph.sizes = {name: types.get(name, (None, None))[1] for name in names}
        graph.reindex()
        return graph

    def reindex(self) -> None:
        self.index = {name: i for i, name in enumerate(self.names)}
        self.feeds_of = {i: sorted({self.index[t] for t in self._upstream(name)})
                         for i, name in enumerate(self.names)}

    def drop(self, names: Iterable[str]) -> None:
        """Forgets tensors that turned out not to be float (their type was unknown)."""
        gone = set(names)
        if gone:
            self.names = [n for n in self.names if n not in gone]
            self.reindex()

    def _upstream(self, name: str) -> set[str]:
        """Probe-able tensors feeding `name`'s producer, looking through the others."""
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

    def node_of(self, i: int) -> onnx.NodeProto:
        return self.producers[self.names[i]]


def _inferred_types(model: onnx.ModelProto, feed: Feed) -> dict[str, tuple[np.dtype | None,
                                                                           int | None]]:
    """Tensor -> (numpy dtype, bytes) from shape inference on the fed shapes, where it can tell."""
    shaped = onnx.ModelProto()
    shaped.CopyFrom(model)
    # Large weights are not needed to infer shapes (small ones may be shapes: kept).
    for initializer in shaped.graph.initializer:
        if initializer.data_location == onnx.TensorProto.EXTERNAL or \
                len(initializer.raw_data) > 4096:
            initializer.ClearField("raw_data")
            initializer.ClearField("external_data")
            initializer.data_location = onnx.TensorProto.DEFAULT
    known = {i.name for i in shaped.graph.initializer}
    for graph_input in shaped.graph.input:
        array = feed.get(graph_input.name)
        if array is None or graph_input.name in known:
            continue
        dims = graph_input.type.tensor_type.shape.dim
        for dim, size in zip(dims, array.shape, strict=False):
            dim.Clear()
            dim.dim_value = int(size)
    try:
        # data_prop follows Shape -> Gather -> Concat -> Reshape chains, as exporters write them.
        inferred = onnx.shape_inference.infer_shapes(shaped, strict_mode=False, data_prop=True)
    except Exception:  # a model shape inference cannot handle: sizes stay unknown
        return {}
    result: dict[str, tuple[np.dtype | None, int | None]] = {}
    for info in [*inferred.graph.value_info, *inferred.graph.output]:
        tensor_type = info.type.tensor_type
        if not info.type.HasField("tensor_type") or not tensor_type.elem_type:
            continue
        try:
            dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type))
        except (KeyError, TypeError, ValueError):
            continue
        nbytes: int | None = None
        if tensor_type.HasField("shape") and all(d.HasField("dim_value")
                                                 for d in tensor_type.shape.dim):
            nbytes = int(np.prod([d.dim_value for d in tensor_type.shape.dim],
                                 dtype=np.int64)) * dtype.itemsize
        result[info.name] = (dtype, nbytes)
    return result


@dataclass
class BatchedRun:
    """What one pass over every tensor found: verdicts, measures, audit findings."""

    measured: dict[str, Measure] = field(default_factory=dict)
    findings: list[RangeFinding] = field(default_factory=list)
    # (Softmax input, precision) pairs whose masked positions are harmless.
    harmless_masks: set[tuple[str, str]] = field(default_factory=set)
    # (Softmax input, precision) -> masked positions, until a reduced run confirms them.
    mask_candidates: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)
    batches: list[list[str]] = field(default_factory=list)
    not_float: set[str] = field(default_factory=set)


class ByteBudget:
    """A `keep` for `run_batches`: keeps arrays while their bytes fit the budget."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.left = budget

    def __call__(self, name: str, values: np.ndarray) -> bool:
        if values.nbytes > self.left:
            return False
        self.left -= values.nbytes
        return True


class Batcher:
    """Cuts the next batch of tensors (in order) whose estimated bytes fit `budget`.

    Estimates are the inferred or measured sizes. A tensor whose size shape inference could not
    tell takes, when an op that keeps sizes (elementwise ops, Reshape, Transpose, Softmax, norms)
    produced it, the largest size among that op's inputs; otherwise (shapes that depend on data,
    as after NMS) it counts as the largest inferred size until some were measured, and as twice
    their mean size after that, and the first batch takes few of them.
    """

    UNKNOWN_IN_FIRST_BATCH = 32

    def __init__(self, names: Sequence[str], sizes: dict[str, int | None], budget: int,
                 producers: dict[str, onnx.NodeProto] | None = None,
                 other_sizes: dict[str, int] | None = None) -> None:
        self.pending = list(names)
        self.sizes = {**(other_sizes or {}), **sizes}
        self.budget = budget
        self.producers = producers or {}
        self.unknown = {name for name, size in sizes.items() if size is None}
        self.largest = max((s for s in sizes.values() if s), default=1 << 20)
        self.unknown_measured: list[int] = []

    def _propagated(self, name: str) -> int | None:
        """The size an op that keeps sizes gives `name`, from its inputs' sizes, if known."""
        node = self.producers.get(name)
        if node is None or node.op_type not in SIZE_KEEPING or node.domain not in ("", "ai.onnx"):
            return None
        sizes = [self.sizes.get(t) for t in node.input if t]
        known = [size for size in sizes if size]
        return max(known) if known else None

    def next(self) -> list[str]:
        batch: list[str] = []
        used = unknown = 0
        while self.pending:
            name = self.pending[0]
            size = self.sizes.get(name)
            if size is None and (size := self._propagated(name)) is not None:
                self.sizes[name] = size  # an estimate until the run measures it
            if size is None:
                if not self.unknown_measured and unknown >= self.UNKNOWN_IN_FIRST_BATCH:
                    break
                size = self.estimate
            if batch and used + size > self.budget:
                break
            batch.append(self.pending.pop(0))
            used += size
            unknown += self.sizes.get(name) is None
        return batch

    @property
    def estimate(self) -> int:
        if not self.unknown_measured:
            return self.largest
        # Twice the mean: data-dependent sizes vary (a detector's feature maps against its RoIs).
        return 2 * sum(self.unknown_measured) // len(self.unknown_measured) + 1

    def observed(self, arrays: Activations) -> None:
        for name, array in arrays.items():
            if name in self.unknown and self.sizes.get(name) is None:
                self.unknown_measured.append(array.nbytes)
            self.sizes[name] = array.nbytes


# Ops whose float output is as large as their largest input (elementwise with broadcasting,
# reshapes, normalisations): the size of one tells the size of the other.
SIZE_KEEPING = frozenset({
    "Add", "Sub", "Mul", "Div", "Pow", "Where", "Max", "Min", "Sum", "Mean", "Relu", "LeakyRelu",
    "Gelu", "Erf", "Tanh", "Sigmoid", "HardSigmoid", "HardSwish", "Elu", "Selu", "Softplus",
    "Exp", "Log", "Sqrt", "Reciprocal", "Neg", "Abs", "Clip", "Cast", "CastLike", "Identity",
    "Dropout", "Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Softmax",
    "LogSoftmax", "LayerNormalization", "BatchNormalization", "InstanceNormalization",
    "GroupNormalization", "Mish", "PRelu", "Not", "Equal", "Less", "Greater",
})


def batches_within(names: Sequence[str], sizes: dict[str, int | None], budget: int) -> \
        list[list[str]]:
    """The batches a `Batcher` cuts when no run tells it more (for planning and tests)."""
    batcher = Batcher(names, sizes, budget)
    batches = []
    while batch := batcher.next():
        batches.append(batch)
    return batches


def run_batches(probe: Probe, graph: TensorGraph, names: Sequence[str], *, judge: bool,
                audit_precisions: tuple[str, ...] = (),
                keep: ByteBudget | None = None) -> tuple[BatchedRun, Activations]:
    """Runs the reference (and with `judge` the target) over `names` in memory-bounded batches.

    Returns the measures and findings, plus the reference arrays that `keep` keeps (its budget
    is taken from the batches').
    """
    result = BatchedRun()
    kept: Activations = {}
    reserved = keep.budget if keep is not None else 0
    budget = max((probe.max_memory - reserved) // _COPIES_PER_BATCH, 1)
    producers = {name: graph.producers[name].name or graph.producers[name].op_type
                 for name in names if name in graph.producers}
    softmax = softmax_outputs(probe.model.proto)
    other_sizes = {name: array.nbytes for name, array in probe.feed.items()}
    batcher = Batcher(names, graph.sizes, budget, graph.producers, other_sizes)
    number = 0
    while batch := batcher.next():
        number += 1
        result.batches.append(batch)
        reference = run_marked(probe.model, probe.reference, probe.options, probe.feed, batch,
                               f"reference:batch{number}")
        batcher.observed(reference)
        for name in batch:
            values = reference.get(name)
            if values is None or not np.issubdtype(values.dtype, np.floating):
                result.not_float.add(name)
                continue
            result.findings += audit_tensor(name, values, producers.get(name, ""),
                                            audit_precisions)
            if name in softmax:
                for precision in audit_precisions:
                    masked = masked_positions(values, precision)
                    if masked is not None:
                        result.mask_candidates[(name, precision)] = masked
            if keep is not None and keep(name, values):
                kept[name] = values
        if judge:
            target = run_marked(probe.model, probe.target, probe.options, probe.feed, batch,
                                f"target:batch{number}")
            for name in batch:
                if name in result.not_float or name not in target:
                    continue
                result.measured[name] = measure(target[name], reference[name], probe, name)
            del target
        del reference
    _confirm_masks(probe, result, softmax)
    return result, kept


def _confirm_masks(probe: Probe, result: BatchedRun, softmax: dict[str, str]) -> None:
    """Runs each audited precision emulated, with the candidate Softmax outputs marked."""
    from trtcheck.backend_names import get_backend

    for precision in sorted({p for _, p in result.mask_candidates}):
        candidates = {x: masked for (x, p), masked in result.mask_candidates.items()
                      if p == precision}
        emulated = get_backend(f"onnxrt-{precision}")
        observed = run_marked(probe.model, emulated, probe.options, probe.feed,
                              [softmax[x] for x in candidates], f"{emulated.name}:masks")
        result.harmless_masks.update(
            (x, precision) for x, masked in candidates.items()
            if softmax[x] in observed and masked_probabilities_zero(observed[softmax[x]],
                                                                     masked))


class SearchProber:
    """Judges a few tensors per target run (search mode).

    Reference values come from `reference_values` (kept from the audit's batches, within the
    memory budget); tensors not there are marked in a reference run of their own.
    """

    def __init__(self, probe: Probe, graph: TensorGraph,
                 reference_values: Activations | None = None) -> None:
        self.probe = probe
        self.graph = graph
        self.reference_values = reference_values or {}
        self.measured: dict[str, Measure] = {}
        self.runs: list[list[str]] = []

    def __call__(self, tensors: Iterable[int]) -> dict[int, bool]:
        names = [self.graph.names[i] for i in tensors]
        self.runs.append(names)
        number = len(self.runs)
        missing = [n for n in names if n not in self.reference_values]
        reference = dict(self.reference_values)
        if missing:
            reference.update(run_marked(self.probe.model, self.probe.reference,
                                        self.probe.options, self.probe.feed, missing,
                                        f"reference:probe{number}"))
        target = run_marked(self.probe.model, self.probe.target, self.probe.options,
                            self.probe.feed, names, f"target:probe{number}")
        verdicts = {}
        for name in names:
            self.measured[name] = measure(target[name], reference[name], self.probe, name)
            verdicts[self.graph.index[name]] = self.measured[name].failed
        return verdicts
