"""The tiny real-architecture models in zoo/real/ match their manifest and run.

The models are built by `bench/corpus/build.py --tiny-only` (torch exports at tiny configs plus
ONNX Runtime quantized variants); this test needs no torch. For each manifest entry: the file
(and its external data) exists and is under 2 MB, onnx.checker passes (the full check where the
manifest says it passed), the node and op counts recorded in the manifest match the file, and
ONNX Runtime runs it on the manifest's input shapes and value ranges with finite outputs of the
recorded names and ranks.
"""

from __future__ import annotations

import collections
import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

ZOO = Path(__file__).resolve().parents[1] / "zoo" / "real"
MANIFEST = json.loads((ZOO / "manifest.json").read_text())
LIMIT = 2 * 1024 * 1024
FIELDS = {"name", "path", "family", "source", "exporter", "license", "input_shapes",
          "val_ranges", "nodes", "size_bytes", "external_data", "notes", "ops"}


def _count_ops(graph: onnx.GraphProto, counts: collections.Counter) -> collections.Counter:
    for node in graph.node:
        counts[node.op_type] += 1
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                _count_ops(attr.g, counts)
            for sub in attr.graphs:
                _count_ops(sub, counts)
    return counts


def _feed(session: ort.InferenceSession, entry: dict) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    feed = {}
    for info in session.get_inputs():
        shape = entry["input_shapes"][info.name]
        lo, hi = entry["val_ranges"][info.name]
        if "int" in info.type:  # integer ranges are inclusive, as in Polygraphy
            dtype = np.int64 if info.type == "tensor(int64)" else np.int32
            feed[info.name] = rng.integers(int(lo), int(hi) + 1, size=shape).astype(dtype)
        else:
            feed[info.name] = rng.uniform(lo, hi, size=shape).astype(np.float32)
    return feed


def test_manifest_covers_the_patterns():
    assert 12 <= len(MANIFEST) <= 20
    assert len({e["name"] for e in MANIFEST}) == len(MANIFEST)
    for entry in MANIFEST:
        assert set(entry) >= FIELDS, entry["name"]
    exporters = {e["exporter"] for e in MANIFEST}
    assert {"classic", "dynamo"} <= exporters
    total = collections.Counter()
    for entry in MANIFEST:
        total.update(entry["ops"])
    for op in ("Constant", "CastLike", "If", "Loop", "Where", "Expand", "TopK",
               "NonMaxSuppression", "QuantizeLinear", "DynamicQuantizeLinear", "Resize"):
        assert total[op] > 0, f"no tiny model carries {op}"
    assert sum(e["external_data"] for e in MANIFEST) == 1
    # Every file in the folder belongs to an entry (no stale models left behind).
    listed = {e["path"] for e in MANIFEST}
    listed |= {f for e in MANIFEST for f in e.get("external_data_files", [])}
    present = {p.name for p in ZOO.iterdir() if p.suffix in (".onnx", ".data")}
    assert present == listed


@pytest.mark.parametrize("entry", MANIFEST, ids=[e["name"] for e in MANIFEST])
def test_tiny_model(entry):
    path = ZOO / entry["path"]
    assert path.exists()
    assert hashlib.sha256(path.read_bytes()).hexdigest() == entry["sha256"]
    extras = [ZOO / name for name in entry.get("external_data_files", [])]
    assert entry["external_data"] == bool(extras)
    size = path.stat().st_size + sum(p.stat().st_size for p in extras)
    assert size == entry["size_bytes"]
    assert size < LIMIT

    if entry.get("checker", "full") == "full":
        onnx.checker.check_model(str(path), full_check=True)
    else:
        onnx.checker.check_model(str(path))

    model = onnx.load(str(path), load_external_data=False)
    assert len(model.graph.node) == entry["nodes"]
    counts = _count_ops(model.graph, collections.Counter())
    assert {op: counts.get(op, 0) for op in entry["ops"]} == entry["ops"]

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    outputs = session.run(None, _feed(session, entry))
    names = [o.name for o in session.get_outputs()]
    assert names == list(entry["output_shapes"])
    for name, value in zip(names, outputs, strict=True):
        value = np.asarray(value)
        assert value.ndim == len(entry["output_shapes"][name]), name
        if value.dtype.kind == "f":
            assert np.isfinite(value).all(), name
    if "boxes" in names:  # the detectors must detect something, or NMS goes untested
        assert outputs[names.index("boxes")].shape[0] > 0
