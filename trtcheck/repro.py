"""Commands that reproduce a comparison: the `polygraphy run` equivalent and the `trtcheck` one."""

from __future__ import annotations

import shlex
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trtcheck.backend_names import Backend
from trtcheck.backends import BackendOptions, converted_model_path, polygraphy_flags
from trtcheck.inputs import UNIFORM, Feeds, InputSettings
from trtcheck.precision import PrecisionPlan
from trtcheck.quant.target import QuantRequest
from trtcheck.tolerance import TOP1, Tolerances

if TYPE_CHECKING:
    from trtcheck.detections import DetectionSpec


def _shape(shape: Iterable[int]) -> str:
    return "[" + ",".join(str(d) for d in shape) + "]"


def _number(value: Any) -> str:
    return f"{value:g}"


def _per_output(flag: str, values: dict[str, str], default: str | None) -> list[str]:
    args = [default] if default is not None else []
    args += [f"{name}:{value}" for name, value in values.items()]
    return [flag, *args] if args else []


# Tolerance fields and their flags: (field, polygraphy run flag, trtcheck compare flag, format).
_TOLERANCE_FLAGS: tuple[tuple[str, str, str, Callable[[Any], str]], ...] = (
    ("atol", "--atol", "--atol", _number),
    ("rtol", "--rtol", "--rtol", _number),
    ("check_error_stat", "--check-error-stat", "--check-error-stat", str),
    ("error_quantile", "--error-quantile", "--error-quantile", _number),
    ("min_cosine", "--cosine-similarity-threshold", "--cosine", _number),
    ("min_snr", "--snr-threshold", "--snr", _number),
)


def _tolerance_flags(tolerances: Tolerances, for_polygraphy: bool) -> list[str]:
    default = tolerances.default
    uses_quantile = default.check_error_stat == "quantile" or any(
        o.get("check_error_stat") == "quantile" for o in tolerances.per_output.values())
    flags: list[str] = []
    for field_name, polygraphy_flag, trtcheck_flag, fmt in _TOLERANCE_FLAGS:
        if field_name == "error_quantile" and not uses_quantile:
            continue
        base = getattr(default, field_name)
        if not for_polygraphy and default.atol_of_max is not None and field_name in (
                "atol", "rtol", "check_error_stat", "error_quantile"):
            base = None  # the scaled default: spelled out, these flags would switch it off
        # A class-score output's rule comes from the graph (`output_roles`): trtcheck derives it
        # again, and spelling out its atol would turn it into an explicit values tolerance.
        overrides = {name: fmt(o[field_name]) for name, o in tolerances.per_output.items()
                     if o.get(field_name) is not None and not (
                         not for_polygraphy and o.get("criterion") == TOP1
                         and field_name in ("atol", "rtol", "check_error_stat", "error_quantile"))}
        flag = polygraphy_flag if for_polygraphy else trtcheck_flag
        flags += _per_output(flag, overrides, fmt(base) if base is not None else None)
    if for_polygraphy:
        compare = ["simple"]
        if default.min_cosine is not None or any("min_cosine" in o for o in
                                                  tolerances.per_output.values()):
            compare.append("cosine_similarity")
        if default.min_snr is not None or any("min_snr" in o for o in
                                               tolerances.per_output.values()):
            compare.append("snr")
        if len(compare) > 1:
            flags += ["--compare", *compare]
    return flags


def _synthetic_input_flags(feeds: Feeds, settings: InputSettings, dims: Callable, *,
                           every_range: bool) -> list[str]:
    # trtcheck infers again what it inferred from the graph (token ids, masks: a range would make
    # a mask uniform), so its command repeats the given ranges only; Polygraphy gets them all.
    ranges = [f"{d.name}:[{_number(d.value_range[0])},{_number(d.value_range[1])}]"
              for d in feeds.described if d.generator == UNIFORM and (every_range or d.given)]
    return [
        "--input-shapes", *(f"{d.name}:{dims(d.shape)}" for d in feeds.described),
        *(["--val-range", *ranges] if ranges else []),
        "--seed", str(feeds.seed if feeds.seed is not None else settings.seed),
    ]


def trtcheck_command(model_path: str, target: Backend, reference: Backend, feeds: Feeds,
                     settings: InputSettings, tolerances: Tolerances,
                     options: BackendOptions, passes: tuple[str, ...] = (),
                     detections: Sequence[DetectionSpec] = (),
                     quant: QuantRequest | None = None) -> str:
    """The `trtcheck compare` command that repeats this comparison, settings spelled out."""
    args = ["trtcheck", "compare", model_path, "--reference", reference.name, "--target",
            target.name]
    if settings.recorded is not None:
        args += ["--inputs", str(settings.recorded)]
    else:
        args += _synthetic_input_flags(feeds, settings, lambda shape: "x".join(map(str, shape)),
                                       every_range=False)
    args += _tolerance_flags(tolerances, for_polygraphy=False)
    # trtcheck's own checks, which Polygraphy has no flag for.
    agreement = tolerances.default.min_agreement
    args += _per_output("--min-agreement",
                        {name: _number(o["min_agreement"])
                         for name, o in tolerances.per_output.items()
                         if o.get("min_agreement") is not None},
                        _number(agreement) if agreement is not None else None)
    for spec in detections:
        args += ["--detections", spec.describe()]
    if tuple(options.providers) != ("cpu",):
        args += ["--providers", *options.providers]
    if options.tf32:
        args.append("--tf32")
    if options.keep_fp32:
        args += ["--keep-fp32", *sorted(options.keep_fp32)]
    if passes:
        args += ["--passes", *passes]
    if quant is not None:
        args += _quant_flags(quant, target)
    return shlex.join(args)


