"""The INT8 fix of `trtcheck bisect` on real models: cosine before and after, layers, runs, time.

What it measures. Each model is quantized here and bisected on ONNX Runtime, by the whole CLI
command as a subprocess, exactly as a user runs it:

    python -m trtcheck bisect MODEL --target onnxrt-int8 --calibration-data FOLDER
        --input-shapes ... --val-range ... --json F [--cosine 0.9999]

`bisect` quantizes the model (minmax, weights per output channel, activations per tensor,
symmetric: trtcheck's TensorRT rules) on the calibration feeds, compares it with the fp32 model
on its own seed-1 feed (not one of the calibration feeds) and, on a mismatch, searches the
fewest layers to leave unquantized (`trtcheck.quant.int8_fix.find_int8_fix`) and verifies them
by a final run. Three runs per model, each in a fresh work folder (so each wall time includes
the quantization):

- int8, trtcheck's default criterion for int8 targets (SNR >= 25 dB; class scores: the same
  top-1 and cosine >= 0.99);
- int8, a strict criterion (`--cosine 0.9999` on top of it), which leaves more layers to fix and
  so exercises the search (grow by doubling, shrink, verify; at most 24 runs);
- fp8 (float8 e4m3fn, `--target onnxrt-fp8`), the default criterion.

The table has, per run: the quantized layers, the worst output's cosine against fp32 before
and after the fix, the layers left unquantized, the candidate models built and run (the given
one included), the command's wall time (interpreter start-up, quantization and both reference
and target runs included) and the fix's own time (from the report's `bisect.note`), and whether
the final run verified the fix. A run that already passes reports no fix (0 layers, 1 run).

Then the ranking agreement of trtcheck's layer-wise error with ONNX Runtime's
`qdq_loss_debug`, measured by bench/qdq_layerwise.py's `measure` (its own ORT-quantized models
and standard-normal feeds) for the models with one float input it can run in this budget: the
zoo models and the corpus CNNs (ViT and Whisper are left out: qdq_loss_debug holds every
activation of every feed in memory; BERT's inputs are token ids).

Models: the corpus (`.cache/trtcheck-bench/corpus/manifest.json`, bench/corpus/build.py) CNNs
resnet18_classic, mobilenet_v3_small_classic, efficientnet_b0_classic and transformers
vit_b_16_classic, bert_base_classic, whisper_base_encoder_classic (a model missing from the
manifest or its folder is skipped with the reason printed), and zoo/build.py's
channel_outlier_cnn (the planted fault: one channel 1000x the others) and transformer_block.
The corpus exports carry RANDOM weights (torchvision / transformers models built without
downloading checkpoints) and every feed is SYNTHETIC: 8 calibration feeds per model drawn with
the manifest's shapes and value ranges (seeds 100-107; zoo models: [-1, 1]), batch 1, BERT
sequence 128. So the numbers say how the search behaves on real graphs at real sizes, not how
a trained model's accuracy fares.

Run it from the repository root, in the project's venv. On 2 shared cores it took about 13
minutes (2026-11): the zoo and CNNs with the ranking 1.7 min, Whisper 1.5 min, BERT 1.4 min and
ViT-B/16 8 min, 7 of them its strict search (each candidate is quantized again, calibration
included: about 17 s a run). BERT's int8 runs stop at exit 2 while `quant.layerwise` cannot pair
its -inf mask constant; once they run, its strict search adds minutes of the same kind (use
--only to leave it out):

    .venv/bin/python bench/int8_fix.py
    .venv/bin/python bench/int8_fix.py --only resnet18_classic channel_outlier_cnn
    .venv/bin/python bench/int8_fix.py --no-ranking        # the table only
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

CORPUS_DIR = Path(os.environ.get("TRTCHECK_BENCH_CACHE",
                                 REPO / ".cache" / "trtcheck-bench" / "corpus"))
CORPUS_MODELS = ("resnet18_classic", "mobilenet_v3_small_classic", "efficientnet_b0_classic",
                 "vit_b_16_classic", "bert_base_classic", "whisper_base_encoder_classic")
ZOO_MODELS = ("channel_outlier_cnn", "transformer_block")
# Where qdq_loss_debug's comparison fits the budget: one float input, activations that fit.
RANKED_CORPUS_MODELS = ("resnet18_classic", "mobilenet_v3_small_classic",
                        "efficientnet_b0_classic")
CALIBRATION_FEEDS = 8
CALIBRATION_SEED = 100
ZOO_RANGE = (-1.0, 1.0)
STRICT_COSINE = 0.9999
# (precision, criterion label, extra flags)
RUNS = (("int8", "default", ()),
        ("int8", f"cos>={STRICT_COSINE}", ("--cosine", str(STRICT_COSINE))),
        ("fp8", "default", ()))
# "... cosine before logits -0.1655, after logits 0.9995; 0.1 s" (trtcheck/quant/bisect.py)
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
NOTE = re.compile(r"cosine before (?P<before>.*), after (?P<after>.*); (?P<seconds>[0-9.]+) s$")


@dataclass(frozen=True)
class Case:
    """A model and the inputs it is fed with (shapes and value ranges per input)."""

    name: str
    path: Path
    shapes: dict[str, tuple[int, ...]]
    ranges: dict[str, tuple[float, float]]


@dataclass
class Row:
    """One bisect command's numbers, as the table shows them."""

    model: str
    precision: str
    criterion: str
    status: str = ""
    layers: int | None = None
    before: float | None = None
    after: float | None = None
    excluded: int | None = None
    runs: int | None = None
    wall_seconds: float | None = None
    fix_seconds: float | None = None
    verified: str = "-"
    recheck: str = "-"  # `trtcheck compare` of the repro folder's fixed model
    detail: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# Models and feeds


