"""Suite files: the schema, strict validation, and tolerance resolution."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from trtcheck.suite import SuiteError, load_suite
from zoo.build import cnn

pytest_plugins = ["pytester"]

HEADER = """
[targets.fp16]
backend = "onnxrt-fp16"

[targets.trt-fp16]
backend = "trt-fp16"
"""


@pytest.fixture
def suite_dir(tmp_path: Path, save_model) -> Path:
    save_model(cnn(), "cnn.onnx")
    return tmp_path


def write(suite_dir: Path, body: str, name: str = "s.suite.toml") -> Path:
    path = suite_dir / name
    path.write_text(HEADER + body)
    return path


def test_full_case_and_tolerance_precedence(suite_dir):
    path = write(suite_dir, """
[defaults]
inputs.float_range = [-1.0, 1.0]

[defaults.tolerance]
atol = 0.5
rtol = 0.5
outputs.logits = { atol = 0.4 }

[[case]]
name = "cnn"
model = "cnn.onnx"
inputs.seed = 7
markers = ["smoke"]

[case.tolerance]
rtol = 0.0
measured = "max abs error 0.01 over seeds 1-5"

[case.tolerance_by_target.fp16]
atol = 0.05
outputs.logits = { atol = 0.06, check_error_stat = "max" }

[[case.expected_failure]]
targets = ["trt-fp16"]
reason = "known TensorRT issue"
""")
    suite = load_suite(path)
    assert suite.name == "s" and list(suite.targets) == ["fp16", "trt-fp16"]
    (case,) = suite.cases
    assert case.error is None
    assert case.inputs.seed == 7 and case.inputs.float_range == (-1.0, 1.0)
    assert case.targets == ("fp16", "trt-fp16") and case.markers == ("smoke",)
    fp16 = case.tolerances_for(suite.targets["fp16"]).resolve("fp16")
    assert fp16.for_output("logits").atol == 0.06
    assert fp16.for_output("logits").check_error_stat == "max"
    assert fp16.for_output("logits").rtol == 0.0
    assert fp16.default.atol == 0.05
    trt = case.tolerances_for(suite.targets["trt-fp16"]).resolve("fp16")
    # The suite default's per-output atol still applies where the case sets none for the output.
    assert trt.for_output("logits").atol == 0.4 and trt.default.rtol == 0.0
    assert case.expected_failure_for(suite.targets["trt-fp16"]).reason == "known TensorRT issue"
    assert case.expected_failure_for(suite.targets["fp16"]) is None
    assert case.measurements_for(suite.targets["fp16"]) == ["max abs error 0.01 over seeds 1-5"]


@pytest.mark.parametrize("body, fragments", [
    ('[[case]]\nname = "a"\nmodel = "cnn.onnx"\ntolerence = {}\n',
     ["case 'a'", "unknown key 'tolerence'", "did you mean 'tolerance'"]),
    ('[[case]]\nname = "a"\nmodel = "missing.onnx"\n',
     ["case 'a'", "missing.onnx", "does not exist", "relative to the suite file"]),
    ('[[case]]\nname = "a"\nmodel = "cnn.onnx"\ntargets = ["fp61"]\n',
     ["target 'fp61'", "did you mean 'fp16'"]),
    ('[[case]]\nname = "a"\nmodel = "cnn.onnx"\ntolerance.atol = -1\n',
     ["'tolerance.atol' = -1", "must be a finite number >= 0"]),
    ('[[case]]\nname = "a"\nmodel = "cnn.onnx"\ntolerance.atol = "small"\n',
     ["'tolerance.atol' must be a number", "str"]),
    ('[[case]]\nname = "a"\nmodel = "cnn.onnx"\ntolerance.min_cosine = 1.5\n',
     ["min_cosine", "between -1 and 1"]),
    ('[[case]]\nname = "a"\nmodel = "cnn.onnx"\ntolerance.check_error_stat = "worst"\n',
     ["check_error_stat 'worst'", "elemwise"]),
    ('[[case]]\nname = "a"\nmodel = "pypi:foo==1.0#foo/m.onnx"\n',
     ["needs model_sha256"]),
    ('[[case]]\nname = "a"\nmodel = "cnn.onnx"\n[[case.expected_failure]]\nreason = ""\n',
     ["expected_failure.reason is empty"]),
])
def test_case_errors_name_file_line_key_and_fix(suite_dir, body, fragments):
    path = write(suite_dir, body + '\n[[case]]\nname = "good"\nmodel = "cnn.onnx"\n')
    bad, good = load_suite(path).cases
    assert good.error is None, "one bad case must not stop the others"
    assert bad.error is not None
    assert bad.error.startswith(f"{path}:")
    for fragment in fragments:
        assert fragment in bad.error, bad.error


def test_case_error_line_number(suite_dir):
    path = write(suite_dir, '\n[[case]]\nname = "a"\nmodel = "nope.onnx"\n')
    (case,) = load_suite(path).cases
    line = HEADER.count("\n") + 3
    assert case.line == line and case.error.startswith(f"{path}:{line}:")


@pytest.mark.parametrize("body, fragment", [
    ("[[case]\nname = 1", "not valid TOML"),
    ('[tragets.x]\nbackend = "onnxrt"\n', "did you mean 'targets'"),
    ('[targets.x]\nbackend = "tensorrt"\n', "backend 'tensorrt' is unknown"),
    ('[[case]]\nname = "a"\nmodel = "cnn.onnx"\n[[case]]\nname = "a"\nmodel = "cnn.onnx"\n',
     "used twice"),
])
def test_file_errors(suite_dir, body, fragment):
    path = write(suite_dir, body)
    with pytest.raises(SuiteError, match=fragment):
        load_suite(path)


def test_model_source_forms(suite_dir):
    path = write(suite_dir, """
