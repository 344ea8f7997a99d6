from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import onnx
import pytest


@pytest.fixture
def save_model(tmp_path: Path) -> Callable[[onnx.ModelProto, str], Path]:
    def save(model: onnx.ModelProto, name: str = "model.onnx") -> Path:
        path = tmp_path / name
        onnx.save(model, str(path))
        return path

    return save


class CliRun:
    def __init__(self, completed: subprocess.CompletedProcess[str]) -> None:
        self.code = completed.returncode
        self.stdout = completed.stdout
        self.stderr = completed.stderr


@pytest.fixture
def trtcheck_cli(tmp_path: Path) -> Callable[..., CliRun]:
    """Runs `python -m trtcheck ARGS` in a subprocess, as a user would."""

    def run(*args: str | Path) -> CliRun:
        completed = subprocess.run(
            [sys.executable, "-m", "trtcheck", *map(str, args)],
            capture_output=True, text=True, cwd=tmp_path, timeout=300,
        )
        return CliRun(completed)

    return run


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())
