"""`trtcheck compare` and `trtcheck fix` on a model over 2 GB (protobuf's limit), for real.

Builds a 2.2 GB model (two 16,600 x 16,600 fp32 MatMul weights, external data) in a temporary
folder, then runs `trtcheck compare --target onnxrt-fp16` and `trtcheck fix` on it and prints
each command's exit code, wall time and peak memory (of the command and its children). Both must
exit 0 (compare: a pass or a mismatch verdict, 0 or 1; never 3 "Failed to serialize proto"), and
the fixed model must be written with external data. Needs about 3 GB of disk and 8 GB of RAM;
too big for the unit tests, which lower the threshold instead (tests/test_fix.py,
tests/test_backends.py).
"""

from __future__ import annotations

import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

SIZE = 16_600  # two SIZE x SIZE fp32 weights: 2.2 GB


def build(folder: Path) -> Path:
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w0"], ["h"], name="mm0"),
         helper.make_node("Relu", ["h"], ["r"], name="relu"),
         helper.make_node("MatMul", ["r", "w1"], ["y"], name="mm1")], "big",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, SIZE])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, SIZE])])
    rng = np.random.default_rng(0)
    for name in ("w0", "w1"):
        # Added one at a time: helper.make_graph(initializer=...) would copy through protobuf.
        tensor = graph.initializer.add()
        tensor.name, tensor.data_type = name, TensorProto.FLOAT
        tensor.dims.extend([SIZE, SIZE])
        tensor.raw_data = (rng.standard_normal((SIZE, SIZE), np.float32) / SIZE ** 0.5).tobytes()
    model = onnx.ModelProto(ir_version=8, producer_name="bench")
    model.opset_import.add(domain="", version=17)
    # make_model would copy the graph (over 2 GB: "Failed to serialize proto"); assign parts.
    model.graph.name = graph.name
    for field in ("node", "input", "output", "initializer"):
        getattr(model.graph, field).extend(getattr(graph, field))
    del graph
    path = folder / "big.onnx"
    from trtcheck.atomic import save_onnx

    save_onnx(model, path, external_data=True)
    return path


def run(command: list[str]) -> tuple[int, float, float, str]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    peak_mb = max(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, before) / 1024
    return done.returncode, seconds, peak_mb, (done.stdout + done.stderr)[-1500:]


def main() -> int:
    trtcheck = str(Path(sys.executable).parent / "trtcheck")
    with tempfile.TemporaryDirectory(prefix="trtcheck-big-") as tmp:
        folder = Path(tmp)
        started = time.perf_counter()
        path = build(folder)
        size = sum(p.stat().st_size for p in folder.iterdir()) / 1e9
        print(f"built {path.name}: {size:.2f} GB in {time.perf_counter() - started:.1f} s")
        ok = True
        for name, command, passing in (
                ("compare", [trtcheck, "compare", str(path), "--target", "onnxrt-fp16",
                             "--work-dir", str(folder / "work")], (0, 1)),
                ("fix", [trtcheck, "fix", str(path), "-o", str(folder / "fixed.onnx")], (0,))):
            code, seconds, peak, tail = run(command)
            print(f"{name}: exit {code}, {seconds:.1f} s, peak {peak:.0f} MB (largest child)")
            if code not in passing:
                ok = False
                print(tail)
        data = folder / "fixed.onnx.data"
        print(f"fixed model's external data: {data.stat().st_size / 1e9:.2f} GB"
              if data.is_file() else "fixed model's external data: missing")
        ok = ok and data.is_file()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
