"""`trtcheck triton export`: a model's folder in a Triton model repository, from its ONNX file.

The config is a `ModelConfig` message (tritonclient's copy of Triton's schema) printed by
`google.protobuf.text_format`, so it is what Triton itself would parse. Triton's maintainers
answered that no tool writes a config.pbtxt without running Triton (server #3584); Triton's own
auto-complete needs a running server and, for a plan, the engine.

Batching: with `max_batch_size` > 0, Triton prepends the batch dimension to the config's dims,
and its ONNX Runtime and TensorRT backends require that dimension to be dynamic (-1) in the model
("for the model to support batching ... the first dimension must be -1"). A model whose first
dimension is fixed is therefore exported with `max_batch_size: 0` and its full shape; asking for
batching on it is refused. Without `--max-batch`, a model whose inputs and outputs all have a
dynamic first dimension gets 4, Triton's own default-max-batch-size.

For TensorRT, the engine is not built here (that needs TensorRT and the target GPU): the config
says `platform: "tensorrt_plan"`, and the export gives the profile the engine must be built with
(batch 1..max_batch, other dynamic dimensions from the given shapes), the `trtexec` and
`polygraphy convert` commands that build it, and a sidecar JSON describing the expected engine,
which `trtcheck triton check` reads where TensorRT is not installed.
"""

from __future__ import annotations

import os
import shlex
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from trtcheck.atomic import (
    PARTIAL_TAG,
    check_output_folder,
    remove_stale_partials,
    save_onnx,
    write_text,
)
from trtcheck.deploy.triton_common import (
    DYNAMIC,
    ModelIO,
    Profile,
    TensorSpec,
    model_config_pb2,
    onnx_io,
    sidecar_document,
    sidecar_path,
    triton_type,
)
from trtcheck.errors import ModelError, UsageError

PLATFORMS = ("onnxruntime", "tensorrt")
# Triton's --backend-config=default-max-batch-size, used when it auto-completes a config.
DEFAULT_MAX_BATCH = 4
VERSION = "1"
# A dimension left dynamic in a suggested --input-shapes line.
_SUGGESTED_SIZE = 128


@dataclass(frozen=True)
class ExportResult:
    """What `export_model` wrote, and what is left to do for a TensorRT plan."""

    model_folder: Path
    config_path: Path
    config_text: str
    platform: str
    max_batch_size: int
    # The model file written into the version folder (None for a plan, built separately).
    model_file: Path | None = None
    plan_path: Path | None = None
    sidecar: Path | None = None
    profile: Profile = field(default_factory=dict)
    # "trtexec" and "polygraphy" -> a shell command that builds the plan.
    build_commands: dict[str, str] = field(default_factory=dict)

    def summary_lines(self) -> list[str]:
        lines = [f"wrote {self.config_path} (max_batch_size {self.max_batch_size})"]
        if self.model_file is not None:
            lines.append(f"wrote {self.model_file}")
        if self.plan_path is not None:
            lines.append(f"wrote {self.sidecar} (the engine check expects)")
            lines.append(f"build {self.plan_path} with either of:")
            lines += [f"  {command}" for command in self.build_commands.values()]
        return lines


def batchable(io: ModelIO) -> bool:
    """Whether every input and output has a dynamic first dimension Triton can batch along."""
    return all(spec.shape and spec.shape[0] == DYNAMIC for spec in (*io.inputs, *io.outputs))


def _fixed_batch_tensors(io: ModelIO) -> list[TensorSpec]:
    return [spec for spec in (*io.inputs, *io.outputs)
            if not spec.shape or spec.shape[0] != DYNAMIC]


def _max_batch(io: ModelIO, requested: int | None) -> int:
    if requested is None:
        return DEFAULT_MAX_BATCH if batchable(io) else 0
    if requested < 0:
        raise UsageError(f"--max-batch {requested}: give 0 (no batching) or a positive size")
    fixed = _fixed_batch_tensors(io)
    if requested > 0 and fixed:
        listed = ", ".join(f"'{spec.name}' {list(spec.shape or [])}" for spec in fixed)
        raise UsageError(
            f"--max-batch {requested}: {io.source.name} has no dynamic first dimension on "
            f"{listed}, and Triton batches along one; use --max-batch 0 (the config then lists "
            "the full shape), or export the model with a dynamic batch dimension")
    return requested


def _check_shapes(io: ModelIO, shapes: dict[str, tuple[int, ...]]) -> None:
    known = {spec.name: spec for spec in io.inputs}
    for name, shape in shapes.items():
        spec = known.get(name)
        if spec is None:
            raise UsageError(f"--input-shapes {name}: {io.source.name} has no input '{name}' "
                             f"(its inputs: {', '.join(known)})")
        declared = spec.shape or ()
        if len(shape) != len(declared) or any(
                d != DYNAMIC and d != s for d, s in zip(declared, shape, strict=True)):
            raise UsageError(
                f"--input-shapes {name}:{'x'.join(map(str, shape))} does not fit its declared "
                f"shape {list(declared)}; keep the fixed dimensions and the rank")


