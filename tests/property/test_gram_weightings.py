"""The Gram-space weightings against torchjd 0.18's and against their definitions.

Problems are float64 Jacobians J (k x n, k = 2..16) of three kinds: random, rank-deficient (rank
< k) and nearly duplicate (two rows 1e-6 apart); each rule sees G = J J^T. Tolerances are stated
where used: rounding (about k * 1e-16 relative) is amplified by each problem's conditioning, and
torchjd's cvxpy solvers stop at their own tolerances.
"""

from __future__ import annotations

import math
import warnings
from unittest import mock

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from torch_moo._device import device_path
from torch_moo.weightings import _dual_cone
from torch_moo.weightings._dual_cone import project_dual_cone
from torch_moo.weightings.aligned_mtl import AlignedMTL
from torch_moo.weightings.cagrad import CAGrad
from torch_moo.weightings.imtlg import IMTLG
from torch_moo.weightings.nash_mtl import NashMTL, _newton
from torch_moo.weightings.pcgrad import PCGrad
from torch_moo.weightings.simple import Constant, Mean
from torch_moo.weightings.upgrad import DualProj, UPGrad

KINDS = ["random", "rank-deficient", "near-duplicate"]
EPS = torch.finfo(torch.float64).eps


@st.composite
def jacobians(draw, kinds=KINDS, full_rank=False):
    """``(kind, J)``: J is k x n float64; ``full_rank``: n >= k + 2 (the Nash solution then exists)."""
    kind = draw(st.sampled_from(kinds))
    k = draw(st.integers(2, 16))
    n = draw(st.integers(k + 2, 24) if full_rank else st.integers(1, 24))
    generator = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    jacobian = torch.randn(k, n, generator=generator, dtype=torch.float64)
    if kind == "rank-deficient":
        rank = draw(st.integers(1, k - 1))
        jacobian = torch.randn(k, rank, generator=generator, dtype=torch.float64) @ torch.randn(
            rank, n, generator=generator, dtype=torch.float64
        )
    elif kind == "near-duplicate":
        jacobian[1] = jacobian[0] + 1e-6 * torch.randn(n, generator=generator, dtype=torch.float64)
    return kind, jacobian


def condition(gram: torch.Tensor) -> float:
    """The spectral condition number of the Gram matrix (inf when singular)."""
    values = torch.linalg.eigvalsh(gram)
    return float(values[-1] / values[0]) if values[0] > 0 else math.inf


def close_directions(ours, theirs, jacobian, tolerance):
    """||J^T (ours - theirs)|| <= tolerance ||J^T theirs||: the updates agree (weights need not be unique)."""
    gap = torch.linalg.vector_norm((ours - theirs) @ jacobian)
    assert gap <= tolerance * torch.linalg.vector_norm(theirs @ jacobian) + 1e-300, (gap, ours, theirs)


# ------------------------------------------------------------------------------ against torchjd
aggregation = pytest.importorskip("torchjd.aggregation", reason="torchjd is not installed")


@settings(max_examples=150, deadline=None)
@given(jacobians())
def test_upgrad_and_dualproj_equal_torchjd(problem):
    _, jacobian = problem
    gram = jacobian @ jacobian.T
    # Both solve the same QP exactly, with Q = G / tr G + 1e-4 I positive definite (condition at most
    # about 1e4 k): rounding moves the solution by about 1e4 * k * 1e-16 relative; 1e-9 leaves margin.
    for ours, theirs in ((UPGrad(), aggregation.UPGradWeighting()), (DualProj(), aggregation.DualProjWeighting())):
        expected = theirs(gram)
        torch.testing.assert_close(ours(gram), expected, rtol=0, atol=1e-9 * float(expected.abs().max()))


@settings(max_examples=150, deadline=None)
@given(jacobians(), st.integers(0, 2**31 - 1))
def test_pcgrad_equals_torchjd_with_the_same_seed(problem, seed):
    _, jacobian = problem
    gram = jacobian @ jacobian.T
    torch.manual_seed(seed)
    ours = PCGrad()(gram)
    torch.manual_seed(seed)
    theirs = aggregation.PCGradWeighting()(gram)
    # The same projections in the same order; only the summation order of the inner products and
    # the power-of-two scaling differ, a few ulps per step over k steps.
    torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-12)


