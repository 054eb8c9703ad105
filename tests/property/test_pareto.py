"""Pareto tools against their definitions: dominance, hypervolume by inclusion-exclusion, lattices."""

import itertools
import math

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import given

from torch_moo.pareto import hypervolume, igd, knee_point, non_dominated, simplex_lattice

# Coordinates on a grid of 1/8 keep ties and duplicates frequent, which is where dominance and
# hypervolume code goes wrong; every value is exact in binary floating point.
coordinate = st.integers(0, 16).map(lambda v: v / 8)


def fronts(min_points=1, max_points=6, dims=(2, 3, 4)):
    return st.sampled_from(dims).flatmap(
        lambda m: st.lists(st.lists(coordinate, min_size=m, max_size=m), min_size=min_points, max_size=max_points)
    )


def dominates(p, q):
    return all(a <= b for a, b in zip(p, q)) and any(a < b for a, b in zip(p, q))


@given(fronts(max_points=10))
def test_non_dominated_keeps_exactly_the_undominated_points(points):
    mask = non_dominated(points).tolist()
    for i, p in enumerate(points):
        assert mask[i] == (not any(dominates(q, p) for q in points))


def inclusion_exclusion(points, reference):
    """HV = sum over non-empty subsets S of (-1)^(|S|+1) * volume of the box [max over S, reference]."""
    total = 0.0
    for size in range(1, len(points) + 1):
        for subset in itertools.combinations(points, size):
            corner = [max(p[i] for p in subset) for i in range(len(reference))]
            total += (-1) ** (size + 1) * math.prod(max(0.0, r - c) for r, c in zip(reference, corner))
    return total


@given(fronts())
def test_hypervolume_matches_inclusion_exclusion(points):
    reference = [2.25] * len(points[0])  # some coordinates (up to 2.0) lie near or outside it
    # Volumes are sums of products of multiples of 1/8 below 2.25^4: exact in double precision
    # up to a few ulps of the total.
    assert hypervolume(points, reference) == pytest.approx(inclusion_exclusion(points, reference), abs=1e-12)


@given(fronts(), st.randoms(use_true_random=False))
def test_hypervolume_ignores_order(points, rng):
    shuffled = list(points)
    rng.shuffle(shuffled)
    reference = [2.25] * len(points[0])
    assert hypervolume(shuffled, reference) == pytest.approx(hypervolume(points, reference), abs=1e-12)


@given(fronts(), st.data())
def test_hypervolume_grows_exactly_when_a_point_adds_undominated_space(points, data):
    m = len(points[0])
    reference = [2.25] * m
    extra = data.draw(st.lists(coordinate, min_size=m, max_size=m))
    before, after = hypervolume(points, reference), hypervolume([*points, extra], reference)
    weakly_dominated = any(all(a <= b for a, b in zip(p, extra)) for p in points)
    if weakly_dominated:
        assert after == pytest.approx(before, abs=1e-12)
    else:  # extra lies inside the box (coordinates <= 2 < 2.25) and adds its own corner
        assert after > before


def test_hypervolume_hand_cases():
    assert hypervolume([[1, 2], [2, 1]], [3, 3]) == 3.0
    assert hypervolume([[0, 0, 0]], [1, 2, 3]) == 6.0
    # Boxes 2*2*2 and 3*1*1 overlapping in [1, 3] x [2, 3] x [2, 3] (volume 2): 8 + 3 - 2.
    assert hypervolume([[1, 1, 1], [0, 2, 2]], [3, 3, 3]) == 9.0
    assert hypervolume([[4, 0]], [3, 3]) == 0.0  # outside the reference box


def test_igd_hand_case_and_zero_on_the_reference_front():
    assert igd([[0, 1], [1, 0]], [[0, 1], [1, 0]]) == 0.0
    assert igd([[0, 0]], [[3, 4], [0, 0]]) == pytest.approx(2.5)


def test_knee_of_a_front_with_a_clear_bend():
    points = [[0.0, 1.0], [0.05, 0.4], [0.1, 0.1], [0.4, 0.05], [1.0, 0.0], [0.5, 0.5]]
    assert knee_point(points) == 2
    assert knee_point([[0.0, 1.0, 0.5], [1.0, 0.0, 0.5], [0.5, 0.5, 0.0], [0.2, 0.2, 0.2]]) == 3


def test_knee_of_a_degenerate_front_is_the_point_nearest_the_ideal():
    assert knee_point([[1.0, 1.0]]) == 0
    assert knee_point([[0.0, 1.0], [1.0, 0.0], [2.0, 2.0]]) in (0, 1)


@given(st.integers(1, 5), st.integers(1, 8))
def test_simplex_lattice_is_the_das_dennis_grid(m, divisions):
    grid = simplex_lattice(m, divisions)
    assert grid.shape == (math.comb(divisions + m - 1, m - 1), m)
    assert torch.allclose(grid.sum(dim=1), torch.ones(len(grid), dtype=torch.float64))
    assert (grid >= 0).all()
    assert torch.equal(grid * divisions, (grid * divisions).round())
    assert len(torch.unique(grid, dim=0)) == len(grid)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: hypervolume([1, 2], [3, 3]), r"points must have shape \(n, m\) with m >= 1, got \(2,\)"),
        (
            lambda: hypervolume([[1, 2]], [3, 3, 3]),
            r"reference must have 2 entries \(one per objective\), got shape \(3,\)",
        ),
        (lambda: non_dominated([[1, float("nan")]]), r"points must be finite"),
        (lambda: igd([[1, 2]], [[1, 2, 3]]), r"points have 2 objectives but reference_front has 3"),
        (lambda: simplex_lattice(0, 3), r"num_objectives must be an int >= 1, got 0"),
        (lambda: simplex_lattice(2, 2.5), r"divisions must be an int >= 1, got 2.5"),
    ],
)
def test_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call()
