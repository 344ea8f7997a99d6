"""Detection outputs compared as sets, on the torchvision detectors of zoo/real.

The reference detections come from running the real exports on ONNX Runtime; targets are the
fp16 emulation, or the reference's own detections reordered (what NMS/TopK do to equal scores)
and then moved, dropped or relabelled, so that the expected verdict is known.
"""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import numpy as np
import pytest
from polygraphy.comparator import IterationResult, RunResults

from tests.conftest import read_json
from trtcheck.compare import NoSignalError, compare_runs
from trtcheck.core import CompareRequest, compare_model
from trtcheck.detections import iou_matrix, make_spec, parse_spec
from trtcheck.errors import UsageError
from trtcheck.suite import load_suite
from trtcheck.tolerance import Tolerance, Tolerances

ZOO = Path(__file__).resolve().parents[1] / "zoo" / "real"
SCHEMA = json.loads((Path(__file__).resolve().parents[1] / "trtcheck" / "report" /
                     "compare.schema.json").read_text())
REF, TGT = "reference:onnxrt", "target:onnxrt-fp16"
TORCHVISION = parse_spec("boxes=boxes,scores=scores,labels=labels")
# A box tolerance in pixels and a score tolerance, as a user would declare them.
TOLERANCES = Tolerances(Tolerance(atol=0.25, rtol=1e-3))


def runs(reference: dict[str, np.ndarray], target: dict[str, np.ndarray]) -> RunResults:
    results = RunResults()
    results.append((REF, [IterationResult(reference, runner_name=REF)]))
    results.append((TGT, [IterationResult(target, runner_name=TGT)]))
    return results


def reference_outputs(model: str) -> dict[str, np.ndarray]:
    result = compare_model(CompareRequest(model=ZOO / model, target="onnxrt",
                                          detections=(TORCHVISION,)))
    return {name: np.asarray(value) for name, value in result.run_results[REF][0].items()}


@pytest.fixture(scope="module")
def ssdlite() -> dict[str, np.ndarray]:
    outputs = reference_outputs("ssdlite_tiny_classic.onnx")
    assert outputs["boxes"].shape[0] >= 10 and outputs["labels"].dtype == np.int64
    return outputs


@pytest.fixture(scope="module")
def maskrcnn() -> dict[str, np.ndarray]:
    outputs = reference_outputs("maskrcnn_tiny_classic.onnx")
    assert outputs["masks"].shape[0] == outputs["boxes"].shape[0] >= 10
    return outputs


def permuted(outputs: dict[str, np.ndarray], seed: int = 0) -> tuple[dict, np.ndarray]:
    order = np.random.default_rng(seed).permutation(len(outputs["scores"]))
    return {name: values[order].copy() for name, values in outputs.items()}, order


def by_name(diffs):
    return {diff.name: diff for diff in diffs}


def test_ssdlite_fp16_pairs_every_detection():
    result = compare_model(CompareRequest(model=ZOO / "ssdlite_tiny_classic.onnx",
                                          target="onnxrt-fp16", detections=(TORCHVISION,)))
    assert result.verdict == "pass", [d.failures for d in result.outputs]
    match = result.outputs[0].detections
    assert match is not None
    assert match.matched == match.reference_count == match.target_count >= 10
    # fp16 really ran: the paired boxes moved, but stayed the same boxes.
    assert 0 < match.max_box_error < 0.25 and match.min_iou > 0.95
    assert {d.method for d in result.outputs} == {"detections"}


def test_permuted_detections_pass_paired_and_fail_elementwise(ssdlite):
    target, _ = permuted(ssdlite)
    target["boxes"] += np.float32(0.01)  # a little rounding noise
    elementwise = by_name(compare_runs(runs(ssdlite, target), REF, TGT, TOLERANCES))
    assert not elementwise["boxes"].passed
    paired = by_name(compare_runs(runs(ssdlite, target), REF, TGT, TOLERANCES, (TORCHVISION,)))
    assert all(d.passed for d in paired.values()), [d.failures for d in paired.values()]
    match = paired["boxes"].detections
    assert match.matched == len(ssdlite["scores"]) and match.matched_fraction == 1.0
    assert match.max_box_error == pytest.approx(0.01, abs=1e-4)
    assert paired["boxes"].max_abs_error == pytest.approx(0.01, abs=1e-4)


