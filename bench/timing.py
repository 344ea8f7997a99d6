"""Timing whole CLI runs for the benches: interleaved rounds after a warm-up, one environment.

`bench/compare_wall_time.py` and `bench/triton_live.py` time commands the same way: each command
once untimed (page cache, .pyc files), then N rounds interleaved (A, B, C, A, B, C, ...) so that
machine noise hits every command, all in an environment whose bytecode cache is the bench's own
(`bench_environment`): an installed wheel has its .pyc files, and an editable checkout under
PYTHONDONTWRITEBYTECODE=1 would compile every trtcheck module on every run.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


class BenchError(RuntimeError):
    """A command could not run: the bench stops and says why."""


@dataclass
class Row:
    """One command, and the wall times and exit codes of its timed runs."""

    label: str
    argv: list[str]
    times: list[float] = field(default_factory=list)
    exit_codes: list[int] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def best(self) -> float:
        return min(self.times)


@dataclass
class Timer:
    """Runs commands in `environment` (None: this process's) and accepts `ok_exit_codes`."""

    environment: dict[str, str] | None = None
    ok_exit_codes: Sequence[int] = (0,)

    def run(self, argv: list[str], timeout: float) -> tuple[float, int]:
        """Runs one command; its wall time in seconds and its exit code."""
        start = time.perf_counter()
        try:
            done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True,
                                  timeout=timeout, env=self.environment, check=False)
        except subprocess.TimeoutExpired as exc:
            raise BenchError(f"timed out after {timeout:g} s: {' '.join(argv)}") from exc
        elapsed = time.perf_counter() - start
        if done.returncode not in self.ok_exit_codes:
            expected = " or ".join(map(str, self.ok_exit_codes))
            raise BenchError(
                f"exit code {done.returncode} (expected {expected}): {' '.join(argv)}\n"
                f"--- stderr ---\n{done.stderr.rstrip()}\n--- stdout (last 20 lines) ---\n"
                + "\n".join(done.stdout.splitlines()[-20:]))
        return elapsed, done.returncode

    def time_rows(self, rows: list[Row], repeats: int, timeout: float) -> None:
        """One untimed warm-up of each row, then `repeats` interleaved timed rounds."""
        for row in rows:
            self.run(row.argv, timeout)
        for _ in range(repeats):
            for row in rows:
                elapsed, code = self.run(row.argv, timeout)
                row.times.append(elapsed)
                row.exit_codes.append(code)


def bench_environment(pycache: Path) -> dict[str, str]:
    """This process's environment with bytecode cached in `pycache` (see the module docstring)."""
    environment = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    environment["PYTHONPYCACHEPREFIX"] = str(pycache)
    return environment
