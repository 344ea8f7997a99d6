"""The pytest plugin, run inside pytest with `pytester` as a user runs `pytest suites/`."""

from __future__ import annotations

import xml.etree.ElementTree as ElementTree

import numpy as np
import onnx
import pytest

from trtcheck.backends import tensorrt_usable
from zoo.build import cnn, two_heads

pytest_plugins = ["pytester"]

SUITE = """
[targets.fp16]
backend = "onnxrt-fp16"

[targets.trt-fp16]
backend = "trt-fp16"

[[case]]
name = "cnn"
model = "cnn.onnx"

[case.tolerance_by_target.fp16]
atol = 0.01
rtol = 0.0

[[case]]
name = "heads"
model = "heads.onnx"
markers = ["slow"]

[[case.expected_failure]]
precisions = ["fp16"]
reason = "energy overflows fp16"
"""


@pytest.fixture
def project(pytester):
    onnx.save(cnn(seed=3), str(pytester.path / "cnn.onnx"))
    onnx.save(two_heads(), str(pytester.path / "heads.onnx"))
    pytester.makefile(".suite.toml", demo=SUITE)
    pytester.makeini("[pytest]\nmarkers =\n    slow: slow cases\n")
    return pytester


def make_goldens(project):
    result = project.runpytest("--trtcheck-update-golden-new-only")
    result.assert_outcomes(failed=2, skipped=2)
    return result


def test_collection_ids_and_markers(project):
    result = project.runpytest("--collect-only", "-q")
    result.stdout.fnmatch_lines([
        "demo.suite.toml::cnn[[]fp16[]]",
        "demo.suite.toml::cnn[[]trt-fp16[]]",
        "demo.suite.toml::heads[[]fp16[]]",
        "demo.suite.toml::heads[[]trt-fp16[]]",
    ])
    only_fp16 = project.runpytest("--collect-only", "-q", "-m", "fp16 and not tensorrt",
                                  "-k", "cnn")
    only_fp16.stdout.fnmatch_lines(["demo.suite.toml::cnn[[]fp16[]]", "*1/4 tests collected*"])


def test_missing_golden_fails_with_the_command_that_creates_it(project):
    result = project.runpytest("-k", "cnn", "-m", "not tensorrt")
    result.assert_outcomes(failed=1, deselected=3)
    result.stdout.fnmatch_lines([
        "*no golden at *golden/demo/cnn.npz; create it with: pytest "
        "'demo.suite.toml::cnn[[]fp16[]]' --trtcheck-update-golden-new-only*"])
    assert not (project.path / "golden").exists(), "goldens are never written implicitly"


def test_failure_report_is_the_table_and_the_repro_commands(project):
    make_goldens(project)
    suite = project.path / "demo.suite.toml"
    suite.write_text(SUITE.replace("atol = 0.01", "atol = 1e-9"))
    result = project.runpytest("-k", "cnn")
    result.assert_outcomes(failed=1, skipped=1)
    text = result.stdout.str()
    assert "Traceback" not in text and "def runtest" not in text
    result.stdout.fnmatch_lines([
        "*demo.suite.toml::cnn[[]fp16[]]: target vs reference FAIL; reference vs golden PASS*",
        "*target onnxrt-fp16 vs reference onnxrt*",
        "*logits*FAIL*",
        "*with TensorRT: polygraphy run *--trt --fp16 --onnxrt*",
        "same comparison: trtcheck compare *cnn.onnx --reference onnxrt --target onnxrt-fp16*"
        "--atol 1e-09*",
        "reproduce: pytest 'demo.suite.toml::cnn[[]fp16[]]'",
        "*trtcheck: items per target*",
        "fp16 *1 failed*",
        "trt-fp16 *1 skipped*",
    ])
    report = project.path / "artifacts" / "trtcheck" / "demo" / "cnn" / "fp16.json"
    assert '"verdict": "fail"' in report.read_text()


