"""trtcheck's layer-wise quantization error against ONNX Runtime's own `qdq_loss_debug`.

Both tools say which layers of a Q/DQ model lose the accuracy. On models that ONNX Runtime's
quantizer produced (`quantize_static`, QDQ, per-channel symmetric int8, bias not quantized,
4 random calibration feeds), both run on the same evaluation feeds and this bench measures:

- ranking agreement, over the tensors both report: Spearman's rank correlation between
  trtcheck's per-layer SQNR (isolated, and accumulated) and qdq_loss_debug's per-tensor SQNR of
  the same fp32 tensor (`xmodel_err`: fp32 against the Q/DQ model's dequantized tensor), and how
  many of each tool's 5 worst layers the other also ranks in its 5 worst;
- wall time of each (median of --repeats runs, the tools alternating), from the model files to
  the per-layer numbers. trtcheck: `load_model` x2 and `layerwise_error`, isolated runs
  included. qdq_loss_debug: `modify_model_output_intermediate_tensors` x2,
  `collect_activations` x2, `create_activation_matching`, `compute_activation_error`;
- what qdq_loss_debug pairs once the Q/DQ model's tensors are renamed (as a ModelOpt or QAT
  export names them): it pairs by its quantizer's name suffixes, trtcheck by graph structure.

The two SQNRs differ by design: trtcheck measures a layer's output before the next Q, and
isolated (only that layer's Q/DQ) as well as accumulated; qdq_loss_debug measures every tensor
after its own Q/DQ, accumulated only, and keeps every activation of every feed in memory.

Models: zoo's cnn, transformer_block and channel_outlier_cnn, and ResNet-18 (input
[1,3,224,224]) when .cache/trtcheck-bench/corpus/torch/resnet18_classic.onnx exists.

    .venv/bin/python bench/qdq_layerwise.py [--feeds 4] [--repeats 3]
"""

from __future__ import annotations

import argparse
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from trtcheck.model import load_model  # noqa: E402
from trtcheck.quant.layerwise import LayerError, layerwise_error  # noqa: E402
from zoo.build import channel_outlier_cnn, cnn, transformer_block  # noqa: E402

RESNET18 = REPO / ".cache/trtcheck-bench/corpus/torch/resnet18_classic.onnx"
TOP = 5


def _feeds(name: str, shape: tuple[int, ...], seed: int, count: int) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    return [{name: rng.standard_normal(shape).astype(np.float32)} for _ in range(count)]


def _without_scale_names(model: onnx.ModelProto) -> onnx.ModelProto:
    # ONNX Runtime's quantizer names tensor T's scale 'T_scale' and then reads an existing tensor
    # of that name as the scale (transformer_block: 'ffn/gelu' and 'ffn/gelu_scale').
    renames = {name: name + "d" for node in model.graph.node for name in node.output
               if name.endswith(("_scale", "_zero_point"))}
    for node in model.graph.node:
        node.input[:] = [renames.get(name, name) for name in node.input]
        node.output[:] = [renames.get(name, name) for name in node.output]
    return model


def _quantize(model: onnx.ModelProto, input_name: str, shape: tuple[int, ...], folder: Path,
              name: str) -> tuple[Path, Path]:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.feeds = iter(_feeds(input_name, shape, seed=0, count=4))

        def get_next(self) -> dict[str, Any] | None:
            return next(self.feeds, None)

    fp32_path, qdq_path = folder / f"{name}.onnx", folder / f"{name}_qdq.onnx"
    onnx.save(_without_scale_names(model), str(fp32_path))
    quantize_static(str(fp32_path), str(qdq_path), Reader(), quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=QuantType.QInt8,
                    weight_type=QuantType.QInt8,
                    extra_options={"ActivationSymmetric": True, "WeightSymmetric": True,
                                   "QuantizeBias": False})
    return fp32_path, qdq_path


