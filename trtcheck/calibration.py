"""`trtcheck tolerances`: measure each output's error over input sets and propose tolerances.

The error of a target against the reference is measured per output over several seeds (or the
input sets of a recorded file), and a tolerance is proposed as a margin times what was measured.
It refuses to calibrate across a fault, since a tolerance wide enough to pass a fault hides it:
- inf/nan in the target where the reference is finite;
- an overflow found by the range audit of the fp32 activations (`debug.audit`; attention-mask
  fills excluded, nodes kept in fp32 excluded);
- a collapsed cosine similarity (below `COLLAPSED_COSINE`): the target computes something else.

A proposal never rests on a statistic the output's size cannot carry: outputs under
`MIN_QUANTILE_ELEMENTS` elements get a max (elementwise) check only. An output whose channels
(last axis) differ in magnitude by `MIXED_SCALE_RATIO` or more (boxes in pixels beside scores)
gets an atol sized on its small channels and an rtol for the large ones (Polygraphy's elementwise
rule fails an element only when it exceeds both), or, when no such pair is tight, the advice to
split it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from trtcheck.errors import UsageError

COLLAPSED_COSINE = 0.99
MIN_QUANTILE_ELEMENTS = 1000
QUANTILE = 0.999
MIXED_SCALE_RATIO = 100.0
# A max check whose atol reaches this share of the output's largest |value| checks little.
VACUOUS_SHARE = 0.1
# An rtol above this for the large channels of a mixed output is no check: split it instead.
MAX_USEFUL_RTOL = 0.1


@dataclass
class OutputMeasure:
    """One output's error, accumulated over the input sets."""

    name: str
    elements: int = 0
    scale: float = 0.0
    max_abs_error: float = 0.0
    quantile_abs_error: float = 0.0
    min_cosine: float | None = None
    nonfinite: int = 0
    # Per last-axis channel: largest |reference| and largest |error|.
    channel_scale: np.ndarray | None = None
    errors: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)

    def add(self, target: np.ndarray, reference: np.ndarray) -> None:
        from trtcheck.compare import cosine_similarity

        ref64, tgt64 = reference.astype(np.float64), target.astype(np.float64)
        finite = np.isfinite(ref64)
        self.nonfinite += int((finite & ~np.isfinite(tgt64)).sum())
        self.elements = int(reference.size)
        if not finite.any():
            return
        with np.errstate(invalid="ignore", over="ignore"):
            error = np.where(finite, np.abs(tgt64 - ref64), 0.0)
        error[np.isnan(error)] = math.inf
        self.scale = max(self.scale, float(np.abs(ref64[finite]).max()))
        self.max_abs_error = max(self.max_abs_error, float(error.max()))
        if reference.size >= MIN_QUANTILE_ELEMENTS:
            self.quantile_abs_error = max(self.quantile_abs_error,
                                          float(np.quantile(error, QUANTILE)))
        cosine = cosine_similarity(target, reference)
        if cosine is not None:
            self.min_cosine = cosine if self.min_cosine is None else min(self.min_cosine, cosine)
        if reference.ndim >= 2 and 2 <= reference.shape[-1] <= 64:
            self.errors.append((np.abs(np.where(finite, ref64, 0.0)), error))


@dataclass(frozen=True)
class Proposal:
    """Tolerance fields for one output (None: no proposal) and how they were chosen."""

    output: str
    fields: dict[str, Any] | None
    why: str


@dataclass
class Calibration:
    target: str
    precision: str
    input_sets: str
    margin: float
    measures: list[OutputMeasure]
    faults: list[str]
    proposals: list[Proposal] = field(default_factory=list)

    def measured_text(self) -> str:
        parts = [f"{p.output}: {p.why}" for p in self.proposals if p.fields is not None]
        return f"trtcheck tolerances over {self.input_sets}: " + "; ".join(parts)


def round_up(value: float) -> float:
    """Two significant digits, rounded up, so the tolerance never undercuts the margin."""
    if value <= 0:
        return 0.0
    exponent = math.floor(math.log10(value)) - 1
    return float(f"{math.ceil(value / 10**exponent - 1e-9) * 10**exponent:.3g}")


def _mixed_proposal(measure: OutputMeasure, margin: float) -> Proposal | None:
    """Atol from the small channels, rtol for the large ones; None when the scales do not mix."""
    scales = np.max([ref.reshape(-1, ref.shape[-1]).max(axis=0) for ref, _ in measure.errors],
                    axis=0)
    nonzero = scales[scales > 0]
    if nonzero.size < 2 or nonzero.max() / nonzero.min() < MIXED_SCALE_RATIO:
        return None
    small = scales < nonzero.max() / MIXED_SCALE_RATIO
    flat = [(ref.reshape(-1, ref.shape[-1]), err.reshape(-1, err.shape[-1]))
            for ref, err in measure.errors]
    atol = round_up(margin * max(float(err[:, small].max()) for _, err in flat))
    needed = 0.0
    for ref, err in flat:
        large_ref, large_err = ref[:, ~small], err[:, ~small]
        over = large_err > atol
        if over.any():
            with np.errstate(divide="ignore"):
                needed = max(needed, float((large_err[over] / large_ref[over]).max()))
    channels = (f"channels {np.flatnonzero(~small).tolist()} reach {nonzero.max():.3g}, "
                f"channels {np.flatnonzero(small).tolist()} {scales[small].max():.3g}")
    rtol = round_up(margin * needed)
    if not math.isfinite(rtol) or rtol > MAX_USEFUL_RTOL:
        return Proposal(measure.name, None,
                        f"mixes scales ({channels}) and no atol/rtol pair is tight for both "
                        "(the large channels would need rtol "
                        f"{rtol:.3g}); split it in the model, or declare it a detection output")
    return Proposal(measure.name, {"atol": atol, "rtol": rtol, "check_error_stat": "elemwise"},
                    f"mixes scales ({channels}): atol {atol:g} = {margin:g}x the small channels' "
                    f"max error, rtol {rtol:g} = {margin:g}x the large channels' relative error "
                    "beyond it (an element fails only past both)")


