"""Searches for where a divergence starts, over integers only: no graph code, no backends.

Tensors are numbered in topological order. `inputs_of(t)` gives the probe-able tensors that feed
`t`'s producer (graph inputs and weights are exact on every backend, so they are left out and
count as passing). A divergence *origin* is a failing tensor whose inputs all pass: the first
node where the target departs from the reference.

Error is not monotone along a graph: it can vanish after a ReLU or an ArgMax and reappear
through a skip connection, so "once diverged, always diverged" bisection can name the wrong
node. Both searches here therefore report a *verified* boundary: the origin's inputs were seen to
pass and the origin itself to fail.

- `exact_origin` is for targets where marking every tensor as an output is harmless (ONNX
  Runtime): with every tensor's verdict known, it returns the first origin in topological order
  from which failing tensors reach the failing output.
- `search_origin` is for targets where marking outputs changes what is measured (TensorRT fuses
  differently): it bisects the failing output's ancestors with one tensor marked per run, then
  checks the boundary's inputs and a few tensors after it in one more run; when one of those
  after it passes, the error dipped back under tolerance and the bisection goes on past it, and
  when one of its inputs fails (the error came around the boundary, e.g. through a skip
  connection) the search continues from that input.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field

Probe = Callable[[Collection[int]], Mapping[int, bool]]


def find_transition(lo: int, hi: int, fails: Callable[[int], bool]) -> tuple[int, int]:
    """Bisects [lo, hi] where `lo` passes and `hi` fails (not evaluated) to adjacent (p, p + 1).

    Returns positions p, f = p + 1 with fails(p) False (or p == lo) and fails(f) True (or
    f == hi), after at most ceil(log2(hi - lo)) calls. When `fails` is not monotone this is one
    transition among several, not necessarily the first.
    """
    if hi <= lo:
        raise ValueError(f"need lo < hi, got {lo}, {hi}")
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if fails(mid):
            hi = mid
        else:
            lo = mid
    return lo, hi


def ancestors(tensor: int, inputs_of: Callable[[int], Sequence[int]]) -> set[int]:
    """Every probe-able tensor upstream of `tensor` (not including it)."""
    seen: set[int] = set()
    stack = list(inputs_of(tensor))
    while stack:
        current = stack.pop()
        if current not in seen:
            seen.add(current)
            stack.extend(inputs_of(current))
    return seen


def exact_origin(failing_output: int, inputs_of: Callable[[int], Sequence[int]],
                 fails: Mapping[int, bool]) -> int:
    """The first origin, in topological order, connected to `failing_output` by failing tensors.

    `fails` holds every tensor's verdict (all tensors were marked in one run).
    """
    connected: set[int] = set()
    stack = [failing_output]
    while stack:
        current = stack.pop()
        if current in connected or not fails.get(current, False):
            continue
        connected.add(current)
        stack.extend(inputs_of(current))
    origins = [t for t in connected if not any(fails.get(i, False) for i in inputs_of(t))]
    return min(origins)


@dataclass
class SearchResult:
    origin: int
    # The tensors marked in each target run, in order: the cost of the search.
    runs: list[list[int]] = field(default_factory=list)
    # The path followed when an input of a boundary failed, from the output back to the origin.
    followed: list[int] = field(default_factory=list)


# Tensors between a boundary and the failing output checked, in the boundary's verification run,
# for a failure that does not persist (error hovering around the tolerance).
SWEEP = 7


def _near_first(items: list[int], count: int) -> list[int]:
    """`count` of `items` at offsets 0, 1, 2, 4, 8, ...: dense where a hovering error dips."""
    offsets = [0, 1, 2, *(1 << k for k in range(2, count))][:count]
    return sorted({items[min(offset, len(items) - 1)] for offset in offsets}) if items else []


def _position_fails(candidates: list[int], run: Probe) -> Callable[[int], bool]:
    def fails(position: int) -> bool:
        return bool(run([candidates[position]])[candidates[position]])

    return fails


def search_origin(failing_output: int, inputs_of: Callable[[int], Sequence[int]],
                  probe: Probe) -> SearchResult:
    """Finds a verified origin of the failure of `failing_output` with few marked tensors.

    Each `probe(tensors)` call is one target run with those tensors marked; it returns whether
    each failed. For a chain of N tensors the cost is ceil(log2 N) + 1 runs.

    A boundary is accepted when its inputs pass and a few tensors after it (1, 2, 3, 5, 9... steps
    on, toward the output), marked in the same run, fail too; an error that crosses the
    tolerance and dips back under it is not the origin of what reaches the output, so the
    bisection goes on past it. A dip far from every sampled tensor can go unseen; marking every
    tensor (`exact_origin`) is the only complete check, where marking is harmless.
    """
    result = SearchResult(origin=failing_output, followed=[failing_output])
    cache: dict[int, bool] = {failing_output: True}

    def run(tensors: Collection[int]) -> Mapping[int, bool]:
        wanted = [t for t in tensors if t not in cache]
        if wanted:
            result.runs.append(sorted(wanted))
            cache.update(probe(wanted))
        return {t: cache[t] for t in tensors}

    current = failing_output
    while True:
        candidates = [*sorted(ancestors(current, inputs_of)), current]
        position = {t: k for k, t in enumerate(candidates)}
        lo = -1
        while True:
            _, first_failing = find_transition(lo, len(candidates) - 1,
                                               _position_fails(candidates, run))
            boundary = candidates[first_failing]
            # Tensors downstream of the boundary on the way to `current`, a few of them.
            between = [t for t in candidates[first_failing + 1:-1]
                       if boundary in ancestors(t, inputs_of)]
            sweep = _near_first(between, SWEEP)
            verdicts = run([*inputs_of(boundary), *sweep])
            recovered = [t for t in sweep if not verdicts[t]]
            if recovered:
                # The failure dips back under tolerance after the boundary: not the origin of
                # what reaches the output. Bisect on past the last recovery.
                lo = max(position[t] for t in recovered)
                continue
            break
        failing_inputs = sorted(t for t in inputs_of(boundary) if verdicts[t])
        if not failing_inputs:
            result.origin = boundary
            if boundary != current:
                result.followed.append(boundary)
            return result
        # The error reached the boundary through one of its inputs, around the bisected range.
        current = failing_inputs[0]
        result.followed.append(current)
