"""Masks against their definitions: budgets, top-k with ties, drop-and-grow, exact counts, coverage."""

import math

import hypothesis.strategies as st
import torch
from hypothesis import given, settings
from torch import nn

from torch_moo.sparsity import SparsityController, drop_and_grow, layer_counts, top_count

shapes = st.lists(
    st.one_of(
        st.tuples(st.integers(1, 40), st.integers(1, 40)),
        st.tuples(st.integers(1, 8), st.integers(1, 8), st.integers(1, 3), st.integers(1, 3)),
    ),
    min_size=1,
    max_size=5,
)
sparsities = st.floats(0.0, 0.99)


@given(shapes, sparsities, st.sampled_from(["erk", "uniform"]))
def test_budgets_sum_exactly_to_the_global_target(layer_shapes, sparsity, distribution):
    sizes = [math.prod(shape) for shape in layer_shapes]
    counts = layer_counts(layer_shapes, sparsity, distribution=distribution)
    assert sum(counts) == round((1 - sparsity) * sum(sizes))
    assert all(0 <= count <= size for count, size in zip(counts, sizes))


@given(shapes, sparsities)
def test_uniform_budgets_are_within_one_unit_of_the_common_density(layer_shapes, sparsity):
    for count, shape in zip(layer_counts(layer_shapes, sparsity, distribution="uniform"), layer_shapes):
        assert abs(count - (1 - sparsity) * math.prod(shape)) < 1 + 1e-9  # largest remainder moves < 1 unit


@given(shapes, sparsities)
def test_erk_density_follows_the_erk_score(layer_shapes, sparsity):
    # ERK density is proportional to sum(shape)/prod(shape) (capped at 1): a layer with the higher
    # score is at least as dense, up to the rounding of one unit in each of the two layers.
    counts = layer_counts(layer_shapes, sparsity)
    scores = [sum(shape) / math.prod(shape) for shape in layer_shapes]
    sizes = [math.prod(shape) for shape in layer_shapes]
    for a in range(len(sizes)):
        for b in range(len(sizes)):
            if scores[a] >= scores[b]:
                assert counts[a] / sizes[a] >= counts[b] / sizes[b] - 1 / sizes[a] - 1 / sizes[b] - 1e-12


@given(st.lists(st.integers(0, 5), min_size=1, max_size=40), st.data())
def test_top_count_takes_the_largest_scores_and_breaks_ties_by_index(values, data):
    count = data.draw(st.integers(0, len(values)))
    scores = torch.tensor(values, dtype=torch.float32)
    mask = top_count(scores, count)
    assert int(mask.sum()) == count
    if 0 < count < len(values):
        assert scores[mask].min() >= scores[~mask].max()
        boundary = scores[mask].min()
        tied = (scores == boundary).nonzero().flatten()
        chosen = mask[tied]
        assert not torch.any(chosen[1:] & ~chosen[:-1]), "a tie went to a higher index"


@given(st.integers(2, 60), st.data())
def test_drop_and_grow_keeps_the_count_and_follows_both_scores(size, data):
    seed = data.draw(st.integers(0, 2**31 - 1))
    generator = torch.Generator().manual_seed(seed)
    mask = top_count(torch.rand(size, generator=generator), data.draw(st.integers(1, size - 1)))
    count = data.draw(st.integers(0, int(mask.sum())))
    magnitude, growth = torch.rand(size, generator=generator), torch.rand(size, generator=generator)
    new = drop_and_grow(mask, magnitude, growth, count)
    assert int(new.sum()) == int(mask.sum())
    survivors = top_count(torch.where(mask, magnitude, -math.inf), int(mask.sum()) - count)
    assert torch.all(survivors <= mask) and torch.all(survivors <= new)
    grown, passed_over = new & ~survivors, ~new & ~survivors
    if grown.any() and passed_over.any():
        assert growth[grown].min() >= growth[passed_over].max()


