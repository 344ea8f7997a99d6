"""Deterministic input feeds: seeded synthetic data (Polygraphy's DataLoader) or recorded files.

Polygraphy's DataLoader silently replaces an unknown dynamic dimension with 1 and applies one value
range to every input, floats and integers alike. Here a dynamic dimension without a shape is an
error, and each input gets a range that suits its dtype (see `default_range`).
"""

from __future__ import annotations

import os
import re
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from trtcheck.errors import InputDataError, UsageError
from trtcheck.model import InputInfo, LoadedModel

Feed = dict[str, np.ndarray]
ValueRange = tuple[float, float]

DEFAULT_SEED = 1
# numpy's legacy seeding (Polygraphy's DataLoader) takes 0 to 2**32-1.
MAX_SEED = 2**32 - 1
# Synthetic data is generated as float64 before the cast; beyond this share of the machine's
# memory the generation would fail (or swap) rather than say which shape was too large.
_MEMORY_SHARE = 0.5


@dataclass(frozen=True)
class InputSettings:
    """What the user asked for: shapes for dynamic dims, value ranges, a seed or a recorded file."""

    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    ranges: dict[str, ValueRange] = field(default_factory=dict)
    # A range for every float input not named in `ranges` (the `--val-range [lo,hi]` form).
    float_range: ValueRange | None = None
    seed: int = DEFAULT_SEED
    recorded: Path | None = None


