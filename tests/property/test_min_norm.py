"""The MGDA min-norm solver against its definition: simplex, optimality gap, common descent, KKT,
an exact reference by enumeration of supports, and the problem's symmetries."""

import itertools

import hypothesis.strategies as st
import numpy as np
import pytest
import torch
from hypothesis import given

from torch_moo.functional import min_norm_solve, min_norm_weights

F64 = torch.float64
# Tolerances are relative to the largest squared gradient norm max_i ||g_i||^2 = max diag G, the
# scale the solver works in. Its stopping test allows 1e-12 there, and a float64 inner product of
# gradients of norm <= 1 rounds to about k * 1e-16 <= 1e-15, so 1e-10 leaves two orders of
# magnitude above both. Vectors (d) are compared at the square root of that, since
# ||d - d*||^2 <= ||d||^2 - ||d*||^2 <= gap for the min-norm point d* of a convex set.
TOL = 1e-10
D_TOL = 2 * TOL**0.5
# The reference objective matches to 1e-6 relative (the brief's bound), above an absolute floor of
# TOL * max diag G: an objective near 0 (conflicting gradients) is only known to that floor from G.
REL = 1e-6

KINDS = ["random", "random", "duplicate", "near", "opposite", "zero", "scaled", "parallel"]


@st.composite
def jacobians(draw, max_k=10):
    """k gradients of size n as the rows of J: fresh Gaussian rows, duplicates, near-duplicates
    (1e-10..1e-5 apart, relative), opposites and positive multiples of earlier rows, zero rows and
    fresh rows scaled by 1e-4..1e4."""
    k, n = draw(st.integers(1, max_k)), draw(st.integers(1, 20))
    generator = torch.Generator().manual_seed(draw(st.integers(0, 2**32 - 1)))
    rows = []
    for i in range(k):
        kind = draw(st.sampled_from(KINDS)) if i else "random"
        fresh = torch.randn(n, dtype=F64, generator=generator)
        earlier = rows[draw(st.integers(0, i - 1))] if i else fresh
        scale = 10.0 ** draw(st.floats(-4, 4))
        rows.append(
            {
                "random": fresh,
                "duplicate": earlier.clone(),
                "near": earlier + 10.0 ** draw(st.floats(-10, -5)) * earlier.norm() * fresh,
                "opposite": -earlier,
                "zero": torch.zeros(n, dtype=F64),
                "scaled": scale * fresh,
                "parallel": scale * earlier,
            }[kind]
        )
    return torch.stack(rows)


def scale_of(gram):
    """max diag G, or 1 for a zero Gram matrix (then every check is exact anyway)."""
    return max(gram.diagonal().max().item(), 1e-300) if gram.abs().max() > 0 else 1.0


def reference_objective(gram):
    """min over the simplex of a^T G a by enumeration of supports.

    The optimum with the smallest support S is the unique minimiser of a^T G a on the affine hull
    of S, so it solves the bordered system [[G_SS, 1], [1^T, 0]] [a; nu] = [0; 1] (lstsq also
    takes the singular systems of other supports). Each candidate is clipped to the simplex and
    evaluated, so every value is attained by a feasible point and the minimum is exact up to the
    rounding of that one system.
    """
    g = gram.numpy()
    k = len(g)
    best = np.inf
    for size in range(1, k + 1):
        for support in itertools.combinations(range(k), size):
            s = list(support)
            system = np.zeros((size + 1, size + 1))
            system[:size, :size] = g[np.ix_(s, s)]
            system[:size, size] = system[size, :size] = 1
            rhs = np.zeros(size + 1)
            rhs[size] = 1
            weights = np.clip(np.linalg.lstsq(system, rhs, rcond=None)[0][:size], 0, None)
            if weights.sum() > 0:
                a = np.zeros(k)
                a[s] = weights / weights.sum()
                best = min(best, a @ g @ a)
    return best


