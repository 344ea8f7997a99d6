"""The run's reports count what pytest counted; expected failures cover only mismatches.

Each test runs pytest inside pytest (`pytester`) on real small models from zoo/build.py, then
reads the summary the plugin wrote and compares it with pytest's own outcome line.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ElementTree

import onnx
import pytest

from trtcheck.backends import tensorrt_usable
from zoo.build import cnn, two_heads

pytest_plugins = ["pytester"]

needs_no_tensorrt = pytest.mark.skipif(
    tensorrt_usable(), reason="TensorRT is installed here; these count skipped TensorRT items")

# passes, fails numerically, is an expected failure, passes unexpectedly, cannot be loaded, hangs
# past its timeout; two cases also have a TensorRT target, which skips here.
SUITE = """
[targets.fp16]
backend = "onnxrt-fp16"

[targets.trt-fp16]
backend = "trt-fp16"

[[case]]
name = "good"
model = "cnn.onnx"

[case.tolerance_by_target.fp16]
atol = 0.01
rtol = 0.0

[[case]]
name = "tight"
model = "cnn.onnx"
targets = ["fp16"]

[case.tolerance]
atol = 1e-9
rtol = 0.0

[[case]]
name = "heads"
model = "heads.onnx"

[[case.expected_failure]]
precisions = ["fp16"]
reason = "energy overflows fp16"

[[case]]
name = "fixed"
model = "cnn.onnx"
targets = ["fp16"]

[case.tolerance]
atol = 0.01
rtol = 0.0

[[case.expected_failure]]
reason = "was broken once"

[[case]]
name = "truncated"
model = "truncated.onnx"
targets = ["fp16"]

