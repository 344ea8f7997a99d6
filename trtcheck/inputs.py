"""Deterministic input feeds: seeded synthetic data (Polygraphy's DataLoader) or recorded files.

Polygraphy's DataLoader silently replaces an unknown dynamic dimension with 1 and applies one value
range to every input, floats and integers alike. Here a dynamic dimension without a shape is an
error (all of them in one message, with a complete `--input-shapes` line; a symbolic dimension
shared by several inputs is fixed by any one of them), and each input gets a range from what the
graph does with it (`trtcheck.input_ranges`: token ids index their embedding table, attention masks
are ones with a padded tail), else a default for its dtype (`default_range`), which is warned about.
"""

from __future__ import annotations

import os
import re
import zipfile
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, TypeGuard

import numpy as np

from trtcheck.errors import InputDataError, UsageError

if TYPE_CHECKING:  # onnx is imported when a model is loaded, not when a command line is parsed
    from trtcheck.model import InputInfo, LoadedModel

Feed = dict[str, np.ndarray]
ValueRange = tuple[float, float]

DEFAULT_SEED = 1
UNIFORM = "uniform"
MASK = "mask"
GENERATORS = (UNIFORM, MASK)
CLI_FLAG = "--val-range"
SUITE_INPUTS = "the suite's inputs"
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
    # Input name -> generator ("uniform" or "mask"), overriding what the graph suggests.
    generators: dict[str, str] = field(default_factory=dict)
    # Where `ranges` and `float_range` were given, for the report ("--val-range", a suite key).
    given_by: str = CLI_FLAG
    # A float_range inherited by every case of a suite may meet a model without float inputs;
    # one given for this model may not.
    float_range_inherited: bool = False


