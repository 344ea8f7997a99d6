"""Runs trtcheck's precision realisations (emulate, convert) on every ONNX backend node test case.

What it checks, over the ~1,900 single-operator models of onnx's backend test suite, on the
cases where ONNX Runtime runs the original model with the case's own inputs
(test_data_set_0):

1. `emulate(model, PrecisionPlan("fp16"))` and `PrecisionPlan("bf16")`: ONNX Runtime creates a
   session for the emulated model and runs it on the same inputs, and its outputs have the
   original's names and element types;
2. `convert(model, PrecisionPlan("fp16"))`: the converted model passes
   `onnx.checker.check_model(m, full_check=True)` wherever the original does; ONNX Runtime is
   also asked to run it. ONNX Runtime's CPU provider lacks float16 support for some operators
   (see `_ort_lacks_fp16`); those cases are counted apart and are not failures, every other
   ONNX Runtime error on a converted model is;
3. neither call modifies the model it is given.

Numbers are not compared: reduced precision is meant to change them.

Run it from the repository root, in the venv where trtcheck is installed:

    python bench/precision_on_node_tests.py
    python bench/precision_on_node_tests.py --filter resize --limit 20 --json precision.json

Exit code 0: no failure of the kinds above, no case timed out, no worker crashed and no harness
error; 1 otherwise.
"""

from __future__ import annotations

import collections
import io
import re
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _node_tests import (  # noqa: E402  (bench/ is not a package)
    CRASH,
    TIMEOUT_KIND,
    Job,
    bench_main,
    first_line,
    load_case,
    ort_outputs,
    where_raised,
)

TIMEOUT = 60.0  # seconds per case, all realisations together
EXAMPLES = 3  # example cases shown per op
# Emulated and converted fp16 outputs agree when |a - b| <= AGREE_ATOL + AGREE_RTOL * |a|.
AGREE_RTOL, AGREE_ATOL = 2e-3, 1e-3

# Case outcomes (Record.kind).
DONE = "done"
NOT_LOADABLE = "inputs not loadable"
HARNESS_ERROR = "harness error"

# Checks (Record.checks keys) and their statuses.
EMULATE_FP16, EMULATE_BF16 = "emulate-fp16", "emulate-bf16"
CONVERT_CHECKER, CONVERT_ORT = "convert-fp16 checker", "convert-fp16 ORT"
CHECKS = (EMULATE_FP16, EMULATE_BF16, CONVERT_CHECKER, CONVERT_ORT)
OK, FAILED, NOT_CHECKED, NO_KERNEL = "ok", "failed", "not checked", "ORT lacks fp16"


@dataclass
class Record:
    index: int
    name: str
    kind: str = DONE
    op: str = ""
    detail: str | None = None
    traceback: str | None = None
    original_runs: bool = False
    original_checks: bool = False  # passes the full checker
    checks: dict[str, tuple[str, str | None]] = field(default_factory=dict)
    input_mutated: list[str] = field(default_factory=list)
    converted_fp16: bool = False  # convert made at least one tensor float16
    disagreement: str | None = None  # "" when emulate and convert agree, None if not compared
    seconds: float = 0.0


def _op_of(model: onnx.ModelProto) -> str:
    """The case's operator: its one non-Constant node, or the first few op types."""
    ops = list(dict.fromkeys(node.op_type for node in model.graph.node
                             if node.op_type != "Constant"))
    if len(ops) <= 1:
        return ops[0] if ops else "Constant"
    return "+".join(ops[:3]) + ("+..." if len(ops) > 3 else "")


def _error(err: BaseException) -> str:
    return f"{type(err).__name__}: {first_line(str(err))}"


def _element_types(outputs: dict[str, Any]) -> dict[str, str]:
    def kind(value: Any) -> str:
        if value is None:
            return "none"
        if isinstance(value, (list, tuple)):
            return "seq(" + ",".join(sorted({kind(v) for v in value})) + ")"
        if isinstance(value, dict):
            return "map"
        return str(np.asarray(value).dtype)

    return {name: kind(value) for name, value in outputs.items()}


