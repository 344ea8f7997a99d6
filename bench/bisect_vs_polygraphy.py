"""trtcheck's bisection next to `polygraphy debug reduce`, on the same emulated fp16 target.

There is no TensorRT here, so the target of both tools is trtcheck's fp16 emulation on ONNX
Runtime (CPU): `trtcheck.precision.emulate(model, PrecisionPlan("fp16"))` rounds every float
tensor through fp16, so a value beyond 65504 becomes inf where TensorRT's fp16 would overflow.
A "target run" is one execution of that emulated fp16 model.

Models, each with one planted fp16 overflow (a Mul by 1e5 whose fp32 effect the next node undoes):

- chain-N: `zoo.build.overflow_chain(length=N/2, overflow_at=k, seed=0)`, N = 100, 300, 1000
  nodes, k drawn by random.Random(N).randint(L // 10, 9 * L // 10); planted node chain/mul{k};
  input x [1,64] in [0,1];
- transformer-planted: zoo/transformer_block.onnx with `planted/overflow` (Mul by 1e5) and
  `planted/rescale` (Mul by 1e-5) inserted after its middle node; input x [1,16,32] in [-1,1].

Tools and recipes:

- trtcheck exact / search: `trtcheck.debug.localize.localize(..., mode=...)` in this process,
  after one
  untimed warm-up (imports), reference onnxrt, target onnxrt-fp16, atol = rtol = 1e-2, inputs
  from numpy's default_rng(0) in the ranges above. "exact" marks every tensor in one run (valid on
  ONNX Runtime), "search" marks few tensors per run (what a TensorRT bisection costs).
- polygraphy correct recipe (NVIDIA's example "Reducing Failing ONNX Models"), each step a
  subprocess, timed as a whole: `run --save-inputs` (--seed 1, same ranges), `run --onnx-outputs
  mark all --save-outputs golden.json`, `data merge` into layer-wise inputs, then `debug reduce
  --mode=bisect --load-inputs layerwise_inputs.json --check bench/_fp16_check.py ...`.
- polygraphy naive recipe: golden from a plain run (final outputs only), `debug reduce
  --load-inputs inputs.json`, the same check against that golden.

    python bench/bisect_vs_polygraphy.py
    python bench/bisect_vs_polygraphy.py --sizes 100 300 --json out.json \
        --markdown docs/bisect-benchmark.md
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import random
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench._fp16_check import COUNTER_ENV, mismatches  # noqa: E402
from trtcheck.atomic import write_atomically  # noqa: E402

POLYGRAPHY = Path(sys.executable).parent / "polygraphy"
CHECK = REPO / "bench" / "_fp16_check.py"
TRANSFORMER = REPO / "zoo" / "transformer_block.onnx"
DEFAULT_TOLERANCE = 1e-2
ATOL = RTOL = DEFAULT_TOLERANCE
CHAIN_SEED = 0
POLYGRAPHY_SEED = 1
DEFAULT_SIZES = (100, 300, 1000)
RECIPE_TIMEOUT = 900.0

TRTCHECK_EXACT = "trtcheck exact"
TRTCHECK_SEARCH = "trtcheck search"
POLY_CORRECT = "polygraphy correct recipe"
POLY_NAIVE = "polygraphy naive recipe"


@dataclass
class Case:
    name: str
    path: Path
    nodes: int
    planted: str
    input_name: str
    shape: tuple[int, ...]
    low: float
    high: float
    # Where the fault was planted, in words, for the report.
    where: str = ""
    # Earliest divergence of the emulated target, node names, per feed (see `earliest`).
    ground_truth: dict[str, dict[str, str | None]] = field(default_factory=dict)

    def feed(self) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(0)
        return {self.input_name: rng.uniform(self.low, self.high, self.shape).astype(np.float32)}

    @property
    def val_range(self) -> str:
        return f"{self.input_name}:[{self.low:g},{self.high:g}]"


@dataclass
class Row:
    tool: str
    target_runs: int | None = None
    wall_s: float | None = None
    named: list[str] = field(default_factory=list)
    named_planted: bool = False
    status: str = "ok"  # ok, timeout, failed
    detail: str = ""
    could_not_compare: int = 0
    local: bool | None = None  # trtcheck: does the culprit fail alone, on reference inputs
    steps: list[dict[str, object]] = field(default_factory=list)


# ---------------------------------------------------------------------------------- models


def chain_case(nodes: int, folder: Path) -> Case:
    from zoo.build import overflow_chain

    length = nodes // 2
    k = random.Random(nodes).randint(length // 10, 9 * length // 10)
    model = overflow_chain(length=length, overflow_at=k, seed=CHAIN_SEED)
    path = folder / f"chain-{nodes}.onnx"
    onnx.save(model, str(path))
    return Case(f"chain-{nodes}", path, len(model.graph.node), f"chain/mul{k}", "x", (1, 64),
                0.0, 1.0, where=f"k = {k}")


def planted_transformer(source: Path = TRANSFORMER) -> tuple[onnx.ModelProto, str]:
    """The transformer block with Mul 1e5 then Mul 1e-5 after its middle node, and that node."""
    model = onnx.load(str(source))
    graph = model.graph
    nodes = list(graph.node)
    middle = len(nodes) // 2
    tapped = nodes[middle].output[0]
    for node in nodes[middle + 1:]:
        for i, name in enumerate(node.input):
            if name == tapped:
                node.input[i] = "planted/rescale"
    for output in graph.output:
        if output.name == tapped:
            raise ValueError(f"middle tensor {tapped} is a graph output; pick another node")
    graph.initializer.extend([numpy_helper.from_array(np.array(1e5, np.float32), "planted.up"),
                              numpy_helper.from_array(np.array(1e-5, np.float32), "planted.down")])
    planted = [helper.make_node("Mul", [tapped, "planted.up"], ["planted/overflow"],
                                name="planted/overflow"),
               helper.make_node("Mul", ["planted/overflow", "planted.down"], ["planted/rescale"],
                                name="planted/rescale")]
    del graph.node[:]
    graph.node.extend([*nodes[:middle + 1], *planted, *nodes[middle + 1:]])
    onnx.checker.check_model(model, full_check=True)
    return model, nodes[middle].name


def transformer_case(folder: Path) -> Case:
    model, after = planted_transformer()
    path = folder / "transformer-planted.onnx"
    onnx.save(model, str(path))
    return Case("transformer-planted", path, len(model.graph.node), "planted/overflow", "x",
                (1, 16, 32), -1.0, 1.0, where=f"after {after}")


# --------------------------------------------------------------------------- ground truth


def _all_tensor_values(model: onnx.ModelProto, feed: dict[str, np.ndarray]):
    import onnxruntime
    from polygraphy.backend.onnx import ModifyOutputs

    names = [o for node in model.graph.node for o in node.output if o]
    marked = ModifyOutputs(model, outputs=names)()
    session = onnxruntime.InferenceSession(marked.SerializeToString(),
                                           providers=["CPUExecutionProvider"])
    outputs = [o.name for o in session.get_outputs()]
    return dict(zip(outputs, session.run(outputs, feed), strict=True))


def earliest(case: Case, feed: dict[str, np.ndarray]) -> dict[str, str | None]:
    """The first node, in topological order, whose float output diverges on the target.

    Two rules: trtcheck's (max |error| > tau * max |reference|, tau = max(atol / max |output|,
    rtol), or non-finite where the reference is finite) and the check's elementwise rule.
    """
    from trtcheck.precision import PrecisionPlan, emulate

    model = onnx.load(str(case.path))
    reference = _all_tensor_values(model, feed)
    target = _all_tensor_values(emulate(model, PrecisionPlan("fp16")), feed)
    output = model.graph.output[0].name
    scale = float(np.abs(reference[output]).max())
    tau = max(ATOL / scale if scale > 0 else ATOL, RTOL)
    first: dict[str, str | None] = {"relative": None, "elementwise": None}
    for node in model.graph.node:
        for name in node.output:
            ref = reference.get(name)
            if ref is None or not np.issubdtype(ref.dtype, np.floating):
                continue
            tgt = np.asarray(target[name], np.float64)
            ref64 = ref.astype(np.float64)
            finite = np.isfinite(ref64)
            top = float(np.abs(ref64[finite]).max()) if finite.any() else 0.0
            with np.errstate(invalid="ignore", over="ignore"):
                worst = float(np.abs(tgt - ref64)[finite].max()) if finite.any() else 0.0
            relative_fails = (finite & ~np.isfinite(tgt)).any() or worst > tau * top
            if first["relative"] is None and relative_fails:
                first["relative"] = node.name
            if first["elementwise"] is None and mismatches(tgt, ref64, ATOL, RTOL):
                first["elementwise"] = node.name
    return first


# ------------------------------------------------------------------------------- trtcheck


@contextlib.contextmanager
def temp_dirs_in(folder: Path) -> Iterator[None]:
    """localize(repro_dir=None) makes a tempfile.mkdtemp folder per call; keep them in `folder`."""
    previous = tempfile.tempdir
    tempfile.tempdir = str(folder)
    try:
        yield
    finally:
        tempfile.tempdir = previous


def trtcheck_localize(path: Path, feed: dict[str, np.ndarray], mode: str):
    from trtcheck.backend_names import get_backend
    from trtcheck.backends import BackendOptions
    from trtcheck.debug.localize import localize, make_probe
    from trtcheck.model import load_model
    from trtcheck.run import quiet_polygraphy, run_marked
    from trtcheck.tolerance import Tolerance

    model = load_model(path)
    output = model.output_names[0]
    reference, target = get_backend("onnxrt"), get_backend("onnxrt-fp16")
    with quiet_polygraphy():
        started = time.perf_counter()
        expected = run_marked(model, reference, BackendOptions(), feed, [], "reference")[output]
        probe = make_probe(model, reference, target, BackendOptions(), feed, output,
                           Tolerance(ATOL, RTOL), expected)
        result = localize(probe, repro_dir=None, fix_precision=False, mode=mode)
        elapsed = time.perf_counter() - started
    return result, elapsed


def warm_up(folder: Path) -> None:
    from zoo.build import overflow_chain

    path = folder / "warm-up.onnx"
    onnx.save(overflow_chain(length=4, overflow_at=2), str(path))
    feed = {"x": np.random.default_rng(0).uniform(0, 1, (1, 64)).astype(np.float32)}
    for mode in ("exact", "search"):
        trtcheck_localize(path, feed, mode)


def trtcheck_row(case: Case, mode: str) -> Row:
    row = Row(TRTCHECK_EXACT if mode == "exact" else TRTCHECK_SEARCH)
    try:
        result, elapsed = trtcheck_localize(case.path, case.feed(), mode)
    except Exception as err:
        row.status, row.detail = "failed", f"{type(err).__name__}: {str(err).strip()}"
        return row
    row.target_runs, row.wall_s = result.target_runs, elapsed
    row.named = [result.culprit_node]
    row.named_planted = result.culprit_node == case.planted
    row.local = result.local
    row.detail = (f"{result.culprit_op} {result.culprit_node}, local={result.local}, "
                  f"boundary verified={result.boundary_verified}, runs marking "
                  f"{[len(marked) for marked in result.runs]} tensor(s)")
    return row


# ----------------------------------------------------------------------------- polygraphy


class StepFailed(RuntimeError):
    pass


class RecipeTimeout(RuntimeError):
    pass


def _run_step(argv: list[str], cwd: Path, env: dict[str, str], deadline: float,
              row: Row) -> None:
    remaining = deadline - time.perf_counter()
    if remaining <= 0:
        raise RecipeTimeout(f"no time left before: {shlex.join(argv)}")
    started = time.perf_counter()
    with (cwd / f"step{len(row.steps) + 1}.log").open("w") as log:
        # A new session, so that on timeout the whole group (debug reduce and its checks) ends.
        process = subprocess.Popen(argv, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        try:
            code = process.wait(timeout=remaining)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            row.steps.append({"argv": argv, "seconds": time.perf_counter() - started,
                              "exit": "timeout"})
            raise RecipeTimeout(f"timed out: {shlex.join(argv)}") from None
    row.steps.append({"argv": argv, "seconds": time.perf_counter() - started, "exit": code})
    if code != 0:
        lines = (cwd / f"step{len(row.steps)}.log").read_text(errors="replace").splitlines()
        errors = [line.strip() for line in lines if line.lstrip().startswith("[E]")
                  or "Error" in line]
        raise StepFailed(f"exit {code}: {shlex.join(argv)}: "
                         f"{(errors or lines or ['(no output)'])[-1]}")


def recipe_commands(case: Case, correct: bool) -> list[list[str]]:
    """The recipe's commands, run in its own folder (debug reduce writes to the cwd)."""
    poly, model = str(POLYGRAPHY), str(case.path)
    check = [sys.executable, str(CHECK), "polygraphy_debug.onnx", "--atol", f"{ATOL:g}",
             "--rtol", f"{RTOL:g}"]
    generate = [poly, "run", model, "--onnxrt", "--save-inputs", "inputs.json", "--val-range",
                case.val_range, "--seed", str(POLYGRAPHY_SEED)]
    reduce = [poly, "debug", "reduce", model, "-o", "reduced.onnx", "--mode=bisect"]
    if not correct:
        return [
            [*generate, "--save-outputs", "golden.json"],
            [*reduce, "--load-inputs", "inputs.json", "--check", *check,
             "--inputs", "inputs.json", "--golden", "golden.json"],
        ]
    return [
        generate,
        [poly, "run", model, "--onnxrt", "--onnx-outputs", "mark", "all", "--load-inputs",
         "inputs.json", "--save-outputs", "golden.json"],
        [poly, "data", "merge", "inputs.json", "golden.json", "-o", "layerwise_inputs.json"],
        [*reduce, "--load-inputs", "layerwise_inputs.json", "--check", *check,
         "--inputs", "layerwise_inputs.json", "--golden", "golden.json"],
    ]


