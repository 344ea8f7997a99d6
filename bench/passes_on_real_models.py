"""Node counts before and after `trtcheck fix` on real models, with the numeric proof.

Runs the whole pass pipeline (each pass verified with ONNX Runtime, rolled back if it changes an
output by more than 1e-6 relative) on the nine ONNX "light" models shipped in the onnx package
and on the five PyPI-wheel models of suites/pypi-models.suite.toml, and prints, per model: nodes
before and after, ConstantOfShape and Constant nodes before and after, pass statuses, and the
largest output change of the result against the original (0 means bit-identical).

    python bench/passes_on_real_models.py
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import onnx

from trtcheck.fix import fix_model
from trtcheck.sources import resolve
from trtcheck.suite import load_suite

ROOT = Path(__file__).resolve().parents[1]


def _models() -> list[tuple[str, Path, object]]:
    folder = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
    models: list[tuple[str, Path, object]] = [
        (path.stem.removeprefix("light_"), path, None) for path in sorted(folder.glob("*.onnx"))]
    suite = load_suite(ROOT / "suites" / "pypi-models.suite.toml")
    for case in suite.cases:
        assert case.model is not None
        models.append((case.name, resolve(case.model), case.inputs))
    return models


def main() -> int:
    header = (f"{'model':<24}{'nodes':>14}{'Constant':>12}{'ConstantOfShape':>18}"
              f"{'max change':>12}{'seconds':>9}  passes changed")
    print(header)
    print("-" * len(header))
    worst_overall = 0.0
    for name, path, inputs in _models():
        started = time.perf_counter()
        result = fix_model(path, None, inputs=inputs)  # type: ignore[arg-type]
        seconds = time.perf_counter() - started
        before = result.pipeline.outcomes[0].nodes_before
        after = result.pipeline.outcomes[-1].nodes_after
        change = max((result.pipeline.final_change or {}).values(), default=float("nan"))
        worst_overall = max(worst_overall, change)
        changed = ",".join(o.name for o in result.pipeline.outcomes if o.status == "changed")
        problems = [f"{o.name}:{o.status}" for o in result.pipeline.outcomes
                    if o.status not in ("changed", "unchanged")]
        nodes = f"{result.nodes_before} -> {result.nodes_after}"
        constants = f"{before['Constant']} -> {after['Constant']}"
        weights = f"{before['ConstantOfShape']} -> {after['ConstantOfShape']}"
        print(f"{name:<24}{nodes:>14}{constants:>12}{weights:>18}"
              f"{change:>12.3g}{seconds:>9.1f}  {changed}"
              + (f"  [{' '.join(problems)}]" if problems else ""))
    print(f"\nlargest output change of any result against its original: {worst_overall:.3g} "
          "(relative to the output's largest magnitude)")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TRTCHECK_CACHE", str(ROOT / ".cache" / "trtcheck"))
    sys.exit(main())
