"""Range audit: which tensors leave the fp16 or bf16 range, found from fp32 activations alone.

No target is needed: the reference's activations say where reduced precision will overflow
(|x| above the largest finite value) or flush to zero (most of a tensor's non-zero values
below the smallest normal value, where precision degrades, or below the smallest subnormal,
where they become 0).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# (largest finite, smallest normal, smallest subnormal) per reduced type.
LIMITS = {
    "fp16": (65504.0, 6.103515625e-05, 5.960464477539063e-08),
    "bf16": (3.3895313892515355e38, 1.1754943508222875e-38, 9.183549615799121e-41),
}
# A tensor "mostly underflows" when more than this share of its non-zero values does.
UNDERFLOW_SHARE = 0.5


@dataclass(frozen=True)
class RangeFinding:
    tensor: str
    node: str
    precision: str
    kind: str  # "overflow" or "underflow"
    max_abs: float
    # Share of non-zero values below the smallest normal (underflow findings).
    below_normal: float
    flushed_to_zero: float

    def describe(self) -> str:
        if self.kind == "overflow":
            limit = LIMITS[self.precision][0]
            return (f"tensor {self.tensor} reaches {self.max_abs:.3g} in fp32, beyond "
                    f"{self.precision}'s {limit:.6g}")
        return (f"tensor {self.tensor}: {self.below_normal:.0%} of its non-zero values are "
                f"below {self.precision}'s smallest normal value ({self.flushed_to_zero:.0%} "
                "would flush to zero)")


def audit_activations(activations: dict[str, np.ndarray], producers: dict[str, str],
                      precisions: tuple[str, ...] = ("fp16", "bf16")) -> list[RangeFinding]:
    """Findings for every float tensor in `activations` (name -> fp32 values)."""
    findings = []
    for name, values in activations.items():
        if not np.issubdtype(values.dtype, np.floating) or values.size == 0:
            continue
        magnitudes = np.abs(values[np.isfinite(values)].astype(np.float64))
        if magnitudes.size == 0:
            continue
        max_abs = float(magnitudes.max())
        nonzero = magnitudes[magnitudes > 0]
        for precision in precisions:
            largest, normal, subnormal = LIMITS[precision]
            node = producers.get(name, "")
            if max_abs > largest:
                findings.append(RangeFinding(name, node, precision, "overflow", max_abs, 0.0,
                                             0.0))
            elif nonzero.size:
                below = float((nonzero < normal).mean())
                if below > UNDERFLOW_SHARE:
                    flushed = float((nonzero < subnormal / 2).mean())
                    findings.append(RangeFinding(name, node, precision, "underflow", max_abs,
                                                 below, flushed))
    return findings


def audit_model(path, inputs, precisions: tuple[str, ...]) -> list[RangeFinding]:
    """Runs the model once on ONNX Runtime in fp32 with every tensor marked, then audits it."""
    from trtcheck.backends import BackendOptions, get_backend
    from trtcheck.core import quiet_polygraphy
    from trtcheck.inputs import make_feeds
    from trtcheck.localize import run_all_tensors
    from trtcheck.model import load_model

    with quiet_polygraphy():
        model = load_model(path)
        feeds = make_feeds(model, inputs)
        activations = run_all_tensors(model, get_backend("onnxrt"), BackendOptions(),
                                      feeds.iterations[0])
    producers = {output: node.name or node.op_type for node in model.proto.graph.node
                 for output in node.output}
    return audit_activations(activations, producers, precisions)