def test_golden_update_flags(project):
    first = make_goldens(project)
    first.stdout.fnmatch_lines(["*golden written to *golden/demo/cnn.npz*"])
    assert (project.path / "golden" / "demo" / "cnn.json").is_file()
    project.runpytest().assert_outcomes(passed=1, xfailed=1, skipped=2)

    # A golden from another reference: the item fails, names the drift, keeps the obtained file.
    for case in ("cnn", "heads"):
        golden = project.path / "golden" / "demo" / f"{case}.npz"
        with np.load(golden) as archive:
            shifted = {name: archive[name] + 0.5 for name in archive.files}
        np.savez_compressed(golden, **shifted)
    drifted = project.runpytest()
    drifted.assert_outcomes(failed=2, skipped=2)  # the xfail does not hide a golden failure
    drifted.stdout.fnmatch_lines([
        "*the reference drifted from the golden: output 'logits' max abs error 0.5*update with: "
        "pytest 'demo.suite.toml::cnn[[]fp16[]]' --trtcheck-update-golden"])
    assert (project.path / "artifacts" / "trtcheck" / "demo" / "cnn.obtained.npz").is_file()

    # new-only leaves existing goldens alone...
    project.runpytest("--trtcheck-update-golden-new-only").assert_outcomes(failed=2, skipped=2)
    # ...the full update rewrites them and still fails, then the suite passes again.
    project.runpytest("--trtcheck-update-golden").assert_outcomes(failed=2, skipped=2)
    project.runpytest().assert_outcomes(passed=1, xfailed=1, skipped=2)


def test_golden_with_another_dtype(project):
    make_goldens(project)
    golden = project.path / "golden" / "demo" / "cnn.npz"
    with np.load(golden) as archive:
        logits = archive["logits"].astype(np.float64)
    np.savez_compressed(golden, logits=logits)
    result = project.runpytest("-k", "cnn")
    result.assert_outcomes(failed=1, skipped=1)
    result.stdout.fnmatch_lines(["*output 'logits': the golden is float64[[]1, 10[]], the "
                                 "reference gives float32[[]1, 10[]]*"])


@pytest.mark.skipif(tensorrt_usable(), reason="TensorRT is installed here; this checks the "
                    "gate on a machine without it")
def test_require_backend_turns_skips_into_failures(project):
    make_goldens(project)
    project.runpytest().assert_outcomes(passed=1, xfailed=1, skipped=2)
    gated = project.runpytest("--trtcheck-require-backend", "trt")
    # Every TensorRT item becomes an error, the expected failure included.
    gated.assert_outcomes(passed=1, xfailed=1, errors=2)
    gated.stdout.fnmatch_lines(["*trt-fp16: TensorRT is required (--trtcheck-require-backend "
                                "trt) but is not importable here*"])
    # Plain tests marked `tensorrt` follow the same gate.
    project.makepyfile(test_gpu="import pytest\n@pytest.mark.tensorrt\ndef test_x():\n    pass\n")
    project.runpytest("test_gpu.py").assert_outcomes(skipped=1)
    project.runpytest("test_gpu.py", "--trtcheck-require-backend", "trt").assert_outcomes(
        errors=1)


def test_target_selection(project):
    make_goldens(project)
    selected = project.runpytest("--trtcheck-target", "fp16")
    selected.assert_outcomes(passed=1, xfailed=1, deselected=2)
    by_backend = project.runpytest("--trtcheck-target", "onnxrt-fp16")
    by_backend.assert_outcomes(passed=1, xfailed=1, deselected=2)
    unknown = project.runpytest("--trtcheck-target", "fp61")
    assert unknown.ret == pytest.ExitCode.USAGE_ERROR
    unknown.stderr.fnmatch_lines(["*--trtcheck-target fp61 matches no target*fp16*"])


def test_bad_case_and_bad_file_do_not_stop_the_rest(project):
    make_goldens(project)
    project.makefile(".suite.toml", broken="[[case]\nname = 1\n")
    bad_case = SUITE + '\n[[case]]\nname = "pinned"\nmodel = "cnn.onnx"\nmodel_sha256 = "' + \
        "0" * 64 + '"\n'
    (project.path / "demo.suite.toml").write_text(bad_case)
    result = project.runpytest("-p", "no:randomly")
    # A suite file or a case that cannot be checked is an error, not a failure.
    result.assert_outcomes(passed=1, xfailed=1, errors=2, skipped=3)
    result.stdout.fnmatch_lines(["*broken.suite.toml: not valid TOML*"])
    assert "Traceback" not in result.stdout.str()
    result.stdout.fnmatch_lines([f"*sha256 mismatch: expected {'0' * 64}, got *"])


