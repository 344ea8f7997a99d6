"""A real Triton Inference Server for tests: its venv, a model repository, the running server.

The `tritonserver` binary comes from the `nvidia-pytriton` wheel, which pins numpy<2, so it runs
from a venv of its own (`tools/triton_venv.sh`, cached under .cache/triton-venv). Only the python
backend is bundled: each served model is a `model.py` that runs the ONNX model with ONNX Runtime
(see /work/shared/notes/triton.md). pytriton's own `Triton().bind()` is not used: its proxy model
fails under Python 3.11 here, and the bundled binary on a plain repository is what users deploy.

Deployment faults are planted in `model.py` by a `fault` parameter of the model's config, so a
repository serves the same ONNX file correctly and wrongly side by side.
"""

from __future__ import annotations

import contextlib
import os
import platform
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import onnx

ROOT = Path(__file__).resolve().parents[1]
VENV_SCRIPT = ROOT / "tools" / "triton_venv.sh"
# Overridable so that CI can keep the venv outside a fresh clone.
VENV = Path(os.environ.get("TRTCHECK_TRITON_VENV", ROOT / ".cache" / "triton-venv"))
INSTALL_TIMEOUT = 900.0
READY_TIMEOUT = 120.0

# Faults that model.py plants (the config's "fault" parameter).
SWAP_INPUTS = "swap_inputs"
# initialize() raises, as a model whose engine the server cannot load does.
FAIL_TO_LOAD = "fail_to_load"
# Reads each output's [N, A, B] buffer as [N, B, A] and transposes back: the shape stays right,
# the layout is wrong (a reshape written where a transpose was meant).
WRONG_RESHAPE = "wrong_reshape"

MODEL_PY = '''\
"""Serves the ONNX model beside this file with ONNX Runtime (written by tests/triton_server.py)."""

import json
import os

import numpy as np
import onnxruntime
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.fault = config.get("parameters", {}).get("fault", {}).get("string_value", "")
        if self.fault == "fail_to_load":
            raise RuntimeError("planted: this model does not load")
        folder = os.path.join(args["model_repository"], args["model_version"])
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = 1
        self.session = onnxruntime.InferenceSession(
            os.path.join(folder, "model.onnx"), options, providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.outputs = [o.name for o in self.session.get_outputs()]

    def execute(self, requests):
        responses = []
        for request in requests:
            feeds = {name: pb_utils.get_input_tensor_by_name(request, name).as_numpy()
                     for name in self.inputs}
            if self.fault == "swap_inputs":
                first, second = self.inputs[:2]
                feeds[first], feeds[second] = feeds[second], feeds[first]
            results = self.session.run(self.outputs, feeds)
            if self.fault == "wrong_reshape":
                results = [np.ascontiguousarray(
                    r.reshape(r.shape[0], r.shape[2], r.shape[1]).transpose(0, 2, 1))
                    for r in results]
            tensors = [pb_utils.Tensor(name, np.ascontiguousarray(result))
                       for name, result in zip(self.outputs, results)]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
        return responses
'''

_TRITON_TYPES: dict[int, str] = {
    onnx.TensorProto.FLOAT: "TYPE_FP32", onnx.TensorProto.FLOAT16: "TYPE_FP16",
    onnx.TensorProto.INT64: "TYPE_INT64", onnx.TensorProto.INT32: "TYPE_INT32",
    onnx.TensorProto.BOOL: "TYPE_BOOL"}


class VenvUnavailable(Exception):
    """The server venv could not be made; `accepted` when a user would accept it as a skip."""

    def __init__(self, reason: str, accepted: bool) -> None:
        super().__init__(reason)
        self.accepted = accepted


def triton_venv() -> Path:
    """The server venv, made by tools/triton_venv.sh (once; later calls find its stamp).

    Raises `VenvUnavailable`: accepted as a reason to skip off Linux x86-64 (the wheel ships no
    server for other platforms) and, outside CI, when PyPI cannot be reached.
    """
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "aarch64"):
        raise VenvUnavailable(f"nvidia-pytriton ships tritonserver for Linux only, not "
                              f"{platform.system()} {platform.machine()}", accepted=True)
    try:
        done = subprocess.run(["bash", str(VENV_SCRIPT), str(VENV)], capture_output=True,
                              text=True, timeout=INSTALL_TIMEOUT, check=False)
    except subprocess.TimeoutExpired:
        raise VenvUnavailable(f"{VENV_SCRIPT.name} took over {INSTALL_TIMEOUT:.0f} s",
                              accepted=False) from None
    if done.returncode == 0:
        return VENV
    said = [line for line in done.stderr.splitlines() if not line.startswith("WARNING")]
    offline = any(hint in done.stderr for hint in ("No matching distribution",
                                                   "Could not fetch URL", "NewConnectionError"))
    raise VenvUnavailable(f"{VENV_SCRIPT.name} failed: {' | '.join(said[-3:])}",
                          accepted=offline and not os.environ.get("CI"))


@dataclass(frozen=True)
class ServedModel:
    """One model folder of a repository: an ONNX model served by model.py, maybe with a fault."""

    name: str
    model: onnx.ModelProto
    max_batch_size: int = 0
    fault: str = ""
    # Replaces what the config declares for a tensor: name -> dims (a misconfigured repository).
    dims: dict[str, list[int]] = field(default_factory=dict)
    # Tensor name -> the reshape the config declares for it.
    reshape: dict[str, list[int]] = field(default_factory=dict)