def _corpus_cases(only: set[str] | None) -> tuple[list[Case], list[str]]:
    """The corpus models that exist, and a reason for each one left out."""
    manifest = CORPUS_DIR / "manifest.json"
    wanted = [name for name in CORPUS_MODELS if only is None or name in only]
    if not wanted:
        return [], []
    try:
        entries = {entry["name"]: entry for entry in json.loads(manifest.read_text())}
    except (OSError, ValueError) as err:
        return [], [f"{name}: {manifest} unreadable ({err}); build it with bench/corpus/build.py"
                    for name in wanted]
    cases, skipped = [], []
    for name in wanted:
        entry = entries.get(name)
        if entry is None:
            skipped.append(f"{name}: not in {manifest}")
            continue
        path = CORPUS_DIR / entry["path"]
        if not path.exists():
            skipped.append(f"{name}: {path} is missing (corpus still being built?)")
            continue
        shapes = {k: tuple(int(d) for d in v) for k, v in entry["input_shapes"].items()}
        ranges = {k: (float(lo), float(hi)) for k, (lo, hi) in entry["val_ranges"].items()}
        cases.append(Case(name, path, shapes, ranges))
    return cases, skipped


def _zoo_cases(only: set[str] | None, folder: Path) -> list[Case]:
    """zoo/build.py's models saved in `folder`, fed [-1, 1] with their own (static) shapes."""
    import zoo.build
    from trtcheck.atomic import save_onnx

    cases = []
    for name in ZOO_MODELS:
        if only is not None and name not in only:
            continue
        model = getattr(zoo.build, name)()
        path = folder / f"{name}.onnx"
        save_onnx(model, path)
        shapes = {value.name: tuple(d.dim_value for d in value.type.tensor_type.shape.dim)
                  for value in model.graph.input}
        cases.append(Case(name, path, shapes, dict.fromkeys(shapes, ZOO_RANGE)))
    return cases


def _write_calibration(case: Case, folder: Path) -> Path:
    """`CALIBRATION_FEEDS` synthetic feeds (the case's shapes and ranges) as .npz files."""
    from trtcheck.atomic import write_npz
    from trtcheck.inputs import InputSettings
    from trtcheck.model import load_model
    from trtcheck.quant.calibration_data import synthetic_calibration_set
    from trtcheck.run import quiet_polygraphy

    settings = InputSettings(shapes=dict(case.shapes), ranges=dict(case.ranges),
                             seed=CALIBRATION_SEED)
    with quiet_polygraphy():
        feeds, _ = synthetic_calibration_set(load_model(case.path), settings,
                                             CALIBRATION_FEEDS)
    target = folder / f"{case.name}-calibration"
    for index, feed in enumerate(feeds):
        write_npz(target / f"feed{index:02d}.npz", dict(feed))
    return target


def _input_flags(case: Case) -> list[str]:
    shapes = [f"{name}:{'x'.join(map(str, shape))}" for name, shape in case.shapes.items()
              if shape]
    ranges = [f"{name}:[{lo:g},{hi:g}]" for name, (lo, hi) in case.ranges.items()]
    return [*(["--input-shapes", *shapes] if shapes else []), "--val-range", *ranges]


# ---------------------------------------------------------------------------------------------
# One bisect command