def test_a_moved_box_fails_and_is_found_where_the_reference_has_it(ssdlite):
    target, order = permuted(ssdlite)
    moved = 3  # target position; the reference has this detection at order[moved]
    width = target["boxes"][moved, 2] - target["boxes"][moved, 0]
    target["boxes"][moved, [0, 2]] += width * 0.1  # IoU stays above 0.5: still paired
    diffs = by_name(compare_runs(runs(ssdlite, target), REF, TGT, TOLERANCES, (TORCHVISION,)))
    boxes = diffs["boxes"]
    assert not boxes.passed and boxes.detections.matched_fraction == 1.0
    assert boxes.max_abs_index[0] == order[moved]
    assert boxes.max_abs_error == pytest.approx(width * 0.1, rel=1e-3)


def test_a_box_moved_away_is_unmatched(ssdlite):
    target, order = permuted(ssdlite)
    target["boxes"][0] += np.float32(500)
    diffs = by_name(compare_runs(runs(ssdlite, target), REF, TGT, TOLERANCES, (TORCHVISION,)))
    match = diffs["boxes"].detections
    count = len(ssdlite["scores"])
    assert match.matched == count - 1 and not diffs["boxes"].passed
    assert "detections:" in diffs["boxes"].failures[0]
    assert [d.index for d in match.unmatched_reference] == [(int(order[0]),)]
    assert [d.index for d in match.unmatched_target] == [(0,)]
    # A declared limit accepts one miss in the whole set.
    loose = make_spec({"boxes": "boxes", "scores": "scores", "labels": "labels",
                       "min_matched": (count - 1) / count}, "test")
    assert all(d.passed for d in compare_runs(runs(ssdlite, target), REF, TGT, TOLERANCES,
                                              (loose,)))


def test_a_dropped_detection_fails_with_counts(ssdlite):
    target = {name: values[1:] for name, values in ssdlite.items()}
    diffs = by_name(compare_runs(runs(ssdlite, target), REF, TGT, TOLERANCES, (TORCHVISION,)))
    match = diffs["scores"].detections
    assert (match.reference_count, match.target_count) == (len(ssdlite["scores"]),
                                                          len(ssdlite["scores"]) - 1)
    assert not any(d.passed for d in diffs.values())


def test_another_class_is_not_a_match(ssdlite):
    target, _ = permuted(ssdlite)
    target["labels"][0] += 1
    diffs = by_name(compare_runs(runs(ssdlite, target), REF, TGT, TOLERANCES, (TORCHVISION,)))
    assert diffs["labels"].detections.matched == len(ssdlite["scores"]) - 1
    class_agnostic = parse_spec("boxes=boxes,scores=scores")
    diffs = by_name(compare_runs(runs(ssdlite, target), REF, TGT, TOLERANCES,
                                 (class_agnostic,)))
    # Paired without classes, the labels are an ordinary integer output (in the wrong order).
    assert diffs["boxes"].passed and diffs["labels"].method == "exact"


def test_maskrcnn_masks_follow_their_detections(maskrcnn):
    target, _ = permuted(maskrcnn, seed=1)
    without_masks = by_name(compare_runs(runs(maskrcnn, target), REF, TGT, TOLERANCES,
                                         (TORCHVISION,)))
    assert without_masks["boxes"].passed and not without_masks["masks"].passed
    spec = parse_spec("boxes=boxes,scores=scores,labels=labels,per_detection=masks")
    with_masks = by_name(compare_runs(runs(maskrcnn, target), REF, TGT, TOLERANCES, (spec,)))
    assert all(d.passed for d in with_masks.values())
    assert with_masks["masks"].elements == maskrcnn["masks"].size


@pytest.mark.parametrize("batched", [False, True])
def test_packed_layout(ssdlite, batched):
    packed = np.concatenate([ssdlite["boxes"], ssdlite["scores"][:, None],
                             ssdlite["labels"][:, None].astype(np.float32)], axis=1)
    target = packed[np.random.default_rng(2).permutation(len(packed))]
    if batched:
        packed, target = packed[None], target[None]
    spec = parse_spec("packed=dets")
    (diff,) = compare_runs(runs({"dets": packed}, {"dets": target}), REF, TGT, TOLERANCES,
                           (spec,))
    assert diff.passed and diff.detections.matched == len(ssdlite["scores"])
    target = target.copy()
    target[..., 0, 5] += 1  # one detection changes class
    (diff,) = compare_runs(runs({"dets": packed}, {"dets": target}), REF, TGT, TOLERANCES,
                           (spec,))
    assert not diff.passed


