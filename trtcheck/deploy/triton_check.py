"""`trtcheck triton check`: a Triton model repository against the model files it serves.

Each `NAME/config.pbtxt` is parsed by `google.protobuf.text_format` into tritonclient's
`ModelConfig` (Triton's own schema, so an unknown field or a bad value is refused as Triton would
refuse it), then checked the way Triton and its backends check it at load time, before a server
is ever started:

1. the config names its folder, a known platform or backend, max_batch_size >= 0;
2. a version folder exists for the version policy, holding the file the backend loads
   (`default_model_filename`, or model.onnx / model.plan / model.py ...), external data too;
3. inputs and outputs agree with the ONNX model, or for a plan with the engine (read by TensorRT
   when it is installed, otherwise from the sidecar `trtcheck triton export` writes): names,
   data types (TYPE_FP32 against fp16 I/O, server #2377), dims by the rule of the backends'
   CompareDimsSupported (a fixed model dimension must be matched; a dynamic one takes any);
4. max_batch_size > 0 needs a dynamic first dimension ("the first dimension must be -1") and,
   for a plan, a profile reaching that batch ("configuration specified max-batch 16 but TensorRT
   engine only supports max-batch 1", server #7056, #5013, #1105, #4445);
5. reshape: dims and reshape hold as many elements, by Triton's ValidateIOShape rule;
6. instance groups: GPUs listed only with KIND_GPU, profiles only for plans, none in ensembles;
7. ensembles: each step names a model of the repository and existing tensors of it, and every
   ensemble input, output and intermediate tensor is wired (Triton's ValidateEnsembleScheduling).

Line numbers: protobuf's Python parser keeps no positions, so `_Locator` walks the text with
protobuf's own `text_format.Tokenizer` (which handles comments, strings and list syntax) and
records the line of every field path, like ("input", 1, "dims"); a finding takes the line of the
field it is about, or of the nearest enclosing field found.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trtcheck.atomic import PARTIAL_TAG
from trtcheck.deploy.triton_common import (
    DYNAMIC,
    ModelIO,
    TensorSpec,
    model_config_pb2,
    onnx_io,
    read_sidecar,
    sidecar_path,
    tensorrt_engine_io,
    triton_type,
)
from trtcheck.errors import EXIT_MISMATCH, EXIT_PASS, ModelError, UsageError

ERROR, WARNING = "error", "warning"
CONFIG = "config.pbtxt"
# Backend -> the file Triton loads from a version folder when default_model_filename is unset.
DEFAULT_FILES = {
    "onnxruntime": "model.onnx", "tensorrt": "model.plan", "python": "model.py",
    "pytorch": "model.pt", "tensorflow_graphdef": "model.graphdef",
    "tensorflow_savedmodel": "model.savedmodel", "openvino": "model.xml",
}
_PLATFORMS = {
    "onnxruntime_onnx": "onnxruntime", "tensorrt_plan": "tensorrt",
    "pytorch_libtorch": "pytorch", "tensorflow_graphdef": "tensorflow_graphdef",
    "tensorflow_savedmodel": "tensorflow_savedmodel", "ensemble": "ensemble",
}
_BACKENDS = {"onnxruntime": "onnxruntime", "tensorrt": "tensorrt", "python": "python",
             "pytorch": "pytorch", "openvino": "openvino"}

Path_ = tuple[tuple[str, int], ...]


@dataclass(frozen=True)
class Finding:
    """One problem: where it is (file, 1-based line or None) and what to do about it."""

    severity: str
    code: str
    model: str
    file: Path
    line: int | None
    message: str

    def format(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else str(self.file)
        return f"{where}: {self.severity}: {self.message} [{self.code}]"

    def to_json(self) -> dict[str, Any]:
        return {"severity": self.severity, "code": self.code, "model": self.model,
                "file": str(self.file), "line": self.line, "message": self.message}


@dataclass
class CheckResult:
    """Every finding of one repository; errors make `trtcheck triton check` exit 1."""

    repo: Path
    models: list[str] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == ERROR]

    @property
    def exit_code(self) -> int:
        return EXIT_MISMATCH if self.errors else EXIT_PASS

    def lines(self) -> list[str]:
        return [finding.format() for finding in self.findings]

    def summary(self) -> str:
        warnings = len(self.findings) - len(self.errors)
        return (f"{self.repo}: {len(self.models)} model(s) checked, {len(self.errors)} error(s), "
                f"{warnings} warning(s)")

    def to_json(self) -> dict[str, Any]:
        return {"repo": str(self.repo), "models": self.models, "errors": len(self.errors),
                "warnings": len(self.findings) - len(self.errors),
                "findings": [f.to_json() for f in self.findings]}


class _Locator:
    """The line of each field path of a pbtxt, from protobuf's own tokenizer.

    Paths are tuples of (field name, occurrence), so the second `input` block's `dims` is
    (("input", 1), ("dims", 0)); `values` also records scalar values, to find a map entry by key.
    """

    def __init__(self, text: str) -> None:
        from google.protobuf import text_format

        self.lines: dict[Path_, int] = {}
        self.values: dict[tuple[Path_, str, str], int] = {}
        tokenizer = text_format.Tokenizer(text.splitlines(keepends=True))
        self._message(tokenizer, (), None)

    @staticmethod
    def _line(tokenizer) -> int:
        return int(tokenizer._line) + 1  # the tokenizer's line of its current token, 0-based

    def _message(self, tokenizer, path: Path_, end: str | None) -> None:
        counts: Counter[str] = Counter()
        while not tokenizer.AtEnd():
            if end is not None and tokenizer.TryConsume(end):
                return
            if tokenizer.TryConsume(",") or tokenizer.TryConsume(";"):
                continue
            line = self._line(tokenizer)
            if tokenizer.TryConsume("["):  # an extension or Any type URL: not in Triton's schema
                while not tokenizer.TryConsume("]"):
                    tokenizer.NextToken()
                name = "[extension]"
            else:
                name = tokenizer.ConsumeIdentifierOrNumber()
            tokenizer.TryConsume(":")
            if not tokenizer.TryConsume("["):
                self._value(tokenizer, path, name, counts, line)
                continue
            while not tokenizer.TryConsume("]"):
                if not tokenizer.TryConsume(","):
                    self._value(tokenizer, path, name, counts, self._line(tokenizer))

    def _value(self, tokenizer, path: Path_, name: str, counts: Counter[str], line: int) -> None:
        here = (*path, (name, counts[name]))
        counts[name] += 1
        self.lines.setdefault(here, line)
        for opener, closer in (("{", "}"), ("<", ">")):
            if tokenizer.TryConsume(opener):
                self._message(tokenizer, here, closer)
                return
        if tokenizer.token[:1] in ("'", '"'):
            text = ""
            while tokenizer.token[:1] in ("'", '"'):  # adjacent strings concatenate
                text += tokenizer.ConsumeString()
        else:
            text = tokenizer.token
            tokenizer.NextToken()
            if text == "-":
                text += tokenizer.token
                tokenizer.NextToken()
        self.values.setdefault((path, name, text), line)

    def line(self, *steps: str | int) -> int | None:
        """The line of a path like ("input", 1, "dims"), or of its nearest recorded parent."""
        path: list[tuple[str, int]] = []
        for step in steps:
            if isinstance(step, int):
                path[-1] = (path[-1][0], step)
            else:
                path.append((step, 0))
        while path:
            if tuple(path) in self.lines:
                return self.lines[tuple(path)]
            path.pop()
        return None

    def map_key_line(self, prefix: tuple[str | int, ...], map_field: str, key: str) -> int | None:
        """The line of the entry with `key` in a map field under `prefix`."""
        parent = self.line(*prefix)
        for (path, name, value), line in self.values.items():
            if name == "key" and value == key and path and path[-1][0] == map_field and \
                    self.lines.get(path[:-1]) == parent:
                return line
        return None


@dataclass
class _Model:
    """One parsed config.pbtxt."""

    name: str
    folder: Path
    config: Any  # model_config_pb2.ModelConfig
    where: _Locator
    findings: list[Finding] = field(default_factory=list)

    @property
    def config_path(self) -> Path:
        return self.folder / CONFIG

    def add(self, severity: str, code: str, message: str, *steps: str | int,
            file: Path | None = None) -> None:
        line = self.where.line(*steps) if steps and file is None else None
        self.findings.append(Finding(severity, code, self.name, file or self.config_path, line,
                                     message))

    def add_at(self, severity: str, code: str, message: str, line: int | None) -> None:
        self.findings.append(Finding(severity, code, self.name, self.config_path, line, message))


def _dims_text(dims) -> str:
    return "[" + ", ".join(str(d) for d in dims) + "]"


def _type_name(data_type: int) -> str:
    return str(model_config_pb2().DataType.Name(data_type))


# -- repository and config parsing ------------------------------------------------------------

def _model_folders(repo: Path) -> list[Path]:
    return sorted(entry for entry in repo.iterdir() if entry.is_dir()
                  and not entry.name.startswith(".") and PARTIAL_TAG not in entry.name)


def _parse(folder: Path, findings: list[Finding]) -> _Model | None:
    from google.protobuf import text_format

    path = folder / CONFIG
    if not path.is_file():
        findings.append(Finding(
            WARNING, "no-config", folder.name, folder, None,
            f"no {CONFIG}: Triton auto-completes one for some backends only; write it with "
            "`trtcheck triton export`"))
        return None
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        findings.append(Finding(ERROR, "syntax", folder.name, path, None,
                                f"cannot be read ({err})"))
        return None
    config = model_config_pb2().ModelConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as err:
        message = str(err).split(" : ", 1)[-1] if err.GetLine() else str(err)
        findings.append(Finding(ERROR, "syntax", folder.name, path, err.GetLine(),
                                f"does not parse as Triton's ModelConfig: {message}"))
        return None
    try:
        where = _Locator(text)
    except text_format.ParseError:  # parsed, yet beyond the locator: findings lose their lines
        where = _Locator("")
    return _Model(folder.name, folder, config, where)


# -- checks of one config on its own ----------------------------------------------------------

def _backend_kind(model: _Model) -> str | None:
    """The backend the config asks for (ensemble included), or None after a finding."""
    config = model.config
    from_platform = _PLATFORMS.get(config.platform) if config.platform else None
    from_backend = _BACKENDS.get(config.backend, config.backend) if config.backend else None
    if config.platform and from_platform is None:
        model.add(ERROR, "platform", f"unknown platform '{config.platform}' (Triton knows "
                  f"{', '.join(_PLATFORMS)})", "platform")
        return None
    if from_platform and from_backend and from_backend not in from_platform:
        model.add(ERROR, "platform", f"platform '{config.platform}' and backend "
                  f"'{config.backend}' disagree; keep one of them", "backend")
        return None
    kind = from_platform or from_backend
    if kind is None:
        kind = _kind_from_files(model)
    return kind


def _kind_from_files(model: _Model) -> str | None:
    """Triton's auto-complete picks the backend from the model file when the config does not."""
    found = {backend for folder in model.folder.iterdir() if folder.name.isdigit()
             for backend, filename in DEFAULT_FILES.items() if (folder / filename).exists()}
    if len(found) == 1:
        return found.pop()
    model.add(ERROR, "platform", "no 'platform' or 'backend', and no single model file Triton "
              "could pick one from; add e.g. backend: \"onnxruntime\"", "name")
    return None


