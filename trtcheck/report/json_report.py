"""The JSON report: a versioned, documented schema (docs/json-report.md) with statistics only."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from trtcheck.atomic import write_atomically
from trtcheck.compare import OutputDiff
from trtcheck.core import ComparisonResult
from trtcheck.detections import Detection, DetectionMatch

SCHEMA = "trtcheck.compare"
SCHEMA_VERSION = 1


def _number(value: float | None) -> float | str | None:
    # JSON has no inf/nan; they are written as strings so the file stays standard JSON.
    if value is None:
        return None
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return value


def output_to_dict(diff: OutputDiff) -> dict[str, Any]:
    return {
        "name": diff.name,
        "passed": diff.passed,
        "failures": list(diff.failures),
        "shape": list(diff.shape),
        "dtype": diff.dtype,
        "iteration": diff.iteration,
        "elements": diff.elements,
        "exceeding": diff.exceeding,
        "nonfinite_mismatches": diff.nonfinite_mismatches,
        "max_abs_error": _number(diff.max_abs_error),
        "max_abs_index": list(diff.max_abs_index),
        "reference_at_max": _number(diff.reference_at_max),
        "target_at_max": _number(diff.target_at_max),
        "max_rel_error": _number(diff.max_rel_error),
        "mean_abs_error": _number(diff.mean_abs_error),
        "p99_abs_error": _number(diff.p99_abs_error),
        "cosine": _number(diff.cosine),
        "snr": _number(diff.snr),
        "required_atol": _number(diff.required_atol),
        "required_rtol": _number(diff.required_rtol),
        "tolerance": {key: _number(v) if isinstance(v, float) else v
                      for key, v in diff.tolerance.__dict__.items()},
        "error_histogram": None if diff.histogram is None else {
            "log10_edges": list(diff.histogram.log10_edges),
            "counts": list(diff.histogram.counts),
            "zeros": diff.histogram.zeros, "nonfinite": diff.histogram.nonfinite},
        "sample": None if diff.sample is None else {
            "reference": [_number(v) for v in diff.sample.reference],
            "abs_error": [_number(v) for v in diff.sample.abs_error]},
        "method": diff.method,
        "checked": diff.checked,
        "signal": diff.signal,
        "warnings": list(diff.warnings),
        "agreement": _number(diff.agreement),
        "detections": None if diff.detections is None else _detections(diff.detections),
        "top1_same": None if diff.top1_same is None else list(diff.top1_same),
    }


def _detections(match: DetectionMatch) -> dict[str, Any]:
    spec = match.spec

    def listed(detections: tuple[Detection, ...]) -> list[dict[str, Any]]:
        return [{"index": list(d.index), "label": _number(d.label), "score": _number(d.score),
                 "box": [_number(v) for v in d.box]} for d in detections]

    return {
        "spec": {"boxes": spec.boxes, "scores": spec.scores, "labels": spec.labels,
                 "packed": spec.packed, "per_detection": list(spec.per_detection),
                 "iou": spec.iou, "min_matched": spec.min_matched,
                 "format": spec.box_format},
        "reference_count": match.reference_count,
        "target_count": match.target_count,
        "matched": match.matched,
        "matched_fraction": match.matched_fraction,
        "min_iou": _number(match.min_iou),
        "max_box_error": _number(match.max_box_error),
        "max_score_error": _number(match.max_score_error),
        "unmatched_reference": listed(match.unmatched_reference),
        "unmatched_target": listed(match.unmatched_target),
    }


def _layers(rows: list[Any]) -> list[dict[str, Any]]:
    from trtcheck.quant.layerwise import layer_errors_to_dict

    return layer_errors_to_dict(rows)


def result_to_dict(result: ComparisonResult) -> dict[str, Any]:
    return {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "verdict": result.verdict,
        "error": None,
        "model": {"path": result.model_path, "sha256": result.model_sha256},
        "outputs": [output_to_dict(diff) for diff in result.outputs],
        "hints": result.hints,
        **({} if result.layers is None else {"layers": _layers(result.layers)}),
        "passes": [] if result.passes is None else [
            {"name": o.name, "status": o.status, "message": o.message,
             "nodes_before": sum(o.nodes_before.values()),
             "nodes_after": sum(o.nodes_after.values())}
            for o in result.passes.outcomes],
        "config": {
            "reference": {"backend": result.reference.name,
                          "precision": result.reference.precision},
            "target": {"backend": result.target.name, "precision": result.target.precision,
                       "note": result.target_note},
            "providers": list(result.options.providers),
            "tf32": result.options.tf32,
            "keep_fp32": sorted(result.options.keep_fp32),
            "tolerances": {
                "default": {k: _number(v) if isinstance(v, float) else v
                            for k, v in result.tolerances.default.__dict__.items()},
                "per_output": result.tolerances.per_output,
            },
            "inputs": [
                {"name": d.name, "dtype": d.dtype, "shape": list(d.shape),
                 "range": [d.value_range[0], d.value_range[1]], "source": d.source,
                 "range_from": d.origin, "generator": d.generator}
                for d in result.feeds.described
            ],
            "input_warnings": list(result.feeds.warnings),
            "seed": result.feeds.seed,
            "iterations": len(result.feeds.iterations),
        },
        "versions": result.versions,
        "timings_s": {k: round(v, 4) for k, v in result.timings.items()},
        "polygraphy_command": result.polygraphy_command,
        "polygraphy_note": result.polygraphy_note,
        "trtcheck_command": result.trtcheck_command,
        "tensorrt_support": tensorrt_support_to_dict(result),
    }


# Rejected nodes listed in the report; `error_count` has them all (`trtcheck lint` lists them).
_LISTED_ERRORS = 50


def tensorrt_support_to_dict(result: ComparisonResult) -> dict[str, Any] | None:
    """The lint's errors for TensorRT and emulated targets; None for other targets."""
    lint = result.tensorrt_support
    if lint is None and result.tensorrt_support_error is None:
        return None
    errors = [] if lint is None else lint.errors
    return {
        "checked": lint is not None,
        "tensorrt_major": None if lint is None else lint.trt_major,
        "tensorrt_version": None if lint is None else lint.version,
        "table": None if lint is None else {key: lint.source[key] for key in (
            "repository", "path", "commit")},
        "model": None if lint is None else lint.model_path,
        "parses": None if lint is None else not errors,
        "error_count": len(errors),
        "warning_count": 0 if lint is None else len(lint.findings) - len(errors),
        "rejected_ops": {} if lint is None else lint.rejected_ops(),
        "errors": [{"node": f.node, "op": f.op, "reason": f.reason, "fixed_by": f.fixed_by}
                   for f in errors[:_LISTED_ERRORS]],
        "summary": result.tensorrt_support_summary,
        "command": None if lint is None else lint.command,
    }


def error_to_dict(message: str, model_path: str | None, versions: dict[str, str | None]):
    return {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "verdict": "error",
        "error": message,
        "model": {"path": model_path, "sha256": None},
        "outputs": [],
        "hints": [],
        "passes": [],
        "config": None,
        "versions": versions,
        "timings_s": {},
        "polygraphy_command": None,
        "polygraphy_note": None,
        "trtcheck_command": None,
        "tensorrt_support": None,
    }


def write_json(document: dict[str, Any], path: Path) -> None:
    text = json.dumps(document, indent=2, allow_nan=False) + "\n"
    write_atomically(path, lambda partial: Path(partial).write_text(text))
