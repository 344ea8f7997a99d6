"""`trtcheck ...`: the command line over `trtcheck.core`.

Exit codes: 0 pass, 1 mismatch, 2 usage or input error, 3 could not run (see `trtcheck.errors`).
Every error is one line on stderr; no traceback unless --verbose.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import signal
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from trtcheck.errors import (
    BUG_REPORT,
    EXIT_COULD_NOT_RUN,
    EXIT_INPUT_ERROR,
    EXIT_INTERNAL_ERROR,
    EXIT_INTERRUPTED,
    EXIT_MISMATCH,
    EXIT_PASS,
    EXIT_TERMINATED,
    InternalError,
    Terminated,
    TrtcheckError,
    UsageError,
)
from trtcheck.progress import display
from trtcheck.tolerance import ERROR_STATS, check_tolerance_value

if TYPE_CHECKING:
    from trtcheck.inputs import InputSettings, ValueRange

# trtcheck's own folder in the working directory, like trtcheck-repro; never the model's folder.
DEFAULT_WORK_DIR = "trtcheck-work"


class _Parser(argparse.ArgumentParser):
    """A parser whose arguments may be added on first use (`populate`).

    A subcommand's arguments are added only when that subcommand is parsed or its help shown, so
    `trtcheck --help` does not import onnx, numpy and graphsurgeon (about 150 ms) for the
    defaults and help strings of every subcommand.
    """

    def __init__(self, *args: Any,
                 populate: Callable[[argparse.ArgumentParser], None] | None = None,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._populate = populate

    def _populated(self) -> None:
        if self._populate is not None:
            populate, self._populate = self._populate, None
            populate(self)

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        self._populated()
        return super().parse_known_args(args, namespace)

    def format_usage(self) -> str:
        self._populated()
        return super().format_usage()

    def format_help(self) -> str:
        self._populated()
        return super().format_help()

    def error(self, message: str) -> NoReturn:
        # argparse prints the whole usage block; one line that names the fix is easier to act on.
        self.exit(EXIT_INPUT_ERROR, f"{self.prog}: {message}; see `{self.prog} --help`\n")


def _split_named(item: str) -> tuple[str, str]:
    """`OUT:V` -> ("OUT", "V"); a bare `V` -> ("", "V") meaning every output."""
    name, sep, value = item.rpartition(":")
    return (name, value) if sep else ("", item)


def _named_numbers(flag: str, items: list[str] | None, *, lower: float = 0.0,
                   upper: float = math.inf) -> dict[str, float]:
    values: dict[str, float] = {}
    for item in items or []:
        name, text = _split_named(item)
        try:
            value = float(text)
        except ValueError:
            raise UsageError(
                f"{flag} {item}: '{text}' is not a number; write {flag} 1e-3 or {flag} OUTPUT:1e-3"
            ) from None
        values[name] = check_tolerance_value(f"{flag} {item}", value, lower, upper)
    return values


def _error_stats(items: list[str] | None) -> dict[str, str]:
    stats: dict[str, str] = {}
    for item in items or []:
        name, stat = _split_named(item)
        if stat not in ERROR_STATS:
            raise UsageError(
                f"--check-error-stat {item}: '{stat}' is not one of {', '.join(ERROR_STATS)}")
        stats[name] = stat
    return stats


def _shapes(items: list[str] | None) -> dict[str, tuple[int, ...]]:
    from trtcheck.inputs import parse_shape

    shapes = {}
    for item in items or []:
        name, sep, shape = item.rpartition(":")
        if not sep or not name:
            raise UsageError(f"--input-shapes {item}: write it as NAME:1x3x224x224")
        shapes[name] = parse_shape(shape)
    return shapes


def _ranges(items: list[str] | None) -> tuple[dict[str, ValueRange], ValueRange | None]:
    from trtcheck.inputs import parse_range

    named: dict[str, ValueRange] = {}
    every_float: ValueRange | None = None
    for item in items or []:
        head, sep, tail = item.partition(":")
        if sep and not head.lstrip().startswith(("[", "(", "-")) and not _is_number(head):
            named[head] = parse_range(tail)
        else:
            every_float = parse_range(item)
    return named, every_float


def _tolerance(text: str) -> float:
    try:
        return check_tolerance_value(text, float(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number; write e.g. 1e-3") from None
    except UsageError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _memory_size(text: str) -> int:
    units = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    stripped = text.strip().upper().removesuffix("B").removesuffix("I")
    unit = stripped[-1:] if stripped[-1:] in units and stripped[-1:] else ""
    number = stripped[:-1] if unit else stripped
    try:
        return int(check_tolerance_value(text, float(number) * units[unit], 16 * (1 << 20)))
    except (ValueError, UsageError):
        raise argparse.ArgumentTypeError(
            f"'{text}' is not a memory size of at least 16M; write it like 512M or 2G") from None


def _seed(text: str) -> int:
    from trtcheck.inputs import MAX_SEED

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a whole number") from None
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"{text}: a seed is between 0 and {MAX_SEED} (2**32-1)")
    return value


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _add_input_arguments(parser: argparse.ArgumentParser) -> None:
    from trtcheck.inputs import DEFAULT_SEED

    data = parser.add_argument_group("inputs")
    data.add_argument("--input-shapes", nargs="+", action="extend", metavar="NAME:SHAPE",
                      help="shapes for dynamic inputs, e.g. x:1x3x224x224")
    data.add_argument("--val-range", nargs="+", action="extend", metavar="[NAME:][LO,HI]",
                      help="value range per input, e.g. x:[-1,1]; an unnamed range applies to "
                           "every float input")
    data.add_argument("--seed", type=_seed, default=DEFAULT_SEED,
                      help="seed for synthetic inputs, 0 to 2**32-1")
    data.add_argument("--inputs", type=Path, metavar="FILE",
                      help="recorded inputs: .npz, or Polygraphy input .json")


def input_settings_from_args(args: argparse.Namespace) -> InputSettings:
    from trtcheck.inputs import InputSettings

    named_ranges, float_range = _ranges(args.val_range)
    if args.inputs is not None and (args.input_shapes or args.val_range):
        raise UsageError("--inputs gives recorded values, so --input-shapes and --val-range do "
                         "not apply; drop one or the other")
    return InputSettings(shapes=_shapes(args.input_shapes), ranges=named_ranges,
                         float_range=float_range, seed=args.seed, recorded=args.inputs)


def _add_audit_arguments(audit: argparse.ArgumentParser) -> None:
    audit.add_argument("model", type=Path, help="the ONNX model to audit")
    audit.add_argument("--precision", choices=("fp16", "bf16"), action="append",
                       help="reduced type(s) to audit for (default both)")
    _add_input_arguments(audit)
    audit.add_argument("--json", type=Path, metavar="FILE", help="write a JSON report here")
    audit.add_argument("--max-memory", type=_memory_size, metavar="SIZE", default=None,
                       help="memory for the activations held at once, e.g. 512M or 2G")
    _add_isolation_arguments(audit)
    audit.add_argument("--verbose", action="store_true", help="show tracebacks")


def _add_triton_arguments(parser: argparse.ArgumentParser) -> None:
    from trtcheck.deploy.cli_triton import add_triton_arguments

    add_triton_arguments(parser)


def _add_cache_arguments(parser: argparse.ArgumentParser) -> None:
    from trtcheck.engine.cache import add_cache_arguments

    add_cache_arguments(parser)


def _add_calibration_arguments(parser: Any) -> None:
    """Where an int8/fp8 model's scales come from: compare's and quantize's flags."""
    parser.add_argument("--calibration-data", type=Path, metavar="PATH",
                        help="calibrate on these inputs: a folder of .npz files (one feed each) "
                             "or a Polygraphy inputs JSON (default: synthetic feeds, with a "
                             "warning)")
    parser.add_argument("--calibration-cache", type=Path, metavar="FILE",
                        help="take the scales of a TensorRT calibration cache instead")
    parser.add_argument("--calibration-method", choices=("minmax", "entropy", "percentile"),
                        default="minmax", help="how activation ranges are calibrated (default "
                                               "minmax)")