def network(widths: list[int], seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    layers = []
    for fan_in, fan_out in zip(widths, widths[1:]):
        layers += [nn.Linear(fan_in, fan_out), nn.Tanh()]
    return nn.Sequential(*layers[:-1])


def run(widths, seed, steps, **kwargs):
    model = network(widths, seed)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    sparse = SparsityController(opt, model=model, generator=torch.Generator().manual_seed(seed), **kwargs)
    data = torch.Generator().manual_seed(seed + 1)
    for _ in range(steps):
        x = torch.randn(8, widths[0], generator=data)
        opt.zero_grad()
        (model(x) - x[:, :1].sin()).square().mean().backward()
        opt.step()
    return model, opt, sparse


widths = st.lists(st.integers(1, 24), min_size=2, max_size=4)
modes = st.sampled_from(["random", "gradient", "exploration"])


@settings(max_examples=30, deadline=None)
@given(widths, st.floats(0.05, 0.95), modes, st.sampled_from(["erk", "uniform"]), st.integers(0, 1000))
def test_dynamic_sparse_training_keeps_exact_per_layer_counts_and_zeros(
    layer_widths, sparsity, regrow, distribution, seed
):
    # 30 Adam steps with a topology update every 3: pruned weights and their moments stay exactly zero
    model, opt, sparse = run(
        layer_widths,
        seed,
        30,
        sparsity=sparsity,
        regrow=regrow,
        distribution=distribution,
        update_every=3,
        drop_fraction=0.5,
        drop_schedule="constant",
    )
    weights = [m.weight for m in model if isinstance(m, nn.Linear)]
    assert [int(m.sum()) for m in sparse.masks.values()] == layer_counts(
        [w.shape for w in weights], sparsity, distribution=distribution
    )
    for w, mask in zip(weights, sparse.masks.values()):
        assert torch.all(w[~mask] == 0)
        assert torch.all(opt.state[w]["exp_avg"][~mask] == 0) and torch.all(opt.state[w]["exp_avg_sq"][~mask] == 0)


@settings(max_examples=20, deadline=None)
@given(widths, st.floats(0.1, 0.9), st.integers(0, 1000))
def test_zero_exploration_is_exactly_gradient_regrowth(layer_widths, sparsity, seed):
    common = dict(sparsity=sparsity, update_every=2, drop_fraction=0.5)
    gradient = run(layer_widths, seed, 9, regrow="gradient", **common)
    explore = run(layer_widths, seed, 9, regrow="exploration", exploration=0.0, **common)
    assert all(torch.equal(a, b) for a, b in zip(gradient[2].masks.values(), explore[2].masks.values()))
    assert all(torch.equal(a, b) for a, b in zip(gradient[0].parameters(), explore[0].parameters()))


@settings(max_examples=20, deadline=None)
@given(widths, st.floats(0.3, 0.9), st.integers(0, 1000))
def test_a_dominant_exploration_bonus_reaches_the_largest_possible_coverage(layer_widths, sparsity, seed):
    # With c so large that the bonus of a never-active unit (c sqrt(ln t)) beats every gradient plus
    # the bonus of a once-active one (c sqrt(ln t / 2)), every grown unit is new while new ones remain:
    # coverage grows by the full regrowth count each update, the most any growth rule can reach.
    steps, every, fraction = 9, 2, 0.5
    common = dict(sparsity=sparsity, update_every=every, drop_fraction=fraction, drop_schedule="constant")
    explore = run(layer_widths, seed, steps, regrow="exploration", exploration=1e6, **common)[2]
    gradient = run(layer_widths, seed, steps, regrow="gradient", **common)[2]
    sizes = [m.numel() for m in explore.masks.values()]
    counts = layer_counts([m.shape for m in explore.masks.values()], sparsity)
    ever = list(counts)
    for _ in range(1, steps // every + 1):
        ever = [min(size, e + int(fraction * count)) for size, e, count in zip(sizes, ever, counts)]
    assert explore.coverage() == sum(ever) / sum(sizes)
    assert explore.coverage() >= gradient.coverage()


def test_coverage_rises_strictly_with_the_exploration_coefficient():
    # One fixed problem (seeded): each step up the ladder of c tries strictly more connections.
    common = dict(sparsity=0.9, update_every=2, drop_fraction=0.3, drop_schedule="constant")
    coverage = [
        run([16, 24, 1], 0, 40, regrow="exploration", exploration=c, **common)[2].coverage()
        for c in (0.0, 1e-2, 1e-1, 1e2)
    ]
    assert coverage == sorted(set(coverage)), coverage