def _is_planted_overflow(model: onnx.ModelProto, node: onnx.NodeProto) -> bool:
    """A Mul reading a constant 1e5: the planted node, should a tool have renamed it."""
    if node.op_type != "Mul":
        return False
    constants = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    return any(name in constants and np.allclose(constants[name], 1e5) for name in node.input)


def polygraphy_row(case: Case, correct: bool, folder: Path, timeout: float) -> Row:
    row = Row(POLY_CORRECT if correct else POLY_NAIVE)
    folder.mkdir(parents=True, exist_ok=True)
    counter = folder / "check_runs.tsv"
    counter.write_text("")
    env = {**os.environ, COUNTER_ENV: str(counter)}
    started = time.perf_counter()
    deadline = started + timeout
    try:
        for argv in recipe_commands(case, correct):
            _run_step(argv, folder, env, deadline, row)
    except RecipeTimeout as err:
        row.status, row.detail = "timeout", f"{err} (budget {timeout:g} s)"
    except StepFailed as err:
        row.status, row.detail = "failed", str(err)
    row.wall_s = time.perf_counter() - started
    checks = [line.split("\t") for line in counter.read_text().splitlines() if line]
    row.target_runs = sum(1 for status, *_ in checks if status in ("pass", "fail"))
    row.could_not_compare = sum(1 for status, *_ in checks if status == "error")
    reasons = sorted({reason for status, _, reason in checks if status == "error"})
    if reasons:
        row.detail = "; ".join(filter(None, [row.detail, "check could not compare, e.g. "
                                             + reasons[0]]))
    reduced = folder / "reduced.onnx"
    if row.status == "ok" and reduced.exists():
        model = onnx.load(str(reduced))
        row.named = [node.name for node in model.graph.node]
        row.named_planted = row.named == [case.planted] or (
            len(model.graph.node) == 1 and _is_planted_overflow(model, model.graph.node[0]))
    return row


