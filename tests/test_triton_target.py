"""A live Triton server as a target (trtcheck/deploy/triton_target.py), against a real server.

The server is the `tritonserver` of the nvidia-pytriton wheel (tests/triton_server.py), started
once for this module with a repository that serves small zoo models correctly and with planted
deployment faults. Every client call runs in a child process (`isolation.call`), as in a
comparison: tritonclient's HTTP and gRPC clients do not survive a fork once used.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.triton_server import (
    FAIL_TO_LOAD,
    SWAP_INPUTS,
    WRONG_RESHAPE,
    ServedModel,
    TritonServer,
    free_ports,
    serving,
)
from trtcheck import isolation
from trtcheck.compare import OutputDiff
from trtcheck.deploy.triton_target import (
    CONNECT_TIMEOUT,
    ServedModelMismatchError,
    TritonUnreachableError,
    check_target,
    is_triton_target,
    mismatches,
    model_io,
    parse_triton_url,
    served_model,
    triton_runner,
)
from trtcheck.errors import (
    EXIT_COULD_NOT_RUN,
    EXIT_INPUT_ERROR,
    BackendRunError,
    BackendUnavailableError,
    UsageError,
)
from trtcheck.inputs import InputSettings
from trtcheck.model import load_model
from trtcheck.precision import PrecisionPlan, emulate
from zoo.build import overflow_chain, transformer_block

ZOO = Path(__file__).resolve().parents[1] / "zoo"
REFERENCE, TARGET = "reference:onnxrt", "target:triton"


def two_inputs(names: tuple[str, str] = ("a", "b"), seed: int = 0) -> onnx.ModelProto:
    """y = a @ W - b: both inputs have one shape and dtype, so a swap shows in values only."""
    rng = np.random.default_rng(seed)
    weight = numpy_helper.from_array(rng.standard_normal((8, 8)).astype(np.float32), "w")
    first, second = names
    nodes = [helper.make_node("MatMul", [first, "w"], ["aw"]),
             helper.make_node("Sub", ["aw", second], ["y"])]
    graph = helper.make_graph(
        nodes, "two_inputs",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 8]) for n in names],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


@dataclass(frozen=True)
class Served:
    server: TritonServer
    files: dict[str, Path]

    def url(self, name: str, grpc: bool = False) -> str:
        return self.server.url(name, grpc)


def _repository_models() -> list[ServedModel]:
    demo = onnx.load(str(ZOO / "demo.onnx"))
    chain = overflow_chain()
    block = transformer_block()
    return [
        ServedModel("demo", demo),
        ServedModel("cnn_batched", onnx.load(str(ZOO / "cnn_dynamic_batch.onnx")),
                    max_batch_size=4),
        # A config reshape done right: the client sends [3072], the model sees [1,3,32,32].
        ServedModel("demo_reshaped", demo, dims={"image": [3072]},
                    reshape={"image": [1, 3, 32, 32]}),
        ServedModel("chain", chain),
        ServedModel("chain_fp16", emulate(chain, PrecisionPlan("fp16"))),
        ServedModel("pair", two_inputs()),
        ServedModel("pair_swapped", two_inputs(), fault=SWAP_INPUTS),
        ServedModel("block", block),
        ServedModel("block_wrong_reshape", block, fault=WRONG_RESHAPE),
        # Misconfigured repositories that the metadata check must catch before comparing.
        ServedModel("demo_nhwc", demo, dims={"image": [1, 32, 32, 3]}),
        ServedModel("demo_bad_reshape", demo, dims={"image": [3072]},
                    reshape={"image": [1, 32, 32, 3]}),
        ServedModel("demo_fixed_batch", demo, max_batch_size=8),
        # The same model under positional input names (as an engine exported with them would
        # be): Triton binds by name, so the names must agree.
        ServedModel("pair_renamed", two_inputs(names=("input0", "input1"))),
        ServedModel("demo_unloadable", demo, fault=FAIL_TO_LOAD),
    ]


@pytest.fixture(scope="module")
def served(triton_venv: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    folder = tmp_path_factory.mktemp("triton")
    models = _repository_models()
    files = {}
    for model in models:
        files[model.name] = folder / f"{model.name}.onnx"
        onnx.save(model.model, str(files[model.name]))
    with serving(triton_venv, folder, models) as server:
        yield Served(server, files)


def _served_run(url: str, model, iterations, timeouts: dict[str, float]):
    from polygraphy.comparator import Comparator

    runner = triton_runner(url, model, TARGET, **timeouts)
    ((name, ran),) = Comparator.run([runner], data_loader=list(iterations)).items()
    return name, ran


def compare_live(path: Path, url: str, shapes: dict[str, tuple[int, ...]] | None = None,
                 **timeouts: float) -> dict[str, OutputDiff]:
    """`trtcheck compare MODEL --target URL` through the core API: the served model is checked,
    then ONNX Runtime's outputs are compared with the server's."""
    from trtcheck.core import CompareRequest, compare_model

    del timeouts  # the CLI's own
    result = compare_model(CompareRequest(model=path, target=url,
                                          inputs=InputSettings(shapes=shapes or {})))
    assert result.target.family == "triton" and "serves " in (result.target_note or "")
    return {d.name: d for d in result.outputs}


def _check(url: str, path: Path, timeout: float = CONNECT_TIMEOUT):
    return isolation.call(check_target, url, load_model(path), timeout, what=f"check {url}")


def _stats(server: TritonServer, name: str) -> dict:
    address = f"http://127.0.0.1:{server.http_port}/v2/models/{name}/stats"
    with urllib.request.urlopen(address, timeout=10) as response:
        return json.load(response)["model_stats"][0]


# Live comparisons: served right, they pass; with a planted fault, they fail.

@pytest.mark.parametrize("grpc", [False, True], ids=["http", "grpc"])
def test_a_correctly_served_model_passes_against_the_onnx_reference(served, grpc):
    diffs = compare_live(served.files["demo"], served.url("demo", grpc))
    assert set(diffs) == {"scores", "energy"}
    assert all(d.passed for d in diffs.values()), diffs
    # Same model, same ONNX Runtime on both sides: at most rounding from other thread counts.
    assert diffs["energy"].max_abs_error <= 1e-3 * abs(diffs["energy"].reference_at_max)


def test_requests_follow_max_batch_size_and_batches_come_back_whole(served):
    before = _stats(served.server, "cnn_batched")
    diffs = compare_live(served.files["cnn_batched"], served.url("cnn_batched"),
                         shapes={"image": (10, 3, 32, 32)})
    after = _stats(served.server, "cnn_batched")
    assert diffs["logits"].passed and diffs["logits"].shape == (10, 10)
    # max_batch_size 4: ten images go as 4 + 4 + 2, three executions of ten inferences.
    assert int(after["execution_count"]) - int(before["execution_count"]) == 3
    assert int(after["inference_count"]) - int(before["inference_count"]) == 10


def test_a_config_reshape_is_sent_in_the_servers_dims(served):
    diffs = compare_live(served.files["demo_reshaped"], served.url("demo_reshaped"))
    assert all(d.passed for d in diffs.values())


def test_a_model_served_in_fp16_fails_where_fp16_overflows(served):
    assert compare_live(served.files["chain"], served.url("chain"))["y"].passed
    diff = compare_live(served.files["chain"], served.url("chain_fp16"))["y"]
    assert not diff.passed and diff.nonfinite_mismatches > 0


def test_two_inputs_swapped_by_the_served_model_fail(served):
    assert compare_live(served.files["pair"], served.url("pair"))["y"].passed
    # Same names, dtypes and dims: the metadata check cannot see it, the values do.
    diff = compare_live(served.files["pair"], served.url("pair_swapped"))["y"]
    assert not diff.passed and diff.max_abs_error > 0.1


def test_a_wrong_reshape_inside_the_served_model_fails(served):
    assert compare_live(served.files["block"], served.url("block"))["y"].passed
    diff = compare_live(served.files["block"], served.url("block_wrong_reshape"))["y"]
    assert not diff.passed and diff.shape == (1, 16, 32)


# What the metadata check catches before any inference.

@pytest.mark.parametrize(("name", "model", "phrase"), [
    ("demo_nhwc", "demo", "input 'image': the server declares dims [1,32,32,3] with "
                          "max_batch_size 0 (the batch dimension included), the ONNX model "
                          "[1,3,32,32]"),
    ("demo_bad_reshape", "demo", "dims [3072] reshaped to [1,32,32,3]"),
    ("demo_fixed_batch", "demo", "max_batch_size is 8 but the ONNX model fixes the batch "
                                 "dimension of image (1), scores (1), energy (1); set "
                                 "max_batch_size: 0"),
    ("pair_renamed", "pair", "input names differ: the ONNX model has a, b, the server "
                             "input0, input1"),
    ("demo", "chain", "input names differ"),
])
def test_a_served_model_that_differs_from_the_onnx_model_is_one_line_exit_2(
        served, name, model, phrase):
    with pytest.raises(ServedModelMismatchError) as caught:
        compare_live(served.files[model], served.url(name))
    message = str(caught.value)
    assert phrase in message and message.startswith(served.url(name)), message
    assert "\n" not in message and caught.value.exit_code == EXIT_INPUT_ERROR


def test_a_model_the_server_lacks_is_named_with_the_ones_it_has(served):
    with pytest.raises(UsageError) as caught:
        _check(served.url("demo_typo"), served.files["demo"])
    message = str(caught.value)
    assert "the server has no model 'demo_typo'" in message
    assert "demo (READY)" in message and "pair_swapped (READY)" in message
    with pytest.raises(UsageError, match="has no ready version 2; ready: 1"):
        _check(served.url("demo") + "/2", served.files["demo"])


def test_a_model_that_failed_to_load_is_exit_3_with_the_servers_reason(served):
    with pytest.raises(BackendRunError) as caught:
        _check(served.url("demo_unloadable"), served.files["demo"])
    message = str(caught.value)
    assert message.startswith(f"{served.url('demo_unloadable')}: model 'demo_unloadable' is "
                              "not ready on the server (v1 UNAVAILABLE: ")
    assert "planted: this model does not load" in message and "\n" not in message
    assert caught.value.exit_code == EXIT_COULD_NOT_RUN


def test_the_check_returns_what_the_server_serves(served):
    checked = _check(served.url("cnn_batched", grpc=True), served.files["cnn_batched"])
    assert checked.max_batch_size == 4 and checked.platform == "python"
    assert [(t.name, t.datatype, t.dims) for t in checked.inputs] == [
        ("image", "FP32", (3, 32, 32))]


# A server that does not answer: one line naming the URL, exit 3, within the timeout.

@pytest.mark.parametrize("scheme", ["triton", "triton+grpc"])
def test_a_closed_port_is_one_line_exit_3(scheme):
    (port,) = free_ports(1)
    url = f"{scheme}://127.0.0.1:{port}/demo"
    started = time.monotonic()
    with pytest.raises(TritonUnreachableError) as caught:
        _check(url, ZOO / "demo.onnx", timeout=5)
    assert time.monotonic() - started < 5
    assert str(caught.value).startswith(f"{url}: the Triton server at 127.0.0.1:{port}")
    assert caught.value.exit_code == EXIT_COULD_NOT_RUN


@pytest.mark.parametrize("scheme", ["triton", "triton+grpc"])
def test_a_server_that_accepts_but_never_answers_times_out(scheme):
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"{scheme}://127.0.0.1:{silent.getsockname()[1]}/demo"
        started = time.monotonic()
        with pytest.raises(TritonUnreachableError, match=r"did not answer within 1 s"):
            _check(url, ZOO / "demo.onnx", timeout=1)
        assert time.monotonic() - started < 4


def _check_without_http_client(url: str):
    sys.modules["geventhttpclient"] = None  # in the child only: the http client cannot import
    return check_target(url, load_model(ZOO / "demo.onnx"))


def test_a_missing_triton_client_is_one_line_exit_3_with_the_install_command():
    with pytest.raises(BackendUnavailableError) as caught:
        isolation.call(_check_without_http_client, "triton://127.0.0.1:1/demo", what="check")
    assert str(caught.value) == ("triton://127.0.0.1:1/demo: tritonclient's http support is not "
                                 "installed; install it with `pip install "
                                 "'onnx-trtcheck[triton]'`")
    assert caught.value.exit_code == EXIT_COULD_NOT_RUN


# URLs and the check itself, without a server.

@pytest.mark.parametrize(("text", "parsed"), [
    ("triton://localhost:8000/resnet", ("http", "localhost", 8000, "resnet", "")),
    ("triton://10.0.0.5:9000/resnet/3", ("http", "10.0.0.5", 9000, "resnet", "3")),
    ("triton+grpc://host/m/", ("grpc", "host", 8001, "m", "")),
    ("triton+http://[::1]:8000/m", ("http", "::1", 8000, "m", "")),
])
def test_triton_urls_parse(text, parsed):
    url = parse_triton_url(text)
    assert (url.protocol, url.host, url.port, url.model, url.version) == parsed
    assert is_triton_target(text)


@pytest.mark.parametrize(("text", "phrase"), [
    ("triton://host:8000", "name the model"),
    ("triton://host:8000/m/1/extra", "name the model"),
    ("triton://host:8000/m/latest", "version 'latest' must be a positive integer"),
    ("triton://host:8000/m/0", "version '0' must be a positive integer"),
    ("triton://host:99999/m", "port must be a number"),
    ("triton://host:80/m?x=1", "takes no user, query or fragment"),
    ("triton:///m", "no server host"),
    ("http://host:8000/m", "not a Triton URL"),
])
def test_a_bad_triton_url_is_one_line_exit_2(text, phrase):
    with pytest.raises(UsageError) as caught:
        parse_triton_url(text)
    assert phrase in str(caught.value) and "triton://HOST:PORT/MODEL" in str(caught.value)
    assert caught.value.exit_code == EXIT_INPUT_ERROR
    assert not is_triton_target("onnxrt-fp16")


def _grpc_json(name: str, batch: int, dims: list[int], reshape: list[int] | None = None):
    """A served model as tritonclient's gRPC JSON gives it: int64 fields as strings."""
    shape = ([-1] if batch else []) + dims
    metadata = {"name": name, "versions": ["1"], "platform": "tensorrt_plan",
                "inputs": [{"name": "image", "datatype": "FP32", "shape": [str(d) for d in shape]}],
                "outputs": [{"name": "logits", "datatype": "FP32", "shape": ["-1", "10"]}]}
    image: dict = {"name": "image", "data_type": "TYPE_FP32", "dims": [str(d) for d in dims]}
    if reshape is not None:
        image["reshape"] = {"shape": [str(d) for d in reshape]}
    return metadata, {"max_batch_size": batch, "input": [image]}


