"""Golden reference outputs: `golden/<suite key>/<case>.npz` plus a small `.json` of metadata.

The suite key is the suite file's path relative to pytest's rootdir without `.suite.toml`
(`suites/models`), or its declared `[suite] name`: two suite files never share goldens.

A golden catches drift in the model or the reference runtime: the reference's outputs today are
compared with the ones recorded. Goldens are never written implicitly: a missing golden fails
with the command that creates it, and the update modes rewrite them and still fail the item, so
that a run which changed goldens is never mistaken for a passing run.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from trtcheck.atomic import write_atomically, write_npz
from trtcheck.compare import OutputDiff, compare_runs
from trtcheck.tolerance import Tolerance, Tolerances

GOLDEN_RUNNER = "golden"

# How goldens may be written in a run.
CHECK, UPDATE, UPDATE_NEW = "check", "update", "update-new"


@dataclass(frozen=True)
class GoldenPaths:
    arrays: Path
    metadata: Path
    # `<suite key>/<case>`: where the case's `.obtained.npz` goes in an artifacts folder.
    key: str = ""

    @classmethod
    def for_case(cls, golden_dir: Path, suite: str, case: str) -> GoldenPaths:
        """The golden files of `case`; `suite` is a suite key, checked to stay inside the folder."""
        check_suite_key(suite)
        folder = golden_dir / suite
        return cls(folder / f"{case}.npz", folder / f"{case}.json", f"{suite}/{case}")

    def obtained(self, artifacts: Path) -> Path:
        return artifacts / f"{self.key or self.arrays.stem}.obtained.npz"

    def exists(self) -> bool:
        return self.arrays.is_file() and self.metadata.is_file()


@dataclass(frozen=True)
class GoldenCheck:
    """The outcome for one case: `status` is pass, fail, missing, written."""

    status: str
    message: str
    diffs: tuple[OutputDiff, ...] = ()


def check_suite_key(key: str) -> str:
    """`key` if it is a relative '/'-separated path of plain parts, else ValueError.

    Suite keys become folders under the golden and artifacts folders; this keeps every one of
    them inside (no absolute path, no '.' or '..', no empty part, no backslash).
    """
    if not key or "\\" in key or any(part in ("", ".", "..") for part in key.split("/")):
        raise ValueError(f"suite key {key!r} is not a relative path of plain names")
    return key


def _metadata_mismatch(recorded: dict[str, Any], current: dict[str, Any]) -> str | None:
    for key in ("model_sha256", "inputs", "seed", "reference"):
        if recorded.get(key) != current.get(key):
            return (f"the golden was recorded with {key} = {recorded.get(key)!r}, the case now "
                    f"has {current.get(key)!r}")
    return None


def _layout_mismatch(golden: dict[str, np.ndarray], obtained: dict[str, np.ndarray]) -> str | None:
    if sorted(golden) != sorted(obtained):
        return (f"the golden holds outputs {sorted(golden)}, the reference produced "
                f"{sorted(obtained)}")
    for name, array in obtained.items():
        recorded = golden[name]
        if recorded.dtype != array.dtype or recorded.shape != array.shape:
            return (f"output '{name}': the golden is {recorded.dtype}{list(recorded.shape)}, the "
                    f"reference gives {array.dtype}{list(array.shape)}")
    return None


def write(paths: GoldenPaths, outputs: dict[str, np.ndarray], metadata: dict[str, Any]) -> None:
    """Writes both golden files atomically (arrays first, so metadata never points at nothing)."""
    write_npz(paths.arrays, outputs)
    text = json.dumps(metadata, indent=2, sort_keys=True) + "\n"
    write_atomically(paths.metadata, lambda partial: Path(partial).write_text(text))


def check(paths: GoldenPaths, obtained: dict[str, np.ndarray], metadata: dict[str, Any],
          atol: float, rtol: float, mode: str, update_command: str,
          artifacts: Path | None) -> GoldenCheck:
    """Checks the reference's outputs against the golden, or writes it as `mode` says."""
    exists = paths.exists()
    if mode == UPDATE or (mode == UPDATE_NEW and not exists):
        write(paths, obtained, metadata)
        return GoldenCheck("written", f"golden written to {paths.arrays}; rerun without the "
                           "update flag to check against it")
    if not exists:
        return GoldenCheck("missing", f"no golden at {paths.arrays}; create it with: "
                           f"{update_command}")
    recorded_meta = json.loads(paths.metadata.read_text())
    with np.load(paths.arrays, allow_pickle=False) as archive:
        golden = {name: archive[name] for name in archive.files}
    problem = _metadata_mismatch(recorded_meta, metadata) or _layout_mismatch(golden, obtained)
    if problem is None:
        from polygraphy.comparator import IterationResult, RunResults

        runs = RunResults()
        runs.append((GOLDEN_RUNNER, [IterationResult(golden, runner_name=GOLDEN_RUNNER)]))
        runs.append(("reference", [IterationResult(obtained, runner_name="reference")]))
        # The comparison with the target already required signal; a golden of a constant
        # output is still a record worth checking.
        diffs = compare_runs(runs, GOLDEN_RUNNER, "reference",
                             Tolerances(Tolerance(atol=atol, rtol=rtol)), require_signal=False)
        if all(diff.passed for diff in diffs):
            return GoldenCheck("pass", "reference matches the golden", tuple(diffs))
        worst = max(diffs, key=lambda d: (not d.passed, d.max_abs_error))
        problem = (f"the reference drifted from the golden: output '{worst.name}' max abs error "
                   f"{worst.max_abs_error:.3g} at {list(worst.max_abs_index)} (atol={atol:g}, "
                   f"rtol={rtol:g})")
        result_diffs = tuple(diffs)
    else:
        result_diffs = ()
    obtained_note = ""
    if artifacts is not None:
        obtained_path = paths.obtained(artifacts)
        write_npz(obtained_path, obtained)
        obtained_note = f"; obtained outputs in {obtained_path}"
    return GoldenCheck("fail", f"{problem}{obtained_note}; if the change is intended, update "
                       f"with: {update_command}", result_diffs)
