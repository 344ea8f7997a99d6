"""Backends by name, each realised as a Polygraphy runner.

- `onnxrt`: ONNX Runtime in fp32, the default reference.
- `onnxrt-fp16`, `onnxrt-bf16`: ONNX Runtime on a model whose reduced nodes round every float
  tensor through the reduced type (`precision.emulate`), standing in for TensorRT on machines
  without a GPU.
- `trt`, `trt-fp16`, `trt-bf16`: TensorRT through Polygraphy's lazy loaders. On TensorRT 10
  reduced precision comes from builder flags (and fp32 layer constraints for nodes the plan keeps);
  on TensorRT 11, which only builds strongly typed networks, from an ONNX model converted by
  `precision.convert`. The chain is built without importing `tensorrt`; only running it needs it.

There is no runner class hierarchy here: Polygraphy has one, and a table of factories is enough.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
from collections.abc import Callable, Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trtcheck.backend_names import Backend
from trtcheck.distribution import install_command
from trtcheck.errors import BackendUnavailableError, UsageError

if TYPE_CHECKING:
    # onnx is not imported by this module: a child that only builds ONNX Runtime sessions from
    # a model file (`run.started_early`) never needs it.
    import onnx

    from trtcheck.model import LoadedModel
    from trtcheck.precision import PrecisionPlan

TRT_INSTALL_HINT = (
    f"install it on a machine with an NVIDIA GPU with `{install_command('trt')}`, "
    "or pick an emulated target such as --target onnxrt-fp16"
)


@dataclass(frozen=True)
class BackendOptions:
    """Settings shared by every backend of one comparison."""

    providers: tuple[str, ...] = ("cpu",)
    tf32: bool = False
    keep_fp32: frozenset[str] = field(default_factory=frozenset)
    # Static shapes for inputs whose declared shape is dynamic (TensorRT profiles use them).
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    # TensorRT's major version; None means detect it from the installed package.
    trt_major: int | None = None
    # Where a TensorRT 11 target writes its converted model (None: a temporary folder).
    work_dir: Path | None = None
    # A prebuilt engine a trt target runs instead of building one (`--target-engine`).
    engine: Path | None = None
    # trt targets reuse engines built before with the same key (`trtcheck.engine.cache`).
    engine_cache: bool = True


def tensorrt_version() -> str | None:
    """The installed TensorRT version, found without importing `tensorrt` where possible."""
    if importlib.util.find_spec("tensorrt") is None:
        return None
    from importlib import metadata

    for dist in ("tensorrt", "tensorrt-cu13", "tensorrt-cu12", "tensorrt-cu11"):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    # A TensorRT from a tarball or a container: no distribution metadata, only the module.
    try:
        import tensorrt

        return str(tensorrt.__version__)
    except (ImportError, OSError):
        return None


def tensorrt_usable() -> bool:
    """Whether `tensorrt` imports here (a bindings-only wheel without its libraries does not)."""
    if importlib.util.find_spec("tensorrt") is None:
        return False
    try:
        import tensorrt  # noqa: F401
    except (ImportError, OSError):
        return False
    return True


def default_target() -> tuple[str, str]:
    """The target to use when none is given, and the one-line reason for the choice."""
    if tensorrt_usable():
        return "trt-fp16", f"TensorRT {tensorrt_version()} found"
    return (
        "onnxrt-fp16",
        "TensorRT is not importable here, so fp16 is emulated on ONNX Runtime "
        "(pass --target trt-fp16 on a GPU machine)",
    )


# Inside `reusing_models()`, a bisection's models are kept: the model as loaded (the comparison
# before it loaded it already), the last emulated model (bisection runs one plan many times, a
# batch of marked tensors per run, and emulating a large model each time costs as much as
# running it) and a large model's weights, written once to a data file that every marked copy of
# it refers to (`_shared_weights`). Elsewhere nothing is kept, so that a comparison's peak memory
# stays low.
_EMULATED: ContextVar[dict | None] = ContextVar("trtcheck_emulated", default=None)
_LOADED: ContextVar[dict | None] = ContextVar("trtcheck_loaded", default=None)
# Keyed by the model's id; the model is kept with its entry.
_SHARED_WEIGHTS: ContextVar[dict | None] = ContextVar("trtcheck_shared_weights", default=None)
# From this size of weights on, a run's marked copy is a light model over the shared data file
# rather than the whole model serialised again (0.5 s a run on ViT-B/16's 330 MB, and a copy of
# it in ONNX Runtime).
SHARED_WEIGHTS_BYTES = 32 << 20


@contextlib.contextmanager
def reusing_models() -> Iterator[None]:
    """Keeps the models of the runs inside the block for reuse; nested blocks share the outer's."""
    if _EMULATED.get() is not None:
        yield
        return
    shared: dict = {}
    tokens = _EMULATED.set({}), _LOADED.set({}), _SHARED_WEIGHTS.set(shared)
    try:
        yield
    finally:
        _EMULATED.reset(tokens[0])
        _LOADED.reset(tokens[1])
        _SHARED_WEIGHTS.reset(tokens[2])
        import shutil

        for _, entry in shared.values():
            if entry is not None:  # a pytest session goes on: its data files go now
                shutil.rmtree(entry[1], ignore_errors=True)