@settings(max_examples=60, deadline=None)
@given(jacobians(), st.sampled_from([0.1, 0.5, 2.0]))
def test_cagrad_matches_torchjd_and_is_at_least_as_good(problem, c):
    pytest.importorskip("cvxpy")
    _, jacobian = problem
    gram = jacobian @ jacobian.T
    ours, theirs = CAGrad(c)(gram), aggregation.CAGradWeighting(c)(gram)
    # Both updates lie on the sphere ||d - g0|| = c ||g0|| (trace-normalised units) and maximise the
    # worst decrease min_i <g_i, d>: ours is exact, so it does at least as well as Clarabel's
    # (up to rounding, 1e-12 of tr G).
    assert (gram @ ours).min() >= (gram @ theirs).min() - 1e-12 * gram.trace()
    # Clarabel stops at a relative gap of about 1e-8; the minimiser of a problem that is not strongly
    # convex moves by about its square root, 1e-4 (at most 2.5e-4 seen): 1e-3 of the update.
    close_directions(ours, theirs, jacobian, 1e-3)


# Not on rank-deficient G: torch.linalg.pinv drops singular values below k eps s_max, and G's
# rounding leaves its zero ones at about that size, so which are kept is decided by rounding.
@settings(max_examples=150, deadline=None)
@given(jacobians(["random", "near-duplicate"]))
def test_imtlg_equals_torchjd(problem):
    _, jacobian = problem
    gram = jacobian @ jacobian.T
    ours, theirs = IMTLG()(gram), aggregation.IMTLGWeighting()(gram)
    # Near-duplicate rows make G ill-conditioned: the pseudo-inverse is then accurate to about
    # cond(G) * eps relative (torchjd's own result moves that much when G is scaled by 2^-5).
    close_directions(ours, theirs, jacobian, 1e-9 + 100 * EPS * condition(gram))


@settings(max_examples=150, deadline=None)
@given(jacobians(), st.sampled_from(["min", "median", "rmse"]))
def test_aligned_mtl_equals_torchjd(problem, mode):
    _, jacobian = problem
    gram = jacobian @ jacobian.T
    ours, theirs = AlignedMTL(scale_mode=mode)(gram), aggregation.AlignedMTLWeighting(scale_mode=mode)(gram)
    # The same eigendecomposition of the same matrix up to a power of two (exact), so the same rank;
    # B's entries carry the rounding of eigh, amplified by sqrt(scale / lambda_r) <= sqrt(cond(G)).
    kept = torch.linalg.eigvalsh(gram)
    kept = kept[kept > kept[-1] * len(kept) * EPS]
    spread = float(kept[-1] / kept[0])
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-10 * spread * float(theirs.abs().max()))


@settings(max_examples=40, deadline=None)
@given(jacobians(["random", "near-duplicate"], full_rank=True))
def test_nash_mtl_equals_torchjd_at_convergence(problem):
    pytest.importorskip("cvxpy")
    pytest.importorskip("ecos")
    _, jacobian = problem
    gram = jacobian @ jacobian.T
    k = gram.shape[0]
    ours = NashMTL(max_norm=0.0)(gram)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # cvxpy's warnings about ECOS
        theirs = aggregation.NashMTL(n_tasks=k, max_norm=0.0, optim_niter=100).weighting(jacobian)
    residual = torch.linalg.vector_norm(gram @ theirs - 1 / theirs)
    assume(residual * theirs.abs().max() < 1e-3)  # torchjd's iterates converged (ECOS can fail)
    # Near the root, a - a* = H^{-1} r + O(|r|^2) with H = G + diag(a)^-2 at ours: twice
    # ||H^{-1}|| ||r|| bounds the distance (torchjd stops at ||r|| ~ 1e-6 relative, 2e-6 seen).
    hessian = gram + torch.diag(ours**-2)
    bound = 2 * torch.linalg.matrix_norm(torch.linalg.inv(hessian), 2) * residual
    assert torch.linalg.vector_norm(ours - theirs) <= bound + 1e-9 * ours.norm()


