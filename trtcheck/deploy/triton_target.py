"""A live Triton Inference Server as a comparison target: `triton://HOST:PORT/MODEL[/VERSION]`.

The server's outputs are compared with the ONNX Runtime reference like any target's. Before the
first request, what the server declares for the model (its metadata and config) is checked
against the ONNX model: input and output names, data types, dims with `max_batch_size`, reshapes.
What that check cannot see, the comparison catches: two same-shaped inputs swapped inside the
served model, a layout scrambled by a reshape that keeps the shape, a model that computes in
fp16 behind fp32 I/O.

Polygraphy has no Triton runner, so `TritonRunner` is a `BaseRunner` of its own. Requests go
through NVIDIA's `tritonclient`: HTTP for `triton://` (and `triton+http://`), gRPC for
`triton+grpc://`. Neither client survives a fork once used (gevent's hub hangs the child; gRPC's
channel fails with "Wrong file descriptor generation", both measured here), so the client is used
only where the runner runs: in the backend's child process (`trtcheck.run`). A check wanted
before the runs goes through `isolation.call(check_target, ...)` for the same reason.

Exit codes: a bad URL, a model the server does not have and a served model that does not match
the ONNX model are input errors (2); a server that does not answer within the timeout, a model
that is not ready and a failed request are run errors (3).
"""

from __future__ import annotations

import functools
import os
import time
import urllib.parse
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from trtcheck.deploy.triton_common import DYNAMIC
from trtcheck.errors import BackendRunError, BackendUnavailableError, ModelError, UsageError

if TYPE_CHECKING:
    import numpy as np

    from trtcheck.deploy.triton_common import ModelIO, TensorSpec
    from trtcheck.model import LoadedModel

# scheme -> protocol; Triton's own default ports when the URL gives none.
SCHEMES = {"triton": "http", "triton+http": "http", "triton+grpc": "grpc"}
DEFAULT_PORTS = {"http": 8000, "grpc": 8001}
URL_FORM = "triton://HOST:PORT/MODEL[/VERSION] (or triton+grpc://...)"
# How long the server may take to answer a health or metadata request, and an inference.
CONNECT_TIMEOUT = 10.0
REQUEST_TIMEOUT = 300.0


class TritonUnreachableError(BackendRunError):
    """The server did not answer (refused, timed out, not ready): exit 3."""


class ServedModelMismatchError(ModelError):
    """What the server declares for the model differs from the ONNX model: exit 2."""


def is_triton_target(name: str) -> bool:
    """Whether a target name is a Triton URL (cheap: for the CLI's argument checks)."""
    return name.split("://", 1)[0] in SCHEMES and "://" in name


@dataclass(frozen=True)
class TritonUrl:
    """A parsed `triton://HOST:PORT/MODEL[/VERSION]`; `version` "" lets the server choose."""

    text: str
    protocol: str
    host: str
    port: int
    model: str
    version: str = ""

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def parse_triton_url(text: str) -> TritonUrl:
    """Parses a Triton target URL; raises `UsageError` (exit 2) naming what is wrong."""
    scheme = text.split("://", 1)[0]
    if "://" not in text or scheme not in SCHEMES:
        raise UsageError(f"'{text}': not a Triton URL; write {URL_FORM}")
    parts = urllib.parse.urlsplit(text)
    if parts.query or parts.fragment or parts.username or parts.password:
        raise UsageError(f"'{text}': a Triton URL takes no user, query or fragment; "
                         f"write {URL_FORM}")
    if not parts.hostname:
        raise UsageError(f"'{text}': no server host; write {URL_FORM}")
    try:
        port = parts.port
    except ValueError:
        raise UsageError(f"'{text}': the port must be a number from 1 to 65535; "
                         f"write {URL_FORM}") from None
    segments = [urllib.parse.unquote(s) for s in parts.path.split("/")[1:]]
    if segments and segments[-1] == "":
        segments.pop()
    if not segments or not segments[0] or len(segments) > 2:
        raise UsageError(f"'{text}': name the model, and at most a version, after the "
                         f"address; write {URL_FORM}")
    version = segments[1] if len(segments) == 2 else ""
    if version and not (version.isdigit() and int(version) > 0):
        raise UsageError(f"'{text}': the model version '{version}' must be a positive "
                         f"integer; write {URL_FORM}")
    protocol = SCHEMES[scheme]
    return TritonUrl(text, protocol, parts.hostname, port or DEFAULT_PORTS[protocol],
                     segments[0], version)


