"""What running backends in a child process costs per item, against the same runs in-process.

trtcheck runs every backend in a forked child with a timeout (`trtcheck.isolation`), so that a
crash or a hang is one item's error. This bench measures the price, paired in the same run:

- time: in one process, `compare_model` (ONNX Runtime fp32 reference and the onnxrt-fp16 target,
  the manifest's input shapes and value ranges) is timed --repeats times isolated and in-process,
  alternating, after one warm-up of each; the table shows the medians, the difference per item
  (two backend runs: one fork each) and the ratio;
- memory: `trtcheck compare MODEL` and `trtcheck compare MODEL --in-process` as whole CLI
  subprocesses, peak memory of the CLI and the processes it forks (`run_measured` in
  real_models.py: sum of PSS over the process group, so pages a fork shares count once).

Models: zoo/demo.onnx and the tiny real-export zoo (zoo/real), plus with --corpus the large
corpus models named by --corpus-models (default ViT-B/16, BERT-base, GPT-2), where the outputs
that come back through the pipe are largest.

    .venv/bin/python bench/isolation_overhead.py [--repeats 5] [--corpus] [--plain]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import real_models  # noqa: E402  (a sibling script, not a package)

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CORPUS_MODELS = ["vit_b_16_classic", "bert_base_classic", "gpt2_classic"]
COLUMNS = ["model", "MB", "in-process ms", "isolated ms", "per item ms", "ratio",
           "peak MB in-process", "peak MB isolated", "memory ratio"]


def _entries(corpus: bool, names: list[str]) -> list[dict]:
    entries = [{"name": "demo", "_path": str(REPO / "zoo" / "demo.onnx")}]
    entries += real_models.load_manifest(real_models.ZOO_MANIFEST)
    if corpus:
        wanted = set(names)
        entries += [e for e in real_models.load_manifest(real_models.CORPUS_MANIFEST)
                    if e["name"] in wanted]
    return entries


def _time_api(entry: dict, repeats: int) -> tuple[float, float]:
    from trtcheck import isolation
    from trtcheck.cli import build_parser, request_from_args
    from trtcheck.core import compare_model

    args = build_parser().parse_args(
        ["compare", entry["_path"], "--target", "onnxrt-fp16", *real_models.input_flags(entry)])
    request = request_from_args(args)
    times: dict[bool, list[float]] = {True: [], False: []}
    for index in range(repeats + 1):
        for enabled in (True, False):
            with isolation.isolation(enabled=enabled):
                started = time.perf_counter()
                compare_model(request)
                if index:  # the first round warms caches (imports, the OS page cache)
                    times[enabled].append(time.perf_counter() - started)
    return statistics.median(times[False]), statistics.median(times[True])


def _peak_cli(entry: dict, in_process: bool, work: Path) -> float:
    argv = [sys.executable, "-m", "trtcheck", "compare", entry["_path"], "--target",
            "onnxrt-fp16", *real_models.input_flags(entry)]
    if in_process:
        argv.append("--in-process")
    run = real_models.run_measured("in-process" if in_process else "isolated", argv, work, 1800)
    if run.exit_code not in (0, 1):
        raise RuntimeError(f"{entry['name']}: {run.exit_text}: {run.error_line}")
    return run.peak_rss_mb


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--corpus", action="store_true", help="add large corpus models")
    parser.add_argument("--corpus-models", nargs="+", default=DEFAULT_CORPUS_MODELS)
    parser.add_argument("--only", nargs="+", metavar="NAME", help="only these models")
    parser.add_argument("--plain", action="store_true", help="a markdown table")
    args = parser.parse_args(argv)
    entries = []
    for entry in _entries(args.corpus, args.corpus_models):
        if args.only and entry["name"] not in args.only:
            continue
        if Path(entry["_path"]).exists():
            entries.append(entry)
        else:
            print(f"{entry['name']}: {entry['_path']} missing, skipped", file=sys.stderr)
    # Memory first, while this process has not imported trtcheck: a subprocess starts as a copy
    # of it, and that copy's size would count in the child's ru_maxrss.
    peaks = {}
    with tempfile.TemporaryDirectory(prefix="trtcheck-bench-") as work:
        for entry in entries:
            peaks[entry["name"]] = (_peak_cli(entry, True, Path(work)),
                                    _peak_cli(entry, False, Path(work)))
    rows, overheads = [], []
    for entry in entries:
        path = Path(entry["_path"])
        in_process, isolated = _time_api(entry, args.repeats)
        peak_in, peak_iso = peaks[entry["name"]]
        overheads.append((isolated - in_process) * 1000)
        size = sum(p.stat().st_size for p in path.parent.glob(path.name + "*")) / 2**20
        rows.append([entry["name"], f"{size:.1f}", f"{in_process * 1000:.0f}",
                     f"{isolated * 1000:.0f}", f"{(isolated - in_process) * 1000:+.0f}",
                     f"{isolated / in_process:.2f}", f"{peak_in:.0f}", f"{peak_iso:.0f}",
                     f"{peak_iso / peak_in:.2f}"])
        print(f"{entry['name']}: {rows[-1][2:]}", file=sys.stderr, flush=True)
    real_models.print_table(rows, args.plain, COLUMNS, numeric=tuple(COLUMNS[1:]))
    print(f"median cost per item: {statistics.median(overheads):+.0f} ms over {len(rows)} models "
          f"(two backend runs per item; reference and target)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
