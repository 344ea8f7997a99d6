"""Terminal views at the widths CI logs have: nothing a user needs is cut, no two names read alike.

The model is a real torchvision ViT export (zoo/real/vit_tiny_classic.onnx) with two of its
intermediate tensors exposed as outputs: their names share a 32-character prefix and a 22-character
tail and differ only in the layer (`/encoder/layers/encoder_layer_0/mlp/mlp.3/Add_output_0` and
`..._1/...`), which is what made two rows read `/encoder/layers/encoder_…` before.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import onnx
import pytest

from trtcheck.report.widths import ELLIPSIS, console_width, shorten_names

ZOO = Path(__file__).resolve().parents[1] / "zoo" / "real"
LONG_OUTPUTS = ("/encoder/layers/encoder_layer_0/mlp/mlp.3/Add_output_0",
                "/encoder/layers/encoder_layer_1/mlp/mlp.3/Add_output_0")
OUTPUTS = ("logits", *LONG_OUTPUTS)


def could_be(shown: str, name: str) -> bool:
    """Whether `shown` is `name`, whole or with parts replaced by '…' (head and tail kept)."""
    pieces = shown.split(ELLIPSIS)
    if len(pieces) == 1:
        return shown == name
    if not (name.startswith(pieces[0]) and name.endswith(pieces[-1])):
        return False
    position = len(pieces[0])
    for piece in pieces[1:-1]:
        found = name.find(piece, position)
        if found < 0:
            return False
        position = found + len(piece)
    return position <= len(name) - len(pieces[-1])


@pytest.fixture(scope="module")
def long_names_model(tmp_path_factory) -> Path:
    model = onnx.load(str(ZOO / "vit_tiny_classic.onnx"))
    inferred = {v.name: v for v in onnx.shape_inference.infer_shapes(model).graph.value_info}
    model.graph.output.extend(inferred[name] for name in LONG_OUTPUTS)
    path = tmp_path_factory.mktemp("widths") / "vit_long_outputs.onnx"
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module", params=["80", "140", None], ids=["COLUMNS=80", "COLUMNS=140",
                                                                   "not-a-tty"])
def bisected(request, long_names_model) -> tuple[str | None, str, dict]:
    """`trtcheck bisect` on the model, output captured (not a TTY), at one COLUMNS setting."""
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    if request.param is not None:
        env["COLUMNS"] = request.param
    folder = long_names_model.parent / f"run-{request.param}"
    folder.mkdir()
    run = subprocess.run(
        [sys.executable, "-m", "trtcheck", "bisect", str(long_names_model), "--input-shapes",
         "image:1x3x32x32", "--val-range", "image:[-1,1]", "--seed", "7", "--atol", "1e-4",
         "--rtol", "1e-4", "--no-precision-fix", "--json", "r.json", "--repro", "repro"],
        capture_output=True, text=True, cwd=folder, env=env, timeout=300)
    assert run.returncode == 1, run.stderr
    return request.param, run.stdout, json.loads((folder / "r.json").read_text())


def _comparison_section(stdout: str) -> list[str]:
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("tolerance:"))
    end = next(i for i, line in enumerate(lines) if line.startswith("  logits:"))
    return lines[start + 1:end]


def _output_rows(section: list[str]) -> dict[str, str]:
    """Each output row's shown name -> the rest of its row (cells wrapped over lines rejoined)."""
    rows: list[list[str]] = []
    if any("│" in line for line in section):
        for line in section:
            if "│" not in line:
                continue
            cells = [cell.strip() for cell in line.split("│")]
            if cells[0]:
                rows.append(cells)
            else:
                rows[-1] = [f"{a} {b}".strip() for a, b in zip(rows[-1], cells, strict=True)]
        return {cells[0]: " | ".join(cells[1:]) for cells in rows}
    for line in section:
        if line.startswith(" "):
            rows[-1][1] += " " + line.strip()
        elif line.endswith(("PASS", "FAIL")):
            name, verdict = line.rsplit(None, 1)
            rows.append([name, verdict])
    return dict((name, rest) for name, rest in rows)


def _shown_output_names(section: list[str]) -> list[str]:
    """The name each output row shows: the table's first cell, or a stacked row's first line."""
    return list(_output_rows(section))


def _shown_trace_nodes(stdout: str) -> dict[int, str]:
    """Trace index -> the node name its row shows (table or stacked rows)."""
    section = stdout.split("error along the path", 1)[1]
    shown = {}
    for line in section.splitlines():
        if "│" in line:
            cells = [cell.strip() for cell in line.split("│")]
            if cells[0].isdigit():
                shown[int(cells[0])] = cells[1]
        elif match := re.match(r"^(\d+)  (\S+)  (ok|DIVERGED|CULPRIT)$", line):
            shown[int(match[1])] = match[2]
    return shown


