from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from polygraphy.comparator import DataLoader

from trtcheck.errors import InputDataError, UsageError
from trtcheck.inputs import InputSettings, default_range, make_feeds, parse_range, parse_shape
from trtcheck.model import load_model
from zoo.build import cnn


def mixed_inputs_model() -> onnx.ModelProto:
    """Float, int64, uint8 and bool inputs, each passed through to an output."""
    specs = [("x", TensorProto.FLOAT), ("ids", TensorProto.INT64), ("pixels", TensorProto.UINT8),
             ("mask", TensorProto.BOOL)]
    inputs = [helper.make_tensor_value_info(name, dtype, [2, 8]) for name, dtype in specs]
    outputs = [helper.make_tensor_value_info(f"{name}_out", dtype, [2, 8])
               for name, dtype in specs]
    nodes = [helper.make_node("Identity", [name], [f"{name}_out"], name=f"id_{name}")
             for name, _ in specs]
    return helper.make_model(helper.make_graph(nodes, "mixed", inputs, outputs),
                             opset_imports=[helper.make_opsetid("", 17)])


def test_parse_shape_forms():
    assert parse_shape("1x3x224x224") == (1, 3, 224, 224)
    assert parse_shape("[1,3,224,224]") == (1, 3, 224, 224)
    with pytest.raises(UsageError, match="not a list of integers"):
        parse_shape("1xNx3")
    with pytest.raises(UsageError, match="<= 0"):
        parse_shape("1x0")


def test_parse_range_forms():
    assert parse_range("[-1,1]") == (-1.0, 1.0)
    assert parse_range("0,255") == (0.0, 255.0)
    with pytest.raises(UsageError, match="low <= high"):
        parse_range("[1,-1]")
    with pytest.raises(UsageError, match="two numbers"):
        parse_range("[1]")


def test_dtype_aware_defaults(save_model):
    model = load_model(save_model(mixed_inputs_model()))
    feeds = make_feeds(model, InputSettings(float_range=(-5.0, 5.0)))
    (feed,) = feeds.iterations
    ranges = {d.name: d.value_range for d in feeds.described}
    # The unnamed float range does not leak into integer inputs (negative ids are invalid).
    assert ranges == {"x": (-5.0, 5.0), "ids": (0, 1), "pixels": (0, 255), "mask": (0, 1)}
    assert feed["x"].dtype == np.float32 and feed["x"].min() >= -5 and feed["x"].max() <= 5
    assert feed["x"].min() < 0  # the range was really used
    assert feed["ids"].dtype == np.int64 and set(np.unique(feed["ids"])) <= {0, 1}
    assert feed["pixels"].dtype == np.uint8 and feed["pixels"].max() > 1
    assert feed["mask"].dtype == np.bool_
    assert default_range(np.dtype(np.int8)) == (-128, 127)


def test_fractional_range_for_integer_input(save_model):
    model = load_model(save_model(mixed_inputs_model()))
    with pytest.raises(UsageError, match="integer input 'ids'"):
        make_feeds(model, InputSettings(ranges={"ids": (0.5, 2.0)}))


def test_synthetic_feeds_are_polygraphy_data_loader_output(save_model):
    model = load_model(save_model(cnn()))
    feeds = make_feeds(model, InputSettings(seed=11, ranges={"image": (-1.0, 1.0)}))
    loader = DataLoader(seed=11, val_range={"image": (-1.0, 1.0)},
                        input_metadata=_metadata(model))
    np.testing.assert_array_equal(feeds.iterations[0]["image"], loader[0]["image"])
    again = make_feeds(model, InputSettings(seed=11, ranges={"image": (-1.0, 1.0)}))
    np.testing.assert_array_equal(feeds.iterations[0]["image"], again.iterations[0]["image"])
    other = make_feeds(model, InputSettings(seed=12, ranges={"image": (-1.0, 1.0)}))
    assert not np.array_equal(feeds.iterations[0]["image"], other.iterations[0]["image"])


def _metadata(model):
    from polygraphy.common import TensorMetadata

    meta = TensorMetadata()
    for info in model.inputs:
        meta.add(info.name, info.dtype, info.shape)
    return meta


