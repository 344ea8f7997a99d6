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
import json
import math
import re
import sys
from pathlib import Path

import numpy as np

from trtcheck.backends import BackendOptions, tensorrt_usable
from trtcheck.core import CompareRequest, ReferenceCache, compare_model
from trtcheck.sources import resolve
from trtcheck.suite import load_suite
from trtcheck.tolerance import ToleranceRequest


def _round_up(value: float) -> float:
    """Two significant digits, rounded up, so the tolerance never undercuts the margin."""
    if value <= 0:
        return 0.0
    exponent = math.floor(math.log10(value)) - 1
    return math.ceil(value / 10**exponent) * 10**exponent


def _key(name: str) -> str:
    """A TOML key for an output name: bare when it can be, quoted otherwise."""
    return name if re.fullmatch(r"[A-Za-z0-9_-]+", name) else json.dumps(name)


def _suggestion(case: str, target: str, seed_text: str, margin: float, worst: dict[str, float],
                worst_p99: dict[str, float], scale: dict[str, float],
                nonfinite: dict[str, int]) -> str:
    """The TOML table (or the reason there is none) for one case on one target."""
    if nonfinite:
        counts = ", ".join(f"{name}: {n}" for name, n in nonfinite.items())
        return (f"# {case} on {target}: no tolerance can pass: non-finite target values where "
                f"the reference is finite ({counts}); declare an expected failure with the "
                "cause\n")
    lines = [f"# {case} on {target}", f"[case.tolerance_by_target.{target}]"]
    vacuous = [name for name, value in worst.items() if value * margin > 0.1 * scale[name] > 0]
    if vacuous:
        # An atol near the outputs' own magnitude checks nothing: when a few elements carry the
        # error, the 99th percentile still says something; otherwise declare a failure.
        lines.insert(1, f"# {', '.join(vacuous)}: {margin:g}x the max error exceeds 10% of the "
                        "largest |reference| value, so a max check would be vacuous")
        lines += ['check_error_stat = "quantile"', "error_quantile = 0.99", "rtol = 0.0"]
        lines += [f"outputs.{_key(name)} = {{ atol = {_round_up(value * margin):.2g} }}"
                  for name, value in worst_p99.items()]
        parts = [f"{name} p99 {worst_p99[name]:.3g} (max {worst[name]:.3g}, |ref| <= "
                 f"{scale[name]:.3g})" for name in worst]
        lines.append(f'measured = "abs error {", ".join(parts)} over {seed_text}; atol = '
                     f'{margin:g}x the p99"')
        return "\n".join(lines) + "\n"
    if len({_round_up(v * margin) for v in worst.values()}) == 1:
        value = max(worst.values())
        lines += [f"atol = {_round_up(value * margin):.2g}", "rtol = 0.0",
                  f'measured = "max abs error {value:.3g} over {seed_text}; atol = {margin:g}x '
                  'that"']
    else:
        lines.append("rtol = 0.0")
        lines += [f"outputs.{_key(name)} = {{ atol = {_round_up(value * margin):.2g} }}"
                  for name, value in worst.items()]
        parts = [f"{name} {value:.3g}" for name, value in worst.items()]
        lines.append(f'measured = "max abs error {", ".join(parts)} over {seed_text}; atol = '
                     f'{margin:g}x that"')
    return "\n".join(lines) + "\n"


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
            worst_p99: dict[str, float] = {}
            scale: dict[str, float] = {}
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
                    worst_p99[diff.name] = max(worst_p99.get(diff.name, 0.0), diff.p99_abs_error)
                    reference = result.run_results[f"reference:{case.reference}"][0][diff.name]
                    scale[diff.name] = max(scale.get(diff.name, 0.0),
                                           float(np.abs(np.asarray(reference)).max()))
            seed_text = f"seed {seeds[0]}" if len(seeds) == 1 else f"seeds {seeds[0]}-{seeds[-1]}"
            print(_suggestion(case.name, target_name, seed_text, args.margin, worst, worst_p99,
                              scale, nonfinite))
    return 0


if __name__ == "__main__":
    sys.exit(main())
