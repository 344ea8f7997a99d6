"""Wall time of a live comparison against a Triton server next to a local comparison (issue 13).

What it measures: the wall time of whole `trtcheck compare` CLI runs, process start to exit, for
the same model, inputs and seed, three ways:

- `trtcheck compare MODEL --target triton://127.0.0.1:PORT/NAME`       (live, HTTP)
- `trtcheck compare MODEL --target triton+grpc://127.0.0.1:PORT/NAME`  (live, gRPC)
- `trtcheck compare MODEL --target onnxrt`                              (local, the baseline)

Both live rows run the ONNX Runtime reference locally and fetch the target's outputs from the
server (after checking the served model's metadata against the ONNX model); the local row runs
ONNX Runtime twice in-process. The ratio says what a live check costs over a local one.

Models: zoo/demo.onnx; zoo/cnn_dynamic_batch.onnx, served with max_batch_size 4 and fed a batch of
8, so every live run splits it into two requests; and, when the real-model corpus has been built
(.cache/trtcheck-bench/corpus/torch/resnet18_classic.onnx), ResNet-18 on one 1x3x224x224 image.

The server: one `tritonserver` from the nvidia-pytriton wheel, in its own venv
(tools/triton_venv.sh, cached under .cache/triton-venv), started once on free local ports for the
whole bench, serving all models with the python backend, each model's `model.py` running ONNX
Runtime on the CPU with one intra-op thread (tests/triton_server.py, reused here). It runs on
the same machine as the client, so the numbers include no network beyond loopback. It is
stopped on every way out (an error, Ctrl-C, SIGTERM).

Each command runs once untimed (warm-up: page cache, the server's first inference), then N
rounds are timed interleaved (HTTP, gRPC, local, HTTP, ...) so machine noise hits every row.
Every run must exit 0 (the server computes what ONNX Runtime computes); any other exit code
stops the bench with the command's output.

Run it from the repository root, in trtcheck's venv:

    .venv/bin/python bench/triton_live.py --repeats 5
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
import tempfile
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from timing import Row, Timer, bench_environment

if TYPE_CHECKING:
    from tests.triton_server import TritonServer

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # tests.triton_server, run as a script from anywhere
    sys.path.insert(0, str(REPO))

RESNET18 = REPO / ".cache" / "trtcheck-bench" / "corpus" / "torch" / "resnet18_classic.onnx"
TRTCHECK = [sys.executable, "-m", "trtcheck"]
SEED = "0"
LOCAL = "local onnxrt"
HTTP = "triton http"
GRPC = "triton grpc"
# Set by `main`: runs every timed command (bench/timing.py).
TIMER = Timer()


@dataclass(frozen=True)
class BenchModel:
    """One model: its file, its name on the server, how it is served and fed."""

    name: str
    path: Path
    max_batch_size: int = 0
    input_shapes: tuple[str, ...] = ()


@dataclass
class ModelResult:
    model: BenchModel
    rows: list[Row]
    # Server-side executions per live run (from the model's statistics): 2 for a split batch.
    executions_per_run: float | None = None

    def ratio(self, row: Row) -> float:
        local = next(r for r in self.rows if r.label == LOCAL)
        return row.median / local.median


def bench_models() -> list[BenchModel]:
    models = [BenchModel("demo", REPO / "zoo" / "demo.onnx"),
              BenchModel("cnn_batched", REPO / "zoo" / "cnn_dynamic_batch.onnx",
                         max_batch_size=4, input_shapes=("image:8x3x32x32",))]
    if RESNET18.exists():
        models.append(BenchModel("resnet18", RESNET18, input_shapes=("image:1x3x224x224",)))
    else:
        print(f"{RESNET18.relative_to(REPO)} not found: ResNet-18 left out "
              "(build the real-model corpus first)", file=sys.stderr)
    return models


def commands(model: BenchModel, http_url: str, grpc_url: str) -> list[Row]:
    """The three timed commands for one model, with the same inputs flags."""
    flags = ["--seed", SEED]
    if model.input_shapes:
        flags += ["--input-shapes", *model.input_shapes]
    compare = [*TRTCHECK, "compare", str(model.path)]
    return [Row(HTTP, [*compare, "--target", http_url, *flags]),
            Row(GRPC, [*compare, "--target", grpc_url, *flags]),
            Row(LOCAL, [*compare, "--target", "onnxrt", *flags])]


def execution_count(http_port: int, name: str) -> int:
    """How many times the server has executed the model (its statistics endpoint)."""
    address = f"http://127.0.0.1:{http_port}/v2/models/{name}/stats"
    with urllib.request.urlopen(address, timeout=10) as response:
        return int(json.load(response)["model_stats"][0]["execution_count"])


def bench_model(model: BenchModel, server: TritonServer, repeats: int,
                timeout: float) -> ModelResult:
    rows = commands(model, server.url(model.name), server.url(model.name, grpc=True))
    before = execution_count(server.http_port, model.name)
    TIMER.time_rows(rows, repeats, timeout)
    live_runs = 2 * (repeats + 1)  # HTTP and gRPC rows, warm-up included
    executions = execution_count(server.http_port, model.name) - before
    return ModelResult(model, rows, executions / live_runs)


@contextlib.contextmanager
def stopped_on_sigterm() -> Iterator[None]:
    """SIGTERM raises SystemExit, so the server's context manager stops it as on Ctrl-C."""

    def leave(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, leave)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def render(results: list[ModelResult], repeats: int) -> str:
    header = ("model", "command", "median s", "min s", "ratio vs local")
    lines = [(result.model.name if i == 0 else "", row.label, f"{row.median:.3f}",
              f"{row.best:.3f}", "-" if row.label == LOCAL else f"{result.ratio(row):.2f}")
             for result in results for i, row in enumerate(result.rows)]
    widths = [max(len(cells[i]) for cells in [header, *lines]) for i in range(len(header))]

    def fmt(cells: tuple[str, ...]) -> str:
        return "  ".join(c.ljust(w) if i < 2 else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths, strict=True))).rstrip()

    out = [fmt(header), "  ".join("-" * w for w in widths), *map(fmt, lines), ""]
    out.append(f"{repeats} timed run(s) per command, interleaved, after one untimed warm-up; "
               "ratio = median / local median.")
    codes = sorted({code for result in results for row in result.rows for code in row.exit_codes})
    out.append(f"exit codes seen: {codes}")
    for result in results:
        model = result.model
        shapes = " ".join(model.input_shapes) or "the model's own shapes"
        batching = (f", max_batch_size {model.max_batch_size}" if model.max_batch_size else "")
        out.append(f"{model.name}: {model.path.relative_to(REPO)}, {shapes}{batching}; "
                   f"server executions per live run: {result.executions_per_run:g}")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5,
                        help="timed runs per command (default 5)")
    parser.add_argument("--timeout", type=float, default=600.0,
                        help="seconds before one command counts as hung (default 600)")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")

    import onnx

    from tests.triton_server import ServedModel, VenvUnavailable, serving, triton_venv

    try:
        venv = triton_venv()
    except VenvUnavailable as err:
        print(f"no Triton server venv: {err}", file=sys.stderr)
        return 3
    models = bench_models()
    served = [ServedModel(m.name, onnx.load(str(m.path)), max_batch_size=m.max_batch_size)
              for m in models]
    with tempfile.TemporaryDirectory(prefix="trtcheck-triton-bench-") as tmp:
        TIMER.environment = bench_environment(Path(tmp) / "pycache")
        try:
            with stopped_on_sigterm(), serving(venv, Path(tmp), served) as server:
                print(f"tritonserver pid {server.pid}: http {server.http_port}, "
                      f"grpc {server.grpc_port}", file=sys.stderr, flush=True)
                results = []
                for model in models:
                    print(f"benching {model.name} ...", file=sys.stderr, flush=True)
                    results.append(bench_model(model, server, args.repeats, args.timeout))
        # BenchError, or the server failing to start (RuntimeError with its log's tail).
        except RuntimeError as exc:
            print(f"bench failed: {exc}", file=sys.stderr)
            return 3
    print(render(results, args.repeats))
    return 0


if __name__ == "__main__":
    sys.exit(main())