@dataclass(frozen=True)
class ServedTensor:
    """An input or output as the server declares it; dims exclude the batch dimension."""

    name: str
    datatype: str
    dims: tuple[int, ...]
    # The shape the model itself sees when the config reshapes the tensor (None: `dims`).
    reshape: tuple[int, ...] | None = None

    @property
    def model_dims(self) -> tuple[int, ...]:
        return self.dims if self.reshape is None else self.reshape


@dataclass(frozen=True)
class ServedModel:
    """What the server declares for one model: enough to check it and to batch requests."""

    name: str
    version: str
    platform: str
    max_batch_size: int
    inputs: tuple[ServedTensor, ...]
    outputs: tuple[ServedTensor, ...]

    def describe(self) -> str:
        """One line for a report: `model v1 (python, max_batch_size 8)`."""
        version = f" v{self.version}" if self.version else ""
        return f"{self.name}{version} ({self.platform}, max_batch_size {self.max_batch_size})"


def _ints(values: Sequence[Any]) -> tuple[int, ...]:
    # gRPC's JSON gives int64 fields as strings.
    return tuple(int(v) for v in values)


def _served_tensors(metadata: Sequence[dict], config: Sequence[dict],
                    batched: bool) -> tuple[ServedTensor, ...]:
    reshapes = {c["name"]: _ints(c["reshape"].get("shape", []))
                for c in config if "reshape" in c}
    tensors = []
    for entry in metadata:
        shape = _ints(entry.get("shape", []))
        tensors.append(ServedTensor(entry["name"], entry["datatype"],
                                    shape[1:] if batched else shape,
                                    reshapes.get(entry["name"])))
    return tuple(tensors)


def served_model(metadata: dict, config: dict) -> ServedModel:
    """The model as the server's metadata (KServe v2) and config (Triton's) describe it."""
    batch = int(config.get("max_batch_size", 0))
    versions = metadata.get("versions", [])
    return ServedModel(
        name=metadata["name"], version=versions[-1] if len(versions) == 1 else "",
        platform=metadata.get("platform") or config.get("backend", ""),
        max_batch_size=batch,
        inputs=_served_tensors(metadata.get("inputs", []), config.get("input", []), batch > 0),
        outputs=_served_tensors(metadata.get("outputs", []), config.get("output", []),
                                batch > 0))


def model_io(model: LoadedModel) -> ModelIO:
    """The ONNX model's inputs and outputs as `triton check` describes them (no file read)."""
    from trtcheck.deploy.triton_common import ModelIO, _value_spec

    graph = model.proto.graph
    weights = {tensor.name for tensor in graph.initializer}
    return ModelIO(model.path, tuple(_value_spec(v) for v in graph.input if v.name not in weights),
                   tuple(_value_spec(v) for v in graph.output))


def _dims_text(dims: Sequence[int]) -> str:
    return "[" + ",".join(str(d) for d in dims) + "]"


def _triton_datatype(dtype_name: str) -> str:
    """KServe's datatype name ("FP32") for a numpy dtype name; tritonclient knows the mapping."""
    import numpy as np
    from tritonclient.utils import np_to_triton_dtype

    try:
        return str(np_to_triton_dtype(np.dtype(dtype_name)))
    except TypeError:  # a dtype numpy does not know without ml_dtypes (bfloat16)
        return dtype_name.upper()


def _unbatchable(expected: ModelIO, batch: int) -> str | None:
    """Why Triton cannot batch the ONNX model along its leading dimension, if it cannot.

    With `max_batch_size` > 0 Triton sends [N, *dims] for any N up to it, so each tensor's
    leading dimension must be dynamic, or 1 with max_batch_size 1.
    """
    tensors = [spec for spec in (*expected.inputs, *expected.outputs) if spec.shape is not None]
    scalars = [spec.name for spec in tensors if not spec.shape]
    fixed = [f"{spec.name} ({spec.shape[0]})" for spec in tensors
             if spec.shape and spec.shape[0] != DYNAMIC and (spec.shape[0] != 1 or batch > 1)]
    if not scalars and not fixed:
        return None
    what = (f"fixes the batch dimension of {', '.join(fixed)}" if fixed
            else f"has scalars to batch ({', '.join(scalars)})")
    return (f"max_batch_size is {batch} but the ONNX model {what}; set max_batch_size: 0 with "
            "the full dims, or export the model with a dynamic batch dimension")


