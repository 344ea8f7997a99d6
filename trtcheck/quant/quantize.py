"""Post-training quantization to an explicit Q/DQ model the way TensorRT quantizes.

ONNX Runtime's quantizer (`onnxruntime.quantization`: its calibrators and `QDQQuantizer`) does the
work, configured to TensorRT's rules (docs/quantization.md says why not NVIDIA ModelOpt):
1. Q/DQ on the inputs of the operators TensorRT runs in int8 from weights: Conv, ConvTranspose,
   Gemm, MatMul (TensorRT's "quantize all inputs of weighted operations"); no outputs quantized.
2. Symmetric everywhere: zero points 0 (TensorRT takes no other), activations per tensor.
3. Weights per output channel: Conv axis 0, ConvTranspose axis 1, Gemm 0 or 1 after transB,
   MatMul the last axis (ONNX Runtime's own MatMul default, axis 1, is the reduced one on 3-D
   weights).
4. No int32 bias: TensorRT adds the bias in float (`QuantizeBias: False`).
5. fp8 (float8 e4m3fn, opset 19): scale = amax / 448, TensorRT's and ModelOpt's rule, from the
   same symmetric ranges. ONNX Runtime's own float8 path sets scales from the standard deviation
   (its "Distribution" calibration), which is not what TensorRT does.

Ranges come from calibration feeds (minmax, entropy or percentile) or are given as amax per
activation tensor (e.g. a TensorRT calibration cache: scale x 127).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from trtcheck.errors import BackendRunError, InputDataError, UsageError
from trtcheck.inputs import Feed

if TYPE_CHECKING:
    import onnx

    from trtcheck.model import LoadedModel

PRECISIONS = ("int8", "fp8")
METHODS = ("minmax", "entropy", "percentile")
QUANTIZED_OP_TYPES = ("Conv", "ConvTranspose", "Gemm", "MatMul")
INT8_MAX = 127.0
FP8_E4M3_MAX = 448.0
# ONNX Runtime's default for its percentile calibrator; TensorRT's entropy calibrator uses 2048
# histogram bins folded into 128 quantized ones.
PERCENTILE = 99.999
ENTROPY_BINS = 2048
ENTROPY_QUANTIZED_BINS = 128
# Bump when the rules above change, so that cached Q/DQ models are made again.
RULES_VERSION = 1
# ONNX Runtime's session optimizer (rule "ReluQuantRewrite", checked on 1.32) drops a Relu that
# feeds a QuantizeLinear whose zero point is 0, right for uint8 but wrong for float8 e4m3fn, which
# holds negatives: cnn()'s fp8 model falls from cosine 0.9995 to 0.87 against fp32. Sessions that
# run fp8 Q/DQ models pass this as `disabled_optimizers`.
ORT_FP8_DISABLED_OPTIMIZERS = ("ReluQuantRewrite",)


@dataclass(frozen=True)
class QuantSettings:
    """How a model is quantized; part of the cache key of the quantized model."""

    precision: str  # "int8" or "fp8" (float8 e4m3fn)
    method: str = "minmax"  # calibration: "minmax", "entropy", "percentile" (int8); fp8: minmax
    per_channel: bool = True  # weights per output channel (TensorRT's rule)
    exclude: tuple[str, ...] = ()  # node names left unquantized

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise UsageError(f"quantization precision '{self.precision}' is not one of "
                             f"{', '.join(PRECISIONS)}")
        if self.method not in METHODS:
            raise UsageError(f"calibration method '{self.method}' is not one of "
                             f"{', '.join(METHODS)}")
        if self.precision == "fp8" and self.method != "minmax":
            # amax / 448 is TensorRT's fp8 scale; entropy and percentile clip for int8 rounding.
            raise UsageError(f"calibration method '{self.method}' is for int8; fp8 scales are "
                             "amax / 448, use method 'minmax'")


def quantize_model(model: LoadedModel, settings: QuantSettings,
                   calibration: Sequence[Feed] | None = None,
                   amax: dict[str, float] | None = None) -> onnx.ModelProto:
    """A Q/DQ copy of `model`, ranges from `calibration` feeds or given `amax` (exactly one).

    The result is checked to load and run in an ONNX Runtime CPU session. `model` is unchanged;
    work files go to a temporary folder, never beside the model.
    """
    _check_sources(model, calibration, amax)
    _check_exclude(model, settings)
    from trtcheck.atomic import session_work_folder

    with tempfile.TemporaryDirectory(prefix="quantize-", dir=session_work_folder()) as work:
        prepared, large = _prepared(model)
        if amax is not None:
            ranges, nodes = _given_ranges(model, amax, settings)
        else:
            assert calibration is not None
            ranges = _calibrate(prepared, large, calibration, settings, Path(work))
            nodes = None
        if nodes == []:
            # Every covered node excluded: nothing to quantize (the quantizer would read an
            # empty list as "all nodes").
            from trtcheck.model import copy_model

            return copy_model(model.proto)
        quantized = _insert_qdq(prepared, ranges, nodes, settings)
    if settings.precision == "fp8":
        _int8_to_fp8(quantized)
    _check_runs(quantized, model, calibration)
    return quantized


def calibrated_amax(model: LoadedModel, settings: QuantSettings,
                    calibration: Sequence[Feed]) -> dict[str, float]:
    """The activation ranges `quantize_model` calibrates on `calibration`, as amax per tensor.

    Quantizing again with them (`amax=`) gives the same scales without running the feeds
    through the model again: what the INT8 fix does for each candidate set of exclusions.
    """
    _check_sources(model, calibration, None)
    from trtcheck.atomic import session_work_folder

    with tempfile.TemporaryDirectory(prefix="calibrate-", dir=session_work_folder()) as work:
        prepared, large = _prepared(model)
        ranges = _calibrate(prepared, large, calibration, settings, Path(work))
    return {name: float(max(abs(float(np.max(low))), abs(float(np.max(high)))))
            for name, (low, high) in ((name, data.range_value) for name, data in ranges.items())}


def _check_sources(model: LoadedModel, calibration: Sequence[Feed] | None,
                   amax: dict[str, float] | None) -> None:
    if (calibration is None) == (amax is None):
        raise UsageError("quantizing needs calibration feeds or amax ranges, exactly one of them")
    if calibration is not None and not calibration:
        raise InputDataError(f"calibration set for {model.path.name} is empty; give at least one "
                             "feed")
    from trtcheck.tolerance import check_tolerance_value

    # 0 is a tensor that was all zero on the calibration feeds (ONNX Runtime's calibrator gives
    # such ranges; the quantizer then uses a scale of 1).
    for name, value in (amax or {}).items():
        check_tolerance_value(f"amax of tensor '{name}' (int8 scale x 127)", value,
                              error=InputDataError)


def _check_exclude(model: LoadedModel, settings: QuantSettings) -> None:
    names = {node.name for node in model.proto.graph.node}
    unknown = [name for name in settings.exclude if name not in names]
    if unknown:
        raise UsageError(f"node '{unknown[0]}' to leave unquantized is not in "
                         f"{model.path.name}; name a node of its graph (`trtcheck` reports name "
                         "them as the model does)")


# `_prepare`d models by file identity (path, size, modification time), in this process's
# temporary folder: the INT8 fix quantizes one model once per candidate, and its symbolic shape
# inference alone takes 7.5 s on ViT-B/16 (the same for every candidate). Two at most.
_PREPARED: dict[tuple, tuple[Path, bool]] = {}


def _prepared(model: LoadedModel) -> tuple[Path, bool]:
    """`_prepare(model)`, done once per model file in this process."""
    from trtcheck.atomic import session_work_folder

    stat = model.path.stat()
    key = (str(model.path.resolve()), stat.st_size, stat.st_mtime_ns)
    found = _PREPARED.get(key)
    if found is not None and found[0].is_file():
        return found
    while len(_PREPARED) >= 2:
        evicted, _ = _PREPARED.pop(next(iter(_PREPARED)))
        shutil.rmtree(evicted.parent, ignore_errors=True)
    folder = Path(tempfile.mkdtemp(prefix="prepared-", dir=session_work_folder()))
    try:
        _PREPARED[key] = _prepare(model, folder)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return _PREPARED[key]


def _prepare(model: LoadedModel, work: Path) -> tuple[Path, bool]:
    """`model` saved in `work` through ONNX Runtime's `quant_pre_process` (shape inference).

    Returns its path, and whether it is over protobuf's 2 GB limit (its weights in a data file).

    Graph optimization is skipped: it renames and fuses nodes, and `exclude` names the user's
    nodes. Symbolic shape inference does not know every operator (custom ones); where it fails,
    ONNX's own shape inference is enough for the quantizer, which needs the tensors' types.
    """
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from trtcheck.atomic import fits_in_protobuf, save_onnx

    large = not fits_in_protobuf(model.proto)
    source = work / "model.onnx"
    save_onnx(model.proto, source, external_data=large)
    prepared = work / "prepared.onnx"
    options: dict[str, Any] = {"skip_optimization": True, "save_as_external_data": large,
                               "all_tensors_to_one_file": True}
    try:
        quant_pre_process(str(source), str(prepared), **options)
    except Exception:  # noqa: BLE001 (symbolic shape inference raises many kinds of errors)
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True, **options)
    return prepared, large


def _calibrate(prepared: Path, large: bool, calibration: Sequence[Feed],
               settings: QuantSettings, work: Path):
    """Symmetric activation ranges measured by ONNX Runtime's calibrator on the feeds."""
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod
    from onnxruntime.quantization.calibrate import create_calibrator

    class FeedReader(CalibrationDataReader):
        def __init__(self) -> None:
            self._feeds = iter(calibration)

        def get_next(self) -> Feed | None:
            return next(self._feeds, None)

    methods = {"minmax": (CalibrationMethod.MinMax, {"symmetric": True}),
               "entropy": (CalibrationMethod.Entropy,
                           {"symmetric": True, "num_bins": ENTROPY_BINS,
                            "num_quantized_bins": ENTROPY_QUANTIZED_BINS}),
               "percentile": (CalibrationMethod.Percentile,
                              {"symmetric": True, "percentile": PERCENTILE})}
    method, options = methods[settings.method]
    calibrator = create_calibrator(
        prepared, list(QUANTIZED_OP_TYPES), augmented_model_path=str(work / "augmented.onnx"),
        calibrate_method=method, use_external_data_format=large,
        providers=["CPUExecutionProvider"], extra_options=options)
    calibrator.collect_data(FeedReader())
    return calibrator.compute_data()