@pytest.mark.parametrize(("batch", "dims", "reshape", "found"), [
    (16, [3, 32, 32], None, []),
    (0, [-1, 3, 32, 32], None, []),
    (0, [4, 3, 32, 32], None, []),
    (16, [3072], [3, 32, 32], []),
    (16, [32, 32, 3], None, ["the server declares dims [32,32,3] with max_batch_size 16"]),
    (16, [3072], [32, 3, 32], ["dims [3072] reshaped to [32,3,32]"]),
    (0, [3, 32, 32], None, ["max_batch_size 0 (the batch dimension included)"]),
])
def test_the_check_reads_dims_with_max_batch_size_and_reshape(batch, dims, reshape, found):
    model = load_model(ZOO / "cnn_dynamic_batch.onnx")
    served_cnn = served_model(*_grpc_json("cnn", batch, dims, reshape))
    problems = mismatches(served_cnn, model_io(model))
    assert len(problems) == len(found)
    assert all(phrase in problem for phrase, problem in zip(found, problems, strict=True))


def test_the_check_names_a_data_type_mismatch():
    model = load_model(ZOO / "cnn_dynamic_batch.onnx")
    metadata, config = _grpc_json("cnn", 8, [3, 32, 32])
    metadata["outputs"][0]["datatype"] = "FP16"
    (problem,) = mismatches(served_model(metadata, config), model_io(model))
    assert problem == "output 'logits': the server declares FP16, the ONNX model FP32 (float32)"


