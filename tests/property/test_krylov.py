"""minres against dense solvers on random symmetric systems: solution, residual estimate, stopping.

The systems are Q diag(lambda) Q^T with |lambda| in [1, 3] and random signs (indefinite), and a
shift in [-0.5, 0.5], so |lambda + shift| lies in [0.5, 3.5] and the condition number is at
most 7. In exact arithmetic MINRES is exact after n iterations (rank ones on a consistent
singular system); rounding (loss of orthogonality in Lanczos) delayed convergence to 1e-12 by
at most 2 iterations over 3000 random systems, so n + 5 iterations is ample. The forward
relative error is at most the condition number times the relative residual, 7e-12 at
tol = 1e-12: the 1e-8 bound leaves over two orders of magnitude for rounding.
"""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from torch_moo.functional import MinresResult, minres

shifts = st.floats(-0.5, 0.5, allow_nan=False, width=64)
# An example solves up to two systems of up to 35 iterations of ~40 small tensor ops each;
# 40 examples per property keep the file at a few seconds.
examples = settings(max_examples=40)


@st.composite
def spectral_systems(draw, min_size=1, max_size=30, zeros=0):
    """(basis, eigenvalues, rhs): a random symmetric indefinite float64 system, ``zeros`` eigenvalues 0."""
    n = draw(st.integers(max(min_size, zeros + 1), max_size))
    generator = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    # A product of three Householder reflections: a dense orthogonal basis without a LAPACK call
    # (on a busy 2-core machine, threaded LAPACK takes milliseconds on a 30 x 30 matrix).
    basis = torch.eye(n, dtype=torch.float64)
    for normal in torch.randn(3, n, generator=generator, dtype=torch.float64):
        basis = basis - torch.outer(basis @ normal, normal) * (2 / (normal @ normal))
    signs = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0).double()
    eigenvalues = (torch.rand(n, generator=generator, dtype=torch.float64) * 2 + 1) * signs
    eigenvalues[:zeros] = 0
    return basis, eigenvalues, torch.randn(n, generator=generator, dtype=torch.float64)


def symmetric(basis, eigenvalues):
    matrix = (basis * eigenvalues) @ basis.T
    return (matrix + matrix.T) / 2


def systems(**kwargs):
    """(matrix, rhs) from :func:`spectral_systems`."""
    return spectral_systems(**kwargs).map(lambda system: (symmetric(*system[:2]), system[2]))


def shifted(matrix, shift):
    return matrix + shift * torch.eye(matrix.shape[0], dtype=matrix.dtype)


def true_residual(matrix, shift, rhs, solution):
    return torch.linalg.vector_norm(rhs - shifted(matrix, shift) @ solution)


class Counted:
    """The operator v -> A v, counting its calls."""

    def __init__(self, matrix):
        self.matrix, self.calls = matrix, 0

    def __call__(self, vector):
        self.calls += 1
        return self.matrix @ vector


@examples
@given(systems(), shifts)
def test_matches_a_dense_solve_and_the_estimate_matches_the_true_residual(system, shift):
    matrix, rhs = system
    n = rhs.numel()
    operator = Counted(matrix)
    result = minres(operator, rhs, shift=shift, tol=1e-12, max_iter=n + 5)
    expected = torch.linalg.solve(shifted(matrix, shift), rhs)
    assert torch.linalg.vector_norm(result.solution - expected) <= 1e-8 * torch.linalg.vector_norm(expected)
    # The estimate drifts from the true residual by rounding only, ~ n eps ||A|| ||x|| <~ 1e-13 ||b||.
    residual = true_residual(matrix, shift, rhs, result.solution)
    assert abs(result.residual_norm - residual) <= 1e-10 * torch.linalg.vector_norm(rhs)
    assert 1 <= result.iterations <= n + 5
    assert operator.calls == result.iterations  # check_every = 1: no call after convergence