def _given_ranges(model: LoadedModel, amax: dict[str, float], settings: QuantSettings):
    """Ranges [-amax, amax] and the nodes they cover: those whose every activation input has one.

    A TensorRT calibration cache names the tensors TensorRT saw; a node with an input it does not
    name stays unquantized (as ModelOpt does with a cache), rather than get a made-up scale.
    """
    from onnxruntime.quantization import CalibrationMethod
    from onnxruntime.quantization.calibrate import TensorData, TensorsData

    weights = {init.name for init in model.proto.graph.initializer}
    covered = [node.name for node in model.proto.graph.node
               if node.op_type in QUANTIZED_OP_TYPES
               and all(name in amax for name in node.input[:2] if name and name not in weights)]
    # Excluding every covered node leaves nothing quantized: a candidate of the INT8 fix.
    nodes = [name for name in covered if name not in settings.exclude]
    if not covered:
        raise InputDataError(
            f"the amax ranges name no input of a {'/'.join(QUANTIZED_OP_TYPES)} node of "
            f"{model.path.name}; give ranges for its tensors by their ONNX names")
    ranges = {name: TensorData(lowest=np.float32(-value), highest=np.float32(value))
              for name, value in amax.items()}
    return TensorsData(CalibrationMethod.MinMax, ranges), nodes


