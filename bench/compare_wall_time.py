"""Wall time of `trtcheck compare` next to `polygraphy run --onnxrt --onnxrt`, on the same inputs.

What it measures: the wall time of whole CLI runs, process start to exit, including the
interpreter start-up, the imports, loading the model, two ONNX Runtime sessions and the
comparison. It is the time a user waits for one check, not the time of one inference.

For each model (zoo/demo.onnx; the committed torchvision export
zoo/real/mobilenet_v3_tiny_classic.onnx; and, when the real-model corpus is built in
.cache/trtcheck-bench/corpus, resnet18_classic (47 MB of weights) and bert_base_classic (438 MB,
integer inputs)), with the input shapes and ranges their manifests give, the bench:

1. records one set of inputs with `trtcheck compare MODEL --save-inputs F.json` (not timed), so
   both tools run on exactly the same arrays;
2. runs every command once, untimed, as a warm-up (page cache, .pyc files) and to check that it
   works at all;
3. times N rounds, interleaved (A, B, C, A, B, C, ...), so machine noise hits every command:

   - `trtcheck compare MODEL --reference onnxrt --target onnxrt --inputs F.json`
   - `polygraphy run MODEL --onnxrt --onnxrt --load-inputs F.json`
   - `trtcheck compare MODEL --target onnxrt-fp16 --inputs F.json`

The first two are peers: both run fp32 ONNX Runtime twice and compare the outputs. The third
does more work (it builds the fp16-emulated model first); its ratio is still taken against
the same polygraphy row. A last group times `trtcheck --help` against `polygraphy --help`
(interleaved the same way), and checks `trtcheck --help` against its 0.2 s budget.

Both tools run with Python's bytecode cache on, in a cache folder of the bench's own
(PYTHONPYCACHEPREFIX, filled by the warm-up): an installed wheel has its .pyc files, and an
editable checkout under PYTHONDONTWRITEBYTECODE=1 would otherwise compile every trtcheck module
on every run (about 60 ms) while Polygraphy's site-packages keep theirs.

Exit codes 0 (pass) and 1 (mismatch) are legitimate outcomes of both tools; any other exit code
stops the bench with the command's stderr and a non-zero exit.

Run it from the repository root, in the venv where trtcheck and polygraphy are installed:

    python bench/compare_wall_time.py --repeats 5
    python bench/compare_wall_time.py --repeats 5 --json wall_time.json
    python bench/compare_wall_time.py --repeats 9 --models bert_base_classic
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from timing import BenchError, Row, Timer, bench_environment

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "zoo" / "demo.onnx"
# onnx's bundled light_squeezenet and light_resnet50 (benched before) are left out: their
# output is the same under any input (their weights are not in the file), and trtcheck refuses
# a check whose reference carries no signal (exit 3).
ZOO_REAL = REPO / "zoo" / "real"
ZOO_MODELS = ("mobilenet_v3_tiny_classic",)
CORPUS = REPO / ".cache" / "trtcheck-bench" / "corpus"
CORPUS_MODELS = ("resnet18_classic", "bert_base_classic")

TRTCHECK = [sys.executable, "-m", "trtcheck"]
POLYGRAPHY = Path(sys.executable).parent / "polygraphy"

OK_EXIT_CODES = (0, 1)  # pass, mismatch: both tools use them the same way
BASELINE = "polygraphy --onnxrt --onnxrt"
HELP_BASELINE = "polygraphy --help"
HELP_BUDGET_S = 0.2
EXTRA_WORK_MARK = "*"
# Set by `main`: runs every timed command (see the module docstring and bench/timing.py).
TIMER = Timer(ok_exit_codes=OK_EXIT_CODES)


@dataclass
class ModelBench:
    name: str
    path: Path | None
    rows: list[Row]
    baseline_label: str = BASELINE

    def baseline(self) -> Row:
        return next(row for row in self.rows if row.label == self.baseline_label)

    def ratio(self, row: Row) -> float:
        return row.median / self.baseline().median


def _shell(argv: list[str]) -> str:
    return " ".join(argv)


def models() -> list[tuple[str, Path, list[str]]]:
    """The benched models, building zoo/demo.onnx first if it is missing."""
    if not DEMO.exists():
        print(f"{DEMO.relative_to(REPO)} is missing: building it with python -m zoo.build")
        proc = subprocess.run([sys.executable, "-m", "zoo.build"], cwd=REPO,
                              capture_output=True, text=True)
        if proc.returncode != 0 or not DEMO.exists():
            raise BenchError(f"python -m zoo.build failed:\n{proc.stderr.rstrip()}")
    found: list[tuple[str, Path, list[str]]] = [("demo", DEMO, [])]
    for folder, names in ((ZOO_REAL, ZOO_MODELS), (CORPUS, CORPUS_MODELS)):
        manifest = folder / "manifest.json"
        if not manifest.exists():
            print(f"{manifest} not found: {', '.join(names)} left out", file=sys.stderr)
            continue
        entries = {entry["name"]: entry for entry in json.loads(manifest.read_text())}
        for name in names:
            if name in entries and (folder / entries[name]["path"]).exists():
                found.append((name, folder / entries[name]["path"], _input_flags(entries[name])))
    return found


def _input_flags(entry: dict) -> list[str]:
    """The manifest's shapes and ranges as flags, for recording the inputs."""
    flags = ["--input-shapes", *(f"{name}:{'x'.join(map(str, shape)) or 'scalar'}"
                                 for name, shape in entry["input_shapes"].items() if shape)]
    return flags + ["--val-range", *(f"{name}:[{low},{high}]"
                                     for name, (low, high) in entry["val_ranges"].items())]