@examples
@given(spectral_systems(min_size=2, zeros=1) | spectral_systems(min_size=4, zeros=3))
def test_consistent_singular_systems_give_the_min_norm_solution(system):
    basis, eigenvalues, coefficients = system
    matrix = symmetric(basis, eigenvalues)
    rhs = basis @ (eigenvalues * coefficients)  # in the range
    n = rhs.numel()
    result = minres(lambda v: matrix @ v, rhs, tol=1e-10, max_iter=n + 5)
    # The Krylov space lies in the range, where the condition number is at most 3: the error
    # is at most 3e-10 relative; rounding puts ~1e-16 of rhs in the null space, which the
    # solver never resolves at this tolerance.
    expected = basis @ torch.where(eigenvalues == 0, 0.0, coefficients)  # pinv(A) b, the min-norm solution
    assert torch.linalg.vector_norm(result.solution - expected) <= 1e-8 * torch.linalg.vector_norm(expected)
    assert true_residual(matrix, 0.0, rhs, result.solution) <= 2e-10 * torch.linalg.vector_norm(rhs)
    assert result.iterations <= n - (eigenvalues == 0).sum() + 5


@examples
@given(systems(), shifts, st.floats(1e-6, 1e-2))
def test_stops_at_the_first_iterate_within_tolerance(system, shift, tol):
    matrix, rhs = system
    n = rhs.numel()
    result = minres(lambda v: matrix @ v, rhs, shift=shift, tol=tol, max_iter=10 * n + 10)
    norm = torch.linalg.vector_norm(rhs)
    assert result.iterations <= n + 5  # stopped by the tolerance, far from max_iter
    assert result.residual_norm <= tol * norm
    residual = true_residual(matrix, shift, rhs, result.solution)
    assert abs(result.residual_norm - residual) <= 1e-10 * norm
    if result.iterations > 1:
        earlier = minres(lambda v: matrix @ v, rhs, shift=shift, tol=tol, max_iter=int(result.iterations) - 1)
        assert earlier.residual_norm > tol * norm


@examples
@given(systems(), shifts, st.integers(1, 40))
def test_max_iter_bounds_the_operator_calls(system, shift, max_iter):
    matrix, rhs = system
    operator = Counted(matrix)
    result = minres(operator, rhs, shift=shift, tol=1e-14, max_iter=max_iter)
    assert result.iterations <= max_iter
    assert operator.calls == result.iterations
    # Without convergence, the estimate is still that of the returned iterate.
    residual = true_residual(matrix, shift, rhs, result.solution)
    assert abs(result.residual_norm - residual) <= 1e-10 * torch.linalg.vector_norm(rhs)


@examples
@given(systems(), shifts, st.floats(1e-8, 1e-2), st.integers(2, 7))
def test_checking_less_often_freezes_the_converged_iterate(system, shift, tol, check_every):
    matrix, rhs = system
    n = rhs.numel()
    every = minres(lambda v: matrix @ v, rhs, shift=shift, tol=tol, max_iter=n + 5)
    operator = Counted(matrix)
    sparse = minres(operator, rhs, shift=shift, tol=tol, max_iter=n + 5, check_every=check_every)
    assert torch.equal(sparse.solution, every.solution)
    assert torch.equal(sparse.residual_norm, every.residual_norm)
    assert torch.equal(sparse.iterations, every.iterations)
    assert operator.calls <= min(int(every.iterations) + check_every - 1, n + 5)


def test_zero_rhs_returns_zeros_without_calling_the_operator():
    operator = Counted(torch.eye(3, dtype=torch.float64))
    result = minres(operator, torch.zeros(3, dtype=torch.float64))
    assert torch.equal(result.solution, torch.zeros(3, dtype=torch.float64))
    assert result.residual_norm == 0 and result.iterations == 0 and operator.calls == 0