def _extra_options(proto: onnx.ModelProto) -> dict[str, Any]:
    """ONNX Runtime's quantizer options that make TensorRT's rules (module docstring)."""
    return {
        "ActivationSymmetric": True,
        "WeightSymmetric": True,
        "QuantizeBias": False,
        "QDQDisableWeightAdjustForInt32Bias": True,
        "QDQOpTypePerChannelSupportToAxis": {"MatMul": -1},
        "OpTypesToExcludeOutputQuantization": sorted({node.op_type for node in proto.graph.node}),
        "DedicatedQDQPair": False,
        # fp8 scales are rewritten from the weights' Q/DQ pair (`_int8_to_fp8`): the weights stay
        # float, as ModelOpt keeps them, and TensorRT folds the Q into the weights.
        "AddQDQPairToWeight": False,
    }


def _insert_qdq(prepared: Path, ranges, nodes: list[str] | None,
                settings: QuantSettings) -> onnx.ModelProto:
    from onnxruntime.quantization import QuantType
    from onnxruntime.quantization.qdq_quantizer import QDQQuantizer
    from onnxruntime.quantization.quant_utils import (
        load_model_with_shape_infer,
        update_opset_version,
    )

    proto = load_model_with_shape_infer(prepared)
    if settings.precision == "fp8":
        # float8 Q/DQ need opset 19; ONNX Runtime says so on the root logger, a warning meant
        # for its own users that trtcheck's would read as a problem with their model.
        logging.disable(logging.WARNING)
        try:
            proto = update_opset_version(proto, QuantType.QFLOAT8E4M3FN)
        finally:
            logging.disable(logging.NOTSET)
    set_aside = _set_aside_colliding(proto.graph)
    options = _extra_options(proto)
    options["AddQDQPairToWeight"] = settings.precision == "fp8"
    quantizer = QDQQuantizer(proto, settings.per_channel, False, QuantType.QInt8,
                             QuantType.QInt8, _renamed_ranges(ranges, set_aside), nodes or [],
                             list(settings.exclude), list(QUANTIZED_OP_TYPES), options)
    quantized = quantizer.quantize_model()
    _restore_names(quantized.graph, set_aside)
    # The quantizer appends its Q/DQ nodes at the end: ONNX Runtime sorts them itself, but
    # onnx.checker, and TensorRT's parser, need the nodes in topological order.
    from onnxruntime.quantization.onnx_model import ONNXModel

    ONNXModel(quantized).topological_sort()
    return quantized


