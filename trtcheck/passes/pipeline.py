"""Runs passes in order and proves each one harmless, or rolls it back.

After every pass ONNX Runtime runs the new model on the same inputs as the model before it; a pass
that changes any output by more than that output's allowance (relative to the output's largest
magnitude), that produces a model ONNX Runtime cannot run, or that raises, is rolled back and
reported, and the pipeline goes on from the previous model. A final run checks the result against
the original.

The allowance is ONNX Runtime's own noise, measured on the original model before any pass: a
graph pass changes which fusions and kernels ONNX Runtime picks (shape inference lets it fuse
attention differently, for instance), and that alone moves a BERT's outputs by about 1e-6. So the
original also runs a second time and with fewer graph optimizations (`NOISE_SETTINGS`), and each
output may change by `NOISE_MARGIN` times its largest spread there, at least `rtol` and at most
`NOISE_CEILING`, before a pass counts as harmful.
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from trtcheck.errors import BackendRunError, UsageError
from trtcheck.passes import PASSES, PassContext
from trtcheck.passes.base import PassNotApplicable
from trtcheck.run import run_onnx, run_onnx_settings
from trtcheck.tolerance import check_tolerance_value

DEFAULT_RTOL = 1e-6
# The original model's runs that measure ONNX Runtime's noise (names in `run.ORT_SETTINGS`).
NOISE_SETTINGS = ("rerun", "basic", "disabled")
# Kernel choices the measured settings did not hit differ by the same order of magnitude: on the
# real-export zoo, passes that change no arithmetic moved outputs by up to 7x the measured spread
# (bert_tiny_classic after infer-shapes: 2.3e-7 against 3.3e-8). A pass that really changes the
# computation (a wrong weight, a lost node) moves outputs by orders of magnitude more.
NOISE_MARGIN = 10.0
# The noise's share of an allowance stops here: a spread this large is instability, not rounding,
# and allowing it would let real changes through.
NOISE_CEILING = 1e-3

Outputs = list[dict[str, np.ndarray]]


@dataclass
class PassOutcome:
    """What one pass did, and the proof.

    `status` is changed, unchanged, rolled-back, failed, skipped (the pass does not apply to
    this model) or unverified (ONNX Runtime cannot run the original).
    """

    name: str
    status: str
    nodes_before: Counter[str]
    nodes_after: Counter[str]
    # Largest change of each output, relative to the output's largest magnitude.
    max_change: dict[str, float] = field(default_factory=dict)
    message: str | None = None
    seconds: float = 0.0

    @property
    def op_changes(self) -> dict[str, tuple[int, int]]:
        ops = sorted(set(self.nodes_before) | set(self.nodes_after))
        return {op: (self.nodes_before[op], self.nodes_after[op]) for op in ops
                if self.nodes_before[op] != self.nodes_after[op]}


@dataclass(frozen=True)
class NoiseFloor:
    """ONNX Runtime's spread on the original model, and what it allows each pass per output."""

    # Per output: the largest change across `settings`, relative like `relative_change`.
    spread: dict[str, float]
    settings: tuple[str, ...]
    rtol: float
    margin: float = NOISE_MARGIN
    ceiling: float = NOISE_CEILING

    def allowed(self, output: str) -> float:
        """max(rtol, margin x spread), the margin's share capped at `ceiling`.

        An infinite spread (ONNX Runtime's runs disagree on NaNs or shapes) allows nothing more
        than rtol: it says nothing about rounding.
        """
        spread = self.spread.get(output, 0.0)
        if not np.isfinite(spread):
            return self.rtol
        return max(self.rtol, min(self.margin * spread, self.ceiling))

    @property
    def largest(self) -> float:
        return max(self.spread.values(), default=0.0)


@dataclass
class PipelineResult:
    model: onnx.ModelProto
    outcomes: list[PassOutcome]
    # The final model against the original, when ONNX Runtime could run the original.
    final_change: dict[str, float] | None
    verified: bool
    reason_unverified: str | None = None
    noise: NoiseFloor | None = None
    # Where `model`'s weights are, when the passes worked on an offloaded copy (over 2 GB).
    weights_folder: Path | None = None

    @property
    def clean(self) -> bool:
        """No pass failed or was rolled back ("unverified" is clean: it was waived)."""
        return all(o.status in ("changed", "unchanged", "skipped", "unverified")
                   for o in self.outcomes)


def select_passes(names: list[str] | None) -> list[str]:
    """Validates pass names; None selects every pass. Order is always the pipeline's."""
    if names is None:
        return list(PASSES)
    unknown = [name for name in names if name not in PASSES]
    if unknown:
        raise UsageError(f"unknown pass(es) {', '.join(unknown)}; choose from: "
                         f"{', '.join(PASSES)}")
    return [name for name in PASSES if name in names]


def node_counts(model: onnx.ModelProto) -> Counter[str]:
    return Counter(node.op_type for node in model.graph.node)


@contextlib.contextmanager
def _quiet_graphsurgeon() -> Iterator[None]:
    import onnxruntime
    from onnx_graphsurgeon.logger import G_LOGGER

    # graphsurgeon folds with ONNX Runtime, whose optimizer warnings are noise here.
    onnxruntime.set_default_logger_severity(3)
    previous = G_LOGGER.severity
    G_LOGGER.severity = G_LOGGER.CRITICAL
    try:
        yield
    finally:
        G_LOGGER.severity = previous


def _same_value(a: object, b: object) -> bool:
    """Exact equality for outputs that are not numeric tensors: sequences, optionals, strings."""
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same_value(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, np.ndarray) and isinstance(b, np.ndarray):
        if a.dtype.kind in "fc" and b.dtype.kind in "fc":
            return a.shape == b.shape and bool(np.array_equal(a, b, equal_nan=True))
        return a.shape == b.shape and a.dtype == b.dtype and bool(np.array_equal(a, b))
    return type(a) is type(b) and a == b