def _check_emulated(model: onnx.ModelProto, precision: str, feeds: dict[str, Any],
                    reference: dict[str, str]) -> tuple[tuple[str, str | None], Any]:
    """The check's (status, message) and the emulated model's outputs, if it ran."""
    from trtcheck.precision import PrecisionPlan, emulate

    try:
        emulated = emulate(model, PrecisionPlan(precision))
    except Exception as err:
        return (FAILED, f"emulate raised {_error(err)}"), None
    try:
        outputs = ort_outputs(emulated, feeds)
    except Exception as err:
        return (FAILED, f"ONNX Runtime: {_error(err)}"), None
    got = _element_types(outputs)
    if got != reference:
        return (FAILED, f"outputs {reference} became {got}"), None
    return (OK, None), outputs


def _has_fp16(model: onnx.ModelProto) -> bool:
    """Whether convert made any tensor float16 (a Cast to it, or a float16 constant)."""
    fp16 = onnx.TensorProto.FLOAT16
    return any(init.data_type == fp16 for init in model.graph.initializer) or any(
        node.op_type == "Cast" and any(a.name == "to" and a.i == fp16 for a in node.attribute)
        for node in model.graph.node) or any(
        a.name == "value" and a.t.data_type == fp16
        for node in model.graph.node if node.op_type == "Constant" for a in node.attribute)


def _check_converted(model: onnx.ModelProto, feeds: dict[str, Any], record: Record) -> Any:
    """Fills in the convert checks; returns the converted model's outputs, if it ran."""
    from trtcheck.precision import PrecisionPlan, convert

    try:
        converted = convert(model, PrecisionPlan("fp16"))
    except Exception as err:
        message = f"convert raised {_error(err)}"
        record.checks[CONVERT_CHECKER] = (FAILED if record.original_checks else NOT_CHECKED,
                                          message)
        record.checks[CONVERT_ORT] = FAILED, message
        return None
    record.converted_fp16 = _has_fp16(converted)
    if record.original_checks:
        try:
            onnx.checker.check_model(converted, full_check=True)
            record.checks[CONVERT_CHECKER] = OK, None
        except Exception as err:
            record.checks[CONVERT_CHECKER] = FAILED, _error(err)
    else:
        record.checks[CONVERT_CHECKER] = NOT_CHECKED, "the original fails the full checker"
    try:
        outputs = ort_outputs(converted, feeds)
    except Exception as err:
        lacking = _ort_lacks_fp16(str(err), {node.op_type for node in converted.graph.node})
        record.checks[CONVERT_ORT] = (NO_KERNEL if lacking else FAILED), _error(err)
        return None
    record.checks[CONVERT_ORT] = OK, None
    return outputs


def _disagreement(emulated: dict[str, Any], converted: dict[str, Any]) -> str | None:
    """Where convert's outputs (fp16 kernels) leave emulate's by more than fp16 rounding."""
    for name, value in emulated.items():
        a, b = value, converted.get(name)
        if not isinstance(a, np.ndarray) or not isinstance(b, np.ndarray) or \
                a.dtype.kind != "f" or b.dtype.kind != "f" or a.shape != b.shape:
            continue
        a, b = a.astype(np.float64), b.astype(np.float64)
        if not np.array_equal(np.isnan(a), np.isnan(b)):
            return f"{name}: NaNs in other places"
        finite = np.isfinite(a) & np.isfinite(b)
        if not np.array_equal(a[~finite & ~np.isnan(a)], b[~finite & ~np.isnan(b)]):
            return f"{name}: infinities differ"
        excess = np.abs(a - b) - (AGREE_ATOL + AGREE_RTOL * np.abs(a))
        if finite.any() and excess[finite].max() > 0:
            worst = float(np.abs(a - b)[finite].max())
            return f"{name}: max |emulated - converted| {worst:.3g}"
    return None


def _ort_lacks_fp16(message: str, ops: set[str]) -> bool:
    """Whether ONNX Runtime failed for want of float16 support rather than on a bad model.

    Three forms: no kernel registered ("Could not find an implementation"), a kernel that
    refuses float16 at run time ("MLFloat16 data type is not supported with ScatterND ... when
    reduction is 'add'"), and a type error in an op the model does not contain: ONNX Runtime
    found no float16 kernel and expanded the op's ONNX function body, whose constants are
    float32 (MeanVarianceNormalization).
    """
    if "NOT_IMPLEMENTED" in message and "Could not find an implementation" in message:
        return True
    if "MLFloat16 data type is not supported" in message:
        return True
    match = re.search(r"Type parameter \(\w+\) of Optype \((\w+)\) bound to different types",
                      message)
    return match is not None and match.group(1) not in ops