# --------------------------------------------------------------------------------- output


def _named_cell(row: Row, case: Case) -> str:
    if row.status != "ok":
        return f"- ({row.status})"
    names = row.named
    shown = ", ".join(names) if len(names) <= 3 else (
        f"{names[0]}, {names[1]}, ..., {names[-1]}: {len(names)} nodes")
    if row.named_planted:
        return f"yes ({shown})"
    extra = "; contains the planted node" if case.planted in names and len(names) > 1 else ""
    return f"no ({shown or 'nothing'}{extra})"


def _runs_cell(row: Row) -> str:
    if row.target_runs is None:
        return "-"
    cell = str(row.target_runs)
    if row.could_not_compare:
        cell += f" (+{row.could_not_compare} checks that could not compare)"
    return cell


def table_rows(results: list[tuple[Case, list[Row]]]) -> list[tuple[str, ...]]:
    rows = []
    for case, tool_rows in results:
        for row in tool_rows:
            wall = "-" if row.wall_s is None else f"{row.wall_s:.2f}"
            if row.status == "timeout":
                wall = f"timeout ({wall})"
            elif row.status == "failed":
                wall = f"failed ({wall})"
            rows.append((case.name, str(case.nodes), case.planted, row.tool, _runs_cell(row),
                         wall, _named_cell(row, case)))
    return rows