def propose(measure: OutputMeasure, margin: float) -> Proposal:
    """The tolerance for one measured output (module docstring)."""
    if measure.elements == 0 or measure.scale == 0:
        return Proposal(measure.name, None, "empty or all zero in the reference: nothing to "
                                            "calibrate on; give inputs that exercise it")
    if measure.errors:
        mixed = _mixed_proposal(measure, margin)
        if mixed is not None:
            return mixed
    atol = round_up(margin * measure.max_abs_error)
    size = f"{measure.elements} elements, max|ref| {measure.scale:.3g}"
    if atol < VACUOUS_SHARE * measure.scale or measure.elements < MIN_QUANTILE_ELEMENTS:
        return Proposal(measure.name, {"atol": atol, "rtol": 0.0, "check_error_stat": "elemwise"},
                        f"max abs error {measure.max_abs_error:.3g} ({size}); atol = "
                        f"{margin:g}x that")
    # A few elements carry most of the error: a max check that passes them checks nothing else.
    q_atol = round_up(margin * measure.quantile_abs_error)
    return Proposal(measure.name, {"atol": q_atol, "rtol": 0.0, "check_error_stat": "quantile",
                                   "error_quantile": QUANTILE},
                    f"{QUANTILE:g} quantile abs error {measure.quantile_abs_error:.3g} (max "
                    f"{measure.max_abs_error:.3g} would need atol {atol:g}, {size}); atol = "
                    f"{margin:g}x the quantile")


def measure_outputs(run_results, reference_name: str, target_name: str) -> list[OutputMeasure]:
    measures: dict[str, OutputMeasure] = {}
    for ref_it, tgt_it in zip(run_results[reference_name], run_results[target_name],
                              strict=True):
        for name, reference in ref_it.items():
            reference, target = np.asarray(reference), np.asarray(tgt_it[name])
            if not np.issubdtype(reference.dtype, np.floating) or target.shape != reference.shape:
                continue
            measures.setdefault(name, OutputMeasure(name)).add(target, reference)
    return list(measures.values())


def faults_of(measures: list[OutputMeasure]) -> list[str]:
    """The faults one input set shows, without saying which set (the caller groups them)."""
    faults = []
    for m in measures:
        if m.nonfinite:
            faults.append(f"output {m.name}: inf/nan in the target where the reference is finite")
        elif m.min_cosine is not None and m.elements > 1 and m.min_cosine < COLLAPSED_COSINE:
            faults.append(f"output {m.name}: cosine similarity below {COLLAPSED_COSINE:g} (the "
                          "target computes something else)")
    return faults


def audit_faults(model_path: Path, inputs, precision: str, keep_fp32: frozenset[str]) -> list[str]:
    """Overflows of the fp32 activations in `precision` (mask fills and kept nodes excluded)."""
    from trtcheck.debug import audit_model

    findings = [f for f in audit_model(model_path, inputs, (precision,))
                if f.kind == "overflow" and f.node not in keep_fp32]
    return [f"range audit: {f.describe()} (node {f.node})" for f in findings]