def test_no_detections_in_either_run_is_no_signal():
    empty = {"boxes": np.zeros((0, 4), np.float32), "scores": np.zeros((0,), np.float32),
             "labels": np.zeros((0,), np.int64)}
    with pytest.raises(NoSignalError, match="do not exercise the model") as raised:
        compare_runs(runs(empty, dict(empty)), REF, TGT, TOLERANCES, (TORCHVISION,))
    assert raised.value.exit_code == 3
    # Without a detection spec, the same outputs are empty and no signal either.
    with pytest.raises(NoSignalError, match="empty in both runs"):
        compare_runs(runs(empty, dict(empty)), REF, TGT, TOLERANCES)


def test_iou_of_identical_and_degenerate_boxes():
    boxes = np.array([[0, 0, 10, 10], [5, 5, 5, 5], [20, 20, 30, 30]], np.float64)
    iou = iou_matrix(boxes, boxes)
    assert np.allclose(np.diag(iou), 1.0)
    shifted = np.array([[5, 0, 15, 10]], np.float64)
    assert iou_matrix(boxes[:1], shifted)[0, 0] == pytest.approx(50 / 150)


@pytest.mark.parametrize("text, message", [
    ("boxes=b", "name the outputs"),
    ("boxes=b,scores=s,packed=p", "not both"),
    ("boxes=b,scores=s,iou=0", "iou"),
    ("boxes=b,scores=s,iou=x", "not a number"),
    ("boxes=b,scores=s,min_matched=2", "min_matched"),
    ("boxes=b,scores=s,colour=red", "unknown key"),
    ("boxes=b,scores=s,format=yxyx", "format"),
    ("boxes", "not KEY=VALUE"),
])
def test_bad_specs_are_usage_errors(text, message):
    with pytest.raises(UsageError, match=message):
        parse_spec(text)


def test_cli_detections_and_json_schema(trtcheck_cli, tmp_path):
    model = ZOO / "ssdlite_tiny_classic.onnx"
    run = trtcheck_cli("compare", model, "--target", "onnxrt-fp16", "--detections",
                       "boxes=boxes,scores=scores,labels=labels,iou=0.9", "--json", "r.json",
                       "--report", "r.html")
    assert run.code == 0, run.stderr
    assert "detections boxes=boxes,scores=scores,labels=labels,iou=0.9" in run.stdout
    report = read_json(tmp_path / "r.json")
    jsonschema.validate(report, SCHEMA)
    boxes = report["outputs"][0]
    assert boxes["method"] == "detections" and boxes["detections"]["spec"]["iou"] == 0.9
    scores = report["outputs"][1]
    assert any("constant" in w for w in scores["warnings"])
    page = (tmp_path / "r.html").read_text()
    assert "matched" in page and "constant" in page
    # The printed command repeats the comparison, detections and agreement rate included.
    import shlex

    agreement = trtcheck_cli("compare", model, "--target", "onnxrt-fp16", "--detections",
                             "boxes=boxes,scores=scores,iou=0.9", "--min-agreement",
                             "labels:0.5", "--json", "a.json")
    first = read_json(tmp_path / "a.json")
    argv = shlex.split(first["trtcheck_command"])
    assert "--detections" in argv and "--min-agreement" in argv
    again = trtcheck_cli(*argv[1:], "--json", "b.json")
    assert again.code == agreement.code, again.stderr
    second = read_json(tmp_path / "b.json")
    assert second["config"] == first["config"] and second["outputs"] == first["outputs"]
    bad = trtcheck_cli("compare", model, "--target", "onnxrt-fp16", "--detections",
                       "boxes=bboxes,scores=scores")
    assert bad.code == 2 and "no output 'bboxes'" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1


def test_suite_detections(tmp_path):
    suite = tmp_path / "det.suite.toml"
    suite.write_text(f"""
[targets.fp16]
backend = "onnxrt-fp16"

[[case]]
name = "ssdlite"
model = "{ZOO / 'ssdlite_tiny_classic.onnx'}"

[case.detections]
boxes = "boxes"
scores = "scores"
labels = "labels"
iou = 0.8

[[case]]
name = "bad"
model = "{ZOO / 'ssdlite_tiny_classic.onnx'}"

[[case.detections]]
boxes = "boxes"
min_matched = 0.9
""")
    good, bad = load_suite(suite).cases
    assert good.error is None
    (spec,) = good.detections
    assert (spec.boxes, spec.labels, spec.iou) == ("boxes", "labels", 0.8)
    assert bad.error is not None and "det.suite.toml:" in bad.error
    assert "name the outputs" in bad.error