def _check_header(model: _Model) -> None:
    config = model.config
    if config.name and config.name != model.name:
        model.add(ERROR, "name", f"name '{config.name}' differs from its folder '{model.name}'; "
                  "Triton requires them equal", "name")
    if config.max_batch_size < 0:
        model.add(ERROR, "max-batch", f"max_batch_size {config.max_batch_size} is negative; "
                  "use 0 (no batching) or the largest batch", "max_batch_size")
    if config.HasField("dynamic_batching"):
        for size in config.dynamic_batching.preferred_batch_size:
            if size <= 0 or size > config.max_batch_size:
                model.add(ERROR, "dynamic-batching", f"preferred_batch_size {size} is not in "
                          f"1..max_batch_size ({config.max_batch_size})", "dynamic_batching")
        if config.max_batch_size == 0:
            model.add(WARNING, "dynamic-batching", "dynamic_batching does nothing with "
                      "max_batch_size 0; remove it or set max_batch_size", "dynamic_batching")


def _check_instance_groups(model: _Model, kind: str | None) -> None:
    schema = model_config_pb2()
    groups = model.config.instance_group
    if kind == "ensemble" and groups:
        model.add(ERROR, "instance-group", "an ensemble takes no instance_group (its steps' "
                  "models have their own); remove it", "instance_group")
        return
    for index, group in enumerate(groups):
        kind_name = schema.ModelInstanceGroup.Kind.Name(group.kind)
        label = f"instance_group {index}" + (f" ('{group.name}')" if group.name else "")
        if group.gpus and group.kind not in (schema.ModelInstanceGroup.KIND_GPU,
                                             schema.ModelInstanceGroup.KIND_AUTO):
            model.add(ERROR, "instance-group", f"{label} has kind {kind_name} but lists gpus; "
                      "gpus go with KIND_GPU only", "instance_group", index, "gpus")
        # proto3 cannot tell an omitted count (Triton's default, 1) from 0: ask the text.
        if group.count < 1 and (("instance_group", index), ("count", 0)) in model.where.lines:
            model.add(WARNING, "instance-group", f"{label} has count {group.count}, which "
                      "Triton reads as 1; write the count you mean", "instance_group", index)
        if group.profile and kind != "tensorrt":
            model.add(ERROR, "instance-group", f"{label} lists TensorRT profiles, but the model "
                      "is not a TensorRT plan", "instance_group", index, "profile")


