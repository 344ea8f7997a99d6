"""TensorRT's ONNX operator support, per major version, as data (trtcheck/lint_data/*.json).

The tables are transcribed from onnx-tensorrt's docs/operators.md of each release; each file
names its source commit. Where the doc and the parser's own importer (onnxOpImporters.cpp) disagree
on a real model, the table follows the importer and lists the change with its evidence under
`source.corrections` (NonZero takes BOOL: every torchvision detector feeds it a mask). They
serve the lint (which works without TensorRT) and the pass that makes initializer-only inputs
constant.
"""

from __future__ import annotations

import functools
import json
from importlib import resources
from typing import Any

MAJORS = (10, 11)


@functools.cache
def support_table(major: int) -> dict[str, Any]:
    """The operator table for TensorRT `major` (10 or 11)."""
    if major not in MAJORS:
        raise ValueError(f"no operator table for TensorRT {major}; have {MAJORS}")
    text = resources.files("trtcheck").joinpath(f"lint_data/tensorrt{major}.json").read_text()
    return json.loads(text)


def initializer_inputs(op: str) -> set[str]:
    """ONNX input names of `op` that some TensorRT release requires to be initializers."""
    names: set[str] = set()
    for major in MAJORS:
        names.update(support_table(major)["operators"].get(op, {}).get("initializer_inputs", []))
    return names
