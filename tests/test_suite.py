"""Suite files: the schema, strict validation, and tolerance resolution."""

from __future__ import annotations

from pathlib import Path

import pytest

from trtcheck.suite import SuiteError, load_suite
from zoo.build import cnn

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
     ["'atol' = -1 is impossible", ">= 0"]),
    ('[[case]]\nname = "a"\nmodel = "cnn.onnx"\ntolerance.atol = "small"\n',
     ["'atol' must be a number", "str"]),
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
