"""The one API under the CLI and the pytest plugin: load, feed, run both backends, compare."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from trtcheck import golden, isolation
from trtcheck.atomic import prepare_work_folder, session_work_folder, write_atomically
from trtcheck.backend_names import Backend, get_backend
from trtcheck.backends import (
    BackendOptions,
    ConvertedOnnxPath,
    converted_model_path,
    loaded_model,
    tensorrt_version,
)
from trtcheck.compare import OutputDiff, compare_runs
from trtcheck.detections import DetectionSpec, check_specs
from trtcheck.errors import UsageError
from trtcheck.golden import GoldenCheck
from trtcheck.inputs import UNIFORM, Feeds, InputSettings, make_feeds
from trtcheck.model import LoadedModel, load_model
from trtcheck.output_roles import class_score_outputs, quantized_type
from trtcheck.precision import PrecisionPlan
from trtcheck.progress import step
from trtcheck.quant.target import QuantRequest, quantized_target
from trtcheck.repro import polygraphy_command, polygraphy_note, trtcheck_command
from trtcheck.run import BackendRun, ReferenceCache, quiet_polygraphy
from trtcheck.tolerance import ToleranceRequest, Tolerances

if TYPE_CHECKING:
    # Suites are for check_case only; a CLI comparison need not import (and parse) their schema.
    from trtcheck.suite import Case, TargetSpec


@dataclass(frozen=True)
class CompareRequest:
    """What to compare and how."""

    model: Path
    reference: str = "onnxrt"
    # None picks the default target (trt-fp16 where TensorRT imports, else onnxrt-fp16).
    target: str | None = None
    tolerances: ToleranceRequest = field(default_factory=ToleranceRequest)
    inputs: InputSettings = field(default_factory=InputSettings)
    options: BackendOptions = field(default_factory=BackendOptions)
    save_outputs: Path | None = None
    save_inputs: Path | None = None
    # Graph passes applied to the target's model (verified); the reference runs the original.
    passes: tuple[str, ...] = ()
    # Outputs compared as detection sets (paired by class and IoU), not element by element.
    detections: tuple[DetectionSpec, ...] = ()
    # int8/fp8 targets: how the Q/DQ model is made, or the user's own (`--target-model`).
    quant: QuantRequest = field(default_factory=QuantRequest)
    # With a Q/DQ target: measure each quantized layer's error (`quant.layerwise`).
    layers: bool = False
    # A `triton://` target: the precision the served model computes in (its tolerances).
    served_precision: str = "fp32"


@dataclass
class ComparisonResult:
    """The outcome of one comparison: verdict, per-output diffs and the effective configuration."""

    model_path: str
    reference: Backend
    target: Backend
    target_note: str | None
    tolerances: Tolerances
    feeds: Feeds
    options: BackendOptions
    outputs: list[OutputDiff]
    timings: dict[str, float]
    polygraphy_command: str
    trtcheck_command: str
    # What the graph passes did to the target's model, when some were asked for.
    passes: Any = None
    # For TensorRT and emulated targets: what TensorRT's ONNX parser will reject (a `LintResult`),
    # or why that could not be checked (`tensorrt_support_error`).
    tensorrt_support: Any = None
    tensorrt_support_error: str | None = None
    # When the polygraphy command is a pair: which model each side runs.
    polygraphy_note: str | None = None
    # Both runs, for goldens and --save-outputs; never serialised into reports.
    run_results: Any = None
    # Each quantized layer's error, worst first (`quant.layerwise.LayerError`), when asked for.
    layers: list[Any] | None = None
    # The model the target ran when it is not the reference's (Q/DQ, or after graph passes).
    target_model_path: str | None = None
    # The model file's sha256, computed when a report or golden first asks for it (hashing a
    # large model costs about as much as loading it): see `model_sha256`.
    model_hash: Callable[[], str] | None = field(default=None, repr=False)

    @property
    def versions(self) -> dict[str, str | None]:
        """The libraries' versions, read when a report or golden first asks.

        ONNX Runtime runs in a child process: importing it here only for its version would cost
        a small model's check a tenth of its time.
        """
        return library_versions()

    @property
    def model_sha256(self) -> str | None:
        return self.model_hash() if self.model_hash is not None else None

    @property
    def verdict(self) -> str:
        return "pass" if all(diff.passed for diff in self.outputs) else "fail"

    @property
    def tensorrt_support_summary(self) -> str | None:
        """What TensorRT's parser will reject and what that means for the verdict; else None."""
        if self.tensorrt_support_error is not None:
            return self.tensorrt_support_error
        summary = self.tensorrt_support.summary() if self.tensorrt_support is not None else None
        if summary is not None and self.target.emulated:
            summary += ("; the verdict holds for the emulated target only: TensorRT cannot build "
                        "this model until these are fixed")
        return summary

    @property
    def hints(self) -> list[str]:
        """What to try next, for failures whose likely cause is known."""
        if self.verdict == "pass":
            return []
        if self.target_model_path is not None and self.layers is None and self.target.quantized:
            return ["--bisect (or `trtcheck bisect`) ranks the quantized layers and finds the "
                    "few to leave unquantized, verified; --layers shows the ranking"]
        hints = ["--bisect (or `trtcheck bisect`) finds the node where the divergence starts, "
                 "says why, and proposes nodes to keep in fp32"]
        overflowed = [diff.name for diff in self.outputs if diff.nonfinite_mismatches]
        if overflowed and self.target.precision == "fp16":
            hints.append(
                f"{', '.join(overflowed)}: inf/nan only in the fp16 target is usually an overflow "
                "(|x| > 65504) inside the model; --target onnxrt-bf16 (fp32's range, less "
                "precision) tells range from rounding, and --keep-fp32 NODE ... keeps the "
                "overflowing nodes in fp32")
        return hints


