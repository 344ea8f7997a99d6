"""`trtcheck fix`: run the graph passes on a model, verify each, write the result atomically."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import onnx

from trtcheck.atomic import fits_in_protobuf, save_onnx, session_work_folder
from trtcheck.errors import BackendRunError, ModelError
from trtcheck.inputs import Feeds, InputSettings, make_feeds
from trtcheck.model import LoadedModel, load_model, offload_weights
from trtcheck.passes import PassContext
from trtcheck.passes.pipeline import DEFAULT_RTOL, PipelineResult, run_pipeline, select_passes


@dataclass
class FixResult:
    source: Path
    output: Path | None
    pipeline: PipelineResult
    feeds: Feeds
    nodes_before: int
    nodes_after: int


def apply_passes(model: LoadedModel, names: list[str] | None, feeds: Feeds,
                 rtol: float = DEFAULT_RTOL, static_shapes: bool = False) -> PipelineResult:
    """Runs the selected passes (all by default) on `model`, verified on `feeds`.

    With `static_shapes`, dynamic input dimensions become the fed shapes in the result.
    Over 2 GB, which protobuf can neither copy nor serialise, the passes work on a copy whose
    weights are external data in a work folder (`PipelineResult.weights_folder`).
    """
    shapes = {d.name: d.shape for d in feeds.described if model.input(d.name).is_dynamic}
    context = PassContext(shapes=shapes if static_shapes else {})
    proto, weights_folder = model.proto, None
    if not fits_in_protobuf(proto):
        weights_folder = Path(tempfile.mkdtemp(prefix="weights-", dir=session_work_folder()))
        proto = offload_weights(proto, weights_folder)
    return run_pipeline(proto, select_passes(names), context, feeds.iterations, rtol,
                        weights_folder)


def save_model(model: onnx.ModelProto, path: Path, external_data: bool = False,
               weights_folder: Path | None = None) -> None:
    """Writes `model` to `path` through a temporary file, weights beside it if asked or over 2 GB.

    `weights_folder` holds the weights of a model the passes worked on offloaded.
    """
    save_onnx(model, path, external_data=external_data, weights_folder=weights_folder)


def fix_model(source: Path, output: Path | None, passes: list[str] | None = None,
              inputs: InputSettings | None = None, rtol: float = DEFAULT_RTOL,
              require_verification: bool = True, static_shapes: bool = False) -> FixResult:
    """Loads `source`, applies the passes with verification, writes `output` if given."""
    from trtcheck.run import quiet_polygraphy

    with quiet_polygraphy():
        return _fix_model(source, output, passes, inputs, rtol, require_verification,
                          static_shapes)


def _fix_model(source: Path, output: Path | None, passes: list[str] | None,
               inputs: InputSettings | None, rtol: float, require_verification: bool,
               static_shapes: bool) -> FixResult:
    if output is not None and Path(output).resolve() == Path(source).resolve():
        raise ModelError(f"{output}: the output would overwrite the input model; pick another "
                         "path with -o")
    model = load_model(source)
    names = select_passes(passes)
    feeds = make_feeds(model, inputs or InputSettings())
    result = apply_passes(model, names, feeds, rtol, static_shapes)
    if not result.verified and require_verification:
        raise BackendRunError(f"{source}: cannot verify the passes: {result.reason_unverified}; "
                              "nothing written (--no-verify writes it unverified)")
    if output is not None:
        # Weights stay in external data when the input kept them there.
        save_model(result.model, Path(output), external_data=model.has_external_data(),
                   weights_folder=result.weights_folder)
    return FixResult(Path(source), Path(output) if output else None, result, feeds,
                     len(model.proto.graph.node), len(result.model.graph.node))