def _element_trunks(dims) -> list[int]:
    """Element counts between variable-size dimensions (Triton's ValidateIOShape)."""
    trunks, count = [], 1
    for dim in dims:
        if dim == DYNAMIC:
            trunks.append(count)
            count = 1
        else:
            count *= dim
    return [*trunks, count]


def _check_tensor_fields(model: _Model, kind: str, index: int, tensor) -> None:
    label = f"{kind} '{tensor.name}'"
    if not tensor.name:
        model.add(ERROR, "io", f"{kind} {index} has no name", kind, index)
    if tensor.data_type == 0:
        model.add(ERROR, "io", f"{label} has no data_type", kind, index)
    if not tensor.dims:
        model.add(ERROR, "io", f"{label} has no dims (a scalar is dims: [1] with reshape: "
                  "{ shape: [] })", kind, index)
    if any(d < 1 and d != DYNAMIC for d in tensor.dims):
        model.add(ERROR, "io", f"{label} has dims {_dims_text(tensor.dims)}: each must be >= 1 "
                  "or -1", kind, index, "dims")
    if tensor.HasField("reshape"):
        shape = list(tensor.reshape.shape)
        if not shape and model.config.max_batch_size == 0:
            model.add(ERROR, "reshape", f"{label} has an empty reshape in a non-batching model",
                      kind, index, "reshape")
        elif _element_trunks(tensor.dims) != _element_trunks(shape) and \
                not (not shape and _element_trunks(tensor.dims) == [1]):
            model.add(ERROR, "reshape", f"{label}: dims {_dims_text(tensor.dims)} and reshape "
                      f"{_dims_text(shape)} hold different numbers of elements; make them agree",
                      kind, index, "reshape")