def _add_quantize_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", type=Path, help="the fp32 ONNX model to quantize")
    parser.add_argument("-o", "--output", type=Path, required=True, metavar="QDQ.onnx",
                        help="where to write the Q/DQ model")
    parser.add_argument("--precision", choices=("int8", "fp8"), default="int8",
                        help="int8 (default) or fp8 (float8 e4m3)")
    _add_calibration_arguments(parser)
    parser.add_argument("--exclude", nargs="+", action="extend", default=[], metavar="NODE",
                        help="nodes left unquantized (bisect's INT8 fix proposes them)")
    _add_input_arguments(parser)
    parser.add_argument("--verbose", action="store_true", help="show tracebacks")


def _add_fix_arguments(parser: argparse.ArgumentParser) -> None:
    from trtcheck.passes import PASSES
    from trtcheck.passes.pipeline import DEFAULT_RTOL

    parser.add_argument("model", type=Path, help="the ONNX model to fix")
    parser.add_argument("-o", "--output", type=Path, required=True, metavar="FIXED.onnx",
                        help="where to write the fixed model")
    parser.add_argument("--passes", nargs="+", metavar="PASS",
                        help=f"passes to run, in pipeline order (default all): "
                             f"{', '.join(PASSES)}")
    parser.add_argument("--rtol", type=_tolerance, default=DEFAULT_RTOL,
                        help="largest output change a pass may make, relative to the output's "
                             f"largest magnitude (default {DEFAULT_RTOL:g})")
    parser.add_argument("--static", action="store_true",
                        help="make dynamic input dimensions static, set to the --input-shapes "
                             "given (lets shape computations fold)")
    parser.add_argument("--no-verify", action="store_true",
                        help="write the result even when ONNX Runtime cannot run the original "
                             "model to verify the passes")
    _add_input_arguments(parser)
    parser.add_argument("--json", type=Path, metavar="FILE", help="write a JSON report here")
    _add_isolation_arguments(parser)
    parser.add_argument("--verbose", action="store_true", help="show tracebacks")