def _run(command: list[str], cwd: Path, timeout: float) -> tuple[int | None, float, str]:
    """Exit code (None on timeout: the process group is killed), wall seconds, stderr."""
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=cwd, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _, stderr = process.communicate(timeout=timeout)
        code: int | None = process.returncode
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        _, stderr = process.communicate()
        code = None
    return code, time.perf_counter() - start, stderr


def bisect_row(case: Case, precision: str, criterion: str, flags: tuple[str, ...],
               calibration: Path, folder: Path, timeout: float) -> Row:
    """Runs `trtcheck bisect` once (fresh work folder), reads its --json report, re-checks."""
    slug = f"{case.name}-{precision}-{'strict' if flags else 'default'}"
    report, repro = folder / f"{slug}.json", folder / f"{slug}-repro"
    common = [*_input_flags(case), *flags, "--target", f"onnxrt-{precision}"]
    command = [sys.executable, "-m", "trtcheck", "bisect", str(case.path), *common,
               "--calibration-data", str(calibration), "--json", str(report),
               "--work-dir", str(folder / f"{slug}-work"), "--repro", str(repro)]
    code, seconds, stderr = _run(command, folder, timeout)
    row = Row(case.name, precision, criterion, wall_seconds=seconds)
    if code is None:
        row.status = f"timeout after {timeout:.0f} s"
    elif code not in (0, 1) or not report.exists():
        _crashed(row, code, command, stderr)
    else:
        _read_report(row, json.loads(report.read_text()), folder / f"{slug}-work")
        fixed = repro / f"model.{precision}.excluded.onnx"
        if fixed.exists():
            _recheck(row, case, common, fixed, folder / f"{slug}-recheck", timeout)
    return row


def _crashed(row: Row, code: int | None, command: list[str], stderr: str) -> None:
    lines = [line for line in stderr.splitlines() if line.strip()]
    row.status = f"exit {code}: {lines[-1] if lines else 'no message'}"
    row.detail = [" ".join(command), *lines[-20:]]


def _recheck(row: Row, case: Case, common: list[str], fixed: Path, folder: Path,
             timeout: float) -> None:
    """`trtcheck compare` of the repro folder's fixed model: its cosine (the report's note
    rounds to 4 decimals) and whether it passes the same criterion on its own."""
    report = folder.with_suffix(".json")
    command = [sys.executable, "-m", "trtcheck", "compare", str(case.path), *common,
               "--target-model", str(fixed), "--json", str(report), "--work-dir", str(folder)]
    code, _, stderr = _run(command, folder.parent, timeout)
    if code not in (0, 1) or not report.exists():
        _crashed(row, code, command, stderr)
        return
    checked = json.loads(report.read_text())
    row.after = _worst_cosine(checked)
    row.recheck = "pass" if code == 0 else "FAIL"


def _worst_cosine(report: dict[str, Any]) -> float | None:
    cosines = [output["cosine"] for output in report["outputs"] if output.get("cosine") is not None]
    return min(cosines) if cosines else None


def _read_report(row: Row, report: dict[str, Any], work_dir: Path) -> None:
    row.before = _worst_cosine(report)
    row.criterion += f" ({_criterion(report)})"
    found = report.get("bisect")
    if found is None:  # passes as quantized: nothing to fix
        row.status, row.after, row.excluded, row.runs = "pass", row.before, 0, 1
        row.layers = _quantized_layers(work_dir)
        return
    fix = found["precision_fix"]
    row.status = "fixed" if fix["verified"] else "NOT fixed"
    row.layers, row.excluded, row.runs = found["probe_points"], len(fix["keep_fp32"]), \
        fix["target_runs"]
    row.verified = "yes" if fix["verified"] else "no"
    match = NOTE.search(found.get("note") or "")
    if match:
        row.after = min(_cosine_values(match["after"]))
        row.fix_seconds = float(match["seconds"])


def _cosine_values(text: str) -> list[float]:
    """'logits 0.9995, boxes 0.98' -> [0.9995, 0.98] (output names may hold spaces)."""
    return [float(item.rsplit(" ", 1)[1]) for item in text.split(", ")]


