"""Inputs from what the model does with them: index ranges, masks, shared shapes, warnings."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from trtcheck.errors import InputDataError, UsageError
from trtcheck.input_ranges import MASK, infer_roles, padded_mask
from trtcheck.inputs import InputSettings, make_feeds
from trtcheck.model import load_model
from trtcheck.suite import load_suite

ZOO = Path(__file__).resolve().parents[1] / "zoo" / "real"
OPSET = [helper.make_opsetid("", 17)]


def _table(name: str, rows: int, width: int = 4) -> onnx.TensorProto:
    return numpy_helper.from_array(
        np.random.default_rng(rows).standard_normal((rows, width)).astype(np.float32), name)


def _int(name: str, value) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value, np.int64), name)


def _model(nodes, inputs, outputs, initializers=(), check: bool = True) -> onnx.ModelProto:
    model = helper.make_model(helper.make_graph(nodes, "m", inputs, outputs, list(initializers)),
                              opset_imports=OPSET)
    if check:
        onnx.checker.check_model(model)
    return model


def _out(name: str, elem_type: int, rank: int | None) -> onnx.ValueInfoProto:
    """A graph output of known rank and symbolic dims (None: rank unknown, unchecked models)."""
    shape = None if rank is None else [f"{name}_{i}" for i in range(rank)]
    return helper.make_tensor_value_info(name, elem_type, shape)


def _embedding_rows(model: onnx.ModelProto, marker: str) -> int:
    """Rows of the word-embedding table, read from the initializer's dims (the oracle)."""
    (table,) = [t for t in model.graph.initializer if marker in t.name and len(t.dims) == 2]
    return int(table.dims[0])


def _assert_padded_masks(mask: np.ndarray) -> None:
    rows = mask.reshape(-1, mask.shape[-1]).astype(np.int64)
    for row in rows:
        ones = int(row.sum())
        assert ones >= 1, row
        # ones first, then only zeros: a padded tail
        np.testing.assert_array_equal(row, (np.arange(row.size) < ones).astype(np.int64))


# Real exports (zoo/real, committed): HF BERT and GPT-2 by the classic and the dynamo exporter,
# dynamic quantization, and external data.
REAL = [("bert_tiny_classic", "word_embeddings"), ("bert_tiny_dynamo", "word_embeddings"),
        ("bert_tiny_dynamo_noopt", "word_embeddings"), ("bert_tiny_dynquant", "word_embeddings"),
        ("bert_tiny_classic_extdata", "word_embeddings"), ("gpt2_tiny_classic", "wte"),
        ("gpt2_tiny_dynamo", "wte")]


@pytest.mark.parametrize("name, marker", REAL)
def test_real_exports_get_token_ids_within_the_table_and_padded_masks(name, marker):
    model = load_model(ZOO / f"{name}.onnx")
    rows = _embedding_rows(model.proto, marker)
    feeds = make_feeds(model, InputSettings(shapes={"input_ids": (4, 64)}))
    described = {d.name: d for d in feeds.described}
    assert described["input_ids"].value_range == (0, rows - 1)
    assert f"({rows} rows)" in described["input_ids"].origin
    assert described["attention_mask"].generator == MASK
    assert described["attention_mask"].shape == (4, 64)  # fixed by input_ids' shape
    assert feeds.warnings == ()
    (feed,) = feeds.iterations
    ids = feed["input_ids"]
    assert ids.min() >= 0 and ids.max() <= rows - 1 and ids.max() > rows // 2
    mask = feed["attention_mask"]
    _assert_padded_masks(mask)
    lengths = mask.sum(axis=-1)
    assert len(set(lengths.tolist())) == 4 and lengths.min() < 64, lengths


def test_external_data_is_not_read_to_find_the_rows(tmp_path):
    # The table's rows come from the initializer's dims: the data file is not needed at all.
    proto = onnx.load(str(ZOO / "bert_tiny_classic_extdata.onnx"), load_external_data=False)
    assert any(t.data_location == TensorProto.EXTERNAL for t in proto.graph.initializer)
    roles = infer_roles(proto)
    assert roles["input_ids"].value_range == (0, _embedding_rows(proto, "word_embeddings") - 1)


