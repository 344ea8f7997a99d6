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
        """ONNX Runtime rounding through fp16/bf16 where TensorRT would compute in them."""
        return self.family == "onnxrt" and self.precision in FLOAT_REDUCED

    @property
    def quantized(self) -> bool:
        """int8/fp8: runs a Q/DQ model as it is; its Q/DQ say what computes quantized."""
        return self.precision in QUANTIZED

    @property
    def float_precision(self) -> str:
        """The float type the backend reduces nodes to (fp32 for a quantized one)."""
        return "fp32" if self.quantized else self.precision


FLOAT_REDUCED = ("fp16", "bf16")
QUANTIZED = ("int8", "fp8")


BACKENDS: dict[str, Backend] = {
    b.name: b
    for b in (
        Backend("onnxrt", "onnxrt", "fp32"),
        Backend("onnxrt-fp16", "onnxrt", "fp16"),
        Backend("onnxrt-bf16", "onnxrt", "bf16"),
        Backend("trt", "trt", "fp32"),
        Backend("trt-fp16", "trt", "fp16"),
        Backend("trt-bf16", "trt", "bf16"),
        Backend("onnxrt-int8", "onnxrt", "int8"),
        Backend("onnxrt-fp8", "onnxrt", "fp8"),
        Backend("trt-int8", "trt", "int8"),
        Backend("trt-fp8", "trt", "fp8"),
    )
}


def get_backend(name: str, served_precision: str = "fp32") -> Backend:
    """The backend named `name`.

    A `triton://HOST:PORT/MODEL[/VERSION]` URL is a live Triton server, computing in
    `served_precision` (what its default tolerances follow).
    """
    if name in BACKENDS:
        return BACKENDS[name]
    if name.startswith("triton"):
        from trtcheck.deploy.triton_target import is_triton_target, parse_triton_url

        if is_triton_target(name):
            parse_triton_url(name)  # a bad URL is a usage error before anything runs
            return Backend(name, "triton", served_precision)
    raise UsageError(f"unknown backend '{name}'; choose one of: {', '.join(BACKENDS)}")