def _shape_mismatch(kind: str, onnx: TensorSpec, served: ServedTensor, batch: int) -> str | None:
    if onnx.shape is None:  # the ONNX model declares no rank: nothing to check
        return None
    expected = onnx.shape[1:] if batch > 0 else onnx.shape
    dims = served.model_dims
    if len(dims) == len(expected) and all(
            DYNAMIC in (want, got) or got == want
            for got, want in zip(dims, expected, strict=True)):
        return None
    declared = f"dims {_dims_text(served.dims)}"
    if served.reshape is not None:
        declared += f" reshaped to {_dims_text(served.reshape)}"
    if batch > 0:
        return (f"{kind} '{onnx.name}': the server declares {declared} with max_batch_size "
                f"{batch} (the batch dimension left out), the ONNX model {_dims_text(expected)} "
                f"for them ({_dims_text(onnx.shape)} in all)")
    return (f"{kind} '{onnx.name}': the server declares {declared} with max_batch_size 0 (the "
            f"batch dimension included), the ONNX model {_dims_text(expected)}")


def _tensor_mismatches(kind: str, expected: Sequence[TensorSpec],
                       served: Sequence[ServedTensor], batch: int) -> list[str]:
    served_by_name = {t.name: t for t in served}
    names = [e.name for e in expected]
    if set(names) != set(served_by_name):
        return [f"{kind} names differ: the ONNX model has {', '.join(names) or 'none'}, the "
                f"server {', '.join(served_by_name) or 'none'}"]
    found = []
    for onnx in expected:
        tensor = served_by_name[onnx.name]
        wanted = _triton_datatype(onnx.dtype)
        if tensor.datatype != wanted:
            found.append(f"{kind} '{onnx.name}': the server declares {tensor.datatype}, the "
                         f"ONNX model {wanted} ({onnx.dtype})")
        problem = _shape_mismatch(kind, onnx, tensor, batch)
        if problem:
            found.append(problem)
    return found


def mismatches(served: ServedModel, expected: ModelIO) -> list[str]:
    """Every way the served model's declared I/O differs from the ONNX model's, one phrase each.

    Names are compared as sets (Triton binds tensors by name, never by position), data types
    exactly, dims where both sides fix them, a config reshape on the shape the model sees; with
    `max_batch_size` > 0 the model must be batchable (`_unbatchable`), and that is reported
    instead of each tensor's dims.
    """
    batch = served.max_batch_size
    unbatchable = _unbatchable(expected, batch) if batch > 0 else None
    if unbatchable:
        return [unbatchable]
    return (_tensor_mismatches("input", expected.inputs, served.inputs, batch)
            + _tensor_mismatches("output", expected.outputs, served.outputs, batch))


# The process that last used an HTTP client: gevent's hub must be made anew in a forked child.
_GEVENT_PID: int | None = None


class _Client:
    """tritonclient over HTTP or gRPC behind one small interface; errors become one line."""

    def __init__(self, url: TritonUrl, timeout: float) -> None:
        self.url = url
        self.timeout = timeout
        try:
            if url.protocol == "grpc":
                import tritonclient.grpc as client_module
            else:
                import tritonclient.http as client_module
        except (ImportError, RuntimeError):
            # tritonclient without the protocol's extra raises RuntimeError on import.
            from trtcheck.distribution import install_command

            raise BackendUnavailableError(
                f"{url.text}: tritonclient's {url.protocol} support is not installed; install "
                f"it with `{install_command('triton')}`") from None
        self.module = client_module
        if url.protocol == "grpc":
            self.client = client_module.InferenceServerClient(url.address)
        else:
            self._fresh_hub()
            self.client = client_module.InferenceServerClient(
                url.address, connection_timeout=timeout, network_timeout=timeout)

    @staticmethod
    def _fresh_hub() -> None:
        global _GEVENT_PID
        if _GEVENT_PID is not None and os.getpid() != _GEVENT_PID:
            import gevent

            gevent.reinit()
        _GEVENT_PID = os.getpid()

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """Calls a client method; unreachable servers and timeouts raise one-line errors."""
        from tritonclient.utils import InferenceServerException

        if self.url.protocol == "grpc":
            kwargs["client_timeout"] = self.timeout
            if method.startswith("get_model"):
                kwargs["as_json"] = True
        try:
            return getattr(self.client, method)(*args, **kwargs)
        except InferenceServerException as err:
            if str(err.status()) in ("StatusCode.UNAVAILABLE", "StatusCode.DEADLINE_EXCEEDED"):
                raise self.unreachable(err.message()) from None
            raise
        except (OSError, TimeoutError) as err:
            raise self.unreachable(str(err) or type(err).__name__) from None

    def unreachable(self, why: str) -> TritonUnreachableError:
        return TritonUnreachableError(
            f"{self.url.text}: the Triton server at {self.url.address} ({self.url.protocol}) "
            f"did not answer within {self.timeout:g} s ({why.splitlines()[0]}); start it or "
            "check the address and port")

    def close(self) -> None:
        self.client.close()