def test_masks_are_deterministic_from_the_seed():
    first = padded_mask((3, 10), np.dtype(np.int64), 1, "mask")
    assert np.array_equal(first, padded_mask((3, 10), np.dtype(np.int64), 1, "mask"))
    others = [padded_mask((3, 10), np.dtype(np.int64), seed, "mask") for seed in range(2, 8)]
    assert any(not np.array_equal(first, other) for other in others)
    _assert_padded_masks(first)
    assert padded_mask((2, 1), np.dtype(np.bool_), 1, "m").all()  # one position: kept


def _bytes_one_hot(dtype: int, classes: int = 257) -> onnx.ModelProto:
    """What jax2tf exports for magika: one-hot by Equal with a constant 0..256, then MatMul."""
    nodes = [
        helper.make_node("Reshape", ["bytes", "shape"], ["column"]),
        helper.make_node("Cast", ["column"], ["wide"], to=TensorProto.INT32),
        helper.make_node("Equal", ["wide", "iota"], ["hot"]),
        helper.make_node("Cast", ["hot"], ["hot_f"], to=TensorProto.FLOAT),
        helper.make_node("MatMul", ["hot_f", "dense"], ["logits"]),
    ]
    inits = [_int("shape", [-1, 16, 1]),
             numpy_helper.from_array(np.arange(classes, dtype=np.int32).reshape(1, 1, classes),
                                     "iota"),
             _table("dense", classes)]
    return _model(nodes, [helper.make_tensor_value_info("bytes", dtype, ["batch", 16])],
                  [_out("logits", TensorProto.FLOAT, 3)], inits)


def _bytes_embedding(dtype: int) -> onnx.ModelProto:
    nodes = [helper.make_node("Cast", ["bytes"], ["ids"], to=TensorProto.INT64),
             helper.make_node("Gather", ["embedding", "ids"], ["vectors"])]
    return _model(nodes, [helper.make_tensor_value_info("bytes", dtype, [1, 16])],
                  [_out("vectors", TensorProto.FLOAT, 3)],
                  [_table("embedding", 257)])


@pytest.mark.parametrize("build", [_bytes_one_hot, _bytes_embedding])
@pytest.mark.parametrize("dtype", [TensorProto.INT32, TensorProto.INT64, TensorProto.UINT16])
def test_bytes_indexing_257_rows_get_0_to_256(save_model, build, dtype):
    model = load_model(save_model(build(dtype)))
    feeds = make_feeds(model, InputSettings(shapes={"bytes": (1, 16)}))
    (described,) = feeds.described
    assert described.value_range == (0, 256) and not described.guessed
    assert feeds.iterations[0]["bytes"].max() > 200  # not [0, 1] any more


def test_uint8_keeps_its_full_range_without_a_warning(save_model):
    nodes = [helper.make_node("Cast", ["pixels"], ["x"], to=TensorProto.FLOAT),
             helper.make_node("Relu", ["x"], ["y"])]
    model = load_model(save_model(_model(
        nodes, [helper.make_tensor_value_info("pixels", TensorProto.UINT8, [1, 3, 8, 8])],
        [_out("y", TensorProto.FLOAT, 4)])))
    feeds = make_feeds(model, InputSettings())
    assert feeds.described[0].value_range == (0, 255) and feeds.warnings == ()


def _gather_chain(ops, rows_list) -> onnx.ModelProto:
    """ids -> ops -> Gather on every table in rows_list."""
    nodes, current, inits = [], "ids", []
    for index, (op, operand) in enumerate(ops):
        out = f"t{index}"
        if operand is None:
            nodes.append(helper.make_node(op, [current], [out], **(
                {"to": TensorProto.INT64} if op == "Cast" else {})))
        else:
            inits.append(_int(f"c{index}", operand))
            nodes.append(helper.make_node(op, [current, f"c{index}"], [out]))
        current = out
    outputs = []
    for rows in rows_list:
        inits.append(_table(f"table{rows}", rows))
        nodes.append(helper.make_node("Gather", [f"table{rows}", current], [f"out{rows}"]))
        outputs.append(_out(f"out{rows}", TensorProto.FLOAT, None))
    return _model(nodes, [helper.make_tensor_value_info("ids", TensorProto.INT32, [2, 5])],
                  outputs, inits, check=False)


