"""The bisection searches on integers: tensors are numbers, the graph is a function."""

from __future__ import annotations

import math

import pytest

from trtcheck.debug.search import SWEEP, ancestors, exact_origin, find_transition, search_origin


def chain(n: int):
    """0 -> 1 -> ... -> n-1."""
    return lambda t: [t - 1] if t > 0 else []


def probe_from(failing: set[int]):
    calls: list[list[int]] = []

    def probe(tensors):
        calls.append(sorted(tensors))
        return {t: t in failing for t in tensors}

    return probe, calls


def test_find_transition_on_monotone_predicates():
    for n in (2, 3, 10, 1000):
        for boundary in (0, n // 3, n - 1):
            calls: list[int] = []

            def fails(i, boundary=boundary, calls=calls):
                calls.append(i)
                return i >= boundary

            assert find_transition(-1, n - 1, fails) == (boundary - 1, boundary)
            assert len(calls) <= math.ceil(math.log2(n + 1))


def test_find_transition_returns_a_real_transition_when_not_monotone():
    pattern = [False, True, False, False, True, True]  # fails at 1, passes at 2-3
    p, f = find_transition(-1, len(pattern), lambda i: pattern[i])
    assert f == p + 1
    assert (p == -1 or not pattern[p]) and (f == len(pattern) or pattern[f])
    with pytest.raises(ValueError):
        find_transition(3, 3, lambda i: True)


@pytest.mark.parametrize("n, planted", [(100, 37), (300, 150), (1000, 617), (1000, 0),
                                         (1000, 999)])
def test_search_on_a_chain_costs_log2_n_plus_one(n, planted):
    probe, calls = probe_from(set(range(planted, n)))
    result = search_origin(n - 1, chain(n), probe)
    assert result.origin == planted
    assert len(calls) <= math.ceil(math.log2(n)) + 1
    assert all(len(marked) <= SWEEP + 2 for marked in calls), "few tensors marked per run"


def skip_graph():
    """0 -> 1 (planted fault) -> 2 (ReLU: error vanishes) -> 3 -> ... -> 8, 9 = f(8, 1)."""
    edges = {0: [], 1: [0], 2: [1], 9: [8, 1]}
    for t in range(3, 9):
        edges[t] = [t - 1]
    failing = {1, 9}
    return edges.__getitem__, failing


def test_error_that_vanishes_after_relu_is_followed_through_the_skip():
    inputs_of, failing = skip_graph()
    # A naive "once diverged, always diverged" bisection of the topological order names 9.
    order = list(range(10))
    _, naive = find_transition(-1, 9, lambda i: order[i] in failing)
    assert naive == 9
    probe, calls = probe_from(failing)
    result = search_origin(9, inputs_of, probe)
    assert result.origin == 1 and 1 in result.followed
    assert exact_origin(9, inputs_of, {t: t in failing for t in range(10)}) == 1


def test_exact_origin_ignores_divergence_that_does_not_reach_the_output():
    # 2 fails but 3 (after a ReLU) passes, and only 6 onward carries a failure to the output 7.
    fails = {t: t in {2, 6, 7} for t in range(8)}
    assert exact_origin(7, chain(8), fails) == 6


def test_exact_origin_picks_the_first_of_two_origins():
    # Two branches both failing into the output 6: origins 1 and 4; 1 comes first.
    edges = {0: [], 1: [0], 2: [1], 3: [0], 4: [3], 5: [4], 6: [2, 5]}
    fails = {t: t in {1, 2, 4, 5, 6} for t in range(7)}
    assert exact_origin(6, edges.__getitem__, fails) == 1


def test_ancestors():
    edges = {0: [], 1: [0], 2: [0], 3: [1, 2]}
    assert ancestors(3, edges.__getitem__) == {0, 1, 2}
    assert ancestors(0, edges.__getitem__) == set()


@pytest.mark.parametrize("failing", [
    {3, 4, 5, *range(9, 40)},  # crosses at 3, dips back for 6-8, fails for good from 9
    {5, *range(7, 40)},  # a single-step dip
    {*range(10, 13), *range(14, 40)},  # hovering: dips once, two steps after the crossing
])
def test_search_skips_a_failure_that_dips_back_under_tolerance(failing):
    expected = exact_origin(39, chain(40), {t: t in failing for t in range(40)})
    probe, calls = probe_from(failing)
    result = search_origin(39, chain(40), probe)
    assert result.origin == expected
    assert all(len(marked) <= SWEEP + 2 for marked in calls)