def loaded_model(path: str | Path) -> LoadedModel:
    """`model.load_model(path)`, or inside `reusing_models()` the model loaded there before.

    Keyed by the file's identity (path, size, modification time), so that a file changed in
    between is loaded again.
    """
    from trtcheck.model import load_model

    cache = _LOADED.get()
    if cache is None:
        return load_model(path)
    try:
        stat = Path(path).stat()
        key: tuple = (str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)
    except OSError:
        return load_model(path)  # its one-line error
    if key not in cache:
        cache[key] = load_model(path)
    return cache[key]


def emulated_model(model: LoadedModel, plan: PrecisionPlan) -> onnx.ModelProto:
    from trtcheck.precision import emulate

    cache = _EMULATED.get()
    if cache is None:
        return emulate(model.proto, plan)
    # The proto is kept with its entry, so its id names it alone (no hash of a large file).
    key = (id(model.proto), plan)
    if key not in cache:
        # Two at most: the bisected model's, and the one-node model that checks the culprit.
        while len(cache) >= 2:
            del cache[next(iter(cache))]
        cache[key] = model.proto, emulate(model.proto, plan)
    return cache[key][1]


@functools.cache
def _warm_onnxruntime() -> None:
    """Imports the runner modules and creates one ONNX Runtime session, once per process.

    ONNX Runtime initialises its kernel registries and CPU dispatch on the first session of a
    process; done here, every forked run inherits them (about 15 ms less per run).
    """
    import onnxruntime
    import polygraphy.backend.onnxrt  # noqa: F401
    import polygraphy.comparator  # noqa: F401
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])], "warm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    with contextlib.suppress(Exception):
        onnxruntime.InferenceSession(model.SerializeToString(), options,
                                     providers=["CPUExecutionProvider"])


def prepare_in_parent(model: LoadedModel, backend: Backend, options: BackendOptions,
                      mark: Sequence[str] = ()) -> bytes | str | None:
    """Work done before a run forks; returns what `make_runner` takes as `source`.

    Imports ONNX Runtime and Polygraphy's runner modules once (Polygraphy imports them lazily,
    so each child would import them afresh: about 80 ms) and, for ONNX Runtime, builds the
    session's model here (emulated, marked, serialised). A child that built it would write
    hundreds of MB into pages shared copy-on-write with this process, each write a page copy
    (+18% wall time on ViT-B/16), and a bisection's emulated-model cache would be lost with
    every child. TensorRT is not touched: CUDA must be initialised in children only.
    """
    _warm_onnxruntime()
    if backend.family != "onnxrt":
        return None
    return onnxrt_session_source(model, backend, options, mark)