@pytest.mark.parametrize(("batch", "found"), [(1, 0), (2, 1)])
def test_a_model_fixed_at_batch_1_may_be_served_with_max_batch_size_1_only(batch, found):
    # HTTP's JSON, with ints (gRPC's gives strings: `_grpc_json`).
    metadata = {"name": "demo", "versions": ["1"], "platform": "python",
                "inputs": [{"name": "image", "datatype": "FP32", "shape": [-1, 3, 32, 32]}],
                "outputs": [{"name": n, "datatype": "FP32", "shape": [-1, size]}
                            for n, size in (("scores", 10), ("energy", 1))]}
    served_demo = served_model(metadata, {"max_batch_size": batch})
    problems = mismatches(served_demo, model_io(load_model(ZOO / "demo.onnx")))
    assert len(problems) == found


def test_importing_the_target_module_stays_light():
    code = ("import sys, trtcheck.deploy.triton_target as t; t.parse_triton_url('triton://h/m');"
            "print(sorted(m for m in ('numpy', 'onnx', 'polygraphy', 'tritonclient', 'gevent')"
            " if m in sys.modules))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True)
    assert run.stdout.strip() == "[]"


def test_the_cli_compares_a_live_server_and_repeats_with_trtcheck(served, trtcheck_cli):
    url = served.url("demo")
    run = trtcheck_cli("compare", ZOO / "demo.onnx", "--target", url, "--json", "r.json")
    assert run.code == 0, run.stdout + run.stderr
    text = " ".join(run.stdout.split())
    assert "no `polygraphy run` equivalent" in text and f"--target {url}" in text
    closed = trtcheck_cli("compare", ZOO / "demo.onnx", "--target",
                          f"triton://127.0.0.1:{free_ports(1)[0]}/demo", "--timeout", "20")
    assert closed.code == 3 and len(closed.stderr.strip().splitlines()) == 1


def test_a_suite_target_can_be_a_live_server(served, tmp_path):
    # The same comparison from a suite: the target table names the server by URL.
    import shutil

    shutil.copy(ZOO / "demo.onnx", tmp_path / "demo.onnx")
    (tmp_path / "live.suite.toml").write_text(
        f'[targets.served]\nbackend = "{served.url("demo")}"\n\n'
        '[[case]]\nname = "demo"\nmodel = "demo.onnx"\n')
    for args in (["--trtcheck-update-golden-new-only"], ["-rA"]):
        run = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider",
                              "live.suite.toml", *args], cwd=tmp_path, capture_output=True,
                             text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert "PASSED live.suite.toml::demo[served]" in run.stdout
    bad = tmp_path / "bad.suite.toml"
    bad.write_text('[targets.served]\nbackend = "triton://localhost:notaport/demo"\n\n'
                   '[[case]]\nname = "demo"\nmodel = "demo.onnx"\n')
    run = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider",
                          "bad.suite.toml"], cwd=tmp_path, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode != 0 and "bad.suite.toml:1: targets.served.backend:" in run.stdout
    assert "the port must be a number" in run.stdout
