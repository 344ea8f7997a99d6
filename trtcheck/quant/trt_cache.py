"""TensorRT calibration caches: read, write, take from a Q/DQ model, check against a model.

TensorRT 10's implicit quantization (an `IInt8Calibrator` and `--calib`) leaves its measurements
in a calibration cache; TensorRT 11 has no calibrators and builds int8 only from explicit
QuantizeLinear/DequantizeLinear pairs. A cache carries over: its scales become the activation
scales of a Q/DQ model (`CalibrationCache.amax` feeds the quantizer), and the scales of a Q/DQ
model can be written back as a cache to compare with the old one.

The format, as TensorRT writes it and its readers parse it (no published specification):
- the first line names the TensorRT version and the calibrator, `TRT-<version>-<algorithm>`, e.g.
  `TRT-8501-EntropyCalibration2` or `TRT-100300-EntropyCalibration2`; the version is
  `NV_TENSORRT_VERSION` (TensorRT 10's `NV_TENSORRT_VERSION_INT` in include/NvInferRuntimeBase.h
  is major*10000 + minor*100 + patch; TensorRT 8 used major*1000). TensorRT skips a cache whose
  header does not fit the running version and calibrator (NVIDIA/TensorRT #1378) and then
  recalibrates, with no data when none is given (NVIDIA/Deep-Learning-Accelerator-SW #26);
- then one `tensor_name: hex` line per tensor, the hex being the big-endian bits of the float32
  scale, `amax / 127` (`3c010a14`). ONNX Runtime's TensorRT provider reads it this way
  (onnxruntime/core/providers/tensorrt/tensorrt_execution_provider_utils.h, `ReadDynamicRange`:
  dynamic range = scale * 127), and so does ModelOpt's ONNX PTQ
  (modelopt/onnx/quantization/calib_utils.py, `import_scales_from_calib_cache`, which replaces
  the Q scale initializers `<tensor>_scale`). Polygraphy treats the cache as opaque bytes
  (polygraphy/backend/trt/calibrator.py).

Where those readers fall short this module does better: a tensor name may hold ':' (tf2onnx's
`input:0`), where ONNX Runtime's reader splits, so a line splits at its last ': '; and a bad
line is an error naming its file and line, not a skipped or misread scale.
"""

from __future__ import annotations

import difflib
import math
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from trtcheck.errors import InputDataError, ModelError, UsageError

if TYPE_CHECKING:
    import numpy as np
    import onnx

ALGORITHMS = ("EntropyCalibration2", "EntropyCalibration", "MinMaxCalibration",
              "LegacyCalibration")
HEADER_PATTERN = re.compile(r"TRT-(\d+)-(" + "|".join(ALGORITHMS) + r")")
DEFAULT_HEADER = "TRT-100300-EntropyCalibration2"
INT8_MAX = 127
_HEX_PATTERN = re.compile(r"[0-9A-Fa-f]{1,8}")
# Tensors TensorRT names itself, which no ONNX model holds.
_TENSORRT_INTERNAL = re.compile(r"\(Unnamed Layer\* \d+\)|ONNXTRT_")
_QDQ_DOMAINS = ("", "ai.onnx", "com.microsoft")
_MAX_ULPS = 1


@dataclass(frozen=True)
class CalibrationCache:
    """A TensorRT calibration cache: its header line and each tensor's float32 int8 scale.

    `notes` says what a cache taken from a Q/DQ model left out and why (float8, uint8 or
    per-channel activations); it is not part of the file, nor of equality.
    """

    header: str
    scales: dict[str, float]
    notes: tuple[str, ...] = field(default=(), compare=False)

    def __post_init__(self) -> None:
        if not HEADER_PATTERN.fullmatch(self.header):
            raise ValueError(f"not a TensorRT calibration cache header: {self.header!r}")
        if not self.scales:
            raise ValueError("a calibration cache needs at least one tensor")
        bad = [name for name, scale in self.scales.items() if not _usable_scale(scale)]
        if bad:
            raise ValueError(f"scales must be finite and positive: {bad[:3]}")

    def amax(self) -> dict[str, float]:
        """Each tensor's amax, scale * 127, what a quantizer takes.

        The product of a float32 and 127 is exact in a Python float, so a quantizer that divides
        it by 127 in float64 gets the cache's scale back bit for bit; one that rounds amax to
        float32 first gets about 1 scale in 130 back 1 ulp off (measured on 10^6 scales).
        """
        return {name: scale * INT8_MAX for name, scale in self.scales.items()}


