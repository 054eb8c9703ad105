"""Sparsity objectives against their definitions: reweighted l1, group lasso and GrOWL."""

import math

import hypothesis.strategies as st
import torch
from hypothesis import given

from torch_moo.objectives import ReweightedL1, group_l2, growl, l1

AXIS = {"row": 0, "column": 1}
structures = st.sampled_from(["row", "column"])

# Entries are 0 or of magnitude in [1e-3, 3]: zeros are frequent (and whole groups are zeroed
# below), and a nonzero entry is never so small that eps = 1e-6 dominates it.
MIN_ABS = 1e-3
entries = st.one_of(
    st.just(0.0),
    st.tuples(st.sampled_from([-1.0, 1.0]), st.floats(MIN_ABS, 3, width=64)).map(lambda t: t[0] * t[1]),
)
# float64 throughout; every check is a sum of at most a few hundred terms of size <= 3 * 8,
# so 1e-10 (relative and absolute) is several orders of magnitude above double rounding.
TOL = 1e-10


@st.composite
def weight_tensors(draw, min_dims=2, max_dims=4):
    """A float64 tensor (by default 2-4 dims: Linear or conv shaped), some of its rows and columns zeroed."""
    shape = draw(st.lists(st.integers(1, 4), min_size=min_dims, max_size=max_dims))
    size = math.prod(shape)
    w = torch.tensor(draw(st.lists(entries, min_size=size, max_size=size)), dtype=torch.float64).reshape(shape)
    for axis in range(min(len(shape), 2)):
        zeroed = draw(st.lists(st.booleans(), min_size=shape[axis], max_size=shape[axis]))
        w.index_fill_(axis, torch.tensor([i for i, z in enumerate(zeroed) if z], dtype=torch.long), 0.0)
    return w


layers = st.lists(weight_tensors(), min_size=1, max_size=3)
# Nonincreasing, non-negative, with more entries than any layer has groups (at most 4).
growl_weights = st.lists(st.floats(0, 5, width=64), min_size=4, max_size=6).map(lambda v: sorted(v, reverse=True))


def close(a, b):
    return torch.allclose(torch.as_tensor(a), torch.as_tensor(b, dtype=torch.float64), rtol=TOL, atol=TOL)


@given(layers)
def test_reweighted_l1_right_after_refresh_counts_the_nonzeros(params):
    eps = 1e-6
    penalty = ReweightedL1(params, eps=eps)
    with torch.no_grad():
        for p in params:
            p.mul_(-2.0)  # move away from the construction snapshot, then refresh
    penalty.refresh()
    nonzeros = sum(int((p != 0).sum()) for p in params)
    value = penalty().item()
    # Each nonzero entry contributes |w| / (|w| + eps) = 1 - eps / (|w| + eps), short of 1 by at
    # most eps / |w| <= eps / MIN_ABS = 1e-3 (the entries' magnitudes are >= MIN_ABS); zeros give 0.
    assert nonzeros * (1 - eps / MIN_ABS) - TOL <= value <= nonzeros + TOL
    exact = sum((p.abs() / (p.abs() + eps)).sum().item() for p in params)
    assert math.isclose(value, exact, rel_tol=TOL, abs_tol=TOL)


@given(layers, st.floats(1e-8, 1.0, width=64))
def test_reweighted_l1_with_unit_references_is_l1_scaled(params, eps):
    penalty = ReweightedL1(params, eps=eps)
    penalty.load_state_dict({"references": [torch.ones_like(p) for p in params]})
    assert close(penalty(), l1(params, reduction="sum") / (1 + eps))


@given(layers, structures, st.floats(0, 5, width=64))
def test_growl_with_equal_weights_is_that_weight_times_group_l2(params, structure, weight):
    assert close(
        growl(params, structure=structure, weights=[weight] * 4), weight * group_l2(params, structure=structure)
    )


@given(weight_tensors(), structures, growl_weights, st.data())
def test_growl_is_invariant_to_permuting_the_groups(w, structure, weights, data):
    axis = AXIS[structure]
    order = torch.tensor(data.draw(st.permutations(range(w.shape[axis]))), dtype=torch.long)
    permuted = w.index_select(axis, order)
    assert close(growl(permuted, structure=structure, weights=weights), growl(w, structure=structure, weights=weights))
    assert close(growl(permuted, structure=structure), growl(w, structure=structure))
    assert close(group_l2(permuted, structure=structure), group_l2(w, structure=structure))


@given(layers, structures, growl_weights)
def test_growl_lies_between_the_extreme_weights_times_group_l2(params, structure, weights):
    # lambda_min <= lambda_i <= lambda_max for every weight used, and all group norms are >= 0.
    total = group_l2(params, structure=structure).item()
    value = growl(params, structure=structure, weights=weights).item()
    assert min(weights) * total - TOL * (1 + total) <= value <= max(weights) * total + TOL * (1 + total)


@given(layers, structures, st.floats(0, 5, width=64), st.floats(0, 5, width=64))
def test_growl_pair_is_the_explicit_spike_weights(params, structure, beta1, beta2):
    # (beta1, beta2) means lambda = (beta1 + beta2, beta2, beta2, ...), computed as a max plus a sum.
    explicit = [beta1 + beta2] + [beta2] * 3
    assert close(
        growl(params, structure=structure, weights=(beta1, beta2)), growl(params, structure=structure, weights=explicit)
    )


@given(layers, structures, growl_weights, st.floats(-4, 4, width=64))
def test_growl_and_group_l2_are_absolutely_homogeneous(params, structure, weights, scale):
    scaled = [scale * p for p in params]
    assert close(
        growl(scaled, structure=structure, weights=weights),
        abs(scale) * growl(params, structure=structure, weights=weights),
    )
    assert close(group_l2(scaled, structure=structure), abs(scale) * group_l2(params, structure=structure))


@given(weight_tensors(min_dims=2, max_dims=2), growl_weights)
def test_rows_of_a_matrix_are_the_columns_of_its_transpose(w, weights):
    assert close(group_l2(w, structure="row"), group_l2(w.T, structure="column"))
    assert close(growl(w, structure="row", weights=weights), growl(w.T, structure="column", weights=weights))


@given(weight_tensors(min_dims=1, max_dims=1))
def test_row_groups_of_a_vector_are_its_entries_so_group_l2_is_l1(b):
    assert close(group_l2(b, structure="row"), l1(b, reduction="sum"))


@given(weight_tensors(), structures)
def test_group_l2_gradient_is_the_unit_group_or_zero(w, structure):
    axis = AXIS[structure]
    w.requires_grad_(True)
    group_l2(w, structure=structure).backward()
    dims = [d for d in range(w.dim()) if d != axis]
    norms = w.detach().pow(2).sum(dim=dims, keepdim=True).sqrt()
    # Nonzero group: W_g / ||W_g||; zero group: the zero subgradient (never NaN).
    expected = torch.where(norms > 0, w.detach() / norms.clamp_min(1e-300), torch.zeros_like(w))
    assert torch.isfinite(w.grad).all()
    assert torch.allclose(w.grad, expected, rtol=TOL, atol=TOL)


@given(layers, structures, growl_weights)
def test_growl_gradient_is_finite(params, structure, weights):
    for p in params:
        p.requires_grad_(True)
    growl(params, structure=structure, weights=weights).backward()
    assert all(torch.isfinite(p.grad).all() for p in params)
