"""The calibration sets of suites/quantized.suite.toml; `python suites/calibration/make_sets.py`.

- `images/`: 4 feeds of `image` [1, 3, 32, 32] for zoo's CNNs, 8-bit pixel levels k/255 (a
  decoded image normalized to [0, 1]);
- `tokens/`: 4 feeds of `x` [1, 16, 32] for zoo's transformer block, levels k/127 in [-1, 1].

Each is drawn from the range of the suite's test inputs but from its own seed, so the scales are
calibrated on data the comparison does not reuse. Values are stored as float16 (which holds these
levels closely enough) to keep the folders small; trtcheck casts them to the models' float32
without loss. The arrays are the same on every run (seeded); the .npz bytes differ by their zip
timestamps only.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

HERE = Path(__file__).parent
FEEDS = 4


def _write(folder: Path, name: str, arrays: list[np.ndarray]) -> None:
    from trtcheck.atomic import write_npz

    folder.mkdir(parents=True, exist_ok=True)
    for index, array in enumerate(arrays):
        path = folder / f"feed_{index:02d}.npz"
        write_npz(path, {name: array.astype(np.float16)})
        print(f"wrote {path}")


def main() -> None:
    images = np.random.default_rng(1000)
    _write(HERE / "images", "image",
           [images.integers(0, 256, size=(1, 3, 32, 32)) / 255 for _ in range(FEEDS)])
    tokens = np.random.default_rng(2000)
    _write(HERE / "tokens", "x",
           [tokens.integers(-127, 128, size=(1, 16, 32)) / 127 for _ in range(FEEDS)])


if __name__ == "__main__":
    main()