def test_junitxml_and_markdown_summary(project, tmp_path):
    make_goldens(project)
    (project.path / "demo.suite.toml").write_text(SUITE.replace("atol = 0.01", "atol = 1e-9"))
    junit, summary = tmp_path / "junit.xml", tmp_path / "summary.md"
    project.runpytest(f"--junitxml={junit}", f"--trtcheck-summary={summary}")
    cases = {case.get("name"): case for case in ElementTree.parse(junit).iter("testcase")}
    assert set(cases) == {"cnn[fp16]", "cnn[trt-fp16]", "heads[fp16]", "heads[trt-fp16]"}
    failure = cases["cnn[fp16]"].find("failure")
    assert failure is not None and "reproduce: pytest" in failure.get("message", "") + (
        failure.text or "")
    markdown = summary.read_text()
    assert "| fp16 | 1 | 0 | 0 | 0 | 1 | 0 |" in markdown
    assert "<code>demo.suite.toml::cnn[fp16]</code>" in markdown
    assert markdown.index("### Failures") < markdown.index("reproduce: pytest")


def _junit_verdicts(path) -> dict[str, str]:
    verdicts = {}
    for case in ElementTree.parse(path).iter("testcase"):
        outcome = "passed"
        for tag in ("failure", "error", "skipped"):
            element = case.find(tag)
            if element is not None:
                outcome = f"{tag}:{element.get('type', '')}"
        verdicts[case.get("name")] = outcome
    return verdicts


def test_xdist_gives_the_same_verdicts_as_a_serial_run(project, tmp_path):
    make_goldens(project)
    (project.path / "demo.suite.toml").write_text(SUITE.replace("atol = 0.01", "atol = 1e-9"))
    serial = project.runpytest_subprocess(f"--junitxml={tmp_path / 'serial.xml'}")
    parallel = project.runpytest_subprocess("-n", "2", f"--junitxml={tmp_path / 'xdist.xml'}")
    serial.assert_outcomes(failed=1, xfailed=1, skipped=2)
    parallel.assert_outcomes(failed=1, xfailed=1, skipped=2)
    serial_verdicts = _junit_verdicts(tmp_path / "serial.xml")
    assert len(serial_verdicts) == 4
    assert serial_verdicts == _junit_verdicts(tmp_path / "xdist.xml")
    parallel.stdout.fnmatch_lines(["*trtcheck: items per target*", "fp16 *1 failed, 1 xfailed*"])
    # The controller assembles the HTML report from the workers' item reports.
    page = (project.path / "artifacts" / "trtcheck" / "report.html").read_text()
    assert "demo.suite.toml::cnn[fp16]" in page and "demo.suite.toml::heads[fp16]" in page


def test_bisect_option_explains_failing_items(project):
    make_goldens(project)
    (project.path / "demo.suite.toml").write_text(SUITE.split("[[case.expected_failure]]")[0])
    result = project.runpytest("-k", "heads", "-m", "not tensorrt", "--trtcheck-bisect")
    result.assert_outcomes(failed=1, deselected=3)
    result.stdout.fnmatch_lines([
        "*bisect energy: 2 target run(s)*",
        "*culprit: energy/sumsq (ReduceSumSquare)*local*",
        "*why: tensor energy/sumsq reaches 1.*e+07 in fp32, beyond fp16's 65504*",
        "*precision fix: keep*energy/sumsq*verified*",
    ])
    repro = project.path / "artifacts" / "trtcheck" / "demo" / "heads" / "fp16-repro"
    assert (repro / "culprit.onnx").is_file() and (repro / "README.md").is_file()
    report = project.path / "artifacts" / "trtcheck" / "demo" / "heads" / "fp16.json"
    assert '"culprit"' in report.read_text()
    page = (project.path / "artifacts" / "trtcheck" / "report.html").read_text()
    assert "demo.suite.toml::heads[fp16]" in page and "energy/sumsq" in page
    result.stdout.fnmatch_lines(["trtcheck HTML report: *report.html"])