@given(jacobians())
def test_weights_lie_on_the_simplex(jacobian):
    alpha, _ = min_norm_weights(jacobian @ jacobian.T)
    assert alpha.dtype == F64 and alpha.shape == (len(jacobian),)
    assert (alpha >= 0).all()
    # A sum of at most 10 float64 weights: rounding about 1e-15.
    assert abs(alpha.sum().item() - 1) < 1e-12


@given(jacobians())
def test_gap_is_the_duality_gap_and_small(jacobian):
    gram = jacobian @ jacobian.T
    alpha, gap = min_norm_weights(gram)
    directional = gram @ alpha
    assert torch.allclose(gap, alpha @ directional - directional.min(), rtol=0, atol=1e-15 * scale_of(gram))
    assert -TOL * scale_of(gram) <= gap.item() <= TOL * scale_of(gram)


@given(jacobians())
def test_min_norm_direction_is_a_common_descent_direction(jacobian):
    # <d, g_i> >= ||d||^2 for every gradient: d decreases every objective (or d = 0).
    alpha, _ = min_norm_weights(jacobian @ jacobian.T)
    d = jacobian.T @ alpha
    assert (jacobian @ d >= d @ d - TOL * scale_of(jacobian @ jacobian.T)).all()


@given(jacobians())
def test_kkt_conditions(jacobian):
    # (G a)_i >= a^T G a for all i, with equality on the support of a.
    gram = jacobian @ jacobian.T
    alpha, _ = min_norm_weights(gram)
    directional, value = gram @ alpha, alpha @ gram @ alpha
    tol = TOL * scale_of(gram)
    assert (directional >= value - tol).all()
    assert torch.allclose(directional[alpha > 0], value.expand(int((alpha > 0).sum())), rtol=0, atol=tol)


@given(jacobians(max_k=8))
def test_objective_matches_the_enumerated_exact_optimum(jacobian):
    gram = jacobian @ jacobian.T
    alpha, _ = min_norm_weights(gram)
    value, reference = (alpha @ gram @ alpha).item(), reference_objective(gram)
    assert abs(value - reference) <= REL * reference + TOL * scale_of(gram)


@given(jacobians(), st.randoms(use_true_random=False))
def test_permuting_the_objectives_keeps_value_and_direction(jacobian, random):
    # The min-norm point d is unique (alpha need not be), so compare d and ||d||^2.
    order = list(range(len(jacobian)))
    random.shuffle(order)
    permuted = jacobian[order]
    alpha, _ = min_norm_weights(jacobian @ jacobian.T)
    beta, _ = min_norm_weights(permuted @ permuted.T)
    scale = scale_of(jacobian @ jacobian.T)
    d, e = jacobian.T @ alpha, permuted.T @ beta
    assert abs(d @ d - e @ e) <= TOL * scale
    assert (d - e).norm() <= D_TOL * scale**0.5


@given(jacobians(), st.floats(-6, 6))
def test_scaling_the_gram_matrix_keeps_the_direction(jacobian, exponent):
    # G -> cG is J -> sqrt(c) J: the same weights give the same point of the hull, scaled.
    c = 10.0**exponent
    gram = jacobian @ jacobian.T
    alpha, _ = min_norm_weights(gram)
    beta, _ = min_norm_weights(c * gram)
    scale = scale_of(gram)
    assert abs(beta @ (c * gram) @ beta - c * (alpha @ gram @ alpha)) <= c * TOL * scale
    assert (jacobian.T @ (beta - alpha)).norm() <= D_TOL * scale**0.5


@pytest.mark.skipif(
    not torch.cuda.is_available(), reason="the device path (every iteration runs, no early exit) needs a GPU"
)
@given(jacobians())
def test_device_path_without_early_exit_reaches_the_same_optimum(jacobian):
    # Off the CPU all iterations run, no-ops after the stop: the same minimiser, to the stopping tolerance.
    gram = jacobian @ jacobian.T
    (alpha, _), (on_device, gap) = min_norm_weights(gram), min_norm_weights(gram.cuda())
    on_device, tol = on_device.cpu(), TOL * scale_of(gram)
    assert abs((on_device @ gram @ on_device - alpha @ gram @ alpha).item()) <= tol and gap.item() <= tol
    assert (jacobian.T @ (on_device - alpha)).norm().item() <= D_TOL * scale_of(gram) ** 0.5


