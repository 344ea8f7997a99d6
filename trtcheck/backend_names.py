"""Backend names, split into family and precision: what the CLI's arguments and suites check.

Kept apart from `trtcheck.backends` so that parsing a command line imports nothing heavy: the
CLI starts ONNX Runtime's child process before onnx is imported (`run.started_early`).
"""

from __future__ import annotations

from dataclasses import dataclass

from trtcheck.errors import UsageError


@dataclass(frozen=True)
class Backend:
    """A backend name split into its family (`onnxrt` or `trt`) and precision."""

    name: str
    family: str
    precision: str

    @property
    def emulated(self) -> bool:
        return self.family == "onnxrt" and self.precision != "fp32"


BACKENDS: dict[str, Backend] = {
    b.name: b
    for b in (
        Backend("onnxrt", "onnxrt", "fp32"),
        Backend("onnxrt-fp16", "onnxrt", "fp16"),
        Backend("onnxrt-bf16", "onnxrt", "bf16"),
        Backend("trt", "trt", "fp32"),
        Backend("trt-fp16", "trt", "fp16"),
        Backend("trt-bf16", "trt", "bf16"),
    )
}


def get_backend(name: str) -> Backend:
    try:
        return BACKENDS[name]
    except KeyError:
        raise UsageError(
            f"unknown backend '{name}'; choose one of: {', '.join(BACKENDS)}"
        ) from None