def library_versions() -> dict[str, str | None]:
    """Versions of the libraries a result depends on."""
    return dict(_library_versions())


@functools.cache
def _library_versions() -> dict[str, str | None]:
    import numpy
    import onnx
    import onnx_graphsurgeon
    import onnxruntime
    import polygraphy

    import trtcheck

    return {
        "trtcheck": trtcheck.__version__,
        "polygraphy": polygraphy.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "onnx-graphsurgeon": onnx_graphsurgeon.__version__,
        "numpy": numpy.__version__,
        "tensorrt": tensorrt_version(),
    }


def _engine_note(engine: Path, target: Backend) -> str | None:
    """`--target-engine`: the plan's header checked before anything runs (`engine.plan`)."""
    from trtcheck.engine.plan import preflight_plan

    if target.family != "trt":
        raise UsageError(f"--target-engine {engine}: a TensorRT engine runs on a trt target, "
                         f"not {target.name}; drop --target or give --target trt")
    return preflight_plan(engine).note


def _target_of(given: LoadedModel | None) -> str | None:
    """The default target for `--target-model` (None without it): the backend of its type."""
    if given is None:
        return None
    from trtcheck.backends import tensorrt_usable

    family = "trt" if tensorrt_usable() else "onnxrt"
    kind = quantized_type(given.proto)
    return f"{family}-{kind}" if kind else family


def resolve_target(name: str | None, served_precision: str = "fp32"
                   ) -> tuple[Backend, str | None]:
    from trtcheck.backends import default_target

    if name is not None:
        return get_backend(name, served_precision), None
    chosen, reason = default_target()
    return get_backend(chosen), f"target {chosen}: {reason}"


def compare_model(request: CompareRequest, verbose: bool = False,
                  model: LoadedModel | None = None,
                  reference_cache: ReferenceCache | None = None) -> ComparisonResult:
    """Runs the reference and the target on the same inputs and compares every output.

    Raises `TrtcheckError` subclasses for bad input (exit 2) and for backends that cannot run
    (exit 3); a mismatch is a result with verdict "fail", not an exception. With a
    `reference_cache`, a reference run on the same model and inputs is reused.
    """
    with quiet_polygraphy(verbose):
        return _compare_model(request, model, reference_cache or ReferenceCache())


def tensorrt_support(model: LoadedModel, trt_major: int) -> tuple[Any, str | None]:
    """What TensorRT `trt_major`'s ONNX parser will reject in `model` (`trtcheck lint`, static).

    Returns the `LintResult`, or None and why the check failed: it informs the comparison and
    never stops it.
    """
    from trtcheck.lint import lint_model

    with step(f"checking the model against TensorRT {trt_major}'s ONNX operator table"):
        try:
            return lint_model(model, trt_major, with_parser=False), None
        except Exception as err:  # noqa: BLE001 (a lint bug must not hide the comparison)
            return None, f"the TensorRT operator check failed ({type(err).__name__}: {err})"