[[case]]
name = "hang"
model = "cnn.onnx"
targets = ["fp16"]
timeout = 0.001
"""


@pytest.fixture
def project(pytester):
    onnx.save(cnn(seed=3), str(pytester.path / "cnn.onnx"))
    onnx.save(two_heads(), str(pytester.path / "heads.onnx"))
    whole = (pytester.path / "cnn.onnx").read_bytes()
    (pytester.path / "truncated.onnx").write_bytes(whole[: len(whole) // 2])
    pytester.makefile(".suite.toml", demo=SUITE)
    pytester.makeini("[pytest]\n")
    # Goldens for the cases whose reference runs; the truncated and hanging ones have none.
    pytester.runpytest("--trtcheck-update-golden-new-only", "-k",
                       "good or tight or heads or fixed")
    return pytester


def summary_of(pytester) -> dict:
    return json.loads((pytester.path / "artifacts" / "trtcheck" / "summary.json").read_text())


def pytest_counts(result) -> dict[str, int]:
    outcomes = result.parseoutcomes()
    outcomes.pop("warnings", None)
    return outcomes


@needs_no_tensorrt
@pytest.mark.parametrize("xdist", [False, True], ids=["serial", "xdist"])
def test_summary_counts_are_pytests_counts(project, tmp_path, xdist):
    markdown = tmp_path / "summary.md"
    if xdist:
        result = project.runpytest_subprocess("-n", "2", f"--trtcheck-summary={markdown}")
    else:
        result = project.runpytest(f"--trtcheck-summary={markdown}")
    result.assert_outcomes(passed=1, failed=2, xfailed=1, errors=2, skipped=2)
    summary = summary_of(project)
    counts = summary["counts"]
    assert {k: v for k, v in counts.items() if v and k in pytest_counts(result)} == \
        pytest_counts(result)
    assert counts["crashes"] == 1 and counts["unexpected_passes"] == 1
    assert summary["tensorrt_not_checked"] == 2
    assert summary["exit_status"] == result.ret == pytest.ExitCode.TESTS_FAILED
    crash = next(e for e in summary["entries"] if e["nodeid"].endswith("hang[fp16]"))
    assert crash["category"] == "error" and crash["crash"] and "timed out" in crash["message"]
    xfail = next(e for e in summary["entries"] if e["category"] == "xfailed")
    assert xfail["reason"] == "energy overflows fp16"

    text = markdown.read_text()
    assert "**TensorRT was not checked: 2 TensorRT items skipped" in text
    assert ("**FAILED**: 2 failed (1 unexpected pass), 2 errors (1 crash), 0 xpassed, 1 passed, "
            "1 xfailed, 2 skipped, 0 deselected") in text
    assert "- 1 × energy overflows fp16" in text
    assert "- 2 × trt-fp16 needs TensorRT" in text
    assert "<code>demo.suite.toml::truncated[fp16]</code>: error" in text
    assert "<code>demo.suite.toml::hang[fp16]</code>: crash" in text
    assert "<code>demo.suite.toml::fixed[fp16]</code>: unexpected pass" in text

    page = (project.path / "artifacts" / "trtcheck" / "report.html").read_text()
    assert "TensorRT was not checked: 2 TensorRT items skipped" in page
    assert "2 failed (1 unexpected pass), 2 errors (1 crash)" in page
    assert "energy overflows fp16" in page
    result.stdout.fnmatch_lines(["trtcheck: TensorRT was not checked: 2 TensorRT items skipped*"])


def test_truncated_model_declared_as_expected_failure_stays_an_error(project):
    suite = project.path / "demo.suite.toml"
    suite.write_text(SUITE.replace('model = "truncated.onnx"\ntargets = ["fp16"]\n',
                                   'model = "truncated.onnx"\ntargets = ["fp16"]\n\n'
                                   '[[case.expected_failure]]\nreason = "known broken"\n'))
    result = project.runpytest("-k", "truncated")
    result.assert_outcomes(errors=1, deselected=7)
    assert result.ret != 0
    result.stdout.fnmatch_lines(["*demo.suite.toml::truncated[[]fp16[]]: *truncated.onnx*"])
    assert "Traceback" not in result.stdout.str()
    assert summary_of(project)["counts"]["xfailed"] == 0


def test_expected_failure_covers_only_the_outputs_it_names(project):
    suite = project.path / "demo.suite.toml"
    declared = SUITE.replace('reason = "energy overflows fp16"',
                             'reason = "energy overflows fp16"\noutputs = ["energy"]')
    suite.write_text(declared)
    selected = ("-k", "heads", "-m", "not tensorrt")
    project.runpytest(*selected).assert_outcomes(xfailed=1, deselected=7)
    # Declaring another output: energy's failure is not covered, so the item fails.
    suite.write_text(declared.replace('outputs = ["energy"]', 'outputs = ["scores"]'))
    result = project.runpytest(*selected)
    result.assert_outcomes(failed=1, deselected=7)
    result.stdout.fnmatch_lines(["*expected failure 'energy overflows fp16' covers outputs "
                                 "scores; energy fail(s) too*"])


def test_report_is_rewritten_when_every_item_errors_or_none_is_selected(project):
    selected = ("-k", "good", "-m", "not tensorrt")
    project.runpytest(*selected).assert_outcomes(passed=1, deselected=7)
    assert summary_of(project)["counts"]["passed"] == 1
    (project.path / "cnn.onnx").write_bytes(b"not a model")
    errored = project.runpytest(*selected)
    errored.assert_outcomes(errors=1, deselected=7)
    assert summary_of(project)["counts"]["errors"] == 1
    assert summary_of(project)["counts"]["passed"] == 0
    page = (project.path / "artifacts" / "trtcheck" / "report.html").read_text()
    assert "FAILED" in page and "cnn.onnx" in page
    none = project.runpytest("-k", "no_such_case")
    assert none.ret == pytest.ExitCode.NO_TESTS_COLLECTED
    counts = summary_of(project)["counts"]
    assert counts["deselected"] == 8 and counts["errors"] == counts["passed"] == 0


def _junit_names(path) -> set[str]:
    return {case.get("name") for case in ElementTree.parse(path).iter("testcase")}


@needs_no_tensorrt
def test_split_jobs_merge_into_the_counts_of_one_run(project, trtcheck_cli, tmp_path):
    whole = project.runpytest()
    expected = pytest_counts(whole)
    folders = []
    for group in (1, 2):
        folder = project.path / f"job{group}"
        project.runpytest("--splits", "2", "--group", str(group),
                          f"--trtcheck-artifacts={folder}", f"--junitxml={folder}/junit.xml")
        folders.append(folder)
    parts = [summary_of_folder(folder) for folder in folders]
    assert all(part["counts"]["passed"] + part["counts"]["errors"] < sum(expected.values())
               for part in parts), "each job ran a share"

    merged = trtcheck_cli("report", "merge", *folders, "-o", tmp_path / "merged")
    assert merged.code == 1, merged.stderr  # the run has failures
    summary = summary_of_folder(tmp_path / "merged")
    assert {k: v for k, v in summary["counts"].items() if v and k in expected} == expected
    assert summary["jobs"] == 2 and summary["tensorrt_not_checked"] == 2
    assert _junit_names(tmp_path / "merged" / "junit.xml") == _junit_names(
        folders[0] / "junit.xml") | _junit_names(folders[1] / "junit.xml")
    assert len(_junit_names(tmp_path / "merged" / "junit.xml")) == 8
    assert "over 2 jobs" in (tmp_path / "merged" / "summary.md").read_text()
    page = (tmp_path / "merged" / "report.html").read_text()
    assert "demo.suite.toml::good[fp16]" in page and "TensorRT was not checked" in page

    # A job that left nothing is an error, not a smaller run.
    partial = trtcheck_cli("report", "merge", folders[0], "-o", tmp_path / "partial")
    assert partial.code == 2
    assert partial.stderr.strip().splitlines() == [
        "trtcheck: error: --splits 2: group(s) 2 missing; give each job's artifacts folder "
        "once (a job that did not finish left no summary.json)"]
    empty = trtcheck_cli("report", "merge", tmp_path, "-o", tmp_path / "x")
    assert empty.code == 2 and "summary.json: missing" in empty.stderr


def summary_of_folder(folder) -> dict:
    return json.loads((folder / "summary.json").read_text())


# --- where goldens and reports go ---------------------------------------------------------------

FOLDER_SUITE = """
[targets.fp16]
backend = "onnxrt-fp16"