def run_case(job: Job) -> Record:
    """Loads one case and runs every realisation of the fp16 / bf16 plans on it."""
    record = Record(job.index, job.name)
    started = time.perf_counter()
    try:
        try:
            model, feeds = load_case(job)
        except Exception as err:
            record.kind, record.detail = NOT_LOADABLE, _error(err)
            return record
        record.op = _op_of(model)
        pristine = model.SerializeToString()
        try:
            reference = _element_types(ort_outputs(model, feeds))
            record.original_runs = True
        except Exception as err:
            record.detail = f"original: {_error(err)}"
            return record
        try:
            onnx.checker.check_model(model, full_check=True)
            record.original_checks = True
        except Exception:
            record.original_checks = False
        record.checks[EMULATE_FP16], emulated = _check_emulated(model, "fp16", feeds, reference)
        record.checks[EMULATE_BF16], _ = _check_emulated(model, "bf16", feeds, reference)
        converted = _check_converted(model, feeds, record)
        if emulated is not None and converted is not None:
            record.disagreement = _disagreement(emulated, converted) or ""
        if model.SerializeToString() != pristine:
            record.input_mutated.append("emulate or convert")
    except Exception as err:
        record.kind, record.detail = HARNESS_ERROR, _error(err)
        record.traceback = traceback.format_exc()
    finally:
        record.seconds = time.perf_counter() - started
    return record


def _lost(job: Job, kind: str, detail: str, seconds: float) -> Record:
    return Record(job.index, job.name, kind=kind, detail=detail, seconds=seconds)


# --------------------------------------------------------------------------- report


def summarize(records: list[Record], seconds: float) -> dict[str, Any]:
    ran = [r for r in records if r.kind == DONE and r.original_runs]
    counts = {check: dict(collections.Counter(r.checks[check][0] for r in ran if check in r.checks))
              for check in CHECKS}
    failures: dict[str, dict[str, list[tuple[str, str | None]]]] = {}
    for record in ran:
        for check, (status, message) in record.checks.items():
            if status == FAILED:
                failures.setdefault(check, {}).setdefault(record.op, []).append(
                    (record.name, message))
    no_kernel: dict[str, int] = collections.Counter(
        r.op for r in ran if r.checks.get(CONVERT_ORT, ("", None))[0] == NO_KERNEL)
    return {
        "total": len(records),
        "inputs_not_loadable": [(r.name, r.detail) for r in records if r.kind == NOT_LOADABLE],
        "timed_out": [r.name for r in records if r.kind == TIMEOUT_KIND],
        "crashes": [r.name for r in records if r.kind == CRASH],
        "harness_errors": [(r.name, r.detail, where_raised(r.traceback))
                           for r in records if r.kind == HARNESS_ERROR],
        "original_runs": len(ran),
        "original_fails": sum(r.kind == DONE and not r.original_runs for r in records),
        "original_checks": sum(r.original_checks for r in ran),
        "counts": counts,
        "failures": failures,
        "no_kernel_ops": dict(sorted(no_kernel.items(), key=lambda kv: (-kv[1], kv[0]))),
        "converted_fp16": sum(r.converted_fp16 for r in ran),
        "compared": sum(r.disagreement is not None for r in ran),
        "disagreements": [(r.op, r.name, r.disagreement) for r in ran if r.disagreement],
        "input_mutated": [r.name for r in records if r.input_mutated],
        "seconds": seconds,
    }


def failure_count(summary: dict[str, Any]) -> int:
    failed = sum(len(cases) for by_op in summary["failures"].values() for cases in by_op.values())
    return (failed + len(summary["timed_out"]) + len(summary["crashes"])
            + len(summary["harness_errors"]) + len(summary["input_mutated"]))