def _fixed_model(model: LoadedModel, names: list[str], feeds: Feeds,
                 options: BackendOptions) -> tuple[LoadedModel, Any]:
    """Applies verified graph passes; the result is saved so that TensorRT can read a path."""
    from trtcheck.fix import apply_passes, save_model

    pipeline = apply_passes(model, names, feeds)
    assert options.work_dir is not None
    path = prepare_work_folder(options.work_dir) / f"{model.path.stem}.fixed.onnx"
    save_model(pipeline.model, path, external_data=model.has_external_data(),
               weights_folder=pipeline.weights_folder)
    return load_model(path), pipeline


def _compare_model(request: CompareRequest, model: LoadedModel | None,
                    reference_cache: ReferenceCache) -> ComparisonResult:
    timings: dict[str, float] = {}
    started = time.perf_counter()
    reference = get_backend(request.reference)
    given = load_model(request.quant.target_model) if request.quant.target_model else None
    target, target_note = resolve_target(
        request.target or ("trt" if request.options.engine is not None else None)
        or _target_of(given), request.served_precision)
    if request.options.engine is not None:
        target_note = "; ".join(filter(None, [target_note, _engine_note(request.options.engine,
                                                                          target)])) or None
    model = model or loaded_model(request.model)
    tolerances = request.tolerances.resolve(target.precision, class_score_outputs(model.proto),
                                            quantized_type(model.proto))
    tolerances.check(model.output_names)
    check_specs(request.detections, model.output_names)
    PrecisionPlan(target.float_precision, request.options.keep_fp32).check_nodes(model.proto)
    feeds = make_feeds(model, request.inputs)
    # TensorRT profiles (and the repro command) take the shapes fed to dynamic inputs.
    dynamic_shapes = {d.name: d.shape for d in feeds.described if model.input(d.name).is_dynamic}
    # Work files go to the work folder, else this process's temporary one (chosen here, so that
    # a backend run in a child process writes where this process cleans up).
    options = BackendOptions(**{**request.options.__dict__, "shapes": dynamic_shapes,
                                "work_dir": request.options.work_dir or session_work_folder()})
    timings["prepare"] = time.perf_counter() - started

    reference_name, target_name = f"reference:{reference.name}", f"target:{target.name}"
    from polygraphy.comparator import RunResults

    target_model, passes = model, None
    if target.quantized or request.quant.target_model is not None:
        what = "loading" if request.quant.target_model else f"quantizing to {target.precision}"
        with step(f"{what} the target's Q/DQ model"):
            assert options.work_dir is not None
            target_model, notes = quantized_target(model, target, request.quant,
                                                   request.inputs, options.work_dir, given)
        target_note = "; ".join(filter(None, [target_note, *notes])) or None
    if target.family == "triton":
        from trtcheck.deploy.triton_target import check_target

        # The server's model against the ONNX model, before any input is sent (in a child:
        # Triton's clients do not survive a fork once used).
        with step(f"checking the model {target.name} serves"):
            served = isolation.call(check_target, target.name, model,
                                    what=f"Triton server {target.name}")
        target_note = "; ".join(filter(None, [target_note, f"serves {served.describe()}"]))
    if request.layers and quantized_type(target_model.proto) is None:
        raise UsageError("--layers measures the layers of a Q/DQ target: pick an int8/fp8 "
                         "target or give --target-model QDQ.onnx")
    if request.passes:
        with step(f"graph passes: {', '.join(request.passes)}"):
            target_model, passes = _fixed_model(target_model, list(request.passes), feeds,
                                                options)
    installed = tensorrt_version()
    trt_major = options.trt_major or (int(installed.split(".")[0]) if installed else None)
    support, support_error = None, None
    if target.family == "trt" or target.emulated or target.quantized:
        start = time.perf_counter()
        support, support_error = tensorrt_support(target_model, trt_major or 10)
        timings["lint"] = time.perf_counter() - start

    start = time.perf_counter()
    run_results = RunResults()
    building = "building the TensorRT engine and running" if target.family == "trt" else "running"
    # Both runs in one child process: one fork less (`run.run_backends`); the model's hash,
    # needed for the report only, is computed meanwhile.
    with step(f"running the reference ({reference.name}), then {building} the target "
              f"({target.name})"), isolation.meanwhile(
                  lambda: model.hash_while(isolation.still_busy)):
        run_results.extend(reference_cache.run_with(
            BackendRun(model, reference, options, feeds.iterations, reference_name),
            BackendRun(target_model, target, options, feeds.iterations, target_name)))
    timings["run"] = time.perf_counter() - start
    start = time.perf_counter()
    outputs = compare_runs(run_results, reference_name, target_name, tolerances,
                           request.detections)
    timings["compare"] = time.perf_counter() - start

    layers = None
    if request.layers:
        layers = _layer_errors(model, target_model, feeds)
    if request.save_outputs is not None:
        write_atomically(request.save_outputs, lambda path: run_results.save(path))
    if request.save_inputs is not None:
        from polygraphy.json import save_json

        write_atomically(request.save_inputs,
                          lambda path: save_json(feeds.iterations, path, "inputs"))
    if target.emulated and (trt_major or 10) >= 11:
        # The printed TensorRT 11 command builds the converted model (of the model the target
        # ran); an emulated run has not written it, so write it now for the GPU machine.
        plan = PrecisionPlan(target.precision, options.keep_fp32)
        destination = converted_model_path(target_model.path, plan, options)
        prepare_work_folder(destination.parent)
        ConvertedOnnxPath(target_model, plan, destination)()
    load_inputs = str(request.save_inputs) if request.save_inputs else None
    if load_inputs is None and (request.inputs.recorded is not None
                                or any(d.generator != UNIFORM for d in feeds.described)):
        # Polygraphy's DataLoader cannot draw a padded mask, and reads neither .npz nor a JSON
        # whose arrays trtcheck converted (float64 -> float32): its command loads these feeds.
        written = (options.work_dir or session_work_folder()) / f"{model.path.stem}.inputs.json"
        prepare_work_folder(written.parent)
        from polygraphy.json import save_json

        write_atomically(written, lambda path: save_json(feeds.iterations, path, "inputs"))
        load_inputs = str(written)
    # Polygraphy takes the default's atol as resolved per output (its magnitude rule is ours).
    command = ""
    note: str | None = ("a live Triton server has no `polygraphy run` equivalent: the trtcheck "
                        "command repeats this check")
    if target.family != "triton":
        command = polygraphy_command(
            str(model.path), target, reference, feeds, request.inputs,
            tolerances.with_atols({d.name: d.tolerance.atol for d in outputs
                                   if d.tolerance.atol_of_max is not None}), options, trt_major,
            load_inputs=load_inputs, target_model_path=str(target_model.path))
        note = polygraphy_note(str(model.path), target, options, trt_major,
                               str(target_model.path))
    class_scores = [d.name for d in outputs if d.method == "top1"]
    if class_scores:
        # The printed command stays runnable; what it checks differs for these outputs.
        values = (f"Polygraphy has no top-1 check: it holds {', '.join(class_scores)} to the "
                  "atol shown, which trtcheck reports but does not decide by")
        note = f"{note}; {values}" if note else values
    repeat = trtcheck_command(str(model.path), target, reference, feeds, request.inputs,
                              tolerances, options, request.passes, request.detections,
                              quant=request.quant)
    timings["total"] = time.perf_counter() - started
    return ComparisonResult(
        model_path=str(model.path), model_hash=model.hash_later(), reference=reference,
        target=target,
        target_note=target_note, tolerances=tolerances, feeds=feeds, options=options,
        outputs=outputs, timings=timings, polygraphy_command=command,
        trtcheck_command=repeat, passes=passes, run_results=run_results,
        tensorrt_support=support, tensorrt_support_error=support_error, polygraphy_note=note,
        layers=layers,
        target_model_path=None if target_model is model else str(target_model.path),
    )