def _add_compare_arguments(parser: argparse.ArgumentParser) -> None:
    from trtcheck.backend_names import BACKENDS

    parser.add_argument("model", type=Path, help="the ONNX model to check")
    backends = ", ".join(BACKENDS)
    parser.add_argument("--reference", default="onnxrt", metavar="NAME",
                        help=f"reference backend (default onnxrt); one of: {backends}")
    parser.add_argument("--target", default=None, metavar="NAME",
                        help="target backend (default trt-fp16 where TensorRT imports, else "
                             "onnxrt-fp16), or a live server: triton://HOST:PORT/MODEL[/VERSION] "
                             "(triton+grpc:// for gRPC)")
    parser.add_argument("--served-precision", choices=("fp32", "fp16", "bf16", "int8", "fp8"),
                        default="fp32", help="with a triton:// target: the precision the served "
                                             "model computes in (its default tolerances)")
    tol = parser.add_argument_group("tolerances (V for every output, OUT:V for one)")
    tol.add_argument("--atol", nargs="+", action="extend", metavar="[OUT:]V",
                     help="absolute tolerance")
    tol.add_argument("--rtol", nargs="+", action="extend", metavar="[OUT:]V",
                     help="relative tolerance, relative to the reference's values")
    tol.add_argument("--check-error-stat", nargs="+", action="extend", metavar="[OUT:]STAT",
                     help=f"statistic checked against atol/rtol: {', '.join(ERROR_STATS)} "
                          "(default elemwise: an element fails if it exceeds both)")
    tol.add_argument("--error-quantile", nargs="+", action="extend", metavar="[OUT:]Q",
                     help="quantile for --check-error-stat quantile (default 0.99)")
    tol.add_argument("--cosine", nargs="+", action="extend", metavar="[OUT:]V",
                     help="also require cosine similarity >= V")
    tol.add_argument("--snr", nargs="+", action="extend", metavar="[OUT:]DB",
                     help="also require SNR >= DB")
    tol.add_argument("--min-agreement", nargs="+", action="extend", metavar="[OUT:]FRACTION",
                     help="integer and bool outputs are compared exactly; accept this fraction "
                          "of equal elements instead, e.g. ids:0.99")
    tol.add_argument("--detections", nargs="+", action="extend", metavar="SPEC",
                     help="compare outputs as detections, paired by class and IoU (their order "
                          "after NMS/TopK means nothing): boxes=OUT,scores=OUT[,labels=OUT]"
                          "[,per_detection=OUT+OUT][,iou=0.5][,min_matched=1][,format=xyxy], or "
                          "packed=OUT for one [N,6] x1,y1,x2,y2,score,label output")
    _add_input_arguments(parser)
    parser.add_argument("--passes", nargs="+", metavar="PASS",
                        help="graph passes applied to the target's model first (see `trtcheck "
                             "fix --help`); the reference runs the original")
    backend = parser.add_argument_group("backends")
    backend.add_argument("--providers", nargs="+", default=["cpu"],
                         help="ONNX Runtime execution providers (default cpu)")
    backend.add_argument("--tf32", action="store_true",
                         help="allow TF32 in TensorRT (off by default, as in Polygraphy)")
    backend.add_argument("--keep-fp32", nargs="+", action="extend", default=[], metavar="NODE",
                         help="ONNX nodes that stay in fp32 in reduced-precision targets")
    backend.add_argument("--trt-major", type=int, choices=(10, 11),
                         help="TensorRT major version to build for (default: installed one)")
    backend.add_argument("--target-engine", type=Path, metavar="PLAN",
                         help="the trt target runs this prebuilt engine (its header is checked "
                              "against the installed TensorRT first)")
    backend.add_argument("--no-engine-cache", action="store_true",
                         help="build trt targets' engines anew instead of reusing cached ones "
                              "(`trtcheck cache list`)")
    backend.add_argument("--work-dir", type=Path, metavar="DIR", default=Path(DEFAULT_WORK_DIR),
                         help="where converted and fixed models are written (the TensorRT 11 "
                              f"command reads its converted model from here; default "
                              f"{DEFAULT_WORK_DIR}); a new, empty or earlier trtcheck work folder")
    quant = parser.add_argument_group("int8 / fp8 targets (explicit Q/DQ)")
    _add_calibration_arguments(quant)
    quant.add_argument("--layers", action="store_true",
                       help="rank the quantized layers by their error (SQNR, cosine), "
                            "accumulated and isolated")
    quant.add_argument("--target-model", type=Path, metavar="QDQ.onnx",
                       help="the target runs this model (quantized elsewhere: ModelOpt, ONNX "
                            "Runtime, QAT) against the reference's run of MODEL")
    out = parser.add_argument_group("outputs")
    out.add_argument("--json", type=Path, metavar="FILE", help="write the JSON report here")
    out.add_argument("--report", type=Path, metavar="FILE.html",
                     help="write a self-contained HTML report (plots, bisection, commands)")
    out.add_argument("--save-outputs", type=Path, metavar="FILE.json",
                     help="save both runs as Polygraphy RunResults (polygraphy run "
                          "--load-outputs reads it)")
    out.add_argument("--save-inputs", type=Path, metavar="FILE.json",
                     help="save the inputs as Polygraphy input JSON (--load-inputs reads it)")
    debug = parser.add_argument_group("bisection")
    debug.add_argument("--bisect", action="store_true",
                       help="on a mismatch, find the first divergent node, explain it, search "
                            "a precision fix and write a repro folder")
    debug.add_argument("--repro", type=Path, metavar="DIR", default=None,
                       help="where bisection writes the repro folder (default: "
                            "trtcheck-repro/MODEL-TARGET)")
    debug.add_argument("--no-precision-fix", action="store_true",
                       help="bisect without searching for nodes to keep in fp32")
    debug.add_argument("--bisect-mode", choices=("auto", "exact", "search"), default="auto",
                       help="exact: every tensor judged, in memory-bounded batches (ONNX Runtime "
                            "targets); search: few tensors per run, as on TensorRT (default auto)")
    debug.add_argument("--output", dest="bisect_output", metavar="NAME", default=None,
                       help="the failing output to follow (default: the first failing float "
                            "output)")
    debug.add_argument("--max-memory", type=_memory_size, metavar="SIZE", default=None,
                       help="memory for the activations a bisection holds at once, e.g. 512M or "
                            "2G (default: a quarter of the available memory, at most 1.5G)")
    _add_isolation_arguments(parser)
    parser.add_argument("--verbose", action="store_true",
                        help="show Polygraphy's log and tracebacks")