@pytest.mark.parametrize("ops, rows_list, expected", [
    ([], [100], (0, 99)),
    # every table it indexes: the smallest wins
    ([], [100, 50], (0, 49)),
    ([("Cast", None), ("Unsqueeze", [0]), ("Flatten", None)], [30], (0, 29)),
    ([("Cast", None), ("Reshape", [-1])], [30], (0, 29)),
    # position ids shifted by a constant (padding_idx + 1 in RoBERTa-like exports)
    ([("Cast", None), ("Add", 2)], [30], (-2, 27)),
    ([("Cast", None), ("Sub", 1)], [30], (1, 30)),
    # token types index a table of two rows
    ([], [2], (0, 1)),
])
def test_index_ranges_through_what_exporters_put_in_between(ops, rows_list, expected):
    roles = infer_roles(_gather_chain(ops, rows_list))
    assert roles["ids"].value_range == expected
    assert roles["ids"].kind == "index"


def test_index_used_inside_an_if_branch_and_a_loop_body():
    then_branch = helper.make_graph(
        [helper.make_node("Gather", ["table", "ids"], ["picked"])], "then", [],
        [helper.make_tensor_value_info("picked", TensorProto.FLOAT, None)])
    else_branch = helper.make_graph(
        [helper.make_node("Identity", ["table"], ["whole"])], "else", [],
        [helper.make_tensor_value_info("whole", TensorProto.FLOAT, None)])
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]),
         helper.make_node("Identity", ["carried"], ["carried_out"]),
         helper.make_node("Gather", ["small", "carried"], ["row"])],
        "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("carried", TensorProto.INT64, None)],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("carried_out", TensorProto.INT64, None),
         helper.make_tensor_value_info("row", TensorProto.FLOAT, None)])
    nodes = [helper.make_node("If", ["flag"], ["chosen"], then_branch=then_branch,
                              else_branch=else_branch),
             helper.make_node("Loop", ["trips", "", "steps"], ["final", "rows"], body=body)]
    model = _model(
        nodes,
        [helper.make_tensor_value_info("ids", TensorProto.INT64, [3]),
         helper.make_tensor_value_info("flag", TensorProto.BOOL, []),
         helper.make_tensor_value_info("steps", TensorProto.INT64, [3])],
        [helper.make_tensor_value_info("chosen", TensorProto.FLOAT, None),
         helper.make_tensor_value_info("final", TensorProto.INT64, None),
         helper.make_tensor_value_info("rows", TensorProto.FLOAT, None)],
        [_table("table", 7), _table("small", 5), _int("trips", 2)], check=False)
    roles = infer_roles(model)
    assert roles["ids"].value_range == (0, 6)
    assert roles["steps"].value_range == (0, 4)
    assert "flag" not in roles  # a branch condition is neither an index nor a mask


def _hf_mask_model(mask_type: int, via_where: bool, keys: str = "seq") -> onnx.ModelProto:
    """Scores plus an extended attention mask, as HF BERT exports it, then Softmax."""
    if via_where:
        nodes = [helper.make_node("Cast", ["mask"], ["keep"], to=TensorProto.BOOL),
                 helper.make_node("Unsqueeze", ["keep", "axes"], ["keep4"]),
                 helper.make_node("Where", ["keep4", "zero", "lowest"], ["bias"])]
    else:
        nodes = [helper.make_node("Unsqueeze", ["mask", "axes"], ["mask4"]),
                 helper.make_node("Cast", ["mask4"], ["mask_f"], to=TensorProto.FLOAT),
                 helper.make_node("Sub", ["one", "mask_f"], ["inverted"]),
                 helper.make_node("Mul", ["inverted", "lowest"], ["bias"])]
    nodes += [helper.make_node("Add", ["scores", "bias"], ["biased"]),
              helper.make_node("Softmax", ["biased"], ["probs"], axis=-1)]
    inits = [_int("axes", [1, 2]), numpy_helper.from_array(np.float32(1.0), "one"),
             numpy_helper.from_array(np.float32(0.0), "zero"),
             numpy_helper.from_array(np.float32(-3.4e38), "lowest")]
    return _model(nodes, [helper.make_tensor_value_info("mask", mask_type, ["batch", "seq"]),
                          helper.make_tensor_value_info("scores", TensorProto.FLOAT,
                                                        ["batch", 2, "seq", keys])],
                  [_out("probs", TensorProto.FLOAT, 4)], inits)