def _tensor_change(reference: np.ndarray, candidate: np.ndarray) -> float:
    if candidate.shape != reference.shape or candidate.dtype != reference.dtype:
        return float("inf")
    ref64, new64 = reference.astype(np.float64), candidate.astype(np.float64)
    if not (np.isnan(ref64) == np.isnan(new64)).all():
        return float("inf")
    finite = np.isfinite(ref64) & np.isfinite(new64)
    if not np.array_equal(ref64[~finite], new64[~finite], equal_nan=True):
        return float("inf")
    diff = np.abs(ref64[finite] - new64[finite])
    if not diff.size:
        return 0.0
    scale = float(np.abs(ref64[finite]).max())
    worst = float(diff.max())
    return worst / scale if scale > 0 else worst


def relative_change(before: Outputs, after: Outputs) -> dict[str, float]:
    """Per output: max |after - before| / max |before|; inf on a shape, name or NaN mismatch.

    Outputs that are not numeric tensors (sequences, optionals, strings) must be equal: 0 or inf.
    """
    changes: dict[str, float] = {}
    for old, new in zip(before, after, strict=True):
        for name, reference in old.items():
            candidate = new.get(name, _MISSING)
            if isinstance(reference, np.ndarray) and isinstance(candidate, np.ndarray) and \
                    reference.dtype.kind in "biufc" and candidate.dtype.kind in "biufc":
                change = _tensor_change(reference, candidate)
            else:
                change = 0.0 if _same_value(reference, candidate) else float("inf")
            changes[name] = max(changes.get(name, 0.0), change)
        for name in new:
            if name not in old:
                changes[name] = float("inf")
    return changes


_MISSING = object()


def measure_noise(runs: dict[str, Outputs], rtol: float) -> NoiseFloor:
    """The spread of `runs` (setting -> outputs) around the default run, per output."""
    baseline = runs["default"]
    spread = {name: 0.0 for name in baseline[0]} if baseline else {}
    settings = tuple(setting for setting in runs if setting != "default")
    for setting in settings:
        for name, change in relative_change(baseline, runs[setting]).items():
            spread[name] = max(spread.get(name, 0.0), change)
    return NoiseFloor(spread, settings, rtol)


def _worst_excess(change: dict[str, float], noise: NoiseFloor) -> tuple[str, float] | None:
    """The output whose change most exceeds its allowance, or None when every one is within."""
    over = [(name, value) for name, value in change.items() if value > noise.allowed(name)]
    return max(over, key=lambda item: item[1]) if over else None


def run_pipeline(model: onnx.ModelProto, names: list[str], context: PassContext,
                 feeds: Outputs, rtol: float = DEFAULT_RTOL,
                 weights_folder: Path | None = None) -> PipelineResult:
    """Applies the named passes in pipeline order, verifying each with ONNX Runtime.

    `weights_folder` holds the external data `model` refers to (see `model.offload_weights`).
    """
    rtol = check_tolerance_value(f"rtol {rtol!r}", rtol)  # nan would let every change through
    noise = None
    try:
        runs = run_onnx_settings(model, feeds, ("default", *NOISE_SETTINGS), weights_folder)
        baseline: Outputs | None = runs["default"]
        noise = measure_noise(runs, rtol)
        reason = None
    except BackendRunError as err:
        baseline, reason = None, f"ONNX Runtime cannot run the original model: {err}"
    current, current_outputs = model, baseline
    outcomes = []
    with _quiet_graphsurgeon():
        for name in names:
            graph_pass = PASSES[name]
            started = time.perf_counter()
            before = node_counts(current)
            try:
                candidate = graph_pass.run(current, context)
            except PassNotApplicable as err:
                outcomes.append(PassOutcome(name, "skipped", before, before, message=str(err),
                                            seconds=time.perf_counter() - started))
                continue
            except Exception as err:
                outcomes.append(PassOutcome(name, "failed", before, before,
                                            message=f"{type(err).__name__}: {err}",
                                            seconds=time.perf_counter() - started))
                continue
            outcome = PassOutcome(name, "changed", before, node_counts(candidate))
            if candidate.graph == current.graph:
                outcome.status = "unchanged"
            elif current_outputs is not None:
                try:
                    candidate_outputs = run_onnx(candidate, feeds, weights_folder)
                except BackendRunError as err:
                    outcome.status, outcome.message = "rolled-back", (
                        f"ONNX Runtime cannot run the result: {err}")
                    candidate_outputs = None
                if candidate_outputs is not None:
                    assert noise is not None
                    outcome.max_change = relative_change(current_outputs, candidate_outputs)
                    excess = _worst_excess(outcome.max_change, noise)
                    if excess is not None:
                        output, worst = excess
                        outcome.status = "rolled-back"
                        outcome.message = (
                            f"changed output '{output}' by {worst:.3g} (relative), over the "
                            f"{noise.allowed(output):.3g} allowed (rtol {rtol:g}; ONNX "
                            f"Runtime's own spread {noise.spread.get(output, 0.0):.3g} x "
                            f"{noise.margin:g}, at most {noise.ceiling:g})")
                    else:
                        current_outputs = candidate_outputs
            else:
                outcome.status = "unverified"
            if outcome.status == "rolled-back":
                outcome.nodes_after = before
            else:
                current = candidate
            outcome.seconds = time.perf_counter() - started
            outcomes.append(outcome)
    final_change = None
    if baseline is not None and current_outputs is not None:
        final_change = relative_change(baseline, current_outputs)
    return PipelineResult(current, outcomes, final_change, baseline is not None, reason, noise,
                          weights_folder)