def _add_tolerances_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", type=Path, help="the ONNX model to measure")
    parser.add_argument("--reference", default="onnxrt", metavar="NAME",
                        help="reference backend (default onnxrt)")
    parser.add_argument("--target", default=None, metavar="NAME",
                        help="target backend (default trt-fp16 where TensorRT imports, else "
                             "onnxrt-fp16)")
    parser.add_argument("--seeds", type=int, default=5, metavar="N",
                        help="measure over N synthetic input sets, seeds --seed .. --seed+N-1 "
                             "(default 5); with --inputs, every input set of the file instead")
    parser.add_argument("--margin", type=_tolerance, default=4.0, metavar="M",
                        help="proposed tolerance = M x the error measured (default 4)")
    _add_input_arguments(parser)
    parser.add_argument("--passes", nargs="+", metavar="PASS",
                        help="graph passes applied to the target's model first")
    parser.add_argument("--providers", nargs="+", default=["cpu"],
                        help="ONNX Runtime execution providers (default cpu)")
    parser.add_argument("--tf32", action="store_true", help="allow TF32 in TensorRT")
    parser.add_argument("--keep-fp32", nargs="+", action="extend", default=[], metavar="NODE",
                        help="ONNX nodes that stay in fp32 in reduced-precision targets")
    parser.add_argument("--trt-major", type=int, choices=(10, 11),
                        help="TensorRT major version to build for (default: installed one)")
    parser.add_argument("--work-dir", type=Path, metavar="DIR", default=Path(DEFAULT_WORK_DIR),
                        help="where converted models are written")
    suite = parser.add_argument_group("suite file")
    suite.add_argument("--write-suite", type=Path, metavar="FILE.suite.toml",
                       help="write the proposal into this suite file (the rest of it is kept)")
    suite.add_argument("--case", metavar="NAME", help="the [[case]] to write it into")
    suite.add_argument("--suite-target", metavar="NAME",
                       help="the suite's [targets.NAME] to write it for (default: the one whose "
                            "backend is the target)")
    parser.add_argument("--json", type=Path, metavar="FILE", help="write a JSON report here")
    _add_isolation_arguments(parser)
    parser.add_argument("--verbose", action="store_true", help="show tracebacks")


def run_tolerances(args: argparse.Namespace) -> int:
    from trtcheck.calibration import calibrate, toml_snippet, write_suite

    if (args.write_suite is None) != (args.case is None):
        raise UsageError("--write-suite FILE and --case NAME go together")
    if args.seeds < 1:
        raise UsageError(f"--seeds {args.seeds}: measure over at least 1 input set")
    from trtcheck.backends import BackendOptions
    from trtcheck.core import CompareRequest

    request = CompareRequest(
        model=args.model, reference=args.reference, target=args.target,
        inputs=input_settings_from_args(args),
        passes=tuple(args.passes) if args.passes else (),
        options=BackendOptions(providers=tuple(args.providers), tf32=args.tf32,
                               keep_fp32=frozenset(args.keep_fp32), trt_major=args.trt_major,
                               work_dir=args.work_dir))
    console = _console()
    with display(console):
        calibration = calibrate(request, args.seeds, args.margin, verbose=args.verbose)
    console.print(f"{args.model}  target {calibration.target}, {calibration.input_sets}, "
                  f"margin {calibration.margin:g}x", soft_wrap=True)
    if args.json is not None:
        from trtcheck.report.json_report import write_json

        write_json({"schema": "trtcheck.tolerances", "schema_version": 1,
                    "model": str(args.model), "target": calibration.target,
                    "input_sets": calibration.input_sets, "margin": calibration.margin,
                    "faults": calibration.faults,
                    "proposals": [{"output": p.output, "tolerance": p.fields, "why": p.why}
                                  for p in calibration.proposals]}, args.json)
    if calibration.faults:
        for fault in calibration.faults:
            console.print(f"fault: {fault}", style="red", soft_wrap=True)
        console.print("no tolerance proposed: one wide enough to pass a fault would hide it; "
                      "fix the fault first (`trtcheck bisect` finds where it starts)",
                      style="red", soft_wrap=True)
        return EXIT_MISMATCH
    for proposal in calibration.proposals:
        style = None if proposal.fields is not None else "yellow"
        console.print(f"{proposal.output}: {proposal.why}", style=style, soft_wrap=True)
    if args.write_suite is not None:
        name = write_suite(args.write_suite, args.case, calibration, args.suite_target)
        console.print(f"wrote [case.tolerance_by_target.{name}] of case {args.case} into "
                      f"{args.write_suite}", soft_wrap=True)
    else:
        console.print(toml_snippet(calibration, calibration.target), soft_wrap=True)
    return EXIT_PASS