[[case]]
name = "wheel"
model = "pypi:rapidocr-onnxruntime==1.4.4#rapidocr_onnxruntime/models/x.onnx"
model_sha256 = "{}"

[[case]]
name = "package"
model = "package:onnx#backend/test/data/light/light_squeezenet.onnx"

[[case]]
name = "url"
model = "https://example.org/m.onnx"
model_sha256 = "{}"
""".format("a" * 64, "b" * 64))
    wheel, package, url = load_suite(path).cases
    assert (wheel.model.kind, wheel.model.location, wheel.model.member) == (
        "pypi", "rapidocr-onnxruntime==1.4.4", "rapidocr_onnxruntime/models/x.onnx")
    assert (package.model.kind, package.model.location) == ("package", "onnx")
    assert (url.model.kind, url.model.sha256) == ("url", "b" * 64)


def test_bundled_suites_are_valid():
    for path in sorted((Path(__file__).parents[1] / "suites").glob("*.suite.toml")):
        suite = load_suite(path)
        assert suite.cases, path
        for case in suite.cases:
            assert case.error is None, case.error


# Every numeric key: nan and inf would switch a check off, negatives make no sense. Each body puts
# the bad value on the line after `[[case]]`, `name` and `model`, so the error must point there.
_KEYS = [
    ("tolerance.atol = {}", "tolerance.atol", ["nan", "inf", "-inf", "-1e-3"]),
    ("tolerance.rtol = {}", "tolerance.rtol", ["nan", "inf", "-1"]),
    ("tolerance.error_quantile = {}", "tolerance.error_quantile", ["nan", "inf", "-0.5", "1.5"]),
    ("tolerance.min_cosine = {}", "tolerance.min_cosine", ["nan", "inf", "-inf", "-2"]),
    ("tolerance.min_snr = {}", "tolerance.min_snr", ["nan", "inf", "-inf"]),
    ("tolerance.outputs.logits = {{ atol = {} }}", "tolerance.outputs.logits.atol",
     ["nan", "inf", "-1"]),
    ("tolerance_by_target.fp16 = {{ rtol = {} }}", "tolerance_by_target.fp16.rtol",
     ["nan", "inf", "-1"]),
    ("golden = {{ atol = {} }}", "golden.atol", ["nan", "inf", "-1"]),
    ("golden.rtol = {}", "golden.rtol", ["nan", "inf", "-1"]),
    ("timeout = {}", "timeout", ["nan", "inf", "-1", "0"]),
    ("inputs.seed = {}", "inputs.seed", ["-1", "4294967296"]),
    ("inputs.float_range = [0, {}]", "inputs.float_range[1]", ["nan", "inf"]),
]


@pytest.mark.parametrize("template, key, value", [
    (template, key, value) for template, key, values in _KEYS for value in values])
def test_no_value_disables_a_check(suite_dir, template, key, value):
    body = '\n[[case]]\nname = "a"\nmodel = "cnn.onnx"\n' + template.format(value) + "\n"
    path = write(suite_dir, body)
    (case,) = load_suite(path).cases
    line = HEADER.count("\n") + 5
    assert case.error is not None, f"{key} = {value} was accepted"
    assert case.error.startswith(f"{path}:{line}: case 'a': '{key}' = "), case.error
    assert "must be a finite number" in case.error
    assert len(case.error.splitlines()) == 1


def test_bad_key_in_a_subtable_points_at_its_line(suite_dir):
    path = write(suite_dir, """