def onnxrt_session_source(model: LoadedModel, backend: Backend, options: BackendOptions,
                          mark: Sequence[str] = ()) -> bytes | str:
    """The model an ONNX Runtime session loads: serialised bytes, or a path.

    The model as loaded is its file (`model.load_model` changes nothing), so ONNX Runtime reads
    that path itself, as `polygraphy run` does: no serialising in Python, no second copy in
    memory. An emulated or marked model over 2 GB cannot be serialised: it is saved with its
    weights beside it in the work folder, and the session loads that path.
    """
    from trtcheck.precision import PrecisionPlan

    plan = PrecisionPlan(backend.float_precision, options.keep_fp32)
    if backend.emulated or mark:
        from trtcheck.atomic import session_source, session_work_folder

        runnable = emulated_model(model, plan) if backend.emulated else model.proto
        folder = options.work_dir or session_work_folder()
        name = f"{model.path.stem}.{backend.name}.session.onnx"
        shared = _shared_weights(runnable) if mark else None
        if shared is not None:
            runnable, folder = shared
        if mark:
            from trtcheck.marking import mark_outputs

            runnable = mark_outputs(runnable, mark)
        if shared is not None:
            # Beside the data file its tensors name; the light model is small.
            from trtcheck.atomic import save_onnx

            save_onnx(runnable, folder / name)
            return str(folder / name)
        return session_source(runnable, folder / name)
    return str(model.path)


def _shared_weights(proto: onnx.ModelProto) -> tuple[onnx.ModelProto, Path] | None:
    """In a bisection, `proto` with its weights in a data file written once for all its runs.

    Returns the light model (its tensors point at the data file) and the folder holding both, or
    None outside `reusing_models()` or for weights under `SHARED_WEIGHTS_BYTES`.
    """
    cache = _SHARED_WEIGHTS.get()
    if cache is None:
        return None
    if id(proto) not in cache:
        # Two at most, as emulated models: the reference's and the target's being bisected.
        while len(cache) >= 2:
            _, evicted = cache.pop(next(iter(cache)))
            if evicted is not None:
                import shutil

                shutil.rmtree(evicted[1], ignore_errors=True)
        from trtcheck.atomic import session_work_folder, weight_bytes
        from trtcheck.model import offload_weights

        entry = None
        if weight_bytes(proto) >= SHARED_WEIGHTS_BYTES:
            import tempfile

            # This process's temporary folder, never the user's work folder: it is 1x the model.
            folder = Path(tempfile.mkdtemp(prefix="weights-", dir=session_work_folder()))
            entry = offload_weights(proto, folder), folder
        cache[id(proto)] = proto, entry  # the proto is kept: its id stays its own
    return cache[id(proto)][1]


def _onnxrt_runner(source: bytes | str, options: BackendOptions, name: str, now: bool = False,
                   disabled_optimizers: Sequence[str] = ()):
    """Polygraphy's ONNX Runtime runner; `now` builds its session here rather than when run."""
    import onnxruntime
    from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx

    # ONNX Runtime's optimizer warnings (e.g. "UnsqueezeElimination cannot remove node") are
    # noise for a user comparing outputs; errors still show.
    onnxruntime.set_default_logger_severity(3)
    session: Callable[[], Any] = SessionFromOnnx(source, providers=list(options.providers))
    if disabled_optimizers:
        # Polygraphy's SessionFromOnnx takes no disabled optimizers (an fp8 Q/DQ model needs
        # one off: `quant.quantize.ORT_FP8_DISABLED_OPTIMIZERS`).
        session = functools.partial(_session_without, source, list(options.providers),
                                    list(disabled_optimizers))
    return OnnxrtRunner(session() if now else session, name=name)


def _session_without(source: bytes | str, providers: list[str], disabled: list[str]) -> Any:
    import onnxruntime
    from polygraphy import util

    # Provider names matched as SessionFromOnnx matches them ("cpu" -> CPUExecutionProvider).
    available = onnxruntime.get_available_providers()
    matched = [util.find_str_in_iterable(name, available) or name for name in providers]
    return onnxruntime.InferenceSession(source, providers=matched, disabled_optimizers=disabled)


def disabled_optimizers(model: LoadedModel) -> tuple[str, ...]:
    """The ONNX Runtime optimizers a session of `model` must run without (fp8 Q/DQ models)."""
    from trtcheck.output_roles import quantized_type

    if quantized_type(model.proto) != "fp8":
        return ()
    from trtcheck.quant.quantize import ORT_FP8_DISABLED_OPTIMIZERS

    return tuple(ORT_FP8_DISABLED_OPTIMIZERS)