def _layer_errors(model: LoadedModel, target_model: LoadedModel, feeds: Feeds) -> list[Any]:
    """Each quantized layer's error (`quant.layerwise`), in a child process as every run is."""
    from trtcheck.quant.layerwise import layerwise_error

    with step("measuring each quantized layer's error (accumulated and isolated)"):
        return isolation.call(layerwise_error, model, target_model, list(feeds.iterations),
                              what="layer-wise quantization error")


@dataclass
class CaseOutcome:
    """One suite item (a case on a target): the comparison, the golden check, and notes."""

    case: Case
    target: TargetSpec
    comparison: ComparisonResult
    golden: GoldenCheck
    notes: list[str]

    @property
    def passed(self) -> bool:
        return self.comparison.verdict == "pass" and self.golden.status == "pass"


def _golden_metadata(result: ComparisonResult, case: Case) -> dict[str, Any]:
    return {
        "case": case.name,
        "model_sha256": result.model_sha256,
        "reference": result.reference.name,
        # The generator is recorded only when it is not the uniform default, so goldens of
        # uniform inputs keep matching.
        "inputs": [{"name": d.name, "dtype": d.dtype, "shape": list(d.shape),
                    "range": list(d.value_range), "source": d.source,
                    **({"generator": d.generator} if d.generator != UNIFORM else {})}
                   for d in result.feeds.described],
        "seed": result.feeds.seed,
        "versions": {k: v for k, v in result.versions.items() if k != "tensorrt"},
    }