# -- versions and model files -----------------------------------------------------------------

def _version_folders(model: _Model) -> list[Path]:
    """The version folders Triton would load under the config's version policy."""
    versions = sorted(int(entry.name) for entry in model.folder.iterdir()
                      if entry.is_dir() and entry.name.isdigit())
    policy = model.config.version_policy
    choice = policy.WhichOneof("policy_choice")
    if choice == "specific":
        wanted = list(policy.specific.versions)
        for missing in sorted(set(wanted) - set(versions)):
            model.add(ERROR, "version", f"version_policy asks for version {missing}, but "
                      f"{model.name}/{missing}/ does not exist", "version_policy")
        chosen = [v for v in versions if v in wanted]
    elif choice == "all":
        chosen = versions
    else:
        latest = policy.latest.num_versions if choice == "latest" else 1
        chosen = versions[-max(latest, 1):]
    if not versions:
        model.add(ERROR, "version", f"no version folder: Triton loads no version of "
                  f"'{model.name}'; put the model file in {model.name}/1/", "name")
    return [model.folder / str(v) for v in chosen]


def _model_file(model: _Model, kind: str, version: Path) -> Path | None:
    filename = model.config.default_model_filename or DEFAULT_FILES.get(kind, "")
    if not filename:
        return None
    path = version / filename
    if kind == "onnxruntime" and path.is_dir():  # the ONNX Runtime backend's folder layout
        path = path / "model.onnx"
    if path.exists():
        return path
    hint = ""
    sidecar = sidecar_path(path)
    if kind == "tensorrt" and sidecar.is_file():
        try:
            document = json.loads(sidecar.read_text())
            hint = f"; build it with: {document['build']['trtexec']}"
        except (OSError, ValueError, KeyError, TypeError):
            hint = ""
    field_name = "default_model_filename" if model.config.default_model_filename else "name"
    model.add(ERROR, "model-file", f"{model.name}/{version.name}/{filename} is missing (the "
              f"{kind} backend loads it){hint}", field_name)
    return None


