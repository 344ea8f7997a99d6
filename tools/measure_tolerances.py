"""Measures the error of each suite case on each emulated target over several input seeds.

Tolerances in suites/ come from here, not from guesses: for every case and every target that
runs on this machine, the case is compared with atol = rtol = 0 for seeds 1..N, and the largest
absolute error per output is recorded. The suggested tolerance is `--margin` times that maximum
(a pure absolute check: rtol = 0), printed as TOML to paste next to the case together with the
measurement it came from.

    python tools/measure_tolerances.py suites/handbuilt.suite.toml --seeds 5 --margin 4
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from pathlib import Path

from trtcheck.compare import ToleranceRequest
from trtcheck.core import CompareRequest, ReferenceCache, compare_model
from trtcheck.backends import BackendOptions, tensorrt_usable
from trtcheck.sources import resolve
from trtcheck.suite import load_suite


def _round_up(value: float) -> float:
    """Two significant digits, rounded up, so the tolerance never undercuts the margin."""
    if value <= 0:
        return 0.0
    exponent = math.floor(math.log10(value)) - 1
    return math.ceil(value / 10**exponent) * 10**exponent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("suite", type=Path)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--margin", type=float, default=4.0)
    parser.add_argument("--case", action="append", default=[], help="only these cases")
    args = parser.parse_args(argv)
    suite = load_suite(args.suite)
    cache = ReferenceCache()
    for case in suite.cases:
        if args.case and case.name not in args.case:
            continue
        if case.error:
            print(f"# {case.name}: {case.error}", file=sys.stderr)
            continue
        assert case.model is not None
        model_path = resolve(case.model)
        for target_name in case.targets:
            target = suite.targets[target_name]
            if target.family == "trt" and not tensorrt_usable():
                print(f"# {case.name} on {target_name}: skipped, TensorRT is not importable here")
                continue
            seeds = [case.inputs.seed] if case.inputs.recorded else list(
                range(1, args.seeds + 1))
            worst: dict[str, float] = {}
            nonfinite: dict[str, int] = {}
            for seed in seeds:
                request = CompareRequest(
                    model=model_path, reference=case.reference, target=target.backend,
                    tolerances=ToleranceRequest({"atol": {"": 0.0}, "rtol": {"": 0.0}}),
                    inputs=dataclasses.replace(case.inputs, seed=seed),
                    options=BackendOptions(providers=target.providers, tf32=target.tf32,
                                           keep_fp32=target.keep_fp32))
                result = compare_model(request, reference_cache=cache)
                for diff in result.outputs:
                    if diff.nonfinite_mismatches or math.isnan(diff.max_abs_error):
                        nonfinite[diff.name] = max(nonfinite.get(diff.name, 0),
                                                   diff.nonfinite_mismatches)
                    worst[diff.name] = max(worst.get(diff.name, 0.0), diff.max_abs_error)
            seed_text = f"seed {seeds[0]}" if len(seeds) == 1 else f"seeds {seeds[0]}-{seeds[-1]}"
            print(f"# {case.name} on {target_name}")
            if nonfinite:
                counts = ", ".join(f"{name}: {n}" for name, n in nonfinite.items())
                print("# no tolerance can pass: non-finite target values where the reference is "
                      f"finite ({counts}); declare an expected failure with the cause\n")
                continue
            print(f"[case.tolerance_by_target.{target_name}]")
            outputs = list(worst)
            if len(outputs) == 1 or len({_round_up(v * args.margin) for v in worst.values()}) == 1:
                value = max(worst.values())
                print(f"atol = {_round_up(value * args.margin):.2g}")
                print("rtol = 0.0")
                print(f'measured = "max abs error {value:.3g} over {seed_text}; atol = '
                      f'{args.margin:g}x that"')
            else:
                print("rtol = 0.0")
                parts = []
                for name, value in worst.items():
                    print(f'outputs."{name}" = {{ atol = {_round_up(value * args.margin):.2g} }}')
                    parts.append(f"{name} {value:.3g}")
                print(f'measured = "max abs error {", ".join(parts)} over {seed_text}; atol = '
                      f'{args.margin:g}x that"')
            print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