def test_every_output_row_is_one_distinct_output(bisected):
    columns, stdout, _ = bisected
    shown = _shown_output_names(_comparison_section(stdout))
    assert len(shown) == len(OUTPUTS) and len(set(shown)) == len(OUTPUTS), shown
    for text in shown:
        # Each row names exactly one output: the layer that tells the two apart is kept.
        assert [name for name in OUTPUTS if could_be(text, name)] != [], text
        assert len([name for name in OUTPUTS if could_be(text, name)]) == 1, text
    for name in OUTPUTS:
        assert sum(could_be(text, name) for text in shown) == 1, name
    if columns is None:
        # A CI log without COLUMNS has room for the whole names.
        assert sorted(shown) == sorted(OUTPUTS)


def test_inputs_seed_and_numbers_are_all_there(bisected):
    _, stdout, report = bisected
    flat = " ".join(stdout.split())
    assert "image float32[1, 3, 32, 32] in [-1, 1]" in flat
    assert "seed 7" in flat
    assert "tolerance: elemwise atol=0.0001 rtol=0.0001" in flat
    rows = _output_rows(_comparison_section(stdout))
    for output in report["outputs"]:
        (row,) = [rest for shown, rest in rows.items() if could_be(shown, output["name"])]
        assert f"{output['exceeding']} of {output['elements']}" in row, (output["name"], row)
        assert ELLIPSIS not in row, "only names are shortened"
    assert re.search(r"(^|\n)polygraphy run \S+vit_long_outputs.onnx .*--seed 7", stdout)


def test_columns_is_respected_and_only_commands_are_longer(bisected):
    columns, stdout, _ = bisected
    width = int(columns) if columns else 200
    long_lines = [line for line in stdout.splitlines() if len(line) > width]
    # A command and the line naming the model are printed whole, so they can be copied.
    assert all(line.startswith(("polygraphy run", "/", "vit_long_outputs.onnx"))
               or "vit_long_outputs.onnx  target" in line for line in long_lines), long_lines


def test_console_width_is_columns_then_generous(monkeypatch):
    monkeypatch.setenv("COLUMNS", "91")
    assert console_width(False) is None  # rich reads COLUMNS itself
    monkeypatch.delenv("COLUMNS")
    assert console_width(True) is None  # the terminal's own width
    assert console_width(False) == 200


def test_bisect_trace_rows_name_their_own_node(bisected):
    _, stdout, report = bisected
    nodes = {point["index"]: point["node"] for point in report["bisect"]["trace"]}
    shown = _shown_trace_nodes(stdout)
    assert len(shown) >= 5, stdout
    for index, text in shown.items():
        assert could_be(text, nodes[index]), (text, nodes[index])
        others = [i for i in shown if i != index and could_be(text, nodes[i])]
        assert not others, (text, [nodes[i] for i in others])
    assert len(set(shown.values())) == len(shown)


def test_shortening_keeps_head_and_tail_and_never_merges_names():
    model = onnx.load(str(ZOO / "vit_tiny_classic.onnx"))
    names = [output for node in model.graph.node for output in node.output]
    assert len(set(names)) > 300
    for width in (16, 24, 40, 60):
        shown = shorten_names(names, width)
        assert len(set(shown.values())) == len(set(names)), width
        for name, text in shown.items():
            assert could_be(text, name), (name, text)
            if len(name) <= width:
                assert text == name
            elif len(last := re.split("/" if "/" in name else "[.:]", name)[-1]) <= width - 2:
                # The distinguishing tail (the last segment) is never shortened away.
                assert text.endswith(last), (name, text)
            else:
                assert text.endswith(name[-((width - 1) * 2 // 3):]), (name, text)


def test_a_name_that_fits_is_never_touched():
    names = ["logits", "boxes", "/encoder/layer.0/Add_output_0"]
    assert shorten_names(names, 40) == {name: name for name in names}
    assert shorten_names(["a/b/c/d/e/f/g/h/i/j/k_output"], 16) == {
        "a/b/c/d/e/f/g/h/i/j/k_output": "a/…/i/j/k_output"}
    # When the head and the last segment do not fit together, the last segment wins.
    assert shorten_names(["/encoder/layers/Add_output_0"], 16) == {
        "/encoder/layers/Add_output_0": "…/Add_output_0"}


pytest_plugins = ["pytester"]


def test_the_plugins_failure_text_follows_columns(pytester, long_names_model, monkeypatch):
    """A suite item's failure text, in a CI log 80 columns wide: both long outputs told apart."""
    (pytester.path / "vit.onnx").write_bytes(long_names_model.read_bytes())
    pytester.makefile(".suite.toml", widths="""
[targets.fp16]
backend = "onnxrt-fp16"

[[case]]
name = "vit"
model = "vit.onnx"
inputs.shapes.image = [1, 3, 32, 32]
""")
    monkeypatch.setenv("COLUMNS", "80")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)  # no golden yet: the failure shows the comparison
    text = result.stdout.str()
    section = text.split("target onnxrt-fp16 vs reference onnxrt", 1)[1]
    section = section.split("with TensorRT:", 1)[0]
    rows = [line for line in section.splitlines() if line.endswith(("PASS", "FAIL"))
            and not line.startswith(" ")]
    shown = [row.rsplit(None, 1)[0] for row in rows]
    assert len(shown) == 3 and len(set(shown)) == 3, section
    for name in OUTPUTS:
        assert sum(could_be(text, name) for text in shown) == 1, (name, shown)