def _io_of_onnx(model: _Model, path: Path) -> ModelIO | None:
    try:
        io = onnx_io(path)
    except ModelError as err:
        model.add(ERROR, "model-file", str(err), file=path)
        return None
    for location in io.missing_data:
        model.add(ERROR, "model-file", f"{path.name} keeps weights in '{location}', which is "
                  f"missing from {path.parent}; copy it there", file=path)
    return io


def _io_of_plan(model: _Model, plan: Path | None, plan_name: Path,
                use_tensorrt: bool | None) -> ModelIO | None:
    """The engine's I/O: from TensorRT when usable and the plan exists, else the sidecar."""
    if plan is not None and use_tensorrt is not False:
        try:
            engine = tensorrt_engine_io(plan)
        except ValueError as err:
            model.add(ERROR, "engine", f"{plan.name}: {err}", file=plan)
            return None
        if engine is not None:
            return engine
    sidecar = sidecar_path(plan_name)
    if sidecar.is_file():
        try:
            return read_sidecar(sidecar)
        except ValueError as err:
            model.add(ERROR, "sidecar", f"{sidecar.name}: {err}", file=sidecar)
            return None
    model.add(WARNING, "no-engine-io", f"the I/O of {plan_name.name} is not checked: TensorRT is "
              f"not installed here and there is no {sidecar.name} (`trtcheck triton export "
              "--platform tensorrt` writes one)", "name")
    return None


# -- the config against the model's I/O -------------------------------------------------------

def _compared_shape(model: _Model, tensor) -> list[int]:
    return list(tensor.reshape.shape) if tensor.HasField("reshape") else list(tensor.dims)


def _dims_fit(model_dims: tuple[int, ...], config_dims: list[int]) -> bool:
    """The backends' CompareDimsSupported: a fixed model dim must match, a dynamic one takes any."""
    return len(model_dims) == len(config_dims) and all(
        m in (DYNAMIC, c) for m, c in zip(model_dims, config_dims, strict=True))


def _tensor_problem(model: _Model, tensor, spec: TensorSpec) -> str | None:
    """What keeps `tensor` (config) from fitting `spec` (model), ignoring the batch dimension."""
    expected = triton_type(spec.dtype)
    if tensor.data_type != 0 and _type_name(tensor.data_type) != expected:
        hint = (" (the model's I/O is fp16: write TYPE_FP16, or convert the model keeping fp32 "
                "I/O; Triton does not cast)" if spec.dtype == "float16" else "")
        return (f"data_type {_type_name(tensor.data_type)}, but the model's '{spec.name}' is "
                f"{spec.dtype} ({expected}){hint}")
    if spec.shape is None:
        return None
    batching = model.config.max_batch_size > 0
    model_dims = spec.shape[1:] if batching and spec.shape else spec.shape
    shape = _compared_shape(model, tensor)
    if not _dims_fit(model_dims, shape):
        what = "reshape" if tensor.HasField("reshape") else "dims"
        batch = " after the batch dimension" if batching else ""
        return (f"{what} {_dims_text(shape)}, but the model's '{spec.name}' has "
                f"{_dims_text(model_dims)}{batch} (full shape {_dims_text(spec.shape)})")
    return None