# ONNX Runtime's quantizer names what it adds for tensor T `T_scale`, `T_zero_point`, ... without
# checking that the name is free: a model with tensors `T` and `T_scale` (transformer_block's
# `ffn/gelu` and `ffn/gelu_scale`) gets two tensors named `T_scale` and fails to run. Such
# tensors are renamed while the quantizer works and get their names back after.
_ORT_SUFFIXES = ("_scale", "_zero_point", "_quantized", "_QuantizeLinear_Output",
                 "_DequantizeLinear_Output")
_SET_ASIDE = "::trtcheck-set-aside"


def _tensor_names(graph: onnx.GraphProto) -> set[str]:
    names = {init.name for init in graph.initializer}
    names.update(value.name for value in [*graph.input, *graph.output, *graph.value_info])
    for node in graph.node:
        names.update(node.input)
        names.update(node.output)
    names.discard("")
    return names


def _rename(graph: onnx.GraphProto, renames: dict[str, str]) -> None:
    if not renames:
        return
    for node in graph.node:
        for names in (node.input, node.output):
            for index, name in enumerate(names):
                names[index] = renames.get(name, name)
    for item in [*graph.initializer, *graph.input, *graph.output, *graph.value_info]:
        item.name = renames.get(item.name, item.name)


def _set_aside_colliding(graph: onnx.GraphProto) -> dict[str, str]:
    """Renames tensors named like what the quantizer adds; returns temporary -> original name.

    Graph inputs keep their names: the calibration feeds use them.
    """
    names = _tensor_names(graph)
    inputs = {value.name for value in graph.input}
    colliding = [name for name in names if name not in inputs and any(
        name.endswith(suffix) and name[:-len(suffix)] in names for suffix in _ORT_SUFFIXES)]
    renames = {name: name + _SET_ASIDE for name in colliding}
    _rename(graph, renames)
    return {temporary: original for original, temporary in renames.items()}


def _restore_names(graph: onnx.GraphProto, set_aside: dict[str, str]) -> None:
    """The model's tensors get their names back; the quantizer's own tensors take new ones."""
    names = _tensor_names(graph)
    taken: dict[str, str] = {}
    for original in set_aside.values():
        if original in names:
            number = 1
            while f"{original}_{number}" in names:
                number += 1
            taken[original] = f"{original}_{number}"
            names.add(taken[original])
    _rename(graph, taken)
    _rename(graph, set_aside)


def _renamed_ranges(ranges, set_aside: dict[str, str]):
    from onnxruntime.quantization.calibrate import TensorsData

    temporary = {original: name for name, original in set_aside.items()}
    return TensorsData(ranges.calibration_method,
                       {temporary.get(name, name): ranges[name] for name in ranges})


