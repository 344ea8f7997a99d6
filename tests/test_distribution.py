"""Installing trtcheck under its own name: the distribution name, hints, the workflow, --version."""

from __future__ import annotations

import importlib.metadata
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import trtcheck
from trtcheck.backends import TRT_INSTALL_HINT
from trtcheck.cli import main
from trtcheck.distribution import DISTRIBUTION, install_command, version_text

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW = ROOT / ".github" / "workflows" / "trtcheck.yml"
# `trtcheck` on PyPI is another author's project: a command that installs it installs theirs.
FOREIGN_INSTALL = re.compile(r"pip install[^`\n]*?(?<![\w-])['\"]?trtcheck(\[|['\"`\s]|$)")


def test_distribution_name_is_the_projects():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["name"] == DISTRIBUTION == "onnx-trtcheck"
    assert project["scripts"]["trtcheck"] == "trtcheck.cli:entry_point"
    assert set(project["optional-dependencies"]) >= {"trt", "ci"}


def test_install_command():
    assert install_command() == "pip install onnx-trtcheck"
    assert install_command("ci", "trt") == "pip install 'onnx-trtcheck[ci,trt]'"
    assert "`pip install 'onnx-trtcheck[trt]'`" in TRT_INSTALL_HINT


@pytest.mark.parametrize("text", ["pip install trtcheck", "pip install 'trtcheck[trt]'",
                                  "`pip install -U trtcheck`", 'pip install "trtcheck[dev]"'])
def test_the_foreign_install_pattern_matches(text):
    assert FOREIGN_INSTALL.search(text)


@pytest.mark.parametrize("text", ["pip install onnx-trtcheck", "pip install 'onnx-trtcheck[trt]'",
                                  "pip install -e '.[trt]'", "pip install trtcheck-foo"])
def test_the_foreign_install_pattern_spares_ours(text):
    assert not FOREIGN_INSTALL.search(text)


def test_no_hint_or_doc_installs_the_other_project():
    files = [*sorted((ROOT / "trtcheck").rglob("*.py")), ROOT / "README.md",
             *sorted((ROOT / "docs").glob("*.md")), WORKFLOW]
    offenders = [f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
                 for path in files
                 for number, line in enumerate(path.read_text().splitlines(), 1)
                 if FOREIGN_INSTALL.search(line)]
    assert offenders == []


def _install_steps() -> dict[str, tuple[str, str]]:
    """Each install step of the workflow: name -> (TRTCHECK_SPEC's default, the run script)."""
    steps = {}
    text = WORKFLOW.read_text()
    for match in re.finditer(r"- name: (Install[^\n]*)\n(.*?)(?=\n      - |\Z)", text, re.S):
        body = match.group(2)
        default = re.search(r"TRTCHECK_SPEC: \$\{\{ vars\.\w+ \|\| '([^']+)' \}\}", body)
        script = re.search(r"run: \|\n((?:          .*\n?)+)", body)
        assert default and script, f"install step {match.group(1)!r} changed shape"
        steps[match.group(1)] = (default.group(1),
                                 "\n".join(line[10:] for line in script.group(1).splitlines()))
    return steps


def _run_step(script: str, spec: str, folder: Path, tmp_path: Path) -> list[str]:
    """Runs a step's script in `folder` with a `python` that records its arguments."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    log = tmp_path / "calls"
    log.unlink(missing_ok=True)
    fake = bin_dir / "python"
    fake.write_text(f'#!/bin/sh\nprintf "%s\\n" "$*" >> {log}\n')
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "TRTCHECK_SPEC": spec}
    subprocess.run(["bash", "-e", "-c", script], cwd=folder, env=env, check=True)
    return log.read_text().splitlines()


def test_workflow_installs_trtcheck_when_copied_elsewhere(tmp_path):
    user = tmp_path / "their-project"
    user.mkdir()
    (user / "pyproject.toml").write_text('[project]\nname = "their-project"\n')
    steps = _install_steps()
    assert set(steps) == {"Install", "Install with TensorRT"}
    for name, extras in (("Install", "ci"), ("Install with TensorRT", "ci,trt")):
        spec, script = steps[name]
        assert spec == f"{DISTRIBUTION}[{extras}]=={trtcheck.__version__}"
        assert _run_step(script, spec, user, tmp_path) == [f"-m pip install {spec}"]
        no_pyproject = tmp_path / "no-pyproject"
        no_pyproject.mkdir(exist_ok=True)
        assert _run_step(script, spec, no_pyproject, tmp_path) == [f"-m pip install {spec}"]


def test_workflow_installs_the_checkout_in_trtchecks_own_repository(tmp_path):
    steps = _install_steps()
    assert _run_step(steps["Install"][1], "x", ROOT, tmp_path) == ["-m pip install -e .[dev]"]
    assert _run_step(steps["Install with TensorRT"][1], "x", ROOT, tmp_path) == [
        "-m pip install -e .[dev,trt]"]


def test_version_flag(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"onnx-trtcheck {trtcheck.__version__} from ")
    assert lines[1] == f"polygraphy {importlib.metadata.version('polygraphy')}"
    assert lines[2] == f"onnxruntime {importlib.metadata.version('onnxruntime')}"
    assert lines[3].startswith("tensorrt ")
    assert len(lines) == 4


def test_version_flag_without_tensorrt(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "tensorrt" else real_find_spec(name, *a))
    assert version_text().splitlines()[3] == "tensorrt not installed"


def test_version_flag_from_the_command_line():
    done = subprocess.run([sys.executable, "-m", "trtcheck", "--version"], capture_output=True,
                          text=True, cwd=ROOT, timeout=60)
    assert done.returncode == 0 and done.stderr == ""
    assert done.stdout.startswith(f"onnx-trtcheck {trtcheck.__version__} ")