def _pair_names(model: _Model, kind: str, configured: list[str], declared: list[str],
                source: str) -> None:
    """Config names the model lacks, paired with model names the config lacks (a rename)."""
    unknown = [n for n in configured if n not in declared]
    required = kind == "input"  # a config may serve a subset of the outputs, not of the inputs
    absent = [n for n in declared if n not in configured] if required else []
    for position, name in enumerate(unknown):
        index = configured.index(name)
        suggestion = f"; the model's {kind} '{absent[position]}' is not in the config (rename " \
            "it?)" if position < len(absent) else ""
        model.add(ERROR, "name-mismatch", f"{kind} '{name}' is not an {kind} of {source} (its "
                  f"{kind}s: {', '.join(declared)}){suggestion}", kind, index, "name")
    for name in absent[len(unknown):]:
        model.add(ERROR, "name-mismatch", f"the model's {kind} '{name}' is missing from the "
                  f"config; Triton cannot feed it", kind)


def _compare_kind(model: _Model, kind: str, io: ModelIO, source: str) -> None:
    tensors = list(getattr(model.config, kind))
    specs = {spec.name: spec for spec in io.tensors(kind)}
    _pair_names(model, kind, [t.name for t in tensors], list(specs), source)
    problems = {t.name: _tensor_problem(model, t, specs[t.name])
                for t in tensors if t.name in specs}
    swapped = _swapped_pairs(model, tensors, specs, problems)
    for first, second in swapped:
        model.add(ERROR, "swapped", f"{kind}s '{first}' and '{second}' look swapped: each has the "
                  f"other's data type and dims in {source}", kind,
                  [t.name for t in tensors].index(first))
    paired = {name for pair in swapped for name in pair}
    for index, tensor in enumerate(tensors):
        problem = problems.get(tensor.name)
        if problem and tensor.name not in paired:
            model.add(ERROR, "dtype" if problem.startswith("data_type") else "dims",
                      f"{kind} '{tensor.name}': {problem}", kind, index,
                      "data_type" if problem.startswith("data_type") else
                      "reshape" if tensor.HasField("reshape") else "dims")


def _swapped_pairs(model: _Model, tensors, specs: dict[str, TensorSpec],
                   problems: dict[str, str | None]) -> list[tuple[str, str]]:
    wrong = [t for t in tensors if problems.get(t.name)]
    pairs = []
    for i, first in enumerate(wrong):
        for second in wrong[i + 1:]:
            if not _tensor_problem(model, first, specs[second.name]) and \
                    not _tensor_problem(model, second, specs[first.name]):
                pairs.append((first.name, second.name))
    return pairs


def _check_batching(model: _Model, io: ModelIO, source: str, plan: bool) -> None:
    batch = model.config.max_batch_size
    if batch <= 0:
        return
    configured = {t.name for t in (*model.config.input, *model.config.output)}
    fixed = [spec for spec in (*io.inputs, *io.outputs) if spec.name in configured
             and spec.shape is not None and (not spec.shape or spec.shape[0] != DYNAMIC)]
    if fixed:
        listed = ", ".join(f"'{s.name}' {_dims_text(s.shape or ())}" for s in fixed)
        model.add(ERROR, "batch-dim", f"max_batch_size {batch} needs a dynamic first dimension, "
                  f"but {source} fixes it on {listed}; set max_batch_size: 0 with the full "
                  "shapes as dims, or export the model with a dynamic batch", "max_batch_size")
        return
    profile_max = io.profile_max_batch() if plan else None
    if profile_max is not None and batch > profile_max:
        model.add(ERROR, "max-batch-profile", f"configuration specified max-batch {batch} but the "
                  f"engine's profile ({source}) only supports max-batch {profile_max}; set "
                  f"max_batch_size: {profile_max}, or rebuild the engine with a max batch of "
                  f"{batch} (--maxShapes)", "max_batch_size")