HEADER = ("model", "nodes", "planted node", "tool / recipe", "target runs", "wall time s",
          "named planted node")


def render_text(results: list[tuple[Case, list[Row]]]) -> str:
    rows = table_rows(results)
    widths = [max(len(cells[i]) for cells in [HEADER, *rows]) for i in range(len(HEADER))]
    right = (False, True, False, False, True, True, False)

    def fmt(cells: tuple[str, ...]) -> str:
        return "  ".join(c.rjust(w) if r else c.ljust(w)
                         for c, w, r in zip(cells, widths, right, strict=True)).rstrip()

    out = [fmt(HEADER), "  ".join("-" * w for w in widths)]
    previous = None
    for cells in rows:
        out.append(fmt(cells if cells[0] != previous else ("", "", "", *cells[3:])))
        previous = cells[0]
    return "\n".join(out)


def render_notes(results: list[tuple[Case, list[Row]]]) -> list[str]:
    notes = []
    for case, tool_rows in results:
        truth = case.ground_truth
        parts = []
        for feed, first in truth.items():
            parts.append(f"{feed}: first node over trtcheck's tolerance "
                         f"{first['relative']}, first elementwise mismatch "
                         f"{first['elementwise']}")
        if parts:
            notes.append(f"{case.name} (planted {case.planted}) earliest divergence of the "
                         f"emulated target: " + "; ".join(parts) + ".")
        early = sorted({name for first in truth.values() for name in first.values()
                        if name and name != case.planted})
        if early:
            inherited = [row for row in tool_rows if row.local is False]
            why = (" Fed the reference values of its inputs, trtcheck's culprit alone stays "
                   "within tolerance (local=False): the error there is fp16 rounding accumulated "
                   "along the path, not an overflow." if inherited else "")
            notes.append(
                f"{case.name}: the planted node is not the first divergence at atol = rtol = "
                f"{ATOL:g}: the emulated target already exceeds the tolerance at "
                f"{', '.join(early)}, before {case.planted} overflows.{why} A tool that names a "
                "node there follows its own rule; none can name the planted node on this model "
                "at this tolerance without ignoring that earlier divergence.")
        modes = {row.tool: row.named for row in tool_rows if row.tool.startswith("trtcheck")}
        if len({tuple(named) for named in modes.values()}) > 1:
            notes.append(
                f"{case.name}: trtcheck exact and search name different nodes. Where the error "
                "hovers around the tolerance there are several pass-to-fail transitions: exact "
                "returns the first origin from which failing tensors reach the output, search "
                "the verified transition its bisection lands on (bisect.find_transition: 'not "
                "necessarily the first').")
        for row in tool_rows:
            if row.status != "ok":
                notes.append(f"{case.name}, {row.tool}: {row.status}: {row.detail}")
            elif row.detail and (not row.named_planted or row.could_not_compare):
                notes.append(f"{case.name}, {row.tool}: {row.detail}")
            if row.tool.startswith("polygraphy") and len(row.named) > 3:
                listed = ", ".join(row.named[:10]) + (", ..." if len(row.named) > 10 else "")
                notes.append(f"{case.name}, {row.tool}: reduced model has {len(row.named)} "
                             f"nodes: {listed}")
    return notes