@dataclass(frozen=True)
class InputDescription:
    """How one input was fed, for the report."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    value_range: ValueRange
    # "synthetic" (seeded, range as generated) or "recorded" (range observed in the file).
    source: str
    # Where the range came from: "indexes model.wte.weight (50257 rows)", "default for float32".
    origin: str = ""
    # "uniform" (Polygraphy's DataLoader over value_range) or "mask" (ones, a padded tail).
    generator: str = UNIFORM
    # The range is a default, not given and not found in the graph.
    guessed: bool = False
    # The range was given (--val-range, a suite), not inferred or a default.
    given: bool = False


@dataclass(frozen=True)
class Feeds:
    """The feed dicts every backend receives, and how they were made."""

    iterations: list[Feed]
    described: tuple[InputDescription, ...]
    seed: int | None

    @property
    def warnings(self) -> tuple[str, ...]:
        """One line for every input whose range is a guess."""
        return tuple(
            f"input '{d.name}': no range given and none found in the graph; fed "
            f"[{d.value_range[0]:g}, {d.value_range[1]:g}], the {d.origin}; give "
            f"--val-range {d.name}:[LO,HI] if the model expects other values"
            for d in self.described if d.guessed)


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


def _shape_text(shape) -> str:
    return "x".join(str(d) for d in shape)


def _check_fits(info: InputInfo, given: tuple[int, ...]) -> None:
    if len(given) != len(info.shape) or any(
        isinstance(declared, int) and declared > 0 and declared != dim
        for declared, dim in zip(info.shape, given, strict=False)
    ):
        raise InputDataError(
            f"shape {_shape_text(given)} for input '{info.name}' does not fit its declared "
            f"shape {list(info.shape)}; keep the fixed dimensions and the rank"
        )


# A dimension left dynamic in the suggested --input-shapes line: batch 1, other dimensions 128
# (a sequence length most text and audio models accept).
_SUGGESTED_BATCH = 1
_SUGGESTED_DIM = 128


def _shared_symbol(dim: object) -> TypeGuard[str]:
    """Whether a symbolic dimension names a size that inputs share.

    Paddle's exporter writes '?' for every unknown dimension, two in one input ([-1, 3, ?, ?]
    for height and width): that is no name, and the dims it marks are independent.
    """
    return isinstance(dim, str) and dim not in ("", "?")


def resolve_shapes(model: LoadedModel, given: dict[str, tuple[int, ...]]
                   ) -> dict[str, tuple[int, ...]]:
    """A static shape for every input: declared, given, or fixed by a shared symbolic dimension.

    `input_ids: [batch, seq]` given as 2x16 fixes `attention_mask: [batch, seq]` too. Given
    shapes that disagree on a shared dimension are an error naming both; inputs still dynamic are
    reported together, with a complete `--input-shapes` line to copy.
    """
    bound: dict[str, tuple[int, str]] = {}  # symbolic dim -> (size, the input that fixed it)
    for info in model.inputs:
        shape = given.get(info.name)
        if shape is None:
            continue
        _check_fits(info, shape)
        for declared, size in zip(info.shape, shape, strict=True):
            if not _shared_symbol(declared):
                continue
            earlier = bound.setdefault(declared, (size, info.name))
            if earlier[0] != size:
                other = earlier[1]
                raise InputDataError(
                    f"--input-shapes {other}:{_shape_text(given[other])} and "
                    f"{info.name}:{_shape_text(shape)} give dimension '{declared}' two sizes "
                    f"({earlier[0]} and {size}), but both inputs share it in "
                    f"{model.path.name}; give them the same '{declared}'")
    shapes: dict[str, tuple[int, ...]] = {}
    missing: list[InputInfo] = []
    for info in model.inputs:
        if info.name in given:
            shapes[info.name] = given[info.name]
            continue
        dims = [d if isinstance(d, int) and d >= 0 else
                bound[d][0] if _shared_symbol(d) and d in bound else None for d in info.shape]
        if any(d is None for d in dims):
            missing.append(info)
        else:
            shapes[info.name] = tuple(int(d) for d in dims)  # type: ignore[arg-type]
    if missing:
        raise InputDataError(_missing_shapes_message(model, shapes, missing, bound))
    return shapes


def _missing_shapes_message(model: LoadedModel, known: dict[str, tuple[int, ...]],
                            missing: list[InputInfo], bound: dict[str, tuple[int, str]]) -> str:
    suggested: dict[str, int] = {}  # one size per symbolic dimension, shared inputs agree

    def pick(dim, position: int) -> int:
        if isinstance(dim, int) and dim >= 0:
            return dim
        if _shared_symbol(dim) and dim in bound:
            return bound[dim][0]
        size = _SUGGESTED_BATCH if position == 0 else _SUGGESTED_DIM
        return suggested.setdefault(dim, size) if _shared_symbol(dim) else size

    declared = ", ".join(
        f"'{info.name}' [{', '.join(str(d) if d not in (None, '') else '?' for d in info.shape)}]"
        for info in missing)
    line = " ".join(
        f"{info.name}:{_shape_text(known[info.name])}" if info.name in known else
        f"{info.name}:{_shape_text(pick(d, i) for i, d in enumerate(info.shape))}"
        for info in model.inputs if info.is_dynamic)
    return (f"{model.path.name} has dynamic input shapes: {declared}; give them all, e.g. "
            f"--input-shapes {line}")


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


def _float_range_applies(model: LoadedModel, settings: InputSettings) -> bool:
    if settings.float_range is None:
        return False
    if any(np.issubdtype(info.dtype, np.floating) for info in model.inputs):
        return True
    if not settings.float_range_inherited:
        low, high = settings.float_range
        names = [info.name for info in model.inputs]
        if settings.given_by == CLI_FLAG:
            given, fix = f"--val-range [{low:g},{high:g}] without a name", \
                f"--val-range {names[0]}:[LO,HI]"
        else:
            given, fix = f"inputs.float_range = [{low:g}, {high:g}]", \
                f"inputs.ranges = {{ {names[0]} = [LO, HI] }}"
        raise UsageError(
            f"{given} applies to float inputs, and {model.path.name} has none (its inputs: "
            f"{', '.join(names)}); name the input, e.g. {fix}")
    return False


def _default_origin(dtype: np.dtype) -> tuple[str, bool]:
    """How a default range is described, and whether it is a guess (uint8 is not: raw bytes)."""
    if dtype == np.uint8:
        return "full range of uint8 (raw bytes or pixels)", False
    return f"default for {dtype}", True


def _choose(info: InputInfo, settings: InputSettings, float_range: ValueRange | None,
            roles) -> InputDescription:
    """How one synthetic input is drawn; its shape is filled in by the caller."""
    def described(value_range: ValueRange, origin: str, generator: str = UNIFORM,
                  guessed: bool = False, given: bool = False) -> InputDescription:
        return InputDescription(info.name, str(info.dtype), (), value_range, "synthetic", origin,
                                generator, guessed, given)

    generator = settings.generators.get(info.name)
    given = settings.ranges.get(info.name)
    if given is not None:
        return described(given, f"given by {settings.given_by}", given=True)
    if generator == MASK:
        return described((0, 1), "attention mask: ones with a padded tail (set by "
                         f"{settings.given_by})", MASK, given=True)
    if float_range is not None and np.issubdtype(info.dtype, np.floating):
        return described(float_range, f"given by {settings.given_by}", given=True)
    role = roles.get(info.name) if generator is None else None
    if role is not None:
        return described(role.value_range, role.origin, MASK if role.kind == MASK else UNIFORM)
    origin, guessed = _default_origin(info.dtype)
    return described(default_range(info.dtype), origin, guessed=guessed)


def _roles(model: LoadedModel, settings: InputSettings):
    """What the graph does with each integer input not already settled by the settings."""
    undecided = [info for info in model.inputs if info.dtype.kind in "biu"
                 and info.name not in settings.ranges and info.name not in settings.generators]
    if not undecided:
        return {}
    from trtcheck.input_ranges import infer_roles

    return infer_roles(model.proto)


def _synthetic(model: LoadedModel, settings: InputSettings) -> Feeds:
    # Imported here: Polygraphy's import is slow and only this path needs its DataLoader.
    from polygraphy.common import TensorMetadata
    from polygraphy.comparator import DataLoader

    _check_names(model, list(settings.shapes), "--input-shapes")
    _check_names(model, list(settings.ranges), settings.given_by)
    _check_names(model, list(settings.generators), "inputs.generators")
    for name, generator in settings.generators.items():
        if generator not in GENERATORS:
            raise UsageError(f"generator '{generator}' for input '{name}' is not one of "
                             f"{', '.join(GENERATORS)}")
    if not 0 <= settings.seed <= MAX_SEED:
        raise UsageError(f"seed {settings.seed} is out of range; a seed is between 0 and "
                         f"{MAX_SEED} (2**32-1)")
    shapes = resolve_shapes(model, settings.shapes)
    float_range = settings.float_range if _float_range_applies(model, settings) else None
    roles = _roles(model, settings)
    metadata = TensorMetadata()
    ranges: dict[str, ValueRange] = {}
    described = []
    for info in model.inputs:
        shape = shapes[info.name]
        metadata.add(info.name, info.dtype, shape)
        choice = _choose(info, settings, float_range, roles)
        value_range = choice.value_range
        if np.issubdtype(info.dtype, np.integer) and not all(
            float(v).is_integer() for v in value_range
        ):
            raise UsageError(
                f"value range {list(value_range)} for integer input '{info.name}' is fractional; "
                "give whole numbers"
            )
        _check_generable(info, shape, value_range, model)
        ranges[info.name] = value_range
        described.append(replace(choice, shape=shape))
    loader = DataLoader(seed=settings.seed, iterations=1, input_metadata=metadata, val_range=ranges)
    feed = dict(loader[0])
    # Masks replace what the DataLoader drew, after it drew everything, so that every other
    # input gets the very values `polygraphy run --seed` gives it.
    from trtcheck.input_ranges import padded_mask

    for description in described:
        if description.generator == MASK:
            feed[description.name] = padded_mask(description.shape, model.input(
                description.name).dtype, settings.seed, description.name)
    return Feeds([feed], tuple(described), settings.seed)


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
            _check_fits(info, tuple(value.shape))
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
            f"recorded in {path.name}",
        )
        for name, value in first.items()
    )
    return Feeds(checked, described, None)


def make_feeds(model: LoadedModel, settings: InputSettings) -> Feeds:
    """Builds the feeds for `model`: recorded when `settings.recorded` is set, else synthetic."""
    if settings.recorded is not None:
        return _recorded(model, Path(os.fspath(settings.recorded)))
    return _synthetic(model, settings)