def _check_profile_ranges(model: _Model, io: ModelIO, source: str) -> None:
    """Fixed config dims of a plan's inputs must lie inside the engine's profile."""
    offset = 1 if model.config.max_batch_size > 0 else 0
    for index, tensor in enumerate(model.config.input):
        shapes = io.profile.get(tensor.name)
        dims = _compared_shape(model, tensor)
        if shapes is None or len(shapes[0]) != len(dims) + offset:
            continue
        low, high = shapes[0][offset:], shapes[2][offset:]
        outside = [pos for pos, d in enumerate(dims)
                   if d != DYNAMIC and not low[pos] <= d <= high[pos]]
        if outside:
            model.add(ERROR, "profile-range", f"input '{tensor.name}': dims {_dims_text(dims)} "
                      f"lie outside the engine's profile {_dims_text(low)}..{_dims_text(high)} "
                      f"({source})", "input", index, "dims")


def _check_model_io(model: _Model, io: ModelIO, source: str, plan: bool) -> None:
    _check_batching(model, io, source, plan)
    for kind in ("input", "output"):
        _compare_kind(model, kind, io, source)
    if plan:
        _check_profile_ranges(model, io, source)


# -- ensembles --------------------------------------------------------------------------------

def _check_ensemble(model: _Model, models: dict[str, _Model]) -> None:
    steps = model.config.ensemble_scheduling.step
    if not steps:
        model.add(ERROR, "ensemble", "an ensemble needs ensemble_scheduling with at least one "
                  "step", "ensemble_scheduling")
        return
    written: dict[str, int] = {}
    read: set[str] = set()
    for index, step in enumerate(steps):
        where = ("ensemble_scheduling", "step", index)
        for tensor in step.output_map.values():
            if tensor in written:
                model.add(ERROR, "ensemble", f"step {index} writes tensor '{tensor}', already "
                          f"written by step {written[tensor]}", *where, "output_map")
            written.setdefault(tensor, index)
        read.update(step.input_map.values())
        _check_step(model, index, step, models.get(step.model_name), sorted(models))
    _check_wiring(model, written, read)


def _check_step(model: _Model, index: int, step, target: _Model | None,
                names: list[str]) -> None:
    where = ("ensemble_scheduling", "step", index)
    if target is None:
        model.add(ERROR, "ensemble", f"step {index} runs model '{step.model_name}', which is not "
                  f"in the repository (its models: {', '.join(names)})", *where, "model_name")
        return
    config = target.config
    if model.config.max_batch_size > config.max_batch_size:
        model.add(ERROR, "ensemble", f"the ensemble's max_batch_size {model.config.max_batch_size}"
                  f" exceeds step {index}'s model '{target.name}' ({config.max_batch_size})",
                  "max_batch_size")
    for kind, mapping in (("input", step.input_map), ("output", step.output_map)):
        declared = [t.name for t in getattr(config, kind)]
        unknown = [key for key in mapping if key not in declared]
        unmapped = [n for n in declared if n not in mapping] if kind == "input" else []
        for position, key in enumerate(unknown):
            line = model.where.map_key_line(where, f"{kind}_map", key)
            extra = f"; its input '{unmapped[position]}' is not mapped" \
                if position < len(unmapped) else ""
            model.add_at(ERROR, "ensemble", f"step {index}: '{key}' is not an {kind} of model "
                         f"'{target.name}' (its {kind}s: {', '.join(declared)}){extra}",
                         line or model.where.line(*where, f"{kind}_map"))
        for name in unmapped[len(unknown):]:
            model.add(ERROR, "ensemble", f"step {index}: input '{name}' of model "
                      f"'{target.name}' is not mapped to any tensor", *where, "input_map")
        _check_step_types(model, index, kind, mapping, target)