@pytest.mark.parametrize("mask_type", [TensorProto.INT64, TensorProto.INT32, TensorProto.BOOL])
@pytest.mark.parametrize("via_where", [True, False])
def test_masks_from_where_or_an_add_before_softmax(save_model, mask_type, via_where):
    model = load_model(save_model(_hf_mask_model(mask_type, via_where)))
    feeds = make_feeds(model, InputSettings(shapes={"scores": (3, 2, 12, 12)}))
    described = {d.name: d for d in feeds.described}
    assert described["mask"].generator == MASK and described["mask"].shape == (3, 12)
    assert "padded tail" in described["mask"].origin
    _assert_padded_masks(feeds.iterations[0]["mask"])
    # the float scores still get a guessed range, and say so
    assert [w.split("'")[1] for w in feeds.warnings] == ["scores"]


def test_an_explicit_range_wins_over_the_inferred_mask(save_model):
    model = load_model(save_model(_hf_mask_model(TensorProto.INT64, True)))
    feeds = make_feeds(model, InputSettings(shapes={"scores": (1, 2, 4, 4)},
                                            ranges={"mask": (1, 1)}))
    described = {d.name: d for d in feeds.described}
    assert described["mask"].generator == "uniform"
    assert described["mask"].origin == "given by --val-range"
    assert (feeds.iterations[0]["mask"] == 1).all()


def test_unused_integer_inputs_are_warned_about(save_model):
    nodes = [helper.make_node("Identity", ["count"], ["same"])]
    model = load_model(save_model(_model(
        nodes, [helper.make_tensor_value_info("count", TensorProto.INT64, [1])],
        [_out("same", TensorProto.INT64, 1)])))
    feeds = make_feeds(model, InputSettings())
    (warning,) = feeds.warnings
    assert "'count'" in warning and "default for int64" in warning
    assert "--val-range count:[LO,HI]" in warning


# Shapes: shared symbolic dimensions, conflicts, and every missing shape at once.

def test_shared_dimensions_are_fixed_together():
    model = load_model(ZOO / "bert_tiny_classic.onnx")
    feeds = make_feeds(model, InputSettings(shapes={"attention_mask": (2, 16)}))
    assert {d.name: d.shape for d in feeds.described} == {"input_ids": (2, 16),
                                                          "attention_mask": (2, 16)}


def test_conflicting_shared_dimensions_name_both_inputs():
    model = load_model(ZOO / "bert_tiny_classic.onnx")
    with pytest.raises(InputDataError) as info:
        make_feeds(model, InputSettings(shapes={"input_ids": (2, 16),
                                                "attention_mask": (2, 8)}))
    message = str(info.value)
    assert "input_ids:2x16" in message and "attention_mask:2x8" in message
    assert "'sequence'" in message and len(message.splitlines()) == 1


def test_all_missing_shapes_are_reported_at_once_with_a_line_that_works():
    model = load_model(ZOO / "bert_tiny_classic.onnx")
    with pytest.raises(InputDataError) as info:
        make_feeds(model, InputSettings())
    message = str(info.value)
    assert "'input_ids'" in message and "'attention_mask'" in message
    line = message.split("--input-shapes ", 1)[1].split()
    shapes = {item.split(":")[0]: tuple(int(d) for d in item.split(":")[1].split("x"))
              for item in line}
    assert set(shapes) == {"input_ids", "attention_mask"}
    feeds = make_feeds(model, InputSettings(shapes=shapes))  # the suggestion is complete
    assert len(feeds.described) == 2


def test_partly_given_shapes_suggest_the_rest(save_model):
    model = load_model(save_model(_hf_mask_model(TensorProto.INT64, True)))
    feeds = make_feeds(model, InputSettings(shapes={"mask": (2, 7)}))
    # scores [batch, 2, seq, seq]: fixed by the mask alone
    assert feeds.described[1].shape == (2, 2, 7, 7)
    model = load_model(save_model(_hf_mask_model(TensorProto.INT64, True, keys="keys"), "k.onnx"))
    with pytest.raises(InputDataError) as info:
        make_feeds(model, InputSettings(shapes={"mask": (2, 7)}))
    message = str(info.value)
    # scores [batch, 2, seq, keys]: batch and seq come from the mask, keys is suggested
    assert "'scores' [batch, 2, seq, keys]" in message and "'mask' [" not in message
    assert message.endswith("--input-shapes mask:2x7 scores:2x2x7x128")