[[case]]
model = "cnn.onnx"
tolerance.atol = 0.1
name = "a"

[case.tolerance.outputs.logits]
rtol = 0.1

[case.golden]
rtol = 1e-5
atol = inf
""")
    (case,) = load_suite(path).cases
    line = HEADER.count("\n") + 12
    assert case.error.startswith(f"{path}:{line}: case 'a': 'golden.atol' = inf: "), case.error
    assert "nan or inf would switch the check off" in case.error


@pytest.mark.parametrize("body, key, line", [
    ("[defaults.tolerance]\nrtol = 0.1\natol = nan\n", "defaults.tolerance.atol", 3),
    ("[defaults]\ninputs.float_range = [-inf, 1.0]\n", "inputs.float_range[0]", 2),
    ("[suite]\nname = \"x\"\ntimeout = inf\n", "suite.timeout", 3),
    ("[suite]\ntimeout = -5\n", "suite.timeout", 2),
])
def test_bad_file_level_value_names_file_line_and_key(suite_dir, body, key, line):
    path = suite_dir / "s.suite.toml"
    path.write_text(body + HEADER)
    with pytest.raises(SuiteError) as info:
        load_suite(path)
    assert str(info.value).startswith(f"{path}:{line}: '{key}' = "), str(info.value)


def test_good_values_are_kept(suite_dir):
    path = suite_dir / "s.suite.toml"
    path.write_text('[suite]\nname = "detectors-v2.1"\ntimeout = 90\n' + HEADER + """
[[case]]
name = "inherits"
model = "cnn.onnx"
golden = { atol = 0, rtol = 1e-3 }
inputs.seed = 4294967295

[[case]]
name = "own"
model = "cnn.onnx"
timeout = 2.5
tolerance = { atol = 0, rtol = 0, min_snr = -10, min_cosine = -1, error_quantile = 1 }
""")
    suite = load_suite(path)
    inherits, own = suite.cases
    assert suite.name == "detectors-v2.1"
    assert inherits.error is None and own.error is None, (inherits.error, own.error)
    assert (inherits.timeout, own.timeout) == (90.0, 2.5)
    assert (inherits.golden_atol, inherits.golden_rtol) == (0.0, 1e-3)
    assert inherits.inputs.seed == 2**32 - 1
    tol = own.tolerances_for(suite.targets["fp16"]).resolve("fp16").default
    assert (tol.atol, tol.min_snr, tol.min_cosine, tol.error_quantile) == (0.0, -10.0, -1.0, 1.0)
    assert load_suite(write(suite_dir, '[[case]]\nname = "a"\nmodel = "cnn.onnx"\n')).cases[
        0].timeout is None


@pytest.mark.parametrize("value", ['"../.."', '".."', '"a/b"', '"a\\\\b"', '""', '".hidden"',
                                   '"two words"', "3", "true", '["x"]'])
def test_suite_name_must_be_a_plain_name(suite_dir, value):
    path = suite_dir / "s.suite.toml"
    path.write_text(f'# a comment\n[suite]\ndescription = "d"\nname = {value}\n' + HEADER)
    with pytest.raises(SuiteError) as info:
        load_suite(path)
    message = str(info.value)
    assert message.startswith(f"{path}:4: [suite] name = "), message
    assert "letters, digits" in message and len(message.splitlines()) == 1


# --- int8/fp8 targets: calibration, calibration_cache, calibration_method, target_model ---------

QUANT_HEADER = """
[targets.int8]
backend = "onnxrt-int8"

[targets.fp8]
backend = "onnxrt-fp8"

[targets.fp16]
backend = "onnxrt-fp16"
"""


@pytest.fixture
def quant_dir(suite_dir: Path) -> Path:
    """cnn.onnx, a calibration folder, a Polygraphy inputs JSON, a cache file, a Q/DQ model."""
    (suite_dir / "calib").mkdir()
    np.savez(suite_dir / "calib" / "a.npz", image=np.zeros((1, 3, 32, 32), np.float32))
    (suite_dir / "calib.json").write_text("[]")
    (suite_dir / "model.cache").write_text("TRT-8601-EntropyCalibration2\n")
    (suite_dir / "qdq.onnx").write_bytes((suite_dir / "cnn.onnx").read_bytes())
    return suite_dir


def write_quant(folder: Path, body: str) -> Path:
    path = folder / "q.suite.toml"
    path.write_text(QUANT_HEADER + body)
    return path


def test_quant_keys_are_parsed_and_inherited(quant_dir):
    path = write_quant(quant_dir, """