def header_for(tensorrt_version: str, algorithm: str = "EntropyCalibration2") -> str:
    """The header line TensorRT `tensorrt_version` (such as "10.3.0") writes for `algorithm`."""
    match = re.fullmatch(r"(\d+)\.(\d+)(?:\.(\d+))?(?:\.\d+)*", tensorrt_version.strip())
    if match is None or algorithm not in ALGORITHMS:
        raise UsageError(f"cannot make a calibration cache header from TensorRT version "
                         f"{tensorrt_version!r} and algorithm {algorithm!r}: give a version such "
                         f"as 10.3.0 and one of {', '.join(ALGORITHMS)}")
    major, minor, patch = (int(part or 0) for part in match.groups())
    version = major * (10000 if major >= 10 else 1000) + minor * 100 + patch
    return f"TRT-{version}-{algorithm}"


def _usable_scale(scale: float) -> bool:
    return math.isfinite(scale) and scale > 0


def _float32_from_hex(text: str) -> float:
    return float(struct.unpack(">f", int(text, 16).to_bytes(4, "big"))[0])


def _hex_from_float32(value: float) -> str:
    return struct.pack(">f", value).hex()


def _cache_text(path: Path) -> str:
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise InputDataError(f"{path}: cannot read the calibration cache ({err.strerror}); "
                             f"give the path of a TensorRT calibration cache file") from err
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise InputDataError(f"{path}:1: not a text file; a TensorRT calibration cache is text "
                             f"(a TRT-<version>-<algorithm> line, then tensor: hex lines)"
                             ) from err


def _check_header(path: Path, lines: list[str]) -> str:
    header = lines[0].strip() if lines else ""
    if not header:
        raise InputDataError(f"{path}:1: empty calibration cache; write the header line "
                             f"(e.g. {DEFAULT_HEADER}) and one 'tensor: hex' line per tensor")
    if not HEADER_PATTERN.fullmatch(header):
        raise InputDataError(f"{path}:1: {header[:60]!r} is not a TensorRT calibration cache "
                             f"header; the first line reads TRT-<version>-<algorithm>, "
                             f"the algorithm one of {', '.join(ALGORITHMS)}")
    return header


def _parse_line(path: Path, number: int, line: str) -> tuple[str, float]:
    name, separator, hex_text = line.rpartition(": ")
    name, hex_text = name.strip(), hex_text.strip()
    if not separator or not name or not _HEX_PATTERN.fullmatch(hex_text):
        raise InputDataError(f"{path}:{number}: {line[:60]!r} is not a 'tensor_name: hex' line "
                             f"(hex: up to 8 hex digits, the float32 scale's big-endian bits)")
    scale = _float32_from_hex(hex_text)
    if not _usable_scale(scale):
        raise InputDataError(f"{path}:{number}: tensor {name!r} has scale {scale} ({hex_text}); "
                             f"a scale must be finite and positive: remove the line or "
                             f"recalibrate")
    return name, scale


def read_cache(path: Path) -> CalibrationCache:
    """Reads a TensorRT calibration cache; a bad file is an InputDataError naming its line."""
    lines = _cache_text(path).splitlines()
    header = _check_header(path, lines)
    scales: dict[str, float] = {}
    first_line: dict[str, int] = {}
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        name, scale = _parse_line(path, number, line)
        if name in scales:
            raise InputDataError(f"{path}:{number}: tensor {name!r} again (first on line "
                                 f"{first_line[name]}); keep one line per tensor")
        scales[name], first_line[name] = scale, number
    if not scales:
        raise InputDataError(f"{path}:{len(lines) + 1}: the calibration cache has a header but "
                             f"no tensor lines; add one 'tensor_name: hex' line per tensor")
    return CalibrationCache(header, scales)