def _timed(work: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    result = work()
    return result, time.perf_counter() - start


def _trtcheck(fp32_path: Path, qdq_path: Path, feeds: list[dict[str, Any]]) -> list[LayerError]:
    return layerwise_error(load_model(fp32_path), load_model(qdq_path), feeds)


class _Reader:
    """The evaluation feeds as the CalibrationDataReader that qdq_loss_debug iterates over."""

    def __init__(self, feeds: list[dict[str, Any]]) -> None:
        self.feeds = feeds

    def __iter__(self):
        return iter(self.feeds)


def _collect(model_path: Path, feeds: list[dict[str, Any]], folder: Path) -> dict[str, list]:
    from onnxruntime.quantization.qdq_loss_debug import (
        collect_activations,
        modify_model_output_intermediate_tensors,
    )

    augmented = folder / f"{model_path.stem}_augmented.onnx"
    modify_model_output_intermediate_tensors(str(model_path), str(augmented))
    return collect_activations(str(augmented), _Reader(feeds))  # type: ignore[arg-type]


def _qdq_loss_debug(fp32_path: Path, qdq_path: Path, feeds: list[dict[str, Any]],
                    folder: Path) -> dict[str, float]:
    """fp32 tensor name -> qdq_loss_debug's SQNR of it in the Q/DQ model (xmodel_err)."""
    from onnxruntime.quantization.qdq_loss_debug import (
        compute_activation_error,
        create_activation_matching,
    )

    matched = create_activation_matching(_collect(qdq_path, feeds, folder),
                                         _collect(fp32_path, feeds, folder))
    errors = compute_activation_error(matched)
    return {name: error["xmodel_err"] for name, error in errors.items() if "xmodel_err" in error}


def _renamed_pairs(qdq_path: Path, fp32_path: Path, feeds: list[dict[str, Any]],
                   folder: Path) -> int:
    """How many tensors qdq_loss_debug pairs when the Q/DQ model's tensors have other names."""
    from onnxruntime.quantization.qdq_loss_debug import create_activation_matching

    model = onnx.load(str(qdq_path))
    names = {value.name for value in model.graph.input}
    renames = {name: "t" + secrets.token_hex(6) for node in model.graph.node
               for name in node.output if name not in names}
    for node in model.graph.node:
        node.input[:] = [renames.get(name, name) for name in node.input]
        node.output[:] = [renames.get(name, name) for name in node.output]
    for output in model.graph.output:
        output.name = renames.get(output.name, output.name)
    del model.graph.value_info[:]
    renamed = folder / "renamed_qdq.onnx"
    onnx.save(model, str(renamed))
    matched = create_activation_matching(_collect(renamed, feeds, folder),
                                         _collect(fp32_path, feeds, folder))
    return sum("float" in match for match in matched.values())


def _ranks(values: list[float]) -> np.ndarray:
    """Ranks from 1, ties sharing their average rank (what Spearman's coefficient uses)."""
    array = np.asarray(values, dtype=np.float64)
    order = np.argsort(array, kind="stable")
    ranks = np.empty(len(array))
    ranks[order] = np.arange(1, len(array) + 1)
    for value in np.unique(array):
        tied = array == value
        ranks[tied] = ranks[tied].mean()
    return ranks


def spearman(left: list[float], right: list[float]) -> float:
    """Spearman's rank correlation (no SciPy here): Pearson's on the ranks."""
    a, b = _ranks(left), _ranks(right)
    if a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def _worst(values: dict[str, float], count: int) -> list[str]:
    return sorted(values, key=lambda name: values[name])[:count]


def _fp32_tensors(fp32_path: Path) -> dict[str, str]:
    """fp32 node name -> its first output tensor (what qdq_loss_debug names a layer by)."""
    model = onnx.load(str(fp32_path), load_external_data=False)
    return {node.name: node.output[0] for node in model.graph.node}


def _table(title: str, header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = [title, "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(lines)


def measure(name: str, model: onnx.ModelProto, input_name: str, shape: tuple[int, ...],
            feed_count: int, repeats: int) -> str:
    with tempfile.TemporaryDirectory(prefix="qdq-layerwise-") as temp:
        folder = Path(temp)
        fp32_path, qdq_path = _quantize(model, input_name, shape, folder, name)
        feeds = _feeds(input_name, shape, seed=1, count=feed_count)
        trtcheck_times, ort_times = [], []
        for _ in range(repeats):  # alternating, so that a busy moment of the machine hits both
            rows, seconds = _timed(lambda: _trtcheck(fp32_path, qdq_path, feeds))
            trtcheck_times.append(seconds)
            ort, seconds = _timed(lambda: _qdq_loss_debug(fp32_path, qdq_path, feeds, folder))
            ort_times.append(seconds)
        trtcheck_seconds, ort_seconds = statistics.median(trtcheck_times), \
            statistics.median(ort_times)
        renamed = _renamed_pairs(qdq_path, fp32_path, feeds, folder)
        tensors = _fp32_tensors(fp32_path)
    by_tensor = {tensors[row.fp32_node]: row for row in rows}
    common = [tensor for tensor in by_tensor if tensor in ort]
    theirs = {tensor: ort[tensor] for tensor in common}
    lines = []
    for label, field in (("isolated", "sqnr_db_isolated"), ("accumulated", "sqnr_db_accumulated")):
        ours = {tensor: getattr(by_tensor[tensor], field) for tensor in common}
        top = min(TOP, len(common))
        overlap = len(set(_worst(ours, top)) & set(_worst(theirs, top)))
        rho = spearman([ours[t] for t in common], [theirs[t] for t in common])
        lines.append([f"trtcheck {label} vs qdq_loss_debug", f"{rho:.3f}", f"{overlap}/{top}",
                      _worst(ours, 1)[0], _worst(theirs, 1)[0]])
    title = (f"{name}: trtcheck paired {len(rows)} layers, qdq_loss_debug {len(ort)} tensors, "
             f"{len(common)} in common, {feed_count} feeds; median wall time of {repeats}: "
             f"trtcheck {trtcheck_seconds:.2f} s, qdq_loss_debug {ort_seconds:.2f} s; Q/DQ tensors "
             f"renamed: trtcheck pairs the same {len(rows)}, qdq_loss_debug {renamed}")
    return _table(title, ["SQNR ranking", "Spearman", f"top-{TOP} overlap",
                          "worst (trtcheck)", "worst (qdq_loss_debug)"], lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--feeds", type=int, default=4, help="evaluation feeds per model")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each tool")
    args = parser.parse_args(argv)
    import onnxruntime

    onnxruntime.set_default_logger_severity(3)
    models: list[tuple[str, Callable[[], onnx.ModelProto], str, tuple[int, ...]]] = [
        ("cnn", cnn, "image", (1, 3, 32, 32)),
        ("transformer_block", transformer_block, "x", (1, 16, 32)),
        ("channel_outlier_cnn", channel_outlier_cnn, "image", (1, 3, 32, 32)),
    ]
    if RESNET18.exists():
        models.append(("resnet18", lambda: onnx.load(str(RESNET18)), "image", (1, 3, 224, 224)))
    else:
        print(f"({RESNET18} is missing: ResNet-18 left out)")
    for name, build, input_name, shape in models:
        print(measure(name, build(), input_name, shape, args.feeds, args.repeats))
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
