"""Memory-bounded batches: known sizes fill the budget, unknown ones are learned from runs."""

from __future__ import annotations

import numpy as np

from trtcheck.debug.probes import Batcher, batches_within


def test_known_sizes_fill_the_budget():
    sizes = {f"t{i}": 100 for i in range(10)}
    assert [len(b) for b in batches_within(list(sizes), sizes, 300)] == [3, 3, 3, 1]
    # A tensor larger than the budget gets a batch of its own rather than none.
    sizes["t0"] = 1000
    assert batches_within(list(sizes), sizes, 300)[0] == ["t0"]


def test_unknown_sizes_are_learned_from_the_runs():
    names = [f"t{i}" for i in range(200)]
    sizes: dict[str, int | None] = {name: None for name in names}
    sizes["t0"] = 4000  # the one size shape inference could tell
    batcher = Batcher(names, sizes, budget=10**6)
    first = batcher.next()
    assert len(first) == 1 + Batcher.UNKNOWN_IN_FIRST_BATCH
    batcher.observed({name: np.zeros(2500, np.float32) for name in first})  # 10 kB each
    second = batcher.next()
    # Twice the mean measured size (about 20 kB) per unknown tensor: 49 of them fit in 1 MB.
    assert batcher.sizes["t1"] == 10_000 and batcher.estimate == 20_001
    assert len(second) == 10**6 // 20_001 == 49