def commands(model: Path, inputs: Path) -> list[Row]:
    """The timed commands for one model; the polygraphy row is the baseline."""
    m, f = str(model), str(inputs)
    return [
        Row("trtcheck onnxrt vs onnxrt",
            [*TRTCHECK, "compare", m, "--reference", "onnxrt", "--target", "onnxrt",
             "--inputs", f]),
        Row(BASELINE, [str(POLYGRAPHY), "run", m, "--onnxrt", "--onnxrt", "--load-inputs", f]),
        Row(f"trtcheck onnxrt-fp16 {EXTRA_WORK_MARK}",
            [*TRTCHECK, "compare", m, "--target", "onnxrt-fp16", "--inputs", f]),
    ]


def bench_model(name: str, path: Path, input_flags: list[str], workdir: Path, repeats: int,
                timeout: float) -> ModelBench:
    inputs = workdir / f"{name}.inputs.json"
    TIMER.run([*TRTCHECK, "compare", str(path), "--reference", "onnxrt", "--target", "onnxrt",
         *input_flags, "--save-inputs", str(inputs)], timeout)
    if not inputs.exists():
        raise BenchError(f"trtcheck --save-inputs did not write {inputs}")
    rows = commands(path, inputs)
    TIMER.time_rows(rows, repeats, timeout)
    return ModelBench(name, path, rows)


def bench_help(repeats: int, timeout: float) -> ModelBench:
    """`trtcheck --help` next to `polygraphy --help`: start-up and argument parsing alone."""
    rows = [Row("trtcheck --help", [*TRTCHECK, "--help"]),
            Row(HELP_BASELINE, [str(POLYGRAPHY), "--help"])]
    TIMER.time_rows(rows, repeats, timeout)
    return ModelBench("(start-up)", None, rows, HELP_BASELINE)