def _index(client: _Client) -> list[dict]:
    index = client.call("get_model_repository_index")
    return list(index.get("models", []) if isinstance(index, dict) else index)


def _model_absent(client: _Client, url: TritonUrl, err: Exception) -> Exception:
    """Why the server gave no metadata for the model: absent, another version, or not ready."""
    entries = _index(client)
    same = [e for e in entries if e.get("name") == url.model]
    if not same:
        names = sorted({f"{e.get('name')} ({e.get('state', '?')})" for e in entries})
        return UsageError(f"{url.text}: the server has no model '{url.model}'; it has: "
                          f"{', '.join(names) or 'none'}")
    ready = [e.get("version", "") for e in same if e.get("state") == "READY"]
    if url.version and url.version not in ready and ready:
        return UsageError(f"{url.text}: model '{url.model}' has no ready version {url.version}; "
                          f"ready: {', '.join(sorted(ready))}")
    # A load failure's reason ends with the python backend's traceback: its first line says it.
    states = "; ".join(f"v{e.get('version', '?')} {e.get('state', '?')}"
                       + (f": {e['reason'].strip().splitlines()[0]}" if e.get("reason") else "")
                       for e in same)
    return BackendRunError(f"{url.text}: model '{url.model}' is not ready on the server "
                           f"({states or err}); see the server's log")


def fetch_served_model(client: _Client, url: TritonUrl) -> ServedModel:
    """The served model's metadata and config; absent or unready models raise one line."""
    from tritonclient.utils import InferenceServerException

    if not client.call("is_server_live"):
        raise client.unreachable("not live")
    try:
        metadata = client.call("get_model_metadata", url.model, url.version)
        config = client.call("get_model_config", url.model, url.version)
    except InferenceServerException as err:
        raise _model_absent(client, url, err) from None
    if "config" in config:  # gRPC wraps the config in a response message
        config = config["config"]
    served = served_model(metadata, config)
    if not client.call("is_model_ready", url.model, url.version):
        raise _model_absent(client, url, RuntimeError("not ready"))
    return served


def checked_served_model(client: _Client, url: TritonUrl, expected: ModelIO) -> ServedModel:
    served = fetch_served_model(client, url)
    found = mismatches(served, expected)
    if found:
        more = f" (and {len(found) - 2} more)" if len(found) > 2 else ""
        raise ServedModelMismatchError(
            f"{url.text}: the served model {served.describe()} does not match the ONNX model: "
            f"{'; '.join(found[:2])}{more}")
    return served


def check_target(url: str, model: LoadedModel, timeout: float = CONNECT_TIMEOUT) -> ServedModel:
    """Connects, fetches the served model and checks it against `model`; returns it.

    Call it in a child process (`isolation.call`), never in one that forks backends after.
    """
    parsed = parse_triton_url(url)
    client = _Client(parsed, timeout)
    try:
        return checked_served_model(client, parsed, model_io(model))
    finally:
        client.close()


