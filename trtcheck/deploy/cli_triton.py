"""`trtcheck triton export|check`: the arguments and the run function `trtcheck.cli` calls.

The CLI adds these arguments when the `triton` subcommand is used, and runs `run_triton` before
its model-file checks (a repository is not a model). Heavy modules are imported only when run.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from trtcheck.errors import EXIT_PASS

_EXPORT_EXITS = "Exit codes: 0 written, 2 usage or input error, 3 tritonclient[grpc] missing."
_CHECK_EXITS = ("Exit codes: 0 no errors (warnings may be shown), 1 errors found, 2 the "
                "repository is not a folder, 3 tritonclient[grpc] missing.")


def add_triton_arguments(triton: argparse.ArgumentParser) -> None:
    """Adds `export` and `check` to the CLI's `triton` subcommand."""
    actions = triton.add_subparsers(dest="triton_command", metavar="{export,check}",
                                    required=True)
    export = actions.add_parser(
        "export", help="write a model's folder (config.pbtxt and version folder) in a Triton "
                       "model repository", description=_EXPORT_EXITS)
    export.add_argument("model", type=Path, help="the ONNX model")
    export.add_argument("--repo", type=Path, required=True, metavar="DIR",
                        help="the model repository (created if missing)")
    export.add_argument("--name", help="the model's name in Triton (default: the file's stem)")
    export.add_argument("--max-batch", type=int, metavar="B",
                        help="max_batch_size (default: 4 if every input and output has a "
                             "dynamic first dimension, else 0)")
    export.add_argument("--platform", choices=("onnxruntime", "tensorrt"), default="onnxruntime",
                        help="onnxruntime copies the model to 1/model.onnx; tensorrt writes the "
                             "profile, the commands that build 1/model.plan and a sidecar")
    export.add_argument("--input-shapes", nargs="+", action="extend", metavar="NAME:SHAPE",
                        help="full shapes for the dynamic non-batch dimensions of a TensorRT "
                             "profile, e.g. tokens:1x128 (the batch becomes 1..B)")
    export.add_argument("--force", action="store_true",
                        help="replace the model's folder if it exists")
    export.add_argument("--verbose", action="store_true", help="show tracebacks")
    check = actions.add_parser(
        "check", help="check every config.pbtxt of a model repository against its model files",
        description=_CHECK_EXITS)
    check.add_argument("repo", type=Path, metavar="DIR", help="the model repository")
    check.add_argument("--json", type=Path, metavar="FILE",
                       help="write the findings as JSON here ('-' for standard output)")
    check.add_argument("--no-tensorrt", action="store_true",
                       help="check plans against their sidecars even where TensorRT is installed")
    check.add_argument("--verbose", action="store_true", help="show tracebacks")


def run_triton(args: argparse.Namespace) -> int:
    """Runs `triton export` or `triton check`; `TrtcheckError`s propagate to the CLI."""
    if args.triton_command == "export":
        return run_export(args)
    return run_check(args)


def run_export(args: argparse.Namespace) -> int:
    from trtcheck.cli import _shapes
    from trtcheck.deploy.triton_export import export_model

    result = export_model(args.model, args.repo, name=args.name, max_batch=args.max_batch,
                          platform=args.platform, shapes=_shapes(args.input_shapes),
                          force=args.force)
    print("\n".join(result.summary_lines()))
    return EXIT_PASS


def run_check(args: argparse.Namespace) -> int:
    from trtcheck.atomic import check_output_path, write_text
    from trtcheck.deploy.triton_check import check_repository

    to_stdout = args.json is not None and str(args.json) == "-"
    if args.json is not None and not to_stdout:
        check_output_path("--json", args.json)
    result = check_repository(args.repo, use_tensorrt=False if args.no_tensorrt else None)
    lines = sys.stderr if to_stdout else sys.stdout
    for line in (*result.lines(), result.summary()):
        print(line, file=lines)
    if args.json is not None:
        text = json.dumps(result.to_json(), indent=2) + "\n"
        if to_stdout:
            sys.stdout.write(text)
        else:
            write_text(args.json, text)
    return result.exit_code