@settings(max_examples=50, deadline=None)
@given(jacobians())
def test_mean_and_constant_equal_torchjd(problem):
    _, jacobian = problem
    gram = jacobian @ jacobian.T
    k = gram.shape[0]
    weights = torch.linspace(-1.0, 2.0, k, dtype=torch.float64)
    assert torch.equal(Mean()(gram), aggregation.MeanWeighting()(jacobian))
    assert torch.equal(Constant(weights)(gram), aggregation.ConstantWeighting(weights)(jacobian))


# ------------------------------------------------------------------------------ definitions
@settings(max_examples=60, deadline=None)
@given(jacobians(), st.sampled_from([1e-4, 1e-10]))
def test_upgrad_and_dualproj_lie_in_the_dual_cone(problem, reg_eps):
    _, jacobian = problem
    gram = jacobian @ jacobian.T
    trace = gram.trace()
    for rule in (UPGrad(reg_eps=reg_eps), DualProj(reg_eps=reg_eps)):
        weights = rule(gram)
        # Q v >= 0 exactly gives G w >= -reg_eps tr(G) w; the solver's tolerance adds 1e-12 (1 + |w|) tr(G).
        floor = -(reg_eps * weights.abs() + 1e-11 * (1 + weights.abs().max())) * trace
        assert ((gram @ weights) >= floor).all(), (gram @ weights, floor)


@settings(max_examples=15, deadline=None)  # the whole fixed count of batched solves: slow on the CPU
@given(jacobians())
def test_the_dual_cone_solver_off_the_cpu_path_gives_the_same_weights(problem):
    _, jacobian = problem
    gram = jacobian @ jacobian.T
    u = torch.eye(gram.shape[0], dtype=torch.float64)
    # The same iterations, run to the fixed cap without reading the stop flag: no-ops after the stop.
    assert torch.equal(project_dual_cone(gram, u, 1e-4, early_exit=False), project_dual_cone(gram, u, 1e-4))


@settings(max_examples=40, deadline=None)
@given(jacobians(), st.sampled_from([1e-4, 1e-10]))
def test_upgrad_and_dualproj_give_the_same_weights_on_the_device_path(problem, reg_eps):
    _, jacobian = problem
    gram = jacobian @ jacobian.T
    for rule in (UPGrad(reg_eps=reg_eps), DualProj(reg_eps=reg_eps)):
        on_the_cpu = rule(gram)
        host = AssertionError("the device path solved on the host")
        with device_path(), mock.patch.object(_dual_cone, "_solve_on_host", side_effect=host):
            on_the_device = rule(gram)
        # The same iterations from the same start with the same Cholesky solves, no-ops after the stop:
        # the same passive sets give the same bits (both paths' tests flip only within rounding of the tolerance).
        assert torch.equal(on_the_device, on_the_cpu)


