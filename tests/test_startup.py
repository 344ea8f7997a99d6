"""What keeps trtcheck no slower than Polygraphy at start-up (bench/compare_wall_time.py).

Wall time itself is measured by the bench, interleaved with Polygraphy on the same machine; these
tests pin down the causes, which do not depend on the machine's load.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from trtcheck.backends import BackendOptions, get_backend, onnxrt_session_source
from trtcheck.model import load_model

ZOO = Path(__file__).resolve().parents[1] / "zoo"
HEAVY = ("onnx", "numpy", "onnxruntime", "polygraphy", "onnx_graphsurgeon", "rich")


def _imported(*args: str) -> set[str]:
    """Top-level packages `python -m trtcheck ARGS` imports (from -X importtime)."""
    run = subprocess.run([sys.executable, "-X", "importtime", "-m", "trtcheck", *args],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode in (0, 2), run.stderr[-2000:]
    return {line.rsplit("|", 1)[1].strip().split(".")[0]
            for line in run.stderr.splitlines() if line.startswith("import time:")}


@pytest.mark.parametrize("args", [("--help",), ("report", "merge", "--help"), ("lint", "--help")])
def test_help_imports_no_heavy_library(args):
    imported = _imported(*args)
    assert not imported & set(HEAVY), sorted(imported & set(HEAVY))


def test_a_subcommand_gets_its_arguments_when_used():
    # compare's help lists the backends, which come with their (heavy) module.
    run = subprocess.run([sys.executable, "-m", "trtcheck", "compare", "--help"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and "onnxrt-fp16" in run.stdout and "--val-range" in run.stdout
    bad = subprocess.run([sys.executable, "-m", "trtcheck", "fix", "m.onnx", "--passes", "x"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "-o/--output" in bad.stderr


def test_an_unmodified_fp32_model_is_read_by_onnx_runtime_from_its_path():
    model = load_model(ZOO / "real" / "bert_tiny_classic.onnx")
    # No serialising in Python, and no second copy of the weights in the parent's memory.
    assert onnxrt_session_source(model, get_backend("onnxrt"), BackendOptions()) == str(model.path)
    emulated = onnxrt_session_source(model, get_backend("onnxrt-fp16"), BackendOptions())
    assert isinstance(emulated, bytes)
