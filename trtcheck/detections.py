"""Detections compared as a set: reference and target detections paired by class and IoU.

After NMS or TopK the order of detections means nothing: equal scores come out in any order, and
one rounding change reorders the rest, so an elementwise comparison fails boxes that are all
there ("cosine 0.62"). Here the two runs' detections are paired the way detection benchmarks pair
predictions with ground truth (COCO's evaluation, greedy): reference detections by descending
score, each takes the unpaired target detection of the same class with the highest IoU, if that
IoU reaches the declared minimum. The paired values are then aligned so that `compare` can hold
boxes, scores and per-detection outputs (masks) to their own tolerances; unpaired detections
count against the matched fraction.

Greedy rather than an optimal (Hungarian) assignment: it is what detection metrics use, needs no
SciPy, and on two runs of the same model the pairs are unambiguous unless boxes nearly coincide.

Layouts: torchvision's detectors (`boxes` [N, 4], `scores` [N], `labels` [N] int64) and a single
packed tensor [N, 6] (x1, y1, x2, y2, score, label, as NMS-fused YOLO exports emit); either with a
leading batch dimension.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from trtcheck.errors import UsageError
from trtcheck.tolerance import check_tolerance_value

BOX_FORMATS = ("xyxy", "xywh", "cxcywh")
# How many unmatched detections a report lists; the counts are always complete.
LISTED_UNMATCHED = 10


@dataclass(frozen=True)
class DetectionSpec:
    """The outputs that together hold one set of detections, and the limits they must meet.

    Either `boxes` with `scores` (and `labels`, else matching ignores classes), or `packed`: one
    [N, 6] output of x1, y1, x2, y2, score, label. `per_detection` outputs (masks, keypoints) have
    one entry per detection along the same leading axes and are aligned with the pairs.
    """

    boxes: str | None = None
    scores: str | None = None
    labels: str | None = None
    packed: str | None = None
    per_detection: tuple[str, ...] = ()
    iou: float = 0.5
    min_matched: float = 1.0
    box_format: str = "xyxy"

    @property
    def outputs(self) -> tuple[str, ...]:
        """Every output this spec takes over from the elementwise comparison."""
        own = (self.packed,) if self.packed else (self.boxes, self.scores, self.labels)
        return tuple(name for name in (*own, *self.per_detection) if name)

    def describe(self) -> str:
        """The spec as the CLI takes it (`--detections ...`), for reports and repro commands."""
        parts = [f"packed={self.packed}"] if self.packed else [
            f"{key}={value}" for key, value in (("boxes", self.boxes), ("scores", self.scores),
                                                ("labels", self.labels)) if value]
        if self.per_detection:
            parts.append(f"per_detection={'+'.join(self.per_detection)}")
        parts.append(f"iou={self.iou:g}")
        parts.append(f"min_matched={self.min_matched:g}")
        if self.box_format != "xyxy":
            parts.append(f"format={self.box_format}")
        return ",".join(parts)


def make_spec(fields: dict[str, object], where: str) -> DetectionSpec:
    """A checked `DetectionSpec` from `fields` (CLI or suite); `where` starts every error."""
    unknown = sorted(set(fields) - {"boxes", "scores", "labels", "packed", "per_detection",
                                    "iou", "min_matched", "format"})
    if unknown:
        raise UsageError(f"{where}: unknown key(s) {', '.join(unknown)}; keys are boxes, scores, "
                         "labels, packed, per_detection, iou, min_matched, format")
    names = {}
    for key in ("boxes", "scores", "labels", "packed"):
        value = fields.get(key)
        if value is not None and (not isinstance(value, str) or not value):
            raise UsageError(f"{where}: {key} must name an output")
        names[key] = value
    if names["packed"] and (names["boxes"] or names["scores"] or names["labels"]):
        raise UsageError(f"{where}: give either packed=OUT ([N, 6]: x1, y1, x2, y2, score, "
                         "label) or boxes=OUT,scores=OUT[,labels=OUT], not both")
    if not names["packed"] and not (names["boxes"] and names["scores"]):
        raise UsageError(f"{where}: name the outputs: boxes=OUT,scores=OUT[,labels=OUT] or "
                         "packed=OUT")
    extra = fields.get("per_detection", ())
    if isinstance(extra, str):
        extra = tuple(part for part in extra.split("+") if part)
    if not isinstance(extra, (list, tuple)) or not all(isinstance(e, str) and e for e in extra):
        raise UsageError(f"{where}: per_detection must name outputs (masks+keypoints)")
    box_format = fields.get("format", "xyxy")
    if box_format not in BOX_FORMATS:
        raise UsageError(f"{where}: format {box_format!r} is not one of {', '.join(BOX_FORMATS)}")
    spec = DetectionSpec(
        boxes=names["boxes"], scores=names["scores"], labels=names["labels"],
        packed=names["packed"], per_detection=tuple(extra),
        iou=check_tolerance_value(f"{where}: iou", fields.get("iou", 0.5), 0.0, 1.0,
                                  above_low=True),
        min_matched=check_tolerance_value(f"{where}: min_matched",
                                          fields.get("min_matched", 1.0), 0.0, 1.0),
        box_format=str(box_format))
    if len(set(spec.outputs)) != len(spec.outputs):
        raise UsageError(f"{where}: an output is named twice")
    return spec


def parse_spec(text: str, flag: str = "--detections") -> DetectionSpec:
    """`boxes=B,scores=S,labels=L,iou=0.5` -> `DetectionSpec`; a bad item is a `UsageError`."""
    fields: dict[str, object] = {}
    for item in text.split(","):
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key or not value:
            raise UsageError(f"{flag} {text}: '{item}' is not KEY=VALUE; write {flag} "
                             "boxes=OUT,scores=OUT,labels=OUT[,iou=0.5][,min_matched=1]")
        if key in ("iou", "min_matched"):
            try:
                fields[key] = float(value)
            except ValueError:
                raise UsageError(f"{flag} {text}: {key} '{value}' is not a number") from None
        else:
            fields[key] = value
    return make_spec(fields, f"{flag} {text}")


def check_specs(specs: tuple[DetectionSpec, ...], output_names: tuple[str, ...],
                flag: str = "--detections") -> None:
    """Raises `UsageError` for outputs the model does not have or that two specs share."""
    seen: set[str] = set()
    for spec in specs:
        for name in spec.outputs:
            if name not in output_names:
                raise UsageError(f"{flag} {spec.describe()}: the model has no output '{name}'; "
                                 f"its outputs are: {', '.join(output_names)}")
            if name in seen:
                raise UsageError(f"{flag}: output '{name}' is named by two detection sets")
            seen.add(name)


@dataclass(frozen=True)
class Detection:
    """One detection as reports list it: where it is in its run, class, score and box."""

    index: tuple[int, ...]
    label: float | None
    score: float
    box: tuple[float, ...]


@dataclass(frozen=True)
class DetectionMatch:
    """The pairing of one detection set, with the errors of the paired values."""

    spec: DetectionSpec
    reference_count: int
    target_count: int
    matched: int
    min_iou: float | None
    max_box_error: float | None
    max_score_error: float | None
    unmatched_reference: tuple[Detection, ...]
    unmatched_target: tuple[Detection, ...]
    # Paired positions (batch row, detection) in each run, reference order; not serialised.
    reference_index: tuple[tuple[int, int], ...] = field(default=(), repr=False)
    target_index: tuple[tuple[int, int], ...] = field(default=(), repr=False)

    @property
    def matched_fraction(self) -> float:
        """Pairs over the larger of the two counts: a missed and an extra detection both count."""
        larger = max(self.reference_count, self.target_count)
        return self.matched / larger if larger else 1.0

    @property
    def failures(self) -> tuple[str, ...]:
        if self.matched_fraction >= self.spec.min_matched:
            return ()
        missed = self.reference_count - self.matched
        extra = self.target_count - self.matched
        return (f"detections: {self.matched} of {max(self.reference_count, self.target_count)} "
                f"matched ({100 * self.matched_fraction:.1f}% < "
                f"{100 * self.spec.min_matched:g}%, IoU >= {self.spec.iou:g} and same class): "
                f"{missed} reference detection(s) missing from the target, {extra} only in the "
                "target",)

    def summary(self) -> str:
        text = (f"detections {self.spec.describe()}: matched {self.matched} (reference "
                f"{self.reference_count}, target {self.target_count})")
        if self.matched:
            text += (f"; matched pairs: IoU >= {self.min_iou:.4g}, box error <= "
                     f"{self.max_box_error:.3g}, score error <= {self.max_score_error:.3g}")
        return text


@dataclass(frozen=True)
class _Layout:
    """One run's detections as arrays with a batch axis: boxes [B, N, 4], scores, labels [B, N]."""

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray | None
    batched: bool


