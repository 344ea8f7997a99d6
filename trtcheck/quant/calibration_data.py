"""The feeds a Q/DQ model is calibrated on: recorded (.npz folder, Polygraphy JSON) or synthetic.

Calibration sets scales from the activations these feeds produce, so a feed that does not fit the
model is an error naming its file and key, found before any calibration runs. Synthetic feeds
(seeded, from `trtcheck.inputs`) make a model that runs, with scales that mean nothing.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from trtcheck.errors import InputDataError
from trtcheck.inputs import MAX_SEED, Feed, InputSettings, _read_recorded, convert_losslessly

if TYPE_CHECKING:
    from trtcheck.model import InputInfo, LoadedModel

CALIBRATION_FLAG = "--calibration-data"
SYNTHETIC_COUNT = 8
_FORMATS = "a folder of .npz files (one feed each, keys = input names) or a Polygraphy inputs .json"


def load_calibration_set(path: Path, model: LoadedModel) -> list[Feed]:
    """The feeds in `path`, each checked against `model`'s inputs and cast to their dtypes.

    `path` is a folder of `.npz` files (one feed per file, taken in file-name order) or a
    Polygraphy inputs JSON (`polygraphy run --save-inputs`) with one feed per iteration.
    """
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("*.npz"))
        if not files:
            raise InputDataError(f"calibration set {path} is empty: no .npz files in it; save one "
                                 "feed per .npz file there, its keys the model's input names")
        return [_checked(feed, model, str(file)) for file in files
                for feed in _read_recorded(file)]
    if not path.exists():
        raise InputDataError(f"calibration set {path}: no such file or folder; pass {_FORMATS}")
    if path.suffix != ".json":
        raise InputDataError(f"calibration set {path}: unknown format '{path.suffix}'; pass "
                             f"{_FORMATS}")
    iterations = _read_json(path)
    return [_checked(feed, model, f"{path} iteration {index}")
            for index, feed in enumerate(iterations)]


def _read_json(path: Path) -> list[Feed]:
    """The iterations of a Polygraphy inputs JSON (`_read_recorded` refuses an empty one)."""
    from polygraphy.exception import PolygraphyException
    from polygraphy.json import load_json

    try:
        loaded = load_json(str(path))
    except (PolygraphyException, ValueError, KeyError, OSError) as err:
        raise InputDataError(f"calibration set {path}: not a readable Polygraphy inputs JSON "
                             f"({err}); save it with `polygraphy run --save-inputs`") from err
    iterations = loaded if isinstance(loaded, list) else [loaded]
    if not iterations:
        raise InputDataError(f"calibration set {path} is empty: it holds no iterations; save "
                             "several with `polygraphy run --save-inputs` or a data loader")
    if not all(isinstance(feed, dict) for feed in iterations):
        raise InputDataError(f"calibration set {path}: expected a list of feed dicts (the "
                             "Polygraphy --save-inputs format)")
    return [{name: np.asarray(value) for name, value in feed.items()} for feed in iterations]


def _checked(feed: Feed, model: LoadedModel, where: str) -> Feed:
    """`feed` with every model input, in the model's dtypes, its shapes fitting the model's."""
    unknown = [name for name in feed if name not in model.input_names]
    if unknown:
        raise InputDataError(f"{where}: key '{unknown[0]}' is not an input of {model.path.name}; "
                             f"name the arrays after its inputs: {', '.join(model.input_names)}")
    missing = [name for name in model.input_names if name not in feed]
    if missing:
        raise InputDataError(f"{where}: has no array for input(s) {', '.join(missing)} of "
                             f"{model.path.name}; give every input in every feed")
    symbols: dict[str, tuple[int, str]] = {}  # symbolic dim -> (size, the input that set it)
    ready: Feed = {}
    for info in model.inputs:
        value = np.asarray(feed[info.name])
        _check_shape(info, value.shape, symbols, where)
        ready[info.name] = convert_losslessly(value, np.dtype(info.dtype),
                                              f"{where}: input '{info.name}'")
    return ready


def _check_shape(info: InputInfo, shape: tuple[int, ...], symbols: dict[str, tuple[int, str]],
                 where: str) -> None:
    declared = "x".join("?" if not isinstance(d, int) or d < 0 else str(d) for d in info.shape)
    given = "x".join(map(str, shape)) or "scalar"
    if len(shape) != len(info.shape) or any(
            isinstance(dim, int) and dim >= 0 and dim != size
            for dim, size in zip(info.shape, shape, strict=False)):
        raise InputDataError(f"{where}: input '{info.name}' has shape {given}, the model takes "
                             f"{declared or 'a scalar'}; record it with that rank and those "
                             "fixed dimensions")
    for dim, size in zip(info.shape, shape, strict=True):
        if not isinstance(dim, str) or dim in ("", "?"):
            continue
        size_before, other = symbols.setdefault(dim, (size, info.name))
        if size_before != size:
            raise InputDataError(f"{where}: inputs '{other}' and '{info.name}' share dimension "
                                 f"'{dim}' but have {size_before} and {size}; record them with "
                                 "the same size")


def calibration_digest(feeds: list[Feed]) -> str:
    """A sha256 over the feeds' names, dtypes, shapes and bytes, in order (a cache key)."""
    digest = hashlib.sha256()
    digest.update(f"{len(feeds)} feeds\n".encode())
    for feed in feeds:
        for name in sorted(feed):
            value = np.ascontiguousarray(feed[name])
            digest.update(f"{name}\0{value.dtype.str}\0{value.shape}\n".encode())
            digest.update(value.tobytes())
    return digest.hexdigest()


def synthetic_calibration_set(model: LoadedModel, settings: InputSettings,
                              count: int = SYNTHETIC_COUNT) -> tuple[list[Feed], str]:
    """`count` seeded synthetic feeds (seeds seed, seed+1, ...) and the warning that goes with them.

    They make a quantized model that runs, but its scales follow random data, so its accuracy
    says nothing about the model on real inputs.
    """
    from trtcheck.inputs import make_feeds

    seeds = [(settings.seed + offset) % (MAX_SEED + 1) for offset in range(count)]
    feeds = [make_feeds(model, replace(settings, seed=seed, recorded=None)).iterations[0]
             for seed in seeds]
    warning = (f"calibrated on {count} synthetic feeds (seeds {seeds[0]}..{seeds[-1]}): the "
               "quantization scales follow random data and are not meaningful; give real inputs "
               f"with {CALIBRATION_FLAG} FOLDER_OF_NPZ or a Polygraphy inputs JSON")
    return feeds, warning