def _quant_flags(quant: QuantRequest, target: Backend) -> list[str]:
    """Where the target's Q/DQ model came from, as compare's flags."""
    if quant.target_model is not None:
        return ["--target-model", str(quant.target_model)]
    if not target.quantized:
        return []
    flags = []
    if quant.calibration_data is not None:
        flags += ["--calibration-data", str(quant.calibration_data)]
    if quant.calibration_cache is not None:
        flags += ["--calibration-cache", str(quant.calibration_cache)]
    if quant.method != "minmax":
        flags += ["--calibration-method", quant.method]
    return flags


def _target_model(model_path: str, target: Backend, options: BackendOptions,
                  trt_major: int | None, target_model_path: str | None) -> tuple[str, bool]:
    """The model TensorRT builds for the target, and whether it is a converted (typed) one."""
    ran = target_model_path or model_path
    if (trt_major or 10) >= 11 and target.float_precision != "fp32":
        return str(converted_model_path(Path(ran), PrecisionPlan(
            target.float_precision, options.keep_fp32), options)), True
    return ran, False


def reference_outputs_path(model_path: str, options: BackendOptions) -> Path:
    """Where the reference half of a command pair saves its outputs: the work folder."""
    from trtcheck.atomic import session_work_folder

    folder = options.work_dir or session_work_folder()
    return folder / f"{Path(model_path).stem}.reference-outputs.json"


def polygraphy_command(model_path: str, target: Backend, reference: Backend, feeds: Feeds,
                       settings: InputSettings, tolerances: Tolerances,
                       options: BackendOptions, trt_major: int | None,
                       load_inputs: str | None = None,
                       target_model_path: str | None = None) -> str:
    """The `polygraphy run` command that checks the same thing on a machine with TensorRT.

    The target runs first, so Polygraphy's rtol is relative to the reference, as in trtcheck.
    On TensorRT 11 a reduced-precision target needs the converted model that trtcheck writes,
    and with graph passes (`target_model_path`) the target runs the fixed model. `polygraphy
    run` gives every runner the one model it is given, so then the command is a pair joined by
    `&&`: ONNX Runtime runs the original model and saves its outputs, and TensorRT's run of the
    target's model is compared with those (`--load-outputs`), as trtcheck compared them.
    `load_inputs` is a Polygraphy input JSON holding the exact feeds; without it the feeds are
    Polygraphy's own seeded data, given by flags.
    """
    built, converted = _target_model(model_path, target, options, trt_major, target_model_path)
    if converted:
        target_args = [built, "--trt", "--strongly-typed", *(["--tf32"] if options.tf32 else [])]
    else:
        target_args = [built, *polygraphy_flags(target, options, trt_major)]
    inputs = (["--load-inputs", load_inputs] if load_inputs is not None
              else _synthetic_input_flags(feeds, settings, _shape, every_range=True))
    dynamic = [f"{name}:{_shape(shape)}" for name, shape in options.shapes.items()]
    profile: list[str] = []
    if dynamic and (target.family == "trt" or target.emulated):
        for flag in ("--trt-min-shapes", "--trt-opt-shapes", "--trt-max-shapes"):
            profile += [flag, *dynamic]
    checks = [*_tolerance_flags(tolerances, for_polygraphy=True), "--infinities-compare-equal"]
    reference_args = polygraphy_flags(reference, options, trt_major)
    if built == model_path:
        return shlex.join(["polygraphy", "run", *target_args, *reference_args, *inputs, *profile,
                           *checks])
    outputs = str(reference_outputs_path(model_path, options))
    first = ["polygraphy", "run", model_path, *reference_args, *inputs, "--save-outputs", outputs]
    second = ["polygraphy", "run", *target_args, *inputs, *profile, "--load-outputs", outputs,
              *checks]
    return f"{shlex.join(first)} && {shlex.join(second)}"


def polygraphy_note(model_path: str, target: Backend, options: BackendOptions,
                    trt_major: int | None, target_model_path: str | None = None) -> str | None:
    """For a command pair, which model each side runs; None for a single command."""
    built, converted = _target_model(model_path, target, options, trt_major, target_model_path)
    if built == model_path:
        return None
    what = []
    if target.quantized:
        what.append(f"quantized to {target.precision} with Q/DQ")
    elif target_model_path not in (None, model_path):
        what.append("after the graph passes")
    if converted:
        what.append(f"converted to {target.precision} for TensorRT {trt_major}'s strongly typed "
                    "build")
    return (f"the reference (ONNX Runtime) runs the original model {model_path} and saves its "
            f"outputs; TensorRT builds {built} (the model {' and '.join(what)}) and compares "
            "against them")