@pytest.mark.parametrize("shift", [0.0, 1.5])
def test_an_eigenvector_rhs_breaks_down_after_one_exact_iteration(shift):
    diagonal = torch.tensor([2.0, -3.0, 0.0, 5.0], dtype=torch.float64)
    rhs = torch.tensor([0.0, 4.0, 0.0, 0.0], dtype=torch.float64)
    operator = Counted(torch.diag(diagonal))
    # tol is below any reachable residual: only the breakdown (beta_2 = 0 exactly) stops it.
    result = minres(operator, rhs, shift=shift, tol=1e-300, max_iter=10)
    expected = torch.zeros_like(rhs)
    expected[1] = rhs[1] / (diagonal[1] + shift)
    assert torch.equal(result.solution, expected)
    assert result.residual_norm == 0 and result.iterations == 1 and operator.calls == 1


def test_a_breakdown_on_a_singular_system_keeps_the_least_squares_iterate():
    # A = 0: the tridiagonal matrix is [0] and beta_2 = 0; x = 0 minimises the residual.
    rhs = torch.tensor([1.0, -2.0], dtype=torch.float64)
    result = minres(torch.zeros_like, rhs, max_iter=10)
    assert torch.equal(result.solution, torch.zeros_like(rhs))
    assert result.residual_norm == torch.linalg.vector_norm(rhs) and result.iterations == 1


@examples
@given(systems(max_size=20), shifts)
def test_float32_stays_float32_and_converges(system, shift):
    matrix, rhs = system
    n = rhs.numel()
    result = minres(lambda v: matrix.float() @ v, rhs.float(), shift=shift, tol=1e-5, max_iter=n + 10)
    assert isinstance(result, MinresResult)
    assert result.solution.dtype == result.residual_norm.dtype == torch.float32
    assert result.iterations.dtype == torch.int64 and result.residual_norm.dim() == result.iterations.dim() == 0
    # The error is at most cond <= 7 times the relative residual, tol plus float32 rounding of
    # the operator (~n eps_32 ||A|| ||x|| <~ 1e-5 ||b||): about 1.4e-4; 1e-3 leaves a margin.
    expected = torch.linalg.solve(shifted(matrix, shift), rhs)
    assert torch.linalg.vector_norm(result.solution.double() - expected) <= 1e-3 * torch.linalg.vector_norm(expected)


def identity(vector):
    return vector


BAD = [
    (dict(operator=None), TypeError, r"operator must be callable, got NoneType"),
    (dict(rhs=[1.0, 2.0]), TypeError, r"rhs must be a tensor, got list"),
    (dict(rhs=torch.tensor([1, 2])), TypeError, r"rhs must be floating point, got dtype torch.int64"),
    (dict(rhs=torch.ones(2, 2)), ValueError, r"rhs must be a 1-D vector, got shape \(2, 2\)"),
    (dict(tol=0.0), ValueError, r"tol must be > 0.0, got 0.0"),
    (dict(tol=float("nan")), ValueError, r"tol must be finite, got nan"),
    (dict(shift=float("inf")), ValueError, r"shift must be finite, got inf"),
    (dict(max_iter=0), ValueError, r"max_iter must be >= 1, got 0"),
    (dict(max_iter=2.0), TypeError, r"max_iter must be an int, got float 2.0"),
    (dict(check_every=0), ValueError, r"check_every must be >= 1, got 0"),
    (
        dict(operator=lambda v: torch.ones(3)),
        ValueError,
        r"operator must map a vector of rhs's shape \(2,\) and dtype torch.float32 to one of the same "
        r"shape and dtype, got shape \(3,\), dtype torch.float32",
    ),
    (dict(operator=lambda v: v.double()), ValueError, r"got shape \(2,\), dtype torch.float64"),
    (dict(operator=lambda v: v.tolist()), ValueError, r"got list"),
]


@pytest.mark.parametrize(("change", "error", "message"), BAD)
def test_bad_input_raises_a_precise_error(change, error, message):
    arguments = dict(operator=identity, rhs=torch.ones(2)) | change
    with pytest.raises(error, match=message):
        minres(arguments.pop("operator"), arguments.pop("rhs"), **arguments)