[defaults]
calibration = "calib"
calibration_method = "entropy"
targets = ["int8"]

[[case]]
name = "inherits"
model = "cnn.onnx"

[[case]]
name = "json"
model = "cnn.onnx"
calibration = "calib.json"
calibration_method = "percentile"

[[case]]
name = "cache"
model = "cnn.onnx"
calibration_cache = "model.cache"

[[case]]
name = "given"
model = "cnn.onnx"
target_model = "qdq.onnx"
targets = ["int8", "fp8"]
""")
    inherits, json_set, cache, given = load_suite(path).cases
    assert [c.error for c in (inherits, json_set, cache, given)] == [None] * 4
    assert inherits.quant.calibration_data == quant_dir / "calib"
    assert inherits.quant.method == "entropy"
    assert (json_set.quant.calibration_data, json_set.quant.method) == (
        quant_dir / "calib.json", "percentile")
    # A case's source replaces the defaults' (a cache or a Q/DQ model is no calibration set).
    assert (cache.quant.calibration_cache, cache.quant.calibration_data) == (
        quant_dir / "model.cache", None)
    assert (given.quant.target_model, given.quant.calibration_data) == (
        quant_dir / "qdq.onnx", None)
    assert not any(c.calibrates_on_synthetic_feeds for c in (inherits, json_set, cache, given))


def test_quant_keys_default_to_synthetic_calibration(quant_dir):
    (case,) = load_suite(write_quant(quant_dir, '[[case]]\nname = "a"\nmodel = "cnn.onnx"\n')).cases
    assert case.error is None and case.calibrates_on_synthetic_feeds
    assert case.quant.method == "minmax"


# The key at fault is on line 5 of its case (after `[[case]]`, `name`, `model`, `targets`).
@pytest.mark.parametrize("lines, fragments", [
    (['calibration = "nowhere"'], ["calibration", "nowhere does not exist",
                                   "a folder of .npz files", "relative to the suite file"]),
    (['calibration = "model.cache"'], ["is neither a folder nor a .json"]),
    (['calibration = 3'], ["'calibration' must be a string"]),
    (['calibration_cache = "missing.cache"'], ["missing.cache does not exist",
                                               "TensorRT calibration cache"]),
    (['target_model = "missing.onnx"'], ["missing.onnx does not exist", "Q/DQ .onnx model"]),
    (['calibration_method = 7'], ["'calibration_method' must be a string"]),
    (['calibration_method = "kl"'], ["calibration_method 'kl' is not one of minmax, entropy, "
                                     "percentile"]),
    (['calibration_cache = "model.cache"', 'calibration = "calib"'],
     ["give calibration", "or calibration_cache", "not both"]),
    (['calibration = "calib"', 'target_model = "qdq.onnx"'],
     ["target_model is quantized already", "'calibration'"]),
])
def test_bad_quant_key_names_file_line_and_fix(quant_dir, lines, fragments):
    body = '[[case]]\nname = "a"\nmodel = "cnn.onnx"\ntargets = ["int8"]\n' + "\n".join(
        lines) + "\n"
    bad_line = QUANT_HEADER.count("\n") + 5
    path = write_quant(quant_dir, body + '\n[[case]]\nname = "good"\nmodel = "cnn.onnx"\n')
    bad, good = load_suite(path).cases
    assert good.error is None, "one bad case must not stop the others"
    assert bad.error is not None and len(bad.error.splitlines()) == 1
    assert bad.error.startswith(f"{path}:{bad_line}: case 'a': "), bad.error
    for fragment in fragments:
        assert fragment in bad.error, bad.error


@pytest.mark.parametrize("targets, line, fragments", [
    ('["fp16"]', 'calibration = "calib"',
     ["'calibration' is for int8/fp8 targets", "(fp16)", "add an int8/fp8 target"]),
    ('["int8", "fp8"]', 'calibration_method = "entropy"',
     ["calibration_method 'entropy' is for int8", "'fp8' is fp8", "minmax"]),
])
def test_quant_keys_must_fit_the_case_targets(quant_dir, targets, line, fragments):
    path = write_quant(quant_dir, f'[[case]]\nname = "a"\nmodel = "cnn.onnx"\n'
                                  f'targets = {targets}\n{line}\n')
    (case,) = load_suite(path).cases
    assert case.error is not None, "accepted"
    assert case.error.startswith(f"{path}:{QUANT_HEADER.count(chr(10)) + 5}: case 'a': ")
    for fragment in fragments:
        assert fragment in case.error, case.error


def test_defaults_quant_keys_are_checked_and_apply_only_to_quantized_targets(quant_dir):
    path = write_quant(quant_dir, '[defaults]\ncalibration = "calib"\n'
                                  '[[case]]\nname = "a"\nmodel = "cnn.onnx"\ntargets = ["fp16"]\n')
    (case,) = load_suite(path).cases
    assert case.error is None, "a default calibration set meets cases without int8 targets"
    path = write_quant(quant_dir, '[defaults]\ncalibration_method = "mse"\n')
    with pytest.raises(SuiteError) as info:
        load_suite(path)
    line = QUANT_HEADER.count("\n") + 2
    assert str(info.value).startswith(f"{path}:{line}: calibration_method 'mse' is not one of")
    path = write_quant(quant_dir, '[defaults]\ncalibration = "gone"\n')
    with pytest.raises(SuiteError, match="gone does not exist"):
        load_suite(path)


QUANT_SUITE = """
[targets.int8]
backend = "onnxrt-int8"

