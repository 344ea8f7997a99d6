"""The inputs trtcheck feeds the corpus' NLP and audio models when no --val-range is given.

For each model of the real-model corpus (manifest.json built by bench/corpus/build.py) whose name
names an NLP or audio family, prints one row per input: the range trtcheck now infers from the
graph, where it came from, and the range the corpus builder chose by hand for the model
(`val_ranges` in the manifest), so the two can be compared. Shapes are the manifest's.

    .venv/bin/python bench/input_ranges.py [--manifest PATH] [--match bert,gpt2,...]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from trtcheck.inputs import InputSettings, make_feeds  # noqa: E402
from trtcheck.model import load_model  # noqa: E402

DEFAULT_MANIFEST = ROOT / ".cache" / "trtcheck-bench" / "corpus" / "manifest.json"
FAMILIES = ("bert", "gpt2", "whisper", "wav2vec2", "magika", "silero")


def _number(value: float) -> str:
    return f"{value:g}"


def rows_for(entry: dict, root: Path) -> tuple[list[list[str]], float]:
    model = load_model(root / entry["path"])
    shapes = {name: tuple(shape) for name, shape in entry["input_shapes"].items()}
    started = time.perf_counter()
    feeds = make_feeds(model, InputSettings(shapes=shapes))
    seconds = time.perf_counter() - started
    rows = []
    for described in feeds.described:
        low, high = described.value_range
        by_hand = entry.get("val_ranges", {}).get(described.name)
        fed = feeds.iterations[0][described.name]
        observed = f"[{_number(fed.min())}, {_number(fed.max())}]" if fed.size else "-"
        rows.append([
            entry["name"], described.name, described.dtype,
            "x".join(map(str, described.shape)) or "scalar",
            f"[{_number(low)}, {_number(high)}]", observed,
            described.generator, described.origin + (" (WARNED)" if described.guessed else ""),
            f"[{_number(by_hand[0])}, {_number(by_hand[1])}]" if by_hand else "-",
        ])
    return rows, seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manifest", type=Path, default=DEFAULT_MANIFEST)
    parser.add_argument("--match", default=",".join(FAMILIES),
                        help="comma-separated name parts (default: %(default)s)")
    args = parser.parse_args()
    if not args.manifest.is_file():
        print(f"{args.manifest}: no corpus manifest; build it with bench/corpus/build.py",
              file=sys.stderr)
        return 2
    parts = [part for part in args.match.split(",") if part]
    entries = [e for e in json.loads(args.manifest.read_text())
               if any(part in e["name"] for part in parts)]
    header = ["model", "input", "dtype", "shape", "inferred range", "fed min..max", "generator",
              "range from", "manifest (by hand)"]
    table: list[list[str]] = []
    total = 0.0
    for entry in entries:
        rows, seconds = rows_for(entry, args.manifest.parent)
        table.extend(rows)
        total += seconds
    widths = [max(len(row[i]) for row in [header, *table]) for i in range(len(header))]
    for row in [header, ["-" * w for w in widths], *table]:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))
    warned = sum("(WARNED)" in row[7] for row in table)
    print(f"\n{len(entries)} models, {len(table)} inputs, {warned} with a guessed range (warned); "
          f"feeds made in {total:.2f} s in all")
    return 0


if __name__ == "__main__":
    sys.exit(main())