def _layout(spec: DetectionSpec, outputs: dict[str, np.ndarray], run: str) -> _Layout:
    if spec.packed:
        packed = np.asarray(outputs[spec.packed])
        if packed.ndim not in (2, 3) or packed.shape[-1] != 6:
            raise UsageError(f"--detections packed={spec.packed}: {run} output has shape "
                             f"{tuple(packed.shape)}; packed detections are [N, 6] or [B, N, 6] "
                             "(x1, y1, x2, y2, score, label)")
        batched = packed.ndim == 3
        packed3 = packed if batched else packed[None]
        return _Layout(packed3[..., :4].astype(np.float64), packed3[..., 4].astype(np.float64),
                       packed3[..., 5], batched)
    assert spec.boxes is not None and spec.scores is not None
    boxes = np.asarray(outputs[spec.boxes])
    scores = np.asarray(outputs[spec.scores])
    labels = np.asarray(outputs[spec.labels]) if spec.labels else None
    if boxes.ndim not in (2, 3) or boxes.shape[-1] != 4:
        raise UsageError(f"--detections boxes={spec.boxes}: {run} output has shape "
                         f"{tuple(boxes.shape)}; boxes are [N, 4] or [B, N, 4]")
    for name, values in ((spec.scores, scores), (spec.labels, labels)):
        if values is not None and values.shape != boxes.shape[:-1]:
            raise UsageError(f"--detections: {run} output '{name}' has shape "
                             f"{tuple(values.shape)}, boxes '{spec.boxes}' {tuple(boxes.shape)}; "
                             f"it needs one value per box: {tuple(boxes.shape[:-1])}")
    batched = boxes.ndim == 3
    expand = (lambda a: a) if batched else (lambda a: a[None])
    return _Layout(expand(boxes).astype(np.float64), expand(scores).astype(np.float64),
                   None if labels is None else expand(labels), batched)