class TritonSession:
    """Requests to one served model, batched and shaped as its config says.

    Opening connects and checks the served model (`mismatches`); `infer` sends a feed whole
    when `max_batch_size` is 0, else in requests of at most `max_batch_size` along the leading
    dimension, joined again; reshaped tensors travel in the server's declared dims. Outputs come
    back keyed by the ONNX model's output names, in its order.
    """

    def __init__(self, url: TritonUrl, expected: ModelIO,
                 connect_timeout: float = CONNECT_TIMEOUT,
                 request_timeout: float = REQUEST_TIMEOUT) -> None:
        checker = _Client(url, connect_timeout)
        try:
            self.served = checked_served_model(checker, url, expected)
        finally:
            checker.close()
        self.url = url
        self.expected = expected
        self.client = _Client(url, request_timeout)

    def infer(self, feed_dict: dict[str, np.ndarray]) -> OrderedDict[str, np.ndarray]:
        import numpy as np

        chunks = [self._request(chunk) for chunk in self._batches(feed_dict)]
        return OrderedDict(
            (out.name, chunks[0][out.name] if len(chunks) == 1
             else np.concatenate([c[out.name] for c in chunks]))
            for out in self.expected.outputs)

    def close(self) -> None:
        self.client.close()

    def _batches(self, feed_dict: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
        batch = self.served.max_batch_size
        if batch <= 0:
            return [feed_dict]
        sizes = {len(array) for array in feed_dict.values()}
        if len(sizes) != 1:
            raise BackendRunError(f"{self.url.text}: the inputs' batch dimensions differ "
                                  f"({sorted(sizes)}); Triton batches all inputs together")
        (size,) = sizes
        return [{name: array[start:start + batch] for name, array in feed_dict.items()}
                for start in range(0, size, batch)]

    def _wire_shape(self, tensor: ServedTensor, shape: tuple[int, ...]) -> tuple[int, ...]:
        """The shape a tensor travels in: the server's declared dims around a reshape."""
        if tensor.reshape is None:
            return shape
        if self.served.max_batch_size > 0:
            return (shape[0], *tensor.dims)
        return tensor.dims

    def _request(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import numpy as np
        from tritonclient.utils import InferenceServerException

        module = self.client.module
        served_inputs = {t.name: t for t in self.served.inputs}
        inputs = []
        for name, array in feeds.items():
            tensor = served_inputs[name]
            array = np.ascontiguousarray(array).reshape(self._wire_shape(tensor, array.shape))
            request_input = module.InferInput(name, list(array.shape), tensor.datatype)
            request_input.set_data_from_numpy(array)
            inputs.append(request_input)
        outputs = [module.InferRequestedOutput(out.name) for out in self.served.outputs]
        try:
            result = self.client.call("infer", self.url.model, inputs,
                                      model_version=self.url.version, outputs=outputs)
        except InferenceServerException as err:
            raise BackendRunError(f"{self.url.text}: the server failed the request: "
                                  f"{err.message().splitlines()[0]}") from None
        return {out.name: self._model_shaped(out, result.as_numpy(out.name))
                for out in self.served.outputs}

    def _model_shaped(self, tensor: ServedTensor, array: np.ndarray) -> np.ndarray:
        """An output as the model gave it: the config's reshape undone."""
        if tensor.reshape is None:
            return array
        if self.served.max_batch_size > 0:
            return array.reshape(array.shape[0], *tensor.reshape)
        return array.reshape(tensor.reshape)


@functools.cache
def _runner_class() -> type:
    """`TritonRunner`, defined on first use: Polygraphy is not imported with this module.

    Polygraphy has no Triton runner; this one adapts `TritonSession` to its `BaseRunner`, which
    is what `Comparator.run` drives (activate, input metadata, infer, deactivate).
    """
    from polygraphy.backend.base import BaseRunner
    from polygraphy.common import TensorMetadata

    class TritonRunner(BaseRunner):
        def __init__(self, url: TritonUrl, expected: ModelIO, name: str | None = None,
                     connect_timeout: float = CONNECT_TIMEOUT,
                     request_timeout: float = REQUEST_TIMEOUT) -> None:
            super().__init__(name=name, prefix="triton-runner")
            self.url = url
            self.expected = expected
            self.timeouts = (connect_timeout, request_timeout)

        def activate_impl(self) -> None:
            self.session = TritonSession(self.url, self.expected, *self.timeouts)

        def get_input_metadata_impl(self) -> TensorMetadata:
            import numpy as np

            metadata = TensorMetadata()
            for spec in self.expected.inputs:
                shape = None if spec.shape is None else [None if d == DYNAMIC else d
                                                         for d in spec.shape]
                metadata.add(spec.name, dtype=np.dtype(spec.dtype), shape=shape)
            return metadata

        def infer_impl(self, feed_dict: dict[str, np.ndarray]) -> OrderedDict[str, np.ndarray]:
            start = time.perf_counter()
            outputs = self.session.infer(feed_dict)
            self.inference_time = time.perf_counter() - start
            return outputs

        def deactivate_impl(self) -> None:
            self.session.close()
            del self.session

    return TritonRunner


def __getattr__(name: str) -> Any:
    if name == "TritonRunner":
        return _runner_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def triton_runner(url: str, model: LoadedModel, name: str, **timeouts: float) -> Any:
    """The Polygraphy runner `backends.make_runner` returns for a `triton://` target.

    Nothing goes over the network until the runner is activated. `timeouts`: `connect_timeout`
    (health and metadata requests), `request_timeout` (each inference request), in seconds.
    """
    return _runner_class()(parse_triton_url(url), model_io(model), name, **timeouts)
