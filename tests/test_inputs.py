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