def write_cache(path: Path, cache: CalibrationCache) -> None:
    """Writes `cache` as TensorRT reads it, each scale as the bits of its float32, atomically."""
    from trtcheck.atomic import write_text

    lines = [cache.header]
    lines += [f"{name}: {_hex_from_float32(scale)}" for name, scale in cache.scales.items()]
    write_text(path, "\n".join(lines) + "\n")


@dataclass(frozen=True)
class _Constants:
    """The main graph's initializers and Constant outputs, by name, as TensorProtos."""

    tensors: dict[str, onnx.TensorProto]

    @classmethod
    def of(cls, graph: onnx.GraphProto) -> _Constants:
        tensors = {tensor.name: tensor for tensor in graph.initializer}
        for node in graph.node:
            if node.op_type == "Constant" and node.domain in _QDQ_DOMAINS and node.output:
                tensor = _constant_value(node)
                if tensor is not None:
                    tensors[node.output[0]] = tensor
        return cls(tensors)

    def array(self, name: str) -> np.ndarray | None:
        from onnx import numpy_helper

        tensor = self.tensors.get(name)
        if tensor is None:
            return None
        try:
            return numpy_helper.to_array(tensor)
        except (ValueError, TypeError, OSError):  # external data not loaded, or an odd type
            return None


def _constant_value(node: onnx.NodeProto) -> onnx.TensorProto | None:
    import numpy as np
    from onnx import helper, numpy_helper

    for attribute in node.attribute:
        value = helper.get_attribute_value(attribute)
        if attribute.name == "value":
            return value
        if attribute.name in ("value_float", "value_floats"):
            return numpy_helper.from_array(np.asarray(value, dtype=np.float32))
    return None


@dataclass(frozen=True)
class _QuantizeNode:
    """One QuantizeLinear: the fp32 tensor it reads (by its fp32 model name) and its setting."""

    node: onnx.NodeProto
    tensor: str
    label: str


def _quantize_nodes(graph: onnx.GraphProto) -> list[_QuantizeNode]:
    graph_outputs = {output.name for output in graph.output}
    dequantized_output = {node.input[0]: node.output[0] for node in graph.node
                          if node.op_type == "DequantizeLinear" and node.input}
    found = []
    for index, node in enumerate(graph.node):
        if node.op_type != "QuantizeLinear" or node.domain not in _QDQ_DOMAINS:
            continue
        tensor = node.input[0]
        # ONNX Runtime's quantizer renames a quantized graph output X: the fp32 value becomes
        # X_QuantizeLinear_Input and the DequantizeLinear writes X, the fp32 model's name.
        restored = dequantized_output.get(node.output[0]) if node.output else None
        if restored in graph_outputs and tensor == f"{restored}_QuantizeLinear_Input":
            tensor = restored
        label = f"QuantizeLinear {node.name or f'#{index}'!r} on {tensor!r}"
        found.append(_QuantizeNode(node, tensor, label))
    return found


def _quantized_type(quantize: onnx.NodeProto, constants: _Constants) -> int:
    import onnx

    if len(quantize.input) > 2 and quantize.input[2]:
        zero_point = constants.tensors.get(quantize.input[2])
        return zero_point.data_type if zero_point is not None else onnx.TensorProto.UNDEFINED
    for attribute in quantize.attribute:
        if attribute.name == "output_dtype" and attribute.i:
            return int(attribute.i)
    return onnx.TensorProto.UINT8  # the operator's default without a zero point


def _type_problem(quantize: _QuantizeNode, constants: _Constants) -> str | None:
    import onnx

    data_type = _quantized_type(quantize.node, constants)
    if data_type == onnx.TensorProto.INT8:
        return None
    if data_type == onnx.TensorProto.UNDEFINED:
        return f"{quantize.label}: its zero point is computed at run time; left out"
    type_name = onnx.TensorProto.DataType.Name(data_type)
    if type_name.startswith("FLOAT8"):
        return (f"{quantize.label} quantizes to {type_name}: a TensorRT calibration cache holds "
                f"int8 scales only, and TensorRT takes fp8 only as explicit Q/DQ; left out")
    return (f"{quantize.label} quantizes to {type_name}: TensorRT's implicit int8 is symmetric "
            f"int8 (quantize activations as symmetric int8); left out")


