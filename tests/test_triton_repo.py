"""`trtcheck triton export` and `trtcheck triton check` on repositories built here.

Good repositories are exported from the zoo and small models built in code, and must check clean.
Each broken repository plants one known misconfiguration (issue 13's list and a few more Triton
refuses at load time) and must produce exactly that finding, at the right file and line.
"""

from __future__ import annotations

import json
import shlex
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from google.protobuf import text_format
from onnx import TensorProto, helper

from trtcheck.deploy.cli_triton import run_triton
from trtcheck.deploy.triton_check import CheckResult, check_repository
from trtcheck.deploy.triton_common import model_config_pb2, read_sidecar, sidecar_path
from trtcheck.deploy.triton_export import ExportResult, export_model
from trtcheck.errors import UsageError
from zoo.build import cnn

ZOO = Path(__file__).resolve().parent.parent / "zoo"


def _relu_model(dtype: int, shape: list) -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])], "relu",
        [helper.make_tensor_value_info("x", dtype, shape)],
        [helper.make_tensor_value_info("y", dtype, shape)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _saved(model: onnx.ModelProto, path: Path, external: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path), save_as_external_data=external, all_tensors_to_one_file=True,
              location=f"{path.name}.data", size_threshold=0)
    return path


def export(repo: Path, model: str | Path, **options) -> ExportResult:
    source = ZOO / f"{model}.onnx" if isinstance(model, str) else model
    return export_model(source, repo, **options)


def placeholder_plan(result: ExportResult) -> None:
    """Stands in for a built engine: check reads plans only through TensorRT, absent here."""
    assert result.plan_path is not None
    result.plan_path.write_bytes(b"not an engine; checked against its sidecar")


def check(repo: Path) -> CheckResult:
    return check_repository(repo, use_tensorrt=False)


def edit(path: Path, old: str, new: str, count: int = 1) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}:\n{text}"
    path.write_text(text.replace(old, new, count))


def line_of(path: Path, needle: str) -> int:
    return next(number for number, line in enumerate(path.read_text().splitlines(), 1)
                if needle in line)


def ensemble_config(model: str = "cnn", key: str = "image", extra_output: str = "") -> str:
    return f"""name: "pipeline"
platform: "ensemble"
max_batch_size: 4
input [ {{ name: "IMAGE", data_type: TYPE_FP32, dims: [3, 32, 32] }} ]
output [
  {{ name: "LOGITS", data_type: TYPE_FP32, dims: [10] }}{extra_output}
]
ensemble_scheduling {{
  step [
    {{
      model_name: "{model}"
      model_version: -1
      input_map {{ key: "{key}" value: "IMAGE" }}
      output_map {{ key: "logits" value: "LOGITS" }}
    }}
  ]
}}
"""


def ensemble_repo(repo: Path, text: str) -> Path:
    export(repo, "cnn_dynamic_batch", name="cnn")
    (repo / "pipeline" / "1").mkdir(parents=True)
    (repo / "pipeline" / "config.pbtxt").write_text(text)
    return repo / "pipeline" / "config.pbtxt"


# -- good repositories ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def good_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("good")
    repo = root / "repo"
    export(repo, "demo")
    export(repo, "cnn_dynamic_batch", name="cnn")
    export(repo, "transformer_block")
    export(repo, "detection_head")
    placeholder_plan(export(repo, "cnn_dynamic_batch", name="cnn_trt", platform="tensorrt",
                            max_batch=16))
    placeholder_plan(export(repo, "transformer_block", name="transformer_trt",
                            platform="tensorrt"))
    placeholder_plan(export(repo, _saved(_relu_model(TensorProto.FLOAT, ["batch", "seq", 8]),
                                         root / "seq.onnx"),
                            platform="tensorrt", shapes={"x": (1, 64, 8)}))
    export(repo, _saved(_relu_model(TensorProto.FLOAT16, ["batch", 8]), root / "half.onnx"))
    export(repo, _saved(cnn(batch="batch"), root / "ext" / "cnn_ext.onnx", external=True))
    (repo / "pipeline" / "1").mkdir(parents=True)
    (repo / "pipeline" / "config.pbtxt").write_text(ensemble_config())
    return repo


