"""The `--check` command of `polygraphy debug reduce` in bench/bisect_vs_polygraphy.py.

It stands in for `polygraphy run polygraphy_debug.onnx --trt --fp16 --load-inputs ...
--load-outputs ...` on a machine without TensorRT: the subgraph that `debug reduce` wrote is run
on the emulated fp16 target (trtcheck.precision.emulate, then ONNX Runtime on CPU) and each of
its outputs is compared with the golden value of the same tensor.

    python bench/_fp16_check.py polygraphy_debug.onnx --inputs layerwise_inputs.json \
        --golden golden.json [--atol 1e-2] [--rtol 1e-2]

- Inputs: iteration 0 of the `--inputs` file (polygraphy.json.load_json), only the names that
  are graph inputs of the subgraph.
- Golden: iteration 0 of the first runner in the `--golden` file (RunResults.load).
- An element mismatches when |target - golden| > atol and |target - golden| > rtol * |golden|
  (Polygraphy's elementwise rule: fail only when both are exceeded), or when one side is finite
  and the other is not, or both are non-finite and differ (inf vs -inf or nan; nan
  matches nan).

Exit codes: 0 every output matches; 1 a mismatch; 2 the check could not compare (a subgraph
input missing from `--inputs`, or no subgraph output in `--golden`, which is what
`polygraphy run --load-outputs` also treats as an error). `debug reduce` counts any non-zero
exit as a failing subgraph, as it would with `polygraphy run`.

If the environment variable TRTCHECK_BENCH_COUNTER names a file, one line is appended to it
per run (status, reason, subgraph node count), so the caller can count target runs.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

COUNTER_ENV = "TRTCHECK_BENCH_COUNTER"
PASS, MISMATCH, CANNOT_COMPARE = 0, 1, 2


def _record(status: str, reason: str, nodes: int) -> None:
    counter = os.environ.get(COUNTER_ENV)
    if counter:
        with open(counter, "a", encoding="utf-8") as handle:
            handle.write(f"{status}\t{nodes}\t{reason}\n")


def mismatches(target, golden, atol: float, rtol: float) -> int:
    """How many elements of `target` mismatch `golden`; -1 when the shapes differ."""
    import numpy as np

    tgt = np.asarray(target, dtype=np.float64)
    ref = np.asarray(golden, dtype=np.float64)
    if tgt.shape != ref.shape:
        return -1
    finite_t, finite_r = np.isfinite(tgt), np.isfinite(ref)
    both = finite_t & finite_r
    with np.errstate(invalid="ignore", over="ignore"):
        diff = np.abs(tgt - ref)
        bad = both & (diff > atol) & (diff > rtol * np.abs(ref))
    bad |= finite_t != finite_r
    neither = ~finite_t & ~finite_r
    bad |= neither & ~((tgt == ref) | (np.isnan(tgt) & np.isnan(ref)))
    return int(bad.sum())


def check(model_path: Path, inputs_path: Path, golden_path: Path, atol: float,
          rtol: float) -> tuple[int, str, int]:
    import numpy as np
    import onnx
    import onnxruntime
    from polygraphy.comparator import RunResults
    from polygraphy.json import load_json

    from trtcheck.precision import PrecisionPlan, emulate

    model = onnx.load(str(model_path))
    nodes = len(model.graph.node)
    initializers = {init.name for init in model.graph.initializer}
    input_names = [i.name for i in model.graph.input if i.name not in initializers]

    loaded = load_json(str(inputs_path), description="input data")
    feed_all = loaded[0] if isinstance(loaded, list) else loaded
    missing = [name for name in input_names if name not in feed_all]
    if missing:
        return CANNOT_COMPARE, f"subgraph input(s) not in {inputs_path.name}: {missing}", nodes
    feed = {name: np.asarray(feed_all[name]) for name in input_names}

    results = RunResults.load(str(golden_path))
    _, iterations = list(results.items())[0]
    golden = iterations[0]

    output_names = [o.name for o in model.graph.output]
    common = [name for name in output_names if name in golden]
    if not common:
        return (CANNOT_COMPARE, f"no common outputs: subgraph outputs {output_names} are not in "
                f"{golden_path.name}", nodes)

    onnxruntime.set_default_logger_severity(3)
    emulated = emulate(model, PrecisionPlan("fp16"))
    session = onnxruntime.InferenceSession(emulated.SerializeToString(),
                                           providers=["CPUExecutionProvider"])
    observed = dict(zip(output_names, session.run(output_names, feed), strict=True))
    failing = []
    for name in common:
        count = mismatches(observed[name], np.asarray(golden[name]), atol, rtol)
        if count:
            failing.append(f"{name} ({'shape differs' if count < 0 else f'{count} element(s)'})")
    if failing:
        return MISMATCH, "mismatch: " + ", ".join(failing), nodes
    return PASS, f"match: {', '.join(common)}", nodes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, nargs="?", default=Path("polygraphy_debug.onnx"))
    parser.add_argument("--inputs", type=Path, required=True)
    parser.add_argument("--golden", type=Path, required=True)
    parser.add_argument("--atol", type=float, default=1e-2)
    parser.add_argument("--rtol", type=float, default=1e-2)
    args = parser.parse_args(argv)
    try:
        code, reason, nodes = check(args.model, args.inputs, args.golden, args.atol, args.rtol)
    except Exception as err:  # a crash is a failing subgraph for debug reduce, but say so
        _record("error", f"{type(err).__name__}: {str(err).strip().splitlines()[0:1]}", -1)
        raise
    _record({PASS: "pass", MISMATCH: "fail"}.get(code, "error"), reason, nodes)
    print(reason)
    return code


if __name__ == "__main__":
    sys.exit(main())