def test_the_host_solver_drops_solved_problems_and_starts_from_the_violated_constraints():
    # Nearly orthogonal gradients (k = 12, n = 4096): the violated constraints at v = u are nearly the
    # solution's active sets; one batched solve settles 11 of the 12 problems, the last one needs one more.
    jacobian = torch.randn(12, 4096, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    gram = jacobian @ jacobian.T
    batches = []
    solve = _dual_cone._passive_minimiser
    with mock.patch.object(
        _dual_cone, "_passive_minimiser", side_effect=lambda *a: batches.append(len(a[0])) or solve(*a)
    ):
        weights = UPGrad()(gram)
    assert batches == [12, 1]
    assert torch.equal(weights, UPGrad()(gram))


@settings(max_examples=100, deadline=None)
@given(st.floats(0.1, 10.0), st.floats(0.1, 10.0), st.floats(0.05, 0.99))
def test_pcgrad_removes_the_conflict_of_two_gradients(norm1, norm2, cosine):
    inner = -cosine * norm1 * norm2
    gram = torch.tensor([[norm1**2, inner], [inner, norm2**2]], dtype=torch.float64)
    weights = PCGrad()(gram)
    # g_i - <g_i, g_j> / |g_j|^2 g_j for each: closed form; the sum conflicts with neither gradient.
    expected = torch.tensor([1 - inner / norm1**2, 1 - inner / norm2**2], dtype=torch.float64)
    torch.testing.assert_close(weights, expected)
    assert ((gram @ weights) >= -1e-12 * gram.trace()).all()


@settings(max_examples=50, deadline=None)
@given(jacobians())
def test_cagrad_with_c_zero_is_the_mean_and_stays_in_its_ball(problem):
    _, jacobian = problem
    gram = jacobian @ jacobian.T
    k = gram.shape[0]
    torch.testing.assert_close(CAGrad(c=0.0)(gram), torch.full((k,), 1.0 / k, dtype=torch.float64), rtol=0, atol=0)
    weights = CAGrad(c=0.5)(gram)
    unit = gram / gram.trace()
    offset = weights - 1.0 / k  # d - g0 in weights
    if offset.abs().max() > 0:  # ||d - g0|| = c ||g0|| (trace-normalised), up to rounding
        mean = torch.full((k,), 1.0 / k, dtype=torch.float64)
        torch.testing.assert_close(offset @ unit @ offset, 0.25 * (mean @ unit @ mean), rtol=1e-9, atol=1e-15)


@settings(max_examples=100, deadline=None)
@given(jacobians(["random"], full_rank=True))
def test_imtlg_projections_on_the_unit_gradients_are_equal(problem):
    _, jacobian = problem
    gram = jacobian @ jacobian.T
    projections = (gram @ IMTLG()(gram)) / gram.diagonal().sqrt()
    # G invertible: G w is proportional to d exactly; rounding: cond(G) * eps relative.
    tolerance = 1e-9 + 100 * EPS * condition(gram)
    assert (projections.max() - projections.min()) <= tolerance * projections.abs().max()


@settings(max_examples=100, deadline=None)
@given(jacobians(["random", "near-duplicate"], full_rank=True))
def test_nash_mtl_solves_the_bargaining_condition(problem):
    _, jacobian = problem
    gram = jacobian @ jacobian.T
    a = NashMTL(max_norm=0.0)(gram)
    assert (a > 0).all()
    # Newton stops at a decrement of 1e-10: relative residual about 1e-10, plus the rounding of G a
    # (cond(G) eps, as a nearly duplicate pair is resolved in the difference of large weights).
    torch.testing.assert_close(a * (gram @ a), torch.ones_like(a), rtol=0, atol=1e-8 + 100 * EPS * condition(gram))
    clipped = NashMTL()(gram)  # max_norm=1: ||J^T w|| = 1, since ||J^T a|| = sqrt(k)
    torch.testing.assert_close(clipped, a / math.sqrt(len(a)))


def test_nash_mtl_warm_start_is_a_non_persistent_buffer_and_changes_nothing():
    generator = torch.Generator().manual_seed(0)
    jacobian = torch.randn(6, 10, generator=generator, dtype=torch.float64)
    gram = jacobian @ jacobian.T
    rule = NashMTL(max_norm=0.0)
    cold = rule(gram)
    assert rule.state_dict() == {} and torch.equal(rule.previous, cold)
    torch.testing.assert_close(rule(1.01 * gram), NashMTL(max_norm=0.0)(1.01 * gram), rtol=1e-9, atol=0)
    start = torch.ones(6, dtype=torch.float64)
    unit = gram / gram.diagonal().max()
    # the device path: the fixed iteration count, no-ops after the stop
    torch.testing.assert_close(_newton(unit, start, early_exit=False), _newton(unit, start, early_exit=True))


SCALES = st.builds(lambda exponent, mantissa: mantissa * 10.0**exponent, st.integers(-60, 60), st.floats(1.0, 9.9))
INVARIANT = [UPGrad, DualProj, PCGrad, CAGrad, IMTLG, AlignedMTL, Mean]


@settings(max_examples=100, deadline=None)
@given(jacobians(["random"]), SCALES, st.sampled_from(INVARIANT))
def test_scale_behaviour(problem, scale, rule):
    _, jacobian = problem
    gram = jacobian @ jacobian.T
    scaled = gram * scale
    torch.manual_seed(0)
    expected = rule()(gram)
    torch.manual_seed(0)
    # Invariant to G -> cG: rescaled, G's entries round differently (1 ulp), which moves the weights
    # by about cond(G) ulps.
    tolerance = 1e-9 + 100 * EPS * condition(gram)
    torch.testing.assert_close(rule()(scaled), expected, rtol=tolerance, atol=tolerance * float(expected.abs().max()))


@settings(max_examples=50, deadline=None)
@given(jacobians(["random"], full_rank=True), SCALES)
def test_nash_mtl_scales_as_one_over_the_square_root(problem, scale):
    _, jacobian = problem
    gram = jacobian @ jacobian.T
    rule = NashMTL(max_norm=0.0)
    torch.testing.assert_close(rule(gram * scale), rule(gram) / math.sqrt(scale), rtol=1e-8, atol=0)


# ------------------------------------------------------------------------------ arguments
RULES = [UPGrad, DualProj, PCGrad, CAGrad, IMTLG, AlignedMTL, NashMTL, Mean, lambda: Constant([1.0, 2.0])]


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize(
    "gram",
    [torch.ones(2, 3), torch.ones(2, 2, 2), torch.tensor([[1.0, float("nan")], [0.0, 1.0]])],
    ids=["not square", "3-D", "NaN"],
)
def test_a_bad_gram_matrix_is_refused(rule, gram):
    with pytest.raises(ValueError, match="gram"):
        rule()(gram)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: UPGrad(reg_eps=0.0), "reg_eps must be > 0.0"),
        (lambda: DualProj(pref_vector=[1.0, float("inf")]), "pref_vector must be finite"),
        (lambda: CAGrad(c=-1.0), "c must be >= 0.0"),
        (lambda: CAGrad(norm_eps=-1.0), "norm_eps must be >= 0.0"),
        (lambda: AlignedMTL(scale_mode="max"), "scale_mode must be one of"),
        (lambda: NashMTL(max_norm=-1.0), "max_norm must be >= 0.0"),
        (lambda: Constant([]), "weights must be a 1-D vector"),
        (lambda: UPGrad(pref_vector=[1.0, 2.0])(torch.eye(3)), "pref_vector has 2 entries but there are k=3"),
        (lambda: Constant([1.0, 2.0])(torch.ones(3)), "weights has 2 entries but there are k=3"),
    ],
)
def test_bad_hyperparameters_are_refused(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_config_lists_the_hyperparameters():
    assert UPGrad().config() == {"pref_vector": None, "reg_eps": 1e-4}
    assert DualProj([1.0, 2.0]).config() == {"pref_vector": [1.0, 2.0], "reg_eps": 1e-4}
    assert CAGrad().config() == {"c": 0.5, "norm_eps": 1e-4}
    assert AlignedMTL(scale_mode="rmse").config() == {"pref_vector": None, "scale_mode": "rmse"}
    assert NashMTL().config() == {"max_norm": 1.0}
    assert Constant([1.0, 2.0]).config() == {"every": None, "weights": [1.0, 2.0]}
    assert PCGrad().config() == IMTLG().config() == {}


def test_mean_and_constant_are_loss_weightings_too():
    losses = torch.tensor([0.5, 2.0, 1.0])
    assert torch.equal(Mean()(losses), torch.full((3,), 1 / 3))
    constant = Constant([1.0, 0.0, 2.0])
    assert torch.equal(constant(losses), torch.tensor([1.0, 0.0, 2.0]))
    constant.observe(losses)  # no periodic update
    assert constant.every is None and constant.state_dict() == {}


@pytest.mark.parametrize("rule", RULES)
def test_weights_keep_the_gram_matrix_dtype(rule):
    gram = torch.tensor([[2.0, -1.0], [-1.0, 3.0]])
    weights = rule()(gram)
    assert weights.shape == (2,) and weights.dtype == torch.float32 and torch.isfinite(weights).all()