def render(summary: dict[str, Any]) -> str:
    import onnxruntime

    import trtcheck

    out = io.StringIO()

    def line(text: str = "") -> None:
        out.write(text + "\n")

    def row(label: str, value: object) -> None:
        line(f"  {label:<60}{value!s:>8}")

    line(f"trtcheck {trtcheck.__version__} precision realisations on ONNX backend node tests "
         f"(onnx {onnx.__version__}, onnxruntime {onnxruntime.__version__})")
    row("total cases", summary["total"])
    row("inputs not loadable", len(summary["inputs_not_loadable"]))
    row(f"timed out (> {TIMEOUT:g} s)", len(summary["timed_out"]))
    row("ORT cannot run the original (not checked)", summary["original_fails"])
    row("ORT runs the original", summary["original_runs"])
    row("  ... and the original passes the full checker", summary["original_checks"])
    line()
    line(f"  {'on the cases where ORT runs the original':<44}{'ok':>8}{'failed':>8}"
         f"{'ORT lacks':>11}{'not checked':>13}")
    labels = {EMULATE_FP16: "emulate fp16: ORT runs it",
              EMULATE_BF16: "emulate bf16: ORT runs it",
              CONVERT_CHECKER: "convert fp16: passes the full checker",
              CONVERT_ORT: "convert fp16: ORT runs it"}
    for check in CHECKS:
        counts = summary["counts"].get(check, {})
        line(f"  {labels[check]:<44}{counts.get(OK, 0):>8}{counts.get(FAILED, 0):>8}"
             f"{counts.get(NO_KERNEL, 0):>11}{counts.get(NOT_CHECKED, 0):>13}")
    line()
    row("convert fp16 made at least one tensor fp16", summary["converted_fp16"])
    row("emulate and convert outputs compared (both ran)", summary["compared"])
    row(f"  ... differ by more than {AGREE_RTOL:g}·|x| + {AGREE_ATOL:g} (information)",
        len(summary["disagreements"]))
    row("input model modified by emulate/convert (must be 0)", len(summary["input_mutated"]))
    row("worker crashes (must be 0)", len(summary["crashes"]))
    row("harness errors (must be 0)", len(summary["harness_errors"]))
    row("failures in all (must be 0)", failure_count(summary))
    row("wall time", f"{summary['seconds']:.1f} s")

    for check in CHECKS:
        by_op = summary["failures"].get(check)
        if not by_op:
            continue
        line()
        line(f"{labels[check]}: failures by op (first {EXAMPLES} cases each)")
        for op, cases in sorted(by_op.items(), key=lambda kv: (-len(kv[1]), kv[0])):
            line(f"  {op}: {len(cases)} case(s)")
            for case, message in cases[:EXAMPLES]:
                line(f"    {case}: {first_line(message)}")
    if summary["no_kernel_ops"]:
        line()
        line("convert fp16: ORT's CPU provider lacks fp16 support (cases by op, not failures):")
        line("  " + ", ".join(f"{op} {n}" for op, n in summary["no_kernel_ops"].items()))
    if summary["disagreements"]:
        line()
        line("emulate fp16 and convert fp16 outputs differ (ORT's fp16 kernels round inside ops, "
             "emulation only at their boundaries):")
        by_op: dict[str, list[tuple[str, str]]] = {}
        for op, case, detail in summary["disagreements"]:
            by_op.setdefault(op, []).append((case, detail))
        for op, cases in sorted(by_op.items(), key=lambda kv: (-len(kv[1]), kv[0])):
            line(f"  {op}: {len(cases)} case(s), e.g. {cases[0][0]}: {first_line(cases[0][1])}")
    if summary["harness_errors"]:
        line()
        line("Harness errors (bugs in this bench):")
        for case, detail, where in summary["harness_errors"]:
            line(f"  {case}: {first_line(detail)}  at {where}")
    for title, key in (("Inputs not loadable", "inputs_not_loadable"),):
        if summary[key]:
            line()
            line(f"{title}:")
            for case, detail in summary[key]:
                line(f"  {case}: {first_line(detail)}")
    for title, key in (("Timed out", "timed_out"), ("Worker crashes", "crashes"),
                       ("Input model modified", "input_mutated")):
        if summary[key]:
            line()
            line(f"{title}: " + ", ".join(summary[key]))
    return out.getvalue().rstrip("\n")


def main(argv: list[str] | None = None) -> int:
    summary = bench_main(argv, __doc__.splitlines()[0], "emulate/convert", run_case, TIMEOUT, _lost,
                         summarize, render)
    return 1 if failure_count(summary) else 0


if __name__ == "__main__":
    sys.exit(main())