def to_xyxy(boxes: np.ndarray, box_format: str) -> np.ndarray:
    if box_format == "xywh":
        return np.concatenate([boxes[..., :2], boxes[..., :2] + boxes[..., 2:]], axis=-1)
    if box_format == "cxcywh":
        half = boxes[..., 2:] / 2
        return np.concatenate([boxes[..., :2] - half, boxes[..., :2] + half], axis=-1)
    return boxes


def iou_matrix(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """IoU of every xyxy box in `first` [N, 4] with every one in `second` [M, 4].

    Two equal boxes of zero area have IoU 1 (they coincide), not 0/0.
    """
    top_left = np.maximum(first[:, None, :2], second[None, :, :2])
    bottom_right = np.minimum(first[:, None, 2:], second[None, :, 2:])
    inter = np.prod(np.clip(bottom_right - top_left, 0, None), axis=-1)

    def area(b: np.ndarray) -> np.ndarray:
        return np.prod(np.clip(b[:, 2:] - b[:, :2], 0, None), axis=-1)

    union = area(first)[:, None] + area(second)[None, :] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)
    same = np.all(first[:, None, :] == second[None, :, :], axis=-1)
    return np.where(same, 1.0, np.nan_to_num(iou, nan=0.0))


def _pair_row(ref_boxes, ref_scores, ref_labels, tgt_boxes, tgt_labels, min_iou: float):
    """Greedy pairs (reference index, target index, IoU) of one batch row."""
    iou = iou_matrix(ref_boxes, tgt_boxes)
    if ref_labels is not None and tgt_labels is not None:
        iou[ref_labels[:, None] != tgt_labels[None, :]] = -1.0
    taken = np.zeros(len(tgt_boxes), bool)
    pairs = []
    # Stable sort: among equal scores the reference's own order decides, as in COCO's matcher.
    for r in np.argsort(-ref_scores, kind="stable"):
        if not len(tgt_boxes):
            break
        candidates = np.where(taken, -1.0, iou[r])
        t = int(np.argmax(candidates))
        if candidates[t] >= min_iou:
            taken[t] = True
            pairs.append((int(r), t, float(iou[r, t])))
    return pairs