def _tensor_config(value: onnx.ValueInfoProto, served: ServedModel) -> str:
    tensor = value.type.tensor_type
    dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim]
    if served.max_batch_size > 0:
        dims = dims[1:]
    dims = served.dims.get(value.name, dims)
    text = (f'  {{ name: "{value.name}" data_type: {_TRITON_TYPES[tensor.elem_type]} '
            f'dims: {dims}')
    if value.name in served.reshape:
        text += f" reshape: {{ shape: {served.reshape[value.name]} }}"
    return text + " }"


def config_text(served: ServedModel) -> str:
    """The model's config.pbtxt: python backend, the ONNX model's inputs and outputs."""
    graph = served.model.graph
    initializers = {t.name for t in graph.initializer}
    inputs = [v for v in graph.input if v.name not in initializers]
    lines = [f'name: "{served.name}"', 'backend: "python"',
             f"max_batch_size: {served.max_batch_size}",
             "input [", ",\n".join(_tensor_config(v, served) for v in inputs), "]",
             "output [", ",\n".join(_tensor_config(v, served) for v in graph.output), "]",
             "instance_group [ { kind: KIND_CPU count: 1 } ]"]
    if served.fault:
        lines.append(f'parameters {{ key: "fault" value: {{ string_value: "{served.fault}" }} }}')
    return "\n".join(lines) + "\n"


def write_repository(folder: Path, models: Sequence[ServedModel]) -> Path:
    """Writes a model repository with one folder per model (version 1); returns `folder`."""
    for served in models:
        version = folder / served.name / "1"
        version.mkdir(parents=True)
        onnx.save(served.model, str(version / "model.onnx"))
        (version / "model.py").write_text(MODEL_PY)
        (folder / served.name / "config.pbtxt").write_text(config_text(served))
    return folder


def free_ports(count: int) -> list[int]:
    """Ports free now, distinct (all held open until all are chosen)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]


@dataclass(frozen=True)
class TritonServer:
    """A running server: where it listens and where it logs."""

    http_port: int
    grpc_port: int
    log: Path
    pid: int

    def url(self, model: str, grpc: bool = False) -> str:
        if grpc:
            return f"triton+grpc://127.0.0.1:{self.grpc_port}/{model}"
        return f"triton://127.0.0.1:{self.http_port}/{model}"


def _server_command(venv: Path, repository: Path, ports: list[int]) -> tuple[list[str], dict]:
    site = next((venv / "lib").glob("python3*/site-packages"))
    triton = site / "pytriton" / "tritonserver"
    command = [str(triton / "bin" / "tritonserver"), f"--model-repository={repository}",
               f"--backend-directory={triton / 'backends'}", f"--http-port={ports[0]}",
               f"--grpc-port={ports[1]}", "--http-address=127.0.0.1",
               "--grpc-address=127.0.0.1", "--allow-metrics=false",
               "--exit-timeout-secs=1", "--log-verbose=0",
               # A model that fails to load stays listed as UNAVAILABLE, as in production.
               "--exit-on-error=false", "--strict-readiness=false"]
    # The python backend's stub runs the venv's Python (numpy<2 and ONNX Runtime beside it).
    env = {**os.environ, "PATH": f"{venv / 'bin'}:{os.environ.get('PATH', '')}",
           "LD_LIBRARY_PATH": str(site / "nvidia_pytriton.libs"), "PYTHONNOUSERSITE": "1"}
    env.pop("PYTHONPATH", None)
    return command, env


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=1) as r:
            return bool(r.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _log_tail(log: Path, lines: int = 8) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


@contextlib.contextmanager
def running_server(venv: Path, repository: Path, log: Path,
                   timeout: float = READY_TIMEOUT) -> Iterator[TritonServer]:
    """Starts tritonserver on free ports, waits until every model is ready, stops it after.

    The server gets a session of its own so that its python-backend stubs are stopped with it;
    on any way out (a failed test, Ctrl-C) the whole group is terminated, then killed, and a
    test process killed outright takes the server with it (PR_SET_PDEATHSIG).
    """
    ports = free_ports(2)
    command, env = _server_command(venv, repository, ports)
    with open(log, "wb") as stream:
        process = subprocess.Popen(command, stdout=stream, stderr=subprocess.STDOUT, env=env,
                                   start_new_session=True, preexec_fn=_die_with_parent)
    try:
        deadline = time.monotonic() + timeout
        while not _ready(ports[0]):
            if process.poll() is not None:
                raise RuntimeError(f"tritonserver exited with {process.returncode}:\n"
                                   f"{_log_tail(log)}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"tritonserver not ready within {timeout:.0f} s:\n"
                                   f"{_log_tail(log)}")
            time.sleep(0.2)
        yield TritonServer(ports[0], ports[1], log, process.pid)
    finally:
        _stop(process)


def _die_with_parent() -> None:
    """In the server's process before exec: killed when the test process dies (even SIGKILL)."""
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


def _stop(process: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    # The stubs of a server that died first may linger in its group.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


@contextlib.contextmanager
def serving(venv: Path, folder: Path, models: Sequence[ServedModel]) -> Iterator[TritonServer]:
    """`models` written to `folder`/repository and served until the block ends.

    The server's log is `folder`/tritonserver.log; a test that fails on the server's side
    finds the reason there.
    """
    repository = write_repository(folder / "repository", models)
    with running_server(venv, repository, folder / "tritonserver.log") as server:
        yield server