def test_recorded_npz_casts_within_kind(save_model, tmp_path):
    model = load_model(save_model(cnn()))
    np.savez(tmp_path / "in.npz", image=np.full((1, 3, 32, 32), 0.5, np.float64))
    feeds = make_feeds(model, InputSettings(recorded=tmp_path / "in.npz"))
    assert feeds.iterations[0]["image"].dtype == np.float32
    assert feeds.described[0].source == "recorded"
    assert feeds.described[0].value_range == (0.5, 0.5)


def test_recorded_missing_input(save_model, tmp_path):
    model = load_model(save_model(mixed_inputs_model()))
    np.savez(tmp_path / "in.npz", x=np.zeros((2, 8), np.float32))
    with pytest.raises(InputDataError, match="ids, pixels, mask"):
        make_feeds(model, InputSettings(recorded=tmp_path / "in.npz"))


def test_recorded_unknown_format(save_model, tmp_path):
    model = load_model(save_model(cnn()))
    (tmp_path / "in.pt").write_bytes(b"x")
    with pytest.raises(InputDataError, match="use .npz or .json"):
        make_feeds(model, InputSettings(recorded=tmp_path / "in.pt"))


# Recorded inputs are cast to the model's dtype only when nothing is lost.

def identity_model(elem_type: int, shape=(2, 3)) -> onnx.ModelProto:
    """One input `ids` of `elem_type`, passed through to `ids_out`."""
    inputs = [helper.make_tensor_value_info("ids", elem_type, list(shape))]
    outputs = [helper.make_tensor_value_info("ids_out", elem_type, list(shape))]
    node = helper.make_node("Identity", ["ids"], ["ids_out"], name="id")
    return helper.make_model(helper.make_graph([node], "identity", inputs, outputs),
                             opset_imports=[helper.make_opsetid("", 17)])


def _record(tmp_path, value: np.ndarray, form: str):
    if form == "npz":
        np.savez(tmp_path / "in.npz", ids=value)
        return tmp_path / "in.npz"
    from polygraphy.json import save_json

    save_json([{"ids": value}], str(tmp_path / "in.json"))
    return tmp_path / "in.json"


def _with(value, dtype, shape=(2, 3)) -> np.ndarray:
    """`value` at the last position of an otherwise harmless array of `dtype`."""
    array = np.ones(shape, dtype)
    array.flat[-1] = value
    return array


LOSSY = [
    (TensorProto.INT32, _with(2**32 + 1, np.int64), "4294967297", "int32"),
    (TensorProto.INT32, _with(-(2**31) - 1, np.int64), "-2147483649", "int32"),
    (TensorProto.INT32, _with(2**31, np.uint32), "2147483648", "int32"),
    (TensorProto.INT64, _with(2**63, np.uint64), "9223372036854775808", "int64"),
    (TensorProto.UINT8, _with(256, np.int64), "256", "uint8"),
    (TensorProto.UINT8, _with(-1, np.int32), "-1", "uint8"),
    (TensorProto.INT8, _with(128, np.int16), "128", "int8"),
    (TensorProto.BOOL, _with(2, np.int64), "2", "bool"),
    (TensorProto.BOOL, _with(-1, np.int8), "-1", "bool"),
    (TensorProto.FLOAT, _with(1e39, np.float64), "1e+39", "float32"),
    (TensorProto.FLOAT, _with(-3.5e38, np.float64), "-3.5e+38", "float32"),
    (TensorProto.FLOAT16, _with(70000.0, np.float32), "70000.0", "float16"),
    (TensorProto.FLOAT, _with(1, np.int64), "int64", "float32"),
    (TensorProto.INT64, _with(1.0, np.float64), "float64", "int64"),
]


@pytest.mark.parametrize("form", ["npz", "json"])
@pytest.mark.parametrize("elem_type, value, shown, dtype", LOSSY)
def test_lossy_recorded_inputs_are_refused(save_model, tmp_path, form, elem_type, value, shown,
                                           dtype):
    model = load_model(save_model(identity_model(elem_type)))
    path = _record(tmp_path, value, form)
    with pytest.raises(InputDataError) as info:
        make_feeds(model, InputSettings(recorded=path))
    message = str(info.value)
    assert message.startswith(f"{path}: input 'ids' "), message
    assert shown in message and dtype in message and len(message.splitlines()) == 1, message


