"""Time and peak memory of `trtcheck bisect` (exact and search modes) next to `trtcheck compare`.

What it measures: on big real models (default: ViT-B/16, GPT-2 small and BERT-base with its
weights in an external data file, from the corpus built by bench/corpus/build.py), the wall
time (process start to exit: interpreter start-up, imports, model load, sessions and all) and
the peak memory (`run_measured` in real_models.py: the CLI and its backend processes) of three
whole CLI runs, each a subprocess started from a temporary working directory:

- `trtcheck compare MODEL --target onnxrt-fp16` (the baseline: two ONNX Runtime sessions);
- `trtcheck bisect MODEL --target onnxrt-fp16 --bisect-mode exact --no-precision-fix` (every
  tensor judged, in memory-bounded batches);
- `trtcheck bisect MODEL --target onnxrt-fp16 --bisect-mode search --no-precision-fix` (few
  tensors per target run, as on TensorRT);
- with --with-fix, also `trtcheck bisect MODEL --target onnxrt-fp16` (default mode, with the
  fp32 precision fix search).

Bisection needs a failing output: when compare PASSes at the default tolerances, the bench
tightens them (`--atol 1e-4 --rtol 1e-4`, then 1e-5, then 1e-6) until it FAILs, uses those for
every run of that model, and says so in the table's "tolerance" column. The untimed probe
compare that finds the tolerance doubles as a warm-up (page cache, .pyc files). Then each round
runs compare, exact, search (and fix) once; with --repeats N the table gives the medians of N
rounds (time and peak memory separately).

Targets, marked pass/fail per model: exact-bisect time / compare time <= 3.0, and exact-bisect
peak memory - compare peak memory <= 1500 MB.

Exit code: 0 when every model met both targets and no command crashed, 1 otherwise.

Run it from the repository root, in the project's venv (the big models take minutes each):

    .venv/bin/python bench/bisect_memory.py
    .venv/bin/python bench/bisect_memory.py --models vit_b_16_classic --repeats 3 --json m.json
    .venv/bin/python bench/bisect_memory.py --manifest zoo/real/manifest.json \\
        --models gpt2_tiny_classic maskrcnn_tiny_classic --with-fix
    .venv/bin/python bench/bisect_memory.py --max-memory 512M   # passed on to bisect

The default manifest is $TRTCHECK_BENCH_CACHE/manifest.json (default
.cache/trtcheck-bench/corpus/manifest.json); the default models are vit_b_16_classic,
gpt2_classic and bert_base_classic_extdata, or, when the manifest lacks them, its three largest
models of distinct architectures.
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import real_models  # noqa: E402  (a sibling script, not a package)
from real_models import (  # noqa: E402
    CORPUS_MANIFEST,
    TARGET,
    TRTCHECK,
    Run,
    _terminate,
    input_flags,
    load_manifest,
    run_measured,
)

DEFAULT_MODELS = ("vit_b_16_classic", "gpt2_classic", "bert_base_classic_extdata")
TOLERANCES: tuple[tuple[str, list[str]], ...] = (
    ("default", []),
    ("1e-4", ["--atol", "1e-4", "--rtol", "1e-4"]),
    ("1e-5", ["--atol", "1e-5", "--rtol", "1e-5"]),
    ("1e-6", ["--atol", "1e-6", "--rtol", "1e-6"]),
)
MAX_RATIO = 3.0
MAX_DELTA_MB = 1500.0
VARIANT_SUFFIXES = ("_classic", "_dynamo", "_noopt", "_extdata", "_dynquant", "_qdq")


def _architecture(name: str) -> str:
    stripped = name
    changed = True
    while changed:
        changed = False
        for suffix in VARIANT_SUFFIXES:
            if stripped.endswith(suffix):
                stripped, changed = stripped.removesuffix(suffix), True
    return stripped


def default_models(entries: list[dict[str, Any]]) -> list[str]:
    names = {e["name"] for e in entries if Path(e["_path"]).exists()}
    preferred = [name for name in DEFAULT_MODELS if name in names]
    if len(preferred) == len(DEFAULT_MODELS):
        return preferred
    chosen: list[str] = []
    seen: set[str] = set()
    for entry in sorted(entries, key=lambda e: -(e.get("size_bytes") or 0)):
        architecture = _architecture(entry["name"])
        if entry["name"] in names and architecture not in seen:
            chosen.append(entry["name"])
            seen.add(architecture)
        if len(chosen) == 3:
            break
    return chosen


@dataclass
class Measured:
    """The runs of one command over the rounds, and their medians."""

    runs: list[Run] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        return statistics.median(r.seconds for r in self.runs)

    @property
    def peak_mb(self) -> float:
        return statistics.median(r.peak_rss_mb for r in self.runs)

    @property
    def ok(self) -> bool:
        return all(r.exit_code in (0, 1) and not r.traceback for r in self.runs)

    def cell(self) -> str:
        if not self.runs:
            return "-"
        last = self.runs[-1]
        text = f"{self.seconds:.1f} s / {self.peak_mb:.0f} MB"
        return text if self.ok else f"{text} ({last.exit_text})"


@dataclass
class ModelBench:
    name: str
    size_mb: float
    nodes: int | None
    tolerance: str = "default"
    note: str = ""
    measured: dict[str, Measured] = field(default_factory=dict)
    bisect_info: dict[str, dict[str, Any]] = field(default_factory=dict)
    crashes: list[dict[str, str]] = field(default_factory=list)

    def ratio(self) -> float | None:
        compare, exact = self.measured.get("compare"), self.measured.get("exact")
        if not compare or not exact or not compare.runs or not exact.runs:
            return None
        return exact.seconds / compare.seconds

    def delta_mb(self) -> float | None:
        compare, exact = self.measured.get("compare"), self.measured.get("exact")
        if not compare or not exact or not compare.runs or not exact.runs:
            return None
        return exact.peak_mb - compare.peak_mb

    def targets_met(self) -> bool:
        ratio, delta = self.ratio(), self.delta_mb()
        return (ratio is not None and delta is not None and ratio <= MAX_RATIO
                and delta <= MAX_DELTA_MB and self.measured["exact"].ok)


def _bisect_summary(report: dict[str, Any] | None) -> dict[str, Any]:
    report = report or {}
    info = report.get("bisect") or {}
    culprit = info.get("culprit") or {}
    fix = info.get("precision_fix")
    return {"verdict": report.get("verdict"), "mode": info.get("mode"),
            "culprit": culprit.get("node"), "op": culprit.get("op"),
            "target_runs": info.get("target_runs"), "batches": info.get("batches"),
            "probe_points": info.get("probe_points"),
            "precision_fix": None if not isinstance(fix, dict) else {
                k: fix.get(k) for k in ("verified", "rounds", "target_runs")}
            | {"keep_fp32": len(fix.get("keep_fp32") or [])},
            "bisect_error": report.get("bisect_error"), "error": report.get("error")}


def _record_crash(bench: ModelBench, label: str, run: Run) -> None:
    if run.timed_out or run.traceback or run.exit_code not in (0, 1):
        bench.crashes.append({"command": label, "exit": run.exit_text,
                              "stderr_first": run.stderr_first, "error_line": run.error_line,
                              "argv": " ".join(run.argv)})


def bench_model(entry: dict[str, Any], repeats: int, timeout: float, with_fix: bool,
                max_memory: str | None) -> ModelBench:
    model = entry["_path"]
    bench = ModelBench(name=entry["name"], size_mb=(entry.get("size_bytes") or 0) / 2**20,
                       nodes=entry.get("nodes"))
    flags = input_flags(entry)
    memory = ["--max-memory", max_memory] if max_memory else []
    with tempfile.TemporaryDirectory(prefix=f"trtcheck-bisect-memory-{entry['name']}-") as tmp:
        work = Path(tmp)

        def run(label: str, argv: list[str]) -> Run:
            json_path = work / f"{label}.json"
            json_path.unlink(missing_ok=True)
            print(f"  {entry['name']}: {label} ...", file=sys.stderr, flush=True)
            result = run_measured(label, [str(a) for a in argv + ["--json", json_path]], work,
                                  timeout, json_path)
            print(f"  {entry['name']}: {label} {result.exit_text} in {result.seconds:.1f} s, "
                  f"peak {result.peak_rss_mb:.0f} MB", file=sys.stderr, flush=True)
            _record_crash(bench, label, result)
            return result

        compare_argv = [*TRTCHECK, "compare", model, "--target", TARGET, *flags]
        tolerance: list[str] | None = None
        for label, tolerance_flags in TOLERANCES:
            probe = run("probe", compare_argv + tolerance_flags)
            if probe.exit_code == 1:
                bench.tolerance, tolerance = label, tolerance_flags
                break
            if probe.exit_code != 0:
                bench.note = f"probe compare {probe.exit_text}: {probe.error_line}"
                return bench
        if tolerance is None:
            bench.note = "compare passes at every tolerance tried (down to 1e-6): nothing to bisect"
            return bench
        bisect_argv = [*TRTCHECK, "bisect", model, "--target", TARGET, *flags, *tolerance,
                       "--repro", work / "repro", *memory]
        commands = {
            "compare": compare_argv + tolerance,
            "exact": bisect_argv + ["--bisect-mode", "exact", "--no-precision-fix"],
            "search": bisect_argv + ["--bisect-mode", "search", "--no-precision-fix"],
        }
        if with_fix:
            commands["fix"] = list(bisect_argv)
        for round_index in range(repeats):
            if repeats > 1:
                print(f"  {entry['name']}: round {round_index + 1}/{repeats}", file=sys.stderr)
            for label, argv in commands.items():
                result = run(label, argv)
                bench.measured.setdefault(label, Measured()).runs.append(result)
                if label != "compare":
                    bench.bisect_info[label] = _bisect_summary(result.report)
                    result.report = None  # the summary is kept; the runs lists are large
                else:
                    result.report = None
    return bench


COLUMNS = ("model", "size MB", "tolerance", "compare s / MB", "exact s / MB (batches)",
           "search s / MB (target runs)", "fix s / MB", "exact/compare time",
           "exact - compare MB", "culprit (exact; search)")


def row(bench: ModelBench, with_fix: bool) -> list[str]:
    measured = bench.measured
    ratio, delta = bench.ratio(), bench.delta_mb()

    def mark(value: float | None, limit: float, fmt: str) -> str:
        if value is None:
            return "-"
        return f"{value:{fmt}} {'pass' if value <= limit else 'FAIL'}"

    exact = measured.get("exact", Measured()).cell()
    if "exact" in bench.bisect_info:
        exact += f" ({bench.bisect_info['exact'].get('batches')})"
    search = measured.get("search", Measured()).cell()
    if "search" in bench.bisect_info:
        search += f" ({bench.bisect_info['search'].get('target_runs')})"
    culprits = []
    for label in ("exact", "search"):
        info = bench.bisect_info.get(label) or {}
        culprits.append(str(info.get("culprit") or info.get("bisect_error") or "-"))
    culprit = culprits[0] if culprits[0] == culprits[1] else "; ".join(culprits)
    if culprits[0] == culprits[1] and culprits[0] != "-":
        culprit += " (both)"
    if bench.note:
        culprit = bench.note
    tolerance = bench.tolerance if bench.tolerance == "default" else (
        f"atol=rtol={bench.tolerance} (PASS at default)")
    size = f"{bench.size_mb:.1f}" if bench.size_mb < 10 else f"{bench.size_mb:.0f}"
    cells = [bench.name, size, tolerance,
             measured.get("compare", Measured()).cell(), exact, search,
             measured.get("fix", Measured()).cell(),
             mark(ratio, MAX_RATIO, ".2f"), mark(delta, MAX_DELTA_MB, ".0f"), culprit]
    if not with_fix:
        del cells[6]
    return cells


def print_table(benches: list[ModelBench], with_fix: bool, plain: bool) -> None:
    columns = [c for c in COLUMNS if with_fix or c != "fix s / MB"]
    real_models.print_table([row(b, with_fix) for b in benches], plain, columns, numeric=())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manifest", type=Path, default=CORPUS_MANIFEST,
                        help=f"model manifest (default {CORPUS_MANIFEST})")
    parser.add_argument("--models", nargs="+", metavar="NAME",
                        help="models of the manifest (default: vit_b_16_classic, gpt2_classic, "
                             "bert_base_classic_extdata, else its three largest)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="rounds per model; the table gives medians (default 1)")
    parser.add_argument("--with-fix", action="store_true",
                        help="also time bisect with the precision fix (default mode)")
    parser.add_argument("--max-memory", metavar="SIZE",
                        help="passed to bisect's --max-memory (default: trtcheck's own)")
    parser.add_argument("--timeout", type=float, default=1800.0,
                        help="seconds per command before it is killed (default 1800)")
    parser.add_argument("--json", type=Path, metavar="OUT", help="write everything here")
    parser.add_argument("--plain", action="store_true", help="plain markdown table")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    signal.signal(signal.SIGTERM, _terminate)

    try:
        entries = load_manifest(args.manifest.resolve())
    except (OSError, ValueError, KeyError) as err:
        print(f"bisect_memory: cannot read the manifest {args.manifest}: {err}; build the "
              "corpus with bench/corpus/build.py or pass --manifest", file=sys.stderr)
        return 2
    by_name = {e["name"]: e for e in entries}
    names = args.models or default_models(entries)
    unknown = [n for n in names if n not in by_name]
    missing = [n for n in names if n in by_name and not Path(by_name[n]["_path"]).exists()]
    if unknown or missing:
        print(f"bisect_memory: not in {args.manifest}: {', '.join(unknown) or '-'}; "
              f"file missing: {', '.join(missing) or '-'}", file=sys.stderr)
        return 2

    benches = []
    for index, name in enumerate(names, 1):
        entry = by_name[name]
        print(f"[{index}/{len(names)}] {name} ({entry.get('nodes')} nodes, "
              f"{(entry.get('size_bytes') or 0) / 2**20:.0f} MB)", file=sys.stderr, flush=True)
        benches.append(bench_model(entry, args.repeats, args.timeout, args.with_fix,
                                   args.max_memory))

    print(f"bisect time and peak memory (the CLI and its backend processes), target {TARGET}, "
          f"{args.repeats} round(s), median; max-memory {args.max_memory or 'trtcheck default'}; "
          f"targets: exact/compare time <= {MAX_RATIO}, exact - compare peak <= "
          f"{MAX_DELTA_MB:.0f} MB")
    print_table(benches, args.with_fix, args.plain)
    crashes = [{"model": b.name, **c} for b in benches for c in b.crashes]
    met = sum(1 for b in benches if b.targets_met())
    print(f"\ntargets met: {met} of {len(benches)} model(s); crashed commands: {len(crashes)}")
    for crash in crashes:
        print(f"  {crash['model']} {crash['command']}: {crash['exit']}; stderr: "
              f"{crash['stderr_first'] or '(empty)'}")
        if crash["error_line"] and crash["error_line"] != crash["stderr_first"]:
            print(f"      error: {crash['error_line'][:200]}")
        print(f"      command: {crash['argv']}")
    if args.json:
        document = {
            "bench": "bisect_memory", "manifest": str(args.manifest), "target": TARGET,
            "repeats": args.repeats, "max_memory": args.max_memory,
            "targets": {"max_ratio": MAX_RATIO, "max_delta_mb": MAX_DELTA_MB},
            "rows": [row(b, args.with_fix) for b in benches],
            "models": [{**asdict(b), "ratio": b.ratio(), "delta_mb": b.delta_mb(),
                        "targets_met": b.targets_met()} for b in benches],
            "crashes": crashes,
        }
        args.json.write_text(json.dumps(document, indent=1, default=str))
    return 0 if met == len(benches) and not crashes else 1


if __name__ == "__main__":
    sys.exit(main())