[[case]]
name = "cnn"
model = "cnn.onnx"

[case.tolerance]
atol = 0.01
rtol = 0.0
"""


@pytest.fixture
def two_folders(pytester):
    """Two `models.suite.toml` in different folders, with different models under one case name."""
    for folder, seed in (("a", 3), ("b", 4)):
        (pytester.path / folder).mkdir()
        onnx.save(cnn(seed=seed), str(pytester.path / folder / "cnn.onnx"))
        (pytester.path / folder / "models.suite.toml").write_text(FOLDER_SUITE)
    pytester.makeini("[pytest]\n")
    return pytester


def test_same_file_name_in_two_folders_never_shares_goldens(two_folders):
    root = two_folders.path
    two_folders.runpytest("--trtcheck-update-golden-new-only").assert_outcomes(failed=2)
    golden_a, golden_b = root / "golden" / "a" / "models", root / "golden" / "b" / "models"
    assert (golden_a / "cnn.npz").is_file() and (golden_b / "cnn.npz").is_file()
    two_folders.runpytest().assert_outcomes(passed=2)
    assert (root / "artifacts" / "trtcheck" / "a" / "models" / "cnn" / "fp16.json").is_file()
    assert (root / "artifacts" / "trtcheck" / "b" / "models" / "cnn" / "fp16.json").is_file()
    # Updating one suite's goldens leaves the other's alone.
    before = (golden_b / "cnn.npz").read_bytes()
    two_folders.runpytest("a", "--trtcheck-update-golden").assert_outcomes(failed=1)
    assert (golden_b / "cnn.npz").read_bytes() == before
    two_folders.runpytest().assert_outcomes(passed=2)


def test_one_declared_name_for_two_suites_is_an_error(two_folders):
    for folder in ("a", "b"):
        path = two_folders.path / folder / "models.suite.toml"
        path.write_text('[suite]\nname = "models"\n' + FOLDER_SUITE)
    result = two_folders.runpytest("--trtcheck-update-golden-new-only")
    result.assert_outcomes(failed=1, errors=1)
    result.stdout.fnmatch_lines([
        f"*{two_folders.path / 'b' / 'models.suite.toml'}: its goldens would be "
        f"{two_folders.path / 'golden' / 'models'}, which {two_folders.path / 'a'}"
        "*models.suite.toml already uses (key 'models', from [[]suite[]] name = \"models\"); "
        "give one of them another [[]suite[]] name"])
    assert (two_folders.path / "golden" / "models" / "cnn.npz").is_file()


def test_golden_dir_ini_and_any_working_directory(two_folders, monkeypatch):
    root = two_folders.path
    two_folders.makeini("[pytest]\ntrtcheck_golden_dir = refs/onnx\n"
                        "trtcheck_artifacts_dir = out\n")
    two_folders.runpytest("--trtcheck-update-golden-new-only").assert_outcomes(failed=2)
    assert (root / "refs" / "onnx" / "a" / "models" / "cnn.npz").is_file()
    assert not (root / "golden").exists()
    # From a subfolder (pytest finds the ini above it): the same goldens, the same reports.
    monkeypatch.chdir(root / "b")
    result = two_folders.runpytest("models.suite.toml")
    result.assert_outcomes(passed=1)
    assert (root / "out" / "summary.json").is_file() and not (root / "b" / "out").exists()
    assert not (root / "b" / "refs").exists()


def test_summary_file_with_a_space_cannot_move_the_rootdir(two_folders, tmp_path_factory):
    elsewhere = tmp_path_factory.mktemp("runner") / "step_summary"
    elsewhere.write_text("")  # like $GITHUB_STEP_SUMMARY: it exists before the step
    spaced = two_folders.runpytest("--trtcheck-summary", str(elsewhere))
    assert spaced.ret == pytest.ExitCode.USAGE_ERROR
    spaced.stderr.fnmatch_lines([
        f"ERROR: --trtcheck-summary {elsewhere}: pytest read {elsewhere} as a test path when "
        f"it chose its rootdir (* instead of {two_folders.path}), since it reads its own "
        f"options before trtcheck's; write --trtcheck-summary={elsewhere}"])
    assert elsewhere.read_text() == ""
    two_folders.runpytest("--trtcheck-update-golden-new-only")
    joined = two_folders.runpytest(f"--trtcheck-summary={elsewhere}")
    joined.assert_outcomes(passed=2)
    assert "**PASSED**: 0 failed, 0 errors" in elsewhere.read_text()
    # Inside the project a space moves nothing, so it is accepted.
    inside = two_folders.path / "summary.md"
    inside.write_text("")
    two_folders.runpytest("--trtcheck-summary", str(inside)).assert_outcomes(passed=2)
    assert "**PASSED**" in inside.read_text()
