"""Commands that reproduce a comparison: the `polygraphy run` equivalent and the `trtcheck` one."""

from __future__ import annotations

import shlex
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from trtcheck.backends import Backend, BackendOptions, converted_model_path, polygraphy_flags
from trtcheck.inputs import UNIFORM, Feeds, InputSettings
from trtcheck.precision import PrecisionPlan
from trtcheck.tolerance import Tolerances


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
        overrides = {name: fmt(o[field_name]) for name, o in tolerances.per_output.items()
                     if o.get(field_name) is not None}
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
                     options: BackendOptions, passes: tuple[str, ...] = ()) -> str:
    """The `trtcheck compare` command that repeats this comparison, settings spelled out."""
    args = ["trtcheck", "compare", model_path, "--reference", reference.name, "--target",
            target.name]
    if settings.recorded is not None:
        args += ["--inputs", str(settings.recorded)]
    else:
        args += _synthetic_input_flags(feeds, settings, lambda shape: "x".join(map(str, shape)),
                                       every_range=False)
    args += _tolerance_flags(tolerances, for_polygraphy=False)
    if tuple(options.providers) != ("cpu",):
        args += ["--providers", *options.providers]
    if options.tf32:
        args.append("--tf32")
    if options.keep_fp32:
        args += ["--keep-fp32", *sorted(options.keep_fp32)]
    if passes:
        args += ["--passes", *passes]
    return shlex.join(args)


def polygraphy_command(model_path: str, target: Backend, reference: Backend, feeds: Feeds,
                       settings: InputSettings, tolerances: Tolerances,
                       options: BackendOptions, trt_major: int | None,
                       load_inputs: str | None = None) -> str:
    """The `polygraphy run` command that checks the same thing on a machine with TensorRT.

    The target runs first, so Polygraphy's rtol is relative to the reference, as in trtcheck.
    On TensorRT 11 a reduced-precision target needs the converted model that trtcheck writes.
    """
    args = ["polygraphy", "run"]
    if (trt_major or 10) >= 11 and target.precision != "fp32":
        converted = converted_model_path(Path(model_path), PrecisionPlan(
            target.precision, options.keep_fp32), options)
        args += [str(converted), "--trt", "--strongly-typed"]
        if options.tf32:
            args.append("--tf32")
    else:
        args += [model_path, *polygraphy_flags(target, options, trt_major)]
    args += polygraphy_flags(reference, options, trt_major)
    if load_inputs is None and settings.recorded is not None:
        # Polygraphy reads only its own JSON; an .npz must be saved as JSON (--save-inputs) first.
        load_inputs = str(settings.recorded.with_suffix(".json"))
    if load_inputs is not None:
        args += ["--load-inputs", load_inputs]
    else:
        args += _synthetic_input_flags(feeds, settings, _shape, every_range=True)
    dynamic = [f"{name}:{_shape(shape)}" for name, shape in options.shapes.items()]
    if dynamic and (target.family == "trt" or target.emulated):
        for flag in ("--trt-min-shapes", "--trt-opt-shapes", "--trt-max-shapes"):
            args += [flag, *dynamic]
    args += _tolerance_flags(tolerances, for_polygraphy=True)
    args.append("--infinities-compare-equal")
    return shlex.join(args)