def render(results: list[ModelBench], repeats: int) -> str:
    header = ("model", "command", "median s", "min s", "ratio vs polygraphy")
    lines: list[tuple[str, ...]] = []
    for result in results:
        for row in result.rows:
            ratio = "-" if row.label == result.baseline_label else f"{result.ratio(row):.2f}"
            lines.append((result.name, row.label, f"{row.median:.3f}", f"{row.best:.3f}", ratio))
    widths = [max(len(cells[i]) for cells in [header, *lines]) for i in range(len(header))]
    right = (False, False, True, True, True)

    def fmt(cells: tuple[str, ...]) -> str:
        return "  ".join(
            c.rjust(w) if r else c.ljust(w) for c, w, r in zip(cells, widths, right, strict=True)
        ).rstrip()

    out = [fmt(header), "  ".join("-" * w for w in widths)]
    previous = None
    for cells in lines:
        shown = cells if cells[0] != previous else ("", *cells[1:])
        previous = cells[0]
        out.append(fmt(shown))
    out.append("")
    out.append(f"{repeats} timed run(s) per command, interleaved, after one untimed warm-up;")
    out.append("ratio = trtcheck median / polygraphy median on the same model and inputs.")
    out.append(f"{EXTRA_WORK_MARK} trtcheck does extra work in this row: it builds the "
               "fp16-emulated model before")
    out.append("  running it, so it is not a like-for-like peer of the polygraphy fp32 row.")
    for result in results:
        for row in result.rows:
            if row.label == "trtcheck --help":
                verdict = "within" if row.median < HELP_BUDGET_S else "OVER"
                out.append(f"trtcheck --help: median {row.median:.3f} s, {verdict} its "
                           f"{HELP_BUDGET_S:g} s budget.")
    mismatches: dict[str, list[str]] = {}
    for result in results:
        for row in result.rows:
            if 1 in row.exit_codes:
                mismatches.setdefault(row.label.rstrip(f" {EXTRA_WORK_MARK}"), []).append(
                    result.name
                )
    for label, names in mismatches.items():
        out.append(f"exit 1 (mismatch, a legitimate outcome): {label} on {', '.join(names)}")
    return "\n".join(out)


def to_json(results: list[ModelBench], repeats: int) -> dict[str, object]:
    return {
        "repeats": repeats,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "models": [
            {
                "model": result.name,
                "path": str(result.path) if result.path else None,
                "rows": [
                    {
                        "command": row.label,
                        "argv": row.argv,
                        "times_s": row.times,
                        "median_s": row.median,
                        "min_s": row.best,
                        "ratio_vs_polygraphy": result.ratio(row),
                        "baseline": result.baseline_label,
                        "exit_codes": row.exit_codes,
                    }
                    for row in result.rows
                ],
            }
            for result in results
        ],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5,
                        help="timed runs per command (default 5)")
    parser.add_argument("--json", type=Path, metavar="OUT", help="also write the numbers here")
    parser.add_argument("--models", nargs="+", metavar="NAME",
                        help="bench only these models (default: all that are found)")
    parser.add_argument("--timeout", type=float, default=600.0,
                        help="seconds before one command counts as hung (default 600)")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    if not POLYGRAPHY.exists():
        print(f"polygraphy not found at {POLYGRAPHY}", file=sys.stderr)
        return 2

    try:
        with tempfile.TemporaryDirectory(prefix="trtcheck-bench-") as tmp:
            TIMER.environment = bench_environment(Path(tmp) / "pycache")
            results = []
            for name, path, input_flags in models():
                if args.models and name not in args.models:
                    continue
                print(f"benching {name} ...", file=sys.stderr, flush=True)
                results.append(bench_model(name, path, input_flags, Path(tmp), args.repeats,
                                           args.timeout))
            print("benching --help ...", file=sys.stderr, flush=True)
            results.append(bench_help(args.repeats, args.timeout))
    except BenchError as exc:
        print(f"bench failed: {exc}", file=sys.stderr)
        return 3

    print(render(results, args.repeats))
    if args.json:
        args.json.write_text(json.dumps(to_json(results, args.repeats), indent=2) + "\n")
        print(f"numbers written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