def test_unnamed_val_range_on_a_model_without_float_inputs_is_an_error(save_model):
    model = load_model(ZOO / "bert_tiny_classic.onnx")
    with pytest.raises(UsageError) as info:
        make_feeds(model, InputSettings(shapes={"input_ids": (1, 8)}, float_range=(-1, 1)))
    message = str(info.value)
    assert "input_ids, attention_mask" in message and "--val-range input_ids:[LO,HI]" in message
    # inherited from a suite's [defaults], it is no error
    make_feeds(model, InputSettings(shapes={"input_ids": (1, 8)}, float_range=(-1, 1),
                                    float_range_inherited=True))


# The command line and the reports.

def test_cli_on_bert_says_where_each_range_came_from(trtcheck_cli, tmp_path):
    run = trtcheck_cli("compare", ZOO / "bert_tiny_classic.onnx", "--target", "onnxrt",
                       "--input-shapes", "input_ids:2x16", "--json", "r.json", "--report", "r.html")
    assert run.code == 0, (run.code, run.stdout, run.stderr)
    assert "warning" not in run.stderr
    # the terminal may wrap the inputs line at spaces
    assert "indexes model.embeddings.word_embeddings.weight (512 rows)" in " ".join(
        run.stdout.split())
    report = json.loads((tmp_path / "r.json").read_text())
    inputs = {i["name"]: i for i in report["config"]["inputs"]}
    assert inputs["attention_mask"]["generator"] == "mask"
    assert inputs["attention_mask"]["range_from"].startswith(
        "attention mask: ones with a padded tail")
    assert inputs["attention_mask"]["range_from"] in (tmp_path / "r.html").read_text()
    assert inputs["attention_mask"]["shape"] == [2, 16]
    assert inputs["input_ids"]["range"] == [0, 511]
    assert report["config"]["input_warnings"] == []
    # Polygraphy cannot draw a padded mask: its command loads the feeds trtcheck wrote
    command = report["polygraphy_command"]
    loaded = Path(command.split("--load-inputs ")[1].split()[0])
    assert loaded.name == "bert_tiny_classic.inputs.json"
    # the trtcheck command infers again what was inferred (a range would make the mask uniform),
    # and repeats the comparison exactly
    import shlex

    argv = shlex.split(report["trtcheck_command"])
    assert "--val-range" not in argv
    again = trtcheck_cli(*argv[1:], "--json", "again.json")
    assert again.code == 0, again.stderr
    repeated = json.loads((tmp_path / "again.json").read_text())
    for key in ("inputs", "input_warnings", "seed"):
        assert repeated["config"][key] == report["config"][key], key