def _profile(io: ModelIO, max_batch: int, shapes: dict[str, tuple[int, ...]]) -> Profile:
    """min/opt/max per input: batch 1..max_batch, other dynamic dims as given (or shared).

    opt is max: Triton's dynamic batcher forms the largest batches it can.
    """
    bound = {symbol: shapes[spec.name][pos] for spec in io.inputs if spec.name in shapes
             for pos, symbol in enumerate(spec.symbols) if symbol}
    profile: Profile = {}
    missing: list[TensorSpec] = []
    for spec in io.inputs:
        ranges = [_dim_range(spec, pos, max_batch, shapes, bound)
                  for pos in range(len(spec.shape or ()))]
        if any(r is None for r in ranges):
            missing.append(spec)
            continue
        low = tuple(r[0] for r in ranges if r is not None)
        high = tuple(r[1] for r in ranges if r is not None)
        profile[spec.name] = (low, high, high)
    if missing:
        raise UsageError(_missing_shapes_message(io, missing, max_batch))
    return profile


def _dim_range(spec: TensorSpec, pos: int, max_batch: int, shapes: dict[str, tuple[int, ...]],
               bound: dict[str, int]) -> tuple[int, int] | None:
    """(min, max) of one input dimension in the profile, or None when nothing gives it."""
    dim = (spec.shape or ())[pos]
    symbol = spec.symbols[pos] if pos < len(spec.symbols) else ""
    if pos == 0 and max_batch > 0:
        return 1, max_batch
    if dim != DYNAMIC:
        return dim, dim
    if spec.name in shapes:
        return shapes[spec.name][pos], shapes[spec.name][pos]
    if symbol in bound:
        return bound[symbol], bound[symbol]
    return None


def _missing_shapes_message(io: ModelIO, missing: list[TensorSpec], max_batch: int) -> str:
    def suggested(spec: TensorSpec) -> str:
        return "x".join(str(d if d != DYNAMIC else 1 if pos == 0 else _SUGGESTED_SIZE)
                        for pos, d in enumerate(spec.shape or ()))

    names = ", ".join(f"'{spec.name}' {list(spec.symbols)}" for spec in missing)
    batch = f" (the first dimension is the batch: 1..{max_batch} in the profile)" \
        if max_batch > 0 else ""
    return (f"{io.source.name}: the engine's profile needs sizes for the dynamic dimensions of "
            f"{names}; give them, e.g. --input-shapes "
            f"{' '.join(f'{spec.name}:{suggested(spec)}' for spec in missing)}{batch}")


def _dims(spec: TensorSpec, max_batch: int, profile: Profile) -> list[int]:
    shape = list(spec.shape or ())
    if spec.name in profile:
        low, _, high = profile[spec.name]
        shape = [lo if lo == hi else DYNAMIC for lo, hi in zip(low, high, strict=True)]
    return shape[1:] if max_batch > 0 else shape


def build_config(io: ModelIO, name: str, platform: str, max_batch: int, profile: Profile):
    """The `ModelConfig` message for `io` (tritonclient's schema)."""
    schema = model_config_pb2()
    config = schema.ModelConfig(name=name, max_batch_size=max_batch)
    if platform == "tensorrt":
        config.platform = "tensorrt_plan"
    else:
        config.backend = "onnxruntime"
    for kind, specs in (("input", io.inputs), ("output", io.outputs)):
        for spec in specs:
            type_name = triton_type(spec.dtype)
            if type_name is None:
                raise ModelError(f"{io.source}: {kind} '{spec.name}' has type {spec.dtype}, "
                                 "which Triton has no data type for")
            if spec.shape is None:
                raise ModelError(f"{io.source}: {kind} '{spec.name}' has no declared shape, and "
                                 "the config needs its dims; run ONNX shape inference on the "
                                 "model (onnx.shape_inference.infer_shapes) and export it again")
            tensor = getattr(config, kind).add()
            tensor.name = spec.name
            tensor.data_type = schema.DataType.Value(type_name)
            tensor.dims.extend(_dims(spec, max_batch, profile))
            if not tensor.dims:  # Triton requires dims; a scalar is [1] reshaped to []
                tensor.dims.append(1)
                tensor.reshape.SetInParent()
    if max_batch > 0:
        config.dynamic_batching.SetInParent()
    return config


def _shape_flag(profile: Profile, index: int, polygraphy: bool) -> str:
    if polygraphy:
        return " ".join(f"{name}:[{','.join(map(str, shapes[index]))}]"
                        for name, shapes in profile.items())
    return ",".join(f"{name}:{'x'.join(map(str, shapes[index]))}"
                    for name, shapes in profile.items())