@given(jacobians())
def test_device_path_without_early_exit_gives_the_same_result(jacobian):
    # early_exit=False is what runs off the CPU: every iteration after the stop must be a no-op.
    gram = jacobian @ jacobian.T
    fast, slow = min_norm_solve(gram), min_norm_solve(gram, early_exit=False)
    assert torch.equal(fast.weights, slow.weights) and torch.equal(fast.gap, slow.gap)
    assert bool(fast.stopped) == bool(slow.stopped)


@given(jacobians(max_k=16))
def test_solver_stops_well_within_its_iteration_cap(jacobian):
    gram = jacobian @ jacobian.T
    if gram.diagonal().max() <= 0 or len(gram) < 3:
        return
    solution, k = min_norm_solve(gram), len(gram)
    cap = min_norm_solve(gram, early_exit=False).iterations  # without early exit the loop runs to the cap
    assert bool(solution.stopped) and solution.gap.item() <= TOL * scale_of(gram)
    # The claim behind the cap 4k + 10 (see _max_iterations): in practice at most 2k + 2.
    assert solution.iterations <= 2 * k + 2 < cap == 4 * k + 10


@st.composite
def starts(draw, k):
    """Warm starts: points on the simplex, arbitrary reals (negatives, NaN and inf count as 0) and all zeros."""
    entry = st.one_of(st.floats(-1, 1), st.sampled_from([0.0, float("nan"), float("inf"), -float("inf")]))
    return torch.tensor(draw(st.lists(entry, min_size=k, max_size=k)), dtype=F64)


@given(jacobians(), st.data())
def test_warm_start_reaches_the_same_optimum(jacobian, data):
    gram = jacobian @ jacobian.T
    start = data.draw(starts(len(gram)))
    (cold, _), (warm, warm_gap) = min_norm_weights(gram), min_norm_weights(gram, start=start)
    # Both runs stop at the exact minimiser (unique: the ridge makes the problem strictly convex),
    # so values and directions agree to the solver's stopping tolerance (TOL, D_TOL above).
    tol = TOL * scale_of(gram)
    assert abs((warm @ gram @ warm - cold @ gram @ cold).item()) <= tol and warm_gap.item() <= tol
    assert (jacobian.T @ (warm - cold)).norm().item() <= D_TOL * scale_of(gram) ** 0.5


@given(jacobians(max_k=16))
def test_warm_start_at_the_optimum_confirms_it_in_two_iterations(jacobian):
    # One major cycle re-solves the optimum's corral, the next finds no improving vertex and stops.
    # (From a nearby point there is no such bound: a start can cost more iterations than the
    # default vertex, although in training it saves most of them; benchmarks/README.md.)
    gram = jacobian @ jacobian.T
    if gram.diagonal().max() <= 0 or len(gram) < 3:
        return
    optimum = min_norm_solve(gram).weights
    again = min_norm_solve(gram, start=optimum)
    assert bool(again.stopped) and again.iterations <= 2
    # Weights among near-duplicate gradients are determined only up to the ridge's conditioning;
    # the objective is what is unique.
    tol = TOL * scale_of(gram)
    assert abs((again.weights @ gram @ again.weights - optimum @ gram @ optimum).item()) <= tol
    assert again.gap.item() <= tol


def test_warm_start_must_have_one_entry_per_objective():
    with pytest.raises(ValueError, match=r"start must be a tensor of shape \(3,\)"):
        min_norm_weights(torch.eye(3), start=torch.ones(2))