@dataclass(frozen=True)
class InputDescription:
    """How one input was fed, for the report."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    value_range: ValueRange
    # "synthetic" (seeded, range as generated) or "recorded" (range observed in the file).
    source: str


@dataclass(frozen=True)
class Feeds:
    """The feed dicts every backend receives, and how they were made."""

    iterations: list[Feed]
    described: tuple[InputDescription, ...]
    seed: int | None


def default_range(dtype: np.dtype) -> ValueRange:
    """A value range that is valid for most models with an input of this dtype.

    Floats: [0, 1] (Polygraphy's default, e.g. normalised images). uint8: [0, 255] (raw images).
    int8: its full range. Other integers: [0, 1], so that index inputs stay valid indices.
    Bool: both values.
    """
    if dtype == np.bool_:
        return (0, 1)
    if dtype == np.uint8:
        return (0, 255)
    if dtype == np.int8:
        return (-128, 127)
    if np.issubdtype(dtype, np.integer):
        return (0, 1)
    return (0.0, 1.0)


_SHAPE_SPLIT = re.compile(r"[x,]")


def parse_shape(text: str) -> tuple[int, ...]:
    """Parses `1x3x224x224` or `[1,3,224,224]` into a tuple of positive ints."""
    body = text.strip().strip("[]()")
    if not body:
        return ()
    try:
        dims = tuple(int(part) for part in _SHAPE_SPLIT.split(body) if part.strip())
    except ValueError:
        raise UsageError(
            f"shape '{text}' is not a list of integers; write it like 1x3x224x224 or [1,3,224,224]"
        ) from None
    if any(dim <= 0 for dim in dims):
        raise UsageError(f"shape '{text}' has a dimension <= 0; every dimension must be positive")
    return dims


def parse_range(text: str) -> ValueRange:
    """Parses `[-1,1]` (or `-1,1`) into a (low, high) pair with low <= high."""
    parts = [part.strip() for part in text.strip().strip("[]()").split(",")]
    try:
        low, high = (float(part) for part in parts)
    except ValueError:
        raise UsageError(
            f"value range '{text}' must be two numbers like [-1,1]; got {len(parts)} part(s)"
        ) from None
    if not (np.isfinite(low) and np.isfinite(high)) or low > high:
        raise UsageError(f"value range '{text}' must be finite with low <= high, e.g. [-1,1]")
    return (low, high)


def _check_names(model: LoadedModel, names: list[str], what: str) -> None:
    for name in names:
        if name not in model.input_names:
            raise InputDataError(
                f"{what} names input '{name}', which is not in {model.path.name}; "
                f"its inputs are: {', '.join(model.input_names)}"
            )


def _static_shape(info: InputInfo, given: tuple[int, ...] | None, model: LoadedModel):
    if given is None:
        if info.is_dynamic:
            declared = "x".join(str(d) if isinstance(d, int) else str(d or "?") for d in info.shape)
            example = "x".join(str(d) if isinstance(d, int) and d > 0 else "1" for d in info.shape)
            raise InputDataError(
                f"input '{info.name}' of {model.path.name} has dynamic shape {declared}; "
                f"give it a shape with --input-shapes {info.name}:{example}"
            )
        return tuple(int(d) for d in info.shape)  # type: ignore[arg-type]
    if len(given) != len(info.shape) or any(
        isinstance(declared, int) and declared > 0 and declared != dim
        for declared, dim in zip(info.shape, given, strict=False)
    ):
        raise InputDataError(
            f"shape {'x'.join(map(str, given))} for input '{info.name}' does not fit its declared "
            f"shape {list(info.shape)}; keep the fixed dimensions and the rank"
        )
    return given


def _machine_memory() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _check_generable(info: InputInfo, shape: tuple[int, ...], value_range: ValueRange,
                     model: LoadedModel) -> None:
    """Raises for inputs that cannot be generated: strings, ranges beyond the dtype, huge shapes."""
    dtype = info.dtype
    if dtype.kind not in "biuf":
        raise InputDataError(
            f"input '{info.name}' of {model.path.name} has type {dtype} (not a number); trtcheck "
            "generates numeric inputs only, and TensorRT takes no string inputs")
    low, high = value_range
    if dtype.kind in "iu":
        info_int = np.iinfo(dtype)
        if int(low) < info_int.min or int(high) > info_int.max:
            raise UsageError(
                f"value range [{low:g}, {high:g}] for input '{info.name}' does not fit its type "
                f"{dtype} ({info_int.min} to {info_int.max}); give a range inside it")
    elif dtype.kind == "f":
        largest = float(np.finfo(dtype).max)
        if max(abs(low), abs(high)) > largest or not np.isfinite(high - low):
            raise UsageError(
                f"value range [{low:g}, {high:g}] for input '{info.name}' is beyond {dtype} "
                f"(largest {largest:g}) and would give inf; give a range inside it")
    needed = 8 * int(np.prod(shape, dtype=object)) if shape else 8
    memory = _machine_memory()
    if memory is not None and needed > _MEMORY_SHARE * memory:
        raise InputDataError(
            f"input '{info.name}' of shape {'x'.join(map(str, shape))} needs {needed / 2**30:.3g} "
            f"GiB to generate, more than this machine can hold ({memory / 2**30:.3g} GiB of "
            "memory); give smaller --input-shapes")


def _synthetic(model: LoadedModel, settings: InputSettings) -> Feeds:
    # Imported here: Polygraphy's import is slow and only this path needs its DataLoader.
    from polygraphy.common import TensorMetadata
    from polygraphy.comparator import DataLoader

    _check_names(model, list(settings.shapes), "--input-shapes")
    _check_names(model, list(settings.ranges), "--val-range")
    if not 0 <= settings.seed <= MAX_SEED:
        raise UsageError(f"seed {settings.seed} is out of range; a seed is between 0 and "
                         f"{MAX_SEED} (2**32-1)")
    metadata = TensorMetadata()
    ranges: dict[str, ValueRange] = {}
    described = []
    for info in model.inputs:
        shape = _static_shape(info, settings.shapes.get(info.name), model)
        metadata.add(info.name, info.dtype, shape)
        value_range = settings.ranges.get(info.name)
        if value_range is None and settings.float_range and np.issubdtype(info.dtype, np.floating):
            value_range = settings.float_range
        if value_range is None:
            value_range = default_range(info.dtype)
        if np.issubdtype(info.dtype, np.integer) and not all(
            float(v).is_integer() for v in value_range
        ):
            raise UsageError(
                f"value range {list(value_range)} for integer input '{info.name}' is fractional; "
                "give whole numbers"
            )
        _check_generable(info, shape, value_range, model)
        ranges[info.name] = value_range
        described.append(
            InputDescription(info.name, str(info.dtype), shape, value_range, "synthetic")
        )
    loader = DataLoader(seed=settings.seed, iterations=1, input_metadata=metadata, val_range=ranges)
    feeds = [dict(loader[0])]
    return Feeds(feeds, tuple(described), settings.seed)


def _read_recorded(path: Path) -> list[Feed]:
    if not path.is_file():
        raise InputDataError(f"{path}: no such inputs file; pass an .npz or Polygraphy input .json")
    if path.suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as archive:
                return [{name: archive[name] for name in archive.files}]
        except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as err:
            raise InputDataError(f"{path}: not a readable .npz file ({err}); re-save it") from err
    if path.suffix == ".json":
        from polygraphy.exception import PolygraphyException
        from polygraphy.json import load_json

        try:
            loaded = load_json(str(path))
        except (PolygraphyException, ValueError, KeyError) as err:
            raise InputDataError(
                f"{path}: not a Polygraphy input JSON ({err}); save inputs with "
                "`polygraphy run --save-inputs` or pass an .npz"
            ) from err
        iterations = loaded if isinstance(loaded, list) else [loaded]
        if not iterations or not all(isinstance(it, dict) for it in iterations):
            raise InputDataError(
                f"{path}: expected a list of feed dicts (Polygraphy --save-inputs format)"
            )
        return [{name: np.asarray(value) for name, value in it.items()} for it in iterations]
    raise InputDataError(f"{path}: unknown inputs format '{path.suffix}'; use .npz or .json")


def convert_losslessly(value: np.ndarray, dtype: np.dtype, what: str) -> np.ndarray:
    """`value` as `dtype` if the cast loses nothing, else `InputDataError` naming a lost value.

    float64 -> float32 or int32 -> int64 is a recording detail, so such casts are made when every
    value survives: integers within the target's range, 0 and 1 for a bool, floats that stay
    finite (rounding is fine; overflow to inf is not; nan or inf already recorded stay). An
    integer for a float input, or the reverse, is a wrong recording. `what` names the input.
    """
    if value.dtype == dtype:
        return value
    source, target = value.dtype.kind, dtype.kind
    if not (source == target == "f" or (source in "iub" and target in "iub")):
        raise InputDataError(f"{what} is {value.dtype} but the model takes {dtype}; "
                             f"record it as {dtype}")
    if target == "b":
        lost = (value != 0) & (value != 1)
        if lost.any():
            raise InputDataError(f"{what} holds {value[lost].flat[0].item()} ({value.dtype}), "
                                 f"which bool cannot hold (only 0 and 1); record it as bool")
    elif target in "iu" and source in "iu" and value.size:
        limits = np.iinfo(dtype)
        low, high = value.min().item(), value.max().item()
        if low < limits.min or high > limits.max:
            raise InputDataError(
                f"{what} holds {low if low < limits.min else high} ({value.dtype}), outside "
                f"{dtype}'s range [{limits.min}, {limits.max}]; record values the model can "
                f"take, as {dtype}")
    with np.errstate(over="ignore"):
        cast = value.astype(dtype)
    if target == "f":
        overflowed = np.isfinite(value) & ~np.isfinite(cast)
        if overflowed.any():
            raise InputDataError(
                f"{what} holds {value[overflowed].flat[0].item()!r} ({value.dtype}), which "
                f"becomes inf as {dtype} (largest {np.finfo(dtype).max.item():g}); record "
                f"values within {dtype}'s range")
    return cast


def _recorded(model: LoadedModel, path: Path) -> Feeds:
    iterations = _read_recorded(path)
    checked: list[Feed] = []
    for feed in iterations:
        _check_names(model, list(feed), f"inputs file {path.name}")
        missing = [name for name in model.input_names if name not in feed]
        if missing:
            raise InputDataError(
                f"{path}: has no value for input(s) {', '.join(missing)}; record every model input"
            )
        ready: Feed = {}
        for info in model.inputs:
            value = feed[info.name]
            _static_shape(info, tuple(value.shape), model)
            ready[info.name] = convert_losslessly(value, np.dtype(info.dtype),
                                                  f"{path}: input '{info.name}'")
        checked.append(ready)
    first = checked[0]
    described = tuple(
        InputDescription(
            name,
            str(value.dtype),
            tuple(value.shape),
            (float(value.min()), float(value.max())) if value.size else (0.0, 0.0),
            "recorded",
        )
        for name, value in first.items()
    )
    return Feeds(checked, described, None)


def make_feeds(model: LoadedModel, settings: InputSettings) -> Feeds:
    """Builds the feeds for `model`: recorded when `settings.recorded` is set, else synthetic."""
    if settings.recorded is not None:
        return _recorded(model, Path(os.fspath(settings.recorded)))
    return _synthetic(model, settings)
