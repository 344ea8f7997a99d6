"""The repro folder's README: commands that run as written, from any working directory.

Every path in a command is absolute; the whole model's command carries the inputs that failed
(saved beside it as `model_inputs.npz`) and the same tolerance flags; the culprit's commands
carry its reference inputs and the atol carried onto its tensor.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from trtcheck.atomic import write_atomically, write_npz

if TYPE_CHECKING:
    from trtcheck.debug.probes import Probe
    from trtcheck.debug.results import Localization

# Flags of `trtcheck compare` that describe synthetic inputs, with how many values each takes
# (None: one or more, up to the next flag).
_INPUT_FLAGS = {"--input-shapes": None, "--val-range": None, "--seed": 1, "--inputs": 1}


def _without_input_flags(args: list[str]) -> list[str]:
    kept: list[str] = []
    skipping = False
    for arg in args:
        if arg in _INPUT_FLAGS:
            skipping = True
            continue
        if skipping and not arg.startswith("--"):
            continue
        skipping = False
        kept.append(arg)
    return kept


def whole_model_commands(command: str, model_path: Path, inputs_file: Path,
                         output: str) -> list[str]:
    """`command` (the compare that failed) with absolute paths, and with the recorded inputs."""
    if not command:
        return []
    args = shlex.split(command)
    args[2] = str(model_path.resolve())
    if "--inputs" in args:
        position = args.index("--inputs") + 1
        args[position] = str(Path(args[position]).resolve())
    as_given = [*args, "--bisect", "--output", output]
    recorded = [*_without_input_flags(args), "--inputs", str(inputs_file.resolve()), "--bisect",
                "--output", output]
    return [shlex.join(as_given), shlex.join(recorded)]


def _number(value: float) -> str:
    return f"{value:.6g}"


def write_readme(folder: Path, probe: Probe, result: Localization,
                 values: dict[str, np.ndarray]) -> None:
    folder = folder.resolve()
    write_npz(folder / "model_inputs.npz", probe.feed)
    culprit = result.culprit_tensor
    scale = float(np.abs(values[culprit][np.isfinite(values[culprit])]).max(initial=0.0)) \
        if culprit in values and values[culprit].size else 0.0
    tolerance = probe.tolerance_for(scale, culprit)
    flags = {"fp16": " --fp16", "bf16": " --bf16"}.get(probe.target.precision, "")
    stat = tolerance.check_error_stat
    tolerance_flags = (f"--atol {_number(tolerance.atol)} --rtol {_number(tolerance.rtol)} "
                       f"--check-error-stat {stat}")
    lines = [
        f"# Repro: {result.culprit_node or result.culprit_op} ({result.culprit_op})", "",
        f"From `{probe.model.path.resolve()}`, output `{result.output}`, target "
        f"`{probe.target.name}`. The culprit node alone is `culprit.onnx`; `inputs.npz` / "
        "`inputs.json` hold the reference values of its inputs and `reference_outputs.npz` what "
        "ONNX Runtime computes from them in fp32. `model_inputs.npz` holds the whole model's "
        "inputs that failed.", "",
        f"- criterion: {result.criterion}",
        f"- local: {result.local} (error {result.local_error})",
        *[f"- {line}" for line in result.explanation], "",
    ]
    if (folder / "culprit.onnx").exists():
        lines += [
            "The culprit alone (exit 1 when the error is local, 0 when it was inherited):", "",
            "```sh",
            f"trtcheck compare {shlex.quote(str(folder / 'culprit.onnx'))} --target "
            f"{probe.target.name} --inputs {shlex.quote(str(folder / 'inputs.npz'))} "
            f"{tolerance_flags}",
            f"polygraphy run {shlex.quote(str(folder / 'culprit.onnx'))} --trt{flags} --onnxrt "
            f"--load-inputs {shlex.quote(str(folder / 'inputs.json'))} {tolerance_flags}",
            "```", ""]
    whole = whole_model_commands(probe.command, probe.model.path, folder / "model_inputs.npz",
                                 result.output)
    if whole:
        lines += ["The whole model, as compared, and on the recorded inputs:", "", "```sh",
                  *whole, "```", ""]
    fix = result.precision_fix
    if fix is not None:
        state = (f"verified after {fix.rounds} round(s)" if fix.verified
                 else f"NOT verified: {fix.remaining}")
        keep = " ".join(shlex.quote(n) for n in fix.keep_fp32)
        lines += [f"Precision fix ({state}): keep {', '.join(fix.keep_fp32)} in fp32.", ""]
        if whole:
            check = _without_input_flags(shlex.split(whole[1]))
            check = [a for a in check if a not in ("--bisect", "--output", result.output)]
            lines += ["```sh", shlex.join(check) + " --inputs "
                      + shlex.quote(str(folder / "model_inputs.npz")) + f" --keep-fp32 {keep}",
                      f"polygraphy run {shlex.quote(str(probe.model.path.resolve()))} "
                      f"--trt{flags} {fix.trt10_flags} --onnxrt   # TensorRT 10", "```", ""]
        if fix.trt11_model:
            lines += [f"TensorRT 11 (strongly typed): `{fix.trt11_model}` is the model converted "
                      "with this plan; build it with `polygraphy run "
                      f"{shlex.quote(fix.trt11_model)} --trt --strongly-typed --onnxrt`.", ""]
    text = "\n".join(lines)
    write_atomically(folder / "README.md", lambda partial: Path(partial).write_text(text))
    summary = json.dumps({"culprit": result.culprit_node, "op": result.culprit_op,
                          "tensor": culprit, "local": result.local,
                          "fix_verified": fix.verified if fix else None}, indent=2)
    write_atomically(folder / "culprit.json", lambda partial: Path(partial).write_text(summary))