def _criterion(report: dict[str, Any]) -> str:
    """The criterion the worst output was judged by, e.g. 'top1, cos>=0.99' or 'SNR>=25'."""
    tolerances = report["config"]["tolerances"]
    worst = min(report["outputs"], key=lambda output: output.get("cosine") or math.inf)
    tolerance = tolerances["per_output"].get(worst["name"], tolerances["default"])
    parts = ["top-1"] if tolerance.get("criterion") == "top1" else []
    if tolerance.get("min_snr") is not None:
        parts.append(f"SNR>={tolerance['min_snr']:g} dB")
    if tolerance.get("min_cosine") is not None:
        parts.append(f"cos>={tolerance['min_cosine']:g}")
    return ", ".join(parts)


def _quantized_layers(work_dir: Path) -> int | None:
    """Nodes of the Q/DQ model in the work folder that read a DequantizeLinear's output (what
    the fix ranks: with the weighted layers, an Add that shares a quantized input with one)."""
    import onnx

    models = sorted(work_dir.glob("*.int8.*.onnx")) + sorted(work_dir.glob("*.fp8.*.onnx"))
    if not models:
        return None
    graph = onnx.load(str(models[0]), load_external_data=False).graph
    dequantized = {node.output[0] for node in graph.node if node.op_type == "DequantizeLinear"}
    return sum(1 for node in graph.node if node.op_type not in QDQ_OPS
               and any(name in dequantized for name in node.input))


# ---------------------------------------------------------------------------------------------
# Tables


def _number(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _cosine(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.6f}" if value > 0.999 else f"{value:.4f}"


def print_table(rows: list[Row]) -> None:
    """The one table, and the exact command and stderr of any run that crashed."""
    from qdq_layerwise import _table

    header = ["model", "precision", "criterion", "quantized layers", "cosine before",
              "cosine after", "layers excluded", "runs", "wall s", "fix s", "verified",
              "re-check", "outcome"]
    body = [[row.model, row.precision, row.criterion, _number(row.layers, 0),
             _cosine(row.before), _cosine(row.after), _number(row.excluded, 0),
             _number(row.runs, 0), _number(row.wall_seconds, 1), _number(row.fix_seconds, 1),
             row.verified, row.recheck, row.status] for row in rows]
    print(_table("INT8 / fp8 fix (trtcheck bisect, ONNX Runtime CPU; cosine: the worst output "
                 "against fp32)", header, body))
    for row in rows:
        if row.detail:
            print(f"\n{row.model} {row.precision} {row.criterion}: {row.status}")
            print("\n".join(f"    {line}" for line in row.detail))


def print_ranking(cases: list[Case], repeats: int) -> None:
    """qdq_loss_debug ranking agreement from bench/qdq_layerwise.py, for the models it fits."""
    import onnx
    from qdq_layerwise import measure

    for case in cases:
        if case.name not in (*ZOO_MODELS, *RANKED_CORPUS_MODELS) or len(case.shapes) != 1:
            continue
        ((input_name, shape),) = case.shapes.items()
        print()
        print(measure(case.name, onnx.load(str(case.path)), input_name, shape, feed_count=4,
                      repeats=repeats))


# ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", metavar="NAME", help="these models only")
    parser.add_argument("--timeout", type=float, default=600.0,
                        help="seconds per bisect command before it is killed (default 600)")
    parser.add_argument("--no-ranking", action="store_true",
                        help="leave out the qdq_loss_debug ranking agreement")
    parser.add_argument("--repeats", type=int, default=1,
                        help="timed runs of each tool in the ranking agreement (default 1)")
    args = parser.parse_args(argv)
    only = set(args.only) if args.only else None
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="bench-int8-fix-") as temp:
        folder = Path(temp)
        corpus, skipped = _corpus_cases(only)
        for reason in skipped:
            print(f"skipped {reason}", flush=True)
        cases = _zoo_cases(only, folder) + corpus
        for case in cases:
            calibration = _write_calibration(case, folder)
            for precision, criterion, flags in RUNS:
                row = bisect_row(case, precision, criterion, flags, calibration, folder,
                                 args.timeout)
                print(f"{row.model} {row.precision} {row.criterion}: {row.status}, "
                      f"{_number(row.wall_seconds, 1)} s", file=sys.stderr, flush=True)
                rows.append(row)
        print_table(rows)
        if not args.no_ranking:
            _quiet_onnxruntime()
            print_ranking(cases, args.repeats)
    return 1 if any(row.detail or row.status.startswith("timeout") for row in rows) else 0


def _quiet_onnxruntime() -> None:
    """ONNX Runtime's log and its quantizer's warnings (Python's root logger) off the table."""
    import logging

    import onnxruntime

    onnxruntime.set_default_logger_severity(3)
    logging.getLogger().setLevel(logging.ERROR)


if __name__ == "__main__":
    sys.exit(main())