def test_good_repository_checks_clean(good_repo: Path) -> None:
    result = check(good_repo)
    assert result.findings == [], result.lines()
    assert result.exit_code == 0
    assert len(result.models) == 10
    assert result.to_json()["errors"] == 0


def test_zoo_batching_follows_the_models_first_dimension(good_repo: Path) -> None:
    def config(name: str):
        return text_format.Parse((good_repo / name / "config.pbtxt").read_text(),
                                 model_config_pb2().ModelConfig())

    dynamic, fixed = config("cnn"), config("demo")
    assert dynamic.max_batch_size == 4 and dynamic.HasField("dynamic_batching")
    assert list(dynamic.input[0].dims) == [3, 32, 32] and list(dynamic.output[0].dims) == [10]
    assert fixed.max_batch_size == 0 and not fixed.HasField("dynamic_batching")
    assert list(fixed.input[0].dims) == [1, 3, 32, 32]
    assert config("transformer_block").max_batch_size == 0
    assert config("half").input[0].data_type == model_config_pb2().TYPE_FP16
    assert config("cnn_trt").platform == "tensorrt_plan"


def test_exported_model_with_external_data_runs_like_the_source(good_repo: Path) -> None:
    folder = good_repo / "cnn_ext" / "1"
    assert (folder / "model.onnx.data").is_file()
    source = good_repo.parent / "ext" / "cnn_ext.onnx"
    feed = {"image": np.random.default_rng(0).standard_normal((2, 3, 32, 32), np.float32)}
    served = ort.InferenceSession(str(folder / "model.onnx")).run(None, feed)
    expected = ort.InferenceSession(str(source)).run(None, feed)
    np.testing.assert_array_equal(served[0], expected[0])


def test_tensorrt_export_profile_commands_and_sidecar(tmp_path: Path) -> None:
    model = _saved(_relu_model(TensorProto.FLOAT, ["batch", "seq", 8]), tmp_path / "seq.onnx")
    with pytest.raises(UsageError, match=r"--input-shapes x:1x128x8"):
        export(tmp_path / "repo", model, platform="tensorrt")
    result = export(tmp_path / "repo", model, platform="tensorrt", max_batch=8,
                    shapes={"x": (1, 64, 8)})
    assert result.profile == {"x": ((1, 64, 8), (8, 64, 8), (8, 64, 8))}
    trtexec = shlex.split(result.build_commands["trtexec"])
    assert "--minShapes=x:1x64x8" in trtexec and "--maxShapes=x:8x64x8" in trtexec
    assert f"--saveEngine={result.plan_path.absolute()}" in trtexec
    # Polygraphy's own parser reads the shapes of the polygraphy command.
    from polygraphy.tools.args import util as polygraphy_args

    words = shlex.split(result.build_commands["polygraphy"])
    for flag, index in (("--trt-min-shapes", 0), ("--trt-opt-shapes", 1),
                        ("--trt-max-shapes", 2)):
        meta = polygraphy_args.parse_meta([words[words.index(flag) + 1]], includes_dtype=False)
        assert tuple(meta["x"].shape) == result.profile["x"][index]
    sidecar = read_sidecar(sidecar_path(result.plan_path))
    assert sidecar.profile_max_batch() == 8
    assert [s.shape for s in sidecar.inputs] == [(-1, -1, 8)]
    assert result.plan_path is not None and not result.plan_path.exists()
    assert result.build_commands["trtexec"] in result.config_text  # kept as a comment


