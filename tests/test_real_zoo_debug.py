"""Bisect and audit on tiny exports of real architectures (zoo/real, both torch exporters).

Tolerances are tightened to 1e-4 so that fp16 rounding fails every model that has float
outputs; then bisect must name a culprit, never crash or contradict compare.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import read_json

ZOO = Path(__file__).resolve().parents[1] / "zoo" / "real"
MANIFEST = json.loads((ZOO / "manifest.json").read_text()) if (ZOO / "manifest.json").exists() \
    else []


def _input_flags(entry: dict) -> list[str]:
    flags = ["--input-shapes", *(f"{name}:{'x'.join(map(str, shape))}"
                                 for name, shape in entry["input_shapes"].items())]
    flags += ["--val-range", *(f"{name}:[{low},{high}]"
                               for name, (low, high) in entry["val_ranges"].items())]
    return flags


@pytest.mark.parametrize("entry", MANIFEST, ids=[e["name"] for e in MANIFEST])
def test_bisect_names_a_culprit_whenever_compare_fails(entry, trtcheck_cli, tmp_path):
    model = ZOO / entry["path"]
    run = trtcheck_cli("bisect", model, *_input_flags(entry), "--atol", "1e-4", "--rtol", "1e-4",
                       "--no-precision-fix", "--json", "r.json", "--repro", "repro")
    assert "Traceback" not in run.stderr, run.stderr
    report = read_json(tmp_path / "r.json")
    if report["verdict"] == "pass":
        assert run.code == 0 and "bisect" not in report
        return
    assert run.code == 1, run.stderr
    assert "bisect_error" not in report, report.get("bisect_error")
    bisect = report["bisect"]
    assert bisect["culprit"]["op"] and bisect["trace"][-1]["diverged"]
    # The output followed is one compare failed.
    failed = {o["name"] for o in report["outputs"] if not o["passed"]}
    assert bisect["output"] in failed


@pytest.mark.parametrize("entry", MANIFEST, ids=[e["name"] for e in MANIFEST])
def test_audit_runs(entry, trtcheck_cli, tmp_path):
    run = trtcheck_cli("audit", ZOO / entry["path"], *_input_flags(entry), "--json", "a.json")
    assert run.code in (0, 1) and "Traceback" not in run.stderr, run.stderr
    findings = read_json(tmp_path / "a.json")["findings"]
    assert (run.code == 1) == any(f["kind"] == "overflow" for f in findings)


def test_precision_fix_verified_on_an_export(trtcheck_cli, tmp_path):
    entry = next(e for e in MANIFEST if e["name"] == "whisper_encoder_tiny_classic")
    run = trtcheck_cli("bisect", ZOO / entry["path"], *_input_flags(entry), "--atol", "1e-3",
                       "--rtol", "1e-3", "--json", "r.json", "--repro", "repro")
    assert run.code == 1, run.stderr
    fix = read_json(tmp_path / "r.json")["bisect"]["precision_fix"]
    assert fix["verified"], fix["remaining"]
    again = trtcheck_cli("compare", ZOO / entry["path"], *_input_flags(entry), "--atol", "1e-3",
                         "--rtol", "1e-3", "--keep-fp32", *fix["keep_fp32"])
    assert again.code == 0, again.stdout