def build_commands(model: Path, plan: Path, profile: Profile) -> dict[str, str]:
    """The trtexec and `polygraphy convert` commands that build `plan` with `profile`."""
    trtexec = ["trtexec", f"--onnx={model}", f"--saveEngine={plan}"]
    polygraphy = ["polygraphy", "convert", str(model), "--convert-to", "trt", "-o", str(plan)]
    dynamic = any(low != high for low, _, high in profile.values())
    if dynamic:
        for index, (trt_flag, poly_flag) in enumerate((("--minShapes", "--trt-min-shapes"),
                                                       ("--optShapes", "--trt-opt-shapes"),
                                                       ("--maxShapes", "--trt-max-shapes"))):
            trtexec.append(f"{trt_flag}={_shape_flag(profile, index, polygraphy=False)}")
            polygraphy += [poly_flag, *_shape_flag(profile, index, polygraphy=True).split(" ")]
    return {"trtexec": shlex.join(trtexec), "polygraphy": shlex.join(polygraphy)}


def config_text(config, source: Path, commands: dict[str, str]) -> str:
    from google.protobuf import text_format

    header = [f"# Written by trtcheck triton export from {source}"]
    if commands:
        header.append(f"# {VERSION}/model.plan is built separately, with either of:")
        header += [f"#   {command}" for command in commands.values()]
    body = text_format.MessageToString(config, use_short_repeated_primitives=True)
    return "\n".join(header) + "\n" + body


def _check_name(name: str) -> None:
    if not name or name in (".", "..") or name.startswith(".") or "/" in name or "\\" in name:
        raise UsageError(f"--name {name!r}: a model name is one folder name, not starting with "
                         "'.'; pick another")


def _swap_in(staging: Path, folder: Path) -> None:
    """Renames `staging` to `folder`, replacing an old `folder` only once the new one is whole."""
    if not folder.exists():
        os.replace(staging, folder)
        return
    retired = staging.with_name(staging.name + "-old")
    os.replace(folder, retired)
    os.replace(staging, folder)
    shutil.rmtree(retired, ignore_errors=True)


def export_model(model_path: Path, repo: Path, name: str | None = None,
                 max_batch: int | None = None, platform: str = "onnxruntime",
                 shapes: dict[str, tuple[int, ...]] | None = None,
                 force: bool = False) -> ExportResult:
    """Writes `repo/NAME/config.pbtxt` and its version folder for an ONNX model.

    Args:
        model_path: the ONNX model.
        repo: the model repository (created if missing; a file is refused).
        name: the model's name in Triton (default: the file's stem).
        max_batch: Triton's max_batch_size; None picks 4 for a model that can batch, else 0.
        platform: "onnxruntime" (copies the model, external data too, to 1/model.onnx) or
            "tensorrt" (writes the profile, build commands and sidecar for 1/model.plan).
        shapes: full input shapes fixing dynamic non-batch dimensions of a TensorRT profile.
        force: replace an existing model folder (never done otherwise).

    Raises:
        UsageError: bad flags, an existing folder without `force`, a repo that is a file.
        ModelError: a model Triton cannot describe (unknown types, outputs without shapes).
    """
    if platform not in PLATFORMS:
        raise UsageError(f"--platform {platform}: choose one of {', '.join(PLATFORMS)}")
    model_path, repo = Path(model_path), Path(repo)
    check_output_folder("--repo", repo, inputs=[model_path])
    name = name if name is not None else model_path.stem
    _check_name(name)
    folder = repo / name
    if folder.exists() and not (force and folder.is_dir()):
        what = "a file" if not folder.is_dir() else "a model folder"
        raise UsageError(f"{folder}: already exists as {what}; pass --force to replace it, or "
                         "choose another --name")
    from trtcheck.model import load_model

    loaded = load_model(model_path)  # validates the model and reads its external data
    io = onnx_io(model_path.absolute())
    batch = _max_batch(io, max_batch)
    shapes = dict(shapes or {})
    _check_shapes(io, shapes)
    profile = _profile(io, batch, shapes) if platform == "tensorrt" else {}
    plan = folder / VERSION / "model.plan"
    commands = build_commands(model_path.absolute(), plan.absolute(), profile) \
        if platform == "tensorrt" else {}
    config = build_config(io, name, platform, batch, profile)
    text = config_text(config, model_path.absolute(), commands)

    repo.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(folder)
    staging = Path(tempfile.mkdtemp(prefix=f"{name}{PARTIAL_TAG}{os.getpid()}-", dir=repo))
    try:
        write_text(staging / "config.pbtxt", text)
        if platform == "tensorrt":
            document = sidecar_document(ModelIO(io.source, io.inputs, io.outputs, profile),
                                        batch, commands)
            import json

            write_text(sidecar_path(staging / VERSION / plan.name),
                       json.dumps(document, indent=2) + "\n")
        else:
            save_onnx(loaded.proto, staging / VERSION / "model.onnx",
                      external_data=loaded.has_external_data())
        _swap_in(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return ExportResult(
        model_folder=folder, config_path=folder / "config.pbtxt", config_text=text,
        platform=platform, max_batch_size=batch,
        model_file=None if platform == "tensorrt" else folder / VERSION / "model.onnx",
        plan_path=plan if platform == "tensorrt" else None,
        sidecar=sidecar_path(plan) if platform == "tensorrt" else None,
        profile=profile, build_commands=commands)
