"""The model an int8/fp8 target runs: quantized here, or the user's own Q/DQ model.

- `onnxrt-int8` / `trt-int8` (and fp8) quantize the fp32 model the way TensorRT quantizes
  (`quant.quantize`), calibrated on `--calibration-data`, on the scales of a TensorRT calibration
  cache (`--calibration-cache`), or on synthetic feeds with a warning that the scales mean nothing.
- `--target-model QDQ.onnx` is a model quantized elsewhere (ModelOpt, ONNX Runtime, a QAT
  export): it must take the reference's inputs and give its outputs, and hold only the quantized
  types TensorRT builds.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from trtcheck.errors import ModelError, UsageError

if TYPE_CHECKING:
    import onnx

    from trtcheck.backend_names import Backend
    from trtcheck.inputs import InputSettings
    from trtcheck.model import LoadedModel

TARGET_MODEL_FLAG = "--target-model"
# Zero-point (Q/DQ) types TensorRT builds: int8, float8 e4m3, and int4 for weights
# (onnx-tensorrt's QuantizeLinear/DequantizeLinear, trtcheck/lint_data).
_SUPPORTED_TYPES = {3: "int8", 17: "float8e4m3fn", 22: "int4"}


@dataclass(frozen=True)
class QuantRequest:
    """Where the target's Q/DQ model comes from (see the module docstring)."""

    calibration_data: Path | None = None
    calibration_cache: Path | None = None
    method: str = "minmax"
    target_model: Path | None = None

    def check(self) -> None:
        if self.target_model is not None and (self.calibration_data or self.calibration_cache):
            raise UsageError(f"{TARGET_MODEL_FLAG} is quantized already: drop --calibration-data "
                             "and --calibration-cache, or quantize here without it")
        if self.calibration_data is not None and self.calibration_cache is not None:
            raise UsageError("give --calibration-data or --calibration-cache, not both")


def quantized_target(model: LoadedModel, target: Backend, request: QuantRequest,
                     inputs: InputSettings, work_dir: Path, given: LoadedModel | None = None
                     ) -> tuple[LoadedModel, list[str]]:
    """The Q/DQ model `target` runs, and notes for the user (synthetic calibration, cache).

    `given` is `request.target_model` loaded already, if the caller did.
    """
    from trtcheck.model import load_model

    request.check()
    if request.target_model is not None:
        given = given or load_model(request.target_model)
        check_target_model(model, given)
        return given, []
    from trtcheck.quant.quantize import QuantSettings, quantized_model_path

    calibration, amax, notes = calibration_source(model, request, inputs)
    settings = QuantSettings(target.precision, request.method)
    path = quantized_model_path(model, settings, calibration, work_dir, amax=amax)
    return load_model(path), notes


def calibration_source(model: LoadedModel, request: QuantRequest, inputs: InputSettings
                       ) -> tuple[list[dict] | None, dict[str, float] | None, list[str]]:
    """Calibration feeds or a cache's amax ranges (one is None), and notes for the user."""
    if request.calibration_cache is not None:
        from trtcheck.quant.trt_cache import check_cache_against_model, read_cache

        cache = read_cache(request.calibration_cache)
        warnings = check_cache_against_model(cache, model.proto)
        # A cache covers the tensors TensorRT quantized; one line for the rest, not one each.
        unscaled = [w.split("'")[1] for w in warnings if "has no scale in the cache" in w]
        notes = [f"{request.calibration_cache.name}: {w}" for w in warnings
                 if "has no scale in the cache" not in w]
        if unscaled:
            shown = ", ".join(unscaled[:5]) + (f" and {len(unscaled) - 5} more"
                                               if len(unscaled) > 5 else "")
            notes.append(f"{request.calibration_cache.name}: {len(unscaled)} activation(s) have "
                         f"no scale in the cache ({shown}); the nodes reading them stay in float")
        return None, cache.amax(), notes
    if request.calibration_data is not None:
        from trtcheck.quant.calibration_data import load_calibration_set

        return load_calibration_set(request.calibration_data, model), None, []
    from trtcheck.quant.calibration_data import synthetic_calibration_set

    calibration, warning = synthetic_calibration_set(model, inputs)
    return calibration, None, [warning]


def check_target_model(reference: LoadedModel, target: LoadedModel) -> None:
    """Raises `UsageError` (exit 2), one line, when `target` cannot stand in for `reference`."""
    where = f"{TARGET_MODEL_FLAG} {target.path.name}"
    ref_inputs = {i.name: i for i in reference.inputs}
    tgt_inputs = {i.name: i for i in target.inputs}
    if set(ref_inputs) != set(tgt_inputs):
        raise UsageError(f"{where}: its inputs ({', '.join(tgt_inputs)}) are not the reference "
                         f"model's ({', '.join(ref_inputs)}); quantize {reference.path.name} "
                         "itself, keeping its input names")
    for name, info in ref_inputs.items():
        other = tgt_inputs[name]
        if other.dtype != info.dtype or len(other.shape) != len(info.shape) or any(
                isinstance(a, int) and isinstance(b, int) and a != b
                for a, b in zip(info.shape, other.shape, strict=True)):
            raise UsageError(
                f"{where}: input '{name}' is {other.dtype}{list(other.shape)}, the reference's "
                f"is {info.dtype}{list(info.shape)}; the two models must take the same inputs")
    missing = [name for name in reference.output_names if name not in target.output_names]
    if missing:
        raise UsageError(f"{where}: it lacks output(s) {', '.join(missing)} of "
                         f"{reference.path.name} (it has: {', '.join(target.output_names)}); "
                         "outputs are matched by name")
    unsupported = unsupported_quantized_types(target.proto)
    if unsupported:
        node, kind = unsupported[0]
        raise ModelError(f"{where}: node {node} quantizes to {kind}, which TensorRT does not "
                         "build (it takes int8, float8e4m3fn, and int4 weights); quantize to "
                         "int8 with symmetric scales (ONNX Runtime: QuantType.QInt8)")


def unsupported_quantized_types(model: onnx.ModelProto) -> list[tuple[str, str]]:
    """(node, type) of each Q/DQ whose quantized type TensorRT does not take."""
    from onnx import TensorProto

    types = {init.name: init.data_type for init in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute:
            types[node.output[0]] = node.attribute[0].t.data_type
    found = []
    for node in model.graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        kind: int
        if node.op_type == "QuantizeLinear" and (len(node.input) < 3 or not node.input[2]):
            # No zero point: opset 21's output_dtype, else ONNX's default, uint8.
            output_type = next((a.i for a in node.attribute if a.name == "output_dtype"), 0)
            kind = output_type or TensorProto.UINT8
        else:
            source = node.input[2] if len(node.input) > 2 and node.input[2] else node.input[0]
            kind = types.get(source, TensorProto.INT8 if node.op_type == "DequantizeLinear"
                             else TensorProto.UINT8)
        if kind not in _SUPPORTED_TYPES and kind != TensorProto.INT32:  # int32 bias: lint's
            found.append((node.name or node.output[0], TensorProto.DataType.Name(kind).lower()))
    return found