def check_case(case: Case, target: TargetSpec, *, suite_name: str, golden_dir: Path,
               golden_mode: str = golden.CHECK, update_command: str = "",
               artifacts: Path | None = None, reference_cache: ReferenceCache | None = None,
               verbose: bool = False) -> CaseOutcome:
    """Checks one case on one target: reference against golden, target against reference."""
    with quiet_polygraphy(verbose):
        return _check_case(case, target, suite_name, golden_dir, golden_mode, update_command,
                           artifacts, reference_cache, verbose)


def _check_case(case: Case, target: TargetSpec, suite_name: str, golden_dir: Path,
                golden_mode: str, update_command: str, artifacts: Path | None,
                reference_cache: ReferenceCache | None, verbose: bool) -> CaseOutcome:
    from trtcheck.sources import resolve

    if case.error is not None:
        from trtcheck.suite import SuiteError

        raise SuiteError(case.error)
    assert case.model is not None
    with step(f"fetching {case.model.text}"):
        model_path = resolve(case.model)
    work_dir = artifacts / suite_name / case.name if artifacts is not None else None
    request = CompareRequest(
        model=model_path, reference=case.reference, target=target.backend,
        served_precision=target.served_precision,
        tolerances=case.tolerances_for(target), inputs=case.inputs, passes=case.passes,
        detections=case.detections,
        options=BackendOptions(providers=target.providers, tf32=target.tf32,
                               keep_fp32=target.keep_fp32, work_dir=work_dir),
        # Only int8/fp8 targets run a Q/DQ model; the case's other targets run its own model.
        quant=case.quant if target.quantized else QuantRequest(),
    )
    from trtcheck.isolation import isolation

    with isolation(timeout=case.timeout):
        result = compare_model(request, verbose=verbose, reference_cache=reference_cache)
    reference_outputs = {name: np.asarray(array) for name, array in
                         result.run_results[f"reference:{result.reference.name}"][0].items()}
    golden_check = golden.check(
        golden.GoldenPaths.for_case(golden_dir, suite_name, case.name), reference_outputs,
        _golden_metadata(result, case), case.golden_atol, case.golden_rtol, golden_mode,
        update_command, artifacts)
    notes = [f"tolerance measured: {m}" for m in case.measurements_for(target)]
    if result.passes is not None:
        notes += [f"pass {o.name}: {o.status}" + (f" ({o.message})" if o.message else "")
                  for o in result.passes.outcomes if o.status not in ("changed", "unchanged")]
    notes += _target_notes(case, target, result)
    return CaseOutcome(case, target, result, golden_check, notes)


def _target_notes(case: Case, target: TargetSpec, result: ComparisonResult) -> list[str]:
    """What the CLI prints about the target's model (its calibration), worded for a suite."""
    if target.quantized and case.calibrates_on_synthetic_feeds:
        # The CLI's warning names its flag; a suite sets a key.
        return [f"{target.name}: calibrated on synthetic feeds, so its int8/fp8 scales follow "
                "random data and the comparison says little about real inputs; give the case "
                "calibration = \"FOLDER_OF_NPZ\" (or a Polygraphy inputs .json), "
                "calibration_cache or target_model"]
    return [f"{target.name}: {result.target_note}"] if result.target_note else []