def render_markdown(results: list[tuple[Case, list[Row]]], args: argparse.Namespace,
                    when: str) -> str:
    rows = table_rows(results)
    esc = [tuple(cell.replace("|", "\\|") for cell in cells) for cells in rows]
    table = ["| " + " | ".join(HEADER) + " |",
             "|" + "|".join(["---", "---:", "---", "---", "---:", "---:", "---"]) + "|",
             *("| " + " | ".join(cells) + " |" for cells in esc)]
    example = next((case for case, _ in results if case.name.startswith("chain")), None)
    commands = recipe_commands(example, True) if example else []
    naive = recipe_commands(example, False) if example else []

    def shell(argv: list[str]) -> str:
        shown = [Path(a).name if a in (str(POLYGRAPHY), sys.executable) else a for a in argv]
        shown = [os.path.relpath(a, REPO) if a.startswith(str(REPO)) else a for a in shown]
        shown = ["MODEL.onnx" if example and a.endswith(example.path.name) else a for a in shown]
        return shlex.join(shown)

    cpu = platform.processor() or platform.machine()
    lines = [
        "# Bisection: trtcheck vs `polygraphy debug reduce`", "",
        "Generated by `python bench/bisect_vs_polygraphy.py "
        f"--sizes {' '.join(map(str, args.sizes))} --markdown {args.markdown}` on {when}.", "",
        "## What is measured", "",
        "Each model carries one planted fp16 fault: a Mul by 1e5 followed by a Mul by 1e-5, so "
        "the fp32 output is unchanged but fp16 overflows to inf at the planted Mul. Both tools "
        "look for the node where the target departs from the fp32 reference (ONNX Runtime).", "",
        "There is no TensorRT on this machine, so the **target** of both tools is trtcheck's "
        "fp16 emulation on ONNX Runtime (CPU): `trtcheck.precision.emulate(model, "
        "PrecisionPlan(\"fp16\"))` rounds every float tensor through fp16. A **target run** is "
        "one execution of that emulated fp16 model. Runs of the fp32 reference are not counted "
        "for either tool (trtcheck: one run with every tensor marked; polygraphy recipes: one or "
        "two `polygraphy run --onnxrt`).", "",
        "- **Models**: `chain-N` is `zoo.build.overflow_chain(length=N/2, overflow_at=k, "
        "seed=0)` (N nodes, Mul `chain/mul{i}` and Add `chain/add{i}` per step; k from "
        "`random.Random(N).randint(L // 10, 9 * L // 10)`, L = N/2); `transformer-planted` is "
        "`zoo/transformer_block.onnx` with `planted/overflow` (Mul 1e5) and `planted/rescale` "
        "(Mul 1e-5) inserted after its middle node. Planted: "
        + "; ".join(f"{case.name} {case.where}" for case, _ in results) + ".",
        f"- **Tolerance**: atol = rtol = {ATOL:g} for every tool.",
        "- **Inputs**: trtcheck gets `numpy.random.default_rng(0).uniform` in [0,1] (chains) "
        "or [-1,1] (transformer); the polygraphy recipes generate their own with `--seed 1` "
        "and the same `--val-range`.",
        "- **trtcheck exact / search**: `trtcheck.debug.localize.localize(..., "
        "fix_precision=False, "
        "mode=\"exact\" | \"search\")`, reference `onnxrt`, target `onnxrt-fp16`, run in the "
        "bench's own process after one untimed warm-up (so imports are not timed); wall time is "
        "`time.perf_counter()` around the call, which includes emulating the model, the "
        "reference run, the target runs and the culprit-alone check. `exact` marks every tensor "
        "in one target run (valid on ONNX Runtime); `search` marks few tensors per run, the cost "
        "it would have on TensorRT. Its run count includes the run of the culprit alone.",
        "- **polygraphy recipes**: each step a separate `polygraphy` process; the wall time is "
        "the whole recipe, process start-ups included (a user pays them too). The `--check` "
        "command is `bench/_fp16_check.py`, which stands in for `polygraphy run "
        "polygraphy_debug.onnx --trt --fp16 --load-inputs ... --load-outputs ...`: it emulates "
        "fp16 on the subgraph, runs it on the layer-wise inputs and compares every output with "
        "the golden value elementwise (mismatch where |diff| > atol and |diff| > rtol * "
        "|golden|, or a finite/non-finite disagreement). Its runs are counted through a file "
        "that each invocation appends to. A check that cannot compare (an input missing from "
        "the inputs file, or no output in the golden file, which `polygraphy run "
        "--load-outputs` also treats as an error) exits 2 and does not run the target; "
        "`debug reduce` counts it as a failing subgraph all the same.",
        "- **Named planted node**: trtcheck: `culprit_node` equals the planted node; "
        "polygraphy: the reduced model's node list is exactly the planted node (the cell shows "
        "the reduced model's nodes).",
        f"- **Timeout**: {args.timeout:g} s per polygraphy recipe.",
        "- **Repeats**: one run per row, not repeated; wall times on a shared machine vary by "
        "tens of percent from run to run, run counts and named nodes do not.", "",
        "Correct recipe (NVIDIA's \"Reducing Failing ONNX Models\" example; `data merge` "
        "replaces the `data to-input` of older versions):", "", "```sh",
        *(shell(argv) for argv in commands), "```", "",
        "Naive recipe (golden values of the final outputs only):", "", "```sh",
        *(shell(argv) for argv in naive), "```", "",
        "## Results", "", *table, "",
        "## Notes", "", *(f"- {note}" for note in render_notes(results)), "",
        "## Machine", "",
        f"- platform: {platform.platform()}",
        f"- cpu: {cpu}, {os.cpu_count()} logical CPU(s)",
        f"- python {platform.python_version()}, " + ", ".join(_versions()),
        f"- date: {when}", "",
    ]
    return "\n".join(lines)


