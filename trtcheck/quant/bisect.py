"""`trtcheck bisect` on an int8/fp8 target: the layers to leave unquantized, verified.

A quantized target's error does not start at one node the way an fp16 overflow does: every
quantized layer adds its own rounding, and what breaks a model is usually one or two layers
whose inputs a per-tensor scale cannot hold (a channel far larger than the others, outliers).
So the float bisection's question ("where does the divergence start") becomes "which layers,
left in float, bring the outputs back within tolerance": the quantized layers are ranked by
their isolated error (`quant.layerwise`), the smallest such set is searched and verified by a
final run (`quant.int8_fix`), and the answer goes out through the same `Localization` as a
float bisection: the culprit is the worst layer, `precision_fix.keep_fp32` the set, with
ONNX Runtime's and ModelOpt's exclude lists and, in the repro folder, the Q/DQ model with those
nodes' quantization removed (what TensorRT builds, strongly typed).
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from trtcheck.core import CompareRequest, ComparisonResult
    from trtcheck.debug.results import Localization
    from trtcheck.quant.int8_fix import Int8Fix

MODE = "quantized"
FIXED_MODEL = "model.{precision}.excluded.onnx"


def localize_quantized(result: ComparisonResult, request: CompareRequest, repro_dir: Path,
                       max_runs: int = 24) -> tuple[Localization, list[Any]]:
    """The INT8 (or fp8) fix of a failing quantized comparison, and the ranked layers."""
    from trtcheck import isolation
    from trtcheck.model import load_model
    from trtcheck.quant.int8_fix import find_int8_fix

    assert result.target_model_path is not None, "a quantized comparison has a target model"
    fp32, qdq = load_model(result.model_path), load_model(result.target_model_path)
    feeds = [dict(feed) for feed in result.feeds.iterations]
    requantize = None if request.quant.target_model is not None else _requantizer(
        fp32, result, request)
    fix = isolation.call(find_int8_fix, fp32, qdq, feeds, _passes(result), requantize, max_runs,
                         what=f"INT8 fix ({result.target.name})")
    return _localization(result, fix, _write_repro(repro_dir, result, fix)), list(fix.layers)


def _passes(result: ComparisonResult):
    """The comparison's own criterion per output, on one feed's outputs."""
    from trtcheck.compare import tensor_verdict

    tolerances = {diff.name: diff.tolerance for diff in result.outputs}

    def passes(reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray]) -> bool:
        return not any(tensor_verdict(np.asarray(candidate[name]), np.asarray(value),
                                      tolerances[name])
                       for name, value in reference.items() if name in tolerances)

    return passes


def _requantizer(fp32: Any, result: ComparisonResult, request: CompareRequest):
    """Quantizes the fp32 model again as the target was, leaving `exclude` unquantized.

    The calibration runs once: each candidate takes the same ranges (as amax), so a candidate
    costs the Q/DQ insertion, not the calibration feeds again (17 s a run on ViT-B/16 before).
    """
    from trtcheck.quant.quantize import QuantSettings, calibrated_amax, quantize_model
    from trtcheck.quant.target import calibration_source

    calibration, amax, _ = calibration_source(fp32, request.quant, request.inputs)
    settings = QuantSettings(result.target.precision, request.quant.method)
    if amax is None:
        assert calibration is not None
        amax = calibrated_amax(fp32, settings, calibration)

    def requantize(exclude: tuple[str, ...]) -> Any:
        return quantize_model(fp32, QuantSettings(settings.precision, settings.method,
                                                  exclude=exclude), amax=amax)

    return requantize


def _write_repro(folder: Path, result: ComparisonResult, fix: Int8Fix) -> Path | None:
    """The model with the fix applied and a README with the commands; None if nothing to fix."""
    from trtcheck.atomic import fits_in_protobuf, save_onnx, write_text

    if not fix.excluded or fix.model is None:
        return None
    folder = folder.resolve()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / FIXED_MODEL.format(precision=result.target.precision)
    save_onnx(fix.model, path, external_data=not fits_in_protobuf(fix.model))
    names = " ".join(shlex.quote(n) for n in fix.ort_nodes_to_exclude)
    model = shlex.quote(str(Path(result.model_path).resolve()))
    state = "verified" if fix.verified else "NOT verified"
    lines = [
        f"# INT8 fix: {result.target.name} on {Path(result.model_path).name}", "",
        f"Leave {len(fix.excluded)} node(s) unquantized ({state} by a final run):", "",
        *(f"- `{node.node}` ({node.op}): {node.reason}" for node in fix.excluded), "",
        "Check the fixed model against the fp32 one:", "",
        f"    trtcheck compare {model} --target-model {shlex.quote(str(path))}", "",
        "Build it with TensorRT (10 or 11, strongly typed: its Q/DQ say what is int8):", "",
        f"    polygraphy run {shlex.quote(str(path))} --trt --strongly-typed --onnxrt", "",
        "Quantize again without them:", "",
        f"    trtcheck quantize {model} -o fixed.onnx --precision {result.target.precision} "
        f"--exclude {names}",
        "",
        "ONNX Runtime's quantizer: `quantize_static(..., nodes_to_exclude="
        f"{fix.ort_nodes_to_exclude!r})`", "",
        f"NVIDIA ModelOpt: `nodes_to_exclude={fix.modelopt_nodes_to_exclude!r}` (anchored "
        "patterns: each matches its node only)", "",
    ]
    write_text(folder / "README.md", "\n".join(lines))
    return path


def _localization(result: ComparisonResult, fix: Int8Fix, fixed_model: Path | None
                  ) -> Localization:
    from trtcheck.debug.results import Localization, PrecisionFix

    failing = next((d for d in result.outputs if not d.passed), result.outputs[0])
    worst = fix.excluded[0] if fix.excluded else None
    layer = next((row for row in fix.layers if worst is not None and row.node == worst.qdq_node),
                 None)
    before = ", ".join(f"{name} {value:.4f}" for name, value in fix.before.items())
    after = ", ".join(f"{name} {value:.4f}" for name, value in fix.after.items())
    remaining = None if fix.verified else (
        f"after {fix.runs} run(s) the best set still fails (cosine {after})")
    precision_fix = PrecisionFix(
        keep_fp32=[node.node for node in fix.excluded], verified=fix.verified, rounds=1,
        target_runs=fix.runs,
        trt10_flags=(f"build {fixed_model} strongly typed (--strongly-typed)" if fixed_model
                     else "-"),
        trt11_model=str(fixed_model) if fixed_model else None, remaining=remaining,
        exclude_lists={"onnxruntime": fix.ort_nodes_to_exclude,
                       "modelopt": fix.modelopt_nodes_to_exclude},
        cosine_before=dict(fix.before), cosine_after=dict(fix.after), minimal=fix.minimal)
    return Localization(
        output=failing.name, mode=MODE, criterion=failing.tolerance.describe(),
        culprit_node=worst.node if worst else "", culprit_op=worst.op if worst else "",
        culprit_tensor=layer.tensor if layer else "", culprit_index=0, local=True if worst
        else None, local_error=None if layer is None else 1 - layer.cosine_isolated,
        boundary_verified=fix.verified,
        note=(f"{len(fix.layers)} quantized layer(s) ranked by isolated error; cosine before "
              f"{before}, after {after}; {fix.seconds:.1f} s"
              + ("" if fix.minimal or not fix.excluded else
                 f"; the search stopped at {fix.runs} runs before trying to drop every member: "
                 "a smaller set may pass")),
        target_runs=fix.runs, runs=[], probe_points=len(fix.layers), trace=[], audit=[],
        explanation=[f"{node.node} ({node.op}): {node.reason}" for node in fix.excluded],
        precision_fix=precision_fix,
        repro_dir=str(fixed_model.parent) if fixed_model else None)