@given(st.lists(st.floats(-10, 10, allow_nan=False, allow_subnormal=False), min_size=4, max_size=4))
def test_two_objectives_use_the_closed_form(values):
    g1, g2 = torch.tensor(values, dtype=F64).reshape(2, 2)
    alpha, gap = min_norm_weights(torch.stack((g1, g2)) @ torch.stack((g1, g2)).T)
    difference = g2 - g1
    if difference @ difference > 0:
        first = ((difference @ g2) / (difference @ difference)).clamp(0, 1)
    else:
        first = torch.tensor(0.5, dtype=F64)
    # The closed form divides by ||g2 - g1||^2, which can be tiny, so compare the points of the
    # segment instead of alpha. The Gram matrix holds ||g2 - g1||^2 only to float64 resolution of
    # max ||g_i||^2 (g1 = (1, 0) and g2 = (1, 1e-8) have the same G), so the point is determined
    # to about sqrt(2^-52) = 1.5e-8 times max ||g_i||: allow 4e-8 of it, above 1e-9 absolute.
    scale = max(g1.norm().item(), g2.norm().item())
    assert torch.allclose(
        alpha[0] * g1 + alpha[1] * g2, first * g1 + (1 - first) * g2, rtol=0, atol=1e-9 + 4e-8 * scale
    )
    assert abs(alpha.sum().item() - 1) < 1e-15


def test_one_objective_gets_all_the_weight():
    alpha, gap = min_norm_weights(torch.tensor([[4.0]], dtype=F64))
    assert alpha.tolist() == [1.0] and gap.item() == 0


def test_two_objectives_closed_form_on_an_obtuse_pair():
    # g1 = (1, 0), g2 = (-1, 1): alpha_1 = <g2 - g1, g2> / ||g2 - g1||^2 = 3 / 5.
    jacobian = torch.tensor([[1.0, 0.0], [-1.0, 1.0]], dtype=F64)
    alpha, gap = min_norm_weights(jacobian @ jacobian.T)
    assert torch.allclose(alpha, torch.tensor([0.6, 0.4], dtype=F64), rtol=0, atol=1e-15)
    assert abs(gap.item()) < 1e-15


def test_acute_pair_takes_the_shorter_gradient():
    jacobian = torch.tensor([[1.0, 0.0], [3.0, 1.0]], dtype=F64)
    alpha, _ = min_norm_weights(jacobian @ jacobian.T)
    assert alpha.tolist() == [1.0, 0.0]


def test_nearly_equal_pair_takes_the_shorter_gradient():
    # Found by hypothesis: (g1 - g2)^2 is below float64 resolution of G11 - 2 G12 + G22, so the
    # textbook closed form divided rounding noise; the signs of <g1 - g2, g1> and <g2 - g1, g2> do not.
    jacobian = torch.tensor([[1.5410], [1.5410 + 1e-9]], dtype=F64)
    gram = jacobian @ jacobian.T
    alpha, gap = min_norm_weights(gram)
    assert alpha.tolist() == [1.0, 0.0]
    assert 0 <= gap.item() <= 1e-15 * gram.max().item()


@pytest.mark.parametrize("k", [1, 2, 3, 5])
def test_zero_gram_gives_uniform_weights(k):
    alpha, gap = min_norm_weights(torch.zeros(k, k, dtype=F64))
    assert torch.equal(alpha, torch.full((k,), 1 / k, dtype=F64)) and gap.item() == 0


@pytest.mark.parametrize("extra", [0, 1, 3])
def test_opposite_gradients_give_the_zero_direction(extra):
    # g and -g put 0 in the hull: d = 0 and, with nothing else, alpha = (0.5, 0.5).
    g = torch.tensor([3.0, -1.0, 2.0], dtype=F64)
    jacobian = torch.cat(
        (torch.stack((g, -g)), torch.randn(extra, 3, dtype=F64, generator=torch.Generator().manual_seed(0)))
    )
    alpha, gap = min_norm_weights(jacobian @ jacobian.T)
    assert (jacobian.T @ alpha).norm() < 1e-7  # sqrt of the 1e-14-relative objective tolerance
    assert abs(gap.item()) < 1e-12
    if not extra:
        assert torch.allclose(alpha, torch.tensor([0.5, 0.5], dtype=F64), rtol=0, atol=1e-15)