LOSSLESS = [
    (TensorProto.INT32, np.array([[0, -(2**31), 2**31 - 1], [1, 2, 3]], np.int64)),
    (TensorProto.INT64, np.array([[0, 2**63 - 1, 7], [1, 2, 3]], np.uint64)),
    (TensorProto.UINT8, np.array([[0, 255, 7], [1, 2, 3]], np.int64)),
    (TensorProto.INT64, np.array([[0, 255, 7], [1, 2, 3]], np.uint8)),
    (TensorProto.BOOL, np.array([[0, 1, 1], [0, 0, 1]], np.int64)),
    (TensorProto.UINT8, np.array([[False, True, True], [False, False, True]])),
    (TensorProto.FLOAT, np.array([[np.nan, np.inf, -np.inf], [1e-50, 3.4e38, -0.1]], np.float64)),
    (TensorProto.FLOAT16, np.array([[65504.0, -65504.0, 1e-9], [1.0, np.nan, 0.1]], np.float32)),
    (TensorProto.DOUBLE, np.array([[3.4e38, 1.0, 2.0], [1.0, 2.0, 3.0]], np.float32)),
]


@pytest.mark.parametrize("elem_type, value", LOSSLESS)
def test_lossless_recorded_inputs_are_cast(save_model, tmp_path, elem_type, value):
    model = load_model(save_model(identity_model(elem_type)))
    fed = make_feeds(model, InputSettings(recorded=_record(tmp_path, value, "npz")))
    (feed,) = fed.iterations
    expected_dtype = model.input("ids").dtype
    assert feed["ids"].dtype == expected_dtype
    # Every value survives the cast: back in the recorded dtype it is the recording (floats
    # within rounding, nan and inf where they were).
    if value.dtype.kind == "f":
        np.testing.assert_allclose(feed["ids"].astype(np.float64), value.astype(np.float64),
                                   rtol=1e-3, atol=1e-7)
    else:
        np.testing.assert_array_equal(feed["ids"].astype(value.dtype), value)


def test_cli_refuses_lossy_ids_and_feeds_lossless_ones_unchanged(save_model, trtcheck_cli,
                                                                 tmp_path):
    from polygraphy.comparator import RunResults

    model = save_model(identity_model(TensorProto.INT32))
    np.savez(tmp_path / "lossy.npz", ids=_with(2**32 + 1, np.int64))
    run = trtcheck_cli("compare", model, "--target", "onnxrt", "--inputs", "lossy.npz")
    assert run.code == 2, (run.code, run.stdout, run.stderr)
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in run.stderr, run.stderr
    assert "'ids'" in lines[0] and "4294967297" in lines[0] and "int32" in lines[0], lines[0]

    ids = np.array([[5, -(2**31), 2**31 - 1], [1, 2, 3]], np.int64)
    np.savez(tmp_path / "ids.npz", ids=ids)
    run = trtcheck_cli("compare", model, "--target", "onnxrt", "--inputs", "ids.npz",
                       "--save-outputs", "out.json")
    assert run.code == 0, (run.code, run.stdout, run.stderr)
    results = RunResults.load(str(tmp_path / "out.json"))
    for _, iterations in results.items():
        np.testing.assert_array_equal(iterations[0]["ids_out"], ids.astype(np.int32))


def test_paddle_question_mark_dims_are_independent(save_model):
    """Paddle exports write '?' for every unknown dim ([-1, 3, ?, ?]): not one shared size."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [-1, 3, "?", "?"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [-1, 3, "?", "?"])
    model = helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                                                [x], [y]),
                              opset_imports=[helper.make_opsetid("", 13)])
    loaded = load_model(save_model(model))
    feeds = make_feeds(loaded, InputSettings(shapes={"x": (1, 3, 48, 192)}))
    assert feeds.iterations[0]["x"].shape == (1, 3, 48, 192)
    with pytest.raises(InputDataError, match="--input-shapes x:"):
        make_feeds(loaded, InputSettings())