def _int8_to_fp8(proto: onnx.ModelProto) -> None:
    """Turns the symmetric int8 Q/DQ of `proto` into float8 e4m3fn: scale x 127 / 448, zp 0.

    Every Q/DQ here is symmetric (amax = scale x 127) and weights keep their float values behind
    a Q/DQ pair, so rescaling gives TensorRT's fp8 scale, amax / 448, without a second
    calibration.
    """
    import onnx
    from onnx import numpy_helper

    initializers = {init.name: init for init in proto.graph.initializer}
    done: set[str] = set()
    for node in proto.graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        scale, zero_point = node.input[1], node.input[2]
        if scale not in done:
            array = numpy_helper.to_array(initializers[scale])
            initializers[scale].CopyFrom(numpy_helper.from_array(
                (array * (INT8_MAX / FP8_E4M3_MAX)).astype(array.dtype), scale))
            done.add(scale)
        if zero_point not in done:
            dims = list(initializers[zero_point].dims)
            zeros = onnx.helper.make_tensor(zero_point, onnx.TensorProto.FLOAT8E4M3FN, dims,
                                            [0.0] * int(np.prod(dims, dtype=np.int64)))
            initializers[zero_point].CopyFrom(zeros)
            done.add(zero_point)


def _check_runs(proto: onnx.ModelProto, model: LoadedModel,
                calibration: Sequence[Feed] | None) -> None:
    """Raises `BackendRunError` unless ONNX Runtime's CPU session loads `proto` (and runs it)."""
    import onnxruntime

    from trtcheck.atomic import session_file

    feed = calibration[0] if calibration else _zeros_feed(model)
    try:
        with session_file(proto) as source:
            session = onnxruntime.InferenceSession(
                source, providers=["CPUExecutionProvider"],
                disabled_optimizers=list(ORT_FP8_DISABLED_OPTIMIZERS))
            if feed is not None:
                session.run(None, feed)
    except Exception as err:  # noqa: BLE001 (ONNX Runtime raises its own, unexported types)
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise BackendRunError(
            f"the Q/DQ model made from {model.path.name} does not run in ONNX Runtime "
            f"({first}); leave the failing node unquantized (exclude it)") from err


def _zeros_feed(model: LoadedModel) -> Feed | None:
    """Zeros for every input when all shapes are static (amax mode has no feeds), else None."""
    if any(info.is_dynamic for info in model.inputs):
        return None
    return {info.name: np.zeros([int(d) for d in info.shape if d is not None], info.dtype)
            for info in model.inputs}


def quantized_model_path(model: LoadedModel, settings: QuantSettings,
                         calibration: Sequence[Feed] | None, work_dir: Path,
                         amax: dict[str, float] | None = None) -> Path:
    """The Q/DQ model's file in `work_dir`, made by `quantize_model` unless already there.

    The file name carries a key over the model's sha256, the calibration feeds (or amax), the
    settings and the versions of ONNX Runtime, onnx and trtcheck, so any change makes another.
    """
    key = _cache_key(model, settings, calibration, amax)
    path = Path(work_dir) / f"{model.path.stem}.{settings.precision}.{key}.onnx"
    if path.is_file():
        return path
    from trtcheck.atomic import fits_in_protobuf, prepare_work_folder, save_onnx

    quantized = quantize_model(model, settings, calibration, amax)
    prepare_work_folder(path.parent)
    save_onnx(quantized, path, external_data=not fits_in_protobuf(quantized))
    return path


def _cache_key(model: LoadedModel, settings: QuantSettings, calibration: Sequence[Feed] | None,
               amax: dict[str, float] | None) -> str:
    import onnx
    import onnxruntime

    import trtcheck
    from trtcheck.quant.calibration_data import calibration_digest

    data = (f"calibration {calibration_digest(list(calibration))}" if calibration is not None
            else f"amax {_amax_digest(amax or {})}")
    described = json.dumps({
        "model": model.sha256, "data": data, "precision": settings.precision,
        "method": settings.method, "per_channel": settings.per_channel,
        "exclude": sorted(settings.exclude), "rules": RULES_VERSION,
        "versions": [onnxruntime.__version__, onnx.__version__, trtcheck.__version__],
    }, sort_keys=True)
    return hashlib.sha256(described.encode()).hexdigest()[:16]


def _amax_digest(amax: dict[str, float]) -> str:
    text = "\n".join(f"{name}\0{float(value).hex()}" for name, value in sorted(amax.items()))
    return hashlib.sha256(text.encode()).hexdigest()