def calibrate(request, seeds: int, margin: float, verbose: bool = False) -> Calibration:
    """Runs `request` (a `core.CompareRequest`) over the input sets and proposes tolerances."""
    from trtcheck.core import compare_model
    from trtcheck.run import ReferenceCache
    from trtcheck.tolerance import ToleranceRequest

    explicit = ToleranceRequest({"atol": {"": 0.0}, "rtol": {"": 0.0}})
    recorded = request.inputs.recorded is not None
    seed_list = [request.inputs.seed] if recorded else list(range(request.inputs.seed,
                                                                  request.inputs.seed + seeds))
    cache = ReferenceCache()
    measures: dict[str, OutputMeasure] = {}
    seen: dict[str, list[str]] = {}
    result = None
    for seed in seed_list:
        run = dataclasses.replace(request, tolerances=explicit,
                                  inputs=dataclasses.replace(request.inputs, seed=seed))
        result = compare_model(run, verbose=verbose, reference_cache=cache)
        where = f"input set {seed}" if recorded else f"seed {seed}"
        new = measure_outputs(result.run_results, f"reference:{result.reference.name}",
                              f"target:{result.target.name}")
        for fault in faults_of(new):
            seen.setdefault(fault, []).append(where)
        for m in new:
            merged = measures.setdefault(m.name, OutputMeasure(m.name))
            merged.nonfinite += m.nonfinite
            merged.elements = m.elements
            merged.scale = max(merged.scale, m.scale)
            merged.max_abs_error = max(merged.max_abs_error, m.max_abs_error)
            merged.quantile_abs_error = max(merged.quantile_abs_error, m.quantile_abs_error)
            if m.min_cosine is not None:
                merged.min_cosine = m.min_cosine if merged.min_cosine is None else min(
                    merged.min_cosine, m.min_cosine)
            merged.errors += m.errors
    assert result is not None
    faults = [f"{fault} ({', '.join(wheres)})" for fault, wheres in seen.items()]
    lowest = {m.name: m.min_cosine for m in measures.values() if m.min_cosine is not None}
    faults = [f.replace("cosine similarity below", f"cosine similarity {lowest[name]:.4f} below")
              if (name := f.split(":")[0].removeprefix("output ")) in lowest else f
              for f in faults]
    precision = result.target.precision
    if precision in ("fp16", "bf16"):
        faults += audit_faults(Path(result.model_path), request.inputs,
                               precision, request.options.keep_fp32)
    if recorded:
        sets = len(result.feeds.iterations)
        input_sets = f"{sets} recorded input set(s) of {request.inputs.recorded.name}"
    else:
        input_sets = (f"seed {seed_list[0]}" if len(seed_list) == 1
                      else f"seeds {seed_list[0]}-{seed_list[-1]}")
    calibration = Calibration(result.target.name, precision, input_sets, margin,
                              list(measures.values()), faults)
    if not faults:
        calibration.proposals = [propose(m, margin) for m in calibration.measures]
    return calibration


# ---------------------------------------------------------------------------------------------
# Suite files


def _key(name: str) -> str:
    return name if re.fullmatch(r"[A-Za-z0-9_-]+", name) else json.dumps(name)


def toml_snippet(calibration: Calibration, target_name: str) -> str:
    """The `[case.tolerance_by_target.TARGET]` table, as text to paste into a suite."""
    import tomlkit

    document = tomlkit.document()
    document.add("tolerance", _tolerance_table(calibration))
    text = tomlkit.dumps(document)
    return text.replace("[tolerance", f"[case.tolerance_by_target.{_key(target_name)}")


def _tolerance_table(calibration: Calibration):
    import tomlkit

    table = tomlkit.table()
    outputs = tomlkit.table(is_super_table=True)
    for proposal in calibration.proposals:
        if proposal.fields is None:
            continue
        inline = tomlkit.inline_table()
        inline.update(proposal.fields)
        outputs.add(proposal.output, inline)
    table.add("outputs", outputs)
    table.add("measured", calibration.measured_text())
    return table


def suite_target(document, backend: str, chosen: str | None, path: Path) -> str:
    """The suite's target name for `backend` (or `chosen`); UsageError when none or several."""
    targets = document.get("targets", {})
    if chosen is not None:
        if chosen not in targets:
            raise UsageError(f"--suite-target {chosen}: {path} has no [targets.{chosen}]; its "
                             f"targets are: {', '.join(targets) or 'none'}")
        return chosen
    names = [name for name, spec in targets.items() if spec.get("backend") == backend]
    if len(names) != 1:
        found = "none" if not names else ", ".join(names)
        raise UsageError(f"--write-suite {path}: targets with backend '{backend}': {found}; "
                         "name one with --suite-target NAME (add [targets.NAME] with backend = "
                         f"\"{backend}\" if there is none)")
    return names[0]


def write_suite(path: Path, case_name: str, calibration: Calibration,
                target_name: str | None) -> str:
    """Writes the proposals into `path`'s case `case_name`, keeping the rest of the file.

    The table `[case.tolerance_by_target.TARGET]` of that case is replaced; comments, order and
    other cases stay as they were (tomlkit). The result must load as a suite, or nothing is
    written. Returns the suite target's name.
    """
    import tomlkit
    from tomlkit.exceptions import TOMLKitError

    from trtcheck.atomic import write_text
    from trtcheck.suite import load_suite

    try:
        original = path.read_text(encoding="utf-8")
        document = tomlkit.parse(original)
    except (OSError, UnicodeDecodeError, TOMLKitError) as err:
        raise UsageError(f"--write-suite {path}: cannot read it as TOML ({err})") from None
    name = suite_target(document, calibration.target, target_name, path)
    cases = [case for case in document.get("case", []) if case.get("name") == case_name]
    if len(cases) != 1:
        raise UsageError(f"--case {case_name}: {path} has {len(cases)} [[case]] named "
                         f"'{case_name}'; add one with its model first")
    by_target = cases[0].setdefault("tolerance_by_target", tomlkit.table(is_super_table=True))
    by_target[name] = _tolerance_table(calibration)
    write_text(path, tomlkit.dumps(document))
    try:
        load_suite(path)
    except Exception:
        write_text(path, original)
        raise
    return name