[targets.fp16]
backend = "onnxrt-fp16"

[defaults]
targets = ["int8"]

[[case]]
name = "cnn"
model = "cnn.onnx"
targets = ["int8", "fp16"]
calibration = "calib"

[[case]]
name = "cnn_strict"
model = "cnn.onnx"
calibration = "calib"
tolerance = { min_snr = 80.0 }

[[case]]
name = "outlier"
model = "outlier.onnx"
calibration = "calib"

[[case.expected_failure]]
precisions = ["int8"]
reason = "one channel 1000x the others sets the int8 scale"

[[case]]
name = "uncalibrated"
model = "cnn.onnx"
calibration_method = "minmax"
"""


def test_int8_suite_end_to_end(pytester):
    """cnn passes int8 calibrated on a set, the planted outlier is its expected failure, an SNR
    floor above what int8 reaches fails, and a case without a set says it was synthetic."""
    import json

    import onnx

    from zoo.build import channel_outlier_cnn

    onnx.save(cnn(), str(pytester.path / "cnn.onnx"))
    onnx.save(channel_outlier_cnn(), str(pytester.path / "outlier.onnx"))
    (pytester.path / "calib").mkdir()
    rng = np.random.default_rng(5)
    for index in range(4):
        np.savez(pytester.path / "calib" / f"{index}.npz",
                 image=rng.uniform(0, 1, (1, 3, 32, 32)).astype(np.float32))
    pytester.makefile(".suite.toml", q=QUANT_SUITE)
    pytester.runpytest("--trtcheck-update-golden-new-only")
    result = pytester.runpytest("-rA")
    result.assert_outcomes(passed=3, failed=1, xfailed=1)
    result.stdout.fnmatch_lines(["*logits: SNR * dB < 80 dB*",
                                 "PASSED q.suite.toml::cnn[[]int8[]]",
                                 "PASSED q.suite.toml::cnn[[]fp16[]]",
                                 "XFAIL q.suite.toml::outlier[[]int8[]]*1000x*",
                                 "FAILED q.suite.toml::cnn_strict[[]int8[]]*"])
    reports = pytester.path / "artifacts" / "trtcheck" / "q"

    def report(case: str, target: str = "int8") -> dict:
        return json.loads((reports / case / f"{target}.json").read_text())

    int8, fp16 = report("cnn"), report("cnn", "fp16")
    # Only the int8 target runs the Q/DQ model; the fp16 target runs the model itself.
    assert ".int8." in int8["comparison"]["polygraphy_command"]
    assert ".int8." not in fp16["comparison"]["polygraphy_command"]
    assert not any("synthetic" in note for note in int8["notes"])
    assert report("cnn_strict")["comparison"]["outputs"][0]["tolerance"]["min_snr"] == 80.0
    assert any("calibrated on synthetic feeds" in note and "calibration = " in note
               for note in report("uncalibrated")["notes"])