def test_duplicate_gradients_share_the_weight_of_one():
    g1, g2 = torch.tensor([1.0, 0.0], dtype=F64), torch.tensor([0.0, 1.0], dtype=F64)
    jacobian = torch.stack((g1, g1, g2, g2, g1))
    alpha, gap = min_norm_weights(jacobian @ jacobian.T)
    assert torch.allclose(jacobian.T @ alpha, torch.tensor([0.5, 0.5], dtype=F64), rtol=0, atol=1e-15)
    assert abs(gap.item()) < 1e-15


@pytest.mark.parametrize("scale", [1e-150, 1e-20, 1.0, 1e20, 1e150])
def test_tiny_and_huge_scales_give_the_same_weights(scale):
    jacobian = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [1.0, 1.0, 1.0], [-0.5, 0.2, 0.1]], dtype=F64)
    gram = jacobian @ jacobian.T
    alpha, _ = min_norm_weights(gram)
    beta, gap = min_norm_weights(scale * gram)
    assert torch.allclose(alpha, beta, rtol=0, atol=1e-12)
    assert abs(gap.item()) <= TOL * scale * gram.diagonal().max().item()


def test_float32_input_gives_float32_output():
    jacobian = torch.randn(6, 9, generator=torch.Generator().manual_seed(1))
    alpha, gap = min_norm_weights(jacobian @ jacobian.T)
    reference, _ = min_norm_weights(jacobian.double() @ jacobian.double().T)
    assert alpha.dtype == gap.dtype == torch.float32
    # The float32 Gram matrix carries relative errors of about 1e-6.
    assert torch.allclose(alpha.double(), reference, rtol=0, atol=1e-4)
    assert abs(gap.item()) < 1e-5 * (jacobian @ jacobian.T).diagonal().max().item()


def test_weights_are_constants_for_autograd():
    jacobian = torch.randn(4, 5, dtype=F64, requires_grad=True)
    alpha, gap = min_norm_weights(jacobian @ jacobian.T)
    assert not alpha.requires_grad and not gap.requires_grad


@pytest.mark.parametrize("k", [1, 2, 3, 6])
def test_no_host_read_off_the_cpu(k):
    # On the meta device every tensor lacks values, so any .item(), bool() or tensor-valued index
    # raises: the fixed-iteration device loop (min_norm_solve(early_exit=False)) runs without a host
    # read. A CUDA call solves on a host copy instead (tests/unit/test_device_path.py counts it).
    alpha, gap = min_norm_weights(torch.randn(k, k, device="meta"))
    assert alpha.shape == (k,) and gap.shape == () and alpha.device.type == "meta"


@pytest.mark.parametrize("k", [1, 2, 3, 6])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_input_gives_non_finite_output(k, bad):
    gram = torch.eye(k, dtype=F64)
    gram[0, -1] = bad
    alpha, gap = min_norm_weights(gram)
    assert torch.isnan(alpha).all() and not torch.isfinite(gap)


BAD = [
    (torch.ones(3), ValueError, r"gram must be a square k x k matrix with k >= 1, got shape \(3,\)"),
    (torch.ones(2, 3), ValueError, r"gram must be a square k x k matrix with k >= 1, got shape \(2, 3\)"),
    (torch.ones(1, 2, 2), ValueError, r"got shape \(1, 2, 2\)"),
    (torch.ones(0, 0), ValueError, r"got shape \(0, 0\)"),
    (torch.ones(2, 2, dtype=torch.long), TypeError, r"gram must be floating point, got dtype torch.int64"),
    (torch.ones(2, 2, dtype=torch.complex64), TypeError, r"gram must be floating point, got dtype torch.complex64"),
    ([[1.0, 0.0], [0.0, 1.0]], TypeError, r"gram must be a tensor, got list"),
]


@pytest.mark.parametrize("gram, error, message", BAD, ids=[b[2][:40] for b in BAD])
def test_bad_input(gram, error, message):
    with pytest.raises(error, match=message):
        min_norm_weights(gram)
