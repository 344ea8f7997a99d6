"""What export and check share: Triton's schema, data types, model I/O and the engine sidecar.

The sidecar (`1/model.plan.trtcheck.json`) describes the I/O and the optimisation profile of the
engine that `trtcheck triton export` asks for; `check` compares a config with it when TensorRT is
not installed, since a plan can only be read by the TensorRT that built it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trtcheck.errors import BackendUnavailableError, ModelError

# Triton's variable-size dimension (WILDCARD_DIM in its sources).
DYNAMIC = -1
SIDECAR_SUFFIX = ".trtcheck.json"
SIDECAR_FORMAT = 1

# numpy dtype names (what ONNX element types map to) -> Triton's DataType names. Strings are
# numpy objects; bfloat16 is ml_dtypes' name, which onnx uses for it.
TRITON_TYPES = {
    "bool": "TYPE_BOOL", "uint8": "TYPE_UINT8", "uint16": "TYPE_UINT16",
    "uint32": "TYPE_UINT32", "uint64": "TYPE_UINT64", "int8": "TYPE_INT8",
    "int16": "TYPE_INT16", "int32": "TYPE_INT32", "int64": "TYPE_INT64",
    "float16": "TYPE_FP16", "float32": "TYPE_FP32", "float64": "TYPE_FP64",
    "bfloat16": "TYPE_BF16", "object": "TYPE_STRING",
}

Shape = tuple[int, ...]
# Input name -> (min, opt, max) shapes of an optimisation profile.
Profile = dict[str, tuple[Shape, Shape, Shape]]


def model_config_pb2():
    """Triton's `model_config_pb2`, as shipped by tritonclient (needs its `grpc` extra)."""
    try:
        from tritonclient.grpc import model_config_pb2 as schema
    except (ImportError, RuntimeError) as err:
        # tritonclient without its grpc extra raises RuntimeError from tritonclient.grpc.
        from trtcheck.distribution import install_command

        raise BackendUnavailableError(
            "Triton's model configuration schema (tritonclient) is not installed: "
            f"{install_command('triton')}") from err
    return schema


def triton_type(dtype_name: str) -> str | None:
    """Triton's TYPE_* name for a numpy dtype name, or None when Triton has no such type."""
    return TRITON_TYPES.get(dtype_name)


@dataclass(frozen=True)
class TensorSpec:
    """One input or output of a model file: its name, numpy dtype name and full shape.

    `shape` is None when the model does not declare a rank; dynamic dimensions are -1, and
    `symbols` keeps ONNX's dimension names (or "") so that shared dimensions can be resolved.
    """

    name: str
    dtype: str
    shape: tuple[int, ...] | None
    symbols: tuple[str, ...] = ()


@dataclass(frozen=True)
class ModelIO:
    """The inputs and outputs a model file (ONNX, or an engine through its sidecar) declares."""

    source: Path
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    # Engine only: optimisation profile 0.
    profile: Profile = field(default_factory=dict)
    # ONNX only: external-data files the model names that are missing beside it.
    missing_data: tuple[str, ...] = ()

    def tensors(self, kind: str) -> tuple[TensorSpec, ...]:
        return self.inputs if kind == "input" else self.outputs

    def profile_max_batch(self) -> int | None:
        """The largest batch every input's profile admits (None without a profile)."""
        maxima = [shapes[2][0] for shapes in self.profile.values() if shapes[2]]
        return min(maxima) if maxima else None


def _value_spec(value) -> TensorSpec:
    import onnx

    tensor_type = value.type.tensor_type
    dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type).name
    if not tensor_type.HasField("shape"):
        return TensorSpec(value.name, dtype, None)
    dims, symbols = [], []
    for dim in tensor_type.shape.dim:
        fixed = dim.HasField("dim_value") and dim.dim_value > 0
        dims.append(dim.dim_value if fixed else DYNAMIC)
        symbols.append("" if fixed else dim.dim_param)
    return TensorSpec(value.name, dtype, tuple(dims), tuple(symbols))


def onnx_io(path: Path) -> ModelIO:
    """The graph inputs (initializers excluded) and outputs of an ONNX file, weights unread.

    Raises `ModelError` for a file that is not a readable ONNX model.
    """
    import onnx
    from google.protobuf.message import DecodeError

    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, OSError) as err:
        raise ModelError(f"{path}: not a readable ONNX model ({err}); re-export it") from err
    if model.ir_version == 0 or not model.graph.output:
        raise ModelError(f"{path}: not an ONNX model (no IR version or no graph outputs)")
    graph = model.graph
    weights = {tensor.name for tensor in graph.initializer}
    return ModelIO(
        source=path,
        inputs=tuple(_value_spec(v) for v in graph.input if v.name not in weights),
        outputs=tuple(_value_spec(v) for v in graph.output),
        missing_data=_missing_data(model, path.parent),
    )


