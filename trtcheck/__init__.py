"""trtcheck: does a TensorRT engine compute what its ONNX model computes, and if not, where not."""

__version__ = "0.1.0"

from trtcheck.core import CompareRequest, ComparisonResult, ToleranceRequest, compare_model

__all__ = ["CompareRequest", "ComparisonResult", "ToleranceRequest", "__version__",
           "compare_model"]
