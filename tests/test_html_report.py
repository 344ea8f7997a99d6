"""The HTML report: self-contained, parseable, with the plots and the JSON report's numbers."""

from __future__ import annotations

import html.parser
import re

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from tests.conftest import read_json
from trtcheck.report.numbers import fmt
from zoo.build import two_heads


class Collector(html.parser.HTMLParser):
    """Collects tags and checks that non-void elements are closed in order."""

    VOID = {"meta", "br", "img", "hr", "input", "link", "path", "use", "stop", "rect", "circle",
            "line", "polyline", "polygon", "ellipse"}

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.tags: list[str] = []
        self.errors: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.tags.append(tag)

    def handle_endtag(self, tag):
        if tag in self.VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"unexpected </{tag}> with open {self.stack[-3:]}")
        else:
            self.stack.pop()

    def handle_data(self, data):
        self.text.append(data)


def parse(text: str) -> Collector:
    collector = Collector()
    collector.feed(text)
    collector.close()
    return collector


def assert_self_contained(text: str) -> None:
    assert not re.search(r"<script|<link|<iframe|<img", text)
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", text)
    assert "url(http" not in text and "@import" not in text


def test_compare_report_html_and_json_agree(save_model, trtcheck_cli, tmp_path):
    path = save_model(two_heads())
    run = trtcheck_cli("bisect", path, "--json", "r.json", "--report", "r.html", "--repro", "rp")
    assert run.code == 1
    text = (tmp_path / "r.html").read_text()
    document = parse(text)
    assert document.errors == [] and document.stack == []
    assert_self_contained(text)
    # Two plots for the failing output (histogram, error vs value) and the bisection trace.
    assert document.tags.count("svg") == 3
    report = read_json(tmp_path / "r.json")
    page = " ".join(document.text)
    for output in report["outputs"]:
        for key in ("max_abs_error", "max_rel_error", "mean_abs_error", "p99_abs_error"):
            assert fmt(output[key]) in page, (output["name"], key)
        assert f'{output["exceeding"]} of {output["elements"]}' in page
    assert report["bisect"]["culprit"]["node"] in page
    assert report["bisect"]["criterion"] in page
    for point in report["bisect"]["trace"]:
        assert point["tensor"] in page
    assert report["trtcheck_command"] in page and report["polygraphy_command"] in page


def test_reports_stay_small_whatever_the_tensor_size(save_model, trtcheck_cli, tmp_path):
    size = 1_000_000
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, size])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, size])
    inits = [numpy_helper.from_array(np.array(1e5, np.float32), "up"),
             numpy_helper.from_array(np.array(1e-5, np.float32), "down")]
    model = helper.make_model(helper.make_graph(
        [helper.make_node("Mul", ["x", "up"], ["big"], name="up"),
         helper.make_node("Mul", ["big", "down"], ["y"], name="down")], "g", [x], [y], inits),
        opset_imports=[helper.make_opsetid("", 17)])
    path = save_model(model)
    run = trtcheck_cli("bisect", path, "--json", "r.json", "--report", "r.html", "--repro", "rp")
    assert run.code == 1
    assert (tmp_path / "r.json").stat().st_size < 64_000
    assert (tmp_path / "r.html").stat().st_size < 400_000
    assert read_json(tmp_path / "r.json")["outputs"][0]["elements"] == size


def test_error_report_is_a_page_too(trtcheck_cli, tmp_path):
    run = trtcheck_cli("compare", "missing.onnx", "--report", "r.html")
    assert run.code == 2
    text = (tmp_path / "r.html").read_text()
    assert "ERROR" in text and "missing.onnx" in text and parse(text).errors == []


def test_same_data_same_page(save_model, trtcheck_cli, tmp_path):
    path = save_model(two_heads())
    for name in ("a", "b"):
        trtcheck_cli("compare", path, "--json", f"{name}.json")
    from trtcheck.report.html_report import render

    a, b = read_json(tmp_path / "a.json"), read_json(tmp_path / "b.json")
    for document in (a, b):
        document["timings_s"] = {}
    assert render([("m", a, {})], "t") == render([("m", b, {})], "t")
    assert onnx.load(str(path))  # the model is untouched