def _listed(layout: _Layout, positions: list[tuple[int, int]]) -> tuple[Detection, ...]:
    listed = sorted(positions, key=lambda p: -layout.scores[p])[:LISTED_UNMATCHED]
    return tuple(Detection(
        index=p if layout.batched else (p[1],),
        label=None if layout.labels is None else float(layout.labels[p]),
        score=float(layout.scores[p]),
        box=tuple(float(v) for v in layout.boxes[p])) for p in listed)


def match_detections(spec: DetectionSpec, reference: dict[str, np.ndarray],
                     target: dict[str, np.ndarray]) -> DetectionMatch:
    """Pairs the target's detections with the reference's; see the module docstring."""
    ref, tgt = _layout(spec, reference, "the reference's"), _layout(spec, target, "the target's")
    if ref.boxes.shape[0] != tgt.boxes.shape[0]:
        raise UsageError(f"--detections {spec.describe()}: the runs have batch sizes "
                         f"{ref.boxes.shape[0]} and {tgt.boxes.shape[0]}")
    ref_index: list[tuple[int, int]] = []
    tgt_index: list[tuple[int, int]] = []
    ious: list[float] = []
    unmatched_ref: list[tuple[int, int]] = []
    unmatched_tgt: list[tuple[int, int]] = []
    for b in range(ref.boxes.shape[0]):
        pairs = _pair_row(
            to_xyxy(ref.boxes[b], spec.box_format), ref.scores[b],
            None if ref.labels is None else ref.labels[b],
            to_xyxy(tgt.boxes[b], spec.box_format),
            None if tgt.labels is None else tgt.labels[b], spec.iou)
        ref_index += [(b, r) for r, _, _ in pairs]
        tgt_index += [(b, t) for _, t, _ in pairs]
        ious += [iou for _, _, iou in pairs]
        paired_ref = {r for r, _, _ in pairs}
        paired_tgt = {t for _, t, _ in pairs}
        unmatched_ref += [(b, r) for r in range(ref.boxes.shape[1]) if r not in paired_ref]
        unmatched_tgt += [(b, t) for t in range(tgt.boxes.shape[1]) if t not in paired_tgt]
    box_error = score_error = None
    if ref_index:
        rows_r, rows_t = tuple(np.array(ref_index).T), tuple(np.array(tgt_index).T)
        with np.errstate(invalid="ignore"):
            box_error = float(np.max(np.abs(ref.boxes[rows_r] - tgt.boxes[rows_t])))
            score_error = float(np.max(np.abs(ref.scores[rows_r] - tgt.scores[rows_t])))
    return DetectionMatch(
        spec=spec, reference_count=int(ref.scores.size), target_count=int(tgt.scores.size),
        matched=len(ref_index), min_iou=min(ious) if ious else None, max_box_error=box_error,
        max_score_error=score_error, unmatched_reference=_listed(ref, unmatched_ref),
        unmatched_target=_listed(tgt, unmatched_tgt), reference_index=tuple(ref_index),
        target_index=tuple(tgt_index))


def aligned(values: np.ndarray, positions: tuple[tuple[int, int], ...], batched: bool,
            ) -> np.ndarray:
    """The entries of a per-detection output at `positions`, stacked in pairing order."""
    values = np.asarray(values)
    if not positions:
        return np.zeros((0, *values.shape[2 if batched else 1:]), values.dtype)
    rows = np.array(positions)
    return values[rows[:, 0], rows[:, 1]] if batched else values[rows[:, 1]]


def is_batched(spec: DetectionSpec, outputs: dict[str, np.ndarray]) -> bool:
    first = spec.packed or spec.boxes
    assert first is not None
    return np.asarray(outputs[first]).ndim == 3