def _int8_scale(quantize: _QuantizeNode, constants: _Constants) -> tuple[float | None, str]:
    """The per-tensor int8 scale of `quantize`, or None and the reason it has none."""
    problem = _type_problem(quantize, constants)
    if problem is not None:
        return None, problem
    node = quantize.node
    zero_point = constants.array(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    if zero_point is not None and zero_point.any():
        return None, (f"{quantize.label} has a non-zero zero point: TensorRT's int8 is "
                      f"symmetric; left out")
    scale = constants.array(node.input[1])
    if scale is None:
        return None, f"{quantize.label}: its scale is computed at run time; left out"
    if scale.size != 1:
        return None, (f"{quantize.label} has {scale.size} scales (per channel or per block): a "
                      f"calibration cache holds one scale per tensor; left out")
    value = float(scale.reshape(-1)[0])
    if not _usable_scale(value):
        return None, f"{quantize.label} has scale {value}, not finite and positive; left out"
    return value, ""


def _activation_scales(model: onnx.ModelProto) -> tuple[dict[str, float], list[str]]:
    """fp32 tensor name -> int8 scale of the model's activation QuantizeLinear nodes, and notes."""
    graph = model.graph
    constants = _Constants.of(graph)
    scales: dict[str, float] = {}
    notes: list[str] = []
    weights = 0
    for quantize in _quantize_nodes(graph):
        if quantize.node.input[0] in constants.tensors:
            weights += 1  # TensorRT calibrates activations; weights are quantized at build time
            continue
        scale, problem = _int8_scale(quantize, constants)
        if scale is None:
            notes.append(problem)
        elif scales.setdefault(quantize.tensor, scale) != scale:
            notes.append(f"{quantize.label} has scale {scale:.9g}, another QuantizeLinear on "
                         f"the same tensor {scales[quantize.tensor]:.9g}; the first is kept")
    if weights:
        notes.append(f"{weights} QuantizeLinear node(s) on weights left out: a calibration cache "
                     f"holds activations only")
    return scales, notes


def cache_from_qdq(model: onnx.ModelProto, header: str = DEFAULT_HEADER) -> CalibrationCache:
    """The calibration cache of a Q/DQ model's per-tensor int8 activation QuantizeLinear nodes.

    Each entry is the fp32 tensor a QuantizeLinear reads, by its name in the fp32 model, and the
    node's scale (an initializer or a Constant). Left out, each with a note in `notes`: weights
    (a cache holds activations), float8, uint8 or non-zero zero points (TensorRT's implicit int8
    is symmetric int8), per-channel activation scales, scales computed at run time. Q nodes
    inside subgraphs (If, Loop) are not read. Pass `header_for(version)` for the TensorRT that
    will read the cache: TensorRT skips a cache whose header names another version.
    """
    if not HEADER_PATTERN.fullmatch(header):
        raise UsageError(f"{header!r} is not a TensorRT calibration cache header; give "
                         f"TRT-<version>-<algorithm>, e.g. {DEFAULT_HEADER} "
                         f"(header_for('10.3.0'))")
    scales, notes = _activation_scales(model)
    if not scales:
        reasons = f" ({notes[0]}{' ...' if len(notes) > 1 else ''})" if notes else ""
        raise ModelError(f"the model has no per-tensor int8 activation QuantizeLinear node"
                         f"{reasons}; quantize it with symmetric int8 activations first")
    return CalibrationCache(header, scales, tuple(notes))


_FLOAT_TYPES = frozenset({1, 10, 11, 16})  # FLOAT, FLOAT16, DOUBLE, BFLOAT16


def _tensor_types(model: onnx.ModelProto) -> dict[str, int]:
    import onnx

    try:
        graph = onnx.shape_inference.infer_shapes(model).graph
    except (onnx.shape_inference.InferenceError, ValueError):  # > 2 GB, or inconsistent
        graph = model.graph
    infos = [*graph.input, *graph.value_info, *graph.output]
    return {info.name: info.type.tensor_type.elem_type for info in infos}


def _float_activations(model: onnx.ModelProto) -> dict[str, str]:
    """Float tensors TensorRT 10 would calibrate: inputs and the outputs of computing nodes.

    Values computed from constants alone (TensorRT folds them) and the outputs of Q/DQ nodes
    are left out. Tensor -> what it is, for messages.
    """
    graph = model.graph
    types = _tensor_types(model)
    constant = {tensor.name for tensor in graph.initializer}
    activations = {info.name: "graph input" for info in graph.input
                   if info.name not in constant and types.get(info.name) in _FLOAT_TYPES}
    for index, node in enumerate(graph.node):
        inputs = [name for name in node.input if name]
        if node.op_type == "Constant" or (inputs and all(name in constant for name in inputs)):
            constant.update(node.output)
            continue
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            continue
        for output in node.output:
            if output and types.get(output) in _FLOAT_TYPES:
                activations[output] = f"output of {node.op_type} {node.name or f'#{index}'!r}"
    return activations


def _all_tensor_names(graph: onnx.GraphProto) -> set[str]:
    names = {info.name for info in graph.input} | {tensor.name for tensor in graph.initializer}
    for node in graph.node:
        names.update(node.output)
    return names


def _ulps(a: float, b: float) -> int:
    bits_a, bits_b = (struct.unpack(">I", struct.pack(">f", value))[0] for value in (a, b))
    return abs(bits_a - bits_b)


def _activation_names(graph: onnx.GraphProto) -> list[str]:
    """Graph inputs and the outputs of nodes other than Q/DQ: what a renamed entry may mean."""
    names = [info.name for info in graph.input]
    for node in graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear", "Constant"):
            names.extend(node.output)
    return names


def _unknown_names(cache: CalibrationCache, graph: onnx.GraphProto) -> list[str]:
    names, activations = _all_tensor_names(graph), _activation_names(graph)
    internal = [name for name in cache.scales if _TENSORRT_INTERNAL.match(name)]
    warnings = []
    for name in cache.scales:
        if name in names or name in internal:
            continue
        close = difflib.get_close_matches(name, activations, n=1)
        hint = f" (renamed? the model has {close[0]!r})" if close else ""
        warnings.append(f"cache tensor {name!r} is not in the model{hint}: its scale is not "
                        f"used")
    if internal:
        warnings.append(f"{len(internal)} cache tensor(s) named by TensorRT itself, such as "
                        f"{internal[0]!r}, have no ONNX name: their scales are not used")
    return warnings


def _scale_differences(cache: CalibrationCache, model_scales: dict[str, float]) -> list[str]:
    warnings = []
    for name, scale in model_scales.items():
        cached = cache.scales.get(name)
        if cached is not None and _ulps(cached, scale) > _MAX_ULPS:
            warnings.append(f"{name!r}: the model's QuantizeLinear scale {scale:.9g} differs "
                            f"from the cache's {cached:.9g} (amax {scale * INT8_MAX:.6g} against "
                            f"{cached * INT8_MAX:.6g})")
    return warnings


def check_cache_against_model(cache: CalibrationCache, model: onnx.ModelProto) -> list[str]:
    """What does not fit between `cache` and `model`, one warning a line (empty: all fits).

    TensorRT's ONNX parser names tensors after the ONNX tensor names, so a cache entry that
    names no tensor of the model (another export, a renamed tensor) is not used; a model
    activation without an entry makes TensorRT 10 fall back from int8 on the layers around it
    ("Missing scale and zero-point for tensor"). For a Q/DQ model the activations are those its
    QuantizeLinear nodes read, and scales that differ from the cache by more than 1 float32 ulp
    are reported too.
    """
    warnings = _unknown_names(cache, model.graph)
    model_scales, _ = _activation_scales(model)
    if any(node.op_type == "QuantizeLinear" for node in model.graph.node):
        expected = {name: "read by a QuantizeLinear" for name in model_scales}
        warnings += _scale_differences(cache, model_scales)
    else:
        expected = _float_activations(model)
    warnings += [f"activation {name!r} ({what}) has no scale in the cache: TensorRT would not "
                 f"run int8 on the layers that read or write it"
                 for name, what in expected.items() if name not in cache.scales]
    return warnings