def _timeout(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number of seconds") from None
    try:
        return check_tolerance_value(f"{text} seconds", value, 0.0, above_low=True)
    except UsageError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _add_isolation_arguments(parser: argparse.ArgumentParser) -> None:
    from trtcheck.isolation import DEFAULT_TIMEOUT

    group = parser.add_argument_group("isolation")
    group.add_argument("--timeout", type=_timeout, metavar="SECONDS", default=None,
                       help="stop a backend run (engine build included) after this long; it "
                            f"then counts as a crash, exit 3 (default {DEFAULT_TIMEOUT:g})")
    group.add_argument("--in-process", action="store_true",
                       help="run backends in trtcheck's own process instead of a child process "
                            "(for debuggers and profilers; a backend crash then ends trtcheck)")


def _isolation_from_args(args: argparse.Namespace):
    from trtcheck.isolation import isolation

    return isolation(enabled=not getattr(args, "in_process", False),
                     timeout=getattr(args, "timeout", None))


class _VersionAction(argparse.Action):
    """`--version`, computed only when asked for (argparse's own takes a ready string)."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> NoReturn:
        from trtcheck.distribution import version_text

        print(version_text())
        parser.exit(EXIT_PASS)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="trtcheck", description="Check that a TensorRT target computes what "
                     "an ONNX model computes, against ONNX Runtime.")
    parser.add_argument("--version", action=_VersionAction,
                        help="print this project's version and those of its libraries")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    # Subcommands whose arguments import heavy modules get them on first use (`populate`).
    commands.add_parser(
        "compare", help="run a reference and a target on the same inputs and compare outputs",
        description="Exit codes: 0 pass, 1 mismatch, 2 usage or input error, 3 could not run.",
        populate=_add_compare_arguments)
    commands.add_parser(
        "bisect", help="compare, and on a mismatch bisect to the first divergent node "
                       "(compare --bisect)",
        description="Exit codes: 0 pass (nothing to bisect), 1 mismatch (bisected), 2 usage or "
                    "input error, 3 could not run.",
        populate=_add_compare_arguments)
    commands.add_parser(
        "audit", help="find tensors beyond the fp16/bf16 range from fp32 activations alone",
        description="Exit codes: 0 no overflow (underflows are reported), 1 a tensor overflows "
                    "a reduced type, 2 usage or input error, 3 could not run.",
        populate=_add_audit_arguments)
    commands.add_parser(
        "fix", help="fold constants and fix what TensorRT cannot take, proving each pass "
                    "harmless with ONNX Runtime",
        description="Exit codes: 0 written and every pass verified, 1 written but a pass was "
                    "rolled back or failed, 2 usage or input error, 3 could not verify.",
        populate=_add_fix_arguments)
    commands.add_parser(
        "tolerances", help="measure each output's error over several seeds or recorded input "
                           "sets and propose tolerances (optionally into a suite file)",
        description="Exit codes: 0 tolerances proposed (and written), 1 a fault was found "
                    "(inf/nan in the target, an overflow in the range audit, a collapsed "
                    "cosine), so nothing is proposed, 2 usage or input error, 3 could not run.",
        populate=_add_tolerances_arguments)
    commands.add_parser(
        "triton", help="write or check a Triton Inference Server model repository",
        populate=_add_triton_arguments)
    commands.add_parser(
        "cache", help="list or clear the TensorRT engines that trt* targets reuse",
        description="The engine cache is in $TRTCHECK_ENGINE_CACHE (default "
                    "~/.cache/trtcheck/engines). Exit codes: 0 done, 2 usage error.",
        populate=_add_cache_arguments)
    commands.add_parser(
        "quantize", help="write the Q/DQ model an int8/fp8 target runs (calibrated, or from a "
                         "TensorRT calibration cache)",
        description="Exit codes: 0 written, 2 usage or input error, 3 could not run.",
        populate=_add_quantize_arguments)
    cache = commands.add_parser(
        "calibration-cache", help="write a TensorRT calibration cache from a Q/DQ model's int8 "
                                  "activation scales",
        description="Exit codes: 0 written, 2 usage or input error.")
    cache.add_argument("model", type=Path, help="the Q/DQ model")
    cache.add_argument("-o", "--output", type=Path, required=True, metavar="FILE",
                       help="where to write the cache")
    cache.add_argument("--trt-version", metavar="X.Y.Z",
                       help="the TensorRT version that will read it (its header names it; "
                            "TensorRT skips a cache of another version); default: installed, "
                            "else 10.3.0")
    cache.add_argument("--verbose", action="store_true", help="show tracebacks")
    lint = commands.add_parser(
        "lint", help="report what TensorRT's ONNX parser will reject, without TensorRT",
        description="Exit codes: 0 no errors (warnings may be shown), 1 errors found (or "
                    "warnings, with --strict), 2 usage or input error.")
    lint.add_argument("model", type=Path, help="the ONNX model to check")
    lint.add_argument("--trt-major", type=int, choices=(10, 11),
                      help="TensorRT major version to check against (default: the installed "
                           "one, else 10)")
    lint.add_argument("--strict", action="store_true", help="warnings fail too")
    lint.add_argument("--json", type=Path, metavar="FILE", help="write a JSON report here")
    lint.add_argument("--verbose", action="store_true", help="show tracebacks")
    _add_report_parser(commands)
    return parser


def _add_report_parser(commands: Any) -> None:
    report = commands.add_parser("report", help="work with the reports of pytest runs")
    actions = report.add_subparsers(dest="report_command", metavar="merge", required=True,
                                    parser_class=_Parser)
    merge = actions.add_parser(
        "merge", help="merge the artifacts folders of CI jobs that split a suite (pytest-split) "
                      "into one HTML report, one Markdown summary and one JUnit file",
        description="Exit codes: 0 every item passed (or was skipped or expected to fail), 1 "
                    "failures or errors, 2 a folder is not a finished job's artifacts folder or "
                    "a job of the split is missing.")
    merge.add_argument("folders", type=Path, nargs="+", metavar="DIR",
                       help="each job's --trtcheck-artifacts folder (with its summary.json)")
    merge.add_argument("-o", "--output", type=Path, default=Path("trtcheck-merged"),
                       metavar="OUT", help="folder for summary.json, summary.md, report.html "
                                           "and junit.xml (default: trtcheck-merged)")
    merge.add_argument("--verbose", action="store_true", help="show tracebacks")


def run_report(args: argparse.Namespace) -> int:
    from trtcheck.report.merge import merge
    from trtcheck.report.run_summary import count_line, tensorrt_warning

    summary, written = merge(args.folders, args.output)
    print(f"trtcheck: {summary.jobs} jobs: {count_line(summary.counts())}")
    warning = tensorrt_warning(summary)
    if warning:
        print(f"trtcheck: {warning}")
    for path in written:
        print(f"trtcheck: wrote {path}")
    return EXIT_PASS if summary.passed else EXIT_MISMATCH


def _tolerance_values(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    values: dict[str, dict[str, Any]] = {
        "atol": _named_numbers("--atol", args.atol),
        "rtol": _named_numbers("--rtol", args.rtol),
        "check_error_stat": _error_stats(args.check_error_stat),
        "error_quantile": _named_numbers("--error-quantile", args.error_quantile, upper=1.0),
        "min_cosine": _named_numbers("--cosine", args.cosine, lower=-1.0, upper=1.0),
        "min_snr": _named_numbers("--snr", args.snr, lower=-math.inf),
        "min_agreement": _named_numbers("--min-agreement", args.min_agreement, upper=1.0),
    }
    return {key: value for key, value in values.items() if value}


def _check_output_path(flag: str, path: Path | None) -> None:
    if path is not None and path.suffix != ".json":
        raise UsageError(f"{flag} {path}: give a file name ending in .json")


def request_from_args(args: argparse.Namespace):
    from trtcheck.backends import BackendOptions
    from trtcheck.core import CompareRequest, ToleranceRequest
    from trtcheck.detections import parse_spec
    from trtcheck.quant.target import QuantRequest

    _check_output_path("--save-outputs", args.save_outputs)
    _check_output_path("--save-inputs", args.save_inputs)
    return CompareRequest(
        model=args.model,
        reference=args.reference,
        target=args.target,
        tolerances=ToleranceRequest(_tolerance_values(args)),
        inputs=input_settings_from_args(args),
        passes=tuple(args.passes) if args.passes else (),
        detections=tuple(parse_spec(text) for text in args.detections or ()),
        options=BackendOptions(providers=tuple(args.providers), tf32=args.tf32,
                               keep_fp32=frozenset(args.keep_fp32), trt_major=args.trt_major,
                               work_dir=args.work_dir, engine=args.target_engine,
                               engine_cache=not args.no_engine_cache),
        save_outputs=args.save_outputs,
        save_inputs=args.save_inputs,
        quant=QuantRequest(args.calibration_data, args.calibration_cache,
                           args.calibration_method, args.target_model),
        layers=args.layers,
        served_precision=args.served_precision,
    )


def _console(stderr: bool = False):
    from rich.console import Console

    from trtcheck.report.widths import console_width

    # rich already falls back to plain text when not a TTY and honours NO_COLOR and COLUMNS.
    stream = sys.stderr if stderr else sys.stdout
    return Console(stderr=stderr, highlight=False, markup=False,
                   width=console_width(stream.isatty()))


def _import_reporting() -> None:
    """Imports what comparing and printing a result needs (rich, the views).

    Also what Polygraphy's comparison and rich's markup import lazily on first use (numpy.ma,
    numpy.random, polygraphy.cuda, rich's emoji table: 10 ms after the run otherwise).
    """
    import numpy.ma  # noqa: F401
    import numpy.random  # noqa: F401
    import polygraphy.cuda  # noqa: F401
    import rich._emoji_codes  # noqa: F401

    import trtcheck.report.json_report
    import trtcheck.report.terminal  # noqa: F401


def _early_runs(args: argparse.Namespace) -> list[str]:
    """The runs that can start before the model is loaded (`run.started_early`).

    fp32 ONNX Runtime on the model file: the reference, and the target too when it is the same
    backend on the same model.
    """
    from trtcheck.run import EARLY_BACKEND

    if args.reference != EARLY_BACKEND:
        return []
    runs = [f"reference:{EARLY_BACKEND}"]
    if args.target == EARLY_BACKEND and not args.passes:
        runs.append(f"target:{EARLY_BACKEND}")
    return runs


def run_compare(args: argparse.Namespace) -> int:
    from trtcheck.run import started_early

    # Before anything heavy is imported: ONNX Runtime builds the reference's session in a child
    # while this process imports, loads and feeds the model.
    with started_early(args.model, _early_runs(args), args.providers, args.verbose):
        if not (args.bisect or args.command == "bisect"):
            return _run_compare(args)
        from trtcheck.backends import reusing_models

        # The bisection reuses the comparison's loaded and emulated models.
        with reusing_models():
            return _run_compare(args)


def _run_compare(args: argparse.Namespace) -> int:
    from trtcheck import isolation
    from trtcheck.core import compare_model, library_versions

    # The report's imports are done while the backends run in their child process (on a
    # terminal the spinner needs rich first); `polygraphy run` has no such imports to pay.
    console = _console() if sys.stdout.isatty() else None
    localization = None
    bisect_error: TrtcheckError | None = None
    try:
        request = request_from_args(args)
        with display(console), isolation.meanwhile(_import_reporting):
            result = compare_model(request, verbose=args.verbose)
        console = console or _console()
        from trtcheck.report.terminal import ComparisonView

        for warning in result.feeds.warnings:
            _warn(warning)
        if result.target_note:
            console.print(result.target_note, style="yellow")
        # crop=False: the lines that name files and commands are printed whole.
        console.print(ComparisonView(result), crop=False)
        if result.polygraphy_command:
            console.print("Same check with TensorRT, on a GPU machine" + (
                f" ({result.polygraphy_note}):" if result.polygraphy_note else ":"),
                style="dim", soft_wrap=True)
            # soft_wrap keeps the command on one line so it can be copied as it is.
            console.print(result.polygraphy_command, style="cyan", soft_wrap=True)
        else:
            console.print(f"{result.polygraphy_note}:", style="dim", soft_wrap=True)
            console.print(result.trtcheck_command, style="cyan", soft_wrap=True)
        if result.layers is not None:
            from trtcheck.report.quant_report import LayerwiseView

            console.print(LayerwiseView(result.layers, limit=None if args.verbose else 20))
    except TrtcheckError as err:
        from trtcheck.report.json_report import error_to_dict

        message = str(err)
        _write_reports(args, lambda: error_to_dict(message, str(args.model), library_versions()))
        raise
    from trtcheck.report.json_report import result_to_dict

    if (args.bisect or args.command == "bisect") and result.verdict == "fail":
        try:
            localization = _bisect(args, result, console)
        except Exception as err:
            if args.verbose:
                raise
            # The comparison stands: its verdict and tables are kept, with the bisect error.
            if not isinstance(err, TrtcheckError):
                traceback.print_exc()
                err = InternalError(f"internal error while bisecting ({type(err).__name__}: "
                                    f"{err}); {BUG_REPORT}")
            bisect_error = err
            print(f"trtcheck: bisect: {err}", file=sys.stderr)

    def document() -> dict[str, Any]:
        written = result_to_dict(result)
        if localization is not None:
            from trtcheck.report.bisect_report import localization_to_dict

            written["bisect"] = localization_to_dict(localization)
        if bisect_error is not None:
            written["bisect_error"] = str(bisect_error)
        return written

    _write_reports(args, document)
    if bisect_error is not None and (args.command == "bisect"
                                     or isinstance(bisect_error, InternalError)):
        return bisect_error.exit_code
    return EXIT_PASS if result.verdict == "pass" else EXIT_MISMATCH


def _write_reports(args: argparse.Namespace, make_document: Callable[[], dict[str, Any]]
                   ) -> None:
    """Writes the reports asked for, making the document only then.

    The document records every library's version, which imports ONNX Runtime in this process.
    """
    if args.json is None and args.report is None:
        return
    from trtcheck.report.json_report import write_json

    document = make_document()

    if args.json is not None:
        write_json(document, args.json)
    if args.report is not None:
        from trtcheck.atomic import write_text
        from trtcheck.report.html_report import render

        page = render([(args.model.name, document, {})], f"trtcheck {args.command} "
                      f"{args.model.name}")
        write_text(args.report, page)


def _bisect(args: argparse.Namespace, result, console):
    from trtcheck.debug import localize_comparison
    from trtcheck.report.bisect_report import BisectView
    from trtcheck.run import quiet_polygraphy

    repro = args.repro or _default_repro(args, result.target.name)
    repro.mkdir(parents=True, exist_ok=True)
    if result.target.quantized and result.target_model_path is not None:
        from trtcheck.quant.bisect import localize_quantized

        with quiet_polygraphy(args.verbose), display(console):
            localization, layers = localize_quantized(result, request_from_args(args), repro)
        result.layers = result.layers if result.layers is not None else layers
        console.print(BisectView(localization), crop=False)
        return localization
    with quiet_polygraphy(args.verbose), display(console):
        localization = localize_comparison(result, repro_dir=repro,
                                           fix_precision=not args.no_precision_fix,
                                           output=args.bisect_output, mode=args.bisect_mode,
                                           max_memory=args.max_memory)
    console.print(BisectView(localization), crop=False)
    return localization


def _warn(message: str) -> None:
    print(f"trtcheck: warning: {message}", file=sys.stderr)


def run_audit(args: argparse.Namespace) -> int:
    from trtcheck.debug import audit_model
    from trtcheck.report.json_report import write_json

    findings = audit_model(args.model, input_settings_from_args(args),
                           tuple(args.precision or ("fp16", "bf16")), args.max_memory, _warn)
    console = _console()
    for finding in findings:
        style = {"overflow": "red", "mask-fill": "dim"}.get(finding.kind, "yellow")
        console.print(f"{finding.precision} {finding.kind}: {finding.describe()} "
                      f"(node {finding.node})", style=style, soft_wrap=True)
    overflows = [f for f in findings if f.kind == "overflow"]
    fills = [f for f in findings if f.kind == "mask-fill"]
    console.print(f"{len(overflows)} overflow(s), {len(fills)} attention-mask fill(s) (harmless), "
                  f"{len(findings) - len(overflows) - len(fills)} underflow(s)" if findings
                  else "every tensor fits the audited types")
    if args.json is not None:
        from dataclasses import asdict

        write_json({"schema": "trtcheck.audit", "schema_version": 1, "model": str(args.model),
                    "findings": [{**asdict(f), "description": f.describe()} for f in findings]},
                   args.json)
    return EXIT_MISMATCH if overflows else EXIT_PASS


def run_fix(args: argparse.Namespace) -> int:
    from trtcheck.fix import fix_model
    from trtcheck.report.fix_report import FixView, fix_to_dict
    from trtcheck.report.json_report import write_json

    console = _console()
    result = fix_model(args.model, args.output, passes=args.passes,
                       inputs=input_settings_from_args(args), rtol=args.rtol,
                       require_verification=not args.no_verify, static_shapes=args.static)
    for warning in result.feeds.warnings:
        _warn(warning)
    console.print(FixView(result))
    if args.json is not None:
        write_json(fix_to_dict(result), args.json)
    return EXIT_PASS if result.pipeline.clean else EXIT_MISMATCH


def run_quantize(args: argparse.Namespace) -> int:
    from trtcheck.atomic import fits_in_protobuf, save_onnx
    from trtcheck.model import load_model
    from trtcheck.quant.quantize import QuantSettings, quantize_model
    from trtcheck.quant.target import QuantRequest, calibration_source
    from trtcheck.run import quiet_polygraphy

    model = load_model(args.model)
    request = QuantRequest(args.calibration_data, args.calibration_cache, args.calibration_method)
    request.check()
    with quiet_polygraphy(args.verbose):
        calibration, amax, notes = calibration_source(model, request,
                                                      input_settings_from_args(args))
        for note in notes:
            _warn(note)
        settings = QuantSettings(args.precision, args.calibration_method,
                                 exclude=tuple(args.exclude))
        quantized = quantize_model(model, settings, calibration, amax)
    save_onnx(quantized, args.output, external_data=not fits_in_protobuf(quantized))
    quantized_nodes = sum(node.op_type == "QuantizeLinear" for node in quantized.graph.node)
    print(f"wrote {args.output}: {args.precision}, {quantized_nodes} QuantizeLinear node(s)")
    return EXIT_PASS


def run_calibration_cache(args: argparse.Namespace) -> int:
    from trtcheck.backends import tensorrt_version
    from trtcheck.model import load_model
    from trtcheck.quant.trt_cache import DEFAULT_HEADER, cache_from_qdq, header_for, write_cache

    version = args.trt_version or tensorrt_version()
    header = header_for(version) if version else DEFAULT_HEADER
    cache = cache_from_qdq(load_model(args.model).proto, header=header)
    for note in cache.notes:
        _warn(note)
    write_cache(args.output, cache)
    print(f"wrote {args.output}: {len(cache.scales)} tensor scale(s), header {cache.header}")
    return EXIT_PASS


def run_lint(args: argparse.Namespace) -> int:
    from trtcheck.backends import tensorrt_version
    from trtcheck.lint import lint_model
    from trtcheck.model import load_model
    from trtcheck.report.json_report import write_json
    from trtcheck.report.lint_report import LintView, lint_to_dict

    major = args.trt_major
    if major is None:
        version = tensorrt_version()
        major = 11 if version and int(version.split(".")[0]) >= 11 else 10
    result = lint_model(load_model(args.model), major)
    _console().print(LintView(result))
    if args.json is not None:
        write_json(lint_to_dict(result), args.json)
    failing = result.findings if args.strict else result.errors
    return EXIT_MISMATCH if failing else EXIT_PASS


def _default_repro(args: argparse.Namespace, target: str | None) -> Path:
    from trtcheck.backends import default_target

    return Path("trtcheck-repro") / f"{args.model.stem}-{target or default_target()[0]}"


def check_outputs(args: argparse.Namespace) -> None:
    """Checks every path the command will write, before any work; `UsageError` names the flag."""
    from trtcheck import atomic

    inputs = [args.model, getattr(args, "inputs", None)]
    files = [("--json", getattr(args, "json", None)), ("--report", getattr(args, "report", None)),
             ("--save-outputs", getattr(args, "save_outputs", None)),
             ("--save-inputs", getattr(args, "save_inputs", None))]
    if args.command in ("fix", "quantize", "calibration-cache"):
        files.insert(0, ("-o", args.output))
    for flag, path in files:
        atomic.check_output_path(flag, path, inputs)
    atomic.check_distinct(files)
    if args.command in ("compare", "bisect"):
        atomic.check_work_folder("--work-dir", args.work_dir)
        if args.bisect or args.command == "bisect":
            repro = args.repro or _default_repro(args, args.target)
            atomic.check_output_folder("--repro", repro, [*inputs, *(p for _, p in files)])


def main(argv: Sequence[str] | None = None) -> int:
    """Runs one command; returns its exit code (see `trtcheck.errors`), never raises for one."""
    args = build_parser().parse_args(argv)
    commands = {"compare": run_compare, "bisect": run_compare, "audit": run_audit,
                "fix": run_fix, "lint": run_lint, "tolerances": run_tolerances,
                "quantize": run_quantize, "calibration-cache": run_calibration_cache}
    try:
        if args.command == "report":
            return run_report(args)
        if args.command == "cache":
            from trtcheck.engine.cache import run_cache

            return run_cache(args)
        if args.command == "triton":
            from trtcheck.deploy.cli_triton import run_triton

            return run_triton(args)
        check_outputs(args)
        with _isolation_from_args(args):
            return commands[args.command](args)
    except TrtcheckError as err:
        if getattr(args, "verbose", False):
            traceback.print_exc()
        print(f"trtcheck: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("trtcheck: interrupted (Ctrl-C); temporary files were removed", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Terminated:
        print("trtcheck: stopped by SIGTERM; temporary files were removed", file=sys.stderr)
        return EXIT_TERMINATED
    except MemoryError:
        print(f"trtcheck: error: out of memory while running `trtcheck {args.command}`; use "
              "smaller --input-shapes or a machine with more memory", file=sys.stderr)
        return EXIT_COULD_NOT_RUN
    except Exception as err:
        traceback.print_exc()
        print(f"trtcheck: internal error ({type(err).__name__}): {BUG_REPORT}", file=sys.stderr)
        return EXIT_INTERNAL_ERROR


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated()


def entry_point() -> None:
    os.environ.setdefault("POLYGRAPHY_AUTOINSTALL_DEPS", "0")
    # SIGTERM (CI cancelling a job, `kill`) unwinds like Ctrl-C, so temporary files are removed.
    signal.signal(signal.SIGTERM, _raise_terminated)
    _exit_without_teardown(main())


def _exit_without_teardown(code: int) -> NoReturn:
    """Exits with `code` once the exit handlers have run and the output is flushed.

    The interpreter's own teardown (freeing every module of onnx, ONNX Runtime, numpy and
    polygraphy, one by one) takes 40 ms, longer than a small model's two runs; nothing of
    trtcheck's needs it: files are closed when written and temporary folders are removed by
    exit handlers, which run here first.
    """
    import atexit

    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        # A reader that went away (`| head`) keeps the verdict's exit code.
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(code)