class ConvertedOnnxPath:
    """A lazy loader for `NetworkFromOnnxPath`: writes the plan's converted model, returns its path.

    TensorRT 11 takes reduced precision only from the model's own tensor types.
    """

    def __init__(self, model: LoadedModel, plan: PrecisionPlan, destination: Path) -> None:
        self.model = model
        self.plan = plan
        self.destination = destination

    def __call__(self) -> str:
        from trtcheck.atomic import save_onnx
        from trtcheck.precision import convert

        save_onnx(convert(self.model.proto, self.plan), self.destination)
        return str(self.destination)


class KeepLayersInFp32:
    """Network postprocessing for TensorRT 10: pins the plan's fp32 nodes to fp32.

    onnx-tensorrt names a layer after its ONNX node, with a suffix when a node becomes several
    layers ("node_1", "node/sub"). A layer belongs to the longest node name that equals it or
    prefixes it that way, so keeping "conv1" does not pin a separate node "conv1_relu".
    """

    def __init__(self, node_names: frozenset[str], model_nodes: frozenset[str] = frozenset()):
        self.node_names = node_names
        self.model_nodes = model_nodes | node_names

    def owner(self, layer_name: str) -> str | None:
        """The ONNX node that a layer of this name comes from, if any."""
        candidates = [node for node in self.model_nodes if layer_name == node or any(
            layer_name.startswith(node + sep) for sep in ("_", "/"))]
        return max(candidates, key=len) if candidates else None

    def matches(self, layer_name: str) -> bool:
        return self.owner(layer_name) in self.node_names

    def __call__(self, network: Any) -> Any:
        import tensorrt as trt

        for layer in network:
            if not self.matches(layer.name):
                continue
            layer.precision = trt.float32
            for index in range(layer.num_outputs):
                if layer.get_output(index).dtype in (trt.float16, trt.bfloat16, trt.float32):
                    layer.set_output_type(index, trt.float32)
        return network


@dataclass
class TrtChain:
    """The Polygraphy loader chain of a TensorRT target, inspectable before anything runs."""

    trt_major: int
    onnx_path: str | Callable[[], str]
    config: Any
    network: Any
    engine: Any
    runner: Any


def converted_model_path(model_path: Path, plan: PrecisionPlan, options: BackendOptions) -> Path:
    """Where a TensorRT 11 target writes the model converted to the plan's precision.

    That is the work folder, or this process's temporary one: never beside the user's model.
    """
    from trtcheck.atomic import session_work_folder

    folder = options.work_dir or session_work_folder()
    return folder / f"{model_path.stem}.{plan.precision}.onnx"


def _profile_shapes(model: LoadedModel, options: BackendOptions) -> dict[str, tuple[int, ...]]:
    return {inp.name: options.shapes[inp.name] for inp in model.inputs
            if inp.is_dynamic and inp.name in options.shapes}


