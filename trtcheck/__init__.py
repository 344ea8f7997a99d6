"""trtcheck: does a TensorRT engine compute what its ONNX model computes, and if not, where not.

The API is imported on first use, so that `import trtcheck` (done by pytest for the plugin, and
by the CLI before it parses its flags) stays cheap.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_API = {"CompareRequest", "ComparisonResult", "ToleranceRequest", "compare_model", "check_case"}
__all__ = ["__version__", *sorted(_API)]


def __getattr__(name: str) -> Any:
    if name in _API:
        from trtcheck import core

        return getattr(core, name)
    raise AttributeError(f"module 'trtcheck' has no attribute {name!r}")
