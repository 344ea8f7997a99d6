"""What a bisection found: the culprit, the trace to the output, and the precision fix."""

from __future__ import annotations

from dataclasses import dataclass

from trtcheck.debug.audit import RangeFinding


@dataclass(frozen=True)
class TracePoint:
    """One tensor on the path from the inputs through the culprit to the failing output."""

    index: int
    tensor: str
    node: str
    op: str
    error: float  # max |target - reference| / max |reference|
    max_abs_error: float
    max_abs_reference: float
    tolerance: float  # the atol carried onto this tensor
    diverged: bool


@dataclass
class PrecisionFix:
    """Nodes to keep in fp32 so that the output passes, and whether a final run confirmed it."""

    keep_fp32: list[str]
    verified: bool
    rounds: int
    target_runs: int
    trt10_flags: str
    trt11_model: str | None = None
    # When not verified: one line saying what still fails and by how much.
    remaining: str | None = None
    # For a quantized target, the same nodes as the quantizers' exclude lists, by quantizer
    # ("onnxruntime", "modelopt"): `keep_fp32` then means "leave unquantized".
    exclude_lists: dict[str, list[str]] | None = None
    # Each output's cosine against the reference before and after the fix (quantized targets).
    cosine_before: dict[str, float] | None = None
    cosine_after: dict[str, float] | None = None
    # False when the search ran out of runs before trying to drop every member.
    minimal: bool = True


@dataclass
class Localization:
    output: str
    mode: str  # "exact" (every tensor, in batches) or "search" (few tensors per run)
    criterion: str
    culprit_node: str
    culprit_op: str
    culprit_tensor: str
    culprit_index: int
    local: bool | None
    local_error: float | None
    boundary_verified: bool
    note: str
    target_runs: int
    runs: list[list[str]]
    probe_points: int
    trace: list[TracePoint]
    audit: list[RangeFinding]
    explanation: list[str]
    precision_fix: PrecisionFix | None = None
    repro_dir: str | None = None
    batches: int = 0
    # Set when TensorRT's parser will reject the model: a precision fix then holds for the
    # emulated target only, and the line says why.
    tensorrt_blocked: str | None = None