def test_cli_warns_once_per_guessed_input(save_model, trtcheck_cli, tmp_path):
    model = save_model(_hf_mask_model(TensorProto.INT64, False))
    run = trtcheck_cli("compare", model, "--target", "onnxrt", "--input-shapes",
                       "scores:1x2x6x6", "--json", "r.json")
    assert run.code == 0, (run.code, run.stdout, run.stderr)
    warnings = [line for line in run.stderr.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "'scores'" in warnings[0], run.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["config"]["input_warnings"] == [warnings[0].split("warning: ", 1)[1]]


def test_cli_unnamed_val_range_on_integer_inputs(trtcheck_cli):
    run = trtcheck_cli("compare", ZOO / "bert_tiny_classic.onnx", "--target", "onnxrt",
                       "--input-shapes", "input_ids:1x8", "--val-range", "[0,100]")
    assert run.code == 2, (run.code, run.stderr)
    (line,) = run.stderr.strip().splitlines()
    assert "input_ids, attention_mask" in line and "input_ids:[LO,HI]" in line


# Suites: ranges, mask generators, validation.

def test_suite_mask_generator(tmp_path):
    model = _hf_mask_model(TensorProto.INT64, True)
    onnx.save(model, str(tmp_path / "m.onnx"))
    path = tmp_path / "s.suite.toml"
    path.write_text('[targets.fp32]\nbackend = "onnxrt"\n\n[defaults]\n'
                    'inputs.float_range = [-1.0, 1.0]\n\n[[case]]\nname = "m"\n'
                    'model = "m.onnx"\ninputs.shapes = { scores = [2, 2, 5, 5] }\n'
                    'inputs.generators = { scores = "uniform", mask = "mask" }\n')
    (case,) = load_suite(path).cases
    assert case.error is None, case.error
    assert case.inputs.generators == {"scores": "uniform", "mask": "mask"}
    feeds = make_feeds(load_model(tmp_path / "m.onnx"), case.inputs)
    described = {d.name: d for d in feeds.described}
    assert described["mask"].generator == MASK and "suite" in described["mask"].origin
    assert described["scores"].value_range == (-1.0, 1.0)
    _assert_padded_masks(feeds.iterations[0]["mask"])


@pytest.mark.parametrize("line, fragment", [
    ('inputs.generators = { mask = "ones" }', "inputs.generators.mask = 'ones' must be one of"),
    ('inputs.generators = { mask = "mask" }\ninputs.ranges = { mask = [0, 1] }',
     "both a range and the 'mask' generator"),
])
def test_suite_generator_errors_name_file_and_line(tmp_path, line, fragment):
    path = tmp_path / "s.suite.toml"
    path.write_text('[targets.fp32]\nbackend = "onnxrt"\n\n[[case]]\nname = "m"\n'
                    f'model = "m.onnx"\n{line}\n')
    onnx.save(_hf_mask_model(TensorProto.INT64, True), str(tmp_path / "m.onnx"))
    (case,) = load_suite(path).cases
    assert case.error is not None and case.error.startswith(f"{path}:5:"), case.error
    assert fragment in case.error


def test_a_scalar_compared_with_one_constant_gets_that_constant(save_model):
    """silero-vad (opset 18): `sr` reshaped, taken, compared with 16000, and branched on."""
    branch = {key: helper.make_graph(
        [helper.make_node("Mul", ["audio", factor], [f"scaled_{key}"])], key, [],
        [_out(f"scaled_{key}", TensorProto.FLOAT, 2)]) for key, factor in
        (("then", "two"), ("else", "three"))}
    nodes = [helper.make_node("Reshape", ["sr", "flat"], ["sr_flat"]),
             helper.make_node("Gather", ["sr_flat", "first"], ["sr_value"]),
             helper.make_node("Equal", ["sr_value", "rate"], ["is_16k"]),
             helper.make_node("If", ["is_16k"], ["scaled"], then_branch=branch["then"],
                              else_branch=branch["else"])]
    inits = [_int("flat", [-1]), _int("first", 0), _int("rate", 16000),
             numpy_helper.from_array(np.float32(2), "two"),
             numpy_helper.from_array(np.float32(3), "three")]
    model = load_model(save_model(_model(
        nodes, [helper.make_tensor_value_info("sr", TensorProto.INT64, []),
                helper.make_tensor_value_info("audio", TensorProto.FLOAT, [1, 8])],
        [_out("scaled", TensorProto.FLOAT, 2)], inits)))
    feeds = make_feeds(model, InputSettings(ranges={"audio": (-1, 1)}))
    described = {d.name: d for d in feeds.described}
    assert described["sr"].value_range == (16000, 16000) and not described["sr"].guessed
    assert "compared with 16000" in described["sr"].origin
    assert feeds.iterations[0]["sr"] == 16000 and feeds.warnings == ()


@pytest.mark.parametrize("command", [("audit",), ("fix", "-o", "fixed.onnx")])
def test_audit_and_fix_warn_about_guessed_ranges_too(trtcheck_cli, save_model, command):
    from zoo.build import cnn

    path = save_model(cnn(), "cnn.onnx")
    run = trtcheck_cli(command[0], path, *command[1:])
    assert run.code == 0, run.stderr
    assert ("trtcheck: warning: input 'image': no range given and none found in the graph"
            in run.stderr)
    given = trtcheck_cli(command[0], path, *command[1:], "--val-range", "image:[0,1]")
    assert given.code == 0 and "warning: input 'image'" not in given.stderr
