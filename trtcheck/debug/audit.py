"""Range audit: which tensors leave the fp16 or bf16 range, found from fp32 activations alone.

No target is needed: the reference's activations say where reduced precision will overflow
(|x| above the largest finite value) or flush to zero (most of a tensor's non-zero values
below the smallest normal value, where precision degrades, or below the smallest subnormal,
where they become 0).

Attention masks are intent, not overflow: exporters fill masked positions with float32's lowest
value or a large negative constant and add it before a Softmax. In fp16 that becomes -inf, and
Softmax turns -inf into a probability of exactly 0, as fp32 does with -3.4e38. A finding is a
`mask-fill` (reported apart, kept out of the precision fix) when
1. every value beyond the range is negative,
2. the tensor reaches a Softmax's input through ops that carry a mask (Add, Where, Expand, ...),
   and that input is itself such a finding, and
3. a run of the model emulated in the reduced type (`onnxrt-fp16` / `onnxrt-bf16`) gives that
   Softmax exactly 0 at every masked position and finite values everywhere, as fp32 does. It
   does not when a row is masked entirely (NaN), or when the fill is built as
   `(1 - mask) * float32_lowest`: in fp16 the constant is -inf and `0 * -inf` is NaN. Those
   stay overflows, because a TensorRT engine computing them in fp16 fails the same way.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace

import numpy as np
import onnx

# (largest finite, smallest normal, smallest subnormal) per reduced type.
LIMITS = {
    "fp16": (65504.0, 6.103515625e-05, 5.960464477539063e-08),
    "bf16": (3.3895313892515355e38, 1.1754943508222875e-38, 9.183549615799121e-41),
}
# A tensor "mostly underflows" when more than this share of its non-zero values does.
UNDERFLOW_SHARE = 0.5
# Ops through which a mask travels from where it is built to the Softmax that reads it.
MASK_CARRIERS = frozenset({
    "Add", "Sub", "Mul", "Where", "Expand", "Reshape", "Unsqueeze", "Squeeze", "Cast", "CastLike",
    "Slice", "Concat", "Transpose", "Min", "Max", "Identity", "Tile", "Gather", "Neg",
})


@dataclass(frozen=True)
class RangeFinding:
    tensor: str
    node: str
    precision: str
    kind: str  # "overflow", "underflow" or "mask-fill"
    max_abs: float
    # Share of non-zero values below the smallest normal (underflow findings).
    below_normal: float
    flushed_to_zero: float
    # Overflow: every value beyond the range is negative (a candidate mask fill).
    negative_only: bool = False

    def describe(self) -> str:
        if self.kind == "overflow":
            limit = LIMITS[self.precision][0]
            return (f"tensor {self.tensor} reaches {self.max_abs:.3g} in fp32, beyond "
                    f"{self.precision}'s {limit:.6g}")
        if self.kind == "mask-fill":
            return (f"tensor {self.tensor} holds attention-mask fill values ({-self.max_abs:.3g}) "
                    f"that become -inf in {self.precision}; harmless before Softmax (the masked "
                    "probabilities are 0 either way)")
        return (f"tensor {self.tensor}: {self.below_normal:.0%} of its non-zero values are "
                f"below {self.precision}'s smallest normal value ({self.flushed_to_zero:.0%} "
                "would flush to zero)")


def audit_tensor(name: str, values: np.ndarray, node: str,
                 precisions: Iterable[str]) -> list[RangeFinding]:
    """Findings for one float tensor's fp32 values."""
    if not np.issubdtype(values.dtype, np.floating) or values.size == 0:
        return []
    finite = values[np.isfinite(values)].astype(np.float64)
    if finite.size == 0:
        return []
    magnitudes = np.abs(finite)
    max_abs = float(magnitudes.max())
    nonzero = magnitudes[magnitudes > 0]
    findings = []
    for precision in precisions:
        largest, normal, subnormal = LIMITS[precision]
        if max_abs > largest:
            negative_only = bool(finite.max() <= largest)
            findings.append(RangeFinding(name, node, precision, "overflow", max_abs, 0.0, 0.0,
                                         negative_only))
        elif nonzero.size:
            below = float((nonzero < normal).mean())
            if below > UNDERFLOW_SHARE:
                flushed = float((nonzero < subnormal / 2).mean())
                findings.append(RangeFinding(name, node, precision, "underflow", max_abs,
                                             below, flushed))
    return findings


def audit_activations(activations: dict[str, np.ndarray], producers: dict[str, str],
                      precisions: tuple[str, ...] = ("fp16", "bf16")) -> list[RangeFinding]:
    """Findings for every float tensor in `activations` (name -> fp32 values)."""
    return [finding for name, values in activations.items()
            for finding in audit_tensor(name, values, producers.get(name, ""), precisions)]


def masked_positions(values: np.ndarray, precision: str) -> np.ndarray | None:
    """Where a Softmax input holds mask fills for `precision`: values below -largest finite.

    None unless some value is there and none is above +largest (a mask is negative only).
    """
    largest = LIMITS[precision][0]
    if not np.issubdtype(values.dtype, np.floating) or values.size == 0:
        return None
    finite = values[np.isfinite(values)]
    if finite.size == 0 or finite.max() > largest or not (values < -largest).any():
        return None
    return values < -largest


def masked_probabilities_zero(probabilities: np.ndarray, masked: np.ndarray) -> bool:
    """The reduced-precision Softmax output: finite everywhere and exactly 0 where masked."""
    return bool(probabilities.shape == masked.shape and np.isfinite(probabilities).all()
                and (probabilities[masked] == 0).all())


def softmax_outputs(model: onnx.ModelProto) -> dict[str, str]:
    """Softmax input -> its output, for every Softmax of the main graph."""
    return {node.input[0]: node.output[0] for node in model.graph.node
            if node.op_type == "Softmax" and node.domain in ("", "ai.onnx") and node.input
            and node.output}


def classify_mask_fills(findings: list[RangeFinding], model: onnx.ModelProto,
                        harmless_softmax_inputs: set[tuple[str, str]]) -> list[RangeFinding]:
    """Turns overflow findings that only carry a harmless mask into `mask-fill` findings.

    `harmless_softmax_inputs` holds (tensor, precision) for Softmax inputs that passed
    `masked_softmax_harmless`; the rule is walked upstream from them (module docstring).
    """
    producers = {out: node for node in model.graph.node for out in node.output if out}
    negative = {(f.tensor, f.precision) for f in findings
                if f.kind == "overflow" and f.negative_only}
    fills: set[tuple[str, str]] = set()
    stack = [key for key in harmless_softmax_inputs if key in negative]
    while stack:
        tensor, precision = stack.pop()
        if (tensor, precision) in fills:
            continue
        fills.add((tensor, precision))
        node = producers.get(tensor)
        if node is None or node.op_type not in MASK_CARRIERS:
            continue
        stack.extend((t, precision) for t in node.input if (t, precision) in negative)
    return [replace(f, kind="mask-fill") if (f.tensor, f.precision) in fills else f
            for f in findings]
