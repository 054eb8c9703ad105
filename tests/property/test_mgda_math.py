"""mgda_weights and normalized_gram against their definitions: simplex, common descent, invariances.

Inputs are float64 and compared through the min-norm *point* sum_i alpha_i g_hat_i, which is
unique, rather than alpha, which is not when the gradients are affinely dependent. The solver
reaches the optimum to ~1e-12 of the largest squared gradient norm (tests/property/test_min_norm.py),
so 1e-8 of it (1e-4 of the norm for points) leaves four orders of margin.
"""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from torch_moo.functional import mgda_weights, normalized_gram

NORMALIZATIONS = ["none", "l2", "loss", "loss+"]


@st.composite
def problems(draw):
    k = draw(st.integers(2, 8))
    n = draw(st.integers(1, 12))
    seed = draw(st.integers(0, 2**31 - 1))
    generator = torch.Generator().manual_seed(seed)
    jacobian = torch.randn(k, n, generator=generator, dtype=torch.float64)
    if draw(st.booleans()):  # rank-deficient: rows from a 1- or 2-dimensional subspace
        jacobian = torch.randn(k, 2, generator=generator, dtype=torch.float64) @ torch.randn(
            2, n, generator=generator, dtype=torch.float64
        )
    losses = torch.rand(k, generator=generator, dtype=torch.float64) * 5 + 0.1
    scales = torch.rand(k, generator=generator, dtype=torch.float64) * 10 + 0.1
    return jacobian, losses, scales


def scale_of(jacobian, losses, normalization):
    """The s_i of normalized_gram's definition, computed from the rows themselves."""
    norms = jacobian.norm(dim=1)
    return {"none": torch.ones_like(losses), "l2": norms, "loss": losses, "loss+": losses * norms}[normalization]


def point(jacobian, losses, normalization):
    """The min-norm point of the normalised gradients, sum_i alpha_i g_i / s_i, and its bound for tolerances."""
    alpha, _ = mgda_weights(jacobian, losses, normalization)
    normalized = jacobian / scale_of(jacobian, losses, normalization)[:, None]
    return alpha @ normalized, normalized.norm(dim=1).max()


@settings(max_examples=150, deadline=None)
@given(problems(), st.sampled_from(NORMALIZATIONS))
def test_normalized_gram_is_the_gram_of_the_normalised_gradients(problem, normalization):
    jacobian, losses, _ = problem
    normalized = jacobian / scale_of(jacobian, losses, normalization)[:, None]
    torch.testing.assert_close(normalized_gram(jacobian @ jacobian.T, losses, normalization), normalized @ normalized.T)


@settings(max_examples=150, deadline=None)
@given(problems(), st.sampled_from(NORMALIZATIONS))
def test_weights_are_on_the_simplex_and_give_a_common_descent_direction_of_the_normalised_gradients(
    problem, normalization
):
    jacobian, losses, _ = problem
    alpha, _ = mgda_weights(jacobian, losses, normalization)
    assert (alpha >= 0).all() and abs(float(alpha.sum()) - 1) < 1e-12
    d, bound = point(jacobian, losses, normalization)
    normalized = jacobian / scale_of(jacobian, losses, normalization)[:, None]
    # KKT of the min-norm problem: <d, g_hat_i> >= ||d||^2 for all i, with equality where alpha_i > 0
    assert (normalized @ d >= d @ d - 1e-8 * bound**2).all()
    assert abs(float(alpha @ (normalized @ d) - d @ d)) <= 1e-8 * float(bound) ** 2


@settings(max_examples=150, deadline=None)
@given(problems(), st.sampled_from(NORMALIZATIONS), st.randoms(use_true_random=False))
def test_permuting_the_objectives_permutes_nothing_in_the_direction(problem, normalization, rng):
    jacobian, losses, _ = problem
    order = list(range(len(losses)))
    rng.shuffle(order)
    d, bound = point(jacobian, losses, normalization)
    permuted, _ = point(jacobian[order], losses[order], normalization)
    assert (d - permuted).norm() <= 1e-4 * bound


@settings(max_examples=150, deadline=None)
@given(problems(), st.sampled_from(NORMALIZATIONS))
def test_each_normalisation_has_its_stated_scale_invariance(problem, normalization):
    jacobian, losses, scales = problem
    c = float(scales[0])
    d, bound = point(jacobian, losses, normalization)
    if normalization == "none":  # g -> c g: the direction scales by c
        changed, _ = point(c * jacobian, losses, normalization)
        assert (changed - c * d).norm() <= 1e-4 * c * bound
    if normalization in ("l2", "loss+"):  # g_i -> c_i g_i: the normalised gradients are unchanged
        changed, _ = point(scales[:, None] * jacobian, losses, normalization)
        assert (changed - d).norm() <= 1e-4 * bound
    if normalization == "loss":  # rescaling an objective, (g_i, L_i) -> c_i (g_i, L_i)
        changed, _ = point(scales[:, None] * jacobian, scales * losses, normalization)
        assert (changed - d).norm() <= 1e-4 * bound
    if normalization == "loss+":  # L -> c L: a common factor, the same weights
        changed, _ = point(jacobian, c * losses, normalization)
        assert (changed - d / c).norm() <= 1e-4 * bound / c


@settings(max_examples=60, deadline=None)
@given(problems())
def test_normalisation_never_divides_by_zero(problem):
    jacobian, losses, _ = problem
    jacobian[0] = 0
    losses[1] = 0
    for normalization in NORMALIZATIONS:
        alpha, gap = mgda_weights(jacobian, losses, normalization)
        assert torch.isfinite(alpha).all() and torch.isfinite(gap)
