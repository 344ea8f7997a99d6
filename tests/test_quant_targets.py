"""int8/fp8 targets end to end: quantized here or given, compared, and built for TensorRT."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
from polygraphy.backend.trt import NetworkFromOnnxPath

from trtcheck.backend_names import get_backend
from trtcheck.backends import (
    BackendOptions,
    make_runner,
    polygraphy_flags,
    tensorrt_usable,
    trt_chain,
)
from trtcheck.errors import BackendUnavailableError
from trtcheck.model import load_model
from trtcheck.precision import PrecisionPlan
from trtcheck.quant.quantize import QuantSettings, quantize_model
from trtcheck.quant.trt_cache import cache_from_qdq, write_cache
from zoo.build import channel_outlier_cnn, cnn, transformer_block

RNG = np.random.default_rng(3)


def _feeds(count: int = 6) -> list[dict[str, np.ndarray]]:
    return [{"image": RNG.random((1, 3, 32, 32), dtype=np.float32)} for _ in range(count)]


def _calibration_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "calibration"
    folder.mkdir()
    for index, feed in enumerate(_feeds()):
        np.savez(folder / f"{index:02d}.npz", **feed)
    return folder


def test_an_int8_target_is_quantized_calibrated_and_cached(trtcheck_cli, save_model, tmp_path):
    path = save_model(cnn(), "cnn.onnx")
    calibration = _calibration_folder(tmp_path)
    run = trtcheck_cli("compare", path, "--target", "onnxrt-int8", "--calibration-data",
                       calibration, "--json", "r.json")
    assert run.code == 0, run.stdout + run.stderr
    assert "synthetic" not in run.stdout + run.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["config"]["target"]["precision"] == "int8"
    (output,) = report["outputs"]
    assert output["method"] == "top1" and output["cosine"] > 0.999
    quantized = sorted((tmp_path / "trtcheck-work").glob("cnn.int8.*.onnx"))
    assert len(quantized) == 1
    proto = onnx.load(str(quantized[0]))
    assert {"QuantizeLinear", "DequantizeLinear"} <= {n.op_type for n in proto.graph.node}
    # The printed command builds that Q/DQ model strongly typed on TensorRT.
    assert f"polygraphy run {quantized[0].relative_to(tmp_path)} --trt --strongly-typed" in \
        " ".join(run.stdout.split())
    # The same model, data and settings reuse the cached Q/DQ model.
    mtime = quantized[0].stat().st_mtime_ns
    again = trtcheck_cli("compare", path, "--target", "onnxrt-int8", "--calibration-data",
                         calibration)
    assert again.code == 0 and quantized[0].stat().st_mtime_ns == mtime


def test_synthetic_calibration_says_its_scales_mean_nothing(trtcheck_cli, save_model):
    run = trtcheck_cli("compare", save_model(cnn()), "--target", "onnxrt-int8")
    assert run.code == 0, run.stderr
    assert "synthetic feeds" in " ".join(run.stdout.split())


def test_the_planted_channel_outlier_collapses_in_int8_not_in_fp8(trtcheck_cli, save_model,
                                                                  tmp_path):
    path = save_model(channel_outlier_cnn(), "outlier.onnx")
    calibration = _calibration_folder(tmp_path)
    run = trtcheck_cli("compare", path, "--target", "onnxrt-int8", "--calibration-data",
                       calibration)
    assert run.code == 1, run.stdout + run.stderr
    # fp8 keeps an exponent: a channel 1000x the others keeps the rest representable.
    run = trtcheck_cli("compare", path, "--target", "onnxrt-fp8", "--calibration-data",
                       calibration)
    assert run.code == 0, run.stdout + run.stderr
    assert "[W]" not in run.stdout + run.stderr and "WARNING" not in run.stderr
    # fp32 is fine: the outlier channel is undone by the next conv.
    assert trtcheck_cli("compare", path, "--target", "onnxrt").code == 0


def test_a_transformer_block_in_int8_is_judged_by_similarity(trtcheck_cli, save_model,
                                                              tmp_path):
    run = trtcheck_cli("compare", save_model(transformer_block(), "tb.onnx"), "--target",
                       "onnxrt-int8", "--json", "r.json")
    assert run.code == 0, run.stdout + run.stderr
    (output,) = json.loads((tmp_path / "r.json").read_text())["outputs"]
    assert output["method"] == "similarity" and output["snr"] >= 25


def _ort_quantized(tmp_path: Path, proto: onnx.ModelProto, **options) -> Path:
    source, target = tmp_path / "fp32.onnx", tmp_path / "qdq.onnx"
    onnx.save(proto, str(source))

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.feeds = iter(_feeds())

        def get_next(self):
            return next(self.feeds, None)

    quantize_static(str(source), str(target), Reader(), quant_format=QuantFormat.QDQ,
                    per_channel=True, **options)
    return target


def test_a_users_qdq_model_is_the_target(trtcheck_cli, save_model, tmp_path):
    path = save_model(cnn(), "cnn.onnx")
    qdq = _ort_quantized(tmp_path, cnn(), activation_type=QuantType.QInt8,
                         weight_type=QuantType.QInt8,
                         extra_options={"ActivationSymmetric": True, "WeightSymmetric": True,
                                        "QuantizeBias": False})
    run = trtcheck_cli("compare", path, "--target-model", qdq, "--json", "r.json")
    assert run.code == 0, run.stdout + run.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    # Without --target, the target is the backend of the model's type.
    expected = "trt-int8" if tensorrt_usable() else "onnxrt-int8"
    assert report["config"]["target"]["backend"] == expected
    assert not list((tmp_path / "trtcheck-work").glob("*.int8.*.onnx"))  # not quantized again


def test_bad_target_models_and_calibration_sets_are_one_line(trtcheck_cli, save_model,
                                                             tmp_path):
    path = save_model(cnn(), "cnn.onnx")
    other = save_model(transformer_block(), "other.onnx")
    run = trtcheck_cli("compare", path, "--target-model", other)
    assert run.code == 2 and "--target-model other.onnx: its inputs (x)" in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1
    # uint8 activations (ONNX Runtime's QUInt8): TensorRT takes int8 only.
    uint8 = _ort_quantized(tmp_path, cnn(), activation_type=QuantType.QUInt8)
    run = trtcheck_cli("compare", path, "--target-model", uint8)
    assert run.code == 2 and "uint8, which TensorRT does not build" in run.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    run = trtcheck_cli("compare", path, "--target", "onnxrt-int8", "--calibration-data", empty)
    assert run.code == 2 and "empty" in run.stderr and "Traceback" not in run.stderr
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    np.savez(wrong / "0.npz", pixels=np.zeros((1, 3, 32, 32), np.float32))
    run = trtcheck_cli("compare", path, "--target", "onnxrt-int8", "--calibration-data", wrong)
    assert run.code == 2 and "0.npz" in run.stderr and "pixels" in run.stderr
    run = trtcheck_cli("compare", path, "--target-model", uint8, "--calibration-data", wrong)
    assert run.code == 2 and "quantized already" in run.stderr
    renamed = cnn()
    renamed.graph.node[-1].output[0] = renamed.graph.output[0].name = "scores"
    run = trtcheck_cli("compare", path, "--target-model", save_model(renamed, "renamed.onnx"))
    assert run.code == 2 and "it lacks output(s) logits" in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1


def test_a_tensorrt_calibration_cache_gives_the_same_scales(trtcheck_cli, save_model, tmp_path):
    path = save_model(cnn(), "cnn.onnx")
    calibrated = quantize_model(load_model(path), QuantSettings("int8"), calibration=_feeds())
    cache = tmp_path / "cnn.cache"
    write_cache(cache, cache_from_qdq(calibrated))
    run = trtcheck_cli("compare", path, "--target", "onnxrt-int8", "--calibration-cache", cache,
                       "--work-dir", "work")
    assert run.code == 0, run.stdout + run.stderr
    (from_cache,) = (tmp_path / "work").glob("cnn.int8.*.onnx")
    assert cache_from_qdq(onnx.load(str(from_cache))).scales == cache_from_qdq(calibrated).scales


@pytest.mark.parametrize("target", ["trt-int8", "trt-fp8"])
@pytest.mark.parametrize("major", [10, 11])
def test_trt_quantized_targets_build_the_qdq_model_strongly_typed(tmp_path, target, major):
    qdq_path = tmp_path / "qdq.onnx"
    onnx.save(quantize_model(load_model(_saved(tmp_path, cnn())), QuantSettings(
        get_backend(target).precision), calibration=_feeds()), str(qdq_path))
    model = load_model(qdq_path)
    backend = get_backend(target)
    options = BackendOptions(trt_major=major, work_dir=tmp_path / "work")
    chain = trt_chain(model, backend, PrecisionPlan(backend.float_precision), options, "t")
    assert isinstance(chain.network, NetworkFromOnnxPath)
    assert chain.network.strongly_typed is True and chain.onnx_path == str(qdq_path)
    assert not chain.config.fp16 and not chain.config.int8
    assert polygraphy_flags(backend, options, major) == ["--trt", "--strongly-typed"]
    assert not (tmp_path / "work").exists()  # the Q/DQ model is built as it is


@pytest.mark.skipif(tensorrt_usable(), reason="TensorRT is installed here; this checks the "
                                              "message shown without it")
def test_trt_int8_without_tensorrt_says_how_to_get_it(tmp_path):
    model = load_model(_saved(tmp_path, cnn()))
    with pytest.raises(BackendUnavailableError, match="trt-int8: TensorRT is not installed"):
        make_runner(model, get_backend("trt-int8"), BackendOptions(), "t")


def _saved(tmp_path: Path, proto: onnx.ModelProto) -> Path:
    path = tmp_path / "fp32.onnx"
    onnx.save(proto, str(path))
    return path


def test_layers_rank_the_planted_fault_first_in_terminal_json_and_html(trtcheck_cli, save_model,
                                                                      tmp_path):
    import jsonschema

    schema = json.loads((Path(__file__).parents[1] / "trtcheck" / "report" /
                         "compare.schema.json").read_text())
    path = save_model(channel_outlier_cnn(), "outlier.onnx")
    run = trtcheck_cli("compare", path, "--target", "onnxrt-int8", "--calibration-data",
                       _calibration_folder(tmp_path), "--layers", "--json", "r.json",
                       "--report", "r.html")
    assert run.code == 1, run.stdout + run.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    jsonschema.validate(report, schema)
    assert report["layers"][0]["node"] == "trunk/conv2"
    assert float(report["layers"][0]["sqnr_db_isolated"]) < 10
    assert "layer-wise quantization error" in run.stdout
    html = (tmp_path / "r.html").read_text()
    assert "Quantized layers" in html and "<svg" in html
    # A float target has no quantized layers to rank.
    run = trtcheck_cli("compare", path, "--target", "onnxrt-fp16", "--layers")
    assert run.code == 2 and "--layers measures the layers of a Q/DQ target" in run.stderr


def test_quantize_and_calibration_cache_commands_round_trip(trtcheck_cli, save_model, tmp_path):
    path = save_model(cnn(), "cnn.onnx")
    calibration = _calibration_folder(tmp_path)
    run = trtcheck_cli("quantize", path, "-o", "q.onnx", "--calibration-data", calibration)
    assert run.code == 0 and "wrote q.onnx: int8" in run.stdout, run.stderr
    assert run.stderr == ""  # real calibration data: nothing to warn about, no library noise
    run = trtcheck_cli("calibration-cache", "q.onnx", "-o", "q.cache", "--trt-version", "10.8.0")
    assert run.code == 0, run.stderr
    text = (tmp_path / "q.cache").read_text().splitlines()
    assert text[0] == "TRT-100800-EntropyCalibration2" and len(text) == 4
    run = trtcheck_cli("quantize", path, "-o", "from-cache.onnx", "--calibration-cache",
                       "q.cache")
    assert run.code == 0, run.stderr
    assert cache_from_qdq(onnx.load(str(tmp_path / "from-cache.onnx"))).scales == \
        cache_from_qdq(onnx.load(str(tmp_path / "q.onnx"))).scales
    # An fp32 model has no scales to write; a cache line that is not one is file:line.
    run = trtcheck_cli("calibration-cache", path, "-o", "c.cache")
    assert run.code == 2 and "no per-tensor int8 activation QuantizeLinear" in run.stderr
    (tmp_path / "bad.cache").write_text("TRT-100800-EntropyCalibration2\nimage 3c00\n")
    run = trtcheck_cli("quantize", path, "-o", "x.onnx", "--calibration-cache", "bad.cache")
    assert run.code == 2 and "bad.cache:2:" in run.stderr
    assert not (tmp_path / "x.onnx").exists()


@pytest.mark.parametrize("given", [False, True], ids=["quantized-here", "target-model"])
def test_bisect_on_int8_finds_the_layer_to_leave_unquantized_and_verifies_it(
        trtcheck_cli, save_model, tmp_path, given):
    path = save_model(channel_outlier_cnn(), "outlier.onnx")
    calibration = _calibration_folder(tmp_path)
    if given:  # a user's Q/DQ model: the fix removes Q/DQ from it
        qdq = tmp_path / "user-qdq.onnx"
        onnx.save(quantize_model(load_model(path), QuantSettings("int8"),
                                 calibration=_feeds()), str(qdq))
        source = ["--target-model", str(qdq), "--target", "onnxrt-int8"]
    else:
        source = ["--target", "onnxrt-int8", "--calibration-data", str(calibration)]
    run = trtcheck_cli("bisect", path, *source, "--json", "r.json", "--repro", "repro")
    assert run.code == 1, run.stdout + run.stderr
    bisect = json.loads((tmp_path / "r.json").read_text())["bisect"]
    fix = bisect["precision_fix"]
    assert bisect["mode"] == "quantized" and bisect["culprit"]["node"] == "trunk/conv2"
    assert fix["verified"] and fix["keep_fp32"] == ["trunk/conv2"]
    assert fix["exclude_lists"] == {"onnxruntime": ["trunk/conv2"],
                                    "modelopt": ["trunk/conv2$"]}
    # The explanation names the conv pair and the activation between them.
    (why,) = bisect["explanation"]
    assert all(name in why for name in ("trunk/conv2", "trunk/r1", "trunk/conv1"))
    assert "channel 0" in why
    # The fixed model in the repro folder passes, checked as its README says.
    fixed = tmp_path / "repro" / "model.int8.excluded.onnx"
    assert "--target-model" in (tmp_path / "repro" / "README.md").read_text()
    check = trtcheck_cli("compare", path, "--target-model", fixed, "--target", "onnxrt-int8")
    assert check.code == 0, check.stdout + check.stderr
    onnx.checker.check_model(str(fixed), full_check=True)


def test_bisect_on_a_passing_int8_target_has_nothing_to_fix(trtcheck_cli, save_model, tmp_path):
    run = trtcheck_cli("bisect", save_model(cnn()), "--target", "onnxrt-int8",
                       "--calibration-data", _calibration_folder(tmp_path))
    assert run.code == 0, run.stdout + run.stderr