def test_export_never_replaces_a_model_folder_unless_forced(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    export(repo, "cnn_dynamic_batch", name="cnn")
    with pytest.raises(UsageError, match="already exists.*--force"):
        export(repo, "cnn_dynamic_batch", name="cnn")
    (repo / "cnn" / "stale.txt").write_text("from an older export")
    export(repo, "cnn_dynamic_batch", name="cnn", max_batch=2, force=True)
    assert not (repo / "cnn" / "stale.txt").exists()
    assert "max_batch_size: 2" in (repo / "cnn" / "config.pbtxt").read_text()
    assert sorted(p.name for p in repo.iterdir()) == ["cnn"]  # no staging folder left behind


def test_export_refusals(tmp_path: Path) -> None:
    not_a_folder = tmp_path / "repo.txt"
    not_a_folder.write_text("")
    with pytest.raises(UsageError, match=r"repo\.txt: is a file"):
        export(not_a_folder, "demo")
    with pytest.raises(UsageError, match=r"--max-batch 8: demo\.onnx has no dynamic first "
                                         r"dimension on 'image' \[1, 3, 32, 32\]"):
        export(tmp_path / "repo", "demo", max_batch=8)
    with pytest.raises(UsageError, match="--platform"):
        export(tmp_path / "repo", "demo", platform="tflite")
    assert not (tmp_path / "repo").exists() or not any((tmp_path / "repo").iterdir())


# -- broken repositories: one planted misconfiguration each -----------------------------------

Case = Callable[[Path], tuple[Path, str, int | None]]


def plan_max_batch_beyond_profile(repo: Path) -> tuple[Path, str, int | None]:
    """Server #7056: max_batch_size 16 against an engine built for batches up to 1."""
    placeholder_plan(export(repo, "cnn_dynamic_batch", name="cnn", platform="tensorrt",
                            max_batch=1))
    config = repo / "cnn" / "config.pbtxt"
    edit(config, "max_batch_size: 1\n", "max_batch_size: 16\n")
    return config, "max-batch-profile", line_of(config, "max_batch_size")


def batching_a_fixed_batch_model(repo: Path) -> tuple[Path, str, int | None]:
    export(repo, "demo")
    config = repo / "demo" / "config.pbtxt"
    edit(config, 'name: "demo"\n', 'name: "demo"\nmax_batch_size: 8\n')
    edit(config, "dims: [1, ", "dims: [", count=3)
    return config, "batch-dim", line_of(config, "max_batch_size")


def fp32_config_for_fp16_model(repo: Path) -> tuple[Path, str, int | None]:
    """Server #2377: TYPE_FP32 in the config, fp16 I/O in the model."""
    export(repo, _saved(_relu_model(TensorProto.FLOAT16, ["batch", 8]), repo.parent / "h.onnx"))
    config = repo / "h" / "config.pbtxt"
    edit(config, "TYPE_FP16", "TYPE_FP32")
    return config, "dtype", line_of(config, "TYPE_FP32")


def input_renamed(repo: Path) -> tuple[Path, str, int | None]:
    export(repo, "cnn_dynamic_batch", name="cnn")
    config = repo / "cnn" / "config.pbtxt"
    edit(config, 'name: "image"', 'name: "img"')
    return config, "name-mismatch", line_of(config, '"img"')


def inputs_swapped(repo: Path) -> tuple[Path, str, int | None]:
    export(repo, "detection_head")
    config = repo / "detection_head" / "config.pbtxt"
    edit(config, '"coarse"', '"TMP"')
    edit(config, '"fine"', '"coarse"')
    edit(config, '"TMP"', '"fine"')
    return config, "swapped", line_of(config, "input {")


def wrong_dims(repo: Path) -> tuple[Path, str, int | None]:
    export(repo, "cnn_dynamic_batch", name="cnn")
    config = repo / "cnn" / "config.pbtxt"
    edit(config, "dims: [3, 32, 32]", "dims: [3, 64, 64]")
    return config, "dims", line_of(config, "[3, 64, 64]")


def missing_model_file(repo: Path) -> tuple[Path, str, int | None]:
    export(repo, "cnn_dynamic_batch", name="cnn")
    (repo / "cnn" / "1" / "model.onnx").unlink()
    return repo / "cnn" / "config.pbtxt", "model-file", 2


def missing_version_folder(repo: Path) -> tuple[Path, str, int | None]:
    export(repo, "cnn_dynamic_batch", name="cnn")
    shutil.rmtree(repo / "cnn" / "1")
    return repo / "cnn" / "config.pbtxt", "version", 2


def syntax_error(repo: Path) -> tuple[Path, str, int | None]:
    export(repo, "cnn_dynamic_batch", name="cnn")
    config = repo / "cnn" / "config.pbtxt"
    edit(config, "dims: [3, 32, 32]", "dims: [3, 32 32]")
    return config, "syntax", line_of(config, "[3, 32 32]")


def unknown_field(repo: Path) -> tuple[Path, str, int | None]:
    export(repo, "cnn_dynamic_batch", name="cnn")
    config = repo / "cnn" / "config.pbtxt"
    edit(config, "max_batch_size: 4", "max_batch_sise: 4")
    return config, "syntax", line_of(config, "max_batch_sise")


def reshape_element_count(repo: Path) -> tuple[Path, str, int | None]:
    export(repo, "transformer_block")
    config = repo / "transformer_block" / "config.pbtxt"
    edit(config, "dims: [1, 16, 32]", "dims: [1, 500]\n  reshape {\n    shape: [1, 16, 32]\n  }")
    return config, "reshape", line_of(config, "reshape {")


def ensemble_step_missing_model(repo: Path) -> tuple[Path, str, int | None]:
    config = ensemble_repo(repo, ensemble_config(model="cnn_v2"))
    return config, "ensemble", line_of(config, "model_name")


def ensemble_step_wrong_tensor(repo: Path) -> tuple[Path, str, int | None]:
    config = ensemble_repo(repo, ensemble_config(key="img"))
    return config, "ensemble", line_of(config, 'key: "img"')


def ensemble_output_not_written(repo: Path) -> tuple[Path, str, int | None]:
    extra = ',\n  { name: "PROBS", data_type: TYPE_FP32, dims: [10] }'
    config = ensemble_repo(repo, ensemble_config(extra_output=extra))
    return config, "ensemble", line_of(config, "PROBS")


def cpu_instances_with_gpus(repo: Path) -> tuple[Path, str, int | None]:
    export(repo, "cnn_dynamic_batch", name="cnn")
    config = repo / "cnn" / "config.pbtxt"
    edit(config, "dynamic_batching {", "instance_group [\n  {\n    kind: KIND_CPU\n    gpus: [0]\n"
         "  }\n]\ndynamic_batching {")
    return config, "instance-group", line_of(config, "gpus")


def name_differs_from_folder(repo: Path) -> tuple[Path, str, int | None]:
    export(repo, "cnn_dynamic_batch", name="cnn")
    config = repo / "cnn" / "config.pbtxt"
    edit(config, 'name: "cnn"', 'name: "resnet"')
    return config, "name", line_of(config, "resnet")


def external_data_missing(repo: Path) -> tuple[Path, str, int | None]:
    export(repo, _saved(cnn(batch="batch"), repo.parent / "src" / "big.onnx", external=True))
    (repo / "big" / "1" / "model.onnx.data").unlink()
    return repo / "big" / "1" / "model.onnx", "model-file", None


def plan_dims_outside_profile(repo: Path) -> tuple[Path, str, int | None]:
    model = _saved(_relu_model(TensorProto.FLOAT, ["batch", "seq", 8]), repo.parent / "s.onnx")
    placeholder_plan(export(repo, model, platform="tensorrt", shapes={"x": (1, 64, 8)}))
    config = repo / "s" / "config.pbtxt"
    edit(config, "dims: [64, 8]", "dims: [128, 8]")
    return config, "profile-range", line_of(config, "[128, 8]")


def plan_not_built(repo: Path) -> tuple[Path, str, int | None]:
    export(repo, "cnn_dynamic_batch", name="cnn", platform="tensorrt")
    return repo / "cnn" / "config.pbtxt", "model-file", line_of(
        repo / "cnn" / "config.pbtxt", 'name: "cnn"')


BROKEN: list[Case] = [
    plan_max_batch_beyond_profile, batching_a_fixed_batch_model, fp32_config_for_fp16_model,
    input_renamed, inputs_swapped, wrong_dims, missing_model_file, missing_version_folder,
    syntax_error, unknown_field, reshape_element_count, ensemble_step_missing_model,
    ensemble_step_wrong_tensor, ensemble_output_not_written, cpu_instances_with_gpus,
    name_differs_from_folder, external_data_missing, plan_dims_outside_profile, plan_not_built,
]


@pytest.mark.parametrize("plant", BROKEN, ids=[case.__name__ for case in BROKEN])
def test_broken_repository_gives_exactly_its_finding(plant: Case, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    file, code, line = plant(repo)
    result = check(repo)
    assert [(f.code, f.file, f.line) for f in result.findings] == [(code, file, line)], \
        result.lines()
    assert result.findings[0].severity == "error" and result.exit_code == 1


def test_messages_name_what_to_change(tmp_path: Path) -> None:
    plan_max_batch_beyond_profile(tmp_path / "a")
    message = check(tmp_path / "a").findings[0].message
    assert "max-batch 16" in message and "only supports max-batch 1" in message
    fp32_config_for_fp16_model(tmp_path / "b")
    assert "TYPE_FP16" in check(tmp_path / "b").findings[0].message
    input_renamed(tmp_path / "c")
    renamed = check(tmp_path / "c").findings[0].message
    assert "the model's input 'image' is not in the config" in renamed
    plan_not_built(tmp_path / "d")
    assert "build it with: trtexec --onnx=" in check(tmp_path / "d").findings[0].message


def test_plan_without_sidecar_or_tensorrt_is_a_warning(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    result = export(repo, "cnn_dynamic_batch", name="cnn", platform="tensorrt")
    placeholder_plan(result)
    assert result.sidecar is not None
    result.sidecar.unlink()
    checked = check(repo)
    assert [(f.severity, f.code) for f in checked.findings] == [("warning", "no-engine-io")]
    assert checked.exit_code == 0


def test_repository_that_is_not_a_folder(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no such folder"):
        check_repository(tmp_path / "missing")
    (tmp_path / "file").write_text("")
    with pytest.raises(UsageError, match="is a file"):
        check_repository(tmp_path / "file")


# -- the CLI functions the lead hooks in ------------------------------------------------------

def _run(*argv: str | Path) -> int:
    from trtcheck.cli import build_parser

    return run_triton(build_parser().parse_args([str(a) for a in argv]))


def test_cli_export_then_check_with_json(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    repo = tmp_path / "repo"
    assert _run("triton", "export", ZOO / "cnn_dynamic_batch.onnx", "--repo", repo,
                "--name", "cnn", "--max-batch", "8") == 0
    assert "max_batch_size 8" in capsys.readouterr().out
    report = tmp_path / "check.json"
    assert _run("triton", "check", repo, "--json", report) == 0
    assert json.loads(report.read_text())["models"] == ["cnn"]
    assert capsys.readouterr().out.endswith("1 model(s) checked, 0 error(s), 0 warning(s)\n")
    edit(repo / "cnn" / "config.pbtxt", "dims: [10]", "dims: [11]")
    assert _run("triton", "check", repo, "--json", "-") == 1
    captured = capsys.readouterr()
    document = json.loads(captured.out)
    assert [f["code"] for f in document["findings"]] == ["dims"]
    line = line_of(repo / "cnn" / "config.pbtxt", "[11]")
    assert f"cnn/config.pbtxt:{line}: error: output 'logits'" in captured.err