def trt_chain(model: LoadedModel, backend: Backend, plan: PrecisionPlan,
              options: BackendOptions, name: str, mark: Sequence[str] = ()) -> TrtChain:
    """Builds the lazy TensorRT chain for `backend`; nothing here imports `tensorrt`."""
    from polygraphy.backend.trt import (
        CreateConfig,
        EngineFromNetwork,
        ModifyNetworkOutputs,
        NetworkFromOnnxPath,
        PostprocessNetwork,
        Profile,
        TrtRunner,
    )

    major = options.trt_major
    if major is None:
        version = tensorrt_version()
        major = int(version.split(".")[0]) if version else 10
    # A Q/DQ model is built strongly typed on TensorRT 10 too: its Q/DQ and tensor types say
    # what computes in int8/fp8, with no builder flag needed (TensorRT 10's int8 flag would
    # also let it pick int8 for layers the model keeps in float).
    strongly_typed = major >= 11 or backend.quantized

    profiles = []
    dynamic = _profile_shapes(model, options)
    if dynamic:
        profile = Profile()
        for input_name, shape in dynamic.items():
            profile.add(input_name, min=shape, opt=shape, max=shape)
        profiles.append(profile)

    flags: dict[str, Any] = {}
    onnx_path: str | Callable[[], str] = str(model.path)
    postprocess = None
    if strongly_typed:
        if plan.reduced:
            onnx_path = ConvertedOnnxPath(model, plan, converted_model_path(model.path, plan,
                                                                            options))
    elif plan.reduced:
        flags[plan.precision] = True
        if plan.keep_fp32:
            flags["precision_constraints"] = "obey"
            postprocess = KeepLayersInFp32(
                plan.keep_fp32, frozenset(node.name for node in model.proto.graph.node))

    config = CreateConfig(tf32=options.tf32, profiles=profiles or None, **flags)
    network: Any = NetworkFromOnnxPath(onnx_path, strongly_typed=strongly_typed or None)
    if postprocess is not None:
        network = PostprocessNetwork(network, func=postprocess, name="KeepLayersInFp32")
    if mark:
        # Few marked tensors: marking changes TensorRT's fusions, so bisection marks sparingly.
        network = ModifyNetworkOutputs(network, outputs=list(mark))
    engine = EngineFromNetwork(network, config=config)
    runner = TrtRunner(engine, name=name)
    return TrtChain(major, onnx_path, config, network, engine, runner)


def make_runner(model: LoadedModel, backend: Backend, options: BackendOptions, name: str,
                mark: Sequence[str] = (), source: bytes | str | None = None):
    """Returns a Polygraphy runner for `backend`; TensorRT targets need `tensorrt` importable.

    `mark` names intermediate tensors to return as outputs besides the model's own; `source`
    is the ONNX Runtime session's model when `prepare_in_parent` built it already.
    """
    from trtcheck.precision import PrecisionPlan

    plan = PrecisionPlan(backend.float_precision, options.keep_fp32)
    if backend.family == "triton":
        if mark:
            raise UsageError(f"{backend.name}: a Triton server returns its model's outputs only, "
                             "not intermediate tensors; bisect the model on a local target")
        from trtcheck.deploy.triton_target import triton_runner

        return triton_runner(backend.name, model, name)
    if backend.family == "onnxrt":
        if source is None:
            source = onnxrt_session_source(model, backend, options, mark)
        return _onnxrt_runner(source, options, name,
                              disabled_optimizers=disabled_optimizers(model))
    if not tensorrt_usable():
        needs = ""
        if options.engine is not None:
            from trtcheck.engine.plan import preflight_plan

            needs = f" ({preflight_plan(options.engine).note})"
        raise BackendUnavailableError(
            f"{backend.name}: TensorRT is not installed here (Python module 'tensorrt' not "
            f"importable){needs}; {TRT_INSTALL_HINT}"
        )
    if options.engine is not None:
        from trtcheck.engine.plan import engine_runner

        return engine_runner(options.engine, name)
    chain = trt_chain(model, backend, plan, options, name, mark)
    if options.engine_cache:
        from trtcheck.engine.cache import EngineCache, build_spec, cached_chain

        chain = cached_chain(chain, build_spec(chain, model, backend, options, mark),
                             EngineCache())
    return chain.runner


def polygraphy_flags(backend: Backend, options: BackendOptions, trt_major: int | None) -> list[str]:
    """The `polygraphy run` flags that select this backend on a TensorRT machine.

    Emulated and quantized targets map to TensorRT with the same precision: that is what they
    stand in for.
    """
    if backend.family == "onnxrt" and not backend.emulated and not backend.quantized:
        flags = ["--onnxrt"]
        if tuple(options.providers) != ("cpu",):
            flags += ["--providers", *options.providers]
        return flags
    flags = ["--trt"]
    if backend.quantized:
        flags.append("--strongly-typed")  # the Q/DQ model's types decide (see `trt_chain`)
    elif backend.precision != "fp32":
        flags.append(f"--{backend.precision}")
    if options.tf32:
        flags.append("--tf32")
    if options.keep_fp32 and backend.float_precision != "fp32" and (trt_major or 10) < 11:
        flags += ["--precision-constraints", "obey", "--layer-precisions",
                  *(f"{node}:float32" for node in sorted(options.keep_fp32))]
    return flags