def _missing_data(model, folder: Path) -> tuple[str, ...]:
    import onnx

    from trtcheck.model import all_initializers

    locations = {entry.value for tensor in all_initializers(model.graph)
                 if tensor.data_location == onnx.TensorProto.EXTERNAL
                 for entry in tensor.external_data if entry.key == "location"}
    return tuple(sorted(loc for loc in locations if not (folder / loc).is_file()))


def sidecar_path(plan: Path) -> Path:
    return plan.with_name(plan.name + SIDECAR_SUFFIX)


def _spec_json(spec: TensorSpec) -> dict[str, Any]:
    return {"name": spec.name, "dtype": spec.dtype,
            "shape": list(spec.shape) if spec.shape is not None else None}


def sidecar_document(io: ModelIO, max_batch_size: int, commands: dict[str, str]) -> dict:
    """The sidecar's JSON: the engine's expected I/O, its profile and how to build it."""
    inputs = []
    for spec in io.inputs:
        entry = _spec_json(spec)
        if spec.name in io.profile:
            low, opt, high = io.profile[spec.name]
            entry["profile"] = {"min": list(low), "opt": list(opt), "max": list(high)}
        inputs.append(entry)
    return {
        "trtcheck_sidecar": SIDECAR_FORMAT,
        "describes": "the TensorRT engine that `trtcheck triton export` asks to be built here",
        "source_model": str(io.source),
        "max_batch_size": max_batch_size,
        "inputs": inputs,
        "outputs": [_spec_json(spec) for spec in io.outputs],
        "build": commands,
    }


def read_sidecar(path: Path) -> ModelIO:
    """The engine I/O a sidecar describes; `ValueError` naming the problem if it is malformed."""
    try:
        document = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"cannot be read as JSON ({err})") from err
    if not isinstance(document, dict) or document.get("trtcheck_sidecar") != SIDECAR_FORMAT:
        raise ValueError(f"not a trtcheck sidecar of format {SIDECAR_FORMAT}")
    try:
        def spec(entry: dict) -> TensorSpec:
            shape = entry.get("shape")
            return TensorSpec(str(entry["name"]), str(entry["dtype"]),
                              tuple(int(d) for d in shape) if shape is not None else None)

        def shape(values: list) -> Shape:
            return tuple(int(d) for d in values)

        profile: Profile = {
            str(entry["name"]): (shape(entry["profile"]["min"]), shape(entry["profile"]["opt"]),
                                 shape(entry["profile"]["max"]))
            for entry in document["inputs"] if "profile" in entry}
        return ModelIO(path, tuple(spec(e) for e in document["inputs"]),
                       tuple(spec(e) for e in document["outputs"]), profile)
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"malformed ({type(err).__name__}: {err})") from err


def tensorrt_engine_io(plan: Path) -> ModelIO | None:
    """The I/O and profile 0 of a serialised engine, or None when TensorRT is not usable here.

    Deserialising needs the TensorRT version that built the plan (and a GPU); a failure raises
    `ValueError` with TensorRT's reason. Not exercised on machines without TensorRT.
    """
    from trtcheck.backends import tensorrt_usable

    if not tensorrt_usable():
        return None
    import tensorrt as trt
    from polygraphy.backend.common import BytesFromPath
    from polygraphy.backend.trt import EngineFromBytes
    from polygraphy.datatype import DataType

    try:
        engine = EngineFromBytes(BytesFromPath(str(plan)))()
    except Exception as err:  # Polygraphy reports TensorRT's own deserialisation error
        raise ValueError(f"TensorRT {trt.__version__} cannot deserialise it ({err})") from err
    inputs, outputs, profile = [], [], Profile()
    for index in range(engine.num_io_tensors):
        name = engine.get_tensor_name(index)
        dtype = DataType.to_dtype(DataType.from_dtype(engine.get_tensor_dtype(name)), "numpy")
        spec = TensorSpec(name, dtype.name, tuple(engine.get_tensor_shape(name)))
        if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
            inputs.append(spec)
            if engine.num_optimization_profiles > 0:
                low, opt, high = engine.get_tensor_profile_shape(name, 0)
                profile[name] = (tuple(low), tuple(opt), tuple(high))
        else:
            outputs.append(spec)
    return ModelIO(plan, tuple(inputs), tuple(outputs), profile)
