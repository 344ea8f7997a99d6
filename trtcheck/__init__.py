"""trtcheck: does a TensorRT engine compute what its ONNX model computes, and if not, where not."""

from trtcheck.core import CompareRequest, ComparisonResult, ToleranceRequest, compare_model

__all__ = ["CompareRequest", "ComparisonResult", "ToleranceRequest", "compare_model"]
