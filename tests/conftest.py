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


@pytest.fixture(scope="session")
def triton_venv() -> Path:
    """The venv that runs a real Triton server (tests/triton_server.py), made once and cached.

    Skips only where a user would accept it (no server for this platform; PyPI unreachable
    outside CI); in CI a venv that cannot be made fails the tests that need it.
    """
    from tests.triton_server import VenvUnavailable
    from tests.triton_server import triton_venv as make_venv

    try:
        return make_venv()
    except VenvUnavailable as err:
        if err.accepted:
            pytest.skip(f"no Triton server here: {err}")
        pytest.fail(f"could not make the Triton server venv: {err}")