def _check_step_types(model: _Model, index: int, kind: str, mapping, target: _Model) -> None:
    """An ensemble input or output wired to a step must have the step tensor's data type."""
    outer = {t.name: t for t in (*model.config.input, *model.config.output)}
    inner = {t.name: t for t in getattr(target.config, kind)}
    for key, tensor in mapping.items():
        if key in inner and tensor in outer and \
                inner[key].data_type != outer[tensor].data_type:
            model.add(ERROR, "ensemble", f"step {index}: ensemble tensor '{tensor}' is "
                      f"{_type_name(outer[tensor].data_type)} but {kind} '{key}' of model "
                      f"'{target.name}' is {_type_name(inner[key].data_type)}",
                      "ensemble_scheduling", "step", index, f"{kind}_map")


def _check_wiring(model: _Model, written: dict[str, int], read: set[str]) -> None:
    inputs = [t.name for t in model.config.input]
    outputs = [t.name for t in model.config.output]
    for index, name in enumerate(inputs):
        if name not in read:
            model.add(ERROR, "ensemble", f"ensemble input '{name}' is not read by any step",
                      "input", index)
    for index, name in enumerate(outputs):
        if name not in written:
            model.add(ERROR, "ensemble", f"ensemble output '{name}' is not written by any step",
                      "output", index)
    for name in sorted(read - set(inputs) - set(written)):
        model.add(ERROR, "ensemble", f"tensor '{name}' is read by a step but is neither an "
                  "ensemble input nor written by a step", "ensemble_scheduling")
    for name in sorted(set(written) - read - set(outputs)):
        model.add(ERROR, "ensemble", f"tensor '{name}' is written by step {written[name]} but "
                  "read by no step and is not an ensemble output", "ensemble_scheduling")


# -- the whole repository ---------------------------------------------------------------------

def _check_versions(model: _Model, kind: str, use_tensorrt: bool | None) -> None:
    for version in _version_folders(model):
        path = _model_file(model, kind, version)
        if kind == "onnxruntime" and path is not None:
            io = _io_of_onnx(model, path)
            if io is not None:
                _check_model_io(model, io, f"{model.name}/{version.name}/{path.name}", plan=False)
        elif kind == "tensorrt":
            plan_name = version / (model.config.default_model_filename or "model.plan")
            io = _io_of_plan(model, path, plan_name, use_tensorrt)
            if io is not None:
                source = io.source.name if io.source.name != plan_name.name else plan_name.name
                _check_model_io(model, io, f"{model.name}/{version.name}/{source}", plan=True)


def _check_model(model: _Model, models: dict[str, _Model], use_tensorrt: bool | None) -> None:
    _check_header(model)
    kind = _backend_kind(model)
    _check_instance_groups(model, kind)
    for kind_name in ("input", "output"):
        for index, tensor in enumerate(getattr(model.config, kind_name)):
            _check_tensor_fields(model, kind_name, index, tensor)
    if kind == "ensemble":
        _version_folders(model)
        _check_ensemble(model, models)
    elif kind is not None:
        _check_versions(model, kind, use_tensorrt)


def check_repository(repo: Path, use_tensorrt: bool | None = None) -> CheckResult:
    """Checks every model folder of a Triton model repository; see the module docstring.

    Args:
        repo: the model repository folder.
        use_tensorrt: read plans with TensorRT (None: when it is installed; False: only the
            sidecars, as on a machine without TensorRT).

    Raises:
        UsageError: `repo` is missing or not a folder (exit 2).
    """
    repo = Path(repo)
    if not repo.exists():
        raise UsageError(f"{repo}: no such folder; name the model repository")
    if not repo.is_dir():
        raise UsageError(f"{repo}: is a file, not a model repository folder; name the folder "
                         "that holds the model folders")
    model_config_pb2()  # a missing schema is one line (exit 3) before any work
    result = CheckResult(repo)
    models: dict[str, _Model] = {}
    for folder in _model_folders(repo):
        result.models.append(folder.name)
        parsed = _parse(folder, result.findings)
        if parsed is not None:
            models[parsed.name] = parsed
    for model in models.values():
        _check_model(model, models, use_tensorrt)
        result.findings += model.findings
    result.findings.sort(key=lambda f: (str(f.file.parent), str(f.file), f.line or 0))
    return result