def _versions() -> list[str]:
    from importlib import metadata

    found = []
    for dist in ("trtcheck", "polygraphy", "onnxruntime", "onnx", "onnx-graphsurgeon", "numpy"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            found.append(f"{dist} {metadata.version(dist)}")
    return found


def to_json(results: list[tuple[Case, list[Row]]], when: str) -> dict[str, object]:
    return {
        "date": when,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "atol": ATOL,
        "rtol": RTOL,
        "models": [
            {"model": case.name, "nodes": case.nodes, "planted": case.planted,
             "ground_truth": case.ground_truth,
             "rows": [asdict(row) for row in rows]}
            for case, rows in results
        ],
    }


# ----------------------------------------------------------------------------------- main


def bench_case(case: Case, folder: Path, timeout: float) -> list[Row]:
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for mode in ("exact", "search"):
        print(f"  trtcheck {mode} ...", file=sys.stderr, flush=True)
        with temp_dirs_in(folder):
            rows.append(trtcheck_row(case, mode))
    for correct in (True, False):
        label = "correct" if correct else "naive"
        print(f"  polygraphy {label} recipe ...", file=sys.stderr, flush=True)
        rows.append(polygraphy_row(case, correct, folder / f"polygraphy-{label}", timeout))
    case.ground_truth["trtcheck inputs"] = earliest(case, case.feed())
    inputs = folder / "polygraphy-correct" / "inputs.json"
    if inputs.exists():
        from polygraphy.json import load_json

        loaded = load_json(str(inputs))
        feed = {k: np.asarray(v) for k, v in (loaded[0] if isinstance(loaded, list)
                                               else loaded).items()}
        case.ground_truth["polygraphy inputs"] = earliest(case, feed)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=list(DEFAULT_SIZES),
                        help="chain sizes in nodes, even (default: 100 300 1000)")
    parser.add_argument("--markdown", type=Path, metavar="FILE",
                        help="also write the results as a Markdown document")
    parser.add_argument("--json", type=Path, metavar="OUT", help="also write the numbers here")
    parser.add_argument("--timeout", type=float, default=RECIPE_TIMEOUT,
                        help=f"seconds per polygraphy recipe (default {RECIPE_TIMEOUT:g})")
    parser.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE,
                        help=f"atol = rtol for every tool (default {DEFAULT_TOLERANCE:g})")
    parser.add_argument("--workdir", type=Path,
                        help="keep models, logs and polygraphy files here (default: a temporary "
                             "folder, removed at the end)")
    args = parser.parse_args(argv)
    global ATOL, RTOL
    ATOL = RTOL = args.tolerance
    if any(size < 2 or size % 2 for size in args.sizes):
        parser.error("--sizes must be even numbers of nodes, at least 2")
    if not POLYGRAPHY.exists():
        print(f"polygraphy not found at {POLYGRAPHY}", file=sys.stderr)
        return 2
    when = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")

    with contextlib.ExitStack() as stack:
        if args.workdir:
            root = args.workdir.resolve()
            root.mkdir(parents=True, exist_ok=True)
        else:
            root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bisect-bench-")))
        print("warming up trtcheck (untimed) ...", file=sys.stderr, flush=True)
        with temp_dirs_in(root):
            warm_up(root)
        cases = [chain_case(size, root) for size in args.sizes] + [transformer_case(root)]
        results = []
        for case in cases:
            print(f"benching {case.name} ({case.nodes} nodes, planted {case.planted}) ...",
                  file=sys.stderr, flush=True)
            results.append((case, bench_case(case, root / case.name, args.timeout)))

    print(render_text(results))
    print()
    for note in render_notes(results):
        print(f"- {note}")
    if args.markdown:
        text = render_markdown(results, args, when)
        write_atomically(args.markdown, lambda partial: Path(partial).write_text(text))
        print(f"markdown written to {args.markdown}")
    if args.json:
        text = json.dumps(to_json(results, when), indent=2, default=str) + "\n"
        write_atomically(args.json, lambda partial: Path(partial).write_text(text))
        print(f"numbers written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
